//! The signing service: resolve key → build signing input (JOSE) → hash where the algorithm
//! allows → backend signs on its workers → check the signature → respond.
//!
//! Async, transport-free: the gRPC layer maps requests into these calls and [`Error`] into
//! statuses; the CLI's bench drives it too. Holds the clock and jti source, so the JOSE layer
//! stays pure.
//!
//! Every request names its [`Origin`] (the caller and a request id). The [`Policy`] is
//! evaluated twice, both times before any device call: operation and key before the key is
//! even resolved (so an unauthorised caller learns nothing about keys), then the claims of the
//! exact payload about to be signed, followed by the rate limits. Each request ends with one
//! [`Record`] in the audit trail; with `fail_closed`, a signature whose record cannot be
//! written is withheld.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::audit::{self, Audit, Record};
use crate::backend::{BackendError, PrivateKeyMaterial};
use crate::jose::{self, Alg, JoseError};
use crate::keyring::{KeyInfo, Keyring, KeyringError, VersionInfo};
use crate::policy::{Caller, Claims, Operation, Policy, PolicyError, Request, Via};

/// A source of time, so tests can pin it and the JOSE layer never reads a clock.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since the Unix epoch.
    fn now(&self) -> u64;
}

/// The system clock. FAPI verifiers reject `iat` more than 60 s ahead: run NTP.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    }
}

/// Limits and safety switches of the service.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Largest header + payload (or raw input) accepted for signing, in bytes.
    pub max_payload_bytes: usize,
    /// How long a signature may take before the caller gets `Unavailable`.
    pub sign_timeout: Duration,
    /// Verify every signature with the public key before returning it, so a faulty device
    /// can never hand a caller a wrong signature.
    pub verify_signatures: bool,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            max_payload_bytes: 64 * 1024,
            sign_timeout: Duration::from_secs(10),
            verify_signatures: true,
        }
    }
}

/// A produced JWS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedJws {
    /// `header.payload.signature`.
    pub compact: String,
    /// The signature alone, base64url.
    pub signature: String,
    /// kid of the version that signed.
    pub kid: String,
    /// alg used.
    pub alg: Alg,
    /// Version that signed.
    pub version: u32,
}

/// A raw signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSignature {
    /// JOSE encoding.
    pub signature: Vec<u8>,
    /// kid of the version that signed.
    pub kid: String,
    /// alg used.
    pub alg: Alg,
    /// Version that signed.
    pub version: u32,
}

/// Inputs of an ID token, as the API receives them.
#[derive(Debug, Clone, Default)]
pub struct IdTokenInput {
    /// JSON object of claims (iss, sub, aud, …).
    pub claims_json: String,
    /// Seconds; 0 = 300.
    pub lifetime: u64,
    /// For `at_hash`.
    pub access_token: Option<String>,
    /// For `c_hash`.
    pub code: Option<String>,
}

/// Inputs of a JAR request object.
#[derive(Debug, Clone, Default)]
pub struct RequestObjectInput {
    /// The client.
    pub client_id: String,
    /// The authorization server's issuer.
    pub audience: String,
    /// JSON object of authorization request parameters.
    pub claims_json: String,
    /// Seconds; 0 = 300.
    pub lifetime: u64,
}

/// Inputs of a client assertion.
#[derive(Debug, Clone, Default)]
pub struct ClientAssertionInput {
    /// The client.
    pub client_id: String,
    /// The authorization server's issuer, one string.
    pub audience: String,
    /// Seconds; 0 = 60.
    pub lifetime: u64,
}

/// Inputs of a DPoP proof.
#[derive(Debug, Clone, Default)]
pub struct DpopInput {
    /// HTTP method.
    pub htm: String,
    /// HTTP target URI.
    pub htu: String,
    /// Access token being presented, for `ath`.
    pub access_token: Option<String>,
    /// Server-provided nonce.
    pub nonce: Option<String>,
}

