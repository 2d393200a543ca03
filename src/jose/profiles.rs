//! The token profiles sigild builds itself: OIDC ID tokens, JAR request objects (RFC 9101),
//! `private_key_jwt` client assertions (RFC 7523) and DPoP proofs (RFC 9449), plus the two
//! confirmation values (`dpop_jkt`, `x5t#S256`).
//!
//! It owns each profile's header and claim rules: which claims are required, which ones sigild
//! stamps itself (times, `jti`, token hashes) and refuses from the caller, and the lifetime
//! bounds. Each profile returns the exact header and payload bytes to sign. It must never read a
//! clock or draw randomness (the service passes `now` and `jti`), never touch a device, and
//! never put a caller's token, code or URI into an error message.

use std::fmt;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::{Alg, JoseError, TokenType, b64, public_jwk, signing_input, thumbprint};
use crate::crypto::{KeyKind, PublicKey};

/// The largest integer every JSON implementation reads exactly (2^53 − 1); later times would be
/// silently rounded by JavaScript verifiers.
const MAX_JSON_INT: u64 = (1 << 53) - 1;

/// The key a profile is built for: its kid (goes into the header) and kind (checked against the
/// algorithm), as resolved by the keyring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef<'a> {
    /// The key version's kid (its RFC 7638 thumbprint), placed in the `kid` header.
    pub kid: &'a str,
    /// The kind of the key, so a profile never asks a key for an algorithm it cannot produce.
    pub kind: KeyKind,
    /// The algorithm to sign with.
    pub alg: Alg,
}

/// The exact bytes of a JWS to be signed: sign [`JwsParts::signing_input`] with `alg`, then
/// [`super::compact`] it. Named fields, not a tuple, so header and payload cannot be swapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwsParts {
    /// The algorithm in the header, which the service must sign with.
    pub alg: Alg,
    /// The protected header, compact JSON.
    pub header: Vec<u8>,
    /// The claims, compact JSON.
    pub payload: Vec<u8>,
}

impl JwsParts {
    /// The JWS signing input over these exact bytes.
    pub fn signing_input(&self) -> String {
        signing_input(&self.header, &self.payload)
    }
}

/// Refuse an algorithm the key cannot produce.
pub(super) fn check_key(alg: Alg, kind: KeyKind) -> Result<(), JoseError> {
    if alg.fits(kind) {
        Ok(())
    } else {
        Err(JoseError::AlgKeyMismatch { alg, key: kind })
    }
}

/// Check that a required text input is present.
pub(super) fn non_empty(claim: &'static str, v: &str) -> Result<(), JoseError> {
    if v.is_empty() {
        Err(JoseError::MissingClaim { claim })
    } else {
        Ok(())
    }
}

/// Check a lifetime against a profile's bounds and return `(now, now + lifetime)`, both safe
/// JSON integers.
pub(super) fn stamp(
    now: u64,
    lifetime: u64,
    max: u64,
    profile: &'static str,
) -> Result<(u64, u64), JoseError> {
    if !(1..=max).contains(&lifetime) {
        return Err(JoseError::InvalidLifetime {
            lifetime,
            min: 1,
            max,
            profile,
        });
    }
    match now.checked_add(lifetime) {
        Some(exp) if exp <= MAX_JSON_INT => Ok((now, exp)),
        _ => Err(JoseError::TimeOutOfRange),
    }
}

/// Compact JSON bytes of an object.
pub(super) fn to_bytes(m: Map<String, Value>) -> Result<Vec<u8>, JoseError> {
    serde_json::to_vec(&Value::Object(m)).map_err(|_| JoseError::Serialize)
}

/// The `{alg, kid}` header most profiles share, with an optional `typ`.
pub(super) fn header(alg: Alg, kid: Option<&str>, typ: Option<&str>) -> Map<String, Value> {
    let mut h = Map::new();
    h.insert("alg".into(), alg.name().into());
    if let Some(kid) = kid {
        h.insert("kid".into(), kid.into());
    }
    if let Some(typ) = typ {
        h.insert("typ".into(), typ.into());
    }
    h
}

/// Refuse claims the signer stamps itself.
pub(super) fn refuse_reserved(
    claims: &Map<String, Value>,
    reserved: &[&'static str],
) -> Result<(), JoseError> {
    match reserved.iter().find(|c| claims.contains_key(**c)) {
        Some(claim) => Err(JoseError::ReservedClaim { claim }),
        None => Ok(()),
    }
}

/// If `claim` is present it must be a string; returns it.
pub(super) fn opt_str<'m>(
    claims: &'m Map<String, Value>,
    claim: &'static str,
) -> Result<Option<&'m str>, JoseError> {
    match claims.get(claim) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(JoseError::InvalidClaim {
            claim,
            reason: "must be a string",
        }),
    }
}

/// If `claim` is present it must equal `expected` (identities sigild sets; repeating the same
/// value is harmless, a different one is a contradiction).
pub(super) fn same_or_absent(
    claims: &Map<String, Value>,
    claim: &'static str,
    expected: &str,
) -> Result<(), JoseError> {
    match claims.get(claim) {
        None => Ok(()),
        Some(Value::String(s)) if s == expected => Ok(()),
        Some(_) => Err(JoseError::InvalidClaim {
            claim,
            reason: "contradicts the value sigild sets for this token; omit it",
        }),
    }
}

/// An access token or code as ASCII bytes, for hashing.
fn ascii_secret<'s>(claim: &'static str, v: &'s str) -> Result<&'s [u8], JoseError> {
    non_empty(claim, v)?;
    if v.is_ascii() {
        Ok(v.as_bytes())
    } else {
        Err(JoseError::InvalidClaim {
            claim,
            reason: "must be ASCII",
        })
    }
}

/// OIDC `at_hash` / `c_hash`: base64url of the left half of the alg's hash of the ASCII value.
fn half_hash(alg: Alg, value: &[u8]) -> String {
    let digest = alg.token_hash_alg().digest(value);
    b64(digest.get(..digest.len() / 2).unwrap_or_default())
}

