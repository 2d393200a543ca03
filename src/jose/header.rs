//! The generic check for a protected header that the caller built itself ("sign these bytes").
//!
//! It owns the rules any JWS header must satisfy before sigild signs it with a given key: a
//! UTF-8 JSON object with unique member names, an `alg` sigild supports that fits the key, and a
//! `kid` (if present) naming that key. It only reads: the caller's bytes are signed exactly as
//! sent and are never re-serialized. Token-specific rules live in `profiles.rs`, policy in
//! `policy/`.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::{Alg, JoseError, shown};
use crate::crypto::KeyKind;

/// Parse a header into its members, mapping every failure to a caller-facing error.
///
/// Member names must be unique (RFC 7515 §4: "Header Parameter names within the JOSE Header MUST
/// be unique"). serde_json's own `Map` silently keeps the last duplicate, which would let a
/// verifier and sigild read different `alg`s from the same bytes, so the top level is read with
/// [`UniqueVisitor`]. Nested objects (a `jwk` member, say) are not checked for duplicates.
pub(super) fn parse_object(header: &[u8]) -> Result<Map<String, Value>, JoseError> {
    let text = std::str::from_utf8(header).map_err(|_| JoseError::HeaderNotUtf8)?;
    // One pass on the hot path: read the object refusing repeated names, and nothing after it.
    let mut duplicate = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = de::Deserializer::deserialize_map(
        &mut de,
        UniqueVisitor {
            duplicate: &mut duplicate,
        },
    )
    .and_then(|m| de.end().map(|()| m));
    if let (Ok(m), None) = (parsed, &duplicate) {
        return Ok(m);
    }
    // Only for a header that failed: read it again as any JSON value, which gives the caller
    // a precise syntax error first (as before any duplicate), then "not an object".
    let value: Value = serde_json::from_str(text).map_err(|e| JoseError::HeaderNotJson {
        line: e.line(),
        column: e.column(),
    })?;
    if !value.is_object() {
        return Err(JoseError::HeaderNotObject);
    }
    match duplicate {
        Some(name) => Err(JoseError::DuplicateHeaderMember { name: shown(&name) }),
        // Unreachable in practice: the text parses as an object.
        None => Err(JoseError::HeaderNotObject),
    }
}

/// Reads a JSON object into a `Map`, stopping at the first repeated member name, which it
/// records in `duplicate` (serde errors are strings, this keeps the name without parsing one).
struct UniqueVisitor<'a> {
    /// Where the first repeated name is stored.
    duplicate: &'a mut Option<String>,
}

impl<'de> Visitor<'de> for UniqueVisitor<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut m = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if m.contains_key(&key) {
                *self.duplicate = Some(key);
                return Err(de::Error::custom("duplicate member name"));
            }
            let value: Value = access.next_value()?;
            m.insert(key, value);
        }
        Ok(m)
    }
}

/// Check a caller-built protected header before signing its exact bytes with a key of
/// `key_kind` whose kid is `kid`, and return the algorithm to sign with.
///
/// Rules: UTF-8; a JSON object with unique top-level member names; `alg` present, a string, a
/// supported algorithm, never `none`, and fitting the key; `kid`, if present, a string equal to
/// `kid`; `b64`, if present, `true` (sigild always base64url-encodes the payload, so an RFC 7797
/// unencoded-payload header would get a signature over the wrong input). Other members, `crit`
/// included, are the caller's business and are passed through untouched.
///
/// # Errors
///
/// [`JoseError::HeaderNotUtf8`], [`JoseError::HeaderNotJson`], [`JoseError::HeaderNotObject`],
/// [`JoseError::DuplicateHeaderMember`], [`JoseError::MissingAlg`],
/// [`JoseError::InvalidHeaderMember`], [`JoseError::AlgNone`], [`JoseError::UnsupportedAlg`],
/// [`JoseError::AlgKeyMismatch`] or [`JoseError::KidMismatch`], whichever is found first.
pub fn check_header(header: &[u8], key_kind: KeyKind, kid: &str) -> Result<Alg, JoseError> {
    // `typ` is not this check's business (see [`header_typ`]).
    JwsHeader {
        members: parse_object(header)?,
        typ: None,
    }
    .check(key_kind, kid)
}

/// The `typ` member of a caller-built protected header (`None` when it has none), read before
/// the key is resolved: policy and the key's binding decide by it which token type a generic
/// JWS is.
///
/// # Errors
/// As [`JwsHeader::parse`].
pub fn header_typ(header: &[u8]) -> Result<Option<String>, JoseError> {
    Ok(JwsHeader::parse(header)?.typ)
}

/// A caller-built protected header, parsed once: what the service needs before the key is
/// resolved (`typ`, and `kid` to pick a version) and, once it is, the checks of
/// [`check_header`] against that key ([`JwsHeader::check`]) without reading the JSON again.
#[derive(Debug, Clone)]
pub struct JwsHeader {
    /// The top-level members (unique names).
    members: Map<String, Value>,
    /// `typ`, checked to be a string when present.
    typ: Option<String>,
}

