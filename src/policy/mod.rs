//! Who may sign what: the caller's identity, the operations and keys each caller may use, what
//! the signed claims may say, and per-caller / per-key rate limits.
//!
//! Pure and synchronous: no I/O, no clock of its own (the service hands in a monotonic time),
//! no tonic, no config files. The composition root builds a [`Policy`] from the validated
//! config; the service evaluates it before any device call.
//!
//! Deny by default: a caller with no rule may do nothing; a rule allows only the operations and
//! keys it names. Error messages tell the caller what to fix about *its own* request (which
//! operation, key or claim value was refused) and never reveal other callers' rules.

mod rate;

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::jose::{JweAlg, JweEnc, TokenType};

pub use rate::{Rate, RateLimiter};

/// How a caller reached the daemon; decides which rules can match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// Mutual TLS; the identity comes from the client certificate.
    Tls,
    /// The Unix socket; the kernel vouches for the peer's uid and gid.
    Unix {
        /// Peer user id.
        uid: u32,
        /// Peer group id.
        gid: u32,
    },
    /// Plain TCP behind `danger_plaintext`: nobody is authenticated.
    DangerPlaintext,
    /// Code in the same process (the composition root, dev setup, benchmarks): trusted.
    InProcess,
}

/// An authenticated (or explicitly unauthenticated) caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// What logs, audit records and messages call this caller: the certificate identity,
    /// `uid:1000` for a Unix peer, `plaintext` for danger-plaintext callers.
    pub identity: String,
    /// How it connected.
    pub via: Via,
}

impl Caller {
    /// A caller authenticated by its client certificate.
    pub fn tls(identity: impl Into<String>) -> Caller {
        Caller {
            identity: identity.into(),
            via: Via::Tls,
        }
    }

    /// A Unix-socket peer.
    pub fn unix(uid: u32, gid: u32) -> Caller {
        Caller {
            identity: format!("uid:{uid}"),
            via: Via::Unix { uid, gid },
        }
    }

    /// An unauthenticated plain-TCP caller (only with `danger_plaintext`).
    pub fn plaintext() -> Caller {
        Caller {
            identity: "plaintext".into(),
            via: Via::DangerPlaintext,
        }
    }

    /// The daemon itself (dev key creation, benchmarks): not subject to policy.
    pub fn in_process() -> Caller {
        Caller {
            identity: "in-process".into(),
            via: Via::InProcess,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.identity)
    }
}

/// What a request wants to do. Config names them in kebab case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// Signing for one use: a token profile, an RFC 9421 HTTP message, or a generic path
    /// (`jws`, `raw`, `tls`). Each is granted on its own: allowing `tls` does not allow `raw`.
    Sign(TokenType),
    /// Decrypting a compact JWE with an encryption key (the rule's `jwe_algs` / `jwe_encs`
    /// narrow which ones).
    Decrypt,
    /// Create, import, adopt, rotate, activate, retire, destroy (`admin = true` in config).
    Admin,
    /// List keys, show a key, the JWKS: public material; any caller with a rule may read.
    Read,
}

impl Operation {
    /// Every operation a `[[caller]]` rule may list in `operations`: every signing use, then
    /// `decrypt`.
    pub const CONFIGURABLE: [Operation; 17] = {
        let mut all = [Operation::Decrypt; 17];
        let mut i = 0;
        while i < TokenType::ALL.len() {
            all[i] = Operation::Sign(TokenType::ALL[i]);
            i += 1;
        }
        all
    };

    /// The config / audit name.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Sign(t) => t.name(),
            Operation::Decrypt => "decrypt",
            Operation::Admin => "admin",
            Operation::Read => "read",
        }
    }

    /// Parse a config name (only the configurable ones).
    pub fn parse(s: &str) -> Option<Operation> {
        Operation::CONFIGURABLE.into_iter().find(|o| o.name() == s)
    }

    /// The signing use, for signing operations.
    pub fn token_type(self) -> Option<TokenType> {
        match self {
            Operation::Sign(t) => Some(t),
            _ => None,
        }
    }

    /// Whether tokens of this operation carry `claim` (`iss`, `aud`, `client_id`, `htu`,
    /// `target_uri`), so that a rule restricting it applies. Generic JWS may carry any JWT —
    /// including a hand-made DPoP proof or ID token — so every JWT restriction applies to it;
    /// `target_uri` is the `@target-uri` of an RFC 9421 HTTP message signature (of the
    /// request, or for a response of the request it answers), which no JWS carries.
    pub fn carries(self, claim: &str) -> bool {
        use TokenType as T;
        let Operation::Sign(t) = self else {
            return false;
        };
        match claim {
            "iss" | "aud" => matches!(
                t,
                T::Jws
                    | T::IdToken
                    | T::Jar
                    | T::ClientAssertion
                    | T::Jarm
                    | T::Introspection
                    | T::AccessToken
                    | T::Logout
                    | T::Userinfo
                    | T::Ciba
            ),
            "client_id" => matches!(
                t,
                T::Jws | T::Jar | T::ClientAssertion | T::Jarm | T::AccessToken | T::Ciba
            ),
            "htu" => matches!(t, T::Jws | T::Dpop),
            "target_uri" => matches!(t, T::HttpRequest | T::HttpResponse),
            _ => false,
        }
    }

    /// Whether the signed content is a JSON claims set that content rules can check.
    fn has_claims(self) -> bool {
        matches!(self, Operation::Sign(t) if !matches!(t, TokenType::Raw | TokenType::Tls | TokenType::Digest))
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which callers a rule is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// A TLS client whose certificate identity equals this string.
    Identity(String),
    /// A Unix-socket peer with this uid.
    Uid(u32),
    /// A Unix-socket peer with this primary gid.
    Gid(u32),
    /// Any danger-plaintext caller.
    Plaintext,
}

impl Who {
    fn matches(&self, c: &Caller) -> bool {
        match (self, &c.via) {
            (Who::Identity(i), Via::Tls) => *i == c.identity,
            (Who::Uid(u), Via::Unix { uid, .. }) => u == uid,
            (Who::Gid(g), Via::Unix { gid, .. }) => g == gid,
            (Who::Plaintext, Via::DangerPlaintext) => true,
            _ => false,
        }
    }
}

/// A key-name pattern: `*` matches any run of characters (`idp-*`, `*`, `exact`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPattern(String);

