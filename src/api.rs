//! The gRPC layer: authenticates the caller of each request (client certificate, Unix peer
//! credentials, or nobody on a danger-plaintext listener), maps `sigil.v1` requests to service
//! calls and [`service::Error`] to `tonic::Status` — the only place that does either.
//! Generated code is fenced into [`pb`], which the `client` feature uses on its own; everything
//! else here is the server side (`server` feature).

#[cfg(feature = "server")]
use std::sync::Arc;

#[cfg(feature = "server")]
use tonic::{Request, Response, Status};

#[cfg(feature = "server")]
use crate::backend::parse_pkcs8;
#[cfg(feature = "server")]
use crate::jose::Alg;
#[cfg(feature = "server")]
use crate::keyring::{KeyInfo, KeyState};
#[cfg(feature = "server")]
use crate::policy::Caller;
#[cfg(feature = "server")]
use crate::secret::SecretBytes;
#[cfg(feature = "server")]
use crate::service::{self, Origin, Service};
#[cfg(feature = "server")]
use crate::tls::IdentityKind;

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

#[cfg(feature = "server")]
use pb::key_service_server::KeyService;
#[cfg(feature = "server")]
use pb::signing_service_server::SigningService;

/// How callers on one listener are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg(feature = "server")]
pub enum Listener {
    /// Mutual TLS: the verified client certificate names the caller.
    Tls(IdentityKind),
    /// Unix socket: the kernel's peer credentials name the caller.
    Unix,
    /// Plain TCP (`danger_plaintext`): every caller is the anonymous `plaintext` caller.
    DangerPlaintext,
}

/// Both gRPC services over one [`Service`], for one listener.
#[derive(Clone)]
#[cfg(feature = "server")]
pub struct Api {
    /// The domain service.
    service: Arc<Service>,
    /// How this listener's callers are identified.
    listener: Listener,
}

#[cfg(feature = "server")]
impl Api {
    /// Wrap a service for a listener.
    pub fn new(service: Arc<Service>, listener: Listener) -> Self {
        Api { service, listener }
    }

    /// Who sent `req`, with a fresh request id.
    ///
    /// # Errors
    /// UNAUTHENTICATED when the connection carries no usable identity (cannot happen on a
    /// TLS listener, whose handshake requires a verified certificate, unless the certificate
    /// lacks the configured identity field).
    fn origin<T>(&self, req: &Request<T>) -> std::result::Result<Origin, Status> {
        let caller = match self.listener {
            Listener::Tls(kind) => {
                let certs = req
                    .peer_certs()
                    .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
                let leaf = certs
                    .first()
                    .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
                let id = crate::tls::identity_of(leaf.as_ref(), kind).map_err(|e| {
                    Status::unauthenticated(format!(
                        "{e}; this daemon names callers by {}",
                        match kind {
                            IdentityKind::Spiffe => "their spiffe:// URI SAN",
                            IdentityKind::Dns => "their DNS SAN",
                            IdentityKind::Cn => "their subject CN",
                        }
                    ))
                })?;
                Caller::tls(id)
            }
            Listener::Unix => {
                let cred = req
                    .extensions()
                    .get::<tonic::transport::server::UdsConnectInfo>()
                    .and_then(|i| i.peer_cred)
                    .ok_or_else(|| {
                        Status::unauthenticated("the peer's credentials are not available")
                    })?;
                Caller::unix(cred.uid(), cred.gid())
            }
            Listener::DangerPlaintext => Caller::plaintext(),
        };
        Ok(Origin::new(caller))
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
#[cfg(feature = "server")]
pub fn status(e: service::Error) -> Status {
    status_for(e, &service::request_id())
}

/// [`status`] for a request whose id is already known (it is also in the audit record).
#[cfg(feature = "server")]
pub fn status_for(e: service::Error, id: &str) -> Status {
    use service::Error as E;
    let mut status = match e {
        E::PermissionDenied(m) => Status::permission_denied(m),
        E::InvalidArgument(m) => Status::invalid_argument(m),
        E::NotFound(m) => Status::not_found(m),
        E::AlreadyExists(m) => Status::already_exists(m),
        E::FailedPrecondition(m) => Status::failed_precondition(m),
        E::ResourceExhausted(m) => Status::resource_exhausted(m),
        E::Unavailable(m) => {
            tracing::warn!(request_id = %id, "{m}");
            Status::unavailable(format!("{m} (request id {id})"))
        }
        E::Internal(m) => {
            tracing::error!(request_id = %id, "{m}");
            Status::internal(format!("{m} (request id {id})"))
        }
    };
    if let Ok(v) = id.parse() {
        status.metadata_mut().insert(REQUEST_ID, v);
    }
    status
}

/// Response metadata carrying the request id, which the audit record also holds.
pub const REQUEST_ID: &str = "x-request-id";

/// A response with the request id in its metadata.
#[cfg(feature = "server")]
fn respond<T>(origin: &Origin, body: T) -> Response<T> {
    let mut r = Response::new(body);
    if let Ok(v) = origin.request_id.parse() {
        r.metadata_mut().insert(REQUEST_ID, v);
    }
    r
}

#[cfg(feature = "server")]
fn opt(s: String) -> Option<String> {
    if s.is_empty() { None } else { Some(s) }
}

#[cfg(feature = "server")]
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

#[cfg(feature = "server")]
fn signed(s: service::SignedJws) -> pb::SignJwsResponse {
    pb::SignJwsResponse {
        compact: s.compact,
        signature: s.signature,
        kid: s.kid,
        alg: s.alg.name().to_owned(),
        key_version: s.version,
    }
}

#[cfg(feature = "server")]
type Result<T> = std::result::Result<Response<T>, Status>;

#[cfg(feature = "server")]
#[tonic::async_trait]
impl KeyService for Api {
    async fn create_key(&self, req: Request<pb::CreateKeyRequest>) -> Result<pb::Key> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let k = self
            .service
            .create_key(&origin, &r.name, &r.alg, r.rsa_bits, r.fapi2)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        tracing::info!(key = %r.name, alg = %r.alg, "key created");
        Ok(respond(&origin, key_to_pb(k)))
    }

    async fn import_key(&self, req: Request<pb::ImportKeyRequest>) -> Result<pb::Key> {
        let origin = self.origin(&req)?;
        let mut r = req.into_inner();
        // Move the key bytes into a zeroizing buffer at once; the request no longer holds them.
        let der = SecretBytes::new(std::mem::take(&mut r.pkcs8_der));
        let material = parse_pkcs8(&der).map_err(|e| status(e.into()))?;
        drop(der);
        let k = self
            .service
            .import_key(&origin, &r.name, &r.alg, r.fapi2, material)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        tracing::info!(key = %r.name, alg = %r.alg, "key imported");
        Ok(respond(&origin, key_to_pb(k)))
    }

    async fn adopt_key(&self, req: Request<pb::AdoptKeyRequest>) -> Result<pb::Key> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let k = self
            .service
            .adopt_key(&origin, &r.name, &r.alg, r.fapi2, &r.uri)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        tracing::info!(key = %r.name, uri = %r.uri, "key adopted");
        Ok(respond(&origin, key_to_pb(k)))
    }

