//! Decryption through the service over the in-memory backend (ECDH on software keys), with
//! JWEs made by Python jwcrypto (tests/verifiers/jose_verify.py, op `encrypt_batch`): kid
//! selection, the no-oracle rule, policy and purpose refusals, the audit record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::audit::Audit;
use crate::backend::memory::MemoryBackend;
use crate::jose::TokenType;
use crate::keyring::{KeySize, Keyring};
use crate::policy::{Caller, KeyPattern, Policy, Rate, Rule, Who};
use crate::service::{ErrorKind, Origin, ServiceOptions, SystemClock, UNDECRYPTABLE};

/// The largest JWE the test service accepts.
const MAX_JWE: usize = 4096;

struct Fixture {
    service: Service,
    audit: Arc<Audit>,
}

/// A service whose caller `rp` may decrypt with `enc*` keys using A256GCM or A128GCM (not
/// the CBC encs), `other` may only sign, and `slow` may decrypt once a minute.
async fn fixture() -> Fixture {
    let keyring = Arc::new(Keyring::new(Arc::new(MemoryBackend::new())));
    keyring.refresh().await.unwrap();
    let rule = |who: &str, ops: &[Operation]| Rule {
        who: Some(Who::Identity(who.into())),
        keys: vec![KeyPattern::new("enc*"), KeyPattern::new("sig")],
        operations: ops.iter().copied().collect(),
        ..Rule::default()
    };
    let rules = vec![
        Rule {
            jwe_encs: Some(vec![JweEnc::A256Gcm, JweEnc::A128Gcm]),
            ..rule("rp", &[Operation::Decrypt, Operation::Sign(TokenType::Raw)])
        },
        rule("other", &[Operation::Sign(TokenType::Jws)]),
        Rule {
            rate: Some(Rate::parse("1/m").unwrap()),
            ..rule("slow", &[Operation::Decrypt])
        },
    ];
    let audit = Arc::new(Audit::memory(false));
    let options = ServiceOptions {
        max_jwe_bytes: MAX_JWE,
        ..ServiceOptions::default()
    };
    let service = Service::new(keyring, Arc::new(SystemClock), options)
        .with_access(Arc::new(Policy::new(rules, None)), Arc::clone(&audit));
    let me = Origin::in_process();
    service
        .create_key(&me, "enc", "ECDH-ES", KeySize::default(), false, &[])
        .await
        .unwrap();
    let p384 = KeySize {
        curve: Some(crate::crypto::Curve::P384),
        ..KeySize::default()
    };
    service
        .create_key(&me, "enc-kw", "ECDH-ES+A256KW", p384, false, &[])
        .await
        .unwrap();
    service
        .create_key(&me, "sig", "EdDSA", KeySize::default(), false, &[])
        .await
        .unwrap();
    Fixture { service, audit }
}

fn rp() -> Origin {
    Origin::new(Caller::tls("rp"))
}

/// The public JWK of `key`'s version `version`.
fn jwk(s: &Service, key: &str, version: u32) -> Value {
    let info = s.key(key).unwrap();
    let v = info.versions.iter().find(|v| v.version == version).unwrap();
    let mut jwk = crate::jose::public_jwk(&v.public);
    jwk["kid"] = json!(v.kid);
    jwk
}

/// One encryption request for jwcrypto: `plaintext` to `jwk` with `alg`/`enc` and extra
/// protected members `header` (the JWK's kid unless `header` says otherwise).
fn item(jwk: &Value, alg: &str, enc: &str, plaintext: &[u8], header: Value) -> Value {
    let mut h = json!({"kid": jwk["kid"]});
    if let (Some(h), Some(extra)) = (h.as_object_mut(), header.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                h.remove(k);
            } else {
                h.insert(k.clone(), v.clone());
            }
        }
    }
    let public: serde_json::Map<String, Value> = jwk
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "kid")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    json!({
        "jwk": public, "alg": alg, "enc": enc,
        "plaintext_b64": crate::jose::b64(plaintext), "header": h,
    })
}

