//! End to end with a real OpenID Provider: node-oidc-provider issues ID tokens and JARM
//! responses encrypted to relying parties whose `jwks` hold sigild's decryption keys (as GetKey
//! publishes them), after a whole authorization-code login; sigild decrypts them and the inner
//! JWS verifies (python jwcrypto) against the OP's published JWKS. The other direction: a
//! request object signed by a client key in sigild, encrypted by node jose to sigild's key as
//! the OP's decryption key, decrypted by sigild and verified against sigild's JWKS.

mod support;

use serde_json::{Value, json};
use sigild::api::pb;
use support::jwe::{CIPHERTEXT, Encrypter, REJECTED, flip_bit, header_of, without_request_id};
use support::op::{ClientAuth, Op};
use support::*;

/// One relying party of the OP: its decryption key in sigild and how it asks for encryption.
struct Rp {
    client_id: &'static str,
    /// The JWE alg of its sigild key, also its `id_token_encrypted_response_alg` and
    /// `authorization_encrypted_response_alg`.
    alg: &'static str,
    /// The curve of an ECDH-ES key ("" for RSA).
    curve: &'static str,
    id_token_enc: &'static str,
    jarm_enc: &'static str,
    /// Authenticates with private_key_jwt, its assertions signed by an ES256 key in sigild
    /// (else client_secret_basic).
    private_key_jwt: bool,
}

const RPS: [Rp; 3] = [
    Rp {
        client_id: "rp-rsa-oaep-256",
        alg: "RSA-OAEP-256",
        curve: "",
        id_token_enc: "A256GCM",
        jarm_enc: "A128CBC-HS256",
        private_key_jwt: true,
    },
    Rp {
        client_id: "rp-ecdh-p256",
        alg: "ECDH-ES+A256KW",
        curve: "P-256",
        id_token_enc: "A128CBC-HS256",
        jarm_enc: "A256GCM",
        private_key_jwt: false,
    },
    Rp {
        client_id: "rp-ecdh-p384",
        alg: "ECDH-ES+A256KW",
        curve: "P-384",
        id_token_enc: "A256GCM",
        jarm_enc: "A256CBC-HS512",
        private_key_jwt: false,
    },
];

const REDIRECT_URI: &str = "https://rp.example/cb";

fn secret(client_id: &str) -> String {
    format!("secret-of-{client_id}-0123456789abcdef")
}

/// The name of the sigild key that signs `client_id`'s client assertions.
fn signer(client_id: &str) -> String {
    format!("{client_id}-signer")
}

/// Exchange `code` for `rp` at the OP, authenticated as the client is configured.
async fn exchange(
    d: &Daemon,
    op: &Op,
    rp: &Rp,
    code: &str,
    code_verifier: &str,
) -> TestResult<Value> {
    let secret = secret(rp.client_id);
    let assertion;
    let auth = if rp.private_key_jwt {
        assertion = d
            .signer()
            .await?
            .sign_client_assertion(pb::SignClientAssertionRequest {
                explicit_typ: false,
                nbf: false,
                key: signer(rp.client_id),
                client_id: rp.client_id.into(),
                audience: op.issuer.clone(),
                lifetime_seconds: 0,
            })
            .await?
            .into_inner()
            .compact;
        ClientAuth::Assertion(&assertion)
    } else {
        ClientAuth::Secret(&secret)
    };
    op.token(rp.client_id, auth, REDIRECT_URI, code, code_verifier)
}

