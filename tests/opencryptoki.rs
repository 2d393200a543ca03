//! What only openCryptoki's software token (Debian `opencryptoki` 3.8.1, a second, independent
//! PKCS#11 implementation, used as shipped) needs checked: the daemon finds the token although
//! it reports its clock in a form cryptoki cannot parse; EC and EdDSA, which the token lacks,
//! are refused naming the algorithm, the missing mechanism and the token; `check-config` reports
//! the token and its algorithms or exactly what is wrong. Signing (PS256, RS256, PS384),
//! rotation, restart, adoption, import, and pkcsslotd going away and coming back are the
//! conformance suite's (tests/conformance.rs, `opencryptoki::…`).
//!
//! One pkcsslotd per machine: every test holds an [`OckToken`] (a flock on
//! /tmp/sigild-ock-token.lock). Needs root and the opencryptoki package; the tests fail (not skip)
//! without them.

mod support;

use sigild::api::pb;
use support::ock::{LABEL, OckToken};
use support::*;

#[tokio::test]
async fn the_token_is_found_although_cryptoki_cannot_parse_its_clock() -> TestResult {
    let ock = OckToken::start()?;
    let d = ock.daemon("")?;
    let created = d.create("ps256", "PS256", 0).await?;
    assert!(
        created.versions[0].uri.contains(&format!("token={LABEL}")),
        "{:?}",
        created.versions[0].uri
    );
    // The token was found although cryptoki cannot parse its clock; the daemon said so.
    let log = d.log_text();
    assert!(
        log.contains("utcTime") && log.contains("cannot parse"),
        "the unparsable clock is logged with its slot:\n{log}"
    );
    sign_verified(&d, "ps256", "PS256").await?;
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
                    ..Default::default()
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
                serves: Vec::new(),
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
        stdout.contains("algorithms: PS256 PS384 PS512 RS256\n"),
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
