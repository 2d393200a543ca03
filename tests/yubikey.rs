//! What only a YubiKey does, through the real stack: `sigild serve` with a `[yubikey]` table →
//! `yubikey` crate → libpcsclite → pcscd → vpcd → the virtual YubiKey. Attestation chains, PIN
//! lockout and unblock, touch, firmware 5.4.3 (3DES management key, no Ed25519, slot reuse) and
//! an mTLS handshake with a card key; every signature verified by jwcrypto / cryptography. The
//! checks every device shares (algorithms, profiles, lifecycle, adoption, import refusal,
//! restart, card removal and reinsertion) are in the conformance suite (tests/conformance.rs).
//!
//! One pcscd per machine: every test holds `serial_guard()`. Needs root, pcscd and vpcd; the
//! tests fail (not skip) without them.
#![cfg(feature = "yubikey")]

mod support;

use serde_json::json;
use sigild::api::pb;
use support::yubikey::*;
use support::*;

/// (key name, alg) whose attestation is checked on firmware 5.7.1.
const ALGS_57: [(&str, &str); 5] = [
    ("es256", "ES256"),
    ("es384", "ES384"),
    ("ps256", "PS256"),
    ("rs256", "RS256"),
    ("eddsa", "EdDSA"),
];

/// `openssl verify` the chain (leaf, F9) against the emulator's attestation root.
fn verify_attestation(card: &VirtualCard, name: &str, chain: &[Vec<u8>]) -> TestResult {
    let dir = card.dir.path();
    let mut pems = Vec::new();
    for (i, der) in chain.iter().enumerate() {
        let der_path = dir.join(format!("{name}-{i}.der"));
        let pem_path = dir.join(format!("{name}-{i}.pem"));
        std::fs::write(&der_path, der)?;
        let out = std::process::Command::new("openssl")
            .args(["x509", "-inform", "DER", "-in"])
            .arg(&der_path)
            .arg("-out")
            .arg(&pem_path)
            .output()?;
        assert!(
            out.status.success(),
            "{name}: certificate {i} is not X.509 DER"
        );
        pems.push(pem_path);
    }
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(card.attestation_root())
        .arg("-untrusted")
        .arg(&pems[1])
        .arg(&pems[0])
        .output()?;
    assert!(
        out.status.success(),
        "{name}: openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn sign_status(d: &Daemon, name: &str, alg: &str) -> TestResult<(tonic::Code, String)> {
    let r = d
        .signer()
        .await?
        .sign_jws(pb::SignJwsRequest {
            key: name.into(),
            protected_header: format!("{{\"alg\":\"{alg}\"}}").into_bytes(),
            payload: b"{}".to_vec(),
        })
        .await;
    code_of(r)
}

#[tokio::test]
async fn fw_5_7_1_attestation_and_pin_lockout() -> TestResult {
    let _one_pcscd = serial_guard().await;
    let card = VirtualCard::start("5.7.1", &[])?;
    let config = card.write_config(&card.config("timeout_ms = 8000"))?;
    let d = Daemon::start_config(&card.work(), &config)?;

    // Generated keys go in the retired slots (82…95).
    for (name, alg) in ALGS_57 {
        let k = d.create(name, alg, 0).await?;
        let v = &k.versions[0];
        assert!(
            v.uri
                .starts_with(&format!("yubikey:serial={SERIAL};slot=8")),
            "{name}: {}",
            v.uri
        );
    }

    // Attestation: GetKey carries the chain (slot certificate, F9 certificate) and a JWK with
    // x5c; openssl verifies it against the emulator's exported root.
    for (name, _) in ALGS_57 {
        let key = d
            .keys()
            .await?
            .get_key(pb::GetKeyRequest { name: name.into() })
            .await?
            .into_inner();
        let v = &key.versions[0];
        assert_eq!(
            v.attestation_chain_der.len(),
            2,
            "{name}: attestation chain"
        );
        verify_attestation(&card, name, &v.attestation_chain_der)?;
        let x5c: serde_json::Value = serde_json::from_str(&v.public_jwk_x5c_json)?;
        assert_eq!(x5c["kid"], json!(v.kid));
        assert_eq!(x5c["x5c"].as_array().map(Vec::len), Some(2));
    }
    sign_verified(&d, "es256", "ES256").await?;

    // Lock the PIN with another tool: the daemon says so, distinctly.
    // (yubico-piv-tool may lose a race for the reader with the daemon's health check, so try
    // until the card says "Pin code blocked".)
    let mut blocked = false;
    for _ in 0..8 {
        let out = card.piv_tool(&["-a", "verify-pin", "-P", "000000"])?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "wrong PIN accepted? {text}");
        if text.contains("Pin code blocked") {
            blocked = true;
            break;
        }
    }
    assert!(blocked, "could not lock the PIN with yubico-piv-tool");
    let (code, msg) = sign_status(&d, "es256", "ES256").await?;
    assert_eq!(code, tonic::Code::FailedPrecondition, "{msg}");
    assert!(msg.contains("PIN is locked"), "{msg}");
    // Readiness follows (the check runs every few seconds).
    let mut health = tonic_health::pb::health_client::HealthClient::new(d.channel().await?);
    let serving = |h: tonic_health::pb::HealthCheckResponse| h.status;
    let mut status = 0;
    for _ in 0..40 {
        status = serving(
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await?
                .into_inner(),
        );
        if status == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32,
        "a locked PIN makes the daemon NOT_SERVING"
    );
    // An operator unblocks it with the PUK: the daemon recovers without a restart.
    let out = card.piv_tool(&["-a", "unblock-pin", "-P", "12345678", "-N", PIN])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sign_verified(&d, "es256", "ES256").await?;
    Ok(())
}

