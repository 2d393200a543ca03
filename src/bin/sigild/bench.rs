//! `sigild bench`: signatures/s and p50/p99 latency through the daemon (gRPC client included,
//! over loopback) side by side with direct in-process PKCS#11 calls on the same SoftHSM token,
//! at the same concurrency, in one run — ratios from one run are what a noisy shared machine
//! can honestly show. JWE decryption gets the same comparison (direct PKCS#11 decryption: the
//! device step alone, with host OAEP decoding where the token needs it; the service in-process:
//! the whole JWE), on JWEs made once at start by Python jwcrypto.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::dev::{self, DevPaths};

mod latency;
mod memory;
mod overload;
mod p11kit;
mod profile;
mod stream;

use sigild::api::{Api, Listener, pb};
use sigild::app;
use sigild::backend::pkcs11::Pkcs11Backend;
use sigild::config::Config;
use sigild::crypto::DecryptOp;
use sigild::jose::Alg;
use sigild::jose::{Jwe, JweAlg};
use sigild::keyring::VersionInfo;
use sigild::service::{Service, ServiceOptions, SystemClock};

/// Options of `sigild bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// State directory of the benchmark token (default: a new temporary directory, removed after).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Seconds per measurement (default 3); with `--overload`, the length of the overload
    /// phase (default 300).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Concurrency levels (clients for the daemon, threads for direct calls).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub clients: Vec<usize>,
    /// Worker threads of the daemon's runtime (0 = a current-thread runtime).
    #[arg(long, default_value_t = 2)]
    pub server_threads: usize,
    /// Algorithms.
    #[arg(long, value_delimiter = ',', default_value = "ES256,PS256,EdDSA")]
    pub algs: Vec<String>,
    /// JWE key-management algorithms to measure decryption for (empty: none).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "RSA-OAEP-256,ECDH-ES+A256KW"
    )]
    pub jwe_algs: Vec<String>,
    /// Saturation run instead of the table: measure the capacity (signatures/s, closed loop),
    /// then offer `--factor` times that rate open-loop for `--seconds`, and report accepted/s,
    /// RESOURCE_EXHAUSTED answers and their latency, accepted latency against the queue bound,
    /// other errors (expected 0; the run fails otherwise) and the process's memory.
    #[arg(long)]
    pub overload: bool,
    /// With `--overload`: offered load as a multiple of the measured capacity.
    #[arg(long, default_value_t = 3.0)]
    pub factor: f64,
    /// With `--overload` or `--memory`: the PKCS#11 workers (default: the dev config's, 2).
    #[arg(long)]
    pub workers: Option<usize>,
    /// With `--overload`: the workers' queue depth (default: the dev config's).
    #[arg(long)]
    pub queue_depth: Option<usize>,
    /// With `--overload`: HTTP/2 connections the offered load is spread over.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Pool sizing for network HSMs instead of the table: the token behind the fault-injecting
    /// module (tests/faulty-pkcs11, built with cc) answering every signature this many
    /// milliseconds late, the daemon with `--sessions` workers each in turn; reports
    /// signatures/s against the latency bound sessions / latency.
    #[arg(long)]
    pub device_latency_ms: Option<u64>,
    /// With `--device-latency-ms`: the worker session counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    pub sessions: Vec<usize>,
    /// Memory instead of the table: the daemon in a process of its own; its RSS at rest, with
    /// `--idle-connections` open, with `--in-flight` requests inside it, and with 256 worker
    /// sessions, from /proc/<pid>/status.
    #[arg(long)]
    pub memory: bool,
    /// With `--memory`: idle HTTP/2 connections to open.
    #[arg(long, default_value_t = 1000)]
    pub idle_connections: usize,
    /// With `--memory`: requests to keep in flight (queued or at a worker) at once.
    #[arg(long, default_value_t = 1000)]
    pub in_flight: usize,
    /// Internal (`--memory`): serve the bench daemon in this process until stdin closes.
    #[arg(long, hide = true)]
    pub serve_daemon: bool,
    /// Instead of the table: exactly `--iterations` signatures with the first of `--algs`
    /// through one path (`direct`, `service`, `jws`, `uds`), one caller, for instruction-level
    /// profilers (see bench/profile.rs).
    #[arg(long)]
    pub profile: Option<String>,
    /// With `--profile`: how many signatures.
    #[arg(long, default_value_t = 1000)]
    pub iterations: u64,
}

