//! JWE decryption through the real `sigild serve` on SoftHSM, with JWEs made by libraries
//! sigild did not write (Python jwcrypto, node jose) to the public JWK sigild published: every
//! key-management alg × content encryption, the plaintext compared byte for byte; the version
//! chosen by `kid`; narrowing per request; and the negative set, where every rejected JWE gets
//! one and the same status and message while the log under the request id says why.
//!
//! One daemon per alg family (the combinations of a family share it), one token per test.

mod support;

use std::collections::BTreeSet;

use serde_json::{Value, json};
use sigild::api::pb;
use support::jwe::*;
use support::*;
use tonic::Code;

/// One decryption key a matrix test creates.
#[derive(Debug, Clone, Copy)]
struct Case {
    key: &'static str,
    alg: &'static str,
    rsa_bits: u32,
    curve: &'static str,
}

const fn case(key: &'static str, alg: &'static str, rsa_bits: u32, curve: &'static str) -> Case {
    Case {
        key,
        alg,
        rsa_bits,
        curve,
    }
}

/// One JWE of the matrix and what it must decrypt to.
struct Expect {
    what: String,
    case: Case,
    enc: &'static str,
    by: Encrypter,
    plaintext: Vec<u8>,
    kid: String,
}

/// Create every case's key, encrypt to its published JWK with both libraries — each enc with
/// a binary plaintext, plus an empty and a ~100 KiB plaintext per key and library — decrypt
/// every JWE through `DecryptJwe` and compare. Returns the (key, enc, library) combinations
/// that decrypted.
async fn matrix(d: &Daemon, cases: &[Case]) -> TestResult<BTreeSet<(String, String, String)>> {
    let mut expects = Vec::new();
    let mut requests: Vec<(Encrypter, Value)> = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        create_enc(d, c.key, c.alg, c.rsa_bits, c.curve).await?;
        let jwk = published_enc_jwk(d, c.key, c.alg).await?;
        let kid = jwk["kid"].as_str().ok_or("kid")?.to_owned();
        for by in Encrypter::BOTH {
            let mut plaintexts: Vec<(&'static str, Vec<u8>, bool)> = ENCS
                .iter()
                .enumerate()
                .map(|(j, enc)| (*enc, binary_plaintext(257 + 31 * j + i), true))
                .collect();
            // An empty plaintext, and a large one (no kid: the active version decrypts).
            plaintexts.push((ENCS[i % 4], Vec::new(), true));
            plaintexts.push((ENCS[(i + 1) % 4], binary_plaintext(100 * 1024 + 3), false));
            for (enc, plaintext, with_kid) in plaintexts {
                let header = if with_kid {
                    json!({"kid": kid, "cty": "JWT"})
                } else {
                    json!({})
                };
                requests.push((by, encryption(&jwk, c.alg, enc, &plaintext, &header)));
                expects.push(Expect {
                    what: format!(
                        "{} {} {enc} by {}, {} bytes",
                        c.key,
                        c.alg,
                        by.name(),
                        plaintext.len()
                    ),
                    case: *c,
                    enc,
                    by,
                    plaintext,
                    kid: kid.clone(),
                });
            }
        }
    }
    // One run of each library for all of them.
    let mut jwes = vec![String::new(); requests.len()];
    for by in Encrypter::BOTH {
        let (idx, items): (Vec<usize>, Vec<Value>) = requests
            .iter()
            .enumerate()
            .filter(|(_, (b, _))| *b == by)
            .map(|(i, (_, r))| (i, r.clone()))
            .unzip();
        for (i, jwe) in idx.into_iter().zip(by.encrypt_batch(&items)?) {
            jwes[i] = jwe;
        }
    }
    let mut done = BTreeSet::new();
    for (e, jwe) in expects.iter().zip(&jwes) {
        let header = header_of(jwe)?;
        assert_eq!(
            header["alg"], e.case.alg,
            "{}: the library's header",
            e.what
        );
        assert_eq!(header["enc"], e.enc, "{}: the library's header", e.what);
        let r = decrypt(d, e.case.key, jwe)
            .await
            .map_err(|s| format!("{}: {s}\n{}", e.what, d.log_text()))?;
        if r.plaintext != e.plaintext {
            return Err(format!(
                "{}: plaintext differs ({} bytes back, {} sent)",
                e.what,
                r.plaintext.len(),
                e.plaintext.len()
            )
            .into());
        }
        assert_eq!(r.alg, e.case.alg, "{}", e.what);
        assert_eq!(r.enc, e.enc, "{}", e.what);
        assert_eq!(r.kid, e.kid, "{}", e.what);
        assert_eq!(r.key_version, 1, "{}", e.what);
        let answered: Value = serde_json::from_str(&r.protected_header_json)
            .map_err(|err| format!("{}: protected_header_json: {err}", e.what))?;
        assert_eq!(answered, header, "{}: protected header", e.what);
        done.insert((
            e.case.key.to_owned(),
            e.enc.to_owned(),
            e.by.name().to_owned(),
        ));
    }
    Ok(done)
}

