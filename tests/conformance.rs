//! The backend conformance suite: one list of checks, run through the real `sigild serve`
//! against every device in one list (SoftHSM, the virtual YubiKey on firmware 5.7.1 and 5.4.3,
//! openCryptoki's soft token). Each (device, check) pair is
//! its own test, `DEVICE::CHECK` (e.g. `yubikey_5_7_1::adopt`), so a failure names both.
//!
//! Every signature is verified by code sigild did not write (jwcrypto / cryptography, through
//! tests/verifiers), every decryption is of a JWE jwcrypto made to the JWK sigild published, and every public key sigild reports is compared with what the device's own
//! tool (pkcs11-tool, ykman) reads. What a device lacks is part of its entry
//! (`Capabilities::lacks`, `Capabilities::import`): the checks assert the refusal, they never
//! skip.
//!
//! YubiKey and openCryptoki tests need root (pcscd and vpcd; the opencryptoki package) and fail
//! without them. Only one pcscd and one pkcsslotd run per machine: `yubikey_*` tests share
//! nextest's `pcscd` test group (and, under `cargo test`, a process-wide lock held by the
//! device), `opencryptoki::*` tests the `ock` group (and a file lock held by the device).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sigild::api::pb;
use support::device::*;
use support::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// One test per (device, check): `devices` are `module => constructor` pairs, `checks` the
/// functions of [`checks`], each `async fn(&Device) -> TestResult`.
macro_rules! conformance {
    (devices: [$($(#[$attr:meta])* $device:ident => $start:path),* $(,)?], checks: $checks:tt) => {
        $(
            $(#[$attr])*
            mod $device {
                use super::*;
                conformance!(@checks $start, $checks);
            }
        )*
    };
    (@checks $start:path, [$($check:ident),* $(,)?]) => {
        $(
            #[tokio::test]
            async fn $check() -> TestResult {
                let device = $start().await?;
                checks::$check(&device)
                    .await
                    .map_err(|e| format!("{}: {e}", device.name).into())
            }
        )*
    };
}

conformance! {
    devices: [
        softhsm => support::device::softhsm,
        #[cfg(feature = "yubikey")]
        yubikey_5_7_1 => support::device::yubikey_5_7_1,
        #[cfg(feature = "yubikey")]
        yubikey_5_4_3 => support::device::yubikey_5_4_3,
        opencryptoki => support::device::opencryptoki,
    ],
    checks: [
        every_offered_alg_signs_or_is_refused,
        profiles_with_every_alg,
        lifecycle_and_jwks,
        adopt,
        import,
        error_statuses,
        restart,
        fault_recovery,
        decrypt_every_offered_alg,
        decryption_key_attributes,
    ]
}

mod checks {
    use super::*;

    /// Every algorithm sigild offers either makes keys that sign JWS and raw signatures which
    /// jwcrypto / cryptography accept, or — where the device lacks it — is refused with
    /// FAILED_PRECONDITION naming it, with nothing created. An RSA key also signs RS256 (TLS 1.2)
    /// and PS512 (HTTP message signatures) on request.
    pub async fn every_offered_alg_signs_or_is_refused(dev: &Device) -> TestResult {
        for key in dev.caps.lacks {
            assert!(
                OFFERED.iter().any(|c| c.key == *key),
                "capability lists {key}, which sigild does not offer"
            );
        }
        let d = dev.daemon("")?;
        for c in dev.caps.lacking() {
            let r = d
                .keys()
                .await?
                .create_key(pb::CreateKeyRequest {
                    name: c.key.into(),
                    alg: c.alg.into(),
                    rsa_bits: c.rsa_bits,
                    fapi2: false,
                    ..Default::default()
                })
                .await;
            let (code, msg) = code_of(r).map_err(|e| format!("{}: {e}", c.key))?;
            assert_eq!(code, Code::FailedPrecondition, "{}: {msg}", c.key);
            assert!(
                c.named_in(&msg),
                "{}: the refusal does not name {} or {}: {msg}",
                c.key,
                c.alg,
                c.key_type()
            );
        }
        assert!(
            list_keys(&d).await?.is_empty(),
            "a refused key was recorded"
        );

        let supported = dev.caps.supported();
        for c in &supported {
            let k = d
                .create(c.key, c.alg, c.rsa_bits)
                .await
                .map_err(|e| format!("create {}: {e}", c.key))?;
            let v = &k.versions[0];
            assert!(
                v.uri.starts_with(&dev.uri_prefix()),
                "{}: {} does not start with {}",
                c.key,
                v.uri,
                dev.uri_prefix()
            );
            assert_eq!(v.key_type, c.key_type(), "{}", c.key);
            assert_eq!(v.origin, "generated", "{}", c.key);
        }
        let jwks = d.jwks().await?;
        let entries = jwks["keys"].as_array().ok_or("keys")?;
        assert_eq!(entries.len(), supported.len());
        for e in entries {
            assert_eq!(e["use"], "sig", "{e}");
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(e.get(private).is_none(), "private member {private}: {e}");
            }
        }
        for c in &supported {
            // Generic JWS with caller-chosen bytes: odd spacing and member order must survive.
            let header = format!("{{ \"typ\":\"JWT\",  \"alg\" : \"{}\" }}", c.alg);
            let payload = br#"{"sub":"alice",   "n":[1,2,3]}"#;
            let r = sign_jws(&d, c.key, header.as_bytes(), payload)
                .await
                .map_err(|e| format!("{}: sign_jws: {e}", c.key))?;
            assert!(
                r.compact
                    .starts_with(&format!("{}.{}.", b64(header.as_bytes()), b64(payload))),
                "{}: bytes re-encoded",
                c.key
            );
            // No kid in this header: verify with this key's entry from the published JWKS.
            let v = verify_jws_with_kid(&r.compact, &r.kid, &jwks)
                .map_err(|e| format!("{}: {e}", c.key))?;
            assert_eq!(v["header"]["alg"], c.alg);
            assert_eq!(
                v["thumbprint"], r.kid,
                "{}: kid is the RFC 7638 thumbprint (per jwcrypto)",
                c.key
            );
            let entry = entries
                .iter()
                .find(|e| e["kid"] == json!(r.kid))
                .ok_or("kid not in JWKS")?;
            assert_eq!(entry["alg"], c.alg, "{}", c.key);

            // Raw signature over arbitrary bytes, JOSE encoding.
            sign_raw_verified(&d, c.key, format!("raw input for {}", c.key).as_bytes()).await?;
        }

        // An RSA key can serve RS256 for a TLS 1.2 peer even when its JOSE alg is PS256.
        if dev.caps.has("ps256") {
            let data = b"tls 1.2 transcript".to_vec();
            let raw = d
                .signer()
                .await?
                .sign_raw(pb::SignRawRequest {
                    version: 0,
                    key: "ps256".into(),
                    data: data.clone(),
                    alg: "RS256".into(),
                })
                .await?
                .into_inner();
            let key = get_key(&d, "ps256").await?;
            verify_raw("RS256", &active_jwk(&key)?, &data, &raw.signature)?;

            // PS512 (PSS, MGF1-SHA-512, 64-byte salt: RFC 9421 `rsa-pss-sha512`, which HTTP
            // message signatures use on every RSA key) from the same key pair, raw and as a JWS:
            // the device's PSS with SHA-512 (host-side encoding on a YubiKey), checked by
            // cryptography and jwcrypto.
            let data = b"@method: POST".to_vec();
            let raw = d
                .signer()
                .await?
                .sign_raw(pb::SignRawRequest {
                    version: 0,
                    key: "ps256".into(),
                    data: data.clone(),
                    alg: "PS512".into(),
                })
                .await?
                .into_inner();
            assert_eq!(raw.alg, "PS512");
            verify_raw("PS512", &active_jwk(&key)?, &data, &raw.signature)?;
            let header = br#"{"alg":"PS512"}"#;
            let r = sign_jws(&d, "ps256", header, b"ps512 payload").await?;
            let v = verify_jws_with_kid(&r.compact, &r.kid, &jwks)?;
            assert_eq!(v["header"]["alg"], "PS512");
        }
        Ok(())
    }

    /// The profiles carry what the RFCs require, with keys of every algorithm the device
    /// signs with: ID token (OIDC Core), JAR request object (RFC 9101), private_key_jwt client
    /// assertion (RFC 7523), DPoP proof (RFC 9449).
    pub async fn profiles_with_every_alg(dev: &Device) -> TestResult {
        let d = dev.daemon("")?;
        let supported = dev.caps.supported();
        for c in &supported {
            d.create(c.key, c.alg, c.rsa_bits).await?;
        }
        let jwks = d.jwks().await?;
        let mut s = d.signer().await?;
        let access_token = "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y";
        let code = "Qcb0Orv1zh30vL1MPRsbm-diHiMwcLyZvn1arpZv-Jxf_11jnpEX3Tgfvk";
        // at_hash / c_hash per hash, computed once by Python's hashlib.
        let mut half_hashes = std::collections::HashMap::new();
        for c in &supported {
            for value in [access_token, code] {
                if let std::collections::hash_map::Entry::Vacant(e) =
                    half_hashes.entry((c.token_hash(), value))
                {
                    let req = json!({"op": "half_hash", "hash": c.token_hash(), "value": value});
                    e.insert(python(&req)?["half_hash"].clone());
                }
            }
        }
        let half_hash = |c: &AlgCase, value: &str| half_hashes[&(c.token_hash(), value)].clone();
        for c in &supported {
            let what = c.key;
            // ID token: at_hash / c_hash = left half of the alg's hash of the value.
            let now = now()?;
            let r = s
                .sign_id_token(pb::SignIdTokenRequest { version: 0, state: String::new(), typ: String::new(),
                    key: c.key.into(),
                    claims_json: json!({"iss": "https://op.example.com", "sub": "248289761001", "aud": "s6BhdRkqt3", "nonce": "n-0S6_WzA2Mj"}).to_string(),
                    lifetime_seconds: 600,
                    access_token: access_token.into(),
                    code: code.into(),
                })
                .await
                .map_err(|e| format!("{what}: id token: {e}"))?
                .into_inner();
            let v = verify_jws(&r.compact, &jwks).map_err(|e| format!("{what}: {e}"))?;
            let (h, claims) = (&v["header"], &v["payload"]);
            assert_eq!(h["kid"], r.kid, "{what}");
            assert_eq!(h["alg"], c.alg, "{what}");
            assert_eq!(claims["at_hash"], half_hash(c, access_token), "{what}");
            assert_eq!(claims["c_hash"], half_hash(c, code), "{what}");
            if c.token_hash() == "sha256" {
                // The values OIDC Core's examples print for this access token and code.
                assert_eq!(claims["at_hash"], "77QmUPtjPfzWtF2AnpK9RQ", "{what}");
                assert_eq!(claims["c_hash"], "LDktKdoQak3Pk0cnXxCltA", "{what}");
            }
            assert_eq!(claims["nonce"], "n-0S6_WzA2Mj", "{what}");
            let iat = claims["iat"].as_i64().ok_or("iat")?;
            assert!((iat - now).abs() <= 5, "{what}");
            assert_eq!(claims["exp"].as_i64(), Some(iat + 600), "{what}");

            // JAR request object.
            let r = s
                .sign_request_object(pb::SignRequestObjectRequest {
                    key: c.key.into(),
                    client_id: "client-a".into(),
                    audience: "https://as.example.com".into(),
                    claims_json: json!({"response_type": "code", "redirect_uri": "https://client.example.org/cb", "scope": "openid", "state": "af0ifjsldkj", "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256"}).to_string(),
                    lifetime_seconds: 0,
                })
                .await
                .map_err(|e| format!("{what}: request object: {e}"))?
                .into_inner();
            let v = verify_jws(&r.compact, &jwks).map_err(|e| format!("{what}: {e}"))?;
            assert_eq!(v["header"]["typ"], "oauth-authz-req+jwt", "{what}");
            let claims = &v["payload"];
            assert_eq!(claims["iss"], "client-a", "{what}");
            assert_eq!(claims["client_id"], "client-a", "{what}");
            assert_eq!(claims["aud"], "https://as.example.com", "{what}");
            let (nbf, exp) = (
                claims["nbf"].as_i64().ok_or("nbf")?,
                claims["exp"].as_i64().ok_or("exp")?,
            );
            assert!(exp - nbf > 0 && exp - nbf <= 3600, "{what}");
            assert!(
                claims["jti"].as_str().is_some_and(|j| j.len() >= 16),
                "{what}"
            );

            // Client assertion: aud is one string, iss = sub, a fresh jti each time.
            let assertion = || pb::SignClientAssertionRequest {
                explicit_typ: false,
                nbf: false,
                key: c.key.into(),
                client_id: "client-a".into(),
                audience: "https://as.example.com".into(),
                lifetime_seconds: 0,
            };
            let a = s
                .sign_client_assertion(assertion())
                .await
                .map_err(|e| format!("{what}: client assertion: {e}"))?
                .into_inner();
            let b = s.sign_client_assertion(assertion()).await?.into_inner();
            let claims =
                verify_jws(&a.compact, &jwks).map_err(|e| format!("{what}: {e}"))?["payload"]
                    .clone();
            assert_eq!(claims["iss"], "client-a", "{what}");
            assert_eq!(claims["sub"], "client-a", "{what}");
            assert!(claims["aud"].is_string(), "{what}");
            assert_eq!(
                claims["exp"].as_i64().ok_or("exp")? - claims["iat"].as_i64().ok_or("iat")?,
                60,
                "{what}"
            );
            assert_ne!(
                claims["jti"],
                decode(&b.compact)?.1["jti"],
                "{what}: every assertion gets a fresh jti"
            );
            verify_jws(&b.compact, &jwks).map_err(|e| format!("{what}: {e}"))?;

            // DPoP proof: verifies with the header's own jwk, which has no private parts.
            let p = s
                .sign_dpop_proof(pb::SignDpopProofRequest {
                    key: c.key.into(),
                    htm: "POST".into(),
                    htu: "https://server.example.com/token?x=1#frag".into(),
                    access_token: "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU".into(),
                    nonce: "eyJ7S_zG.eyJH0-Z.HX4w-7v".into(),
                })
                .await
                .map_err(|e| format!("{what}: dpop: {e}"))?
                .into_inner();
            let v = python(&json!({"op": "jws", "jws": p.compact, "header_jwk": true}))
                .map_err(|e| format!("{what}: {e}"))?;
            let (h, claims) = (&v["header"], &v["payload"]);
            assert_eq!(h["typ"], "dpop+jwt", "{what}");
            assert_eq!(h["alg"], c.alg, "{what}");
            for private in ["d", "p", "q", "dp", "dq", "qi"] {
                assert!(h["jwk"].get(private).is_none(), "{what}: {private}");
            }
            assert_eq!(
                v["thumbprint"], p.kid,
                "{what}: dpop_jkt = RFC 7638 thumbprint = kid"
            );
            assert_eq!(claims["htm"], "POST", "{what}");
            assert_eq!(claims["htu"], "https://server.example.com/token", "{what}");
            assert_eq!(
                claims["ath"], "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo",
                "{what}"
            );
            assert_eq!(claims["nonce"], "eyJ7S_zG.eyJH0-Z.HX4w-7v", "{what}");
        }
        Ok(())
    }

    /// Create, rotate (`next`), activate (old one `retired`, still published), destroy (gone
    /// from the JWKS and, per the device's own tool, from the device), retire the active
    /// version (signing refused), re-activate (rollback); unique names; a rotation may change
    /// the alg within the key type's family.
    pub async fn lifecycle_and_jwks(dev: &Device) -> TestResult {
        let c = dev.caps.first_of(&["es256", "ps256"])?;
        let d = dev.daemon("")?;
        let mut k = d.keys().await?;
        let created = d.create("idp", c.alg, c.rsa_bits).await?;
        assert_eq!(created.active_version, 1);
        let v1 = created.versions[0].clone();
        assert_eq!(
            dev.public_kid(&v1.uri)?.as_deref(),
            Some(v1.kid.as_str()),
            "the device's own tool reads the key sigild published"
        );

        // Rotate: v2 is published as `next`, v1 still signs.
        let rotate = |name: &str, alg: &str, rsa_bits| pb::RotateKeyRequest {
            name: name.into(),
            alg: alg.into(),
            rsa_bits,
            ..Default::default()
        };
        let version = |version| pb::KeyVersionRequest {
            name: "idp".into(),
            version,
        };
        let r = k.rotate_key(rotate("idp", "", 0)).await?.into_inner();
        assert_eq!(r.versions.len(), 2);
        assert_eq!(r.versions[1].state, pb::KeyState::Next as i32);
        let v2 = r.versions[1].clone();
        assert_ne!(v1.kid, v2.kid);
        assert_eq!(dev.public_kid(&v2.uri)?.as_deref(), Some(v2.kid.as_str()));
        let jwks = d.jwks().await?;
        assert_eq!(kids(&jwks), vec![v1.kid.clone(), v2.kid.clone()]);
        assert_eq!(sign_active(&d, "idp").await?.kid, v1.kid);

        // Activate: v2 signs, v1 is retired but still published (its tokens are still valid).
        let r = k.activate_key_version(version(0)).await?.into_inner();
        assert_eq!(r.active_version, 2);
        assert_eq!(r.versions[0].state, pb::KeyState::Retired as i32);
        let s = sign_active(&d, "idp").await?;
        assert_eq!(s.kid, v2.kid);
        assert_eq!(s.key_version, 2);
        verify_jws(&s.compact, &d.jwks().await?)?;
        assert_eq!(kids(&d.jwks().await?).len(), 2);

        // The active version cannot be destroyed; a retired one can, and leaves the JWKS and
        // the device.
        let (code, msg) = code_of(k.destroy_key_version(version(2)).await)?;
        assert_eq!(code, Code::FailedPrecondition, "{msg}");
        let r = k.destroy_key_version(version(1)).await?.into_inner();
        assert_eq!(r.versions[0].state, pb::KeyState::Destroyed as i32);
        assert_eq!(kids(&d.jwks().await?), vec![v2.kid.clone()]);
        assert_ne!(
            dev.public_kid(&v1.uri)?.as_deref(),
            Some(v1.kid.as_str()),
            "v1 key pair still on the device"
        );
        assert_eq!(dev.public_kid(&v2.uri)?.as_deref(), Some(v2.kid.as_str()));

        // Retire the active version: signing is refused with FAILED_PRECONDITION, JWKS keeps it.
        k.retire_key_version(version(0)).await?;
        let (code, msg) = code_of(sign_active(&d, "idp").await)?;
        assert_eq!(code, Code::FailedPrecondition);
        assert!(msg.contains("no active version"), "{msg}");
        assert_eq!(kids(&d.jwks().await?), vec![v2.kid.clone()]);

        // Re-activating a retired version is allowed (rollback).
        k.activate_key_version(version(2)).await?;
        assert_eq!(sign_active(&d, "idp").await?.kid, v2.kid);

        // Names are unique; a rotation may change the alg within the key type's family.
        let (code, _) = code_of(
            k.create_key(pb::CreateKeyRequest {
                name: "idp".into(),
                alg: c.alg.into(),
                rsa_bits: c.rsa_bits,
                fapi2: false,
                ..Default::default()
            })
            .await,
        )?;
        assert_eq!(code, Code::AlreadyExists);
        let bits = if dev.caps.has("ps256-3072") {
            3072
        } else {
            2048
        };
        d.create("rsa", "PS256", 0).await?;
        let r = k
            .rotate_key(rotate("rsa", "PS384", bits))
            .await?
            .into_inner();
        assert_eq!(r.versions[1].alg, "PS384");
        assert_eq!(r.versions[1].key_type, format!("RSA-{bits}"));
        k.activate_key_version(pb::KeyVersionRequest {
            name: "rsa".into(),
            version: 0,
        })
        .await?;
        let s = sign_active(&d, "rsa").await?;
        assert_eq!(decode(&s.compact)?.0["alg"], "PS384");
        verify_jws(&s.compact, &d.jwks().await?)?;
        Ok(())
    }

    /// A key pair made by the device's own tool is adopted by URI and signs (JWS and raw,
    /// verified); an alg that does not fit it is refused before anything is recorded; the same
    /// key pair cannot be adopted twice, whatever URI names it; a key pair whose private key can
    /// leave the device is refused.
    pub async fn adopt(dev: &Device) -> TestResult {
        let foreign = dev.foreign_key()?;
        let d = dev.daemon("")?;
        let mut k = d.keys().await?;
        let (code, msg) = code_of(
            k.adopt_key(pb::AdoptKeyRequest {
                serves: Vec::new(),
                name: "x".into(),
                alg: foreign.wrong_alg.into(),
                uri: foreign.uri.clone(),
                fapi2: false,
            })
            .await,
        )?;
        assert_eq!(code, Code::InvalidArgument, "{msg}");
        assert!(list_keys(&d).await?.is_empty(), "refused adoption recorded");

        let adopted = k
            .adopt_key(pb::AdoptKeyRequest {
                serves: Vec::new(),
                name: "legacy".into(),
                alg: foreign.alg.into(),
                uri: foreign.uri.clone(),
                fapi2: false,
            })
            .await?
            .into_inner();
        let v = &adopted.versions[0];
        assert_eq!(v.origin, "adopted");
        assert_eq!(v.state, pb::KeyState::Active as i32);
        assert!(
            v.uri.contains(&foreign.reported),
            "{} lacks {}",
            v.uri,
            foreign.reported
        );
        assert_eq!(dev.public_kid(&v.uri)?.as_deref(), Some(v.kid.as_str()));
        // Twice: a PIN-always YubiKey slot needs the PIN before every signature.
        for _ in 0..2 {
            let r = sign_active(&d, "legacy").await?;
            assert_eq!(r.kid, v.kid);
            verify_jws(&r.compact, &d.jwks().await?)?;
        }
        sign_raw_verified(&d, "legacy", b"raw input for an adopted key").await?;

        let (code, msg) = code_of(
            k.adopt_key(pb::AdoptKeyRequest {
                serves: Vec::new(),
                name: "again".into(),
                alg: foreign.alg.into(),
                uri: foreign.alias.clone(),
                fapi2: false,
            })
            .await,
        )?;
        assert_eq!(code, Code::AlreadyExists, "{msg}");

        // A key pair whose private key can leave the device is not adopted.
        if let Some(uri) = dev.extractable_key()? {
            let (code, msg) = code_of(
                k.adopt_key(pb::AdoptKeyRequest {
                    serves: Vec::new(),
                    name: "leaky".into(),
                    alg: foreign.alg.into(),
                    uri,
                    fapi2: false,
                })
                .await,
            )?;
            assert!(
                matches!(code, Code::InvalidArgument | Code::FailedPrecondition),
                "{code:?}: {msg}"
            );
            assert!(msg.contains("extractable"), "{msg}");
        }
        assert_eq!(list_keys(&d).await?.len(), 1);
        Ok(())
    }

    /// Import (migration) of RFC test keys, converted to PKCS#8 by jwcrypto: the kid is the
    /// RFC 7638 thumbprint, deterministic algorithms reproduce the RFCs' signatures byte for
    /// byte. A key type the device lacks, or import on a device that takes none, is refused
    /// with FAILED_PRECONDITION and nothing is recorded.
    pub async fn import(dev: &Device) -> TestResult {
        let d = dev.daemon("")?;
        let mut k = d.keys().await?;
        let import = |name: &str, alg: &str, der: Vec<u8>| pb::ImportKeyRequest {
            serves: Vec::new(),
            name: name.into(),
            alg: alg.into(),
            pkcs8_der: der,
            fapi2: false,
        };
        let vectors = [
            (
                "eddsa",
                "rfc8037",
                "EdDSA",
                rfc8037_ed25519(),
                Some((
                    b"Example of Ed25519 signing".to_vec(),
                    r#"{"alg":"EdDSA"}"#,
                    "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg",
                )),
            ),
            (
                "rs256",
                "rfc7515-rsa",
                "RS256",
                rfc7515_rsa(),
                Some((
                    b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}".to_vec(),
                    r#"{"alg":"RS256"}"#,
                    "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw",
                )),
            ),
            ("es256", "rfc7515-ec", "ES256", rfc7515_ec(), None),
        ];
        for (case, name, alg, jwk, deterministic) in vectors {
            let der = pkcs8_der(&jwk)?;
            let public = {
                let mut p = jwk.clone();
                for private in ["d", "p", "q", "dp", "dq", "qi"] {
                    if let Value::Object(m) = &mut p {
                        m.remove(private);
                    }
                }
                p
            };
            let expected_kid =
                python(&json!({"op": "thumbprint", "jwk": public}))?["thumbprint"].clone();
            let r = k.import_key(import(name, alg, der)).await;
            if !dev.caps.import || !dev.caps.has(case) {
                let (code, msg) = code_of(r).map_err(|e| format!("{name}: {e}"))?;
                assert_eq!(code, Code::FailedPrecondition, "{name}: {msg}");
                if dev.caps.import {
                    let c = OFFERED
                        .iter()
                        .find(|c| c.key == case)
                        .ok_or("offered case")?;
                    assert!(
                        c.named_in(&msg),
                        "{name}: refusal does not name {alg}: {msg}"
                    );
                } else {
                    assert!(msg.contains("import"), "{name}: {msg}");
                }
                continue;
            }
            let key = r.map_err(|e| format!("{name}: {e}"))?.into_inner();
            let v = &key.versions[0];
            assert_eq!(v.origin, "imported", "{name}");
            assert_eq!(json!(v.kid), expected_kid, "{name}");
            if name == "rfc8037" {
                // RFC 8037 A.3 thumbprint.
                assert_eq!(v.kid, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
            }
            match deterministic {
                Some((payload, header, signature)) => {
                    let r = sign_jws(&d, name, header.as_bytes(), &payload).await?;
                    assert_eq!(r.signature, signature, "{name}: the RFC's signature");
                    assert_eq!(
                        r.compact,
                        format!("{}.{}.{signature}", b64(header.as_bytes()), b64(&payload)),
                        "{name}"
                    );
                }
                None => {
                    let r = sign_active(&d, name).await?;
                    verify_jws(&r.compact, &d.jwks().await?).map_err(|e| format!("{name}: {e}"))?;
                }
            }
        }
        let imported = list_keys(&d).await?.len();
        let expected = if dev.caps.import {
            ["eddsa", "rs256", "es256"]
                .iter()
                .filter(|c| dev.caps.has(c))
                .count()
        } else {
            0
        };
        assert_eq!(imported, expected, "refused imports recorded?");
        Ok(())
    }

    /// Device-facing mistakes get the right status, and the daemon still signs after them.
    pub async fn error_statuses(dev: &Device) -> TestResult {
        let c = dev.caps.first_of(&["es256", "ps256"])?;
        let other = dev.caps.first_of(&["ps256", "es256"])?;
        let d = dev.daemon("")?;
        d.create("k", c.alg, c.rsa_bits).await?;
        let mut k = d.keys().await?;
        let header = |alg: &str| format!("{{\"alg\":\"{alg}\"}}").into_bytes();

        let (code, msg) = code_of(sign_jws(&d, "nope", &header(c.alg), b"{}").await)?;
        assert_eq!(code, Code::NotFound, "{msg}");
        assert!(msg.contains("no key named"), "{msg}");
        if other.alg != c.alg {
            let (code, msg) = code_of(sign_jws(&d, "k", &header(other.alg), b"{}").await)?;
            assert_eq!(
                code,
                Code::InvalidArgument,
                "alg for another key type: {msg}"
            );
        }
        let (code, msg) = code_of(
            sign_jws(
                &d,
                "k",
                format!("{{\"alg\":\"{}\",\"kid\":\"nope\"}}", c.alg).as_bytes(),
                b"{}",
            )
            .await,
        )?;
        assert_eq!(code, Code::InvalidArgument, "kid of another key: {msg}");
        let (code, msg) = code_of(
            k.create_key(pb::CreateKeyRequest {
                name: "k".into(),
                alg: c.alg.into(),
                rsa_bits: c.rsa_bits,
                fapi2: false,
                ..Default::default()
            })
            .await,
        )?;
        assert_eq!(code, Code::AlreadyExists, "{msg}");
        let (code, msg) = code_of(
            k.activate_key_version(pb::KeyVersionRequest {
                name: "k".into(),
                version: 9,
            })
            .await,
        )?;
        assert_eq!(code, Code::NotFound, "{msg}");
        let (code, msg) = code_of(
            k.rotate_key(pb::RotateKeyRequest {
                name: "nope".into(),
                alg: String::new(),
                rsa_bits: 0,
                ..Default::default()
            })
            .await,
        )?;
        assert_eq!(code, Code::NotFound, "{msg}");
        let adopt = |uri: String| pb::AdoptKeyRequest {
            serves: Vec::new(),
            name: "a".into(),
            alg: c.alg.into(),
            uri,
            fapi2: false,
        };
        let (code, msg) = code_of(k.adopt_key(adopt(dev.other_device_uri())).await)?;
        assert_eq!(
            code,
            Code::InvalidArgument,
            "a URI on another device: {msg}"
        );
        // No key there: refused (how depends on whether the device can tell a missing object
        // from an unusable one), and nothing recorded.
        let (code, msg) = code_of(k.adopt_key(adopt(dev.empty_uri())).await)?;
        assert!(
            matches!(
                code,
                Code::NotFound | Code::FailedPrecondition | Code::InvalidArgument
            ),
            "an empty URI: {code:?} {msg}"
        );
        assert_eq!(list_keys(&d).await?.len(), 1);

        // After all that, the daemon still signs correctly.
        let r = sign_jws(&d, "k", &header(c.alg), b"{}").await?;
        verify_jws_with_kid(&r.compact, &r.kid, &d.jwks().await?)?;
        Ok(())
    }

    /// The keyring lives on the device: a new daemon finds the same keys, versions, states and
    /// kids, and signs with the same key.
    pub async fn restart(dev: &Device) -> TestResult {
        let c = dev.caps.first_of(&["eddsa", "es256", "ps256"])?;
        let other = dev.caps.first_of(&["ps256", "es256"])?;
        let (before, jwks) = {
            let d = dev.daemon("")?;
            d.create("shared", c.alg, c.rsa_bits).await?;
            d.create("other", other.alg, other.rsa_bits).await?;
            let mut k = d.keys().await?;
            k.rotate_key(pb::RotateKeyRequest {
                name: "shared".into(),
                alg: String::new(),
                rsa_bits: 0,
                ..Default::default()
            })
            .await?;
            k.activate_key_version(pb::KeyVersionRequest {
                name: "shared".into(),
                version: 0,
            })
            .await?;
            k.rotate_key(pb::RotateKeyRequest {
                name: "other".into(),
                alg: String::new(),
                rsa_bits: 0,
                ..Default::default()
            })
            .await?;
            (list_keys(&d).await?, d.jwks().await?)
        };
        let d = dev.daemon("")?;
        // The device may still be busy with the daemon that just exited: once the new one says
        // it serves, its keyring must be complete.
        wait_health(
            &d,
            "sigil.v1.SigningService",
            ServingStatus::Serving,
            Duration::from_secs(30),
        )
        .await?;
        let after = list_keys(&d).await?;
        // Names, versions, states, kids, URIs, public keys, origins, times: all the same. (A
        // card makes a fresh attestation certificate each time it is asked: those may differ.)
        let recorded = |keys: Vec<pb::Key>| -> Vec<pb::Key> {
            keys.into_iter()
                .map(|mut k| {
                    for v in &mut k.versions {
                        v.attestation_chain_der.clear();
                        v.public_jwk_x5c_json.clear();
                    }
                    k
                })
                .collect()
        };
        let (after, before) = (recorded(after), recorded(before));
        if after != before {
            let names = |keys: &[pb::Key]| -> Vec<String> {
                keys.iter()
                    .flat_map(|k| {
                        k.versions
                            .iter()
                            .map(|v| format!("{}/{} {}", k.name, v.version, v.kid))
                    })
                    .collect()
            };
            return Err(format!(
                "the restarted daemon's keyring differs: {:?} before, {:?} after\n{}",
                names(&before),
                names(&after),
                d.log_text()
            )
            .into());
        }
        let shared = get_key(&d, "shared").await?;
        assert_eq!(shared.active_version, 2);
        assert_eq!(shared.versions[0].state, pb::KeyState::Retired as i32);
        assert_eq!(
            get_key(&d, "other").await?.versions[1].state,
            pb::KeyState::Next as i32
        );
        assert_eq!(d.jwks().await?, jwks);
        let r = sign_active(&d, "shared").await?;
        assert_eq!(r.kid, shared.versions[1].kid);
        verify_jws(&r.compact, &jwks)?;
        Ok(())
    }

    /// The device goes away and comes back.
    ///
    /// Where a running daemon sees the fault (SoftHSM: the token's objects vanish; YubiKey: the
    /// card is pulled), signing fails with a clear status and never a wrong signature, the JWKS
    /// stays what it was (tokens signed earlier still verify at relying parties), and when the
    /// device is back signing resumes with the same key.
    ///
    /// Where only a daemon that connects sees it (openCryptoki: pkcsslotd stops), the running
    /// daemon keeps signing correctly, a daemon started meanwhile waits NOT_SERVING and refuses
    /// to sign, and serves the same key once the device is back.
    pub async fn fault_recovery(dev: &Device) -> TestResult {
        let c = dev.caps.first_of(&["es256", "ps256"])?;
        let extra = "[keyring]\nrefresh_seconds = 1\n";
        let d = dev.daemon(extra)?;
        d.create("k", c.alg, c.rsa_bits).await?;
        let jwks = d.jwks().await?;
        let first = sign_active(&d, "k").await?;
        verify_jws(&first.compact, &jwks)?;
        let signs_as_before = |r: pb::SignJwsResponse| -> TestResult {
            assert_eq!(r.kid, first.kid);
            verify_jws(&r.compact, &jwks)?;
            Ok(())
        };

        match dev.caps.fault {
            FaultModel::Running {
                codes,
                recovers_at_once,
            } => {
                dev.fault()?;
                let (code, msg, id) = failure(sign_active(&d, "k").await)?;
                assert!(codes.contains(&code), "{code:?}: {msg}");
                // The caller gets a stable sentence and the request id; the log line with that
                // id has the device's own account.
                assert!(msg.contains(&format!("request id {id}")), "{msg}");
                for device_words in ["CKR_", "PC/SC"] {
                    assert!(!msg.contains(device_words), "{msg}");
                }
                let line = log_line(&d, &id).await?;
                for words in dev.fault_log() {
                    assert!(line.contains(&words), "{line}");
                    assert!(!msg.contains(&words), "{msg}");
                }
                // Past a keyring refresh, the JWKS is unchanged.
                tokio::time::sleep(Duration::from_millis(2500)).await;
                assert_eq!(d.jwks().await?, jwks);
                let (code, msg) = code_of(sign_active(&d, "k").await)?;
                assert!(codes.contains(&code), "{code:?}: {msg}");

                dev.recover()?;
                let signed = if recovers_at_once {
                    // The next request reconnects (and verifies the PIN again).
                    sign_active(&d, "k").await?
                } else {
                    eventually(&d, Duration::from_secs(20), || async {
                        Ok(sign_active(&d, "k").await?)
                    })
                    .await?
                };
                signs_as_before(signed)?;
            }
            FaultModel::AtStart => {
                dev.fault()?;
                signs_as_before(sign_active(&d, "k").await?)?;
                let late = dev.daemon(extra)?;
                let log = late.log_text();
                for words in dev.fault_log() {
                    assert!(
                        log.contains(&words),
                        "the start-up log lacks {words:?}:\n{log}"
                    );
                }
                wait_health(
                    &late,
                    "sigil.v1.SigningService",
                    ServingStatus::NotServing,
                    Duration::from_secs(10),
                )
                .await?;
                let (code, msg) = code_of(sign_active(&late, "k").await)?;
                assert!(
                    matches!(
                        code,
                        Code::Unavailable | Code::NotFound | Code::FailedPrecondition
                    ),
                    "{code:?}: {msg}"
                );

                dev.recover()?;
                wait_health(
                    &late,
                    "sigil.v1.SigningService",
                    ServingStatus::Serving,
                    Duration::from_secs(30),
                )
                .await?;
                let signed = eventually(&late, Duration::from_secs(20), || async {
                    Ok(sign_active(&late, "k").await?)
                })
                .await?;
                signs_as_before(signed)?;
                assert_eq!(late.jwks().await?, jwks);
                signs_as_before(sign_active(&d, "k").await?)?;
            }
        }
        sign_raw_verified(&d, "k", b"after recovery").await?;
        Ok(())
    }

    /// Every decryption alg sigild offers either makes keys (published `use: "enc"` with their
    /// alg) that decrypt JWEs jwcrypto made to their JWK — A256GCM and A128CBC-HS256 in turn,
    /// the plaintext back byte for byte — or, where the device lacks it, is refused with
    /// FAILED_PRECONDITION naming it, with nothing created.
    pub async fn decrypt_every_offered_alg(dev: &Device) -> TestResult {
        use support::jwe::*;
        for key in dev.caps.lacks_decrypt {
            assert!(
                DECRYPT_OFFERED.iter().any(|c| c.key == *key),
                "capability lists {key}, which sigild does not offer for decryption"
            );
        }
        let d = dev.daemon("")?;
        for c in dev.caps.decrypt_lacking() {
            let r = d
                .keys()
                .await?
                .create_key(pb::CreateKeyRequest {
                    serves: Vec::new(),
                    name: c.key.into(),
                    alg: c.alg.into(),
                    rsa_bits: c.rsa_bits,
                    curve: c.curve.into(),
                    fapi2: false,
                })
                .await;
            let (code, msg) = code_of(r).map_err(|e| format!("{}: {e}", c.key))?;
            assert_eq!(code, Code::FailedPrecondition, "{}: {msg}", c.key);
            assert!(
                c.named_in(&msg),
                "{}: the refusal does not name {} or {}: {msg}",
                c.key,
                c.alg,
                c.key_type()
            );
        }
        assert!(
            list_keys(&d).await?.is_empty(),
            "a refused key was recorded"
        );

        let supported = dev.caps.decrypt_supported();
        assert!(!supported.is_empty(), "the device decrypts with nothing");
        let mut requests = Vec::new();
        let mut expected = Vec::new();
        for (i, c) in supported.iter().enumerate() {
            let k = create_enc(&d, c.key, c.alg, c.rsa_bits, c.curve).await?;
            let v = &k.versions[0];
            assert!(
                v.uri.starts_with(&dev.uri_prefix()),
                "{}: {} does not start with {}",
                c.key,
                v.uri,
                dev.uri_prefix()
            );
            assert_eq!(v.key_type, c.key_type(), "{}", c.key);
            assert_eq!(v.r#use, "enc", "{}", c.key);
            // The devices' tools cannot read every public key: pkcs11-tool (OpenSC 0.23) no
            // P-384 one ("cannot create EVP_PKEY"), ykman (Debian 12's) no RSA-3072 one ("5
            // is not a valid KEY_TYPE"). Those keys' public halves are checked by the
            // decryption below.
            let pkcs11 = dev.uri_prefix().starts_with("pkcs11:");
            let tool_reads = if pkcs11 {
                c.curve != "P-384"
            } else {
                c.rsa_bits <= 2048
            };
            if tool_reads {
                assert_eq!(
                    dev.public_kid(&v.uri)?.as_deref(),
                    Some(v.kid.as_str()),
                    "{}: the device's own tool reads another public key",
                    c.key
                );
            }
            let jwk = published_enc_jwk(&d, c.key, c.alg).await?;
            let enc = if i % 2 == 0 {
                "A256GCM"
            } else {
                "A128CBC-HS256"
            };
            let mut plaintext = binary_plaintext(200 + i);
            plaintext.extend_from_slice(c.key.as_bytes());
            requests.push(encryption(
                &jwk,
                c.alg,
                enc,
                &plaintext,
                &json!({"kid": v.kid}),
            ));
            expected.push((c, enc, plaintext, v.kid.clone()));
        }
        let jwks = d.jwks().await?;
        let entries = jwks["keys"].as_array().ok_or("keys")?;
        assert_eq!(entries.len(), supported.len(), "{jwks}");
        assert!(entries.iter().all(|e| e["use"] == "enc"), "{jwks}");

        let jwes = Encrypter::Jwcrypto.encrypt_batch(&requests)?;
        let mut decrypted = 0;
        for ((c, enc, plaintext, kid), jwe) in expected.iter().zip(&jwes) {
            let r = decrypt(&d, c.key, jwe)
                .await
                .map_err(|e| format!("{} {enc}: {e}\n{}", c.key, d.log_text()))?;
            assert!(
                r.plaintext == *plaintext,
                "{} {enc}: the plaintext differs ({} bytes back, {} sent)",
                c.key,
                r.plaintext.len(),
                plaintext.len()
            );
            assert_eq!((r.alg.as_str(), r.enc.as_str()), (c.alg, *enc), "{}", c.key);
            assert_eq!(&r.kid, kid, "{}", c.key);
            // A tampered copy is refused, and the key still decrypts afterwards.
            let (code, msg) = code_of(decrypt(&d, c.key, &flip_bit(jwe, TAG, 0)?).await)?;
            assert_eq!(code, Code::InvalidArgument, "{} tampered: {msg}", c.key);
            assert!(msg.contains(REJECTED), "{} tampered: {msg}", c.key);
            decrypted += 1;
        }
        assert_eq!(decrypted, supported.len());
        for ((c, _, plaintext, _), jwe) in expected.iter().zip(&jwes) {
            assert!(
                decrypt(&d, c.key, jwe).await?.plaintext == *plaintext,
                "{}",
                c.key
            );
        }
        Ok(())
    }

    /// What the device's own tool shows of decryption keys: on a PKCS#11 token, an RSA enc
    /// key may decrypt and unwrap but not sign, an EC enc key may derive but not sign, and a
    /// signing key (beside them) may sign but neither decrypt, unwrap nor derive; on a YubiKey,
    /// enc keys sit in key-management slots (9d, 82–95). Either way the device's tool reads
    /// the public key sigild published.
    pub async fn decryption_key_attributes(dev: &Device) -> TestResult {
        use support::jwe::*;
        let d = dev.daemon("")?;
        let mut checked = 0;
        let enc_cases: Vec<DecryptCase> = dev
            .caps
            .decrypt_supported()
            .into_iter()
            .filter(|c| c.key == "rsa-oaep-256" || c.key == "ecdh-es-p256")
            .collect();
        for c in &enc_cases {
            let k = create_enc(&d, c.key, c.alg, c.rsa_bits, c.curve).await?;
            let v = &k.versions[0];
            assert_eq!(
                dev.public_kid(&v.uri)?.as_deref(),
                Some(v.kid.as_str()),
                "{}",
                c.key
            );
            match dev.key_attributes(&v.uri)? {
                KeyAttributes::Pkcs11Usage(usage) => {
                    let has = |u: &str| usage.contains(u);
                    assert!(!has("sign") && !has("signRecover"), "{}: {usage:?}", c.key);
                    if c.is_rsa() {
                        assert!(has("decrypt") && has("unwrap"), "{}: {usage:?}", c.key);
                    } else {
                        assert!(has("derive"), "{}: {usage:?}", c.key);
                    }
                }
                KeyAttributes::PivSlot(slot) => {
                    let key_management = slot == "9d"
                        || u8::from_str_radix(&slot, 16).is_ok_and(|n| (0x82..=0x95).contains(&n));
                    assert!(
                        key_management,
                        "{}: slot {slot} is not a key-management slot",
                        c.key
                    );
                }
            }
            checked += 1;
        }
        assert_eq!(
            checked,
            if dev.caps.lacks_decrypt.contains(&"ecdh-es-p256") {
                1
            } else {
                2
            },
            "enc keys checked"
        );
        let s = dev.caps.first_of(&["es256", "ps256"])?;
        let k = d.create("signer", s.alg, s.rsa_bits).await?;
        if let KeyAttributes::Pkcs11Usage(usage) = dev.key_attributes(&k.versions[0].uri)? {
            assert!(usage.contains("sign"), "signer: {usage:?}");
            for u in ["decrypt", "unwrap", "derive"] {
                assert!(!usage.contains(u), "signer may {u}: {usage:?}");
            }
        }
        Ok(())
    }

    /// PKCS#8 DER of a private JWK, converted by jwcrypto / cryptography.
    fn pkcs8_der(jwk: &Value) -> TestResult<Vec<u8>> {
        let r = python(&json!({"op": "pkcs8", "jwk": jwk}))?;
        Ok(sigild::jose::b64_decode(
            r["der_b64"].as_str().ok_or("der_b64")?,
        )?)
    }

    /// RFC 8037 A.1: the Ed25519 key whose signature A.4 prints.
    fn rfc8037_ed25519() -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"})
    }

    /// RFC 7515 A.2: the RS256 key (n, e, d; the verifier recovers the CRT parameters).
    fn rfc7515_rsa() -> Value {
        json!({"kty":"RSA",
            "n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ",
            "e":"AQAB",
            "d":"Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTeXZx9SE-7YwVol2NXOoAJe46sui395IW_GO-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3Mkqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBjudU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p1DhOVRuOopznQ"})
    }

    /// RFC 7515 A.3: the ES256 key (ECDSA is randomised, so the signature is verified instead).
    fn rfc7515_ec() -> Value {
        json!({"kty":"EC","crv":"P-256",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0",
            "d":"jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI"})
    }
}
