//! The fault-matrix cell "hung `C_Sign`": a daemon (2 workers, at most 1 abandoned) on a SoftHSM
//! token behind the fault-injecting module (tests/faulty-pkcs11), whose `hang_count` key makes
//! chosen `C_Sign` calls block until told otherwise while later calls pass. It shows: only the
//! hung request fails, at the deadline its caller set (`grpc-timeout`, far shorter than the
//! configured signing timeout); the stuck worker is replaced, so every later request succeeds
//! with a signature the independent verifier accepts; with every worker stuck and no
//! replacement left the daemon reports NOT_SERVING, and SERVING again once the calls return;
//! SIGTERM with a call still hung exits 0 without finalising the module under it. The module's
//! stats prove each hang was injected. Figures are printed (`--no-capture`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use sigild::api::pb;
use support::faulty::Faults;
use support::{Daemon, TestResult, Token};
use tonic_health::pb::health_check_response::ServingStatus;

/// A signing client of the daemon (cheap to clone, one connection).
type Signer = pb::signing_service_client::SigningServiceClient<tonic::transport::Channel>;

/// Sign a small JWS with key `k`, the caller's deadline `timeout` away (`grpc-timeout`).
async fn sign_by(
    signer: &Signer,
    timeout: Duration,
    n: usize,
) -> Result<pb::SignJwsResponse, tonic::Status> {
    let mut req = tonic::Request::new(pb::SignJwsRequest {
        version: 0,
        key: "k".into(),
        protected_header: br#"{"alg":"ES256","typ":"JWT"}"#.to_vec(),
        payload: format!("{{\"sub\":\"hangs\",\"n\":{n}}}").into_bytes(),
    });
    req.set_timeout(timeout);
    Ok(signer.clone().sign_jws(req).await?.into_inner())
}

/// Check every signature with jwcrypto against the daemon's JWKS, in one Python process (the
/// verifier's start-up dominates on a loaded machine; `support::verify_jws` starts one per
/// signature). Each JWS must verify with the key its response names, as ES256.
fn verify_all(sigs: &[pb::SignJwsResponse], jwks: &serde_json::Value) -> TestResult {
    use std::io::Write as _;
    const SCRIPT: &str = r#"
import json, sys
from jwcrypto import jwk, jws
req = json.load(sys.stdin)
keys = jwk.JWKSet.from_json(json.dumps(req["jwks"]))
n = 0
for item in req["items"]:
    token = jws.JWS()
    token.deserialize(item["jws"])
    assert token.jose_header["alg"] == "ES256", token.jose_header
    key = keys.get_key(item["kid"])
    assert key is not None, "kid not in the JWKS: " + item["kid"]
    token.verify(key)
    n += 1
print(json.dumps({"verified": n}))
"#;
    let items: Vec<_> = sigs
        .iter()
        .map(|s| serde_json::json!({"jws": s.compact, "kid": s.kid}))
        .collect();
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().ok_or("stdin")?.write_all(
        serde_json::json!({"jwks": jwks, "items": items})
            .to_string()
            .as_bytes(),
    )?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!(
            "jwcrypto rejected a signature: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    if v["verified"] != serde_json::json!(sigs.len()) {
        return Err(format!("jwcrypto verified {} of {}", v["verified"], sigs.len()).into());
    }
    Ok(())
}