/// Check the OIDC authentication claims (`acr`, `auth_time`, `amr`) that ID tokens and access
/// tokens (RFC 9068 §2.2.1) carry.
pub(super) fn check_auth_claims(c: &Map<String, Value>) -> Result<(), JoseError> {
    opt_str(c, "acr")?;
    if c.get("auth_time").is_some_and(|v| !v.is_u64()) {
        return Err(JoseError::InvalidClaim {
            claim: "auth_time",
            reason: "must be a non-negative integer (unix seconds)",
        });
    }
    if let Some(amr) = c.get("amr")
        && !amr
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string))
    {
        return Err(JoseError::InvalidClaim {
            claim: "amr",
            reason: "must be an array of strings",
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ID token

/// What the caller asks for in an OIDC ID token.
///
/// The caller owns the identity claims; sigild owns the clock-derived claims and the token
/// hashes, so that a signed ID token's `iat`/`exp` always come from sigild's clock and its
/// `at_hash`/`c_hash` always match the token and code it was issued with.
#[derive(Clone)]
pub struct IdTokenRequest {
    /// The claims: must hold `iss`, `sub` and `aud`; `nonce`, `auth_time`, `azp`, `acr`, `amr`
    /// and any other claims pass through. Must not hold `iat`, `exp`, `nbf`, `at_hash`, `c_hash`.
    pub claims: Map<String, Value>,
    /// The current time in unix seconds, from the service's clock; becomes `iat`.
    pub now: u64,
    /// Seconds until `exp`, 1..=86400.
    pub lifetime: u64,
    /// The access token issued alongside, if any; only its hash (`at_hash`) is signed.
    pub access_token: Option<String>,
    /// The authorization code issued alongside, if any; only its hash (`c_hash`) is signed.
    pub code: Option<String>,
    /// The `state` of the authorization request, if any; only its hash (`s_hash`) is signed.
    /// An ID token returned from the authorization endpoint as a detached signature carries
    /// it (FAPI 1.0 Advanced §5.2.2.1), so the client can tell the response's `state` was not
    /// swapped.
    pub state: Option<String>,
    /// A `typ` header, only for relying parties that ask for one (usually absent, or "JWT").
    /// Never the `typ` of another profile (`at+jwt`, `logout+jwt`, …): an ID token that says it
    /// is an access token is the cross-JWT confusion RFC 8725 §3.11 warns about.
    pub typ: Option<String>,
}

impl fmt::Debug for IdTokenRequest {
    // Hand-written: claims may hold personal data, tokens and codes are secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdTokenRequest")
            .field("claims", &self.claims.keys().collect::<Vec<_>>())
            .field("now", &self.now)
            .field("lifetime", &self.lifetime)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("code", &self.code.as_ref().map(|_| "<redacted>"))
            .field("state", &self.state.as_ref().map(|_| "<redacted>"))
            .field("typ", &self.typ)
            .finish()
    }
}

/// The longest ID token lifetime sigild signs (one day).
const ID_TOKEN_MAX_LIFETIME: u64 = 86_400;

/// Build an OIDC Core ID token for `key`.
///
/// Header `{alg, kid}` (plus `typ` if asked). Claims: the caller's, checked — `iss` a non-empty
/// string (sigild does not check it is an https URL: the issuer identifier is configuration, and
/// dev setups use http://localhost), `sub` 1..=255 ASCII characters, `aud` a non-empty string or
/// a non-empty array of non-empty strings, `nonce`/`azp`/`acr` strings, `auth_time` an integer,
/// `amr` an array of strings — plus `iat = now`, `exp = now + lifetime`, and `at_hash`/`c_hash`
/// when an access token / code is given. OIDC says a multi-audience token SHOULD carry `azp`;
/// that is the caller's call and nothing is added.
///
/// # Errors
///
/// [`JoseError::AlgKeyMismatch`], [`JoseError::MissingClaim`], [`JoseError::InvalidClaim`],
/// [`JoseError::ReservedClaim`], [`JoseError::InvalidLifetime`] or
/// [`JoseError::TimeOutOfRange`].
pub fn id_token(key: KeyRef<'_>, req: &IdTokenRequest) -> Result<JwsParts, JoseError> {
    check_key(key.alg, key.kind)?;
    let c = &req.claims;
    refuse_reserved(c, &["iat", "exp", "nbf", "at_hash", "c_hash", "s_hash"])?;

    let iss = opt_str(c, "iss")?.ok_or(JoseError::MissingClaim { claim: "iss" })?;
    non_empty("iss", iss)?;
    let sub = opt_str(c, "sub")?.ok_or(JoseError::MissingClaim { claim: "sub" })?;
    non_empty("sub", sub)?;
    if sub.len() > 255 || !sub.is_ascii() {
        return Err(JoseError::InvalidClaim {
            claim: "sub",
            reason: "must be at most 255 ASCII characters",
        });
    }
    match c.get("aud") {
        None => return Err(JoseError::MissingClaim { claim: "aud" }),
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(Value::Array(a))
            if !a.is_empty() && a.iter().all(|v| v.as_str().is_some_and(|s| !s.is_empty())) => {}
        Some(_) => {
            return Err(JoseError::InvalidClaim {
                claim: "aud",
                reason: "must be a non-empty string or a non-empty array of non-empty strings",
            });
        }
    }
    for claim in ["nonce", "azp"] {
        opt_str(c, claim)?;
    }
    check_auth_claims(c)?;
    if let Some(typ) = &req.typ {
        non_empty("typ", typ)?;
        if TokenType::for_typ(typ).is_some() {
            return Err(JoseError::InvalidClaim {
                claim: "typ",
                reason: "names another token type; an ID token's typ may only be a generic one such as JWT",
            });
        }
    }

    let (iat, exp) = stamp(req.now, req.lifetime, ID_TOKEN_MAX_LIFETIME, "an ID token")?;
    let mut claims = c.clone();
    claims.insert("iat".into(), iat.into());
    claims.insert("exp".into(), exp.into());
    if let Some(at) = &req.access_token {
        let at = ascii_secret("access_token", at)?;
        claims.insert("at_hash".into(), half_hash(key.alg, at).into());
    }
    if let Some(code) = &req.code {
        let code = ascii_secret("code", code)?;
        claims.insert("c_hash".into(), half_hash(key.alg, code).into());
    }
    if let Some(state) = &req.state {
        let state = ascii_secret("state", state)?;
        claims.insert("s_hash".into(), half_hash(key.alg, state).into());
    }

    Ok(JwsParts {
        alg: key.alg,
        header: to_bytes(header(key.alg, Some(key.kid), req.typ.as_deref()))?,
        payload: to_bytes(claims)?,
    })
}

// ---------------------------------------------------------------------------------------------
// JAR request object

/// What the caller asks for in a JAR request object (RFC 9101), typically pushed with PAR.
#[derive(Clone)]
pub struct JarRequest {
    /// The client's `client_id`; becomes `iss` and `client_id`.
    pub client_id: String,
    /// The authorization server's issuer identifier; becomes `aud` (a single string).
    pub audience: String,
    /// The authorization request parameters (`response_type`, `redirect_uri`, `scope`, `state`,
    /// `nonce`, `code_challenge`, `code_challenge_method`, …). Must not hold `exp`, `nbf`, `iat`
    /// or `jti`, nor `request`/`request_uri`; `iss`, `client_id` and `aud` only if they repeat
    /// the values above.
    pub claims: Map<String, Value>,
    /// The current time in unix seconds; becomes `iat` and `nbf`.
    pub now: u64,
    /// Seconds until `exp`, 1..=3600 (FAPI: `0 < exp − nbf ≤ 3600`).
    pub lifetime: u64,
    /// A fresh unique identifier from the service.
    pub jti: String,
}

impl fmt::Debug for JarRequest {
    // Hand-written: request parameters may carry personal data (login_hint, claims).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JarRequest")
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .field("claims", &self.claims.keys().collect::<Vec<_>>())
            .field("now", &self.now)
            .field("lifetime", &self.lifetime)
            .field("jti", &self.jti)
            .finish()
    }
}

/// The longest request object lifetime (FAPI 2.0 message signing: `exp − nbf ≤ 3600`).
const JAR_MAX_LIFETIME: u64 = 3_600;

/// Parameters that are plain strings in an authorization request (RFC 6749, OIDC, RFC 7636).
const JAR_STRING_PARAMS: [&str; 7] = [
    "response_type",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
];

/// Build a signed authorization request object for `key`.
///
/// Header `{alg, kid, typ: "oauth-authz-req+jwt"}`. Claims: the caller's request parameters plus
/// `iss = client_id`, `client_id`, `aud = audience`, `iat = nbf = now`, `exp = now + lifetime`,
/// `jti`. `code_challenge_method`, if present, must be `S256` (plain PKCE is refused by FAPI and
/// useless otherwise); `request` and `request_uri` are forbidden inside a request object
/// (RFC 9101 §4).
///
/// # Errors
///
/// [`JoseError::AlgKeyMismatch`], [`JoseError::MissingClaim`], [`JoseError::InvalidClaim`],
/// [`JoseError::ReservedClaim`], [`JoseError::ForbiddenClaim`], [`JoseError::InvalidLifetime`]
/// or [`JoseError::TimeOutOfRange`].
pub fn jar_request_object(key: KeyRef<'_>, req: &JarRequest) -> Result<JwsParts, JoseError> {
    check_key(key.alg, key.kind)?;
    if opt_str(&req.claims, "code_challenge_method")?.is_some_and(|m| m != "S256") {
        return Err(JoseError::InvalidClaim {
            claim: "code_challenge_method",
            reason: "must be S256",
        });
    }
    let claims = request_object_claims(
        req,
        RequestObjectRules {
            profile: "a request object (RFC 9101)",
            lifetime_profile: "a request object",
            max_lifetime: JAR_MAX_LIFETIME,
            string_params: &JAR_STRING_PARAMS,
            client_id_claim: true,
        },
    )?;
    Ok(JwsParts {
        alg: key.alg,
        header: to_bytes(header(key.alg, Some(key.kid), Some("oauth-authz-req+jwt")))?,
        payload: to_bytes(claims)?,
    })
}

/// How one kind of client-signed request object differs from another.
pub(super) struct RequestObjectRules {
    /// The profile named when `request` / `request_uri` is refused.
    pub(super) profile: &'static str,
    /// The profile named when the lifetime is out of bounds.
    pub(super) lifetime_profile: &'static str,
    /// The longest lifetime.
    pub(super) max_lifetime: u64,
    /// Parameters that must be strings when present.
    pub(super) string_params: &'static [&'static str],
    /// Whether `client_id` is a claim too (JAR), not only `iss`.
    pub(super) client_id_claim: bool,
}

