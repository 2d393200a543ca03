//! End to end with a real OpenID Provider whose JARM responses (JWT Secured Authorization
//! Response Mode, `response_mode=jwt`) sigild signs through its JARM profile: node-oidc-provider
//! hands each authorization response to `sigild sign jarm` under its own client certificate
//! (a caller allowed `jarm` only), publishes sigild's public keys in its JWKS, and the relying
//! party checks the response with node jose against that JWKS (signature, `iss`, `aud`, `exp`)
//! and python jwcrypto (signature), then takes `state` and `code` from it. The flows are FAPI
//! 2.0's: pushed authorization requests, PKCE, private_key_jwt with sigild-signed assertions,
//! and one JARM key per FAPI 2.0 algorithm (ES256, PS256, EdDSA); one client has its responses
//! encrypted by the OP to its own key in sigild, which decrypts them.

mod support;

use serde_json::{Value, json};
use sigild::api::pb;
use sigild::tls::ClientNames;
use support::op::{Authorization, ClientAuth, JarmSigner, Op};
use support::*;

/// The OP's identity at sigild.
const OP_IDENTITY: &str = "spiffe://sigild.test/op";

const REDIRECT_URI: &str = "https://rp.example/cb";

/// The key that signs every client's private_key_jwt assertions.
const CLIENT_SIGNER: &str = "rp-signer";

/// One relying party: the JARM alg it registers, the sigild key that signs its responses (and
/// how that key is made), the response mode it asks for.
struct Rp {
    client_id: &'static str,
    alg: &'static str,
    key: &'static str,
    rsa_bits: u32,
    response_mode: &'static str,
    /// `(alg, enc)` of JARM responses encrypted to the client's decryption key in sigild (its
    /// name is the client id; a P-256 ECDH-ES key) after sigild signed them.
    encrypted: Option<(&'static str, &'static str)>,
}

const RPS: [Rp; 3] = [
    Rp {
        client_id: "rp-es256",
        alg: "ES256",
        key: "jarm-es256",
        rsa_bits: 0,
        response_mode: "jwt",
        encrypted: None,
    },
    Rp {
        client_id: "rp-ps256",
        alg: "PS256",
        key: "jarm-ps256",
        rsa_bits: 2048,
        response_mode: "jwt",
        encrypted: None,
    },
    Rp {
        client_id: "rp-eddsa",
        alg: "EdDSA",
        key: "jarm-eddsa",
        rsa_bits: 0,
        response_mode: "query.jwt",
        encrypted: Some(("ECDH-ES+A256KW", "A256GCM")),
    },
];

/// A fresh private_key_jwt assertion for `client_id` at `op` (each one is single use).
async fn assertion(d: &Daemon, op: &Op, client_id: &str) -> TestResult<String> {
    Ok(d.signer()
        .await?
        .sign_client_assertion(pb::SignClientAssertionRequest {
            key: CLIENT_SIGNER.into(),
            client_id: client_id.into(),
            audience: op.issuer.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .compact)
}

/// The one JARM response of an authorization answer: `params` hold `response` and nothing else
/// (the code and state travel only inside the signed JWT).
fn jarm_response<'a>(rp: &Rp, auth: &'a Value) -> TestResult<&'a str> {
    let params = auth["params"].as_object().ok_or("no params")?;
    assert_eq!(
        params.keys().collect::<Vec<_>>(),
        ["response"],
        "{}: only the JARM response in the redirect: {auth}",
        rp.client_id
    );
    Ok(params["response"].as_str().ok_or("response")?)
}

