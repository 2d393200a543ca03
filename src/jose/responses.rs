//! The signed responses an authorization server returns besides tokens: the JWT-secured
//! authorization response (JARM), the JWT introspection response (RFC 9701) and the signed
//! UserInfo response (OIDC Core §5.3.2).
//!
//! It owns each response's header and claim rules: what sigild sets itself (`iss`, `aud`, the
//! times), what it refuses from the caller, how the introspection result is nested, and the
//! JARM lifetime bounds. Like the token profiles next door it returns the exact header and
//! payload bytes to sign, and it must never read a clock, draw randomness, touch a device, or
//! put a caller's code, token or claim value into an error message.

use std::fmt;

use serde_json::{Map, Value};

use super::profiles::{
    check_key, header, non_empty, opt_str, refuse_reserved, same_or_absent, stamp, to_bytes,
};
use super::{JoseError, JwsParts, KeyRef, TokenType};

/// The claim names of a map, for Debug output that must not show the values.
fn keys(m: &Map<String, Value>) -> Vec<&String> {
    m.keys().collect()
}

// ---------------------------------------------------------------------------------------------
// JARM

/// What the caller asks for in a JWT-secured authorization response (JARM §2.1).
///
/// The caller owns the response parameters; sigild owns `iss`, `aud` and the times, so every
/// response it signs is bound to one issuer and one client and expires soon.
#[derive(Clone)]
pub struct JarmRequest {
    /// The authorization server's issuer identifier; becomes `iss`.
    pub issuer: String,
    /// The client the response is for; becomes `aud` (one string).
    pub client_id: String,
    /// The authorization response parameters: `code` and `state`, or `error`,
    /// `error_description`, `error_uri` and `state`, or the parameters of an implicit or
    /// hybrid response (`access_token`, `token_type`, `expires_in`, `scope`, `id_token`). Must
    /// not hold `exp`, `iat` or `nbf`, nor `aud`; `iss` only if it repeats the issuer (the
    /// RFC 9207 response parameter is the same value).
    pub response: Map<String, Value>,
    /// The current time in unix seconds, from the service's clock; becomes `iat`.
    pub now: u64,
    /// Seconds until `exp`, 1..=600.
    pub lifetime: u64,
}

