//! Bad input and faults get the right gRPC status and a clear message: never a panic, a hang or
//! a wrong signature. (A device that vanishes and returns is the conformance suite's
//! `fault_recovery`, on every device.)

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use sigild::api::pb;
use support::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn bad_requests_get_clear_statuses() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start_with(&token, "\n[signing]\nmax_payload_bytes = 1024\n")?;
    d.create("es", "ES256", 0).await?;
    d.create("rsa", "PS256", 0).await?;
    let mut k = d.keys().await?;
    k.create_key(pb::CreateKeyRequest {
        name: "fapi".into(),
        alg: "PS256".into(),
        rsa_bits: 0,
        fapi2: true,
        ..Default::default()
    })
    .await?;

    let cases: Vec<(
        &str,
        Result<pb::SignJwsResponse, tonic::Status>,
        tonic::Code,
        &str,
    )> = vec![
        (
            "malformed header",
            sign_jws(&d, "es", b"{\"alg\":", b"{}").await,
            tonic::Code::InvalidArgument,
            "not valid JSON",
        ),
        (
            "header not an object",
            sign_jws(&d, "es", b"[1]", b"{}").await,
            tonic::Code::InvalidArgument,
            "JSON object",
        ),
        (
            "no alg",
            sign_jws(&d, "es", b"{\"typ\":\"JWT\"}", b"{}").await,
            tonic::Code::InvalidArgument,
            "alg",
        ),
        (
            "alg none",
            sign_jws(&d, "es", b"{\"alg\":\"none\"}", b"{}").await,
            tonic::Code::InvalidArgument,
            "none",
        ),
        (
            "alg for another key type",
            sign_jws(&d, "rsa", b"{\"alg\":\"ES256\"}", b"{}").await,
            tonic::Code::InvalidArgument,
            "ES256",
        ),
        (
            "duplicate alg",
            sign_jws(&d, "es", b"{\"alg\":\"ES256\",\"alg\":\"none\"}", b"{}").await,
            tonic::Code::InvalidArgument,
            "more than once",
        ),
        (
            "kid of another key",
            sign_jws(&d, "es", b"{\"alg\":\"ES256\",\"kid\":\"nope\"}", b"{}").await,
            tonic::Code::InvalidArgument,
            "kid",
        ),
        (
            "unknown key",
            sign_jws(&d, "nope", b"{\"alg\":\"ES256\"}", b"{}").await,
            tonic::Code::NotFound,
            "no key named",
        ),
        (
            "oversized payload",
            sign_jws(&d, "es", b"{\"alg\":\"ES256\"}", &[b'a'; 1500]).await,
            tonic::Code::InvalidArgument,
            "exceeds the limit of 1024",
        ),
        (
            "FAPI key asked for RS256",
            sign_jws(&d, "fapi", b"{\"alg\":\"RS256\"}", b"{}").await,
            tonic::Code::FailedPrecondition,
            "FAPI 2.0",
        ),
    ];
    for (what, result, code, needle) in cases {
        let (got, msg) = code_of(result).map_err(|e| format!("{what}: {e}"))?;
        assert_eq!(got, code, "{what}: {msg}");
        assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
    }

    // Far beyond the limit, the transport refuses the message before it is decoded.
    let (code, _) = code_of(
        sign_jws(
            &d,
            "es",
            b"{\"alg\":\"ES256\"}",
            &vec![b'a'; 4 * 1024 * 1024],
        )
        .await,
    )?;
    assert!(
        matches!(
            code,
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted | tonic::Code::InvalidArgument
        ),
        "{code:?}"
    );

    let mut s = d.signer().await?;
    let (code, msg) = code_of(
        s.sign_id_token(pb::SignIdTokenRequest {
            key: "es".into(),
            claims_json: "{\"iss\":".into(),
            ..Default::default()
        })
        .await,
    )?;
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    let (code, msg) = code_of(
        s.sign_id_token(pb::SignIdTokenRequest {
            key: "es".into(),
            claims_json: json!({"sub": "a", "aud": "b"}).to_string(),
            ..Default::default()
        })
        .await,
    )?;
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("iss"), "{msg}");
    let (code, msg) = code_of(
        s.sign_dpop_proof(pb::SignDpopProofRequest {
            key: "es".into(),
            htm: "POST".into(),
            htu: "ftp://x/".into(),
            ..Default::default()
        })
        .await,
    )?;
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    let (code, msg) = code_of(
        s.sign_client_assertion(pb::SignClientAssertionRequest {
            explicit_typ: false,
            nbf: false,
            key: "es".into(),
            client_id: "c".into(),
            audience: "https://as".into(),
            lifetime_seconds: 86400,
        })
        .await,
    )?;
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    let (code, msg) = code_of(
        s.sign_raw(pb::SignRawRequest {
            version: 0,
            key: "fapi".into(),
            data: b"x".to_vec(),
            alg: "RS256".into(),
        })
        .await,
    )?;
    assert_eq!(code, tonic::Code::FailedPrecondition, "{msg}");

    let (code, msg) = code_of(
        k.create_key(pb::CreateKeyRequest {
            name: "f2".into(),
            alg: "RS256".into(),
            rsa_bits: 0,
            fapi2: true,
            ..Default::default()
        })
        .await,
    )?;
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(msg.contains("FAPI 2.0"), "{msg}");
    for (name, alg, rsa_bits) in [
        ("Bad Name", "ES256", 0),
        ("x", "HS256", 0),
        ("x", "PS256", 1024),
    ] {
        let req = pb::CreateKeyRequest {
            name: name.into(),
            alg: alg.into(),
            rsa_bits,
            fapi2: false,
            ..Default::default()
        };
        let (code, msg) = code_of(k.create_key(req).await)?;
        assert_eq!(
            code,
            tonic::Code::InvalidArgument,
            "{name} {alg} {rsa_bits}: {msg}"
        );
    }
    let (code, msg) = code_of(
        k.import_key(pb::ImportKeyRequest {
            serves: Vec::new(),
            name: "imp".into(),
            alg: "ES256".into(),
            pkcs8_der: b"garbage".to_vec(),
            fapi2: false,
        })
        .await,
    )?;
    assert_eq!(code, tonic::Code::InvalidArgument);
    assert!(msg.contains("PKCS#8"), "{msg}");
    let (code, _) = code_of(
        k.activate_key_version(pb::KeyVersionRequest {
            name: "es".into(),
            version: 9,
        })
        .await,
    )?;
    assert_eq!(code, tonic::Code::NotFound);
    let (code, _) = code_of(
        k.adopt_key(pb::AdoptKeyRequest {
            serves: Vec::new(),
            name: "a".into(),
            alg: "ES256".into(),
            uri: "pkcs11:token=other;object=x".into(),
            fapi2: false,
        })
        .await,
    )?;
    assert_eq!(code, tonic::Code::InvalidArgument);

    // After all that, the daemon still signs correctly.
    let r = sign_jws(&d, "es", b"{\"alg\":\"ES256\"}", b"{}").await?;
    verify_jws_with_kid(&r.compact, &r.kid, &d.jwks().await?)?;
    Ok(())
}