/// The claims of a request object a client signs for the authorization server (a JAR request
/// object, a CIBA signed authentication request): the caller's parameters, checked, plus
/// `iss = client_id` (and `client_id` where the profile has it), `aud`, `iat = nbf = now`,
/// `exp = now + lifetime` and `jti`. The times and `jti` are the signer's and refused from the
/// caller; a request object never nests another (`request`, `request_uri`).
pub(super) fn request_object_claims(
    req: &JarRequest,
    rules: RequestObjectRules,
) -> Result<Map<String, Value>, JoseError> {
    non_empty("client_id", &req.client_id)?;
    non_empty("audience", &req.audience)?;
    non_empty("jti", &req.jti)?;
    let c = &req.claims;
    refuse_reserved(c, &["exp", "nbf", "iat", "jti"])?;
    for claim in ["request", "request_uri"] {
        if c.contains_key(claim) {
            return Err(JoseError::ForbiddenClaim {
                claim,
                profile: rules.profile,
            });
        }
    }
    same_or_absent(c, "iss", &req.client_id)?;
    if rules.client_id_claim {
        same_or_absent(c, "client_id", &req.client_id)?;
    }
    same_or_absent(c, "aud", &req.audience)?;
    for claim in rules.string_params {
        opt_str(c, claim)?;
    }

    let (now, exp) = stamp(
        req.now,
        req.lifetime,
        rules.max_lifetime,
        rules.lifetime_profile,
    )?;
    let mut claims = c.clone();
    claims.insert("iss".into(), req.client_id.as_str().into());
    if rules.client_id_claim {
        claims.insert("client_id".into(), req.client_id.as_str().into());
    }
    claims.insert("aud".into(), req.audience.as_str().into());
    claims.insert("iat".into(), now.into());
    claims.insert("nbf".into(), now.into());
    claims.insert("exp".into(), exp.into());
    claims.insert("jti".into(), req.jti.as_str().into());
    Ok(claims)
}