/// Every (key, enc, library) combination of `cases` ran.
fn assert_all_ran(done: &BTreeSet<(String, String, String)>, cases: &[Case]) {
    assert_eq!(
        done.len(),
        cases.len() * ENCS.len() * Encrypter::BOTH.len(),
        "combinations decrypted: {done:?}"
    );
}

#[tokio::test]
async fn rsa_oaep_every_enc_from_both_libraries() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let cases = [
        case("oaep256", "RSA-OAEP-256", 2048, ""),
        case("oaep", "RSA-OAEP", 0, ""),
        case("oaep256-3072", "RSA-OAEP-256", 3072, ""),
    ];
    let done = matrix(&d, &cases).await?;
    assert_all_ran(&done, &cases);
    let info = get_key(&d, "oaep256-3072").await?;
    assert_eq!(info.versions[0].key_type, "RSA-3072");
    Ok(())
}

#[tokio::test]
async fn ecdh_es_p256_every_enc_from_both_libraries() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let cases = [
        case("es", "ECDH-ES", 0, ""),
        case("a128kw", "ECDH-ES+A128KW", 0, "P-256"),
        case("a256kw", "ECDH-ES+A256KW", 0, "P-256"),
    ];
    let done = matrix(&d, &cases).await?;
    assert_all_ran(&done, &cases);
    // No curve asked: P-256.
    let jwk = published_enc_jwk(&d, "es", "ECDH-ES").await?;
    assert_eq!(jwk["crv"], "P-256");
    Ok(())
}

#[tokio::test]
async fn ecdh_es_p384_every_enc_from_both_libraries() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let cases = [
        case("es", "ECDH-ES", 0, "P-384"),
        case("a128kw", "ECDH-ES+A128KW", 0, "P-384"),
        case("a256kw", "ECDH-ES+A256KW", 0, "P-384"),
    ];
    let done = matrix(&d, &cases).await?;
    assert_all_ran(&done, &cases);
    for c in cases {
        let jwk = published_enc_jwk(&d, c.key, c.alg).await?;
        assert_eq!(jwk["crv"], "P-384", "{}", c.key);
    }
    Ok(())
}

/// The JWK a version published (from GetKey).
fn version_jwk(key: &pb::Key, version: u32) -> TestResult<(Value, String)> {
    let v = key
        .versions
        .iter()
        .find(|v| v.version == version)
        .ok_or_else(|| format!("no version {version}"))?;
    Ok((serde_json::from_str(&v.public_jwk_json)?, v.kid.clone()))
}

