//! Reload without a restart (SIGHUP): the TCP listener's certificate, key and client CAs
//! (`[server.tls]` `cert`, `key`, `client_ca`), and the caller policy (`[[caller]]` rules and
//! `[limits]`), read again from the config file the daemon was started with.
//!
//! All or nothing: the file is read and validated and every new piece built (the rustls
//! configuration from the files it names, the policy) before anything is swapped, so a broken
//! file (TOML error, a rule that does not validate, a certificate that does not parse, a key
//! that does not match it, a key file readable by others) leaves the daemon exactly as it was,
//! and the error says why. Nothing is dropped: connections already open keep the TLS session
//! they made (only new handshakes see the new certificate and CAs), and a request in flight
//! finishes under the policy it was checked against. Settings that need a restart (listen
//! address, device, limits of the listeners, audit sink, …) are named in the answer and left
//! as they are.
//!
//! Owns: [`CurrentTls`] (the listener's swappable TLS configuration), [`Reloader`] (one reload,
//! and the SIGHUP loop with systemd's RELOADING=1 / READY=1 around each) and the comparison
//! that finds settings needing a restart. Takes the policy builder from the composition root
//! ([`crate::app`]) rather than building policy itself; never touches a backend or the keyring.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::config::{Config, ConfigError};
use crate::policy::Policy;
use crate::service::Service;
use crate::tls::TlsError;

use super::notify;

/// The TLS configuration new connections are accepted with. Read once per accepted
/// connection (a lock held for an `Arc` clone); replaced by a reload.
#[derive(Debug)]
pub struct CurrentTls(RwLock<Arc<rustls::ServerConfig>>);

impl CurrentTls {
    /// The configuration the listener starts with.
    pub fn new(config: Arc<rustls::ServerConfig>) -> CurrentTls {
        CurrentTls(RwLock::new(config))
    }

    /// The configuration in effect now, for the next handshake.
    pub fn get(&self) -> Arc<rustls::ServerConfig> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Make `config` the one new handshakes use.
    fn set(&self, config: Arc<rustls::ServerConfig>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = config;
    }
}

/// Why a reload was refused (the daemon keeps running as it was).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config file cannot be read, parsed or validated.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS files the config names cannot be used.
    #[error("[server.tls]: {0}")]
    Tls(#[from] TlsError),
}

/// What a reload put in effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Whether a new TLS certificate, key and client CA set now serve new connections.
    pub tls: bool,
    /// The number of `[[caller]]` rules now in effect.
    pub callers: usize,
    /// Settings that differ from those in effect but need a restart (left as they are).
    pub restart_needed: Vec<&'static str>,
}

/// Reloads a running daemon from its config file; cheap to clone (the SIGHUP loop holds
/// one, tests and embedders may hold others). Reloads never overlap.
#[derive(Clone)]
pub struct Reloader {
    /// The config file the daemon was started with.
    path: PathBuf,
    /// Where the new policy goes.
    service: Arc<Service>,
    /// The TCP listener's TLS configuration; `None` with `danger_plaintext`.
    tls: Option<Arc<CurrentTls>>,
    /// Turns the config's `[[caller]]` and `[limits]` into a policy (the composition root's).
    policy: fn(&Config) -> Policy,
    /// The settings in effect: the start-up config with the reloadable parts of every reload
    /// applied, so a setting that needs a restart is reported at each reload until then. The
    /// lock also keeps two reloads from interleaving.
    running: Arc<Mutex<Config>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for a daemon started from `config`, read from `path`.
    pub fn new(
        path: &Path,
        config: Config,
        service: Arc<Service>,
        tls: Option<Arc<CurrentTls>>,
        policy: fn(&Config) -> Policy,
    ) -> Reloader {
        Reloader {
            path: path.to_owned(),
            service,
            tls,
            policy,
            running: Arc::new(Mutex::new(config)),
        }
    }

