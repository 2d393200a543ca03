//! The daemon's TOML configuration as plain data: parsed strictly (`deny_unknown_fields`, so a
//! typo is an error, not a silently ignored setting) and validated at start-up, with errors that
//! name the file, line and field. One file per table (`pkcs11`, `yubikey`, `auth` for the
//! listeners, callers, limits and audit).
//!
//! Owns: the shape of the file and every check that needs nothing but the file (and, in
//! [`Config::check_environment`], the files it names). Must never import a backend, the service,
//! the audit writer or anything that runs: the composition root ([`crate::app`]) maps these values
//! onto the settings each part owns.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod auth;
pub mod ops;
pub mod pkcs11;
pub mod yubikey;

pub use auth::{AuditConfig, CallerConfig, LimitsConfig, TlsConfig, UnixConfig};
pub use ops::{LogConfig, LogFormat, OpsConfig, OpsTlsConfig};
pub use pkcs11::Pkcs11Config;
pub use yubikey::{PinPolicy, TouchPolicy, YubikeyConfig};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where and how the gRPC API listens.
    pub server: ServerConfig,
    /// The PKCS#11 token holding the keys (exactly one of `pkcs11` and `yubikey`).
    #[serde(default)]
    pub pkcs11: Option<Pkcs11Config>,
    /// The YubiKey holding the keys (exactly one of `pkcs11` and `yubikey`).
    #[serde(default)]
    pub yubikey: Option<YubikeyConfig>,
    /// Keyring refresh.
    #[serde(default)]
    pub keyring: KeyringConfig,
    /// Signing limits and checks.
    #[serde(default)]
    pub signing: SigningConfig,
    /// Decryption limits.
    #[serde(default)]
    pub decryption: DecryptionConfig,
    /// Who may do what (`[[caller]]` rules); none means nobody may call.
    #[serde(default, rename = "caller")]
    pub callers: Vec<CallerConfig>,
    /// Rate limits that are not per caller.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The audit trail.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The operations listener (probes, metrics); none without the table.
    #[serde(default)]
    pub ops: Option<OpsConfig>,
    /// Log format.
    #[serde(default)]
    pub log: LogConfig,
}

/// The gRPC listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// TCP address; served with mutual TLS (`[server.tls]`), or in plain text only with
    /// `danger_plaintext = true`.
    pub listen: SocketAddr,
    /// Concurrent requests per connection.
    #[serde(default = "default_concurrency")]
    pub concurrency_per_connection: usize,
    /// Open TCP connections (handshaking or established) at most; a connection beyond it is
    /// closed at once, counted and logged, so a flood of idle or stalled peers cannot exhaust
    /// the daemon's file descriptors.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTP/2 streams (requests in flight) one connection may open at once (announced to the
    /// client in SETTINGS_MAX_CONCURRENT_STREAMS), on the TCP listener and the Unix socket.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// A TLS client that has not completed its handshake after this many milliseconds is
    /// dropped (and counted), so a peer stalling mid-handshake holds a slot only this long.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Send an HTTP/2 PING on a connection idle this many seconds and close it when the answer
    /// does not come within 20 s: dead peers (a vanished load balancer, a cut network) free
    /// their slot. 0 turns keepalive off.
    #[serde(default = "default_keepalive_seconds")]
    pub keepalive_seconds: u64,
    /// Serve plain, unauthenticated gRPC on `listen` (every caller is `plaintext`); logs a
    /// warning at start. For local experiments and benchmarks only.
    #[serde(default)]
    pub danger_plaintext: bool,
    /// Mutual TLS for the TCP listener.
    pub tls: Option<TlsConfig>,
    /// An additional Unix-socket listener.
    pub unix: Option<UnixConfig>,
    /// How long a stopping daemon (SIGTERM, SIGINT) lets requests already in flight finish,
    /// seconds; those still running then are answered UNAVAILABLE, so a stop is bounded while
    /// callers on a balancer lose nothing that could finish. 0 answers them at once.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_seconds: u64,
}

/// Keyring refresh, rotation grace and key watchers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringConfig {
    /// How often to re-read the keyring from the token, to see other replicas' changes.
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    /// How long a version that stopped being active still signs for requests that name it
    /// (by `version` or a JWS header's `kid`), so an OP that cached the previous kid keeps
    /// working across a rotation until it has re-read the key set.
    #[serde(default = "default_grace")]
    pub grace_seconds: u64,
    /// How many `WatchKeys` streams may be open at once; more are refused RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_watchers")]
    pub max_watchers: usize,
}

