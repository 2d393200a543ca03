//! The parts of the configuration that decide who may call: the TLS and Unix listeners,
//! `[[caller]]` rules, `[limits]` and `[audit]`, with their validation (every mistake, each
//! with its field path). The composition root turns them into the policy and the audit writer.
//!
//! ```toml
//! [server]
//! listen = "0.0.0.0:7443"
//! [server.tls]
//! cert = "/etc/sigild/server.pem"
//! key = "/etc/sigild/server.key"          # mode 0600
//! client_ca = ["/etc/sigild/clients-ca.pem"]
//! identity = "spiffe"                      # or "dns" or "cn"
//! [server.unix]
//! path = "/run/sigild/sigild.sock"
//! mode = "0660"
//!
//! [[caller]]
//! identity = "spiffe://example.org/idp"
//! keys = ["idp-*"]
//! operations = ["id-token", "jws"]
//! iss = ["https://op.example.com"]
//! rate = "100/s"
//! [[caller]]
//! uid = 1000
//! keys = ["client-a-dpop"]
//! operations = ["dpop"]
//! htu_prefix = ["https://as.example.com/"]
//! [[caller]]
//! identity = "spiffe://example.org/as"
//! keys = ["as-*"]
//! operations = ["access-token", "jws"]     # jws: generic JWS, here only without typ or "JWT"
//! jws_typs = ["", "JWT"]                   # at+jwt through jws also needs access-token
//! [[caller]]
//! identity = "spiffe://example.org/rs"
//! keys = ["rs-sig"]
//! operations = ["http-request"]            # RFC 9421 request signatures
//! target_uri_prefix = ["https://api.example.com/"]
//! [[caller]]
//! identity = "spiffe://example.org/rp"
//! keys = ["rp-enc"]
//! operations = ["decrypt"]                 # JWEs (encrypted ID tokens, JARM, userinfo)
//! jwe_algs = ["RSA-OAEP-256"]              # optional: narrow the key-management algs
//! jwe_encs = ["A256GCM"]                   # optional: narrow the content encryptions
//! [[caller]]
//! identity = "spiffe://example.org/ops"
//! admin = true                             # key administration; keys default to all
//!
//! [limits]
//! per_key = "1000/s"                       # every key, all callers together
//! per_caller = "50/s"                      # each caller whose rule has no `rate`
//! [audit]
//! file = "/var/log/sigild/audit.jsonl"     # or stdout = true
//! fail_closed = true
//! fsync = true                             # each record on disk before the answer leaves
//! ```

use std::path::PathBuf;

use serde::Deserialize;

use crate::jose::{JweAlg, JweEnc, TokenType};
use crate::policy::{Operation, Rate};
use crate::tls::IdentityKind;

/// `[server.tls]`: mutual TLS on the TCP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM; must not be readable by group or others.
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to (PEM files).
    pub client_ca: Vec<PathBuf>,
    /// Which certificate field names the caller.
    #[serde(default)]
    pub identity: IdentityKind,
}

/// `[server.unix]`: a Unix socket whose callers are named by their uid/gid.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixConfig {
    /// Socket path (a stale socket there is replaced; any other file is an error).
    pub path: PathBuf,
    /// Octal permission bits of the socket, e.g. `"0660"`: who may connect at all.
    #[serde(default = "default_mode")]
    pub mode: String,
}

fn default_mode() -> String {
    "0600".into()
}

impl UnixConfig {
    /// The mode as bits.
    ///
    /// # Errors
    /// A message when it is not octal or above 0777.
    pub fn mode_bits(&self) -> Result<u32, String> {
        let m = u32::from_str_radix(self.mode.trim_start_matches("0o"), 8)
            .map_err(|_| format!("{:?} is not an octal mode like \"0660\"", self.mode))?;
        if m > 0o777 {
            return Err(format!("{:?} is above 0777", self.mode));
        }
        Ok(m)
    }
}

