//! RFC 9421 HTTP Message Signatures, pure: the messages as a signer sees them, component values
//! (§2.1 fields, §2.2 derived components, §2.4 `;req`), the signature base (§2.5) for any list of
//! covered components, `Signature-Input` / `Signature` fields (RFC 8941 structured fields, via
//! `sfv`), `Content-Digest` (RFC 9530), the FAPI 2.0 request and response component selection,
//! and verification of a signature with a public JWK.
//!
//! It owns the bytes that get signed: the service builds every HTTP signature base here, so a
//! caller can never get a signature over a base it made up, and the client library verifies
//! responses with the same code. No I/O, no clock (`created` is handed in), no device, no
//! policy, no gRPC: it depends only on `jose` (algorithms, JWKs, verification) and `crypto`.
//! Errors may name components, fields and parameters, never echo field values, URIs or bodies
//! (they carry bearer tokens and DPoP proofs).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use sfv::{BareItem, FieldType as _, InnerList, Item, Key, ListEntry, Parameters, Parser};
use sha2::{Digest as _, Sha256, Sha512};

use crate::crypto::{Curve, KeyKind};
use crate::jose::{self, Alg};

#[cfg(test)]
mod tests;

/// The `tag` of a FAPI 2.0 request signature.
pub const FAPI_REQUEST_TAG: &str = "fapi-2-request";
/// The `tag` of a FAPI 2.0 response signature.
pub const FAPI_RESPONSE_TAG: &str = "fapi-2-response";
/// The signature label sigild uses when the caller names none.
pub const DEFAULT_LABEL: &str = "sig";

/// Why an HTTP message could not be signed or a signature not verified.
///
/// The service maps these to `InvalidArgument` (the message or field is malformed) or
/// `FailedPrecondition` ([`HttpSigError::UnsupportedKey`]). Messages name components, fields
/// and parameters, never the values of fields, the target URI or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpSigError {
    /// The HTTP method is not a token (RFC 9110 §9.1).
    #[error("the HTTP method must be a non-empty token (e.g. GET, POST)")]
    InvalidMethod,
    /// The target URI is not an absolute http(s) URI sigild can sign.
    #[error("the target URI {reason}")]
    InvalidTargetUri {
        /// What is wrong, without the URI.
        reason: &'static str,
    },
    /// The status code is not a three-digit HTTP status.
    #[error("the HTTP status must be between 100 and 999, got {status}")]
    InvalidStatus {
        /// The status given.
        status: u32,
    },
    /// A field name is not a token, or a field value holds a character HTTP forbids.
    #[error("HTTP field {name:?}: {reason}")]
    InvalidField {
        /// The field name, shortened.
        name: String,
        /// What is wrong, without the value.
        reason: &'static str,
    },
    /// A component identifier is malformed or not one RFC 9421 defines for this message.
    #[error("component {component}: {reason}")]
    InvalidComponent {
        /// The identifier as serialised, shortened.
        component: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A covered component is not in the message.
    #[error("component {component} is not present in the message")]
    MissingComponent {
        /// The identifier as serialised, shortened.
        component: String,
    },
    /// A `Signature-Input`, `Signature` or `Content-Digest` field cannot be used.
    #[error("{field} field: {reason}")]
    InvalidSignatureField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The message has no signature with this label.
    #[error("no signature labelled {label:?} in the message")]
    NoSuchSignature {
        /// The label looked for, shortened.
        label: String,
    },
    /// A signature label is not a structured-field key (lowercase letters, digits, `_-.*`).
    #[error(
        "signature label {label:?} must be a structured-field key (lowercase letters, digits, _ - . *)"
    )]
    InvalidLabel {
        /// The label, shortened.
        label: String,
    },
    /// The key cannot make RFC 9421 signatures sigild offers.
    #[error("a {key} key cannot sign HTTP messages; use a P-256, Ed25519 or RSA key")]
    UnsupportedKey {
        /// The kind of key.
        key: KeyKind,
    },
    /// The signature's `alg` parameter names an algorithm sigild does not verify, or one that
    /// does not fit the key.
    #[error("HTTP signature alg {alg:?} is not supported with this key")]
    UnsupportedAlgorithm {
        /// The name, shortened.
        alg: String,
    },
    /// The verification key is not a usable public JWK.
    #[error("verification key: {0}")]
    InvalidKey(#[source] jose::JoseError),
    /// The signature does not verify over the signature base.
    #[error("the HTTP message signature does not verify")]
    BadSignature,
    /// The body does not match its `Content-Digest`.
    #[error("the body does not match its Content-Digest")]
    DigestMismatch,
}

fn shown(s: &str) -> String {
    jose::shown(s)
}

fn invalid_component(c: &Component, reason: &'static str) -> HttpSigError {
    HttpSigError::InvalidComponent {
        component: shown(&c.to_string()),
        reason,
    }
}

/// An RFC 9421 signature algorithm (§3.3), the ones sigild's keys can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `ecdsa-p256-sha256`: ECDSA P-256, SHA-256, `r‖s` (the same signature as JWS ES256).
    EcdsaP256Sha256,
    /// `ed25519`: Ed25519 over the signature base (the same signature as JWS EdDSA).
    Ed25519,
    /// `rsa-pss-sha512`: RSASSA-PSS, SHA-512, MGF1-SHA-512, 64-byte salt (JWS PS512).
    RsaPssSha512,
}

