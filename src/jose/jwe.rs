//! JWE (RFC 7516) decryption on the host, around the one private-key step a device performs.
//!
//! Compact serialization only. A [`Jwe`] is parsed and checked in full before any device work
//! ([`Jwe::parse`]); [`Jwe::device_op`] names what the device must do with the private key
//! (RSA-OAEP decryption of the encrypted key, or ECDH with the `epk`); [`Jwe::decrypt`] takes
//! the device's result and does the rest on the host: Concat KDF (RFC 7518 §4.6.2), AES key
//! unwrap (RFC 3394), content decryption and tag check (AES-GCM, AES-CBC-HMAC-SHA2).
//!
//! Every failure is a [`JweError`] whose text is for the log only: the service answers every
//! rejected JWE with one and the same message, so that no reason (padding, key-wrap integrity,
//! tag, kid, alg) becomes an oracle. Pure: no I/O, no clock, no device.

use crate::crypto::{DecryptOp, KeyKind, PublicKey};
use crate::secret::SecretBytes;

/// A JWE key-management algorithm a decryption key serves (RFC 7518 §4). `RSA1_5` is never
/// offered (Bleichenbacher); `dir` and the password / AES-KW-only algs need a shared secret
/// rather than a key pair, so they are not a hardware key's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JweAlg {
    /// RSAES-OAEP with SHA-1 and MGF1-SHA-1.
    RsaOaep,
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256.
    RsaOaep256,
    /// ECDH-ES direct key agreement: the Concat KDF output is the CEK.
    EcdhEs,
    /// ECDH-ES, then AES-128 key wrap of the CEK.
    EcdhEsA128Kw,
    /// ECDH-ES, then AES-256 key wrap of the CEK.
    EcdhEsA256Kw,
}

impl JweAlg {
    /// Every alg a decryption key can be made for.
    pub const ALL: [JweAlg; 5] = [
        JweAlg::RsaOaep,
        JweAlg::RsaOaep256,
        JweAlg::EcdhEs,
        JweAlg::EcdhEsA128Kw,
        JweAlg::EcdhEsA256Kw,
    ];

    /// Parse a registered name exactly (case-sensitive); `None` for anything sigild does not
    /// decrypt, `RSA1_5` included.
    pub fn parse(name: &str) -> Option<JweAlg> {
        JweAlg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The registered JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            JweAlg::RsaOaep => "RSA-OAEP",
            JweAlg::RsaOaep256 => "RSA-OAEP-256",
            JweAlg::EcdhEs => "ECDH-ES",
            JweAlg::EcdhEsA128Kw => "ECDH-ES+A128KW",
            JweAlg::EcdhEsA256Kw => "ECDH-ES+A256KW",
        }
    }

    /// Whether a key of `kind` can serve this alg: RSA for RSA-OAEP, P-256 or P-384 for ECDH-ES
    /// (X25519 keys are not offered by the devices sigild drives).
    pub fn fits(self, kind: KeyKind) -> bool {
        matches!(
            (self, kind),
            (JweAlg::RsaOaep | JweAlg::RsaOaep256, KeyKind::Rsa { .. })
                | (
                    JweAlg::EcdhEs | JweAlg::EcdhEsA128Kw | JweAlg::EcdhEsA256Kw,
                    KeyKind::Ec(_)
                )
        )
    }
}

impl std::fmt::Display for JweAlg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A JWE content-encryption algorithm (RFC 7518 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JweEnc {
    /// AES-128-GCM.
    A128Gcm,
    /// AES-256-GCM.
    A256Gcm,
    /// AES-128-CBC with HMAC-SHA-256 (32-byte CEK).
    A128CbcHs256,
    /// AES-256-CBC with HMAC-SHA-512 (64-byte CEK).
    A256CbcHs512,
}

impl JweEnc {
    /// Every content encryption sigild decrypts.
    pub const ALL: [JweEnc; 4] = [
        JweEnc::A128Gcm,
        JweEnc::A256Gcm,
        JweEnc::A128CbcHs256,
        JweEnc::A256CbcHs512,
    ];

    /// Parse a registered name exactly; `None` for anything else.
    pub fn parse(name: &str) -> Option<JweEnc> {
        JweEnc::ALL.into_iter().find(|e| e.name() == name)
    }

    /// The registered JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            JweEnc::A128Gcm => "A128GCM",
            JweEnc::A256Gcm => "A256GCM",
            JweEnc::A128CbcHs256 => "A128CBC-HS256",
            JweEnc::A256CbcHs512 => "A256CBC-HS512",
        }
    }

    /// Length of the content-encryption key in bytes.
    pub fn cek_len(self) -> usize {
        match self {
            JweEnc::A128Gcm => 16,
            JweEnc::A256Gcm => 32,
            JweEnc::A128CbcHs256 => 32,
            JweEnc::A256CbcHs512 => 64,
        }
    }
}

