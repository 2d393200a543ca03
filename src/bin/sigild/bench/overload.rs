//! `sigild bench --overload`: a saturation run. Measures the daemon's capacity first (closed
//! loop, fewer clients than the queue holds, so nothing is refused), then offers a fixed rate
//! above it (open loop: requests are sent on schedule whether or not earlier ones were
//! answered, as independent callers do) and reports what a caller sees: accepted/s,
//! RESOURCE_EXHAUSTED answers and how fast they came, the latency of accepted requests against
//! the bound the queue sets, any other error (there should be none), and the process's memory
//! after warm-up and at the end.
//!
//! The daemon runs in this process on its own runtime ([`app::Detached`]) behind its real
//! TCP listener (plain text: the benchmark measures signing, not TLS); the clients are lean
//! HTTP/2 connections on the caller's runtime. Latencies are kept in fixed-size histograms, so
//! the clients' memory does not grow with the run and the RSS figures are the daemon's growth.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use sigild::api::pb;
use sigild::app;
use sigild::jose::Alg;

use super::{BenchArgs, bench_key, benchmark_config, sample_input, start_daemon};
use crate::dev::DevPaths;

/// A signing client on one HTTP/2 connection.
pub(super) type Client = pb::signing_service_client::SigningServiceClient<H2>;

/// One HTTP/2 connection, driven directly by hyper (no buffer task between the caller and
/// the connection, unlike tonic's `Channel`), as a tower service for the generated client.
#[derive(Clone)]
pub(super) struct H2 {
    /// The connection's request handle.
    send: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
}

impl tower::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        // HTTP/2 needs an absolute URI; tonic's generated client sends only the path.
        let uri = http::Uri::builder()
            .scheme("http")
            .authority("localhost")
            .path_and_query(req.uri().path())
            .build();
        if let Ok(uri) = uri {
            *req.uri_mut() = uri;
        }
        Box::pin(self.send.send_request(req))
    }
}

pub(super) async fn connect(addr: SocketAddr) -> Result<Client, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(pb::signing_service_client::SigningServiceClient::new(H2 {
        send,
    }))
}

/// Latencies in microseconds, in a fixed number of buckets: exact below 1024 µs, then 128
/// buckets per power of two (under 1 % relative error) up to about 2^40 µs.
pub(super) struct Histogram {
    /// Count per bucket.
    counts: Vec<AtomicU64>,
    /// Largest value recorded, µs.
    max: AtomicU64,
}

/// Buckets below which each microsecond has its own bucket.
const LINEAR: u64 = 1024;
/// Sub-buckets per power of two above [`LINEAR`] (2^7).
const SUB_BITS: u32 = 7;

impl Histogram {
    fn new() -> Histogram {
        let buckets = LINEAR as usize + (40 - 10) * (1 << SUB_BITS);
        Histogram {
            counts: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }

    fn bucket(us: u64) -> usize {
        if us < LINEAR {
            return us as usize;
        }
        let exp = 63 - us.leading_zeros(); // >= 10
        let sub = (us >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        LINEAR as usize + ((exp - 10) as usize) * (1 << SUB_BITS) + sub as usize
    }

    /// The largest value that falls in bucket `i`.
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < LINEAR {
            return i;
        }
        let exp = (i - LINEAR) / (1 << SUB_BITS) + 10;
        let sub = (i - LINEAR) % (1 << SUB_BITS);
        ((1 << SUB_BITS) + sub + 1) * (1 << (exp - u64::from(SUB_BITS))) - 1
    }

    fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let i = Self::bucket(us).min(self.counts.len() - 1);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.max.fetch_max(us, Ordering::Relaxed);
    }

    pub(super) fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The `p` quantile (0..=1), µs (the bucket's upper edge, capped at the maximum).
    pub(super) fn quantile(&self, p: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64 * p).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                return Self::upper(i).min(self.max.load(Ordering::Relaxed));
            }
        }
        self.max.load(Ordering::Relaxed)
    }

    /// `p50 … ms, p99 … ms, max … ms`.
    pub(super) fn summary(&self) -> String {
        format!(
            "p50 {}, p99 {}, max {}",
            ms(self.quantile(0.50)),
            ms(self.quantile(0.99)),
            ms(self.max.load(Ordering::Relaxed))
        )
    }
}

