//! The `sigild` command line against a running daemon: results on stdout, errors on stderr
//! with a non-zero exit; and `sigild dev`, the embedded SoftHSM default.

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

fn ok(out: &std::process::Output) -> TestResult<String> {
    if !out.status.success() {
        return Err(format!(
            "exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout.clone())?.trim_end().to_owned())
}

#[tokio::test]
async fn client_commands() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let created: Value = serde_json::from_str(&ok(
        &d.cli(&["key", "create", "web", "--alg", "ES256"], None)?
    )?)?;
    assert_eq!(created["versions"][0]["state"], "active");
    ok(&d.cli(
        &["key", "create", "dpop", "--alg", "EdDSA", "--fapi2"],
        None,
    )?)?;
    let list = ok(&d.cli(&["key", "list"], None)?)?;
    assert!(
        list.lines()
            .any(|l| l.starts_with("web ") && l.contains("active") && l.contains("ES256")),
        "{list}"
    );
    let jwk: Value = serde_json::from_str(&ok(&d.cli(&["key", "jwk", "web"], None)?)?)?;
    assert_eq!(jwk["kty"], "EC");
    assert!(jwk.get("d").is_none());
    let jwks: Value = serde_json::from_str(&ok(&d.cli(&["jwks"], None)?)?)?;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(2));

    // sign jws: the compact JWS verifies with jwcrypto.
    let kid = jwk["kid"].as_str().ok_or("kid")?;
    let header = json!({"alg": "ES256", "kid": kid, "typ": "JWT"}).to_string();
    let compact = ok(&d.cli(
        &[
            "sign",
            "jws",
            "--key",
            "web",
            "--header-json",
            &header,
            "--payload-json",
            "{\"sub\":\"x\"}",
        ],
        None,
    )?)?;
    verify_jws(&compact, &jwks)?;
    // sign raw: bytes on stdin, base64url signature out.
    let sig = ok(&d.cli(&["sign", "raw", "--key", "web"], Some(b"raw bytes\x00\xff"))?)?;
    verify_raw(
        "ES256",
        &jwk,
        b"raw bytes\x00\xff",
        &sigild::jose::b64_decode(&sig)?,
    )?;
    // Profiles; the access token comes from a file, never from argv.
    let dir = tempfile::tempdir()?;
    let at = dir.path().join("at");
    std::fs::write(&at, "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU\n")?;
    let proof = ok(&d.cli(
        &[
            "sign",
            "dpop",
            "--key",
            "dpop",
            "--htm",
            "GET",
            "--htu",
            "https://rs.example.com/r?q=1",
            "--access-token-file",
            at.to_str().ok_or("p")?,
        ],
        None,
    )?)?;
    let v = python(&json!({"op": "jws", "jws": proof, "header_jwk": true}))?;
    assert_eq!(
        v["payload"]["ath"],
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    );
    assert_eq!(v["payload"]["htu"], "https://rs.example.com/r");
    let claims = json!({"iss": "https://op.example.com", "sub": "u1", "aud": "c1"}).to_string();
    verify_jws(
        &ok(&d.cli(
            &[
                "sign",
                "id-token",
                "--key",
                "web",
                "--claims-json",
                &claims,
                "--access-token-file",
                at.to_str().ok_or("p")?,
            ],
            None,
        )?)?,
        &jwks,
    )?;
    verify_jws(
        &ok(&d.cli(
            &[
                "sign",
                "jar",
                "--key",
                "web",
                "--client-id",
                "c1",
                "--audience",
                "https://as.example.com",
                "--claims-json",
                "{\"response_type\":\"code\"}",
            ],
            None,
        )?)?,
        &jwks,
    )?;
    verify_jws(
        &ok(&d.cli(
            &[
                "sign",
                "client-assertion",
                "--key",
                "web",
                "--client-id",
                "c1",
                "--audience",
                "https://as.example.com",
            ],
            None,
        )?)?,
        &jwks,
    )?;

    // Lifecycle through the CLI.
    let rotated: Value = serde_json::from_str(&ok(&d.cli(&["key", "rotate", "web"], None)?)?)?;
    assert_eq!(rotated["versions"][1]["state"], "next");
    ok(&d.cli(&["key", "activate", "web"], None)?)?;
    // Activation retired v1; retiring it again is refused with the reason.
    let out = d.cli(&["key", "retire", "web", "--version", "1"], None)?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("FAILED_PRECONDITION"));
    let shown: Value = serde_json::from_str(&ok(&d.cli(&["key", "show", "web"], None)?)?)?;
    assert_eq!(shown["active_version"], 2);
    ok(&d.cli(&["key", "destroy", "web", "--version", "1"], None)?)?;

    // Import from a PEM file (generated by openssl, not by us), then sign with it.
    let pem = dir.path().join("k.pem");
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
        ])
        .arg(&pem)
        .output()?;
    assert!(out.status.success());
    let imported: Value = serde_json::from_str(&ok(&d.cli(
        &[
            "key",
            "import",
            "legacy",
            "--alg",
            "ES384",
            "--pkcs8-file",
            pem.to_str().ok_or("p")?,
        ],
        None,
    )?)?)?;
    assert_eq!(imported["versions"][0]["origin"], "imported");
    let sig = ok(&d.cli(&["sign", "raw", "--key", "legacy"], Some(b"m"))?)?;
    let jwk: Value = serde_json::from_str(&ok(&d.cli(&["key", "jwk", "legacy"], None)?)?)?;
    verify_raw("ES384", &jwk, b"m", &sigild::jose::b64_decode(&sig)?)?;

    // sign http-request / http-response: the fields to add, one "Name: value" per line; the
    // signatures (over the bases rebuilt from what was printed) verify with cryptography.
    http_signatures(&d, &dir)?;

    // Errors: stderr and exit 1, nothing on stdout.
    let out = d.cli(
        &[
            "sign",
            "jws",
            "--key",
            "nope",
            "--header-json",
            "{\"alg\":\"ES256\"}",
            "--payload-json",
            "{}",
        ],
        None,
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NOT_FOUND"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_cli("http://127.0.0.1:1", &["key", "list"], None)?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach sigild"));
    Ok(())
}

