//! `[ops]` (the operations listener: liveness, readiness, Prometheus metrics) and `[log]` (the
//! format of the daemon's log lines), as plain data.
//!
//! ```toml
//! [ops]
//! listen = "127.0.0.1:7712"          # plain HTTP; loopback unless a scraper elsewhere needs it
//! [ops.tls]                          # optional: HTTPS
//! cert = "/etc/sigild/ops.pem"
//! key = "/etc/sigild/ops.key"        # mode 0600
//! client_ca = []                     # optional: require client certificates from these CAs
//!
//! [log]
//! format = "json"                    # or "text" (default); SIGILD_LOG_FORMAT overrides
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// `[ops]`: where `/livez`, `/readyz` and `/metrics` are served. Without the table, nowhere.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// TCP address; loopback by default, so metrics are not published by accident.
    #[serde(default = "default_ops_listen")]
    pub listen: SocketAddr,
    /// Serve HTTPS instead of plain HTTP.
    #[serde(default)]
    pub tls: Option<OpsTlsConfig>,
}

/// `[ops.tls]`: the operations listener's certificate, and optionally the CAs its clients'
/// certificates must chain to (a Prometheus with a client certificate; Kubernetes probes send
/// none, so leave it empty when the kubelet probes this listener).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsTlsConfig {
    /// Server certificate chain, PEM.
    pub cert: PathBuf,
    /// Server private key, PEM; must not be readable by group or others.
    pub key: PathBuf,
    /// CA certificates client certificates must chain to; empty: no client certificate asked.
    #[serde(default)]
    pub client_ca: Vec<PathBuf>,
}

/// The address of the operations listener when `[ops]` names none (also `sigild dev`'s).
pub const DEFAULT_OPS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7712);

fn default_ops_listen() -> SocketAddr {
    DEFAULT_OPS_LISTEN
}

impl OpsConfig {
    /// Plain HTTP on [`DEFAULT_OPS_LISTEN`]: `sigild dev`'s.
    pub fn loopback() -> OpsConfig {
        OpsConfig {
            listen: DEFAULT_OPS_LISTEN,
            tls: None,
        }
    }

    /// The checks that need only the file.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the field.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if let Some(tls) = &self.tls
            && (tls.cert.as_os_str().is_empty() || tls.key.as_os_str().is_empty())
        {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                field: "ops.tls",
                message: "cert and key must both name files".into(),
            });
        }
        Ok(())
    }

    /// The files `[ops.tls]` names, read as the listener will read them: each problem as
    /// (field, message).
    pub fn check_files(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(t) = &self.tls {
            if let Err(e) = crate::tls::read_certificates(std::slice::from_ref(&t.cert)) {
                out.push(("ops.tls.cert".to_owned(), e.to_string()));
            }
            if let Err(e) = crate::secret::SecretSource::File(t.key.clone()).read() {
                out.push(("ops.tls.key".to_owned(), e.to_string()));
            }
            for (i, ca) in t.client_ca.iter().enumerate() {
                if let Err(e) = crate::tls::read_certificates(std::slice::from_ref(ca)) {
                    out.push((format!("ops.tls.client_ca[{i}]"), e.to_string()));
                }
            }
        }
        out
    }
}

/// `[log]`: how log lines are written (to stderr).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` (one object per line) for log collectors; the environment
    /// variable `SIGILD_LOG_FORMAT` overrides it.
    #[serde(default)]
    pub format: LogFormat,
}

/// The log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event, with the event's fields (the request id among them).
    Json,
}

impl LogFormat {
    /// The format named by `SIGILD_LOG_FORMAT`'s value (`text` or `json`, any case).
    pub fn parse(name: &str) -> Option<LogFormat> {
        match name.trim().to_ascii_lowercase().as_str() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        ops: OpsConfig,
        #[serde(default)]
        log: LogConfig,
    }

    #[test]
    fn ops_defaults_to_loopback_plain_http() {
        let d: Doc = toml::from_str("[ops]\n").unwrap();
        assert_eq!(d.ops.listen, DEFAULT_OPS_LISTEN);
        assert!(d.ops.tls.is_none());
        assert_eq!(d.log.format, LogFormat::Text);
    }

    #[test]
    fn ops_tls_and_json_logs_parse_and_typos_do_not() {
        let d: Doc = toml::from_str(
            "[ops]\nlisten = \"0.0.0.0:9000\"\n[ops.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[log]\nformat = \"json\"\n",
        )
        .unwrap();
        assert_eq!(d.ops.listen.port(), 9000);
        assert!(d.ops.tls.unwrap().client_ca.is_empty());
        assert_eq!(d.log.format, LogFormat::Json);
        assert!(toml::from_str::<Doc>("[ops]\nlisen = \"127.0.0.1:1\"\n").is_err());
        assert!(toml::from_str::<Doc>("[ops]\n[log]\nformat = \"xml\"\n").is_err());
        assert_eq!(LogFormat::parse(" JSON"), Some(LogFormat::Json));
        assert_eq!(LogFormat::parse("yaml"), None);
    }

    #[test]
    fn missing_tls_files_are_named() {
        let d: Doc = toml::from_str(
            "[ops]\n[ops.tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\nclient_ca = [\"/nonexistent/ca.pem\"]\n",
        )
        .unwrap();
        let fields: Vec<String> = d.ops.check_files().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            ["ops.tls.cert", "ops.tls.key", "ops.tls.client_ca[0]"]
        );
    }
}
