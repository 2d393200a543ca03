//! The gRPC servers: the TCP listener (mutual TLS, or plain text only with `danger_plaintext`)
//! and the optional Unix socket, each with health and reflection, and the background task that
//! keeps the keyring and readiness current.
//!
//! Owns: listeners, TLS acceptor set-up, health status, and the stop of the servers: health
//! NOT_SERVING, no new connections, in-flight requests finished within the configured grace
//! period and the rest answered UNAVAILABLE ([`Serving::shutdown`]). Takes a built [`Service`]
//! from the composition root ([`crate::app`]), which calls [`serve`] only once the service is
//! ready, so a listener that answers serves a loaded keyring; never opens or releases a backend,
//! reads a config file or builds policy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;

use crate::api::{Api, Listener, pb};
use crate::config::ServerConfig;
use crate::service::Service;

mod listen;
pub mod notify;
pub mod reload;

pub use listen::{ListenerCounters, ListenerCounts};

/// Why the servers could not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
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
    Reflection(#[from] tonic_reflection::server::Error),
    /// A server task ended abnormally (panicked or was cancelled).
    #[error("server task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// TLS certificates or keys cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The Unix socket cannot be set up.
    #[error("unix socket {path}: {message}")]
    Unix {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// The running servers.
pub struct Serving {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    /// The Unix socket, when one is served (removed at shutdown).
    pub unix_path: Option<PathBuf>,
    /// What the TCP listener accepted and refused (connections over the limit, failed and
    /// timed-out TLS handshakes), for an operations endpoint.
    pub counters: Arc<ListenerCounters>,
    /// The TLS configuration new connections get, which a reload replaces; `None` with
    /// `danger_plaintext`.
    pub tls: Option<Arc<reload::CurrentTls>>,
    /// Dropping or sending tells the servers and tasks to stop accepting.
    stop: watch::Sender<bool>,
    /// Sent once the grace period is over: every request still in flight is answered
    /// UNAVAILABLE ([`ShutdownLayer`]).
    cancel: watch::Sender<bool>,
    /// How long in-flight requests may still run once the servers stop accepting.
    grace: Duration,
    /// Key administration in flight, which is never cut off ([`ShutdownLayer`]).
    admin: Arc<Semaphore>,
    /// The health service's statuses, set NOT_SERVING first thing at shutdown.
    health: tonic_health::server::HealthReporter,
    /// The task that keeps readiness and the keyring current; stopped before health is set
    /// NOT_SERVING so that it cannot set SERVING again.
    maintain: JoinHandle<()>,
    /// The TCP server task.
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The Unix-socket server task.
    unix_server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    /// The keyring, whose key watches ([`crate::keyring::Keyring::watch`]) are ended first
    /// thing at shutdown.
    keyring: Arc<crate::keyring::Keyring>,
}

/// How long requests answered UNAVAILABLE after the grace period get to reach their callers
/// before the servers are stopped regardless (their connections then close).
const CANCEL_SLACK: Duration = Duration::from_secs(2);

/// How long a shutdown waits, past the grace period, for key administration already running
/// (a key generation) to finish, so that it leaves no half-made key behind.
const ADMIN_WAIT: Duration = Duration::from_secs(120);

/// Permits of the key-administration semaphore: one per request in flight, all of them for a
/// shutdown waiting until none is.
const ADMIN_PERMITS: u32 = 1 << 20;

/// The message of the UNAVAILABLE answer to requests cut off by a shutdown.
pub const SHUTTING_DOWN: &str = "the daemon is shutting down; retry on another instance";

impl Serving {
    /// The health statuses the gRPC health service answers with, for the operations
    /// listener's readiness probe ([`crate::ops`]).
    pub fn health(&self) -> tonic_health::server::HealthReporter {
        self.health.clone()
    }

    /// Stop: health NOT_SERVING, no new connections (the listeners close, open connections are
    /// told to go away), requests in flight finish within the grace period and those still
    /// running then are answered UNAVAILABLE; returns once no request is being served. The
    /// device is not touched here: the caller releases it afterwards.
    ///
    /// # Errors
    /// The server's own error, if it failed.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.maintain.abort();
        let _ = (&mut self.maintain).await;
        set_health(&self.health, false).await;
        let _ = self.stop.send(true);
        // Key watches never end by themselves: end them now so they do not hold the drain.
        self.keyring.close_watches();
        tracing::info!(
            grace_seconds = self.grace.as_secs_f64(),
            "stopped accepting; finishing requests in flight"
        );
        let (server, unix) = (&mut self.server, self.unix_server.as_mut());
        let mut drained = Box::pin(async move {
            let tcp = server.await;
            if let Some(u) = unix {
                let _ = u.await;
            }
            tcp
        });
        let result = match tokio::time::timeout(self.grace, &mut drained).await {
            Ok(r) => Some(r),
            Err(_) => {
                tracing::warn!(
                    grace_seconds = self.grace.as_secs_f64(),
                    "requests still in flight after the grace period: answering them UNAVAILABLE"
                );
                let _ = self.cancel.send(true);
                let admin =
                    tokio::time::timeout(ADMIN_WAIT, self.admin.acquire_many(ADMIN_PERMITS));
                if admin.await.is_err() {
                    tracing::error!(
                        "key administration still running {} s after the grace period; stopping anyway",
                        ADMIN_WAIT.as_secs()
                    );
                }
                tokio::time::timeout(CANCEL_SLACK, &mut drained).await.ok()
            }
        };
        drop(drained);
        if result.is_none() {
            tracing::warn!("connections still open after the grace period; closing the servers");
            self.server.abort();
            if let Some(u) = &self.unix_server {
                u.abort();
            }
        }
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
        match result {
            Some(r) => Ok(r??),
            None => Ok(()),
        }
    }

    /// Run until the server stops by itself or `signal` completes, then shut down.
    ///
    /// # Errors
    /// As for [`Serving::shutdown`].
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServeError> {
        tokio::select! {
            () = signal => self.shutdown().await,
            r = &mut self.server => {
                tracing::error!("the gRPC server stopped by itself; shutting down");
                let failed = r.map_err(ServeError::from).and_then(|r| r.map_err(ServeError::from));
                self.server = tokio::spawn(async { Ok(()) });
                let stopped = self.shutdown().await;
                failed.and(stopped)
            }
        }
    }
}

/// A tower layer around every gRPC service: once `cancel` says so, requests still running are
/// answered UNAVAILABLE ([`SHUTTING_DOWN`]) instead of waiting any longer. Dropping such a
/// request's future is safe: device work it queued is finished or discarded by the backend's
/// workers. Key administration that changes the keyring ([`completes`]) is different: cut off
/// between its device steps it would leave a half-made key, so once started it runs to the end
/// (the shutdown waits for it through `admin`), and only one not yet started is refused.
#[derive(Clone)]
struct ShutdownLayer {
    /// Becomes `true` when the grace period is over.
    cancel: watch::Receiver<bool>,
    /// One permit per key-administration request in flight.
    admin: Arc<Semaphore>,
}

impl<S> tower::Layer<S> for ShutdownLayer {
    type Service = ShutdownService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShutdownService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`ShutdownLayer`] makes.
#[derive(Clone)]
struct ShutdownService<S> {
    /// The gRPC routes.
    inner: S,
    /// The shared shutdown state.
    layer: ShutdownLayer,
}

/// Whether the gRPC method at `path` changes the keyring (through several device and record
/// steps) and so must never be cut off once started.
fn completes(path: &str) -> bool {
    path.strip_prefix("/sigil.v1.KeyService/").is_some_and(|m| {
        !matches!(
            m,
            "ListKeys" | "GetKey" | "GetJwks" | "GetCertificateChain" | "WatchKeys"
        )
    })
}

impl<S, B> tower::Service<http::Request<B>> for ShutdownService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let admin = completes(req.uri().path()).then(|| Arc::clone(&self.layer.admin));
        let answer = self.inner.call(req);
        let mut cancel = self.layer.cancel.clone();
        let refused = || Ok(tonic::Status::unavailable(SHUTTING_DOWN).into_http());
        Box::pin(async move {
            match admin {
                Some(admin) => {
                    let permit = tokio::select! {
                        p = admin.acquire_owned() => p,
                        Ok(_) = cancel.wait_for(|c| *c) => return refused(),
                    };
                    let answer = answer.await;
                    drop(permit);
                    answer
                }
                None => tokio::select! {
                    r = answer => r,
                    Ok(_) = cancel.wait_for(|c| *c) => refused(),
                },
            }
        })
    }
}

