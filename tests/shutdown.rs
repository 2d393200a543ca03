//! Stopping and starting: SIGTERM under signing load exits 0 (never a crash inside the PKCS#11
//! module) with every returned signature valid and every failed request told UNAVAILABLE;
//! requests still running after `[server] shutdown_grace_seconds` are answered UNAVAILABLE
//! while key administration already running finishes; `sigild dev` lets nobody in before its
//! default keys exist; SIGTERM during dev start-up exits 0 and leaves a token the next start
//! uses as it is.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigild::api::pb;
use support::*;
use tonic::transport::Channel;

/// Runs of the SIGTERM-under-load test.
const RUNS: usize = 50;
/// Concurrent signing clients per run, each on its own connection.
const CLIENTS: usize = 3;

/// `token`'s config with `[server] shutdown_grace_seconds = grace` and `extra` tables.
fn config_with_grace(token: &Token, grace: u64, extra: &str) -> TestResult<PathBuf> {
    let text = token.config(extra).replacen(
        "listen = \"127.0.0.1:0\"\n",
        &format!("listen = \"127.0.0.1:0\"\nshutdown_grace_seconds = {grace}\n"),
        1,
    );
    assert!(text.contains("shutdown_grace_seconds"), "{text}");
    token.write_config("sigild-shutdown.toml", &text)
}

/// A small deterministic generator (xorshift64*) for the moments to send SIGTERM; the seed is
/// printed so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn from_time() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7)
            | 1;
        println!("rng seed {seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// A signature as returned: the compact JWS and the kid the daemon says signed it (for
/// headers that carry none).
type Signed = (String, String);

/// Verify every compact JWS against `jwks` in one verifier process; the number verified.
fn verify_all(compacts: &[Signed], jwks: &Value) -> TestResult<u64> {
    if compacts.is_empty() {
        return Ok(0);
    }
    let items: Vec<Value> = compacts
        .iter()
        .map(|(jws, kid)| json!({"jws": jws, "kid": kid}))
        .collect();
    let out = python(&json!({"op": "jws_batch", "jws": items, "jwks": jwks}))?;
    let verified = out["verified"]
        .as_u64()
        .ok_or("no count from the verifier")?;
    assert_eq!(verified, compacts.len() as u64, "{out}");
    Ok(verified)
}

/// Whether a failed call is one a stopping daemon may give: UNAVAILABLE (refused by the
/// shutdown, or the client finding no listener), or a request the client had not got through
/// before the connection closed (hyper cancels it: "connection closed"; or the server's
/// GOAWAY with NO_ERROR refused its stream, so it was never processed).
fn is_shutdown_error(s: &tonic::Status) -> bool {
    let text = format!("{s:?}");
    match s.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Cancelled => text.contains("Canceled, \"connection closed\""),
        tonic::Code::Internal => text.contains("GoAway(b\"\", NO_ERROR, Remote)"),
        _ => false,
    }
}

/// One signing client: signs until its first error, which it reports with whether SIGTERM had
/// been sent by then.
async fn sign_until_error(
    mut client: pb::signing_service_client::SigningServiceClient<Channel>,
    id: usize,
    terminated: Arc<AtomicBool>,
) -> (Vec<Signed>, Option<(tonic::Status, bool)>) {
    let mut signed = Vec::new();
    for n in 0.. {
        let (key, alg) = if n % 2 == 0 {
            ("sd-es256", "ES256")
        } else {
            ("sd-eddsa", "EdDSA")
        };
        let req = pb::SignJwsRequest {
            version: 0,
            key: key.into(),
            protected_header: format!("{{\"alg\":\"{alg}\"}}").into_bytes(),
            payload: format!("{{\"client\":{id},\"n\":{n}}}").into_bytes(),
        };
        match client.sign_jws(req).await {
            Ok(r) => {
                let r = r.into_inner();
                signed.push((r.compact, r.kid));
            }
            Err(s) => {
                let after = terminated.load(Ordering::SeqCst);
                return (signed, Some((s, after)));
            }
        }
    }
    (signed, None)
}

