//! The signing service: resolve key → build signing input (JOSE) → hash where the algorithm
//! allows → backend signs on its workers → check the signature → respond. Decryption of JWEs
//! ([`Service::decrypt_jwe`]) runs through the same authorisation, rate limits and audit trail.
//!
//! Async, transport-free: the gRPC layer maps requests into these calls and [`Error`] into
//! statuses; the CLI's bench drives it too. Holds the clock and jti source, so the JOSE layer
//! stays pure. Errors keep their causes ([`Error`]): the caller gets a stable message, the log
//! the device detail.
//!
//! Every request names its [`Origin`] (the caller and a request id). The [`Policy`] is
//! evaluated twice, both times before any device call: operation and key before the key is
//! even resolved (so an unauthorised caller learns nothing about keys), then the claims of the
//! exact payload about to be signed, followed by the rate limits. Each request ends with one
//! [`Record`] in the audit trail; with `fail_closed`, a signature whose record cannot be
//! written is withheld.
//!
//! A signature that does not verify is never released: it is made once more afresh (the
//! backend finds the key again, on a new session), and a device whose requests keep failing is
//! quarantined ([`quarantine`]) until a probe signature verifies.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::audit::{self, Audit, Record};
use crate::backend::{PrivateKeyMaterial, SignCheck};
use crate::crypto::SignOp;
use crate::jose::{self, Alg, KeyAlg, TokenType};
use crate::keyring::{KeyInfo, KeySize, Keyring, VersionInfo};
use crate::policy::{
    self as policy_rules, Caller, Claims, Operation, Policy, PolicyError, Request, Via,
};

mod decrypt;
mod digest;
mod error;
mod httpsig;
mod issued;
pub mod quarantine;
mod responses;
mod rotation;

pub use decrypt::Decrypted;
pub use error::{Chain, Error, ErrorKind, UNDECRYPTABLE};
pub use httpsig::{HttpRequestInput, HttpResponseInput, SignedHttpMessage};
pub use issued::{AccessTokenInput, CibaRequestInput, LogoutTokenInput};
pub use quarantine::Quarantine;
pub use responses::{IntrospectionInput, JARM_DEFAULT_LIFETIME, JarmInput, UserinfoInput};
pub use rotation::{KeySet, KeyWatch};

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
    /// Requests in a row whose signature did not verify, first and on the retry, before the
    /// device is quarantined (0: never).
    pub quarantine_after: u32,
    /// Time between two probe signatures while the device is quarantined.
    pub quarantine_probe: Duration,
    /// Largest compact JWE accepted for decryption, in bytes (`[decryption] max_jwe_bytes`);
    /// checked before the JWE is parsed.
    pub max_jwe_bytes: usize,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            max_payload_bytes: 64 * 1024,
            sign_timeout: Duration::from_secs(10),
            verify_signatures: true,
            quarantine_after: 3,
            quarantine_probe: Duration::from_secs(5),
            max_jwe_bytes: 1024 * 1024,
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
#[derive(Clone, Default)]
pub struct IdTokenInput {
    /// JSON object of claims (iss, sub, aud, …).
    pub claims_json: String,
    /// Seconds; 0 = 300.
    pub lifetime: u64,
    /// For `at_hash`.
    pub access_token: Option<String>,
    /// For `c_hash`.
    pub code: Option<String>,
    /// For `s_hash`: the authorization request's `state`, when the ID token is returned from
    /// the authorization endpoint as a detached signature.
    pub state: Option<String>,
    /// An explicit `typ` header (e.g. `JWT`); `None` = none.
    pub typ: Option<String>,
}

impl std::fmt::Debug for IdTokenInput {
    // Hand-written: the access token and code are secrets, claims may hold personal data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdTokenInput")
            .field(
                "claims_json",
                &format_args!("<{} bytes>", self.claims_json.len()),
            )
            .field("lifetime", &self.lifetime)
            .field("access_token", &redacted(&self.access_token))
            .field("code", &redacted(&self.code))
            .field("state", &redacted(&self.state))
            .field("typ", &self.typ)
            .finish()
    }
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
    /// Set `typ: client-authentication+jwt`.
    pub explicit_typ: bool,
    /// Also set `nbf = iat`.
    pub nbf: bool,
}

/// Inputs of a DPoP proof.
#[derive(Clone, Default)]
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

impl std::fmt::Debug for DpopInput {
    // Hand-written: the access token is a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopInput")
            .field("htm", &self.htm)
            .field("htu", &self.htu)
            .field("access_token", &redacted(&self.access_token))
            .field("nonce", &self.nonce)
            .finish()
    }
}

/// What Debug shows of an optional secret: whether it is there.
fn redacted(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| "<redacted>")
}

/// Who is asking, and the id that ties the answer, the audit record and the logs together.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The authenticated caller.
    pub caller: Caller,
    /// Random request id (16 hex digits).
    pub request_id: String,
    /// The caller's own deadline (gRPC `grpc-timeout`), when it set one: a signature is given
    /// up by then even when `[signing] timeout_ms` is longer, and refused at once when it has
    /// passed already.
    pub deadline: Option<std::time::Instant>,
    /// The key version the request names (its `version` field); 0: the active one, or for a
    /// generic JWS the version its header's `kid` names. A named version signs while it is
    /// active or within the grace period after it stopped being (`keyring.grace_seconds`).
    pub version: u32,
}

