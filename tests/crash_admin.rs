//! Crash-safe key administration, on the real `sigild` binary and a SoftHSM token behind the
//! fault-injecting PKCS#11 module: every administrative operation is killed (SIGKILL, from
//! inside the module) before each of its device writes and after the last one. A daemon
//! restarted on the same token without the fault must load, list and publish no half-made
//! version, sign with the active version (checked by the independent verifier), report what the
//! operation left behind (in its log and in `sigild key repair --dry-run`), and remove it with
//! `sigild key repair`, after which pkcs11-tool shows exactly the objects the keyring names and
//! a second repair finds nothing.
//!
//! The device writes of each operation are the sequences documented in `src/keyring.rs`
//! ("Crash safety"), spelt in PKCS#11 calls. Each test proves its list is the whole truth: every
//! kill point must kill the process (a point never reached fails the test), and a run that
//! arms the call after the last one of each write function must complete with the daemon alive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::process::ExitStatusExt as _;
use std::time::Duration;

use serde_json::Value;
use sigild::api::pb;
use support::faulty::Faults;
use support::{Daemon, TestResult, Token};

/// Every PKCS#11 function that writes to the token, as far as sigild calls them.
const WRITES: [&str; 4] = [
    "C_GenerateKeyPair",
    "C_CreateObject",
    "C_DestroyObject",
    "C_SetAttributeValue",
];

/// Which side of the operation a restarted daemon must see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// As if the operation never ran.
    Before,
    /// As if it completed.
    After,
}

/// The administrative operations under test.
#[derive(Debug, Clone, Copy)]
enum Op {
    Create,
    Rotate,
    Activate,
    Retire,
    Destroy,
    Import,
}

