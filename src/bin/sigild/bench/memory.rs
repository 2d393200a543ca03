//! `sigild bench --memory`: what connections, requests in flight and worker sessions cost in
//! resident memory. The daemon runs in a process of its own (this binary again, with the
//! hidden `--serve-daemon`), so its `/proc/<pid>/status` holds the daemon alone; this process
//! is the client. Figures, each a difference of the daemon's VmRSS:
//! - at rest (after a few signatures) → with `--idle-connections` HTTP/2 connections open,
//!   each having made one call: per 1,000 idle connections;
//! - → with `--in-flight` requests inside the daemon at once (one per connection at most;
//!   the token behind the fault-injecting module answers late so that they wait in the queue,
//!   kept full by closed-loop callers): per 1,000 requests in flight;
//! - a second daemon with 256 worker sessions, each having signed, against the first at rest:
//!   per worker (thread and session), with the virtual size beside it (the thread's stack
//!   reservation).

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sigild::config::Config;
use sigild::jose::Alg;

use super::latency::{faulty_module, set_control};
use super::overload::{Client, Outcomes, closed_loop, connect, mib};
use super::{BenchArgs, bench_key, for_benchmark, sample_input, start_daemon};
use crate::dev::{self, DevPaths};

/// Worker sessions of the second daemon (the configuration's bound).
const MANY_WORKERS: usize = 256;

/// The daemon config of both this mode's processes.
fn daemon_config(paths: &DevPaths, args: &BenchArgs, workers: usize) -> Result<Config, String> {
    let mut config = Config::load(&paths.config).map_err(|e| e.to_string())?;
    for_benchmark(&mut config);
    config.server.max_connections = config
        .server
        .max_connections
        .max(args.idle_connections + 64);
    // Requests wait in the queue for seconds on purpose: no deadline may cut them short.
    config.signing.timeout_ms = 120_000;
    let p11 = config
        .pkcs11
        .as_mut()
        .ok_or("this mode needs the dev config's [pkcs11] token")?;
    p11.module = faulty_module(paths)?;
    p11.workers = workers;
    p11.queue_depth = p11.queue_depth.max(2 * args.in_flight + workers);
    Ok(config)
}

/// The daemon side (`--serve-daemon`): start, make sure the key exists, print
/// `ready <addr> <key>` and serve until stdin closes.
///
/// # Errors
/// Start-up failures.
pub async fn serve(paths: &DevPaths, args: &BenchArgs) -> Result<(), String> {
    let workers = args.workers.unwrap_or(2).clamp(1, MANY_WORKERS);
    let config = {
        let (paths, args) = (paths.clone(), args.clone());
        tokio::task::spawn_blocking(move || daemon_config(&paths, &args, workers))
            .await
            .map_err(|e| e.to_string())??
    };
    let running = start_daemon(config, paths, args.server_threads).await?;
    let alg =
        Alg::parse(args.algs.first().map_or("ES256", String::as_str)).map_err(|e| e.to_string());
    let key = match alg {
        Ok(alg) => bench_key(&running.service, alg).await,
        Err(e) => Err(e),
    };
    if let Ok(key) = &key {
        println!("ready {} {key}", running.addr);
        let _ = std::io::stdout().flush();
        // Serve until the parent closes our stdin (or exits).
        let _ = tokio::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin(), &mut std::io::sink())
        })
        .await;
    }
    tokio::task::spawn_blocking(move || running.shutdown())
        .await
        .map_err(|e| e.to_string())?;
    key.map(drop)
}

/// A daemon process of this mode, stopped (stdin closed, then waited for) when dropped.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    key: Arc<str>,
}

