//! The authorization server's signed responses through the real daemon: JARM authorization
//! responses, RFC 9701 introspection responses, signed UserInfo responses and the ID token's
//! `s_hash`/`typ`, over gRPC and the CLI, for an ES256, an EdDSA and a PS256 key.
//!
//! Every token is verified by jwcrypto against the daemon's JWKS; the header (`typ` where the
//! profile sets one, none where it does not) and the claims sigild owns (`iss`, `aud`, `iat`,
//! `exp` from its clock, the nesting under `token_introspection`, `s_hash` computed by hashlib)
//! are checked on what jwcrypto verified. Refusals: a result already nested (which would put
//! the introspection result at the top level of the verifier's view), reserved and forbidden
//! claims, lifetimes out of bounds, a caller without the token type; their messages never echo
//! the code, and neither the log nor the audit trail holds it.
//!
//! One daemon for the whole file: isolation is not what is tested, and every daemon costs a
//! token and a start.

mod support;

use serde_json::{Value, json};
use sigild::api::pb;
use sigild::tls::ClientNames;
use support::*;
use tonic::Code;

const OP: &str = "spiffe://sigild.test/op";
const IDP: &str = "spiffe://sigild.test/idp";
const ISSUER: &str = "https://op.example.com";
const CLIENT: &str = "s6BhdRkqt3";
const RS: &str = "https://rs.example.com/resource";
/// An authorization code: a secret that must appear in the signed JARM response only.
const CODE: &str = "SplxlOBeZQQYbYS6WxSbIA-code-secret";
const STATE: &str = "af0ifjsldkj-state";

fn names(spiffe: &str) -> ClientNames {
    ClientNames {
        spiffe: Some(spiffe.into()),
        ..ClientNames::default()
    }
}

/// The keys, their JWS alg and the hash of their OIDC half hashes.
const KEYS: [(&str, &str, u32, &str); 3] = [
    ("op-es", "ES256", 0, "sha256"),
    ("op-ed", "EdDSA", 0, "sha512"),
    ("op-ps", "PS256", 2048, "sha256"),
];

fn jarm(key: &str, response: Value, lifetime: u32) -> pb::SignJarmRequest {
    pb::SignJarmRequest {
        key: key.into(),
        issuer: ISSUER.into(),
        client_id: CLIENT.into(),
        response_json: response.to_string(),
        lifetime_seconds: lifetime,
    }
}

fn introspection(key: &str, result: Value) -> pb::SignIntrospectionRequest {
    pb::SignIntrospectionRequest {
        key: key.into(),
        issuer: ISSUER.into(),
        audience: RS.into(),
        introspection_json: result.to_string(),
    }
}

fn userinfo(key: &str, claims: Value) -> pb::SignUserinfoRequest {
    pb::SignUserinfoRequest {
        key: key.into(),
        issuer: ISSUER.into(),
        audience: CLIENT.into(),
        claims_json: claims.to_string(),
    }
}

/// Verify `compact` with jwcrypto against `jwks`; the verified header and claims, with the
/// header's `alg` and `kid` checked against what the daemon said it signed with.
fn verified(
    compact: &str,
    jwks: &Value,
    alg: &str,
    kid: &str,
) -> TestResult<(Value, serde_json::Map<String, Value>)> {
    let v = verify_jws(compact, jwks)?;
    assert_eq!(v["header"]["alg"], alg, "{compact}");
    assert_eq!(v["header"]["kid"], kid, "{compact}");
    let claims = v["payload"]
        .as_object()
        .cloned()
        .ok_or("payload is not a JSON object")?;
    Ok((v["header"].clone(), claims))
}

/// `iat` between the start of the test and now (a loaded machine may take seconds between
/// signing and this check): sigild stamped it from its own clock.
fn stamped_now(claims: &serde_json::Map<String, Value>) -> TestResult<i64> {
    let iat = claims["iat"].as_i64().ok_or("iat is not an integer")?;
    let since = *STARTED.get().ok_or("test start not recorded")?;
    assert!(
        since - 1 <= iat && iat <= now()? + 1,
        "iat {iat} is not now"
    );
    Ok(iat)
}

/// When the test started, in unix seconds.
static STARTED: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