/// Compact JWEs for `items`, made by jwcrypto in one Python run.
fn jwcrypto(items: &[Value]) -> Vec<String> {
    use std::io::Write as _;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/verifiers/jose_verify.py"
    );
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let req = json!({"op": "encrypt_batch", "items": items});
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("jwcrypto: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["ok"], json!(true), "jwcrypto: {v}");
    serde_json::from_value(v["jwe"].clone()).unwrap()
}

async fn decrypt(s: &Service, origin: &Origin, key: &str, jwe: &str) -> Result<Decrypted, Error> {
    s.decrypt_jwe(origin, key, jwe.as_bytes(), &[], &[]).await
}

/// `e` is the one answer every rejected JWE gets, as the caller sees it.
fn assert_uniform(e: &Error, case: &str) {
    assert!(
        matches!(e, Error::Undecryptable { .. }),
        "{case}: {}",
        e.chain()
    );
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{case}");
    assert_eq!(e.message(), UNDECRYPTABLE, "{case}");
    let status = crate::api::status_for(e, "00112233aabbccdd");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{case}");
    assert_eq!(
        status.message(),
        format!("{UNDECRYPTABLE} (request id 00112233aabbccdd)"),
        "{case}"
    );
}

/// Flip one bit of the `part`-th (0-based) base64url part of a compact JWE, keeping it valid
/// base64url of the same length.
fn flip(jwe: &str, part: usize) -> String {
    let mut parts: Vec<String> = jwe.split('.').map(str::to_owned).collect();
    let mut bytes = crate::jose::b64_decode(&parts[part]).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    parts[part] = crate::jose::b64(&bytes);
    parts.join(".")
}

#[tokio::test]
async fn the_kid_chooses_among_next_active_and_retired_versions() {
    let f = fixture().await;
    let s = &f.service;
    let me = Origin::in_process();
    s.rotate_key(&me, "enc", "", KeySize::default())
        .await
        .unwrap();
    let (v1, v2) = (jwk(s, "enc", 1), jwk(s, "enc", 2));
    let jwes = jwcrypto(&[
        item(&v1, "ECDH-ES", "A256GCM", b"to v1", json!({})),
        item(&v2, "ECDH-ES", "A128GCM", b"to v2 (next)", json!({})),
        item(
            &v1,
            "ECDH-ES",
            "A256GCM",
            b"no kid: active",
            json!({"kid": null}),
        ),
        item(
            &v2,
            "ECDH-ES",
            "A256GCM",
            b"no kid, to v2",
            json!({"kid": null}),
        ),
    ]);
    let d = decrypt(s, &rp(), "enc", &jwes[0]).await.unwrap();
    assert_eq!((d.plaintext.expose(), d.version), (&b"to v1"[..], 1));
    assert_eq!(d.kid, v1["kid"].as_str().unwrap());
    assert_eq!((d.alg, d.enc), (JweAlg::EcdhEs, JweEnc::A256Gcm));
    let header: Value = serde_json::from_str(&d.protected_header).unwrap();
    assert_eq!(header["alg"], json!("ECDH-ES"));
    let d = decrypt(s, &rp(), "enc", &jwes[1]).await.unwrap();
    assert_eq!((d.plaintext.expose(), d.version), (&b"to v2 (next)"[..], 2));
    let d = decrypt(s, &rp(), "enc", &jwes[2]).await.unwrap();
    assert_eq!(
        (d.plaintext.expose(), d.version),
        (&b"no kid: active"[..], 1)
    );
    // Without a kid the active version is tried, and v2 is not active yet.
    assert_uniform(
        &decrypt(s, &rp(), "enc", &jwes[3]).await.unwrap_err(),
        "v2, no kid",
    );

    // v2 active, v1 retired: tokens to v1 are still in flight and decrypt.
    s.activate(&me, "enc", 2).await.unwrap();
    let d = decrypt(s, &rp(), "enc", &jwes[0]).await.unwrap();
    assert_eq!(d.version, 1);
    let d = decrypt(s, &rp(), "enc", &jwes[3]).await.unwrap();
    assert_eq!(
        (d.plaintext.expose(), d.version),
        (&b"no kid, to v2"[..], 2)
    );

    // Destroyed: v1's kid names no published version any more.
    s.destroy(&me, "enc", 1).await.unwrap();
    assert_uniform(
        &decrypt(s, &rp(), "enc", &jwes[0]).await.unwrap_err(),
        "destroyed v1",
    );
    assert_eq!(decrypt(s, &rp(), "enc", &jwes[1]).await.unwrap().version, 2);
}

