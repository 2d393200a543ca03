//! Property tests of the JOSE layer's parsers of untrusted input: base64url, the caller-built
//! protected header, JWKs and their RFC 7638 thumbprints, and the profiles that read caller
//! claims. Each property runs 256 cases by default; `PROPTEST_CASES=N` raises it.
//!
//! The properties: nothing here panics on any input; what is decoded re-encodes to the same
//! text (one accepted encoding per value); what sigild builds, sigild's own checks accept.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use super::*;
use crate::crypto::{Curve, KeyKind, PublicKey};

const KID: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

/// Any key kind sigild handles (RSA sizes the generator and the JWK parser accept).
fn key_kind() -> impl Strategy<Value = KeyKind> {
    prop_oneof![
        Just(KeyKind::Ec(Curve::P256)),
        Just(KeyKind::Ec(Curve::P384)),
        Just(KeyKind::Rsa { bits: 2048 }),
        Just(KeyKind::Rsa { bits: 4096 }),
        Just(KeyKind::Ed25519),
    ]
}

fn alg() -> impl Strategy<Value = Alg> {
    proptest::sample::select(Alg::ALL.to_vec())
}

/// An algorithm together with a key kind it fits.
fn alg_and_kind() -> impl Strategy<Value = (Alg, KeyKind)> {
    key_kind().prop_flat_map(|kind| {
        let fitting: Vec<Alg> = Alg::ALL.into_iter().filter(|a| a.fits(kind)).collect();
        (proptest::sample::select(fitting), Just(kind))
    })
}

/// Arbitrary JSON values, nested a few levels, with strings from the whole of Unicode.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Header member names, biased towards the ones `check_header` reads.
fn member_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(vec!["alg", "kid", "b64", "typ", "crit", "jwk"])
            .prop_map(str::to_owned),
        1 => ".{0,8}",
    ]
}

/// A value for a header member, biased towards plausible ones.
fn member_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        2 => proptest::sample::select(vec![
            "ES256", "ES384", "PS256", "PS384", "PS512", "RS256", "EdDSA", "Ed25519", "none", "HS256",
            "es256", KID, "JWT",
        ])
        .prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => json_value(),
    ]
}

/// The rules of `check_header`, restated over a parsed object with unique names.
fn expected_header_outcome(m: &Map<String, Value>, kind: KeyKind) -> Result<Alg, JoseError> {
    let alg = match m.get("alg") {
        None => return Err(JoseError::MissingAlg),
        Some(Value::String(s)) if s == "none" => return Err(JoseError::AlgNone),
        Some(Value::String(s)) => Alg::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or(JoseError::UnsupportedAlg { alg: shown(s) })?,
        Some(_) => {
            return Err(JoseError::InvalidHeaderMember {
                member: "alg",
                reason: "must be a string",
            });
        }
    };
    if !alg.fits(kind) {
        return Err(JoseError::AlgKeyMismatch { alg, key: kind });
    }
    match m.get("kid") {
        None => {}
        Some(Value::String(k)) if k == KID => {}
        Some(Value::String(k)) => {
            return Err(JoseError::KidMismatch {
                expected: KID.into(),
                found: shown(k),
            });
        }
        Some(_) => {
            return Err(JoseError::InvalidHeaderMember {
                member: "kid",
                reason: "must be a string",
            });
        }
    }
    match m.get("b64") {
        None | Some(Value::Bool(true)) => Ok(alg),
        Some(_) => Err(JoseError::InvalidHeaderMember {
            member: "b64",
            reason: "must be absent or true: unencoded payloads (RFC 7797) are not supported",
        }),
    }
}