/// Microseconds as milliseconds, three decimals.
fn ms(us: u64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

/// What the clients saw.
pub(super) struct Outcomes {
    /// Latency of signatures returned.
    pub(super) accepted: Histogram,
    /// Latency of RESOURCE_EXHAUSTED answers.
    pub(super) exhausted: Histogram,
    /// Every other outcome, by status code and message.
    pub(super) other: Mutex<BTreeMap<String, u64>>,
    /// Requests sent and not yet answered.
    pub(super) outstanding: AtomicU64,
    /// The most ever outstanding.
    max_outstanding: AtomicU64,
}

impl Outcomes {
    pub(super) fn new() -> Outcomes {
        Outcomes {
            accepted: Histogram::new(),
            exhausted: Histogram::new(),
            other: Mutex::new(BTreeMap::new()),
            outstanding: AtomicU64::new(0),
            max_outstanding: AtomicU64::new(0),
        }
    }

    pub(super) fn other_count(&self) -> u64 {
        self.other
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .sum()
    }

    /// Send one request on `client` and record how it ended.
    pub(super) async fn call(&self, mut client: Client, key: &str, data: &[u8]) {
        let now = self.outstanding.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_outstanding.fetch_max(now, Ordering::Relaxed);
        let t = Instant::now();
        let r = client
            .sign_raw(pb::SignRawRequest {
                version: 0,
                key: key.to_owned(),
                data: data.to_vec(),
                alg: String::new(),
            })
            .await;
        match r {
            Ok(_) => self.accepted.record(t.elapsed()),
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                self.exhausted.record(t.elapsed());
            }
            Err(s) => {
                *self
                    .other
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(format!("{:?}: {}", s.code(), s.message()))
                    .or_default() += 1;
            }
        }
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resident memory of this process (daemon and clients), KiB, from `/proc/self/status`.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

pub(super) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Run the saturation benchmark and print its report.
///
/// # Errors
/// Set-up failures, and a run in which an error other than RESOURCE_EXHAUSTED occurred or
/// nothing was signed.
pub async fn run(paths: &DevPaths, args: &BenchArgs) -> Result<(), String> {
    let mut config = benchmark_config(paths).await?;
    let p11 = config
        .pkcs11
        .as_mut()
        .ok_or("the overload benchmark needs the dev config's [pkcs11] token")?;
    if let Some(w) = args.workers {
        p11.workers = w.max(1);
    }
    if let Some(q) = args.queue_depth {
        p11.queue_depth = q.max(1);
    }
    let (workers, queue_depth) = (p11.workers, p11.queue_depth);
    let audit_file = config.audit.file.clone();
    let running = start_daemon(config.clone(), paths, args.server_threads).await?;
    let streams = usize::try_from(config.server.max_concurrent_streams).unwrap_or(usize::MAX);
    let result = measure(&running, args, workers, queue_depth, streams).await;
    tokio::task::spawn_blocking(move || running.shutdown())
        .await
        .map_err(|e| e.to_string())?;
    let (outcomes, started) = result?;
    if let Some(file) = audit_file {
        let daemon_side = tokio::task::spawn_blocking(move || exhausted_in_audit(&file, &started))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(h) = daemon_side.filter(|h| h.count() > 0) {
            println!(
                "  RESOURCE_EXHAUSTED, daemon side (audit latency_us: arrival at the service to answer, {} records): {}",
                h.count(),
                h.summary()
            );
        }
    }
    let other = outcomes.other_count();
    println!("  other errors: {other}");
    for (what, n) in outcomes
        .other
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        println!("    {n} × {what}");
    }
    if other > 0 {
        return Err(format!("{other} errors other than RESOURCE_EXHAUSTED"));
    }
    if outcomes.accepted.count() == 0 {
        return Err("no request was signed during the overload".into());
    }
    Ok(())
}

/// The measurements proper, on a started daemon. Returns the overload phase's outcomes and
/// the audit time at which it began.
async fn measure(
    running: &app::Detached,
    args: &BenchArgs,
    workers: usize,
    queue_depth: usize,
    streams: usize,
) -> Result<(Arc<Outcomes>, String), String> {
    let alg_name = args.algs.first().map_or("ES256", String::as_str);
    let alg = Alg::parse(alg_name).map_err(|e| e.to_string())?;
    let service = &running.service;
    let key = bench_key(service, alg).await?;
    let key: Arc<str> = Arc::from(key);
    let input: Arc<[u8]> = Arc::from(sample_input());
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(connect(running.addr).await?);
    }
    let duration = Duration::from_secs_f64(args.seconds.unwrap_or(300.0).clamp(1.0, 86_400.0));
    let capacity_time = Duration::from_secs_f64((duration.as_secs_f64() / 10.0).clamp(0.5, 10.0));
    println!(
        "sigild bench --overload: {} on SoftHSM, {workers} PKCS#11 workers, queue_depth {queue_depth}, daemon runtime threads {}, {} HTTP/2 connections (plain TCP, up to {streams} requests in flight each), input {} bytes",
        alg.name(),
        args.server_threads,
        clients.len(),
        input.len()
    );

    // Capacity: closed loop with a few clients per worker, far fewer than the queue holds.
    let concurrency = (workers * 4).min(queue_depth + workers).max(1);
    let warm = Arc::new(Outcomes::new());
    closed_loop(
        &clients,
        &warm,
        &key,
        &input,
        concurrency,
        capacity_time / 2,
    )
    .await;
    let cap = Arc::new(Outcomes::new());
    closed_loop(&clients, &cap, &key, &input, concurrency, capacity_time).await;
    let capacity = cap.accepted.count() as f64 / capacity_time.as_secs_f64();
    if capacity <= 0.0 {
        return Err(format!(
            "capacity measurement signed nothing ({} errors)",
            cap.other_count() + cap.exhausted.count()
        ));
    }
    let service_time_ms = 1000.0 * workers as f64 / capacity;
    println!(
        "capacity: {capacity:.0} sig/s (closed loop, {concurrency} clients, {:.1} s; RESOURCE_EXHAUSTED {}, other errors {}); service time per worker {service_time_ms:.3} ms",
        capacity_time.as_secs_f64(),
        cap.exhausted.count(),
        cap.other_count()
    );
    let factor = args.factor.clamp(1.0, 20.0);
    let rate = capacity * factor;
    println!(
        "offered: {rate:.0} req/s ({factor:.1}× capacity), open loop, for {:.0} s",
        duration.as_secs_f64()
    );

    let outcomes = Arc::new(Outcomes::new());
    let started_audit = sigild::audit::now_rfc3339();
    let start = Instant::now();
    let end = start + duration;
    let warm_up = Duration::from_secs_f64((duration.as_secs_f64() / 10.0).clamp(0.5, 30.0));
    let report_every = Duration::from_secs_f64((duration.as_secs_f64() / 10.0).max(1.0));
    // At most `max_concurrent_streams` requests in flight per connection, as the daemon
    // announces: a request beyond it would wait in the client's HTTP/2 queue, and its latency
    // would measure the client, not the daemon. A request due while every connection is full
    // is counted as not sent (the client, on the same cores, could not keep up).
    let slots: Vec<Arc<tokio::sync::Semaphore>> = clients
        .iter()
        .map(|_| Arc::new(tokio::sync::Semaphore::new(streams)))
        .collect();
    let (mut sent, mut not_sent) = (0u64, 0u64);
    let mut rss_warm: Option<u64> = None;
    let mut rss_max = 0u64;
    let mut next_report = start + report_every;
    let mut last = (0u64, 0u64, start);
    let mut next_sample = start;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = ((now - start).as_secs_f64() * rate) as u64;
        while sent + not_sent < due {
            let n = clients.len();
            let free = (0..n).find_map(|i| {
                let at = (sent as usize + i) % n;
                let permit = Arc::clone(slots.get(at)?).try_acquire_owned().ok()?;
                Some((clients.get(at)?.clone(), permit))
            });
            let Some((client, permit)) = free else {
                not_sent += 1;
                continue;
            };
            sent += 1;
            let (outcomes, key, input) =
                (Arc::clone(&outcomes), Arc::clone(&key), Arc::clone(&input));
            tokio::spawn(async move {
                outcomes.call(client, &key, &input).await;
                drop(permit);
            });
        }
        if now >= next_sample {
            next_sample = now + Duration::from_millis(200);
            let rss = rss_kib();
            rss_max = rss_max.max(rss);
            if rss_warm.is_none() && now - start >= warm_up {
                rss_warm = Some(rss);
            }
        }
        if now >= next_report {
            next_report += report_every;
            let (ok, busy) = (outcomes.accepted.count(), outcomes.exhausted.count());
            let secs = (now - last.2).as_secs_f64();
            println!(
                "  t={:>5.0} s: accepted {:>7.0}/s, RESOURCE_EXHAUSTED {:>7.0}/s, other errors {}, outstanding max {}, RSS {}",
                (now - start).as_secs_f64(),
                (ok - last.0) as f64 / secs,
                (busy - last.1) as f64 / secs,
                outcomes.other_count(),
                outcomes.max_outstanding.load(Ordering::Relaxed),
                mib(rss_kib())
            );
            last = (ok, busy, now);
        }
    }
    let elapsed = start.elapsed();
    let ok_in_time = outcomes.accepted.count();
    // Let the answers to requests still in flight arrive (the queue drains in about
    // queue_depth × service time).
    let drain_until = Instant::now() + Duration::from_secs(30);
    while outcomes.outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss_end = rss_kib();
    let rss_warm = rss_warm.unwrap_or(rss_end);
    let secs = elapsed.as_secs_f64();
    let (ok, busy) = (outcomes.accepted.count(), outcomes.exhausted.count());
    let bound_ms = queue_depth as f64 * service_time_ms;
    let p99_ms = outcomes.accepted.quantile(0.99) as f64 / 1000.0;
    println!("result ({secs:.1} s of overload):");
    println!(
        "  offered: {:.0} req/s; sent {:.0} req/s ({sent}; {not_sent} not sent: every connection had {streams} requests in flight)",
        (sent + not_sent) as f64 / secs,
        sent as f64 / secs
    );
    println!(
        "  accepted: {:.0} sig/s ({:.0}% of capacity; {ok} signatures, {} of them answered after the offered load stopped)",
        ok_in_time as f64 / secs,
        100.0 * ok_in_time as f64 / secs / capacity,
        ok - ok_in_time
    );
    println!(
        "  RESOURCE_EXHAUSTED: {:.0}/s ({busy}), answered at the client in {}",
        busy as f64 / secs,
        outcomes.exhausted.summary()
    );
    println!(
        "  accepted latency: {}; bound queue_depth × service time = {queue_depth} × {service_time_ms:.3} ms = {bound_ms:.1} ms: p99 {}",
        outcomes.accepted.summary(),
        if p99_ms <= bound_ms {
            "within"
        } else {
            "ABOVE"
        }
    );
    println!(
        "  requests outstanding at the client: max {} (queue_depth + workers = {})",
        outcomes.max_outstanding.load(Ordering::Relaxed),
        queue_depth + workers
    );
    println!(
        "  RSS (daemon and clients, one process): after warm-up ({:.1} s) {}, at the end {} ({:+.1}%), max {}",
        warm_up.as_secs_f64(),
        mib(rss_warm),
        mib(rss_end),
        100.0 * (rss_end as f64 - rss_warm as f64) / (rss_warm.max(1) as f64),
        mib(rss_max.max(rss_end))
    );
    Ok((outcomes, started_audit))
}

