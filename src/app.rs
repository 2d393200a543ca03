//! The composition root: config → backend → keyring → policy, audit → service → servers.
//!
//! The only place that names concrete backends and the only place that turns the plain data of
//! [`crate::config`] into the settings and objects each part owns (backend settings, the caller
//! policy, the audit writer, service options). Adding a backend means a `backend/x/` module, a
//! `config/x.rs` table and one arm in `open_backend`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::audit::{Audit, AuditError};
use crate::backend::pkcs11::{Pkcs11Backend, Pkcs11Settings};
use crate::backend::{Backend, BackendError};
use crate::config::{AuditConfig, CallerConfig, Config, ConfigError, LimitsConfig};
use crate::keyring::Keyring;
use crate::policy::{KeyPattern, Operation, Policy, Rate, Rule, Who};
use crate::server::{ServeError, Serving};
use crate::service::{Service, ServiceOptions, SystemClock};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backend cannot be used (module, PIN).
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    /// The servers could not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The audit trail cannot be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A start-up task or thread failed.
    #[error("start-up: {0}")]
    Thread(String),
}

/// A running daemon.
pub struct Running {
    /// The servers (address, socket, stop).
    pub serving: Serving,
    /// The service, for in-process callers (dev-mode key set-up, benchmarks).
    pub service: Arc<Service>,
    /// The PKCS#11 backend when that is the device, for benchmarks that compare the daemon with
    /// direct calls on the same token.
    pub pkcs11: Option<Arc<Pkcs11Backend>>,
    /// The device, released last at shutdown (workers joined, then the module finalised), so
    /// no device call races the process's teardown.
    backend: Arc<dyn Backend>,
}

impl Running {
    /// The TCP address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.serving.addr
    }

    /// Run until the servers stop by themselves or `signal` completes, then shut down.
    ///
    /// # Errors
    /// The servers' own error, if they failed.
    pub async fn run_until(
        self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), StartError> {
        let served = self.serving.run_until(signal).await;
        drop(self.service);
        drop(self.pkcs11);
        let backend = self.backend;
        tokio::task::spawn_blocking(move || backend.shutdown())
            .await
            .map_err(|e| StartError::Thread(format!("device shutdown: {e}")))?;
        Ok(served?)
    }
}

/// Start the daemon on the configured address.
///
/// # Errors
/// [`StartError`]: config, module, PIN or listener problems. An absent token is not an error:
/// the daemon starts NOT_SERVING and answers UNAVAILABLE until the token appears.
pub async fn start(config: &Config, config_path: &Path) -> Result<Running, StartError> {
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    start_on(config, config_path, listener).await
}

/// Start the daemon on an already-bound listener.
///
/// # Errors
/// As for [`start`].
pub async fn start_on(
    config: &Config,
    config_path: &Path,
    listener: TcpListener,
) -> Result<Running, StartError> {
    let (backend, pkcs11, startup_issue) = open_backend(config, config_path).await?;
    if let Some(issue) = &startup_issue {
        tracing::warn!(error = %issue, "device not usable yet; serving NOT_SERVING until it is");
    }
    let keyring = Arc::new(Keyring::new(Arc::clone(&backend)));
    if startup_issue.is_none()
        && let Err(e) = keyring.refresh().await
    {
        tracing::warn!(error = %e, "cannot load the keyring yet");
    }
    let audit = Arc::new(open_audit(&config.audit)?);
    let service = Arc::new(
        Service::new(keyring, Arc::new(SystemClock), service_options(config))
            .with_access(Arc::new(policy(config)), audit),
    );
    let refresh = Duration::from_secs(config.keyring.refresh_seconds);
    let serving =
        crate::server::serve(Arc::clone(&service), &config.server, refresh, listener).await?;
    Ok(Running {
        serving,
        service,
        pkcs11,
        backend,
    })
}

/// The configured device as the keyring sees it, the PKCS#11 backend itself when that is the
/// device, and a start-up issue that is not fatal (device absent).
type OpenedBackend = (
    Arc<dyn Backend>,
    Option<Arc<Pkcs11Backend>>,
    Option<BackendError>,
);

