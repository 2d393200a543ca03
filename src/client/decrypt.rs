//! Decryption through sigild, from the client side: the plaintext of a JWE ([`Decrypted`]) in
//! a zeroizing buffer, and the nested-token helper ([`verify_nested`]) that checks the inner
//! JWS of an encrypted ID token, JARM response or request object against a JWKS the caller
//! trusts.
//!
//! Pure apart from the RPC itself (made by [`super::Client::decrypt_jwe`]): the signature check
//! uses the crate's JOSE verifier ([`crate::jose::verify`]); this module never sees a private
//! key, and never prints a plaintext (`Debug` shows its length only).

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::jose::{self, Alg};

/// A JWE decrypted by sigild.
pub struct Decrypted {
    /// The plaintext, zeroized when dropped.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The JWE's protected header as JSON text.
    pub protected_header: String,
    /// The key version that decrypted.
    pub version: u32,
    /// Its kid.
    pub kid: String,
    /// The key-management alg.
    pub alg: String,
    /// The content encryption.
    pub enc: String,
}

impl std::fmt::Debug for Decrypted {
    // Hand-written: the plaintext is a secret (an ID token's claims, a request object).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decrypted")
            .field(
                "plaintext",
                &format_args!("<{} bytes redacted>", self.plaintext.len()),
            )
            .field("version", &self.version)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("enc", &self.enc)
            .finish_non_exhaustive()
    }
}

/// Why the inner JWS of a nested token was not accepted. The messages name what failed (an
/// alg, a kid), never the token's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NestedTokenError {
    /// The plaintext is not a compact JWS (three base64url parts, a JSON header).
    #[error("the decrypted content is not a compact JWS: {0}")]
    NotJws(&'static str),
    /// The JWE header's `cty` says the content is something other than a JWT.
    #[error("the JWE's cty is {0:?}, not JWT")]
    ContentType(String),
    /// The inner header's `alg` is not in the caller's allow-list (or not a signature alg).
    #[error("the inner JWS alg {0:?} is not allowed")]
    AlgNotAllowed(String),
    /// No key of the JWKS fits the inner header's `kid` and `alg`.
    #[error("no key in the JWKS fits kid {kid:?} and alg {alg}")]
    NoKey {
        /// The inner header's kid (empty when absent).
        kid: String,
        /// The inner header's alg.
        alg: &'static str,
    },
    /// The JWKS is not a JSON object with a `keys` array.
    #[error("the JWKS is not an object with a \"keys\" array")]
    Jwks,
    /// The signature does not verify under the selected key.
    #[error("the inner JWS signature does not verify")]
    BadSignature,
    /// The payload is not a JSON object.
    #[error("the inner JWS payload is not a JSON object")]
    Claims,
}

/// A nested token whose inner JWS verified.
#[derive(Clone)]
pub struct VerifiedToken {
    /// The inner JWS's claims.
    pub claims: Map<String, Value>,
    /// The inner JWS's protected header.
    pub header: Map<String, Value>,
    /// The alg that signed it.
    pub alg: Alg,
}