impl Algorithm {
    /// The algorithm a key of `kind` signs HTTP messages with: P-256 → `ecdsa-p256-sha256`,
    /// Ed25519 → `ed25519`, RSA → `rsa-pss-sha512` (the only RSA algorithm of RFC 9421 that
    /// FAPI allows).
    ///
    /// # Errors
    /// [`HttpSigError::UnsupportedKey`] for P-384 (RFC 9421's `ecdsa-p384-sha384` is not one
    /// FAPI 2.0 allows).
    pub fn for_key(kind: KeyKind) -> Result<Algorithm, HttpSigError> {
        match kind {
            KeyKind::Ec(Curve::P256) => Ok(Algorithm::EcdsaP256Sha256),
            KeyKind::Ed25519 => Ok(Algorithm::Ed25519),
            KeyKind::Rsa { .. } => Ok(Algorithm::RsaPssSha512),
            KeyKind::Ec(Curve::P384) => Err(HttpSigError::UnsupportedKey { key: kind }),
        }
    }

    /// The registered RFC 9421 name (the `alg` signature parameter).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Algorithm::Ed25519 => "ed25519",
            Algorithm::RsaPssSha512 => "rsa-pss-sha512",
        }
    }

    /// Parse a registered name (exact, as RFC 9421 §6.2 names are lowercase).
    pub fn parse(name: &str) -> Option<Algorithm> {
        [
            Algorithm::EcdsaP256Sha256,
            Algorithm::Ed25519,
            Algorithm::RsaPssSha512,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }

    /// The JWS algorithm that makes exactly this signature, so the backends, the signature
    /// length checks and verification are the JOSE ones.
    pub fn jose_alg(self) -> Alg {
        match self {
            Algorithm::EcdsaP256Sha256 => Alg::Es256,
            Algorithm::Ed25519 => Alg::EdDsa,
            Algorithm::RsaPssSha512 => Alg::Ps512,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The field lines of a message, in order, names lowercased. A field sent on several lines
/// keeps each line; [`Fields::combined`] joins them as RFC 9421 §2.1 requires.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fields(Vec<(String, String)>);

impl fmt::Debug for Fields {
    /// Names only: values carry bearer tokens (`Authorization`), DPoP proofs and signatures.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

/// Whether `c` is an RFC 9110 `tchar`.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

impl Fields {
    /// No fields.
    pub fn new() -> Fields {
        Fields(Vec::new())
    }

    /// Append one field line. The name is lowercased (HTTP names are case-insensitive, RFC 9421
    /// components are lowercase); the value is kept as given apart from the surrounding
    /// whitespace, which §2.1 strips.
    ///
    /// # Errors
    /// [`HttpSigError::InvalidField`] if the name is not a token or the value holds CR, LF,
    /// NUL or another control character (a folded or smuggled line).
    pub fn push(&mut self, name: &str, value: &str) -> Result<(), HttpSigError> {
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(HttpSigError::InvalidField {
                name: shown(name),
                reason: "the name must be a non-empty token",
            });
        }
        if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(HttpSigError::InvalidField {
                name: shown(name),
                reason: "the value must not contain control characters (CR, LF, NUL, …)",
            });
        }
        self.0.push((
            name.to_ascii_lowercase(),
            value.trim_matches([' ', '\t']).to_owned(),
        ));
        Ok(())
    }

    /// [`Fields::push`] for a `Name: value` line, as the CLI takes them.
    ///
    /// # Errors
    /// As for [`Fields::push`]; [`HttpSigError::InvalidField`] without a colon.
    pub fn push_line(&mut self, line: &str) -> Result<(), HttpSigError> {
        let (name, value) = line.split_once(':').ok_or(HttpSigError::InvalidField {
            name: shown(line.split(' ').next().unwrap_or_default()),
            reason: "expected \"Name: value\"",
        })?;
        self.push(name.trim_end(), value)
    }

    /// Every field line, in order (`name`, `value`).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The values of every line of field `name` (lowercase), in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the message has field `name` (lowercase).
    pub fn contains(&self, name: &str) -> bool {
        self.values(name).next().is_some()
    }

    /// The §2.1 value of field `name` (lowercase): every line's value, trimmed, joined with
    /// `", "`; `None` when the field is absent.
    pub fn combined(&self, name: &str) -> Option<String> {
        let mut values = self.values(name).peekable();
        values.peek()?;
        Some(values.collect::<Vec<_>>().join(", "))
    }

    /// Drop every line of field `name` (lowercase): a signer replaces a stale
    /// `Content-Digest` rather than adding a second one.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The target URI of a request, split once (RFC 3986), for the derived components.
#[derive(Clone, PartialEq, Eq)]
struct TargetUri {
    /// The URI as the caller gave it (`@target-uri`).
    full: String,
    /// Lowercase scheme.
    scheme: String,
    /// Lowercase host, with the port unless it is the scheme's default.
    authority: String,
    /// The path, `/` when empty.
    path: String,
    /// The query without `?`, when there is one.
    query: Option<String>,
}

impl TargetUri {
    fn parse(uri: &str) -> Result<TargetUri, HttpSigError> {
        let bad = |reason| HttpSigError::InvalidTargetUri { reason };
        if uri.bytes().any(|b| b <= 0x20 || b >= 0x7f) {
            return Err(bad("must be ASCII without spaces or control characters"));
        }
        if uri.contains('#') {
            return Err(bad("must not contain a fragment"));
        }
        let parsed: http::Uri = uri
            .parse()
            .map_err(|_| bad("must be an absolute http or https URI"))?;
        let scheme = parsed
            .scheme_str()
            .ok_or(bad("must be an absolute http or https URI"))?
            .to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return Err(bad("must use the http or https scheme")),
        };
        let authority = parsed
            .authority()
            .ok_or(bad("must be an absolute http or https URI"))?;
        if authority.as_str().contains('@') {
            return Err(bad("must not contain user information"));
        }
        if authority.host().is_empty() {
            return Err(bad("must have a host"));
        }
        let host = authority.host().to_ascii_lowercase();
        let authority = match authority.port_u16() {
            Some(p) if p != default_port => format!("{host}:{p}"),
            _ => host,
        };
        let path = match parsed.path() {
            "" => "/".to_owned(),
            p => p.to_owned(),
        };
        Ok(TargetUri {
            full: uri.to_owned(),
            scheme,
            authority,
            path,
            query: parsed.query().map(str::to_owned),
        })
    }
}

/// An HTTP request as a signer sees it: method, target URI, fields. The body is represented by
/// its `Content-Digest` field ([`content_digest`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    method: String,
    target: TargetUri,
    /// The request's field lines.
    pub fields: Fields,
}

impl fmt::Debug for Request {
    /// Method and field names only: the target URI may carry tokens in its query.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("target_uri", &"<redacted>")
            .field("fields", &self.fields)
            .finish()
    }
}

