//! Rotation an OP can follow, on real SoftHSM tokens: `WatchKeys` streams the key set at once
//! and at every change (through this daemon at once, through another replica on the same token
//! within its refresh), a named version signs while active or within its grace period after
//! (every replica agreeing, as the time is on the token) and is refused after it with the
//! active kid named.

mod support;

use std::time::Duration;

use serde_json::Value;
use sigild::api::pb;
use support::*;
use tonic::Streaming;

/// Replicas re-read the keyring every second; a version that stopped being active signs for
/// named requests for 5 more seconds.
const KEYRING: &str = "\n[keyring]\nrefresh_seconds = 1\ngrace_seconds = 5\n";

/// Open a watch on `names` (empty: every key).
async fn watch(d: &Daemon, names: &[&str]) -> TestResult<Streaming<pb::KeySet>> {
    Ok(d.keys()
        .await?
        .watch_keys(pb::WatchKeysRequest {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        })
        .await?
        .into_inner())
}

/// The next key set on `stream` for which `want` holds (earlier ones are skipped), within a
/// generous bound: a stream that never delivers it fails the test instead of hanging it.
async fn next_where(
    stream: &mut Streaming<pb::KeySet>,
    what: &str,
    want: impl Fn(&pb::KeySet) -> bool,
) -> TestResult<pb::KeySet> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return Err(format!("no key set where {what}").into()),
            Ok(r) => match r? {
                None => return Err(format!("the watch ended before {what}").into()),
                Some(set) if want(&set) => return Ok(set),
                Some(_) => {}
            },
        }
    }
}

/// The states of `key`'s versions in a key set, oldest first.
fn states(set: &pb::KeySet, key: &str) -> Vec<pb::KeyState> {
    set.keys
        .iter()
        .find(|k| k.name == key)
        .map(|k| k.versions.iter().map(|v| v.state()).collect())
        .unwrap_or_default()
}

fn jwks_kids(set: &pb::KeySet) -> TestResult<Vec<String>> {
    Ok(kids(&serde_json::from_str::<Value>(&set.jwks_json)?))
}