#[tokio::test]
async fn every_rejected_jwe_gets_the_same_answer() {
    let f = fixture().await;
    let s = &f.service;
    let (enc, kw) = (jwk(s, "enc", 1), jwk(s, "enc-kw", 1));
    let big = vec![b'x'; MAX_JWE];
    let jwes = jwcrypto(&[
        item(&enc, "ECDH-ES", "A256GCM", b"fine", json!({})),
        item(
            &enc,
            "ECDH-ES",
            "A256GCM",
            b"x",
            json!({"kid": "no-such-kid"}),
        ),
        item(&enc, "ECDH-ES+A256KW", "A256GCM", b"x", json!({})),
        item(&enc, "ECDH-ES", "A128CBC-HS256", b"x", json!({})),
        item(&enc, "ECDH-ES", "A256GCM", b"x", json!({"zip": "DEF"})),
        item(&enc, "ECDH-ES", "A256GCM", &big, json!({})),
        item(&kw, "ECDH-ES+A256KW", "A256GCM", b"x", json!({})),
        item(&enc, "ECDH-ES", "A256GCM", b"x", json!({"kid": kw["kid"]})),
    ]);
    let good = &jwes[0];
    assert_eq!(
        decrypt(s, &rp(), "enc", good)
            .await
            .unwrap()
            .plaintext
            .expose(),
        b"fine"
    );
    let truncated = good.rsplit_once('.').unwrap().0.to_owned();
    // (case, key, JWE, the request's allowed_algs, its allowed_encs)
    type Case<'a> = (&'a str, &'a str, String, &'a [&'a str], &'a [&'a str]);
    let cases: Vec<Case<'_>> = vec![
        ("wrong kid", "enc", jwes[1].clone(), &[], &[]),
        ("alg not the key's", "enc", jwes[2].clone(), &[], &[]),
        ("enc not in the rule", "enc", jwes[3].clone(), &[], &[]),
        ("zip", "enc", jwes[4].clone(), &[], &[]),
        ("oversized", "enc", jwes[5].clone(), &[], &[]),
        ("kid of another key", "enc", jwes[7].clone(), &[], &[]),
        (
            "alg not in the request",
            "enc-kw",
            jwes[6].clone(),
            &["ECDH-ES"],
            &[],
        ),
        (
            "enc not in the request",
            "enc",
            good.clone(),
            &[],
            &["A128GCM"],
        ),
        ("flipped tag", "enc", flip(good, 4), &[], &[]),
        ("flipped ciphertext", "enc", flip(good, 3), &[], &[]),
        ("flipped iv", "enc", flip(good, 2), &[], &[]),
        ("truncated", "enc", truncated, &[], &[]),
        ("four parts", "enc", format!("{good}."), &[], &[]),
        ("empty", "enc", String::new(), &[], &[]),
        ("not base64", "enc", good.replacen('.', ".!", 1), &[], &[]),
    ];
    for (case, key, jwe, algs, encs) in cases {
        let algs: Vec<String> = algs.iter().map(|a| (*a).to_owned()).collect();
        let encs: Vec<String> = encs.iter().map(|e| (*e).to_owned()).collect();
        let e = s
            .decrypt_jwe(&rp(), key, jwe.as_bytes(), &algs, &encs)
            .await
            .unwrap_err();
        assert_uniform(&e, case);
    }
    // The narrowed request is fine when the JWE fits it.
    let d = s
        .decrypt_jwe(
            &rp(),
            "enc-kw",
            jwes[6].as_bytes(),
            &["ECDH-ES+A256KW".into()],
            &["A256GCM".into()],
        )
        .await
        .unwrap();
    assert_eq!(d.plaintext.expose(), b"x");
}

#[tokio::test]
async fn refusals_that_say_nothing_about_the_jwe_keep_their_own_answer() {
    let f = fixture().await;
    let s = &f.service;
    let enc = jwk(s, "enc", 1);
    let jwe = &jwcrypto(&[item(&enc, "ECDH-ES", "A256GCM", b"x", json!({}))])[0];

    // No decrypt rule: the usual policy refusal, before anything else.
    let e = decrypt(s, &Origin::new(Caller::tls("other")), "enc", jwe)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{}", e.chain());
    assert!(e.message().contains("decrypt"), "{}", e.message());
    let e = decrypt(s, &Origin::new(Caller::tls("nobody")), "enc", jwe)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);

    // A signing key asked to decrypt, an encryption key asked to sign: said plainly.
    let e = decrypt(s, &rp(), "sig", jwe).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{}", e.chain());
    assert_ne!(e.message(), UNDECRYPTABLE);
    let e = s.sign_raw(&rp(), "enc", b"data", None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{}", e.chain());

    // No such key.
    let e = decrypt(s, &rp(), "enc-none", jwe).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{}", e.chain());

    // An unknown name in the request's own lists is the caller's mistake, said plainly.
    let e = s
        .decrypt_jwe(&rp(), "enc", jwe.as_bytes(), &["RSA1_5".into()], &[])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.message().contains("allowed_algs") && e.message().contains("RSA1_5"));
    let e = s
        .decrypt_jwe(&rp(), "enc", jwe.as_bytes(), &[], &["A512GCM".into()])
        .await
        .unwrap_err();
    assert!(e.message().contains("allowed_encs"), "{}", e.message());

    // Rate limits apply to decryption: the second one within the minute is refused.
    let slow = Origin::new(Caller::tls("slow"));
    decrypt(s, &slow, "enc", jwe).await.unwrap();
    let e = decrypt(s, &slow, "enc", jwe).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{}", e.chain());
}