/// One `[[caller]]` rule: whom it names and what it allows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerConfig {
    /// TLS identity (per `server.tls.identity`).
    pub identity: Option<String>,
    /// Unix-socket peer uid.
    pub uid: Option<u32>,
    /// Unix-socket peer gid.
    pub gid: Option<u32>,
    /// Every caller on the danger-plaintext TCP listener (nobody is authenticated there).
    #[serde(default)]
    pub danger_plaintext: bool,
    /// Key-name patterns (`*` wildcard).
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    /// Operations: the signing uses (jws, raw, tls, id-token, jar, client-assertion, dpop,
    /// jarm, introspection, access-token, logout, userinfo, ciba, http-request,
    /// http-response, digest) and decrypt; `digest` (SignDigest) is implied by no other.
    /// `raw` and `tls` are separate: `tls` signs TLS 1.3 handshakes only; a TLS 1.2 client key also needs `raw` (its handshake signature cannot be
    /// told apart from other bytes).
    #[serde(default)]
    pub operations: Vec<String>,
    /// Key administration (create, import, adopt, rotate, activate, retire, destroy).
    #[serde(default)]
    pub admin: bool,
    /// Allowed `iss`.
    pub iss: Option<Vec<String>>,
    /// Allowed `aud` values.
    pub aud: Option<Vec<String>>,
    /// Allowed `client_id`.
    pub client_id: Option<Vec<String>>,
    /// Allowed DPoP `htu` prefixes.
    pub htu_prefix: Option<Vec<String>>,
    /// Allowed `@target-uri` prefixes of RFC 9421 HTTP message signatures (`http-request`, and
    /// for `http-response` the request it answers).
    pub target_uri_prefix: Option<Vec<String>>,
    /// Allowed `typ` header values of a generic `jws` (`""`: no `typ`); absent: any. A `typ`
    /// that a profile owns (`at+jwt`, `logout+jwt`, …) also needs that token type in
    /// `operations`. Only with `jws`.
    pub jws_typs: Option<Vec<String>>,
    /// JWE key-management algs the rule lets its callers decrypt (`RSA-OAEP-256`, …);
    /// absent: any the key serves. Only with `decrypt`.
    pub jwe_algs: Option<Vec<String>>,
    /// JWE content encryptions the rule lets its callers decrypt (`A256GCM`, …); absent: any.
    /// Only with `decrypt`.
    pub jwe_encs: Option<Vec<String>>,
    /// Rate limit for what this rule allows, e.g. `"100/s"`.
    pub rate: Option<String>,
}

/// `[limits]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Rate limit of every key, across all callers, e.g. `"1000/s"`.
    pub per_key: Option<String>,
    /// Rate limit of each caller whose `[[caller]]` rule sets no `rate`, e.g. `"50/s"`.
    pub per_caller: Option<String>,
}

/// `[audit]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Append JSON lines to this file.
    pub file: Option<PathBuf>,
    /// Write JSON lines to standard output.
    #[serde(default)]
    pub stdout: bool,
    /// Withhold a signature whose audit record could not be written.
    #[serde(default)]
    pub fail_closed: bool,
    /// Make each record durable (`fdatasync` of the file) before the answer leaves: a machine
    /// crash then cannot lose the record of a released signature. Costs one disk flush per
    /// request (signing runs at the disk's sync rate); with `fail_closed`, a failed flush
    /// withholds the signature like a failed write.
    #[serde(default)]
    pub fsync: bool,
}

/// A validation finding: dotted field path (with `[i]` indices) and what is wrong.
#[derive(Debug, Clone)]
pub struct Problem {
    /// E.g. `caller[1].operations[0]`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
    }
}