impl Request {
    /// A request to `target_uri` (absolute http or https, no user information, no fragment).
    ///
    /// # Errors
    /// [`HttpSigError::InvalidMethod`], [`HttpSigError::InvalidTargetUri`].
    pub fn new(method: &str, target_uri: &str, fields: Fields) -> Result<Request, HttpSigError> {
        if method.is_empty() || !method.bytes().all(is_tchar) {
            return Err(HttpSigError::InvalidMethod);
        }
        Ok(Request {
            method: method.to_owned(),
            target: TargetUri::parse(target_uri)?,
            fields,
        })
    }

    /// The method, as given (methods are case-sensitive).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The target URI, as given.
    pub fn target_uri(&self) -> &str {
        &self.target.full
    }
}

/// An HTTP response as a signer sees it: status and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    /// The response's field lines.
    pub fields: Fields,
}

impl Response {
    /// A response with `status` (three digits).
    ///
    /// # Errors
    /// [`HttpSigError::InvalidStatus`].
    pub fn new(status: u32, fields: Fields) -> Result<Response, HttpSigError> {
        match u16::try_from(status) {
            Ok(s) if (100..=999).contains(&s) => Ok(Response { status: s, fields }),
            _ => Err(HttpSigError::InvalidStatus { status }),
        }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }
}

/// The message a signature base is built from: a request, or a response with (optionally) the
/// request it answers, which `;req` components read.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// A request.
    Request(&'a Request),
    /// A response and the request it answers.
    Response {
        /// The response.
        response: &'a Response,
        /// The request, for `;req` components.
        request: Option<&'a Request>,
    },
}

impl<'a> Message<'a> {
    /// The fields of this message (a response's own, not its request's).
    pub fn fields(&self) -> &'a Fields {
        match self {
            Message::Request(r) => &r.fields,
            Message::Response { response, .. } => &response.fields,
        }
    }
}

/// A component identifier (RFC 9421 §2): a lowercase name (a field name, or `@` and a derived
/// component's name) and its parameters (`req`, `key`, `name`, `bs`, `sf`), kept in the order
/// given, because the identifier is signed as serialised.
#[derive(Debug, Clone, PartialEq)]
pub struct Component(Item);

/// Derived component names of RFC 9421 §2.2 (without `@signature-params`, which is never a
/// covered component).
const DERIVED: [&str; 9] = [
    "@method",
    "@target-uri",
    "@authority",
    "@scheme",
    "@request-target",
    "@path",
    "@query",
    "@query-param",
    "@status",
];

impl Component {
    /// A component without parameters: a field name (lowercased) or a derived component.
    ///
    /// # Errors
    /// [`HttpSigError::InvalidComponent`] for a name that is neither a field name nor a derived
    /// component of §2.2.
    pub fn new(name: &str) -> Result<Component, HttpSigError> {
        let lower = name.to_ascii_lowercase();
        let item = sfv::String::from_string(lower.clone())
            .map(|s| Item::new(BareItem::String(s)))
            .map_err(|_| HttpSigError::InvalidComponent {
                component: shown(name),
                reason: "is not a printable ASCII string",
            })?;
        let c = Component(item);
        c.check_name()?;
        Ok(c)
    }

