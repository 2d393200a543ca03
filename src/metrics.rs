//! The daemon's Prometheus metrics that are recorded as things happen: requests by operation,
//! outcome and status code with their latency, device queue wait and device time, device errors
//! by kind, queue depth, sessions in use, policy and rate-limit refusals, audit write failures.
//!
//! Owns: the metric objects and the few recording functions the request path calls (one line
//! each at its hook: the gRPC layer [`RequestLayer`], the device worker, the error mapping in
//! `api`, the audit hand-off in the service). Values read from the daemon's state at scrape time
//! (key versions by state, readiness, refused TLS handshakes) are not here: the operations
//! listener ([`crate::ops`]) reads them when scraped. Never touches a backend, policy or config.
//!
//! The metrics are process-wide (one [`Metrics`] behind [`metrics`]), like the `tracing`
//! dispatcher: the device workers, the service and the gRPC layer record without a handle
//! threaded through every constructor, so each hook stays one line. Recording is cheap: atomic
//! counters, a short uncontended lock per histogram observation, label values that are
//! `&'static str` (no allocation once a label set exists), and the label sets of the common
//! answers registered up front.

use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of one request series: operation, outcome, gRPC code.
type RequestLabels = [(&'static str, &'static str); 3];
/// One label.
type OneLabel = [(&'static str, &'static str); 1];
/// How a family's histograms are made.
type MakeHistogram = fn() -> Histogram;

/// The metrics recorded on the request path. Clones of its members share the values, so the
/// operations listener registers clones in the registry it encodes.
#[derive(Debug)]
pub struct Metrics {
    /// `sigild_requests_total{operation,outcome,code}`.
    requests: Family<RequestLabels, Counter>,
    /// `sigild_request_duration_seconds{operation}`: until the answer's headers.
    duration: Family<OneLabel, Histogram, MakeHistogram>,
    /// `sigild_device_queue_wait_seconds`: from the queue to a worker picking the job up.
    queue_wait: Histogram,
    /// `sigild_device_seconds`: a worker's time on one job (the device call, and the host work
    /// the job does next to it).
    device: Histogram,
    /// `sigild_device_errors_total{kind}`.
    device_errors: Family<OneLabel, Counter>,
    /// `sigild_device_queue_depth`: jobs waiting for a worker.
    queue_depth: Gauge,
    /// `sigild_device_sessions_in_use`: workers (sessions) inside a job now.
    in_use: Gauge,
    /// `sigild_refusals_total{reason}`: policy, rate limit, full queue.
    refusals: Family<OneLabel, Counter>,
    /// `sigild_audit_write_failures_total`.
    audit_failures: Counter,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Latency buckets from 100 µs to about 13 s: a SoftHSM signature takes ~0.1 ms, a network HSM
/// a few ms, a YubiKey ~100 ms, a touch-required one seconds.
fn latency_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.5, 14,
    ))
}

/// The RPCs of the API (`proto/sigil/v1/*.proto`), the `operation` label; any other path
/// (health, reflection) is `other`.
pub const OPERATIONS: [&str; 33] = [
    "DecryptJwe",
    "CreateKey",
    "ImportKey",
    "AdoptKey",
    "ListKeys",
    "GetKey",
    "RotateKey",
    "ActivateKeyVersion",
    "RetireKeyVersion",
    "DestroyKeyVersion",
    "GetJwks",
    "SetCertificateChain",
    "GetCertificateChain",
    "RepairKeyring",
    "WatchKeys",
    "SignJws",
    "SignRaw",
    "SignIdToken",
    "SignRequestObject",
    "SignClientAssertion",
    "SignDpopProof",
    "SignTlsHandshake",
    "SignJarm",
    "SignIntrospection",
    "SignAccessToken",
    "SignLogoutToken",
    "SignUserinfo",
    "SignCibaRequest",
    "SignHttpRequest",
    "SignHttpResponse",
    "SignStream",
    "SignDigest",
    "other",
];