    async fn list_keys(&self, req: Request<pb::ListKeysRequest>) -> Result<pb::ListKeysResponse> {
        let origin = self.origin(&req)?;
        self.service
            .authorize_read(&origin, "read:list", "")
            .map_err(|e| status_for(e, &origin.request_id))?;
        Ok(respond(
            &origin,
            pb::ListKeysResponse {
                keys: self.service.keys().into_iter().map(key_to_pb).collect(),
            },
        ))
    }

    async fn get_key(&self, req: Request<pb::GetKeyRequest>) -> Result<pb::Key> {
        let origin = self.origin(&req)?;
        let name = req.into_inner().name;
        self.service
            .authorize_read(&origin, "read:key", &name)
            .map_err(|e| status_for(e, &origin.request_id))?;
        let k = self
            .service
            .key(&name)
            .map_err(|e| status_for(e, &origin.request_id))?;
        Ok(respond(&origin, key_to_pb(k)))
    }

    async fn rotate_key(&self, req: Request<pb::RotateKeyRequest>) -> Result<pb::Key> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let k = self
            .service
            .rotate_key(&origin, &r.name, &r.alg, r.rsa_bits)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        tracing::info!(key = %r.name, "key rotated");
        Ok(respond(&origin, key_to_pb(k)))
    }

    async fn activate_key_version(&self, req: Request<pb::KeyVersionRequest>) -> Result<pb::Key> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let k = self
            .service
            .activate(&origin, &r.name, r.version)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        tracing::info!(key = %r.name, version = r.version, "key version activated");
        Ok(respond(&origin, key_to_pb(k)))
    }

    async fn retire_key_version(&self, req: Request<pb::KeyVersionRequest>) -> Result<pb::Key> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let k = self
            .service
            .retire(&origin, &r.name, r.version)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        tracing::info!(key = %r.name, version = r.version, "key version retired");
        Ok(respond(&origin, key_to_pb(k)))
    }

    async fn destroy_key_version(&self, req: Request<pb::KeyVersionRequest>) -> Result<pb::Key> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        if r.version == 0 {
            return Err(Status::invalid_argument(
                "destroy needs an explicit version",
            ));
        }
        let k = self
            .service
            .destroy(&origin, &r.name, r.version)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        tracing::info!(key = %r.name, version = r.version, "key version destroyed");
        Ok(respond(&origin, key_to_pb(k)))
    }

    async fn get_jwks(&self, req: Request<pb::GetJwksRequest>) -> Result<pb::GetJwksResponse> {
        let origin = self.origin(&req)?;
        self.service
            .authorize_read(&origin, "read:jwks", "")
            .map_err(|e| status_for(e, &origin.request_id))?;
        let jwks = self
            .service
            .jwks()
            .map_err(|e| status_for(e, &origin.request_id))?;
        Ok(respond(
            &origin,
            pb::GetJwksResponse {
                jwks_json: jwks.to_string(),
            },
        ))
    }

    async fn set_certificate_chain(
        &self,
        req: Request<pb::SetCertificateChainRequest>,
    ) -> Result<pb::CertificateChain> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let version = self
            .service
            .set_certificate_chain(&origin, &r.name, r.version, &r.certificates)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        tracing::info!(key = %r.name, version, "certificate chain attached");
        Ok(respond(
            &origin,
            chain_to_pb(r.name, version, r.certificates),
        ))
    }

    async fn get_certificate_chain(
        &self,
        req: Request<pb::GetCertificateChainRequest>,
    ) -> Result<pb::CertificateChain> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let (version, certs) = self
            .service
            .certificate_chain(&origin, &r.name, r.version)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        Ok(respond(&origin, chain_to_pb(r.name, version, certs)))
    }
}