/// The signed JARM response in `response`: itself, or, for a client that asked for encryption,
/// what sigild decrypts it to with the client's key (a nested JWT, checked to be one).
async fn opened(d: &Daemon, rp: &Rp, response: &str) -> TestResult<String> {
    let Some((alg, enc)) = rp.encrypted else {
        return Ok(response.to_owned());
    };
    let ctx = rp.client_id;
    assert_eq!(response.split('.').count(), 5, "{ctx}: a compact JWE");
    let r = d
        .decrypter()
        .await?
        .decrypt_jwe(pb::DecryptJweRequest {
            key: rp.client_id.into(),
            jwe: response.as_bytes().to_vec(),
            allowed_algs: vec![alg.into()],
            allowed_encs: vec![enc.into()],
        })
        .await
        .map_err(|e| format!("{ctx}: DecryptJwe: {e}"))?
        .into_inner();
    assert_eq!((r.alg.as_str(), r.enc.as_str()), (alg, enc), "{ctx}");
    let header: Value = serde_json::from_str(&r.protected_header_json)?;
    assert_eq!(header["cty"], "JWT", "{ctx}: a nested JWT: {header}");
    Ok(String::from_utf8(r.plaintext)?)
}

/// Check a JARM response as node jose verified it for `rp` (signature, `iss`, `aud`, `exp`):
/// the alg asked for, sigild's kid, and `exp` sigild's default JARM lifetime after an `iat` from
/// sigild's clock. The claims.
fn check_jarm(op: &Op, rp: &Rp, kid: &str, verified: Result<Value, String>) -> TestResult<Value> {
    let ctx = rp.client_id;
    let v = verified.map_err(|e| format!("{ctx}: node jose: {e}\nOP log:\n{}", op.log_text()))?;
    let (header, claims) = (&v["header"], &v["payload"]);
    assert_eq!(header["alg"], rp.alg, "{ctx}: {header}");
    assert_eq!(
        header["kid"], kid,
        "{ctx}: signed by the sigild key: {header}"
    );
    assert_eq!(claims["iss"], json!(op.issuer), "{ctx}: {claims}");
    assert_eq!(claims["aud"], json!(rp.client_id), "{ctx}: {claims}");
    let (iat, exp) = (
        claims["iat"].as_i64().ok_or("iat")?,
        claims["exp"].as_i64().ok_or("exp")?,
    );
    assert_eq!(
        exp - iat,
        60,
        "{ctx}: sigild's default JARM lifetime: {claims}"
    );
    assert!(
        (iat - now()?).abs() <= 120,
        "{ctx}: iat from sigild's clock: {claims}"
    );
    Ok(claims.clone())
}

/// `compact` with its payload replaced by `claims` (the signature left as it was).
fn with_payload(compact: &str, claims: &Value) -> String {
    let mut parts: Vec<String> = compact.split('.').map(str::to_owned).collect();
    parts[1] = b64(claims.to_string().as_bytes());
    parts.join(".")
}