/// Serve `service` on `listener` (and the configured Unix socket), and start the task that
/// keeps readiness and the keyring current.
///
/// # Errors
/// [`ServeError`]: TLS files, the Unix socket, reflection.
pub async fn serve(
    service: Arc<Service>,
    server: &ServerConfig,
    refresh: Duration,
    listener: TcpListener,
) -> Result<Serving, ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    // Health is right from the first answer: SERVING when the device answers and the keyring
    // is loaded (read again here if the first read failed on a device that answers now).
    let answers = tokio::time::timeout(FIRST_CHECK, service.keyring().backend().check())
        .await
        .is_ok_and(|r| r.is_ok());
    let ready = answers && keyring_loaded(&service).await;
    set_health(&health, ready).await;
    let (stop, mut stopped) = watch::channel(false);
    let (cancel, cancelled) = watch::channel(false);
    let admin = Arc::new(Semaphore::new(ADMIN_PERMITS as usize));
    let shutdown_layer = ShutdownLayer {
        cancel: cancelled,
        admin: Arc::clone(&admin),
    };
    let maintain = tokio::spawn(maintain(
        Arc::clone(&service),
        health.clone(),
        refresh,
        Some(ready),
        stop.subscribe(),
    ));

    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: server.listen,
        source,
    })?;
    let mut builder = listen::server_builder(server)
        .layer(crate::metrics::RequestLayer)
        .layer(shutdown_layer.clone());
    let (listener_kind, tls) = match &server.tls {
        Some(t) => (
            Listener::Tls(t.identity),
            Some(crate::tls::server_config(&t.cert, &t.key, &t.client_ca)?),
        ),
        None => {
            tracing::warn!(
                %addr,
                "danger_plaintext: serving unauthenticated plain-text gRPC; every caller on this port is `plaintext` and may do what the danger_plaintext [[caller]] rules allow"
            );
            (Listener::DangerPlaintext, None)
        }
    };
    let drain = crate::api::Drain::new(stopped.clone(), shutdown_layer.cancel.clone());
    let api = Api::new(Arc::clone(&service), listener_kind).draining(drain.clone());
    let router = builder
        .add_service(health_service.clone())
        .add_service(reflection.clone())
        .add_service(api.key_service())
        .add_service(api.signing_service())
        .add_service(api.decryption_service());
    let mut stopped2 = stopped.clone();
    let counters = Arc::new(ListenerCounters::default());
    let limits = listen::Limits::of(server);
    let mut stop_accepting = stopped.clone();
    let stop_accepting = async move {
        let _ = stop_accepting.wait_for(|s| *s).await;
    };
    let stop_serving = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let tls = tls.map(|config| Arc::new(reload::CurrentTls::new(config)));
    let tcp_server = match &tls {
        Some(config) => {
            let incoming = listen::tls(
                listener,
                Arc::clone(config),
                limits,
                Arc::clone(&counters),
                stop_accepting,
            );
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop_serving))
        }
        None => {
            let incoming = listen::plain(listener, limits, Arc::clone(&counters), stop_accepting);
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop_serving))
        }
    };
    tracing::info!(%addr, tls = server.tls.is_some(), backend = %service.keyring().backend().describe(), "listening");

    let (unix_path, unix_server) = match &server.unix {
        None => (None, None),
        Some(u) => {
            let path = u.path.clone();
            let unix_error = |message: String| ServeError::Unix {
                path: path.clone(),
                message,
            };
            let mode = u.mode_bits().map_err(&unix_error)?;
            let listener = bind_unix(&path, mode).map_err(&unix_error)?;
            let api = Api::new(Arc::clone(&service), Listener::Unix).draining(drain);
            let router = listen::server_builder(server)
                .layer(crate::metrics::RequestLayer)
                .layer(shutdown_layer)
                .add_service(health_service)
                .add_service(reflection)
                .add_service(api.key_service())
                .add_service(api.signing_service())
                .add_service(api.decryption_service());
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped2.wait_for(|s| *s).await;
            }));
            tracing::info!(path = %path.display(), mode = %format!("{mode:04o}"), "listening on unix socket");
            (Some(path), Some(task))
        }
    };
    Ok(Serving {
        addr,
        counters,
        tls,
        unix_path,
        stop,
        cancel,
        grace: Duration::from_secs(server.shutdown_grace_seconds),
        admin,
        health,
        maintain,
        server: tcp_server,
        unix_server,
        keyring: Arc::clone(service.keyring()),
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

/// Keep readiness and the keyring current: check the device, refresh the keyring (other
/// replicas may have rotated keys), report SERVING only when the device answers and is not
/// quarantined (probing it while it is).
async fn maintain(
    service: Arc<Service>,
    health: tonic_health::server::HealthReporter,
    period: Duration,
    reported: Option<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving = reported;
    // Ticks at least as often as the quarantine probe is due, and at once when the device
    // enters or leaves quarantine.
    let tick = period
        .min(Duration::from_secs(5))
        .min(service.quarantine().probe_interval());
    let mut ticker = tokio::time::interval(tick);
    let mut since_refresh = Duration::ZERO;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = service.quarantine().changed() => {}
            _ = stop.changed() => return,
        }
        let Some(ready) = device_ready(service.keyring().backend().as_ref(), tick).await else {
            continue;
        };
        let answers = ready && service.probe_quarantine().await;
        since_refresh += tick;
        let due = serving != Some(true) || since_refresh >= period || never_loaded(&service);
        if answers && due {
            since_refresh = Duration::ZERO;
            if let Err(e) = service.keyring().refresh().await {
                tracing::warn!(error = %e, "keyring refresh failed");
            }
        }
        let ok = answers && !never_loaded(&service);
        if serving != Some(ok) {
            set_health(&health, ok).await;
            if ok {
                tracing::info!("device available: SERVING");
            } else if answers {
                tracing::warn!("the keyring could not be read from the device yet: NOT_SERVING");
            } else if service.keyring().backend().stalled() {
                tracing::warn!("every device worker is stuck inside the device: NOT_SERVING");
            } else if service.quarantine().since().is_some() {
                tracing::warn!("device quarantined: NOT_SERVING");
            } else {
                tracing::warn!("device unavailable: NOT_SERVING");
            }
            serving = Some(ok);
        }
    }
}