#[tokio::test]
async fn startup_failures_are_clear_and_keep_secrets() -> TestResult {
    let token = Token::new()?;
    // Wrong PIN: refuses to start, says why, never prints the PIN, and tries only once.
    let wrong = token.dir.path().join("wrong.pin");
    std::fs::write(&wrong, "99999999\n")?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600))?;
    }
    let cfg = token.config("").replace(
        &token.pin_file.display().to_string(),
        &wrong.display().to_string(),
    );
    let path = token.write_config("wrong-pin.toml", &cfg)?;
    let (ok, err) = serve_until_exit(&token.conf, &path)?;
    assert!(!ok);
    assert!(
        err.contains("rejected the PIN") && err.contains("CKR_PIN_INCORRECT"),
        "{err}"
    );
    assert!(!err.contains("99999999"), "PIN leaked: {err}");

    // World-readable PIN file.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644))?;
    }
    let (ok, err) = serve_until_exit(&token.conf, &path)?;
    assert!(!ok);
    assert!(
        err.contains("readable by group or others") && err.contains("pkcs11.pin"),
        "{err}"
    );

    // Missing module.
    let cfg = token
        .config("")
        .replace(SOFTHSM_MODULE, "/nonexistent/libpkcs11.so");
    let path = token.write_config("no-module.toml", &cfg)?;
    let (ok, err) = serve_until_exit(&token.conf, &path)?;
    assert!(!ok);
    assert!(
        err.contains("/nonexistent/libpkcs11.so") && err.contains("does not exist"),
        "{err}"
    );

    // Unknown field: file, line and field named.
    let cfg = token.config("").replace("workers = 2", "wrokers = 2");
    let path = token.write_config("typo.toml", &cfg)?;
    let (ok, err) = serve_until_exit(&token.conf, &path)?;
    assert!(!ok);
    let line = cfg
        .lines()
        .position(|l| l.contains("wrokers"))
        .map_or(0, |i| i + 1);
    assert!(
        err.contains("typo.toml")
            && err.contains(&format!("line {line},"))
            && err.contains("wrokers"),
        "{err}"
    );
    let out = std::process::Command::new(sigild_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrokers"));
    Ok(())
}