#[tokio::test]
async fn watch_follows_changes_here_and_on_another_replica_and_ends_at_shutdown() -> TestResult {
    use pb::KeyState::{Active, Next, Retired};
    let token = Token::new()?;
    let mut a = Daemon::start_with(&token, KEYRING)?;
    a.create("idp", "ES256", 0).await?;
    a.create("other", "ES256", 0).await?;
    let b = Daemon::start_with(&token, KEYRING)?;

    let mut here = watch(&a, &["idp"]).await?;
    let mut there = watch(&b, &[]).await?;
    let first = next_where(&mut here, "the first set", |_| true).await?;
    assert_eq!(first.generation, 1);
    assert_eq!(first.keys.len(), 1, "only the watched key");
    assert_eq!(states(&first, "idp"), [Active]);
    assert_eq!(jwks_kids(&first)?, [first.keys[0].versions[0].kid.clone()]);
    let first_there = next_where(&mut there, "the first set", |_| true).await?;
    assert_eq!(first_there.keys.len(), 2, "every key");

    // Rotate, activate, retire through A: A's watch sees each at once, B's within its refresh.
    let mut ka = a.keys().await?;
    let name = || "idp".to_owned();
    ka.rotate_key(pb::RotateKeyRequest {
        name: name(),
        ..Default::default()
    })
    .await?;
    let set = next_where(&mut here, "rotated", |s| states(s, "idp") == [Active, Next]).await?;
    assert_eq!(set.generation, 2, "one set per change");
    assert_eq!(jwks_kids(&set)?.len(), 2, "a next version is published");
    next_where(&mut there, "rotated there", |s| {
        states(s, "idp") == [Active, Next]
    })
    .await?;

    ka.activate_key_version(pb::KeyVersionRequest {
        name: name(),
        version: 0,
    })
    .await?;
    let set = next_where(&mut here, "activated", |s| {
        states(s, "idp") == [Retired, Active]
    })
    .await?;
    assert_eq!(set.keys[0].active_version, 2);
    next_where(&mut there, "activated there", |s| {
        states(s, "idp") == [Retired, Active]
    })
    .await?;

    ka.rotate_key(pb::RotateKeyRequest {
        name: name(),
        ..Default::default()
    })
    .await?;
    ka.retire_key_version(pb::KeyVersionRequest {
        name: name(),
        version: 3,
    })
    .await?;
    let set = next_where(&mut here, "retired", |s| {
        states(s, "idp") == [Retired, Active, Retired]
    })
    .await?;
    assert_eq!(jwks_kids(&set)?.len(), 3, "retired versions stay published");
    next_where(&mut there, "retired there", |s| {
        states(s, "idp") == [Retired, Active, Retired]
    })
    .await?;

    // A change to a key this watch does not name yields nothing on it; the next change to its
    // key does, with the next generation.
    ka.rotate_key(pb::RotateKeyRequest {
        name: "other".into(),
        ..Default::default()
    })
    .await?;
    ka.retire_key_version(pb::KeyVersionRequest {
        name: name(),
        version: 1,
    })
    .await
    .err()
    .ok_or("retiring a retired version is refused")?;
    ka.destroy_key_version(pb::KeyVersionRequest {
        name: name(),
        version: 3,
    })
    .await?;
    let set = next_where(&mut here, "destroyed", |_| true).await?;
    assert_eq!(
        states(&set, "idp"),
        [Retired, Active, pb::KeyState::Destroyed]
    );
    let last_generation = set.generation;

    // A name that is no key is refused at once.
    let (code, _) = code_of(
        a.keys()
            .await?
            .watch_keys(pb::WatchKeysRequest {
                names: vec!["nope".into()],
            })
            .await,
    )?;
    assert_eq!(code, tonic::Code::NotFound);

    // Shutdown ends open watches instead of waiting for them: the daemon exits well within
    // its shutdown grace (10 s) and the stream ends.
    // (Waited for off the runtime, so the clients' connections keep answering the server.)
    let started = std::time::Instant::now();
    let (a, status) = tokio::task::spawn_blocking(move || {
        let status = a.signal_and_wait("TERM", Duration::from_secs(30));
        (a, status)
    })
    .await?;
    let status = status?;
    assert!(status.success(), "{status:?}\n{}", a.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "an open watch held the shutdown for {:?}\n{}",
        started.elapsed(),
        a.log_text()
    );
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match here.message().await {
                Ok(Some(s)) if s.generation > last_generation => {}
                Ok(Some(_)) => {}
                other => return other.map(|_| ()),
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the watch did not end at shutdown");
    Ok(())
}

/// Sign `{}` with `key` naming `kid` in the header.
async fn sign_with_kid(
    d: &Daemon,
    key: &str,
    kid: &str,
) -> Result<pb::SignJwsResponse, tonic::Status> {
    let header = format!("{{\"alg\":\"ES256\",\"kid\":\"{kid}\"}}");
    sign_jws(d, key, header.as_bytes(), b"{\"sub\":\"alice\"}").await
}

async fn sign_raw_version(
    d: &Daemon,
    key: &str,
    version: u32,
) -> TestResult<Result<pb::SignRawResponse, tonic::Status>> {
    Ok(d.signer()
        .await?
        .sign_raw(pb::SignRawRequest {
            key: key.into(),
            data: b"raw input".to_vec(),
            alg: String::new(),
            version,
        })
        .await
        .map(tonic::Response::into_inner))
}

#[tokio::test]
async fn a_named_version_signs_within_its_grace_period_only() -> TestResult {
    let token = Token::new()?;
    let a = Daemon::start_with(&token, KEYRING)?;
    let b = Daemon::start_with(&token, KEYRING)?;
    let created = a.create("idp", "ES256", 0).await?;
    let old_kid = created.versions[0].kid.clone();
    let mut ka = a.keys().await?;
    ka.rotate_key(pb::RotateKeyRequest {
        name: "idp".into(),
        ..Default::default()
    })
    .await?;
    let key = ka
        .activate_key_version(pb::KeyVersionRequest {
            name: "idp".into(),
            version: 2,
        })
        .await?
        .into_inner();
    let new_kid = key.versions[1].kid.clone();
    let activated = std::time::Instant::now();

    // Within the grace period: the old kid (header) or version (field) signs, on this daemon
    // and on the replica, which reads when the version stopped being active from the token.
    let mut batch = JwsBatch::default();
    let r = sign_with_kid(&a, "idp", &old_kid).await?;
    assert_eq!((r.kid.as_str(), r.key_version), (old_kid.as_str(), 1));
    batch.push(&r.compact, &old_kid)?;
    let r = eventually(&b, Duration::from_secs(4), || async {
        Ok(sign_with_kid(&b, "idp", &old_kid).await?)
    })
    .await?;
    assert_eq!(r.key_version, 1, "the replica agrees");
    batch.push(&r.compact, &old_kid)?;
    let id_token = a
        .signer()
        .await?
        .sign_id_token(pb::SignIdTokenRequest {
            key: "idp".into(),
            claims_json: r#"{"iss":"https://op.example","sub":"alice","aud":"rp"}"#.into(),
            version: 1,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(id_token.kid, old_kid);
    batch.push(&id_token.compact, &old_kid)?;
    // The active one by number, and without naming any.
    let r = a
        .signer()
        .await?
        .sign_jws(pb::SignJwsRequest {
            key: "idp".into(),
            protected_header: br#"{"alg":"ES256"}"#.to_vec(),
            payload: b"{}".to_vec(),
            version: 2,
        })
        .await?
        .into_inner();
    assert_eq!(r.kid, new_kid);
    batch.push(&r.compact, &new_kid)?;
    assert_eq!(sign_active(&a, "idp").await?.kid, new_kid);
    let raw = sign_raw_version(&a, "idp", 1).await??;
    assert_eq!(raw.kid, old_kid);
    let old_jwk: Value = serde_json::from_str(&key.versions[0].public_jwk_json)?;
    verify_raw(&raw.alg, &old_jwk, b"raw input", &raw.signature)?;
    assert!(
        activated.elapsed() < Duration::from_secs(5),
        "the machine was too slow to test within the grace period"
    );
    batch.verify(&a.jwks().await?)?;

    // A version that was never active never signs.
    ka.rotate_key(pb::RotateKeyRequest {
        name: "idp".into(),
        ..Default::default()
    })
    .await?;
    let (code, msg) = code_of(sign_raw_version(&a, "idp", 3).await?)?;
    assert_eq!(code, tonic::Code::FailedPrecondition, "{msg}");
    assert!(msg.contains(&new_kid), "{msg}");

    // After the grace period: refused, naming the active kid, on both daemons.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(activated.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for d in [&a, &b] {
        let (code, msg) = code_of(sign_with_kid(d, "idp", &old_kid).await)?;
        assert_eq!(code, tonic::Code::FailedPrecondition, "{msg}");
        assert!(
            msg.contains(&format!("the active kid is {new_kid}")),
            "{msg}"
        );
        let (code, msg) = code_of(sign_raw_version(d, "idp", 1).await?)?;
        assert_eq!(code, tonic::Code::FailedPrecondition, "{msg}");
        assert!(msg.contains(&new_kid), "{msg}");
    }
    // Still published, so its tokens verify.
    assert!(kids(&a.jwks().await?).contains(&old_kid));
    // A version that is no version of the key.
    let (code, _) = code_of(sign_raw_version(&a, "idp", 9).await?)?;
    assert_eq!(code, tonic::Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn sign_digest_verifies_with_cryptography_and_needs_its_own_grant() -> TestResult {
    use sha2::Digest as _;
    let token = Token::new()?;
    let extra = "\n[[caller]]\nidentity = \"spiffe://sigild.test/rawonly\"\nkeys = [\"*\"]\noperations = [\"raw\", \"jws\"]\n\n[audit]\nstdout = true\n";
    let d = Daemon::start_with(&token, extra)?;
    let ec = d.create("ec", "ES256", 0).await?;
    let ec384 = d.create("ec384", "ES384", 0).await?;
    let rsa = d.create("rsa", "PS256", 2048).await?;
    let message = b"the message the caller hashed itself";
    let sha256 = sha2::Sha256::digest(message).to_vec();
    let sha384 = sha2::Sha384::digest(message).to_vec();
    let mut s = d.signer().await?;
    let mut checks = Vec::new();
    for (key, info, alg, digest) in [
        ("ec", &ec, "", &sha256),
        ("ec384", &ec384, "ES384", &sha384),
        ("rsa", &rsa, "", &sha256),
        ("rsa", &rsa, "PS384", &sha384),
        ("rsa", &rsa, "RS256", &sha256),
    ] {
        let r = s
            .sign_digest(pb::SignDigestRequest {
                key: key.into(),
                alg: alg.into(),
                digest: digest.clone(),
                version: 0,
            })
            .await?
            .into_inner();
        assert_eq!(r.kid, info.versions[0].kid);
        // `cryptography` hashes the message itself: the signature is over its digest.
        checks.push(serde_json::json!({
            "op": "raw",
            "alg": r.alg,
            "jwk": active_jwk(info)?,
            "data_b64": b64(message),
            "sig_b64": b64(&r.signature),
        }));
    }
    // The CLI reads the digest from stdin (as `openssl dgst -binary` writes it).
    let out = d.cli(&["sign", "digest", "--key", "ec"], Some(&sha256))?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    checks.push(serde_json::json!({
        "op": "raw",
        "alg": "ES256",
        "jwk": active_jwk(&ec)?,
        "data_b64": b64(message),
        "sig_b64": String::from_utf8(out.stdout)?.trim(),
    }));
    python_batch(&checks)?;

    // Digests of the wrong length and algorithms that do not sign digests are refused.
    for (key, alg, digest) in [
        ("ec", "", sha384.clone()),
        ("rsa", "PS512", vec![0; 64]),
        ("ec", "", Vec::new()),
    ] {
        let (code, msg) = code_of(
            s.sign_digest(pb::SignDigestRequest {
                key: key.into(),
                alg: alg.into(),
                digest,
                version: 0,
            })
            .await,
        )?;
        assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    }

    // `raw` (and `jws`) do not imply `digest`.
    let rawonly = token.pki.caller("rawonly")?;
    let mut other = d.signer_as(&rawonly).await?;
    let (code, msg) = code_of(
        other
            .sign_digest(pb::SignDigestRequest {
                key: "ec".into(),
                digest: sha256.clone(),
                ..Default::default()
            })
            .await,
    )?;
    assert_eq!(code, tonic::Code::PermissionDenied, "{msg}");
    assert!(msg.contains("digest"), "{msg}");

    // Audited with the SHA-256 of the digest (the message is never seen).
    let want = b64(&sha2::Sha256::digest(&sha256));
    audit_until(&d, |records| {
        records.iter().any(|r| {
            r["operation"] == "digest" && r["outcome"] == "ok" && r["digest_sha256"] == want
        }) && records
            .iter()
            .any(|r| r["operation"] == "digest" && r["decision"] == "deny")
    })
    .await?;
    Ok(())
}