/// Set what the bench's modules read from the environment (the p11-kit client's server
/// address, the fault-injecting module's target and control file) — by `main`, before any
/// thread exists.
pub fn environment(paths: &DevPaths) -> Vec<(&'static str, std::ffi::OsString)> {
    let mut env = p11kit::environment(paths);
    env.extend(latency::environment(paths));
    env
}

/// Run the mode `args` selects.
///
/// # Errors
/// Set-up failures, as text; a mode's own failure (errors during an overload run).
pub async fn run_mode(paths: &DevPaths, args: &BenchArgs) -> Result<(), String> {
    if let Some(path) = &args.profile {
        profile::run(paths, args, path).await
    } else if args.serve_daemon {
        memory::serve(paths, args).await
    } else if args.memory {
        memory::run(paths, args).await
    } else if args.device_latency_ms.is_some() {
        latency::run(paths, args).await
    } else if args.overload {
        overload::run(paths, args).await
    } else {
        run(paths, args).await.map(drop)
    }
}

/// The bench's daemon in this process, serving `config` on an ephemeral loopback port with
/// `threads` runtime threads (started off the async runtime: start-up blocks on the device).
pub(crate) async fn start_daemon(
    config: Config,
    paths: &DevPaths,
    threads: usize,
) -> Result<app::Detached, String> {
    let path = paths.config.clone();
    tokio::task::spawn_blocking(move || {
        app::Detached::start(config, path, SocketAddr::from(([127, 0, 0, 1], 0)), threads)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// One measured row.
#[derive(Debug, Clone)]
pub struct Row {
    /// Algorithm.
    pub alg: String,
    /// Concurrency.
    pub clients: usize,
    /// Which path.
    pub path: &'static str,
    /// Operations (signatures or decryptions) per second.
    pub ops_per_sec: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Errors seen.
    pub errors: u64,
}

/// A JWS signing input of typical ID-token size.
pub(crate) fn sample_input() -> Vec<u8> {
    let header = br#"{"alg":"ES256","kid":"bench","typ":"JWT"}"#;
    let payload = br#"{"iss":"https://op.example.com","sub":"248289761001","aud":"s6BhdRkqt3","nonce":"n-0S6_WzA2Mj","exp":1311281970,"iat":1311280970,"auth_time":1311280969,"acr":"urn:mace:incommon:iap:silver","at_hash":"77QmUPtjPfzWtF2AnpK9RQ"}"#;
    sigild::jose::signing_input(header, payload).into_bytes()
}

/// Where a client reaches the daemon.
#[derive(Debug, Clone)]
enum Transport {
    /// TCP with tonic's standard `Channel` (what most Rust callers write).
    TcpChannel(SocketAddr),
    /// A Unix socket with one HTTP/2 connection driven directly (no buffer task).
    Uds(PathBuf),
}

/// The name of the benchmark's key for `alg`, created on the token the first time (kept
/// between runs, so repeated benchmarks do not fill the token).
///
/// # Errors
/// Why the key could not be created.
pub(crate) async fn bench_key(service: &Service, alg: Alg) -> Result<String, String> {
    let key = format!("bench-{}", alg.name().to_ascii_lowercase());
    if service.key(&key).is_err() {
        service
            .create_key(
                &sigild::service::Origin::in_process(),
                &key,
                alg.name(),
                sigild::keyring::KeySize::default(),
                false,
                &[],
            )
            .await
            .map_err(|e| e.chain().to_string())?;
    }
    Ok(key)
}

/// Turn the dev config into one for benchmarks: plain TCP on loopback, every plaintext caller
/// and this process's own uid (for the benchmark's Unix sockets) allowed everything, no
/// configured Unix socket and no rate limits (benchmarks measure the signing path and run their
/// own clients in-process).
pub(crate) fn for_benchmark(config: &mut Config) {
    use sigild::config::{CallerConfig, LimitsConfig};
    use std::os::unix::fs::MetadataExt as _;
    config.server.tls = None;
    config.server.unix = None;
    config.server.danger_plaintext = true;
    config.limits = LimitsConfig::default();
    let everything = |danger_plaintext, uid| CallerConfig {
        identity: None,
        uid,
        gid: None,
        danger_plaintext,
        keys: Some(vec!["*".into()]),
        operations: sigild::policy::Operation::CONFIGURABLE
            .iter()
            .map(|o| o.name().to_owned())
            .collect(),
        admin: true,
        iss: None,
        aud: None,
        client_id: None,
        htu_prefix: None,
        target_uri_prefix: None,
        jws_typs: None,
        jwe_algs: None,
        jwe_encs: None,
        rate: None,
    };
    config.callers = vec![everything(true, None)];
    if let Ok(me) = std::fs::metadata("/proc/self") {
        config.callers.push(everything(false, Some(me.uid())));
    }
}

/// The bench token's config, the token created first if needed, made fit for a benchmark
/// ([`for_benchmark`]).
///
/// # Errors
/// The token cannot be created or its config read, as text.
pub(crate) async fn benchmark_config(paths: &DevPaths) -> Result<Config, String> {
    let owned = paths.clone();
    tokio::task::spawn_blocking(move || dev::ensure_token(&owned))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut config = Config::load(&paths.config).map_err(|e| e.to_string())?;
    for_benchmark(&mut config);
    Ok(config)
}

/// Create the bench token (if needed) and run every measurement, printing a table.
///
/// # Errors
/// Set-up failures, as text.
pub async fn run(paths: &DevPaths, args: &BenchArgs) -> Result<Vec<Row>, String> {
    let mut config = benchmark_config(paths).await?;
    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    if let Some(p11) = config.pkcs11.as_mut() {
        p11.workers = max_clients.max(1);
    }
    let running = start_daemon(config.clone(), paths, args.server_threads).await?;
    let service = Arc::clone(&running.service);
    // The same service on a Unix socket, and the same keyring with verification off, both
    // served by the daemon's own runtime.
    let unverified = Arc::new(
        Service::new(
            Arc::clone(service.keyring()),
            Arc::new(SystemClock),
            ServiceOptions {
                verify_signatures: false,
                ..service.options().clone()
            },
        )
        .with_access(service.policy(), Arc::clone(service.audit())),
    );
    let uds = paths.dir.join("bench.sock");
    let uds_unverified = paths.dir.join("bench-unverified.sock");
    for (path, svc) in [
        (&uds, Arc::clone(&service)),
        (&uds_unverified, Arc::clone(&unverified)),
    ] {
        let _ = std::fs::remove_file(path);
        let _guard = running.runtime.enter();
        let listener =
            tokio::net::UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
        running.runtime.spawn(
            tonic::transport::Server::builder()
                .add_service(Api::new(svc, Listener::Unix).signing_service())
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
    }

    // The peer: p11-kit's remote PKCS#11 on the same token (skipped, and said so, where p11-kit
    // is not installed).
    let peer = match config.pkcs11.clone() {
        Some(p11) => {
            let paths = paths.clone();
            tokio::task::spawn_blocking(move || p11kit::Peer::start(&paths, &p11))
                .await
                .map_err(|e| e.to_string())?
        }
        None => Err("no [pkcs11] token".into()),
    };
    let peer = peer
        .inspect_err(|e| println!("{} row skipped: {e}", p11kit::PATH))
        .ok();

    let input = Arc::new(sample_input());
    let duration = Duration::from_secs_f64(args.seconds.unwrap_or(3.0).clamp(0.2, 600.0));
    let mut rows = Vec::new();
    println!(
        "sigild bench: {} s per row, SoftHSM token in {}, {} PKCS#11 worker sessions, daemon runtime threads {}; input {} bytes",
        duration.as_secs_f64(),
        paths.dir.display(),
        config.pkcs11.as_ref().map_or(0, |p| p.workers),
        args.server_threads,
        input.len()
    );
    let floor = grpc_floor(running.addr, duration).await?;
    println!(
        "gRPC floor (GetJwks over TCP, no device call, 1 client): {:.0} calls/s, p50 {:.1} µs, p99 {:.1} µs",
        floor.ops_per_sec, floor.p50_us, floor.p99_us
    );
    for alg_name in &args.algs {
        let alg = Alg::parse(alg_name).map_err(|e| e.to_string())?;
        let key = bench_key(&service, alg).await?;
        let version = service.keyring().active(&key).map_err(|e| e.to_string())?;
        let p11 = running
            .pkcs11
            .as_ref()
            .ok_or("the benchmark needs the PKCS#11 backend")?;
        for &clients in &args.clients {
            let m = Measure {
                key: key.clone(),
                alg,
                clients,
                duration,
                input: Arc::clone(&input),
            };
            let mut rows_here = vec![direct_row(p11, &version, &m, "direct PKCS#11").await?];
            if let Some(peer) = &peer {
                match p11kit::can_sign(peer, &version, alg, &input).await {
                    Ok(()) => {
                        rows_here.push(direct_row(&peer.backend, &version, &m, p11kit::PATH).await?)
                    }
                    Err(e) => println!(
                        "{} row skipped for {} ({clients} clients): {e}",
                        p11kit::PATH,
                        alg.name()
                    ),
                }
            }
            rows_here.extend([
                service_row(&service, &m, "service in-process").await?,
                service_row(&unverified, &m, "service in-process, unverified").await?,
                daemon_row(
                    Transport::TcpChannel(running.addr),
                    &m,
                    "gRPC TCP, verified",
                )
                .await?,
                daemon_row(Transport::Uds(uds.clone()), &m, "gRPC UDS, verified").await?,
                daemon_row(
                    Transport::Uds(uds_unverified.clone()),
                    &m,
                    "gRPC UDS, unverified",
                )
                .await?,
            ]);
            rows_here.extend(stream::rows(&uds, &uds_unverified, &m).await?);
            for r in rows_here {
                print_row(&r, &rows);
                rows.push(r);
            }
        }
    }
    for alg_name in args.jwe_algs.iter().filter(|a| !a.is_empty()) {
        let p11 = running
            .pkcs11
            .as_ref()
            .ok_or("the benchmark needs the PKCS#11 backend")?;
        let dec = DecryptSetup::new(&service, alg_name).await?;
        for &clients in &args.clients {
            let rows_here = [
                direct_decrypt_row(p11, &dec, clients, duration).await?,
                service_decrypt_row(&service, &dec, clients, duration).await?,
                grpc_decrypt_row(running.addr, &dec, clients, duration).await?,
            ];
            for r in rows_here {
                print_row(&r, &rows);
                rows.push(r);
            }
        }
    }
    // The peer's sessions and server go first: nothing made with the client module may
    // outlive the run.
    if let Some(peer) = peer {
        tokio::task::spawn_blocking(move || drop(peer))
            .await
            .map_err(|e| e.to_string())?;
    }
    print_ratios(&rows);
    tokio::task::spawn_blocking(move || running.shutdown())
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows)
}

/// The summary: every path's signatures/s as a share of the direct row at the same algorithm
/// and concurrency, and the unary UDS path against the p11-kit peer.
fn print_ratios(rows: &[Row]) {
    let mut paths: Vec<&str> = Vec::new();
    for r in rows {
        if r.path != "direct PKCS#11" && !paths.contains(&r.path) {
            paths.push(r.path);
        }
    }
    let mut groups: Vec<(&str, usize)> = Vec::new();
    for r in rows {
        if !groups.contains(&(r.alg.as_str(), r.clients)) {
            groups.push((r.alg.as_str(), r.clients));
        }
    }
    if groups.is_empty() {
        return;
    }
    println!();
    println!("ratios to direct PKCS#11 (same algorithm, same concurrency, this run):");
    let mut header = format!("{:<14} {:>7} {:>10}", "alg", "clients", "direct/s");
    for p in &paths {
        header.push_str(&format!(" | {p:>w$}", w = p.len().max(6)));
    }
    header.push_str(" | UDS verified ÷ p11-kit");
    println!("{header}");
    for (alg, clients) in groups {
        let find = |path: &str| {
            rows.iter()
                .find(|r| r.alg == alg && r.clients == clients && r.path == path)
                .map(|r| r.ops_per_sec)
        };
        let Some(direct) = find("direct PKCS#11").filter(|d| *d > 0.0) else {
            continue;
        };
        let mut line = format!("{alg:<14} {clients:>7} {direct:>10.0}");
        for p in &paths {
            let cell =
                find(p).map_or_else(|| "-".into(), |v| format!("{:.0}%", 100.0 * v / direct));
            line.push_str(&format!(" | {cell:>w$}", w = p.len().max(6)));
        }
        let vs_peer = match (find("gRPC UDS, verified"), find(p11kit::PATH)) {
            (Some(uds), Some(peer)) if peer > 0.0 => format!("{:.2}×", uds / peer),
            _ => "-".into(),
        };
        line.push_str(&format!(" | {vs_peer:>22}"));
        println!("{line}");
    }
}

/// A decryption key of the benchmark, one JWE to it and the device step that JWE needs.
struct DecryptSetup {
    /// The JWE algorithm's name (the rows' `alg`).
    alg: String,
    /// Key name.
    key: String,
    /// Its active version.
    version: Arc<VersionInfo>,
    /// A compact JWE to it (A256GCM, an ID-token-sized payload).
    jwe: Arc<Vec<u8>>,
    /// The device step of `jwe`.
    op: Arc<DecryptOp>,
}

impl DecryptSetup {
    /// Create the key (the first time; kept between runs) and have jwcrypto encrypt to it.
    async fn new(service: &Arc<Service>, alg: &str) -> Result<DecryptSetup, String> {
        let jwe_alg = JweAlg::parse(alg).ok_or_else(|| format!("unknown JWE alg {alg}"))?;
        let key = format!(
            "bench-dec-{}",
            jwe_alg.name().to_ascii_lowercase().replace('+', "-")
        );
        if service.key(&key).is_err() {
            service
                .create_key(
                    &sigild::service::Origin::in_process(),
                    &key,
                    jwe_alg.name(),
                    sigild::keyring::KeySize::default(),
                    false,
                    &[],
                )
                .await
                .map_err(|e| e.chain().to_string())?;
        }
        let version = service.keyring().active(&key).map_err(|e| e.to_string())?;
        let request = serde_json::json!({
            "jwk": sigild::jose::public_jwk(&version.public),
            "alg": jwe_alg.name(),
            "kid": version.kid,
            "plaintext": String::from_utf8_lossy(&sample_input()),
        });
        let jwe = tokio::task::spawn_blocking(move || jwcrypto_encrypt(&request))
            .await
            .map_err(|e| e.to_string())??;
        let op = Jwe::parse(&jwe)
            .and_then(|j| j.device_op(&version.public))
            .map_err(|e| format!("jwcrypto's JWE: {e}"))?;
        Ok(DecryptSetup {
            alg: jwe_alg.name().to_owned(),
            key,
            version,
            jwe: Arc::new(jwe),
            op: Arc::new(op),
        })
    }
}

/// Encrypt to a JWK with Python jwcrypto (A256GCM): the benchmark's JWEs come from code sigild
/// did not write, as its tests' do.
fn jwcrypto_encrypt(request: &serde_json::Value) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    const SCRIPT: &str = "import json, sys\n\
from jwcrypto import jwe, jwk\n\
r = json.load(sys.stdin)\n\
t = jwe.JWE(r['plaintext'].encode(), json.dumps({'alg': r['alg'], 'enc': 'A256GCM', 'kid': r['kid']}))\n\
t.add_recipient(jwk.JWK(**r['jwk']))\n\
sys.stdout.write(t.serialize(compact=True))\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("python3: no stdin")?
        .write_all(request.to_string().as_bytes())
        .map_err(|e| format!("python3: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(format!(
            "jwcrypto could not encrypt (python3 with jwcrypto is needed for the decryption rows): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

/// `clients` threads, each with its own logged-in session, performing the JWE's device step
/// in a loop (OAEP decoding on the host included where the token needs it).
async fn direct_decrypt_row(
    backend: &Arc<Pkcs11Backend>,
    dec: &DecryptSetup,
    clients: usize,
    duration: Duration,
) -> Result<Row, String> {
    let (backend, version, op) = (
        Arc::clone(backend),
        Arc::clone(&dec.version),
        Arc::clone(&dec.op),
    );
    let (all, errors) = direct_threads(clients, duration, 20, move || {
        let decrypter = backend
            .direct_decrypter(&version.key_id, version.kind)
            .map_err(|e| e.to_string())?;
        let op = Arc::clone(&op);
        Ok(move || decrypter.decrypt(&op).map(drop))
    })
    .await?;
    Ok(summarise_path(
        &dec.alg,
        clients,
        duration,
        "direct PKCS#11",
        all,
        errors,
    ))
}

/// The service's whole JWE decryption called in-process (policy, worker pool, device step,
/// key unwrap, content decryption; no gRPC).
async fn service_decrypt_row(
    service: &Arc<Service>,
    dec: &DecryptSetup,
    clients: usize,
    duration: Duration,
) -> Result<Row, String> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (service, key, jwe) = (Arc::clone(service), dec.key.clone(), Arc::clone(&dec.jwe));
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::with_capacity(65536), 0u64);
            let origin = sigild::service::Origin::in_process();
            let deadline = Instant::now() + duration;
            while Instant::now() < deadline {
                let t = Instant::now();
                match service.decrypt_jwe(&origin, &key, &jwe, &[], &[]).await {
                    Ok(_) => lat.push(t.elapsed().as_nanos() as u64),
                    Err(_) => errors += 1,
                }
            }
            Ok((lat, errors))
        }));
    }
    let (all, errors) = pooled(tasks).await?;
    Ok(summarise_path(
        &dec.alg,
        clients,
        duration,
        "service in-process",
        all,
        errors,
    ))
}

