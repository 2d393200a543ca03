//! Public JWKs (RFC 7517/7518/8037), RFC 7638 thumbprints and JWK Sets.
//!
//! It owns the JSON shape of sigild's public keys: the bare public JWK (DPoP `jwk` header), the
//! JWKS entry (with `kid`, `alg`, `use`), the thumbprint that is every key's kid and DPoP `jkt`,
//! and the reverse mapping from a JWK to a [`PublicKey`]. It handles public keys only: a JWK
//! carrying private members is refused, never read. No device, no policy, no I/O.

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::{JoseError, KeyAlg, b64, b64_decode, shown};
use crate::crypto::{Curve, PublicKey, trim_leading_zeros};

/// The JWK `crv` name of a NIST curve.
fn crv_name(curve: Curve) -> &'static str {
    match curve {
        Curve::P256 => "P-256",
        Curve::P384 => "P-384",
    }
}

/// An EC coordinate at exactly the field length, as RFC 7518 §6.2.1.2 requires. Shorter input
/// (a device that dropped leading zeros) is left-padded; [`PublicKey`] promises fixed length, so
/// longer input is passed through unchanged rather than silently truncated.
fn ec_coord(curve: Curve, v: &[u8]) -> String {
    let len = curve.field_len();
    if v.len() >= len {
        return b64(v);
    }
    let mut padded = vec![0u8; len - v.len()];
    padded.extend_from_slice(v);
    b64(&padded)
}

/// A big-endian integer without leading zeros (RFC 7518 §6.3.1), base64url.
fn uint(v: &[u8]) -> String {
    b64(&trim_leading_zeros(v))
}

/// The bare public JWK: `kty` and the required public members only — no `kid`, `alg` or `use`.
///
/// This is the form that goes into a DPoP proof's `jwk` header (RFC 9449 §4.2), where extra
/// members only add bytes, and it is the basis of [`jwks_entry`].
pub fn public_jwk(pk: &PublicKey) -> Value {
    let mut m = Map::new();
    match pk {
        PublicKey::Ec { curve, x, y } => {
            m.insert("crv".into(), crv_name(*curve).into());
            m.insert("kty".into(), "EC".into());
            m.insert("x".into(), ec_coord(*curve, x).into());
            m.insert("y".into(), ec_coord(*curve, y).into());
        }
        PublicKey::Rsa { n, e } => {
            m.insert("e".into(), uint(e).into());
            m.insert("kty".into(), "RSA".into());
            m.insert("n".into(), uint(n).into());
        }
        PublicKey::Ed25519 { x } => {
            m.insert("crv".into(), "Ed25519".into());
            m.insert("kty".into(), "OKP".into());
            m.insert("x".into(), b64(x).into());
        }
    }
    Value::Object(m)
}

/// A JWKS entry: the public JWK plus `kid`, `alg` and `use` (`sig` for a JWS alg, `enc` for a
/// JWE key-management alg), as relying parties select keys by `kid` and `use`, and should only
/// use a key for the one algorithm it serves (an encrypter picks the `use: "enc"` key and its
/// `alg`).
///
/// # Errors
///
/// [`JoseError::AlgKeyMismatch`] / [`JoseError::JweAlgKeyMismatch`] if `alg` cannot be used with
/// `pk`, so a JWKS never advertises a key for an algorithm it cannot serve;
/// [`JoseError::InvalidJwk`] if `kid` is empty.
pub fn jwks_entry(pk: &PublicKey, kid: &str, alg: impl Into<KeyAlg>) -> Result<Value, JoseError> {
    let alg = alg.into();
    if !alg.fits(pk.kind()) {
        return Err(match alg {
            KeyAlg::Sign(alg) => JoseError::AlgKeyMismatch {
                alg,
                key: pk.kind(),
            },
            KeyAlg::Decrypt(alg) => JoseError::JweAlgKeyMismatch {
                alg,
                key: pk.kind(),
            },
        });
    }
    if kid.is_empty() {
        return Err(JoseError::InvalidJwk {
            reason: "\"kid\" must not be empty",
        });
    }
    let mut jwk = public_jwk(pk);
    if let Value::Object(m) = &mut jwk {
        m.insert("alg".into(), alg.name().into());
        m.insert("kid".into(), kid.into());
        m.insert("use".into(), alg.purpose().jwk_use().into());
    }
    Ok(jwk)
}

