//! The composition root: config → backend → keyring → policy, audit → service → gRPC servers
//! (mutual TLS or danger-plaintext TCP, and an optional Unix socket; each with health and
//! reflection) and the background tasks that keep the keyring and readiness current. The only
//! place that names a concrete backend.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;

use crate::api::{Api, Listener, pb};
use crate::audit::AuditError;
use crate::backend::pkcs11::Pkcs11Backend;
use crate::backend::{Backend, BackendError};
use crate::config::{Config, ConfigError};
use crate::keyring::Keyring;
use crate::service::{Service, SystemClock};

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backend cannot be used (module, PIN).
    #[error("backend: {0}")]
    Backend(#[from] BackendError),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection descriptors could not be built.
    #[error("reflection: {0}")]
    Reflection(String),
    /// TLS certificates or keys cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The audit trail cannot be opened.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The Unix socket cannot be set up.
    #[error("unix socket {path}: {message}")]
    Unix {
        /// The socket path.
        path: std::path::PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A running daemon.
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The service, for in-process callers (benchmarks).
    pub service: Arc<Service>,
    /// The PKCS#11 backend when that is the device, for in-process comparisons (benchmarks).
    pub backend: Option<Arc<Pkcs11Backend>>,
    /// The Unix socket, when one is served (removed at shutdown).
    pub unix_path: Option<std::path::PathBuf>,
    /// Dropping or sending tells the server and tasks to stop.
    stop: watch::Sender<bool>,
    /// The server task.
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The Unix-socket server task.
    unix_server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Running {
    /// Stop accepting, drain in-flight requests, stop background tasks.
    ///
    /// # Errors
    /// The server's own error, if it failed.
    pub async fn shutdown(self) -> Result<(), StartError> {
        let _ = self.stop.send(true);
        if let Some(u) = self.unix_server {
            let _ = u.await;
        }
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
        match self.server.await {
            Ok(r) => Ok(r?),
            Err(e) => Err(StartError::Reflection(format!("server task: {e}"))),
        }
    }

    /// Run until the server stops by itself or `signal` completes, then shut down.
    ///
    /// # Errors
    /// As for [`Running::shutdown`].
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), StartError> {
        tokio::select! {
            () = signal => self.shutdown().await,
            r = &mut self.server => match r {
                Ok(r) => Ok(r?),
                Err(e) => Err(StartError::Reflection(format!("server task: {e}"))),
            },
        }
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
        .map_err(|source| StartError::Listen { addr, source })?;
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
    let (dyn_backend, backend, startup_issue) = open_backend(config, config_path).await?;
    if let Some(issue) = &startup_issue {
        tracing::warn!(error = %issue, "token not usable yet; serving NOT_SERVING until it is");
    }
    let keyring = Arc::new(Keyring::new(dyn_backend));
    if startup_issue.is_none()
        && let Err(e) = keyring.refresh().await
    {
        tracing::warn!(error = %e, "cannot load the keyring yet");
    }
    let audit = Arc::new(config.audit.open()?);
    let service = Arc::new(
        Service::new(keyring, Arc::new(SystemClock), config.service_options())
            .with_access(Arc::new(config.policy()), audit),
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;

    let (stop, mut stopped) = watch::channel(false);
    let refresh = Duration::from_secs(config.keyring.refresh_seconds);
    tokio::spawn(maintain(
        Arc::clone(&service),
        health,
        refresh,
        stop.subscribe(),
    ));

    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.server.listen,
        source,
    })?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(config.server.concurrency_per_connection);
    let listener_kind = match &config.server.tls {
        Some(t) => {
            builder =
                builder.tls_config(crate::tls::server_config(&t.cert, &t.key, &t.client_ca)?)?;
            Listener::Tls(t.identity)
        }
        None => {
            tracing::warn!(
                %addr,
                "danger_plaintext: serving unauthenticated plain-text gRPC; every caller on this port is `plaintext` and may do what the danger_plaintext [[caller]] rules allow"
            );
            Listener::DangerPlaintext
        }
    };
    let api = Api::new(Arc::clone(&service), listener_kind);
    let router = builder
        .add_service(health_service.clone())
        .add_service(reflection.clone())
        .add_service(api.key_service())
        .add_service(api.signing_service());
    let mut stopped2 = stopped.clone();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    tracing::info!(%addr, tls = config.server.tls.is_some(), backend = %service.keyring().backend().describe(), "listening");

    let (unix_path, unix_server) = match &config.server.unix {
        None => (None, None),
        Some(u) => {
            let path = u.path.clone();
            let unix_error = |message: String| StartError::Unix {
                path: path.clone(),
                message,
            };
            let mode = u.mode_bits().map_err(&unix_error)?;
            let listener = bind_unix(&path, mode).map_err(&unix_error)?;
            let api = Api::new(Arc::clone(&service), Listener::Unix);
            let router = tonic::transport::Server::builder()
                .concurrency_limit_per_connection(config.server.concurrency_per_connection)
                .add_service(health_service)
                .add_service(reflection)
                .add_service(api.key_service())
                .add_service(api.signing_service());
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped2.wait_for(|s| *s).await;
            }));
            tracing::info!(path = %path.display(), mode = %format!("{mode:04o}"), "listening on unix socket");
            (Some(path), Some(task))
        }
    };
    Ok(Running {
        addr,
        service,
        backend,
        unix_path,
        stop,
        server,
        unix_server,
    })
}