/// What one row measures.
#[derive(Debug, Clone)]
struct Measure {
    /// Key name.
    key: String,
    /// Algorithm.
    alg: Alg,
    /// Concurrency.
    clients: usize,
    /// Measuring time per client.
    duration: Duration,
    /// What is signed.
    input: Arc<Vec<u8>>,
}

fn print_row(r: &Row, earlier: &[Row]) {
    if earlier.is_empty() {
        println!(
            "{:<14} {:>7}  {:<24} {:>10} {:>9} {:>9} {:>9} {:>6}",
            "alg", "clients", "path", "ops/s", "p50 µs", "p99 µs", "vs direct", "errors"
        );
    }
    let direct = earlier
        .iter()
        .rev()
        .find(|d| d.alg == r.alg && d.clients == r.clients && d.path == "direct PKCS#11")
        .map_or(r.ops_per_sec, |d| d.ops_per_sec);
    println!(
        "{:<14} {:>7}  {:<24} {:>10.0} {:>9.1} {:>9.1} {:>8.0}% {:>6}",
        r.alg,
        r.clients,
        r.path,
        r.ops_per_sec,
        r.p50_us,
        r.p99_us,
        100.0 * r.ops_per_sec / direct.max(f64::MIN_POSITIVE),
        r.errors
    );
}