/// The RFC 7638 JWK thumbprint (SHA-256, base64url): sigild's kid for every key version and the
/// DPoP `jkt`. Anyone holding the public key can recompute it.
pub fn thumbprint(pk: &PublicKey) -> String {
    // The members are base64url or fixed names, so no JSON escaping can occur; the string is
    // built by hand to guarantee RFC 7638's member order and absence of whitespace.
    let canonical = match pk {
        PublicKey::Ec { curve, x, y } => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            crv_name(*curve),
            ec_coord(*curve, x),
            ec_coord(*curve, y)
        ),
        PublicKey::Rsa { n, e } => {
            format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, uint(e), uint(n))
        }
        PublicKey::Ed25519 { x } => {
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64(x))
        }
    };
    b64(&Sha256::digest(canonical.as_bytes()))
}

/// A JWK Set `{"keys":[…]}` from JWKS entries, in the order given.
///
/// An entry identical to one already present is dropped (the same key version listed twice is
/// harmless); two *different* entries with the same `kid` are refused, because relying parties
/// select by kid and would pick one at random.
///
/// # Errors
///
/// [`JoseError::DuplicateKid`] when two different entries share a `kid`.
pub fn jwks(entries: impl IntoIterator<Item = Value>) -> Result<Value, JoseError> {
    let mut keys: Vec<Value> = Vec::new();
    for entry in entries {
        let kid = entry.get("kid").and_then(Value::as_str);
        if let Some(kid) = kid {
            let existing = keys
                .iter()
                .find(|k| k.get("kid").and_then(Value::as_str) == Some(kid));
            match existing {
                Some(same) if *same == entry => continue,
                Some(_) => return Err(JoseError::DuplicateKid { kid: shown(kid) }),
                None => {}
            }
        }
        keys.push(entry);
    }
    let mut set = Map::new();
    set.insert("keys".into(), Value::Array(keys));
    Ok(Value::Object(set))
}