fn keys_of(claims: &serde_json::Map<String, Value>) -> Vec<&str> {
    let mut k: Vec<&str> = claims.keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

#[tokio::test]
async fn op_responses_verify_with_jwcrypto_and_refuse_what_they_must() -> TestResult {
    STARTED.get_or_init(|| now().unwrap_or_default());
    let token = Token::new()?;
    let d = Daemon::start_with(
        &token,
        &format!(
            "\n[[caller]]\nidentity = \"{OP}\"\nkeys = [\"op-*\"]\noperations = [\"jarm\", \"introspection\", \"userinfo\"]\n\n[[caller]]\nidentity = \"{IDP}\"\nkeys = [\"op-*\"]\noperations = [\"id-token\"]\n\n[audit]\nstdout = true\n"
        ),
    )?;
    let mut kids = Vec::new();
    for (name, alg, bits, _) in KEYS {
        let k = d.create(name, alg, bits).await?;
        kids.push(k.versions.first().ok_or("no version")?.kid.clone());
    }
    let jwks = d.jwks().await?;
    let op = token.pki.client("op", &names(OP))?;
    let mut s = pb::signing_service_client::SigningServiceClient::new(d.channel_as(&op).await?);

    for ((key, alg, _, hash), kid) in KEYS.into_iter().zip(&kids) {
        // JARM: iss, aud = client_id, iat now, exp 60 s later by default; no typ (JARM has
        // none); the response parameters as given.
        let r = s
            .sign_jarm(jarm(key, json!({"code": CODE, "state": STATE}), 0))
            .await?
            .into_inner();
        assert_eq!((r.alg.as_str(), &r.kid), (alg, kid));
        let (h, c) = verified(&r.compact, &jwks, alg, kid)?;
        assert!(h.get("typ").is_none(), "{h}");
        assert_eq!(keys_of(&c), ["aud", "code", "exp", "iat", "iss", "state"]);
        assert_eq!(
            (c["iss"].clone(), c["aud"].clone()),
            (json!(ISSUER), json!(CLIENT))
        );
        assert_eq!(
            (c["code"].clone(), c["state"].clone()),
            (json!(CODE), json!(STATE))
        );
        let iat = stamped_now(&c)?;
        assert_eq!(c["exp"], iat + 60);
        // An error response, with the longest lifetime.
        let r = s
            .sign_jarm(jarm(
                key,
                json!({"error": "access_denied", "error_description": "denied", "state": STATE}),
                600,
            ))
            .await?
            .into_inner();
        let (_, c) = verified(&r.compact, &jwks, alg, kid)?;
        assert_eq!(c["error"], "access_denied");
        assert_eq!(c["exp"], stamped_now(&c)? + 600);

        // Introspection: typ token-introspection+jwt, exactly iss, aud, iat at the top level,
        // the result (whose own iss, sub, exp describe the introspected token) nested.
        let result = json!({
            "active": true, "iss": ISSUER, "client_id": CLIENT, "sub": "Z5O3upPC88QrAjx00dis",
            "scope": "read write", "exp": 1_900_000_000u64, "iat": 1_899_999_000u64,
            "token_type": "Bearer", "extension_field": "twenty-seven"
        });
        let r = s
            .sign_introspection(introspection(key, result.clone()))
            .await?
            .into_inner();
        let (h, c) = verified(&r.compact, &jwks, alg, kid)?;
        assert_eq!(h["typ"], "token-introspection+jwt");
        assert_eq!(keys_of(&c), ["aud", "iat", "iss", "token_introspection"]);
        assert_eq!(
            (c["iss"].clone(), c["aud"].clone()),
            (json!(ISSUER), json!(RS))
        );
        stamped_now(&c)?;
        assert_eq!(c["token_introspection"], result);
        let r = s
            .sign_introspection(introspection(key, json!({"active": false})))
            .await?
            .into_inner();
        let (_, c) = verified(&r.compact, &jwks, alg, kid)?;
        assert_eq!(c["token_introspection"], json!({"active": false}));

        // UserInfo: iss, aud, iat added, the claims as given, no exp and no typ.
        let r = s
            .sign_userinfo(userinfo(
                key,
                json!({"sub": "248289761001", "name": "Jane Doe", "email": "janedoe@example.com"}),
            ))
            .await?
            .into_inner();
        let (h, c) = verified(&r.compact, &jwks, alg, kid)?;
        assert!(h.get("typ").is_none(), "{h}");
        assert_eq!(keys_of(&c), ["aud", "email", "iat", "iss", "name", "sub"]);
        assert_eq!(
            (c["iss"].clone(), c["aud"].clone()),
            (json!(ISSUER), json!(CLIENT))
        );
        assert_eq!(c["email"], "janedoe@example.com");
        stamped_now(&c)?;

        // ID token with state and typ, signed by the caller allowed id-token: s_hash as
        // hashlib computes it for this alg.
        let idp = token.pki.client("idp", &names(IDP))?;
        let mut idp_signer =
            pb::signing_service_client::SigningServiceClient::new(d.channel_as(&idp).await?);
        let r = idp_signer
            .sign_id_token(pb::SignIdTokenRequest {
                key: key.into(),
                claims_json:
                    json!({"iss": ISSUER, "sub": "248289761001", "aud": CLIENT, "nonce": "n-0S6"})
                        .to_string(),
                lifetime_seconds: 300,
                access_token: String::new(),
                code: CODE.into(),
                state: STATE.into(),
                typ: "JWT".into(),
            })
            .await?
            .into_inner();
        let (h, c) = verified(&r.compact, &jwks, alg, kid)?;
        assert_eq!(h["typ"], "JWT");
        assert_eq!(c["s_hash"], half_hash(hash, STATE)?);
        assert_eq!(c["c_hash"], half_hash(hash, CODE)?);
        assert_eq!(c["exp"], stamped_now(&c)? + 300);
        // ... who may not sign a JARM response with the same key.
        let (code, msg) = code_of(
            idp_signer
                .sign_jarm(jarm(key, json!({"code": CODE}), 0))
                .await,
        )?;
        assert_eq!(code, Code::PermissionDenied, "{msg}");
        assert_eq!(
            msg,
            format!("caller {IDP} is not allowed to jarm with key {key}")
        );
    }

    // Refusals, each INVALID_ARGUMENT naming what to fix, none echoing the code.
    let k = "op-es";
    let refused: Vec<(
        &str,
        Result<tonic::Response<pb::SignJwsResponse>, tonic::Status>,
        &str,
    )> = vec![
        (
            "an introspection result already nested",
            s.sign_introspection(introspection(
                k,
                json!({"token_introspection": {"active": true}}),
            ))
            .await,
            "token_introspection",
        ),
        (
            "an introspection result without active",
            s.sign_introspection(introspection(k, json!({"sub": "x"})))
                .await,
            "active",
        ),
        (
            "an inactive token described",
            s.sign_introspection(introspection(k, json!({"active": false, "sub": "x"})))
                .await,
            "active",
        ),
        (
            "a JARM response with its own exp",
            s.sign_jarm(jarm(k, json!({"code": CODE, "exp": 1}), 0))
                .await,
            "exp",
        ),
        (
            "a JARM response with its own iat",
            s.sign_jarm(jarm(k, json!({"code": CODE, "iat": 1}), 0))
                .await,
            "iat",
        ),
        (
            "a JARM response for another audience",
            s.sign_jarm(jarm(k, json!({"code": CODE, "aud": "other"}), 0))
                .await,
            "aud",
        ),
        (
            "a JARM response from another issuer",
            s.sign_jarm(jarm(
                k,
                json!({"code": CODE, "iss": "https://evil.example"}),
                0,
            ))
            .await,
            "iss",
        ),
        (
            "a JARM error response that grants a code",
            s.sign_jarm(jarm(k, json!({"code": CODE, "error": "access_denied"}), 0))
                .await,
            "code",
        ),
        (
            "a JARM response that is neither grant nor error",
            s.sign_jarm(jarm(k, json!({"state": STATE}), 0)).await,
            "error",
        ),
        (
            "a JARM lifetime over 600 s",
            s.sign_jarm(jarm(k, json!({"code": CODE}), 601)).await,
            "600",
        ),
        (
            "a UserInfo response with exp",
            s.sign_userinfo(userinfo(k, json!({"sub": "a", "exp": 1})))
                .await,
            "exp",
        ),
        (
            "a UserInfo response with nonce",
            s.sign_userinfo(userinfo(k, json!({"sub": "a", "nonce": "n"})))
                .await,
            "nonce",
        ),
        (
            "a UserInfo response with its own iat",
            s.sign_userinfo(userinfo(k, json!({"sub": "a", "iat": 1})))
                .await,
            "iat",
        ),
        (
            "a UserInfo response without sub",
            s.sign_userinfo(userinfo(k, json!({"name": "x"}))).await,
            "sub",
        ),
        (
            "a response that is not a JSON object",
            s.sign_userinfo(pb::SignUserinfoRequest {
                claims_json: "[1]".into(),
                ..userinfo(k, json!({}))
            })
            .await,
            "JSON object",
        ),
    ];
    for (what, r, names_it) in refused {
        let (code, msg) = code_of(r)?;
        assert_eq!(code, Code::InvalidArgument, "{what}: {msg}");
        assert!(msg.contains(names_it), "{what}: {msg}");
        assert!(!msg.contains(CODE), "{what} echoes the code: {msg}");
    }
    let mut admin = d.signer().await?;
    for (typ, want) in [
        ("at+jwt", Code::InvalidArgument),
        ("logout+jwt", Code::InvalidArgument),
    ] {
        let (code, msg) = code_of(
            admin
                .sign_id_token(pb::SignIdTokenRequest {
                    key: k.into(),
                    claims_json: json!({"iss": ISSUER, "sub": "a", "aud": CLIENT}).to_string(),
                    lifetime_seconds: 60,
                    typ: typ.into(),
                    ..Default::default()
                })
                .await,
        )?;
        assert_eq!(code, want, "typ {typ}: {msg}");
        assert!(msg.contains("typ"), "{msg}");
    }

    // The CLI: JARM from stdin (never an argument), introspection from an argument, UserInfo
    // from a file, the ID token's --state and --typ.
    let es_kid = kids.first().ok_or("kid")?;
    let out = d.cli(
        &[
            "sign",
            "jarm",
            "--key",
            k,
            "--issuer",
            ISSUER,
            "--client-id",
            CLIENT,
            "--response-file",
            "-",
            "--lifetime",
            "120",
        ],
        Some(json!({"code": CODE, "state": STATE}).to_string().as_bytes()),
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, c) = verified(
        String::from_utf8(out.stdout)?.trim(),
        &jwks,
        "ES256",
        es_kid,
    )?;
    assert_eq!(c["code"], CODE);
    assert_eq!(c["exp"], stamped_now(&c)? + 120);
    let out = d.cli(
        &[
            "sign",
            "introspection",
            "--key",
            k,
            "--issuer",
            ISSUER,
            "--audience",
            RS,
            "--introspection-json",
            r#"{"active":true,"scope":"read"}"#,
        ],
        None,
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (h, c) = verified(
        String::from_utf8(out.stdout)?.trim(),
        &jwks,
        "ES256",
        es_kid,
    )?;
    assert_eq!(h["typ"], "token-introspection+jwt");
    assert_eq!(
        c["token_introspection"],
        json!({"active": true, "scope": "read"})
    );
    let claims_file = token.dir.path().join("userinfo.json");
    std::fs::write(
        &claims_file,
        r#"{"sub":"248289761001","email":"j@example.com"}"#,
    )?;
    let out = d.cli(
        &[
            "sign",
            "userinfo",
            "--key",
            k,
            "--issuer",
            ISSUER,
            "--audience",
            CLIENT,
            "--claims-file",
            claims_file.to_str().ok_or("path")?,
        ],
        None,
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, c) = verified(
        String::from_utf8(out.stdout)?.trim(),
        &jwks,
        "ES256",
        es_kid,
    )?;
    assert_eq!(
        (c["sub"].clone(), c["aud"].clone()),
        (json!("248289761001"), json!(CLIENT))
    );
    let out = d.cli(
        &[
            "sign",
            "id-token",
            "--key",
            k,
            "--claims-json",
            &json!({"iss": ISSUER, "sub": "a", "aud": CLIENT}).to_string(),
            "--state",
            STATE,
            "--typ",
            "JWT",
        ],
        None,
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (h, c) = verified(
        String::from_utf8(out.stdout)?.trim(),
        &jwks,
        "ES256",
        es_kid,
    )?;
    assert_eq!(h["typ"], "JWT");
    assert_eq!(c["s_hash"], half_hash("sha256", STATE)?);
    // A refusal through the CLI: the status code and the daemon's message, exit 1.
    let out = d.cli(
        &[
            "sign",
            "jarm",
            "--key",
            k,
            "--issuer",
            ISSUER,
            "--client-id",
            CLIENT,
            "--response-file",
            "-",
            "--lifetime",
            "601",
        ],
        Some(json!({"code": CODE}).to_string().as_bytes()),
    )?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("INVALID_ARGUMENT"),
        "{err}"
    );
    assert!(err.contains("600") && !err.contains(CODE), "{err}");

    // The audit trail names each response type; neither it nor the log holds the code.
    let audit = d.stdout_lines();
    for op in [
        "\"jarm\"",
        "\"introspection\"",
        "\"userinfo\"",
        "\"id-token\"",
    ] {
        assert!(
            audit.iter().any(|l| l.contains(op) && l.contains("\"ok\"")),
            "no audit record of {op}"
        );
    }
    assert!(
        audit
            .iter()
            .any(|l| l.contains("\"jarm\"") && l.contains("\"deny\""))
    );
    let log = d.log_text();
    for text in [audit.join("\n"), log] {
        assert!(
            !text.contains(CODE),
            "the code reached the audit trail or the log"
        );
        assert!(!text.contains("janedoe@example.com"));
    }
    Ok(())
}