/// `callers` callers at once, each signing `each` requests one after the other.
async fn sign_many(
    signer: &Signer,
    callers: usize,
    each: usize,
) -> TestResult<Vec<pb::SignJwsResponse>> {
    let mut set = tokio::task::JoinSet::new();
    for c in 0..callers {
        let signer = signer.clone();
        set.spawn(async move {
            let mut out = Vec::new();
            for i in 0..each {
                out.push(sign_by(&signer, Duration::from_secs(10), 1000 + c * each + i).await?);
            }
            Ok::<_, tonic::Status>(out)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r??);
    }
    Ok(all)
}

/// Wait (bounded) until `f` holds.
async fn until(what: &str, within: Duration, f: impl Fn() -> bool) -> TestResult {
    let deadline = Instant::now() + within;
    while !f() {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The pid of the `sigild serve` started with `config` (its command line names the file).
fn pid_of(config: &Path) -> TestResult<u32> {
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0);
        if args.any(|a| a == b"serve") && args.any(|a| a == config.as_os_str().as_bytes()) {
            return Ok(pid);
        }
    }
    Err(format!("no sigild serve --config {}", config.display()).into())
}

/// Wait until process `pid` (a child of this test, not reaped yet) has exited, and return its
/// wait status (0: exited with code 0), read from `/proc/PID/stat` (field 52, `exit_code`).
async fn exit_status(pid: u32, within: Duration) -> TestResult<i32> {
    let deadline = Instant::now() + within;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name in parentheses, starting with field 3 (the state).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .ok_or("unexpected /proc stat")?
            .1
            .split_whitespace()
            .collect();
        if fields.first() == Some(&"Z") {
            return Ok(fields.get(52 - 3).ok_or("no exit_code field")?.parse()?);
        }
        if Instant::now() > deadline {
            return Err(format!("process {pid} still running after {within:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_sign_fails_only_its_request_at_its_deadline_and_capacity_is_kept() -> TestResult {
    let token = Token::new()?;
    let faults = Faults::new(token.dir.path());
    // Appended to the [pkcs11] table (workers = 2 there); the signing timeout is far longer than
    // the callers' deadlines, so an answer at a caller's deadline is that deadline's doing.
    let extra = "max_abandoned_workers = 1\n\n[keyring]\nrefresh_seconds = 1\n\n[signing]\ntimeout_ms = 30000\n";
    let config = token.write_config("hangs.toml", &faults.config(&token, extra))?;
    let d = Daemon::start_config_env(&token.conf, &config, &faults.env())?;
    d.create("k", "ES256", 0).await?;
    let jwks = d.jwks().await?;
    let signer = d.signer().await?;
    support::wait_health(&d, "", ServingStatus::Serving, Duration::from_secs(10)).await?;
    verify_all(&sign_many(&signer, 1, 2).await?, &jwks)?;

    // 1. One C_Sign hangs; its caller gave the request 1.5 s.
    faults.set("hang_count=1\n");
    let deadline = Duration::from_millis(1500);
    let started = Instant::now();
    let hung = async {
        let r = sign_by(&signer, deadline, 0).await;
        (r, started.elapsed())
    };
    let meanwhile = async {
        until("the first call hangs", Duration::from_secs(10), || {
            faults.stats().get("hung") == 1
        })
        .await?;
        // The other worker serves while the first is stuck.
        sign_many(&signer, 1, 3).await
    };
    let ((hung, took), meanwhile) = tokio::join!(hung, meanwhile);
    let meanwhile = meanwhile?;
    verify_all(&meanwhile, &jwks)?;
    let code = hung.as_ref().err().map(tonic::Status::code);
    println!(
        "hung C_Sign: caller deadline {} ms, answered after {} ms with {code:?}; {} requests served meanwhile",
        deadline.as_millis(),
        took.as_millis(),
        meanwhile.len()
    );
    assert!(hung.is_err(), "the hung request cannot have succeeded");
    // Answered at its deadline (the daemon's own answer a few ms early, or the client's timer
    // should it win the race), not at the configured 30 s.
    assert!(took >= deadline - Duration::from_millis(100), "{took:?}");
    assert!(took < deadline + Duration::from_secs(3), "{took:?}");
    // The daemon gave up by the caller's deadline itself: its backend said so in the log.
    until(
        "the daemon logs the request failed at its deadline",
        Duration::from_secs(5),
        || d.log_text().contains("did not sign before the deadline"),
    )
    .await?;
    if code == Some(tonic::Code::Unavailable) {
        let msg = hung
            .as_ref()
            .err()
            .map(|s| s.message().to_owned())
            .unwrap_or_default();
        assert!(!msg.contains("CKR_"), "no device detail for callers: {msg}");
    }

    // A second past the deadline the stuck worker is abandoned and replaced.
    until(
        "the stuck worker is replaced",
        Duration::from_secs(10),
        || d.log_text().contains("replaced by a new worker"),
    )
    .await?;
    let t = Instant::now();
    let after = sign_many(&signer, 4, 10).await?;
    let took_after = t.elapsed();
    verify_all(&after, &jwks)?;
    let stats = faults.stats();
    println!(
        "after the hang: {} signatures, all verified by jwcrypto, in {} ms, while 1 call stays hung ({stats})",
        after.len(),
        took_after.as_millis()
    );
    assert_eq!(stats.get("hung"), 1, "still exactly one call hung: {stats}");

    // 2. Both remaining workers hang too, and the one abandoned worker allowed is used up:
    // the daemon reports NOT_SERVING, and a request meanwhile fails at its deadline without
    // reaching the device.
    faults.set("hang_count=3\n");
    let short = Duration::from_millis(1000);
    let (a, b) = tokio::join!(sign_by(&signer, short, 1), sign_by(&signer, short, 2));
    assert!(a.is_err() && b.is_err(), "{a:?} {b:?}");
    assert_eq!(faults.stats().get("hung"), 3, "{}", faults.stats());
    let t = Instant::now();
    support::wait_health(&d, "", ServingStatus::NotServing, Duration::from_secs(15)).await?;
    println!(
        "every worker stuck, no replacement left: NOT_SERVING {} ms after the calls' deadlines",
        t.elapsed().as_millis()
    );
    assert!(
        d.log_text()
            .contains("limit of abandoned workers is reached")
    );
    let calls = faults.stats().get("sign_calls");
    let t = Instant::now();
    let r = sign_by(&signer, short, 3).await;
    assert!(r.is_err(), "{r:?}");
    assert!(t.elapsed() < short + Duration::from_secs(3));
    assert_eq!(
        faults.stats().get("sign_calls"),
        calls,
        "the device was not touched"
    );

    // The hung calls return: SERVING again, and signing works.
    faults.set("");
    support::wait_health(&d, "", ServingStatus::Serving, Duration::from_secs(15)).await?;
    let back = sign_many(&signer, 2, 5).await?;
    verify_all(&back, &jwks)?;
    println!(
        "calls returned: SERVING, {} more signatures verified",
        back.len()
    );

    // 3. SIGTERM with one call hung: the daemon does not wait for it forever, does not
    // finalise the module under it, and exits 0.
    faults.set("hang_count=4\n");
    let pid = pid_of(&config)?;
    let stuck = async { sign_by(&signer, short, 4).await };
    let stop = async {
        until("the last call hangs", Duration::from_secs(10), || {
            faults.stats().get("hung") == 4
        })
        .await?;
        let t = Instant::now();
        let killed = std::process::Command::new("kill")
            .args(["-s", "TERM", &pid.to_string()])
            .status()?;
        assert!(killed.success());
        let status = exit_status(pid, Duration::from_secs(20)).await?;
        TestResult::Ok((status, t.elapsed()))
    };
    let (stuck, stopped) = tokio::join!(stuck, stop);
    let (status, took) = stopped?;
    println!(
        "SIGTERM with a hung C_Sign: exit status {status} after {} ms",
        took.as_millis()
    );
    assert!(stuck.is_err());
    assert_eq!(status, 0, "clean exit\n{}", d.log_text());
    assert!(
        d.log_text().contains("not calling C_Finalize"),
        "{}",
        d.log_text()
    );
    Ok(())
}