/// Read a required base64url member of a JWK.
fn member(m: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, JoseError> {
    let reason = match name {
        "x" => "member \"x\" is missing or not a base64url string",
        "y" => "member \"y\" is missing or not a base64url string",
        "n" => "member \"n\" is missing or not a base64url string",
        _ => "member \"e\" is missing or not a base64url string",
    };
    m.get(name)
        .and_then(Value::as_str)
        .ok_or(JoseError::InvalidJwk { reason })
        .and_then(|s| b64_decode(s).map_err(|_| JoseError::InvalidJwk { reason }))
}

/// Parse a public JWK into a [`PublicKey`], checking every length, for adopting existing keys
/// and for checking sigild's own output.
///
/// EC coordinates must be exactly the field length, Ed25519 keys 32 bytes, RSA moduli
/// 2048..=16384 bits without leading zeros, RSA exponents odd and greater than 1. A JWK with
/// private members (`d`, `p`, …) is refused: private keys never travel as JWKs to sigild.
///
/// # Errors
///
/// [`JoseError::InvalidJwk`] naming the first problem found.
pub fn public_key_from_jwk(jwk: &Value) -> Result<PublicKey, JoseError> {
    let m = jwk.as_object().ok_or(JoseError::InvalidJwk {
        reason: "a JWK must be a JSON object",
    })?;
    for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
        if m.contains_key(private) {
            return Err(JoseError::InvalidJwk {
                reason: "it contains private key members; send the public key only",
            });
        }
    }
    let kty = m
        .get("kty")
        .and_then(Value::as_str)
        .ok_or(JoseError::InvalidJwk {
            reason: "member \"kty\" is missing or not a string",
        })?;
    let crv = m.get("crv").and_then(Value::as_str);
    match kty {
        "EC" => {
            let curve = match crv {
                Some("P-256") => Curve::P256,
                Some("P-384") => Curve::P384,
                _ => {
                    return Err(JoseError::InvalidJwk {
                        reason: "EC keys must have \"crv\" P-256 or P-384",
                    });
                }
            };
            let x = member(m, "x")?;
            let y = member(m, "y")?;
            if x.len() != curve.field_len() || y.len() != curve.field_len() {
                return Err(JoseError::InvalidJwk {
                    reason: "EC coordinates must be exactly the curve's field length",
                });
            }
            Ok(PublicKey::Ec { curve, x, y })
        }
        "RSA" => {
            let n = member(m, "n")?;
            let e = member(m, "e")?;
            if n.first().is_none_or(|b| *b == 0) || e.first().is_none_or(|b| *b == 0) {
                return Err(JoseError::InvalidJwk {
                    reason: "RSA \"n\" and \"e\" must be non-empty without leading zero bytes",
                });
            }
            let pk = PublicKey::Rsa { n, e };
            let bits = match pk.kind() {
                crate::crypto::KeyKind::Rsa { bits } => bits,
                _ => 0,
            };
            if !(2048..=16384).contains(&bits) {
                return Err(JoseError::InvalidJwk {
                    reason: "RSA modulus must be 2048 to 16384 bits",
                });
            }
            if let PublicKey::Rsa { e, .. } = &pk {
                let odd = e.last().is_some_and(|b| b & 1 == 1);
                if !odd || e.len() > 8 || e.as_slice() == [1] {
                    return Err(JoseError::InvalidJwk {
                        reason: "RSA exponent must be odd, greater than 1 and at most 64 bits",
                    });
                }
            }
            Ok(pk)
        }
        "OKP" => match crv {
            Some("Ed25519") => {
                let x = member(m, "x")?;
                if x.len() != 32 {
                    return Err(JoseError::InvalidJwk {
                        reason: "Ed25519 keys must be 32 bytes",
                    });
                }
                Ok(PublicKey::Ed25519 { x })
            }
            _ => Err(JoseError::InvalidJwk {
                reason: "OKP keys must have \"crv\" Ed25519 (X25519 and Ed448 cannot sign here)",
            }),
        },
        _ => Err(JoseError::InvalidJwk {
            reason: "\"kty\" must be EC, RSA or OKP",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::Alg;
    use serde_json::json;

    type R = Result<(), Box<dyn std::error::Error>>;

    pub(crate) const RFC7638_N: &str = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";

    #[test]
    fn rfc7638_3_1_rsa_thumbprint() -> R {
        let pk = public_key_from_jwk(&json!({
            "kty": "RSA",
            "n": RFC7638_N,
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        }))?;
        assert_eq!(
            thumbprint(&pk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        Ok(())
    }

    #[test]
    fn rfc8037_a3_ed25519_thumbprint() -> R {
        let pk = public_key_from_jwk(&json!({
            "kty": "OKP", "crv": "Ed25519",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        }))?;
        assert_eq!(
            thumbprint(&pk),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        Ok(())
    }

    #[test]
    fn rfc7515_a3_ec_key_round_trips() -> R {
        let jwk = json!({
            "kty": "EC", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRjGJUVz8EUzs9ffZEK_LBPXTjuCSHh6HwRQt1Q"
        });
        let pk = public_key_from_jwk(&jwk)?;
        assert_eq!(pk.kind(), crate::crypto::KeyKind::Ec(Curve::P256));
        assert_eq!(public_jwk(&pk), jwk);
        let entry = jwks_entry(&pk, &thumbprint(&pk), Alg::Es256)?;
        assert_eq!(entry["use"], "sig");
        assert_eq!(entry["alg"], "ES256");
        assert_eq!(public_key_from_jwk(&entry)?, pk);
        Ok(())
    }

    #[test]
    fn ec_coordinates_are_padded_to_field_length() -> R {
        let short = PublicKey::Ec {
            curve: Curve::P256,
            x: vec![1; 31],
            y: vec![2; 32],
        };
        let jwk = public_jwk(&short);
        let x = b64_decode(jwk["x"].as_str().ok_or("x")?)?;
        assert_eq!(x.len(), 32);
        assert_eq!(x.first(), Some(&0));
        Ok(())
    }

    #[test]
    fn rsa_members_have_no_leading_zeros() -> R {
        let mut n = vec![0u8];
        n.extend(b64_decode(RFC7638_N)?);
        let pk = PublicKey::Rsa {
            n,
            e: vec![0, 1, 0, 1],
        };
        let jwk = public_jwk(&pk);
        assert_eq!(jwk["e"], "AQAB");
        assert_eq!(jwk["n"], RFC7638_N);
        assert_eq!(
            thumbprint(&pk),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        Ok(())
    }

    #[test]
    fn refuses_bad_jwks() {
        let bad = [
            json!("not an object"),
            json!({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}),
            json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"}),
            json!({"kty": "OKP", "crv": "X25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
            json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "d": "x"}),
            json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"}),
            json!({"kty": "RSA", "n": RFC7638_N, "e": "AQ"}),
            json!({"kty": "RSA", "n": RFC7638_N, "e": "AAEAAQ"}),
            json!({"kty": "oct", "k": "AAAA"}),
            json!({"crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
        ];
        for jwk in bad {
            assert!(
                matches!(public_key_from_jwk(&jwk), Err(JoseError::InvalidJwk { .. })),
                "{jwk}"
            );
        }
    }

    #[test]
    fn jwks_entry_refuses_wrong_alg() -> R {
        let pk = public_key_from_jwk(&json!({
            "kty": "OKP", "crv": "Ed25519",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        }))?;
        assert!(matches!(
            jwks_entry(&pk, "k1", Alg::Es256),
            Err(JoseError::AlgKeyMismatch { .. })
        ));
        let entry = jwks_entry(&pk, "k1", Alg::Ed25519)?;
        assert_eq!(entry["alg"], "Ed25519");
        Ok(())
    }

    #[test]
    fn decryption_keys_are_published_for_encryption_with_their_alg() -> R {
        let pk = public_key_from_jwk(&json!({
            "kty": "EC", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"
        }))?;
        let entry = jwks_entry(&pk, "k1", crate::jose::JweAlg::EcdhEsA256Kw)?;
        assert_eq!(
            (&entry["use"], &entry["alg"]),
            (&json!("enc"), &json!("ECDH-ES+A256KW"))
        );
        assert!(matches!(
            jwks_entry(&pk, "k1", crate::jose::JweAlg::RsaOaep256),
            Err(JoseError::JweAlgKeyMismatch { .. })
        ));
        assert_eq!(jwks_entry(&pk, "k1", Alg::Es256)?["use"], "sig");
        Ok(())
    }

    #[test]
    fn jwks_dedupes_identical_and_refuses_conflicting_kids() -> R {
        let a = json!({"kty": "OKP", "crv": "Ed25519", "x": "AA", "kid": "k1"});
        let b = json!({"kty": "OKP", "crv": "Ed25519", "x": "AQ", "kid": "k2"});
        let a2 = json!({"kty": "OKP", "crv": "Ed25519", "x": "Ag", "kid": "k1"});
        let set = jwks([a.clone(), b.clone(), a.clone()])?;
        assert_eq!(set, json!({"keys": [a.clone(), b]}));
        assert!(matches!(jwks([a, a2]), Err(JoseError::DuplicateKid { .. })));
        Ok(())
    }
}