/// 50 times: a daemon under concurrent signing load gets SIGTERM at a random moment. Every run
/// exits 0 (not a signal: no crash in the module at finalisation), the orderly path ran to its
/// end (the device was released), every signature returned verifies, and every failure came
/// after the signal and is UNAVAILABLE or the connection closing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_exits_0_with_only_valid_signatures() -> TestResult {
    let token = Token::new()?;
    let config = config_with_grace(&token, 5, "")?;
    let jwks = {
        let mut d = Daemon::start_config(&token.conf, &config)?;
        d.create("sd-es256", "ES256", 0).await?;
        d.create("sd-eddsa", "EdDSA", 0).await?;
        let jwks = d.jwks().await?;
        let status = d.signal_and_wait("TERM", Duration::from_secs(30))?;
        assert_eq!(status.code(), Some(0), "{status}\n{}", d.log_text());
        jwks
    };
    let mut rng = Rng::from_time();
    let started = Instant::now();
    let mut exits: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut examples: BTreeMap<String, String> = BTreeMap::new();
    let mut signatures = Vec::new();
    let mut cut_runs = 0;
    for run in 0..RUNS {
        let mut d = Daemon::start_config(&token.conf, &config)?;
        let terminated = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for id in 0..CLIENTS {
            let client = d.signer().await?;
            clients.push(tokio::spawn(sign_until_error(
                client,
                id,
                Arc::clone(&terminated),
            )));
        }
        tokio::time::sleep(Duration::from_millis(20 + rng.below(280))).await;
        terminated.store(true, Ordering::SeqCst);
        let (d_back, status) = tokio::task::spawn_blocking(move || {
            let status = d.signal_and_wait("TERM", Duration::from_secs(30));
            (d, status)
        })
        .await?;
        d = d_back;
        let status = status?;
        *exits.entry(status.to_string()).or_default() += 1;
        let log = d.log_text();
        assert_eq!(status.code(), Some(0), "run {run}: {status}\n{log}");
        assert!(log.contains("device released"), "run {run}:\n{log}");
        let mut signed_here = 0;
        for c in clients {
            let (signed, error) = tokio::time::timeout(Duration::from_secs(30), c).await??;
            signed_here += signed.len();
            signatures.extend(signed);
            let (status, after_term) = error.ok_or("a client stopped without an error")?;
            assert!(
                after_term,
                "run {run}: a request failed before SIGTERM: {status:?}"
            );
            assert!(
                is_shutdown_error(&status),
                "run {run}: not a shutdown error: {status:?}"
            );
            if status.code() == tonic::Code::Unavailable
                && status.message().contains("shutting down")
            {
                cut_runs += 1;
            }
            let kind = format!("{:?}: {}", status.code(), status.message());
            examples
                .entry(kind.clone())
                .or_insert_with(|| format!("{status:?}"));
            *errors.entry(kind).or_default() += 1;
        }
        assert!(signed_here > 0, "run {run}: no signature before SIGTERM");
    }
    let verified = verify_all(&signatures, &jwks)?;
    println!(
        "SIGTERM under load: {RUNS} runs, {CLIENTS} clients each, {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    println!("  exits by status: {exits:?}");
    println!("  signatures returned and verified (jwcrypto): {verified}");
    println!("  client errors after SIGTERM (one per client and run): {errors:?}");
    println!("  errors saying the daemon is shutting down: {cut_runs}");
    for (kind, example) in &examples {
        println!("  {kind}: e.g. {example}");
    }
    Ok(())
}

