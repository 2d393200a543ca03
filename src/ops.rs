//! The operations listener: plain HTTP/1.1 (or HTTPS) on its own address for load balancers,
//! Kubernetes and Prometheus. `GET /livez` (the process and its runtime answer), `GET /readyz`
//! (200 when the daemon should get traffic, 503 with the reasons otherwise) and `GET /metrics`
//! (Prometheus text format 0.0.4).
//!
//! Owns: its listener, the HTTP answers, and the values read from the daemon's state when
//! scraped (readiness, key versions by state, the TCP listener's refused connections and TLS
//! handshakes). Readiness is what the gRPC health service reports (device answering, not
//! quarantined, not stalled, not shutting down: [`crate::server`] keeps it), and says also why
//! it is not ready. Reads the same state the health service reads; never calls a backend
//! itself, so a hung device cannot hang a probe. The metrics recorded on the request path are
//! [`crate::metrics`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::OpsConfig;
use crate::keyring::{Freshness, KeyState};
use crate::server::{ListenerCounters, ServeError};
use crate::service::Service;

/// Connections the operations listener serves at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send its request headers or finish a TLS handshake.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The Prometheus text format's content type.
const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the answers are read from: the daemon's service and the state its gRPC servers keep.
#[derive(Clone)]
pub struct OpsState {
    /// The service (keyring, quarantine, backend status).
    pub service: Arc<Service>,
    /// The statuses the gRPC health service answers with.
    pub health: tonic_health::server::HealthReporter,
    /// What the TCP listener accepted and refused.
    pub listener: Arc<ListenerCounters>,
}

/// The running operations listener.
pub struct OpsServer {
    /// The address actually bound (useful with port 0).
    addr: SocketAddr,
    /// Sending stops accepting; open connections finish their request.
    stop: watch::Sender<bool>,
    /// The accept loop.
    task: JoinHandle<()>,
}

/// Bind the operations listener (a port in use fails here, before anything is served).
///
/// # Errors
/// [`ServeError::Listen`]; [`ServeError::Tls`] for unusable `[ops.tls]` files.
pub async fn bind(
    config: &OpsConfig,
) -> Result<(TcpListener, Option<tokio_rustls::TlsAcceptor>), ServeError> {
    let tls = match &config.tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(
            crate::tls::http_server_config(&t.cert, &t.key, &t.client_ca)?,
        )),
        None => None,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    Ok((listener, tls))
}

/// Serve `/livez`, `/readyz` and `/metrics` on `listener` until [`OpsServer::stop`].
pub fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: OpsState,
) -> OpsServer {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (stop, stopped) = watch::channel(false);
    let answers = Arc::new(Answers::new(state));
    tracing::info!(%addr, https = tls.is_some(), "operations listener: /livez /readyz /metrics");
    let task = tokio::spawn(accept(listener, tls, answers, stopped));
    OpsServer { addr, stop, task }
}

impl OpsServer {
    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting and wait for the accept loop to end (requests being answered are cut
    /// off: probes and scrapes are retried by their callers).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The accept loop: each connection on a task of its own, at most [`MAX_CONNECTIONS`] at once.
async fn accept(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    answers: Arc<Answers>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            s = Arc::clone(&slots).acquire_owned() => s,
            () = wait_stop(&mut stopped) => break,
        };
        let Ok(slot) = slot else { break };
        let (stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "operations listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = wait_stop(&mut stopped) => break,
        };
        let answers = Arc::clone(&answers);
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => connection(stream, answers).await,
                Some(acceptor) => {
                    match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection(stream, answers).await,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "operations listener: TLS handshake failed");
                        }
                        Err(_) => tracing::debug!("operations listener: TLS handshake timed out"),
                    }
                }
            }
            drop(slot);
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

