//! The tokens an authorization server issues beyond the ID token, and the client's CIBA request,
//! end to end through a live daemon: RFC 9068 access tokens (plain, `cnf.jkt` from a DPoP JWK
//! or jkt, `cnf.x5t#S256` from a client certificate), back-channel logout tokens, CIBA signed
//! authentication requests, and the client assertion's `typ` / `nbf` options — over gRPC and
//! through `sigild sign …`. Every token is verified by jwcrypto against the daemon's JWKS, its
//! `typ` and required claims checked, its `cnf` recomputed by jwcrypto / `cryptography`; and
//! the profiles' refusals come back as INVALID_ARGUMENT with a message that names the problem.
//!
//! One daemon for the file: nothing here depends on isolation.

mod support;

use serde_json::{Value, json};
use sigild::api::pb;
use support::*;
use tonic::Code;

/// The RFC 7638 §3.1 example key, as a client's DPoP public key.
fn dpop_jwk() -> Value {
    json!({"kty": "RSA", "e": "AQAB",
           "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"})
}

/// Queue `compact` for jwcrypto's verification against the daemon's JWKS (all at the end of the
/// test, in one batch) and check its `typ` (None: no `typ` header), that it names `kid`, and
/// that `exp − iat` is `lifetime` with `iat` from the daemon's clock. Returns the claims.
fn verified(
    batch: &mut JwsBatch,
    compact: &str,
    kid: &str,
    typ: Option<&str>,
    lifetime: i64,
) -> TestResult<Value> {
    let (header, claims) = batch.push(compact, kid)?;
    assert_eq!(header["kid"], kid, "{header}");
    assert_eq!(header.get("typ").and_then(Value::as_str), typ, "{header}");
    let iat = claims["iat"].as_i64().ok_or("iat")?;
    assert!(
        (iat - now()?).abs() <= 60,
        "iat {iat} is not the daemon's now"
    );
    assert_eq!(claims["exp"].as_i64().ok_or("exp")? - iat, lifetime);
    let jti = claims["jti"].as_str().unwrap_or_default();
    assert!(jti.len() >= 22, "jti {jti:?}");
    Ok(claims)
}

fn at_request(key: &str) -> pb::SignAccessTokenRequest {
    pb::SignAccessTokenRequest {
        key: key.into(),
        issuer: "https://as.example.com".into(),
        audience: vec!["https://rs.example.com".into()],
        subject: "5ba552d67".into(),
        client_id: "s6BhdRkqt3".into(),
        scope: "openid profile".into(),
        claims_json: json!({"auth_time": 1_700_000_000, "acr": "urn:mace:incommon:iap:silver"})
            .to_string(),
        ..Default::default()
    }
}

fn logout_request(key: &str) -> pb::SignLogoutTokenRequest {
    pb::SignLogoutTokenRequest {
        key: key.into(),
        issuer: "https://server.example.com".into(),
        audience: "s6BhdRkqt3".into(),
        subject: "248289761001".into(),
        sid: "08a5019c-17e1-4977-8f42-65a12843ea02".into(),
        ..Default::default()
    }
}

fn ciba_request(key: &str) -> pb::SignCibaRequestRequest {
    pb::SignCibaRequestRequest {
        key: key.into(),
        client_id: "s6BhdRkqt3".into(),
        audience: "https://server.example.com".into(),
        claims_json: json!({"scope": "openid email", "login_hint": "+1-555-0100-alice",
                            "binding_message": "W4SCT",
                            "client_notification_token": "8d67dc78-7faa-4d41-aabd-67707b374255"})
        .to_string(),
        lifetime_seconds: 0,
    }
}