/// Check the server listener settings, the caller rules, limits and audit.
pub fn validate(
    server: &super::ServerConfig,
    callers: &[CallerConfig],
    limits: &LimitsConfig,
    audit: &AuditConfig,
) -> Vec<Problem> {
    let mut out = Vec::new();
    match (&server.tls, server.danger_plaintext) {
        (None, false) => out.push(problem(
            "server.tls",
            "the TCP listener needs [server.tls] (cert, key, client_ca) for mutual TLS, or danger_plaintext = true to serve unauthenticated plain TCP",
        )),
        (Some(_), true) => out.push(problem(
            "server.danger_plaintext",
            "choose either [server.tls] or danger_plaintext = true, not both",
        )),
        (Some(t), false) if t.client_ca.is_empty() => out.push(problem(
            "server.tls.client_ca",
            "list at least one CA file that client certificates must chain to",
        )),
        _ => {}
    }
    if let Some(u) = &server.unix
        && let Err(m) = u.mode_bits()
    {
        out.push(problem("server.unix.mode", m));
    }
    for (i, c) in callers.iter().enumerate() {
        let f = |name: &str| format!("caller[{i}].{name}");
        let named = usize::from(c.identity.is_some())
            + usize::from(c.uid.is_some())
            + usize::from(c.gid.is_some())
            + usize::from(c.danger_plaintext);
        if named != 1 {
            out.push(problem(
                format!("caller[{i}]"),
                "name exactly one of identity, uid, gid or danger_plaintext = true",
            ));
        }
        if c.identity.as_ref().is_some_and(|s| s.trim().is_empty()) {
            out.push(problem(f("identity"), "must not be empty"));
        }
        if c.danger_plaintext && !server.danger_plaintext {
            out.push(problem(
                f("danger_plaintext"),
                "there is no plaintext listener (server.danger_plaintext is not set)",
            ));
        }
        if (c.uid.is_some() || c.gid.is_some()) && server.unix.is_none() {
            out.push(problem(
                format!("caller[{i}]"),
                "uid/gid rules need a Unix socket listener ([server.unix])",
            ));
        }
        let mut ops = Vec::new();
        for (j, o) in c.operations.iter().enumerate() {
            match Operation::parse(o) {
                Some(op) => ops.push(op),
                None => out.push(problem(
                    format!("caller[{i}].operations[{j}]"),
                    format!(
                        "unknown operation {o:?}; expected one of {} (key administration is admin = true)",
                        Operation::CONFIGURABLE.map(Operation::name).join(", ")
                    ),
                )),
            }
        }
        if c.operations.is_empty() && !c.admin {
            out.push(problem(
                format!("caller[{i}]"),
                "allows nothing: list operations or set admin = true",
            ));
        }
        if !c.operations.is_empty() && c.keys.as_ref().is_none_or(Vec::is_empty) {
            out.push(problem(
                f("keys"),
                "list the keys this rule may sign with (patterns such as \"idp-*\", or \"*\")",
            ));
        }
        for (j, k) in c.keys.iter().flatten().enumerate() {
            if k.is_empty() {
                out.push(problem(format!("caller[{i}].keys[{j}]"), "empty pattern"));
            }
        }
        let content = c.iss.is_some()
            || c.aud.is_some()
            || c.client_id.is_some()
            || c.htu_prefix.is_some()
            || c.target_uri_prefix.is_some();
        if content
            && ops.iter().any(|o| {
                matches!(
                    o,
                    Operation::Sign(TokenType::Raw)
                        | Operation::Sign(TokenType::Tls)
                        | Operation::Sign(TokenType::Digest)
                )
            })
        {
            out.push(problem(
                f("operations"),
                "raw, tls and digest signatures carry no claims, so they cannot be combined with iss, aud, client_id, htu_prefix or target_uri_prefix; put them in a separate [[caller]] rule",
            ));
        }
        for (name, claim, list) in [
            ("iss", "iss", &c.iss),
            ("aud", "aud", &c.aud),
            ("client_id", "client_id", &c.client_id),
            ("htu_prefix", "htu", &c.htu_prefix),
            ("target_uri_prefix", "target_uri", &c.target_uri_prefix),
        ] {
            if list.as_ref().is_some_and(Vec::is_empty) {
                out.push(problem(
                    f(name),
                    "an empty list allows nothing; remove the field to allow any value",
                ));
            }
            if list.is_some() && !ops.is_empty() && !ops.iter().any(|o| o.carries(claim)) {
                out.push(problem(
                    f(name),
                    format!(
                        "has no effect: none of this rule's operations ({}) signs a {claim} claim",
                        c.operations.join(", ")
                    ),
                ));
            }
        }
        jws_typs(c, &ops, &f, &mut out);
        jwe_lists(c, &ops, &f, &mut out);
        if let Some(r) = &c.rate
            && let Err(m) = Rate::parse(r)
        {
            out.push(problem(f("rate"), m));
        }
    }
    if let Some(r) = &limits.per_key
        && let Err(m) = Rate::parse(r)
    {
        out.push(problem("limits.per_key", m));
    }
    if let Some(r) = &limits.per_caller
        && let Err(m) = Rate::parse(r)
    {
        out.push(problem("limits.per_caller", m));
    }
    if audit.file.is_some() && audit.stdout {
        out.push(problem(
            "audit.stdout",
            "choose either audit.file or audit.stdout",
        ));
    }
    if audit.fail_closed && audit.file.is_none() && !audit.stdout {
        out.push(problem(
            "audit.fail_closed",
            "needs an audit destination (file or stdout)",
        ));
    }
    if audit.fsync && audit.file.is_none() {
        out.push(problem(
            "audit.fsync",
            "needs audit.file (standard output is a pipe or terminal and cannot be synced)",
        ));
    }
    out
}