impl JwsHeader {
    /// Parse `header`: UTF-8, a JSON object with unique top-level member names, `typ` (if
    /// present) a string.
    ///
    /// # Errors
    /// [`JoseError::HeaderNotUtf8`], [`JoseError::HeaderNotJson`],
    /// [`JoseError::HeaderNotObject`], [`JoseError::DuplicateHeaderMember`] or
    /// [`JoseError::InvalidHeaderMember`] (`typ`).
    pub fn parse(header: &[u8]) -> Result<JwsHeader, JoseError> {
        let members = parse_object(header)?;
        let typ = match members.get("typ") {
            None => None,
            Some(Value::String(t)) => Some(t.clone()),
            Some(_) => {
                return Err(JoseError::InvalidHeaderMember {
                    member: "typ",
                    reason: "must be a string",
                });
            }
        };
        Ok(JwsHeader { members, typ })
    }

    /// The header's `typ`.
    pub fn typ(&self) -> Option<&str> {
        self.typ.as_deref()
    }

    /// Hand over the header's `typ` (the service keeps it with the request).
    pub fn take_typ(&mut self) -> Option<String> {
        self.typ.take()
    }

    /// The header's `kid` when it is a string (a named key version; checked by
    /// [`JwsHeader::check`]).
    pub fn kid(&self) -> Option<&str> {
        self.members.get("kid").and_then(Value::as_str)
    }