/// Bind the Unix socket: replace a stale socket (never another kind of file), then set the
/// configured mode. Between bind and chmod the socket has the umask's mode; the directory
/// holding it should not be writable by others.
fn bind_unix(path: &Path, mode: u32) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)
                .map_err(|e| format!("cannot remove the stale socket: {e}"))?;
        } else {
            return Err("exists and is not a socket; refusing to replace it".into());
        }
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| e.to_string())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set mode {mode:04o}: {e}"))?;
    Ok(listener)
}

/// The configured device: the backend as the keyring sees it, the PKCS#11 backend itself when
/// that is the device (benchmarks compare against it), and a start-up issue that is not fatal
/// (device absent).
type OpenedBackend = (
    Arc<dyn Backend>,
    Option<Arc<Pkcs11Backend>>,
    Option<BackendError>,
);

/// Open the one configured device (`[pkcs11]` or `[yubikey]`) off the async runtime.
async fn open_backend(config: &Config, config_path: &Path) -> Result<OpenedBackend, StartError> {
    let join =
        |e: tokio::task::JoinError| StartError::Reflection(format!("backend start task: {e}"));
    #[cfg(feature = "yubikey")]
    if let Some(yk) = &config.yubikey {
        let settings = yk.settings(config_path)?;
        let (backend, issue) = tokio::task::spawn_blocking(move || {
            crate::backend::yubikey::YubikeyBackend::open(settings)
        })
        .await
        .map_err(join)??;
        return Ok((Arc::new(backend), None, issue));
    }
    let settings = config.pkcs11_settings(config_path)?;
    let (backend, issue) = tokio::task::spawn_blocking(move || Pkcs11Backend::open(settings))
        .await
        .map_err(join)??;
    let backend = Arc::new(backend);
    Ok((backend.clone(), Some(backend), issue))
}

/// Keep readiness and the keyring current: check the device, refresh the keyring (other
/// replicas may have rotated keys), report SERVING only when the device answers.
async fn maintain(
    service: Arc<Service>,
    health: tonic_health::server::HealthReporter,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving: Option<bool> = None;
    let mut ticker = tokio::time::interval(period.min(Duration::from_secs(5)));
    let mut since_refresh = Duration::ZERO;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let ok = service.keyring().backend().check().await.is_ok();
        since_refresh += period.min(Duration::from_secs(5));
        if ok && (serving != Some(true) || since_refresh >= period) {
            since_refresh = Duration::ZERO;
            if let Err(e) = service.keyring().refresh().await {
                tracing::warn!(error = %e, "keyring refresh failed");
            }
        }
        if serving != Some(ok) {
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health
                .set_service_status("sigil.v1.SigningService", status)
                .await;
            health
                .set_service_status("sigil.v1.KeyService", status)
                .await;
            if ok {
                tracing::info!("device available: SERVING");
            } else {
                tracing::warn!("device unavailable: NOT_SERVING");
            }
            serving = Some(ok);
        }
    }
}

/// A daemon running on its own OS thread and tokio runtime (benchmarks and embedding: the
/// caller's runtime and the daemon's do not share worker threads, as with separate processes).
pub struct Detached {
    /// Bound address.
    pub addr: SocketAddr,
    /// The service, for in-process calls.
    pub service: Arc<Service>,
    /// The PKCS#11 backend when that is the device, for direct comparisons.
    pub backend: Option<Arc<Pkcs11Backend>>,
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
        config_path: std::path::PathBuf,
        listen: SocketAddr,
        threads: usize,
    ) -> Result<Detached, StartError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Ready, StartError>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let listen_err = move |source| StartError::Listen {
            addr: listen,
            source,
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
                                running.addr,
                                tokio::runtime::Handle::current(),
                                Arc::clone(&running.service),
                                running.backend.clone(),
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
        let (addr, runtime, service, backend) = ready_rx
            .recv()
            .map_err(|_| StartError::Reflection("daemon thread exited during start".into()))??;
        Ok(Detached {
            addr,
            service,
            backend,
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