/// The `operation` label of a gRPC path (`/sigil.v1.SigningService/SignJws` → `SignJws`).
pub fn operation(path: &str) -> &'static str {
    let method = path
        .strip_prefix("/sigil.v1.")
        .and_then(|p| p.split_once('/'))
        .map_or("", |(_, m)| m);
    OPERATIONS
        .iter()
        .find(|o| **o == method)
        .copied()
        .unwrap_or("other")
}

/// gRPC code names by number (as in the gRPC spec), the `code` label.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The `code` and `outcome` labels of a gRPC status number: `ok`; `refused` when the request
/// was turned down for the caller's own reasons (bad input, policy, limits, state); `failed`
/// when the daemon or the device failed it.
pub fn code_outcome(code: i32) -> (&'static str, &'static str) {
    let name = usize::try_from(code)
        .ok()
        .and_then(|c| CODES.get(c))
        .copied()
        .unwrap_or("UNKNOWN");
    let outcome = match code {
        0 => "ok",
        3 | 5..=9 | 11 | 12 | 16 => "refused",
        _ => "failed",
    };
    (name, outcome)
}

/// The `kind` label of device errors.
pub const DEVICE_ERROR_KINDS: [&str; 12] = [
    "unavailable",
    "timeout",
    "key_not_found",
    "pin_rejected",
    "pin_locked",
    "touch_required",
    "touch_timeout",
    "unsupported",
    "malformed",
    "bad_signature",
    "quarantined",
    "other",
];

/// The `reason` label of refusals.
pub const REFUSAL_REASONS: [&str; 3] = ["policy", "rate_limit", "queue_full"];

impl Metrics {
    /// Every metric at zero, with the label sets dashboards expect registered up front.
    fn new() -> Metrics {
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as MakeHistogram),
            queue_wait: latency_histogram(),
            device: latency_histogram(),
            device_errors: Family::default(),
            queue_depth: Gauge::default(),
            in_use: Gauge::default(),
            refusals: Family::default(),
            audit_failures: Counter::default(),
        };
        for op in OPERATIONS {
            drop(
                m.requests
                    .get_or_create(&[("operation", op), ("outcome", "ok"), ("code", "OK")]),
            );
        }
        for kind in DEVICE_ERROR_KINDS {
            drop(m.device_errors.get_or_create(&[("kind", kind)]));
        }
        for reason in REFUSAL_REASONS {
            drop(m.refusals.get_or_create(&[("reason", reason)]));
        }
        m
    }

    /// Register every metric (clones sharing the values) in `registry`, names under `sigild_`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sigild_requests",
            "gRPC requests answered, by operation, outcome (ok, refused, failed) and gRPC code",
            self.requests.clone(),
        );
        registry.register(
            "sigild_request_duration_seconds",
            "Time from a gRPC request's arrival to its answer's headers, by operation",
            self.duration.clone(),
        );
        registry.register(
            "sigild_device_queue_wait_seconds",
            "Time device jobs waited in the queue for a worker (session)",
            self.queue_wait.clone(),
        );
        registry.register(
            "sigild_device_seconds",
            "Time a worker spent on one device job (the device call and the host work next to it)",
            self.device.clone(),
        );
        registry.register(
            "sigild_device_errors",
            "Failed device operations answered to callers, by kind",
            self.device_errors.clone(),
        );
        registry.register(
            "sigild_device_queue_depth",
            "Device jobs waiting for a worker now",
            self.queue_depth.clone(),
        );
        registry.register(
            "sigild_device_sessions_in_use",
            "Device workers (sessions) busy with a job now",
            self.in_use.clone(),
        );
        registry.register(
            "sigild_refusals",
            "Requests refused by the caller policy, a rate limit, or a full device queue",
            self.refusals.clone(),
        );
        registry.register(
            "sigild_audit_write_failures",
            "Audit records that could not be written",
            self.audit_failures.clone(),
        );
    }

    /// A gRPC request answered with `code` after `elapsed`.
    pub fn request(&self, operation: &'static str, code: i32, elapsed: Duration) {
        let (code, outcome) = code_outcome(code);
        self.requests
            .get_or_create(&[
                ("operation", operation),
                ("outcome", outcome),
                ("code", code),
            ])
            .inc();
        self.duration
            .get_or_create(&[("operation", operation)])
            .observe(elapsed.as_secs_f64());
    }

    /// A device job is being queued: counted now, uncounted again unless
    /// [`Queued::sent`] says it went on the queue.
    pub fn job_queued(&self) -> Queued<'_> {
        self.queue_depth.inc();
        Queued(&self.queue_depth)
    }

    /// A queued job was dropped unrun (the pool is closing).
    pub fn job_dropped(&self) {
        self.queue_depth.dec();
    }

    /// A worker picked up a job queued at `queued`; returns when it started, for
    /// [`Metrics::job_done`].
    pub fn job_started(&self, queued: Instant) -> Instant {
        let now = Instant::now();
        self.queue_depth.dec();
        self.in_use.inc();
        self.queue_wait
            .observe(now.saturating_duration_since(queued).as_secs_f64());
        now
    }

    /// A worker finished the job it started at `started`.
    pub fn job_done(&self, started: Instant) {
        self.in_use.dec();
        self.device.observe(started.elapsed().as_secs_f64());
    }

    /// A failed request's cause, if it is a device error or a refusal (`api::status_for` calls
    /// this for every failed service call).
    pub fn failed(&self, e: &crate::service::Error) {
        match failure_label(e) {
            Some(Failure::Device(kind)) => {
                self.device_errors.get_or_create(&[("kind", kind)]).inc()
            }
            Some(Failure::Refused(reason)) => {
                self.refusals.get_or_create(&[("reason", reason)]).inc()
            }
            None => 0,
        };
    }

    /// An audit record could not be written.
    pub fn audit_write_failed(&self) {
        self.audit_failures.inc();
    }
}