#[cfg(feature = "server")]
fn chain_to_pb(name: String, version: u32, certificates: Vec<Vec<u8>>) -> pb::CertificateChain {
    pb::CertificateChain {
        x5t_s256: certificates
            .first()
            .map(|c| crate::jose::x5t_s256(c))
            .unwrap_or_default(),
        name,
        version,
        certificates,
    }
}

#[cfg(feature = "server")]
#[tonic::async_trait]
impl SigningService for Api {
    async fn sign_jws(&self, req: Request<pb::SignJwsRequest>) -> Result<pb::SignJwsResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let s = self
            .service
            .sign_jws(&origin, &r.key, &r.protected_header, &r.payload)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        Ok(respond(&origin, signed(s)))
    }

    async fn sign_raw(&self, req: Request<pb::SignRawRequest>) -> Result<pb::SignRawResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let alg = match opt(r.alg) {
            Some(a) => Some(Alg::parse(&a).map_err(|e| status(e.into()))?),
            None => None,
        };
        let s = self
            .service
            .sign_raw(&origin, &r.key, &r.data, alg)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        Ok(respond(
            &origin,
            pb::SignRawResponse {
                signature: s.signature,
                kid: s.kid,
                alg: s.alg.name().to_owned(),
                key_version: s.version,
            },
        ))
    }

    async fn sign_id_token(
        &self,
        req: Request<pb::SignIdTokenRequest>,
    ) -> Result<pb::SignJwsResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let input = service::IdTokenInput {
            claims_json: r.claims_json,
            lifetime: r.lifetime_seconds.into(),
            access_token: opt(r.access_token),
            code: opt(r.code),
        };
        let s = self
            .service
            .sign_id_token(&origin, &r.key, input)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        Ok(respond(&origin, signed(s)))
    }

    async fn sign_request_object(
        &self,
        req: Request<pb::SignRequestObjectRequest>,
    ) -> Result<pb::SignJwsResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let input = service::RequestObjectInput {
            client_id: r.client_id,
            audience: r.audience,
            claims_json: r.claims_json,
            lifetime: r.lifetime_seconds.into(),
        };
        let s = self
            .service
            .sign_request_object(&origin, &r.key, input)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        Ok(respond(&origin, signed(s)))
    }

    async fn sign_client_assertion(
        &self,
        req: Request<pb::SignClientAssertionRequest>,
    ) -> Result<pb::SignJwsResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let input = service::ClientAssertionInput {
            client_id: r.client_id,
            audience: r.audience,
            lifetime: r.lifetime_seconds.into(),
        };
        let s = self
            .service
            .sign_client_assertion(&origin, &r.key, input)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        Ok(respond(&origin, signed(s)))
    }

    async fn sign_dpop_proof(
        &self,
        req: Request<pb::SignDpopProofRequest>,
    ) -> Result<pb::SignJwsResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let input = service::DpopInput {
            htm: r.htm,
            htu: r.htu,
            access_token: opt(r.access_token),
            nonce: opt(r.nonce),
        };
        let s = self
            .service
            .sign_dpop_proof(&origin, &r.key, input)
            .await
            .map_err(|e| status_for(e, &origin.request_id))?;
        Ok(respond(&origin, signed(s)))
    }
}

#[cfg(all(test, feature = "server"))]
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
