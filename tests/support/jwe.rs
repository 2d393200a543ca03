//! JWEs made by code sigild did not write, and what the decryption tests do with them: Python
//! jwcrypto (tests/verifiers/jose_verify.py, op `encrypt`) and node jose
//! (tests/node/jwe_encrypt.mjs, `CompactEncrypt`) encrypt to a public JWK sigild published;
//! [`decrypt`] sends the result through `DecryptJwe`. Tampering (a flipped bit in one part, a
//! changed header) is done here on the compact string, so every rejected JWE starts as a real
//! one.
//!
//! Both producers take the same JSON request (`{"op": "encrypt", "jwk", "alg", "enc",
//! "plaintext_b64", "header"}`) and answer `{"ok": true, "jwe": COMPACT}`; `encrypt_batch` makes
//! many in one process (a Python or node start costs more than the encryption).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use serde_json::{Value, json};
use sigild::api::pb;
use sigild::crypto::{Curve, OaepHash, PublicKey};

use super::{Daemon, TestResult, b64, python, run_json};

/// The JWE content encryptions sigild decrypts.
pub const ENCS: [&str; 4] = ["A128GCM", "A256GCM", "A128CBC-HS256", "A256CBC-HS512"];

/// The message every rejected JWE gets (before the request id).
pub const REJECTED: &str = "the JWE cannot be decrypted with this key";

/// Who made a JWE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encrypter {
    /// Python jwcrypto.
    Jwcrypto,
    /// node jose.
    NodeJose,
}

impl Encrypter {
    /// Both producers.
    pub const BOTH: [Encrypter; 2] = [Encrypter::Jwcrypto, Encrypter::NodeJose];

    pub fn name(self) -> &'static str {
        match self {
            Encrypter::Jwcrypto => "jwcrypto",
            Encrypter::NodeJose => "node-jose",
        }
    }

    /// Encrypt every request (made by [`encryption`]) in one run of the producer.
    pub fn encrypt_batch(self, items: &[Value]) -> TestResult<Vec<String>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let req = json!({"op": "encrypt_batch", "items": items});
        let out = match self {
            Encrypter::Jwcrypto => python(&req)?,
            Encrypter::NodeJose => node(&req)?,
        };
        let jwes: Vec<String> = serde_json::from_value(out["jwe"].clone())?;
        if jwes.len() != items.len() {
            return Err(format!(
                "{} made {} JWEs for {} requests",
                self.name(),
                jwes.len(),
                items.len()
            )
            .into());
        }
        Ok(jwes)
    }

    /// Encrypt one plaintext.
    pub fn encrypt(
        self,
        jwk: &Value,
        alg: &str,
        enc: &str,
        plaintext: &[u8],
        header: &Value,
    ) -> TestResult<String> {
        let mut v = self.encrypt_batch(&[encryption(jwk, alg, enc, plaintext, header)])?;
        v.pop().ok_or_else(|| "no JWE".into())
    }
}

/// One encryption request: `plaintext` to the public `jwk` with `alg`/`enc`; `header` holds
/// extra protected members (`{"kid": …}`, `cty`, `zip` …; `null` or `{}` for none).
pub fn encryption(jwk: &Value, alg: &str, enc: &str, plaintext: &[u8], header: &Value) -> Value {
    let header = if header.is_null() {
        json!({})
    } else {
        header.clone()
    };
    json!({"op": "encrypt", "jwk": public_only(jwk), "alg": alg, "enc": enc,
        "plaintext_b64": b64(plaintext), "header": header})
}

/// A compact JWE made by Python jwcrypto.
pub fn encrypt_jwcrypto(
    jwk: &Value,
    alg: &str,
    enc: &str,
    plaintext: &[u8],
    header: &Value,
) -> TestResult<String> {
    Encrypter::Jwcrypto.encrypt(jwk, alg, enc, plaintext, header)
}

/// A compact JWE made by node jose.
pub fn encrypt_node_jose(
    jwk: &Value,
    alg: &str,
    enc: &str,
    plaintext: &[u8],
    header: &Value,
) -> TestResult<String> {
    Encrypter::NodeJose.encrypt(jwk, alg, enc, plaintext, header)
}