impl Origin {
    /// A request from `caller` with a fresh id and no deadline of its own.
    pub fn new(caller: Caller) -> Origin {
        Origin {
            caller,
            request_id: request_id(),
            deadline: None,
            version: 0,
        }
    }

    /// The same request naming key version `version` (0: the active one).
    pub fn with_version(self, version: u32) -> Origin {
        Origin { version, ..self }
    }

    /// The same request with the caller's deadline.
    pub fn with_deadline(self, deadline: Option<std::time::Instant>) -> Origin {
        Origin { deadline, ..self }
    }

    /// The daemon itself (dev set-up, benchmarks): not subject to policy, still audited.
    pub fn in_process() -> Origin {
        Origin::new(Caller::in_process())
    }
}

/// The id the gRPC layer gave a request before its handler ran (an `http` request extension),
/// so the handler's [`Origin`] uses the id its log lines already carry.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// 64 bits, hex: unique per thread, random across threads and runs. Each thread seeds a
/// counter from the OS RNG once and gives out SplitMix64 of its successive values (a
/// bijection, so one thread never repeats an id), which keeps a system call off every request.
/// A failing RNG only makes ids less unique, never blocks a request.
pub fn request_id() -> String {
    thread_local! {
        static NEXT: std::cell::Cell<u64> = std::cell::Cell::new({
            let mut b = [0u8; 8];
            let _ = getrandom::fill(&mut b);
            u64::from_le_bytes(b)
        });
    }
    let n = NEXT.with(|c| {
        let n = c.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        c.set(n);
        n
    });
    let mut z = n;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    base16ct::lower::encode_string(&z.to_be_bytes())
}

/// One request in flight: what policy and the audit record need to know about it. It owns
/// its data (no borrowed lifetimes), so request bodies can take it as `&mut Call` in an async
/// closure whose future must be `Send`.
struct Call {
    /// Who asks.
    caller: Caller,
    /// What for.
    op: Operation,
    /// Arrival, for the latency.
    started: std::time::Instant,
    /// The record being filled in.
    record: Record,
    /// Which rule allowed it (for its rate limit).
    grant: Option<crate::policy::Grant>,
    /// The caller's deadline ([`Origin::deadline`]).
    deadline: Option<std::time::Instant>,
    /// A generic JWS's header `typ` (None: none, or not a generic JWS): policy and the key's
    /// binding treat a JWS whose `typ` a profile owns as that profile's token.
    typ: Option<String>,
    /// The key version the request names ([`Origin::version`]); 0: none.
    version: u32,
    /// A generic JWS's header `kid`, which may name a version other than the active one.
    kid: Option<String>,
}

impl Call {
    /// The token type this request signs: its operation's, or for a generic JWS the profile
    /// its `typ` claims to be (`None` for requests that sign nothing).
    fn token(&self) -> Option<TokenType> {
        match self.op {
            Operation::Sign(TokenType::Jws) => Some(
                self.typ
                    .as_deref()
                    .and_then(TokenType::for_typ)
                    .unwrap_or(TokenType::Jws),
            ),
            op => op.token_type(),
        }
    }

    /// Record the token type ([`Call::token`]) in the audit record.
    fn note_token(&mut self) {
        self.record.token_type = self.token().map(TokenType::name);
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
    /// Who may do what; deny-all until [`Service::with_access`] sets one. Behind a lock so
    /// that a reload (SIGHUP) can replace it while requests run: each check takes the policy
    /// in effect once ([`Service::policy`]) and uses that one to the end.
    policy: std::sync::RwLock<Arc<Policy>>,
    /// Where each request is recorded.
    audit: Arc<Audit>,
    /// Origin of the monotonic time handed to the rate limiter.
    epoch: std::time::Instant,
    /// Whether the device is quarantined for producing signatures that do not verify.
    quarantine: Quarantine,
}

impl Service {
    /// Wire a service. It refuses every remote caller until [`Service::with_access`] gives
    /// it a policy; in-process callers are not subject to policy.
    pub fn new(keyring: Arc<Keyring>, clock: Arc<dyn Clock>, options: ServiceOptions) -> Self {
        let quarantine = Quarantine::new(options.quarantine_after, options.quarantine_probe);
        Service {
            keyring,
            clock,
            options,
            policy: std::sync::RwLock::new(Arc::new(Policy::deny_all())),
            audit: Arc::new(Audit::off()),
            epoch: std::time::Instant::now(),
            quarantine,
        }
    }

    /// Set the caller policy and the audit trail.
    #[must_use]
    pub fn with_access(mut self, policy: Arc<Policy>, audit: Arc<Audit>) -> Self {
        self.policy = std::sync::RwLock::new(policy);
        self.audit = audit;
        self
    }

    /// The policy in effect now (shared by a second listener over the same keyring). A
    /// request's checks use one such snapshot: a [`crate::policy::Grant`] names a rule of the
    /// policy that made it.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(
            &self
                .policy
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Put a new policy in effect (a reload): requests already past their checks finish
    /// under the old one, every later check uses this one. Its rate-limit buckets start full.
    pub fn set_policy(&self, policy: Arc<Policy>) {
        *self
            .policy
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
    }

    /// The audit writer.
    pub fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    /// The keyring (for health checks and refresh tasks).
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// The service's options.
    pub fn options(&self) -> &ServiceOptions {
        &self.options
    }

