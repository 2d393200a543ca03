//! What only a shared PKCS#11 token does, on a real SoftHSM token: two daemons on one token
//! see one keyring, and `pkcs11-tool` interoperates in both directions. Lifecycle, JWKS,
//! adoption and restart on every device are in the conformance suite (tests/conformance.rs).

mod support;

use sigild::api::pb;
use support::*;

#[tokio::test]
async fn two_daemons_on_one_token_share_the_keyring() -> TestResult {
    let token = Token::new()?;
    // Replicas re-read the keyring every second here.
    let extra = "\n[keyring]\nrefresh_seconds = 1\n";
    let a = Daemon::start_with(&token, extra)?;
    a.create("shared", "EdDSA", 0).await?;
    let b = Daemon::start_with(&token, extra)?;
    let jb = b.jwks().await?;
    assert_eq!(
        kids(&jb),
        kids(&a.jwks().await?),
        "a second sigild on the same token sees the same keyring"
    );
    // Both sign with the same key; signatures verify against either's JWKS.
    verify_jws(&sign_active(&b, "shared").await?.compact, &a.jwks().await?)?;

    // A rotation + activation on A reaches B after its refresh.
    let mut ka = a.keys().await?;
    ka.rotate_key(pb::RotateKeyRequest {
        name: "shared".into(),
        alg: String::new(),
        rsa_bits: 0,
        ..Default::default()
    })
    .await?;
    let act = ka
        .activate_key_version(pb::KeyVersionRequest {
            name: "shared".into(),
            version: 0,
        })
        .await?
        .into_inner();
    let new_kid = act.versions[1].kid.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        if sign_active(&b, "shared").await?.kid == new_kid {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica B never picked up the activation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::test]
async fn pkcs11_tool_interop_both_ways() -> TestResult {
    let token = Token::new()?;
    // An Ed25519 key made by pkcs11-tool is adopted by its label and signs through sigild
    // (adoption on every device, with the URI forms, is in the conformance suite).
    let out = token.pkcs11_tool(&[
        "--keypairgen",
        "--key-type",
        "EC:edwards25519",
        "--label",
        "legacy-ed",
        "--id",
        "c3",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = Daemon::start(&token)?;
    let mut k = d.keys().await?;
    // An alg that does not fit the key is refused before anything is recorded.
    let (code, _) = code_of(
        k.adopt_key(pb::AdoptKeyRequest {
            serves: Vec::new(),
            name: "x".into(),
            alg: "RS256".into(),
            uri: "pkcs11:object=legacy-ed".into(),
            fapi2: false,
        })
        .await,
    )?;
    assert_eq!(code, tonic::Code::InvalidArgument);
    let ed = k
        .adopt_key(pb::AdoptKeyRequest {
            serves: Vec::new(),
            name: "legacy-ed".into(),
            alg: "EdDSA".into(),
            uri: "pkcs11:object=legacy-ed".into(),
            fapi2: false,
        })
        .await?
        .into_inner();
    assert_eq!(ed.versions[0].key_type, "Ed25519");
    verify_jws(
        &sign_active(&d, "legacy-ed").await?.compact,
        &d.jwks().await?,
    )?;

    // A key made by sigild is visible to pkcs11-tool, labelled, sign-only and non-extractable,
    // and pkcs11-tool can sign with it; the signature verifies with sigild's published JWK.
    let key = d.create("made-here", "ES256", 0).await?;
    let listing = String::from_utf8(
        token
            .pkcs11_tool(&["--list-objects", "--type", "privkey"])?
            .stdout,
    )?;
    let block = listing
        .split("Private Key Object")
        .find(|b| b.contains("sigild/made-here/v1"))
        .ok_or(format!("not listed:\n{listing}"))?;
    assert!(block.contains("Usage:      sign"), "{block}");
    assert!(block.contains("never extractable"), "{block}");
    assert!(block.contains("sensitive"), "{block}");
    let id = support::device::uri_id_hex(&key.versions[0].uri).ok_or("id")?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // SoftHSM has no CKM_ECDSA_SHA256: hash on the host, as sigild does.
    std::fs::write(
        &data,
        sigild::crypto::HashAlg::Sha256.digest(b"signed by pkcs11-tool"),
    )?;
    let sig = dir.path().join("sig");
    let out = token.pkcs11_tool(&[
        "--sign",
        "--mechanism",
        "ECDSA",
        "--id",
        &id,
        "--input-file",
        data.to_str().ok_or("p")?,
        "--output-file",
        sig.to_str().ok_or("p")?,
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    verify_raw(
        "ES256",
        &active_jwk(&key)?,
        b"signed by pkcs11-tool",
        &std::fs::read(&sig)?,
    )?;
    Ok(())
}
