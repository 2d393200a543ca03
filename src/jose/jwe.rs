//! JWE (RFC 7516) decryption on the host, around the one private-key step a device performs.
//!
//! Compact serialization only. A [`Jwe`] is parsed and checked in full before any device work
//! ([`Jwe::parse`]); [`Jwe::device_op`] names what the device must do with the private key
//! (RSA-OAEP decryption of the encrypted key, or ECDH with the `epk`); [`Jwe::decrypt`] takes
//! the device's result and does the rest on the host: Concat KDF (RFC 7518 §4.6.2), AES key
//! unwrap (RFC 3394), content decryption and tag check (AES-GCM, AES-CBC-HMAC-SHA2).
//!
//! The tables ([`JweAlg`], [`JweEnc`]) and [`Jwe::parse`] are in every build (a client may
//! read a JWE's `kid`, `alg` and `enc`); the decryption itself (`device_op`, `decrypt`, in
//! `jwe/open.rs`) and its crates (AES, AES-KW, GCM, CBC, HMAC, the curve arithmetic) only with
//! the `server` feature.
//!
//! Every failure is a [`JweError`] whose text is for the log only: the service answers every
//! rejected JWE with one and the same message, so that no reason (padding, key-wrap integrity,
//! tag, kid, alg) becomes an oracle. Pure: no I/O, no clock, no device.

use serde_json::{Map, Value};

use super::{JoseError, b64_decode, header::parse_object, shown};
use crate::crypto::{Curve, KeyKind, PublicKey};

#[cfg(feature = "server")]
mod open;

/// The most bytes an `apu` or `apv` may decode to: they are party identifiers or nonces, and
/// every byte of them is hashed once per KDF block.
const MAX_PARTY_INFO: usize = 256;

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

/// A compact JWE, parsed and checked: what `Jwe::device_op` and `Jwe::decrypt` (both with the
/// `server` feature) work on. Holds ciphertext only, no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Jwe {
    alg: JweAlg,
    enc: JweEnc,
    kid: Option<String>,
    /// The first part as sent: the AAD of the content encryption.
    protected_b64: String,
    /// The protected header decoded (UTF-8 JSON), returned to the caller with the plaintext.
    protected_json: String,
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
        let text = std::str::from_utf8(compact).map_err(|_| JweError::Malformed("not ASCII"))?;
        if text.trim_start().starts_with('{') {
            return Err(JweError::Malformed(
                "JSON serialization; only the compact serialization is supported",
            ));
        }
        let mut parts = text.split('.');
        let (Some(p_header), Some(p_key), Some(p_iv), Some(p_ct), Some(p_tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(JweError::Malformed("not five parts separated by dots"));
        };
        let part =
            |p: &str, what: &'static str| b64_decode(p).map_err(|_| JweError::Malformed(what));
        let header = part(p_header, "the protected header is not base64url")?;
        let encrypted_key = part(p_key, "the encrypted key is not base64url")?;
        let iv = part(p_iv, "the IV is not base64url")?;
        let ciphertext = part(p_ct, "the ciphertext is not base64url")?;
        let tag = part(p_tag, "the tag is not base64url")?;

        let protected_json =
            String::from_utf8(header.clone()).map_err(|_| JweError::Header("not UTF-8"))?;
        let m = parse_object(&header).map_err(|e| {
            JweError::Header(match e {
                JoseError::HeaderNotUtf8 => "not UTF-8",
                JoseError::HeaderNotJson { .. } => "not JSON",
                JoseError::DuplicateHeaderMember { .. } => "a member name is repeated",
                _ => "not a JSON object",
            })
        })?;
        let alg = match m.get("alg") {
            None => return Err(JweError::Alg("missing".into())),
            Some(Value::String(a)) => JweAlg::parse(a).ok_or_else(|| JweError::Alg(shown(a)))?,
            Some(_) => return Err(JweError::Alg("not a string".into())),
        };
        let enc = match m.get("enc") {
            None => return Err(JweError::Enc("missing".into())),
            Some(Value::String(e)) => JweEnc::parse(e).ok_or_else(|| JweError::Enc(shown(e)))?,
            Some(_) => return Err(JweError::Enc("not a string".into())),
        };
        // Compression before encryption leaks the plaintext through its length (and a
        // decompression bomb is the daemon's problem); a `crit` extension sigild would have to
        // understand, it does not.
        for refused in ["zip", "crit"] {
            if m.contains_key(refused) {
                return Err(JweError::Refused(refused));
            }
        }
        let kid = match m.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(JweError::Header("\"kid\" is not a string")),
        };
        let ecdh = matches!(
            alg,
            JweAlg::EcdhEs | JweAlg::EcdhEsA128Kw | JweAlg::EcdhEsA256Kw
        );
        let (epk, apu, apv) = if ecdh {
            (
                Some(epk(m.get("epk"))?),
                party_info(&m, "apu")?,
                party_info(&m, "apv")?,
            )
        } else {
            (None, Vec::new(), Vec::new())
        };

        let (iv_len, tag_len) = match enc {
            JweEnc::A128Gcm | JweEnc::A256Gcm => (12, 16),
            JweEnc::A128CbcHs256 => (16, 16),
            JweEnc::A256CbcHs512 => (16, 32),
        };
        if iv.len() != iv_len {
            return Err(JweError::Length("the IV is not the length enc needs"));
        }
        if tag.len() != tag_len {
            return Err(JweError::Length("the tag is not the length enc needs"));
        }
        if matches!(enc, JweEnc::A128CbcHs256 | JweEnc::A256CbcHs512)
            && (ciphertext.is_empty() || ciphertext.len() % 16 != 0)
        {
            return Err(JweError::Length(
                "a CBC ciphertext must be a non-zero multiple of 16 bytes",
            ));
        }
        match alg {
            JweAlg::EcdhEs if !encrypted_key.is_empty() => {
                return Err(JweError::Length("ECDH-ES (direct) has no encrypted key"));
            }
            // RFC 3394: the wrapped key is the key plus one 8-byte block.
            JweAlg::EcdhEsA128Kw | JweAlg::EcdhEsA256Kw
                if encrypted_key.len() != enc.cek_len() + 8 =>
            {
                return Err(JweError::Length(
                    "the wrapped key is not the CEK length plus 8 bytes",
                ));
            }
            JweAlg::RsaOaep | JweAlg::RsaOaep256 if encrypted_key.is_empty() => {
                return Err(JweError::Length("the encrypted key is empty"));
            }
            _ => {}
        }
        Ok(Jwe {
            alg,
            enc,
            kid,
            protected_b64: p_header.to_owned(),
            protected_json,
            epk,
            apu,
            apv,
            encrypted_key,
            iv,
            ciphertext,
            tag,
        })
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

    /// The protected header as sent, decoded: a JSON object (checked by [`Jwe::parse`]) that
    /// the caller may read further, e.g. `cty: "JWT"` for a nested token.
    pub fn protected_header(&self) -> &str {
        &self.protected_json
    }
}

