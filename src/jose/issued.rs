//! The tokens an authorization server issues to other parties than the relying party's browser,
//! and the client's signed CIBA request: RFC 9068 JWT access tokens (with their RFC 9449 /
//! RFC 8705 sender constraint in `cnf`), OpenID Connect Back-Channel Logout tokens, and CIBA
//! signed authentication requests (CIBA Core §7.1.1, FAPI-CIBA §5.2.2).
//!
//! It owns each of these profiles' header (`typ`), required claims, the claims sigild stamps
//! itself and refuses from the caller (times, `jti`, `cnf`, `events`), the claims a profile
//! forbids (`nonce` in a logout token) and the lifetime bounds, and returns the exact header
//! and payload bytes to sign. Like the other profiles it never reads a clock or draws
//! randomness (the service passes `now` and `jti`), never touches a device or parses
//! certificates (the service hands in the DER it checked), and never puts a caller's token,
//! hint or identifier into an error message.

use std::fmt;

use serde_json::{Map, Value};

use super::profiles::{
    JarRequest, JwsParts, KeyRef, RequestObjectRules, check_auth_claims, check_key, header,
    non_empty, opt_str, refuse_reserved, request_object_claims, same_or_absent, stamp, to_bytes,
};
use super::{JoseError, b64_decode, dpop_jkt, public_key_from_jwk, x5t_s256};

// ---------------------------------------------------------------------------------------------
// Sender constraint (`cnf`)

/// The key an access token is bound to: its `cnf` member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// RFC 9449 §6.1 `cnf.jkt`: the RFC 7638 thumbprint of the client's DPoP public key.
    Jkt(String),
    /// RFC 8705 §3.1 `cnf.x5t#S256`: base64url SHA-256 of the client certificate's DER.
    X5tS256(String),
}

impl Confirmation {
    /// The sender constraint from what the caller gave: a DPoP public JWK, a DPoP key's
    /// thumbprint, or a client certificate's DER (which the caller has already checked to be a
    /// certificate). At most one may be given: a token bound to two keys could be presented
    /// with either, and RFC 9449 and RFC 8705 each define `cnf` for their own binding alone.
    ///
    /// # Errors
    ///
    /// [`JoseError::InvalidClaim`] for `cnf` when more than one is given, or for `dpop_jkt`
    /// when it is not a base64url SHA-256 thumbprint; [`JoseError::InvalidJwk`] for a JWK that
    /// is private, malformed, or of a key type sigild does not know.
    pub fn from_inputs(
        dpop_jwk: Option<&Value>,
        dpop_jkt_value: Option<&str>,
        client_certificate: Option<&[u8]>,
    ) -> Result<Option<Confirmation>, JoseError> {
        let given = usize::from(dpop_jwk.is_some())
            + usize::from(dpop_jkt_value.is_some())
            + usize::from(client_certificate.is_some());
        if given > 1 {
            return Err(JoseError::InvalidClaim {
                claim: "cnf",
                reason: "takes one sender constraint: a DPoP key (its JWK or its jkt) or a client certificate, not several",
            });
        }
        if let Some(jwk) = dpop_jwk {
            return Ok(Some(Confirmation::Jkt(dpop_jkt(&public_key_from_jwk(
                jwk,
            )?))));
        }
        if let Some(jkt) = dpop_jkt_value {
            let is_sha256 = b64_decode(jkt).is_ok_and(|d| d.len() == 32);
            if !is_sha256 {
                return Err(JoseError::InvalidClaim {
                    claim: "dpop_jkt",
                    reason: "must be the base64url SHA-256 JWK thumbprint of the DPoP key (43 characters)",
                });
            }
            return Ok(Some(Confirmation::Jkt(jkt.to_owned())));
        }
        Ok(client_certificate.map(|der| Confirmation::X5tS256(x5t_s256(der))))
    }

    /// The `cnf` claim value.
    fn to_claim(&self) -> Value {
        let mut m = Map::new();
        match self {
            Confirmation::Jkt(jkt) => m.insert("jkt".into(), jkt.as_str().into()),
            Confirmation::X5tS256(t) => m.insert("x5t#S256".into(), t.as_str().into()),
        };
        Value::Object(m)
    }
}

// ---------------------------------------------------------------------------------------------
// JWT access token (RFC 9068)