fn summarise(m: &Measure, path: &'static str, lat: Vec<u64>, errors: u64) -> Row {
    summarise_path(m.alg.name(), m.clients, m.duration, path, lat, errors)
}

fn summarise_path(
    alg: &str,
    clients: usize,
    duration: Duration,
    path: &'static str,
    mut lat: Vec<u64>,
    errors: u64,
) -> Row {
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat.get(i).copied().unwrap_or_default() as f64 / 1000.0
    };
    Row {
        alg: alg.to_owned(),
        clients,
        path,
        ops_per_sec: lat.len() as f64 / duration.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

/// What one measuring task found: the latencies (ns) of the calls that succeeded, and the
/// number that failed; or why it could not measure.
type Tally = Result<(Vec<u64>, u64), String>;

/// Await every measuring task, all of them before any failure is reported (a direct caller
/// still inside the module when the daemon shuts down would race the module's finalisation),
/// and pool their latencies and error counts.
async fn pooled(handles: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.map_err(|e| e.to_string()));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for r in results {
        let (lat, e) = r??;
        all.extend(lat);
        errors += e;
    }
    Ok((all, errors))
}

/// `clients` blocking threads, each making its own caller with `setup` (its own session) and
/// calling it back to back for `duration` after `warmup` untimed calls: the latencies (ns) of
/// the calls that succeeded, and the number that failed. Every thread is awaited before any
/// failure is reported (see [`pooled`]).
async fn direct_threads<S, F, E>(
    clients: usize,
    duration: Duration,
    warmup: usize,
    setup: S,
) -> Result<(Vec<u64>, u64), String>
where
    S: Fn() -> Result<F, String> + Clone + Send + 'static,
    F: FnMut() -> Result<(), E>,
{
    let mut handles = Vec::new();
    for _ in 0..clients {
        let setup = setup.clone();
        handles.push(tokio::task::spawn_blocking(
            move || -> Result<(Vec<u64>, u64), String> {
                let mut call = setup()?;
                for _ in 0..warmup {
                    let _ = call();
                }
                let (mut lat, mut errors) = (Vec::with_capacity(65536), 0);
                let deadline = Instant::now() + duration;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match call() {
                        Ok(()) => lat.push(t.elapsed().as_nanos() as u64),
                        Err(_) => errors += 1,
                    }
                }
                Ok((lat, errors))
            },
        ));
    }
    pooled(handles).await
}