/// Open the one configured device (`[pkcs11]` or `[yubikey]`) off the async runtime.
async fn open_backend(config: &Config, config_path: &Path) -> Result<OpenedBackend, StartError> {
    let join = |e: tokio::task::JoinError| StartError::Thread(format!("backend start task: {e}"));
    #[cfg(feature = "yubikey")]
    if let Some(yk) = &config.yubikey {
        let settings = yubikey_settings(yk, config_path)?;
        let (backend, issue) = tokio::task::spawn_blocking(move || {
            crate::backend::yubikey::YubikeyBackend::open(settings)
        })
        .await
        .map_err(join)??;
        return Ok((Arc::new(backend), None, issue));
    }
    let settings = pkcs11_settings(config, config_path)?;
    let (backend, issue) = tokio::task::spawn_blocking(move || Pkcs11Backend::open(settings))
        .await
        .map_err(join)??;
    let backend = Arc::new(backend);
    Ok((backend.clone(), Some(backend), issue))
}

/// The PKCS#11 backend's settings from `[pkcs11]`, reading the PIN now.
///
/// # Errors
/// [`ConfigError::Invalid`] when the table is missing or the PIN cannot be read.
pub fn pkcs11_settings(config: &Config, path: &Path) -> Result<Pkcs11Settings, ConfigError> {
    let invalid = |field, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        field,
        message,
    };
    let p11 = config
        .pkcs11
        .as_ref()
        .ok_or_else(|| invalid("pkcs11", "no [pkcs11] table".into()))?;
    Ok(Pkcs11Settings {
        module: p11.module.clone(),
        token: p11.token_uri().map_err(|e| invalid("pkcs11.token", e))?,
        pin: p11
            .pin
            .read()
            .map_err(|e| invalid("pkcs11.pin", e.to_string()))?,
        workers: p11.workers,
        queue_depth: p11.queue_depth,
        max_abandoned_workers: p11.max_abandoned_workers,
    })
}

/// The YubiKey backend's settings from `[yubikey]`, reading the PIN and management key now.
///
/// # Errors
/// [`ConfigError::Invalid`] when a secret cannot be read or is malformed.
#[cfg(feature = "yubikey")]
pub fn yubikey_settings(
    yk: &crate::config::YubikeyConfig,
    path: &Path,
) -> Result<crate::backend::yubikey::YubikeySettings, ConfigError> {
    use crate::backend::yubikey::{PinPolicySetting, TouchPolicySetting, YubikeySettings};
    use crate::config::{PinPolicy, TouchPolicy};
    let (pin, management_key) = yk.secrets(path)?;
    Ok(YubikeySettings {
        serial: yk.serial,
        pin,
        management_key,
        slots: yk.slots().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            field: "yubikey.slots",
            message,
        })?,
        pin_policy: match yk.pin_policy {
            PinPolicy::Default => PinPolicySetting::Default,
            PinPolicy::Never => PinPolicySetting::Never,
            PinPolicy::Once => PinPolicySetting::Once,
            PinPolicy::Always => PinPolicySetting::Always,
        },
        touch_policy: match yk.touch_policy {
            TouchPolicy::Never => TouchPolicySetting::Never,
            TouchPolicy::Always => TouchPolicySetting::Always,
            TouchPolicy::Cached => TouchPolicySetting::Cached,
        },
        queue_depth: yk.queue_depth,
        timeout: Duration::from_millis(yk.timeout_ms),
    })
}

/// The service's options from `[signing]`.
pub fn service_options(config: &Config) -> ServiceOptions {
    ServiceOptions {
        max_payload_bytes: config.signing.max_payload_bytes,
        sign_timeout: Duration::from_millis(config.signing.timeout_ms),
        verify_signatures: config.signing.verify_signatures,
        quarantine_after: config.signing.quarantine_after,
        quarantine_probe: Duration::from_millis(config.signing.quarantine_probe_ms),
    }
}

/// Open the configured audit sink.
///
/// # Errors
/// [`AuditError::Open`].
pub fn open_audit(audit: &AuditConfig) -> Result<Audit, AuditError> {
    match (&audit.file, audit.stdout) {
        (Some(p), _) => Audit::file(p, audit.fail_closed),
        (None, true) => Ok(Audit::stdout(audit.fail_closed)),
        (None, false) => Ok(Audit::off()),
    }
}

