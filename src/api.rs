//! The gRPC layer: authenticates the caller of each request (client certificate, Unix peer
//! credentials, or nobody on a danger-plaintext listener), maps `sigil.v1` requests to service
//! calls and `service::Error` to `tonic::Status` — the only place that does either. The one
//! table from error kinds to gRPC codes is `code`; `status_for` logs each failure's whole
//! chain under its request id and gives the caller the stable message.
//! Generated code is fenced into [`pb`], which the `client` feature uses on its own; everything
//! else here is the server side (`server` feature).

#[cfg(feature = "server")]
use std::sync::Arc;

#[cfg(feature = "server")]
use tonic::{Request, Response, Status};

#[cfg(feature = "server")]
use crate::backend::parse_pkcs8;
#[cfg(feature = "server")]
use crate::jose::{Alg, TokenType};
#[cfg(feature = "server")]
use crate::keyring::{KeyInfo, KeySize, KeyState, Leftover};
#[cfg(feature = "server")]
use crate::policy::Caller;
#[cfg(feature = "server")]
use crate::secret::SecretBytes;
#[cfg(feature = "server")]
use crate::service::{self, ErrorKind, Origin, Service};
#[cfg(feature = "server")]
use crate::tls::IdentityKind;

#[cfg(feature = "server")]
mod stream;
#[cfg(feature = "server")]
pub use stream::{Drain, MAX_IN_FLIGHT as STREAM_MAX_IN_FLIGHT};

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

    /// What Debug shows of a secret string field: whether it is set, never its value.
    fn redacted(s: &str) -> &'static str {
        if s.is_empty() { "" } else { "<redacted>" }
    }

    impl std::fmt::Debug for SignIdTokenRequest {
        // Hand-written: the access token and code are secrets, the claims may hold personal
        // data (build.rs skips the derived Debug).
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SignIdTokenRequest")
                .field("key", &self.key)
                .field(
                    "claims_json",
                    &format_args!("<{} bytes>", self.claims_json.len()),
                )
                .field("lifetime_seconds", &self.lifetime_seconds)
                .field("access_token", &redacted(&self.access_token))
                .field("code", &redacted(&self.code))
                .field("state", &redacted(&self.state))
                .field("typ", &self.typ)
                .finish()
        }
    }

    impl std::fmt::Debug for SignJarmRequest {
        // Hand-written: the response parameters carry the authorization code (build.rs skips
        // the derived Debug).
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SignJarmRequest")
                .field("key", &self.key)
                .field("issuer", &self.issuer)
                .field("client_id", &self.client_id)
                .field(
                    "response_json",
                    &format_args!("<{} bytes>", self.response_json.len()),
                )
                .field("lifetime_seconds", &self.lifetime_seconds)
                .finish()
        }
    }

    impl std::fmt::Debug for SignIntrospectionRequest {
        // Hand-written: the introspection result names a subject and may hold personal data
        // (build.rs skips the derived Debug).
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SignIntrospectionRequest")
                .field("key", &self.key)
                .field("issuer", &self.issuer)
                .field("audience", &self.audience)
                .field(
                    "introspection_json",
                    &format_args!("<{} bytes>", self.introspection_json.len()),
                )
                .finish()
        }
    }

    impl std::fmt::Debug for SignUserinfoRequest {
        // Hand-written: UserInfo claims are personal data (build.rs skips the derived Debug).
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SignUserinfoRequest")
                .field("key", &self.key)
                .field("issuer", &self.issuer)
                .field("audience", &self.audience)
                .field(
                    "claims_json",
                    &format_args!("<{} bytes>", self.claims_json.len()),
                )
                .finish()
        }
    }

    impl std::fmt::Debug for SignDpopProofRequest {
        // Hand-written: the access token is a secret (build.rs skips the derived Debug).
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SignDpopProofRequest")
                .field("key", &self.key)
                .field("htm", &self.htm)
                .field("htu", &self.htu)
                .field("access_token", &redacted(&self.access_token))
                .field("nonce", &self.nonce)
                .finish()
        }
    }

    impl std::fmt::Debug for SignAccessTokenRequest {
        // Hand-written: the subject and claims may be personal data (build.rs skips the
        // derived Debug).
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SignAccessTokenRequest")
                .field("key", &self.key)
                .field("issuer", &self.issuer)
                .field("audience", &self.audience)
                .field("subject", &redacted(&self.subject))
                .field("client_id", &self.client_id)
                .field("scope", &self.scope)
                .field(
                    "claims_json",
                    &format_args!("<{} bytes>", self.claims_json.len()),
                )
                .field("lifetime_seconds", &self.lifetime_seconds)
                .field("dpop_jwk_json", &!self.dpop_jwk_json.is_empty())
                .field("dpop_jkt", &self.dpop_jkt)
                .field(
                    "client_certificate",
                    &format_args!("<{} bytes>", self.client_certificate.len()),
                )
                .finish()
        }
    }

    impl std::fmt::Debug for HttpField {
        // Hand-written: Authorization and DPoP values are bearer tokens and proofs (build.rs
        // skips the derived Debug); the name alone says what the field is.
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("HttpField")
                .field("name", &self.name)
                .field("value", &redacted(&self.value))
                .finish()
        }
    }

    impl std::fmt::Debug for SignLogoutTokenRequest {
        // Hand-written: the subject is personal data, the sid names a live session, the
        // claims may hold either (build.rs skips the derived Debug).
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SignLogoutTokenRequest")
                .field("key", &self.key)
                .field("issuer", &self.issuer)
                .field("audience", &self.audience)
                .field("subject", &redacted(&self.subject))
                .field("sid", &redacted(&self.sid))
                .field(
                    "claims_json",
                    &format_args!("<{} bytes>", self.claims_json.len()),
                )
                .field("lifetime_seconds", &self.lifetime_seconds)
                .finish()
        }
    }

    impl std::fmt::Debug for SignHttpRequestRequest {
        // Hand-written: the target URI may carry secrets in its query, the body is the
        // caller's data; field values are redacted by HttpField's Debug.
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SignHttpRequestRequest")
                .field("key", &self.key)
                .field("method", &self.method)
                .field("target_uri", &redacted(&self.target_uri))
                .field("headers", &self.headers)
                .field("body", &format_args!("<{} bytes>", self.body.len()))
                .field("label", &self.label)
                .finish()
        }
    }

    impl std::fmt::Debug for SignCibaRequestRequest {
        // Hand-written: the claims hold the user's hints and the client_notification_token,
        // a bearer token (build.rs skips the derived Debug).
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SignCibaRequestRequest")
                .field("key", &self.key)
                .field("client_id", &self.client_id)
                .field("audience", &self.audience)
                .field(
                    "claims_json",
                    &format_args!("<{} bytes>", self.claims_json.len()),
                )
                .field("lifetime_seconds", &self.lifetime_seconds)
                .finish()
        }
    }

    impl std::fmt::Debug for SignHttpResponseRequest {
        // Hand-written, as SignHttpRequestRequest: the request's URI and fields carry the
        // same secrets.
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SignHttpResponseRequest")
                .field("key", &self.key)
                .field("status", &self.status)
                .field("headers", &self.headers)
                .field("body", &format_args!("<{} bytes>", self.body.len()))
                .field("request_method", &self.request_method)
                .field("request_target_uri", &redacted(&self.request_target_uri))
                .field("request_headers", &self.request_headers)
                .field("request_label", &self.request_label)
                .field("label", &self.label)
                .finish()
        }
    }

    impl std::fmt::Debug for SignHttpMessageResponse {
        // Hand-written: the signature base holds the covered field values (Authorization,
        // DPoP); only its size is shown.
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SignHttpMessageResponse")
                .field("headers", &self.headers)
                .field(
                    "signature_base",
                    &format_args!("<{} bytes>", self.signature_base.len()),
                )
                .field("kid", &self.kid)
                .field("alg", &self.alg)
                .field("key_version", &self.key_version)
                .finish()
        }
    }

    impl std::fmt::Debug for DecryptJweResponse {
        // Hand-written: the plaintext is the secret sigild exists to protect.
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("DecryptJweResponse")
                .field(
                    "plaintext",
                    &format_args!("<{} bytes redacted>", self.plaintext.len()),
                )
                .field("key_version", &self.key_version)
                .field("kid", &self.kid)
                .field("alg", &self.alg)
                .field("enc", &self.enc)
                .finish_non_exhaustive()
        }
    }

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
use pb::decryption_service_server::DecryptionService;
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