/// `clients` threads, each with its own logged-in session, calling `C_Sign` in a loop (hashing
/// on the host first, exactly like the daemon).
async fn direct_row(
    backend: &Arc<Pkcs11Backend>,
    version: &Arc<VersionInfo>,
    m: &Measure,
    path: &'static str,
) -> Result<Row, String> {
    let (backend, version, input, alg) = (
        Arc::clone(backend),
        Arc::clone(version),
        Arc::clone(&m.input),
        m.alg,
    );
    let (all, errors) = direct_threads(m.clients, m.duration, 50, move || {
        let signer = backend
            .direct_signer(&version.key_id, version.kind)
            .map_err(|e| e.to_string())?;
        let input = Arc::clone(&input);
        Ok(move || signer.sign(&alg.sign_op(&input)).map(drop))
    })
    .await?;
    Ok(summarise(m, path, all, errors))
}

/// The service called in-process (worker pool, hashing, verification; no gRPC).
async fn service_row(
    service: &Arc<Service>,
    m: &Measure,
    path: &'static str,
) -> Result<Row, String> {
    let mut tasks = Vec::new();
    for _ in 0..m.clients {
        let (service, m) = (Arc::clone(service), m.clone());
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::with_capacity(65536), 0u64);
            let origin = sigild::service::Origin::in_process();
            let deadline = Instant::now() + m.duration;
            while Instant::now() < deadline {
                let t = Instant::now();
                match service.sign_raw(&origin, &m.key, &m.input, None).await {
                    Ok(_) => lat.push(t.elapsed().as_nanos() as u64),
                    Err(_) => errors += 1,
                }
            }
            Ok((lat, errors))
        }));
    }
    let (all, errors) = pooled(tasks).await?;
    Ok(summarise(m, path, all, errors))
}