#[tokio::test]
async fn fw_5_4_3_3des_no_ed25519_and_keyring_on_the_card() -> TestResult {
    let _one_pcscd = serial_guard().await;
    let card = VirtualCard::start("5.4.3", &[])?;
    let config = card.write_config(&card.config("slots = [\"95\", \"94\", \"93\", \"92\"]"))?;
    let kid = {
        let d = Daemon::start_config(&card.work(), &config)?;
        let k = d.create("es256", "ES256", 0).await?;
        assert_eq!(
            k.versions[0].uri,
            format!("yubikey:serial={SERIAL};slot=95")
        );
        let kid = sign_verified(&d, "es256", "ES256").await?;
        // No Ed25519 before 5.7: a clear FAILED_PRECONDITION, nothing generated.
        let r = d
            .keys()
            .await?
            .create_key(pb::CreateKeyRequest {
                name: "eddsa".into(),
                alg: "EdDSA".into(),
                rsa_bits: 0,
                fapi2: false,
                ..Default::default()
            })
            .await;
        let (code, msg) = code_of(r)?;
        assert_eq!(code, tonic::Code::FailedPrecondition, "{msg}");
        assert!(msg.contains("5.7"), "{msg}");
        // Rotation takes the next free slot; with none left the card says so; destroying an old
        // version scrubs its slot, which the next rotation reuses.
        d.create("rs", "RS256", 0).await?;
        d.create("rot", "ES256", 0).await?;
        let mut keys = d.keys().await?;
        let rotate = || pb::RotateKeyRequest {
            name: "rot".into(),
            alg: String::new(),
            rsa_bits: 0,
            ..Default::default()
        };
        let k = keys.rotate_key(rotate()).await?.into_inner();
        assert_eq!(
            k.versions[1].uri,
            format!("yubikey:serial={SERIAL};slot=92")
        );
        let (code, msg) = code_of(keys.rotate_key(rotate()).await)?;
        assert_eq!(code, tonic::Code::FailedPrecondition, "slots full: {msg}");
        assert!(msg.contains("free slot"), "{msg}");
        let version = |version| pb::KeyVersionRequest {
            name: "rot".into(),
            version,
        };
        keys.activate_key_version(version(2)).await?;
        keys.destroy_key_version(version(1)).await?;
        let k = keys.rotate_key(rotate()).await?.into_inner();
        assert_eq!(
            k.versions[2].uri,
            format!("yubikey:serial={SERIAL};slot=93")
        );
        keys.activate_key_version(version(3)).await?;
        let rot_kid = sign_verified(&d, "rot", "ES256").await?;
        assert_eq!(rot_kid, k.versions[2].kid);
        kid
    };
    // A new daemon finds the keyring on the card (records in PIV data objects).
    let d = Daemon::start_config(&card.work(), &config)?;
    let keys = d
        .keys()
        .await?
        .list_keys(pb::ListKeysRequest {})
        .await?
        .into_inner();
    assert_eq!(keys.keys.len(), 3);
    assert_eq!(sign_verified(&d, "es256", "ES256").await?, kid);
    sign_verified(&d, "rs", "RS256").await?;
    Ok(())
}