/// The caller policy that `[[caller]]` and `[limits]` describe (invalid entries were refused
/// when the config was parsed).
pub fn policy(config: &Config) -> Policy {
    policy_of(&config.callers, &config.limits)
}

fn policy_of(callers: &[CallerConfig], limits: &LimitsConfig) -> Policy {
    let rate = |r: &Option<String>| r.as_deref().and_then(|r| Rate::parse(r).ok());
    let rules = callers
        .iter()
        .map(|c| Rule {
            who: match (&c.identity, c.uid, c.gid, c.danger_plaintext) {
                (Some(i), _, _, _) => Some(Who::Identity(i.clone())),
                (None, Some(u), _, _) => Some(Who::Uid(u)),
                (None, None, Some(g), _) => Some(Who::Gid(g)),
                (None, None, None, true) => Some(Who::Plaintext),
                _ => None,
            },
            keys: match &c.keys {
                Some(k) => k.iter().map(|k| KeyPattern::new(k.as_str())).collect(),
                // Admin-only rules without keys administer every key.
                None if c.admin => vec![KeyPattern::new("*")],
                None => Vec::new(),
            },
            operations: c
                .operations
                .iter()
                .filter_map(|o| Operation::parse(o))
                .collect(),
            admin: c.admin,
            iss: c.iss.clone(),
            aud: c.aud.clone(),
            client_id: c.client_id.clone(),
            htu_prefix: c.htu_prefix.clone(),
            rate: rate(&c.rate),
        })
        .collect();
    Policy::new(rules, rate(&limits.per_key)).with_per_caller(rate(&limits.per_caller))
}

/// A daemon running on its own OS thread and tokio runtime (benchmarks and embedding: the
/// caller's runtime and the daemon's do not share worker threads, as with separate processes).
pub struct Detached {
    /// Bound address.
    pub addr: SocketAddr,
    /// The service, for in-process calls.
    pub service: Arc<Service>,
    /// The PKCS#11 backend when that is the device, for direct comparisons.
    pub pkcs11: Option<Arc<Pkcs11Backend>>,
    /// The daemon's runtime, so callers can serve more listeners on it (benchmarks).
    pub runtime: tokio::runtime::Handle,
    /// Tells the daemon thread to shut down.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The daemon thread.
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the daemon thread reports once it is serving.
type Ready = (
    SocketAddr,
    tokio::runtime::Handle,
    Arc<Service>,
    Option<Arc<Pkcs11Backend>>,
);

impl Detached {
    /// Start the daemon on a new thread; `threads` = 0 runs a current-thread runtime.
    ///
    /// # Errors
    /// As for [`start_on`], plus runtime creation.
    pub fn start(
        config: Config,
        config_path: PathBuf,
        listen: SocketAddr,
        threads: usize,
    ) -> Result<Detached, StartError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Ready, StartError>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let listen_err = move |source| {
            StartError::Serve(ServeError::Listen {
                addr: listen,
                source,
            })
        };
        let thread = std::thread::Builder::new()
            .name("sigild-daemon".into())
            .spawn(move || {
                let rt = if threads == 0 {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                } else {
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(threads)
                        .enable_all()
                        .build()
                };
                let rt = match rt {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(listen_err(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let started = match TcpListener::bind(listen).await {
                        Ok(l) => start_on(&config, &config_path, l).await,
                        Err(e) => Err(listen_err(e)),
                    };
                    match started {
                        Ok(running) => {
                            let ready = (
                                running.addr(),
                                tokio::runtime::Handle::current(),
                                Arc::clone(&running.service),
                                running.pkcs11.clone(),
                            );
                            let _ = ready_tx.send(Ok(ready));
                            let _ = running
                                .run_until(async {
                                    let _ = stop_rx.await;
                                })
                                .await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(listen_err)?;
        let (addr, runtime, service, pkcs11) = ready_rx
            .recv()
            .map_err(|_| StartError::Thread("daemon thread exited during start".into()))??;
        Ok(Detached {
            addr,
            service,
            pkcs11,
            runtime,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Stop the daemon and wait for its thread.
    pub fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