    /// A component from its serialised form, e.g. `"signature";req;key="sig"`.
    ///
    /// # Errors
    /// [`HttpSigError::InvalidComponent`].
    pub fn parse(serialised: &str) -> Result<Component, HttpSigError> {
        let item = Parser::new(serialised).parse::<Item>().map_err(|_| {
            HttpSigError::InvalidComponent {
                component: shown(serialised),
                reason: "is not a structured-field string with parameters",
            }
        })?;
        Component::from_item(item)
    }

    fn from_item(item: Item) -> Result<Component, HttpSigError> {
        let c = Component(item);
        c.check_name()?;
        for (k, v) in &c.0.params {
            match (k.as_str(), v) {
                ("req" | "sf" | "bs" | "tr", BareItem::Boolean(true)) => {}
                ("key" | "name", BareItem::String(_)) => {}
                _ => {
                    return Err(invalid_component(
                        &c,
                        "has a parameter RFC 9421 does not define",
                    ));
                }
            }
        }
        Ok(c)
    }

    fn check_name(&self) -> Result<(), HttpSigError> {
        let name = match &self.0.bare_item {
            BareItem::String(s) => s.as_str(),
            _ => return Err(invalid_component(self, "must be a string")),
        };
        let ok = if name.starts_with('@') {
            DERIVED.contains(&name)
        } else {
            !name.is_empty()
                && name.bytes().all(is_tchar)
                && !name.bytes().any(|b| b.is_ascii_uppercase())
        };
        if ok {
            Ok(())
        } else {
            Err(invalid_component(
                self,
                "is neither a lowercase field name nor a derived component of RFC 9421",
            ))
        }
    }

    /// The same component with boolean parameter `flag` (`req`, `bs`, `sf`) added.
    fn with_flag(mut self, flag: &str) -> Component {
        if let Ok(k) = Key::from_string(flag.to_owned()) {
            self.0.params.insert(k, BareItem::Boolean(true));
        }
        self
    }

    /// The same component with string parameter `param` (`key`, `name`) set to `value`.
    fn with_string(mut self, param: &str, value: &str) -> Result<Component, HttpSigError> {
        let v = sfv::String::from_string(value.to_owned()).map_err(|_| {
            invalid_component(&self, "has a parameter value that is not printable ASCII")
        })?;
        if let Ok(k) = Key::from_string(param.to_owned()) {
            self.0.params.insert(k, BareItem::String(v));
        }
        Ok(self)
    }

    /// This component taken from the request a response answers (`;req`, §2.4).
    pub fn req(self) -> Component {
        self.with_flag("req")
    }

    /// This field's dictionary member `key` (`;key="…"`, §2.1.2).
    ///
    /// # Errors
    /// [`HttpSigError::InvalidComponent`] if `key` is not printable ASCII.
    pub fn key(self, key: &str) -> Result<Component, HttpSigError> {
        self.with_string("key", key)
    }

    /// The query parameter `name` (`"@query-param";name="…"`, §2.2.8); `name` as it appears
    /// percent-encoded.
    ///
    /// # Errors
    /// [`HttpSigError::InvalidComponent`] if `name` is not printable ASCII.
    pub fn query_param(name: &str) -> Result<Component, HttpSigError> {
        Component::new("@query-param")?.with_string("name", name)
    }

    /// This field's values byte-sequence wrapped (`;bs`, §2.1.3).
    pub fn bs(self) -> Component {
        self.with_flag("bs")
    }

    /// The component name (lowercase field name or `@…`).
    pub fn name(&self) -> &str {
        match &self.0.bare_item {
            BareItem::String(s) => s.as_str(),
            _ => "",
        }
    }

    fn flag(&self, p: &str) -> bool {
        self.0
            .params
            .iter()
            .any(|(k, v)| k.as_str() == p && *v == BareItem::Boolean(true))
    }

    fn string_param(&self, p: &str) -> Option<&str> {
        self.0.params.iter().find_map(|(k, v)| match v {
            BareItem::String(s) if k.as_str() == p => Some(s.as_str()),
            _ => None,
        })
    }

    /// Whether the component is read from the request a response answers.
    pub fn is_req(&self) -> bool {
        self.flag("req")
    }

    /// The identifier as it appears in the signature base and `Signature-Input`.
    pub fn serialize(&self) -> String {
        self.0.serialize()
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.serialize())
    }
}

/// Decode `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte).
fn form_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            _ => out.push(c),
        }
        i += 1;
    }
    out
}

