//! `sigild bench --device-latency-ms N`: pool sizing for network HSMs. A network HSM answers
//! in milliseconds, so throughput comes from sessions in flight, not from a fast loop: with
//! `s` sessions and a device latency `d`, no daemon can sign faster than `s / d` (the latency
//! bound), and none faster than its CPU allows. This mode puts the bench token behind the
//! fault-injecting module (`tests/faulty-pkcs11`, `sign_delay_ms=N`: every signature answered
//! N ms late, the real SoftHSM signature made as well), runs the daemon with each `--sessions`
//! count of workers (one logged-in session each) and, at twice as many callers in flight as
//! sessions, reports signatures/s against the bound, with the CPU limit measured first (the
//! same daemon and device with no injected latency), and the same number of threads calling
//! the device directly for comparison.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sigild::app;
use sigild::config::Config;
use sigild::jose::Alg;

use super::overload::{Outcomes, closed_loop, connect};
use super::{
    BenchArgs, Measure, bench_key, benchmark_config, direct_row, sample_input, start_daemon,
};
use crate::dev::DevPaths;

/// The fault-injecting module's source (the tests build it the same way).
const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/faulty-pkcs11/faulty.c");

/// The control file of the fault-injecting module in the bench's state directory.
pub(super) fn control_file(paths: &DevPaths) -> PathBuf {
    paths.dir.join("faulty.control")
}

/// What the fault-injecting module reads from the environment: the real module it wraps and
/// its control file. Set by `main` while the process is single-threaded.
pub fn environment(paths: &DevPaths) -> Vec<(&'static str, OsString)> {
    vec![
        (
            "SIGILD_FAULTY_TARGET",
            paths.module.clone().into_os_string(),
        ),
        (
            "SIGILD_FAULTY_CONTROL",
            control_file(paths).into_os_string(),
        ),
    ]
}