/// The JWK without private members (a JWKS entry has none; this keeps a mistake from
/// encrypting with a private key the producer would accept).
fn public_only(jwk: &Value) -> Value {
    let mut jwk = jwk.clone();
    if let Some(o) = jwk.as_object_mut() {
        for private in ["d", "p", "q", "dp", "dq", "qi", "oth"] {
            o.remove(private);
        }
    }
    jwk
}

/// Run tests/node/jwe_encrypt.mjs; Err when it fails.
pub fn node(req: &Value) -> TestResult<Value> {
    run_json(
        "node",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/jwe_encrypt.mjs"),
        req,
    )
}

/// The sender's half of one key-management step by Python `cryptography`
/// (tests/tools/jwe_keyop.py): what a backend's private-key step must undo.
fn keyop(req: &Value) -> TestResult<Value> {
    run_json(
        "python3",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/jwe_keyop.py"),
        req,
    )
}

fn keyop_field(v: &Value, name: &str) -> TestResult<Vec<u8>> {
    use base64::Engine as _;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v[name].as_str().ok_or(format!("jwe_keyop.py: no {name}"))?)?)
}

/// An RSAES-OAEP ciphertext (empty label) of a random 32-byte CEK to the RSA key `public`, and
/// that CEK, made by Python `cryptography`.
pub fn oaep_to(public: &PublicKey, hash: OaepHash) -> TestResult<(Vec<u8>, Vec<u8>)> {
    let PublicKey::Rsa { n, e } = public else {
        return Err(format!("not an RSA key: {public:?}").into());
    };
    let v = keyop(&json!({
        "op": "oaep",
        "n": b64(n),
        "e": b64(e),
        "hash": match hash { OaepHash::Sha1 => "sha1", OaepHash::Sha256 => "sha256" },
    }))?;
    Ok((keyop_field(&v, "ciphertext")?, keyop_field(&v, "cek")?))
}

/// A fresh ephemeral key agreeing with the EC key `public`, and the shared secret Z (the
/// field-length x-coordinate), made by Python `cryptography`.
pub fn ecdh_with(public: &PublicKey) -> TestResult<(PublicKey, Vec<u8>)> {
    let PublicKey::Ec { curve, x, y } = public else {
        return Err(format!("not an EC key: {public:?}").into());
    };
    let v = keyop(&json!({
        "op": "ecdh",
        "curve": match curve { Curve::P256 => "P-256", Curve::P384 => "P-384" },
        "x": b64(x),
        "y": b64(y),
    }))?;
    let peer = PublicKey::Ec {
        curve: *curve,
        x: keyop_field(&v, "x")?,
        y: keyop_field(&v, "y")?,
    };
    Ok((peer, keyop_field(&v, "z")?))
}

/// `DecryptJwe` of `jwe` with `key`, every alg and enc the key allows.
pub async fn decrypt(
    d: &Daemon,
    key: &str,
    jwe: &str,
) -> Result<pb::DecryptJweResponse, tonic::Status> {
    decrypt_narrowed(d, key, jwe.as_bytes(), &[], &[]).await
}

/// `DecryptJwe` with the accepted algs and encs narrowed (empty = no narrowing).
pub async fn decrypt_narrowed(
    d: &Daemon,
    key: &str,
    jwe: &[u8],
    algs: &[&str],
    encs: &[&str],
) -> Result<pb::DecryptJweResponse, tonic::Status> {
    let mut client = d
        .decrypter()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    Ok(client
        .decrypt_jwe(pb::DecryptJweRequest {
            key: key.into(),
            jwe: jwe.to_vec(),
            allowed_algs: algs.iter().map(|a| (*a).to_owned()).collect(),
            allowed_encs: encs.iter().map(|e| (*e).to_owned()).collect(),
        })
        .await?
        .into_inner())
}

/// Create a decryption key (`curve` empty for RSA; `rsa_bits` 0 for the default).
pub async fn create_enc(
    d: &Daemon,
    name: &str,
    alg: &str,
    rsa_bits: u32,
    curve: &str,
) -> TestResult<pb::Key> {
    let req = pb::CreateKeyRequest {
        serves: Vec::new(),
        name: name.into(),
        alg: alg.into(),
        rsa_bits,
        curve: curve.into(),
        fapi2: false,
    };
    Ok(d.keys()
        .await?
        .create_key(req)
        .await
        .map_err(|e| format!("create {name} ({alg} {curve}): {e}"))?
        .into_inner())
}