/// The gRPC services over one [`Service`], for one listener.
#[derive(Clone)]
#[cfg(feature = "server")]
pub struct Api {
    /// The domain service.
    service: Arc<Service>,
    /// How this listener's callers are identified.
    listener: Listener,
    /// The shutdown signals that `SignStream` streams, which outlive their RPC's first
    /// answer, drain on.
    drain: Drain,
}

#[cfg(feature = "server")]
impl Api {
    /// Wrap a service for a listener.
    pub fn new(service: Arc<Service>, listener: Listener) -> Self {
        Api {
            service,
            listener,
            drain: Drain::default(),
        }
    }

    /// The same API with its `SignStream` streams following the servers' shutdown: read no
    /// more once `drain` says stop, answer what is in flight, then end UNAVAILABLE.
    #[must_use]
    pub fn draining(self, drain: Drain) -> Self {
        Api { drain, ..self }
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
        let mut origin = Origin::new(caller).with_deadline(caller_deadline(req.metadata()));
        if let Some(id) = req.extensions().get::<service::RequestId>() {
            origin.request_id.clone_from(&id.0);
        }
        Ok(origin)
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

    /// The decryption gRPC service, with the message size limit derived from the JWE limit.
    pub fn decryption_service(
        &self,
    ) -> pb::decryption_service_server::DecryptionServiceServer<Api> {
        // As for signing: a JWE up to twice the limit gets the daemon's own answer (the one
        // every undecryptable JWE gets), tonic's refusal beyond that.
        let max = self.service.options().max_jwe_bytes * 2 + 16 * 1024;
        pb::decryption_service_server::DecryptionServiceServer::new(self.clone())
            .max_decoding_message_size(max)
    }
}

/// How much earlier than the caller's `grpc-timeout` the daemon gives up: the caller's own
/// timer started before the request reached us, and the answer must travel back before it
/// fires, or the caller sees a bare CANCELLED instead of the daemon's status and request id.
#[cfg(feature = "server")]
const CALLER_DEADLINE_MARGIN: std::time::Duration = std::time::Duration::from_millis(50);

/// The caller's deadline from its `grpc-timeout` header (at most 8 digits and a unit, `H`, `M`,
/// `S`, `m`, `u` or `n`, as gRPC over HTTP/2 defines it), counted from now, less
/// [`CALLER_DEADLINE_MARGIN`] when the timeout is longer than twice that. `None` when absent
/// or malformed (tonic ignores a malformed one too). A signature is then given up by this
/// deadline, before tonic itself would cancel the request, so the caller gets the daemon's own
/// answer, and a job still queued never reaches the device.
#[cfg(feature = "server")]
fn caller_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Instant> {
    use std::time::Duration;
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = (value.get(..split)?, value.get(split..)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    let timeout = if timeout > CALLER_DEADLINE_MARGIN * 2 {
        timeout - CALLER_DEADLINE_MARGIN
    } else {
        timeout
    };
    std::time::Instant::now().checked_add(timeout)
}

/// The one table from error kinds to gRPC codes.
#[cfg(feature = "server")]
pub fn code(kind: ErrorKind) -> tonic::Code {
    match kind {
        ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
        ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
        ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
        ErrorKind::ResourceExhausted => tonic::Code::ResourceExhausted,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::Internal => tonic::Code::Internal,
    }
}

/// The status for a failed request whose id is `request_id` (also in the audit record and the
/// `x-request-id` metadata). The log gets the whole error chain, device detail included, under
/// that id: at error for internal failures, warn for other daemon-side faults, debug for the
/// caller's own mistakes. The caller gets the stable message, plus the request id to quote
/// when the fault is on the daemon's side or the reason is only in the log (a JWE that cannot
/// be decrypted).
#[cfg(feature = "server")]
pub fn status_for(e: &service::Error, request_id: &str) -> Status {
    crate::metrics::metrics().failed(e);
    let kind = e.kind();
    let chain = e.chain();
    let mut message = e.message();
    if kind == ErrorKind::Internal {
        tracing::error!(request_id = %request_id, %kind, error = %chain, "request failed");
    } else if e.is_fault() {
        tracing::warn!(request_id = %request_id, %kind, error = %chain, "request failed");
    } else {
        tracing::debug!(request_id = %request_id, %kind, error = %chain, "request refused");
    }
    if e.shows_request_id() {
        message = format!("{message} (request id {request_id})");
    }
    let mut status = Status::new(code(kind), message);
    if let Ok(v) = request_id.parse() {
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

/// A request's optional `alg` field ("" = the key's own), parsed.
#[cfg(feature = "server")]
fn opt_alg(alg: String, origin: &Origin) -> std::result::Result<Option<Alg>, Status> {
    opt(alg)
        .map(|a| Alg::parse(&a).map_err(|e| status_for(&e.into(), &origin.request_id)))
        .transpose()
}

/// The size fields of a create or rotate request.
#[cfg(feature = "server")]
fn key_size(rsa_bits: u32, curve: &str, origin: &Origin) -> std::result::Result<KeySize, Status> {
    let curve = match curve {
        "" => None,
        c => Some(
            crate::keyring::parse_curve(c)
                .map_err(|e| status_for(&e.into(), &origin.request_id))?,
        ),
    };
    Ok(KeySize { rsa_bits, curve })
}

/// The `serves` field of a create, import or adopt request.
#[cfg(feature = "server")]
fn serves(names: &[String], origin: &Origin) -> std::result::Result<Vec<TokenType>, Status> {
    service::parse_serves(names).map_err(|e| status_for(&e, &origin.request_id))
}

#[cfg(feature = "server")]
fn key_to_pb(k: KeyInfo) -> pb::Key {
    pb::Key {
        active_version: k.active().map(|v| v.version).unwrap_or_default(),
        name: k.name.to_string(),
        fapi2: k.fapi2,
        serves: k.serves.iter().map(|t| t.name().to_owned()).collect(),
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
                r#use: v.purpose().jwk_use().to_owned(),
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
fn raw_signed(s: service::RawSignature) -> pb::SignRawResponse {
    pb::SignRawResponse {
        signature: s.signature,
        kid: s.kid,
        alg: s.alg.name().to_owned(),
        key_version: s.version,
    }
}

#[cfg(feature = "server")]
fn http_fields(fields: Vec<pb::HttpField>) -> Vec<(String, String)> {
    fields.into_iter().map(|f| (f.name, f.value)).collect()
}

#[cfg(feature = "server")]
fn signed_http(s: service::SignedHttpMessage) -> pb::SignHttpMessageResponse {
    pb::SignHttpMessageResponse {
        headers: s
            .headers
            .into_iter()
            .map(|(name, value)| pb::HttpField { name, value })
            .collect(),
        signature_base: s.signature_base,
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
        let serves = serves(&r.serves, &origin)?;
        let k = self
            .service
            .create_key(
                &origin,
                &r.name,
                &r.alg,
                key_size(r.rsa_bits, &r.curve, &origin)?,
                r.fapi2,
                &serves,
            )
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        tracing::info!(key = %r.name, alg = %r.alg, "key created");
        Ok(respond(&origin, key_to_pb(k)))
    }

    async fn import_key(&self, req: Request<pb::ImportKeyRequest>) -> Result<pb::Key> {
        let origin = self.origin(&req)?;
        let mut r = req.into_inner();
        // Move the key bytes into a zeroizing buffer at once; the request no longer holds them.
        let der = SecretBytes::new(std::mem::take(&mut r.pkcs8_der));
        let material = parse_pkcs8(&der).map_err(|e| status_for(&e.into(), &origin.request_id))?;
        drop(der);
        let serves = serves(&r.serves, &origin)?;
        let k = self
            .service
            .import_key(&origin, &r.name, &r.alg, r.fapi2, material, &serves)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        tracing::info!(key = %r.name, alg = %r.alg, "key imported");
        Ok(respond(&origin, key_to_pb(k)))
    }

    async fn adopt_key(&self, req: Request<pb::AdoptKeyRequest>) -> Result<pb::Key> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let serves = serves(&r.serves, &origin)?;
        let k = self
            .service
            .adopt_key(&origin, &r.name, &r.alg, r.fapi2, &r.uri, &serves)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        tracing::info!(key = %r.name, uri = %r.uri, "key adopted");
        Ok(respond(&origin, key_to_pb(k)))
    }

    async fn list_keys(&self, req: Request<pb::ListKeysRequest>) -> Result<pb::ListKeysResponse> {
        let origin = self.origin(&req)?;
        let keys = self
            .service
            .read(&origin, "read:list", "", Service::keys)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(
            &origin,
            pb::ListKeysResponse {
                keys: keys.into_iter().map(key_to_pb).collect(),
            },
        ))
    }

    async fn get_key(&self, req: Request<pb::GetKeyRequest>) -> Result<pb::Key> {
        let origin = self.origin(&req)?;
        let name = req.into_inner().name;
        let k = self
            .service
            .read(&origin, "read:key", &name, |s| s.key(&name))
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, key_to_pb(k)))
    }

    async fn rotate_key(&self, req: Request<pb::RotateKeyRequest>) -> Result<pb::Key> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let k = self
            .service
            .rotate_key(
                &origin,
                &r.name,
                &r.alg,
                key_size(r.rsa_bits, &r.curve, &origin)?,
            )
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
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
            .map_err(|e| status_for(&e, &origin.request_id))?;
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
            .map_err(|e| status_for(&e, &origin.request_id))?;
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
            .map_err(|e| status_for(&e, &origin.request_id))?;
        tracing::info!(key = %r.name, version = r.version, "key version destroyed");
        Ok(respond(&origin, key_to_pb(k)))
    }

    async fn get_jwks(&self, req: Request<pb::GetJwksRequest>) -> Result<pb::GetJwksResponse> {
        let origin = self.origin(&req)?;
        let jwks = self
            .service
            .read(&origin, "read:jwks", "", Service::jwks)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
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
            .map_err(|e| status_for(&e, &origin.request_id))?;
        tracing::info!(key = %r.name, version, "certificate chain attached");
        Ok(respond(
            &origin,
            chain_to_pb(r.name, version, r.certificates),
        ))
    }

    async fn repair_keyring(
        &self,
        req: Request<pb::RepairKeyringRequest>,
    ) -> Result<pb::RepairKeyringResponse> {
        let origin = self.origin(&req)?;
        let dry_run = req.into_inner().dry_run;
        let report = self
            .service
            .repair_keyring(&origin, dry_run)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        tracing::info!(
            request_id = %origin.request_id,
            found = report.found.len(),
            repaired = report.repaired,
            "keyring repair"
        );
        Ok(respond(
            &origin,
            pb::RepairKeyringResponse {
                leftovers: report.found.iter().map(leftover_to_pb).collect(),
                repaired: report.repaired,
            },
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
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, chain_to_pb(r.name, version, certs)))
    }

    type WatchKeysStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = std::result::Result<pb::KeySet, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn watch_keys(
        &self,
        req: Request<pb::WatchKeysRequest>,
    ) -> Result<Self::WatchKeysStream> {
        let origin = self.origin(&req)?;
        let names = req.into_inner().names;
        let mut watch = self
            .service
            .watch_keys(&origin, &names)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        // One key set in flight: a slow watcher holds back only its own stream, and a
        // watcher that went away is noticed while waiting for the next change.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let request_id = origin.request_id.clone();
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    n = watch.next() => n,
                    () = tx.closed() => return,
                };
                let item = match next {
                    None => return,
                    Some(Ok(set)) => Ok(key_set_to_pb(set)),
                    Some(Err(e)) => Err(status_for(&e, &request_id)),
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(respond(
            &origin,
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as Self::WatchKeysStream,
        ))
    }
}

#[cfg(feature = "server")]
fn key_set_to_pb(set: service::KeySet) -> pb::KeySet {
    pb::KeySet {
        jwks_json: set.jwks.to_string(),
        keys: set.keys.into_iter().map(key_to_pb).collect(),
        generation: set.generation,
    }
}

#[cfg(feature = "server")]
fn leftover_to_pb(l: &Leftover) -> pb::KeyringLeftover {
    let (name, version) = l
        .version()
        .map(|(n, v)| (n.to_string(), v))
        .unwrap_or_default();
    pb::KeyringLeftover {
        kind: l.kind().to_owned(),
        name,
        version,
        key_id: l.key_id().map(|id| id.to_hex()).unwrap_or_default(),
        description: l.to_string(),
        action: l.action(),
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
        let origin = origin.with_version(r.version);
        let s = self
            .service
            .sign_jws(&origin, &r.key, &r.protected_header, &r.payload)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, signed(s)))
    }

    async fn sign_raw(&self, req: Request<pb::SignRawRequest>) -> Result<pb::SignRawResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let origin = origin.with_version(r.version);
        let alg = opt_alg(r.alg, &origin)?;
        let s = self
            .service
            .sign_raw(&origin, &r.key, &r.data, alg)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, raw_signed(s)))
    }

    async fn sign_id_token(
        &self,
        req: Request<pb::SignIdTokenRequest>,
    ) -> Result<pb::SignJwsResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let origin = origin.with_version(r.version);
        let input = service::IdTokenInput {
            claims_json: r.claims_json,
            lifetime: r.lifetime_seconds.into(),
            access_token: opt(r.access_token),
            code: opt(r.code),
            state: opt(r.state),
            typ: opt(r.typ),
        };
        let s = self
            .service
            .sign_id_token(&origin, &r.key, input)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
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
            .map_err(|e| status_for(&e, &origin.request_id))?;
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
            explicit_typ: r.explicit_typ,
            nbf: r.nbf,
        };
        let s = self
            .service
            .sign_client_assertion(&origin, &r.key, input)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
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
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, signed(s)))
    }

    async fn sign_tls_handshake(
        &self,
        req: Request<pb::SignTlsHandshakeRequest>,
    ) -> Result<pb::SignRawResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let alg = opt_alg(r.alg, &origin)?;
        let s = self
            .service
            .sign_tls_handshake(&origin, &r.key, &r.message, alg)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, raw_signed(s)))
    }

    async fn sign_jarm(&self, req: Request<pb::SignJarmRequest>) -> Result<pb::SignJwsResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let input = service::JarmInput {
            issuer: r.issuer,
            client_id: r.client_id,
            response_json: r.response_json,
            lifetime: r.lifetime_seconds.into(),
        };
        let s = self
            .service
            .sign_jarm(&origin, &r.key, input)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, signed(s)))
    }

    async fn sign_introspection(
        &self,
        req: Request<pb::SignIntrospectionRequest>,
    ) -> Result<pb::SignJwsResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let input = service::IntrospectionInput {
            issuer: r.issuer,
            audience: r.audience,
            introspection_json: r.introspection_json,
        };
        let s = self
            .service
            .sign_introspection(&origin, &r.key, input)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, signed(s)))
    }

    async fn sign_access_token(
        &self,
        req: Request<pb::SignAccessTokenRequest>,
    ) -> Result<pb::SignJwsResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let input = service::AccessTokenInput {
            issuer: r.issuer,
            audience: r.audience,
            subject: r.subject,
            client_id: r.client_id,
            scope: r.scope,
            claims_json: r.claims_json,
            lifetime: r.lifetime_seconds.into(),
            dpop_jwk_json: r.dpop_jwk_json,
            dpop_jkt: r.dpop_jkt,
            client_certificate: r.client_certificate,
        };
        let s = self
            .service
            .sign_access_token(&origin, &r.key, input)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, signed(s)))
    }

    async fn sign_logout_token(
        &self,
        req: Request<pb::SignLogoutTokenRequest>,
    ) -> Result<pb::SignJwsResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let input = service::LogoutTokenInput {
            issuer: r.issuer,
            audience: r.audience,
            subject: r.subject,
            sid: r.sid,
            claims_json: r.claims_json,
            lifetime: r.lifetime_seconds.into(),
        };
        let s = self
            .service
            .sign_logout_token(&origin, &r.key, input)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, signed(s)))
    }

    async fn sign_userinfo(
        &self,
        req: Request<pb::SignUserinfoRequest>,
    ) -> Result<pb::SignJwsResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let input = service::UserinfoInput {
            issuer: r.issuer,
            audience: r.audience,
            claims_json: r.claims_json,
        };
        let s = self
            .service
            .sign_userinfo(&origin, &r.key, input)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, signed(s)))
    }

    async fn sign_ciba_request(
        &self,
        req: Request<pb::SignCibaRequestRequest>,
    ) -> Result<pb::SignJwsResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let input = service::CibaRequestInput {
            client_id: r.client_id,
            audience: r.audience,
            claims_json: r.claims_json,
            lifetime: r.lifetime_seconds.into(),
        };
        let s = self
            .service
            .sign_ciba_request(&origin, &r.key, input)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, signed(s)))
    }

    async fn sign_http_request(
        &self,
        req: Request<pb::SignHttpRequestRequest>,
    ) -> Result<pb::SignHttpMessageResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let input = service::HttpRequestInput {
            method: r.method,
            target_uri: r.target_uri,
            headers: http_fields(r.headers),
            body: r.body,
            label: opt(r.label),
        };
        let s = self
            .service
            .sign_http_request(&origin, &r.key, input)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, signed_http(s)))
    }

    async fn sign_http_response(
        &self,
        req: Request<pb::SignHttpResponseRequest>,
    ) -> Result<pb::SignHttpMessageResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let input = service::HttpResponseInput {
            status: r.status,
            headers: http_fields(r.headers),
            body: r.body,
            request_method: r.request_method,
            request_target_uri: r.request_target_uri,
            request_headers: http_fields(r.request_headers),
            request_label: opt(r.request_label),
            label: opt(r.label),
        };
        let s = self
            .service
            .sign_http_response(&origin, &r.key, input)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, signed_http(s)))
    }

    type SignStreamStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = std::result::Result<pb::SignStreamResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn sign_stream(
        &self,
        req: Request<tonic::Streaming<pb::SignStreamRequest>>,
    ) -> Result<Self::SignStreamStream> {
        self.open_sign_stream(req)
    }

    async fn sign_digest(
        &self,
        req: Request<pb::SignDigestRequest>,
    ) -> Result<pb::SignRawResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let origin = origin.with_version(r.version);
        let alg = opt_alg(r.alg, &origin)?;
        let s = self
            .service
            .sign_digest(&origin, &r.key, alg, &r.digest)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(&origin, raw_signed(s)))
    }
}