/// The header `kid` picks the version among next, active and retired; without a kid the
/// active version decrypts; a destroyed version's kid is rejected like any bad JWE.
#[tokio::test]
async fn kid_selects_next_active_or_retired_version() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let (alg, enc) = ("ECDH-ES+A256KW", "A256GCM");
    create_enc(&d, "k", alg, 0, "P-256").await?;
    let mut keys = d.keys().await?;
    let rotate = || pb::RotateKeyRequest {
        name: "k".into(),
        ..Default::default()
    };
    let version = |v: u32| pb::KeyVersionRequest {
        name: "k".into(),
        version: v,
    };
    let rotated = keys.rotate_key(rotate()).await?.into_inner();
    let (v1, kid1) = version_jwk(&rotated, 1)?;
    let (v2, kid2) = version_jwk(&rotated, 2)?;
    assert_ne!(kid1, kid2);
    // Encrypted while 1 is active and 2 next; both decrypt, each by its own version.
    let early = Encrypter::NodeJose.encrypt_batch(&[
        encryption(&v1, alg, enc, b"to v1 while active", &json!({"kid": kid1})),
        encryption(&v2, alg, enc, b"to v2 while next", &json!({"kid": kid2})),
    ])?;
    for (jwe, want, v) in [
        (&early[0], &b"to v1 while active"[..], 1),
        (&early[1], &b"to v2 while next"[..], 2),
    ] {
        let r = decrypt(&d, "k", jwe).await?;
        assert_eq!(r.plaintext, want);
        assert_eq!(r.key_version, v);
    }

    keys.activate_key_version(version(2)).await?;
    let k = keys.rotate_key(rotate()).await?.into_inner();
    let states: Vec<i32> = k.versions.iter().map(|v| v.state).collect();
    assert_eq!(
        states,
        [
            pb::KeyState::Retired as i32,
            pb::KeyState::Active as i32,
            pb::KeyState::Next as i32
        ]
    );
    let (v3, kid3) = version_jwk(&k, 3)?;
    let jwks = d.jwks().await?;
    for kid in [&kid1, &kid2, &kid3] {
        assert_eq!(jwks_entry(&jwks, kid)?["use"], "enc");
    }
    let jwes = Encrypter::Jwcrypto.encrypt_batch(&[
        encryption(&v1, alg, enc, b"to retired v1", &json!({"kid": kid1})),
        encryption(&v2, alg, enc, b"to active v2", &json!({"kid": kid2})),
        encryption(&v3, alg, enc, b"to next v3", &json!({"kid": kid3})),
        encryption(&v2, alg, enc, b"no kid, to v2", &json!({})),
        encryption(&v1, alg, enc, b"no kid, to v1", &json!({})),
    ])?;
    for (jwe, want, v, kid) in [
        (&jwes[0], &b"to retired v1"[..], 1, &kid1),
        (&jwes[1], &b"to active v2"[..], 2, &kid2),
        (&jwes[2], &b"to next v3"[..], 3, &kid3),
        (&jwes[3], &b"no kid, to v2"[..], 2, &kid2),
        (&early[0], &b"to v1 while active"[..], 1, &kid1),
    ] {
        let r = decrypt(&d, "k", jwe)
            .await
            .map_err(|e| format!("{}: {e}", String::from_utf8_lossy(want)))?;
        assert_eq!(r.plaintext, want);
        assert_eq!(r.key_version, v, "{}", String::from_utf8_lossy(want));
        assert_eq!(&r.kid, kid, "{}", String::from_utf8_lossy(want));
    }
    // No kid means the active version: a JWE to the retired one without a kid fails.
    let (code, msg, _) = failure(decrypt(&d, "k", &jwes[4]).await)?;
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    assert!(msg.contains(REJECTED), "{msg}");

    // Destroyed: its kid no longer decrypts, whenever the JWE was made.
    keys.destroy_key_version(version(1)).await?;
    assert!(jwks_entry(&d.jwks().await?, &kid1).is_err());
    for jwe in [&jwes[0], &early[0]] {
        let (code, msg, id) = failure(decrypt(&d, "k", jwe).await)?;
        assert_eq!(code, Code::InvalidArgument, "{msg}");
        assert_eq!(without_request_id(&msg, &id), rejected_message(&msg, &id));
        let line = reason_line(&d, &id).await?;
        assert!(line.contains("kid"), "the log does not say why: {line}");
    }
    // The others still do.
    assert_eq!(
        decrypt(&d, "k", &jwes[2]).await?.plaintext,
        b"to next v3".to_vec()
    );
    Ok(())
}