/// The JWKS entry with this kid.
pub fn jwks_entry(jwks: &Value, kid: &str) -> TestResult<Value> {
    jwks["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["kid"] == json!(kid)))
        .cloned()
        .ok_or_else(|| format!("kid {kid} not in the JWKS {jwks}").into())
}

/// The published JWK of `key`'s active version, checked to be an encryption key of `alg`
/// (`use: "enc"`, the key's alg) both in GetKey and in the JWKS, without private members.
pub async fn published_enc_jwk(d: &Daemon, key: &str, alg: &str) -> TestResult<Value> {
    let info = super::get_key(d, key).await?;
    let v = info
        .versions
        .iter()
        .find(|v| v.version == info.active_version)
        .ok_or_else(|| format!("{key}: no active version"))?;
    assert_eq!(v.r#use, "enc", "{key}: KeyVersion.use");
    assert_eq!(v.alg, alg, "{key}: KeyVersion.alg");
    let from_key: Value = serde_json::from_str(&v.public_jwk_json)?;
    let entry = jwks_entry(&d.jwks().await?, &v.kid)?;
    for (what, jwk) in [("GetKey", &from_key), ("GetJwks", &entry)] {
        assert_eq!(jwk["use"], "enc", "{key}: {what} JWK {jwk}");
        assert_eq!(jwk["alg"], alg, "{key}: {what} JWK {jwk}");
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(jwk.get(private).is_none(), "{key}: {what} {private}");
        }
    }
    Ok(entry)
}

/// The parts of a compact JWE.
pub const HEADER: usize = 0;
pub const ENCRYPTED_KEY: usize = 1;
pub const IV: usize = 2;
pub const CIPHERTEXT: usize = 3;
pub const TAG: usize = 4;

/// `jwe` with one bit flipped in the decoded bytes of part `part` (byte `byte` from the end
/// when negative, from the start otherwise).
pub fn flip_bit(jwe: &str, part: usize, byte: isize) -> TestResult<String> {
    let mut parts: Vec<String> = jwe.split('.').map(str::to_owned).collect();
    let p = parts.get_mut(part).ok_or("no such part")?;
    let mut bytes = sigild::jose::b64_decode(p)?;
    if bytes.is_empty() {
        return Err(format!("part {part} is empty").into());
    }
    let i = if byte < 0 {
        bytes.len() - byte.unsigned_abs()
    } else {
        byte.unsigned_abs()
    };
    bytes[i] ^= 0x01;
    *p = b64(&bytes);
    Ok(parts.join("."))
}

/// `jwe` with its protected header decoded, changed by `f` and encoded again (the tag no
/// longer covers it, which does not matter: the daemon must refuse it earlier, or there).
pub fn with_header(jwe: &str, f: impl FnOnce(&mut Value)) -> TestResult<String> {
    let (h, rest) = jwe.split_once('.').ok_or("no dot")?;
    let mut header: Value = serde_json::from_slice(&sigild::jose::b64_decode(h)?)?;
    f(&mut header);
    Ok(format!("{}.{rest}", b64(header.to_string().as_bytes())))
}

/// The protected header of a compact JWE.
pub fn header_of(jwe: &str) -> TestResult<Value> {
    let h = jwe.split('.').next().ok_or("empty")?;
    Ok(serde_json::from_slice(&sigild::jose::b64_decode(h)?)?)
}

/// A status message without its request id (`… (request id ID)`), to compare the messages of
/// different requests.
pub fn without_request_id(msg: &str, id: &str) -> String {
    msg.replace(&format!(" (request id {id})"), "")
        .replace(id, "")
}

/// Bytes 0..=255, repeated: a plaintext that is not UTF-8 and holds every byte value.
pub fn binary_plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 256) as u8).rev().collect()
}

/// The daemon's log line with the reason a JWE was rejected under request `id` (the service
/// logs it as `JWE not decrypted: REASON`; a request that failed otherwise is logged by the
/// API layer as `request failed`). It may reach the log just after the answer.
pub async fn reason_line(d: &Daemon, id: &str) -> TestResult<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if let Some(line) = d.log.lock().map_err(|_| "log lock")?.iter().find(|l| {
            l.contains(id) && (l.contains("JWE not decrypted") || l.contains("request failed"))
        }) {
            return Ok(line.clone());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("no log line for request {id}:\n{}", d.log_text()).into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