/// `clients` gRPC clients, each on its own connection, thread and current-thread runtime (a
/// caller per thread; no hops between client workers), calling `SignRaw` in a loop.
/// `clients` callers, each on its own thread and TCP connection (tonic `Channel`), calling
/// `DecryptJwe` back to back: the daemon's whole path, plaintext included in every answer.
async fn grpc_decrypt_row(
    addr: SocketAddr,
    dec: &DecryptSetup,
    clients: usize,
    duration: Duration,
) -> Result<Row, String> {
    let mut threads = Vec::new();
    for _ in 0..clients {
        let (key, jwe) = (dec.key.clone(), Arc::clone(&dec.jwe));
        threads.push(tokio::task::spawn_blocking(
            move || -> Result<(Vec<u64>, u64), String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                        .map_err(|e| e.to_string())?
                        .tcp_nodelay(true)
                        .connect()
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut client =
                        pb::decryption_service_client::DecryptionServiceClient::new(channel);
                    let req = || pb::DecryptJweRequest {
                        key: key.clone(),
                        jwe: jwe.to_vec(),
                        ..Default::default()
                    };
                    for _ in 0..20 {
                        let _ = client.decrypt_jwe(req()).await;
                    }
                    let (mut lat, mut errors) = (Vec::with_capacity(65536), 0u64);
                    let deadline = Instant::now() + duration;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        match client.decrypt_jwe(req()).await {
                            Ok(_) => lat.push(t.elapsed().as_nanos() as u64),
                            Err(_) => errors += 1,
                        }
                    }
                    Ok((lat, errors))
                })
            },
        ));
    }
    let (all, errors) = pooled(threads).await?;
    Ok(summarise_path(
        &dec.alg, clients, duration, "gRPC TCP", all, errors,
    ))
}