impl KeyPattern {
    /// Wrap a pattern.
    pub fn new(p: impl Into<String>) -> KeyPattern {
        KeyPattern(p.into())
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

/// `*`-only glob, iterative with one backtrack point (linear enough for key names).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(c) if Some(c) == s.get(si) => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

/// One `[[caller]]` rule.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// Whom it is about.
    pub who: Option<Who>,
    /// Keys it covers.
    pub keys: Vec<KeyPattern>,
    /// Signing operations allowed on those keys.
    pub operations: BTreeSet<Operation>,
    /// Key administration allowed on those keys.
    pub admin: bool,
    /// Allowed `iss` values (None = any). Each content restriction applies to the operations
    /// whose tokens carry that claim ([`Operation::carries`]).
    pub iss: Option<Vec<String>>,
    /// Allowed `aud` values; every audience of the token must be listed (None = any).
    pub aud: Option<Vec<String>>,
    /// Allowed `client_id` values (JAR `client_id`, client assertion `sub`) (None = any).
    pub client_id: Option<Vec<String>>,
    /// Allowed prefixes of a DPoP proof's `htu` (None = any).
    pub htu_prefix: Option<Vec<String>>,
    /// Allowed prefixes of an HTTP message signature's `@target-uri` ([`Claims::target_uri`])
    /// (None = any).
    pub target_uri_prefix: Option<Vec<String>>,
    /// Allowed `typ` header values of a generic `jws`, compared as media types; `""` stands for
    /// a header without `typ` (None = any). Whatever the list says, a `typ` that a profile
    /// owns ([`TokenType::for_typ`]) also needs a grant of that token type on the key.
    pub jws_typs: Option<Vec<String>>,
    /// JWE key-management algs this rule lets its callers decrypt (None = any the key
    /// serves; a key only ever decrypts its own alg).
    pub jwe_algs: Option<Vec<JweAlg>>,
    /// JWE content encryptions this rule lets its callers decrypt (None = any).
    pub jwe_encs: Option<Vec<JweEnc>>,
    /// This rule's own rate limit, shared by every request it allows.
    pub rate: Option<Rate>,
}

impl Rule {
    fn covers(&self, op: Operation, key: &str) -> bool {
        let op_ok = match op {
            Operation::Admin => self.admin,
            Operation::Read => true,
            // `raw` and `tls` are separate grants: a TLS key may sign handshakes without
            // being able to sign arbitrary bytes (such as a JWS signing input).
            other => self.operations.contains(&other),
        };
        // Reading the (public) key list needs no key match; everything else does.
        op_ok && (op == Operation::Read || self.keys.iter().any(|k| k.matches(key)))
    }

    /// Whether the rule lets its callers decrypt a JWE of `alg` and `enc`.
    pub fn allows_jwe(&self, alg: JweAlg, enc: JweEnc) -> bool {
        self.jwe_algs.as_ref().is_none_or(|a| a.contains(&alg))
            && self.jwe_encs.as_ref().is_none_or(|e| e.contains(&enc))
    }

    /// Whether the rule restricts content that `op`'s tokens carry.
    pub fn restricts_content(&self, op: Operation) -> bool {
        (self.iss.is_some() && op.carries("iss"))
            || (self.aud.is_some() && op.carries("aud"))
            || (self.client_id.is_some() && op.carries("client_id"))
            || (self.htu_prefix.is_some() && op.carries("htu"))
            || (self.target_uri_prefix.is_some() && op.carries("target_uri"))
    }

    /// Whether the rule lets its callers sign a generic JWS whose header has `typ` (`None`: no
    /// `typ` member).
    fn allows_typ(&self, typ: Option<&str>) -> bool {
        let Some(list) = &self.jws_typs else {
            return true;
        };
        match typ {
            None => list.iter().any(String::is_empty),
            Some(t) => list.iter().any(|a| !a.is_empty() && media_type_eq(a, t)),
        }
    }