/// What the caller asks for in an RFC 9068 JWT access token.
///
/// The authorization server owns who the token is for and what it grants; sigild owns the
/// clock-derived claims, the `jti`, and `cnf`, which it derives itself from the key or
/// certificate so that a caller cannot bind a token to a thumbprint it made up from nothing.
#[derive(Clone)]
pub struct AccessTokenRequest {
    /// The authorization server's issuer identifier; becomes `iss`.
    pub issuer: String,
    /// The resource servers the token is for; one becomes a string `aud`, several an array.
    pub audience: Vec<String>,
    /// The resource owner, or the client for a client-credentials grant; becomes `sub`.
    pub subject: String,
    /// The client the token was issued to; becomes `client_id`.
    pub client_id: String,
    /// Space-separated scopes; becomes `scope` when present.
    pub scope: Option<String>,
    /// Further claims (`auth_time`, `acr`, `amr`, `authorization_details`, roles, …). Must not
    /// hold `iat`, `exp`, `nbf`, `jti`, `cnf` or `aud`; `iss`, `sub`, `client_id` and `scope`
    /// only if they repeat the values above.
    pub claims: Map<String, Value>,
    /// The current time in unix seconds, from the service's clock; becomes `iat`.
    pub now: u64,
    /// Seconds until `exp`, 1..=3600.
    pub lifetime: u64,
    /// A fresh unique identifier from the service.
    pub jti: String,
    /// The sender constraint, if the token is bound to a key.
    pub confirmation: Option<Confirmation>,
}

impl fmt::Debug for AccessTokenRequest {
    // Hand-written: the subject and the claims may be personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTokenRequest")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("subject", &"<redacted>")
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("claims", &self.claims.keys().collect::<Vec<_>>())
            .field("now", &self.now)
            .field("lifetime", &self.lifetime)
            .field("jti", &self.jti)
            .field("confirmation", &self.confirmation)
            .finish()
    }
}

/// The longest access token lifetime sigild signs (one hour: RFC 9068 tokens are bearer or
/// sender-constrained credentials that cannot be revoked once handed out).
const ACCESS_TOKEN_MAX_LIFETIME: u64 = 3_600;

/// Check an RFC 6749 §3.3 scope: scope tokens of `%x21 / %x23-5B / %x5D-7E`, one space apart.
fn check_scope(scope: &str) -> Result<(), JoseError> {
    let ok = !scope.is_empty()
        && scope.split(' ').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        });
    if ok {
        Ok(())
    } else {
        Err(JoseError::InvalidClaim {
            claim: "scope",
            reason: "must be scope tokens (printable ASCII without quotes or backslashes) separated by single spaces",
        })
    }
}

