//! Key lifecycle on a real SoftHSM token: rotation, JWKS contents, restart and a second
//! daemon on the same token, and interoperability with `pkcs11-tool` in both directions.

mod support;

use serde_json::Value;
use sigild::api::pb;
use support::*;

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn sign(d: &Daemon, key: &str) -> Result<pb::SignJwsResponse, tonic::Status> {
    let mut s = d
        .signer()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let info = d
        .keys()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?
        .get_key(pb::GetKeyRequest { name: key.into() })
        .await?
        .into_inner();
    // Header as a caller writes it: alg and kid of the version it expects to sign.
    let header = match info
        .versions
        .iter()
        .find(|v| v.version == info.active_version)
    {
        Some(v) => format!("{{\"alg\":\"{}\",\"kid\":\"{}\"}}", v.alg, v.kid),
        None => r#"{"alg":"ES256"}"#.to_owned(),
    }
    .into_bytes();
    Ok(s.sign_jws(pb::SignJwsRequest {
        key: key.into(),
        protected_header: header,
        payload: b"{}".to_vec(),
    })
    .await?
    .into_inner())
}

#[tokio::test]
async fn rotation_lifecycle_and_jwks() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let mut k = d.keys().await?;
    let created = d.create("idp", "ES256", 0).await?;
    assert_eq!(created.active_version, 1);
    let v1 = created.versions[0].kid.clone();

    // Rotate: v2 is published as `next`, v1 still signs.
    let r = k
        .rotate_key(pb::RotateKeyRequest {
            name: "idp".into(),
            alg: String::new(),
            rsa_bits: 0,
        })
        .await?
        .into_inner();
    assert_eq!(r.versions.len(), 2);
    assert_eq!(r.versions[1].state, pb::KeyState::Next as i32);
    let v2 = r.versions[1].kid.clone();
    assert_ne!(v1, v2);
    let jwks = d.jwks().await?;
    assert_eq!(kids(&jwks), vec![v1.clone(), v2.clone()]);
    assert_eq!(sign(&d, "idp").await?.kid, v1);

    // Activate: v2 signs, v1 is retired but still published (its tokens are still valid).
    let r = k
        .activate_key_version(pb::KeyVersionRequest {
            name: "idp".into(),
            version: 0,
        })
        .await?
        .into_inner();
    assert_eq!(r.active_version, 2);
    assert_eq!(r.versions[0].state, pb::KeyState::Retired as i32);
    let s = sign(&d, "idp").await?;
    assert_eq!(s.kid, v2);
    assert_eq!(s.key_version, 2);
    verify_jws(&s.compact, &d.jwks().await?)?;
    assert_eq!(kids(&d.jwks().await?).len(), 2);

    // The active version cannot be destroyed; a retired one can, and leaves the JWKS and token.
    let (code, msg) = code_of(
        k.destroy_key_version(pb::KeyVersionRequest {
            name: "idp".into(),
            version: 2,
        })
        .await,
    )?;
    assert_eq!(code, tonic::Code::FailedPrecondition, "{msg}");
    let r = k
        .destroy_key_version(pb::KeyVersionRequest {
            name: "idp".into(),
            version: 1,
        })
        .await?
        .into_inner();
    assert_eq!(r.versions[0].state, pb::KeyState::Destroyed as i32);
    assert_eq!(kids(&d.jwks().await?), vec![v2.clone()]);
    let listing = String::from_utf8(token.pkcs11_tool(&["--list-objects"])?.stdout)?;
    assert!(
        !listing.contains("sigild/idp/v1"),
        "v1 key pair still on the token:\n{listing}"
    );
    assert!(listing.contains("sigild/idp/v2"));

    // Retire the active version: signing is refused with FAILED_PRECONDITION, JWKS keeps it.
    k.retire_key_version(pb::KeyVersionRequest {
        name: "idp".into(),
        version: 0,
    })
    .await?;
    let (code, msg) = code_of(sign(&d, "idp").await)?;
    assert_eq!(code, tonic::Code::FailedPrecondition);
    assert!(msg.contains("no active version"), "{msg}");
    assert_eq!(kids(&d.jwks().await?), vec![v2.clone()]);

    // Re-activating a retired version is allowed (rollback).
    k.activate_key_version(pb::KeyVersionRequest {
        name: "idp".into(),
        version: 2,
    })
    .await?;
    assert_eq!(sign(&d, "idp").await?.kid, v2);

    // Names are unique; a rotation may change the alg within the key type's family.
    let (code, _) = code_of(
        k.create_key(pb::CreateKeyRequest {
            name: "idp".into(),
            alg: "ES256".into(),
            rsa_bits: 0,
            fapi2: false,
        })
        .await,
    )?;
    assert_eq!(code, tonic::Code::AlreadyExists);
    d.create("rsa", "PS256", 0).await?;
    let r = k
        .rotate_key(pb::RotateKeyRequest {
            name: "rsa".into(),
            alg: "PS384".into(),
            rsa_bits: 3072,
        })
        .await?
        .into_inner();
    assert_eq!(r.versions[1].alg, "PS384");
    assert_eq!(r.versions[1].key_type, "RSA-3072");
    Ok(())
}

