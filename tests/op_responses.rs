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

use std::collections::BTreeMap;

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

/// What the daemon signed, to be verified in one batch: a label, the compact JWS, and the
/// alg and kid it said it signed with.
struct Signed {
    what: String,
    compact: String,
    alg: String,
    kid: String,
}

/// The verified header and claims of each token, by label: all verified by jwcrypto against
/// `jwks` in one Python process (with the `half_hashes` asked for computed by hashlib, also
/// by label), the header's `alg` and `kid` checked against what the daemon answered.
type Verified = BTreeMap<String, (Value, serde_json::Map<String, Value>)>;

/// hashlib's half hashes, by (hash, value).
type HalfHashes = BTreeMap<(String, String), String>;

/// A daemon's answer to a signing call.
type Answer = Result<tonic::Response<pb::SignJwsResponse>, tonic::Status>;

fn verify_all(
    signed: &[Signed],
    jwks: &Value,
    half_hashes: &[(&str, &str)],
) -> TestResult<(Verified, HalfHashes)> {
    let mut requests: Vec<Value> = signed
        .iter()
        .map(|t| json!({"op": "jws", "jws": t.compact, "jwks": jwks}))
        .collect();
    requests.extend(
        half_hashes
            .iter()
            .map(|(hash, value)| json!({"op": "half_hash", "hash": hash, "value": value})),
    );
    let answers = python_batch(&requests)?;
    assert_eq!(answers.len(), requests.len(), "one answer per request");
    let mut verified = Verified::new();
    for (t, v) in signed.iter().zip(&answers) {
        assert_eq!(v["header"]["alg"], json!(t.alg), "{}", t.what);
        assert_eq!(v["header"]["kid"], json!(t.kid), "{}", t.what);
        let claims = v["payload"]
            .as_object()
            .cloned()
            .ok_or_else(|| format!("{}: payload is not a JSON object", t.what))?;
        verified.insert(t.what.clone(), (v["header"].clone(), claims));
    }
    let hashes = half_hashes
        .iter()
        .zip(answers.get(signed.len()..).unwrap_or_default())
        .map(|((hash, value), a)| {
            (
                (hash.to_string(), value.to_string()),
                a["half_hash"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    Ok((verified, hashes))
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
    let idp = token.pki.client("idp", &names(IDP))?;
    let mut idp_signer =
        pb::signing_service_client::SigningServiceClient::new(d.channel_as(&idp).await?);

    // Sign everything first; one Python process verifies it all below.
    let introspected = json!({
        "active": true, "iss": ISSUER, "client_id": CLIENT, "sub": "Z5O3upPC88QrAjx00dis",
        "scope": "read write", "exp": 1_900_000_000u64, "iat": 1_899_999_000u64,
        "token_type": "Bearer", "extension_field": "twenty-seven"
    });
    let mut signed = Vec::new();
    for ((key, alg, _, _), kid) in KEYS.into_iter().zip(&kids) {
        let mut push = |what: &str, r: pb::SignJwsResponse| {
            assert_eq!((r.alg.as_str(), &r.kid), (alg, kid), "{key} {what}");
            signed.push(Signed {
                what: format!("{key} {what}"),
                compact: r.compact,
                alg: r.alg,
                kid: r.kid,
            });
        };
        let r = s.sign_jarm(jarm(key, json!({"code": CODE, "state": STATE}), 0));
        push("jarm", r.await?.into_inner());
        let error =
            json!({"error": "access_denied", "error_description": "denied", "state": STATE});
        push(
            "jarm error",
            s.sign_jarm(jarm(key, error, 600)).await?.into_inner(),
        );
        let r = s.sign_introspection(introspection(key, introspected.clone()));
        push("introspection", r.await?.into_inner());
        let r = s.sign_introspection(introspection(key, json!({"active": false})));
        push("introspection inactive", r.await?.into_inner());
        let claims =
            json!({"sub": "248289761001", "name": "Jane Doe", "email": "janedoe@example.com"});
        push(
            "userinfo",
            s.sign_userinfo(userinfo(key, claims)).await?.into_inner(),
        );
        // The ID token, by the caller allowed id-token.
        let r = idp_signer.sign_id_token(pb::SignIdTokenRequest {
            version: 0,
            key: key.into(),
            claims_json:
                json!({"iss": ISSUER, "sub": "248289761001", "aud": CLIENT, "nonce": "n-0S6"})
                    .to_string(),
            lifetime_seconds: 300,
            access_token: String::new(),
            code: CODE.into(),
            state: STATE.into(),
            typ: "JWT".into(),
        });
        push("id-token", r.await?.into_inner());
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

    // The CLI: JARM from stdin (never an argument), introspection from an argument, UserInfo
    // from a file, the ID token's --state and --typ.
    let k = "op-es";
    let es_kid = kids.first().ok_or("kid")?.clone();
    let claims_file = token.dir.path().join("userinfo.json");
    std::fs::write(
        &claims_file,
        r#"{"sub":"248289761001","email":"j@example.com"}"#,
    )?;
    let id_claims = json!({"iss": ISSUER, "sub": "a", "aud": CLIENT}).to_string();
    let jarm_stdin = json!({"code": CODE, "state": STATE}).to_string();
    let cli_runs = [
        (
            "cli jarm",
            vec![
                "jarm",
                "--client-id",
                CLIENT,
                "--response-file",
                "-",
                "--lifetime",
                "120",
            ],
            Some(jarm_stdin.as_bytes()),
        ),
        (
            "cli introspection",
            vec![
                "introspection",
                "--audience",
                RS,
                "--introspection-json",
                r#"{"active":true,"scope":"read"}"#,
            ],
            None,
        ),
        (
            "cli userinfo",
            vec![
                "userinfo",
                "--audience",
                CLIENT,
                "--claims-file",
                claims_file.to_str().ok_or("path")?,
            ],
            None,
        ),
        (
            "cli id-token",
            vec![
                "id-token",
                "--claims-json",
                &id_claims,
                "--state",
                STATE,
                "--typ",
                "JWT",
            ],
            None,
        ),
    ];
    for (what, args, stdin) in cli_runs {
        let mut argv = vec!["sign", args[0], "--key", k];
        if what != "cli id-token" {
            argv.extend(["--issuer", ISSUER]);
        }
        argv.extend(&args[1..]);
        let out = d.cli(&argv, stdin)?;
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        signed.push(Signed {
            what: what.into(),
            compact: String::from_utf8(out.stdout)?.trim().to_owned(),
            alg: "ES256".into(),
            kid: es_kid.clone(),
        });
    }

    let (v, hashes) = verify_all(
        &signed,
        &jwks,
        &[
            ("sha256", STATE),
            ("sha256", CODE),
            ("sha512", STATE),
            ("sha512", CODE),
        ],
    )?;
    let half = |hash: &str, value: &str| hashes[&(hash.to_owned(), value.to_owned())].clone();
    for (key, _, _, hash) in KEYS {
        let get = |what: &str| v[&format!("{key} {what}")].clone();
        // JARM: iss, aud = client_id, iat now, exp 60 s later by default; no typ (JARM has
        // none); the response parameters as given.
        let (h, c) = get("jarm");
        assert!(h.get("typ").is_none(), "{h}");
        assert_eq!(keys_of(&c), ["aud", "code", "exp", "iat", "iss", "state"]);
        assert_eq!((&c["iss"], &c["aud"]), (&json!(ISSUER), &json!(CLIENT)));
        assert_eq!((&c["code"], &c["state"]), (&json!(CODE), &json!(STATE)));
        assert_eq!(c["exp"], stamped_now(&c)? + 60);
        // The error response, with the longest lifetime.
        let (_, c) = get("jarm error");
        assert_eq!(c["error"], "access_denied");
        assert!(!c.contains_key("code"));
        assert_eq!(c["exp"], stamped_now(&c)? + 600);

        // Introspection: typ token-introspection+jwt, exactly iss, aud, iat at the top level,
        // the result (whose own iss, sub, exp describe the introspected token) nested.
        let (h, c) = get("introspection");
        assert_eq!(h["typ"], "token-introspection+jwt");
        assert_eq!(keys_of(&c), ["aud", "iat", "iss", "token_introspection"]);
        assert_eq!((&c["iss"], &c["aud"]), (&json!(ISSUER), &json!(RS)));
        stamped_now(&c)?;
        assert_eq!(c["token_introspection"], introspected);
        let (h, c) = get("introspection inactive");
        assert_eq!(h["typ"], "token-introspection+jwt");
        assert_eq!(c["token_introspection"], json!({"active": false}));

        // UserInfo: iss, aud, iat added, the claims as given, no exp and no typ.
        let (h, c) = get("userinfo");
        assert!(h.get("typ").is_none(), "{h}");
        assert_eq!(keys_of(&c), ["aud", "email", "iat", "iss", "name", "sub"]);
        assert_eq!((&c["iss"], &c["aud"]), (&json!(ISSUER), &json!(CLIENT)));
        assert_eq!(c["email"], "janedoe@example.com");
        stamped_now(&c)?;

        // The ID token: s_hash and c_hash as hashlib computes them for this alg.
        let (h, c) = get("id-token");
        assert_eq!(h["typ"], "JWT");
        assert_eq!(c["s_hash"], half(hash, STATE));
        assert_eq!(c["c_hash"], half(hash, CODE));
        assert_eq!(c["exp"], stamped_now(&c)? + 300);
    }
    let (_, c) = &v["cli jarm"];
    assert_eq!((&c["code"], &c["aud"]), (&json!(CODE), &json!(CLIENT)));
    assert_eq!(c["exp"], stamped_now(c)? + 120);
    let (h, c) = &v["cli introspection"];
    assert_eq!(h["typ"], "token-introspection+jwt");
    assert_eq!(
        c["token_introspection"],
        json!({"active": true, "scope": "read"})
    );
    let (_, c) = &v["cli userinfo"];
    assert_eq!(
        (&c["sub"], &c["iss"]),
        (&json!("248289761001"), &json!(ISSUER))
    );
    let (h, c) = &v["cli id-token"];
    assert_eq!(h["typ"], "JWT");
    assert_eq!(c["s_hash"], half("sha256", STATE));

    // Refusals, each INVALID_ARGUMENT naming what to fix, none echoing the code.
    let refused: Vec<(&str, Answer, &str)> = vec![
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
    for typ in ["at+jwt", "application/logout+jwt"] {
        let (code, msg) = code_of(
            idp_signer
                .sign_id_token(pb::SignIdTokenRequest {
                    key: k.into(),
                    claims_json: id_claims.clone(),
                    lifetime_seconds: 60,
                    typ: typ.into(),
                    ..Default::default()
                })
                .await,
        )?;
        assert_eq!(code, Code::InvalidArgument, "typ {typ}: {msg}");
        assert!(msg.contains("typ"), "{msg}");
    }
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
