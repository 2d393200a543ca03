//! Typ-aware policy and key bindings through the real daemon: callers are held to the token
//! types their rules grant (a generic `SignJws` whose `typ` a profile owns needs that token
//! type too), keys bound to token types sign nothing else whoever asks (the admin included, and
//! on the raw path too), `tls` signs TLS 1.3 handshakes only and never a JWS signing input,
//! bindings live in the key's records on the token (carried across rotation, read again after
//! a restart, absent from an unbound key's record so older releases still read it), the CLI
//! sets and lists them, and the audit trail names the token type each signature made.
//!
//! Every signature that is released is verified with jwcrypto or Python `cryptography`.

mod support;

use serde_json::{Value, json};
use sigild::api::pb;
use support::*;
use tonic::Code;

/// The OP: ID tokens and logout tokens, and generic JWS, on `idp-*` and `as-*` keys.
const OP: &str = "op";
/// The authorization server: access tokens, and generic JWS without `typ` or `JWT` only.
const AS: &str = "as";
/// A TLS client: `tls` only.
const TLS: &str = "tls";

fn rules() -> String {
    format!(
        "[[caller]]\nidentity = \"spiffe://sigild.test/{OP}\"\nkeys = [\"idp-*\", \"as-*\"]\noperations = [\"id-token\", \"logout\", \"jws\"]\n\n\
         [[caller]]\nidentity = \"spiffe://sigild.test/{AS}\"\nkeys = [\"as-*\"]\noperations = [\"access-token\", \"jws\"]\njws_typs = [\"\", \"JWT\", \"at+jwt\"]\n\n\
         [[caller]]\nidentity = \"spiffe://sigild.test/{TLS}\"\nkeys = [\"tls-*\"]\noperations = [\"tls\"]\n\n\
         [audit]\nstdout = true\n"
    )
}

/// A JWS header for `key`'s active version with `typ` (none when `None`).
async fn header(d: &Daemon, key: &str, typ: Option<&str>) -> TestResult<Vec<u8>> {
    let info = get_key(d, key).await?;
    let v = info
        .versions
        .iter()
        .find(|v| v.version == info.active_version)
        .ok_or("no active version")?;
    let mut h = json!({"alg": v.alg, "kid": v.kid});
    if let Some(t) = typ {
        h["typ"] = json!(t);
    }
    Ok(h.to_string().into_bytes())
}

async fn jws_as(
    d: &Daemon,
    who: &ClientFiles,
    key: &str,
    typ: Option<&str>,
    payload: &Value,
) -> TestResult<Result<pb::SignJwsResponse, tonic::Status>> {
    let header = header(d, key, typ).await?;
    Ok(d.signer_as(who)
        .await?
        .sign_jws(pb::SignJwsRequest {
            version: 0,
            key: key.into(),
            protected_header: header,
            payload: payload.to_string().into_bytes(),
        })
        .await
        .map(tonic::Response::into_inner))
}

fn access_token_claims() -> Value {
    json!({
        "iss": "https://as.example.com",
        "aud": "https://rs.example.com",
        "sub": "alice",
        "client_id": "client-a",
        "iat": 1_700_000_000,
        "exp": 4_000_000_000_u64,
        "jti": "j1",
    })
}

/// The last audit record of the request whose jti is `jti` and whose `key` is `value`.
async fn audit_of(d: &Daemon, jti: &str, key: &str, value: &str) -> TestResult<Value> {
    let matches = |r: &Value| r["jti"] == json!(jti) && r[key] == json!(value);
    let records = audit_until(d, |rs| rs.iter().any(matches)).await?;
    records
        .into_iter()
        .rev()
        .find(matches)
        .ok_or_else(|| format!("no audit record of {jti}").into())
}