impl fmt::Debug for JarmRequest {
    // Hand-written: the code and any access token in the response are secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JarmRequest")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("response", &keys(&self.response))
            .field("now", &self.now)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// The longest JARM response lifetime sigild signs: the response is used within seconds of the
/// redirect, and JARM §2.1 recommends at most ten minutes.
pub const JARM_MAX_LIFETIME: u64 = 600;

/// Authorization response parameters that are plain strings (RFC 6749 §4.1.2, §4.1.2.1,
/// §4.2.2; OIDC Core §3.2.2.5, §3.3.2.5).
const JARM_STRING_PARAMS: [&str; 9] = [
    "code",
    "state",
    "error",
    "error_description",
    "error_uri",
    "access_token",
    "token_type",
    "scope",
    "id_token",
];

/// The parameters that make a response a response: what was granted, or the error.
const JARM_RESULT_PARAMS: [&str; 4] = ["code", "access_token", "id_token", "error"];

/// Build a JARM authorization response for `key`.
///
/// Header `{alg, kid}` (JARM defines no `typ`). Claims: the caller's response parameters, type
/// checked, plus `iss = issuer`, `aud = client_id`, `iat = now`, `exp = now + lifetime`. A
/// response must carry `code`, `access_token`, `id_token` or `error`; an error response
/// carries none of the others (RFC 6749 §4.1.2.1: it grants nothing).
///
/// # Errors
///
/// [`JoseError::AlgKeyMismatch`], [`JoseError::MissingClaim`], [`JoseError::InvalidClaim`],
/// [`JoseError::ReservedClaim`], [`JoseError::InvalidLifetime`] or
/// [`JoseError::TimeOutOfRange`].
pub fn jarm_response(key: KeyRef<'_>, req: &JarmRequest) -> Result<JwsParts, JoseError> {
    check_key(key.alg, key.kind)?;
    non_empty("issuer", &req.issuer)?;
    non_empty("client_id", &req.client_id)?;
    let r = &req.response;
    refuse_reserved(r, &["exp", "iat", "nbf", "aud"])?;
    same_or_absent(r, "iss", &req.issuer)?;
    for param in JARM_STRING_PARAMS {
        if opt_str(r, param)?.is_some_and(str::is_empty) {
            return Err(JoseError::InvalidClaim {
                claim: param,
                reason: "must not be empty; omit it instead",
            });
        }
    }
    match r.get("expires_in") {
        None => {}
        Some(Value::Number(n)) if n.is_u64() => {}
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {}
        Some(_) => {
            return Err(JoseError::InvalidClaim {
                claim: "expires_in",
                reason: "must be a non-negative integer (seconds)",
            });
        }
    }
    if !JARM_RESULT_PARAMS.iter().any(|p| r.contains_key(*p)) {
        return Err(JoseError::MissingClaim {
            claim: "code, access_token, id_token or error",
        });
    }
    if r.contains_key("error")
        && let Some(granted) = ["code", "access_token", "id_token"]
            .into_iter()
            .find(|p| r.contains_key(*p))
    {
        return Err(JoseError::InvalidClaim {
            claim: granted,
            reason: "cannot be in an error response; an error grants nothing",
        });
    }

    let (iat, exp) = stamp(
        req.now,
        req.lifetime,
        JARM_MAX_LIFETIME,
        "a JARM authorization response",
    )?;
    let mut claims = r.clone();
    claims.insert("iss".into(), req.issuer.as_str().into());
    claims.insert("aud".into(), req.client_id.as_str().into());
    claims.insert("iat".into(), iat.into());
    claims.insert("exp".into(), exp.into());
    Ok(JwsParts {
        alg: key.alg,
        header: to_bytes(header(key.alg, Some(key.kid), None))?,
        payload: to_bytes(claims)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Introspection response

/// What the caller asks for in a JWT introspection response (RFC 9701).
#[derive(Clone)]
pub struct IntrospectionRequest {
    /// The authorization server's issuer identifier; becomes `iss`.
    pub issuer: String,
    /// The resource server that asked; becomes `aud`.
    pub audience: String,
    /// The RFC 7662 introspection result (`active`, `scope`, `client_id`, `sub`, `exp`, …),
    /// nested by sigild under `token_introspection`: it describes the introspected token, not
    /// this response, so it never appears at the top level where a verifier would take it for
    /// this JWT's own claims.
    pub result: Map<String, Value>,
    /// The current time in unix seconds, from the service's clock; becomes `iat`.
    pub now: u64,
}

impl fmt::Debug for IntrospectionRequest {
    // Hand-written: the result names a subject and may hold personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionRequest")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("result", &keys(&self.result))
            .field("now", &self.now)
            .finish()
    }
}

/// RFC 7662 §2.2 members that are strings.
const INTROSPECTION_STRING_MEMBERS: [&str; 7] = [
    "scope",
    "client_id",
    "username",
    "token_type",
    "sub",
    "iss",
    "jti",
];

/// RFC 7662 §2.2 members that are times (unix seconds).
const INTROSPECTION_TIME_MEMBERS: [&str; 3] = ["exp", "iat", "nbf"];

/// Build a JWT introspection response for `key`.
///
/// Header `{alg, kid, typ: "token-introspection+jwt"}`. Claims: `iss = issuer`,
/// `aud = audience`, `iat = now`, and the result under `token_introspection` — nothing else at
/// the top level. The result must hold a boolean `active`; an inactive one holds nothing else
/// (RFC 7662 §2.2: the server tells a third party nothing about a token that is not active);
/// the RFC 7662 members present must have their registered types.
///
/// # Errors
///
/// [`JoseError::AlgKeyMismatch`], [`JoseError::MissingClaim`], [`JoseError::InvalidClaim`] or
/// [`JoseError::ReservedClaim`] (a result that is already nested).
pub fn introspection_response(
    key: KeyRef<'_>,
    req: &IntrospectionRequest,
) -> Result<JwsParts, JoseError> {
    check_key(key.alg, key.kind)?;
    non_empty("issuer", &req.issuer)?;
    non_empty("audience", &req.audience)?;
    let r = &req.result;
    refuse_reserved(r, &["token_introspection"])?;
    match r.get("active") {
        None => return Err(JoseError::MissingClaim { claim: "active" }),
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) if r.len() == 1 => {}
        Some(Value::Bool(false)) => {
            return Err(JoseError::InvalidClaim {
                claim: "active",
                reason: "is false: the result of an inactive token must hold nothing else (RFC 7662 §2.2)",
            });
        }
        Some(_) => {
            return Err(JoseError::InvalidClaim {
                claim: "active",
                reason: "must be a boolean",
            });
        }
    }
    for member in INTROSPECTION_STRING_MEMBERS {
        opt_str(r, member)?;
    }
    for member in INTROSPECTION_TIME_MEMBERS {
        if r.get(member).is_some_and(|v| !v.is_u64()) {
            return Err(JoseError::InvalidClaim {
                claim: member,
                reason: "must be a non-negative integer (unix seconds)",
            });
        }
    }
    match r.get("aud") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
        Some(_) => {
            return Err(JoseError::InvalidClaim {
                claim: "aud",
                reason: "must be a string or an array of strings",
            });
        }
    }

    let mut claims = Map::new();
    claims.insert("iss".into(), req.issuer.as_str().into());
    claims.insert("aud".into(), req.audience.as_str().into());
    claims.insert("iat".into(), req.now.into());
    claims.insert("token_introspection".into(), Value::Object(r.clone()));
    Ok(JwsParts {
        alg: key.alg,
        header: to_bytes(header(
            key.alg,
            Some(key.kid),
            TokenType::Introspection.typ(),
        ))?,
        payload: to_bytes(claims)?,
    })
}

// ---------------------------------------------------------------------------------------------
// UserInfo

/// What the caller asks for in a signed UserInfo response (OIDC Core §5.3.2).
#[derive(Clone)]
pub struct UserinfoRequest {
    /// The OP's issuer identifier; becomes `iss`.
    pub issuer: String,
    /// The client's `client_id`; becomes `aud`.
    pub audience: String,
    /// The UserInfo claims: must hold `sub`; `iss` and `aud` only if they repeat the values
    /// above.
    pub claims: Map<String, Value>,
    /// The current time in unix seconds, from the service's clock; becomes `iat`.
    pub now: u64,
}

impl fmt::Debug for UserinfoRequest {
    // Hand-written: UserInfo claims are personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserinfoRequest")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("claims", &keys(&self.claims))
            .field("now", &self.now)
            .finish()
    }
}