/// Build an RFC 9068 JWT access token for `key`.
///
/// Header `{alg, kid, typ: "at+jwt"}` (§2.1). Claims: the caller's further claims plus
/// `iss`, `exp = now + lifetime`, `aud`, `sub`, `client_id`, `iat = now`, `jti` (§2.2),
/// `scope` when given (§2.2.3), and `cnf` with `jkt` (RFC 9449 §6.1) or `x5t#S256`
/// (RFC 8705 §3.1) when the token is sender-constrained.
///
/// # Errors
///
/// [`JoseError::AlgKeyMismatch`], [`JoseError::MissingClaim`], [`JoseError::InvalidClaim`],
/// [`JoseError::ReservedClaim`], [`JoseError::InvalidLifetime`] or
/// [`JoseError::TimeOutOfRange`].
pub fn access_token(key: KeyRef<'_>, req: &AccessTokenRequest) -> Result<JwsParts, JoseError> {
    check_key(key.alg, key.kind)?;
    non_empty("issuer", &req.issuer)?;
    non_empty("subject", &req.subject)?;
    non_empty("client_id", &req.client_id)?;
    non_empty("jti", &req.jti)?;
    if req.audience.is_empty() {
        return Err(JoseError::MissingClaim { claim: "audience" });
    }
    if req.audience.iter().any(String::is_empty) {
        return Err(JoseError::InvalidClaim {
            claim: "audience",
            reason: "must not hold an empty resource indicator",
        });
    }
    if let Some(scope) = &req.scope {
        check_scope(scope)?;
    }
    let c = &req.claims;
    refuse_reserved(c, &["iat", "exp", "nbf", "jti", "cnf", "aud"])?;
    same_or_absent(c, "iss", &req.issuer)?;
    same_or_absent(c, "sub", &req.subject)?;
    same_or_absent(c, "client_id", &req.client_id)?;
    match (&req.scope, c.get("scope")) {
        (_, None) => {}
        (Some(s), Some(Value::String(v))) if s == v => {}
        _ => {
            return Err(JoseError::InvalidClaim {
                claim: "scope",
                reason: "goes in the scope field, not among the further claims",
            });
        }
    }
    check_auth_claims(c)?;

    let (iat, exp) = stamp(
        req.now,
        req.lifetime,
        ACCESS_TOKEN_MAX_LIFETIME,
        "an access token",
    )?;
    let mut claims = c.clone();
    claims.insert("iss".into(), req.issuer.as_str().into());
    claims.insert("exp".into(), exp.into());
    let aud = match req.audience.as_slice() {
        [one] => Value::from(one.as_str()),
        many => Value::from(many.to_vec()),
    };
    claims.insert("aud".into(), aud);
    claims.insert("sub".into(), req.subject.as_str().into());
    claims.insert("client_id".into(), req.client_id.as_str().into());
    claims.insert("iat".into(), iat.into());
    claims.insert("jti".into(), req.jti.as_str().into());
    if let Some(scope) = &req.scope {
        claims.insert("scope".into(), scope.as_str().into());
    }
    if let Some(cnf) = &req.confirmation {
        claims.insert("cnf".into(), cnf.to_claim());
    }
    Ok(JwsParts {
        alg: key.alg,
        header: to_bytes(header(key.alg, Some(key.kid), Some("at+jwt")))?,
        payload: to_bytes(claims)?,
    })
}

// ---------------------------------------------------------------------------------------------
// Back-channel logout token (OpenID Connect Back-Channel Logout 1.0 §2.4)

/// The `events` member that makes a JWT a logout token.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// What the caller asks for in a back-channel logout token.
#[derive(Clone)]
pub struct LogoutTokenRequest {
    /// The OP's issuer identifier; becomes `iss`.
    pub issuer: String,
    /// The relying party's `client_id`; becomes `aud`.
    pub audience: String,
    /// The user being logged out, if named; becomes `sub`.
    pub subject: Option<String>,
    /// The session being ended, if named; becomes `sid`. At least one of the two is required.
    pub sid: Option<String>,
    /// Further claims. Must not hold `nonce` (§2.4: it would let the token pass for an ID
    /// token), nor `iat`, `exp`, `nbf`, `jti` or `events`; `iss`, `aud`, `sub` and `sid` only
    /// if they repeat the values above.
    pub claims: Map<String, Value>,
    /// The current time in unix seconds; becomes `iat`.
    pub now: u64,
    /// Seconds until `exp`, 1..=600.
    pub lifetime: u64,
    /// A fresh unique identifier from the service (RPs use it to refuse replays).
    pub jti: String,
}

impl fmt::Debug for LogoutTokenRequest {
    // Hand-written: the subject is personal data, the session id identifies a live session.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogoutTokenRequest")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("subject", &self.subject.as_ref().map(|_| "<redacted>"))
            .field("sid", &self.sid.as_ref().map(|_| "<redacted>"))
            .field("claims", &self.claims.keys().collect::<Vec<_>>())
            .field("now", &self.now)
            .field("lifetime", &self.lifetime)
            .field("jti", &self.jti)
            .finish()
    }
}

/// The longest logout token lifetime: the OP sends it at once, and the spec recommends a
/// short `exp` (two minutes is typical).
const LOGOUT_MAX_LIFETIME: u64 = 600;

