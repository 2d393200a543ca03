//! Signing through the real daemon on a real SoftHSM token, every algorithm and profile checked
//! by verifiers sigild did not write (Python jwcrypto / cryptography), plus RFC vectors.

mod support;

use serde_json::{Value, json};
use sigild::api::pb;
use support::*;

const ALGS: [(&str, &str, u32); 8] = [
    ("es256", "ES256", 0),
    ("es384", "ES384", 0),
    ("ps256", "PS256", 0),
    ("ps256-3072", "PS256", 3072),
    ("ps384-4096", "PS384", 4096),
    ("rs256", "RS256", 0),
    ("eddsa", "EdDSA", 0),
    ("ed25519", "Ed25519", 0),
];

#[tokio::test]
async fn every_alg_signs_jws_and_raw_that_independent_verifiers_accept() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    for (name, alg, bits) in ALGS {
        d.create(name, alg, bits).await?;
    }
    let jwks = d.jwks().await?;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(ALGS.len()));
    let mut signer = d.signer().await?;
    for (name, alg, _) in ALGS {
        // Generic JWS with caller-chosen bytes: odd spacing and member order must survive.
        let header = format!("{{ \"typ\":\"JWT\",  \"alg\" : \"{alg}\" }}");
        let payload = br#"{"sub":"alice",   "n":[1,2,3]}"#.to_vec();
        let r = signer
            .sign_jws(pb::SignJwsRequest {
                key: name.into(),
                protected_header: header.clone().into_bytes(),
                payload: payload.clone(),
            })
            .await?
            .into_inner();
        assert!(
            r.compact
                .starts_with(&format!("{}.{}.", b64(header.as_bytes()), b64(&payload))),
            "{name}: bytes re-encoded"
        );
        // No kid in this header: verify with this key's entry from the published JWKS.
        let v =
            verify_jws_with_kid(&r.compact, &r.kid, &jwks).map_err(|e| format!("{name}: {e}"))?;
        assert_eq!(v["header"]["alg"], alg);
        assert_eq!(
            v["thumbprint"], r.kid,
            "{name}: kid is the RFC 7638 thumbprint (per jwcrypto)"
        );

        // Raw signature over arbitrary bytes, JOSE encoding.
        sign_raw_verified(&d, name, format!("raw input for {name}").as_bytes()).await?;
    }
    // An RSA key can serve RS256 for a TLS 1.2 peer even when its JOSE alg is PS256.
    let data = b"tls 1.2 transcript".to_vec();
    let raw = signer
        .sign_raw(pb::SignRawRequest {
            key: "ps256".into(),
            data: data.clone(),
            alg: "RS256".into(),
        })
        .await?
        .into_inner();
    let key = d
        .keys()
        .await?
        .get_key(pb::GetKeyRequest {
            name: "ps256".into(),
        })
        .await?
        .into_inner();
    verify_raw("RS256", &active_jwk(&key)?, &data, &raw.signature)?;
    Ok(())
}