    /// The device's quarantine state (readiness reports NOT_SERVING while it is quarantined).
    pub fn quarantine(&self) -> &Quarantine {
        &self.quarantine
    }

    /// While the device is quarantined and a probe is due: sign a fixed message with the
    /// active version of a key and verify it; a verified probe lifts the quarantine. Returns
    /// whether the device may sign (not quarantined). Called by the readiness upkeep.
    pub async fn probe_quarantine(&self) -> bool {
        if !self.quarantine.probe_due() {
            return self.quarantine.since().is_none();
        }
        let mut versions: Vec<_> = match self.keyring.list() {
            Ok(keys) => keys
                .iter()
                .filter_map(|k| k.active().cloned())
                .filter(|v| v.alg.sign_alg().is_some())
                .collect(),
            Err(_) => Vec::new(),
        };
        versions.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
        if versions.is_empty() {
            tracing::warn!("quarantine probe: no key has an active version to sign with");
        }
        // The first version the device signs with decides; one it refuses (an algorithm it
        // lacks, a key gone) passes the probe on to the next, up to a few (each may take up to
        // the signing timeout on a device that does not answer).
        for version in versions.iter().take(PROBE_VERSIONS) {
            let deadline = std::time::Instant::now() + self.options.sign_timeout;
            let Some(alg) = version.alg.sign_alg() else {
                continue;
            };
            match self
                .device_sign(version, alg, PROBE_MESSAGE, deadline, true)
                .await
            {
                Ok(sig) if self.verifies(version, alg, PROBE_MESSAGE, &sig) => {
                    self.quarantine.lift();
                    return true;
                }
                Ok(_) => {
                    tracing::warn!(key = %version.name.as_str(), version = version.version, "quarantine probe: the signature still does not verify");
                    return false;
                }
                Err(e) => {
                    tracing::warn!(key = %version.name.as_str(), version = version.version, error = %e.chain(), "quarantine probe: the device did not sign");
                }
            }
        }
        false
    }

    /// Run one request: open its audit record, run `body` (which authorizes first), then
    /// complete and write the record. Every public operation goes through here, so none can
    /// skip the audit trail or the fail-closed rule.
    async fn run<T>(
        &self,
        origin: &Origin,
        op: Operation,
        name: &str,
        key: &str,
        body: impl AsyncFnOnce(&mut Call) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut call = self.begin(origin, op, name, key);
        let r = body(&mut call).await;
        self.finish(call, r)
    }

    fn begin(&self, origin: &Origin, op: Operation, name: &str, key: &str) -> Call {
        Call {
            caller: origin.caller.clone(),
            op,
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
                token_type: op.token_type().map(TokenType::name),
                key: key.to_owned(),
                decision: "allow",
                ..Record::default()
            },
            grant: None,
            deadline: origin.deadline,
            typ: None,
            version: origin.version,
            kid: None,
        }
    }