    /// Read the config file again and put its reloadable parts in effect, all or nothing.
    /// Blocking (reads files): call it off the async runtime.
    ///
    /// # Errors
    /// [`ReloadError`]: nothing was changed.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let new = Config::load(&self.path)?;
        // Build everything before swapping anything.
        let tls = match (&self.tls, &new.server.tls) {
            (Some(_), Some(t)) => Some(crate::tls::server_config(&t.cert, &t.key, &t.client_ca)?),
            // TLS turned on or off needs a restart (reported below).
            _ => None,
        };
        let policy = Arc::new((self.policy)(&new));
        let restart_needed = restart_needed(&running, &new);
        let reloaded = Reloaded {
            tls: tls.is_some(),
            callers: new.callers.len(),
            restart_needed,
        };
        if let (Some(current), Some(tls)) = (&self.tls, tls) {
            current.set(tls);
        }
        self.service.set_policy(policy);
        keep_reloadable(&mut running, new);
        Ok(reloaded)
    }

    /// Reload at every SIGHUP until `stop` completes, telling systemd (RELOADING=1, then
    /// READY=1) and the log what happened. A refused reload is logged as an error and the
    /// daemon goes on as it was; it never stops the daemon.
    pub async fn on_hangup(
        self,
        mut hangup: tokio::signal::unix::Signal,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                got = hangup.recv() => if got.is_none() { return },
            }
            notify::reloading();
            tracing::info!(config = %self.path.display(), "SIGHUP: reloading");
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.reload()).await {
                Ok(Ok(r)) => {
                    if !r.restart_needed.is_empty() {
                        tracing::warn!(
                            settings = %r.restart_needed.join(", "),
                            "changed settings that take effect only after a restart were left as they are"
                        );
                    }
                    tracing::info!(
                        tls = r.tls,
                        callers = r.callers,
                        "reloaded: TLS certificate and client CAs (for new connections), caller rules and limits"
                    );
                    notify::status("reloaded");
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "reload refused; the running configuration stays in effect");
                    notify::status("reload refused; running with the previous configuration");
                }
                Err(e) => tracing::error!(error = %e, "reload task failed"),
            }
            notify::ready();
        }
    }
}

/// The settings in effect after a reload: `running` with `new`'s reloadable parts (callers,
/// limits, the TLS files when TLS stays on); everything else as it was.
fn keep_reloadable(running: &mut Config, new: Config) {
    running.callers = new.callers;
    running.limits = new.limits;
    if let (Some(r), Some(n)) = (running.server.tls.as_mut(), new.server.tls) {
        r.cert = n.cert;
        r.key = n.key;
        r.client_ca = n.client_ca;
    }
}