/// Percent-encode with the `application/x-www-form-urlencoded` set, spaces as `%20`
/// (RFC 9421 §2.2.8).
fn query_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"*-._".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The value of component `c` in `msg` (RFC 9421 §2.1, §2.2, §2.4).
///
/// # Errors
/// [`HttpSigError::MissingComponent`] if the message lacks it; [`HttpSigError::InvalidComponent`]
/// for a component that does not apply to this message (`@status` of a request, `;req` without
/// a request, `@method` of a response, …) or a parameter that cannot be applied.
pub fn component_value(msg: Message<'_>, c: &Component) -> Result<String, HttpSigError> {
    let missing = || HttpSigError::MissingComponent {
        component: shown(&c.serialize()),
    };
    // The message the component is read from: the request for `;req`.
    let (request, response) = match msg {
        Message::Request(_) if c.is_req() => {
            return Err(invalid_component(c, "req applies to responses only"));
        }
        Message::Request(r) => (Some(r), None),
        Message::Response { request, .. } if c.is_req() => {
            (Some(request.ok_or_else(missing)?), None)
        }
        Message::Response { response, .. } => (None, Some(response)),
    };
    let name = c.name();
    if let Some(derived) = name.strip_prefix('@') {
        if c.flag("sf") || c.flag("bs") || c.flag("tr") || c.string_param("key").is_some() {
            return Err(invalid_component(
                c,
                "sf, bs, tr and key apply to fields only",
            ));
        }
        if derived != "query-param" && c.string_param("name").is_some() {
            return Err(invalid_component(c, "name applies to @query-param only"));
        }
        if derived == "status" {
            let r = response.ok_or_else(|| invalid_component(c, "applies to responses only"))?;
            return Ok(r.status.to_string());
        }
        let r = request
            .ok_or_else(|| invalid_component(c, "applies to requests (use ;req in a response)"))?;
        let t = &r.target;
        return Ok(match derived {
            "method" => r.method.clone(),
            "target-uri" => t.full.clone(),
            "authority" => t.authority.clone(),
            "scheme" => t.scheme.clone(),
            "request-target" => match &t.query {
                Some(q) => format!("{}?{q}", t.path),
                None => t.path.clone(),
            },
            "path" => t.path.clone(),
            "query" => format!("?{}", t.query.as_deref().unwrap_or_default()),
            "query-param" => {
                let wanted = c
                    .string_param("name")
                    .ok_or_else(|| invalid_component(c, "needs a name parameter"))?;
                let mut found = t
                    .query
                    .as_deref()
                    .unwrap_or_default()
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .filter_map(|p| {
                        let (n, v) = p.split_once('=').unwrap_or((p, ""));
                        (query_encode(&form_decode(n)) == wanted)
                            .then(|| query_encode(&form_decode(v)))
                    });
                let first = found.next().ok_or_else(missing)?;
                if found.next().is_some() {
                    return Err(invalid_component(
                        c,
                        "names a query parameter that occurs more than once; cover @query instead",
                    ));
                }
                first
            }
            _ => return Err(invalid_component(c, "is not a derived component")),
        });
    }
    if c.flag("tr") {
        return Err(invalid_component(c, "trailers are not signed by sigild"));
    }
    let fields = match (request, response) {
        (Some(r), _) => &r.fields,
        (None, Some(r)) => &r.fields,
        (None, None) => return Err(missing()),
    };
    if c.flag("bs") {
        if c.flag("sf") || c.string_param("key").is_some() {
            return Err(invalid_component(c, "bs cannot be combined with sf or key"));
        }
        let mut lines = fields.values(name).peekable();
        lines.peek().ok_or_else(missing)?;
        return Ok(lines
            .map(|v| format!(":{}:", STANDARD.encode(v.as_bytes())))
            .collect::<Vec<_>>()
            .join(", "));
    }
    let combined = fields.combined(name).ok_or_else(missing)?;
    if let Some(key) = c.string_param("key") {
        let dict = Parser::new(&combined)
            .parse::<sfv::Dictionary>()
            .map_err(|_| {
                invalid_component(c, "key needs a field that is a structured dictionary")
            })?;
        let member = dict
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v.clone())
            .ok_or_else(missing)?;
        return serialize_member(member).ok_or_else(|| {
            invalid_component(c, "has a dictionary member that cannot be serialised")
        });
    }
    if c.flag("sf") {
        // The strict serialisation of a field needs its type; the two dictionaries RFC 9421
        // itself defines are known, other fields are refused rather than guessed.
        if !matches!(name, "signature" | "signature-input" | "content-digest") {
            return Err(invalid_component(
                c,
                "sf is supported for dictionary fields sigild knows only",
            ));
        }
        let dict = Parser::new(&combined)
            .parse::<sfv::Dictionary>()
            .map_err(|_| invalid_component(c, "sf needs a valid structured field"))?;
        return dict
            .serialize()
            .ok_or_else(|| invalid_component(c, "is an empty dictionary"));
    }
    Ok(combined)
}

/// The serialisation of one dictionary member's value (an item or an inner list, with its
/// parameters), as `;key` components sign it.
fn serialize_member(member: ListEntry) -> Option<String> {
    let list: sfv::List = vec![member];
    list.serialize()
}

/// The covered components and signature parameters of one signature: what `Signature-Input`
/// carries under the signature's label, and what `@signature-params` signs (§2.3).
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureInput {
    components: Vec<Component>,
    params: Parameters,
}

impl SignatureInput {
    /// Covered components in order, no parameters yet.
    ///
    /// # Errors
    /// [`HttpSigError::InvalidComponent`] if a component appears twice (§2.5 forbids it).
    pub fn new(components: Vec<Component>) -> Result<SignatureInput, HttpSigError> {
        for (i, c) in components.iter().enumerate() {
            if components.iter().take(i).any(|d| d == c) {
                return Err(invalid_component(c, "is covered more than once"));
            }
        }
        Ok(SignatureInput {
            components,
            params: Parameters::new(),
        })
    }

    fn with(mut self, name: &str, value: BareItem) -> SignatureInput {
        if let Ok(k) = Key::from_string(name.to_owned()) {
            self.params.insert(k, value);
        }
        self
    }