/// Any public key the JWK parser accepts: fixed-length EC coordinates, 32-byte Ed25519 keys,
/// RSA moduli of 2048..=4096 bits (a whole number of bytes, top bit set) and odd exponents above 1.
fn public_key() -> impl Strategy<Value = PublicKey> {
    let ec = (
        prop_oneof![Just(Curve::P256), Just(Curve::P384)],
        any::<[u8; 48]>(),
        any::<[u8; 48]>(),
    )
        .prop_map(|(curve, x, y)| {
            let n = curve.field_len();
            PublicKey::Ec {
                curve,
                x: x.get(..n).unwrap_or_default().to_vec(),
                y: y.get(..n).unwrap_or_default().to_vec(),
            }
        });
    let ed = any::<[u8; 32]>().prop_map(|x| PublicKey::Ed25519 { x: x.to_vec() });
    let rsa = (
        256usize..=512,
        0x80u8..=0xff,
        prop::collection::vec(any::<u8>(), 512),
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(len, first, rest, mut e)| {
            let mut n = vec![first];
            n.extend_from_slice(rest.get(..len - 1).unwrap_or_default());
            // An odd exponent above 1, no leading zero, at most 8 bytes.
            if let Some(last) = e.last_mut() {
                *last |= 1;
            } else {
                e.push(3);
            }
            if e.first() == Some(&0) {
                e[0] = 1;
            }
            if e == [1] {
                e = vec![3];
            }
            PublicKey::Rsa { n, e }
        });
    prop_oneof![ec, ed, rsa]
}

/// RFC 7638 §3.2 built independently of `thumbprint`: the required members only, in
/// lexicographic order (a `BTreeMap`), serialized by serde_json without whitespace.
fn rfc7638(jwk: &Value) -> String {
    let required: &[&str] = match jwk["kty"].as_str() {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("RSA") => &["e", "kty", "n"],
        _ => &["crv", "kty", "x"],
    };
    let members: BTreeMap<&str, &str> = required
        .iter()
        .map(|k| (*k, jwk[*k].as_str().unwrap_or_default()))
        .collect();
    let text = serde_json::to_string(&members).unwrap_or_default();
    b64(&Sha256::digest(text.as_bytes()))
}