impl Default for KeyringConfig {
    fn default() -> Self {
        KeyringConfig {
            refresh_seconds: default_refresh(),
            grace_seconds: default_grace(),
            max_watchers: default_max_watchers(),
        }
    }
}

/// Signing limits and checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// Largest header + payload accepted, bytes.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Deadline for one device signature, milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Verify each signature with the public key before returning it.
    #[serde(default = "default_true")]
    pub verify_signatures: bool,
    /// Requests in a row whose signature does not verify, also when signed again afresh,
    /// before the device is quarantined (NOT_SERVING, signing refused until a probe signature
    /// verifies); 0 never quarantines.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after: u32,
    /// Time between two probe signatures while quarantined, milliseconds.
    #[serde(default = "default_quarantine_probe_ms")]
    pub quarantine_probe_ms: u64,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            max_payload_bytes: default_max_payload(),
            timeout_ms: default_timeout_ms(),
            verify_signatures: true,
            quarantine_after: default_quarantine_after(),
            quarantine_probe_ms: default_quarantine_probe_ms(),
        }
    }
}

/// The largest `[decryption] max_jwe_bytes` accepted (as for `[signing] max_payload_bytes`).
const MAX_JWE_LIMIT: usize = 16 * 1024 * 1024;

/// `[decryption]`: limits of JWE decryption (`DecryptJwe`, `sigild decrypt`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecryptionConfig {
    /// Largest compact JWE accepted, bytes; a longer one is refused before it is parsed (and
    /// answered like every other JWE that cannot be decrypted).
    #[serde(default = "default_max_jwe")]
    pub max_jwe_bytes: usize,
}

impl Default for DecryptionConfig {
    fn default() -> Self {
        DecryptionConfig {
            max_jwe_bytes: default_max_jwe(),
        }
    }
}

fn default_max_jwe() -> usize {
    1024 * 1024
}

fn default_concurrency() -> usize {
    256
}
fn default_max_connections() -> usize {
    4096
}
fn default_max_concurrent_streams() -> u32 {
    256
}
fn default_handshake_timeout_ms() -> u64 {
    5000
}
fn default_keepalive_seconds() -> u64 {
    60
}
fn default_shutdown_grace() -> u64 {
    10
}
fn default_refresh() -> u64 {
    10
}
fn default_grace() -> u64 {
    300
}
fn default_max_watchers() -> usize {
    64
}
fn default_max_payload() -> usize {
    64 * 1024
}
fn default_timeout_ms() -> u64 {
    5000
}
fn default_quarantine_after() -> u32 {
    3
}
fn default_quarantine_probe_ms() -> u64 {
    5000
}
fn default_true() -> bool {
    true
}

