//! The service's error: what went wrong, by cause, with the lower layers' errors kept as
//! sources so the log can show the whole chain (down to a device's `CKR_…` code).
//!
//! Three views of one error, for three readers:
//! - [`Error::kind`]: the category a caller can act on (and the audit record's outcome); the API
//!   layer turns it into a wire status with its one table.
//! - [`Error::message`]: a stable sentence for the caller that says what they can fix. It never
//!   carries device detail (return codes, PC/SC errors, token paths), and refusals never reveal
//!   other callers' rules.
//! - [`Error::chain`]: everything, for the log, tagged there with the request id.
//!
//! Owns no I/O and no wire types: it must never name tonic.

use std::fmt;

use crate::audit::AuditError;
use crate::backend::BackendError;
use crate::httpsig::HttpSigError;
use crate::jose::{JoseError, JweAlg, JweEnc, KeyAlg, TokenType};
use crate::keyring::KeyringError;
use crate::policy::PolicyError;

/// The categories of failure a caller can act on. The API layer maps each to exactly one gRPC
/// code; the audit record names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request is malformed or does not fit the key: fix the request.
    InvalidArgument,
    /// No such key, version or chain.
    NotFound,
    /// A key by that name exists already.
    AlreadyExists,
    /// The key's state or the device's abilities do not allow it (retired, no active version,
    /// FAPI mode, an algorithm the device lacks, a locked PIN).
    FailedPrecondition,
    /// The caller's policy does not allow this request.
    PermissionDenied,
    /// The device's queue is full, or a rate limit is spent: retry later.
    ResourceExhausted,
    /// The device cannot be used right now; retrying later (or elsewhere) may work.
    Unavailable,
    /// A bug or broken storage; details are in the log only.
    Internal,
}