    /// The rules of [`check_header`] after parsing, for a key of `key_kind` whose kid is
    /// `kid`: the algorithm to sign with.
    ///
    /// # Errors
    /// [`JoseError::MissingAlg`], [`JoseError::InvalidHeaderMember`], [`JoseError::AlgNone`],
    /// [`JoseError::UnsupportedAlg`], [`JoseError::AlgKeyMismatch`] or
    /// [`JoseError::KidMismatch`], whichever is found first.
    pub fn check(&self, key_kind: KeyKind, kid: &str) -> Result<Alg, JoseError> {
        let m = &self.members;
        let alg = match m.get("alg") {
            None => return Err(JoseError::MissingAlg),
            Some(Value::String(s)) => Alg::parse(s)?,
            Some(_) => {
                return Err(JoseError::InvalidHeaderMember {
                    member: "alg",
                    reason: "must be a string",
                });
            }
        };
        if !alg.fits(key_kind) {
            return Err(JoseError::AlgKeyMismatch { alg, key: key_kind });
        }
        match m.get("kid") {
            None => {}
            Some(Value::String(found)) if found == kid => {}
            Some(Value::String(found)) => {
                return Err(JoseError::KidMismatch {
                    expected: kid.to_owned(),
                    found: shown(found),
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
            None | Some(Value::Bool(true)) => {}
            Some(_) => {
                return Err(JoseError::InvalidHeaderMember {
                    member: "b64",
                    reason: "must be absent or true: unencoded payloads (RFC 7797) are not supported",
                });
            }
        }
        Ok(alg)
    }
}

/// The `kid` member of a caller-built protected header (`None` when it has none), read before
/// the key is resolved: it may name a version of the key other than the active one.
///
/// # Errors
/// As [`header_typ`]; [`JoseError::InvalidHeaderMember`] for a `kid` that is not a string.
pub fn header_kid(header: &[u8]) -> Result<Option<String>, JoseError> {
    match parse_object(header)?.get("kid") {
        None => Ok(None),
        Some(Value::String(k)) => Ok(Some(k.clone())),
        Some(_) => Err(JoseError::InvalidHeaderMember {
            member: "kid",
            reason: "must be a string",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Curve;

    #[test]
    fn typ_is_read_as_a_string() -> Result<(), JoseError> {
        assert_eq!(header_typ(br#"{"alg":"ES256"}"#)?, None);
        assert_eq!(
            header_typ(br#"{"alg":"ES256","typ":"at+jwt"}"#)?.as_deref(),
            Some("at+jwt")
        );
        assert!(matches!(
            header_typ(br#"{"alg":"ES256","typ":["at+jwt"]}"#),
            Err(JoseError::InvalidHeaderMember { member: "typ", .. })
        ));
        assert!(header_typ(br#"{"typ":"a","typ":"b"}"#).is_err());
        Ok(())
    }

    #[test]
    fn a_header_parsed_once_gives_typ_kid_and_the_same_checks() -> Result<(), JoseError> {
        let text = format!(r#"{{"alg":"ES256","kid":"{KID}","typ":"dpop+jwt"}}"#);
        let mut h = JwsHeader::parse(text.as_bytes())?;
        assert_eq!(h.typ(), Some("dpop+jwt"));
        assert_eq!(h.kid(), Some(KID));
        assert_eq!(h.check(P256, KID)?, Alg::Es256);
        assert_eq!(h.take_typ().as_deref(), Some("dpop+jwt"));
        assert!(matches!(
            h.check(P256, "another"),
            Err(JoseError::KidMismatch { .. })
        ));
        // Errors come in the same order as from the two separate reads.
        for bad in [
            &br#"{"alg":"ES256","alg":"ES256"}"#[..],
            br#"{"alg":"ES256"} x"#,
            br#"{"alg":"ES256","alg":"ES256""#,
            br#"["alg"]"#,
            b"\xff",
        ] {
            assert_eq!(
                JwsHeader::parse(bad).map(|_| ()),
                header_typ(bad).map(|_| ())
            );
            assert_eq!(
                JwsHeader::parse(bad).map(|_| ()),
                check_header(bad, P256, KID).map(|_| ())
            );
        }
        assert!(matches!(
            JwsHeader::parse(br#"{"alg":"ES256","alg":"ES256"}"#),
            Err(JoseError::DuplicateHeaderMember { .. })
        ));
        assert!(matches!(
            JwsHeader::parse(br#"{"alg":"ES256","alg":"ES256""#),
            Err(JoseError::HeaderNotJson { .. })
        ));
        assert!(matches!(
            JwsHeader::parse(br#"{"alg":"ES256"} x"#),
            Err(JoseError::HeaderNotJson { .. })
        ));
        Ok(())
    }

    const KID: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
    const RSA: KeyKind = KeyKind::Rsa { bits: 2048 };
    const P256: KeyKind = KeyKind::Ec(Curve::P256);

    #[test]
    fn accepts_good_headers() -> Result<(), JoseError> {
        assert_eq!(check_header(br#"{"alg":"PS256"}"#, RSA, KID)?, Alg::Ps256);
        assert_eq!(
            check_header(
                format!(r#" {{ "alg" : "RS256", "kid":"{KID}", "typ":"JWT" }} "#).as_bytes(),
                RSA,
                KID
            )?,
            Alg::Rs256
        );
        assert_eq!(
            check_header(br#"{"alg":"Ed25519"}"#, KeyKind::Ed25519, KID)?,
            Alg::Ed25519
        );
        assert_eq!(
            check_header(br#"{"alg":"EdDSA","b64":true}"#, KeyKind::Ed25519, KID)?,
            Alg::EdDsa
        );
        assert_eq!(check_header(br#"{"alg":"ES256"}"#, P256, KID)?, Alg::Es256);
        Ok(())
    }

    #[test]
    fn refuses_bad_headers() {
        let cases: &[(&[u8], KeyKind, JoseError)] = &[
            (br#"{"typ":"JWT"}"#, RSA, JoseError::MissingAlg),
            (br#"{"alg":"none"}"#, RSA, JoseError::AlgNone),
            (
                br#"{"alg":"ES256"}"#,
                RSA,
                JoseError::AlgKeyMismatch {
                    alg: Alg::Es256,
                    key: RSA,
                },
            ),
            (
                br#"{"alg":"ES384"}"#,
                P256,
                JoseError::AlgKeyMismatch {
                    alg: Alg::Es384,
                    key: P256,
                },
            ),
            (
                br#"{"alg":"PS256","kid":"other"}"#,
                RSA,
                JoseError::KidMismatch {
                    expected: KID.into(),
                    found: "other".into(),
                },
            ),
            (
                br#"{"alg":"PS256","kid":7}"#,
                RSA,
                JoseError::InvalidHeaderMember {
                    member: "kid",
                    reason: "must be a string",
                },
            ),
            (
                br#"{"alg":256}"#,
                RSA,
                JoseError::InvalidHeaderMember {
                    member: "alg",
                    reason: "must be a string",
                },
            ),
            (br#"[{"alg":"PS256"}]"#, RSA, JoseError::HeaderNotObject),
            (br#""PS256""#, RSA, JoseError::HeaderNotObject),
            (b"\xff{}", RSA, JoseError::HeaderNotUtf8),
            (
                br#"{"alg":"PS256","alg":"none"}"#,
                RSA,
                JoseError::DuplicateHeaderMember { name: "alg".into() },
            ),
        ];
        for (header, kind, want) in cases {
            assert_eq!(
                check_header(header, *kind, KID).as_ref(),
                Err(want),
                "{}",
                String::from_utf8_lossy(header)
            );
        }
        assert!(matches!(
            check_header(br#"{"alg":"PS256""#, RSA, KID),
            Err(JoseError::HeaderNotJson { .. })
        ));
        assert!(matches!(
            check_header(br#"{"alg":"HS256"}"#, RSA, KID),
            Err(JoseError::UnsupportedAlg { .. })
        ));
        assert!(matches!(
            check_header(br#"{"alg":"PS256","b64":false}"#, RSA, KID),
            Err(JoseError::InvalidHeaderMember { member: "b64", .. })
        ));
    }
}