/// In-flight requests past the grace period are answered UNAVAILABLE at its end, while key
/// generation already running is finished (no half-made key): one device worker kept busy by
/// slow key generations (the fault-injecting module delays each `C_GenerateKeyPair` by 2 s),
/// signing requests queued behind them, SIGTERM with a 1 s grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_past_the_grace_period_get_unavailable() -> TestResult {
    let token = Token::new()?;
    let faults = faulty::Faults::new(token.dir.path());
    let text = faults
        .config(&token, "\n[signing]\ntimeout_ms = 300000\n")
        .replacen(
            "listen = \"127.0.0.1:0\"\n",
            "listen = \"127.0.0.1:0\"\nshutdown_grace_seconds = 1\n",
            1,
        )
        .replacen("workers = 2", "workers = 1", 1);
    assert!(text.contains("workers = 1"), "{text}");
    let config = token.write_config("slow-generation.toml", &text)?;
    let mut d = Daemon::start_config_env(&token.conf, &config, &faults.env())?;
    d.create("sd-es256", "ES256", 0).await?;
    faults.set("generate_delay_ms=2000\n");
    let mut creating = Vec::new();
    for i in 0..3 {
        let mut keys = d.keys().await?;
        creating.push(tokio::spawn(async move {
            keys.create_key(pb::CreateKeyRequest {
                name: format!("slow-{i}"),
                alg: "ES256".into(),
                rsa_bits: 0,
                fapi2: false,
                ..Default::default()
            })
            .await
        }));
    }
    // Sign only once the first generation is inside the device.
    let deadline = Instant::now() + Duration::from_secs(20);
    while faults.stats().get("generations_delayed") == 0 {
        assert!(
            Instant::now() < deadline,
            "no C_GenerateKeyPair was delayed\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut signing = Vec::new();
    for n in 0..4 {
        let mut s = d.signer().await?;
        signing.push(tokio::spawn(async move {
            let r = s
                .sign_jws(pb::SignJwsRequest {
                    version: 0,
                    key: "sd-es256".into(),
                    protected_header: br#"{"alg":"ES256"}"#.to_vec(),
                    payload: format!("{{\"n\":{n}}}").into_bytes(),
                })
                .await;
            (r, Instant::now())
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let term_at = Instant::now();
    send_signal(d.pid(), "TERM")?;
    let mut cut = 0;
    let mut signed = Vec::new();
    for s in signing {
        let (r, at) = s.await?;
        match r {
            Ok(r) => {
                let r = r.into_inner();
                signed.push((r.compact, r.kid));
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(status.message().contains("shutting down"), "{status:?}");
                // Answered at the end of the grace period (plus generous slack), not when
                // the device got to it.
                let waited = at.duration_since(term_at);
                assert!(
                    waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
                    "answered after {waited:?}"
                );
                cut += 1;
            }
        }
    }
    let mut created = 0;
    for c in creating {
        c.await??;
        created += 1;
    }
    let (d_back, status) = tokio::task::spawn_blocking(move || {
        let status = d.wait_exit(Duration::from_secs(300));
        (d, status)
    })
    .await?;
    d = d_back;
    let status = status?;
    let log = d.log_text();
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
    assert!(log.contains("after the grace period"), "{log}");
    println!(
        "grace 1 s: {cut} signing requests cut off with UNAVAILABLE, {} signed, {created} slow generations finished; stats {}",
        signed.len(),
        faults.stats()
    );
    assert!(
        cut > 0,
        "the device answered every request within the grace period: nothing was cut off\n{log}"
    );
    // The next start finds every key whole.
    faults.set("");
    let d = Daemon::start_config_env(&token.conf, &config, &faults.env())?;
    let jwks = d.jwks().await?;
    for i in 0..3 {
        let key = get_key(&d, &format!("slow-{i}")).await?;
        assert_eq!(key.versions.len(), 1, "{key:?}");
        assert_eq!(key.active_version, 1, "{key:?}");
        let r = sign_active(&d, &format!("slow-{i}")).await?;
        signed.push((r.compact, r.kid));
    }
    verify_all(&signed, &jwks)?;
    Ok(())
}

/// A slow device (the fault-injecting module delays every `C_Sign` by 4 s): signing requests
/// inside the device at SIGTERM are answered UNAVAILABLE at the end of a 1 s grace period, and
/// the daemon still exits 0 after its workers have left the module. (Requests queued behind a
/// busy device: `requests_past_the_grace_period_get_unavailable`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_device_requests_past_the_grace_period_get_unavailable() -> TestResult {
    let token = Token::new()?;
    let faults = faulty::Faults::new(token.dir.path());
    let text = faults
        .config(&token, "\n[signing]\ntimeout_ms = 60000\n")
        .replacen(
            "listen = \"127.0.0.1:0\"\n",
            "listen = \"127.0.0.1:0\"\nshutdown_grace_seconds = 1\n",
            1,
        )
        .replacen("workers = 2", "workers = 4", 1);
    assert!(text.contains("workers = 4"), "{text}");
    let config = token.write_config("slow.toml", &text)?;
    let mut d = Daemon::start_config_env(&token.conf, &config, &faults.env())?;
    d.create("sd-es256", "ES256", 0).await?;
    faults.set("sign_delay_ms=4000\n");
    let mut signing = Vec::new();
    for n in 0..4 {
        let mut s = d.signer().await?;
        signing.push(tokio::spawn(async move {
            let r = s
                .sign_jws(pb::SignJwsRequest {
                    version: 0,
                    key: "sd-es256".into(),
                    protected_header: br#"{"alg":"ES256"}"#.to_vec(),
                    payload: format!("{{\"n\":{n}}}").into_bytes(),
                })
                .await;
            (r, Instant::now())
        }));
    }
    // SIGTERM once all four are inside the device (one worker each): a request whose HTTP/2
    // stream had not reached the daemon yet would be refused by the shutdown instead.
    let deadline = Instant::now() + Duration::from_secs(20);
    while faults.stats().get("delayed") < 4 {
        assert!(
            Instant::now() < deadline,
            "not every C_Sign was delayed: {}\n{}",
            faults.stats(),
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let term_at = Instant::now();
    send_signal(d.pid(), "TERM")?;
    for s in signing {
        let (r, at) = s.await?;
        let status = r
            .err()
            .ok_or("a request signed despite the 4 s delay and 1 s grace")?;
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("shutting down"), "{status:?}");
        let waited = at.duration_since(term_at);
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_millis(3500),
            "answered after {waited:?}, not at the end of the grace period"
        );
    }
    let (d_back, status) = tokio::task::spawn_blocking(move || {
        let status = d.wait_exit(Duration::from_secs(60));
        (d, status)
    })
    .await?;
    d = d_back;
    let status = status?;
    let log = d.log_text();
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
    assert!(log.contains("device released"), "{log}");
    println!(
        "slow device: 4 requests answered UNAVAILABLE at the 1 s grace; stats {}",
        faults.stats()
    );
    Ok(())
}

/// A `sigild dev` process with its log collected.
struct Dev {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Dev {
    fn spawn(state: &Path, runtime: &Path, listen: &str) -> TestResult<Dev> {
        let mut child = Command::new(sigild_bin())
            .args(["dev", "--listen", listen, "--state-dir"])
            .arg(state)
            .env("SIGILD_LOG", "info")
            .env("XDG_RUNTIME_DIR", runtime)
            .env_remove("SOFTHSM2_CONF")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().map(|mut l| l.push(line)).ok();
            }
        });
        Ok(Dev { child, log })
    }

    fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Wait until a log line contains `what`.
    fn wait_log(&self, what: &str, within: Duration) -> TestResult {
        let deadline = Instant::now() + within;
        while !self.log_text().contains(what) {
            if Instant::now() > deadline {
                return Err(format!("no {what:?} in the log:\n{}", self.log_text()).into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Wait until the process has its own handler for `signal` (its bit in /proc's SigCgt).
    fn wait_handler(&self, signal: u32, within: Duration) -> TestResult {
        let deadline = Instant::now() + within;
        loop {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
            let caught = status
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .unwrap_or(0);
            if caught & (1 << (signal - 1)) != 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no handler for signal {signal}:\n{}", self.log_text()).into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn stop(&mut self, signal: &str) -> TestResult<std::process::ExitStatus> {
        send_signal(self.child.id(), signal)?;
        wait_exit(&mut self.child, Duration::from_secs(60))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many keys `sigild dev` makes: the three signing keys of [`DEV_KEYS`] and two decryption
/// keys (RSA-OAEP-256, ECDH-ES+A256KW).
const DEV_KEY_COUNT: usize = 5;

/// The default dev signing keys and their algorithms.
const DEV_KEYS: [(&str, &str); 3] = [
    ("dev-es256", "ES256"),
    ("dev-ps256", "PS256"),
    ("dev-eddsa", "EdDSA"),
];

/// A channel to a dev daemon's mutual-TLS listener with the dev PKI in `state`.
async fn dev_tls(state: &Path, addr: &str) -> TestResult<Channel> {
    let tls = sigild::tls::client_config(
        &state.join("ca.pem"),
        &state.join("client.pem"),
        &state.join("client.key"),
        None,
    )?;
    Ok(Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await?)
}

/// Sign with every default dev key at once over `channel`; the compact JWS.
async fn sign_each_dev_key(channel: Channel) -> TestResult<Vec<Signed>> {
    let mut s = pb::signing_service_client::SigningServiceClient::new(channel);
    let mut out = Vec::new();
    for (key, alg) in DEV_KEYS {
        let r = s
            .sign_jws(pb::SignJwsRequest {
                version: 0,
                key: key.into(),
                protected_header: format!("{{\"alg\":\"{alg}\"}}").into_bytes(),
                payload: b"{}".to_vec(),
            })
            .await
            .map_err(|e| format!("{key}: {e:?}"))?
            .into_inner();
        out.push((r.compact, r.kid));
    }
    Ok(out)
}

/// The JWKS over `channel`.
async fn jwks_over(channel: Channel) -> TestResult<Value> {
    let r = pb::key_service_client::KeyServiceClient::new(channel)
        .get_jwks(pb::GetJwksRequest {})
        .await?
        .into_inner();
    Ok(serde_json::from_str(&r.jwks_json)?)
}

/// A free TCP port on 127.0.0.1 right now.
fn free_port() -> TestResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A script that waits for a fresh `sigild dev` (polling both its listeners) and signs as soon
/// as one answers finds every default key: nothing answers before the keys exist.
#[tokio::test]
async fn fresh_dev_daemon_signs_with_every_default_key_on_first_connection() -> TestResult {
    let state = tempfile::tempdir()?;
    let runtime = tempfile::tempdir()?;
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut dev = Dev::spawn(state.path(), runtime.path(), &addr)?;
    let socket = state.path().join("sigild.sock");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut refused = 0u32;
    let (channel, via) = loop {
        if let Ok(c) = sigild::client::unix_channel(&socket).await {
            break (c, "unix socket");
        }
        if state.path().join("client.key").exists()
            && let Ok(c) = dev_tls(state.path(), &addr).await
        {
            break (c, "TCP");
        }
        refused += 1;
        assert!(
            Instant::now() < deadline,
            "sigild dev never answered:\n{}",
            dev.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let compacts = sign_each_dev_key(channel.clone())
        .await
        .map_err(|e| format!("first connection ({via}): {e}\n{}", dev.log_text()))?;
    let jwks = jwks_over(channel).await?;
    verify_all(&compacts, &jwks)?;
    // Both listeners serve the same ready daemon.
    let other = if via == "TCP" {
        sigild::client::unix_channel(&socket).await?
    } else {
        dev_tls(state.path(), &addr).await?
    };
    verify_all(&sign_each_dev_key(other).await?, &jwks)?;
    println!("first connection over the {via} after {refused} refused attempts: all 3 keys signed");
    let status = dev.stop("INT")?;
    assert_eq!(status.code(), Some(0), "{status}\n{}", dev.log_text());
    Ok(())
}

/// Private keys on the dev token in `state` (pkcs11-tool, with the dev PIN).
fn dev_private_keys(state: &Path) -> TestResult<usize> {
    let pin = std::fs::read_to_string(state.join("user.pin"))?;
    let out = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", state.join("softhsm2.conf"))
        .args([
            "--module",
            SOFTHSM_MODULE,
            "--token-label",
            "sigild-dev",
            "--login",
            "--pin",
            pin.trim(),
            "--list-objects",
            "--type",
            "privkey",
        ])
        .output()?;
    if !out.status.success() {
        return Err(format!("pkcs11-tool: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .matches("Private Key Object")
        .count())
}

/// SIGTERM as soon as `sigild dev` can take it, then during its key generation: both exit 0
/// without serving, and the next start completes the keyring and serves every default key once
/// (no key made twice, none half-made).
#[tokio::test]
async fn sigterm_during_dev_start_up_exits_0_and_leaves_a_consistent_token() -> TestResult {
    let state = tempfile::tempdir()?;
    let runtime = tempfile::tempdir()?;

    // At once: the first moment the process handles SIGTERM itself.
    let mut dev = Dev::spawn(state.path(), runtime.path(), "127.0.0.1:0")?;
    dev.wait_handler(15, Duration::from_secs(30))?;
    let status = dev.stop("TERM")?;
    let log = dev.log_text();
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
    assert!(!log.contains("sigild dev ready"), "{log}");
    drop(dev);

    // During key generation.
    let mut dev = Dev::spawn(state.path(), runtime.path(), "127.0.0.1:0")?;
    dev.wait_log("creating default dev key", Duration::from_secs(60))?;
    let status = dev.stop("TERM")?;
    let log = dev.log_text();
    assert_eq!(status.code(), Some(0), "{status}\n{log}");
    assert!(log.contains("stopped during start-up"), "{log}");
    assert!(!log.contains("sigild dev ready"), "{log}");
    let made_before = log.matches("creating default dev key").count();
    drop(dev);

    // The next start makes what is missing, and only that.
    let mut dev = Dev::spawn(state.path(), runtime.path(), "127.0.0.1:0")?;
    dev.wait_log("sigild dev ready", Duration::from_secs(120))?;
    let log = dev.log_text();
    let made_after = log.matches("creating default dev key").count();
    assert_eq!(made_before + made_after, DEV_KEY_COUNT, "{log}");
    let channel = sigild::client::unix_channel(&state.path().join("sigild.sock")).await?;
    let keys = pb::key_service_client::KeyServiceClient::new(channel.clone())
        .list_keys(pb::ListKeysRequest {})
        .await?
        .into_inner()
        .keys;
    assert_eq!(keys.len(), DEV_KEY_COUNT, "{keys:?}");
    for k in &keys {
        assert_eq!(k.versions.len(), 1, "{k:?}");
        assert_eq!(k.active_version, 1, "{k:?}");
    }
    let compacts = sign_each_dev_key(channel.clone()).await?;
    verify_all(&compacts, &jwks_over(channel).await?)?;
    let status = dev.stop("TERM")?;
    assert_eq!(status.code(), Some(0), "{status}\n{}", dev.log_text());
    assert_eq!(
        dev_private_keys(state.path())?,
        DEV_KEY_COUNT,
        "orphan or missing keys"
    );
    println!(
        "dev start-up stopped at once and after {made_before} key(s); the next start made {made_after}"
    );
    Ok(())
}