impl ErrorKind {
    /// Every kind, for tables and tests.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::InvalidArgument,
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::FailedPrecondition,
        ErrorKind::PermissionDenied,
        ErrorKind::ResourceExhausted,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    /// The gRPC-style name in snake case, as audit records write the outcome.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong in a service call, by cause. `Display` is for logs (with [`Error::chain`]);
/// callers get [`Error::message`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller policy refused the request, or a rate limit is spent.
    #[error("policy")]
    Policy(#[from] PolicyError),
    /// A keyring operation failed: names, states, or the device beneath it.
    #[error("keyring")]
    Keyring(#[from] KeyringError),
    /// The JOSE layer refused the request (header, claims, alg, FAPI rules).
    #[error("JOSE")]
    Jose(#[from] JoseError),
    /// The HTTP message to sign (RFC 9421) is malformed, or the key cannot sign HTTP messages.
    #[error("HTTP message signature")]
    HttpSig(#[from] HttpSigError),
    /// The signing device failed or refused.
    #[error("signing device")]
    Backend(#[from] BackendError),
    /// The device lacks what an algorithm needs (a mechanism, a key type, a firmware version).
    #[error("the signing device cannot {doing} {alg}")]
    Unsupported {
        /// The algorithm asked for.
        alg: KeyAlg,
        /// What was tried: "sign with", "make keys for".
        doing: &'static str,
        /// The device's refusal.
        #[source]
        source: BackendError,
    },
    /// An input is over the configured size limit.
    #[error("{what} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Which input.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit (`[signing] max_payload_bytes`).
        limit: usize,
    },
    /// A JSON input is valid JSON but not an object.
    #[error("{field} must be a JSON object")]
    NotAnObject {
        /// The request field.
        field: &'static str,
    },
    /// A JSON input does not parse.
    #[error("{field} is not valid JSON (line {line}, column {column})")]
    InvalidJson {
        /// The request field.
        field: &'static str,
        /// Line of the syntax error.
        line: usize,
        /// Column of the syntax error.
        column: usize,
    },
    /// The device did not answer within the signing timeout.
    #[error("key {key} version {version}: the signing device did not answer within {ms} ms")]
    Timeout {
        /// Key name.
        key: String,
        /// Version asked to sign.
        version: u32,
        /// The timeout (`[signing] timeout_ms`).
        ms: u128,
    },
    /// The caller's own deadline (gRPC `grpc-timeout`) had passed before the request could be
    /// sent to the device: refused at once, the device untouched.
    #[error("the caller's deadline passed before the request reached the signing device")]
    DeadlinePassed,
    /// The device's signature does not verify under the version's public key; withheld.
    #[error("key {key} version {version} (kid {kid}): the device's signature does not verify")]
    BadSignature {
        /// Key name.
        key: String,
        /// Version that signed.
        version: u32,
        /// Its kid.
        kid: String,
    },
    /// The device is quarantined: its recent signatures did not verify, even on a retry.
    /// Signing is refused until a probe signature verifies again.
    #[error("the signing device is quarantined (its recent signatures did not verify)")]
    Quarantined,
    /// With `audit.fail_closed`, a signature whose record could not be written is withheld.
    #[error("audit record not written; signature withheld (audit.fail_closed)")]
    AuditNotWritten(#[source] AuditError),
    /// A JWE that cannot be decrypted with the key, for whatever reason (see
    /// [`UNDECRYPTABLE`]): the caller always gets the same message, the log the reason.
    #[error("the JWE cannot be decrypted with this key: {reason}")]
    Undecryptable {
        /// Why, for the log and the audit record only; never shown to the caller.
        reason: String,
    },
    /// A name in a decryption request's own `allowed_algs` or `allowed_encs` that is no JWE
    /// alg or enc: the caller's mistake about its own request, said plainly.
    #[error("{field}: unknown name {name:?}")]
    UnknownJweName {
        /// The request field.
        field: &'static str,
        /// The name given.
        name: String,
    },
    /// `SignDigest` with an algorithm it does not offer (only those whose device operation
    /// takes a digest: ES256, ES384, PS256, PS384, RS256).
    #[error("SignDigest does not sign {alg}: use ES256, ES384, PS256, PS384 or RS256")]
    DigestAlg {
        /// The alg asked for (or the key's own).
        alg: crate::jose::Alg,
    },
    /// `SignDigest` with a digest that is not the alg's hash length.
    #[error("a digest for {alg} must be {want} bytes, not {len}")]
    DigestLength {
        /// The alg.
        alg: crate::jose::Alg,
        /// The length given.
        len: usize,
        /// The hash length of the alg.
        want: usize,
    },
    /// A name in a key's `serves` list that is no token type.
    #[error("serves: unknown token type {name:?}")]
    UnknownTokenType {
        /// The name given.
        name: String,
    },
    /// The system random number generator failed (jti values). `getrandom::Error` is not a
    /// `std::error::Error` without the crate's `std` feature, so it is shown, not chained.
    #[error("the system random number generator failed: {0}")]
    Random(getrandom::Error),
}

impl Error {
    /// The category a caller can act on.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Policy(e) if e.is_rate_limit() => ErrorKind::ResourceExhausted,
            Error::Policy(_) => ErrorKind::PermissionDenied,
            Error::Keyring(e) => keyring_kind(e),
            Error::Jose(e) => jose_kind(e),
            Error::HttpSig(HttpSigError::UnsupportedKey { .. }) => ErrorKind::FailedPrecondition,
            Error::HttpSig(_) => ErrorKind::InvalidArgument,
            Error::Backend(e) => backend_kind(e),
            Error::Unsupported { .. } => ErrorKind::FailedPrecondition,
            Error::TooLarge { .. }
            | Error::NotAnObject { .. }
            | Error::InvalidJson { .. }
            | Error::Undecryptable { .. }
            | Error::UnknownJweName { .. }
            | Error::DigestAlg { .. }
            | Error::DigestLength { .. }
            | Error::UnknownTokenType { .. } => ErrorKind::InvalidArgument,
            // A passed deadline is UNAVAILABLE like a device that missed it, so the one code
            // table keeps its kinds; the caller's own stack reports DEADLINE_EXCEEDED anyway.
            Error::Timeout { .. }
            | Error::DeadlinePassed
            | Error::BadSignature { .. }
            | Error::Quarantined
            | Error::AuditNotWritten(_) => ErrorKind::Unavailable,
            Error::Random(_) => ErrorKind::Internal,
        }
    }

    /// Whether the failure is on the daemon's side (device, storage, a bug) rather than in the
    /// caller's request or rights: such failures are logged at warn or error, and the caller is
    /// given the request id to quote to an operator.
    pub fn is_fault(&self) -> bool {
        match self {
            Error::Policy(_)
            | Error::HttpSig(_)
            | Error::DeadlinePassed
            | Error::TooLarge { .. }
            | Error::NotAnObject { .. }
            | Error::InvalidJson { .. }
            | Error::Undecryptable { .. }
            | Error::UnknownJweName { .. }
            | Error::DigestAlg { .. }
            | Error::DigestLength { .. }
            | Error::UnknownTokenType { .. } => false,
            Error::Keyring(e) => keyring_fault(e),
            Error::Jose(e) => jose_fault(e),
            Error::Backend(e) => backend_fault(e),
            Error::Unsupported { .. }
            | Error::Timeout { .. }
            | Error::BadSignature { .. }
            | Error::Quarantined
            | Error::AuditNotWritten(_)
            | Error::Random(_) => true,
        }
    }

    /// Whether the caller's message carries the request id: for faults on the daemon's side
    /// (to quote to an operator), and for a JWE that cannot be decrypted, whose reason is only
    /// in the log under that id.
    pub fn shows_request_id(&self) -> bool {
        self.is_fault() || matches!(self, Error::Undecryptable { .. })
    }

    /// The caller-facing sentence: what happened, in terms the caller can act on. Stable for a
    /// given cause; never device detail.
    pub fn message(&self) -> String {
        match self {
            // Policy messages name only the caller's own identity, operation, key and values.
            Error::Policy(e) => e.to_string(),
            Error::Keyring(e) => keyring_message(e),
            Error::Jose(e) => jose_message(e),
            // Names components, fields and parameters only, never their values.
            Error::HttpSig(e) => e.to_string(),
            Error::Backend(e) => backend_message(e),
            Error::Unsupported { alg, doing, source } => match source {
                BackendError::Unsupported(d) if caller_safe(d) => {
                    format!("the signing device cannot {doing} {alg}: {d}")
                }
                _ => format!(
                    "the signing device cannot {doing} {alg}: it lacks the mechanism or key type"
                ),
            },
            Error::TooLarge { .. }
            | Error::NotAnObject { .. }
            | Error::InvalidJson { .. }
            | Error::DigestAlg { .. }
            | Error::DigestLength { .. } => self.to_string(),
            Error::Timeout { ms, .. } => {
                format!("the signing device did not answer within {ms} ms")
            }
            Error::DeadlinePassed => "the request's deadline (grpc-timeout) had passed before it \
                                      reached the signing device"
                .into(),
            Error::BadSignature { .. } => "the signing device produced a signature that does \
                                           not verify; it was not released"
                .into(),
            Error::Quarantined => "the signing device is quarantined: its recent signatures \
                                   did not verify; signing resumes once a probe signature \
                                   verifies"
                .into(),
            Error::AuditNotWritten(_) => "the audit record could not be written, so the \
                                          signature was withheld (audit.fail_closed)"
                .into(),
            Error::Random(_) => "internal error: the random number generator failed".into(),
            // One sentence for every reason: which check failed is never the caller's to know.
            Error::Undecryptable { .. } => UNDECRYPTABLE.into(),
            Error::UnknownJweName { field, name } => {
                let known = if *field == "allowed_algs" {
                    JweAlg::ALL.map(JweAlg::name).join(", ")
                } else {
                    JweEnc::ALL.map(JweEnc::name).join(", ")
                };
                format!("{field}: unknown name {name:?}; expected one of {known}")
            }
            Error::UnknownTokenType { name } => format!(
                "serves: unknown token type {:?}; expected one of {}",
                name.chars().take(64).collect::<String>(),
                TokenType::ALL.map(TokenType::name).join(", ")
            ),
        }
    }

    /// This error and all its causes, `outer: inner: …`, for the log (never for callers).
    pub fn chain(&self) -> Chain<'_> {
        Chain(self)
    }

    /// Name the algorithm when the device refused for lack of support, so the caller learns
    /// which algorithm this device cannot serve; other errors pass unchanged.
    pub(crate) fn for_alg(self, alg: impl Into<KeyAlg>, doing: &'static str) -> Error {
        match self {
            Error::Backend(source @ BackendError::Unsupported(_))
            | Error::Keyring(KeyringError::Backend(source @ BackendError::Unsupported(_))) => {
                Error::Unsupported {
                    alg: alg.into(),
                    doing,
                    source,
                }
            }
            other => other,
        }
    }
}

/// What a caller is told about every JWE that cannot be decrypted, whatever the reason.
pub const UNDECRYPTABLE: &str = "the JWE cannot be decrypted with this key";

/// An error and its causes joined by `": "`: what the log shows.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

fn keyring_kind(e: &KeyringError) -> ErrorKind {
    match e {
        KeyringError::InvalidName(_)
        | KeyringError::UnsupportedKeySize(_)
        | KeyringError::CurveMismatch { .. }
        | KeyringError::UnknownCurve(_)
        | KeyringError::InvalidChain { .. } => ErrorKind::InvalidArgument,
        KeyringError::KeyNotFound(_)
        | KeyringError::VersionNotFound { .. }
        | KeyringError::NoChain { .. } => ErrorKind::NotFound,
        KeyringError::AlreadyExists(_) => ErrorKind::AlreadyExists,
        KeyringError::NoActiveVersion(_)
        | KeyringError::VersionNotSigning { .. }
        | KeyringError::InvalidState { .. }
        | KeyringError::PurposeChange { .. }
        | KeyringError::WrongPurpose { .. } => ErrorKind::FailedPrecondition,
        KeyringError::NotLoaded { .. } | KeyringError::WatchesClosed => ErrorKind::Unavailable,
        KeyringError::TooManyWatchers(_) => ErrorKind::ResourceExhausted,
        KeyringError::Jose(j) => jose_kind(j),
        KeyringError::Backend(b) => backend_kind(b),
        KeyringError::Encode(_) => ErrorKind::Internal,
    }
}

fn keyring_fault(e: &KeyringError) -> bool {
    match e {
        KeyringError::Jose(j) => jose_fault(j),
        KeyringError::Backend(b) => backend_fault(b),
        KeyringError::NotLoaded { .. } | KeyringError::Encode(_) => true,
        _ => false,
    }
}

fn keyring_message(e: &KeyringError) -> String {
    match e {
        KeyringError::Jose(j) => jose_message(j),
        KeyringError::Backend(b) => backend_message(b),
        KeyringError::NotLoaded { .. } => "the keys are not loaded yet because the signing \
                                           device has been unavailable since sigild started; \
                                           retry later"
            .into(),
        KeyringError::Encode(_) => "internal error in the keyring".into(),
        // Names, versions, states and the caller's own chain: all the caller's to fix.
        other => other.to_string(),
    }
}

fn jose_kind(e: &JoseError) -> ErrorKind {
    match e {
        JoseError::SignatureLength { .. } => ErrorKind::Unavailable,
        JoseError::FapiAlgNotAllowed { .. } | JoseError::FapiKeyTooSmall { .. } => {
            ErrorKind::FailedPrecondition
        }
        JoseError::Serialize => ErrorKind::Internal,
        _ => ErrorKind::InvalidArgument,
    }
}

fn jose_fault(e: &JoseError) -> bool {
    matches!(e, JoseError::SignatureLength { .. } | JoseError::Serialize)
}

fn jose_message(e: &JoseError) -> String {
    match e {
        JoseError::SignatureLength { .. } => {
            "the signing device returned an invalid signature; it was not released".into()
        }
        // Written for API callers: names claims, algs and key kinds, never tokens or payloads.
        other => other.to_string(),
    }
}

fn backend_kind(e: &BackendError) -> ErrorKind {
    match e {
        BackendError::Busy(_) => ErrorKind::ResourceExhausted,
        BackendError::InvalidRequest(_) | BackendError::Import(_) => ErrorKind::InvalidArgument,
        BackendError::Unsupported(_) | BackendError::KeyNotFound(_) | BackendError::PinLocked => {
            ErrorKind::FailedPrecondition
        }
        BackendError::PinRejected(_)
        | BackendError::TouchRequired
        | BackendError::TouchTimeout
        | BackendError::Unavailable(_)
        | BackendError::ShuttingDown
        | BackendError::Device { .. }
        | BackendError::Malformed(_) => ErrorKind::Unavailable,
    }
}

fn backend_fault(e: &BackendError) -> bool {
    // Import errors are about the caller's key material; invalid requests about the caller's
    // URI or operation. Everything else is the device's (or its operator's) business.
    !matches!(e, BackendError::Import(_) | BackendError::InvalidRequest(_))
}

fn backend_message(e: &BackendError) -> String {
    match e {
        BackendError::Busy(_) => "the signing device is busy; retry shortly".into(),
        BackendError::InvalidRequest(d) if caller_safe(d) => e.to_string(),
        BackendError::InvalidRequest(_) => {
            "the signing device refused the request as invalid for this key".into()
        }
        BackendError::Import(_) => e.to_string(),
        BackendError::Unsupported(d) if caller_safe(d) => e.to_string(),
        BackendError::Unsupported(_) => {
            "not supported by this device: it lacks the mechanism or key type".into()
        }
        BackendError::KeyNotFound(_) => {
            "this key version's private key is not on the device".into()
        }
        BackendError::PinRejected(_) => "the signing device refuses the configured PIN".into(),
        BackendError::PinLocked => {
            "the signing device's PIN is locked; an operator must unblock it".into()
        }
        BackendError::TouchRequired => {
            "the key needs a touch on the signing device; nobody touched it in time".into()
        }
        BackendError::TouchTimeout => {
            "the signing device timed out waiting for a touch; nobody touched it".into()
        }
        BackendError::ShuttingDown => "sigild is shutting down; retry on another instance".into(),
        BackendError::Unavailable(_) | BackendError::Device { .. } | BackendError::Malformed(_) => {
            "the signing device is unavailable; retry later".into()
        }
    }
}

/// Whether a backend's detail text may go to a caller. Backends write these details for
/// people (a firmware version, a slot count, a URI rule), except that they pass a device's bare
/// return code or transport error through (`CKR_…` from PKCS#11, PC/SC errors from the card
/// reader): those stay in the log.
fn caller_safe(detail: &str) -> bool {
    !(detail.contains("CKR_") || detail.contains("PC/SC"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::KeyId;
    use crate::jose::Alg;

    fn device_error() -> Error {
        Error::Backend(BackendError::Device {
            function: "C_Sign".into(),
            code: "CKR_DEVICE_ERROR".into(),
        })
    }

    #[test]
    fn device_detail_stays_in_the_chain() {
        let e = device_error();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.is_fault());
        assert!(!e.message().contains("CKR_"), "{}", e.message());
        assert!(!e.message().contains("C_Sign"), "{}", e.message());
        let chain = e.chain().to_string();
        assert_eq!(
            chain,
            "signing device: device error in C_Sign: CKR_DEVICE_ERROR"
        );
        // Through the keyring too.
        let e = Error::Keyring(KeyringError::Backend(BackendError::Unavailable(
            "C_GetSlotList failed: CKR_TOKEN_NOT_PRESENT".into(),
        )));
        assert!(!e.message().contains("CKR_"), "{}", e.message());
        assert!(e.chain().to_string().contains("CKR_TOKEN_NOT_PRESENT"));
    }

    #[test]
    fn return_codes_and_pcsc_errors_never_reach_callers() {
        let cases = [
            BackendError::Unsupported("CKR_MECHANISM_INVALID".into()),
            BackendError::InvalidRequest("CKR_DATA_LEN_RANGE".into()),
            BackendError::PinRejected("CKR_PIN_INCORRECT".into()),
            BackendError::Unavailable("PC/SC: the reader went away".into()),
            BackendError::Unavailable("no token matches pkcs11:token=t in /usr/lib/x.so".into()),
            BackendError::Malformed("ECDSA signature from the card: bad DER".into()),
            BackendError::KeyNotFound(KeyId(vec![1, 2])),
        ];
        for b in cases {
            let detail = b.to_string();
            let e = Error::from(b);
            let m = e.message();
            assert!(
                !m.contains("CKR_") && !m.contains("PC/SC") && !m.contains('/'),
                "{detail} → {m}"
            );
            assert!(e.chain().to_string().contains(&detail));
        }
    }

    #[test]
    fn device_refusals_name_the_algorithm() {
        let e = Error::from(BackendError::Unsupported("CKR_MECHANISM_INVALID".into()))
            .for_alg(Alg::Es256, "sign with");
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
        assert_eq!(
            e.message(),
            "the signing device cannot sign with ES256: it lacks the mechanism or key type"
        );
        assert!(e.chain().to_string().contains("CKR_MECHANISM_INVALID"));
        // A detail written for people is kept.
        let e = Error::from(KeyringError::Backend(BackendError::Unsupported(
            "Ed25519 needs YubiKey firmware 5.7 or newer; this card has 5.4".into(),
        )))
        .for_alg(Alg::EdDsa, "make keys for");
        assert!(e.message().contains("EdDSA") && e.message().contains("5.7"));
        // Other errors pass unchanged.
        let e = device_error().for_alg(Alg::Es256, "sign with");
        assert!(matches!(e, Error::Backend(BackendError::Device { .. })));
    }

    #[test]
    fn kinds_by_cause() {
        let cases: Vec<(Error, ErrorKind, bool)> = vec![
            (
                BackendError::Busy(8).into(),
                ErrorKind::ResourceExhausted,
                true,
            ),
            (
                KeyringError::NoActiveVersion("k".into()).into(),
                ErrorKind::FailedPrecondition,
                false,
            ),
            (
                KeyringError::KeyNotFound("k".into()).into(),
                ErrorKind::NotFound,
                false,
            ),
            (
                KeyringError::NotLoaded {
                    why: "device unavailable: x".into(),
                }
                .into(),
                ErrorKind::Unavailable,
                true,
            ),
            (
                KeyringError::Encode("x".into()).into(),
                ErrorKind::Internal,
                true,
            ),
            (
                JoseError::FapiAlgNotAllowed { alg: Alg::Rs256 }.into(),
                ErrorKind::FailedPrecondition,
                false,
            ),
            (JoseError::AlgNone.into(), ErrorKind::InvalidArgument, false),
            (
                BackendError::PinLocked.into(),
                ErrorKind::FailedPrecondition,
                true,
            ),
            (
                BackendError::Import("not PKCS#8".into()).into(),
                ErrorKind::InvalidArgument,
                false,
            ),
            (
                Error::TooLarge {
                    what: "data",
                    len: 2,
                    limit: 1,
                },
                ErrorKind::InvalidArgument,
                false,
            ),
        ];
        for (e, kind, fault) in cases {
            assert_eq!(e.kind(), kind, "{}", e.chain());
            assert_eq!(e.is_fault(), fault, "{}", e.chain());
        }
        assert_eq!(ErrorKind::FailedPrecondition.name(), "failed_precondition");
    }
}