#[tokio::test]
async fn fapi2_flows_with_jarm_responses_signed_by_sigild_verify_at_the_relying_party() -> TestResult
{
    let token = Token::new()?;
    let d = Daemon::start_with(
        &token,
        &format!(
            "\n[[caller]]\nidentity = \"{OP_IDENTITY}\"\nkeys = [\"jarm-*\"]\noperations = [\"jarm\"]\n\n[audit]\nstdout = true\n"
        ),
    )?;
    let op_client = token.pki.client(
        "op",
        &ClientNames {
            spiffe: Some(OP_IDENTITY.into()),
            ..ClientNames::default()
        },
    )?;
    let signer = d.create(CLIENT_SIGNER, "ES256", 0).await?;
    let signer_jwk = active_jwk(&signer)?;

    // One FAPI 2.0 JARM key per algorithm in sigild; the OP learns their public keys.
    let (mut keys, mut jwks, mut kids, mut clients) = (Vec::new(), Vec::new(), Vec::new(), vec![]);
    for rp in &RPS {
        let key = d
            .keys()
            .await?
            .create_key(pb::CreateKeyRequest {
                name: rp.key.into(),
                alg: rp.alg.into(),
                rsa_bits: rp.rsa_bits,
                fapi2: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        let jwk = active_jwk(&key)?;
        kids.push(jwk["kid"].as_str().ok_or("kid")?.to_owned());
        keys.push((rp.alg, rp.key.to_owned()));
        jwks.push(jwk);
        let mut client = json!({
            "client_id": rp.client_id,
            "redirect_uris": [REDIRECT_URI],
            "token_endpoint_auth_method": "private_key_jwt",
            "token_endpoint_auth_signing_alg": "ES256",
            "require_pushed_authorization_requests": true,
            "id_token_signed_response_alg": "ES256",
            "authorization_signed_response_alg": rp.alg,
            "jwks": {"keys": [signer_jwk]},
        });
        if let Some((alg, enc)) = rp.encrypted {
            let key = d
                .keys()
                .await?
                .create_key(pb::CreateKeyRequest {
                    name: rp.client_id.into(),
                    alg: alg.into(),
                    curve: "P-256".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            client["jwks"]["keys"] = json!([signer_jwk, active_jwk(&key)?]);
            client["authorization_encrypted_response_alg"] = alg.into();
            client["authorization_encrypted_response_enc"] = enc.into();
        }
        clients.push(client);
    }
    let op = Op::start_with(
        &Value::Array(clients),
        Some(&JarmSigner {
            endpoint: &d.endpoint,
            client: &op_client,
            keys,
            jwks: jwks.clone(),
        }),
    )?;
    let op_jwks = op.jwks()?;
    // The OP publishes sigild's public keys as they are.
    for jwk in &jwks {
        let published = op_jwks["keys"]
            .as_array()
            .ok_or("keys")?
            .iter()
            .find(|k| k["kid"] == jwk["kid"])
            .ok_or_else(|| format!("sigild's {jwk} not in the OP's {op_jwks}"))?;
        for member in ["kty", "crv", "x", "y", "n", "e", "alg", "use"] {
            assert_eq!(
                published.get(member),
                jwk.get(member),
                "{member}: {published}"
            );
        }
    }

    // Whole logins, the requests pushed, the answers JARM responses signed by sigild: one
    // granted, one refused (prompt=none without a session: login_required) per client.
    let mut logins = Vec::new();
    for rp in &RPS {
        let ctx = rp.client_id;
        let mut answers = Vec::new();
        for prompt in [None, Some("none")] {
            let state = format!("state-{}-{ctx}", prompt.unwrap_or("login"));
            let nonce = format!("nonce-{ctx}");
            let par = assertion(&d, &op, ctx).await?;
            let auth = op.authorize_with(&Authorization {
                client_id: ctx,
                redirect_uri: REDIRECT_URI,
                nonce: &nonce,
                state: &state,
                response_mode: Some(rp.response_mode),
                prompt,
                par_assertion: Some(&par),
            })?;
            let response = opened(&d, rp, jarm_response(rp, &auth)?).await?;
            answers.push((state, nonce, response, auth));
        }
        logins.push(answers);
    }

    // The relying party verifies them all with node jose; and its checks can fail: a response
    // presented as another client's, a response whose payload was changed.
    let mut cases = Vec::new();
    let mut tampered = Vec::new();
    for (i, (rp, answers)) in RPS.iter().zip(&logins).enumerate() {
        let granted = &answers[0].2;
        let mut claims = decode(granted)?.1;
        claims["state"] = json!("forged");
        tampered.push(with_payload(granted, &claims));
        let other = RPS[(i + 1) % RPS.len()].client_id;
        for (_, _, response, _) in answers {
            cases.push((rp.client_id, response.as_str(), rp.alg));
        }
        cases.push((other, granted.as_str(), rp.alg));
    }
    for (rp, forged) in RPS.iter().zip(&tampered) {
        cases.push((rp.client_id, forged.as_str(), rp.alg));
    }
    let mut results = op.verify_jarm(&cases)?.into_iter();
    let (mut codes, mut jwcrypto, mut id_tokens) = (Vec::new(), Vec::new(), Vec::new());

    for ((rp, kid), answers) in RPS.iter().zip(&kids).zip(&logins) {
        let ctx = rp.client_id;
        let (state, nonce, response, auth) = &answers[0];
        let claims = check_jarm(&op, rp, kid, results.next().ok_or("result")?)?;
        assert_eq!(claims["state"], json!(state), "{ctx}: {claims}");
        assert!(claims.get("error").is_none(), "{ctx}: {claims}");
        let code = claims["code"].as_str().ok_or("no code in the response")?;
        codes.push(code.to_owned());
        // (and jwcrypto on the same response, against the same JWKS, below)
        jwcrypto.push((response.clone(), claims.clone()));

        // The refusal travels the same way: with its state and no code.
        let (state, ..) = &answers[1];
        let claims = check_jarm(&op, rp, kid, results.next().ok_or("result")?)?;
        assert_eq!(claims["error"], "login_required", "{ctx}: {claims}");
        assert_eq!(claims["state"], json!(state), "{ctx}: {claims}");
        assert!(claims.get("code").is_none(), "{ctx}: {claims}");

        let e = results
            .next()
            .ok_or("result")?
            .err()
            .ok_or_else(|| format!("{ctx}: accepted as another client's"))?;
        assert!(e.contains("aud"), "{ctx} as another client's: {e}");

        // The code from the signed response is the one the token endpoint takes.
        let verifier = auth["code_verifier"].as_str().ok_or("no verifier")?;
        let client_auth = assertion(&d, &op, ctx).await?;
        let tokens = op.token(
            ctx,
            ClientAuth::Assertion(&client_auth),
            REDIRECT_URI,
            code,
            verifier,
        )?;
        let id_token = tokens["id_token"].as_str().ok_or("no id_token")?;
        id_tokens.push((ctx, nonce.clone(), id_token.to_owned()));
    }

    // jwcrypto, in one process: the JARM responses verify there too, to the same claims; the
    // ID tokens are the OP's own (not signed with a JARM key) and carry the request's nonce.
    let requests: Vec<Value> = jwcrypto
        .iter()
        .map(|(jws, _)| jws)
        .chain(id_tokens.iter().map(|(_, _, jws)| jws))
        .map(|jws| json!({"op": "jws", "jws": jws, "jwks": op_jwks}))
        .collect();
    let answers = python_batch(&requests)?;
    assert_eq!(answers.len(), requests.len(), "one answer per request");
    for ((_, claims), v) in jwcrypto.iter().zip(&answers) {
        assert_eq!(&v["payload"], claims, "jwcrypto and node jose agree");
    }
    for ((ctx, nonce, _), id) in id_tokens.iter().zip(&answers[jwcrypto.len()..]) {
        assert_eq!(id["payload"]["nonce"], json!(nonce), "{ctx}");
        assert_eq!(id["payload"]["aud"], json!(ctx), "{ctx}");
        let id_kid = id["header"]["kid"].as_str().unwrap_or_default();
        assert!(
            !kids.iter().any(|k| k == id_kid),
            "{ctx}: the ID token is the OP's own, not a JARM key's"
        );
    }
    for rp in &RPS {
        let e = results
            .next()
            .ok_or("result")?
            .err()
            .ok_or_else(|| format!("{}: accepted with a changed payload", rp.client_id))?;
        assert!(e.contains("signature"), "{} tampered: {e}", rp.client_id);
    }
    assert!(results.next().is_none(), "one result per case");

    // sigild's audit trail: every response signed as a JARM response for the OP's identity,
    // with the key of the client's alg; the codes appear neither there nor in its log.
    let lines = d.stdout_lines();
    let records: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    for (rp, kid) in RPS.iter().zip(&kids) {
        let signed: Vec<&Value> = records
            .iter()
            .filter(|r| r["caller"] == OP_IDENTITY && r["key"] == rp.key)
            .collect();
        assert_eq!(signed.len(), 2, "{}: {signed:?}", rp.client_id);
        for r in signed {
            assert_eq!(r["operation"], "jarm", "{r}");
            assert_eq!(r["outcome"], "ok", "{r}");
            assert_eq!(r["kid"], json!(kid), "{r}");
            assert_eq!(r["alg"], rp.alg, "{r}");
        }
    }
    let (audit, log) = (lines.join("\n"), d.log_text());
    for code in &codes {
        assert!(!audit.contains(code.as_str()), "a code in the audit trail");
        assert!(!log.contains(code.as_str()), "a code in the log");
    }
    Ok(())
}