async fn daemon_row(transport: Transport, m: &Measure, path: &'static str) -> Result<Row, String> {
    let mut threads = Vec::new();
    for _ in 0..m.clients {
        let (transport, m) = (transport.clone(), m.clone());
        threads.push(tokio::task::spawn_blocking(
            move || -> Result<(Vec<u64>, u64), String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(async move {
                    match transport {
                        Transport::TcpChannel(addr) => {
                            let channel =
                                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                                    .map_err(|e| e.to_string())?
                                    .tcp_nodelay(true)
                                    .connect()
                                    .await
                                    .map_err(|e| e.to_string())?;
                            Ok(drive(
                                pb::signing_service_client::SigningServiceClient::new(channel),
                                &m,
                            )
                            .await)
                        }
                        Transport::Uds(path) => {
                            Ok(drive(uds_signing_client(&path).await?, &m).await)
                        }
                    }
                })
            },
        ));
    }
    let (all, errors) = pooled(threads).await?;
    Ok(summarise(m, path, all, errors))
}

/// A `SigningService` client on one bare HTTP/2 connection (hyper, no tonic `Channel`) to the
/// daemon's Unix socket at `path`.
///
/// # Errors
/// The socket cannot be connected or the HTTP/2 handshake fails.
async fn uds_signing_client(
    path: &std::path::Path,
) -> Result<
    pb::signing_service_client::SigningServiceClient<
        impl tonic::client::GrpcService<
            tonic::body::Body,
            ResponseBody = hyper::body::Incoming,
            Error = hyper::Error,
        >,
    >,
    String,
