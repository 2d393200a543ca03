//! The gRPC layer: maps `sigil.v1` requests to service calls and [`service::Error`] to
//! `tonic::Status` — the only place that does either. Generated code is fenced into [`pb`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::backend::parse_pkcs8;
use crate::jose::Alg;
use crate::keyring::{KeyInfo, KeyState};
use crate::secret::SecretBytes;
use crate::service::{self, Service};

/// Generated protobuf and gRPC code for `sigil.v1`, fenced here so nothing else names it by
/// path.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod pb {
    tonic::include_proto!("sigil.v1");

    /// Encoded file descriptors for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("sigil_v1_descriptor");

    impl std::fmt::Debug for ImportKeyRequest {
        // Hand-written so the private key can never reach a log through `{:?}`.
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("ImportKeyRequest")
                .field("name", &self.name)
                .field("alg", &self.alg)
                .field(
                    "pkcs8_der",
                    &format_args!("<{} bytes redacted>", self.pkcs8_der.len()),
                )
                .field("fapi2", &self.fapi2)
                .finish()
        }
    }
}

use pb::key_service_server::KeyService;
use pb::signing_service_server::SigningService;

/// Both gRPC services over one [`Service`].
#[derive(Clone)]
pub struct Api {
    /// The domain service.
    service: Arc<Service>,
}

impl Api {
    /// Wrap a service.
    pub fn new(service: Arc<Service>) -> Self {
        Api { service }
    }

    /// The key management gRPC service.
    pub fn key_service(&self) -> pb::key_service_server::KeyServiceServer<Api> {
        pb::key_service_server::KeyServiceServer::new(self.clone())
    }

    /// The signing gRPC service, with the message size limit derived from the payload limit.
    pub fn signing_service(&self) -> pb::signing_service_server::SigningServiceServer<Api> {
        // Room for the payload plus the header and envelope, so oversized payloads get our
        // clear INVALID_ARGUMENT up to twice the limit, and tonic's refusal beyond that.
        let max = self.service.options().max_payload_bytes * 2 + 16 * 1024;
        pb::signing_service_server::SigningServiceServer::new(self.clone())
            .max_decoding_message_size(max)
    }
}

/// The one mapping from service errors to wire statuses. Internal and device details stay in
/// the log, tagged with a request id that the caller also gets.
pub fn status(e: service::Error) -> Status {
    use service::Error as E;
    match e {
        E::InvalidArgument(m) => Status::invalid_argument(m),
        E::NotFound(m) => Status::not_found(m),
        E::AlreadyExists(m) => Status::already_exists(m),
        E::FailedPrecondition(m) => Status::failed_precondition(m),
        E::ResourceExhausted(m) => Status::resource_exhausted(m),
        E::Unavailable(m) => {
            let id = request_id();
            tracing::warn!(request_id = %id, "{m}");
            Status::unavailable(format!("{m} (request id {id})"))
        }
        E::Internal(m) => {
            let id = request_id();
            tracing::error!(request_id = %id, "{m}");
            Status::internal(format!("{m} (request id {id})"))
        }
    }
}