#[tokio::test]
async fn the_audit_record_names_the_jwe_never_the_plaintext() {
    let f = fixture().await;
    let s = &f.service;
    let enc = jwk(s, "enc", 1);
    let jwe = &jwcrypto(&[item(
        &enc,
        "ECDH-ES",
        "A128GCM",
        b"very-secret-plaintext",
        json!({}),
    )])[0];
    decrypt(s, &rp(), "enc", jwe).await.unwrap();
    let bad = flip(jwe, 4);
    decrypt(s, &rp(), "enc", &bad).await.unwrap_err();
    let lines = f.audit.lines();
    let records: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &Value| r["operation"] == json!("decrypt"))
        .collect();
    assert_eq!(records.len(), 2, "{lines:?}");
    let ok = &records[0];
    assert_eq!(ok["caller"], json!("rp"));
    assert_eq!(ok["key"], json!("enc"));
    assert_eq!(ok["version"], json!(1));
    assert_eq!(ok["kid"], enc["kid"]);
    assert_eq!(ok["alg"], json!("ECDH-ES"));
    assert_eq!(ok["enc"], json!("A128GCM"));
    assert_eq!(
        ok["jwe_sha256"],
        json!(crate::audit::digest(jwe.as_bytes()))
    );
    assert_eq!(ok["outcome"], json!("ok"));
    let failed = &records[1];
    assert_eq!(failed["outcome"], json!("invalid_argument"));
    assert_eq!(
        failed["jwe_sha256"],
        json!(crate::audit::digest(bad.as_bytes()))
    );
    assert!(failed["reason"].is_string(), "{failed}");
    for l in &lines {
        assert!(!l.contains("very-secret-plaintext"), "{l}");
        assert!(
            !l.contains(&crate::jose::b64(b"very-secret-plaintext")),
            "{l}"
        );
    }
}