/// Whether the keyring was never loaded: its keys are unknown, so readiness would promise
/// signatures that answer UNAVAILABLE.
fn never_loaded(service: &Service) -> bool {
    matches!(
        service.keyring().freshness(),
        crate::keyring::Freshness::NeverLoaded { .. }
    )
}

/// Whether the keyring is loaded, reading it now if it never was: a device that was busy or
/// briefly unreadable when the keyring was first read (a YubiKey still held by the process that
/// just exited) is read again as soon as it answers, not a refresh period later.
async fn keyring_loaded(service: &Service) -> bool {
    if never_loaded(service)
        && let Err(e) = service.keyring().refresh().await
    {
        tracing::warn!(error = %e, "cannot load the keyring yet");
    }
    !never_loaded(service)
}

/// Whether the device can serve now: not while every worker is stuck inside it (asked without
/// queueing), otherwise what its check says. `None` when the check, queued behind busy
/// workers, did not answer within `wait` (up to 5 s): no news, readiness stays as it is.
async fn device_ready(backend: &dyn crate::backend::Backend, wait: Duration) -> Option<bool> {
    if backend.stalled() {
        return Some(false);
    }
    match tokio::time::timeout(wait.min(Duration::from_secs(5)), backend.check()).await {
        Ok(r) => Some(r.is_ok()),
        Err(_) if backend.stalled() => Some(false),
        Err(_) => None,
    }
}