    fn with_string(self, name: &str, value: &str) -> Result<SignatureInput, HttpSigError> {
        let v = sfv::String::from_string(value.to_owned()).map_err(|_| {
            HttpSigError::InvalidSignatureField {
                field: "Signature-Input",
                reason: "a string parameter must be printable ASCII",
            }
        })?;
        Ok(self.with(name, BareItem::String(v)))
    }

    /// Add `created` (seconds since the epoch, from the signer's clock).
    pub fn created(self, created: u64) -> SignatureInput {
        let v = i64::try_from(created).unwrap_or(i64::MAX);
        match BareItem::try_from(v) {
            Ok(item) => self.with("created", item),
            Err(_) => self,
        }
    }

    /// Add `expires` (seconds since the epoch).
    pub fn expires(self, expires: u64) -> SignatureInput {
        let v = i64::try_from(expires).unwrap_or(i64::MAX);
        match BareItem::try_from(v) {
            Ok(item) => self.with("expires", item),
            Err(_) => self,
        }
    }

    /// Add `keyid`.
    ///
    /// # Errors
    /// [`HttpSigError::InvalidSignatureField`] for a value that is not printable ASCII.
    pub fn keyid(self, keyid: &str) -> Result<SignatureInput, HttpSigError> {
        self.with_string("keyid", keyid)
    }

    /// Add `nonce`.
    ///
    /// # Errors
    /// As for [`SignatureInput::keyid`].
    pub fn nonce(self, nonce: &str) -> Result<SignatureInput, HttpSigError> {
        self.with_string("nonce", nonce)
    }

    /// Add `alg`.
    pub fn alg(self, alg: Algorithm) -> SignatureInput {
        match sfv::String::from_string(alg.name().to_owned()) {
            Ok(s) => self.with("alg", BareItem::String(s)),
            Err(_) => self,
        }
    }

    /// Add `tag`.
    ///
    /// # Errors
    /// As for [`SignatureInput::keyid`].
    pub fn tag(self, tag: &str) -> Result<SignatureInput, HttpSigError> {
        self.with_string("tag", tag)
    }

    /// The covered components, in order.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    fn integer(&self, name: &str) -> Option<i64> {
        self.params.iter().find_map(|(k, v)| match v {
            BareItem::Integer(i) if k.as_str() == name => Some(i64::from(*i)),
            _ => None,
        })
    }

    fn string(&self, name: &str) -> Option<&str> {
        self.params.iter().find_map(|(k, v)| match v {
            BareItem::String(s) if k.as_str() == name => Some(s.as_str()),
            _ => None,
        })
    }

    /// `created`, when present.
    pub fn created_at(&self) -> Option<i64> {
        self.integer("created")
    }

    /// `expires`, when present.
    pub fn expires_at(&self) -> Option<i64> {
        self.integer("expires")
    }

    /// `keyid`, when present.
    pub fn key_id(&self) -> Option<&str> {
        self.string("keyid")
    }

    /// `alg`, when present.
    pub fn algorithm(&self) -> Option<&str> {
        self.string("alg")
    }

    /// `tag`, when present.
    pub fn tag_value(&self) -> Option<&str> {
        self.string("tag")
    }

    /// `nonce`, when present.
    pub fn nonce_value(&self) -> Option<&str> {
        self.string("nonce")
    }

    /// Whether component `c` is covered.
    pub fn covers(&self, c: &Component) -> bool {
        self.components.contains(c)
    }

    /// The inner list with parameters: the value of `@signature-params` and of this
    /// signature's `Signature-Input` member.
    pub fn serialize(&self) -> String {
        let inner = InnerList::with_params(
            self.components.iter().map(|c| c.0.clone()).collect(),
            self.params.clone(),
        );
        serialize_member(ListEntry::InnerList(inner)).unwrap_or_default()
    }

    fn from_entry(entry: ListEntry) -> Result<SignatureInput, HttpSigError> {
        let bad = |reason| HttpSigError::InvalidSignatureField {
            field: "Signature-Input",
            reason,
        };
        let ListEntry::InnerList(inner) = entry else {
            return Err(bad("a member must be an inner list of components"));
        };
        let components = inner
            .items
            .into_iter()
            .map(Component::from_item)
            .collect::<Result<Vec<_>, _>>()?;
        for (k, v) in &inner.params {
            let ok = match k.as_str() {
                "created" | "expires" => matches!(v, BareItem::Integer(_)),
                "keyid" | "nonce" | "alg" | "tag" => matches!(v, BareItem::String(_)),
                _ => true,
            };
            if !ok {
                return Err(bad("a signature parameter has the wrong type"));
            }
        }
        let mut input = SignatureInput::new(components)?;
        input.params = inner.params;
        Ok(input)
    }
}