/// The `epk` member: an EC public JWK on P-256 or P-384 with coordinates of exactly the field
/// length (whether the point is on the curve is checked against the key, in `device_op`).
fn epk(member: Option<&Value>) -> Result<PublicKey, JweError> {
    let m = match member {
        None => return Err(JweError::Epk("missing")),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(JweError::Epk("not a JSON object")),
    };
    if m.get("kty").and_then(Value::as_str) != Some("EC") {
        return Err(JweError::Epk("\"kty\" is not \"EC\""));
    }
    if m.contains_key("d") {
        return Err(JweError::Epk("it holds a private key"));
    }
    let curve = match m.get("crv").and_then(Value::as_str) {
        Some("P-256") => Curve::P256,
        Some("P-384") => Curve::P384,
        _ => return Err(JweError::Epk("\"crv\" is not P-256 or P-384")),
    };
    let coordinate = |name: &str| {
        m.get(name)
            .and_then(Value::as_str)
            .and_then(|s| b64_decode(s).ok())
            .filter(|c| c.len() == curve.field_len())
            .ok_or(JweError::Epk(
                "a coordinate is missing, not base64url or not the field length",
            ))
    };
    Ok(PublicKey::Ec {
        curve,
        x: coordinate("x")?,
        y: coordinate("y")?,
    })
}

/// An optional `apu` / `apv` member: base64url of at most [`MAX_PARTY_INFO`] bytes; absent is
/// empty (RFC 7518 §4.6.2).
fn party_info(m: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, JweError> {
    match m.get(name) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => b64_decode(s)
            .ok()
            .filter(|v| v.len() <= MAX_PARTY_INFO)
            .ok_or(JweError::Header(
                "apu or apv is not base64url of at most 256 bytes",
            )),
        Some(_) => Err(JweError::Header("apu or apv is not a string")),
    }
}