#[cfg(feature = "server")]
#[tonic::async_trait]
impl DecryptionService for Api {
    async fn decrypt_jwe(
        &self,
        req: Request<pb::DecryptJweRequest>,
    ) -> Result<pb::DecryptJweResponse> {
        let origin = self.origin(&req)?;
        let r = req.into_inner();
        let d = self
            .service
            .decrypt_jwe(&origin, &r.key, &r.jwe, &r.allowed_algs, &r.allowed_encs)
            .await
            .map_err(|e| status_for(&e, &origin.request_id))?;
        Ok(respond(
            &origin,
            pb::DecryptJweResponse {
                // The one copy that leaves the daemon's zeroizing types: the wire needs it.
                plaintext: d.plaintext.expose().to_vec(),
                protected_header_json: d.protected_header,
                key_version: d.version,
                kid: d.kid,
                alg: d.alg.name().to_owned(),
                enc: d.enc.name().to_owned(),
            },
        ))
    }
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn grpc_timeout_sets_the_callers_deadline() {
        use std::time::{Duration, Instant};
        let deadline = |value: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", value.parse().unwrap());
            let before = Instant::now();
            caller_deadline(&m).map(|d| d.saturating_duration_since(before))
        };
        // Timeouts above 100 ms lose the 50 ms margin.
        let near = |got: Option<Duration>, want: Duration| {
            let want = if want > Duration::from_millis(100) {
                want - CALLER_DEADLINE_MARGIN
            } else {
                want
            };
            got.is_some_and(|g| g >= want && g < want + Duration::from_secs(1))
        };
        assert!(near(deadline("250m"), Duration::from_millis(250)));
        assert!(near(deadline("80m"), Duration::from_millis(80)));
        assert!(near(deadline("3S"), Duration::from_secs(3)));
        assert!(near(deadline("2M"), Duration::from_secs(120)));
        assert!(near(deadline("1H"), Duration::from_secs(3600)));
        assert!(near(deadline("1500000u"), Duration::from_millis(1500)));
        assert!(near(deadline("0n"), Duration::ZERO));
        // Tonic's own encoding of Request::set_timeout.
        let mut r = Request::new(());
        r.set_timeout(Duration::from_secs(30));
        assert!(near(
            caller_deadline(r.metadata()).map(|d| d.saturating_duration_since(Instant::now())),
            Duration::from_millis(29_100)
        ));
        for bad in ["", "S", "5", "5x", "-5S", "123456789S", "1.5S"] {
            assert_eq!(deadline(bad), None, "{bad:?}");
        }
        assert_eq!(caller_deadline(&tonic::metadata::MetadataMap::new()), None);
    }

    #[test]
    fn import_request_debug_hides_key_bytes() {
        let r = pb::ImportKeyRequest {
            name: "k".into(),
            alg: "ES256".into(),
            pkcs8_der: vec![0x42; 40],
            fapi2: false,
            serves: Vec::new(),
        };
        let s = format!("{r:?}");
        assert!(s.contains("40 bytes redacted"));
        assert!(!s.contains("66"));
    }

    #[test]
    fn id_token_and_dpop_requests_debug_hides_secrets() {
        let id = pb::SignIdTokenRequest {
            version: 0,
            key: "idp".into(),
            claims_json: r#"{"sub":"alice-the-subject"}"#.into(),
            lifetime_seconds: 60,
            access_token: "at-secret-value".into(),
            code: "code-secret-value".into(),
            state: "state-secret-value".into(),
            typ: "JWT".into(),
        };
        let dpop = pb::SignDpopProofRequest {
            key: "dpop".into(),
            htm: "POST".into(),
            htu: "https://rs.example/api".into(),
            access_token: "at-secret-value".into(),
            nonce: "n-1".into(),
        };
        for text in [format!("{id:?}"), format!("{dpop:?}")] {
            assert!(text.contains("<redacted>"), "{text}");
            for secret in [
                "at-secret-value",
                "code-secret-value",
                "state-secret-value",
                "alice-the-subject",
            ] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
        assert!(format!("{dpop:?}").contains("https://rs.example/api"));
    }

    #[test]
    fn http_signing_messages_debug_hides_field_values_uris_bodies_and_bases() {
        let field = |n: &str, v: &str| pb::HttpField {
            name: n.into(),
            value: v.into(),
        };
        let req = pb::SignHttpRequestRequest {
            key: "rs".into(),
            method: "POST".into(),
            target_uri: "https://rs.example/pay?token=uri-secret".into(),
            headers: vec![field("Authorization", "DPoP at-secret-value")],
            body: b"body-secret".to_vec(),
            label: String::new(),
        };
        let resp = pb::SignHttpResponseRequest {
            key: "rs".into(),
            status: 200,
            headers: vec![field("Set-Cookie", "cookie-secret")],
            body: b"body-secret".to_vec(),
            request_method: "POST".into(),
            request_target_uri: "https://rs.example/?code=uri-secret".into(),
            request_headers: vec![field("DPoP", "proof-secret")],
            request_label: String::new(),
            label: String::new(),
        };
        let out = pb::SignHttpMessageResponse {
            headers: vec![field("Signature", "sig=:AAAA:")],
            signature_base: "\"authorization\": DPoP at-secret-value".into(),
            kid: "k".into(),
            alg: "ed25519".into(),
            key_version: 1,
        };
        for text in [format!("{req:?}"), format!("{resp:?}"), format!("{out:?}")] {
            assert!(!text.contains("secret"), "{text}");
        }
        assert!(format!("{req:?}").contains("Authorization"));
    }

    #[test]
    fn response_requests_debug_hides_codes_and_personal_data() {
        let jarm = pb::SignJarmRequest {
            key: "op".into(),
            issuer: "https://as.example".into(),
            client_id: "client-1".into(),
            response_json: r#"{"code":"code-secret-value","state":"s"}"#.into(),
            lifetime_seconds: 60,
        };
        let intro = pb::SignIntrospectionRequest {
            key: "op".into(),
            issuer: "https://as.example".into(),
            audience: "https://rs.example".into(),
            introspection_json: r#"{"active":true,"sub":"alice-the-subject"}"#.into(),
        };
        let info = pb::SignUserinfoRequest {
            key: "op".into(),
            issuer: "https://as.example".into(),
            audience: "client-1".into(),
            claims_json: r#"{"sub":"alice-the-subject"}"#.into(),
        };
        for text in [
            format!("{jarm:?}"),
            format!("{intro:?}"),
            format!("{info:?}"),
        ] {
            assert!(
                text.contains("bytes>") && text.contains("https://as.example"),
                "{text}"
            );
            for secret in ["code-secret-value", "alice-the-subject"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
    }

    #[test]
    fn one_code_per_kind() {
        use tonic::Code;
        let table = [
            (ErrorKind::InvalidArgument, Code::InvalidArgument),
            (ErrorKind::NotFound, Code::NotFound),
            (ErrorKind::AlreadyExists, Code::AlreadyExists),
            (ErrorKind::FailedPrecondition, Code::FailedPrecondition),
            (ErrorKind::PermissionDenied, Code::PermissionDenied),
            (ErrorKind::ResourceExhausted, Code::ResourceExhausted),
            (ErrorKind::Unavailable, Code::Unavailable),
            (ErrorKind::Internal, Code::Internal),
        ];
        assert_eq!(table.len(), ErrorKind::ALL.len());
        for (kind, want) in table {
            assert_eq!(code(kind), want, "{kind}");
        }
    }

    /// Log lines captured by a subscriber installed for the current thread.
    fn logged(f: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = lines
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn device_detail_goes_to_the_log_not_the_caller() {
        let e = service::Error::from(crate::backend::BackendError::Device {
            function: "C_Sign".into(),
            code: "CKR_DEVICE_ERROR".into(),
        });
        let mut status = None;
        let log = logged(|| status = Some(status_for(&e, "00112233aabbccdd")));
        let status = status.unwrap_or_else(|| Status::unknown("not run"));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(!status.message().contains("CKR_"), "{}", status.message());
        assert!(
            status.message().ends_with("(request id 00112233aabbccdd)"),
            "{}",
            status.message()
        );
        assert_eq!(
            status
                .metadata()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok()),
            Some("00112233aabbccdd")
        );
        let line = log
            .lines()
            .find(|l| l.contains("00112233aabbccdd"))
            .unwrap_or_default();
        assert!(line.contains("WARN"), "{log}");
        assert!(
            line.contains("C_Sign") && line.contains("CKR_DEVICE_ERROR"),
            "{log}"
        );
    }

    #[test]
    fn caller_mistakes_keep_their_message_exactly() {
        let e = service::Error::from(crate::jose::JoseError::AlgNone);
        let status = status_for(&e, "00112233aabbccdd");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "JWS alg \"none\" is never allowed");
        assert!(status.metadata().get(REQUEST_ID).is_some());
    }

    #[test]
    fn issued_token_requests_debug_without_personal_data_or_tokens() {
        let at = pb::SignAccessTokenRequest {
            subject: "alice-248289761001".into(),
            claims_json: r#"{"email":"alice@example.com"}"#.into(),
            client_certificate: b"alice-cert".to_vec(),
            ..Default::default()
        };
        let logout = pb::SignLogoutTokenRequest {
            subject: "alice-248289761001".into(),
            sid: "08a5019c-17e1".into(),
            claims_json: r#"{"email":"alice@example.com"}"#.into(),
            ..Default::default()
        };
        let ciba = pb::SignCibaRequestRequest {
            claims_json: r#"{"login_hint":"alice","client_notification_token":"8d67dc78"}"#.into(),
            ..Default::default()
        };
        for dbg in [
            format!("{at:?}"),
            format!("{logout:?}"),
            format!("{ciba:?}"),
        ] {
            for secret in ["alice", "08a5019c", "8d67dc78"] {
                assert!(!dbg.contains(secret), "{dbg}");
            }
        }
    }
}