fn request_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn opt(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

fn key_to_pb(k: KeyInfo) -> pb::Key {
    pb::Key {
        active_version: k.active().map(|v| v.version).unwrap_or_default(),
        name: k.name.to_string(),
        fapi2: k.fapi2,
        versions: k
            .versions
            .iter()
            .map(|v| pb::KeyVersion {
                version: v.version,
                state: match v.state {
                    KeyState::Next => pb::KeyState::Next,
                    KeyState::Active => pb::KeyState::Active,
                    KeyState::Retired => pb::KeyState::Retired,
                    KeyState::Destroyed => pb::KeyState::Destroyed,
                } as i32,
                alg: v.alg.name().to_owned(),
                kid: v.kid.clone(),
                public_jwk_json: if v.state == KeyState::Destroyed {
                    String::new()
                } else {
                    v.jwk().map(|j| j.to_string()).unwrap_or_default()
                },
                uri: v.uri.clone(),
                key_type: if v.state == KeyState::Destroyed {
                    String::new()
                } else {
                    v.kind.to_string()
                },
                origin: v.origin.as_str().to_owned(),
                created_at: v.created_at,
                attestation_chain_der: v.attestation.clone(),
                public_jwk_x5c_json: match v.state {
                    KeyState::Destroyed => String::new(),
                    _ => v
                        .jwk_with_x5c()
                        .ok()
                        .flatten()
                        .map(|j| j.to_string())
                        .unwrap_or_default(),
                },
            })
            .collect(),
    }
}

fn signed(s: service::SignedJws) -> pb::SignJwsResponse {
    pb::SignJwsResponse {
        compact: s.compact,
        signature: s.signature,
        kid: s.kid,
        alg: s.alg.name().to_owned(),
        key_version: s.version,
    }
}

type Result<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl KeyService for Api {
    async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> Result<pb::Key> {
        let r = req.into_inner();
        let k = self
            .service
            .create_key(&r.name, &r.alg, r.rsa_bits, r.fapi2)
            .await
            .map_err(status)?;
        tracing::info!(key = %r.name, alg = %r.alg, "key created");
        Ok(Response::new(key_to_pb(k)))
    }

    async fn import_key(&self, req: Request<pb::ImportKeyRequest>) -> Result<pb::Key> {
        let mut r = req.into_inner();
        // Move the key bytes into a zeroizing buffer at once; the request no longer holds them.
        let der = SecretBytes::new(std::mem::take(&mut r.pkcs8_der));
        let material = parse_pkcs8(&der).map_err(|e| status(e.into()))?;
        drop(der);
        let k = self
            .service
            .import_key(&r.name, &r.alg, r.fapi2, material)
            .await
            .map_err(status)?;
        tracing::info!(key = %r.name, alg = %r.alg, "key imported");
        Ok(Response::new(key_to_pb(k)))
    }

    async fn adopt_key(&self, req: Request<pb::AdoptKeyRequest>) -> Result<pb::Key> {
        let r = req.into_inner();
        let k = self
            .service
            .adopt_key(&r.name, &r.alg, r.fapi2, &r.uri)
            .await
            .map_err(status)?;
        tracing::info!(key = %r.name, uri = %r.uri, "key adopted");
        Ok(Response::new(key_to_pb(k)))
    }

    async fn list_keys(&self, _req: Request<pb::ListKeysRequest>) -> Result<pb::ListKeysResponse> {
        Ok(Response::new(pb::ListKeysResponse {
            keys: self.service.keys().into_iter().map(key_to_pb).collect(),
        }))
    }

    async fn get_key(&self, req: Request<pb::GetKeyRequest>) -> Result<pb::Key> {
        let k = self.service.key(&req.into_inner().name).map_err(status)?;
        Ok(Response::new(key_to_pb(k)))
    }

    async fn rotate_key(&self, req: Request<pb::RotateKeyRequest>) -> Result<pb::Key> {
        let r = req.into_inner();
        let k = self
            .service
            .rotate_key(&r.name, &r.alg, r.rsa_bits)
            .await
            .map_err(status)?;
        tracing::info!(key = %r.name, "key rotated");
        Ok(Response::new(key_to_pb(k)))
    }

    async fn activate_key_version(&self, req: Request<pb::KeyVersionRequest>) -> Result<pb::Key> {
        let r = req.into_inner();
        let k = self
            .service
            .activate(&r.name, r.version)
            .await
            .map_err(status)?;
        tracing::info!(key = %r.name, version = r.version, "key version activated");
        Ok(Response::new(key_to_pb(k)))
    }

    async fn retire_key_version(&self, req: Request<pb::KeyVersionRequest>) -> Result<pb::Key> {
        let r = req.into_inner();
        let k = self
            .service
            .retire(&r.name, r.version)
            .await
            .map_err(status)?;
        tracing::info!(key = %r.name, version = r.version, "key version retired");
        Ok(Response::new(key_to_pb(k)))
    }

    async fn destroy_key_version(&self, req: Request<pb::KeyVersionRequest>) -> Result<pb::Key> {
        let r = req.into_inner();
        if r.version == 0 {
            return Err(Status::invalid_argument(
                "destroy needs an explicit version",
            ));
        }
        let k = self
            .service
            .destroy(&r.name, r.version)
            .await
            .map_err(status)?;
        tracing::info!(key = %r.name, version = r.version, "key version destroyed");
        Ok(Response::new(key_to_pb(k)))
    }

    async fn get_jwks(&self, _req: Request<pb::GetJwksRequest>) -> Result<pb::GetJwksResponse> {
        let jwks = self.service.jwks().map_err(status)?;
        Ok(Response::new(pb::GetJwksResponse {
            jwks_json: jwks.to_string(),
        }))
    }
}

#[tonic::async_trait]
impl SigningService for Api {
    async fn sign_jws(&self, req: Request<pb::SignJwsRequest>) -> Result<pb::SignJwsResponse> {
        let r = req.into_inner();
        let s = self
            .service
            .sign_jws(&r.key, &r.protected_header, &r.payload)
            .await
            .map_err(status)?;
        Ok(Response::new(signed(s)))
    }

    async fn sign_raw(&self, req: Request<pb::SignRawRequest>) -> Result<pb::SignRawResponse> {
        let r = req.into_inner();
        let alg = match opt(r.alg) {
            Some(a) => Some(Alg::parse(&a).map_err(|e| status(e.into()))?),
            None => None,
        };
        let s = self
            .service
            .sign_raw(&r.key, &r.data, alg)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::SignRawResponse {
            signature: s.signature,
            kid: s.kid,
            alg: s.alg.name().to_owned(),
            key_version: s.version,
        }))
    }

    async fn sign_id_token(
        &self,
        req: Request<pb::SignIdTokenRequest>,
    ) -> Result<pb::SignJwsResponse> {
        let r = req.into_inner();
        let input = service::IdTokenInput {
            claims_json: r.claims_json,
            lifetime: r.lifetime_seconds.into(),
            access_token: opt(r.access_token),
            code: opt(r.code),
        };
        let s = self
            .service
            .sign_id_token(&r.key, input)
            .await
            .map_err(status)?;
        Ok(Response::new(signed(s)))
    }

    async fn sign_request_object(
        &self,
        req: Request<pb::SignRequestObjectRequest>,
    ) -> Result<pb::SignJwsResponse> {
        let r = req.into_inner();
        let input = service::RequestObjectInput {
            client_id: r.client_id,
            audience: r.audience,
            claims_json: r.claims_json,
            lifetime: r.lifetime_seconds.into(),
        };
        let s = self
            .service
            .sign_request_object(&r.key, input)
            .await
            .map_err(status)?;
        Ok(Response::new(signed(s)))
    }

    async fn sign_client_assertion(
        &self,
        req: Request<pb::SignClientAssertionRequest>,
    ) -> Result<pb::SignJwsResponse> {
        let r = req.into_inner();
        let input = service::ClientAssertionInput {
            client_id: r.client_id,
            audience: r.audience,
            lifetime: r.lifetime_seconds.into(),
        };
        let s = self
            .service
            .sign_client_assertion(&r.key, input)
            .await
            .map_err(status)?;
        Ok(Response::new(signed(s)))
    }

    async fn sign_dpop_proof(
        &self,
        req: Request<pb::SignDpopProofRequest>,
    ) -> Result<pb::SignJwsResponse> {
        let r = req.into_inner();
        let input = service::DpopInput {
            htm: r.htm,
            htu: r.htu,
            access_token: opt(r.access_token),
            nonce: opt(r.nonce),
        };
        let s = self
            .service
            .sign_dpop_proof(&r.key, input)
            .await
            .map_err(status)?;
        Ok(Response::new(signed(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_request_debug_hides_key_bytes() {
        let r = pb::ImportKeyRequest {
            name: "k".into(),
            alg: "ES256".into(),
            pkcs8_der: vec![0x42; 40],
            fapi2: false,
        };
        let s = format!("{r:?}");
        assert!(s.contains("40 bytes redacted"));
        assert!(!s.contains("66"));
    }

    #[test]
    fn unavailable_carries_a_request_id() {
        let s = status(service::Error::Unavailable("device gone".into()));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().starts_with("device gone (request id "));
    }
}