/// Build an OpenID Connect back-channel logout token for `key`.
///
/// Header `{alg, kid, typ: "logout+jwt"}` (§2.4, as OpenID recommends explicit typing).
/// Claims: the caller's further claims plus `iss`, `aud`, `iat = now`, `exp = now + lifetime`,
/// `jti`, `events: {"http://schemas.openid.net/event/backchannel-logout": {}}`, and `sub`
/// and/or `sid`.
///
/// # Errors
///
/// [`JoseError::ForbiddenClaim`] for `nonce`; [`JoseError::InvalidClaim`] when neither `sub`
/// nor `sid` is given, or a claim contradicts a field; [`JoseError::AlgKeyMismatch`],
/// [`JoseError::MissingClaim`], [`JoseError::ReservedClaim`], [`JoseError::InvalidLifetime`]
/// or [`JoseError::TimeOutOfRange`].
pub fn logout_token(key: KeyRef<'_>, req: &LogoutTokenRequest) -> Result<JwsParts, JoseError> {
    check_key(key.alg, key.kind)?;
    non_empty("issuer", &req.issuer)?;
    non_empty("audience", &req.audience)?;
    non_empty("jti", &req.jti)?;
    if let Some(sub) = &req.subject {
        non_empty("sub", sub)?;
    }
    if let Some(sid) = &req.sid {
        non_empty("sid", sid)?;
    }
    if req.subject.is_none() && req.sid.is_none() {
        return Err(JoseError::InvalidClaim {
            claim: "sub",
            reason: "or \"sid\" is required: a logout token names the user, the session, or both",
        });
    }
    let c = &req.claims;
    if c.contains_key("nonce") {
        return Err(JoseError::ForbiddenClaim {
            claim: "nonce",
            profile: "a logout token (OpenID Connect Back-Channel Logout §2.4)",
        });
    }
    refuse_reserved(c, &["iat", "exp", "nbf", "jti", "events"])?;
    same_or_absent(c, "iss", &req.issuer)?;
    same_or_absent(c, "aud", &req.audience)?;
    for (claim, field) in [("sub", &req.subject), ("sid", &req.sid)] {
        match field {
            Some(v) => same_or_absent(c, claim, v)?,
            None if c.contains_key(claim) => {
                return Err(JoseError::InvalidClaim {
                    claim,
                    reason: "goes in its own field, not among the further claims",
                });
            }
            None => {}
        }
    }

    let (iat, exp) = stamp(req.now, req.lifetime, LOGOUT_MAX_LIFETIME, "a logout token")?;
    let mut claims = c.clone();
    claims.insert("iss".into(), req.issuer.as_str().into());
    claims.insert("aud".into(), req.audience.as_str().into());
    claims.insert("iat".into(), iat.into());
    claims.insert("exp".into(), exp.into());
    claims.insert("jti".into(), req.jti.as_str().into());
    let mut events = Map::new();
    events.insert(BACKCHANNEL_LOGOUT_EVENT.into(), Value::Object(Map::new()));
    claims.insert("events".into(), Value::Object(events));
    if let Some(sub) = &req.subject {
        claims.insert("sub".into(), sub.as_str().into());
    }
    if let Some(sid) = &req.sid {
        claims.insert("sid".into(), sid.as_str().into());
    }
    Ok(JwsParts {
        alg: key.alg,
        header: to_bytes(header(key.alg, Some(key.kid), Some("logout+jwt")))?,
        payload: to_bytes(claims)?,
    })
}

// ---------------------------------------------------------------------------------------------
// CIBA signed authentication request (CIBA Core §7.1.1)

/// What the caller asks for in a CIBA signed authentication request: the same shape as a JAR
/// request object ([`JarRequest`]: `client_id` becomes `iss`, `audience` the OP's issuer as
/// `aud`, `now` becomes `iat` and `nbf`, lifetime 1..=3600 — FAPI-CIBA §5.2.2: `exp − nbf` at
/// most 60 minutes). Its `claims` are the authentication request parameters: `scope` (with
/// `openid`), exactly one of `login_hint`, `login_hint_token` and `id_token_hint`, and
/// optionally `binding_message`, `client_notification_token`, `acr_values`, `user_code`,
/// `requested_expiry`.
pub type CibaRequest = JarRequest;

/// The longest CIBA request lifetime (FAPI-CIBA §5.2.2: at most 60 minutes).
const CIBA_MAX_LIFETIME: u64 = 3_600;

/// The CIBA parameters that are plain strings.
const CIBA_STRING_PARAMS: [&str; 8] = [
    "scope",
    "login_hint",
    "login_hint_token",
    "id_token_hint",
    "binding_message",
    "client_notification_token",
    "acr_values",
    "user_code",
];