/// Until a stop is requested (or its sender is gone).
async fn wait_stop(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Serve one HTTP/1.1 connection.
async fn connection<S>(stream: S, answers: Arc<Answers>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let answers = Arc::clone(&answers);
        async move { Ok::<_, Infallible>(answers.answer(&req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "operations listener: connection ended with an error");
    }
}

/// Why the daemon is or is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    /// The verdict: every other field as it should be.
    pub ready: bool,
    /// The gRPC health service says SERVING (device answering, not quarantined, not stalled,
    /// not shutting down).
    pub serving: bool,
    /// The keyring was loaded from the device at least once.
    pub keyring_loaded: bool,
    /// The device is quarantined (its signatures did not verify).
    pub quarantined: bool,
    /// Every device worker is stuck inside the device.
    pub device_stalled: bool,
}

/// The answers, and the registry `/metrics` encodes.
struct Answers {
    /// Where readiness and scrape-time values are read.
    state: OpsState,
    /// The request-path metrics and [`StateCollector`].
    registry: Registry,
}

impl Answers {
    fn new(state: OpsState) -> Answers {
        let mut registry = Registry::default();
        crate::metrics::metrics().register(&mut registry);
        registry.register_collector(Box::new(StateCollector(state.clone())));
        Answers { state, registry }
    }

    /// The answer to one request.
    async fn answer<B>(&self, req: &http::Request<B>) -> http::Response<String> {
        if !matches!(*req.method(), http::Method::GET | http::Method::HEAD) {
            return plain(http::StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        match req.uri().path() {
            "/livez" => plain(http::StatusCode::OK, "ok\n".into()),
            "/readyz" => {
                let r = readiness(&self.state).await;
                let code = if r.ready {
                    http::StatusCode::OK
                } else {
                    http::StatusCode::SERVICE_UNAVAILABLE
                };
                let mut body = serde_json::to_string(&r).unwrap_or_default();
                body.push('\n');
                respond(code, "application/json", body)
            }
            "/metrics" => {
                let ready = readiness(&self.state).await.ready;
                let mut text = String::new();
                match prometheus_client::encoding::prometheus_text::encode(
                    &mut text,
                    &self.registry,
                ) {
                    Ok(()) => {
                        text.push_str(&format!(
                            "# HELP sigild_ready Whether /readyz says ready (1) or not (0)\n# TYPE sigild_ready gauge\nsigild_ready {}\n",
                            u8::from(ready)
                        ));
                        respond(http::StatusCode::OK, METRICS_CONTENT_TYPE, text)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode the metrics");
                        plain(
                            http::StatusCode::INTERNAL_SERVER_ERROR,
                            "cannot encode the metrics\n".into(),
                        )
                    }
                }
            }
            _ => plain(
                http::StatusCode::NOT_FOUND,
                "not found: /livez, /readyz, /metrics\n".into(),
            ),
        }
    }
}

/// A text/plain answer.
fn plain(code: http::StatusCode, body: String) -> http::Response<String> {
    respond(code, "text/plain; charset=utf-8", body)
}

/// An answer with a content type.
fn respond(code: http::StatusCode, content_type: &str, body: String) -> http::Response<String> {
    let mut r = http::Response::new(body);
    *r.status_mut() = code;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// Readiness now, from the health service's overall status and the state behind it.
pub async fn readiness(state: &OpsState) -> Readiness {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_server::Health as _;
    let health = tonic_health::server::HealthService::from_health_reporter(state.health.clone());
    let serving = health
        .check(tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }))
        .await
        .is_ok_and(|r| r.get_ref().status == ServingStatus::Serving as i32);
    let keyring_loaded = !matches!(
        state.service.keyring().freshness(),
        Freshness::NeverLoaded { .. }
    );
    let quarantined = state.service.quarantine().since().is_some();
    let device_stalled = state.service.keyring().backend().stalled();
    Readiness {
        ready: serving && keyring_loaded && !quarantined && !device_stalled,
        serving,
        keyring_loaded,
        quarantined,
        device_stalled,
    }
}

/// The values read from the daemon's state at each scrape.
#[derive(Clone)]
struct StateCollector(OpsState);

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

/// Every key state, the `state` label of `sigild_key_versions`.
const STATES: [KeyState; 4] = [
    KeyState::Next,
    KeyState::Active,
    KeyState::Retired,
    KeyState::Destroyed,
];

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = &self.0;
        // Key versions by state; nothing while the keyring was never loaded.
        if let Ok(keys) = state.service.keyring().list() {
            let mut counts = [0i64; STATES.len()];
            for v in keys.iter().flat_map(|k| k.versions.iter()) {
                if let Some(i) = STATES.iter().position(|s| *s == v.state) {
                    counts[i] += 1;
                }
            }
            let mut family = encoder.encode_descriptor(
                "sigild_key_versions",
                "Key versions on the device, by state",
                None,
                MetricType::Gauge,
            )?;
            for (s, n) in STATES.iter().zip(counts) {
                ConstGauge::new(n).encode(family.encode_family(&[("state", s.as_str())])?)?;
            }
        }
        let gauge = |encoder: &mut DescriptorEncoder, name, help, v: i64| {
            ConstGauge::new(v).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)
        };
        gauge(
            &mut encoder,
            "sigild_keyring_loaded",
            "Whether the keyring was loaded from the device at least once",
            i64::from(!matches!(
                state.service.keyring().freshness(),
                Freshness::NeverLoaded { .. }
            )),
        )?;
        gauge(
            &mut encoder,
            "sigild_device_quarantined",
            "Whether the device is quarantined (its signatures did not verify)",
            i64::from(state.service.quarantine().since().is_some()),
        )?;
        let counts = state.listener.snapshot();
        gauge(
            &mut encoder,
            "sigild_connections_open",
            "TCP connections open on the gRPC listener (handshaking or established)",
            i64::try_from(counts.open).unwrap_or(i64::MAX),
        )?;
        let mut refused = encoder.encode_descriptor(
            "sigild_tls_handshakes_refused",
            "TLS handshakes refused on the gRPC listener, by reason (failed: no or untrusted client certificate, garbage, hang-up; timed_out)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in [
            ("failed", counts.handshake_failed),
            ("timed_out", counts.handshake_timed_out),
        ] {
            ConstCounter::new(n).encode(refused.encode_family(&[("reason", reason)])?)?;
        }
        ConstCounter::new(counts.refused_over_limit).encode(encoder.encode_descriptor(
            "sigild_connections_refused",
            "TCP connections closed at once because server.max_connections were open",
            None,
            MetricType::Counter,
        )?)?;
        Ok(())
    }
}