/// Check a rule's `jws_typs`: not empty, no duplicates, only on a rule that signs generic JWS;
/// a `typ` a profile owns is listed only with that token type (else it could never be used).
fn jws_typs(
    c: &CallerConfig,
    ops: &[Operation],
    f: &dyn Fn(&str) -> String,
    out: &mut Vec<Problem>,
) {
    let Some(list) = &c.jws_typs else { return };
    if list.is_empty() {
        out.push(problem(
            f("jws_typs"),
            "an empty list allows no generic JWS; remove the field to allow any typ, or list \"\" for JWS without typ",
        ));
    }
    if !ops.contains(&Operation::Sign(TokenType::Jws)) {
        out.push(problem(
            f("jws_typs"),
            "has no effect: the rule's operations do not include jws",
        ));
    }
    for (j, t) in list.iter().enumerate() {
        if t.trim() != t {
            out.push(problem(
                format!("{}[{j}]", f("jws_typs")),
                format!("{t:?} has surrounding spaces; a typ header never matches it"),
            ));
        }
        if let Some(token) = TokenType::for_typ(t)
            && !ops.contains(&Operation::Sign(token))
        {
            out.push(problem(
                format!("{}[{j}]", f("jws_typs")),
                format!(
                    "{t:?} is the typ of {token} tokens: a generic JWS with it also needs {token} in operations (or use the {token} profile)"
                ),
            ));
        }
    }
}

/// Check a rule's `jwe_algs` and `jwe_encs`: known names, not empty, and only on a rule that
/// decrypts.
fn jwe_lists(
    c: &CallerConfig,
    ops: &[Operation],
    f: &dyn Fn(&str) -> String,
    out: &mut Vec<Problem>,
) {
    let algs = JweAlg::ALL.map(JweAlg::name).join(", ");
    let encs = JweEnc::ALL.map(JweEnc::name).join(", ");
    for (name, list, known, valid) in [
        (
            "jwe_algs",
            &c.jwe_algs,
            &algs,
            (|s: &str| JweAlg::parse(s).is_some()) as fn(&str) -> bool,
        ),
        ("jwe_encs", &c.jwe_encs, &encs, |s: &str| {
            JweEnc::parse(s).is_some()
        }),
    ] {
        let Some(list) = list else { continue };
        if list.is_empty() {
            out.push(problem(
                f(name),
                "an empty list allows nothing; remove the field to allow any",
            ));
        }
        for (j, v) in list.iter().enumerate() {
            if !valid(v) {
                out.push(problem(
                    format!("{}[{j}]", f(name)),
                    format!("unknown {v:?}; expected one of {known}"),
                ));
            }
        }
        if !ops.contains(&Operation::Decrypt) {
            out.push(problem(
                f(name),
                "has no effect: the rule's operations do not include decrypt",
            ));
        }
    }
}