/// The signature base of `input` over `msg` (RFC 9421 §2.5): one `identifier: value` line per
/// covered component, then `"@signature-params": …`, joined by LF, no trailing LF.
///
/// # Errors
/// As for [`component_value`].
pub fn signature_base(msg: Message<'_>, input: &SignatureInput) -> Result<String, HttpSigError> {
    let mut base = String::new();
    for c in &input.components {
        let value = component_value(msg, c)?;
        base.push_str(&c.serialize());
        base.push_str(": ");
        base.push_str(&value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(&input.serialize());
    Ok(base)
}

/// A signature label, checked to be a structured-field key.
fn label_key(label: &str) -> Result<Key, HttpSigError> {
    Key::from_string(label.to_owned()).map_err(|_| HttpSigError::InvalidLabel {
        label: shown(label),
    })
}

/// The `Signature-Input` and `Signature` field values that carry one signature under `label`
/// (each a one-member dictionary).
///
/// # Errors
/// [`HttpSigError::InvalidLabel`].
pub fn signature_fields(
    label: &str,
    input: &SignatureInput,
    signature: &[u8],
) -> Result<(String, String), HttpSigError> {
    label_key(label)?;
    Ok((
        format!("{label}={}", input.serialize()),
        format!("{label}=:{}:", STANDARD.encode(signature)),
    ))
}

fn parse_dictionary(
    fields: &Fields,
    name: &str,
    field: &'static str,
) -> Result<sfv::Dictionary, HttpSigError> {
    let combined = fields
        .combined(name)
        .ok_or(HttpSigError::InvalidSignatureField {
            field,
            reason: "is missing",
        })?;
    Parser::new(&combined)
        .parse::<sfv::Dictionary>()
        .map_err(|_| HttpSigError::InvalidSignatureField {
            field,
            reason: "is not a structured-field dictionary",
        })
}

/// Every signature declared in the message's `Signature-Input` field, by label, in order.
///
/// # Errors
/// [`HttpSigError::InvalidSignatureField`] if the field is missing or malformed; the component
/// errors of [`Component::parse`].
pub fn signature_inputs(fields: &Fields) -> Result<Vec<(String, SignatureInput)>, HttpSigError> {
    parse_dictionary(fields, "signature-input", "Signature-Input")?
        .into_iter()
        .map(|(k, v)| Ok((k.as_str().to_owned(), SignatureInput::from_entry(v)?)))
        .collect()
}

/// The signature labelled `label` in the message's `Signature` field.
///
/// # Errors
/// [`HttpSigError::InvalidSignatureField`]; [`HttpSigError::NoSuchSignature`].
pub fn signature_value(fields: &Fields, label: &str) -> Result<Vec<u8>, HttpSigError> {
    let dict = parse_dictionary(fields, "signature", "Signature")?;
    match dict.iter().find(|(k, _)| k.as_str() == label) {
        Some((_, ListEntry::Item(item))) => {
            item.bare_item.as_byte_sequence().map(<[u8]>::to_vec).ok_or(
                HttpSigError::InvalidSignatureField {
                    field: "Signature",
                    reason: "a member must be a byte sequence",
                },
            )
        }
        Some(_) => Err(HttpSigError::InvalidSignatureField {
            field: "Signature",
            reason: "a member must be a byte sequence",
        }),
        None => Err(HttpSigError::NoSuchSignature {
            label: shown(label),
        }),
    }
}

/// The label of the request signature a response binds: `label` when given (it must be in
/// `Signature-Input`), otherwise the one signature tagged `fapi-2-request`, otherwise the only
/// signature.
///
/// # Errors
/// [`HttpSigError::NoSuchSignature`] when the label is absent or the choice is ambiguous;
/// the parse errors of [`signature_inputs`].
pub fn request_signature_label(
    fields: &Fields,
    label: Option<&str>,
) -> Result<String, HttpSigError> {
    let inputs = signature_inputs(fields)?;
    if let Some(l) = label.filter(|l| !l.is_empty()) {
        return inputs
            .into_iter()
            .map(|(k, _)| k)
            .find(|k| k == l)
            .ok_or_else(|| HttpSigError::NoSuchSignature { label: shown(l) });
    }
    let tagged: Vec<&String> = inputs
        .iter()
        .filter(|(_, i)| i.tag_value() == Some(FAPI_REQUEST_TAG))
        .map(|(k, _)| k)
        .collect();
    match (tagged.as_slice(), inputs.as_slice()) {
        ([one], _) => Ok((*one).clone()),
        ([], [(only, _)]) => Ok(only.clone()),
        _ => Err(HttpSigError::NoSuchSignature {
            label: format!("(none named; {} candidates)", inputs.len()),
        }),
    }
}

/// The RFC 9530 `Content-Digest` field value of `body` with SHA-256: `sha-256=:…:`.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)))
}

/// Check `body` against the message's `Content-Digest` (RFC 9530): every `sha-256` and
/// `sha-512` member must match, and at least one must be present.
///
/// # Errors
/// [`HttpSigError::InvalidSignatureField`] when the field is missing, malformed or has no
/// algorithm sigild knows; [`HttpSigError::DigestMismatch`].
pub fn check_content_digest(fields: &Fields, body: &[u8]) -> Result<(), HttpSigError> {
    let dict = parse_dictionary(fields, "content-digest", "Content-Digest")?;
    let mut checked = false;
    for (k, v) in &dict {
        let want: Vec<u8> = match k.as_str() {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => Sha512::digest(body).to_vec(),
            _ => continue,
        };
        let got = match v {
            ListEntry::Item(i) => i.bare_item.as_byte_sequence(),
            ListEntry::InnerList(_) => None,
        }
        .ok_or(HttpSigError::InvalidSignatureField {
            field: "Content-Digest",
            reason: "a digest must be a byte sequence",
        })?;
        if got != want.as_slice() {
            return Err(HttpSigError::DigestMismatch);
        }
        checked = true;
    }
    if checked {
        Ok(())
    } else {
        Err(HttpSigError::InvalidSignatureField {
            field: "Content-Digest",
            reason: "has neither sha-256 nor sha-512",
        })
    }
}

/// The FAPI 2.0 request signature's input: `@method`, `@target-uri`, `authorization` and `dpop`
/// when the request has them, `content-digest` when it has a body (the field must then be
/// present: [`content_digest`]); `created`, `keyid`, `tag="fapi-2-request"`.
///
/// # Errors
/// [`HttpSigError::MissingComponent`] for a body without `Content-Digest`;
/// [`HttpSigError::InvalidSignatureField`] for a `keyid` that is not printable ASCII.
pub fn fapi_request_input(
    request: &Request,
    has_body: bool,
    created: u64,
    keyid: &str,
) -> Result<SignatureInput, HttpSigError> {
    let mut components = vec![Component::new("@method")?, Component::new("@target-uri")?];
    for field in ["authorization", "dpop"] {
        if request.fields.contains(field) {
            components.push(Component::new(field)?);
        }
    }
    if has_body || request.fields.contains("content-digest") {
        let c = Component::new("content-digest")?;
        if !request.fields.contains("content-digest") {
            return Err(HttpSigError::MissingComponent {
                component: c.serialize(),
            });
        }
        components.push(c);
    }
    SignatureInput::new(components)?
        .created(created)
        .keyid(keyid)?
        .tag(FAPI_REQUEST_TAG)
}

/// The FAPI 2.0 response signature's input, binding the request it answers:
/// `"@method";req`, `"@target-uri";req`, `"content-digest";req` when the request has one,
/// `"signature";req;key=…` and `"signature-input";req;key=…` of the request's signature
/// `request_label`, then `@status` and `content-digest` when the response has a body;
/// `created`, `keyid`, `tag="fapi-2-response"`.
///
/// # Errors
/// As for [`fapi_request_input`]; [`HttpSigError::InvalidLabel`].
pub fn fapi_response_input(
    request: &Request,
    request_label: &str,
    response: &Response,
    has_body: bool,
    created: u64,
    keyid: &str,
) -> Result<SignatureInput, HttpSigError> {
    label_key(request_label)?;
    let mut components = vec![
        Component::new("@method")?.req(),
        Component::new("@target-uri")?.req(),
    ];
    if request.fields.contains("content-digest") {
        components.push(Component::new("content-digest")?.req());
    }
    components.push(Component::new("signature")?.req().key(request_label)?);
    components.push(
        Component::new("signature-input")?
            .req()
            .key(request_label)?,
    );
    components.push(Component::new("@status")?);
    if has_body || response.fields.contains("content-digest") {
        let c = Component::new("content-digest")?;
        if !response.fields.contains("content-digest") {
            return Err(HttpSigError::MissingComponent {
                component: c.serialize(),
            });
        }
        components.push(c);
    }
    SignatureInput::new(components)?
        .created(created)
        .keyid(keyid)?
        .tag(FAPI_RESPONSE_TAG)
}

/// A signature that verified: what it covers and with which algorithm. The caller still
/// decides whether that is enough (the tag, the components, `created` within its window).
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The label it was found under.
    pub label: String,
    /// Its covered components and parameters.
    pub input: SignatureInput,
    /// The algorithm that verified it.
    pub alg: Algorithm,
    /// The signature base it was verified over.
    pub base: String,
}