/// What went wrong, in the categories a caller can act on. Exactly one place (the API layer)
/// turns these into wire statuses.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or does not fit the key.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such key or version.
    #[error("{0}")]
    NotFound(String),
    /// A key by that name exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The key's state does not allow it (retired, no active version, FAPI mode).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The device cannot be used right now; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// The device's queue is full, or a rate limit is exhausted.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller's policy does not allow this request.
    #[error("{0}")]
    PermissionDenied(String),
    /// A bug or a device misbehaving; details are in the log only.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The gRPC-style name of the category, for audit records.
    pub fn code_name(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::NotFound(_) => "not_found",
            Error::AlreadyExists(_) => "already_exists",
            Error::FailedPrecondition(_) => "failed_precondition",
            Error::Unavailable(_) => "unavailable",
            Error::ResourceExhausted(_) => "resource_exhausted",
            Error::PermissionDenied(_) => "permission_denied",
            Error::Internal(_) => "internal",
        }
    }
}

impl From<PolicyError> for Error {
    fn from(e: PolicyError) -> Self {
        if e.is_rate_limit() {
            Error::ResourceExhausted(e.to_string())
        } else {
            Error::PermissionDenied(e.to_string())
        }
    }
}

/// Who is asking, and the id that ties the answer, the audit record and the logs together.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The authenticated caller.
    pub caller: Caller,
    /// Random request id (16 hex digits).
    pub request_id: String,
}

impl Origin {
    /// A request from `caller` with a fresh id.
    pub fn new(caller: Caller) -> Origin {
        Origin {
            caller,
            request_id: request_id(),
        }
    }

    /// The daemon itself (dev set-up, benchmarks): not subject to policy, still audited.
    pub fn in_process() -> Origin {
        Origin::new(Caller::in_process())
    }
}

/// 64 random bits, hex. A failing RNG only makes ids less unique, never blocks a request.
pub fn request_id() -> String {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One request in flight: what policy and the audit record need to know about it.
struct Call<'a> {
    /// Who asks.
    origin: &'a Origin,
    /// What for.
    op: Operation,
    /// Which key.
    key: &'a str,
    /// Arrival, for the latency.
    started: std::time::Instant,
    /// The record being filled in.
    record: Record,
    /// Which rule allowed it (for its rate limit).
    grant: Option<crate::policy::Grant>,
}

impl From<JoseError> for Error {
    fn from(e: JoseError) -> Self {
        match e {
            JoseError::SignatureLength { .. } => {
                tracing::error!(error = %e, "device returned a signature of the wrong length");
                Error::Unavailable(
                    "the signing device returned an invalid signature; it was not released".into(),
                )
            }
            JoseError::FapiAlgNotAllowed { .. } | JoseError::FapiKeyTooSmall { .. } => {
                Error::FailedPrecondition(e.to_string())
            }
            other => Error::InvalidArgument(other.to_string()),
        }
    }
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Self {
        match &e {
            BackendError::Busy(_) => {
                Error::ResourceExhausted("the signing device is busy; retry shortly".into())
            }
            BackendError::InvalidRequest(_) | BackendError::Import(_) => {
                Error::InvalidArgument(e.to_string())
            }
            BackendError::Unsupported(_) => Error::FailedPrecondition(e.to_string()),
            BackendError::KeyNotFound(_) => {
                tracing::error!(error = %e, "keyring names a key that is not on the device");
                Error::FailedPrecondition(
                    "this key version's private key is not on the device".into(),
                )
            }
            BackendError::PinRejected(_) => {
                tracing::error!(error = %e, "device refuses the configured PIN");
                Error::Unavailable("the signing device refuses the configured PIN".into())
            }
            BackendError::PinLocked => {
                tracing::error!(error = %e, "device PIN is locked");
                Error::FailedPrecondition(
                    "the signing device's PIN is locked; an operator must unblock it".into(),
                )
            }
            BackendError::TouchRequired => Error::Unavailable(
                "the key needs a touch on the signing device; nobody touched it in time".into(),
            ),
            BackendError::TouchTimeout => Error::Unavailable(
                "the signing device timed out waiting for a touch; nobody touched it".into(),
            ),
            BackendError::Unavailable(_)
            | BackendError::ShuttingDown
            | BackendError::Device { .. }
            | BackendError::Malformed(_) => {
                tracing::error!(error = %e, "device failure");
                Error::Unavailable(format!("signing device unavailable: {e}"))
            }
        }
    }
}

