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
            version: 0,
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
    let d = card.daemon(&config).await?;

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
        let d = card.daemon(&config).await?;
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
    let d = card.daemon(&config).await?;
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
    let d = card.daemon(&config).await?;
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
    let d = card.daemon(&config).await?;
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
    let d = card.daemon(&config).await?;
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

/// The slot of a YubiKey URI.
fn uri_slot(uri: &str) -> TestResult<u8> {
    let slot = uri.rsplit_once("slot=").ok_or("no slot= in the URI")?.1;
    Ok(u8::from_str_radix(slot, 16)?)
}

/// The backend's decryption step on the card, compared with what Python `cryptography` computes
/// from the public key alone: RSA-OAEP (SHA-1 and SHA-256; raw RSA on the card, OAEP decoded on
/// the host) gives back the CEK, ECDH on P-256 and P-384 the shared secret Z. Decryption keys go
/// in key-management slots only (9d, 82–95), signing keys to the other configured slots first;
/// adopting a key outside a key-management slot for decryption is refused.
#[tokio::test]
async fn fw_5_7_1_decryption_keys_in_key_management_slots() -> TestResult {
    use sigild::backend::yubikey::{
        PinPolicySetting, TouchPolicySetting, YubikeyBackend, YubikeySettings,
    };
    use sigild::backend::{Backend, BackendError, KeySpec};
    use sigild::crypto::{Curve, DecryptOp, KeyKind, KeyPurpose, OaepHash};
    use sigild::secret::Secret;
    use std::time::{Duration, Instant};

    let _one_pcscd = serial_guard().await;
    let _card = VirtualCard::start("5.7.1", &[])?;
    let (yk, absent) = YubikeyBackend::open(YubikeySettings {
        serial: SERIAL,
        pin: Secret::new(PIN.into()),
        management_key: Secret::new(DEFAULT_MGM.into()),
        slots: vec![0x82, 0x9d, 0x9a, 0x83, 0x84, 0x85],
        pin_policy: PinPolicySetting::Default,
        touch_policy: TouchPolicySetting::Never,
        queue_depth: 8,
        timeout: Duration::from_secs(10),
    })?;
    assert!(absent.is_none(), "card not found: {absent:?}");
    let deadline = || Instant::now() + Duration::from_secs(10);
    let spec = |kind, purpose| KeySpec {
        kind,
        label: format!("{kind}-{purpose:?}"),
        purpose,
    };

    // Slot choice: a signing key takes 9a before any retired slot and never 9d; decryption
    // keys take the key-management slots in configured order.
    let sig = yk
        .generate(spec(KeyKind::Ec(Curve::P256), KeyPurpose::Sign))
        .await?;
    assert_eq!(uri_slot(&sig.uri)?, 0x9a, "{}", sig.uri);
    let rsa = yk
        .generate(spec(KeyKind::Rsa { bits: 2048 }, KeyPurpose::Decrypt))
        .await?;
    let p256 = yk
        .generate(spec(KeyKind::Ec(Curve::P256), KeyPurpose::Decrypt))
        .await?;
    let p384 = yk
        .generate(spec(KeyKind::Ec(Curve::P384), KeyPurpose::Decrypt))
        .await?;
    let slots: Vec<u8> = [&rsa, &p256, &p384]
        .iter()
        .map(|k| uri_slot(&k.uri))
        .collect::<TestResult<_>>()?;
    assert_eq!(slots, vec![0x82, 0x9d, 0x83]);
    // 84 and 85 are left: a second signing key takes 84 (9a is taken), an RSA-3072 (firmware
    // 5.7) decryption key 85; then no key-management slot is free.
    let sig2 = yk
        .generate(spec(KeyKind::Ec(Curve::P256), KeyPurpose::Sign))
        .await?;
    assert_eq!(uri_slot(&sig2.uri)?, 0x84);
    let rsa3072 = yk
        .generate(spec(KeyKind::Rsa { bits: 3072 }, KeyPurpose::Decrypt))
        .await?;
    assert_eq!(uri_slot(&rsa3072.uri)?, 0x85);
    let full = yk
        .generate(spec(KeyKind::Ec(Curve::P256), KeyPurpose::Decrypt))
        .await;
    assert!(
        matches!(&full, Err(BackendError::Unsupported(m)) if m.contains("key-management slot")),
        "{full:?}"
    );

    // ECDH-ES on P-256 and P-384: the card's Z equals the ephemeral side's.
    for (key, curve, name) in [(&p256, Curve::P256, "P-256"), (&p384, Curve::P384, "P-384")] {
        let (peer, expected) = support::jwe::ecdh_with(&key.public)?;
        let z = yk
            .decrypt(
                &key.id,
                KeyKind::Ec(curve),
                DecryptOp::Ecdh { peer },
                deadline(),
            )
            .await?;
        assert_eq!(z.expose().len(), curve.field_len());
        assert_eq!(z.expose(), expected.as_slice(), "ECDH {name}");
    }
    // A peer on the other curve does not fit the key.
    let r = yk
        .decrypt(
            &p256.id,
            KeyKind::Ec(Curve::P256),
            DecryptOp::Ecdh {
                peer: p384.public.clone(),
            },
            deadline(),
        )
        .await;
    assert!(matches!(r, Err(BackendError::InvalidRequest(_))), "{r:?}");

    // Adoption: the slot is the rule for decryption keys; signing keys anywhere, as before.
    let uri = |slot: &str| format!("yubikey:serial={SERIAL};slot={slot}");
    let r = yk.adopt(uri("9a"), KeyPurpose::Decrypt).await;
    assert!(
        matches!(&r, Err(BackendError::InvalidRequest(m)) if m.contains("key-management slot")),
        "{r:?}"
    );
    let again = yk.adopt(uri("9d"), KeyPurpose::Decrypt).await?;
    assert_eq!(again.id, p256.id, "adopting sigild's own key keeps its id");
    yk.adopt(uri("84"), KeyPurpose::Sign).await?;
    // RSA-OAEP (SHA-1) and RSA-OAEP-256: the CEK Python encrypted, back.
    for (rsa, bits, hash, name) in [
        (&rsa, 2048, OaepHash::Sha1, "sha1"),
        (&rsa, 2048, OaepHash::Sha256, "sha256"),
        (&rsa3072, 3072, OaepHash::Sha256, "sha256"),
    ] {
        let kind = KeyKind::Rsa { bits };
        let (ciphertext, expected) = support::jwe::oaep_to(&rsa.public, hash)?;
        let cek = yk
            .decrypt(
                &rsa.id,
                kind,
                DecryptOp::RsaOaep {
                    hash,
                    ciphertext: ciphertext.clone(),
                },
                deadline(),
            )
            .await?;
        assert_eq!(cek.expose(), expected.as_slice(), "RSA-{bits} OAEP {name}");
        // A tampered ciphertext, the wrong hash, a short ciphertext, one not below the modulus
        // (the card refuses it): one and the same error.
        let mut tampered = ciphertext.clone();
        tampered[100] ^= 1;
        let other = match hash {
            OaepHash::Sha1 => OaepHash::Sha256,
            OaepHash::Sha256 => OaepHash::Sha1,
        };
        for (hash, ciphertext) in [
            (hash, tampered),
            (other, ciphertext.clone()),
            (hash, ciphertext[1..].to_vec()),
            (hash, vec![0xff; ciphertext.len()]),
        ] {
            let r = yk
                .decrypt(
                    &rsa.id,
                    kind,
                    DecryptOp::RsaOaep { hash, ciphertext },
                    deadline(),
                )
                .await;
            assert!(
                matches!(&r, Err(BackendError::InvalidRequest(m)) if m == "decryption failed"),
                "RSA-{bits} OAEP {name}: {r:?}"
            );
        }
    }

    yk.shutdown();
    Ok(())
}