/// Claims an ID token has and a UserInfo response must not: with them a signed UserInfo
/// response (which already has `iss`, `aud`, `sub` and `iat`) would pass for an ID token.
const USERINFO_FORBIDDEN: [&str; 3] = ["exp", "nbf", "nonce"];

/// Build a signed UserInfo response for `key`.
///
/// Header `{alg, kid}`. Claims: the caller's, with `sub` 1..=255 ASCII characters, plus
/// `iss = issuer`, `aud = audience` and `iat = now`. No `exp`: the response answers one
/// request, and an `exp` (with a `nonce`) is what would let it be replayed as an ID token.
///
/// # Errors
///
/// [`JoseError::AlgKeyMismatch`], [`JoseError::MissingClaim`], [`JoseError::InvalidClaim`],
/// [`JoseError::ReservedClaim`] or [`JoseError::ForbiddenClaim`].
pub fn userinfo_response(key: KeyRef<'_>, req: &UserinfoRequest) -> Result<JwsParts, JoseError> {
    check_key(key.alg, key.kind)?;
    non_empty("issuer", &req.issuer)?;
    non_empty("audience", &req.audience)?;
    let c = &req.claims;
    refuse_reserved(c, &["iat"])?;
    for claim in USERINFO_FORBIDDEN {
        if c.contains_key(claim) {
            return Err(JoseError::ForbiddenClaim {
                claim,
                profile: "a signed UserInfo response (it would pass for an ID token)",
            });
        }
    }
    same_or_absent(c, "iss", &req.issuer)?;
    same_or_absent(c, "aud", &req.audience)?;
    let sub = opt_str(c, "sub")?.ok_or(JoseError::MissingClaim { claim: "sub" })?;
    non_empty("sub", sub)?;
    if sub.len() > 255 || !sub.is_ascii() {
        return Err(JoseError::InvalidClaim {
            claim: "sub",
            reason: "must be at most 255 ASCII characters",
        });
    }

    let mut claims = c.clone();
    claims.insert("iss".into(), req.issuer.as_str().into());
    claims.insert("aud".into(), req.audience.as_str().into());
    claims.insert("iat".into(), req.now.into());
    Ok(JwsParts {
        alg: key.alg,
        header: to_bytes(header(key.alg, Some(key.kid), None))?,
        payload: to_bytes(claims)?,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::crypto::{Curve, KeyKind};
    use crate::jose::Alg;

    type R = Result<(), Box<dyn std::error::Error>>;

    const NOW: u64 = 1_700_000_000;

    fn key() -> KeyRef<'static> {
        KeyRef {
            kid: "kid-1",
            kind: KeyKind::Ec(Curve::P256),
            alg: Alg::Es256,
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn parse(b: &[u8]) -> Result<Map<String, Value>, Box<dyn std::error::Error>> {
        Ok(obj(serde_json::from_slice(b)?))
    }

    fn jarm(response: Value) -> JarmRequest {
        JarmRequest {
            issuer: "https://as.example.com".into(),
            client_id: "s6BhdRkqt3".into(),
            response: obj(response),
            now: NOW,
            lifetime: 60,
        }
    }

    #[test]
    fn jarm_binds_issuer_client_and_times() -> R {
        let parts = jarm_response(
            key(),
            &jarm(
                json!({"code": "PyyFaux2o7Q0YfXBU32jhw.5FXSQpvr8akv9CeRDSd0QA", "state": "S8NJ7uqk5fY4EjNvP_G_FtyJu6pUsvH9jsYni9dMAJw"}),
            ),
        )?;
        assert_eq!(
            Value::Object(parse(&parts.header)?),
            json!({"alg": "ES256", "kid": "kid-1"})
        );
        assert_eq!(
            Value::Object(parse(&parts.payload)?),
            json!({"iss": "https://as.example.com", "aud": "s6BhdRkqt3", "iat": NOW,
                   "exp": NOW + 60, "code": "PyyFaux2o7Q0YfXBU32jhw.5FXSQpvr8akv9CeRDSd0QA",
                   "state": "S8NJ7uqk5fY4EjNvP_G_FtyJu6pUsvH9jsYni9dMAJw"})
        );
        // An error response, the RFC 9207 iss repeated, and the longest lifetime.
        let mut req = jarm(json!({"error": "access_denied", "state": "s",
                                  "iss": "https://as.example.com"}));
        req.lifetime = JARM_MAX_LIFETIME;
        let c = parse(&jarm_response(key(), &req)?.payload)?;
        assert_eq!(c["error"], "access_denied");
        assert_eq!(c["exp"], NOW + 600);
        // An implicit response with a numeric or string expires_in.
        for expires_in in [json!(3600), json!("3600")] {
            let r = jarm(
                json!({"access_token": "2YotnFZFEjr1zCsicMWpAA", "token_type": "Bearer",
                                "expires_in": expires_in}),
            );
            assert!(jarm_response(key(), &r).is_ok());
        }
        Ok(())
    }

    #[test]
    fn jarm_refusals() {
        for (response, want) in [
            (
                json!({"code": "c", "exp": 1}),
                JoseError::ReservedClaim { claim: "exp" },
            ),
            (
                json!({"code": "c", "iat": 1}),
                JoseError::ReservedClaim { claim: "iat" },
            ),
            (
                json!({"code": "c", "aud": "x"}),
                JoseError::ReservedClaim { claim: "aud" },
            ),
            (
                json!({"state": "s"}),
                JoseError::MissingClaim {
                    claim: "code, access_token, id_token or error",
                },
            ),
        ] {
            assert_eq!(
                jarm_response(key(), &jarm(response.clone())),
                Err(want),
                "{response}"
            );
        }
        for response in [
            json!({"code": "c", "iss": "https://evil.example"}),
            json!({"code": 5}),
            json!({"code": ""}),
            json!({"code": "c", "state": ["s"]}),
            json!({"error": "access_denied", "code": "c"}),
            json!({"access_token": "a", "expires_in": -1}),
            json!({"access_token": "a", "expires_in": "soon"}),
        ] {
            assert!(
                matches!(
                    jarm_response(key(), &jarm(response.clone())),
                    Err(JoseError::InvalidClaim { .. })
                ),
                "{response}"
            );
        }
        for lifetime in [0, JARM_MAX_LIFETIME + 1] {
            let mut req = jarm(json!({"code": "c"}));
            req.lifetime = lifetime;
            assert!(matches!(
                jarm_response(key(), &req),
                Err(JoseError::InvalidLifetime { max: 600, .. })
            ));
        }
        let mut req = jarm(json!({"code": "c"}));
        req.client_id = String::new();
        assert_eq!(
            jarm_response(key(), &req),
            Err(JoseError::MissingClaim { claim: "client_id" })
        );
        assert!(matches!(
            jarm_response(
                KeyRef {
                    alg: Alg::Ps256,
                    ..key()
                },
                &jarm(json!({"code": "c"}))
            ),
            Err(JoseError::AlgKeyMismatch { .. })
        ));
    }

    #[test]
    fn jarm_errors_and_debug_never_show_the_code() {
        let req = jarm(json!({"code": "secret-code-value", "error": "x"}));
        let e = jarm_response(key(), &req).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| !e.contains("secret-code-value")));
        let dbg = format!("{req:?}");
        assert!(dbg.contains("\"code\"") && !dbg.contains("secret-code-value"));
    }

    fn introspection(result: Value) -> IntrospectionRequest {
        IntrospectionRequest {
            issuer: "https://as.example.com/".into(),
            audience: "https://rs.example.com/resource".into(),
            result: obj(result),
            now: NOW,
        }
    }

    #[test]
    fn introspection_nests_the_result() -> R {
        // RFC 9701 §5's example result.
        let result = json!({
            "active": true, "iss": "https://as.example.com/",
            "aud": "https://rs.example.com/resource", "iat": 1514797822, "exp": 1514797942,
            "client_id": "paiB2goo0a", "sub": "Z5O3upPC88QrAjx00dis",
            "scope": "read write dolphin", "jti": "t1FoCCaZd4Xv4ORJUWVUeTZfsKhW30CQCrWDDjwXy6w",
            "extension_field": "twenty-seven"
        });
        let parts = introspection_response(key(), &introspection(result.clone()))?;
        assert_eq!(
            Value::Object(parse(&parts.header)?),
            json!({"alg": "ES256", "kid": "kid-1", "typ": "token-introspection+jwt"})
        );
        assert_eq!(
            Value::Object(parse(&parts.payload)?),
            json!({"iss": "https://as.example.com/", "aud": "https://rs.example.com/resource",
                   "iat": NOW, "token_introspection": result})
        );
        let parts = introspection_response(key(), &introspection(json!({"active": false})))?;
        assert_eq!(
            parse(&parts.payload)?["token_introspection"],
            json!({"active": false})
        );
        Ok(())
    }

    #[test]
    fn introspection_refusals() {
        assert_eq!(
            introspection_response(
                key(),
                &introspection(json!({"token_introspection": {"active": true}}))
            ),
            Err(JoseError::ReservedClaim {
                claim: "token_introspection"
            })
        );
        assert_eq!(
            introspection_response(key(), &introspection(json!({"scope": "a"}))),
            Err(JoseError::MissingClaim { claim: "active" })
        );
        for result in [
            json!({"active": "true"}),
            json!({"active": false, "sub": "x"}),
            json!({"active": true, "exp": "tomorrow"}),
            json!({"active": true, "scope": ["a"]}),
            json!({"active": true, "aud": [1]}),
        ] {
            assert!(
                matches!(
                    introspection_response(key(), &introspection(result.clone())),
                    Err(JoseError::InvalidClaim { .. })
                ),
                "{result}"
            );
        }
        let mut req = introspection(json!({"active": true}));
        req.audience = String::new();
        assert_eq!(
            introspection_response(key(), &req),
            Err(JoseError::MissingClaim { claim: "audience" })
        );
    }

    fn userinfo(claims: Value) -> UserinfoRequest {
        UserinfoRequest {
            issuer: "https://op.example.com".into(),
            audience: "s6BhdRkqt3".into(),
            claims: obj(claims),
            now: NOW,
        }
    }

    #[test]
    fn userinfo_adds_iss_aud_iat() -> R {
        let parts = userinfo_response(
            key(),
            &userinfo(json!({"sub": "248289761001", "name": "Jane Doe",
                             "email": "janedoe@example.com", "aud": "s6BhdRkqt3"})),
        )?;
        assert_eq!(
            Value::Object(parse(&parts.header)?),
            json!({"alg": "ES256", "kid": "kid-1"})
        );
        assert_eq!(
            Value::Object(parse(&parts.payload)?),
            json!({"iss": "https://op.example.com", "aud": "s6BhdRkqt3", "iat": NOW,
                   "sub": "248289761001", "name": "Jane Doe", "email": "janedoe@example.com"})
        );
        Ok(())
    }

    #[test]
    fn userinfo_refusals_and_debug() {
        assert_eq!(
            userinfo_response(key(), &userinfo(json!({"name": "x"}))),
            Err(JoseError::MissingClaim { claim: "sub" })
        );
        assert_eq!(
            userinfo_response(key(), &userinfo(json!({"sub": "a", "iat": 1}))),
            Err(JoseError::ReservedClaim { claim: "iat" })
        );
        for claim in USERINFO_FORBIDDEN {
            let mut c = obj(json!({"sub": "a"}));
            c.insert(claim.into(), json!(1));
            assert!(matches!(
                userinfo_response(key(), &UserinfoRequest { claims: c, ..userinfo(json!({})) }),
                Err(JoseError::ForbiddenClaim { claim: c, .. }) if c == claim
            ));
        }
        for claims in [
            json!({"sub": 1}),
            json!({"sub": "é"}),
            json!({"sub": "a", "iss": "https://other.example"}),
            json!({"sub": "a", "aud": ["s6BhdRkqt3", "x"]}),
        ] {
            assert!(
                matches!(
                    userinfo_response(key(), &userinfo(claims.clone())),
                    Err(JoseError::InvalidClaim { .. })
                ),
                "{claims}"
            );
        }
        let dbg = format!(
            "{:?}",
            userinfo(json!({"sub": "alice-subject", "email": "alice@example.com"}))
        );
        assert!(!dbg.contains("alice") && dbg.contains("email"), "{dbg}");
    }
}