/// The TLS 1.3 content a client's CertificateVerify signs, over a SHA-256 transcript hash.
fn certificate_verify_content() -> Vec<u8> {
    let mut m = vec![0x20; 64];
    m.extend_from_slice(b"TLS 1.3, client CertificateVerify\0");
    m.extend_from_slice(&[0xab; 32]);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_are_held_to_their_token_types() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start_with(&token, &rules())?;
    d.create("idp-signing", "ES256", 0).await?;
    d.create("as-signing", "ES256", 0).await?;
    let (op, as_) = (token.pki.caller(OP)?, token.pki.caller(AS)?);
    let jwks = d.jwks().await?;

    // The OP may sign generic JWS, but not one that claims to be an access token: it has no
    // access-token grant. Neither spelling of the media type gets through.
    for typ in ["at+jwt", "application/AT+JWT"] {
        let (code, msg) =
            code_of(jws_as(&d, &op, "idp-signing", Some(typ), &access_token_claims()).await?)?;
        assert_eq!(code, Code::PermissionDenied, "{msg}");
        assert!(
            msg.contains("that typ marks access-token tokens")
                && msg.contains("spiffe://sigild.test/op"),
            "{msg}"
        );
    }
    let audit = audit_of(&d, "j1", "typ", "application/AT+JWT").await?;
    assert_eq!(audit["decision"], "deny", "{audit}");
    assert_eq!(audit["operation"], "jws", "{audit}");
    assert_eq!(audit["token_type"], "access-token", "{audit}");
    assert_eq!(audit["typ"], "application/AT+JWT", "{audit}");

    // Other typ values are the generic JWS's own business.
    let plain = jws_as(&d, &op, "idp-signing", Some("JWT"), &json!({"iss": "x"})).await??;
    verify_jws(&plain.compact, &jwks)?;
    // A logout+jwt through jws: the OP has logout, so it may.
    let logout = json!({"iss": "https://op.example.com", "aud": "rp", "sid": "s1", "jti": "l1",
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
    let signed = jws_as(&d, &op, "idp-signing", Some("logout+jwt"), &logout).await??;
    let v = verify_jws(&signed.compact, &jwks)?;
    assert_eq!(v["header"]["typ"], "logout+jwt");
    assert_eq!(
        audit_of(&d, "l1", "decision", "allow").await?["token_type"],
        "logout"
    );

    // The AS has access-token on as-* keys: its at+jwt verifies with jwcrypto.
    let mut claims = access_token_claims();
    claims["jti"] = json!("j2");
    let at = jws_as(&d, &as_, "as-signing", Some("at+jwt"), &claims).await??;
    let v = verify_jws(&at.compact, &jwks)?;
    assert_eq!(v["header"]["typ"], "at+jwt");
    assert_eq!(v["payload"]["client_id"], "client-a");
    let audit = audit_of(&d, "j2", "decision", "allow").await?;
    assert_eq!(
        (&audit["decision"], &audit["token_type"]),
        (&json!("allow"), &json!("access-token")),
        "{audit}"
    );
    // Its jws_typs list: "", JWT and at+jwt, nothing else.
    assert!(
        jws_as(&d, &as_, "as-signing", None, &json!({}))
            .await?
            .is_ok()
    );
    let (code, msg) =
        code_of(jws_as(&d, &as_, "as-signing", Some("secevent+jwt"), &json!({})).await?)?;
    assert_eq!(code, Code::PermissionDenied, "{msg}");
    assert!(msg.contains("generic JWS of typ \"secevent+jwt\""), "{msg}");
    // A typ that is not a string is malformed, not a policy question.
    let (code, _) = code_of(
        d.signer_as(&as_)
            .await?
            .sign_jws(pb::SignJwsRequest {
                version: 0,
                key: "as-signing".into(),
                protected_header: br#"{"alg":"ES256","typ":["at+jwt"]}"#.to_vec(),
                payload: b"{}".to_vec(),
            })
            .await,
    )?;
    assert_eq!(code, Code::InvalidArgument);

    // A caller without the token type is refused the profile itself.
    let (code, msg) = code_of(
        d.signer_as(&as_)
            .await?
            .sign_id_token(pb::SignIdTokenRequest {
                key: "as-signing".into(),
                claims_json: r#"{"iss":"https://as.example.com","sub":"a","aud":"c"}"#.into(),
                ..Default::default()
            })
            .await,
    )?;
    assert_eq!(code, Code::PermissionDenied, "{msg}");
    assert!(msg.contains("not allowed to id-token"), "{msg}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_signs_handshakes_and_never_a_jws_input() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start_with(&token, &rules())?;
    let key = d.create("tls-client", "ES256", 0).await?;
    let tls = token.pki.caller(TLS)?;
    let mut s = d.signer_as(&tls).await?;

    let content = certificate_verify_content();
    let sig = s
        .sign_tls_handshake(pb::SignTlsHandshakeRequest {
            key: "tls-client".into(),
            message: content.clone(),
            alg: "ES256".into(),
        })
        .await?
        .into_inner();
    verify_raw(&sig.alg, &active_jwk(&key)?, &content, &sig.signature)?;

    // A JWS signing input is no handshake: refused, and so is the raw path.
    let input = format!(
        "{}.{}",
        b64(br#"{"alg":"ES256","typ":"at+jwt"}"#),
        b64(br#"{"iss":"https://as.example.com","sub":"alice"}"#)
    );
    let (code, msg) = code_of(
        s.sign_tls_handshake(pb::SignTlsHandshakeRequest {
            key: "tls-client".into(),
            message: input.clone().into_bytes(),
            alg: String::new(),
        })
        .await,
    )?;
    assert_eq!(code, Code::PermissionDenied, "{msg}");
    assert!(
        msg.contains("only TLS 1.3 handshakes") && msg.contains("raw"),
        "{msg}"
    );
    let (code, msg) = code_of(
        s.sign_raw(pb::SignRawRequest {
            version: 0,
            key: "tls-client".into(),
            data: input.into_bytes(),
            alg: String::new(),
        })
        .await,
    )?;
    assert_eq!(code, Code::PermissionDenied, "{msg}");
    assert!(msg.contains("not allowed to raw"), "{msg}");
    // A truncated transcript hash is not a handshake either.
    let (code, _) = code_of(
        s.sign_tls_handshake(pb::SignTlsHandshakeRequest {
            key: "tls-client".into(),
            message: content.get(..content.len() - 1).ok_or("short")?.to_vec(),
            alg: String::new(),
        })
        .await,
    )?;
    assert_eq!(code, Code::PermissionDenied);
    // The admin has raw: its non-TLS 1.3 input (a TLS 1.2 transcript, say) is signed, and
    // recorded as raw.
    let data = b"TLS 1.2 handshake messages";
    let sig = d
        .signer()
        .await?
        .sign_tls_handshake(pb::SignTlsHandshakeRequest {
            key: "tls-client".into(),
            message: data.to_vec(),
            alg: String::new(),
        })
        .await?
        .into_inner();
    verify_raw(&sig.alg, &active_jwk(&key)?, data, &sig.signature)?;
    let tls_records = |rs: &[Value]| -> Vec<Value> {
        rs.iter()
            .filter(|v| v["operation"] == "tls")
            .cloned()
            .collect()
    };
    let records = tls_records(&audit_until(&d, |rs| tls_records(rs).len() >= 4).await?);
    let kinds: Vec<(&Value, &Value)> = records
        .iter()
        .map(|r| (&r["token_type"], &r["decision"]))
        .collect();
    assert_eq!(
        kinds,
        [
            (&json!("tls"), &json!("allow")),
            (&json!("raw"), &json!("deny")),
            (&json!("raw"), &json!("deny")),
            (&json!("raw"), &json!("allow")),
        ],
        "{records:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_keys_sign_only_their_token_types_across_rotation_and_restart() -> TestResult {
    let token = Token::new()?;
    let mut d = Daemon::start_with(&token, &rules())?;
    let mut keys = d.keys().await?;
    let bound = keys
        .create_key(pb::CreateKeyRequest {
            name: "idp-bound".into(),
            alg: "ES256".into(),
            serves: vec!["id-token".into(), "logout".into(), "userinfo".into()],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(bound.serves, ["id-token", "logout", "userinfo"]);
    d.create("idp-free", "ES256", 0).await?;
    // Unknown names and bindings of decryption keys are refused.
    let (code, msg) = code_of(
        keys.create_key(pb::CreateKeyRequest {
            name: "idp-x".into(),
            alg: "ES256".into(),
            serves: vec!["id_token".into()],
            ..Default::default()
        })
        .await,
    )?;
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    assert!(msg.contains("unknown token type \"id_token\""), "{msg}");
    let (code, msg) = code_of(
        keys.create_key(pb::CreateKeyRequest {
            name: "idp-enc".into(),
            alg: "ECDH-ES".into(),
            serves: vec!["id-token".into()],
            ..Default::default()
        })
        .await,
    )?;
    assert_ne!(code, Code::Ok, "{msg}");
    assert!(msg.contains("cannot be bound to signing uses"), "{msg}");

    // The admin may do everything, but the key is bound.
    check_binding(&d, "idp-bound").await?;
    // The binding is in the key's record on the token; an unbound key's record has no
    // `serves` member, as releases before bindings wrote and read it.
    assert!(
        record(&token, "idp-bound", 1)?.contains(r#""serves":["id-token","logout","userinfo"]"#)
    );
    assert!(!record(&token, "idp-free", 1)?.contains("serves"));

    // Rotation carries the binding to the new version.
    let rotated = keys
        .rotate_key(pb::RotateKeyRequest {
            name: "idp-bound".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(rotated.serves, ["id-token", "logout", "userinfo"]);
    assert!(
        record(&token, "idp-bound", 2)?.contains(r#""serves":["id-token","logout","userinfo"]"#)
    );
    keys.activate_key_version(pb::KeyVersionRequest {
        name: "idp-bound".into(),
        version: 2,
    })
    .await?;
    let signed = check_binding(&d, "idp-bound").await?;
    assert_eq!(signed.key_version, 2);

    // After a restart the binding is read back from the token; the unbound key still signs
    // anything.
    drop(keys);
    drop(d);
    d = Daemon::start_with(&token, &rules())?;
    let listed = list_keys(&d).await?;
    let serves_of = |name: &str| {
        listed
            .iter()
            .find(|k| k.name == name)
            .map(|k| k.serves.clone())
    };
    assert_eq!(
        serves_of("idp-bound"),
        Some(vec!["id-token".into(), "logout".into(), "userinfo".into()])
    );
    assert_eq!(serves_of("idp-free"), Some(Vec::new()));
    check_binding(&d, "idp-bound").await?;
    let jwks = d.jwks().await?;
    let any = sign_jws(
        &d,
        "idp-free",
        &header(&d, "idp-free", Some("at+jwt")).await?,
        &access_token_claims().to_string().into_bytes(),
    )
    .await?;
    verify_jws(&any.compact, &jwks)?;
    sign_raw_verified(&d, "idp-free", b"any bytes").await?;
    let refusal = |v: &Value| v["reason"] == "key not bound to access-token";
    let refused = audit_until(&d, |rs| rs.iter().any(refusal))
        .await?
        .into_iter()
        .find(refusal)
        .ok_or("no audit record of the binding refusal")?;
    assert_eq!(refused["decision"], "deny", "{refused}");
    assert_eq!(refused["key"], "idp-bound", "{refused}");
    Ok(())
}

/// `key` (bound to id-token, logout, userinfo) signs ID tokens, UserInfo responses and
/// logout-typed JWS for the admin, and refuses it a JARM response, an access token, a generic
/// JWS, a raw signature and a TLS handshake. Returns the ID token.
async fn check_binding(d: &Daemon, key: &str) -> TestResult<pb::SignJwsResponse> {
    let jwks = d.jwks().await?;
    let id = d
        .signer()
        .await?
        .sign_id_token(pb::SignIdTokenRequest {
            key: key.into(),
            claims_json: r#"{"iss":"https://op.example.com","sub":"alice","aud":"client-a"}"#
                .into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    verify_jws(&id.compact, &jwks)?;
    let logout = json!({"iss": "https://op.example.com", "aud": "rp", "sid": "s1",
        "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
    let signed = sign_jws(
        d,
        key,
        &header(d, key, Some("logout+jwt")).await?,
        logout.to_string().as_bytes(),
    )
    .await?;
    verify_jws(&signed.compact, &jwks)?;
    // Another profile the key serves; and one it does not.
    let userinfo = d
        .signer()
        .await?
        .sign_userinfo(pb::SignUserinfoRequest {
            key: key.into(),
            issuer: "https://op.example.com".into(),
            audience: "client-a".into(),
            claims_json: r#"{"sub":"alice","email":"alice@example.com"}"#.into(),
        })
        .await?
        .into_inner();
    verify_jws(&userinfo.compact, &jwks)?;
    let (code, msg) = code_of(
        d.signer()
            .await?
            .sign_jarm(pb::SignJarmRequest {
                key: key.into(),
                issuer: "https://op.example.com".into(),
                client_id: "client-a".into(),
                response_json: r#"{"code":"c","state":"s"}"#.into(),
                lifetime_seconds: 0,
            })
            .await,
    )?;
    assert_eq!(code, Code::PermissionDenied, "{msg}");
    assert!(msg.ends_with("it does not sign jarm"), "{msg}");
    for (typ, token) in [
        (Some("at+jwt"), "access-token"),
        (None, "jws"),
        (Some("JWT"), "jws"),
    ] {
        let (code, msg) = code_of(
            sign_jws(
                d,
                key,
                &header(d, key, typ).await?,
                access_token_claims().to_string().as_bytes(),
            )
            .await,
        )?;
        assert_eq!(code, Code::PermissionDenied, "{typ:?}: {msg}");
        assert_eq!(
            msg,
            format!("key {key} is bound to id-token, logout, userinfo; it does not sign {token}")
        );
    }
    let (code, msg) = code_of(
        d.signer()
            .await?
            .sign_raw(pb::SignRawRequest {
                version: 0,
                key: key.into(),
                data: b"eyJhbGciOiJFUzI1NiJ9.e30".to_vec(),
                alg: String::new(),
            })
            .await,
    )?;
    assert_eq!(code, Code::PermissionDenied, "{msg}");
    assert!(msg.ends_with("it does not sign raw"), "{msg}");
    let (code, _) = code_of(
        d.signer()
            .await?
            .sign_tls_handshake(pb::SignTlsHandshakeRequest {
                key: key.into(),
                message: certificate_verify_content(),
                alg: String::new(),
            })
            .await,
    )?;
    assert_eq!(code, Code::PermissionDenied);
    Ok(id)
}

/// The keyring record of `name` version `version` on the token, as pkcs11-tool reads it.
fn record(token: &Token, name: &str, version: u32) -> TestResult<String> {
    let out = token.pkcs11_tool(&[
        "--read-object",
        "--type",
        "data",
        "--label",
        &format!("sigild/keyring/{name}/{version}"),
    ])?;
    if !out.status.success() {
        return Err(format!("pkcs11-tool: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_binds_keys_and_lists_their_bindings() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let out = d.cli(
        &[
            "key",
            "create",
            "idp-cli",
            "--alg",
            "ES256",
            "--serves",
            "id-token,logout,userinfo",
        ],
        None,
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(shown["serves"], json!(["id-token", "logout", "userinfo"]));
    d.create("free", "EdDSA", 0).await?;
    let out = d.cli(&["key", "list"], None)?;
    let list = String::from_utf8(out.stdout)?;
    assert!(
        list.lines()
            .next()
            .is_some_and(|h| h.trim_end().ends_with("SERVES")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("idp-cli ") && l.ends_with(" id-token,logout,userinfo")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("free ") && l.ends_with(" *")),
        "{list}"
    );
    let out = d.cli(
        &[
            "key",
            "create",
            "bad",
            "--alg",
            "ES256",
            "--serves",
            "id-token,everything",
        ],
        None,
    )?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown token type \"everything\""), "{err}");
    Ok(())
}