#[tokio::test]
async fn missing_token_is_unavailable_until_it_appears() -> TestResult {
    let token = Token::new()?;
    // Point at a token label that does not exist yet.
    let cfg = token
        .config("")
        .replace("pkcs11:token=sigild-test", "pkcs11:token=late-token");
    let path = token.write_config("late.toml", &cfg)?;
    let d = Daemon::start_config(&token.conf, &path)?;
    let mut health = HealthClient::new(d.channel().await?);
    let status = |s: &tonic_health::pb::HealthCheckResponse| s.status;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "sigil.v1.SigningService".into(),
            })
            .await;
        if r.as_ref()
            .is_ok_and(|r| status(r.get_ref()) == ServingStatus::NotServing as i32)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reported NOT_SERVING: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut keys = d.keys().await?;
    let (code, msg, id) = failure(
        keys.create_key(pb::CreateKeyRequest {
            name: "k".into(),
            alg: "ES256".into(),
            rsa_bits: 0,
            fapi2: false,
            ..Default::default()
        })
        .await,
    )?;
    assert_eq!(code, tonic::Code::Unavailable, "{msg}");
    // The caller gets the request id; the token's name and the device's words go to the log
    // only, under that id.
    assert!(msg.contains(&format!("request id {id}")), "{msg}");
    assert!(!msg.contains("late-token"), "{msg}");
    let line = log_line(&d, &id).await?;
    assert!(line.contains("late-token"), "{line}");

    // Nothing was ever loaded: reads say UNAVAILABLE, never an empty keyring.
    let (code, msg) = code_of(keys.list_keys(pb::ListKeysRequest {}).await)?;
    assert_eq!(code, tonic::Code::Unavailable, "{msg}");
    let (code, msg) = code_of(keys.get_jwks(pb::GetJwksRequest {}).await)?;
    assert_eq!(code, tonic::Code::Unavailable, "{msg}");
    let (code, msg) = code_of(keys.get_key(pb::GetKeyRequest { name: "k".into() }).await)?;
    assert_eq!(code, tonic::Code::Unavailable, "{msg}");
    let out = d.cli(&["key", "list"], None)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "key list succeeded: {stderr}");
    assert!(stderr.contains("UNAVAILABLE"), "{stderr}");

    // The token appears (same PIN): the daemon finds it, logs in and serves.
    let out = std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &token.conf)
        .args([
            "--init-token",
            "--free",
            "--label",
            "late-token",
            "--so-pin",
            "12345678",
            "--pin",
            &token.pin,
        ])
        .output()?;
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "sigil.v1.SigningService".into(),
            })
            .await;
        if r.as_ref()
            .is_ok_and(|r| status(r.get_ref()) == ServingStatus::Serving as i32)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never became SERVING: {}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Loaded now: an empty keyring is listed as empty.
    let out = d.cli(&["key", "list"], None)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.create("k", "ES256", 0).await?;
    let r = sign_jws(&d, "k", b"{\"alg\":\"ES256\"}", b"{}").await?;
    verify_jws(&r.compact, &d.jwks().await?)?;
    Ok(())
}

#[tokio::test]
async fn full_queue_is_resource_exhausted_fast() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start_with(&token, "")?;
    // One worker, a queue of one, slow RSA-4096 signatures: most concurrent requests are shed.
    let cfg = token
        .config("")
        .replace("workers = 2", "workers = 1\nqueue_depth = 1");
    let path = token.write_config("tiny-queue.toml", &cfg)?;
    d.create("big", "PS256", 4096).await?;
    drop(d);
    let d = Daemon::start_config(&token.conf, &path)?;
    // Many requests multiplexed over a few HTTP/2 connections, so they reach the daemon much
    // faster than one worker can make RSA-4096 signatures, whatever the build profile.
    let mut connections = Vec::new();
    for _ in 0..4 {
        connections.push(d.signer().await?);
    }
    let mut tasks = Vec::new();
    for i in 0..96 {
        let mut s = connections[i % connections.len()].clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = s
                .sign_raw(pb::SignRawRequest {
                    version: 0,
                    key: "big".into(),
                    data: b"x".to_vec(),
                    alg: String::new(),
                })
                .await;
            (r.map(|_| ()).map_err(|e| e.code()), t.elapsed())
        }));
    }
    let (mut ok, mut shed) = (0, 0);
    for t in tasks {
        let (r, took) = t.await?;
        match r {
            Ok(()) => ok += 1,
            Err(tonic::Code::ResourceExhausted) => {
                shed += 1;
                assert!(took < Duration::from_secs(3), "shedding took {took:?}");
            }
            Err(other) => return Err(format!("unexpected status {other:?}").into()),
        }
    }
    assert!(ok >= 1 && shed >= 1, "ok {ok}, shed {shed}");
    Ok(())
}
