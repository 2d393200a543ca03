//! The fault matrix: a daemon on a SoftHSM token behind the fault-injecting PKCS#11 module
//! (tests/faulty-pkcs11), one test per kind of fault. Every returned signature is checked by
//! the independent verifier (jwcrypto), and each test proves from the module's stats that its
//! fault was really injected. Figures are printed for the record:
//! `cargo nextest run --test faults --no-capture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigild::api::pb;
use support::faulty::{Faults, Stats};
use support::{Daemon, TestResult, Token};
use tonic_health::pb::health_check_response::ServingStatus;

/// A daemon on its own token through the fault module, with ES256 keys `a` (signs) and `b`
/// (another key of the same type, for the stale-handle fault).
struct Cell {
    name: &'static str,
    faults: Faults,
    d: Daemon,
    /// The kid of `a`'s active version.
    kid: String,
    // Last: the token directory outlives the daemon.
    _token: Token,
}

impl Cell {
    async fn start(name: &'static str, extra: &str) -> TestResult<Cell> {
        let token = Token::new()?;
        let faults = Faults::new(token.dir.path());
        let config = token.write_config("faulty.toml", &faults.config(&token, extra))?;
        let d = Daemon::start_config_env(&token.conf, &config, &faults.env())?;
        let a = d.create("a", "ES256", 0).await?;
        d.create("b", "ES256", 0).await?;
        let kid = support::active_jwk(&a)?["kid"]
            .as_str()
            .ok_or("no kid")?
            .to_owned();
        Ok(Cell {
            name,
            faults,
            d,
            kid,
            _token: token,
        })
    }

    /// Sign `n` JWS with `a`: half one after the other, half `parallel` at a time.
    async fn batch(&self, n: usize, parallel: usize) -> TestResult<Vec<Result<String, String>>> {
        let signer = self.d.signer().await?;
        let header = format!("{{\"alg\":\"ES256\",\"kid\":\"{}\"}}", self.kid);
        let sign = |i: usize| {
            let mut signer = signer.clone();
            let req = pb::SignJwsRequest {
                version: 0,
                key: "a".into(),
                protected_header: header.clone().into_bytes(),
                payload: format!("{{\"cell\":\"{}\",\"i\":{i}}}", self.name).into_bytes(),
            };
            async move {
                signer
                    .sign_jws(req)
                    .await
                    .map(|r| r.into_inner().compact)
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
        };
        let mut out = Vec::with_capacity(n);
        let sequential = n / 2;
        for i in 0..sequential {
            out.push(sign(i).await);
        }
        let mut i = sequential;
        while i < n {
            let wave: Vec<_> = (i..n.min(i + parallel))
                .map(|j| tokio::spawn(sign(j)))
                .collect();
            for t in wave {
                out.push(t.await?);
            }
            i += parallel;
        }
        Ok(out)
    }

    /// Verify every signature returned (jwcrypto, one Python process for the lot) and count
    /// the wrong ones and the errors; prints the cell's figures.
    async fn tally(&self, results: &[Result<String, String>]) -> TestResult<Tally> {
        let compacts: Vec<&str> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().map(String::as_str))
            .collect();
        let wrong = verify_all(&compacts, &self.d.jwks().await?)?;
        let t = Tally {
            signatures: compacts.len(),
            wrong,
            errors: results.iter().filter(|r| r.is_err()).count(),
            stats: self.faults.stats(),
        };
        println!(
            "fault matrix | {} | requests {} | signatures {} | wrong {} | errors {} | injected: {}",
            self.name,
            results.len(),
            t.signatures,
            t.wrong,
            t.errors,
            t.stats
        );
        for e in results.iter().filter_map(|r| r.as_ref().err()).take(3) {
            println!("  error: {e}");
        }
        Ok(t)
    }
}

struct Tally {
    signatures: usize,
    wrong: usize,
    errors: usize,
    stats: Stats,
}

