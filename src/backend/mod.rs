//! Backends: the hardware that holds private keys (PKCS#11 tokens today, YubiKey PIV next).
//!
//! A backend owns its device sessions and the worker threads that call into the device. It takes
//! typed requests ([`SignOp`], [`KeySpec`]) and returns normalised results (see [`SignOp`]). It
//! knows nothing of JOSE, policy, gRPC or config files: the composition root builds it from typed
//! settings, the keyring and service drive it.
//!
//! Every method returns a [`BackendFuture`]: the device call itself runs on the backend's own
//! blocking workers ([`worker`], the same for every backend) and the future only waits for the
//! reply, so the async runtime never blocks on hardware. A full work queue is reported at once
//! as [`BackendError::Busy`].

#[cfg(any(test, feature = "yubikey"))]
pub mod emsa;
pub mod import;
#[cfg(test)]
pub mod memory;
pub mod pkcs11;
pub mod worker;
#[cfg(feature = "yubikey")]
pub mod yubikey;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use crate::crypto::{DecryptOp, KeyKind, KeyPurpose, PublicKey, SignOp};
use crate::secret::SecretBytes;

pub use import::PrivateKeyMaterial;

/// The future every backend method returns; `'static` so callers can spawn or time it out.
pub type BackendFuture<T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send>>;

/// The backend's stable identifier of a key pair on its device (PKCS#11: `CKA_ID`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub Vec<u8>);

impl KeyId {
    /// Lower-case hex, as stored in keyring records and shown to operators.
    pub fn to_hex(&self) -> String {
        base16ct::lower::encode_string(&self.0)
    }

    /// Parse lower- or upper-case hex.
    ///
    /// # Errors
    /// `None` for odd length or non-hex characters.
    pub fn from_hex(s: &str) -> Option<KeyId> {
        base16ct::mixed::decode_vec(s).ok().map(KeyId)
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyId({})", self.to_hex())
    }
}

/// A key pair as a backend reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyObject {
    /// The backend's identifier.
    pub id: KeyId,
    /// The device label (PKCS#11 `CKA_LABEL`), what operators see in vendor tools.
    pub label: String,
    /// A URI that names the private key (RFC 7512 for PKCS#11), for operators and logs.
    pub uri: String,
    /// The public half, read from the device.
    pub public: PublicKey,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// Kind and size of the key pair.
    pub kind: KeyKind,
    /// The device label to give both halves.
    pub label: String,
    /// What the key pair is for; decides its usage attributes on the device.
    pub purpose: KeyPurpose,
}

/// A small metadata record kept on the device next to the keys (the keyring's persistence), so
/// every replica using the same device sees the same keyring without a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Unique name of the record within the backend.
    pub label: String,
    /// Opaque contents (the keyring stores JSON).
    pub value: Vec<u8>,
}

/// A key pair as the device lists it, or the one half of it that an interrupted generation,
/// import or destruction left behind: what the keyring needs to find key pairs that no record
/// names (see [`Backend::key_pairs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKeyPair {
    /// The backend's identifier (PKCS#11: the objects' `CKA_ID`).
    pub id: KeyId,
    /// The device label, which tells sigild's key pairs (`sigild/…`) from other tools'.
    pub label: String,
    /// The private half is on the device.
    pub private: bool,
    /// The public half is on the device.
    pub public: bool,
}

/// Why a backend operation failed. Device return codes are kept for the log (`CKR_…`); the
/// service decides what a caller is told.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The device (token, card) is not present or cannot be reached right now.
    #[error("device unavailable: {0}")]
    Unavailable(String),
    /// Every worker is busy and the queue is full: shed load rather than pile up.
    #[error("backend queue is full ({0} requests waiting)")]
    Busy(usize),
    /// The key is not on the device (destroyed, or never there).
    #[error("key {0:?} not found on the device")]
    KeyNotFound(KeyId),
    /// The device refused the PIN; the backend will not retry it (retries lock tokens).
    #[error("the device rejected the PIN ({0})")]
    PinRejected(String),
    /// The PIN is locked on the device.
    #[error("the PIN is locked on the device")]
    PinLocked,
    /// The key needs a touch on the device and the request's deadline passed while the device
    /// waited for one (YubiKey touch policy).
    #[error("the key needs a touch on the device and none came before the deadline")]
    TouchRequired,
    /// The device waited for a touch and gave up (YubiKey: ~15 s without a touch).
    #[error("the device timed out waiting for a touch")]
    TouchTimeout,
    /// The device does not support this key kind or mechanism.
    #[error("not supported by this device: {0}")]
    Unsupported(String),
    /// The request does not fit the key (e.g. ECDSA on an RSA key) or is malformed.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Key material to import could not be parsed or is not allowed.
    #[error("cannot import key: {0}")]
    Import(String),
    /// The device returned something that is not a valid result (wrong length, bad encoding).
    #[error("device returned a malformed result: {0}")]
    Malformed(String),
    /// Any other device error, with its return code.
    #[error("device error in {function}: {code}")]
    Device {
        /// The device function that failed (e.g. `C_Sign`).
        function: String,
        /// The device's return code (e.g. `CKR_DEVICE_ERROR`).
        code: String,
    },
    /// The backend's workers are gone (shutting down).
    #[error("backend is shutting down")]
    ShuttingDown,
}