/// The stable rejection message, as this daemon words it around [`REJECTED`].
fn rejected_message(msg: &str, id: &str) -> String {
    let m = without_request_id(msg, id);
    assert!(m.contains(REJECTED), "{msg}");
    m
}

/// `allowed_algs` / `allowed_encs` narrow what one request accepts.
#[tokio::test]
async fn request_narrows_algs_and_encs() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let alg = "ECDH-ES+A128KW";
    create_enc(&d, "k", alg, 0, "P-256").await?;
    let jwk = published_enc_jwk(&d, "k", alg).await?;
    let kid = json!({"kid": jwk["kid"]});
    let jwes = Encrypter::Jwcrypto.encrypt_batch(&[
        encryption(&jwk, alg, "A256GCM", b"gcm", &kid),
        encryption(&jwk, alg, "A128CBC-HS256", b"cbc", &kid),
    ])?;
    let (gcm, cbc) = (jwes[0].as_bytes(), jwes[1].as_bytes());
    // Accepted: the key's alg, the enc among those listed.
    for (jwe, algs, encs, want) in [
        (gcm, vec![alg], vec!["A256GCM"], &b"gcm"[..]),
        (gcm, vec![], vec!["A128GCM", "A256GCM"], b"gcm"),
        (cbc, vec!["ECDH-ES", alg], vec![], b"cbc"),
        (cbc, vec![], vec!["A128CBC-HS256"], b"cbc"),
    ] {
        let r = decrypt_narrowed(&d, "k", jwe, &algs, &encs)
            .await
            .map_err(|e| format!("{algs:?} {encs:?}: {e}"))?;
        assert_eq!(r.plaintext, want);
    }
    // Refused: alg or enc outside the lists.
    let mut messages = BTreeSet::new();
    for (jwe, algs, encs) in [
        (gcm, vec!["ECDH-ES+A256KW"], vec![]),
        (gcm, vec!["RSA-OAEP-256"], vec![]),
        (gcm, vec![], vec!["A128GCM"]),
        (cbc, vec![], vec!["A256GCM", "A256CBC-HS512"]),
        (cbc, vec![alg], vec!["A128GCM"]),
    ] {
        let (code, msg, id) = failure(decrypt_narrowed(&d, "k", jwe, &algs, &encs).await)
            .map_err(|e| format!("{algs:?} {encs:?}: {e}"))?;
        assert_eq!(code, Code::InvalidArgument, "{algs:?} {encs:?}: {msg}");
        messages.insert(rejected_message(&msg, &id));
        let line = reason_line(&d, &id).await?;
        assert!(
            line.contains("alg") || line.contains("enc"),
            "{algs:?} {encs:?}: the log does not say why: {line}"
        );
    }
    assert_eq!(messages.len(), 1, "{messages:?}");
    Ok(())
}

/// One JWE the daemon must reject, and words the log line under its request id must hold
/// (any one of them, case-insensitive) to name the reason.
struct Bad {
    what: &'static str,
    key: &'static str,
    jwe: Vec<u8>,
    algs: Vec<&'static str>,
    encs: Vec<&'static str>,
    reason: &'static [&'static str],
}

fn bad(
    what: &'static str,
    key: &'static str,
    jwe: impl Into<Vec<u8>>,
    reason: &'static [&'static str],
) -> Bad {
    Bad {
        what,
        key,
        jwe: jwe.into(),
        algs: Vec::new(),
        encs: Vec::new(),
        reason,
    }
}

/// The largest compact JWE the negative set's daemon takes.
const MAX_JWE_BYTES: usize = 8192;