/// A key's name and its versions' states, oldest first.
type States = Vec<(String, Vec<&'static str>)>;

fn states(keys: &[pb::Key]) -> States {
    keys.iter()
        .map(|k| {
            let s = k
                .versions
                .iter()
                .map(|v| match pb::KeyState::try_from(v.state) {
                    Ok(pb::KeyState::Next) => "next",
                    Ok(pb::KeyState::Active) => "active",
                    Ok(pb::KeyState::Retired) => "retired",
                    Ok(pb::KeyState::Destroyed) => "destroyed",
                    _ => "unspecified",
                })
                .collect();
            (k.name.clone(), s)
        })
        .collect()
}

fn key(name: &str, s: &[&'static str]) -> (String, Vec<&'static str>) {
    (name.to_owned(), s.to_vec())
}

impl Op {
    /// The device writes, in order (see `src/keyring.rs`, "Crash safety"): generating a key
    /// pair is one `C_GenerateKeyPair`; a new record one `C_CreateObject`; replacing a record
    /// `C_CreateObject` then `C_DestroyObject` of the old copy; destroying a key pair
    /// `C_DestroyObject` of the private, then of the public object; an import creates the
    /// private, then the public object.
    fn writes(self) -> &'static [&'static str] {
        match self {
            Op::Create | Op::Rotate => &["C_GenerateKeyPair", "C_CreateObject"],
            Op::Activate => &[
                "C_CreateObject",
                "C_DestroyObject",
                "C_CreateObject",
                "C_DestroyObject",
            ],
            Op::Retire => &["C_CreateObject", "C_DestroyObject"],
            Op::Destroy => &[
                "C_CreateObject",
                "C_DestroyObject",
                "C_DestroyObject",
                "C_DestroyObject",
            ],
            Op::Import => &["C_CreateObject", "C_CreateObject", "C_CreateObject"],
        }
    }

    /// For each kill point (before write i, then after the last write): what a restarted
    /// daemon serves, and the kinds of leftovers repair must report, in its order.
    fn expect(self) -> &'static [(Outcome, &'static [&'static str])] {
        use Outcome::{After, Before};
        match self {
            Op::Create | Op::Rotate => {
                &[(Before, &[]), (Before, &["orphan-key-pair"]), (After, &[])]
            }
            Op::Activate => &[
                (Before, &[]),
                (After, &["stale-record", "extra-active"]),
                (After, &["extra-active"]),
                (After, &["stale-record"]),
                (After, &[]),
            ],
            Op::Retire => &[(Before, &[]), (After, &["stale-record"]), (After, &[])],
            Op::Destroy => &[
                (Before, &[]),
                (After, &["stale-record", "destroyed-key-pair"]),
                (After, &["destroyed-key-pair"]),
                (After, &["destroyed-key-pair"]),
                (After, &[]),
            ],
            Op::Import => &[
                (Before, &[]),
                (Before, &["orphan-key-pair"]),
                (Before, &["orphan-key-pair"]),
                (After, &[]),
            ],
        }
    }

    /// The keyring before and after the operation.
    fn states(self, outcome: Outcome) -> States {
        let one = vec![key("idp", &["active"])];
        let two = vec![key("idp", &["active", "next"])];
        match (self, outcome) {
            (Op::Create | Op::Rotate | Op::Import, Outcome::Before) => one,
            (Op::Activate | Op::Retire | Op::Destroy, Outcome::Before) => two,
            (Op::Create, Outcome::After) => vec![key("idp", &["active"]), key("new", &["active"])],
            (Op::Import, Outcome::After) => vec![key("idp", &["active"]), key("imp", &["active"])],
            (Op::Rotate, Outcome::After) => two,
            (Op::Activate, Outcome::After) => vec![key("idp", &["retired", "active"])],
            (Op::Retire, Outcome::After) => vec![key("idp", &["active", "retired"])],
            (Op::Destroy, Outcome::After) => vec![key("idp", &["active", "destroyed"])],
        }
    }

    /// Bring a fresh token to the state the operation starts from.
    async fn setup(self, d: &Daemon) -> TestResult {
        d.create("idp", "ES256", 0).await?;
        if matches!(self, Op::Activate | Op::Retire | Op::Destroy) {
            d.keys()
                .await?
                .rotate_key(pb::RotateKeyRequest {
                    name: "idp".into(),
                    alg: String::new(),
                    rsa_bits: 0,
                    ..Default::default()
                })
                .await?;
        }
        Ok(())
    }

    /// Run the operation.
    async fn run(self, d: &Daemon, pkcs8: &[u8]) -> TestResult<pb::Key> {
        let mut c = d.keys().await?;
        let version = |version| pb::KeyVersionRequest {
            name: "idp".into(),
            version,
        };
        let k = match self {
            Op::Create => return d.create("new", "ES256", 0).await,
            Op::Rotate => {
                c.rotate_key(pb::RotateKeyRequest {
                    name: "idp".into(),
                    alg: String::new(),
                    rsa_bits: 0,
                    ..Default::default()
                })
                .await?
            }
            Op::Activate => c.activate_key_version(version(0)).await?,
            Op::Retire => c.retire_key_version(version(2)).await?,
            Op::Destroy => c.destroy_key_version(version(2)).await?,
            Op::Import => {
                c.import_key(pb::ImportKeyRequest {
                    serves: Vec::new(),
                    name: "imp".into(),
                    alg: "ES256".into(),
                    pkcs8_der: pkcs8.to_vec(),
                    fapi2: false,
                })
                .await?
            }
        };
        Ok(k.into_inner())
    }
}

/// The kill points: `kill_at` each write (its occurrence among the calls of that function),
/// then `kill_after` the last one.
fn kill_points(writes: &[&str]) -> Vec<String> {
    let mut points: Vec<String> = writes
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let n = writes[..=i].iter().filter(|w| *w == f).count();
            format!("kill_at={f}:{n}")
        })
        .collect();
    if let Some(last) = writes.last() {
        let n = writes.iter().filter(|w| *w == last).count();
        points.push(format!("kill_after={last}:{n}"));
    }
    points
}

/// A P-256 PKCS#8 key made by openssl, for the import (genpkey's DER output is SEC1, so
/// `openssl pkcs8 -topk8` converts it).
fn pkcs8() -> TestResult<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let pem = dir.path().join("k.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&pem)
        .output()?;
    assert!(out.status.success(), "openssl genpkey failed");
    let out = std::process::Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
        .arg(&pem)
        .output()?;
    assert!(out.status.success(), "openssl pkcs8 failed");
    Ok(out.stdout)
}

/// A token brought to the operation's starting state, with the fault module's control file.
struct Bench {
    token: Token,
    faults: Faults,
    config: std::path::PathBuf,
}

impl Bench {
    async fn new(op: Op) -> TestResult<Bench> {
        let token = Token::new()?;
        let faults = Faults::new(token.dir.path());
        let config = token.write_config("faulty.toml", &faults.config(&token, ""))?;
        let b = Bench {
            token,
            faults,
            config,
        };
        let d = b.daemon()?;
        op.setup(&d).await?;
        drop(d);
        Ok(b)
    }

    fn daemon(&self) -> TestResult<Daemon> {
        Daemon::start_config_env(&self.token.conf, &self.config, &self.faults.env())
    }