impl Daemon {
    fn start(paths: &DevPaths, args: &BenchArgs, workers: usize) -> Result<Daemon, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("bench")
            .arg("--serve-daemon")
            .arg("--state-dir")
            .arg(&paths.dir)
            .arg(format!("--workers={workers}"))
            .arg(format!("--idle-connections={}", args.idle_connections))
            .arg(format!("--in-flight={}", args.in_flight))
            .arg(format!("--server-threads={}", args.server_threads))
            .arg(format!(
                "--algs={}",
                args.algs.first().map_or("ES256", String::as_str)
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("the daemon process: {e}"))?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next().map(str::parse), parts.next()) {
            (Some("ready"), Some(Ok(addr)), Some(key)) => Ok(Daemon {
                addr,
                key: Arc::from(key),
                child,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!(
                    "the daemon process did not start (it said {line:?})"
                ))
            }
        }
    }

    /// VmRSS, VmSize (KiB) and threads of the daemon process.
    fn status(&self) -> Status {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        Status {
            rss: field("VmRSS:"),
            size: field("VmSize:"),
            threads: field("Threads:"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One reading of the daemon's `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
struct Status {
    /// Resident set, KiB.
    rss: u64,
    /// Virtual size, KiB.
    size: u64,
    /// Threads.
    threads: u64,
}

/// KiB per `per` items from a difference of readings.
fn per(delta_kib: i64, items: usize, per: usize) -> String {
    let kib = delta_kib as f64 * per as f64 / items.max(1) as f64;
    if kib.abs() >= 1024.0 {
        format!("{:.1} MiB", kib / 1024.0)
    } else {
        format!("{kib:.0} KiB")
    }
}

/// Run the memory measurement and print its report.
///
/// # Errors
/// Set-up failures; requests that failed.
pub async fn run(paths: &DevPaths, args: &BenchArgs) -> Result<(), String> {
    let paths2 = paths.clone();
    tokio::task::spawn_blocking(move || {
        dev::ensure_token(&paths2).map_err(|e| e.to_string())?;
        faulty_module(&paths2).map(drop)
    })
    .await
    .map_err(|e| e.to_string())??;
    set_control(paths, "")?;
    let workers = args.workers.unwrap_or(2).clamp(1, MANY_WORKERS);
    let (idle, in_flight) = (args.idle_connections.max(1), args.in_flight.max(1));
    println!(
        "sigild bench --memory: the daemon in its own process ({workers} PKCS#11 workers, daemon runtime threads {}), plain TCP on loopback; VmRSS from /proc/<pid>/status",
        args.server_threads
    );
    let input: Arc<[u8]> = Arc::from(sample_input());
    let daemon = spawn(paths, args, workers).await?;
    let clients = vec![connect(daemon.addr).await?];
    let warm = Arc::new(Outcomes::new());
    closed_loop(
        &clients,
        &warm,
        &daemon.key,
        &input,
        4,
        Duration::from_millis(500),
    )
    .await;
    drop(clients);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rest = daemon.status();
    println!(
        "  at rest: RSS {}, virtual {}, {} threads",
        mib(rest.rss),
        mib(rest.size),
        rest.threads
    );

    let mut conns: Vec<Client> = Vec::with_capacity(idle);
    let opened = Arc::new(Outcomes::new());
    for _ in 0..idle {
        let c = connect(daemon.addr).await?;
        opened.call(c.clone(), &daemon.key, &input).await;
        conns.push(c);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with_idle = daemon.status();
    println!(
        "  {idle} idle connections (each made one call): RSS {} → per 1,000 idle connections {}",
        mib(with_idle.rss),
        per(with_idle.rss as i64 - rest.rss as i64, idle, 1000)
    );

    // Requests wait in the queue: the device answers `delay` ms late, so `in_flight` callers
    // keep about that many inside the daemon, each waiting in_flight × delay / workers (~2 s).
    let delay = (2000 * workers / in_flight).max(1);
    set_control(paths, &format!("sign_delay_ms={delay}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Outcomes::new());
    let mut tasks = Vec::new();
    for i in 0..in_flight {
        let Some(client) = conns.get(i % conns.len()).cloned() else {
            break;
        };
        let (stop, load, key, input) = (
            Arc::clone(&stop),
            Arc::clone(&load),
            Arc::clone(&daemon.key),
            Arc::clone(&input),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                load.call(client.clone(), &key, &input).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut peak, mut outstanding) = (with_idle, 0);
    for _ in 0..10 {
        let s = daemon.status();
        if s.rss > peak.rss {
            peak = s;
        }
        outstanding = outstanding.max(load.outstanding.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    set_control(paths, "")?;
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "  {in_flight} requests in flight (device {delay} ms late, {workers} workers; at most {outstanding} outstanding at the client): RSS max {} → per 1,000 in flight {}",
        mib(peak.rss),
        per(peak.rss as i64 - with_idle.rss as i64, in_flight, 1000)
    );
    let failed = opened.other_count()
        + opened.exhausted.count()
        + load.other_count()
        + load.exhausted.count();
    drop(conns);
    stop_daemon(daemon).await;

    // Worker sessions: every one of MANY_WORKERS busy once (the device a little late, twice
    // as many callers), then at rest.
    let many = spawn(paths, args, MANY_WORKERS).await?;
    set_control(paths, "sign_delay_ms=20")?;
    let clients = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(connect(many.addr).await?);
        }
        v
    };
    let busy = Arc::new(Outcomes::new());
    closed_loop(
        &clients,
        &busy,
        &many.key,
        &input,
        2 * MANY_WORKERS,
        Duration::from_secs(1),
    )
    .await;
    set_control(paths, "")?;
    drop(clients);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let many_rest = many.status();
    let extra = MANY_WORKERS.saturating_sub(workers);
    println!(
        "  {MANY_WORKERS} worker sessions, each having signed, at rest: RSS {}, virtual {}, {} threads → per worker (thread + session) {} resident, {} virtual",
        mib(many_rest.rss),
        mib(many_rest.size),
        many_rest.threads,
        per(many_rest.rss as i64 - rest.rss as i64, extra, 1),
        per(many_rest.size as i64 - rest.size as i64, extra, 1),
    );
    let failed = failed + busy.other_count() + busy.exhausted.count();
    stop_daemon(many).await;
    println!("  errors: {failed}");
    if failed > 0 {
        return Err(format!("{failed} requests failed"));
    }
    Ok(())
}

/// Start a daemon process off the runtime (it blocks until the daemon says it is ready).
async fn spawn(paths: &DevPaths, args: &BenchArgs, workers: usize) -> Result<Daemon, String> {
    let (paths, args) = (paths.clone(), args.clone());
    tokio::task::spawn_blocking(move || Daemon::start(&paths, &args, workers))
        .await
        .map_err(|e| e.to_string())?
}

/// Stop a daemon process off the runtime (dropping it waits for the process).
async fn stop_daemon(daemon: Daemon) {
    let _ = tokio::task::spawn_blocking(move || drop(daemon)).await;
}