/// `sigild sign http-request` and `http-response` on the `web` key (ES256 → ecdsa-p256-sha256).
fn http_signatures(d: &Daemon, dir: &tempfile::TempDir) -> TestResult {
    use sigild::httpsig::{self, Fields, Message};
    let jwk: Value = serde_json::from_str(&ok(&d.cli(&["key", "jwk", "web"], None)?)?)?;
    let body = dir.path().join("body.json");
    std::fs::write(&body, br#"{"amount": 10}"#)?;
    // The bearer token comes from a file, never from argv.
    let auth = dir.path().join("auth.txt");
    std::fs::write(&auth, "Authorization: DPoP at-value\r\n\n")?;
    let auth = auth.to_str().ok_or("path")?;
    let uri = "https://rs.example.com/payments";
    let out = ok(&d.cli(
        &[
            "sign",
            "http-request",
            "--key",
            "web",
            "--method",
            "POST",
            "--target-uri",
            uri,
            "--header",
            "Content-Type: application/json",
            "--header-file",
            auth,
            "--body-file",
            body.to_str().ok_or("path")?,
        ],
        None,
    )?)?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(
        lines.first().copied(),
        Some(
            format!(
                "Content-Digest: {}",
                httpsig::content_digest(br#"{"amount": 10}"#)
            )
            .as_str()
        )
    );
    assert!(
        lines.get(1).is_some_and(|l| l.starts_with(
            "Signature-Input: sig=(\"@method\" \"@target-uri\" \"authorization\" \"content-digest\");created="
        ) && l.ends_with(";tag=\"fapi-2-request\"")),
        "{out}"
    );
    assert!(
        lines
            .get(2)
            .is_some_and(|l| l.starts_with("Signature: sig=:")),
        "{out}"
    );
    let mut fields = Fields::new();
    fields.push_line("Content-Type: application/json")?;
    fields.push_line("Authorization: DPoP at-value")?;
    for l in &lines {
        fields.push_line(l)?;
    }
    let request = httpsig::Request::new("POST", uri, fields)?;
    let check = |msg: Message<'_>| -> TestResult {
        let (label, input) = httpsig::signature_inputs(msg.fields())?
            .into_iter()
            .next()
            .ok_or("no signature")?;
        let base = httpsig::signature_base(msg, &input)?;
        let sig = httpsig::signature_value(msg.fields(), &label)?;
        verify_raw("ES256", &jwk, base.as_bytes(), &sig)
    };
    check(Message::Request(&request))?;

    let mut args = vec![
        "sign",
        "http-response",
        "--key",
        "web",
        "--status",
        "200",
        "--header",
        "Content-Type: application/json",
        "--body-file",
        body.to_str().ok_or("path")?,
        "--request-method",
        "POST",
        "--request-target-uri",
        uri,
        "--request-header-file",
        auth,
    ];
    for l in &lines {
        args.extend(["--request-header", l]);
    }
    let out = ok(&d.cli(&args, None)?)?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines.get(1).is_some_and(|l| l.contains(
            "\"signature\";req;key=\"sig\" \"signature-input\";req;key=\"sig\" \"@status\" \"content-digest\")"
        ) && l.ends_with(";tag=\"fapi-2-response\"")),
        "{out}"
    );
    let mut fields = Fields::new();
    fields.push_line("Content-Type: application/json")?;
    for l in &lines {
        fields.push_line(l)?;
    }
    let response = httpsig::Response::new(200, fields)?;
    check(Message::Response {
        response: &response,
        request: Some(&request),
    })?;

    // A header argument without a colon is the caller's mistake, said before any call.
    let out = d.cli(
        &[
            "sign",
            "http-request",
            "--key",
            "web",
            "--method",
            "GET",
            "--target-uri",
            uri,
            "--header",
            "oops",
        ],
        None,
    )?;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    Ok(())
}