/// How many of `compacts` jwcrypto rejects (each against the JWKS entry its kid names).
fn verify_all(compacts: &[&str], jwks: &Value) -> TestResult<usize> {
    use std::io::Write as _;
    let script = r#"
import json, sys
sys.path.insert(0, sys.argv[1])
import jose_verify
req = json.load(sys.stdin)
failed = []
for c in req["jws"]:
    try:
        jose_verify.verify_jws({"jws": c, "jwks": req["jwks"]})
    except Exception as e:
        failed.append(f"{type(e).__name__}: {e}")
print(json.dumps({"checked": len(req["jws"]), "failed": failed}))
"#;
    let mut child = Command::new("python3")
        .args([
            "-c",
            script,
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/verifiers"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().ok_or("stdin")?.write_all(
        json!({"jws": compacts, "jwks": jwks})
            .to_string()
            .as_bytes(),
    )?;
    let out = child.wait_with_output()?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "verifier output {e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    assert_eq!(v["checked"], json!(compacts.len()));
    let failed = v["failed"].as_array().ok_or("no failed list")?;
    for f in failed.iter().take(3) {
        println!("  rejected by jwcrypto: {f}");
    }
    Ok(failed.len())
}

/// Every signature right and no caller error, with the fault injected `what` times at least.
fn assert_invisible(t: &Tally, n: usize, what: &str, at_least: u64) {
    assert_eq!(t.wrong, 0, "wrong signatures");
    assert_eq!(t.errors, 0, "caller-visible errors");
    assert_eq!(t.signatures, n);
    assert!(
        t.stats.get(what) >= at_least,
        "the fault was not injected ({what} < {at_least}): {}",
        t.stats
    );
}

/// The daemon caught each bad signature itself: one "signing again afresh" warning per
/// signature the module spoiled (the retries run on new sessions, which the every-2nd pattern
/// spares).
async fn assert_each_caught(d: &Daemon, injected: u64) -> TestResult {
    let text = "withheld, signing again afresh";
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = d.log_text().matches(text).count() as u64;
        if seen == injected {
            println!("  retried afresh: {seen}");
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{seen} retries logged for {injected} spoiled signatures").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupted_signature_every_2nd_is_invisible() -> TestResult {
    let cell = Cell::start("corrupted signature every 2nd", "").await?;
    cell.faults.set("corrupt_every=2\n");
    let results = cell.batch(50, 4).await?;
    let t = cell.tally(&results).await?;
    assert_invisible(&t, 50, "corrupted", 10);
    assert_each_caught(&cell.d, t.stats.get("corrupted")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn other_keys_signature_every_2nd_is_invisible() -> TestResult {
    let cell = Cell::start("other key's signature every 2nd", "").await?;
    cell.faults.set("other_key_every=2\n");
    let results = cell.batch(50, 4).await?;
    let t = cell.tally(&results).await?;
    assert_invisible(&t, 50, "other_key", 10);
    assert_each_caught(&cell.d, t.stats.get("other_key")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_error_every_3rd_is_invisible() -> TestResult {
    let cell = Cell::start("CKR_DEVICE_ERROR every 3rd", "").await?;
    cell.faults
        .set("sign_error=CKR_DEVICE_ERROR\nsign_error_every=3\n");
    let results = cell.batch(50, 4).await?;
    let t = cell.tally(&results).await?;
    assert_invisible(&t, 50, "sign_errors", 5);
    Ok(())
}

/// Every session is invalidated four times during the run; `keep_login` says whether the token
/// stays logged in (an HSM dropping idle sessions) or logs out with them.
async fn sessions_dropped(keep_login: u8) -> TestResult {
    let name = if keep_login == 1 {
        "all sessions dropped, login kept"
    } else {
        "all sessions dropped, login lost"
    };
    let cell = Cell::start(name, "").await?;
    let logins_before = cell.faults.stats().get("logins");
    let mut results = Vec::new();
    for generation in 1..=4 {
        cell.faults.set(&format!(
            "drop_sessions={generation}\nkeep_login={keep_login}\n"
        ));
        results.extend(cell.batch(12, 3).await?);
    }
    let t = cell.tally(&results).await?;
    assert_invisible(&t, 48, "sessions_dropped", 4);
    assert!(
        t.stats.get("invalid_handle_calls") > 0,
        "the daemon never used an invalidated session: {}",
        t.stats
    );
    let logins = t.stats.get("logins") - logins_before;
    println!("  logins during the run: {logins}");
    if keep_login == 1 {
        assert_eq!(logins, 0, "the login was kept: no new C_Login");
    } else {
        assert!(logins >= 4, "a new login after each drop: {logins}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_sessions_dropped_with_login_kept_is_invisible() -> TestResult {
    sessions_dropped(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_sessions_dropped_with_login_lost_is_invisible() -> TestResult {
    sessions_dropped(0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_signature_corrupted_quarantines_until_fixed() -> TestResult {
    let probe = Duration::from_millis(500);
    let cell = Cell::start(
        "every signature corrupted",
        &format!(
            "\n[signing]\nquarantine_after = 3\nquarantine_probe_ms = {}\n",
            probe.as_millis()
        ),
    )
    .await?;
    support::wait_health(&cell.d, "", ServingStatus::Serving, Duration::from_secs(10)).await?;
    cell.faults.set("corrupt_every=1\n");

    // The first three requests fail verification twice each and quarantine the device.
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = support::sign_active(&cell.d, "a").await;
        let (code, message, id) = support::failure(r)?;
        assert_eq!(code, tonic::Code::Unavailable, "request {i}: {message}");
        assert!(message.contains("does not verify"), "{message}");
        ids.push(id);
    }
    let results = cell.batch(20, 4).await?;
    let t = cell.tally(&results).await?;
    assert_eq!(t.wrong, 0);
    assert_eq!(t.signatures, 0, "no signature while every one is corrupted");
    assert_eq!(t.errors, 20);
    assert!(
        results.iter().all(|r| r
            .as_ref()
            .is_err_and(|e| e.starts_with("Unavailable") && e.contains("quarantined"))),
        "{results:?}"
    );
    // The six corrupted signatures of the three failed requests (first try and retry), and
    // none while quarantined except the probes.
    assert!(t.stats.get("corrupted") >= 6, "{}", t.stats);
    support::wait_health(
        &cell.d,
        "",
        ServingStatus::NotServing,
        Duration::from_secs(5),
    )
    .await?;
    let log = cell.d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("signing device quarantined"))
        .ok_or_else(|| format!("no quarantine log line:\n{log}"))?;
    for id in &ids {
        assert!(line.contains(id.as_str()), "{id} not in {line}");
    }
    assert_eq!(
        log.matches("signing device quarantined").count(),
        1,
        "one log line"
    );

    // Fixed: the next probe verifies, the device serves again.
    let cleared = Instant::now();
    cell.faults.set("");
    support::wait_health(&cell.d, "", ServingStatus::Serving, Duration::from_secs(10)).await?;
    let back = cleared.elapsed();
    println!(
        "  back to SERVING {} ms after the fault was cleared (probe interval {} ms)",
        back.as_millis(),
        probe.as_millis()
    );
    // The probe interval, plus the health poll's 200 ms and generous slack for a loaded machine.
    assert!(back < probe + Duration::from_secs(3), "{back:?}");
    assert!(
        log_has(&cell.d, "out of quarantine"),
        "{}",
        cell.d.log_text()
    );
    let results = cell.batch(20, 4).await?;
    let t = cell.tally(&results).await?;
    assert_eq!((t.signatures, t.wrong, t.errors), (20, 0, 0));
    Ok(())
}

fn log_has(d: &Daemon, text: &str) -> bool {
    d.log_text().contains(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_pulled_and_back_signs_again_within_a_second() -> TestResult {
    let cell = Cell::start("token pulled and back", "").await?;
    let before = cell.batch(10, 2).await?;

    // Pulled: requests fail (and none returns a wrong signature).
    cell.faults.set("token_absent=1\n");
    let mut absent = Vec::new();
    let pulled = Instant::now();
    while pulled.elapsed() < Duration::from_millis(1500) {
        absent.extend(cell.batch(2, 2).await?);
    }
    assert!(
        absent.iter().all(Result::is_err),
        "signed without a token: {absent:?}"
    );

    // Back: measure until the first signature.
    cell.faults.set("token_absent=0\n");
    let back = Instant::now();
    let mut while_recovering = 0;
    let first = loop {
        let r = cell.batch(1, 1).await?.remove(0);
        if r.is_ok() {
            break back.elapsed();
        }
        while_recovering += 1;
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "never signed again: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let after = cell.batch(20, 4).await?;
    println!(
        "  token back: first signature after {} ms ({while_recovering} errors meanwhile)",
        first.as_millis()
    );
    let mut all = before.clone();
    all.extend(absent.iter().cloned());
    all.extend(after.iter().cloned());
    let t = cell.tally(&all).await?;
    assert_eq!(t.wrong, 0);
    assert!(before.iter().all(Result::is_ok), "{before:?}");
    assert!(
        after.iter().all(Result::is_ok),
        "errors after the token came back: {after:?}"
    );
    assert_eq!(
        t.errors,
        absent.len(),
        "errors only while the token was absent"
    );
    assert!(t.stats.get("token_removals") >= 1, "{}", t.stats);
    assert!(t.stats.get("absent_refusals") > 0, "{}", t.stats);
    assert!(
        first <= Duration::from_secs(1),
        "signing again {first:?} after the token came back"
    );
    Ok(())
}