/// Build a CIBA signed authentication request for `key`.
///
/// Header `{alg, kid}`. Claims: the caller's authentication request parameters plus
/// `iss = client_id`, `aud = audience`, `iat = nbf = now`, `exp = now + lifetime`, `jti`
/// (CIBA Core §7.1.1). The request must carry the `openid` scope and exactly one hint
/// (§7.1), which the OP would otherwise refuse only after the user was disturbed.
///
/// # Errors
///
/// [`JoseError::AlgKeyMismatch`], [`JoseError::MissingClaim`], [`JoseError::InvalidClaim`],
/// [`JoseError::ReservedClaim`], [`JoseError::ForbiddenClaim`], [`JoseError::InvalidLifetime`]
/// or [`JoseError::TimeOutOfRange`].
pub fn ciba_request(key: KeyRef<'_>, req: &CibaRequest) -> Result<JwsParts, JoseError> {
    check_key(key.alg, key.kind)?;
    let c = &req.claims;
    let scope = opt_str(c, "scope")?.ok_or(JoseError::MissingClaim { claim: "scope" })?;
    check_scope(scope)?;
    if !scope.split(' ').any(|s| s == "openid") {
        return Err(JoseError::InvalidClaim {
            claim: "scope",
            reason: "must include openid (CIBA Core §7.1)",
        });
    }
    let hints = ["login_hint", "login_hint_token", "id_token_hint"]
        .iter()
        .filter(|h| c.contains_key(**h))
        .count();
    if hints != 1 {
        return Err(JoseError::InvalidClaim {
            claim: "login_hint",
            reason: "or login_hint_token or id_token_hint: exactly one of the three is required (CIBA Core §7.1)",
        });
    }
    if c.get("requested_expiry")
        .is_some_and(|v| !(v.is_u64() || v.as_str().is_some_and(|s| s.parse::<u64>().is_ok())))
    {
        return Err(JoseError::InvalidClaim {
            claim: "requested_expiry",
            reason: "must be a positive integer of seconds",
        });
    }
    let claims = request_object_claims(
        req,
        RequestObjectRules {
            profile: "a signed authentication request (CIBA Core §7.1.1)",
            lifetime_profile: "a signed authentication request",
            max_lifetime: CIBA_MAX_LIFETIME,
            string_params: &CIBA_STRING_PARAMS,
            client_id_claim: false,
        },
    )?;
    Ok(JwsParts {
        alg: key.alg,
        header: to_bytes(header(key.alg, Some(key.kid), None))?,
        payload: to_bytes(claims)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Curve, KeyKind};
    use crate::jose::Alg;
    use serde_json::json;

    type R = Result<(), Box<dyn std::error::Error>>;

    const NOW: u64 = 1_700_000_000;
    const P256: KeyKind = KeyKind::Ec(Curve::P256);

    fn key() -> KeyRef<'static> {
        KeyRef {
            kid: "kid-1",
            kind: P256,
            alg: Alg::Es256,
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn parse(bytes: &[u8]) -> Result<Value, Box<dyn std::error::Error>> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// RFC 7638 §3.1's example key and thumbprint.
    fn rfc7638_jwk() -> Value {
        json!({"kty": "RSA", "e": "AQAB",
               "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"})
    }
    const RFC7638_THUMBPRINT: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

    fn at_req() -> AccessTokenRequest {
        AccessTokenRequest {
            issuer: "https://as.example.com".into(),
            audience: vec!["https://rs.example.com".into()],
            subject: "5ba552d67".into(),
            client_id: "s6BhdRkqt3".into(),
            scope: Some("openid profile reademail".into()),
            claims: obj(json!({"auth_time": NOW - 10, "acr": "urn:mace:incommon:iap:silver"})),
            now: NOW,
            lifetime: 300,
            jti: "dbe39bf3a3ba4238a513f51d6e1691c4".into(),
            confirmation: None,
        }
    }

    #[test]
    fn access_token_has_rfc9068_shape() -> R {
        let parts = access_token(key(), &at_req())?;
        assert_eq!(
            parse(&parts.header)?,
            json!({"alg": "ES256", "kid": "kid-1", "typ": "at+jwt"})
        );
        assert_eq!(
            parse(&parts.payload)?,
            json!({
                "iss": "https://as.example.com", "exp": NOW + 300, "aud": "https://rs.example.com",
                "sub": "5ba552d67", "client_id": "s6BhdRkqt3", "iat": NOW,
                "jti": "dbe39bf3a3ba4238a513f51d6e1691c4", "scope": "openid profile reademail",
                "auth_time": NOW - 10, "acr": "urn:mace:incommon:iap:silver"
            })
        );
        let mut req = at_req();
        req.audience.push("https://rs2.example.com".into());
        req.scope = None;
        let c = parse(&access_token(key(), &req)?.payload)?;
        assert_eq!(
            c["aud"],
            json!(["https://rs.example.com", "https://rs2.example.com"])
        );
        assert!(c.get("scope").is_none() && c.get("cnf").is_none());
        Ok(())
    }

    #[test]
    fn access_token_sender_constraints() -> R {
        let jwk = rfc7638_jwk();
        let cnf = Confirmation::from_inputs(Some(&jwk), None, None)?;
        assert_eq!(cnf, Some(Confirmation::Jkt(RFC7638_THUMBPRINT.into())));
        let mut req = at_req();
        req.confirmation = cnf;
        let c = parse(&access_token(key(), &req)?.payload)?;
        assert_eq!(c["cnf"], json!({"jkt": RFC7638_THUMBPRINT}));

        let cnf = Confirmation::from_inputs(None, Some(RFC7638_THUMBPRINT), None)?;
        assert_eq!(cnf, Some(Confirmation::Jkt(RFC7638_THUMBPRINT.into())));

        req.confirmation = Confirmation::from_inputs(None, None, Some(b""))?;
        let c = parse(&access_token(key(), &req)?.payload)?;
        assert_eq!(
            c["cnf"],
            json!({"x5t#S256": "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"})
        );
        assert_eq!(Confirmation::from_inputs(None, None, None)?, None);
        Ok(())
    }

    #[test]
    fn sender_constraint_refusals() {
        let jwk = rfc7638_jwk();
        for (a, b, c) in [
            (Some(&jwk), Some(RFC7638_THUMBPRINT), None),
            (Some(&jwk), None, Some(&b"der"[..])),
            (None, Some(RFC7638_THUMBPRINT), Some(&b"der"[..])),
        ] {
            assert!(matches!(
                Confirmation::from_inputs(a, b, c),
                Err(JoseError::InvalidClaim { claim: "cnf", .. })
            ));
        }
        for jkt in [
            "",
            "abc",
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs=",
            "x y",
        ] {
            assert!(
                matches!(
                    Confirmation::from_inputs(None, Some(jkt), None),
                    Err(JoseError::InvalidClaim {
                        claim: "dpop_jkt",
                        ..
                    })
                ),
                "{jkt}"
            );
        }
        let mut private = rfc7638_jwk();
        private["d"] = json!("AQAB");
        assert!(matches!(
            Confirmation::from_inputs(Some(&private), None, None),
            Err(JoseError::InvalidJwk { .. })
        ));
    }

    #[test]
    fn access_token_refusals() {
        for claim in ["iat", "exp", "nbf", "jti", "cnf", "aud"] {
            let mut req = at_req();
            req.claims.insert(claim.into(), json!(1));
            assert!(
                matches!(
                    access_token(key(), &req),
                    Err(JoseError::ReservedClaim { .. })
                ),
                "{claim}"
            );
        }
        for (claim, v) in [
            ("iss", json!("https://other")),
            ("sub", json!("someone-else")),
            ("client_id", json!("other")),
            ("scope", json!("admin")),
            ("auth_time", json!("yesterday")),
            ("amr", json!("pwd")),
            ("acr", json!(1)),
        ] {
            let mut req = at_req();
            req.claims.insert(claim.into(), v);
            assert!(
                matches!(
                    access_token(key(), &req),
                    Err(JoseError::InvalidClaim { .. })
                ),
                "{claim}"
            );
        }
        let mut req = at_req();
        req.claims.insert("sub".into(), json!("5ba552d67"));
        assert!(access_token(key(), &req).is_ok());
        for scope in ["", " openid", "openid  profile", "a\"b", "é"] {
            let mut req = at_req();
            req.scope = Some(scope.into());
            assert!(
                matches!(
                    access_token(key(), &req),
                    Err(JoseError::InvalidClaim { claim: "scope", .. })
                ),
                "{scope}"
            );
        }
        let mut req = at_req();
        req.audience.clear();
        assert_eq!(
            access_token(key(), &req),
            Err(JoseError::MissingClaim { claim: "audience" })
        );
        req.audience = vec![String::new()];
        assert!(access_token(key(), &req).is_err());
        let mut req = at_req();
        req.subject.clear();
        assert_eq!(
            access_token(key(), &req),
            Err(JoseError::MissingClaim { claim: "subject" })
        );
        for lifetime in [0, 3601] {
            let mut req = at_req();
            req.lifetime = lifetime;
            assert!(matches!(
                access_token(key(), &req),
                Err(JoseError::InvalidLifetime { max: 3600, .. })
            ));
        }
        let mut req = at_req();
        req.lifetime = 3600;
        assert!(access_token(key(), &req).is_ok());
        let rsa = KeyRef {
            kid: "k",
            kind: P256,
            alg: Alg::Ps256,
        };
        assert!(matches!(
            access_token(rsa, &at_req()),
            Err(JoseError::AlgKeyMismatch { .. })
        ));
    }

    #[test]
    fn access_token_debug_redacts_subject_and_claim_values() {
        let dbg = format!("{:?}", at_req());
        assert!(!dbg.contains("5ba552d67") && !dbg.contains("silver"));
    }

    fn logout_req() -> LogoutTokenRequest {
        LogoutTokenRequest {
            issuer: "https://server.example.com".into(),
            audience: "s6BhdRkqt3".into(),
            subject: Some("248289761001".into()),
            sid: Some("08a5019c-17e1-4977-8f42-65a12843ea02".into()),
            claims: Map::new(),
            now: NOW,
            lifetime: 120,
            jti: "bWJq".into(),
        }
    }

    #[test]
    fn logout_token_has_the_spec_shape() -> R {
        let parts = logout_token(key(), &logout_req())?;
        assert_eq!(
            parse(&parts.header)?,
            json!({"alg": "ES256", "kid": "kid-1", "typ": "logout+jwt"})
        );
        assert_eq!(
            parse(&parts.payload)?,
            json!({
                "iss": "https://server.example.com", "aud": "s6BhdRkqt3", "iat": NOW,
                "exp": NOW + 120, "jti": "bWJq", "sub": "248289761001",
                "sid": "08a5019c-17e1-4977-8f42-65a12843ea02",
                "events": {"http://schemas.openid.net/event/backchannel-logout": {}}
            })
        );
        let mut req = logout_req();
        req.subject = None;
        let c = parse(&logout_token(key(), &req)?.payload)?;
        assert!(c.get("sub").is_none() && c["sid"].is_string());
        let mut req = logout_req();
        req.sid = None;
        let c = parse(&logout_token(key(), &req)?.payload)?;
        assert!(c.get("sid").is_none() && c["sub"].is_string());
        Ok(())
    }

    #[test]
    fn logout_token_refusals() {
        let mut req = logout_req();
        req.claims.insert("nonce".into(), json!("n-0S6"));
        assert!(matches!(
            logout_token(key(), &req),
            Err(JoseError::ForbiddenClaim { claim: "nonce", .. })
        ));
        let mut req = logout_req();
        req.subject = None;
        req.sid = None;
        let e = logout_token(key(), &req);
        assert!(matches!(
            e,
            Err(JoseError::InvalidClaim { claim: "sub", .. })
        ));
        assert!(
            e.err()
                .map(|e| e.to_string())
                .unwrap_or_default()
                .contains("\"sid\"")
        );
        for claim in ["iat", "exp", "nbf", "jti", "events"] {
            let mut req = logout_req();
            req.claims.insert(claim.into(), json!(1));
            assert!(matches!(
                logout_token(key(), &req),
                Err(JoseError::ReservedClaim { .. })
            ));
        }
        let mut req = logout_req();
        req.sid = None;
        req.claims.insert("sid".into(), json!("s"));
        assert!(matches!(
            logout_token(key(), &req),
            Err(JoseError::InvalidClaim { claim: "sid", .. })
        ));
        let mut req = logout_req();
        req.claims.insert("aud".into(), json!("other"));
        assert!(matches!(
            logout_token(key(), &req),
            Err(JoseError::InvalidClaim { claim: "aud", .. })
        ));
        for lifetime in [0, 601] {
            let mut req = logout_req();
            req.lifetime = lifetime;
            assert!(matches!(
                logout_token(key(), &req),
                Err(JoseError::InvalidLifetime { max: 600, .. })
            ));
        }
        let dbg = format!("{:?}", logout_req());
        assert!(!dbg.contains("248289761001") && !dbg.contains("08a5019c"));
    }

    fn ciba_req(claims: Value) -> CibaRequest {
        CibaRequest {
            client_id: "s6BhdRkqt3".into(),
            audience: "https://server.example.com".into(),
            claims: obj(claims),
            now: NOW,
            lifetime: 300,
            jti: "4LTCqACC2ESC5BWCnN3j58EnA".into(),
        }
    }

    fn ciba_claims() -> Value {
        json!({"scope": "openid email example-scope",
               "client_notification_token": "8d67dc78-7faa-4d41-aabd-67707b374255",
               "binding_message": "W4SCT", "login_hint_token": "eyJraWQiOiJsdGFjZXNidyIsImFsZyI6IkVTMjU2In0.eyJ"})
    }

    #[test]
    fn ciba_request_has_the_spec_shape() -> R {
        let parts = ciba_request(key(), &ciba_req(ciba_claims()))?;
        assert_eq!(
            parse(&parts.header)?,
            json!({"alg": "ES256", "kid": "kid-1"})
        );
        let c = parse(&parts.payload)?;
        assert_eq!(c["iss"], "s6BhdRkqt3");
        assert_eq!(c["aud"], "https://server.example.com");
        assert_eq!(c["iat"], NOW);
        assert_eq!(c["nbf"], NOW);
        assert_eq!(c["exp"], NOW + 300);
        assert_eq!(c["jti"], "4LTCqACC2ESC5BWCnN3j58EnA");
        assert_eq!(c["binding_message"], "W4SCT");
        Ok(())
    }

    #[test]
    fn ciba_request_refusals() -> R {
        for (claims, want) in [
            (
                json!({"scope": "openid", "login_hint": "a", "exp": 1}),
                "exp",
            ),
            (
                json!({"scope": "openid", "login_hint": "a", "nbf": 1}),
                "nbf",
            ),
            (
                json!({"scope": "openid", "login_hint": "a", "jti": "x"}),
                "jti",
            ),
            (
                json!({"scope": "openid", "login_hint": "a", "request": "x"}),
                "request",
            ),
            (json!({"login_hint": "a"}), "scope"),
            (json!({"scope": "email", "login_hint": "a"}), "scope"),
            (json!({"scope": "openid"}), "login_hint"),
            (
                json!({"scope": "openid", "login_hint": "a", "id_token_hint": "b"}),
                "login_hint",
            ),
            (
                json!({"scope": "openid", "login_hint": "a", "iss": "other"}),
                "iss",
            ),
            (json!({"scope": "openid", "login_hint": 5}), "login_hint"),
            (
                json!({"scope": "openid", "login_hint": "a", "requested_expiry": -1}),
                "requested_expiry",
            ),
        ] {
            let got = ciba_request(key(), &ciba_req(claims.clone()));
            let claim = match got {
                Err(
                    JoseError::ReservedClaim { claim }
                    | JoseError::ForbiddenClaim { claim, .. }
                    | JoseError::MissingClaim { claim }
                    | JoseError::InvalidClaim { claim, .. },
                ) => claim,
                other => return Err(format!("{claims}: {other:?}").into()),
            };
            assert_eq!(claim, want, "{claims}");
        }
        for lifetime in [0, 3601] {
            let mut req = ciba_req(ciba_claims());
            req.lifetime = lifetime;
            assert!(matches!(
                ciba_request(key(), &req),
                Err(JoseError::InvalidLifetime { max: 3600, .. })
            ));
        }
        let mut req = ciba_req(ciba_claims());
        req.lifetime = 3600;
        assert!(ciba_request(key(), &req).is_ok());
        let dbg = format!("{:?}", ciba_req(ciba_claims()));
        assert!(!dbg.contains("8d67dc78") && !dbg.contains("eyJraWQi"));
        Ok(())
    }
}