#[tokio::test]
async fn dev_mode_creates_a_token_with_default_keys_once() -> TestResult {
    let state = tempfile::tempdir()?;
    let start = |state: &std::path::Path| -> TestResult<(std::process::Child, String)> {
        let mut child = Command::new(sigild_bin())
            .args(["dev", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .env("SIGILD_LOG", "info")
            .env_remove("SOFTHSM2_CONF")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut addr = None;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(a) = line
                    .split("addr=")
                    .nth(1)
                    .filter(|_| line.contains("listening"))
                {
                    addr = a.split_whitespace().next().map(str::to_owned);
                }
                if line.contains("sigild dev ready") {
                    let _ = tx.send(addr.clone().unwrap_or_default());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| "sigild dev did not become ready")?;
        // Mutual TLS with the dev PKI that `sigild dev` wrote into the state directory.
        let endpoint = format!("https://{addr}");
        register_client(
            &endpoint,
            ClientFiles {
                ca: state.join("ca.pem"),
                cert: state.join("client.pem"),
                key: state.join("client.key"),
            },
        );
        Ok((child, endpoint))
    };
    let (mut child, endpoint) = start(state.path())?;
    let list = ok(&run_cli(&endpoint, &["key", "list"], None)?)?;
    for name in [
        "dev-es256",
        "dev-ps256",
        "dev-eddsa",
        "dev-enc-rsa",
        "dev-enc-ec",
    ] {
        assert!(list.contains(name), "{list}");
    }
    // The Unix socket serves the directory's owner.
    let socket = format!("unix:{}", state.path().join("sigild.sock").display());
    assert_eq!(ok(&run_cli(&socket, &["key", "list"], None)?)?, list);
    let kids_before = ok(&run_cli(&endpoint, &["jwks"], None)?)?;
    // PINs live in private files, never in the config.
    let config = std::fs::read_to_string(state.path().join("sigild.toml"))?;
    let pin = std::fs::read_to_string(state.path().join("user.pin"))?;
    assert!(!config.contains(pin.trim()));
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(state.path().join("user.pin"))?
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    // Second start: same token, same keys, nothing re-created.
    let (mut child, endpoint) = start(state.path())?;
    assert_eq!(ok(&run_cli(&endpoint, &["jwks"], None)?)?, kids_before);
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

#[tokio::test]
async fn health_and_reflection_describe_the_api() -> TestResult {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(d.channel().await?);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "sigil.v1.SigningService".into(),
            })
            .await;
        if r.as_ref().is_ok_and(|r| {
            r.get_ref().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        }) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not SERVING: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut refl = ServerReflectionClient::new(d.channel().await?);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = refl
        .server_reflection_info(tokio_stream::iter([req]))
        .await?
        .into_inner();
    let resp = stream.message().await?.ok_or("no reflection response")?;
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        return Err("unexpected reflection response".into());
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "sigil.v1.KeyService",
        "sigil.v1.SigningService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    Ok(())
}

/// After `sigild dev --state-dir DIR`, the same user's client commands work from any directory
/// with no flags and no environment variables (the dev daemon leaves a pointer in the user's
/// runtime directory), the ready line says exactly what to run, and the pointer is removed when
/// the daemon exits.
#[tokio::test]
async fn dev_mode_is_found_from_any_directory() -> TestResult {
    let state = tempfile::tempdir()?;
    let runtime = tempfile::tempdir()?;
    let elsewhere = tempfile::tempdir()?;
    let mut child = Command::new(sigild_bin())
        .args(["dev", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state.path())
        .env("SIGILD_LOG", "info")
        .env("XDG_RUNTIME_DIR", runtime.path())
        .env_remove("SOFTHSM2_CONF")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or("stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("sigild dev ready") {
                let _ = tx.send(line);
            }
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| "sigild dev did not become ready")?;
    let hint = format!("`{} key list`", sigild_bin());
    assert!(ready.contains(&hint), "{ready}");
    let pointer = runtime.path().join("sigild").join("dev.json");
    assert!(pointer.is_file(), "no pointer at {}", pointer.display());

    let cli = |args: &[&str]| {
        Command::new(sigild_bin())
            .args(args)
            .current_dir(elsewhere.path())
            .env("XDG_RUNTIME_DIR", runtime.path())
            .env_remove("SIGILD_ENDPOINT")
            .env_remove("SIGILD_CA")
            .env_remove("SIGILD_CERT")
            .env_remove("SIGILD_KEY")
            .output()
    };
    let list = ok(&cli(&["key", "list"])?)?;
    for name in [
        "dev-es256",
        "dev-ps256",
        "dev-eddsa",
        "dev-enc-rsa",
        "dev-enc-ec",
    ] {
        assert!(list.contains(name), "{list}");
    }
    let jwks: Value = serde_json::from_str(&ok(&cli(&["jwks"])?)?)?;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(5), "{jwks}");

    // SIGTERM: the daemon exits cleanly and takes its pointer with it.
    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status()?;
    assert!(killed.success());
    let status = child.wait()?;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!pointer.exists(), "pointer left behind");
    // With no daemon and no pointer the CLI says where it looked.
    let out = cli(&["key", "list"])?;
    assert_eq!(out.status.code(), Some(1));
    Ok(())
}