    /// Private keys, public keys and data objects on the token, as pkcs11-tool lists them.
    fn objects(&self) -> TestResult<(usize, usize, usize)> {
        let out = self.token.pkcs11_tool(&["--list-objects"])?;
        assert!(out.status.success(), "pkcs11-tool: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let count = |p: &str| text.lines().filter(|l| l.starts_with(p)).count();
        Ok((
            count("Private Key Object"),
            count("Public Key Object"),
            count("Data object"),
        ))
    }
}

/// Run `sigild key repair` (with `--dry-run` or not): the kinds it lists and its summary.
fn repair(d: &Daemon, dry_run: bool) -> TestResult<(Vec<String>, String)> {
    let mut args = vec!["key", "repair"];
    if dry_run {
        args.push("--dry-run");
    }
    let out = d.cli(&args, None)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<&str> = text.lines().collect();
    let summary = lines.pop().unwrap_or_default().to_owned();
    let kinds = lines
        .iter()
        .map(|l| l.split('\t').next().unwrap_or_default().to_owned())
        .collect();
    Ok((kinds, summary))
}

/// What a restarted daemon serves must be consistent and sign: the JWKS holds exactly the
/// published versions' kids, and every key with an active version signs verifiably.
async fn check_serving(d: &Daemon) -> TestResult<(States, Value)> {
    let keys = support::list_keys(d).await?;
    let jwks = d.jwks().await?;
    let mut published: Vec<String> = keys
        .iter()
        .flat_map(|k| k.versions.iter())
        .filter(|v| {
            matches!(
                pb::KeyState::try_from(v.state),
                Ok(pb::KeyState::Next | pb::KeyState::Active | pb::KeyState::Retired)
            )
        })
        .map(|v| v.kid.clone())
        .collect();
    published.sort();
    let mut in_jwks = support::kids(&jwks);
    in_jwks.sort();
    assert_eq!(in_jwks, published, "the JWKS is the published versions");
    for k in keys.iter().filter(|k| k.active_version != 0) {
        support::sign_verified(d, &k.name, "ES256").await?;
    }
    Ok((states(&keys), jwks))
}

/// Kill `op` at every device write, restart, check, repair.
async fn crash_everywhere(op: Op) -> TestResult {
    let der = pkcs8()?;
    let points = kill_points(op.writes());
    assert_eq!(
        points.len(),
        op.expect().len(),
        "one expectation per kill point"
    );
    for (point, &(outcome, leftovers)) in points.iter().zip(op.expect()) {
        let what = format!("{op:?} with {point}");
        let bench = Bench::new(op).await?;
        let objects_before_op = bench.objects()?;

        // The operation, killed inside the device call.
        bench.faults.set(&format!("{point}\n"));
        let mut d = bench.daemon()?;
        let answered = op.run(&d, &der).await;
        assert!(
            answered.is_err(),
            "{what}: answered, so the kill point was never reached"
        );
        let status = d
            .exited_within(Duration::from_secs(10))?
            .ok_or_else(|| format!("{what}: the daemon did not die"))?;
        assert_eq!(
            status.signal(),
            Some(9),
            "{what}: not killed by SIGKILL: {status:?}"
        );
        drop(d);

        // Restarted without the fault: loads, serves one side of the operation, signs.
        bench.faults.set("");
        let d = bench.daemon()?;
        let (served, jwks) = check_serving(&d)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        assert_eq!(served, op.states(outcome), "{what}");
        let logged = d.log_text().contains("sigild key repair");
        assert_eq!(
            logged,
            !leftovers.is_empty(),
            "{what}: leftovers logged at load\n{}",
            d.log_text()
        );

        // Repair: reported first (changing nothing), then removed, then nothing left.
        let objects = bench.objects()?;
        let (kinds, summary) = repair(&d, true)?;
        assert_eq!(kinds, leftovers, "{what}: dry run: {summary}");
        assert_eq!(
            bench.objects()?,
            objects,
            "{what}: the dry run changed the token"
        );
        let (kinds, summary) = repair(&d, false)?;
        assert_eq!(kinds, leftovers, "{what}: repair: {summary}");
        let (kinds, summary) = repair(&d, false)?;
        assert!(kinds.is_empty(), "{what}: second repair: {kinds:?}");
        assert_eq!(summary, "nothing to repair", "{what}");

        // The token holds exactly what the keyring names: a key pair per version that is not
        // destroyed, a record per version.
        let (after, jwks_after) = check_serving(&d)
            .await
            .map_err(|e| format!("{what}: {e}"))?;
        assert_eq!(after, served, "{what}: repair changed what is served");
        assert_eq!(jwks_after, jwks, "{what}: repair changed the JWKS");
        let versions: usize = after.iter().map(|(_, v)| v.len()).sum();
        let live = after
            .iter()
            .flat_map(|(_, v)| v.iter())
            .filter(|s| **s != "destroyed")
            .count();
        assert_eq!(
            bench.objects()?,
            (live, live, versions),
            "{what}: token after repair"
        );
        if leftovers.is_empty() && outcome == Outcome::Before {
            assert_eq!(bench.objects()?, objects_before_op, "{what}");
        }
    }
    Ok(())
}

/// The operation's write list is complete: with the call after the last one of each write
/// function armed (the first call, for functions it should not call), it completes and the
/// daemon lives. Two functions per run: one `kill_at`, one `kill_after`.
async fn writes_are_complete(op: Op) -> TestResult {
    let der = pkcs8()?;
    let next = |f: &str| op.writes().iter().filter(|w| **w == f).count() + 1;
    for pair in WRITES.chunks(2) {
        let control: String = pair
            .iter()
            .zip(["kill_at", "kill_after"])
            .map(|(f, how)| format!("{how}={f}:{}\n", next(f)))
            .collect();
        let bench = Bench::new(op).await?;
        bench.faults.set(&control);
        let mut d = bench.daemon()?;
        op.run(&d, &der)
            .await
            .map_err(|e| format!("{op:?} with {control:?}: {e}"))?;
        assert!(
            d.exited_within(Duration::from_millis(200))?.is_none(),
            "{op:?}: more device writes than listed ({control:?})"
        );
        let (served, _) = check_serving(&d).await?;
        assert_eq!(served, op.states(Outcome::After), "{op:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_survives_a_kill_at_every_device_write() -> TestResult {
    writes_are_complete(Op::Create).await?;
    crash_everywhere(Op::Create).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_survives_a_kill_at_every_device_write() -> TestResult {
    writes_are_complete(Op::Rotate).await?;
    crash_everywhere(Op::Rotate).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_survives_a_kill_at_every_device_write() -> TestResult {
    writes_are_complete(Op::Activate).await?;
    crash_everywhere(Op::Activate).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_survives_a_kill_at_every_device_write() -> TestResult {
    writes_are_complete(Op::Retire).await?;
    crash_everywhere(Op::Retire).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_survives_a_kill_at_every_device_write() -> TestResult {
    writes_are_complete(Op::Destroy).await?;
    crash_everywhere(Op::Destroy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_survives_a_kill_at_every_device_write() -> TestResult {
    writes_are_complete(Op::Import).await?;
    crash_everywhere(Op::Import).await
}

/// Repair concerns every key and objects that belong to none: only an admin rule that covers
/// every key may run it (even as a dry run), and both kinds of run are in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_needs_admin_on_every_key_and_is_audited() -> TestResult {
    const PARTIAL: &str = "spiffe://sigild.test/idp-admin";
    let token = Token::new()?;
    let d = Daemon::start_with(
        &token,
        &format!(
            "[[caller]]\nidentity = \"{PARTIAL}\"\nkeys = [\"idp-*\"]\noperations = [\"jws\"]\nadmin = true\n\n[audit]\nstdout = true\n"
        ),
    )?;
    let partial = token.pki.client(
        "idp-admin",
        &sigild::tls::ClientNames {
            spiffe: Some(PARTIAL.into()),
            ..Default::default()
        },
    )?;
    let mut c = pb::key_service_client::KeyServiceClient::new(d.channel_as(&partial).await?);
    for dry_run in [true, false] {
        let refused = c
            .repair_keyring(pb::RepairKeyringRequest { dry_run })
            .await
            .err()
            .ok_or("an admin of idp-* ran a repair")?;
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    }
    // The same caller may still administer its own keys.
    c.create_key(pb::CreateKeyRequest {
        name: "idp-a".into(),
        alg: "ES256".into(),
        rsa_bits: 0,
        fapi2: false,
        ..Default::default()
    })
    .await?;
    assert_eq!(repair(&d, true)?.1, "nothing to repair");
    assert_eq!(repair(&d, false)?.1, "nothing to repair");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let records: Vec<Value> = d
        .stdout_lines()
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    let of = |op: &str, caller: &str, decision: &str| {
        records
            .iter()
            .filter(|r| r["operation"] == op && r["caller"] == caller && r["decision"] == decision)
            .filter(|r| r["key"] == "*")
            .count()
    };
    assert_eq!(
        of("admin:repair-dry-run", PARTIAL, "deny"),
        1,
        "{records:?}"
    );
    assert_eq!(of("admin:repair", PARTIAL, "deny"), 1, "{records:?}");
    assert_eq!(
        of("admin:repair-dry-run", support::ADMIN_SPIFFE, "allow"),
        1,
        "{records:?}"
    );
    assert_eq!(
        of("admin:repair", support::ADMIN_SPIFFE, "allow"),
        1,
        "{records:?}"
    );
    Ok(())
}
