//! The PIN never leaves its file: a daemon runs with a known, distinctive PIN through success
//! and failure paths (signing, admin, bad requests, refused callers, a wrong PIN, a PIN file
//! readable by others), and neither the PIN nor the wrong one appears in any log line, audit
//! record, status message or CLI output.

mod support;

use serde_json::json;
use sigild::api::pb;
use support::*;

const PIN: &str = "Pq7-sekrit-PIN-4411";
const WRONG: &str = "Wr0ng-sekrit-PIN-9";

#[tokio::test]
async fn the_pin_appears_in_no_log_line_record_or_message() -> TestResult {
    let token = Token::with_pin("pin-leak", PIN)?;
    let mut seen: Vec<String> = Vec::new();
    {
        let d = Daemon::start_with(&token, "[audit]\nstdout = true\n")?;
        // Success paths.
        let k = d.create("pk", "ES256", 0).await?;
        seen.push(format!("{k:?}"));
        let mut signer = d.signer().await?;
        let r = signer
            .sign_id_token(pb::SignIdTokenRequest {
                version: 0,
                state: String::new(),
                typ: String::new(),
                key: "pk".into(),
                claims_json: json!({"iss": "https://op", "sub": "s", "aud": "c"}).to_string(),
                lifetime_seconds: 60,
                access_token: String::new(),
                code: String::new(),
            })
            .await?
            .into_inner();
        seen.push(format!("{r:?}"));
        for args in [
            vec!["key", "list"],
            vec!["jwks"],
            vec!["key", "rotate", "pk"],
            // Failure paths: duplicate, unknown key, bad input, bad version.
            vec!["key", "create", "pk", "--alg", "ES256"],
            vec!["key", "show", "nope"],
            vec![
                "sign",
                "jws",
                "--key",
                "pk",
                "--header-json",
                "{",
                "--payload-json",
                "{}",
            ],
            vec!["key", "destroy", "pk", "--version", "1"],
        ] {
            let out = d.cli(&args, None)?;
            seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
            seen.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        // Status messages of refused and malformed requests.
        let stranger = token.pki.client(
            "stranger",
            &sigild::tls::ClientNames {
                spiffe: Some("spiffe://sigild.test/stranger".into()),
                ..Default::default()
            },
        )?;
        let mut s2 =
            pb::signing_service_client::SigningServiceClient::new(d.channel_as(&stranger).await?);
        let (_, m) = code_of(
            s2.sign_raw(pb::SignRawRequest {
                version: 0,
                key: "pk".into(),
                data: b"x".to_vec(),
                alg: String::new(),
            })
            .await,
        )?;
        seen.push(m);
        let (_, m) = code_of(
            signer
                .sign_raw(pb::SignRawRequest {
                    version: 0,
                    key: "pk".into(),
                    data: b"x".to_vec(),
                    alg: "RS256".into(),
                })
                .await,
        )?;
        seen.push(m);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            !d.stdout_lines().is_empty(),
            "the audit trail should have records"
        );
        seen.extend(d.stdout_lines());
        seen.push(d.log_text());
    }
    // check-config reads the PIN file and logs in with it; its output must not show it.
    let config = token.write_config("ok.toml", &token.config(""))?;
    let out = std::process::Command::new(sigild_bin())
        .args(["check-config", "--config"])
        .arg(&config)
        .env("SOFTHSM2_CONF", &token.conf)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    seen.push(String::from_utf8_lossy(&out.stdout).into_owned());
    seen.push(String::from_utf8_lossy(&out.stderr).into_owned());

    // A PIN file readable by others: refused, naming the file, not the content.
    let loose = token.dir.path().join("loose.pin");
    std::fs::write(&loose, format!("{PIN}\n"))?;
    let text = token.config("").replace(
        &token.pin_file.display().to_string(),
        &loose.display().to_string(),
    );
    let config = token.write_config("loose.toml", &text)?;
    let (ok, stderr) = serve_until_exit(&token.conf, &config)?;
    assert!(!ok);
    assert!(stderr.contains("readable by group or others"), "{stderr}");
    seen.push(stderr);

    // A wrong PIN: the daemon refuses to start and says why without either PIN.
    let wrong = token.dir.path().join("wrong.pin");
    std::fs::write(&wrong, format!("{WRONG}\n"))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600))?;
    }
    let text = token.config("").replace(
        &token.pin_file.display().to_string(),
        &wrong.display().to_string(),
    );
    let config = token.write_config("wrong.toml", &text)?;
    let (ok, stderr) = serve_until_exit(&token.conf, &config)?;
    assert!(!ok, "daemon started with a wrong PIN");
    assert!(
        stderr.contains("CKR_PIN_INCORRECT") || stderr.to_lowercase().contains("pin"),
        "{stderr}"
    );
    seen.push(stderr);

    let all = seen.join("\n");
    assert!(
        all.len() > 1000,
        "collected too little output to mean anything"
    );
    assert!(!all.contains(PIN), "the PIN leaked:\n{all}");
    assert!(!all.contains(WRONG), "the wrong PIN leaked:\n{all}");
    Ok(())
}