> {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| e.to_string())?;
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let svc = tower::service_fn(move |mut req: http::Request<tonic::body::Body>| {
        let mut send = send.clone();
        async move {
            // gRPC needs an absolute URI; the authority is not used on a socket.
            let uri = http::Uri::builder()
                .scheme("http")
                .authority("localhost")
                .path_and_query(req.uri().path())
                .build();
            if let Ok(uri) = uri {
                *req.uri_mut() = uri;
            }
            send.send_request(req).await
        }
    });
    Ok(pb::signing_service_client::SigningServiceClient::new(svc))
}

/// Warm up, then call `SignRaw` until the deadline, recording latencies.
async fn drive<T>(
    mut client: pb::signing_service_client::SigningServiceClient<T>,
    m: &Measure,
) -> (Vec<u64>, u64)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let req = || pb::SignRawRequest {
        version: 0,
        key: m.key.clone(),
        data: m.input.to_vec(),
        alg: String::new(),
    };
    for _ in 0..50 {
        let _ = client.sign_raw(req()).await;
    }
    let (mut lat, mut errors) = (Vec::with_capacity(65536), 0u64);
    let deadline = Instant::now() + m.duration;
    while Instant::now() < deadline {
        let t = Instant::now();
        match client.sign_raw(req()).await {
            Ok(_) => lat.push(t.elapsed().as_nanos() as u64),
            Err(_) => errors += 1,
        }
    }
    (lat, errors)
}

/// The cost of a gRPC round trip that touches no device, for scale.
async fn grpc_floor(addr: SocketAddr, duration: Duration) -> Result<Row, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = pb::key_service_client::KeyServiceClient::new(channel);
    let (mut lat, mut errors) = (Vec::new(), 0);
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        let t = Instant::now();
        match client.get_jwks(pb::GetJwksRequest {}).await {
            Ok(_) => lat.push(t.elapsed().as_nanos() as u64),
            Err(_) => errors += 1,
        }
    }
    let m = Measure {
        key: String::new(),
        alg: Alg::Es256,
        clients: 1,
        duration,
        input: Arc::new(Vec::new()),
    };
    Ok(summarise(&m, "gRPC floor", lat, errors))
}