    /// Complete the audit record and write it; with fail-closed, a result whose record
    /// could not be written is replaced by an error.
    fn finish<T>(&self, mut call: Call, r: Result<T, Error>) -> Result<T, Error> {
        call.record.outcome = match &r {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.kind().name().to_owned(),
        };
        call.record.latency_us =
            u64::try_from(call.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match self.audit.write(&call.record) {
            Ok(()) => r,
            Err(e) => {
                tracing::error!(request_id = %call.record.request_id, error = %e, "audit record not written");
                crate::metrics::metrics().audit_write_failed();
                // Fail-closed withholds signatures and plaintexts. A key-management action has
                // already happened on the device, and reads return public data: saying
                // "failed" for those would mislead, so they are only logged.
                let signs = !matches!(call.op, Operation::Admin | Operation::Read);
                if self.audit.fail_closed() && signs && r.is_ok() {
                    Err(Error::AuditNotWritten(e))
                } else {
                    r
                }
            }
        }
    }

    /// The early check: may this caller do this operation on this key at all?
    fn authorize(&self, call: &mut Call) -> Result<(), Error> {
        let req = Request {
            op: call.op,
            key: &call.record.key,
            claims: None,
            typ: None,
        };
        match self.policy().evaluate(&call.caller, &req) {
            Ok(g) => {
                call.grant = Some(g);
                Ok(())
            }
            Err(e) => Err(Self::refused(call, e)),
        }
    }

    /// The late check, on what is about to be signed, then the rate limits.
    fn authorize_content(&self, call: &mut Call, claims: &Option<Claims>) -> Result<(), Error> {
        let req = Request {
            op: call.op,
            key: &call.record.key,
            claims: Some(claims),
            typ: call.typ.as_deref(),
        };
        let policy = self.policy();
        let grant = match policy.evaluate(&call.caller, &req) {
            Ok(g) => g,
            Err(e) => return Err(Self::refused(call, e)),
        };
        call.grant = Some(grant);
        policy
            .admit(&call.caller, grant, &call.record.key, self.epoch.elapsed())
            .map_err(|e| Self::refused(call, e))
    }

    fn refused(call: &mut Call, e: PolicyError) -> Error {
        call.record.decision = if e.is_rate_limit() { "limited" } else { "deny" };
        call.record.reason = Some(audit_reason(&e));
        tracing::info!(request_id = %call.record.request_id, caller = %call.caller, op = %call.op, key = %call.record.key, "refused: {e}");
        e.into()
    }

    /// A read of public key material (key list, a key, the JWKS) by `origin`: authorized and
    /// recorded like every other request, with the read's own outcome.
    ///
    /// # Errors
    /// PermissionDenied for callers with no rule; whatever `read` returns.
    pub async fn read<T>(
        &self,
        origin: &Origin,
        what: &str,
        key: &str,
        read: impl FnOnce(&Self) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.run(origin, Operation::Read, what, key, async |call| {
            self.authorize(call)?;
            read(self)
        })
        .await
    }

    fn check_size(&self, what: &'static str, len: usize) -> Result<(), Error> {
        let limit = self.options.max_payload_bytes;
        if len > limit {
            return Err(Error::TooLarge { what, len, limit });
        }
        Ok(())
    }

    /// Sign `input` with `version` using `alg` by `deadline` (the caller's, when it set one;
    /// the configured timeout bounds it): hash on the host where allowed, sign on the device,
    /// refuse a signature of the wrong length, verify it (unless configured not to).
    /// A signature that fails those checks is withheld and the device asked once more, afresh
    /// (the key handle found again, on another session), within the same deadline; the caller
    /// sees only a signature that passed. Requests that fail on the retry too feed the
    /// quarantine, which refuses signing at once while it lasts.
    async fn sign_input(
        &self,
        version: &VersionInfo,
        alg: Alg,
        input: &[u8],
        request_id: &str,
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<u8>, Error> {
        let check = self.check_for(version, alg, input);
        self.sign_op_checked(
            version,
            alg,
            alg.sign_op(input),
            check,
            request_id,
            deadline,
        )
        .await
    }

    /// One device signature by `op`, released only once `check` passes: one job on the device
    /// worker signs, checks, and only on a failed check signs afresh and checks again (the
    /// caller is woken once, with the outcome); a second failure quarantines the device.
    async fn sign_op_checked(
        &self,
        version: &VersionInfo,
        alg: Alg,
        op: SignOp,
        check: SignCheck,
        request_id: &str,
        deadline: Option<std::time::Instant>,
    ) -> Result<Vec<u8>, Error> {
        if self.quarantine.since().is_some() {
            return Err(Error::Quarantined);
        }
        let deadline = sign_deadline(self.options.sign_timeout, deadline)?;
        let pending = Arc::clone(self.keyring.backend()).sign_checked(
            &version.key_id,
            version.kind,
            op,
            check,
            deadline,
        );
        // Every backend answers by the deadline itself (its contract; the pool's own timer),
        // so no second timer is set here.
        let checked = pending
            .await
            .map_err(|e| Error::from(e).for_alg(alg, "sign with"))?;
        if checked.retried {
            tracing::warn!(
                request_id,
                key = %version.name.as_str(),
                version = version.version,
                "the device's signature does not verify; withheld, signing again afresh"
            );
        }
        if checked.passed {
            self.quarantine.verified();
            return Ok(checked.signature);
        }
        self.quarantine.failed(request_id);
        alg.check_signature(version.kind, &checked.signature)?;
        Err(Error::BadSignature {
            key: version.name.to_string(),
            version: version.version,
            kid: version.kid.clone(),
        })
    }

    /// [`Service::verifies`] for a signature of `input` by `version`, as a check the device
    /// worker runs right after signing (it owns copies of what it needs).
    fn check_for(&self, version: &VersionInfo, alg: Alg, input: &[u8]) -> SignCheck {
        let kind = version.kind;
        if !self.options.verify_signatures {
            return Box::new(move |sig: &[u8]| alg.check_signature(kind, sig).is_ok());
        }
        let (public, input) = (version.public.clone(), input.to_vec());
        Box::new(move |sig: &[u8]| {
            alg.check_signature(kind, sig).is_ok() && jose::verify(&public, alg, &input, sig)
        })
    }

    /// One device signature of `input`, answered by `deadline` (`fresh`: with the key handle
    /// and session renewed first, see [`crate::backend::Backend::sign_afresh`]).
    async fn device_sign(
        &self,
        version: &VersionInfo,
        alg: Alg,
        input: &[u8],
        deadline: std::time::Instant,
        fresh: bool,
    ) -> Result<Vec<u8>, Error> {
        let op = alg.sign_op(input);
        let backend = self.keyring.backend();
        let pending = if fresh {
            backend.sign_afresh(&version.key_id, version.kind, op, deadline)
        } else {
            backend.sign(&version.key_id, version.kind, op, deadline)
        };
        by_deadline(version, deadline, pending)
            .await?
            .map_err(|e| Error::from(e).for_alg(alg, "sign with"))
    }

    /// Whether `sig` is a well-formed signature of `input` by `version` (the length always;
    /// the signature itself unless verification is turned off).
    fn verifies(&self, version: &VersionInfo, alg: Alg, input: &[u8], sig: &[u8]) -> bool {
        alg.check_signature(version.kind, sig).is_ok()
            && (!self.options.verify_signatures || jose::verify(&version.public, alg, input, sig))
    }

    async fn sign_parts(
        &self,
        call: &mut Call,
        version: &VersionInfo,
        parts: jose::JwsParts,
    ) -> Result<SignedJws, Error> {
        note_version(call, version, parts.alg);
        // Claims are read as the token type they make (a client assertion's client is its
        // `sub`, also when it comes through generic `jws` with its `typ`).
        let claims = Claims::from_payload(
            call.token().map_or(call.op, Operation::Sign),
            &parts.payload,
        );
        note_claims(call, &claims, &parts.header);
        self.authorize_content(call, &claims)?;
        let input = parts.signing_input();
        let sig = self
            .sign_input(
                version,
                parts.alg,
                input.as_bytes(),
                &call.record.request_id,
                call.deadline,
            )
            .await?;
        Ok(SignedJws {
            signature: jose::b64(&sig),
            compact: jose::compact(&input, &sig),
            kid: version.kid.clone(),
            alg: parts.alg,
            version: version.version,
        })
    }

    /// The version of `key` the request names (the active one unless it names another, which
    /// signs only within its grace period: [`rotation`]), checked for signing with `alg` (the
    /// version's own alg unless the caller named one) for the use `call` is making of it: a
    /// key bound to token types ([`VersionInfo::serves`]) signs only those, for every caller.
    /// Every signing path resolves its key here, so none can get around the binding.
    fn resolve(
        &self,
        call: &mut Call,
        key: &str,
        alg: Option<Alg>,
    ) -> Result<(Arc<VersionInfo>, Alg), Error> {
        let (version, own) = self.named_version(call, key)?;
        if let Some(token) = call.token() {
            let via_jws = call.op == Operation::Sign(TokenType::Jws);
            policy_rules::check_binding(key, &version.serves, token, via_jws)
                .map_err(|e| Self::refused(call, e))?;
        }
        let alg = alg.unwrap_or(own);
        jose::check_alg(alg, version.kind, version.fapi2)?;
        Ok((version, alg))
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
        self.run(
            origin,
            Operation::Sign(TokenType::Jws),
            "jws",
            key,
            async |call| {
                self.authorize(call)?;
                self.check_size("header and payload", header.len() + payload.len())?;
                // Parsed once: `typ` decides the token type before the key is resolved, the
                // rest is checked against the resolved version.
                let mut parsed = jose::JwsHeader::parse(header)?;
                call.typ = parsed.take_typ();
                call.kid = parsed.kid().map(str::to_owned);
                call.note_token();
                let (version, _) = self.resolve(call, key, None)?;
                let alg = parsed.check(version.kind, &version.kid)?;
                jose::check_alg(alg, version.kind, version.fapi2)?;
                let parts = jose::JwsParts {
                    alg,
                    header: header.to_vec(),
                    payload: payload.to_vec(),
                };
                self.sign_parts(call, &version, parts).await
            },
        )
        .await
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
        self.run(
            origin,
            Operation::Sign(TokenType::Raw),
            "raw",
            key,
            async |call| {
                self.authorize(call)?;
                self.check_size("data", data.len())?;
                self.sign_bytes(call, key, alg, data).await
            },
        )
        .await
    }

    /// Sign caller-given bytes (raw and TLS handshake signatures) with `key`, once the call is
    /// authorized for the operation: resolve the version (binding checked), rate-limit, sign.
    async fn sign_bytes(
        &self,
        call: &mut Call,
        key: &str,
        alg: Option<Alg>,
        data: &[u8],
    ) -> Result<RawSignature, Error> {
        let (version, alg) = self.resolve(call, key, alg)?;
        note_version(call, &version, alg);
        self.authorize_content(call, &None)?;
        let signature = self
            .sign_input(&version, alg, data, &call.record.request_id, call.deadline)
            .await?;
        Ok(RawSignature {
            signature,
            kid: version.kid.clone(),
            alg,
            version: version.version,
        })
    }

    /// A TLS handshake signature: `message` is what the TLS stack asks the key to sign. A TLS
    /// 1.3 CertificateVerify content ([`is_tls13_certificate_verify`]) needs only `tls`; any
    /// other input — a TLS 1.2 handshake signs the transcript itself, which cannot be told
    /// apart from other bytes such as a JWS signing input — is a raw signature and needs `raw`
    /// from the caller's rules and the key's binding as well.
    ///
    /// # Errors
    /// As for [`Service::sign_raw`].
    pub async fn sign_tls_handshake(
        &self,
        origin: &Origin,
        key: &str,
        message: &[u8],
        alg: Option<Alg>,
    ) -> Result<RawSignature, Error> {
        self.run(
            origin,
            Operation::Sign(TokenType::Tls),
            "tls",
            key,
            async |call| {
                self.authorize(call)?;
                self.check_size("message", message.len())?;
                if !is_tls13_certificate_verify(message) {
                    call.op = Operation::Sign(TokenType::Raw);
                    call.note_token();
                    self.authorize(call).map_err(|e| match e {
                        Error::Policy(PolicyError::OperationNotAllowed { caller, key, .. }) => {
                            Error::Policy(PolicyError::NotTlsHandshake { caller, key })
                        }
                        e => e,
                    })?;
                }
                self.sign_bytes(call, key, alg, message).await
            },
        )
        .await
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
        self.run(
            origin,
            Operation::Sign(TokenType::IdToken),
            "id-token",
            key,
            async |call| {
                self.authorize(call)?;
                self.check_size("claims", input.claims_json.len())?;
                let (version, alg) = self.resolve(call, key, None)?;
                let req = jose::IdTokenRequest {
                    claims: parse_object("claims_json", &input.claims_json)?,
                    now: self.clock.now(),
                    lifetime: or_default(input.lifetime, 300),
                    access_token: input.access_token,
                    code: input.code,
                    state: input.state,
                    typ: input.typ,
                };
                let parts = jose::id_token(key_ref(&version, alg), &req)?;
                self.sign_parts(call, &version, parts).await
            },
        )
        .await
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
        self.run(
            origin,
            Operation::Sign(TokenType::Jar),
            "jar",
            key,
            async |call| {
                self.authorize(call)?;
                self.check_size("claims", input.claims_json.len())?;
                let (version, alg) = self.resolve(call, key, None)?;
                let req = jose::JarRequest {
                    client_id: input.client_id,
                    audience: input.audience,
                    claims: if input.claims_json.trim().is_empty() {
                        Map::new()
                    } else {
                        parse_object("claims_json", &input.claims_json)?
                    },
                    now: self.clock.now(),
                    lifetime: or_default(input.lifetime, 300),
                    jti: new_jti()?,
                };
                let parts = jose::jar_request_object(key_ref(&version, alg), &req)?;
                self.sign_parts(call, &version, parts).await
            },
        )
        .await
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
        let op = Operation::Sign(TokenType::ClientAssertion);
        self.run(origin, op, "client-assertion", key, async |call| {
            self.authorize(call)?;
            let (version, alg) = self.resolve(call, key, None)?;
            let req = jose::ClientAssertionRequest {
                client_id: input.client_id,
                audience: input.audience,
                now: self.clock.now(),
                lifetime: or_default(input.lifetime, 60),
                jti: new_jti()?,
                nbf: input.nbf,
                explicit_typ: input.explicit_typ,
            };
            let parts = jose::client_assertion(key_ref(&version, alg), &req)?;
            self.sign_parts(call, &version, parts).await
        })
        .await
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
        self.run(
            origin,
            Operation::Sign(TokenType::Dpop),
            "dpop",
            key,
            async |call| {
                self.authorize(call)?;
                self.check_size(
                    "access token",
                    input.access_token.as_ref().map_or(0, String::len),
                )?;
                let (version, alg) = self.resolve(call, key, None)?;
                let req = jose::DpopRequest {
                    htm: input.htm,
                    htu: input.htu,
                    access_token: input.access_token,
                    nonce: input.nonce,
                    now: self.clock.now(),
                    jti: new_jti()?,
                };
                let parts = jose::dpop_proof(&version.public, alg, &req)?;
                self.sign_parts(call, &version, parts).await
            },
        )
        .await
    }

    fn now(&self) -> i64 {
        i64::try_from(self.clock.now()).unwrap_or(i64::MAX)
    }

    /// Run a key-management request on `name`: authorized as `admin`, recorded with the
    /// version it acts on (0: none named).
    async fn admin<T>(
        &self,
        origin: &Origin,
        what: &str,
        name: &str,
        version: u32,
        body: impl AsyncFnOnce() -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.run(origin, Operation::Admin, what, name, async |call| {
            call.record.version = (version != 0).then_some(version);
            self.authorize(call)?;
            body().await
        })
        .await
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
        size: KeySize,
        fapi2: bool,
        serves: &[TokenType],
    ) -> Result<KeyInfo, Error> {
        self.admin(origin, "admin:create", name, 0, async || {
            let alg = KeyAlg::parse(alg)?;
            self.keyring
                .create(name, alg, size, fapi2, serves, self.now())
                .await
                .map_err(|e| Error::from(e).for_alg(alg, "make keys for"))
        })
        .await
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
        serves: &[TokenType],
    ) -> Result<KeyInfo, Error> {
        self.admin(origin, "admin:import", name, 0, async || {
            let alg = KeyAlg::parse(alg)?;
            self.keyring
                .import(name, alg, fapi2, material, serves, self.now())
                .await
                .map_err(|e| Error::from(e).for_alg(alg, "import keys for"))
        })
        .await
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
        serves: &[TokenType],
    ) -> Result<KeyInfo, Error> {
        self.admin(origin, "admin:adopt", name, 0, async || {
            let alg = KeyAlg::parse(alg)?;
            Ok(self
                .keyring
                .adopt(name, alg, fapi2, uri, serves, self.now())
                .await?)
        })
        .await
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
        size: KeySize,
    ) -> Result<KeyInfo, Error> {
        self.admin(origin, "admin:rotate", name, 0, async || {
            let alg = if alg.is_empty() {
                None
            } else {
                Some(KeyAlg::parse(alg)?)
            };
            let r = self.keyring.rotate(name, alg, size, self.now()).await;
            r.map_err(|e| match alg {
                Some(alg) => Error::from(e).for_alg(alg, "make keys for"),
                None => e.into(),
            })
        })
        .await
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
        self.admin(origin, "admin:activate", name, version, async || {
            Ok(self.keyring.activate(name, version, self.now()).await?)
        })
        .await
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
        self.admin(origin, "admin:retire", name, version, async || {
            Ok(self.keyring.retire(name, version, self.now()).await?)
        })
        .await
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
        self.admin(origin, "admin:destroy", name, version, async || {
            Ok(self.keyring.destroy(name, version).await?)
        })
        .await
    }

    /// Find what interrupted key operations left on the device and, unless `dry_run`, remove
    /// it (see [`crate::keyring::Keyring::repair`]). It concerns every key and objects that
    /// belong to none, so it is authorized as `admin` on the key name `*`: only a caller whose
    /// admin rule covers every key may run it.
    ///
    /// # Errors
    /// Permission, device errors.
    pub async fn repair_keyring(
        &self,
        origin: &Origin,
        dry_run: bool,
    ) -> Result<crate::keyring::RepairReport, Error> {
        let what = if dry_run {
            "admin:repair-dry-run"
        } else {
            "admin:repair"
        };
        self.admin(origin, what, "*", 0, async || {
            Ok(self.keyring.repair(dry_run).await?)
        })
        .await
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
        self.admin(origin, "admin:set-chain", name, version, async || {
            Ok(self.keyring.set_chain(name, version, chain).await?)
        })
        .await
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
        self.run(origin, Operation::Read, "read:chain", name, async |call| {
            self.authorize(call)?;
            Ok(self.keyring.chain(name, version).await?)
        })
        .await
    }

    /// One key. In-process; remote callers go through [`Service::read`].
    ///
    /// # Errors
    /// Not found; Unavailable while the keyring has never been loaded.
    pub fn key(&self, name: &str) -> Result<KeyInfo, Error> {
        Ok(self.keyring.get(name)?)
    }

    /// Every key. In-process; remote callers go through [`Service::read`].
    ///
    /// # Errors
    /// Unavailable while the keyring has never been loaded (an empty list would look like an
    /// empty keyring).
    pub fn keys(&self) -> Result<Vec<KeyInfo>, Error> {
        Ok(self.keyring.list()?)
    }

    /// The JWKS. In-process; remote callers go through [`Service::read`].
    ///
    /// # Errors
    /// Unavailable while the keyring has never been loaded; internal JOSE errors.
    pub fn jwks(&self) -> Result<Value, Error> {
        Ok(self.keyring.jwks()?)
    }
}

/// When a signature must be done: the configured `timeout` from now, or the caller's deadline
/// when that comes sooner.
///
/// # Errors
/// [`Error::DeadlinePassed`] when the caller's deadline has passed already: such a request
/// never reaches the device.
fn sign_deadline(
    timeout: std::time::Duration,
    caller: Option<std::time::Instant>,
) -> Result<std::time::Instant, Error> {
    let now = std::time::Instant::now();
    let configured = now + timeout;
    let deadline = caller.map_or(configured, |c| c.min(configured));
    if deadline > now {
        Ok(deadline)
    } else {
        Err(Error::DeadlinePassed)
    }
}

/// Whether `message` is the content a TLS 1.3 CertificateVerify signs (RFC 8446 §4.4.3): 64
/// spaces, the client's or the server's context string, a zero byte, then the transcript hash
/// (SHA-256 or SHA-384, the hashes of the TLS 1.3 cipher suites). Neither a JWS signing input
/// (base64url and a dot) nor an RFC 9421 signature base (starting with a quoted component
/// name) can start with a space, so a `tls` grant signs no token.
pub fn is_tls13_certificate_verify(message: &[u8]) -> bool {
    const PAD: [u8; 64] = [0x20; 64];
    let Some(rest) = message.strip_prefix(&PAD[..]) else {
        return false;
    };
    let Some(hash) = [
        &b"TLS 1.3, client CertificateVerify\0"[..],
        &b"TLS 1.3, server CertificateVerify\0"[..],
    ]
    .into_iter()
    .find_map(|context| rest.strip_prefix(context)) else {
        return false;
    };
    matches!(hash.len(), 32 | 48)
}

/// How many keys' active versions one quarantine probe tries at most.
const PROBE_VERSIONS: usize = 3;

/// What the quarantine probe signs: fixed, so a probe never signs anything a caller chose.
const PROBE_MESSAGE: &[u8] = b"sigild quarantine probe: not a token";

/// The device's answer to `pending` (a call on `version`'s key), or [`Error::Timeout`] once
/// `deadline` passes: the caller is answered by its deadline whatever the device does.
async fn by_deadline<T>(
    version: &VersionInfo,
    deadline: std::time::Instant,
    pending: crate::backend::BackendFuture<T>,
) -> Result<Result<T, crate::backend::BackendError>, Error> {
    let wait = deadline.saturating_duration_since(std::time::Instant::now());
    tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), pending)
        .await
        .map_err(|_| Error::Timeout {
            key: version.name.to_string(),
            version: version.version,
            ms: wait.as_millis(),
        })
}