    fn check_claims(&self, op: Operation, claims: &Claims) -> Result<(), ClaimProblem> {
        let one = |name: &'static str,
                   allowed: &Option<Vec<String>>,
                   value: &Option<String>|
         -> Result<(), ClaimProblem> {
            let Some(allowed) = allowed.as_ref().filter(|_| op.carries(name)) else {
                return Ok(());
            };
            match value {
                None => Err(ClaimProblem::Missing(name)),
                Some(v) if allowed.iter().any(|a| a == v) => Ok(()),
                Some(v) => Err(ClaimProblem::NotAllowed(name, v.clone())),
            }
        };
        one("iss", &self.iss, &claims.iss)?;
        one("client_id", &self.client_id, &claims.client_id)?;
        if let Some(allowed) = self.aud.as_ref().filter(|_| op.carries("aud")) {
            if claims.aud.is_empty() {
                return Err(ClaimProblem::Missing("aud"));
            }
            if let Some(bad) = claims.aud.iter().find(|a| !allowed.contains(a)) {
                return Err(ClaimProblem::NotAllowed("aud", bad.clone()));
            }
        }
        let prefix = |name: &'static str,
                      allowed: &Option<Vec<String>>,
                      value: &Option<String>|
         -> Result<(), ClaimProblem> {
            let Some(prefixes) = allowed.as_ref().filter(|_| op.carries(name)) else {
                return Ok(());
            };
            match value {
                None => Err(ClaimProblem::Missing(name)),
                Some(v) if prefixes.iter().any(|p| v.starts_with(p.as_str())) => Ok(()),
                Some(v) => Err(ClaimProblem::NotAllowed(name, v.clone())),
            }
        };
        prefix("htu", &self.htu_prefix, &claims.htu)?;
        prefix("target_uri", &self.target_uri_prefix, &claims.target_uri)?;
        Ok(())
    }
}

/// Whether two `typ` values name the same media type (RFC 7515 §4.1.9: case-insensitive, the
/// `application/` prefix optional).
fn media_type_eq(a: &str, b: &str) -> bool {
    fn bare(t: &str) -> &str {
        match t.get(..12) {
            Some(p) if p.eq_ignore_ascii_case("application/") => t.get(12..).unwrap_or(""),
            _ => t,
        }
    }
    bare(a).eq_ignore_ascii_case(bare(b))
}

/// Whether a key bound to the token types `serves` may sign `token`: an unbound key (empty
/// set) serves every use; a bound one only those listed. `via_jws`: the signature is a generic
/// JWS (its `token` is the profile its `typ` claims, or `jws`), which a key bound to `jws`
/// also serves. The binding is the key's, not the caller's: it holds for every caller,
/// in-process ones and administrators included.
///
/// # Errors
/// [`PolicyError::KeyNotBound`] naming the key's binding.
pub fn check_binding(
    key: &str,
    serves: &BTreeSet<TokenType>,
    token: TokenType,
    via_jws: bool,
) -> Result<(), PolicyError> {
    if serves.is_empty() || serves.contains(&token) || (via_jws && serves.contains(&TokenType::Jws))
    {
        return Ok(());
    }
    Err(PolicyError::KeyNotBound {
        key: key.to_owned(),
        token,
        serves: serves
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The claims a content rule can look at, taken from the payload that is about to be signed
/// (not from request fields), so what is checked is exactly what gets signed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// `iss`.
    pub iss: Option<String>,
    /// `aud`, as a list (a string audience is one entry).
    pub aud: Vec<String>,
    /// `sub` (audited as a hash; not a policy input).
    pub sub: Option<String>,
    /// `client_id` (JAR), or `sub` of a client assertion.
    pub client_id: Option<String>,
    /// DPoP `htu`.
    pub htu: Option<String>,
    /// The `@target-uri` of an RFC 9421 HTTP message signature: the signed request's, or for a
    /// response the request's it answers. Never in a JWT payload: the HTTP signing path fills
    /// it in from the message it signs.
    pub target_uri: Option<String>,
    /// `jti`.
    pub jti: Option<String>,
}

impl Claims {
    /// Pick the policy-relevant claims out of a JSON payload; `None` when it is not a JSON
    /// object (generic JWS may sign anything).
    pub fn from_payload(op: Operation, payload: &[u8]) -> Option<Claims> {
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        let o = v.as_object()?;
        let s = |k: &str| o.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let aud = match o.get("aud") {
            Some(serde_json::Value::String(a)) => vec![a.clone()],
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        // Where each profile names the client: a client assertion is issued by and about the
        // client (`sub`), a CIBA request is issued by it (`iss`), a JARM response is addressed
        // to it (its one `aud`); the others say `client_id`.
        let client_id = match op {
            Operation::Sign(TokenType::ClientAssertion) => s("sub"),
            Operation::Sign(TokenType::Ciba) => s("iss"),
            Operation::Sign(TokenType::Jarm) => match aud.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            },
            _ => s("client_id"),
        };
        Some(Claims {
            iss: s("iss"),
            aud,
            sub: s("sub"),
            client_id,
            htu: s("htu"),
            target_uri: None,
            jti: s("jti"),
        })
    }
}

#[derive(Debug)]
enum ClaimProblem {
    Missing(&'static str),
    NotAllowed(&'static str, String),
}

/// Why a request was refused. Messages speak to the caller about its own request only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// No rule names this caller.
    #[error(
        "caller {caller} is not authorized by this daemon's policy (no [[caller]] rule names it)"
    )]
    UnknownCaller {
        /// The caller.
        caller: String,
    },
    /// The caller's rules do not cover this operation on this key.
    #[error("caller {caller} is not allowed to {op} with key {key}")]
    OperationNotAllowed {
        /// The caller.
        caller: String,
        /// The operation.
        op: Operation,
        /// The key.
        key: String,
    },
    /// A claim the caller's rule restricts is absent.
    #[error(
        "caller {caller} may {op} with key {key} only with an allowed {claim}; the payload has none"
    )]
    ClaimMissing {
        /// The caller.
        caller: String,
        /// The operation.
        op: Operation,
        /// The key.
        key: String,
        /// Which claim.
        claim: &'static str,
    },
    /// A claim value is not in the caller's allowed list.
    #[error("caller {caller} may not {op} with key {key} for {claim} {value:?}")]
    ClaimNotAllowed {
        /// The caller.
        caller: String,
        /// The operation.
        op: Operation,
        /// The key.
        key: String,
        /// Which claim.
        claim: &'static str,
        /// The refused value (the caller's own input).
        value: String,
    },
    /// The payload must be a JSON object for the caller's content rules to apply.
    #[error(
        "caller {caller} may {op} with key {key} only with a JSON object payload (its policy checks claims)"
    )]
    NotClaims {
        /// The caller.
        caller: String,
        /// The operation.
        op: Operation,
        /// The key.
        key: String,
    },
    /// A generic JWS whose `typ` the caller's `jws` rules do not list.
    #[error("caller {caller} may not sign a generic JWS of typ {typ} with key {key}")]
    TypNotAllowed {
        /// The caller.
        caller: String,
        /// The key.
        key: String,
        /// The header's `typ` (quoted and shortened), or `(none)`.
        typ: String,
    },
    /// A generic JWS whose `typ` belongs to a profile the caller may not use on this key: the
    /// profile's rules must not be bypassed through `jws`.
    #[error(
        "caller {caller} may not sign a JWS of typ {typ} with key {key}: that typ marks {token} tokens, which its policy does not let it mint with this key"
    )]
    ProfiledTyp {
        /// The caller.
        caller: String,
        /// The key.
        key: String,
        /// The header's `typ` (quoted and shortened).
        typ: String,
        /// The token type the `typ` claims.
        token: TokenType,
    },
    /// A `tls` request whose input is no TLS 1.3 CertificateVerify content, from a caller
    /// without `raw` on the key.
    #[error(
        "caller {caller} may sign only TLS 1.3 handshakes (CertificateVerify) with key {key}; other input, TLS 1.2 handshakes included, needs the raw operation"
    )]
    NotTlsHandshake {
        /// The caller.
        caller: String,
        /// The key.
        key: String,
    },
    /// The key is bound to other token types than the one being signed.
    #[error("key {key} is bound to {serves}; it does not sign {token}")]
    KeyNotBound {
        /// The key.
        key: String,
        /// The use that was refused.
        token: TokenType,
        /// The key's binding, comma-separated.
        serves: String,
    },
    /// A rate limit is exhausted.
    #[error("rate limit {rate} of {scope} exceeded; retry in {retry_ms} ms")]
    RateLimited {
        /// `caller X` or `key k`.
        scope: String,
        /// The limit.
        rate: Rate,
        /// When a token is next available.
        retry_ms: u64,
    },
}

impl PolicyError {
    /// Whether this is a rate limit (RESOURCE_EXHAUSTED) rather than a refusal
    /// (PERMISSION_DENIED).
    pub fn is_rate_limit(&self) -> bool {
        matches!(self, PolicyError::RateLimited { .. })
    }
}

/// One request as policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// What it wants to do.
    pub op: Operation,
    /// On which key (empty for reads of the whole key list).
    pub key: &'a str,
    /// The claims about to be signed; `None` for the early check made before the key is
    /// resolved (content rules are then checked in a second call).
    pub claims: Option<&'a Option<Claims>>,
    /// For a generic `jws`, the header's `typ` (`None`: no `typ` member); checked with the
    /// claims. Ignored for other operations.
    pub typ: Option<&'a str>,
}

/// Which rule allowed a request (its rate limit applies); `None` for in-process callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant(Option<usize>);

/// The whole policy: rules plus rate-limit state.
#[derive(Debug)]
pub struct Policy {
    /// Rules in config order.
    rules: Vec<Rule>,
    /// Limit for every key, shared by all callers.
    per_key: Option<Rate>,
    /// Limit for each caller whose granting rule sets no `rate` of its own.
    per_caller: Option<Rate>,
    /// Token buckets.
    limiter: RateLimiter,
}