/// Whether a signature the device made may leave (its length, and the signature itself
/// verified against the public key unless the service is configured not to). The service
/// supplies it; a backend only calls it, on whatever thread made the signature.
pub type SignCheck = Box<dyn Fn(&[u8]) -> bool + Send>;

/// What [`Backend::sign_checked`] made.
#[derive(Debug)]
pub struct Checked {
    /// The last signature the device made: the first, or the one made afresh after the first
    /// failed its check.
    pub signature: Vec<u8>,
    /// The first signature failed its check and was withheld (the service logs it).
    pub retried: bool,
    /// `signature` passed the check.
    pub passed: bool,
}

impl Checked {
    /// The first signature, which passed.
    pub fn first(signature: Vec<u8>) -> Checked {
        Checked {
            signature,
            retried: false,
            passed: true,
        }
    }

    /// The signature made afresh after the first failed, and whether it passed.
    pub fn again(signature: Vec<u8>, passed: bool) -> Checked {
        Checked {
            signature,
            retried: true,
            passed,
        }
    }
}

/// A device that holds private keys and signs with them.
///
/// Contract: the caller hashes for ECDSA and RSA (see [`SignOp`]); results are normalised
/// (ECDSA fixed-size `r‖s`, RSA raw, Ed25519 64 bytes). Keys are created non-extractable.
pub trait Backend: Send + Sync + 'static {
    /// A short human name for logs and `key show` (e.g. `pkcs11:token=sigild-dev`).
    fn describe(&self) -> String;

    /// Sign with the private key `key` of kind `kind`, answering by `deadline` (the caller's):
    /// when the device has not signed by then the future resolves anyway, with the most precise
    /// reason the backend knows (e.g. [`BackendError::TouchRequired`]), shortly before the
    /// deadline so a caller that gives up at the deadline still receives it.
    fn sign(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: SignOp,
        deadline: Instant,
    ) -> BackendFuture<Vec<u8>>;

    /// Sign again after a signature from [`Backend::sign`] did not verify: the device may be
    /// signing through a stale handle (another key) or a session that corrupts results, so the
    /// backend first drops what it has cached about `key` (PKCS#11: the private-key handle,
    /// found again by `CKA_ID`) and the connection the attempt runs on (a fresh session or card
    /// connection), then signs as [`Backend::sign`] does, by `deadline`.
    fn sign_afresh(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: SignOp,
        deadline: Instant,
    ) -> BackendFuture<Vec<u8>>;

    /// One signature that must pass `check` before it leaves, as one job: sign, check the
    /// result; when it fails, sign once more afresh (as [`Backend::sign_afresh`]) and check
    /// that. A backend with its own workers runs the whole of it on the worker that signs, so
    /// the caller is woken once, with a checked answer, and the check's CPU time stays off the
    /// async runtime. `deadline` bounds both attempts together, as for [`Backend::sign`].
    ///
    /// The default runs the two steps from the caller's future (backends whose device calls
    /// are rare or instant need nothing more).
    fn sign_checked(
        self: Arc<Self>,
        key: &KeyId,
        kind: KeyKind,
        op: SignOp,
        check: SignCheck,
        deadline: Instant,
    ) -> BackendFuture<Checked> {
        let key = key.clone();
        Box::pin(async move {
            let signature = self.sign(&key, kind, op.clone(), deadline).await?;
            if check(&signature) {
                return Ok(Checked::first(signature));
            }
            let signature = self.sign_afresh(&key, kind, op, deadline).await?;
            let passed = check(&signature);
            Ok(Checked::again(signature, passed))
        })
    }

    /// Perform the private-key step of a decryption with the decryption key `key` of kind
    /// `kind` by `deadline` (as for [`Backend::sign`]): RSA-OAEP decryption or ECDH (see
    /// [`DecryptOp`]). The result (a CEK or a shared secret) is zeroized when dropped; every
    /// intermediate copy (raw RSA output, a derived session object) is zeroized or destroyed
    /// before the future resolves. A signing key is refused by the device.
    fn decrypt(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: DecryptOp,
        deadline: Instant,
    ) -> BackendFuture<SecretBytes>;

    /// Generate a key pair on the device.
    fn generate(&self, spec: KeySpec) -> BackendFuture<KeyObject>;

    /// Put existing private key material on the device (migration only), non-extractable, with
    /// the usage attributes of `purpose`. The material is zeroized when the call completes.
    fn import(
        &self,
        label: String,
        material: PrivateKeyMaterial,
        purpose: KeyPurpose,
    ) -> BackendFuture<KeyObject>;

    /// Find an existing key pair by URI (keys made by other tools) and report it; refused
    /// ([`BackendError::InvalidRequest`]) when the device does not allow the key `purpose`
    /// (PKCS#11: `CKA_SIGN` for signing, `CKA_DECRYPT` or `CKA_DERIVE` for decryption).
    fn adopt(&self, uri: String, purpose: KeyPurpose) -> BackendFuture<KeyObject>;

    /// Read a key pair's public half and label (used when loading the keyring).
    fn key(&self, key: &KeyId) -> BackendFuture<KeyObject>;

    /// Destroy both halves of a key pair, or the one half that is left of it (an earlier
    /// destroy was interrupted); [`BackendError::KeyNotFound`] when neither is there.
    fn destroy(&self, key: &KeyId) -> BackendFuture<()>;

    /// Every key pair on the device that has a key id, with halves found alone, whoever made
    /// them: the keyring compares it with its records to find what an interrupted operation
    /// left behind. Read-only.
    fn key_pairs(&self) -> BackendFuture<Vec<StoredKeyPair>>;

    /// All metadata records this backend holds for sigild.
    fn records(&self) -> BackendFuture<Vec<Record>>;

    /// Create or replace the record with `record.label`.
    fn put_record(&self, record: Record) -> BackendFuture<()>;

    /// The attestation certificate chain of a key pair, DER, leaf first (as in a JWK `x5c`):
    /// proof from the device's maker that the key was generated on it. Empty when the device
    /// offers none.
    fn attestation(&self, key: &KeyId) -> BackendFuture<Vec<Vec<u8>>>;

    /// Whether the device is reachable and logged in, checked cheaply (no signature).
    fn check(&self) -> BackendFuture<()>;

    /// Whether every device worker is stuck inside a device call past its job's deadline and
    /// no replacement may be started ([`worker::PoolStatus::stalled`]): requests can only wait
    /// for their deadline. Answered at once, without queueing (unlike [`Backend::check`],
    /// which would wait behind the stuck workers), so readiness can report NOT_SERVING.
    fn stalled(&self) -> bool;

    /// Stop the device workers and release the device: requests still queued and every later
    /// one are answered [`BackendError::ShuttingDown`]; returns once no thread is inside the
    /// device API any more (PKCS#11: then the module is finalised), so the process can exit
    /// without a device call racing its teardown. Blocks for as long as the slowest operation
    /// in flight: call it from a blocking context.
    fn shutdown(&self);
}

/// Parse a PKCS#8 DER private key for [`Backend::import`].
///
/// # Errors
/// [`BackendError::Import`] for anything that is not a supported, well-formed key.
pub fn parse_pkcs8(der: &SecretBytes) -> Result<PrivateKeyMaterial, BackendError> {
    import::parse_pkcs8(der.expose()).map_err(BackendError::Import)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_hex_round_trip() {
        let id = KeyId(vec![0x00, 0xab, 0x10]);
        assert_eq!(id.to_hex(), "00ab10");
        assert_eq!(KeyId::from_hex("00AB10"), Some(id));
        assert_eq!(KeyId::from_hex("0"), None);
        assert_eq!(KeyId::from_hex("zz"), None);
    }
}