// ---------------------------------------------------------------------------------------------
// Client assertion

/// What the caller asks for in a `private_key_jwt` client assertion (RFC 7523, OIDC Core §9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAssertionRequest {
    /// The client's `client_id`; becomes `iss` and `sub`.
    pub client_id: String,
    /// The authorization server's issuer identifier. One string: FAPI 2.0 servers reject an
    /// array `aud`, so the type allows no other shape.
    pub audience: String,
    /// The current time in unix seconds; becomes `iat` (and `nbf` if asked).
    pub now: u64,
    /// Seconds until `exp`, 1..=300 (60 is typical: the assertion is used at once).
    pub lifetime: u64,
    /// A fresh unique identifier: servers accept each `jti` once, so a retry needs a new one.
    pub jti: String,
    /// Also set `nbf = now`, for servers that want it.
    pub nbf: bool,
    /// Set the explicit `typ: client-authentication+jwt` (draft-ietf-oauth-rfc7523bis), which
    /// keeps the assertion from being mistaken for any other JWT; only for servers that accept
    /// it, as older ones refuse an unexpected `typ`.
    pub explicit_typ: bool,
}

/// The explicit `typ` of a client assertion (draft-ietf-oauth-rfc7523bis).
const CLIENT_ASSERTION_TYP: &str = "client-authentication+jwt";

/// The longest client assertion lifetime sigild signs.
const ASSERTION_MAX_LIFETIME: u64 = 300;

/// Build a client assertion for `key`: header `{alg, kid}` (plus
/// `typ: client-authentication+jwt` if asked), claims `iss = sub = client_id`, `aud`, `jti`,
/// `iat = now`, `exp = now + lifetime`, and `nbf = now` if asked.
///
/// # Errors
///
/// [`JoseError::AlgKeyMismatch`], [`JoseError::MissingClaim`], [`JoseError::InvalidLifetime`]
/// or [`JoseError::TimeOutOfRange`].
pub fn client_assertion(
    key: KeyRef<'_>,
    req: &ClientAssertionRequest,
) -> Result<JwsParts, JoseError> {
    check_key(key.alg, key.kind)?;
    non_empty("client_id", &req.client_id)?;
    non_empty("audience", &req.audience)?;
    non_empty("jti", &req.jti)?;
    let (now, exp) = stamp(
        req.now,
        req.lifetime,
        ASSERTION_MAX_LIFETIME,
        "a client assertion",
    )?;
    let mut claims = Map::new();
    claims.insert("aud".into(), req.audience.as_str().into());
    claims.insert("exp".into(), exp.into());
    claims.insert("iat".into(), now.into());
    claims.insert("iss".into(), req.client_id.as_str().into());
    claims.insert("jti".into(), req.jti.as_str().into());
    if req.nbf {
        claims.insert("nbf".into(), now.into());
    }
    claims.insert("sub".into(), req.client_id.as_str().into());
    Ok(JwsParts {
        alg: key.alg,
        header: to_bytes(header(
            key.alg,
            Some(key.kid),
            req.explicit_typ.then_some(CLIENT_ASSERTION_TYP),
        ))?,
        payload: to_bytes(claims)?,
    })
}

// ---------------------------------------------------------------------------------------------
// DPoP

/// What the caller asks for in a DPoP proof (RFC 9449): one per HTTP request.
#[derive(Clone)]
pub struct DpopRequest {
    /// The HTTP method of the request, e.g. `POST` (uppercase letters only).
    pub htm: String,
    /// The HTTP URI of the request; query and fragment are removed (RFC 9449 §4.2).
    pub htu: String,
    /// The access token being presented, if any; only its hash (`ath`) is signed.
    pub access_token: Option<String>,
    /// The server's latest `DPoP-Nonce`, if it sent one.
    pub nonce: Option<String>,
    /// The current time in unix seconds; becomes `iat`.
    pub now: u64,
    /// A fresh unique identifier from the service.
    pub jti: String,
}

impl fmt::Debug for DpopRequest {
    // Hand-written: the access token is a bearer secret until bound; the URI may hold a query.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopRequest")
            .field("htm", &self.htm)
            .field("htu", &"<redacted>")
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("nonce", &self.nonce)
            .field("now", &self.now)
            .field("jti", &self.jti)
            .finish()
    }
}

/// Check an HTTP method token: uppercase ASCII letters, as every registered method is.
fn check_htm(htm: &str) -> Result<(), JoseError> {
    non_empty("htm", htm)?;
    if htm.len() <= 32 && htm.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(JoseError::InvalidClaim {
            claim: "htm",
            reason: "must be an HTTP method in uppercase letters, e.g. POST",
        })
    }
}

/// The `htu` error with a given reason (the URI itself is never echoed).
fn bad_htu(reason: &'static str) -> JoseError {
    JoseError::InvalidClaim {
        claim: "htu",
        reason,
    }
}

/// Normalise an absolute http(s) URI for `htu`: drop query and fragment, lowercase scheme and
/// host, drop the scheme's default port, and use `/` for an empty path (RFC 3986 §6.2.2–6.2.3,
/// the comparison RFC 9449 §4.3 asks servers to make).
fn normalize_htu(uri: &str) -> Result<String, JoseError> {
    const FORBIDDEN: &[u8] = b"\"<>\\^`{|}";
    if !uri
        .bytes()
        .all(|b| b.is_ascii_graphic() && !FORBIDDEN.contains(&b))
    {
        return Err(bad_htu(
            "must be an absolute URI without spaces or characters outside RFC 3986",
        ));
    }
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| bad_htu("must be an absolute http or https URI"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => "443",
        "http" => "80",
        _ => return Err(bad_htu("must use the http or https scheme")),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(bad_htu("must not contain user information"));
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or_else(|| bad_htu("has an unterminated IPv6 address"))?;
        let (host, after) = authority.split_at(end + 1);
        match after {
            "" => (host, ""),
            _ => (
                host,
                after
                    .strip_prefix(':')
                    .ok_or_else(|| bad_htu("has an invalid port"))?,
            ),
        }
    } else {
        authority.rsplit_once(':').unwrap_or((authority, ""))
    };
    let bracketed = host.starts_with('[');
    if host.is_empty() || (!bracketed && host.contains([':', '[', ']'])) {
        return Err(bad_htu("must have a valid host"));
    }
    let port_ok = port.bytes().all(|b| b.is_ascii_digit())
        && (port.is_empty() || port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(bad_htu("has an invalid port"));
    }
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = bytes.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return Err(bad_htu("has an invalid percent-encoding in its path"));
            }
        }
    }
    let mut out = scheme;
    out.push_str("://");
    out.push_str(&host.to_ascii_lowercase());
    if !port.is_empty() && port.trim_start_matches('0') != default_port {
        out.push(':');
        out.push_str(port);
    }
    out.push_str(if path.is_empty() { "/" } else { path });
    Ok(out)
}

