//! sigild on openCryptoki's software token (Debian `opencryptoki` 3.8.1), a second, independent
//! PKCS#11 implementation, used as shipped: the daemon finds the token although it reports its
//! clock in a form cryptoki cannot parse, signs PS256, RS256 and PS384 (every signature checked
//! by jwcrypto / cryptography), rotates and survives a restart; refuses EC and EdDSA, which the
//! token lacks, naming the algorithm and the missing mechanism; `check-config` reports the token
//! and its algorithms or exactly what is wrong; and with pkcsslotd down the daemon waits
//! NOT_SERVING, saying what to check, and serves once pkcsslotd is back.
//!
//! One pkcsslotd per machine: every test holds an [`OckToken`] (a flock on
//! /tmp/sigild-ock-token.lock). Needs root and the opencryptoki package; the tests fail (not skip)
//! without them.

mod support;

use std::time::{Duration, Instant};

use sigild::api::pb;
use support::ock::{LABEL, OckToken};
use support::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The schemes the soft token serves: (key name, alg).
const SERVED: [(&str, &str); 3] = [("ps256", "PS256"), ("rs256", "RS256"), ("ps384", "PS384")];

/// Sign a JWS with `key` (header with alg only) and verify it with jwcrypto against the JWKS;
/// returns the kid that signed.
async fn sign_verified(d: &Daemon, key: &str, alg: &str) -> TestResult<String> {
    let header = format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}");
    let payload = format!("{{\"sub\":\"{key}\"}}");
    let r = d
        .signer()
        .await?
        .sign_jws(pb::SignJwsRequest {
            key: key.into(),
            protected_header: header.into_bytes(),
            payload: payload.into_bytes(),
        })
        .await?
        .into_inner();
    let v = verify_jws_with_kid(&r.compact, &r.kid, &d.jwks().await?)
        .map_err(|e| format!("{key}: {e}"))?;
    assert_eq!(v["header"]["alg"], alg);
    assert_eq!(
        v["thumbprint"],
        r.kid.as_str(),
        "{key}: kid is the thumbprint"
    );
    sign_raw_verified(d, key, format!("raw input for {key}").as_bytes()).await?;
    Ok(r.kid)
}

/// Wait until the daemon's health for the signing service is `want`.
async fn wait_health(d: &Daemon, want: ServingStatus, within: Duration) -> TestResult {
    let mut health = HealthClient::new(d.channel().await?);
    let deadline = Instant::now() + within;
    loop {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "sigil.v1.SigningService".into(),
            })
            .await;
        if r.as_ref().is_ok_and(|r| r.get_ref().status == want as i32) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("health never became {want:?}: {r:?}\n{}", d.log_text()).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn rsa_schemes_sign_rotate_and_survive_a_restart_on_the_token_as_shipped() -> TestResult {
    let ock = OckToken::start()?;
    let d = ock.daemon("")?;
    for (name, alg) in SERVED {
        let created = d.create(name, alg, 0).await?;
        assert!(
            created.versions[0].uri.contains(&format!("token={LABEL}")),
            "{:?}",
            created.versions[0].uri
        );
    }
    // The token was found although cryptoki cannot parse its clock; the daemon said so.
    let log = d.log_text();
    assert!(
        log.contains("utcTime") && log.contains("cannot parse"),
        "the unparsable clock is logged with its slot:\n{log}"
    );
    for (name, alg) in SERVED {
        sign_verified(&d, name, alg).await?;
    }

    // Rotation: the new version is published, then signs; both stay in the JWKS.
    let mut k = d.keys().await?;
    let v1 = sign_verified(&d, "ps256", "PS256").await?;
    let r = k
        .rotate_key(pb::RotateKeyRequest {
            name: "ps256".into(),
            alg: String::new(),
            rsa_bits: 0,
        })
        .await?
        .into_inner();
    let v2 = r.versions[1].kid.clone();
    assert_ne!(v1, v2);
    assert_eq!(sign_verified(&d, "ps256", "PS256").await?, v1);
    k.activate_key_version(pb::KeyVersionRequest {
        name: "ps256".into(),
        version: 0,
    })
    .await?;
    assert_eq!(sign_verified(&d, "ps256", "PS256").await?, v2);
    let jwks_before = d.jwks().await?;

    // Restart: the keyring comes back from the token alone.
    drop(d);
    let d = ock.daemon("")?;
    assert_eq!(d.jwks().await?, jwks_before);
    assert_eq!(sign_verified(&d, "ps256", "PS256").await?, v2);
    for (name, alg) in SERVED {
        sign_verified(&d, name, alg).await?;
    }
    Ok(())
}