/// `value`, or `default` when it is 0 (proto3's "not set").
fn or_default(value: u64, default: u64) -> u64 {
    if value == 0 { default } else { value }
}

fn note_version(call: &mut Call, v: &VersionInfo, alg: Alg) {
    call.record.version = Some(v.version);
    call.record.kid = Some(v.kid.clone());
    call.record.alg = Some(alg.name().to_owned());
}

fn note_claims(call: &mut Call, claims: &Option<Claims>, header: &[u8]) {
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
        PolicyError::TypNotAllowed { .. } => "jws typ not allowed".into(),
        PolicyError::ProfiledTyp { token, .. } => format!("jws typ of {token} without {token}"),
        PolicyError::KeyNotBound { token, .. } => format!("key not bound to {token}"),
        PolicyError::NotTlsHandshake { .. } => "not a TLS 1.3 handshake, and no raw".into(),
        PolicyError::RateLimited { scope, rate, .. } => format!("rate limit {rate} of {scope}"),
    }
}

fn key_ref(v: &VersionInfo, alg: Alg) -> jose::KeyRef<'_> {
    jose::KeyRef {
        kid: &v.kid,
        kind: v.kind,
        alg,
    }
}

fn parse_object(field: &'static str, json: &str) -> Result<Map<String, Value>, Error> {
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::NotAnObject { field }),
        Err(e) => Err(Error::InvalidJson {
            field,
            line: e.line(),
            column: e.column(),
        }),
    }
}