/// Found by `id_token_claims`: a float claim came back signed with a different last digit
/// (serde_json without `float_roundtrip`), so the token said something the caller did not.
#[test]
fn float_claims_are_signed_as_sent() -> Result<(), JoseError> {
    let text = r#"{"iss":"i","sub":"s","aud":"a","x":1.3562633812238731e159,"y":[0.1,5e-324]}"#;
    let claims: Map<String, Value> =
        serde_json::from_str(text).map_err(|_| JoseError::Serialize)?;
    let key = KeyRef {
        kid: KID,
        kind: KeyKind::Ed25519,
        alg: Alg::EdDsa,
    };
    let req = IdTokenRequest {
        claims,
        now: 0,
        lifetime: 1,
        access_token: None,
        code: None,
        state: None,
        typ: None,
    };
    let payload = String::from_utf8_lossy(&id_token(key, &req)?.payload).into_owned();
    assert!(
        payload.contains(r#""x":1.3562633812238731e+159"#),
        "{payload}"
    );
    assert!(payload.contains(r#""y":[0.1,5e-324]"#), "{payload}");
    Ok(())
}

proptest! {
    #[test]
    fn b64_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let text = b64(&bytes);
        prop_assert!(text.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        prop_assert_eq!(b64_decode(&text), Ok(bytes));
    }

    /// Strict decoding: whatever decodes re-encodes to exactly the same text, so no value has
    /// two accepted encodings (padding, `+/`, non-zero trailing bits are all refused).
    #[test]
    fn b64_decode_accepts_one_encoding_per_value(text in "[A-Za-z0-9_=+/\\-]{0,24}|.{0,24}") {
        if let Ok(bytes) = b64_decode(&text) {
            prop_assert_eq!(b64(&bytes), text);
        }
    }

    #[test]
    fn signing_input_is_two_b64_parts(
        header in prop::collection::vec(any::<u8>(), 0..64),
        payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let input = signing_input(&header, &payload);
        let (h, p) = input.split_once('.').unwrap_or_default();
        prop_assert_eq!(b64_decode(h), Ok(header));
        prop_assert_eq!(b64_decode(p), Ok(payload));
    }

    #[test]
    fn check_header_never_panics_on_bytes(
        header in prop::collection::vec(any::<u8>(), 0..128),
        kind in key_kind(),
    ) {
        let _ = check_header(&header, kind, KID);
    }

    #[test]
    fn check_header_never_panics_on_near_json(
        header in r#"[{}\[\]":,a-z0-9 \\]{0,40}"#,
        kind in key_kind(),
    ) {
        let _ = check_header(header.as_bytes(), kind, KID);
    }

    /// On JSON objects with unique member names, `check_header` decides exactly by its
    /// documented rules (alg, kid, b64), whatever else the header holds.
    #[test]
    fn check_header_follows_its_rules(
        members in prop::collection::btree_map(member_name(), member_value(), 0..6),
        kind in key_kind(),
    ) {
        let m: Map<String, Value> = members.into_iter().collect();
        let text = serde_json::to_vec(&Value::Object(m.clone())).unwrap_or_default();
        prop_assert_eq!(check_header(&text, kind, KID), expected_header_outcome(&m, kind));
    }

    /// A repeated top-level member is refused, whichever copy comes first and whatever the
    /// values: a verifier and sigild must never read different members from the same bytes.
    #[test]
    fn check_header_refuses_repeated_members(
        name in member_name(),
        first in member_value(),
        second in member_value(),
        kind in key_kind(),
    ) {
        let text = format!(
            "{{{}:{first},{}:{second}}}",
            Value::from(name.as_str()),
            Value::from(name.as_str())
        );
        prop_assert_eq!(
            check_header(text.as_bytes(), kind, KID),
            Err(JoseError::DuplicateHeaderMember { name: shown(&name) })
        );
    }

    #[test]
    fn alg_names_round_trip(a in alg(), other in ".{0,10}") {
        prop_assert_eq!(Alg::parse(a.name()), Ok(a));
        match Alg::parse(&other) {
            Ok(parsed) => prop_assert_eq!(parsed.name(), other.as_str()),
            Err(e) => prop_assert!(matches!(e, JoseError::AlgNone | JoseError::UnsupportedAlg { .. }), "{:?}", e),
        }
    }

    #[test]
    fn check_signature_never_panics(
        a in alg(),
        kind in key_kind(),
        sig in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        if a.check_signature(kind, &sig).is_ok() {
            prop_assert!(a.fits(kind));
        }
    }

    #[test]
    fn public_key_from_jwk_never_panics(jwk in json_value()) {
        let _ = public_key_from_jwk(&jwk);
    }

    /// Structured near-misses: every member of a JWK drawn from plausible and implausible
    /// values (short, long, non-base64url, wrong type); what parses must round-trip.
    #[test]
    fn public_key_from_jwk_never_panics_on_near_jwks(
        kty in proptest::sample::select(vec!["EC", "RSA", "OKP", "oct", "ec"]),
        crv in proptest::sample::select(vec!["P-256", "P-384", "P-521", "Ed25519", "X25519"]),
        members in prop::collection::btree_map(
            proptest::sample::select(vec!["x", "y", "n", "e", "d", "alg", "kid"]),
            prop_oneof![
                prop::collection::vec(any::<u8>(), 0..70).prop_map(|b| Value::from(b64(&b))),
                "[A-Za-z0-9+/=_\\-]{0,20}".prop_map(Value::from),
                json_value(),
            ],
            0..5,
        ),
    ) {
        let mut m: Map<String, Value> = members.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        m.insert("kty".into(), kty.into());
        m.insert("crv".into(), crv.into());
        if let Ok(pk) = public_key_from_jwk(&Value::Object(m)) {
            prop_assert_eq!(public_key_from_jwk(&public_jwk(&pk)), Ok(pk));
        }
    }

    /// Every public key sigild can publish parses back to itself, bare and as a JWKS entry,
    /// and its kid is the RFC 7638 thumbprint built independently.
    #[test]
    fn jwk_round_trips_and_thumbprint_is_rfc7638(pk in public_key()) {
        let jwk = public_jwk(&pk);
        prop_assert_eq!(public_key_from_jwk(&jwk), Ok(pk.clone()));
        let kid = thumbprint(&pk);
        prop_assert_eq!(&kid, &rfc7638(&jwk));
        prop_assert_eq!(kid.len(), 43);
        let entry = jwks_entry(&pk, &kid, Alg::default_for(pk.kind()));
        prop_assert!(entry.is_ok());
        let entry = entry.unwrap_or_default();
        prop_assert_eq!(entry["kid"].as_str(), Some(kid.as_str()));
        let back = public_key_from_jwk(&entry);
        prop_assert_eq!(back.as_ref().map(thumbprint), Ok(kid));
    }

    /// A JWK Set never holds two entries with one kid, and every distinct entry survives.
    #[test]
    fn jwks_has_unique_kids(entries in prop::collection::vec(
        (proptest::sample::select(vec!["k1", "k2", "k3"]), 0u8..3, any::<bool>()),
        0..8,
    )) {
        let values: Vec<Value> = entries
            .iter()
            .map(|(kid, x, with_kid)| {
                if *with_kid {
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[*x]), "kid": kid})
                } else {
                    json!({"kty": "OKP", "crv": "Ed25519", "x": b64(&[*x])})
                }
            })
            .collect();
        match jwks(values.clone()) {
            Ok(set) => {
                let keys = set["keys"].as_array().cloned().unwrap_or_default();
                let mut seen = std::collections::BTreeSet::new();
                for k in &keys {
                    if let Some(kid) = k["kid"].as_str() {
                        prop_assert!(seen.insert(kid.to_owned()), "kid {} twice", kid);
                    }
                }
                for v in &values {
                    prop_assert!(keys.contains(v));
                }
            }
            Err(JoseError::DuplicateKid { kid }) => {
                let mut differing: Vec<&Value> = Vec::new();
                for v in values.iter().filter(|v| v["kid"].as_str() == Some(kid.as_str())) {
                    if !differing.contains(&v) {
                        differing.push(v);
                    }
                }
                prop_assert!(differing.len() >= 2);
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    /// ID tokens: arbitrary caller claims never panic; what is built passes sigild's own header
    /// check, carries the caller's claims unchanged, and `exp − iat` is the lifetime asked for.
    #[test]
    fn id_token_claims(
        (a, kind) in alg_and_kind(),
        base in prop_oneof![
            Just(json!({"iss": "https://op.example", "sub": "alice", "aud": "rp"})),
            Just(json!({"iss": "https://op.example", "sub": "alice", "aud": ["rp", "rs"]})),
            Just(json!({})),
        ],
        extra in prop::collection::btree_map(
            prop_oneof![
                proptest::sample::select(vec![
                    "iss", "sub", "aud", "nonce", "azp", "acr", "amr", "auth_time", "iat",
                    "exp", "at_hash", "name",
                ])
                .prop_map(str::to_owned),
                ".{0,6}",
            ],
            json_value(),
            0..3,
        ),
        now in prop_oneof![0u64..=2_000_000_000, any::<u64>()],
        lifetime in prop_oneof![1u64..=86_400, any::<u64>()],
        access_token in proptest::option::of(".{0,20}"),
        typ in proptest::option::of(".{0,8}"),
    ) {
        let mut claims = base.as_object().cloned().unwrap_or_default();
        claims.extend(extra);
        let req = IdTokenRequest {
            claims: claims.clone(),
            now,
            lifetime,
            access_token,
            code: None,
            state: None,
            typ,
        };
        let key = KeyRef { kid: KID, kind, alg: a };
        if let Ok(parts) = id_token(key, &req) {
            prop_assert_eq!(check_header(&parts.header, kind, KID), Ok(a));
            let payload: Value = serde_json::from_slice(&parts.payload).unwrap_or_default();
            for (k, v) in &claims {
                prop_assert_eq!(&payload[k], v);
            }
            let (iat, exp) = (payload["iat"].as_u64(), payload["exp"].as_u64());
            prop_assert_eq!(iat, Some(now));
            prop_assert_eq!(exp.zip(iat).map(|(e, i)| e - i), Some(lifetime));
        }
    }

    #[test]
    fn request_object_claims(
        (a, kind) in alg_and_kind(),
        client_id in ".{0,10}",
        audience in ".{0,10}",
        claims in prop::collection::btree_map(
            prop_oneof![
                proptest::sample::select(vec![
                    "iss", "client_id", "aud", "scope", "code_challenge_method", "request",
                    "jti", "state", "redirect_uri",
                ])
                .prop_map(str::to_owned),
                ".{0,6}",
            ],
            prop_oneof![Just(Value::from("S256")), json_value()],
            0..4,
        ),
        lifetime in prop_oneof![1u64..=3_600, any::<u64>()],
    ) {
        let req = JarRequest {
            client_id: client_id.clone(),
            audience: audience.clone(),
            claims: claims.into_iter().collect(),
            now: 1_700_000_000,
            lifetime,
            jti: "j".into(),
        };
        if let Ok(parts) = jar_request_object(KeyRef { kid: KID, kind, alg: a }, &req) {
            prop_assert_eq!(check_header(&parts.header, kind, KID), Ok(a));
            let payload: Value = serde_json::from_slice(&parts.payload).unwrap_or_default();
            prop_assert_eq!(payload["iss"].as_str(), Some(client_id.as_str()));
            prop_assert_eq!(payload["aud"].as_str(), Some(audience.as_str()));
            prop_assert!(payload.get("request").is_none());
        }
    }

    #[test]
    fn client_assertion_never_panics(
        (a, kind) in alg_and_kind(),
        client_id in ".{0,10}",
        audience in ".{0,10}",
        now in any::<u64>(),
        lifetime in any::<u64>(),
        nbf in any::<bool>(),
        explicit_typ in any::<bool>(),
    ) {
        let req = ClientAssertionRequest {
            client_id, audience, now, lifetime, jti: "j".into(), nbf, explicit_typ,
        };
        if let Ok(parts) = client_assertion(KeyRef { kid: KID, kind, alg: a }, &req) {
            prop_assert_eq!(check_header(&parts.header, kind, KID), Ok(a));
        }
    }

    /// DPoP: any method and URI never panic; an accepted `htu` is already normal (normalising
    /// it again changes nothing) and has neither query nor fragment.
    #[test]
    fn dpop_htu_is_normalised_once(
        htm in "[A-Z]{1,7}|.{0,8}",
        htu in prop_oneof![
            r"(https?|HTTPS?|ftp)://(\[[0-9a-f:]{0,8}\]|[a-zA-Z0-9.\-]{0,10})(:[0-9]{0,6})?(/[a-zA-Z0-9%/._\-]{0,10})?(\?[a-z=&]{0,6})?(#[a-z]{0,4})?",
            ".{0,30}",
        ],
        nonce in proptest::option::of(".{0,8}"),
    ) {
        let pk = PublicKey::Ed25519 { x: vec![7; 32] };
        let req = DpopRequest {
            htm,
            htu,
            access_token: None,
            nonce,
            now: 1_700_000_000,
            jti: "j".into(),
        };
        if let Ok(parts) = dpop_proof(&pk, Alg::EdDsa, &req) {
            let payload: Value = serde_json::from_slice(&parts.payload).unwrap_or_default();
            let once = payload["htu"].as_str().unwrap_or_default().to_owned();
            prop_assert!(!once.contains(['?', '#']), "{}", once);
            let again = dpop_proof(&pk, Alg::EdDsa, &DpopRequest { htu: once.clone(), ..req });
            let again: Value = again
                .ok()
                .and_then(|p| serde_json::from_slice(&p.payload).ok())
                .unwrap_or_default();
            prop_assert_eq!(again["htu"].as_str(), Some(once.as_str()));
        }
    }
}