/// Checks that look outside the file: certificates parse, the TLS key is private, the
/// socket's and audit file's directories exist.
pub fn check_files(server: &super::ServerConfig, audit: &AuditConfig) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(t) = &server.tls {
        if let Err(e) = crate::tls::read_certificates(std::slice::from_ref(&t.cert)) {
            out.push(problem("server.tls.cert", e.to_string()));
        }
        if let Err(e) = crate::secret::SecretSource::File(t.key.clone()).read() {
            out.push(problem("server.tls.key", e.to_string()));
        }
        for (i, ca) in t.client_ca.iter().enumerate() {
            if let Err(e) = crate::tls::read_certificates(std::slice::from_ref(ca)) {
                out.push(problem(format!("server.tls.client_ca[{i}]"), e.to_string()));
            }
        }
    }
    let dir_of = |p: &std::path::Path| {
        p.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .is_none_or(std::path::Path::is_dir)
    };
    if let Some(u) = &server.unix
        && !dir_of(&u.path)
    {
        out.push(problem(
            "server.unix.path",
            format!("the directory of {} does not exist", u.path.display()),
        ));
    }
    if let Some(f) = &audit.file
        && !dir_of(f)
    {
        out.push(problem(
            "audit.file",
            format!("the directory of {} does not exist", f.display()),
        ));
    }
    out
}

/// The 1-based line where `field` (a path like `caller[1].rate`) is written in `text`, or of
/// its nearest enclosing table that is.
pub fn locate(text: &str, field: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table: &DeTable<'_> = root.get_ref();
    let mut best: Option<usize> = None;
    for seg in field.split('.') {
        let (name, idx) = match seg.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name) else {
            break;
        };
        best = Some(k.span().start);
        let mut v = v;
        if let Some(i) = idx
            && let DeValue::Array(a) = v.get_ref()
            && let Some(item) = a.get(i)
        {
            v = item;
            best = Some(item.span().start);
        }
        if !matches!(v.get_ref(), DeValue::Table(_) | DeValue::Array(_)) {
            best = Some(v.span().start);
        }
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break,
        }
    }
    best.map(|off| text.get(..off).unwrap_or(text).matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_fields_and_array_tables() {
        let text = "[server]\nlisten = \"x\"\n\n[[caller]]\nidentity = \"a\"\n\n[[caller]]\nidentity = \"b\"\noperations = [\n  \"jws\",\n  \"bogus\",\n]\nrate = \"1/x\"\n";
        assert_eq!(locate(text, "server.listen"), Some(2));
        assert_eq!(locate(text, "caller[1].rate"), Some(13));
        assert_eq!(locate(text, "caller[1].operations[1]"), Some(11));
        assert_eq!(locate(text, "caller[0].identity"), Some(5));
        // Missing field: the nearest enclosing element.
        assert_eq!(
            locate(text, "caller[1].keys"),
            Some(7).or(locate(text, "caller[1]"))
        );
    }

    #[test]
    fn unix_mode_is_octal() {
        let u = |m: &str| UnixConfig {
            path: "/x".into(),
            mode: m.into(),
        };
        assert_eq!(u("0660").mode_bits(), Ok(0o660));
        assert!(u("0999").mode_bits().is_err());
        assert!(u("1777").mode_bits().is_err());
    }
}