/// Build a DPoP proof signed by the key whose public half is `public_key`.
///
/// Header `{alg, typ: "dpop+jwt", jwk}` where `jwk` is the bare public JWK (no kid: the proof is
/// verified with the embedded key). Claims `jti`, `htm`, `htu` (normalised, without query and
/// fragment), `iat = now`, `ath = base64url(SHA-256(access token))` when a token is presented,
/// and `nonce` when the server asked for one.
///
/// # Errors
///
/// [`JoseError::AlgKeyMismatch`], [`JoseError::MissingClaim`] or [`JoseError::InvalidClaim`]
/// (for `htm`, `htu`, `access_token`, `nonce`), or [`JoseError::TimeOutOfRange`].
pub fn dpop_proof(
    public_key: &PublicKey,
    alg: Alg,
    req: &DpopRequest,
) -> Result<JwsParts, JoseError> {
    check_key(alg, public_key.kind())?;
    non_empty("jti", &req.jti)?;
    check_htm(&req.htm)?;
    let htu = normalize_htu(&req.htu)?;
    if req.now > MAX_JSON_INT {
        return Err(JoseError::TimeOutOfRange);
    }
    let mut claims = Map::new();
    if let Some(at) = &req.access_token {
        let at = ascii_secret("access_token", at)?;
        claims.insert("ath".into(), b64(&Sha256::digest(at)).into());
    }
    claims.insert("htm".into(), req.htm.as_str().into());
    claims.insert("htu".into(), htu.into());
    claims.insert("iat".into(), req.now.into());
    claims.insert("jti".into(), req.jti.as_str().into());
    if let Some(nonce) = &req.nonce {
        // RFC 9449 §8.1: nonce = 1*NQCHAR, NQCHAR = %x21 / %x23-5B / %x5D-7E.
        let ok = !nonce.is_empty()
            && nonce
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !ok {
            return Err(JoseError::InvalidClaim {
                claim: "nonce",
                reason: "must be a non-empty DPoP-Nonce value (printable ASCII, no quotes or backslashes)",
            });
        }
        claims.insert("nonce".into(), nonce.as_str().into());
    }
    let mut h = header(alg, None, Some("dpop+jwt"));
    h.insert("jwk".into(), public_jwk(public_key));
    Ok(JwsParts {
        alg,
        header: to_bytes(h)?,
        payload: to_bytes(claims)?,
    })
}

/// The `dpop_jkt` / `cnf.jkt` value binding tokens to a DPoP key: its RFC 7638 thumbprint,
/// which is also sigild's kid for that key.
pub fn dpop_jkt(pk: &PublicKey) -> String {
    thumbprint(pk)
}