/// A job counted in the queue depth before it was sent ([`Metrics::job_queued`]).
#[derive(Debug)]
pub struct Queued<'a>(&'a Gauge);

impl Queued<'_> {
    /// Whether the job went on the queue; if not, it is taken off the count.
    pub fn sent(self, sent: bool) {
        if !sent {
            self.0.dec();
        }
    }
}

/// What a failed request counts as.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// A device error of this kind.
    Device(&'static str),
    /// A refusal for this reason.
    Refused(&'static str),
}

/// The device-error kind or refusal reason of a failed service call; `None` for the caller's
/// own mistakes and other failures.
fn failure_label(e: &crate::service::Error) -> Option<Failure> {
    use crate::backend::BackendError as B;
    use crate::keyring::KeyringError;
    use crate::service::Error as E;
    let backend = |b: &B| match b {
        B::Busy(_) => Failure::Refused("queue_full"),
        B::Unavailable(_) | B::ShuttingDown => Failure::Device("unavailable"),
        B::KeyNotFound(_) => Failure::Device("key_not_found"),
        B::PinRejected(_) => Failure::Device("pin_rejected"),
        B::PinLocked => Failure::Device("pin_locked"),
        B::TouchRequired => Failure::Device("touch_required"),
        B::TouchTimeout => Failure::Device("touch_timeout"),
        B::Unsupported(_) => Failure::Device("unsupported"),
        B::Malformed(_) => Failure::Device("malformed"),
        _ => Failure::Device("other"),
    };
    match e {
        E::Policy(p) if p.is_rate_limit() => Some(Failure::Refused("rate_limit")),
        E::Policy(_) => Some(Failure::Refused("policy")),
        E::Backend(b) | E::Keyring(KeyringError::Backend(b)) => Some(backend(b)),
        E::Unsupported { .. } => Some(Failure::Device("unsupported")),
        E::Timeout { .. } => Some(Failure::Device("timeout")),
        E::BadSignature { .. } => Some(Failure::Device("bad_signature")),
        E::Quarantined => Some(Failure::Device("quarantined")),
        _ => None,
    }
}

/// A tower layer around the gRPC routes that counts every request by operation, outcome and
/// code, and times it until its answer's headers. The code is the `grpc-status` header of a
/// trailers-only answer (every failed unary call); an answer without one is counted `OK` (a
/// stream that fails later is still counted by its start).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestLayer;

impl<S> tower::Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestService { inner }
    }
}