impl Policy {
    /// A policy over `rules`, with an optional per-key rate.
    pub fn new(rules: Vec<Rule>, per_key: Option<Rate>) -> Policy {
        Policy {
            rules,
            per_key,
            per_caller: None,
            limiter: RateLimiter::default(),
        }
    }

    /// Give every caller without a rule-specific `rate` this limit (one bucket per caller).
    #[must_use]
    pub fn with_per_caller(mut self, rate: Option<Rate>) -> Policy {
        self.per_caller = rate;
        self
    }

    /// A policy that allows nothing to anyone (except in-process callers).
    pub fn deny_all() -> Policy {
        Policy::new(Vec::new(), None)
    }

    /// Decide whether `caller` may make `req`. With `req.claims` = `None` only the operation
    /// and key are checked; with claims, content rules too.
    ///
    /// # Errors
    /// [`PolicyError`] saying what the caller may not do.
    pub fn evaluate(&self, caller: &Caller, req: &Request<'_>) -> Result<Grant, PolicyError> {
        if caller.via == Via::InProcess {
            return Ok(Grant(None));
        }
        let mine: Vec<(usize, &Rule)> = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.who.as_ref().is_some_and(|w| w.matches(caller)))
            .collect();
        if mine.is_empty() {
            return Err(PolicyError::UnknownCaller {
                caller: caller.identity.clone(),
            });
        }
        let covering: Vec<(usize, &Rule)> = mine
            .into_iter()
            .filter(|(_, r)| r.covers(req.op, req.key))
            .collect();
        let Some(&(first, _)) = covering.first() else {
            return Err(PolicyError::OperationNotAllowed {
                caller: caller.identity.clone(),
                op: req.op,
                key: req.key.to_owned(),
            });
        };
        let Some(claims) = req.claims else {
            return Ok(Grant(Some(first)));
        };
        if !req.op.has_claims() {
            return Ok(Grant(Some(first)));
        }
        if req.op == Operation::Sign(TokenType::Jws) {
            return self.evaluate_jws(caller, req, claims, covering);
        }
        self.check_content(caller, req, claims, &covering)
    }

    /// The content check of a generic JWS: a rule that covers `jws` and lists its `typ` must
    /// accept its claims, and a `typ` that a profile owns needs that token type's grant on the
    /// key too, whose content rules then apply as well.
    fn evaluate_jws(
        &self,
        caller: &Caller,
        req: &Request<'_>,
        claims: &Option<Claims>,
        covering: Vec<(usize, &Rule)>,
    ) -> Result<Grant, PolicyError> {
        let shown = || {
            req.typ.map_or_else(
                || "(none)".to_owned(),
                |t| format!("{:?}", t.chars().take(64).collect::<String>()),
            )
        };
        let listed: Vec<(usize, &Rule)> = covering
            .into_iter()
            .filter(|(_, r)| r.allows_typ(req.typ))
            .collect();
        if listed.is_empty() {
            return Err(PolicyError::TypNotAllowed {
                caller: caller.identity.clone(),
                key: req.key.to_owned(),
                typ: shown(),
            });
        }
        let grant = self.check_content(caller, req, claims, &listed)?;
        if let Some(token) = req.typ.and_then(TokenType::for_typ) {
            let profiled = Request {
                op: Operation::Sign(token),
                key: req.key,
                claims: Some(claims),
                typ: None,
            };
            match self.evaluate(caller, &profiled) {
                Ok(_) => {}
                Err(PolicyError::OperationNotAllowed { .. }) => {
                    return Err(PolicyError::ProfiledTyp {
                        caller: caller.identity.clone(),
                        key: req.key.to_owned(),
                        typ: shown(),
                        token,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(grant)
    }

    /// The first of `covering` whose content rules accept `claims`; the first refusal
    /// otherwise.
    fn check_content(
        &self,
        caller: &Caller,
        req: &Request<'_>,
        claims: &Option<Claims>,
        covering: &[(usize, &Rule)],
    ) -> Result<Grant, PolicyError> {
        let mut problem = None;
        for (i, r) in covering {
            if !r.restricts_content(req.op) {
                return Ok(Grant(Some(*i)));
            }
            match claims {
                None => {
                    problem.get_or_insert(PolicyError::NotClaims {
                        caller: caller.identity.clone(),
                        op: req.op,
                        key: req.key.to_owned(),
                    });
                }
                Some(c) => match r.check_claims(req.op, c) {
                    Ok(()) => return Ok(Grant(Some(*i))),
                    Err(p) => {
                        problem.get_or_insert(match p {
                            ClaimProblem::Missing(claim) => PolicyError::ClaimMissing {
                                caller: caller.identity.clone(),
                                op: req.op,
                                key: req.key.to_owned(),
                                claim,
                            },
                            ClaimProblem::NotAllowed(claim, value) => {
                                PolicyError::ClaimNotAllowed {
                                    caller: caller.identity.clone(),
                                    op: req.op,
                                    key: req.key.to_owned(),
                                    claim,
                                    value,
                                }
                            }
                        });
                    }
                },
            }
        }
        Err(problem.unwrap_or(PolicyError::OperationNotAllowed {
            caller: caller.identity.clone(),
            op: req.op,
            key: req.key.to_owned(),
        }))
    }

    /// The late check of a decryption, once the JWE's header is known: the first of the
    /// caller's rules that covers `decrypt` on `key` and allows `alg` and `enc`. `None` when
    /// no rule does; the service answers that like every other rejected JWE (the header's
    /// algorithms are the sender's choice, and the caller learns nothing more from a refusal
    /// that names them). In-process callers are not subject to policy.
    pub fn evaluate_jwe(
        &self,
        caller: &Caller,
        key: &str,
        alg: JweAlg,
        enc: JweEnc,
    ) -> Option<Grant> {
        if caller.via == Via::InProcess {
            return Some(Grant(None));
        }
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| {
                r.who.as_ref().is_some_and(|w| w.matches(caller))
                    && r.covers(Operation::Decrypt, key)
                    && r.allows_jwe(alg, enc)
            })
            .map(|(i, _)| Grant(Some(i)))
    }

    /// Take one token from the granting rule's bucket and the key's bucket. `now` is a
    /// monotonic time handed in by the caller (the service), so this stays testable.
    ///
    /// # Errors
    /// [`PolicyError::RateLimited`], naming the limit the caller hit.
    pub fn admit(
        &self,
        caller: &Caller,
        grant: Grant,
        key: &str,
        now: Duration,
    ) -> Result<(), PolicyError> {
        let mut takes: Vec<(String, Rate, String)> = Vec::with_capacity(2);
        if let Some(i) = grant.0 {
            match (self.rules.get(i).and_then(|r| r.rate), self.per_caller) {
                (Some(rate), _) => {
                    takes.push((format!("rule:{i}"), rate, format!("caller {caller}")));
                }
                (None, Some(rate)) => {
                    // Keyed by how the caller connected too: a certificate named "uid:0" is
                    // not the Unix user 0.
                    let via = match caller.via {
                        Via::Tls => "tls",
                        Via::Unix { .. } => "unix",
                        Via::DangerPlaintext => "plaintext",
                        Via::InProcess => "in-process",
                    };
                    takes.push((
                        format!("caller:{via}:{}", caller.identity),
                        rate,
                        format!("caller {caller}"),
                    ));
                }
                (None, None) => {}
            }
        }
        if let Some(rate) = self.per_key
            && caller.via != Via::InProcess
        {
            takes.push((format!("key:{key}"), rate, format!("key {key}")));
        }
        self.limiter
            .take_all(&takes, now)
            .map_err(|(scope, rate, retry)| PolicyError::RateLimited {
                scope,
                rate,
                retry_ms: u64::try_from(retry.as_millis()).unwrap_or(u64::MAX),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(who: Who, keys: &[&str], ops: &[Operation]) -> Rule {
        Rule {
            who: Some(who),
            keys: keys.iter().map(|k| KeyPattern::new(*k)).collect(),
            operations: ops.iter().copied().collect(),
            ..Rule::default()
        }
    }

    fn req<'a>(op: Operation, key: &'a str, claims: Option<&'a Option<Claims>>) -> Request<'a> {
        Request {
            op,
            key,
            claims,
            typ: None,
        }
    }

    #[test]
    fn globs() {
        let p = KeyPattern::new("idp-*");
        assert!(p.matches("idp-signing"));
        assert!(p.matches("idp-"));
        assert!(!p.matches("xidp-signing"));
        assert!(KeyPattern::new("*").matches("anything"));
        assert!(KeyPattern::new("a*b*c").matches("aXXbYYc"));
        assert!(!KeyPattern::new("a*b*c").matches("aXXbYY"));
        assert!(KeyPattern::new("exact").matches("exact"));
        assert!(!KeyPattern::new("exact").matches("exact2"));
    }

    #[test]
    fn deny_by_default_and_unknown_callers_learn_nothing() {
        let p = Policy::new(
            vec![rule(
                Who::Identity("spiffe://x/idp".into()),
                &["idp-*"],
                &[Operation::Sign(TokenType::IdToken)],
            )],
            None,
        );
        let e = p
            .evaluate(
                &Caller::tls("spiffe://x/other"),
                &req(Operation::Sign(TokenType::IdToken), "idp-1", None),
            )
            .err();
        let msg = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("spiffe://x/other"), "{msg}");
        assert!(
            !msg.contains("idp-*") && !msg.contains("spiffe://x/idp"),
            "{msg}"
        );
        assert!(
            Policy::deny_all()
                .evaluate(
                    &Caller::unix(0, 0),
                    &req(Operation::Sign(TokenType::Jws), "k", None)
                )
                .is_err()
        );
    }

    #[test]
    fn operations_and_keys_must_both_match() {
        let p = Policy::new(
            vec![rule(
                Who::Identity("a".into()),
                &["idp-*"],
                &[
                    Operation::Sign(TokenType::IdToken),
                    Operation::Sign(TokenType::Jws),
                ],
            )],
            None,
        );
        let a = Caller::tls("a");
        assert!(
            p.evaluate(&a, &req(Operation::Sign(TokenType::IdToken), "idp-1", None))
                .is_ok()
        );
        let e = p.evaluate(&a, &req(Operation::Sign(TokenType::Dpop), "idp-1", None));
        assert_eq!(
            e.err().map(|e| e.to_string()).unwrap_or_default(),
            "caller a is not allowed to dpop with key idp-1"
        );
        assert!(matches!(
            p.evaluate(&a, &req(Operation::Sign(TokenType::IdToken), "other", None)),
            Err(PolicyError::OperationNotAllowed { .. })
        ));
        assert!(matches!(
            p.evaluate(&a, &req(Operation::Admin, "idp-1", None)),
            Err(PolicyError::OperationNotAllowed { .. })
        ));
        // Reading public keys needs only a rule.
        assert!(p.evaluate(&a, &req(Operation::Read, "", None)).is_ok());
        // In-process callers are the daemon itself.
        assert!(
            Policy::deny_all()
                .evaluate(&Caller::in_process(), &req(Operation::Admin, "k", None))
                .is_ok()
        );
    }

    #[test]
    fn identity_kinds_do_not_cross() {
        let p = Policy::new(
            vec![
                rule(
                    Who::Identity("uid:1000".into()),
                    &["*"],
                    &[Operation::Sign(TokenType::Jws)],
                ),
                rule(Who::Gid(50), &["g"], &[Operation::Sign(TokenType::Jws)]),
            ],
            None,
        );
        // A certificate named "uid:1000" is not the Unix user 1000, and vice versa.
        assert!(
            p.evaluate(
                &Caller::unix(1000, 1000),
                &req(Operation::Sign(TokenType::Jws), "k", None)
            )
            .is_err()
        );
        assert!(
            p.evaluate(
                &Caller::tls("uid:1000"),
                &req(Operation::Sign(TokenType::Jws), "k", None)
            )
            .is_ok()
        );
        assert!(
            p.evaluate(
                &Caller::unix(7, 50),
                &req(Operation::Sign(TokenType::Jws), "g", None)
            )
            .is_ok()
        );
        assert!(
            p.evaluate(
                &Caller::plaintext(),
                &req(Operation::Sign(TokenType::Jws), "k", None)
            )
            .is_err()
        );
    }

    #[test]
    fn content_rules_check_the_signed_claims() {
        let mut r = rule(
            Who::Identity("idp".into()),
            &["*"],
            &[Operation::Sign(TokenType::IdToken)],
        );
        r.iss = Some(vec!["https://op.example.com".into()]);
        r.aud = Some(vec!["c1".into(), "c2".into()]);
        let mut d = rule(
            Who::Uid(1000),
            &["dpop"],
            &[Operation::Sign(TokenType::Dpop)],
        );
        d.htu_prefix = Some(vec!["https://as.example.com/".into()]);
        let p = Policy::new(vec![r, d], None);
        let idp = Caller::tls("idp");
        let claims =
            |json: &str| Claims::from_payload(Operation::Sign(TokenType::IdToken), json.as_bytes());
        let ok = claims(r#"{"iss":"https://op.example.com","aud":["c1","c2"],"sub":"s"}"#);
        assert!(
            p.evaluate(
                &idp,
                &req(Operation::Sign(TokenType::IdToken), "k", Some(&ok))
            )
            .is_ok()
        );
        let bad_iss = claims(r#"{"iss":"https://evil","aud":"c1"}"#);
        let e = p
            .evaluate(
                &idp,
                &req(Operation::Sign(TokenType::IdToken), "k", Some(&bad_iss)),
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            e,
            "caller idp may not id-token with key k for iss \"https://evil\""
        );
        let bad_aud = claims(r#"{"iss":"https://op.example.com","aud":["c1","c3"]}"#);
        assert!(matches!(
            p.evaluate(
                &idp,
                &req(Operation::Sign(TokenType::IdToken), "k", Some(&bad_aud))
            ),
            Err(PolicyError::ClaimNotAllowed { claim: "aud", .. })
        ));
        let no_aud = claims(r#"{"iss":"https://op.example.com"}"#);
        assert!(matches!(
            p.evaluate(
                &idp,
                &req(Operation::Sign(TokenType::IdToken), "k", Some(&no_aud))
            ),
            Err(PolicyError::ClaimMissing { claim: "aud", .. })
        ));
        assert!(matches!(
            p.evaluate(
                &idp,
                &req(Operation::Sign(TokenType::IdToken), "k", Some(&None))
            ),
            Err(PolicyError::NotClaims { .. })
        ));
        let u = Caller::unix(1000, 1000);
        let h = Claims::from_payload(
            Operation::Sign(TokenType::Dpop),
            br#"{"htu":"https://as.example.com/token","htm":"POST"}"#,
        );
        assert!(
            p.evaluate(&u, &req(Operation::Sign(TokenType::Dpop), "dpop", Some(&h)))
                .is_ok()
        );
        let h = Claims::from_payload(
            Operation::Sign(TokenType::Dpop),
            br#"{"htu":"https://as.example.com.evil/"}"#,
        );
        assert!(
            p.evaluate(&u, &req(Operation::Sign(TokenType::Dpop), "dpop", Some(&h)))
                .is_err()
        );
    }

    #[test]
    fn restrictions_apply_to_the_operations_whose_tokens_carry_them() {
        let mut r = rule(
            Who::Identity("c".into()),
            &["*"],
            &[
                Operation::Sign(TokenType::Dpop),
                Operation::Sign(TokenType::ClientAssertion),
                Operation::Sign(TokenType::Jws),
            ],
        );
        r.aud = Some(vec!["https://as".into()]);
        r.htu_prefix = Some(vec!["https://as/".into()]);
        let p = Policy::new(vec![r], None);
        let c = Caller::tls("c");
        // A DPoP proof has no aud: only htu is checked.
        let dpop = Claims::from_payload(
            Operation::Sign(TokenType::Dpop),
            br#"{"htu":"https://as/token"}"#,
        );
        assert!(
            p.evaluate(&c, &req(Operation::Sign(TokenType::Dpop), "k", Some(&dpop)))
                .is_ok()
        );
        // A client assertion has no htu: only aud is checked.
        let ca = Claims::from_payload(
            Operation::Sign(TokenType::ClientAssertion),
            br#"{"iss":"x","sub":"x","aud":"https://as"}"#,
        );
        assert!(
            p.evaluate(
                &c,
                &req(Operation::Sign(TokenType::ClientAssertion), "k", Some(&ca))
            )
            .is_ok()
        );
        // Generic JWS is held to every restriction.
        assert!(matches!(
            p.evaluate(&c, &req(Operation::Sign(TokenType::Jws), "k", Some(&ca))),
            Err(PolicyError::ClaimMissing { claim: "htu", .. })
        ));
    }

    fn jws_req<'a>(key: &'a str, claims: &'a Option<Claims>, typ: Option<&'a str>) -> Request<'a> {
        Request {
            op: Operation::Sign(TokenType::Jws),
            key,
            claims: Some(claims),
            typ,
        }
    }

    #[test]
    fn raw_and_tls_are_granted_apart() {
        let p = Policy::new(
            vec![
                rule(
                    Who::Identity("t".into()),
                    &["*"],
                    &[Operation::Sign(TokenType::Tls)],
                ),
                rule(
                    Who::Identity("r".into()),
                    &["*"],
                    &[Operation::Sign(TokenType::Raw)],
                ),
            ],
            None,
        );
        let (t, r) = (Caller::tls("t"), Caller::tls("r"));
        let raw = Operation::Sign(TokenType::Raw);
        let tls = Operation::Sign(TokenType::Tls);
        assert!(p.evaluate(&t, &req(tls, "k", None)).is_ok());
        assert!(matches!(
            p.evaluate(&t, &req(raw, "k", None)),
            Err(PolicyError::OperationNotAllowed { .. })
        ));
        assert!(p.evaluate(&r, &req(raw, "k", None)).is_ok());
        assert!(p.evaluate(&r, &req(tls, "k", None)).is_err());
    }

    #[test]
    fn generic_jws_with_a_profiled_typ_needs_that_token_type() {
        let mut jws = rule(
            Who::Identity("a".into()),
            &["*"],
            &[Operation::Sign(TokenType::Jws)],
        );
        jws.iss = Some(vec!["https://as".into()]);
        let mut at = rule(
            Who::Identity("a".into()),
            &["as-*"],
            &[Operation::Sign(TokenType::AccessToken)],
        );
        at.aud = Some(vec!["https://rs".into()]);
        let p = Policy::new(vec![jws, at], None);
        let a = Caller::tls("a");
        let c = Claims::from_payload(
            Operation::Sign(TokenType::AccessToken),
            br#"{"iss":"https://as","aud":"https://rs","client_id":"c"}"#,
        );
        // Not a profiled typ: the jws rule alone decides.
        assert!(p.evaluate(&a, &jws_req("k", &c, Some("JWT"))).is_ok());
        assert!(p.evaluate(&a, &jws_req("k", &c, None)).is_ok());
        // at+jwt on a key where the caller has no access-token grant: refused, whatever the
        // spelling of the media type.
        for typ in ["at+jwt", "application/AT+JWT"] {
            let e = p.evaluate(&a, &jws_req("k", &c, Some(typ)));
            assert!(
                matches!(
                    &e,
                    Err(PolicyError::ProfiledTyp {
                        token: TokenType::AccessToken,
                        ..
                    })
                ),
                "{e:?}"
            );
        }
        let msg = p
            .evaluate(&a, &jws_req("k", &c, Some("at+jwt")))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            msg,
            "caller a may not sign a JWS of typ \"at+jwt\" with key k: that typ marks access-token tokens, which its policy does not let it mint with this key"
        );
        // With the grant on the key: allowed, and the access-token content rules apply too.
        assert!(p.evaluate(&a, &jws_req("as-1", &c, Some("at+jwt"))).is_ok());
        let other_aud = Claims::from_payload(
            Operation::Sign(TokenType::AccessToken),
            br#"{"iss":"https://as","aud":"https://evil"}"#,
        );
        assert!(matches!(
            p.evaluate(&a, &jws_req("as-1", &other_aud, Some("at+jwt"))),
            Err(PolicyError::ClaimNotAllowed { claim: "aud", .. })
        ));
        // The jws rule's own content rules still apply.
        let other_iss = Claims::from_payload(
            Operation::Sign(TokenType::AccessToken),
            br#"{"iss":"https://evil","aud":"https://rs"}"#,
        );
        assert!(matches!(
            p.evaluate(&a, &jws_req("as-1", &other_iss, Some("at+jwt"))),
            Err(PolicyError::ClaimNotAllowed { claim: "iss", .. })
        ));
        // The early check (no claims yet) knows nothing of typ.
        assert!(
            p.evaluate(&a, &req(Operation::Sign(TokenType::Jws), "k", None))
                .is_ok()
        );
    }

    #[test]
    fn jws_typs_lists_the_typ_values_a_rule_allows() {
        let mut r = rule(
            Who::Identity("a".into()),
            &["*"],
            &[
                Operation::Sign(TokenType::Jws),
                Operation::Sign(TokenType::Logout),
            ],
        );
        r.jws_typs = Some(vec!["".into(), "JWT".into(), "logout+jwt".into()]);
        let p = Policy::new(vec![r], None);
        let a = Caller::tls("a");
        let c = Some(Claims::default());
        for ok in [
            None,
            Some("JWT"),
            Some("application/jwt"),
            Some("Logout+JWT"),
        ] {
            assert!(p.evaluate(&a, &jws_req("k", &c, ok)).is_ok(), "{ok:?}");
        }
        for bad in [Some("secevent+jwt"), Some(""), Some("JWT ")] {
            assert!(
                matches!(
                    p.evaluate(&a, &jws_req("k", &c, bad)),
                    Err(PolicyError::TypNotAllowed { .. })
                ),
                "{bad:?}"
            );
        }
        // Listed, but a profiled typ still needs its grant.
        assert!(matches!(
            p.evaluate(&a, &jws_req("k", &c, Some("at+jwt"))),
            Err(PolicyError::TypNotAllowed { .. })
        ));
        let mut only_none = rule(
            Who::Identity("b".into()),
            &["*"],
            &[Operation::Sign(TokenType::Jws)],
        );
        only_none.jws_typs = Some(vec!["".into()]);
        let p = Policy::new(vec![only_none], None);
        let b = Caller::tls("b");
        assert!(p.evaluate(&b, &jws_req("k", &c, None)).is_ok());
        let msg = p
            .evaluate(&b, &jws_req("k", &c, Some("JWT")))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            msg,
            "caller b may not sign a generic JWS of typ \"JWT\" with key k"
        );
        // A non-JSON payload is still held to the typ list.
        assert!(p.evaluate(&b, &jws_req("k", &None, Some("JWT"))).is_err());
        assert!(p.evaluate(&b, &jws_req("k", &None, None)).is_ok());
    }

    #[test]
    fn new_token_types_carry_their_content_rules() {
        let mut r = rule(
            Who::Identity("op".into()),
            &["*"],
            &[
                Operation::Sign(TokenType::Jarm),
                Operation::Sign(TokenType::Ciba),
                Operation::Sign(TokenType::Logout),
                Operation::Sign(TokenType::HttpRequest),
                Operation::Sign(TokenType::HttpResponse),
            ],
        );
        r.client_id = Some(vec!["c1".into()]);
        r.target_uri_prefix = Some(vec!["https://rs.example/".into()]);
        let p = Policy::new(vec![r], None);
        let op = Caller::tls("op");
        let eval = |t: TokenType, c: &Option<Claims>| {
            p.evaluate(&op, &req(Operation::Sign(t), "k", Some(c)))
        };
        // JARM: the client is its one audience.
        let jarm = |aud: &str| {
            Claims::from_payload(
                Operation::Sign(TokenType::Jarm),
                format!(r#"{{"iss":"https://op","aud":{aud},"code":"x"}}"#).as_bytes(),
            )
        };
        assert!(eval(TokenType::Jarm, &jarm("\"c1\"")).is_ok());
        assert!(eval(TokenType::Jarm, &jarm("[\"c1\"]")).is_ok());
        assert!(matches!(
            eval(TokenType::Jarm, &jarm("\"c2\"")),
            Err(PolicyError::ClaimNotAllowed {
                claim: "client_id",
                ..
            })
        ));
        assert!(matches!(
            eval(TokenType::Jarm, &jarm("[\"c1\",\"c2\"]")),
            Err(PolicyError::ClaimMissing {
                claim: "client_id",
                ..
            })
        ));
        // CIBA: the client is the issuer.
        let ciba = Claims::from_payload(
            Operation::Sign(TokenType::Ciba),
            br#"{"iss":"c1","aud":"https://op"}"#,
        );
        assert!(eval(TokenType::Ciba, &ciba).is_ok());
        // A logout token names no client: client_id does not apply to it.
        assert!(!Operation::Sign(TokenType::Logout).carries("client_id"));
        let logout = Claims::from_payload(
            Operation::Sign(TokenType::Logout),
            br#"{"iss":"https://op","aud":"rp","sid":"s"}"#,
        );
        assert!(eval(TokenType::Logout, &logout).is_ok());
        // HTTP message signatures: the target URI prefix.
        let http = |uri: Option<&str>| {
            Some(Claims {
                target_uri: uri.map(str::to_owned),
                ..Claims::default()
            })
        };
        for t in [TokenType::HttpRequest, TokenType::HttpResponse] {
            assert!(eval(t, &http(Some("https://rs.example/accounts"))).is_ok());
            assert!(matches!(
                eval(t, &http(Some("https://rs.example.evil/"))),
                Err(PolicyError::ClaimNotAllowed {
                    claim: "target_uri",
                    ..
                })
            ));
            assert!(matches!(
                eval(t, &http(None)),
                Err(PolicyError::ClaimMissing {
                    claim: "target_uri",
                    ..
                })
            ));
        }
        // No JWT carries a target URI, generic JWS included.
        assert!(!Operation::Sign(TokenType::Jws).carries("target_uri"));
        for t in TokenType::ALL {
            let op = Operation::Sign(t);
            if matches!(t, TokenType::Raw | TokenType::Tls | TokenType::Digest) {
                assert!(
                    !["iss", "aud", "client_id", "htu", "target_uri"]
                        .iter()
                        .any(|c| op.carries(c))
                );
            }
        }
    }

    #[test]
    fn bindings_limit_a_key_to_its_token_types() {
        let none = BTreeSet::new();
        let idp: BTreeSet<TokenType> = [TokenType::IdToken, TokenType::Logout, TokenType::Userinfo]
            .into_iter()
            .collect();
        // Unbound keys serve every use.
        for t in TokenType::ALL {
            assert!(check_binding("k", &none, t, false).is_ok());
        }
        assert!(check_binding("idp", &idp, TokenType::IdToken, false).is_ok());
        assert!(check_binding("idp", &idp, TokenType::Logout, true).is_ok());
        for t in [
            TokenType::AccessToken,
            TokenType::Raw,
            TokenType::Tls,
            TokenType::Jws,
            TokenType::Digest,
        ] {
            assert!(
                check_binding("idp", &idp, t, t == TokenType::Jws).is_err(),
                "{t}"
            );
        }
        assert_eq!(
            check_binding("idp", &idp, TokenType::AccessToken, true)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            "key idp is bound to id-token, logout, userinfo; it does not sign access-token"
        );
        // A key bound to jws serves generic JWS of any typ, but no profile.
        let jws: BTreeSet<TokenType> = [TokenType::Jws].into_iter().collect();
        assert!(check_binding("g", &jws, TokenType::Jws, true).is_ok());
        assert!(check_binding("g", &jws, TokenType::AccessToken, true).is_ok());
        assert!(check_binding("g", &jws, TokenType::AccessToken, false).is_err());
        assert!(check_binding("g", &jws, TokenType::Raw, false).is_err());
    }

    #[test]
    fn client_assertion_client_id_is_its_sub() {
        let c = Claims::from_payload(
            Operation::Sign(TokenType::ClientAssertion),
            br#"{"iss":"c1","sub":"c1","aud":"https://as"}"#,
        );
        assert_eq!(c.and_then(|c| c.client_id), Some("c1".into()));
    }

    #[test]
    fn any_covering_rule_may_allow() {
        let mut strict = rule(
            Who::Identity("a".into()),
            &["*"],
            &[Operation::Sign(TokenType::Jws)],
        );
        strict.iss = Some(vec!["x".into()]);
        let open = rule(
            Who::Identity("a".into()),
            &["open-*"],
            &[Operation::Sign(TokenType::Jws)],
        );
        let p = Policy::new(vec![strict, open], None);
        let c = Claims::from_payload(Operation::Sign(TokenType::Jws), br#"{"iss":"y"}"#);
        let a = Caller::tls("a");
        assert!(
            p.evaluate(
                &a,
                &req(Operation::Sign(TokenType::Jws), "open-1", Some(&c))
            )
            .is_ok()
        );
        assert!(
            p.evaluate(
                &a,
                &req(Operation::Sign(TokenType::Jws), "closed", Some(&c))
            )
            .is_err()
        );
    }

    #[test]
    fn rate_limits_per_rule_and_per_key() -> Result<(), String> {
        let mut r = rule(
            Who::Identity("a".into()),
            &["*"],
            &[Operation::Sign(TokenType::Jws)],
        );
        r.rate = Some(Rate::parse("2/s")?);
        let b = rule(
            Who::Identity("b".into()),
            &["*"],
            &[Operation::Sign(TokenType::Jws)],
        );
        let p = Policy::new(vec![r, b], Some(Rate::parse("3/s")?));
        let (a, b) = (Caller::tls("a"), Caller::tls("b"));
        let ga = p
            .evaluate(&a, &req(Operation::Sign(TokenType::Jws), "k", None))
            .map_err(|e| e.to_string())?;
        let gb = p
            .evaluate(&b, &req(Operation::Sign(TokenType::Jws), "k", None))
            .map_err(|e| e.to_string())?;
        let t0 = Duration::from_secs(100);
        assert!(p.admit(&a, ga, "k", t0).is_ok());
        assert!(p.admit(&a, ga, "k", t0).is_ok());
        let e = p.admit(&a, ga, "k", t0).err();
        assert!(
            matches!(&e, Some(PolicyError::RateLimited { scope, .. }) if scope == "caller a"),
            "{e:?}"
        );
        // b has no own limit, but the key has 1 token left.
        assert!(p.admit(&b, gb, "k", t0).is_ok());
        let e = p.admit(&b, gb, "k", t0).err();
        assert!(
            matches!(&e, Some(PolicyError::RateLimited { scope, .. }) if scope == "key k"),
            "{e:?}"
        );
        assert!(e.is_some_and(|e| e.is_rate_limit()));
        // Recovery: after half a second a has one token again.
        assert!(
            p.admit(&a, ga, "k", t0 + Duration::from_millis(500))
                .is_ok()
        );
        // A refused take does not consume from the other bucket.
        assert!(p.admit(&b, gb, "other", t0).is_ok());
        Ok(())
    }

    #[test]
    fn default_per_caller_limit_applies_to_rules_without_their_own() -> Result<(), String> {
        let mut own = rule(
            Who::Identity("a".into()),
            &["*"],
            &[Operation::Sign(TokenType::Jws)],
        );
        own.rate = Some(Rate::parse("3/s")?);
        let plain = rule(
            Who::Identity("b".into()),
            &["*"],
            &[Operation::Sign(TokenType::Jws)],
        );
        let p = Policy::new(vec![own, plain], None).with_per_caller(Some(Rate::parse("1/s")?));
        let (a, b) = (Caller::tls("a"), Caller::tls("b"));
        let ga = p
            .evaluate(&a, &req(Operation::Sign(TokenType::Jws), "k", None))
            .map_err(|e| e.to_string())?;
        let gb = p
            .evaluate(&b, &req(Operation::Sign(TokenType::Jws), "k", None))
            .map_err(|e| e.to_string())?;
        let t = Duration::from_secs(1);
        assert!(p.admit(&b, gb, "k", t).is_ok());
        assert!(p.admit(&b, gb, "k", t).is_err());
        for _ in 0..3 {
            assert!(p.admit(&a, ga, "k", t).is_ok());
        }
        // Each caller has its own bucket, even under one rule.
        let mut g = rule(Who::Gid(7), &["*"], &[Operation::Sign(TokenType::Jws)]);
        g.rate = None;
        let p = Policy::new(vec![g], None).with_per_caller(Some(Rate::parse("1/s")?));
        let (u1, u2) = (Caller::unix(1, 7), Caller::unix(2, 7));
        let g1 = p
            .evaluate(&u1, &req(Operation::Sign(TokenType::Jws), "k", None))
            .map_err(|e| e.to_string())?;
        assert!(p.admit(&u1, g1, "k", t).is_ok());
        assert!(p.admit(&u2, g1, "k", t).is_ok());
        assert!(p.admit(&u1, g1, "k", t).is_err());
        Ok(())
    }
}

#[cfg(test)]
mod proptests;