#[tokio::test]
async fn profiles_carry_what_the_rfcs_require() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    d.create("idp", "PS256", 0).await?;
    d.create("client", "ES256", 0).await?;
    d.create("dpop", "EdDSA", 0).await?;
    let jwks = d.jwks().await?;
    let mut s = d.signer().await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;

    // ID token (OIDC Core), at_hash/c_hash = left half of SHA-256 for PS256.
    let r = s
        .sign_id_token(pb::SignIdTokenRequest {
            key: "idp".into(),
            claims_json: json!({"iss": "https://op.example.com", "sub": "248289761001", "aud": "s6BhdRkqt3", "nonce": "n-0S6_WzA2Mj"}).to_string(),
            lifetime_seconds: 600,
            access_token: "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y".into(),
            code: "Qcb0Orv1zh30vL1MPRsbm-diHiMwcLyZvn1arpZv-Jxf_11jnpEX3Tgfvk".into(),
        })
        .await?
        .into_inner();
    let v = verify_jws(&r.compact, &jwks)?;
    let (h, c) = (&v["header"], &v["payload"]);
    assert_eq!(h["kid"], r.kid);
    assert_eq!(c["at_hash"], "77QmUPtjPfzWtF2AnpK9RQ");
    assert_eq!(c["c_hash"], "LDktKdoQak3Pk0cnXxCltA");
    assert_eq!(c["nonce"], "n-0S6_WzA2Mj");
    let iat = c["iat"].as_i64().ok_or("iat")?;
    assert!((iat - now).abs() <= 5);
    assert_eq!(c["exp"].as_i64(), Some(iat + 600));

    // JAR request object (RFC 9101).
    let r = s
        .sign_request_object(pb::SignRequestObjectRequest {
            key: "client".into(),
            client_id: "client-a".into(),
            audience: "https://as.example.com".into(),
            claims_json: json!({"response_type": "code", "redirect_uri": "https://client.example.org/cb", "scope": "openid", "state": "af0ifjsldkj", "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256"}).to_string(),
            lifetime_seconds: 0,
        })
        .await?
        .into_inner();
    let v = verify_jws(&r.compact, &jwks)?;
    assert_eq!(v["header"]["typ"], "oauth-authz-req+jwt");
    let c = &v["payload"];
    assert_eq!(c["iss"], "client-a");
    assert_eq!(c["client_id"], "client-a");
    assert_eq!(c["aud"], "https://as.example.com");
    let (nbf, exp) = (
        c["nbf"].as_i64().ok_or("nbf")?,
        c["exp"].as_i64().ok_or("exp")?,
    );
    assert!(exp - nbf > 0 && exp - nbf <= 3600);
    assert!(c["jti"].as_str().is_some_and(|j| j.len() >= 16));

    // private_key_jwt client assertion (RFC 7523): aud is one string, iss = sub.
    let a = s
        .sign_client_assertion(pb::SignClientAssertionRequest {
            key: "client".into(),
            client_id: "client-a".into(),
            audience: "https://as.example.com".into(),
            lifetime_seconds: 0,
        })
        .await?
        .into_inner();
    let b = s
        .sign_client_assertion(pb::SignClientAssertionRequest {
            key: "client".into(),
            client_id: "client-a".into(),
            audience: "https://as.example.com".into(),
            lifetime_seconds: 0,
        })
        .await?
        .into_inner();
    let c = verify_jws(&a.compact, &jwks)?["payload"].clone();
    assert_eq!(c["iss"], "client-a");
    assert_eq!(c["sub"], "client-a");
    assert!(c["aud"].is_string());
    assert_eq!(
        c["exp"].as_i64().ok_or("exp")? - c["iat"].as_i64().ok_or("iat")?,
        60
    );
    assert_ne!(
        c["jti"],
        decode(&b.compact)?.1["jti"],
        "every assertion gets a fresh jti"
    );

    // DPoP proof (RFC 9449): verifies with the header's own jwk, which has no private parts.
    let p = s
        .sign_dpop_proof(pb::SignDpopProofRequest {
            key: "dpop".into(),
            htm: "POST".into(),
            htu: "https://server.example.com/token?x=1#frag".into(),
            access_token: "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU".into(),
            nonce: "eyJ7S_zG.eyJH0-Z.HX4w-7v".into(),
        })
        .await?
        .into_inner();
    let v = python(&json!({"op": "jws", "jws": p.compact, "header_jwk": true}))?;
    let (h, c) = (&v["header"], &v["payload"]);
    assert_eq!(h["typ"], "dpop+jwt");
    assert_eq!(h["alg"], "EdDSA");
    assert!(h["jwk"].get("d").is_none());
    assert_eq!(
        v["thumbprint"], p.kid,
        "dpop_jkt = RFC 7638 thumbprint = kid"
    );
    assert_eq!(c["htm"], "POST");
    assert_eq!(c["htu"], "https://server.example.com/token");
    assert_eq!(c["ath"], "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo");
    assert_eq!(c["nonce"], "eyJ7S_zG.eyJH0-Z.HX4w-7v");
    Ok(())
}

/// Import a private JWK from an RFC as PKCS#8 (converted by jwcrypto, not by us).
async fn import_rfc_key(d: &Daemon, name: &str, alg: &str, jwk: Value) -> TestResult<pb::Key> {
    let pem = python(&json!({"op": "pkcs8", "jwk": jwk}))?["pem"]
        .as_str()
        .ok_or("pem")?
        .to_owned();
    let path = std::env::temp_dir().join(format!("sigild-test-{}-{name}.pem", std::process::id()));
    std::fs::write(&path, &pem)?;
    let der = sigild::client::read_pkcs8(&path)?;
    std::fs::remove_file(&path)?;
    let req = pb::ImportKeyRequest {
        name: name.into(),
        alg: alg.into(),
        pkcs8_der: der.to_vec(),
        fapi2: false,
    };
    Ok(d.keys().await?.import_key(req).await?.into_inner())
}

#[tokio::test]
async fn rfc_vectors_match_byte_for_byte() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let mut s = d.signer().await?;

    // RFC 8037 A.4: Ed25519 is deterministic.
    let k = import_rfc_key(
        &d,
        "rfc8037",
        "EdDSA",
        json!({"kty": "OKP", "crv": "Ed25519", "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}),
    )
    .await?;
    // RFC 8037 A.3 thumbprint.
    assert_eq!(
        k.versions[0].kid,
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    );
    assert_eq!(k.versions[0].origin, "imported");
    let r = s
        .sign_jws(pb::SignJwsRequest {
            key: "rfc8037".into(),
            protected_header: br#"{"alg":"EdDSA"}"#.to_vec(),
            payload: b"Example of Ed25519 signing".to_vec(),
        })
        .await?
        .into_inner();
    assert_eq!(
        r.compact,
        "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    );

    // RFC 7515 A.2: RS256 is deterministic too.
    // The RFC's n, e and d; the verifier recovers the CRT parameters (jwcrypto/cryptography).
    let rsa = json!({"kty":"RSA",
        "n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ",
        "e":"AQAB",
        "d":"Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTeXZx9SE-7YwVol2NXOoAJe46sui395IW_GO-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3Mkqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBjudU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p1DhOVRuOopznQ"});
    let k = import_rfc_key(&d, "rfc7515", "RS256", rsa.clone()).await?;
    let expected_kid = python(
        &json!({"op": "thumbprint", "jwk": {"kty": "RSA", "n": rsa["n"], "e": "AQAB"}}),
    )?["thumbprint"]
        .clone();
    assert_eq!(json!(k.versions[0].kid), expected_kid);
    let payload =
        b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}"
            .to_vec();
    let r = s
        .sign_jws(pb::SignJwsRequest {
            key: "rfc7515".into(),
            protected_header: br#"{"alg":"RS256"}"#.to_vec(),
            payload,
        })
        .await?
        .into_inner();
    assert_eq!(
        r.signature,
        "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw"
    );
    Ok(())
}