/// `ykman piv keys generate` on the virtual card, as another tool would make a key.
fn ykman_generate(card: &VirtualCard, alg: &str, slot: &str) -> TestResult {
    let pubfile = card.dir.path().join(format!("{slot}.pem"));
    let out = std::process::Command::new("ykman")
        .args(["--device", &SERIAL.to_string(), "piv", "keys", "generate"])
        .args(["-a", alg, "-m", DEFAULT_MGM, slot])
        .arg(&pubfile)
        .output()?;
    assert!(
        out.status.success(),
        "ykman piv keys generate {alg} {slot}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// DecryptJwe through the daemon on the card, one JWE per alg family made by jwcrypto (the alg
/// × enc × producer matrix runs on every device in tests/conformance.rs): an RSA-OAEP-256 key
/// ykman made in 9d, adopted; an ECDH-ES key sigild generated with PIN policy "always", so the
/// PIN is verified before each of two decryptions in a row. A key outside a key-management slot
/// cannot be adopted for decryption.
#[tokio::test]
async fn fw_5_7_1_decrypt_jwe_adopted_9d_and_pin_always() -> TestResult {
    use support::jwe::{decrypt, encrypt_jwcrypto, published_enc_jwk};
    let _one_pcscd = serial_guard().await;
    let card = VirtualCard::start("5.7.1", &[])?;
    ykman_generate(&card, "RSA2048", "9d")?;
    ykman_generate(&card, "ECCP256", "9a")?;
    let config = card.write_config(&card.config("timeout_ms = 8000\npin_policy = \"always\""))?;
    let d = card.daemon(&config).await?;
    let mut keys = d.keys().await?;

    let r = keys
        .adopt_key(pb::AdoptKeyRequest {
            serves: Vec::new(),
            name: "ecdh-9a".into(),
            alg: "ECDH-ES".into(),
            uri: format!("yubikey:serial={SERIAL};slot=9a"),
            fapi2: false,
        })
        .await;
    let (code, msg) = code_of(r)?;
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    assert!(msg.contains("key-management slot"), "{msg}");

    let adopted = keys
        .adopt_key(pb::AdoptKeyRequest {
            serves: Vec::new(),
            name: "rsa-9d".into(),
            alg: "RSA-OAEP-256".into(),
            uri: format!("yubikey:serial={SERIAL};slot=9d"),
            fapi2: false,
        })
        .await?
        .into_inner();
    assert_eq!(
        adopted.versions[0].uri,
        format!("yubikey:serial={SERIAL};slot=9d")
    );
    let created = support::jwe::create_enc(&d, "ecdh", "ECDH-ES", 0, "P-256").await?;
    let slot = created.versions[0]
        .uri
        .rsplit_once("slot=")
        .ok_or("no slot")?
        .1
        .to_owned();
    assert!(
        matches!(u8::from_str_radix(&slot, 16)?, 0x82..=0x95),
        "ECDH key in slot {slot}"
    );

    for (key, alg, enc, times) in [
        ("rsa-9d", "RSA-OAEP-256", "A256GCM", 1),
        ("ecdh", "ECDH-ES", "A128CBC-HS256", 2),
    ] {
        let jwk = published_enc_jwk(&d, key, alg).await?;
        for i in 0..times {
            let plaintext = format!("{{\"to\":\"{key}\",\"n\":{i}}}").into_bytes();
            let jwe = encrypt_jwcrypto(&jwk, alg, enc, &plaintext, &json!({}))?;
            let out = decrypt(&d, key, &jwe)
                .await
                .map_err(|e| format!("{key} #{i}: {e}"))?;
            assert_eq!(out.plaintext, plaintext, "{key} #{i}");
            assert_eq!((out.alg.as_str(), out.enc.as_str()), (alg, enc));
        }
    }
    Ok(())
}
