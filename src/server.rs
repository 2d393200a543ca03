//! The gRPC servers: the TCP listener (mutual TLS, or plain text only with `danger_plaintext`)
//! and the optional Unix socket, each with health and reflection, and the background task that
//! keeps the keyring and readiness current.
//!
//! Owns: listeners, TLS acceptor set-up, health status, graceful stop of the servers. Takes a
//! built [`Service`] from the composition root ([`crate::app`]); never opens a backend, reads a
//! config file or builds policy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;

use crate::api::{Api, Listener, pb};
use crate::config::ServerConfig;
use crate::service::Service;

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
    /// Dropping or sending tells the servers and tasks to stop.
    stop: watch::Sender<bool>,
    /// The TCP server task.
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The Unix-socket server task.
    unix_server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Serving {
    /// Stop accepting, drain in-flight requests, stop background tasks.
    ///
    /// # Errors
    /// The server's own error, if it failed.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let _ = self.stop.send(true);
        if let Some(u) = self.unix_server {
            let _ = u.await;
        }
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
        Ok(self.server.await??)
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
            r = &mut self.server => Ok(r??),
        }
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

    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(maintain(
        Arc::clone(&service),
        health,
        refresh,
        stop.subscribe(),
    ));

    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: server.listen,
        source,
    })?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(server.concurrency_per_connection);
    let listener_kind = match &server.tls {
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
    let tcp_server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
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
            let api = Api::new(Arc::clone(&service), Listener::Unix);
            let router = tonic::transport::Server::builder()
                .concurrency_limit_per_connection(server.concurrency_per_connection)
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
    Ok(Serving {
        addr,
        unix_path,
        stop,
        server: tcp_server,
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

/// Keep readiness and the keyring current: check the device, refresh the keyring (other
/// replicas may have rotated keys), report SERVING only when the device answers and is not
/// quarantined (probing it while it is).
async fn maintain(
    service: Arc<Service>,
    health: tonic_health::server::HealthReporter,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving: Option<bool> = None;
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
        let ok = ready && service.probe_quarantine().await;
        since_refresh += tick;
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
}