impl std::fmt::Debug for VerifiedToken {
    // Hand-written: claims carry personal data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("claims", &format_args!("<{} claims>", self.claims.len()))
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Verify the inner JWS of a decrypted nested token: the JWE header's `cty`, when present,
/// must be `JWT` (RFC 7519 §5.2; any case); the plaintext must be a compact JWS whose `alg` is
/// in `allowed_algs`; the key is the JWKS entry whose `kid` equals the header's (or, without a
/// `kid`, the only entry that fits the alg) and is not marked `use: "enc"`; the signature must
/// verify; the payload must be a JSON object, returned as the claims. Claims such as `iss`,
/// `aud`, `exp` and `nonce` are the caller's to check.
///
/// # Errors
/// [`NestedTokenError`] naming the check that failed.
pub fn verify_nested(
    decrypted: &Decrypted,
    jwks: &Value,
    allowed_algs: &[Alg],
) -> Result<VerifiedToken, NestedTokenError> {
    let outer: Value = serde_json::from_str(&decrypted.protected_header).unwrap_or(Value::Null);
    if let Some(cty) = outer.get("cty").and_then(Value::as_str)
        && !cty.eq_ignore_ascii_case("JWT")
    {
        return Err(NestedTokenError::ContentType(cty.to_owned()));
    }
    let text = std::str::from_utf8(&decrypted.plaintext)
        .map_err(|_| NestedTokenError::NotJws("not UTF-8"))?
        .trim();
    let mut parts = text.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(NestedTokenError::NotJws("not three parts"));
    };
    let header: Map<String, Value> = jose::b64_decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(NestedTokenError::NotJws(
            "header is not a base64url JSON object",
        ))?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let alg = Alg::parse(alg_name)
        .ok()
        .filter(|a| allowed_algs.contains(a))
        .ok_or_else(|| NestedTokenError::AlgNotAllowed(alg_name.to_owned()))?;
    let kid = header.get("kid").and_then(Value::as_str);
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(NestedTokenError::Jwks)?;
    let fitting: Vec<_> = keys
        .iter()
        .filter(|k| k.get("use").and_then(Value::as_str) != Some("enc"))
        .filter(|k| kid.is_none() || k.get("kid").and_then(Value::as_str) == kid)
        .filter(|k| {
            k.get("alg")
                .and_then(Value::as_str)
                .is_none_or(|a| a == alg.name())
        })
        .filter_map(|k| jose::public_key_from_jwk(k).ok())
        .filter(|pk| alg.fits(pk.kind()))
        .collect();
    let no_key = || NestedTokenError::NoKey {
        kid: kid.unwrap_or_default().to_owned(),
        alg: alg.name(),
    };
    let public = match fitting.as_slice() {
        [one] => one,
        // Several keys with the same kid (or none named and several fit): ambiguous.
        _ => return Err(no_key()),
    };
    let sig = jose::b64_decode(s).map_err(|_| NestedTokenError::NotJws("signature"))?;
    let input = format!("{h}.{p}");
    if !jose::verify(public, alg, input.as_bytes(), &sig) {
        return Err(NestedTokenError::BadSignature);
    }
    let claims: Map<String, Value> = jose::b64_decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(NestedTokenError::Claims)?;
    Ok(VerifiedToken {
        claims,
        header,
        alg,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn decrypted(plaintext: &str, header: &str) -> Decrypted {
        Decrypted {
            plaintext: Zeroizing::new(plaintext.as_bytes().to_vec()),
            protected_header: header.into(),
            version: 1,
            kid: "k".into(),
            alg: "ECDH-ES".into(),
            enc: "A256GCM".into(),
        }
    }

    /// A JWS signed by `ring` (Ed25519) and the JWKS that holds its key under `kid`.
    fn signed(claims: &str, kid: &str) -> (String, Value) {
        use ring::signature::KeyPair as _;
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let header = serde_json::json!({"alg": "EdDSA", "kid": kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            jose::b64(header.to_string().as_bytes()),
            jose::b64(claims.as_bytes())
        );
        let sig = pair.sign(input.as_bytes());
        let jwks = serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
            "x": jose::b64(pair.public_key().as_ref()),
        }]});
        (format!("{input}.{}", jose::b64(sig.as_ref())), jwks)
    }

    #[test]
    fn a_signed_inner_jwt_verifies_and_yields_its_claims() {
        let (jws, jwks) = signed(r#"{"iss":"https://op.example","sub":"alice"}"#, "op-1");
        let t = verify_nested(
            &decrypted(&format!("{jws}\n"), r#"{"cty":"JWT"}"#),
            &jwks,
            &[Alg::EdDsa],
        )
        .unwrap();
        assert_eq!(t.claims["sub"], serde_json::json!("alice"));
        assert_eq!(t.alg, Alg::EdDsa);
        // A kid the JWKS does not hold, an alg the caller did not allow, a changed payload.
        let (other, _) = signed("{}", "op-2");
        let e = verify_nested(&decrypted(&other, "{}"), &jwks, &[Alg::EdDsa]);
        assert!(matches!(e, Err(NestedTokenError::NoKey { .. })), "{e:?}");
        let e = verify_nested(&decrypted(&jws, "{}"), &jwks, &[Alg::Es256]);
        assert!(
            matches!(e, Err(NestedTokenError::AlgNotAllowed(_))),
            "{e:?}"
        );
        let mut parts: Vec<&str> = jws.split('.').collect();
        let forged = jose::b64(br#"{"sub":"mallory"}"#);
        parts[1] = &forged;
        let e = verify_nested(&decrypted(&parts.join("."), "{}"), &jwks, &[Alg::EdDsa]);
        assert_eq!(e.err(), Some(NestedTokenError::BadSignature));
    }

    #[test]
    fn debug_hides_the_plaintext() {
        let d = decrypted("secret-claims-here", "{}");
        let text = format!("{d:?}");
        assert!(!text.contains("secret-claims-here"), "{text}");
        assert!(text.contains("18 bytes redacted"), "{text}");
    }

    #[test]
    fn what_is_not_a_signed_jwt_is_refused_by_name() {
        let jwks = serde_json::json!({"keys": []});
        let e = verify_nested(
            &decrypted("a.b.c", r#"{"cty":"json"}"#),
            &jwks,
            &[Alg::Es256],
        );
        assert_eq!(e.err(), Some(NestedTokenError::ContentType("json".into())));
        let e = verify_nested(&decrypted("{\"sub\":1}", "{}"), &jwks, &[Alg::Es256]);
        assert!(matches!(e, Err(NestedTokenError::NotJws(_))));
        let h = jose::b64(br#"{"alg":"none"}"#);
        let e = verify_nested(&decrypted(&format!("{h}.e30."), "{}"), &jwks, &[Alg::Es256]);
        assert_eq!(
            e.err(),
            Some(NestedTokenError::AlgNotAllowed("none".into()))
        );
        let h = jose::b64(br#"{"alg":"RS256","kid":"x"}"#);
        let e = verify_nested(
            &decrypted(&format!("{h}.e30.AA"), "{}"),
            &jwks,
            &[Alg::Es256],
        );
        assert_eq!(
            e.err(),
            Some(NestedTokenError::AlgNotAllowed("RS256".into()))
        );
        let h = jose::b64(br#"{"alg":"ES256","kid":"x"}"#);
        let e = verify_nested(
            &decrypted(&format!("{h}.e30.AA"), "{}"),
            &jwks,
            &[Alg::Es256],
        );
        assert!(matches!(e, Err(NestedTokenError::NoKey { .. })));
    }
}
