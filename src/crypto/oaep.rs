//! RSAES-OAEP decoding (RFC 8017 §7.1.2 steps 3–4) on the host, for devices that can only do raw
//! RSA (YubiKey PIV; PKCS#11 tokens without OAEP for the hash a JWE asks for).
//!
//! Constant-time in everything the ciphertext decides: which check fails, and where, must not
//! show in timing or in the error (Manger's attack needs only one bit).

use crate::crypto::OaepHash;
use crate::secret::SecretBytes;

/// OAEP decoding failed. Deliberately without detail: the reason is the oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("OAEP decoding failed")]
pub struct OaepError;

/// Decode `em`, the raw RSA output (`I2OSP(m, k)`, exactly `k` = modulus bytes), as OAEP with
/// `hash` for both the label hash and MGF1 and the empty label; returns the message.
///
/// # Errors
/// [`OaepError`] for any malformed encoding, always after the same work.
pub fn oaep_decode(hash: OaepHash, k: usize, em: &[u8]) -> Result<SecretBytes, OaepError> {
    let _ = (hash, k, em);
    todo!("constant-time OAEP decoding")
}