impl From<KeyringError> for Error {
    fn from(e: KeyringError) -> Self {
        match e {
            KeyringError::InvalidName(_) | KeyringError::UnsupportedKeySize(_) => {
                Error::InvalidArgument(e.to_string())
            }
            KeyringError::KeyNotFound(_)
            | KeyringError::VersionNotFound { .. }
            | KeyringError::NoChain { .. } => Error::NotFound(e.to_string()),
            KeyringError::InvalidChain { .. } => Error::InvalidArgument(e.to_string()),
            KeyringError::AlreadyExists(_) => Error::AlreadyExists(e.to_string()),
            KeyringError::NoActiveVersion(_) | KeyringError::InvalidState { .. } => {
                Error::FailedPrecondition(e.to_string())
            }
            KeyringError::Jose(j) => j.into(),
            KeyringError::Backend(b) => b.into(),
            KeyringError::Encode(_) => {
                tracing::error!(error = %e, "keyring record");
                Error::Internal("internal error in the keyring".into())
            }
        }
    }
}

/// The signing and key-management service.
pub struct Service {
    /// Keys and their versions.
    keyring: Arc<Keyring>,
    /// Time for iat/exp and created_at.
    clock: Arc<dyn Clock>,
    /// Limits.
    options: ServiceOptions,
    /// Who may do what; deny-all until [`Service::with_access`] sets one.
    policy: Arc<Policy>,
    /// Where each request is recorded.
    audit: Arc<Audit>,
    /// Origin of the monotonic time handed to the rate limiter.
    epoch: std::time::Instant,
}

impl Service {
    /// Wire a service. It refuses every remote caller until [`Service::with_access`] gives
    /// it a policy; in-process callers are not subject to policy.
    pub fn new(keyring: Arc<Keyring>, clock: Arc<dyn Clock>, options: ServiceOptions) -> Self {
        Service {
            keyring,
            clock,
            options,
            policy: Arc::new(Policy::deny_all()),
            audit: Arc::new(Audit::off()),
            epoch: std::time::Instant::now(),
        }
    }

    /// Set the caller policy and the audit trail.
    #[must_use]
    pub fn with_access(mut self, policy: Arc<Policy>, audit: Arc<Audit>) -> Self {
        self.policy = policy;
        self.audit = audit;
        self
    }

    /// The policy (shared by a second listener over the same keyring).
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The audit writer.
    pub fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    fn begin<'a>(&self, origin: &'a Origin, op: Operation, name: &str, key: &'a str) -> Call<'a> {
        Call {
            origin,
            op,
            key,
            started: std::time::Instant::now(),
            record: Record {
                time: audit::now_rfc3339(),
                request_id: origin.request_id.clone(),
                caller: origin.caller.identity.clone(),
                via: match origin.caller.via {
                    Via::Tls => "tls",
                    Via::Unix { .. } => "unix",
                    Via::DangerPlaintext => "plaintext",
                    Via::InProcess => "in-process",
                },
                operation: name.to_owned(),
                key: key.to_owned(),
                decision: "allow",
                ..Record::default()
            },
            grant: None,
        }
    }

    /// The early check: may this caller do this operation on this key at all?
    fn authorize(&self, call: &mut Call<'_>) -> Result<(), Error> {
        let req = Request {
            op: call.op,
            key: call.key,
            claims: None,
        };
        match self.policy.evaluate(&call.origin.caller, &req) {
            Ok(g) => {
                call.grant = Some(g);
                Ok(())
            }
            Err(e) => Err(Self::refused(call, e)),
        }
    }

    /// The late check, on what is about to be signed, then the rate limits.
    fn authorize_content(&self, call: &mut Call<'_>, claims: &Option<Claims>) -> Result<(), Error> {
        let req = Request {
            op: call.op,
            key: call.key,
            claims: Some(claims),
        };
        let grant = match self.policy.evaluate(&call.origin.caller, &req) {
            Ok(g) => g,
            Err(e) => return Err(Self::refused(call, e)),
        };
        call.grant = Some(grant);
        self.policy
            .admit(&call.origin.caller, grant, call.key, self.epoch.elapsed())
            .map_err(|e| Self::refused(call, e))
    }

    fn refused(call: &mut Call<'_>, e: PolicyError) -> Error {
        call.record.decision = if e.is_rate_limit() { "limited" } else { "deny" };
        call.record.reason = Some(audit_reason(&e));
        tracing::info!(request_id = %call.origin.request_id, caller = %call.origin.caller, op = %call.op, key = call.key, "refused: {e}");
        e.into()
    }