/// The service [`RequestLayer`] makes.
#[derive(Debug, Clone)]
pub struct RequestService<S> {
    /// The gRPC routes.
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for RequestService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        use tracing::Instrument as _;
        let operation = operation(req.uri().path());
        let started = Instant::now();
        // The request's id from its first line on: every log line of the request carries it
        // (the span's field), and the handler, its audit record and its answer use the same.
        let id = crate::service::request_id();
        let span = tracing::info_span!("request", request_id = %id);
        req.extensions_mut().insert(crate::service::RequestId(id));
        let answer = {
            let _in = span.enter();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let answer = answer.await;
                let code = match &answer {
                    Ok(r) => r
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    // The transport failed the request: no gRPC answer went out.
                    Err(_) => 14,
                };
                metrics().request(operation, code, started.elapsed());
                answer
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn operations_are_the_rpcs_of_the_proto_files() {
        let mut rpcs: Vec<&str> = [
            include_str!("../proto/sigil/v1/signing.proto"),
            include_str!("../proto/sigil/v1/keys.proto"),
            include_str!("../proto/sigil/v1/decryption.proto"),
        ]
        .iter()
        .flat_map(|p| p.lines())
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .filter_map(|l| l.split('(').next())
        .map(str::trim)
        .collect();
        rpcs.sort_unstable();
        let mut ours: Vec<&str> = OPERATIONS
            .iter()
            .copied()
            .filter(|o| *o != "other")
            .collect();
        ours.sort_unstable();
        assert_eq!(rpcs, ours);
    }

    #[test]
    fn paths_map_to_operations() {
        assert_eq!(operation("/sigil.v1.SigningService/SignJws"), "SignJws");
        assert_eq!(operation("/sigil.v1.KeyService/RotateKey"), "RotateKey");
        assert_eq!(operation("/grpc.health.v1.Health/Check"), "other");
        assert_eq!(operation("/sigil.v1.SigningService/Nope"), "other");
        assert_eq!(operation("garbage"), "other");
    }

    #[test]
    fn codes_have_names_and_outcomes() {
        assert_eq!(code_outcome(0), ("OK", "ok"));
        assert_eq!(code_outcome(7), ("PERMISSION_DENIED", "refused"));
        assert_eq!(code_outcome(8), ("RESOURCE_EXHAUSTED", "refused"));
        assert_eq!(code_outcome(13), ("INTERNAL", "failed"));
        assert_eq!(code_outcome(14), ("UNAVAILABLE", "failed"));
        assert_eq!(code_outcome(99), ("UNKNOWN", "failed"));
        assert_eq!(code_outcome(-1), ("UNKNOWN", "failed"));
    }

    #[test]
    fn device_errors_and_refusals_are_labelled() {
        use crate::backend::BackendError;
        use crate::service::Error;
        assert_eq!(
            failure_label(&Error::Backend(BackendError::Busy(4))),
            Some(Failure::Refused("queue_full"))
        );
        assert_eq!(
            failure_label(&Error::Backend(BackendError::PinLocked)),
            Some(Failure::Device("pin_locked"))
        );
        assert_eq!(
            failure_label(&Error::Quarantined),
            Some(Failure::Device("quarantined"))
        );
        assert_eq!(failure_label(&Error::DeadlinePassed), None);
        for f in [
            Error::Backend(BackendError::TouchTimeout),
            Error::Backend(BackendError::ShuttingDown),
        ] {
            match failure_label(&f) {
                Some(Failure::Device(k)) => assert!(DEVICE_ERROR_KINDS.contains(&k), "{k}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn recorded_values_appear_in_the_text_format() {
        let m = Metrics::new();
        m.request("SignJws", 7, Duration::from_millis(2));
        let started = m.job_started(Instant::now());
        m.job_done(started);
        m.audit_write_failed();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        assert!(text.contains(
            "sigild_requests_total{operation=\"SignJws\",outcome=\"refused\",code=\"PERMISSION_DENIED\"} 1"
        ), "{text}");
        assert!(
            text.contains("sigild_audit_write_failures_total 1"),
            "{text}"
        );
        assert!(text.contains("sigild_device_seconds_count 1"), "{text}");
        assert!(text.contains("sigild_device_sessions_in_use 0"), "{text}");
    }
}