/// The RFC 8705 `cnf` member `x5t#S256` for a certificate-bound token: base64url SHA-256 of the
/// certificate's DER encoding (not of a PEM text, which would give a different value).
pub fn x5t_s256(cert_der: &[u8]) -> String {
    b64(&Sha256::digest(cert_der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Curve, HashAlg};
    use crate::jose::{b64_decode, public_key_from_jwk};
    use serde_json::json;

    type R = Result<(), Box<dyn std::error::Error>>;

    const RSA: KeyKind = KeyKind::Rsa { bits: 2048 };
    const NOW: u64 = 1_700_000_000;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn parse(bytes: &[u8]) -> Result<Map<String, Value>, Box<dyn std::error::Error>> {
        Ok(obj(serde_json::from_slice(bytes)?))
    }

    fn key(alg: Alg, kind: KeyKind) -> KeyRef<'static> {
        KeyRef {
            kid: "kid-1",
            kind,
            alg,
        }
    }

    fn id_req(claims: Value) -> IdTokenRequest {
        IdTokenRequest {
            claims: obj(claims),
            now: NOW,
            lifetime: 300,
            access_token: None,
            code: None,
            state: None,
            typ: None,
        }
    }

    fn base_claims() -> Value {
        json!({"iss": "https://op.example.com", "sub": "248289761001", "aud": "s6BhdRkqt3", "nonce": "n-0S6_WzA2Mj"})
    }

    #[test]
    fn id_token_stamps_times_and_hashes() -> R {
        let mut req = id_req(base_claims());
        req.access_token = Some("jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y".into());
        req.code = Some("Qcb0Orv1zh30vL1MPRsbm-diHiMwcLyZvn1arpZv-Jxf_11jnpEX3Tgfvk".into());
        let parts = id_token(key(Alg::Rs256, RSA), &req)?;
        let h = parse(&parts.header)?;
        assert_eq!(Value::Object(h), json!({"alg": "RS256", "kid": "kid-1"}));
        let c = parse(&parts.payload)?;
        assert_eq!(c["iss"], "https://op.example.com");
        assert_eq!(c["sub"], "248289761001");
        assert_eq!(c["aud"], "s6BhdRkqt3");
        assert_eq!(c["nonce"], "n-0S6_WzA2Mj");
        assert_eq!(c["iat"], NOW);
        assert_eq!(c["exp"], NOW + 300);
        // OIDC Core A.3 / A.4 vectors.
        assert_eq!(c["at_hash"], "77QmUPtjPfzWtF2AnpK9RQ");
        assert_eq!(c["c_hash"], "LDktKdoQak3Pk0cnXxCltA");
        assert_eq!(parts.alg, Alg::Rs256);
        Ok(())
    }

    #[test]
    fn id_token_eddsa_uses_sha512_half() -> R {
        let mut req = id_req(base_claims());
        req.access_token = Some("token".into());
        req.typ = Some("JWT".into());
        let parts = id_token(key(Alg::EdDsa, KeyKind::Ed25519), &req)?;
        let c = parse(&parts.payload)?;
        let d = HashAlg::Sha512.digest(b"token");
        assert_eq!(c["at_hash"], b64(&d[..32]));
        assert_eq!(parse(&parts.header)?["typ"], "JWT");
        Ok(())
    }

    #[test]
    fn id_token_refusals() {
        let k = key(Alg::Ps256, RSA);
        let cases: Vec<(Value, JoseError)> = vec![
            (
                json!({"sub": "a", "aud": "b"}),
                JoseError::MissingClaim { claim: "iss" },
            ),
            (
                json!({"iss": "", "sub": "a", "aud": "b"}),
                JoseError::MissingClaim { claim: "iss" },
            ),
            (
                json!({"iss": "i", "aud": "b"}),
                JoseError::MissingClaim { claim: "sub" },
            ),
            (
                json!({"iss": "i", "sub": "a"}),
                JoseError::MissingClaim { claim: "aud" },
            ),
            (
                json!({"iss": "i", "sub": "a", "aud": "b", "exp": 1}),
                JoseError::ReservedClaim { claim: "exp" },
            ),
            (
                json!({"iss": "i", "sub": "a", "aud": "b", "iat": 1}),
                JoseError::ReservedClaim { claim: "iat" },
            ),
            (
                json!({"iss": "i", "sub": "a", "aud": "b", "at_hash": "x"}),
                JoseError::ReservedClaim { claim: "at_hash" },
            ),
        ];
        for (claims, want) in cases {
            assert_eq!(id_token(k, &id_req(claims.clone())), Err(want), "{claims}");
        }
        for claims in [
            json!({"iss": 1, "sub": "a", "aud": "b"}),
            json!({"iss": "i", "sub": "x".repeat(256), "aud": "b"}),
            json!({"iss": "i", "sub": "é", "aud": "b"}),
            json!({"iss": "i", "sub": "a", "aud": []}),
            json!({"iss": "i", "sub": "a", "aud": ["b", 1]}),
            json!({"iss": "i", "sub": "a", "aud": "b", "nonce": 5}),
            json!({"iss": "i", "sub": "a", "aud": "b", "auth_time": "now"}),
            json!({"iss": "i", "sub": "a", "aud": "b", "amr": "pwd"}),
        ] {
            assert!(
                matches!(
                    id_token(k, &id_req(claims.clone())),
                    Err(JoseError::InvalidClaim { .. })
                ),
                "{claims}"
            );
        }
        let mut req = id_req(base_claims());
        req.lifetime = 86_401;
        assert!(matches!(
            id_token(k, &req),
            Err(JoseError::InvalidLifetime { .. })
        ));
        req.lifetime = 0;
        assert!(matches!(
            id_token(k, &req),
            Err(JoseError::InvalidLifetime { .. })
        ));
        assert!(matches!(
            id_token(key(Alg::Es256, RSA), &id_req(base_claims())),
            Err(JoseError::AlgKeyMismatch { .. })
        ));
        let mut req = id_req(base_claims());
        req.now = u64::MAX;
        assert_eq!(id_token(k, &req), Err(JoseError::TimeOutOfRange));
    }

    #[test]
    fn id_token_s_hash_and_typ() -> R {
        let state = "S8NJ7uqk5fY4EjNvP_G_FtyJu6pUsvH9jsYni9dMAJw";
        let mut req = id_req(base_claims());
        req.state = Some(state.into());
        req.typ = Some("JWT".into());
        let parts = id_token(key(Alg::Es256, KeyKind::Ec(Curve::P256)), &req)?;
        let c = parse(&parts.payload)?;
        assert_eq!(c["s_hash"], b64(&Sha256::digest(state.as_bytes())[..16]));
        assert_eq!(parse(&parts.header)?["typ"], "JWT");
        // Without a state there is no s_hash; a caller's own s_hash is refused.
        let c = parse(&id_token(key(Alg::Ps256, RSA), &id_req(base_claims()))?.payload)?;
        assert!(!c.contains_key("s_hash"));
        let mut claims = base_claims();
        claims["s_hash"] = json!("x");
        assert_eq!(
            id_token(key(Alg::Ps256, RSA), &id_req(claims)),
            Err(JoseError::ReservedClaim { claim: "s_hash" })
        );
        // The typ of another profile, an empty state, a non-ASCII one.
        for typ in [
            "at+jwt",
            "application/logout+jwt",
            "token-introspection+jwt",
            "",
        ] {
            let mut req = id_req(base_claims());
            req.typ = Some(typ.into());
            assert!(id_token(key(Alg::Ps256, RSA), &req).is_err(), "{typ}");
        }
        for state in ["", "é"] {
            let mut req = id_req(base_claims());
            req.state = Some(state.into());
            assert!(id_token(key(Alg::Ps256, RSA), &req).is_err(), "{state}");
        }
        let mut req = id_req(base_claims());
        req.state = Some("state-secret-value".into());
        assert!(!format!("{req:?}").contains("state-secret-value"));
        Ok(())
    }

    #[test]
    fn id_token_multi_audience_and_passthrough() -> R {
        let claims = json!({"iss": "i", "sub": "a", "aud": ["b", "c"], "auth_time": 1, "amr": ["hwk"], "email": "x@example.com"});
        let parts = id_token(key(Alg::Ps256, RSA), &id_req(claims))?;
        let c = parse(&parts.payload)?;
        assert_eq!(c["aud"], json!(["b", "c"]));
        assert_eq!(c["email"], "x@example.com");
        assert!(!c.contains_key("azp") && !c.contains_key("at_hash"));
        Ok(())
    }

    #[test]
    fn id_token_debug_redacts() {
        let mut req = id_req(base_claims());
        req.access_token = Some("secret-token-value".into());
        let dbg = format!("{req:?}");
        assert!(!dbg.contains("secret-token-value") && !dbg.contains("248289761001"));
    }

    fn jar_req(claims: Value) -> JarRequest {
        JarRequest {
            client_id: "s6BhdRkqt3".into(),
            audience: "https://op.example.com".into(),
            claims: obj(claims),
            now: NOW,
            lifetime: 60,
            jti: "jti-1".into(),
        }
    }

    #[test]
    fn jar_builds_request_object() -> R {
        let claims = json!({
            "response_type": "code", "redirect_uri": "https://client.example.org/cb",
            "scope": "openid", "state": "af0ifjsldkj", "nonce": "n-0S6",
            "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256", "client_id": "s6BhdRkqt3"
        });
        let parts =
            jar_request_object(key(Alg::Es256, KeyKind::Ec(Curve::P256)), &jar_req(claims))?;
        assert_eq!(
            Value::Object(parse(&parts.header)?),
            json!({"alg": "ES256", "kid": "kid-1", "typ": "oauth-authz-req+jwt"})
        );
        let c = parse(&parts.payload)?;
        assert_eq!(c["iss"], "s6BhdRkqt3");
        assert_eq!(c["client_id"], "s6BhdRkqt3");
        assert_eq!(c["aud"], "https://op.example.com");
        assert_eq!(c["iat"], NOW);
        assert_eq!(c["nbf"], NOW);
        assert_eq!(c["exp"], NOW + 60);
        assert_eq!(c["jti"], "jti-1");
        assert_eq!(c["scope"], "openid");
        let exp_minus_nbf = c["exp"].as_u64().unwrap_or(0) - c["nbf"].as_u64().unwrap_or(0);
        assert!(exp_minus_nbf > 0 && exp_minus_nbf <= 3600);
        Ok(())
    }

    #[test]
    fn jar_refusals() {
        let k = key(Alg::Ps256, RSA);
        for (claims, want) in [
            (json!({"exp": 1}), JoseError::ReservedClaim { claim: "exp" }),
            (json!({"nbf": 1}), JoseError::ReservedClaim { claim: "nbf" }),
            (json!({"iat": 1}), JoseError::ReservedClaim { claim: "iat" }),
            (
                json!({"jti": "x"}),
                JoseError::ReservedClaim { claim: "jti" },
            ),
            (
                json!({"request_uri": "urn:x"}),
                JoseError::ForbiddenClaim {
                    claim: "request_uri",
                    profile: "a request object (RFC 9101)",
                },
            ),
            (
                json!({"request": "e30.e30."}),
                JoseError::ForbiddenClaim {
                    claim: "request",
                    profile: "a request object (RFC 9101)",
                },
            ),
        ] {
            assert_eq!(
                jar_request_object(k, &jar_req(claims.clone())),
                Err(want),
                "{claims}"
            );
        }
        for claims in [
            json!({"iss": "someone-else"}),
            json!({"client_id": "someone-else"}),
            json!({"aud": ["https://op.example.com"]}),
            json!({"code_challenge_method": "plain"}),
            json!({"scope": ["openid"]}),
        ] {
            assert!(
                matches!(
                    jar_request_object(k, &jar_req(claims.clone())),
                    Err(JoseError::InvalidClaim { .. })
                ),
                "{claims}"
            );
        }
        let mut req = jar_req(json!({}));
        req.lifetime = 3601;
        assert!(matches!(
            jar_request_object(k, &req),
            Err(JoseError::InvalidLifetime { max: 3600, .. })
        ));
        req.lifetime = 3600;
        assert!(jar_request_object(k, &req).is_ok());
        req.jti = String::new();
        assert_eq!(
            jar_request_object(k, &req),
            Err(JoseError::MissingClaim { claim: "jti" })
        );
    }

    fn assertion_req() -> ClientAssertionRequest {
        ClientAssertionRequest {
            client_id: "s6BhdRkqt3".into(),
            audience: "https://op.example.com".into(),
            now: NOW,
            lifetime: 60,
            jti: "jti-2".into(),
            nbf: false,
            explicit_typ: false,
        }
    }

    #[test]
    fn client_assertion_claims() -> R {
        let parts = client_assertion(key(Alg::Ps256, RSA), &assertion_req())?;
        assert_eq!(
            Value::Object(parse(&parts.header)?),
            json!({"alg": "PS256", "kid": "kid-1"})
        );
        let c = parse(&parts.payload)?;
        assert_eq!(
            Value::Object(c),
            json!({"iss": "s6BhdRkqt3", "sub": "s6BhdRkqt3", "aud": "https://op.example.com",
                   "jti": "jti-2", "iat": NOW, "exp": NOW + 60})
        );
        let mut req = assertion_req();
        req.nbf = true;
        let c = parse(&client_assertion(key(Alg::Ps256, RSA), &req)?.payload)?;
        assert!(c["aud"].is_string());
        assert_eq!(c["nbf"], NOW);
        req.explicit_typ = true;
        let parts = client_assertion(key(Alg::Ps256, RSA), &req)?;
        assert_eq!(
            Value::Object(parse(&parts.header)?),
            json!({"alg": "PS256", "kid": "kid-1", "typ": "client-authentication+jwt"})
        );
        assert_eq!(
            crate::jose::TokenType::for_typ("client-authentication+jwt"),
            Some(crate::jose::TokenType::ClientAssertion)
        );
        Ok(())
    }

    #[test]
    fn client_assertion_refusals() {
        let k = key(Alg::Ps256, RSA);
        let mut req = assertion_req();
        req.lifetime = 301;
        assert!(matches!(
            client_assertion(k, &req),
            Err(JoseError::InvalidLifetime { max: 300, .. })
        ));
        let mut req = assertion_req();
        req.audience = String::new();
        assert_eq!(
            client_assertion(k, &req),
            Err(JoseError::MissingClaim { claim: "audience" })
        );
        let mut req = assertion_req();
        req.client_id = String::new();
        assert_eq!(
            client_assertion(k, &req),
            Err(JoseError::MissingClaim { claim: "client_id" })
        );
    }

    fn ec_key() -> Result<PublicKey, JoseError> {
        public_key_from_jwk(&json!({
            "kty": "EC", "crv": "P-256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y": "x_FEzRjGJUVz8EUzs9ffZEK_LBPXTjuCSHh6HwRQt1Q"
        }))
    }

    fn dpop_req() -> DpopRequest {
        DpopRequest {
            htm: "POST".into(),
            htu: "https://server.example.com/token?x=1#f".into(),
            access_token: None,
            nonce: None,
            now: NOW,
            jti: "-BwC3ESc6acc2lTc".into(),
        }
    }

    #[test]
    fn dpop_proof_shape() -> R {
        let pk = ec_key()?;
        let mut req = dpop_req();
        req.access_token = Some("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU".into());
        req.nonce = Some("eyJ7S_zG.eyJH0-Z.HX4w-7v".into());
        let parts = dpop_proof(&pk, Alg::Es256, &req)?;
        let h = parse(&parts.header)?;
        assert_eq!(h["typ"], "dpop+jwt");
        assert_eq!(h["alg"], "ES256");
        assert_eq!(h["jwk"], public_jwk(&pk));
        assert!(!h.contains_key("kid"));
        assert_eq!(public_key_from_jwk(&h["jwk"])?, pk);
        let c = parse(&parts.payload)?;
        assert_eq!(c["htm"], "POST");
        assert_eq!(c["htu"], "https://server.example.com/token");
        assert_eq!(c["iat"], NOW);
        assert_eq!(c["jti"], "-BwC3ESc6acc2lTc");
        assert_eq!(c["nonce"], "eyJ7S_zG.eyJH0-Z.HX4w-7v");
        // RFC 9449 §7.1 example: this access token's ath.
        assert_eq!(c["ath"], "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo");
        assert_eq!(
            b64_decode(c["ath"].as_str().ok_or("ath")?)?,
            Sha256::digest(b"Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU").to_vec()
        );
        assert_eq!(dpop_jkt(&pk), thumbprint(&pk));
        Ok(())
    }

    #[test]
    fn dpop_proof_verifies_with_its_own_header_jwk() -> R {
        // Independent signer and verifier: ring, with the RFC 8037 A.1 key.
        let seed = b64_decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")?;
        let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| format!("{e}"))?;
        let pk = PublicKey::Ed25519 {
            x: ring::signature::KeyPair::public_key(&kp).as_ref().to_vec(),
        };
        assert_eq!(
            thumbprint(&pk),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        let parts = dpop_proof(&pk, Alg::Ed25519, &dpop_req())?;
        let input = parts.signing_input();
        let crate::crypto::SignOp::Ed25519 { message } = parts.alg.sign_op(input.as_bytes()) else {
            return Err("Ed25519 signs the whole input".into());
        };
        let sig = kp.sign(&message);
        parts.alg.check_signature(pk.kind(), sig.as_ref())?;
        let jws = crate::jose::compact(&input, sig.as_ref());

        // A verifier's view: split the compact JWS, take the key from the header's jwk.
        let mut segs = jws.split('.');
        let (h, p, s) = (
            segs.next().ok_or("header")?,
            segs.next().ok_or("payload")?,
            segs.next().ok_or("signature")?,
        );
        let header = parse(&b64_decode(h)?)?;
        assert_eq!(header["alg"], "Ed25519");
        let PublicKey::Ed25519 { x } = public_key_from_jwk(&header["jwk"])? else {
            return Err("header jwk is not Ed25519".into());
        };
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, x)
            .verify(format!("{h}.{p}").as_bytes(), &b64_decode(s)?)
            .map_err(|_| "signature does not verify with the header jwk")?;
        Ok(())
    }

    #[test]
    fn htu_normalisation() -> R {
        for (input, want) in [
            (
                "https://server.example.com/token?x=1#f",
                "https://server.example.com/token",
            ),
            (
                "HTTPS://Server.Example.COM/Token",
                "https://server.example.com/Token",
            ),
            ("https://server.example.com", "https://server.example.com/"),
            (
                "https://server.example.com:443/t",
                "https://server.example.com/t",
            ),
            ("http://localhost:80/t#x", "http://localhost/t"),
            (
                "https://server.example.com:8443/t",
                "https://server.example.com:8443/t",
            ),
            ("http://[::1]:8080/a%20b?q", "http://[::1]:8080/a%20b"),
            ("https://h.example/p?", "https://h.example/p"),
        ] {
            assert_eq!(normalize_htu(input)?, want, "{input}");
        }
        for bad in [
            "/token",
            "server.example.com/token",
            "ftp://server.example.com/x",
            "https:///x",
            "https://user:pw@server.example.com/x",
            "https://server.example.com:99999/x",
            "https://server.example.com:x/x",
            "https://server example.com/x",
            "https://server.example.com/%zz",
            "https://[::1/x",
            "https://ex.com/ü",
        ] {
            assert!(
                matches!(
                    normalize_htu(bad),
                    Err(JoseError::InvalidClaim { claim: "htu", .. })
                ),
                "{bad}"
            );
        }
        Ok(())
    }

    #[test]
    fn dpop_refusals() -> R {
        let pk = ec_key()?;
        for htm in ["", "post", "GET ", "X-1"] {
            let mut req = dpop_req();
            req.htm = htm.into();
            assert!(dpop_proof(&pk, Alg::Es256, &req).is_err(), "{htm}");
        }
        let mut req = dpop_req();
        req.nonce = Some(String::new());
        assert!(dpop_proof(&pk, Alg::Es256, &req).is_err());
        let mut req = dpop_req();
        req.access_token = Some(String::new());
        assert!(dpop_proof(&pk, Alg::Es256, &req).is_err());
        assert!(matches!(
            dpop_proof(&pk, Alg::Ps256, &dpop_req()),
            Err(JoseError::AlgKeyMismatch { .. })
        ));
        // The error for a bad URI never echoes it.
        let mut req = dpop_req();
        req.htu = "ftp://secret-host/?token=abc".into();
        let msg = dpop_proof(&pk, Alg::Es256, &req)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!msg.contains("secret") && !msg.contains("abc"));
        Ok(())
    }

    #[test]
    fn x5t_s256_is_sha256_of_der() {
        assert_eq!(x5t_s256(b""), "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU");
    }
}