/// The token types of a key binding, from their names ([`TokenType::name`]) as the API and
/// CLI give them.
///
/// # Errors
/// [`Error::UnknownTokenType`] for a name that is none.
pub fn parse_serves(names: &[String]) -> Result<Vec<TokenType>, Error> {
    names
        .iter()
        .map(|n| {
            TokenType::parse(n.trim()).ok_or_else(|| Error::UnknownTokenType { name: n.clone() })
        })
        .collect()
}

/// 128 random bits, base64url: unique per token as RFC 7519/9449 require.
fn new_jti() -> Result<String, Error> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(Error::Random)?;
    Ok(jose::b64(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn the_callers_deadline_bounds_signing_and_a_passed_one_is_refused() {
        use std::time::{Duration, Instant};
        let timeout = Duration::from_secs(10);
        let wait = |d: Instant| d.saturating_duration_since(Instant::now());
        // No deadline of the caller's: the configured timeout.
        let w = wait(sign_deadline(timeout, None).unwrap());
        assert!(w <= timeout && w > timeout - Duration::from_secs(1));
        // A sooner one wins; a later one does not.
        let soon = Instant::now() + Duration::from_millis(300);
        assert_eq!(sign_deadline(timeout, Some(soon)).unwrap(), soon);
        let later = Instant::now() + timeout * 3;
        assert!(wait(sign_deadline(timeout, Some(later)).unwrap()) <= timeout);
        // Passed already: refused, UNAVAILABLE, not a daemon fault.
        let e = sign_deadline(timeout, Some(Instant::now())).unwrap_err();
        assert!(matches!(e, Error::DeadlinePassed));
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(!e.is_fault());
        assert!(e.message().contains("deadline"));
    }

    #[test]
    fn only_tls13_certificate_verify_content_is_a_handshake() {
        let content = |context: &[u8], hash: usize| {
            let mut m = vec![0x20; 64];
            m.extend_from_slice(context);
            m.extend(std::iter::repeat_n(0x5a, hash));
            m
        };
        let client = b"TLS 1.3, client CertificateVerify\0";
        let server = b"TLS 1.3, server CertificateVerify\0";
        for (ctx, hash) in [(client, 32), (client, 48), (server, 32), (server, 48)] {
            assert!(is_tls13_certificate_verify(&content(ctx, hash)));
        }
        // Wrong hash lengths, padding, context or terminator; a JWS signing input.
        assert!(!is_tls13_certificate_verify(&content(client, 31)));
        assert!(!is_tls13_certificate_verify(&content(client, 64)));
        assert!(!is_tls13_certificate_verify(&content(client, 0)));
        let short_pad = content(client, 32).split_off(1);
        assert!(!is_tls13_certificate_verify(&short_pad));
        assert!(!is_tls13_certificate_verify(&content(
            b"TLS 1.2, client CertificateVerify\0",
            32
        )));
        assert!(!is_tls13_certificate_verify(&content(
            b"TLS 1.3, client CertificateVerify ",
            32
        )));
        assert!(!is_tls13_certificate_verify(b"eyJhbGciOiJFUzI1NiJ9.e30"));
        assert!(!is_tls13_certificate_verify(b""));
    }

    #[test]
    fn serves_names_parse_or_name_the_bad_one() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(matches!(
            parse_serves(&names(&["id-token", " logout"])).as_deref(),
            Ok([TokenType::IdToken, TokenType::Logout])
        ));
        let e = parse_serves(&names(&["id-token", "idtoken"])).err();
        assert!(
            matches!(&e, Some(Error::UnknownTokenType { name }) if name == "idtoken"),
            "{e:?}"
        );
        let msg = e.map(|e| e.message()).unwrap_or_default();
        assert!(
            msg.contains("expected one of jws, raw, tls, id-token"),
            "{msg}"
        );
        assert_eq!(
            parse_serves(&names(&["x"])).map_err(|e| e.kind()).err(),
            Some(ErrorKind::InvalidArgument)
        );
    }

    #[test]
    fn request_ids_are_distinct_16_hex_digits() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = request_id();
            assert_eq!(id.len(), 16);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(seen.insert(id));
        }
        let other = std::thread::spawn(request_id).join().unwrap_or_default();
        assert!(!seen.contains(&other));
    }

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
            matches!(parse_object("c", "[1]"), Err(e @ Error::NotAnObject { .. }) if e.message().contains("JSON object"))
        );
        assert!(
            matches!(parse_object("c", "{"), Err(e @ Error::InvalidJson { .. }) if e.message().contains("line 1"))
        );
    }

    #[test]
    fn debug_of_inputs_hides_tokens_and_codes() {
        let id = IdTokenInput {
            claims_json: r#"{"sub":"alice-the-subject"}"#.into(),
            lifetime: 60,
            access_token: Some("at-secret-value".into()),
            code: Some("code-secret-value".into()),
            state: Some("state-secret-value".into()),
            typ: None,
        };
        let dpop = DpopInput {
            htm: "POST".into(),
            htu: "https://rs.example/api".into(),
            access_token: Some("at-secret-value".into()),
            nonce: None,
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
}