    /// Complete the audit record and write it; with fail-closed, a result whose record
    /// could not be written is replaced by an error.
    fn finish<T>(&self, mut call: Call<'_>, r: Result<T, Error>) -> Result<T, Error> {
        call.record.outcome = match &r {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.code_name().to_owned(),
        };
        call.record.latency_us =
            u64::try_from(call.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match self.audit.write(&call.record) {
            Ok(()) => r,
            Err(e) => {
                tracing::error!(request_id = %call.origin.request_id, error = %e, "audit record not written");
                // Fail-closed withholds signatures. A key-management action has already
                // happened on the device, and reads return public data: saying "failed" for
                // those would mislead, so they are only logged.
                let signs = !matches!(call.op, Operation::Admin | Operation::Read);
                if self.audit.fail_closed() && signs && r.is_ok() {
                    Err(Error::Unavailable(
                        "the audit record could not be written, so the signature was withheld (audit.fail_closed)".into(),
                    ))
                } else {
                    r
                }
            }
        }
    }

    /// Check that `origin` may read public key material (key list, a key, the JWKS), and
    /// record the read.
    ///
    /// # Errors
    /// PermissionDenied for callers with no rule.
    pub fn authorize_read(&self, origin: &Origin, what: &str, key: &str) -> Result<(), Error> {
        let mut call = self.begin(origin, Operation::Read, what, key);
        let r = self.authorize(&mut call);
        self.finish(call, r)
    }

    /// The keyring (for health checks and refresh tasks).
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// The service's options.
    pub fn options(&self) -> &ServiceOptions {
        &self.options
    }

    fn check_size(&self, what: &str, len: usize) -> Result<(), Error> {
        if len > self.options.max_payload_bytes {
            return Err(Error::InvalidArgument(format!(
                "{what} of {len} bytes exceeds the limit of {} bytes",
                self.options.max_payload_bytes
            )));
        }
        Ok(())
    }

    /// Sign `input` with `version` using `alg`: hash on the host where allowed, sign on the
    /// device, refuse a signature of the wrong length, optionally verify it.
    async fn sign_input(
        &self,
        version: &VersionInfo,
        alg: Alg,
        input: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let op = alg.sign_op(input);
        let pending = self.keyring.backend().sign(
            &version.key_id,
            version.kind,
            op,
            std::time::Instant::now() + self.options.sign_timeout,
        );
        let sig = tokio::time::timeout(self.options.sign_timeout, pending)
            .await
            .map_err(|_| {
                tracing::error!(key = %version.name, version = version.version, "device did not answer in time");
                Error::Unavailable(format!(
                    "the signing device did not answer within {} ms",
                    self.options.sign_timeout.as_millis()
                ))
            })??;
        alg.check_signature(version.kind, &sig)?;
        if self.options.verify_signatures && !jose::verify(&version.public, alg, input, &sig) {
            tracing::error!(key = %version.name, version = version.version, kid = %version.kid, "device signature failed verification");
            return Err(Error::Unavailable(
                "the signing device produced a signature that does not verify; it was not released"
                    .into(),
            ));
        }
        Ok(sig)
    }

    async fn sign_parts(
        &self,
        call: &mut Call<'_>,
        version: &VersionInfo,
        parts: jose::JwsParts,
    ) -> Result<SignedJws, Error> {
        note_version(call, version, parts.alg);
        let claims = Claims::from_payload(call.op, &parts.payload);
        note_claims(call, &claims, &parts.header);
        self.authorize_content(call, &claims)?;
        let input = parts.signing_input();
        let sig = self
            .sign_input(version, parts.alg, input.as_bytes())
            .await?;
        Ok(SignedJws {
            signature: jose::b64(&sig),
            compact: jose::compact(&input, &sig),
            kid: version.kid.clone(),
            alg: parts.alg,
            version: version.version,
        })
    }

    /// The active version of `key`, with the alg the caller asked for checked against it.
    fn resolve(&self, key: &str) -> Result<Arc<VersionInfo>, Error> {
        Ok(self.keyring.active(key)?)
    }

    fn check_alg(version: &VersionInfo, alg: Alg) -> Result<(), Error> {
        if !alg.fits(version.kind) {
            return Err(JoseError::AlgKeyMismatch {
                alg,
                key: version.kind,
            }
            .into());
        }
        if version.fapi2 {
            jose::check_fapi2(alg, version.kind)?;
        }
        Ok(())
    }

    /// Generic JWS: the caller's header and payload bytes, signed as given.
    ///
    /// # Errors
    /// InvalidArgument for a bad header or oversized input; key and device errors.
    pub async fn sign_jws(
        &self,
        origin: &Origin,
        key: &str,
        header: &[u8],
        payload: &[u8],
    ) -> Result<SignedJws, Error> {
        let mut call = self.begin(origin, Operation::Jws, "jws", key);
        let r = self.sign_jws_in(&mut call, key, header, payload).await;
        self.finish(call, r)
    }

    async fn sign_jws_in(
        &self,
        call: &mut Call<'_>,
        key: &str,
        header: &[u8],
        payload: &[u8],
    ) -> Result<SignedJws, Error> {
        self.authorize(call)?;
        self.check_size("header and payload", header.len() + payload.len())?;
        let version = self.resolve(key)?;
        let alg = jose::check_header(header, version.kind, &version.kid)?;
        Self::check_alg(&version, alg)?;
        let parts = jose::JwsParts {
            alg,
            header: header.to_vec(),
            payload: payload.to_vec(),
        };
        self.sign_parts(call, &version, parts).await
    }

    /// Raw signature over `data` with the key's alg, or `alg` when given.
    ///
    /// # Errors
    /// As for [`Service::sign_jws`].
    pub async fn sign_raw(
        &self,
        origin: &Origin,
        key: &str,
        data: &[u8],
        alg: Option<Alg>,
    ) -> Result<RawSignature, Error> {
        let mut call = self.begin(origin, Operation::Raw, "raw", key);
        let r = self.sign_raw_in(&mut call, key, data, alg).await;
        self.finish(call, r)
    }

    async fn sign_raw_in(
        &self,
        call: &mut Call<'_>,
        key: &str,
        data: &[u8],
        alg: Option<Alg>,
    ) -> Result<RawSignature, Error> {
        self.authorize(call)?;
        self.check_size("data", data.len())?;
        let version = self.resolve(key)?;
        let alg = alg.unwrap_or(version.alg);
        Self::check_alg(&version, alg)?;
        note_version(call, &version, alg);
        self.authorize_content(call, &None)?;
        let signature = self.sign_input(&version, alg, data).await?;
        Ok(RawSignature {
            signature,
            kid: version.kid.clone(),
            alg,
            version: version.version,
        })
    }

    /// An OpenID Connect ID token.
    ///
    /// # Errors
    /// InvalidArgument for missing or conflicting claims; key and device errors.
    pub async fn sign_id_token(
        &self,
        origin: &Origin,
        key: &str,
        input: IdTokenInput,
    ) -> Result<SignedJws, Error> {
        let mut call = self.begin(origin, Operation::IdToken, "id-token", key);
        let r = self.sign_id_token_in(&mut call, key, input).await;
        self.finish(call, r)
    }

    async fn sign_id_token_in(
        &self,
        call: &mut Call<'_>,
        key: &str,
        input: IdTokenInput,
    ) -> Result<SignedJws, Error> {
        self.authorize(call)?;
        self.check_size("claims", input.claims_json.len())?;
        let version = self.resolve(key)?;
        Self::check_alg(&version, version.alg)?;
        let req = jose::IdTokenRequest {
            claims: parse_object("claims_json", &input.claims_json)?,
            now: self.clock.now(),
            lifetime: if input.lifetime == 0 {
                300
            } else {
                input.lifetime
            },
            access_token: input.access_token,
            code: input.code,
            typ: None,
        };
        let parts = jose::id_token(key_ref(&version), &req)?;
        self.sign_parts(call, &version, parts).await
    }

    /// A JAR request object (RFC 9101).
    ///
    /// # Errors
    /// As for [`Service::sign_id_token`].
    pub async fn sign_request_object(
        &self,
        origin: &Origin,
        key: &str,
        input: RequestObjectInput,
    ) -> Result<SignedJws, Error> {
        let mut call = self.begin(origin, Operation::Jar, "jar", key);
        let r = self.sign_request_object_in(&mut call, key, input).await;
        self.finish(call, r)
    }

    async fn sign_request_object_in(
        &self,
        call: &mut Call<'_>,
        key: &str,
        input: RequestObjectInput,
    ) -> Result<SignedJws, Error> {
        self.authorize(call)?;
        self.check_size("claims", input.claims_json.len())?;
        let version = self.resolve(key)?;
        Self::check_alg(&version, version.alg)?;
        let req = jose::JarRequest {
            client_id: input.client_id,
            audience: input.audience,
            claims: if input.claims_json.trim().is_empty() {
                Map::new()
            } else {
                parse_object("claims_json", &input.claims_json)?
            },
            now: self.clock.now(),
            lifetime: if input.lifetime == 0 {
                300
            } else {
                input.lifetime
            },
            jti: new_jti()?,
        };
        let parts = jose::jar_request_object(key_ref(&version), &req)?;
        self.sign_parts(call, &version, parts).await
    }

    /// A `private_key_jwt` client assertion (RFC 7523).
    ///
    /// # Errors
    /// As for [`Service::sign_id_token`].
    pub async fn sign_client_assertion(
        &self,
        origin: &Origin,
        key: &str,
        input: ClientAssertionInput,
    ) -> Result<SignedJws, Error> {
        let mut call = self.begin(origin, Operation::ClientAssertion, "client-assertion", key);
        let r = self.sign_client_assertion_in(&mut call, key, input).await;
        self.finish(call, r)
    }

    async fn sign_client_assertion_in(
        &self,
        call: &mut Call<'_>,
        key: &str,
        input: ClientAssertionInput,
    ) -> Result<SignedJws, Error> {
        self.authorize(call)?;
        let version = self.resolve(key)?;
        Self::check_alg(&version, version.alg)?;
        let req = jose::ClientAssertionRequest {
            client_id: input.client_id,
            audience: input.audience,
            now: self.clock.now(),
            lifetime: if input.lifetime == 0 {
                60
            } else {
                input.lifetime
            },
            jti: new_jti()?,
            nbf: false,
        };
        let parts = jose::client_assertion(key_ref(&version), &req)?;
        self.sign_parts(call, &version, parts).await
    }

    /// A DPoP proof (RFC 9449).
    ///
    /// # Errors
    /// As for [`Service::sign_id_token`].
    pub async fn sign_dpop_proof(
        &self,
        origin: &Origin,
        key: &str,
        input: DpopInput,
    ) -> Result<SignedJws, Error> {
        let mut call = self.begin(origin, Operation::Dpop, "dpop", key);
        let r = self.sign_dpop_proof_in(&mut call, key, input).await;
        self.finish(call, r)
    }

    async fn sign_dpop_proof_in(
        &self,
        call: &mut Call<'_>,
        key: &str,
        input: DpopInput,
    ) -> Result<SignedJws, Error> {
        self.authorize(call)?;
        self.check_size(
            "access token",
            input.access_token.as_ref().map_or(0, String::len),
        )?;
        let version = self.resolve(key)?;
        Self::check_alg(&version, version.alg)?;
        let req = jose::DpopRequest {
            htm: input.htm,
            htu: input.htu,
            access_token: input.access_token,
            nonce: input.nonce,
            now: self.clock.now(),
            jti: new_jti()?,
        };
        let parts = jose::dpop_proof(&version.public, version.alg, &req)?;
        self.sign_parts(call, &version, parts).await
    }

    fn now(&self) -> i64 {
        i64::try_from(self.clock.now()).unwrap_or(i64::MAX)
    }

    /// Generate a key (version 1 active).
    ///
    /// # Errors
    /// Name, alg, FAPI and device errors.
    pub async fn create_key(
        &self,
        origin: &Origin,
        name: &str,
        alg: &str,
        rsa_bits: u32,
        fapi2: bool,
    ) -> Result<KeyInfo, Error> {
        let mut call = self.begin(origin, Operation::Admin, "admin:create", name);
        let r = async {
            self.authorize(&mut call)?;
            let alg = Alg::parse(alg)?;
            Ok(self
                .keyring
                .create(name, alg, rsa_bits, fapi2, self.now())
                .await?)
        }
        .await;
        self.finish(call, r)
    }

    /// Import PKCS#8 DER (migration). `der` is zeroized by the caller's [`crate::secret::SecretBytes`].
    ///
    /// # Errors
    /// Parse, alg, FAPI and device errors.
    pub async fn import_key(
        &self,
        origin: &Origin,
        name: &str,
        alg: &str,
        fapi2: bool,
        material: PrivateKeyMaterial,
    ) -> Result<KeyInfo, Error> {
        let mut call = self.begin(origin, Operation::Admin, "admin:import", name);
        let r = async {
            self.authorize(&mut call)?;
            let alg = Alg::parse(alg)?;
            Ok(self
                .keyring
                .import(name, alg, fapi2, material, self.now())
                .await?)
        }
        .await;
        self.finish(call, r)
    }

    /// Adopt a key pair by URI.
    ///
    /// # Errors
    /// URI, alg, FAPI and device errors.
    pub async fn adopt_key(
        &self,
        origin: &Origin,
        name: &str,
        alg: &str,
        fapi2: bool,
        uri: &str,
    ) -> Result<KeyInfo, Error> {
        let mut call = self.begin(origin, Operation::Admin, "admin:adopt", name);
        let r = async {
            self.authorize(&mut call)?;
            let alg = Alg::parse(alg)?;
            Ok(self
                .keyring
                .adopt(name, alg, fapi2, uri, self.now())
                .await?)
        }
        .await;
        self.finish(call, r)
    }

    /// Add a `next` version.
    ///
    /// # Errors
    /// Not found, alg, FAPI and device errors.
    pub async fn rotate_key(
        &self,
        origin: &Origin,
        name: &str,
        alg: &str,
        rsa_bits: u32,
    ) -> Result<KeyInfo, Error> {
        let mut call = self.begin(origin, Operation::Admin, "admin:rotate", name);
        let r = async {
            self.authorize(&mut call)?;
            let alg = if alg.is_empty() {
                None
            } else {
                Some(Alg::parse(alg)?)
            };
            Ok(self.keyring.rotate(name, alg, rsa_bits, self.now()).await?)
        }
        .await;
        self.finish(call, r)
    }

    /// Activate a version.
    ///
    /// # Errors
    /// Not found or wrong state.
    pub async fn activate(
        &self,
        origin: &Origin,
        name: &str,
        version: u32,
    ) -> Result<KeyInfo, Error> {
        let mut call = self.begin(origin, Operation::Admin, "admin:activate", name);
        call.record.version = (version != 0).then_some(version);
        let r = async {
            self.authorize(&mut call)?;
            Ok(self.keyring.activate(name, version).await?)
        }
        .await;
        self.finish(call, r)
    }

    /// Retire a version.
    ///
    /// # Errors
    /// Not found or wrong state.
    pub async fn retire(
        &self,
        origin: &Origin,
        name: &str,
        version: u32,
    ) -> Result<KeyInfo, Error> {
        let mut call = self.begin(origin, Operation::Admin, "admin:retire", name);
        call.record.version = (version != 0).then_some(version);
        let r = async {
            self.authorize(&mut call)?;
            Ok(self.keyring.retire(name, version).await?)
        }
        .await;
        self.finish(call, r)
    }

    /// Destroy a version.
    ///
    /// # Errors
    /// Not found, wrong state or device errors.
    pub async fn destroy(
        &self,
        origin: &Origin,
        name: &str,
        version: u32,
    ) -> Result<KeyInfo, Error> {
        let mut call = self.begin(origin, Operation::Admin, "admin:destroy", name);
        call.record.version = (version != 0).then_some(version);
        let r = async {
            self.authorize(&mut call)?;
            Ok(self.keyring.destroy(name, version).await?)
        }
        .await;
        self.finish(call, r)
    }

    /// Attach a certificate chain (DER, leaf first) to a version (0: active). Admin.
    ///
    /// # Errors
    /// Permission, not found, a chain whose leaf is for another key, device errors.
    pub async fn set_certificate_chain(
        &self,
        origin: &Origin,
        name: &str,
        version: u32,
        chain: &[Vec<u8>],
    ) -> Result<u32, Error> {
        let mut call = self.begin(origin, Operation::Admin, "admin:set-chain", name);
        call.record.version = (version != 0).then_some(version);
        let r = async {
            self.authorize(&mut call)?;
            Ok(self.keyring.set_chain(name, version, chain).await?)
        }
        .await;
        self.finish(call, r)
    }

    /// The certificate chain attached to a version (0: active): public data, so any caller
    /// with a rule may read it.
    ///
    /// # Errors
    /// Permission, not found (no such key, version or chain), device errors.
    pub async fn certificate_chain(
        &self,
        origin: &Origin,
        name: &str,
        version: u32,
    ) -> Result<(u32, Vec<Vec<u8>>), Error> {
        self.authorize_read(origin, "read:chain", name)?;
        Ok(self.keyring.chain(name, version).await?)
    }

    /// One key.
    ///
    /// # Errors
    /// Not found.
    pub fn key(&self, name: &str) -> Result<KeyInfo, Error> {
        Ok(self.keyring.get(name)?)
    }

    /// Every key.
    pub fn keys(&self) -> Vec<KeyInfo> {
        self.keyring.list()
    }

    /// The JWKS.
    ///
    /// # Errors
    /// Internal JOSE errors.
    pub fn jwks(&self) -> Result<Value, Error> {
        Ok(self.keyring.jwks()?)
    }
}

fn note_version(call: &mut Call<'_>, v: &VersionInfo, alg: Alg) {
    call.record.version = Some(v.version);
    call.record.kid = Some(v.kid.clone());
    call.record.alg = Some(alg.name().to_owned());
}

fn note_claims(call: &mut Call<'_>, claims: &Option<Claims>, header: &[u8]) {
    call.record.typ = serde_json::from_slice::<Value>(header)
        .ok()
        .and_then(|h| h.get("typ").and_then(Value::as_str).map(str::to_owned));
    if let Some(c) = claims {
        call.record.iss_hash = c.iss.as_deref().map(audit::hash);
        call.record.aud_hash = c.aud.iter().map(|a| audit::hash(a)).collect();
        call.record.sub_hash = c.sub.as_deref().map(audit::hash);
        call.record.jti.clone_from(&c.jti);
    }
}

/// What the audit trail says about a refusal: the rule that failed, never claim values.
fn audit_reason(e: &PolicyError) -> String {
    match e {
        PolicyError::UnknownCaller { .. } => "no rule for caller".into(),
        PolicyError::OperationNotAllowed { .. } => "operation or key not allowed".into(),
        PolicyError::ClaimMissing { claim, .. } => format!("{claim} missing"),
        PolicyError::ClaimNotAllowed { claim, .. } => format!("{claim} not allowed"),
        PolicyError::NotClaims { .. } => "payload is not a claims set".into(),
        PolicyError::RateLimited { scope, rate, .. } => format!("rate limit {rate} of {scope}"),
    }
}

fn key_ref(v: &VersionInfo) -> jose::KeyRef<'_> {
    jose::KeyRef {
        kid: &v.kid,
        kind: v.kind,
        alg: v.alg,
    }
}