/// Verify the signature labelled `label` in `msg` (a request, or a response with the request
/// it answers for `;req` components) with the public key `jwk`. The algorithm is the one the
/// key makes ([`Algorithm::for_key`]); an `alg` parameter must name that one.
///
/// # Errors
/// [`HttpSigError::InvalidKey`], [`HttpSigError::UnsupportedKey`],
/// [`HttpSigError::UnsupportedAlgorithm`]; the field errors of [`signature_inputs`] and
/// [`signature_value`]; the component errors of [`signature_base`];
/// [`HttpSigError::BadSignature`].
pub fn verify(msg: Message<'_>, label: &str, jwk: &Value) -> Result<Verified, HttpSigError> {
    let public = jose::public_key_from_jwk(jwk).map_err(HttpSigError::InvalidKey)?;
    let alg = Algorithm::for_key(public.kind())?;
    let fields = msg.fields();
    let input = signature_inputs(fields)?
        .into_iter()
        .find(|(k, _)| k == label)
        .map(|(_, v)| v)
        .ok_or_else(|| HttpSigError::NoSuchSignature {
            label: shown(label),
        })?;
    if let Some(named) = input.algorithm()
        && named != alg.name()
    {
        return Err(HttpSigError::UnsupportedAlgorithm { alg: shown(named) });
    }
    let signature = signature_value(fields, label)?;
    let base = signature_base(msg, &input)?;
    if !jose::verify(&public, alg.jose_alg(), base.as_bytes(), &signature) {
        return Err(HttpSigError::BadSignature);
    }
    Ok(Verified {
        label: label.to_owned(),
        input,
        alg,
        base,
    })
}