#[test]
fn debug_of_a_decrypted_jwe_hides_the_plaintext() {
    let d = Decrypted {
        plaintext: SecretBytes::new(b"the-plaintext".to_vec()),
        protected_header: "{}".into(),
        version: 1,
        kid: "k".into(),
        alg: JweAlg::EcdhEs,
        enc: JweEnc::A256Gcm,
    };
    let text = format!("{d:?}");
    assert!(!text.contains("the-plaintext"), "{text}");
    assert!(text.contains("13 bytes redacted"), "{text}");
}

#[test]
fn device_refusals_of_the_ciphertext_are_not_told_apart() {
    for e in [
        BackendError::InvalidRequest("decryption failed".into()),
        BackendError::Device {
            function: "C_Decrypt".into(),
            code: "CKR_ENCRYPTED_DATA_INVALID".into(),
        },
    ] {
        assert!(refuses_ciphertext(&e), "{e}");
    }
    for e in [
        BackendError::Busy(4),
        BackendError::Unavailable("gone".into()),
        BackendError::Device {
            function: "C_Decrypt".into(),
            code: "CKR_DEVICE_ERROR".into(),
        },
    ] {
        assert!(!refuses_ciphertext(&e), "{e}");
    }
}

/// An RSA 2048 private key as PKCS#8 DER, made by Python `cryptography`.
fn rsa_pkcs8() -> Vec<u8> {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys\nfrom cryptography.hazmat.primitives.asymmetric import rsa\n\
             from cryptography.hazmat.primitives import serialization as s\n\
             k = rsa.generate_private_key(public_exponent=65537, key_size=2048)\n\
             sys.stdout.buffer.write(k.private_bytes(s.Encoding.DER, s.PrivateFormat.PKCS8, \
             s.NoEncryption()))",
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test]
async fn rsa_oaep_decrypts_and_its_padding_failures_look_like_any_other() {
    let f = fixture().await;
    let s = &f.service;
    let material = crate::backend::parse_pkcs8(&SecretBytes::new(rsa_pkcs8())).unwrap();
    s.import_key(
        &Origin::in_process(),
        "enc-rsa",
        "RSA-OAEP-256",
        false,
        material,
        &[],
    )
    .await
    .unwrap();
    let key = jwk(s, "enc-rsa", 1);
    let jwes = jwcrypto(&[
        item(&key, "RSA-OAEP-256", "A256GCM", b"rsa plaintext", json!({})),
        item(&key, "RSA-OAEP", "A256GCM", b"sha-1", json!({})),
    ]);
    let d = decrypt(s, &rp(), "enc-rsa", &jwes[0]).await.unwrap();
    assert_eq!(d.plaintext.expose(), b"rsa plaintext");
    assert_eq!(d.alg, JweAlg::RsaOaep256);
    // Bad OAEP padding (a flipped bit in the encrypted key), a tag that does not verify, and
    // an alg other than the key's: one answer.
    assert_uniform(
        &decrypt(s, &rp(), "enc-rsa", &flip(&jwes[0], 1))
            .await
            .unwrap_err(),
        "flipped encrypted key",
    );
    assert_uniform(
        &decrypt(s, &rp(), "enc-rsa", &flip(&jwes[0], 4))
            .await
            .unwrap_err(),
        "flipped tag",
    );
    assert_uniform(
        &decrypt(s, &rp(), "enc-rsa", &jwes[1]).await.unwrap_err(),
        "RSA-OAEP to an RSA-OAEP-256 key",
    );
}