fn parse_object(field: &str, json: &str) -> Result<Map<String, Value>, Error> {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::InvalidArgument(format!(
            "{field} must be a JSON object"
        ))),
        Err(e) => Err(Error::InvalidArgument(format!(
            "{field} is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))),
    }
}

/// 128 random bits, base64url: unique per token as RFC 7519/9449 require.
fn new_jti() -> Result<String, Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| {
        tracing::error!(error = %e, "system RNG failed");
        Error::Internal("random number generator failed".into())
    })?;
    Ok(jose::b64(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jtis_are_distinct_and_long() -> Result<(), Error> {
        let (a, b) = (new_jti()?, new_jti()?);
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        Ok(())
    }

    #[test]
    fn claims_must_be_a_json_object() {
        assert!(parse_object("c", "{\"a\":1}").is_ok());
        assert!(
            matches!(parse_object("c", "[1]"), Err(Error::InvalidArgument(m)) if m.contains("JSON object"))
        );
        assert!(
            matches!(parse_object("c", "{"), Err(Error::InvalidArgument(m)) if m.contains("line 1"))
        );
    }

    #[test]
    fn busy_device_is_resource_exhausted() {
        assert!(matches!(
            Error::from(BackendError::Busy(8)),
            Error::ResourceExhausted(_)
        ));
        assert!(matches!(
            Error::from(KeyringError::NoActiveVersion("k".into())),
            Error::FailedPrecondition(_)
        ));
    }
}