impl std::fmt::Display for JweEnc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a JWE was rejected. For the log, under the request id; never shown to the caller (the
/// service answers every variant with one message). Variants carry no secret and no part of
/// the plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JweError {
    /// Not five base64url parts separated by dots (JSON serialization is not supported).
    #[error("not a compact JWE: {0}")]
    Malformed(&'static str),
    /// The protected header is not a JSON object, or repeats a member.
    #[error("protected header: {0}")]
    Header(&'static str),
    /// The `alg` is not one sigild decrypts (RSA1_5 among them), or not the key's.
    #[error("alg not accepted: {0}")]
    Alg(String),
    /// The `enc` is not one sigild decrypts.
    #[error("enc not accepted: {0}")]
    Enc(String),
    /// `zip`, `crit` or another member sigild refuses.
    #[error("header member {0:?} is refused")]
    Refused(&'static str),
    /// The `epk` is missing, malformed, on another curve or not on the curve.
    #[error("invalid epk: {0}")]
    Epk(&'static str),
    /// A part has the wrong length for the algorithms (IV, tag, encrypted key).
    #[error("bad length: {0}")]
    Length(&'static str),
    /// The device step failed or the key unwrap / OAEP decoding / tag check did not verify.
    #[error("decryption failed: {0}")]
    Decryption(&'static str),
}

/// A compact JWE, parsed and checked: what [`Jwe::device_op`] and [`Jwe::decrypt`] work on.
/// Holds ciphertext only, no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Jwe {
    alg: JweAlg,
    enc: JweEnc,
    kid: Option<String>,
    /// The first part as sent: the AAD of the content encryption.
    protected_b64: String,
    epk: Option<PublicKey>,
    apu: Vec<u8>,
    apv: Vec<u8>,
    encrypted_key: Vec<u8>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

impl std::fmt::Debug for Jwe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwe")
            .field("alg", &self.alg)
            .field("enc", &self.enc)
            .field("kid", &self.kid)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

impl Jwe {
    /// Parse a compact JWE and check everything that needs no key: five parts, a header that
    /// is a JSON object without duplicate members, a known `alg` and `enc`, no `zip` and no
    /// `crit`, an `epk` (EC public JWK) for the ECDH algs, IV and tag lengths for `enc`, an
    /// empty encrypted key for ECDH-ES direct and a non-empty one otherwise.
    ///
    /// # Errors
    /// [`JweError`] naming the first problem found (for the log).
    pub fn parse(compact: &[u8]) -> Result<Jwe, JweError> {
        let _ = compact;
        todo!("parse a compact JWE")
    }

    /// The key-management alg from the header.
    pub fn alg(&self) -> JweAlg {
        self.alg
    }

    /// The content encryption from the header.
    pub fn enc(&self) -> JweEnc {
        self.enc
    }

    /// The header `kid`, when present.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// What the device must do with the private key of `public` (the version the `kid`
    /// chose): RSA-OAEP decryption of the encrypted key (its length must be the modulus
    /// length), or ECDH with the `epk`, which must be a point on the key's curve (checked here,
    /// before the device sees it).
    ///
    /// # Errors
    /// [`JweError::Alg`] when the alg does not fit the key; [`JweError::Epk`],
    /// [`JweError::Length`].
    pub fn device_op(&self, public: &PublicKey) -> Result<DecryptOp, JweError> {
        let _ = public;
        todo!("the device step")
    }

    /// Finish with the device's result (the CEK for RSA-OAEP, the shared secret Z for ECDH):
    /// Concat KDF and key unwrap where the alg needs them, then content decryption with the
    /// protected header as AAD and the tag checked. The plaintext is returned as a secret.
    ///
    /// # Errors
    /// [`JweError::Decryption`] or [`JweError::Length`]; the work done does not depend on
    /// where decryption failed more than the algorithms force.
    pub fn decrypt(&self, device_result: &SecretBytes) -> Result<SecretBytes, JweError> {
        let _ = device_result;
        todo!("host-side decryption")
    }
}