/// How long the first device check before serving may take; a device that does not answer by
/// then is reported NOT_SERVING until the maintenance task finds it answering.
const FIRST_CHECK: Duration = Duration::from_secs(5);

/// Report every service SERVING or NOT_SERVING.
async fn set_health(health: &tonic_health::server::HealthReporter, ok: bool) {
    let status = if ok {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in [
        "",
        "sigil.v1.SigningService",
        "sigil.v1.DecryptionService",
        "sigil.v1.KeyService",
    ] {
        health.set_service_status(name, status).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::backend::Backend as _;
    use crate::backend::memory::MemoryBackend;

    #[tokio::test]
    async fn a_stalled_device_is_not_ready_without_a_queued_check() {
        let backend = MemoryBackend::new();
        assert_eq!(
            device_ready(&backend, Duration::from_secs(1)).await,
            Some(true)
        );
        backend.set_stalled(true).unwrap();
        assert_eq!(
            device_ready(&backend, Duration::from_secs(1)).await,
            Some(false)
        );
        backend.set_stalled(false).unwrap();
        assert_eq!(
            device_ready(&backend, Duration::from_secs(1)).await,
            Some(true)
        );
        // A device that cannot be reached is not ready either.
        backend.shutdown();
        assert_eq!(
            device_ready(&backend, Duration::from_secs(1)).await,
            Some(false)
        );
    }

    /// A restarted daemon whose first keyring read fails on a device that answers its checks
    /// (a YubiKey still held by the process that just exited) is NOT_SERVING until a read
    /// succeeds, and SERVING at the next tick after that, not a refresh period later.
    #[tokio::test]
    async fn serving_waits_for_the_keyring_not_only_the_device() {
        use crate::jose::Alg;
        use crate::keyring::{KeySize, Keyring};
        use crate::service::{ServiceOptions, SystemClock};
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_server::Health as _;

        let backend = MemoryBackend::new();
        let before = Keyring::new(Arc::new(backend.clone()));
        before.refresh().await.unwrap();
        let alg = Alg::EdDsa.into();
        before
            .create("k", alg, KeySize::default(), false, &[], 1_700_000_000)
            .await
            .unwrap();
        backend.fail_key_reads(usize::MAX).unwrap();
        let keyring = Arc::new(Keyring::new(Arc::new(backend.clone())));
        assert!(keyring.refresh().await.is_err());
        let service = Arc::new(Service::new(
            keyring,
            Arc::new(SystemClock),
            ServiceOptions::default(),
        ));
        assert!(device_ready(&backend, Duration::from_secs(1)).await == Some(true));
        assert!(
            !keyring_loaded(&service).await,
            "a failed read counted as loaded"
        );

        let reporter = tonic_health::server::HealthReporter::new();
        let health = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(maintain(
            Arc::clone(&service),
            reporter,
            Duration::from_secs(3600),
            Some(false),
            stopped,
        ));
        let status = || async {
            health
                .check(tonic::Request::new(HealthCheckRequest {
                    service: "sigil.v1.SigningService".into(),
                }))
                .await
                .map(|r| r.into_inner().status)
                .unwrap_or(-1)
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_ne!(status().await, ServingStatus::Serving as i32);
        backend.fail_key_reads(0).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while status().await != ServingStatus::Serving as i32 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never SERVING after the keyring became readable"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(service.keyring().list().unwrap().len(), 1);
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn only_keyring_changes_run_to_completion() {
        for path in [
            "/sigil.v1.KeyService/CreateKey",
            "/sigil.v1.KeyService/RotateKey",
            "/sigil.v1.KeyService/DestroyKeyVersion",
            "/sigil.v1.KeyService/SetCertificateChain",
        ] {
            assert!(completes(path), "{path}");
        }
        for path in [
            "/sigil.v1.KeyService/GetJwks",
            "/sigil.v1.KeyService/ListKeys",
            "/sigil.v1.SigningService/SignJws",
            "/grpc.health.v1.Health/Check",
        ] {
            assert!(!completes(path), "{path}");
        }
    }
}