/// Decryption keys from the command line: `key create` with a JWE alg (and a curve), `jwks`
/// publishes them with `use: "enc"`, and `sigild decrypt --key NAME` turns a JWE made by
/// jwcrypto on stdin into exactly the plaintext bytes on stdout; a bad JWE gives nothing on
/// stdout, an error on stderr and exit 1.
#[tokio::test]
async fn decrypt_command() -> TestResult {
    use support::jwe::*;
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let rsa: Value = serde_json::from_str(&ok(
        &d.cli(&["key", "create", "rp-enc", "--alg", "RSA-OAEP-256"], None)?
    )?)?;
    assert_eq!(rsa["versions"][0]["alg"], "RSA-OAEP-256", "{rsa}");
    assert_eq!(rsa["versions"][0]["use"], "enc", "{rsa}");
    let ec: Value = serde_json::from_str(&ok(&d.cli(
        &[
            "key",
            "create",
            "client-enc",
            "--alg",
            "ECDH-ES+A256KW",
            "--curve",
            "P-384",
        ],
        None,
    )?)?)?;
    assert_eq!(ec["versions"][0]["key_type"], "EC P-384", "{ec}");
    let jwks: Value = serde_json::from_str(&ok(&d.cli(&["jwks"], None)?)?)?;
    let entries = jwks["keys"].as_array().ok_or("keys")?;
    assert_eq!(entries.len(), 2, "{jwks}");
    for alg in ["RSA-OAEP-256", "ECDH-ES+A256KW"] {
        let e = entries
            .iter()
            .find(|e| e["alg"] == alg)
            .ok_or_else(|| format!("no {alg} entry in {jwks}"))?;
        assert_eq!(e["use"], "enc", "{e}");
        assert!(e.get("d").is_none(), "{e}");
    }
    let ec_jwk = entries
        .iter()
        .find(|e| e["alg"] == "ECDH-ES+A256KW")
        .ok_or("ec")?;
    assert_eq!(ec_jwk["crv"], "P-384");
    let rsa_jwk = entries
        .iter()
        .find(|e| e["alg"] == "RSA-OAEP-256")
        .ok_or("rsa")?;

    // Binary plaintext, ending in a newline and a NUL: nothing may be added or taken away.
    let mut plaintext = binary_plaintext(1000);
    plaintext.extend_from_slice(b"\n\0");
    for (key, jwk, alg, enc) in [
        ("rp-enc", rsa_jwk, "RSA-OAEP-256", "A256GCM"),
        ("client-enc", ec_jwk, "ECDH-ES+A256KW", "A128CBC-HS256"),
    ] {
        let jwe = encrypt_jwcrypto(jwk, alg, enc, &plaintext, &json!({"kid": jwk["kid"]}))?;
        let out = d.cli(&["decrypt", "--key", key], Some(jwe.as_bytes()))?;
        assert!(
            out.status.success(),
            "{key}: exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == plaintext,
            "{key}: stdout is not exactly the plaintext ({} bytes, {} expected)",
            out.stdout.len(),
            plaintext.len()
        );
        // A trailing newline after the compact JWE (as `echo` or a file would have) is fine.
        let out = d.cli(
            &["decrypt", "--key", key],
            Some(format!("{jwe}\n").as_bytes()),
        )?;
        assert_eq!(out.status.code(), Some(0), "{key}: with a newline");
        assert!(out.stdout == plaintext, "{key}: with a newline");

        // A tampered one: nothing on stdout, the stable error on stderr, exit 1.
        let bad = flip_bit(&jwe, TAG, 0)?;
        let out = d.cli(&["decrypt", "--key", key], Some(bad.as_bytes()))?;
        assert_eq!(out.status.code(), Some(1), "{key}: tampered");
        assert!(out.stdout.is_empty(), "{key}: stdout {:?}", out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(REJECTED), "{key}: {stderr}");
        assert!(stderr.contains("request id"), "{key}: {stderr}");
    }
    // Not a JWE at all, and a signing key asked to decrypt.
    ok(&d.cli(&["key", "create", "web", "--alg", "ES256"], None)?)?;
    let jwe = encrypt_jwcrypto(rsa_jwk, "RSA-OAEP-256", "A256GCM", b"x", &json!({}))?;
    for (key, input) in [("rp-enc", &b"not a jwe"[..]), ("web", jwe.as_bytes())] {
        let out = d.cli(&["decrypt", "--key", key], Some(input))?;
        assert_eq!(out.status.code(), Some(1), "{key}");
        assert!(out.stdout.is_empty(), "{key}");
        assert!(!out.stderr.is_empty(), "{key}");
    }
    Ok(())
}