/// Create a decryption key (the key name is the client id) and return its published JWK.
async fn create_enc_key(d: &Daemon, name: &str, alg: &str, curve: &str) -> TestResult<Value> {
    let key = d
        .keys()
        .await?
        .create_key(pb::CreateKeyRequest {
            name: name.into(),
            alg: alg.into(),
            curve: curve.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let jwk = active_jwk(&key)?;
    assert_eq!(jwk["use"], "enc", "{name}: {jwk}");
    assert_eq!(jwk["alg"], alg, "{name}: {jwk}");
    Ok(jwk)
}

async fn decrypt(
    d: &Daemon,
    key: &str,
    jwe: &str,
    alg: &str,
    enc: &str,
) -> Result<pb::DecryptJweResponse, tonic::Status> {
    Ok(d.decrypter()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?
        .decrypt_jwe(pb::DecryptJweRequest {
            key: key.into(),
            jwe: jwe.as_bytes().to_vec(),
            allowed_algs: vec![alg.into()],
            allowed_encs: vec![enc.into()],
        })
        .await?
        .into_inner())
}

/// Decrypt `jwe` (a nested JWT encrypted to `rp`'s key with `enc`) through sigild, check what
/// sigild reports and the header, verify the inner JWS against `op_jwks` with jwcrypto, and
/// return its claims.
async fn open_nested(
    d: &Daemon,
    rp: &Rp,
    kid: &str,
    enc: &str,
    jwe: &str,
    op_jwks: &Value,
    what: &str,
) -> TestResult<Value> {
    let ctx = format!("{} {what}", rp.client_id);
    assert_eq!(jwe.split('.').count(), 5, "{ctx}: a compact JWE: {jwe}");
    let r = decrypt(d, rp.client_id, jwe, rp.alg, enc)
        .await
        .map_err(|e| format!("{ctx}: DecryptJwe: {e}\n{}", d.log_text()))?;
    assert_eq!((r.alg.as_str(), r.enc.as_str()), (rp.alg, enc), "{ctx}");
    assert_eq!(r.kid, kid, "{ctx}: the kid of the client's sigild key");
    assert_eq!(r.key_version, 1, "{ctx}");
    let header: Value = serde_json::from_str(&r.protected_header_json)?;
    assert_eq!(header["alg"], rp.alg, "{ctx}: {header}");
    assert_eq!(header["enc"], enc, "{ctx}: {header}");
    assert_eq!(header["kid"], kid, "{ctx}: {header}");
    assert_eq!(header["cty"], "JWT", "{ctx}: a nested JWT: {header}");
    // The header sigild decoded is the JWE's own first segment.
    assert_eq!(header, header_of(jwe)?, "{ctx}");
    let inner = String::from_utf8(r.plaintext).map_err(|_| format!("{ctx}: not UTF-8"))?;
    let v = verify_jws(&inner, op_jwks).map_err(|e| format!("{ctx}: inner JWS: {e}"))?;
    assert_eq!(v["header"]["alg"], "ES256", "{ctx}: signed as configured");
    Ok(v["payload"].clone())
}

#[tokio::test]
async fn encrypted_id_tokens_and_jarm_responses_from_a_real_op_decrypt_through_sigild() -> TestResult
{
    let token = Token::new()?;
    let d = Daemon::start(&token)?;

    // Each relying party's decryption key lives in sigild; the OP learns its public JWK.
    let mut clients = Vec::new();
    let mut kids = Vec::new();
    for rp in &RPS {
        let jwk = create_enc_key(&d, rp.client_id, rp.alg, rp.curve).await?;
        kids.push(jwk["kid"].as_str().ok_or("no kid")?.to_owned());
        let mut keys = vec![jwk];
        let auth_method = if rp.private_key_jwt {
            let key = d.create(&signer(rp.client_id), "ES256", 0).await?;
            keys.push(active_jwk(&key)?);
            "private_key_jwt"
        } else {
            "client_secret_basic"
        };
        clients.push(json!({
            "client_id": rp.client_id,
            "client_secret": secret(rp.client_id),
            "redirect_uris": [REDIRECT_URI],
            "token_endpoint_auth_method": auth_method,
            "id_token_signed_response_alg": "ES256",
            "id_token_encrypted_response_alg": rp.alg,
            "id_token_encrypted_response_enc": rp.id_token_enc,
            "authorization_signed_response_alg": "ES256",
            "authorization_encrypted_response_alg": rp.alg,
            "authorization_encrypted_response_enc": rp.jarm_enc,
            "jwks": {"keys": keys},
        }));
    }
    let op = Op::start(&Value::Array(clients))?;
    let op_jwks = op.jwks()?;

    let mut id_tokens = Vec::new();
    for (rp, kid) in RPS.iter().zip(&kids) {
        // A whole login; the ID token comes back encrypted to the client's sigild key.
        let nonce = format!("nonce-{}", rp.client_id);
        let state = format!("state-{}", rp.client_id);
        let auth = op.authorize(rp.client_id, REDIRECT_URI, &nonce, &state, None)?;
        assert_eq!(auth["params"]["state"], json!(state), "{}", rp.client_id);
        let code = auth["params"]["code"].as_str().ok_or("no code")?;
        let verifier = auth["code_verifier"].as_str().ok_or("no verifier")?;
        let tokens = exchange(&d, &op, rp, code, verifier).await?;
        let id_token = tokens["id_token"].as_str().ok_or("no id_token")?;
        let claims =
            open_nested(&d, rp, kid, rp.id_token_enc, id_token, &op_jwks, "id_token").await?;
        assert_eq!(
            claims["iss"],
            json!(op.issuer),
            "{}: {claims}",
            rp.client_id
        );
        assert_eq!(
            claims["aud"],
            json!(rp.client_id),
            "{}: {claims}",
            rp.client_id
        );
        assert_eq!(claims["nonce"], json!(nonce), "{}: {claims}", rp.client_id);
        assert_eq!(claims["sub"], "alice", "{}: {claims}", rp.client_id);
        id_tokens.push(id_token.to_owned());

        // JARM: the authorization response itself is encrypted to the same key; the code inside
        // it is the one the token endpoint takes.
        let state = format!("jarm-state-{}", rp.client_id);
        let nonce = format!("jarm-nonce-{}", rp.client_id);
        let auth = op.authorize(rp.client_id, REDIRECT_URI, &nonce, &state, Some("jwt"))?;
        let response = auth["params"]["response"]
            .as_str()
            .ok_or_else(|| format!("{}: no JARM response: {auth}", rp.client_id))?;
        let jarm = open_nested(&d, rp, kid, rp.jarm_enc, response, &op_jwks, "JARM").await?;
        assert_eq!(jarm["iss"], json!(op.issuer), "{}: {jarm}", rp.client_id);
        assert_eq!(jarm["aud"], json!(rp.client_id), "{}: {jarm}", rp.client_id);
        assert_eq!(jarm["state"], json!(state), "{}: {jarm}", rp.client_id);
        let code = jarm["code"]
            .as_str()
            .ok_or("no code in the JARM response")?;
        let verifier = auth["code_verifier"].as_str().ok_or("no verifier")?;
        let tokens = exchange(&d, &op, rp, code, verifier).await?;
        let claims = open_nested(
            &d,
            rp,
            kid,
            rp.id_token_enc,
            tokens["id_token"].as_str().ok_or("no id_token")?,
            &op_jwks,
            "id_token after JARM",
        )
        .await?;
        assert_eq!(claims["nonce"], json!(nonce), "{}: {claims}", rp.client_id);
    }

    // Another client's key of the same alg (its kid is not that key's), or a tampered
    // ciphertext: the one uniform refusal, with nothing to tell them apart.
    let (p256, p384) = (&RPS[1], &RPS[2]);
    let mut messages = Vec::new();
    for (what, jwe) in [
        ("another client's id_token", id_tokens[1].clone()),
        (
            "a flipped ciphertext bit",
            flip_bit(&id_tokens[2], CIPHERTEXT, 0)?,
        ),
    ] {
        let (code, message, id) =
            failure(decrypt(&d, p384.client_id, &jwe, p384.alg, p384.id_token_enc).await)?;
        assert_eq!(code, tonic::Code::InvalidArgument, "{what}: {message}");
        assert!(message.contains(REJECTED), "{what}: {message}");
        messages.push(without_request_id(&message, &id));
    }
    assert_eq!(messages[0], messages[1], "no oracle");
    assert_eq!(p256.alg, p384.alg, "the wrong-key case keeps the alg");
    Ok(())
}

#[tokio::test]
async fn request_objects_signed_in_sigild_and_encrypted_to_sigild_decrypt_and_verify() -> TestResult
{
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    const OP_ISSUER: &str = "https://op.example";
    const CLIENT_ID: &str = "rp-signed-requests";
    // The client's signing key and the OP's decryption keys, all in sigild.
    d.create("client-signer", "ES256", 0).await?;
    for (key, alg, curve, enc) in [
        ("op-rsa", "RSA-OAEP-256", "", "A256GCM"),
        ("op-ecdh", "ECDH-ES+A256KW", "P-256", "A128CBC-HS256"),
    ] {
        let enc_jwk = create_enc_key(&d, key, alg, curve).await?;
        let request = json!({
            "response_type": "code",
            "client_id": CLIENT_ID,
            "redirect_uri": REDIRECT_URI,
            "scope": "openid",
            "state": format!("state-{key}"),
            "nonce": format!("nonce-{key}"),
        });
        let signed = d
            .signer()
            .await?
            .sign_request_object(pb::SignRequestObjectRequest {
                key: "client-signer".into(),
                client_id: CLIENT_ID.into(),
                audience: OP_ISSUER.into(),
                claims_json: request.to_string(),
                lifetime_seconds: 0,
            })
            .await?
            .into_inner();
        let kid = enc_jwk["kid"].as_str().ok_or("kid")?;
        // jwcrypto and node jose encrypt the signed request object to the OP's key (OIDC
        // Core §6.1: a nested JWT).
        for producer in Encrypter::BOTH {
            let ctx = format!("{key} ({})", producer.name());
            let header = json!({"kid": kid, "cty": "JWT"});
            let jwe = producer.encrypt(&enc_jwk, alg, enc, signed.compact.as_bytes(), &header)?;
            let r = decrypt(&d, key, &jwe, alg, enc)
                .await
                .map_err(|e| format!("{ctx}: DecryptJwe: {e}\n{}", d.log_text()))?;
            assert_eq!(
                r.plaintext,
                signed.compact.as_bytes(),
                "{ctx}: byte for byte"
            );
            assert_eq!(r.kid, kid, "{ctx}");
            assert_eq!((r.alg.as_str(), r.enc.as_str()), (alg, enc), "{ctx}");
            let v = verify_jws(&String::from_utf8(r.plaintext)?, &d.jwks().await?)?;
            let claims = &v["payload"];
            assert_eq!(claims["iss"], CLIENT_ID, "{ctx}: {claims}");
            assert_eq!(claims["aud"], OP_ISSUER, "{ctx}: {claims}");
            for (name, value) in request.as_object().ok_or("object")? {
                assert_eq!(&claims[name], value, "{ctx}: {name}");
            }
        }
    }
    Ok(())
}
