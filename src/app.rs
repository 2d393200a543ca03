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

use tokio::net::TcpSocket;
use tokio::sync::watch;

use crate::audit::{Audit, AuditError, Durability};
use crate::backend::pkcs11::{Pkcs11Backend, Pkcs11Settings};
use crate::backend::{Backend, BackendError};
use crate::config::{AuditConfig, CallerConfig, Config, ConfigError, LimitsConfig, ServerConfig};
use crate::jose::{JweAlg, JweEnc};
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
    /// A stop was requested ([`Stop`]) before the daemon was serving; everything opened so far
    /// was released in order. Not a failure: a daemon told to stop while starting exits 0.
    #[error("stopped during start-up")]
    Stopped,
}

/// Whether the daemon has been told to stop (SIGTERM, SIGINT, [`Detached::shutdown`]): checked
/// between the steps of start-up and awaited while serving. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Stop(watch::Receiver<bool>);

/// The side of a [`Stop`] that asks for the stop; dropping it asks too, so a daemon whose
/// owner has gone does not run on unowned.
#[derive(Debug)]
pub struct Stopper(watch::Sender<bool>);

impl Stop {
    /// A stop request not yet made, and what makes it.
    pub fn new() -> (Stopper, Stop) {
        let (tx, rx) = watch::channel(false);
        (Stopper(tx), Stop(rx))
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }

    /// [`StartError::Stopped`] when a stop was requested: the check between start-up steps.
    ///
    /// # Errors
    /// [`StartError::Stopped`].
    pub fn check(&self) -> Result<(), StartError> {
        if self.requested() {
            return Err(StartError::Stopped);
        }
        Ok(())
    }

    /// Wait until a stop is requested.
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        // An error means the Stopper is gone, which asks for the stop too.
        let _ = rx.wait_for(|s| *s).await;
    }
}

impl Stopper {
    /// Ask the daemon to stop.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// A running daemon.
pub struct Running {
    /// The servers (address, socket, stop).
    pub serving: Serving,
    /// The service, for in-process callers (benchmarks).
    pub service: Arc<Service>,
    /// The PKCS#11 backend when that is the device, for benchmarks that compare the daemon with
    /// direct calls on the same token.
    pub pkcs11: Option<Arc<Pkcs11Backend>>,
    /// The device, released last at shutdown (workers joined, then the module finalised), so
    /// no device call races the process's teardown.
    device: Device,
    /// The operations listener (`[ops]`), stopped after the device is released so probes see
    /// the drain (`/readyz` 503) to its end.
    ops: Option<crate::ops::OpsServer>,
}

impl Running {
    /// The TCP address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.serving.addr
    }

    /// What reloads this daemon from `path` (SIGHUP): its TLS files and caller policy;
    /// `config` is the configuration it was started with.
    pub fn reloader(&self, config: &Config, path: &Path) -> crate::server::reload::Reloader {
        crate::server::reload::Reloader::new(
            path,
            config.clone(),
            Arc::clone(&self.service),
            self.serving.tls.clone(),
            policy,
        )
    }

    /// The operations listener's address, when one is served.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(crate::ops::OpsServer::addr)
    }

    /// Run until the servers stop by themselves or `signal` completes, then shut down in
    /// order: health NOT_SERVING and no new connections, in-flight requests finished within
    /// `[server] shutdown_grace_seconds` and the rest answered UNAVAILABLE, then the device
    /// released (workers joined, sessions closed, module finalised last).
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
        self.device.release().await;
        if let Some(ops) = self.ops {
            ops.stop().await;
        }
        Ok(served?)
    }
}