#[tokio::test]
async fn issued_tokens_verify_and_refusals_are_clear() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let es = d.create("as-es", "ES256", 0).await?;
    let ed = d.create("op-ed", "EdDSA", 0).await?;
    let ps = d.create("client-ps", "PS256", 2048).await?;
    let kid = |k: &pb::Key| -> TestResult<String> {
        Ok(active_jwk(k)?["kid"].as_str().ok_or("kid")?.to_owned())
    };
    let (es_kid, ed_kid, ps_kid) = (kid(&es)?, kid(&ed)?, kid(&ps)?);
    let jwks = d.jwks().await?;
    let mut s = d.signer().await?;
    let mut batch = JwsBatch::default();

    // --- RFC 9068 access token, not sender-constrained, one audience.
    let r = s.sign_access_token(at_request("as-es")).await?.into_inner();
    let c = verified(&mut batch, &r.compact, &es_kid, Some("at+jwt"), 300)?;
    assert_eq!(c["iss"], "https://as.example.com");
    assert_eq!(c["aud"], "https://rs.example.com");
    assert_eq!(c["sub"], "5ba552d67");
    assert_eq!(c["client_id"], "s6BhdRkqt3");
    assert_eq!(c["scope"], "openid profile");
    assert_eq!(c["acr"], "urn:mace:incommon:iap:silver");
    assert!(c.get("cnf").is_none(), "{c}");

    // DPoP-bound from the client's public JWK: cnf.jkt is jwcrypto's thumbprint of it.
    let mut req = at_request("as-es");
    req.dpop_jwk_json = dpop_jwk().to_string();
    req.audience.push("https://rs2.example.com".into());
    req.lifetime_seconds = 3600;
    let r = s.sign_access_token(req).await?.into_inner();
    let c = verified(&mut batch, &r.compact, &es_kid, Some("at+jwt"), 3600)?;
    let jkt = thumbprint_of(&dpop_jwk())?;
    assert_eq!(c["cnf"], json!({"jkt": jkt}));
    assert_eq!(
        c["aud"],
        json!(["https://rs.example.com", "https://rs2.example.com"])
    );

    // DPoP-bound from the jkt itself (here: a DPoP key that lives on sigild, whose kid is it).
    let mut req = at_request("op-ed");
    req.dpop_jkt = es_kid.clone();
    let r = s.sign_access_token(req).await?.into_inner();
    let c = verified(&mut batch, &r.compact, &ed_kid, Some("at+jwt"), 300)?;
    assert_eq!(c["cnf"], json!({"jkt": es_kid}));
    assert_eq!(c["cnf"]["jkt"], thumbprint_of(&active_jwk(&es)?)?);

    // Certificate-bound: cnf.x5t#S256 is cryptography's SHA-256 fingerprint of the DER.
    let leaf = token.pki.ca.client(&sigild::tls::ClientNames {
        cn: Some("mtls-client".into()),
        ..Default::default()
    })?;
    let der = sigild::tls::pem_certificates(leaf.cert_pem.as_bytes())
        .pop()
        .ok_or("no certificate")?;
    let x5t = x5t_s256_of_pem(&leaf.cert_pem)?;
    let mut req = at_request("client-ps");
    req.client_certificate = der.clone();
    let r = s.sign_access_token(req).await?.into_inner();
    let c = verified(&mut batch, &r.compact, &ps_kid, Some("at+jwt"), 300)?;
    assert_eq!(c["cnf"], json!({"x5t#S256": x5t}));

    // --- Back-channel logout token.
    let r = s
        .sign_logout_token(logout_request("op-ed"))
        .await?
        .into_inner();
    let c = verified(&mut batch, &r.compact, &ed_kid, Some("logout+jwt"), 120)?;
    assert_eq!(c["iss"], "https://server.example.com");
    assert_eq!(c["aud"], "s6BhdRkqt3");
    assert_eq!(c["sub"], "248289761001");
    assert_eq!(c["sid"], "08a5019c-17e1-4977-8f42-65a12843ea02");
    assert_eq!(
        c["events"],
        json!({"http://schemas.openid.net/event/backchannel-logout": {}})
    );
    assert!(c.get("nonce").is_none());
    let mut req = logout_request("op-ed");
    req.subject.clear();
    req.lifetime_seconds = 600;
    let r = s.sign_logout_token(req).await?.into_inner();
    let c = verified(&mut batch, &r.compact, &ed_kid, Some("logout+jwt"), 600)?;
    assert!(c.get("sub").is_none() && c["sid"].is_string(), "{c}");

    // --- CIBA signed authentication request.
    let r = s
        .sign_ciba_request(ciba_request("client-ps"))
        .await?
        .into_inner();
    let c = verified(&mut batch, &r.compact, &ps_kid, None, 300)?;
    assert_eq!(c["iss"], "s6BhdRkqt3");
    assert_eq!(c["aud"], "https://server.example.com");
    assert_eq!(c["nbf"], c["iat"]);
    assert_eq!(c["scope"], "openid email");
    assert_eq!(c["binding_message"], "W4SCT");

    // --- Client assertion: explicit typ and nbf on request, neither by default.
    let assertion = |explicit_typ, nbf| pb::SignClientAssertionRequest {
        key: "client-ps".into(),
        client_id: "s6BhdRkqt3".into(),
        audience: "https://server.example.com".into(),
        lifetime_seconds: 0,
        explicit_typ,
        nbf,
    };
    let r = s
        .sign_client_assertion(assertion(true, true))
        .await?
        .into_inner();
    let c = verified(
        &mut batch,
        &r.compact,
        &ps_kid,
        Some("client-authentication+jwt"),
        60,
    )?;
    assert_eq!(c["nbf"], c["iat"]);
    assert_eq!(c["sub"], "s6BhdRkqt3");
    let r = s
        .sign_client_assertion(assertion(false, false))
        .await?
        .into_inner();
    let c = verified(&mut batch, &r.compact, &ps_kid, None, 60)?;
    assert!(c.get("nbf").is_none(), "{c}");

    // --- Refusals: INVALID_ARGUMENT, saying what to fix, never echoing the caller's values.
    let mut refusals: Vec<(&str, Result<pb::SignJwsResponse, tonic::Status>, &str)> = Vec::new();
    let mut req = logout_request("op-ed");
    req.claims_json = json!({"nonce": "n-0S6_WzA2Mj"}).to_string();
    refusals.push((
        "logout with nonce",
        s.sign_logout_token(req).await.map(|r| r.into_inner()),
        "\"nonce\" is not allowed in a logout token",
    ));
    let mut req = logout_request("op-ed");
    req.subject.clear();
    req.sid.clear();
    refusals.push((
        "logout without sub or sid",
        s.sign_logout_token(req).await.map(|r| r.into_inner()),
        "\"sub\" or \"sid\" is required",
    ));
    let mut req = logout_request("op-ed");
    req.lifetime_seconds = 601;
    refusals.push((
        "logout lifetime over 600 s",
        s.sign_logout_token(req).await.map(|r| r.into_inner()),
        "outside the allowed 1..=600 s",
    ));
    let mut req = at_request("as-es");
    req.dpop_jkt = es_kid.clone();
    req.client_certificate = der.clone();
    refusals.push((
        "access token with two sender constraints",
        s.sign_access_token(req).await.map(|r| r.into_inner()),
        "\"cnf\" takes one sender constraint",
    ));
    let mut req = at_request("as-es");
    req.dpop_jwk_json = dpop_jwk().to_string();
    req.dpop_jkt = es_kid.clone();
    refusals.push((
        "access token with a DPoP JWK and a jkt",
        s.sign_access_token(req).await.map(|r| r.into_inner()),
        "\"cnf\" takes one sender constraint",
    ));
    let mut req = at_request("as-es");
    req.lifetime_seconds = 3601;
    refusals.push((
        "access token lifetime over an hour",
        s.sign_access_token(req).await.map(|r| r.into_inner()),
        "outside the allowed 1..=3600 s",
    ));
    let mut req = at_request("as-es");
    req.claims_json = json!({"cnf": {"jkt": "made-up"}}).to_string();
    refusals.push((
        "access token with a caller-made cnf",
        s.sign_access_token(req).await.map(|r| r.into_inner()),
        "claim \"cnf\" is set by sigild",
    ));
    let mut req = at_request("as-es");
    req.client_certificate = leaf.cert_pem.clone().into_bytes();
    refusals.push((
        "access token with a PEM certificate",
        s.sign_access_token(req).await.map(|r| r.into_inner()),
        "\"client_certificate\" must be one X.509 certificate in DER",
    ));
    let mut req = ciba_request("client-ps");
    req.lifetime_seconds = 3601;
    refusals.push((
        "CIBA lifetime over 60 minutes",
        s.sign_ciba_request(req).await.map(|r| r.into_inner()),
        "outside the allowed 1..=3600 s",
    ));
    let mut req = ciba_request("client-ps");
    req.claims_json =
        json!({"scope": "openid", "login_hint": "+1-555-0100-alice", "nbf": 1}).to_string();
    refusals.push((
        "CIBA with a caller's nbf",
        s.sign_ciba_request(req).await.map(|r| r.into_inner()),
        "claim \"nbf\" is set by sigild",
    ));
    let mut req = ciba_request("client-ps");
    req.claims_json = json!({"scope": "openid"}).to_string();
    refusals.push((
        "CIBA without a hint",
        s.sign_ciba_request(req).await.map(|r| r.into_inner()),
        "exactly one of the three is required",
    ));
    let mut req = assertion(true, false);
    req.lifetime_seconds = 301;
    refusals.push((
        "client assertion lifetime over 300 s",
        s.sign_client_assertion(req).await.map(|r| r.into_inner()),
        "outside the allowed 1..=300 s",
    ));
    for (what, result, says) in refusals {
        let (code, message) = code_of(result)?;
        assert_eq!(code, Code::InvalidArgument, "{what}: {message}");
        assert!(message.contains(says), "{what}: {message}");
        for secret in [
            "n-0S6_WzA2Mj",
            "248289761001",
            "08a5019c-17e1",
            "made-up",
            "alice",
        ] {
            assert!(!message.contains(secret), "{what}: {message}");
        }
    }

    // --- The same profiles through the CLI.
    let cert_file = token.dir.path().join("mtls-client.pem");
    std::fs::write(&cert_file, &leaf.cert_pem)?;
    let out = cli_ok(
        &d,
        &[
            "sign",
            "access-token",
            "--key",
            "as-es",
            "--issuer",
            "https://as.example.com",
            "--audience",
            "https://rs.example.com",
            "--audience",
            "https://rs2.example.com",
            "--subject",
            "5ba552d67",
            "--client-id",
            "s6BhdRkqt3",
            "--scope",
            "read",
            "--lifetime",
            "600",
            "--client-cert",
            cert_file.to_str().ok_or("path")?,
        ],
    )?;
    let c = verified(&mut batch, &out, &es_kid, Some("at+jwt"), 600)?;
    assert_eq!(c["cnf"]["x5t#S256"], x5t);
    assert_eq!(c["scope"], "read");

    let jwk_file = token.dir.path().join("dpop.jwk");
    std::fs::write(&jwk_file, dpop_jwk().to_string())?;
    let out = cli_ok(
        &d,
        &[
            "sign",
            "access-token",
            "--key",
            "as-es",
            "--issuer",
            "https://as.example.com",
            "--audience",
            "https://rs.example.com",
            "--subject",
            "5ba552d67",
            "--client-id",
            "s6BhdRkqt3",
            "--dpop-jwk-file",
            jwk_file.to_str().ok_or("path")?,
        ],
    )?;
    let c = verified(&mut batch, &out, &es_kid, Some("at+jwt"), 300)?;
    assert_eq!(c["cnf"], json!({"jkt": jkt}));

    let out = cli_ok(
        &d,
        &[
            "sign",
            "logout",
            "--key",
            "op-ed",
            "--issuer",
            "https://server.example.com",
            "--audience",
            "s6BhdRkqt3",
            "--subject",
            "248289761001",
        ],
    )?;
    let c = verified(&mut batch, &out, &ed_kid, Some("logout+jwt"), 120)?;
    assert_eq!(c["sub"], "248289761001");
    assert!(c.get("sid").is_none());

    let claims_file = token.dir.path().join("ciba.json");
    std::fs::write(&claims_file, ciba_request("client-ps").claims_json)?;
    let out = cli_ok(
        &d,
        &[
            "sign",
            "ciba",
            "--key",
            "client-ps",
            "--client-id",
            "s6BhdRkqt3",
            "--audience",
            "https://server.example.com",
            "--claims-file",
            claims_file.to_str().ok_or("path")?,
            "--lifetime",
            "3600",
        ],
    )?;
    let c = verified(&mut batch, &out, &ps_kid, None, 3600)?;
    assert_eq!(
        c["client_notification_token"],
        "8d67dc78-7faa-4d41-aabd-67707b374255"
    );

    let out = cli_ok(
        &d,
        &[
            "sign",
            "client-assertion",
            "--key",
            "client-ps",
            "--client-id",
            "s6BhdRkqt3",
            "--audience",
            "https://server.example.com",
            "--explicit-typ",
            "--nbf",
        ],
    )?;
    let c = verified(
        &mut batch,
        &out,
        &ps_kid,
        Some("client-authentication+jwt"),
        60,
    )?;
    assert_eq!(c["nbf"], c["iat"]);

    // The CLI's refusal: the daemon's code and message on stderr, a non-zero exit.
    let out = d.cli(
        &[
            "sign",
            "logout",
            "--key",
            "op-ed",
            "--issuer",
            "https://server.example.com",
            "--audience",
            "s6BhdRkqt3",
            "--subject",
            "248289761001",
            "--claims-json",
            r#"{"nonce":"n-0S6_WzA2Mj"}"#,
        ],
        None,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("INVALID_ARGUMENT") && stderr.contains("\"nonce\" is not allowed"),
        "{stderr}"
    );

    // Every token above, verified by jwcrypto against the daemon's published keys.
    assert_eq!(batch.verify(&jwks)?, 14);
    Ok(())
}

/// Run `sigild` with `args` against `d`; its trimmed stdout, or the failure with stderr.
fn cli_ok(d: &Daemon, args: &[&str]) -> TestResult<String> {
    let out = d.cli(args, None)?;
    if !out.status.success() {
        return Err(format!(
            "{args:?}: exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?.trim_end().to_owned())
}