#[tokio::test]
async fn keyring_lives_on_the_token_for_restarts_and_replicas() -> TestResult {
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
    verify_jws(&sign(&b, "shared").await?.compact, &a.jwks().await?)?;

    // A rotation + activation on A reaches B after its refresh.
    let mut ka = a.keys().await?;
    ka.rotate_key(pb::RotateKeyRequest {
        name: "shared".into(),
        alg: String::new(),
        rsa_bits: 0,
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
        if sign(&b, "shared").await?.kid == new_kid {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica B never picked up the activation"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(a);
    drop(b);

    // After a restart the keyring is the same.
    let c = Daemon::start(&token)?;
    let key = c
        .keys()
        .await?
        .get_key(pb::GetKeyRequest {
            name: "shared".into(),
        })
        .await?
        .into_inner();
    assert_eq!(key.active_version, 2);
    assert_eq!(key.versions[0].state, pb::KeyState::Retired as i32);
    Ok(())
}

#[tokio::test]
async fn pkcs11_tool_interop_both_ways() -> TestResult {
    let token = Token::new()?;
    // A key made by pkcs11-tool is adopted by URI and signs through sigild.
    let out = token.pkcs11_tool(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--label",
        "legacy-idp",
        "--id",
        "a1b2",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let adopted = k
        .adopt_key(pb::AdoptKeyRequest {
            name: "legacy".into(),
            alg: "ES256".into(),
            uri: format!("pkcs11:token={};id=%a1%b2;type=private", token.label),
            fapi2: false,
        })
        .await?
        .into_inner();
    assert_eq!(adopted.versions[0].origin, "adopted");
    assert!(
        adopted.versions[0].uri.contains("object=legacy-idp"),
        "{}",
        adopted.versions[0].uri
    );
    verify_jws(&sign(&d, "legacy").await?.compact, &d.jwks().await?)?;
    // An alg that does not fit the key is refused before anything is recorded.
    let (code, _) = code_of(
        k.adopt_key(pb::AdoptKeyRequest {
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
            name: "legacy-ed".into(),
            alg: "EdDSA".into(),
            uri: "pkcs11:object=legacy-ed".into(),
            fapi2: false,
        })
        .await?
        .into_inner();
    assert_eq!(ed.versions[0].key_type, "Ed25519");
    verify_jws(&sign(&d, "legacy-ed").await?.compact, &d.jwks().await?)?;
    // The same key pair cannot be adopted twice, whatever URI names it.
    let (code, _) = code_of(
        k.adopt_key(pb::AdoptKeyRequest {
            name: "again".into(),
            alg: "ES256".into(),
            uri: format!("pkcs11:token={};id=%a1%b2;type=private", token.label),
            fapi2: false,
        })
        .await,
    )?;
    assert_eq!(code, tonic::Code::AlreadyExists);

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
    let id = key.versions[0]
        .uri
        .split("id=")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .ok_or("id")?
        .replace('%', "");
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