/// The negative set: every rejected JWE gets INVALID_ARGUMENT with one identical message (the
/// request id aside), whatever the reason; the reason is in the log under the request id. A
/// signing key asked to decrypt and a decryption key asked to sign are FAILED_PRECONDITION
/// and say so.
#[tokio::test]
async fn every_rejected_jwe_gets_the_same_answer() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start_with(
        &token,
        &format!("\n[decryption]\nmax_jwe_bytes = {MAX_JWE_BYTES}\n"),
    )?;
    create_enc(&d, "rsa", "RSA-OAEP-256", 2048, "").await?;
    create_enc(&d, "kw", "ECDH-ES+A256KW", 0, "P-256").await?;
    create_enc(&d, "kw384", "ECDH-ES+A256KW", 0, "P-384").await?;
    create_enc(&d, "es", "ECDH-ES", 0, "P-256").await?;
    d.create("signer", "ES256", 0).await?;
    let rsa = published_enc_jwk(&d, "rsa", "RSA-OAEP-256").await?;
    let kw = published_enc_jwk(&d, "kw", "ECDH-ES+A256KW").await?;
    let kw384 = published_enc_jwk(&d, "kw384", "ECDH-ES+A256KW").await?;
    let es = published_enc_jwk(&d, "es", "ECDH-ES").await?;
    let kid = |jwk: &Value| json!({"kid": jwk["kid"]});
    let pt = b"{\"sub\":\"alice\"}";
    let made = Encrypter::Jwcrypto.encrypt_batch(&[
        // 0..=4: good ones, tampered below.
        encryption(&rsa, "RSA-OAEP-256", "A256GCM", pt, &kid(&rsa)),
        encryption(&rsa, "RSA-OAEP-256", "A128CBC-HS256", pt, &kid(&rsa)),
        encryption(&kw, "ECDH-ES+A256KW", "A256GCM", pt, &kid(&kw)),
        encryption(&kw, "ECDH-ES+A256KW", "A256CBC-HS512", pt, &kid(&kw)),
        encryption(&es, "ECDH-ES", "A128GCM", pt, &kid(&es)),
        // 5: RSA1_5, a real one.
        encryption(&rsa, "RSA1_5", "A128GCM", pt, &kid(&rsa)),
        // 6: zip.
        encryption(
            &rsa,
            "RSA-OAEP-256",
            "A256GCM",
            pt,
            &json!({"kid": rsa["kid"], "zip": "DEF"}),
        ),
        // 7: crit.
        encryption(
            &rsa,
            "RSA-OAEP-256",
            "A256GCM",
            pt,
            &json!({"kid": rsa["kid"], "crit": ["exp"], "exp": 1_900_000_000}),
        ),
        // 8: epk on another curve: made to the P-384 key, labelled with the P-256 key's kid.
        encryption(&kw384, "ECDH-ES+A256KW", "A256GCM", pt, &kid(&kw)),
        // 9: an ECDH JWE sent to the RSA key.
        encryption(&kw, "ECDH-ES+A256KW", "A256GCM", pt, &json!({})),
        // 10: RSA-OAEP (SHA-1) to the RSA-OAEP-256 key: not the key's alg.
        encryption(&rsa, "RSA-OAEP", "A256GCM", pt, &kid(&rsa)),
        // 11: an enc sigild does not decrypt.
        encryption(&rsa, "RSA-OAEP-256", "A192GCM", pt, &kid(&rsa)),
        // 12: over max_jwe_bytes.
        encryption(
            &rsa,
            "RSA-OAEP-256",
            "A256GCM",
            &binary_plaintext(MAX_JWE_BYTES),
            &kid(&rsa),
        ),
        // 13: a wrong kid.
        encryption(
            &rsa,
            "RSA-OAEP-256",
            "A256GCM",
            pt,
            &json!({"kid": "not-a-kid-of-this-key"}),
        ),
        // 14: ECDH-ES direct with a P-384 epk, labelled with the P-256 key's kid.
        encryption(&kw384, "ECDH-ES", "A256GCM", pt, &kid(&es)),
    ])?;
    // The good ones decrypt: what fails below fails for the tampering.
    for (i, key) in [(0, "rsa"), (1, "rsa"), (2, "kw"), (3, "kw"), (4, "es")] {
        let r = decrypt(&d, key, &made[i])
            .await
            .map_err(|e| format!("untampered JWE {i} to {key}: {e}"))?;
        assert_eq!(r.plaintext, pt.to_vec(), "untampered JWE {i}");
    }
    assert!(made[12].len() > MAX_JWE_BYTES);
    // The same JWE below the limit decrypts (it is refused for its size only).
    let big_ok = encrypt_jwcrypto(
        &rsa,
        "RSA-OAEP-256",
        "A256GCM",
        &binary_plaintext(MAX_JWE_BYTES / 2),
        &kid(&rsa),
    )?;
    decrypt(&d, "rsa", &big_ok)
        .await
        .map_err(|e| format!("below the size limit: {e}"))?;

    const DECRYPT: &[&str] = &[
        "decrypt",
        "tag",
        "unwrap",
        "integrity",
        "padding",
        "oaep",
        "device refused",
    ];
    const FORMAT: &[&str] = &["compact", "part", "length", "base64", "malformed"];
    let off_curve = with_header(&made[2], |h| {
        let y = sigild::jose::b64_decode(h["epk"]["y"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let mut y = y.clone();
        if let Some(last) = y.last_mut() {
            *last ^= 0x01;
        }
        h["epk"]["y"] = json!(b64(&y));
    })?;
    let es_off_curve = with_header(&made[4], |h| {
        h["epk"]["x"] = h["epk"]["y"].clone();
    })?;
    let parts = |jwe: &str| jwe.split('.').map(str::to_owned).collect::<Vec<_>>();
    let rsa_parts = parts(&made[0]);
    let mut set = vec![
        bad("rsa: tag bit", "rsa", flip_bit(&made[0], TAG, -1)?, DECRYPT),
        bad("rsa: ciphertext bit", "rsa", flip_bit(&made[0], CIPHERTEXT, 0)?, DECRYPT),
        bad("rsa: iv bit", "rsa", flip_bit(&made[0], IV, 3)?, DECRYPT),
        bad("rsa: encrypted key bit", "rsa", flip_bit(&made[0], ENCRYPTED_KEY, 100)?, DECRYPT),
        bad("rsa cbc: tag bit", "rsa", flip_bit(&made[1], TAG, 0)?, DECRYPT),
        bad("rsa cbc: ciphertext bit", "rsa", flip_bit(&made[1], CIPHERTEXT, -1)?, DECRYPT),
        bad("rsa cbc: iv bit", "rsa", flip_bit(&made[1], IV, 0)?, DECRYPT),
        bad("ecdh-kw: tag bit", "kw", flip_bit(&made[2], TAG, -1)?, DECRYPT),
        bad("ecdh-kw: ciphertext bit", "kw", flip_bit(&made[2], CIPHERTEXT, 2)?, DECRYPT),
        bad("ecdh-kw: iv bit", "kw", flip_bit(&made[2], IV, -1)?, DECRYPT),
        bad("ecdh-kw: encrypted key bit", "kw", flip_bit(&made[2], ENCRYPTED_KEY, 5)?, DECRYPT),
        bad("ecdh-kw cbc: encrypted key bit", "kw", flip_bit(&made[3], ENCRYPTED_KEY, -1)?, DECRYPT),
        bad("ecdh-kw cbc: tag bit", "kw", flip_bit(&made[3], TAG, 7)?, DECRYPT),
        bad("ecdh-es: tag bit", "es", flip_bit(&made[4], TAG, 0)?, DECRYPT),
        bad("ecdh-es: ciphertext bit", "es", flip_bit(&made[4], CIPHERTEXT, 0)?, DECRYPT),
        bad("wrong kid", "rsa", made[13].clone(), &["kid"]),
        bad("the kid of another key", "rsa", with_header(&made[0], |h| h["kid"] = kw["kid"].clone())?, &["kid", "alg"]),
        bad("RSA1_5", "rsa", made[5].clone(), &["RSA1_5", "alg"]),
        bad("zip", "rsa", made[6].clone(), &["zip"]),
        bad("crit", "rsa", made[7].clone(), &["crit"]),
        bad("epk off the curve", "kw", off_curve, &["epk", "curve"]),
        bad("ecdh-es: epk off the curve", "es", es_off_curve, &["epk", "curve"]),
        bad("epk on another curve (kw)", "kw", made[8].clone(), &["epk", "curve"]),
        bad("epk on another curve (ecdh-es)", "es", made[14].clone(), &["epk", "curve"]),
        bad("no epk", "kw", with_header(&made[2], |h| { h.as_object_mut().map(|o| o.remove("epk")); })?, &["epk"]),
        bad("alg not fitting the key (ECDH to RSA)", "rsa", made[9].clone(), &["alg"]),
        bad("alg not fitting the key (RSA to ECDH)", "kw", with_header(&made[0], |h| h["kid"] = kw["kid"].clone())?, &["alg"]),
        bad("alg not the key's (RSA-OAEP to RSA-OAEP-256)", "rsa", made[10].clone(), &["alg"]),
        bad("alg not the key's (ECDH-ES+A256KW to ECDH-ES)", "es", with_header(&made[2], |h| h["kid"] = es["kid"].clone())?, &["alg"]),
        bad("enc sigild does not decrypt (A192GCM)", "rsa", made[11].clone(), &["enc"]),
        bad("alg none", "rsa", with_header(&made[0], |h| h["alg"] = json!("none"))?, &["alg"]),
        bad("alg dir", "rsa", with_header(&made[0], |h| h["alg"] = json!("dir"))?, &["alg"]),
        bad("oversized", "rsa", made[12].clone(), &["size", "bytes", "large", "limit", "max"]),
        bad("oversized garbage", "rsa", "A".repeat(MAX_JWE_BYTES + 1), &["size", "bytes", "large", "limit", "max"]),
        bad("4 parts (no tag)", "rsa", rsa_parts[..4].join("."), FORMAT),
        bad("6 parts", "rsa", format!("{}.AAAA", made[0]), FORMAT),
        bad("truncated tag", "rsa", {
            let mut p = rsa_parts.clone();
            p[TAG].truncate(12);
            p.join(".")
        }, &["length", "tag", "decrypt"]),
        bad("truncated iv", "rsa", {
            let mut p = rsa_parts.clone();
            p[IV].truncate(8);
            p.join(".")
        }, &["length", "iv", "decrypt"]),
        bad("empty encrypted key", "rsa", {
            let mut p = rsa_parts.clone();
            p[ENCRYPTED_KEY].clear();
            p.join(".")
        }, &["length", "encrypted key", "decrypt", "empty"]),
        bad("truncated encrypted key", "rsa", {
            let mut p = rsa_parts.clone();
            p[ENCRYPTED_KEY].truncate(200);
            p.join(".")
        }, &["length", "encrypted key", "decrypt"]),
        bad("cut in the middle", "rsa", made[0][..made[0].len() / 2].to_owned(), FORMAT),
        bad("empty", "rsa", "", FORMAT),
        bad("not base64", "rsa", "eyJ!.a.b.c.d", &["base64", "header", "compact", "malformed"]),
        bad("header not JSON", "rsa", format!("{}.{}", b64(b"not json"), rsa_parts[1..].join(".")), &["header", "json"]),
        bad("JSON serialization", "rsa", json!({"protected": rsa_parts[0], "encrypted_key": rsa_parts[1], "iv": rsa_parts[2], "ciphertext": rsa_parts[3], "tag": rsa_parts[4]}).to_string(), FORMAT),
    ];
    // Narrowed by the request.
    let mut narrowed = bad("enc not allowed", "rsa", made[0].clone(), &["enc"]);
    narrowed.encs = vec!["A128GCM", "A128CBC-HS256"];
    set.push(narrowed);
    let mut narrowed = bad("alg not allowed", "rsa", made[0].clone(), &["alg"]);
    narrowed.algs = vec!["RSA-OAEP"];
    set.push(narrowed);

    let mut first: Option<(String, String)> = None;
    let mut failures = Vec::new();
    for b in &set {
        let r = decrypt_narrowed(&d, b.key, &b.jwe, &b.algs, &b.encs).await;
        let (code, msg, id) = match failure(r) {
            Ok(f) => f,
            Err(e) => {
                failures.push(format!("{}: {e}", b.what));
                continue;
            }
        };
        if code != Code::InvalidArgument {
            failures.push(format!("{}: {code:?} {msg}", b.what));
            continue;
        }
        let stable = without_request_id(&msg, &id);
        if !stable.contains(REJECTED) {
            failures.push(format!("{}: message {msg:?}", b.what));
        }
        match &first {
            None => first = Some((b.what.to_owned(), stable.clone())),
            Some((w, m)) if *m != stable => {
                failures.push(format!("{}: {stable:?} differs from {w}'s {m:?}", b.what));
            }
            Some(_) => {}
        }
        // The reason, beside the stable sentence the log line repeats.
        let line = reason_line(&d, &id).await?;
        let lower = line.replace(REJECTED, "").to_lowercase();
        println!(
            "{}: {}",
            b.what,
            line.split("JWE not decrypted: ").nth(1).unwrap_or(&line)
        );
        if !b.reason.iter().any(|w| lower.contains(&w.to_lowercase())) {
            failures.push(format!(
                "{}: the log line says none of {:?}: {line}",
                b.what, b.reason
            ));
        }
        for w in b.reason {
            if !REJECTED.contains(&w.to_lowercase())
                && msg.to_lowercase().contains(&w.to_lowercase())
            {
                failures.push(format!(
                    "{}: the message names the reason {w:?}: {msg}",
                    b.what
                ));
            }
        }
    }
    assert!(set.len() >= 45, "cases run: {}", set.len());
    if !failures.is_empty() {
        return Err(format!(
            "{} of {} rejected JWEs answered wrongly:\n{}",
            failures.len(),
            set.len(),
            failures.join("\n")
        )
        .into());
    }

    // The two that may say what is wrong.
    let (code, msg) = code_of(decrypt(&d, "signer", &made[0]).await)?;
    assert_eq!(
        code,
        Code::FailedPrecondition,
        "a signing key asked to decrypt: {msg}"
    );
    assert!(
        msg.contains("signing key") && msg.contains("decrypt"),
        "{msg}"
    );
    let (code, msg) = code_of(sign_jws(&d, "rsa", br#"{"alg":"PS256"}"#, b"{}").await)?;
    assert_eq!(
        code,
        Code::FailedPrecondition,
        "a decryption key asked to sign: {msg}"
    );
    assert!(
        msg.contains("decryption key") && msg.contains("sign"),
        "{msg}"
    );
    let (code, msg) = code_of(sign_jws(&d, "rsa", br#"{"alg":"RSA-OAEP-256"}"#, b"{}").await)?;
    assert!(
        matches!(code, Code::FailedPrecondition | Code::InvalidArgument),
        "a decryption key asked to sign with its own alg: {code:?} {msg}"
    );
    // After all that, the keys still decrypt.
    assert_eq!(decrypt(&d, "rsa", &made[0]).await?.plaintext, pt.to_vec());
    assert_eq!(decrypt(&d, "kw", &made[2]).await?.plaintext, pt.to_vec());
    Ok(())
}