/// `concurrency` callers, each sending its next request when the last is answered, spread
/// over the connections, for `duration`.
pub(super) async fn closed_loop(
    clients: &[Client],
    outcomes: &Arc<Outcomes>,
    key: &Arc<str>,
    input: &Arc<[u8]>,
    concurrency: usize,
    duration: Duration,
) {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for client in clients.iter().cycle().take(concurrency) {
        let (client, outcomes, key, input) = (
            client.clone(),
            Arc::clone(outcomes),
            Arc::clone(key),
            Arc::clone(input),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                outcomes.call(client.clone(), &key, &input).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// The daemon's own latency for RESOURCE_EXHAUSTED answers, from the audit trail records
/// written since `since` (RFC 3339, same format as the records' `time`).
fn exhausted_in_audit(file: &std::path::Path, since: &str) -> Option<Histogram> {
    use std::io::BufRead as _;
    #[derive(serde::Deserialize)]
    struct Line {
        time: String,
        outcome: String,
        latency_us: u64,
    }
    let f = std::fs::File::open(file).ok()?;
    let h = Histogram::new();
    for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
        if !line.contains("resource_exhausted") {
            continue;
        }
        if let Ok(l) = serde_json::from_str::<Line>(&line)
            && l.outcome == "resource_exhausted"
            && l.time.as_str() >= since
        {
            h.record(Duration::from_micros(l.latency_us));
        }
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_hold_their_values() {
        for us in [0u64, 1, 999, 1023, 1024, 1025, 5000, 123_456, 10_000_000] {
            let i = Histogram::bucket(us);
            assert!(Histogram::upper(i) >= us, "{us}");
            assert!(i == 0 || Histogram::upper(i - 1) < us, "{us}");
            // Under 1 % relative error above the linear range.
            assert!(Histogram::upper(i) - us <= us / 100 + 1, "{us}");
        }
        let h = Histogram::new();
        for us in 1..=1000 {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.quantile(0.5), 500);
        assert_eq!(h.quantile(0.99), 990);
        assert_eq!(h.max.load(Ordering::Relaxed), 1000);
    }
}