#[tokio::test]
async fn ec_and_eddsa_are_refused_naming_the_algorithm_and_the_missing_mechanism() -> TestResult {
    let ock = OckToken::start()?;
    let d = ock.daemon("")?;
    for (alg, mechanism) in [
        ("ES256", "CKM_ECDSA"),
        ("ES384", "CKM_EC_KEY_PAIR_GEN"),
        ("EdDSA", "CKM_EDDSA"),
    ] {
        let (code, msg) = code_of(
            d.keys()
                .await?
                .create_key(pb::CreateKeyRequest {
                    name: alg.to_lowercase(),
                    alg: alg.into(),
                    rsa_bits: 0,
                    fapi2: false,
                })
                .await,
        )?;
        assert_eq!(code, tonic::Code::FailedPrecondition, "{alg}: {msg}");
        assert!(
            msg.contains(alg) && msg.contains(mechanism) && msg.contains(LABEL),
            "{alg}: {msg}"
        );
    }

    // Import of an EC key (made by openssl) is refused the same way, before anything reaches
    // the token.
    let pem = ock.dir.path().join("ec.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&pem)
        .status()?;
    assert!(made.success(), "openssl genpkey failed");
    let der = std::process::Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-outform", "DER", "-in"])
        .arg(&pem)
        .output()?;
    assert!(der.status.success(), "openssl pkcs8 failed");
    let (code, msg) = code_of(
        d.keys()
            .await?
            .import_key(pb::ImportKeyRequest {
                name: "imported".into(),
                alg: "ES256".into(),
                pkcs8_der: der.stdout,
                fapi2: false,
            })
            .await,
    )?;
    assert_eq!(code, tonic::Code::FailedPrecondition, "{msg}");
    assert!(msg.contains("ES256") && msg.contains("CKM_ECDSA"), "{msg}");

    // Nothing was left on the token, and RSA still works beside the refusals.
    let objects = ock.pkcs11_tool(&["--list-objects"])?;
    let listed = String::from_utf8_lossy(&objects.stdout);
    assert!(
        !listed.contains("EC") && !listed.contains("Private Key"),
        "{listed}"
    );
    d.create("rsa", "PS256", 0).await?;
    sign_verified(&d, "rsa", "PS256").await?;
    Ok(())
}

#[test]
fn check_config_names_the_token_and_its_algorithms_or_what_is_wrong() -> TestResult {
    let ock = OckToken::start_tokens(2)?;
    let second = ock.labels[1].clone();
    let config = ock.write_config("second.toml", &ock.config_for(&second, ""))?;
    let out = ock.check_config(&config, &[])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("token: '{second}' serial '123'"))
            && stdout.contains("in slot 1; user login OK"),
        "{stdout}"
    );
    assert!(stdout.contains("libopencryptoki.so"), "{stdout}");
    assert!(stdout.contains("ignored: utcTime"), "{stdout}");
    assert!(
        stdout.contains("algorithms: PS256 PS384 RS256\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("ES256 (needs CKM_EC_KEY_PAIR_GEN, CKM_ECDSA)")
            && stdout.contains("EdDSA (needs CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EDDSA)"),
        "{stdout}"
    );
    let pin = ock.pin()?;
    assert!(
        !stdout.contains(&pin) && !String::from_utf8_lossy(&out.stderr).contains(&pin),
        "the PIN must not be printed"
    );

    // No token matches: every slot seen is listed with the reason.
    let absent = ock.write_config("absent.toml", &ock.config_for("absent", ""))?;
    let out = ock.check_config(&absent, &[])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no token matches pkcs11:token=absent")
            && stderr.contains(&format!(
                "slot 0 (token '{LABEL}', serial '123'): label differs"
            ))
            && stderr.contains(&format!(
                "slot 1 (token '{second}', serial '123'): label differs"
            )),
        "{stderr}"
    );
    // --offline checks the file only.
    let out = ock.check_config(&absent, &["--offline"])?;
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("device: not checked (--offline)"));

    // A wrong PIN is reported as such.
    let bad_pin = ock.dir.path().join("bad.pin");
    std::fs::write(&bad_pin, "1111\n")?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&bad_pin, std::fs::Permissions::from_mode(0o600))?;
    }
    let text = ock.config("").replace(
        &ock.pin_file.display().to_string(),
        &bad_pin.display().to_string(),
    );
    let out = ock.check_config(&ock.write_config("bad-pin.toml", &text)?, &[])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("rejected the PIN"), "{stderr}");

    // pkcsslotd down: the module cannot initialise, and the message says what to check.
    ock.stop_slotd()?;
    let out = ock.check_config(&config, &[])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("C_Initialize of PKCS#11 module")
            && stderr.contains("libopencryptoki.so")
            && stderr.contains("pkcsslotd running"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn with_pkcsslotd_down_the_daemon_waits_not_serving_and_serves_when_it_is_back() -> TestResult
{
    let ock = OckToken::start()?;
    {
        let d = ock.daemon("")?;
        d.create("idp", "PS256", 0).await?;
    }
    ock.stop_slotd()?;
    let d = ock.daemon("")?;
    let log = d.log_text();
    assert!(
        log.contains("NOT_SERVING")
            && log.contains(&ock.module.display().to_string())
            && log.contains("pkcsslotd running"),
        "the start-up log names the module and the likely cause:\n{log}"
    );
    wait_health(&d, ServingStatus::NotServing, Duration::from_secs(10)).await?;
    let (code, msg) = code_of(
        d.signer()
            .await?
            .sign_raw(pb::SignRawRequest {
                key: "idp".into(),
                data: b"x".to_vec(),
                alg: String::new(),
            })
            .await,
    )?;
    assert!(
        matches!(
            code,
            tonic::Code::Unavailable | tonic::Code::NotFound | tonic::Code::FailedPrecondition
        ),
        "{code:?}: {msg}"
    );

    ock.start_slotd()?;
    wait_health(&d, ServingStatus::Serving, Duration::from_secs(30)).await?;
    // The keyring is loaded once the device answers; give the refresh a moment.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match sign_verified(&d, "idp", "PS256").await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(format!("{e}\n{}", d.log_text()).into()),
        }
    }
    Ok(())
}