#[tokio::test]
async fn touch_accepted_timed_out_and_required() -> TestResult {
    let _one_pcscd = serial_guard().await;
    let card = VirtualCard::start("5.7.1", &["--touch", "accept", "--touch-delay-ms", "200"])?;
    let config = card.write_config(&card.config("touch_policy = \"always\"\ntimeout_ms = 2000"))?;
    let d = Daemon::start_config(&card.work(), &config)?;
    d.create("touchy", "ES256", 0).await?;
    // Touched: signs.
    sign_verified(&d, "touchy", "ES256").await?;

    // Nobody touches, the card gives up: TouchTimeout.
    card.remove()?;
    card.insert(Some(&["--touch", "timeout", "--touch-delay-ms", "200"]))?;
    let (code, msg) = sign_status(&d, "touchy", "ES256").await?;
    assert_eq!(code, tonic::Code::Unavailable, "{msg}");
    assert!(msg.contains("timed out waiting for a touch"), "{msg}");

    // The card waits longer than the request may: TouchRequired, at the deadline.
    card.remove()?;
    card.insert(Some(&["--touch", "timeout", "--touch-delay-ms", "4000"]))?;
    let started = std::time::Instant::now();
    let (code, msg) = sign_status(&d, "touchy", "ES256").await?;
    assert_eq!(code, tonic::Code::Unavailable, "{msg}");
    assert!(msg.contains("needs a touch"), "{msg}");
    assert!(started.elapsed() < std::time::Duration::from_millis(3500));
    Ok(())
}

/// The caller's deadline counts: when the service's deadline (`[signing] timeout_ms`) is sooner
/// than the card's own (`[yubikey] timeout_ms`; the shipped defaults are 5000 and 10000 ms), a
/// key waiting for a touch is still reported as needing one, before the service gives up.
#[tokio::test]
async fn touch_required_reaches_a_caller_whose_deadline_is_sooner() -> TestResult {
    let _one_pcscd = serial_guard().await;
    let card = VirtualCard::start("5.7.1", &["--touch", "accept", "--touch-delay-ms", "200"])?;
    let text = format!(
        "{}\n[signing]\ntimeout_ms = 1500\n",
        card.config("touch_policy = \"always\"\ntimeout_ms = 10000")
    );
    let config = card.write_config(&text)?;
    let d = Daemon::start_config(&card.work(), &config)?;
    d.create("touchy", "ES256", 0).await?;
    sign_verified(&d, "touchy", "ES256").await?;

    card.remove()?;
    card.insert(Some(&["--touch", "timeout", "--touch-delay-ms", "4000"]))?;
    let started = std::time::Instant::now();
    let (code, msg) = sign_status(&d, "touchy", "ES256").await?;
    assert_eq!(code, tonic::Code::Unavailable, "{msg}");
    assert!(msg.contains("needs a touch"), "{msg}");
    assert!(started.elapsed() < std::time::Duration::from_millis(3500));
    Ok(())
}

/// Issue 5 on the card: an mTLS client whose ES256 key is in a YubiKey slot completes TLS 1.3
/// and TLS 1.2 handshakes with a rustls server that requires client certificates; every
/// CertificateVerify is a `SignRaw` that the card signs (DER-encoded for TLS by the signer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_key_on_the_card() -> TestResult {
    use rustls::SignatureScheme;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    use sigild::client::{Connection, SigildSigningKey, SignerOptions};
    use support::tls::*;

    let _one_pcscd = serial_guard().await;
    let card = VirtualCard::start("5.7.1", &[])?;
    let config = card.write_config(&card.config("timeout_ms = 8000"))?;
    let d = Daemon::start_config(&card.work(), &config)?;
    d.create("tls-yk", "ES256", 0).await?;

    let conn = Connection::danger_plaintext_loopback(d.endpoint.clone())?;
    let key = SigildSigningKey::connect(&conn, "tls-yk", SignerOptions::default()).await?;
    let (ca, files) = ServerFiles::new_ca(card.dir.path())?;
    let names = sigild::tls::ClientNames {
        cn: Some("tls-yk".into()),
        ..sigild::tls::ClientNames::default()
    };
    let pem = ca.client_for_key(&names, &key)?;
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let (addr, server) = rustls_server(&files, version, None).await?;
        let cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[version])?
            .with_root_certificates(roots(&files.ca_pem)?)
            .with_client_cert_resolver(key.resolver(chain.clone())?);
        let (negotiated, answer) = talk(cfg, addr)
            .await
            .map_err(|e| format!("{version:?}: {e}"))?;
        assert_eq!(answer.trim(), "gnip", "{negotiated}");
        assert_eq!(
            server.await??,
            vec![SignatureScheme::ECDSA_NISTP256_SHA256],
            "{negotiated}"
        );
    }
    Ok(())
}