/// A configuration problem, located.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or a field of the wrong type / unknown field (message has line and column).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, with line, column and field.
        message: String,
    },
    /// A value that parses but cannot be used, with the line it is on (when found).
    #[error("{path}:{}field `{field}`: {message}", line.map(|l| format!("{l}: ")).unwrap_or_else(|| " ".into()))]
    Located {
        /// The file.
        path: PathBuf,
        /// 1-based line of the field (or of its enclosing table).
        line: Option<usize>,
        /// Field path, e.g. `caller[1].rate`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Several problems, each located.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
    /// A value that parses but cannot be used.
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted field name.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Read, parse and validate a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, line and field.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parse and validate config text; `path` is only used in messages.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let locate = |field: &str, message: String| ConfigError::Located {
            path: path.to_owned(),
            line: auth::locate(text, field),
            field: field.to_owned(),
            message,
        };
        let mut errors: Vec<ConfigError> = Vec::new();
        if let Err(e) = config.validate(path) {
            errors.push(match e {
                ConfigError::Invalid { field, message, .. } => locate(field, message),
                other => other,
            });
        }
        errors.extend(
            auth::validate(
                &config.server,
                &config.callers,
                &config.limits,
                &config.audit,
            )
            .into_iter()
            .map(|p| locate(&p.field, p.message)),
        );
        match errors.len() {
            0 => Ok(config),
            1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Several(errors)),
        }
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        match (&self.pkcs11, &self.yubikey) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "yubikey",
                    "configure exactly one of [pkcs11] and [yubikey]; a daemon serves one device"
                        .into(),
                ));
            }
            (None, None) => {
                return Err(invalid(
                    "pkcs11",
                    "configure the device: a [pkcs11] or a [yubikey] table".into(),
                ));
            }
            (Some(p11), None) => p11.validate(path)?,
            (None, Some(yk)) => yk.validate(path)?,
        }
        if let Some(ops) = &self.ops {
            ops.validate(path)?;
        }
        if self.server.max_connections == 0 {
            return Err(invalid(
                "server.max_connections",
                "must be at least 1".into(),
            ));
        }
        if self.server.max_concurrent_streams == 0 {
            return Err(invalid(
                "server.max_concurrent_streams",
                "must be at least 1".into(),
            ));
        }
        if self.server.handshake_timeout_ms == 0 {
            return Err(invalid(
                "server.handshake_timeout_ms",
                "must be at least 1".into(),
            ));
        }
        if self.server.shutdown_grace_seconds > 3600 {
            return Err(invalid(
                "server.shutdown_grace_seconds",
                "must be at most 3600 (an hour)".into(),
            ));
        }
        if self.keyring.refresh_seconds == 0 {
            return Err(invalid(
                "keyring.refresh_seconds",
                "must be at least 1".into(),
            ));
        }
        if self.keyring.grace_seconds > 7 * 24 * 3600 {
            return Err(invalid(
                "keyring.grace_seconds",
                "must be at most 604800 (a week)".into(),
            ));
        }
        if !(1..=10_000).contains(&self.keyring.max_watchers) {
            return Err(invalid(
                "keyring.max_watchers",
                "must be between 1 and 10000".into(),
            ));
        }
        if !(256..=16 * 1024 * 1024).contains(&self.signing.max_payload_bytes) {
            return Err(invalid(
                "signing.max_payload_bytes",
                "must be between 256 and 16777216".into(),
            ));
        }
        if self.signing.timeout_ms == 0 {
            return Err(invalid("signing.timeout_ms", "must be at least 1".into()));
        }
        if !(256..=MAX_JWE_LIMIT).contains(&self.decryption.max_jwe_bytes) {
            return Err(invalid(
                "decryption.max_jwe_bytes",
                format!("must be between 256 and {MAX_JWE_LIMIT}"),
            ));
        }
        if self.signing.quarantine_probe_ms == 0 {
            return Err(invalid(
                "signing.quarantine_probe_ms",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Further checks that look outside the file: the module exists, the PIN can be read.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`].
    pub fn check_environment(&self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let locate = |field: &str, message: String| ConfigError::Located {
            path: path.to_owned(),
            line: auth::locate(&text, field),
            field: field.to_owned(),
            message,
        };
        let mut errors = Vec::new();
        if let Some(p11) = &self.pkcs11 {
            errors.extend(
                p11.check_environment()
                    .into_iter()
                    .map(|(field, message)| locate(field, message)),
            );
        }
        if let Some(yk) = &self.yubikey
            && let Err(e) = yk.check_environment(path)
        {
            errors.push(e);
        }
        errors.extend(
            auth::check_files(&self.server, &self.audit)
                .into_iter()
                .map(|p| locate(&p.field, p.message)),
        );
        if let Some(ops) = &self.ops {
            errors.extend(ops.check_files().into_iter().map(|(f, m)| locate(&f, m)));
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Several(errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:7711"
danger_plaintext = true

[pkcs11]
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "pkcs11:token=sigild-dev"
pin = { file = "/etc/sigild/pin" }
"#;

    #[test]
    fn minimal_config_gets_defaults() -> Result<(), ConfigError> {
        let c = Config::parse(Path::new("x.toml"), GOOD)?;
        assert_eq!(c.pkcs11.as_ref().map(|p| p.workers), Some(2));
        assert_eq!(c.keyring.refresh_seconds, 10);
        assert!(c.signing.verify_signatures);
        assert_eq!(c.server.max_connections, 4096);
        assert_eq!(c.server.max_concurrent_streams, 256);
        assert_eq!(c.server.handshake_timeout_ms, 5000);
        assert_eq!(c.server.keepalive_seconds, 60);
        assert!(!c.audit.fsync);
        assert_eq!(c.server.shutdown_grace_seconds, 10);
        assert_eq!(c.signing.quarantine_after, 3);
        assert_eq!(c.signing.quarantine_probe_ms, 5000);
        Ok(())
    }

    #[test]
    fn shutdown_grace_is_bounded() -> Result<(), ConfigError> {
        let text = |grace: &str| {
            GOOD.replace(
                "danger_plaintext = true",
                &format!("danger_plaintext = true\nshutdown_grace_seconds = {grace}"),
            )
        };
        assert_eq!(
            Config::parse(Path::new("x"), &text("0"))?
                .server
                .shutdown_grace_seconds,
            0
        );
        let err = Config::parse(Path::new("x"), &text("3601"))
            .map(drop)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("server.shutdown_grace_seconds"), "{err}");
        Ok(())
    }

    #[test]
    fn quarantine_settings_are_read_and_checked() -> Result<(), ConfigError> {
        let text = format!(
            "{GOOD}
[signing]
quarantine_after = 0
quarantine_probe_ms = 250
"
        );
        let c = Config::parse(Path::new("x"), &text)?;
        assert_eq!(c.signing.quarantine_after, 0);
        assert_eq!(c.signing.quarantine_probe_ms, 250);
        let zero = text.replace("quarantine_probe_ms = 250", "quarantine_probe_ms = 0");
        let err = Config::parse(Path::new("x"), &zero)
            .map(drop)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("signing.quarantine_probe_ms"), "{err}");
        Ok(())
    }

    #[test]
    fn audit_fsync_needs_a_file() {
        let text = GOOD.to_owned() + "\n[audit]\nstdout = true\nfsync = true\n";
        let err = Config::parse(Path::new("x.toml"), &text)
            .map(drop)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("field `audit.fsync`: needs audit.file"),
            "{err}"
        );
        let text = GOOD.to_owned() + "\n[audit]\nfile = \"/var/log/a.jsonl\"\nfsync = true\n";
        assert!(Config::parse(Path::new("x.toml"), &text).is_ok_and(|c| c.audit.fsync));
    }

    #[test]
    fn connection_limits_of_zero_are_refused() {
        for key in [
            "max_connections",
            "max_concurrent_streams",
            "handshake_timeout_ms",
        ] {
            let text = GOOD.replace(
                "danger_plaintext = true",
                &format!("danger_plaintext = true\n{key} = 0"),
            );
            let err = Config::parse(Path::new("x.toml"), &text)
                .map(drop)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                err.contains(&format!(
                    "x.toml:5: field `server.{key}`: must be at least 1"
                )),
                "{err}"
            );
        }
        let off = GOOD.replace(
            "danger_plaintext = true",
            "danger_plaintext = true\nkeepalive_seconds = 0",
        );
        assert!(Config::parse(Path::new("x.toml"), &off).is_ok());
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let text = GOOD
            .replace("workers", "x")
            .replace("[pkcs11]", "[pkcs11]\nwrokers = 4");
        let err = Config::parse(Path::new("x.toml"), &text)
            .map(drop)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("x.toml: "), "{err}");
        assert!(err.contains("line 7"), "{err}");
        assert!(err.contains("wrokers"), "{err}");
    }

    #[test]
    fn literal_pin_and_bad_values_are_refused() {
        let lit = GOOD.replace(r#"pin = { file = "/etc/sigild/pin" }"#, r#"pin = "1234""#);
        assert!(Config::parse(Path::new("x"), &lit).is_err());
        let no_tls = GOOD.replace("danger_plaintext = true", "");
        let err = Config::parse(Path::new("x"), &no_tls)
            .map(drop)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("server.tls"), "{err}");
        let slot = GOOD.replace("pkcs11:token=sigild-dev", "pkcs11:slot-id=0");
        let err = Config::parse(Path::new("x"), &slot)
            .map(drop)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("pkcs11.token"), "{err}");
    }

    #[test]
    fn auth_sections_parse_into_a_policy() -> Result<(), ConfigError> {
        let text = GOOD.replace("danger_plaintext = true", "")
            + r#"
[server.tls]
cert = "/etc/sigild/server.pem"
key = "/etc/sigild/server.key"
client_ca = ["/etc/sigild/ca.pem"]
identity = "dns"

[server.unix]
path = "/run/sigild.sock"
mode = "0660"

[[caller]]
identity = "idp.example.org"
keys = ["idp-*"]
operations = ["id-token", "jws"]
iss = ["https://op.example.com"]
rate = "100/s"

[[caller]]
uid = 1000
keys = ["client-a-dpop"]
operations = ["dpop"]
htu_prefix = ["https://as.example.com/"]

[[caller]]
identity = "admin.example.org"
admin = true

[limits]
per_key = "1000/s"

[audit]
stdout = true
fail_closed = true
"#;
        let c = Config::parse(Path::new("x.toml"), &text)?;
        assert_eq!(c.callers.len(), 3);
        let p = crate::app::policy(&c);
        use crate::jose::TokenType;
        use crate::policy::{Caller, Operation, Request};
        let r = |op, key| Request {
            op,
            key,
            claims: None,
            typ: None,
        };
        assert!(
            p.evaluate(
                &Caller::tls("idp.example.org"),
                &r(Operation::Sign(TokenType::IdToken), "idp-1")
            )
            .is_ok()
        );
        assert!(
            p.evaluate(
                &Caller::unix(1000, 5),
                &r(Operation::Sign(TokenType::Dpop), "client-a-dpop")
            )
            .is_ok()
        );
        assert!(
            p.evaluate(
                &Caller::tls("admin.example.org"),
                &r(Operation::Admin, "any")
            )
            .is_ok()
        );
        assert!(
            p.evaluate(
                &Caller::tls("admin.example.org"),
                &r(Operation::Sign(TokenType::Jws), "any")
            )
            .is_err()
        );
        Ok(())
    }

    #[test]
    fn every_policy_mistake_is_reported_with_its_line() {
        let text = GOOD.to_owned()
            + r#"
[[caller]]
identity = "a"
keys = ["*"]
operations = ["jws", "sign-everything"]

[[caller]]
uid = 5
operations = ["raw"]
iss = ["x"]
rate = "lots"

[limits]
per_key = "1/d"
"#;
        let err = Config::parse(Path::new("p.toml"), &text)
            .map(drop)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines.contains(&"p.toml:14: field `caller[0].operations[1]`: unknown operation \"sign-everything\"; expected one of jws, raw, tls, id-token, jar, client-assertion, dpop, jarm, introspection, access-token, logout, userinfo, ciba, http-request, http-response, digest, decrypt (key administration is admin = true)"),
            "{err}"
        );
        assert!(err.contains("p.toml:20: field `caller[1].rate`"), "{err}");
        assert!(err.contains("field `caller[1].keys`"), "{err}");
        assert!(
            err.contains("p.toml:18: field `caller[1].operations`: raw, tls and digest"),
            "{err}"
        );
        assert!(err.contains("uid/gid rules need a Unix socket"), "{err}");
        assert!(err.contains("p.toml:23: field `limits.per_key`"), "{err}");
    }

    #[test]
    fn typ_lists_and_target_uri_prefixes_are_read_and_checked() -> Result<(), ConfigError> {
        let good = GOOD.to_owned()
            + r#"
[[caller]]
identity = "as"
keys = ["as-*"]
operations = ["access-token", "jws", "http-request"]
jws_typs = ["", "JWT", "at+jwt"]
target_uri_prefix = ["https://rs.example.com/"]
"#;
        let c = Config::parse(Path::new("t.toml"), &good)?;
        let p = crate::app::policy(&c);
        use crate::jose::TokenType;
        use crate::policy::{Caller, Claims, Operation, Request};
        let claims = Some(Claims::default());
        let jws = |typ| Request {
            op: Operation::Sign(TokenType::Jws),
            key: "as-1",
            claims: Some(&claims),
            typ,
        };
        let a = Caller::tls("as");
        assert!(p.evaluate(&a, &jws(Some("at+jwt"))).is_ok());
        assert!(p.evaluate(&a, &jws(None)).is_ok());
        assert!(p.evaluate(&a, &jws(Some("logout+jwt"))).is_err());
        let http = Some(Claims {
            target_uri: Some("https://rs.example.com/x".into()),
            ..Claims::default()
        });
        let req = Request {
            op: Operation::Sign(TokenType::HttpRequest),
            key: "as-1",
            claims: Some(&http),
            typ: None,
        };
        assert!(p.evaluate(&a, &req).is_ok());

        let bad = GOOD.to_owned()
            + r#"
[[caller]]
identity = "a"
keys = ["*"]
operations = ["id-token", "tls"]
jws_typs = ["logout+jwt", " JWT"]
target_uri_prefix = ["https://rs/"]

[[caller]]
identity = "b"
keys = ["*"]
operations = ["jws"]
jws_typs = []
"#;
        let err = Config::parse(Path::new("t.toml"), &bad)
            .map(drop)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for want in [
            "field `caller[0].jws_typs`: has no effect: the rule's operations do not include jws",
            "field `caller[0].jws_typs[0]`: \"logout+jwt\" is the typ of logout tokens: a generic JWS with it also needs logout in operations",
            "field `caller[0].jws_typs[1]`: \" JWT\" has surrounding spaces",
            "field `caller[0].operations`: raw, tls and digest signatures carry no claims, so they cannot be combined with iss, aud, client_id, htu_prefix or target_uri_prefix",
            "field `caller[0].target_uri_prefix`: has no effect: none of this rule's operations (id-token, tls) signs a target_uri claim",
            "field `caller[1].jws_typs`: an empty list allows no generic JWS",
        ] {
            assert!(err.contains(want), "{want}\n{err}");
        }
        Ok(())
    }

    #[test]
    fn decryption_rules_and_limit_are_read_and_checked() -> Result<(), ConfigError> {
        let base = GOOD;
        let c = Config::parse(Path::new("d.toml"), base)?;
        assert_eq!(c.decryption.max_jwe_bytes, 1024 * 1024);
        let text = format!(
            "{base}\n[decryption]\nmax_jwe_bytes = 8192\n\n[[caller]]\nidentity = \"rp\"\nkeys = [\"rp-enc\"]\noperations = [\"decrypt\"]\njwe_algs = [\"RSA-OAEP-256\", \"ECDH-ES+A256KW\"]\njwe_encs = [\"A256GCM\"]\n"
        );
        let c = Config::parse(Path::new("d.toml"), &text)?;
        assert_eq!(c.decryption.max_jwe_bytes, 8192);
        let p = crate::app::policy(&c);
        let rp = crate::policy::Caller::tls("rp");
        use crate::jose::{JweAlg, JweEnc};
        assert!(
            p.evaluate_jwe(&rp, "rp-enc", JweAlg::RsaOaep256, JweEnc::A256Gcm)
                .is_some()
        );
        assert!(
            p.evaluate_jwe(&rp, "rp-enc", JweAlg::RsaOaep, JweEnc::A256Gcm)
                .is_none()
        );
        assert!(
            p.evaluate_jwe(&rp, "rp-enc", JweAlg::RsaOaep256, JweEnc::A128Gcm)
                .is_none()
        );
        assert!(
            p.evaluate_jwe(&rp, "other", JweAlg::RsaOaep256, JweEnc::A256Gcm)
                .is_none()
        );

        let bad = format!("{base}\n[decryption]\nmax_jwe_bytes = 10\n");
        let err = Config::parse(Path::new("d.toml"), &bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("decryption.max_jwe_bytes"), "{err}");
        let bad = format!(
            "{base}\n[[caller]]\nidentity = \"rp\"\nkeys = [\"k\"]\noperations = [\"jws\"]\njwe_algs = [\"RSA1_5\"]\njwe_encs = []\n"
        );
        let err = Config::parse(Path::new("d.toml"), &bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("field `caller[0].jwe_algs[0]`: unknown \"RSA1_5\""),
            "{err}"
        );
        assert!(
            err.contains("field `caller[0].jwe_algs`: has no effect"),
            "{err}"
        );
        assert!(
            err.contains("field `caller[0].jwe_encs`: an empty list allows nothing"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn the_example_config_parses() -> Result<(), ConfigError> {
        let text = include_str!("../../hsm-config/sigild.example.toml");
        let c = Config::parse(Path::new("sigild.example.toml"), text)?;
        assert_eq!(c.callers.len(), 7);
        assert_eq!(c.decryption.max_jwe_bytes, 1024 * 1024);
        assert!(c.callers.iter().any(|r| r.operations == ["decrypt"]));
        assert!(
            c.callers
                .iter()
                .any(|r| r.target_uri_prefix.is_some() && r.operations == ["http-response"])
        );
        Ok(())
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The example configs shipped in `hsm-config/` must stay valid.
    #[test]
    fn shipped_examples_parse() -> Result<(), ConfigError> {
        for (name, text) in [
            (
                "sigild-softhsm.toml",
                include_str!("../../hsm-config/sigild-softhsm.toml"),
            ),
            (
                "sigild-network-hsm.toml",
                include_str!("../../hsm-config/sigild-network-hsm.toml"),
            ),
        ] {
            Config::parse(Path::new(name), text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod proptests;