/// The settings that differ between `running` and `new` but are not reloaded. Compared by
/// their `Debug` text (every config type has one, secrets only by location), so a table
/// added later is still noticed: as "other settings" until it is named here.
fn restart_needed(running: &Config, new: &Config) -> Vec<&'static str> {
    fn differs(a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug) -> bool {
        format!("{a:?}") != format!("{b:?}")
    }
    let (a, b) = (&running.server, &new.server);
    let identity = |s: &crate::config::ServerConfig| s.tls.as_ref().map(|t| t.identity);
    let named: [(&'static str, bool); 17] = [
        ("server.listen", a.listen != b.listen),
        (
            "server.concurrency_per_connection",
            a.concurrency_per_connection != b.concurrency_per_connection,
        ),
        (
            "server.max_connections",
            a.max_connections != b.max_connections,
        ),
        (
            "server.max_concurrent_streams",
            a.max_concurrent_streams != b.max_concurrent_streams,
        ),
        (
            "server.handshake_timeout_ms",
            a.handshake_timeout_ms != b.handshake_timeout_ms,
        ),
        (
            "server.keepalive_seconds",
            a.keepalive_seconds != b.keepalive_seconds,
        ),
        (
            "server.danger_plaintext",
            a.danger_plaintext != b.danger_plaintext,
        ),
        (
            "server.shutdown_grace_seconds",
            a.shutdown_grace_seconds != b.shutdown_grace_seconds,
        ),
        ("server.unix", differs(&a.unix, &b.unix)),
        ("server.tls", a.tls.is_some() != b.tls.is_some()),
        (
            "server.tls.identity",
            a.tls.is_some() && b.tls.is_some() && identity(a) != identity(b),
        ),
        ("pkcs11", differs(&running.pkcs11, &new.pkcs11)),
        ("yubikey", differs(&running.yubikey, &new.yubikey)),
        ("keyring", differs(&running.keyring, &new.keyring)),
        ("signing", differs(&running.signing, &new.signing)),
        ("decryption", differs(&running.decryption, &new.decryption)),
        ("audit", differs(&running.audit, &new.audit)),
    ];
    let mut out: Vec<&'static str> = named
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect();
    if out.is_empty() {
        let mut applied = running.clone();
        keep_reloadable(&mut applied, new.clone());
        if differs(&applied, new) {
            out.push("other settings");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const BASE: &str = r#"
[server]
listen = "127.0.0.1:0"

[server.tls]
cert = "/etc/sigild/server.pem"
key = "/etc/sigild/server.key"
client_ca = ["/etc/sigild/ca.pem"]

[[caller]]
identity = "spiffe://example.org/idp"
keys = ["idp-*"]
operations = ["jws"]

[pkcs11]
module = "/usr/lib/softhsm/libsofthsm2.so"
token = "pkcs11:token=sigild"
pin = { file = "/etc/sigild/pin" }
"#;

    fn parse(text: &str) -> Config {
        Config::parse(Path::new("sigild.toml"), text).unwrap()
    }

    #[test]
    fn callers_limits_and_tls_files_reload_the_rest_needs_a_restart() {
        let running = parse(BASE);
        assert!(restart_needed(&running, &parse(BASE)).is_empty());
        let reloadable = BASE
            .replace("server.pem", "server-2026.pem")
            .replace("idp-*", "*")
            .replace(
                "[pkcs11]",
                "[limits]\nper_key = \"100/s\"\n\n[[caller]]\nidentity = \"spiffe://example.org/rs\"\noperations = [\"jws\"]\nkeys = [\"*\"]\n\n[pkcs11]",
            );
        assert!(restart_needed(&running, &parse(&reloadable)).is_empty());
        let restart = BASE
            .replace("127.0.0.1:0", "127.0.0.1:7700")
            .replace("token=sigild", "token=other")
            .replace(
                "client_ca = [\"/etc/sigild/ca.pem\"]",
                "client_ca = [\"/etc/sigild/ca.pem\"]\nidentity = \"cn\"",
            );
        assert_eq!(
            restart_needed(&running, &parse(&restart)),
            vec!["server.listen", "server.tls.identity", "pkcs11"]
        );
        let plain = BASE.replace(
            "[server.tls]\ncert = \"/etc/sigild/server.pem\"\nkey = \"/etc/sigild/server.key\"\nclient_ca = [\"/etc/sigild/ca.pem\"]\n",
            "danger_plaintext = true\n",
        );
        let plain = plain.replace(
            "identity = \"spiffe://example.org/idp\"",
            "danger_plaintext = true",
        );
        assert_eq!(
            restart_needed(&running, &parse(&plain)),
            vec!["server.danger_plaintext", "server.tls"]
        );
    }

    #[test]
    fn a_setting_left_for_a_restart_is_reported_again_until_then() {
        let mut running = parse(BASE);
        let new = parse(
            &BASE
                .replace("127.0.0.1:0", "127.0.0.1:7700")
                .replace("idp-*", "*"),
        );
        assert_eq!(restart_needed(&running, &new), vec!["server.listen"]);
        keep_reloadable(&mut running, new.clone());
        assert_eq!(
            running.callers[0].keys.as_deref(),
            Some(&["*".to_owned()][..])
        );
        assert_eq!(restart_needed(&running, &new), vec!["server.listen"]);
    }
}