/// Reserve the configured TCP address: bound, so a port in use is reported at once, but not
/// yet listening, so connections are refused until the daemon is ready ([`Prepared::serve`]).
///
/// # Errors
/// [`ServeError::Listen`].
pub fn reserve(addr: SocketAddr) -> Result<TcpSocket, ServeError> {
    let listen = |source| ServeError::Listen { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(listen)?;
    // As a listener bound by tokio itself: a restarted daemon may bind while connections of the
    // previous one linger in TIME_WAIT.
    socket.set_reuseaddr(true).map_err(listen)?;
    socket.bind(addr).map_err(listen)?;
    Ok(socket)
}

/// Start the daemon on the configured address, once ready: the address is reserved first (a
/// port in use fails fast), connections are refused while the device is opened and the keyring
/// loaded, and accepted from then on.
///
/// # Errors
/// [`StartError`]: config, module, PIN or listener problems; [`StartError::Stopped`] when
/// `stop` was requested first. An absent token is not an error: the daemon starts NOT_SERVING
/// and answers UNAVAILABLE until the token appears.
pub async fn start(
    config: &Config,
    config_path: &Path,
    stop: &Stop,
) -> Result<Running, StartError> {
    let socket = reserve(config.server.listen)?;
    prepare(config, config_path, stop)
        .await?
        .serve(socket, stop)
        .await
}

/// A daemon whose device is open and keyring loaded, not yet serving: the place for start-up
/// steps that must be done before callers are let in (dev mode's default keys).
pub struct Prepared {
    /// The service, ready for in-process calls.
    service: Arc<Service>,
    /// The PKCS#11 backend when that is the device.
    pkcs11: Option<Arc<Pkcs11Backend>>,
    /// The device, released when start-up stops here.
    device: Device,
    /// The `[server]` table, for [`Prepared::serve`].
    server: ServerConfig,
    /// How often the keyring is re-read.
    refresh: Duration,
    /// The `[ops]` table, for [`Prepared::serve`].
    ops: Option<crate::config::OpsConfig>,
    /// Whether an operations listener that cannot be bound is only a warning
    /// ([`Prepared::ops_best_effort`]).
    ops_best_effort: bool,
}

/// Open the device and load the keyring, checking `stop` between the steps (a step already
/// running on the device is finished first, so the token is left as consistent as after any
/// completed operation).
///
/// # Errors
/// As for [`start`].
pub async fn prepare(
    config: &Config,
    config_path: &Path,
    stop: &Stop,
) -> Result<Prepared, StartError> {
    stop.check()?;
    let (backend, pkcs11, startup_issue) = open_backend(config, config_path).await?;
    let device = Device(Some(backend));
    match assemble(config, &device, startup_issue, stop).await {
        Ok(service) => Ok(Prepared {
            service,
            pkcs11,
            device,
            server: config.server.clone(),
            refresh: Duration::from_secs(config.keyring.refresh_seconds),
            ops: config.ops.clone(),
            ops_best_effort: false,
        }),
        Err(e) => {
            drop(pkcs11);
            device.release().await;
            Err(e)
        }
    }
}

/// The keyring, audit and service on an opened device.
async fn assemble(
    config: &Config,
    device: &Device,
    startup_issue: Option<BackendError>,
    stop: &Stop,
) -> Result<Arc<Service>, StartError> {
    let backend = device.backend()?;
    if let Some(issue) = &startup_issue {
        tracing::warn!(error = %issue, "device not usable yet; serving NOT_SERVING until it is");
    }
    stop.check()?;
    let keyring = Arc::new(
        Keyring::new(backend)
            .with_grace(Duration::from_secs(config.keyring.grace_seconds))
            .with_max_watchers(config.keyring.max_watchers),
    );
    if startup_issue.is_none()
        && let Err(e) = keyring.refresh().await
    {
        tracing::warn!(error = %e, "cannot load the keyring yet");
    }
    stop.check()?;
    let audit = Arc::new(open_audit(&config.audit)?);
    Ok(Arc::new(
        Service::new(keyring, Arc::new(SystemClock), service_options(config))
            .with_access(Arc::new(policy(config)), audit),
    ))
}

impl Prepared {
    /// The service, for start-up steps made in-process before serving.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Serve on the reserved `socket` (and the configured Unix socket), unless a stop was
    /// requested meanwhile; on any failure the device is released before returning.
    ///
    /// # Errors
    /// [`ServeError`] as [`StartError::Serve`]; [`StartError::Stopped`].
    pub async fn serve(self, socket: TcpSocket, stop: &Stop) -> Result<Running, StartError> {
        if let Err(e) = stop.check() {
            self.shutdown().await;
            return Err(e);
        }
        let addr = socket.local_addr().unwrap_or(self.server.listen);
        let listener = match socket.listen(LISTEN_BACKLOG) {
            Ok(l) => l,
            Err(source) => {
                self.shutdown().await;
                return Err(ServeError::Listen { addr, source }.into());
            }
        };
        let ops = match self.bind_ops().await {
            Ok(ops) => ops,
            Err(e) => {
                self.shutdown().await;
                return Err(e.into());
            }
        };
        let served = crate::server::serve(
            Arc::clone(&self.service),
            &self.server,
            self.refresh,
            listener,
        )
        .await;
        match served {
            Ok(serving) => Ok(Running {
                ops: ops.map(|(listener, tls)| {
                    crate::ops::serve(
                        listener,
                        tls,
                        crate::ops::OpsState {
                            service: Arc::clone(&self.service),
                            health: serving.health(),
                            listener: Arc::clone(&serving.counters),
                        },
                    )
                }),
                serving,
                service: self.service,
                pkcs11: self.pkcs11,
                device: self.device,
            }),
            Err(e) => {
                self.shutdown().await;
                Err(e.into())
            }
        }
    }

    /// Make an operations listener that cannot be bound (its port taken) a warning rather than
    /// a start-up failure: `sigild dev`, where several may run on one machine.
    pub fn ops_best_effort(mut self) -> Self {
        self.ops_best_effort = true;
        self
    }

    /// Bind the `[ops]` listener, if configured.
    async fn bind_ops(&self) -> Result<Option<OpsBound>, ServeError> {
        let Some(ops) = &self.ops else {
            return Ok(None);
        };
        match crate::ops::bind(ops).await {
            Ok(bound) => Ok(Some(bound)),
            Err(e) if self.ops_best_effort => {
                tracing::warn!(error = %e, "no operations listener");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Stop here, before serving: release the device (workers joined, module finalised).
    pub async fn shutdown(self) {
        drop(self.service);
        drop(self.pkcs11);
        self.device.release().await;
    }
}

/// A bound operations listener and its TLS, if any.
type OpsBound = (tokio::net::TcpListener, Option<tokio_rustls::TlsAcceptor>);

/// Connections the kernel queues for the TCP listener before they are accepted.
const LISTEN_BACKLOG: u32 = 1024;

/// The one configured device, released exactly once: explicitly ([`Device::release`], off the
/// async runtime) on every path the daemon takes, or, should an owner be dropped without that
/// (a panic unwinding), when dropped. Either way the workers are joined before the module is
/// finalised, and both happen before the process exits.
struct Device(Option<Arc<dyn Backend>>);

impl Device {
    /// The backend, while not released.
    fn backend(&self) -> Result<Arc<dyn Backend>, StartError> {
        self.0
            .clone()
            .ok_or_else(|| StartError::Thread("the device was already released".into()))
    }

    /// Release the device on a blocking thread and wait until that is done.
    async fn release(mut self) {
        if let Some(backend) = self.0.take() {
            let released = tokio::task::spawn_blocking(move || backend.shutdown()).await;
            if let Err(e) = released {
                tracing::error!(error = %e, "releasing the device failed");
            }
            tracing::info!("device released");
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(backend) = self.0.take() {
            // Only reached when an owner was dropped without a shutdown: blocking here (for as
            // long as the device's slowest call in flight) is better than the process exiting
            // while a worker is still inside the module.
            tracing::warn!("releasing the device on drop");
            backend.shutdown();
        }
    }
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

/// The service's options from `[signing]` and `[decryption]`.
pub fn service_options(config: &Config) -> ServiceOptions {
    ServiceOptions {
        max_payload_bytes: config.signing.max_payload_bytes,
        sign_timeout: Duration::from_millis(config.signing.timeout_ms),
        verify_signatures: config.signing.verify_signatures,
        quarantine_after: config.signing.quarantine_after,
        quarantine_probe: Duration::from_millis(config.signing.quarantine_probe_ms),
        max_jwe_bytes: config.decryption.max_jwe_bytes,
    }
}

/// Open the configured audit sink.
///
/// # Errors
/// [`AuditError::Open`].
pub fn open_audit(audit: &AuditConfig) -> Result<Audit, AuditError> {
    let durability = if audit.fsync {
        Durability::Synced
    } else {
        Durability::Written
    };
    match (&audit.file, audit.stdout) {
        (Some(p), _) => Audit::file_with(p, audit.fail_closed, durability),
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
            target_uri_prefix: c.target_uri_prefix.clone(),
            jws_typs: c.jws_typs.clone(),
            jwe_algs: c
                .jwe_algs
                .as_ref()
                .map(|l| l.iter().filter_map(|a| JweAlg::parse(a)).collect()),
            jwe_encs: c
                .jwe_encs
                .as_ref()
                .map(|l| l.iter().filter_map(|e| JweEnc::parse(e)).collect()),
            rate: rate(&c.rate),
        })
        .collect();
    Policy::new(rules, rate(&limits.per_key)).with_per_caller(rate(&limits.per_caller))
}

/// A daemon running on its own OS thread and tokio runtime (benchmarks and embedding: the
/// caller's runtime and the daemon's do not share worker threads, as with separate processes).
/// Stopped and joined by [`Detached::shutdown`] or, failing that, when dropped, so the daemon's
/// device is always released before its owner goes on to exit.
pub struct Detached {
    /// Bound address.
    pub addr: SocketAddr,
    /// The service, for in-process calls.
    pub service: Arc<Service>,
    /// The PKCS#11 backend when that is the device, for direct comparisons. Whatever is made
    /// with it directly (a direct signer's session) must be gone before the shutdown.
    pub pkcs11: Option<Arc<Pkcs11Backend>>,
    /// The daemon's runtime, so callers can serve more listeners on it (benchmarks).
    pub runtime: tokio::runtime::Handle,
    /// Tells the daemon thread to shut down.
    stop: Stopper,
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
    /// As for [`start`], plus runtime creation.
    pub fn start(
        config: Config,
        config_path: PathBuf,
        listen: SocketAddr,
        threads: usize,
    ) -> Result<Detached, StartError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Ready, StartError>>();
        let (stopper, stop) = Stop::new();
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
                    let started = match reserve(listen) {
                        Ok(socket) => match prepare(&config, &config_path, &stop).await {
                            Ok(prepared) => prepared.serve(socket, &stop).await,
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e.into()),
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
                            if let Err(e) = running.run_until(stop.wait()).await {
                                tracing::error!(error = %e, "detached daemon stopped with an error");
                            }
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(listen_err)?;
        let (addr, runtime, service, pkcs11) = match ready_rx.recv() {
            Ok(Ok(ready)) => ready,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(StartError::Thread(
                    "daemon thread exited during start".into(),
                ));
            }
        };
        Ok(Detached {
            addr,
            service,
            pkcs11,
            runtime,
            stop: stopper,
            thread: Some(thread),
        })
    }

    /// Stop the daemon (as on SIGTERM: drain, then release the device) and wait for its thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the detached daemon thread panicked");
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