/// Build the fault-injecting module into the state directory (again when the source is newer)
/// with `cc`, as tests/support/faulty.rs does. Blocks.
///
/// # Errors
/// No source (the bench runs from a source tree), no compiler, no PKCS#11 headers.
pub(super) fn faulty_module(paths: &DevPaths) -> Result<PathBuf, String> {
    let lib = paths.dir.join("libsigild_faulty.so");
    let source = Path::new(SOURCE);
    let src_time = std::fs::metadata(source)
        .and_then(|m| m.modified())
        .map_err(|e| format!("{SOURCE}: {e} (this mode runs from a source tree)"))?;
    let fresh = std::fs::metadata(&lib)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= src_time);
    if !fresh {
        let tmp = lib.with_extension(format!("so.{}.tmp", std::process::id()));
        let out = std::process::Command::new("cc")
            .args([
                "-shared",
                "-fPIC",
                "-O2",
                "-Wall",
                "-I/usr/include/p11-kit-1",
                SOURCE,
                "-o",
            ])
            .arg(&tmp)
            .arg("-ldl")
            .arg("-lpthread")
            .output()
            .map_err(|e| format!("cc: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cc {SOURCE} (needs libp11-kit-dev): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::rename(&tmp, &lib).map_err(|e| format!("{}: {e}", lib.display()))?;
    }
    Ok(lib)
}

/// Replace the module's control file (a new file renamed over the old one, so the module never
/// reads half of it). The stats file stays off: the module would rewrite it under its lock at
/// every signature.
pub(super) fn set_control(paths: &DevPaths, text: &str) -> Result<(), String> {
    let file = control_file(paths);
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, format!("no_stats=1\n{text}\n"))
        .and_then(|()| std::fs::rename(&tmp, &file))
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// One measured session count.
struct Scaled {
    /// Signatures/s through the daemon (gRPC over TCP, verified, audited).
    ops: f64,
    /// Median and 99th percentile latency, µs.
    p50_us: u64,
    p99_us: u64,
    /// Errors (any answer but a signature).
    errors: u64,
    /// Signatures/s of as many threads calling the device directly.
    direct: f64,
}

/// Run the scaling measurement and print its table.
///
/// # Errors
/// Set-up failures; a run in which any request failed.
pub async fn run(paths: &DevPaths, args: &BenchArgs) -> Result<(), String> {
    let delay_ms = args.device_latency_ms.unwrap_or(2).max(1);
    let mut config = benchmark_config(paths).await?;
    let paths2 = paths.clone();
    let module = tokio::task::spawn_blocking(move || faulty_module(&paths2))
        .await
        .map_err(|e| e.to_string())??;
    let p11 = config
        .pkcs11
        .as_mut()
        .ok_or("this mode needs the dev config's [pkcs11] token")?;
    p11.module = module;
    let alg =
        Alg::parse(args.algs.first().map_or("ES256", String::as_str)).map_err(|e| e.to_string())?;
    let duration = Duration::from_secs_f64(args.seconds.unwrap_or(3.0).clamp(0.2, 600.0));
    println!(
        "sigild bench --device-latency-ms {delay_ms}: {} through the fault-injecting module on SoftHSM (every signature {delay_ms} ms late), gRPC over TCP with verification and audit, {:.1} s per row, daemon runtime threads {}, 2 callers in flight per session",
        alg.name(),
        duration.as_secs_f64(),
        args.server_threads
    );

    set_control(paths, "")?;
    let cpu_workers = 8;
    let cpu = measure(&config, paths, args, alg, cpu_workers, duration, false).await?;
    println!(
        "CPU limit (no injected latency, {cpu_workers} sessions, {} callers): {:.0} sig/s, p50 {:.3} ms ({} errors)",
        cpu_workers * 2,
        cpu.ops,
        cpu.p50_us as f64 / 1000.0,
        cpu.errors
    );
    set_control(paths, &format!("sign_delay_ms={delay_ms}"))?;
    println!(
        "{:>8} {:>12} {:>10} {:>8} {:>10} {:>10} {:>7} {:>12} {:>8}",
        "sessions",
        "bound sig/s",
        "sigild/s",
        "% bound",
        "p50 ms",
        "p99 ms",
        "errors",
        "direct/s",
        "% bound"
    );
    let mut errors = cpu.errors;
    for &sessions in &args.sessions {
        let sessions = sessions.clamp(1, 256);
        let r = measure(&config, paths, args, alg, sessions, duration, true).await?;
        let bound = sessions as f64 * 1000.0 / delay_ms as f64;
        println!(
            "{:>8} {:>12.0} {:>10.0} {:>7.0}% {:>10.3} {:>10.3} {:>7} {:>12.0} {:>7.0}%{}",
            sessions,
            bound,
            r.ops,
            100.0 * r.ops / bound,
            r.p50_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0,
            r.errors,
            r.direct,
            100.0 * r.direct / bound,
            if bound > cpu.ops {
                format!(
                    "  (bound above the CPU limit: {:.0}% of it)",
                    100.0 * r.ops / cpu.ops.max(f64::MIN_POSITIVE)
                )
            } else {
                String::new()
            }
        );
        errors += r.errors;
    }
    set_control(paths, "")?;
    if errors > 0 {
        return Err(format!("{errors} requests failed"));
    }
    Ok(())
}

/// Start the daemon with `sessions` workers on `config`'s token, keep twice as many callers in
/// flight for `duration` (after a short warm-up) and, with `direct`, measure as many threads
/// calling the device directly; then stop the daemon.
async fn measure(
    config: &Config,
    paths: &DevPaths,
    args: &BenchArgs,
    alg: Alg,
    sessions: usize,
    duration: Duration,
    direct: bool,
) -> Result<Scaled, String> {
    let mut config = config.clone();
    if let Some(p11) = config.pkcs11.as_mut() {
        p11.workers = sessions;
        p11.queue_depth = p11.queue_depth.max(4 * sessions);
    }
    let running = start_daemon(config, paths, args.server_threads).await?;
    let result = measure_on(&running, alg, sessions, duration, direct).await;
    tokio::task::spawn_blocking(move || running.shutdown())
        .await
        .map_err(|e| e.to_string())?;
    result
}

async fn measure_on(
    running: &app::Detached,
    alg: Alg,
    sessions: usize,
    duration: Duration,
    direct: bool,
) -> Result<Scaled, String> {
    let key = bench_key(&running.service, alg).await?;
    let key_arc: Arc<str> = Arc::from(key.as_str());
    let input: Arc<[u8]> = Arc::from(sample_input());
    let callers = 2 * sessions;
    // Up to 32 callers per HTTP/2 connection, as a few busy clients would send them.
    let mut clients = Vec::new();
    for _ in 0..callers.div_ceil(32).max(1) {
        clients.push(connect(running.addr).await?);
    }
    let warm = Arc::new(Outcomes::new());
    closed_loop(
        &clients,
        &warm,
        &key_arc,
        &input,
        callers,
        Duration::from_millis(300),
    )
    .await;
    let out = Arc::new(Outcomes::new());
    closed_loop(&clients, &out, &key_arc, &input, callers, duration).await;
    let ops = out.accepted.count() as f64 / duration.as_secs_f64();
    let errors = out.exhausted.count() + out.other_count();
    for (what, n) in out
        .other
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        println!("    {n} × {what}");
    }
    let direct = if direct {
        let p11 = running
            .pkcs11
            .as_ref()
            .ok_or("this mode needs the PKCS#11 backend")?;
        let version = running
            .service
            .keyring()
            .active(&key)
            .map_err(|e| e.to_string())?;
        let m = Measure {
            key,
            alg,
            clients: sessions,
            duration,
            input: Arc::new(sample_input()),
        };
        direct_row(p11, &version, &m, "direct PKCS#11")
            .await?
            .ops_per_sec
    } else {
        0.0
    };
    Ok(Scaled {
        ops,
        p50_us: out.accepted.quantile(0.50),
        p99_us: out.accepted.quantile(0.99),
        errors,
        direct,
    })
}
