//! Decryption against JWEs and vectors we did not make: RFC 7516 Appendix A, RFC 7518
//! Appendices B and C, and `jwcrypto.json` (every alg × enc, made by python jwcrypto with
//! `make_fixtures.py`). The device's part (raw RSA, ECDH) is played here with the RustCrypto
//! `rsa`, `p256` and `p384` crates and the fixture's private keys.

use serde_json::Value;

use super::*;
use crate::crypto::{OaepError, oaep_decode};
use crate::jose::b64_decode;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn b64(s: &str) -> Vec<u8> {
    // A bad vector decodes to nothing, which no assertion below accepts.
    b64_decode(s).unwrap_or_default()
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        // A bad digit shortens the result, which no assertion below accepts.
        .filter_map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// The public key of a private JWK, as a backend would report it.
fn public_of(jwk: &Value) -> PublicKey {
    let m = |n: &str| b64(jwk[n].as_str().unwrap_or_default());
    match jwk["kty"].as_str() {
        Some("RSA") => PublicKey::Rsa {
            n: crate::crypto::trim_leading_zeros(&m("n")),
            e: m("e"),
        },
        _ => PublicKey::Ec {
            curve: if jwk["crv"] == "P-384" {
                Curve::P384
            } else {
                Curve::P256
            },
            x: m("x"),
            y: m("y"),
        },
    }
}

/// The device: raw RSA with the private JWK then OAEP decoding on the host (what a YubiKey
/// backend does), or ECDH with the private scalar (Z = x of d·peer).
fn device(jwk: &Value, op: &DecryptOp) -> Result<SecretBytes, OaepError> {
    let m = |n: &str| b64(jwk[n].as_str().unwrap_or_default());
    match op {
        DecryptOp::RsaOaep { hash, ciphertext } => {
            use rsa::traits::PublicKeyParts as _;
            let n = m("n");
            let bits = (n.len() * 8) as u32;
            let u = |v: &[u8]| rsa::BoxedUint::from_be_slice(v, bits).map_err(|_| OaepError);
            let key = rsa::RsaPrivateKey::from_components(
                u(&n)?,
                u(&m("e"))?,
                u(&m("d"))?,
                vec![u(&m("p"))?, u(&m("q"))?],
            )
            .map_err(|_| OaepError)?;
            let k = key.size();
            let c = u(ciphertext)?;
            let raw = rsa::hazmat::rsa_decrypt_and_check(
                &key,
                None::<&mut dyn rsa::rand_core::TryCryptoRng<Error = core::convert::Infallible>>,
                &c,
            )
            .map_err(|_| OaepError)?;
            let em = zeroize::Zeroizing::new(raw.to_be_bytes());
            let em = em.get(em.len() - k..).ok_or(OaepError)?;
            oaep_decode(*hash, k, em)
        }
        DecryptOp::Ecdh {
            peer: PublicKey::Ec { curve, x, y },
        } => {
            let mut sec1 = vec![4u8];
            sec1.extend(x);
            sec1.extend(y);
            let d = m("d");
            let z = match curve {
                Curve::P256 => {
                    use p256::elliptic_curve::point::AffineCoordinates as _;
                    let peer = p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| OaepError)?;
                    let sk = p256::SecretKey::from_slice(&d).map_err(|_| OaepError)?;
                    (peer.to_projective() * *sk.to_nonzero_scalar())
                        .to_affine()
                        .x()
                        .to_vec()
                }
                Curve::P384 => {
                    use p384::elliptic_curve::point::AffineCoordinates as _;
                    let peer = p384::PublicKey::from_sec1_bytes(&sec1).map_err(|_| OaepError)?;
                    let sk = p384::SecretKey::from_slice(&d).map_err(|_| OaepError)?;
                    (peer.to_projective() * *sk.to_nonzero_scalar())
                        .to_affine()
                        .x()
                        .to_vec()
                }
            };
            Ok(SecretBytes::new(z))
        }
        DecryptOp::Ecdh { .. } => Err(OaepError),
    }
}

/// The device's answers so far, by request: the mutation tests ask the same RSA question
/// many times, and raw RSA in a debug build is slow.
type Answers = Vec<(DecryptOp, Result<Vec<u8>, OaepError>)>;

/// The whole flow as the service runs it: parse, device step, host step.
fn open(compact: &[u8], jwk: &Value) -> Result<Vec<u8>, String> {
    open_with(compact, jwk, &mut Vec::new())
}

/// [`open`], asking the device only questions not in `answers`.
fn open_with(compact: &[u8], jwk: &Value, answers: &mut Answers) -> Result<Vec<u8>, String> {
    let jwe = Jwe::parse(compact).map_err(|e| e.to_string())?;
    let op = jwe.device_op(&public_of(jwk)).map_err(|e| e.to_string())?;
    let answer = match answers.iter().find(|(asked, _)| *asked == op) {
        Some((_, answer)) => answer.clone(),
        None => {
            let answer = device(jwk, &op).map(|r| r.expose().to_vec());
            answers.push((op, answer.clone()));
            answer
        }
    };
    let result = SecretBytes::new(answer.map_err(|e| e.to_string())?);
    let plaintext = jwe.decrypt(&result).map_err(|e| e.to_string())?;
    Ok(plaintext.expose().to_vec())
}

const RFC7516_A1_JWE: &str = concat!(
    "eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.",
    "OKOawDo13gRp2ojaHV7LFpZcgV7T6DVZKTyKOMTYUmKoTCVJRgckCL9kiMT03JGe",
    "ipsEdY3mx_etLbbWSrFr05kLzcSr4qKAq7YN7e9jwQRb23nfa6c9d-StnImGyFDb",
    "Sv04uVuxIp5Zms1gNxKKK2Da14B8S4rzVRltdYwam_lDp5XnZAYpQdb76FdIKLaV",
    "mqgfwX7XWRxv2322i-vDxRfqNzo_tETKzpVLzfiwQyeyPGLBIO56YJ7eObdv0je8",
    "1860ppamavo35UgoRdbYaBcoh9QcfylQr66oc6vFWXRcZ_ZT2LawVCWTIy3brGPi",
    "6UklfCpIMfIjf7iGdXKHzg.",
    "48V1_ALb6US04U3b.",
    "5eym8TW_c8SuK0ltJ3rpYIzOeDQz7TALvtu6UG9oMo4vpzs9tX_EFShS8iB7j6ji",
    "SdiwkIr3ajwQzaBtQD_A.",
    "XFBoMYUZodetZdvTiFvSkQ",
);

fn rfc7516_a1_key() -> Value {
    serde_json::json!({
        "kty": "RSA",
        "n": concat!(
            "oahUIoWw0K0usKNuOR6H4wkf4oBUXHTxRvgb48E-BVvxkeDNjbC4he8rUW",
            "cJoZmds2h7M70imEVhRU5djINXtqllXI4DFqcI1DgjT9LewND8MW2Krf3S",
            "psk_ZkoFnilakGygTwpZ3uesH-PFABNIUYpOiN15dsQRkgr0vEhxN92i2a",
            "sbOenSZeyaxziK72UwxrrKoExv6kc5twXTq4h-QChLOln0_mtUZwfsRaMS",
            "tPs6mS6XrgxnxbWhojf663tuEQueGC-FCMfra36C9knDFGzKsNa7LZK2dj",
            "YgyD3JR_MB_4NUJW_TqOQtwHYbxevoJArm-L5StowjzGy-_bq6Gw"),
        "e": "AQAB",
        "d": concat!(
            "kLdtIj6GbDks_ApCSTYQtelcNttlKiOyPzMrXHeI-yk1F7-kpDxY4-WY5N",
            "WV5KntaEeXS1j82E375xxhWMHXyvjYecPT9fpwR_M9gV8n9Hrh2anTpTD9",
            "3Dt62ypW3yDsJzBnTnrYu1iwWRgBKrEYY46qAZIrA2xAwnm2X7uGR1hghk",
            "qDp0Vqj3kbSCz1XyfCs6_LehBwtxHIyh8Ripy40p24moOAbgxVw3rxT_vl",
            "t3UVe4WO3JkJOzlpUf-KTVI2Ptgm-dARxTEtE-id-4OJr0h-K-VFs3VSnd",
            "VTIznSxfyrj8ILL6MG_Uv8YAu7VILSB3lOW085-4qE3DzgrTjgyQ"),
        "p": concat!(
            "1r52Xk46c-LsfB5P442p7atdPUrxQSy4mti_tZI3Mgf2EuFVbUoDBvaRQ-",
            "SWxkbkmoEzL7JXroSBjSrK3YIQgYdMgyAEPTPjXv_hI2_1eTSPVZfzL0lf",
            "fNn03IXqWF5MDFuoUYE0hzb2vhrlN_rKrbfDIwUbTrjjgieRbwC6Cl0"),
        "q": concat!(
            "wLb35x7hmQWZsWJmB_vle87ihgZ19S8lBEROLIsZG4ayZVe9Hi9gDVCOBm",
            "UDdaDYVTSNx_8Fyw1YYa9XGrGnDew00J28cRUoeBB_jKI1oma0Orv1T9aX",
            "IWxKwd4gvxFImOWr3QRL9KEBRzk2RatUBnmDZJTIAfwTs0g68UZHvtc"),
    })
}

/// RFC 7516 A.1.1: "The true sign of intelligence is not knowledge but imagination."
const RFC7516_A1_PLAINTEXT: &[u8] =
    b"The true sign of intelligence is not knowledge but imagination.";

/// RFC 7516 A.1: RSA-OAEP + A256GCM, with the RFC's key doing raw RSA and the host decoding
/// OAEP: the CEK of A.1.2 and the plaintext of A.1.1, byte for byte.
#[test]
fn rfc7516_a1_rsa_oaep_a256gcm() -> TestResult {
    let key = rfc7516_a1_key();
    let jwe = Jwe::parse(RFC7516_A1_JWE.as_bytes())?;
    assert_eq!(
        (jwe.alg(), jwe.enc(), jwe.kid()),
        (JweAlg::RsaOaep, JweEnc::A256Gcm, None)
    );
    assert_eq!(
        jwe.protected_header(),
        r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#
    );
    let op = jwe.device_op(&public_of(&key))?;
    assert!(
        matches!(&op, DecryptOp::RsaOaep { hash: OaepHash::Sha1, ciphertext } if ciphertext.len() == 256)
    );
    let cek = device(&key, &op)?;
    assert_eq!(
        cek.expose(),
        [
            177, 161, 244, 128, 84, 143, 225, 115, 63, 180, 3, 255, 107, 154, 212, 246, 138, 7,
            110, 91, 112, 46, 34, 105, 47, 130, 203, 46, 122, 234, 64, 252
        ]
    );
    assert_eq!(jwe.decrypt(&cek)?.expose(), RFC7516_A1_PLAINTEXT);
    // The same JWE through an RSA-OAEP-256 device: the OAEP decoding fails.
    let DecryptOp::RsaOaep { ciphertext, .. } = op else {
        return Err("not an RSA op".into());
    };
    let wrong_hash = DecryptOp::RsaOaep {
        hash: OaepHash::Sha256,
        ciphertext,
    };
    assert!(device(&key, &wrong_hash).is_err());
    Ok(())
}

/// RFC 7516 A.2 (RSA1_5) is refused before any key is touched.
#[test]
fn rfc7516_a2_rsa1_5_is_refused() {
    let a2 = concat!(
        "eyJhbGciOiJSU0ExXzUiLCJlbmMiOiJBMTI4Q0JDLUhTMjU2In0.",
        "UGhIOguC7IuEvf_NPVaXsGMoLOmwvc1GyqlIKOK1nN94nHPoltGRhWhw7Zx0-kFm",
        "1NJn8LE9XShH59_i8J0PH5ZZyNfGy2xGdULU7sHNF6Gp2vPLgNZ__deLKxGHZ7Pc",
        "HALUzoOegEI-8E66jX2E4zyJKx-YxzZIItRzC5hlRirb6Y5Cl_p-ko3YvkkysZIF",
        "NPccxRU7qve1WYPxqbb2Yw8kZqa2rMWI5ng8OtvzlV7elprCbuPhcCdZ6XDP0_F8",
        "rkXds2vE4X-ncOIM8hAYHHi29NX0mcKiRaD0-D-ljQTP-cFPgwCp6X-nZZd9OHBv",
        "-B3oWh2TbqmScqXMR4gp_A.",
        "AxY8DCtDaGlsbGljb3RoZQ.",
        "KDlTtXchhZTGufMYmOYGS4HffxPSUrfmqCHXaI9wOGY.",
        "9hH0vgRfYgPnAHOd8stkvw",
    );
    assert_eq!(
        Jwe::parse(a2.as_bytes()),
        Err(JweError::Alg("RSA1_5".into()))
    );
}

/// RFC 7516 A.3 (A128KW + A128CBC-HS256): sigild does not offer A128KW, but its AES key unwrap
/// and CBC-HMAC content step are the ones ECDH-ES+A128KW uses, checked here on the RFC's
/// values (KEK, wrapped key, IV, ciphertext, tag, with the protected header as AAD).
#[test]
fn rfc7516_a3_key_unwrap_and_a128cbc_hs256() -> TestResult {
    let header = "eyJhbGciOiJBMTI4S1ciLCJlbmMiOiJBMTI4Q0JDLUhTMjU2In0";
    let kek = b64("GawgguFyGrWKav7AX4VKUg");
    let wrapped = b64("6KB707dM9YTIgHtLvtgWQ8mKwboJW3of9locizkDTHzBC2IlrT1oOQ");
    let cek = aes_unwrap(&kek, &wrapped, 32).ok_or("unwrap failed")?;
    assert_eq!(
        cek.as_slice(),
        [
            4, 211, 31, 197, 84, 157, 252, 254, 11, 100, 157, 250, 63, 170, 106, 206, 107, 124,
            212, 45, 111, 107, 9, 219, 200, 177, 0, 240, 143, 156, 44, 207
        ]
    );
    let iv = b64("AxY8DCtDaGlsbGljb3RoZQ");
    let ct = b64("KDlTtXchhZTGufMYmOYGS4HffxPSUrfmqCHXaI9wOGY");
    let tag = b64("U0m_YmjN04DJvceFICbCVQ");
    let pt = cbc_hmac::<aes::Aes128, Hmac<Sha256>>(&cek, &iv, header.as_bytes(), &ct, &tag)?;
    assert_eq!(pt.expose(), b"Live long and prosper.");
    // Wrong KEK, wrong expected length, a flipped bit in the wrapped key.
    assert!(aes_unwrap(&[0u8; 16], &wrapped, 32).is_none());
    assert!(aes_unwrap(&kek, &wrapped, 16).is_none());
    let mut flipped = wrapped.clone();
    flipped[9] ^= 1;
    assert!(aes_unwrap(&kek, &flipped, 32).is_none());
    Ok(())
}

const B_PLAINTEXT: &str = "41206369706865722073797374656d206d757374206e6f742062652072657175
    6972656420746f206265207365637265742c20616e64206974206d7573742062652061626c6520746f2066616c6c
    20696e746f207468652068616e6473206f662074686520656e656d7920776974686f757420696e636f6e76656e69
    656e6365";
const B_IV: &str = "1af38c2dc2b96ffdd86694092341bc04";
const B_AAD: &str = "546865207365636f6e64207072696e6369706c65206f662041756775737465204b6572636b
    686f666673";

/// RFC 7518 B.1 (AES_128_CBC_HMAC_SHA_256) and B.3 (AES_256_CBC_HMAC_SHA_512): K, P, IV, A, E,
/// T as published; the tag is checked, then P comes back; any flipped bit in E, IV, A or T
/// is refused.
#[test]
fn rfc7518_b_cbc_hmac_vectors() -> TestResult {
    let p = hex(B_PLAINTEXT);
    let (iv, aad) = (hex(B_IV), hex(B_AAD));
    let b1_k: Vec<u8> = (0u8..32).collect();
    let b1_e = hex(
        "c80edfa32ddf39d5ef00c0b468834279a2e46a1b8049f792f76bfe54b903a9c9
         a94ac9b47ad2655c5f10f9aef71427e2fc6f9b3f399a221489f16362c7032336
         09d45ac69864e3321cf82935ac4096c86e133314c54019e8ca7980dfa4b9cf1b
         384c486f3a54c51078158ee5d79de59fbd34d848b3d69550a67646344427ade5
         4b8851ffb598f7f80074b9473c82e2db",
    );
    let b1_t = hex("652c3fa36b0a7c5b3219fab3a30bc1c4");
    let got = cbc_hmac::<aes::Aes128, Hmac<Sha256>>(&b1_k, &iv, &aad, &b1_e, &b1_t)?;
    assert_eq!(got.expose(), p.as_slice());

    let b3_k: Vec<u8> = (0u8..64).collect();
    let b3_e = hex(
        "4affaaadb78c31c5da4b1b590d10ffbd3dd8d5d302423526912da037ecbcc7bd
         822c301dd67c373bccb584ad3e9279c2e6d12a1374b77f077553df829410446b
         36ebd97066296ae6427ea75c2e0846a11a09ccf5370dc80bfecbad28c73f09b3
         a3b75e662a2594410ae496b2e2e6609e31e6e02cc837f053d21f37ff4f51950b
         be2638d09dd7a4930930806d0703b1f6",
    );
    let b3_t = hex("4dd3b4c088a7f45c216839645b2012bf2e6269a8c56a816dbc1b267761955bc5");
    let got = cbc_hmac::<aes::Aes256, Hmac<Sha512>>(&b3_k, &iv, &aad, &b3_e, &b3_t)?;
    assert_eq!(got.expose(), p.as_slice());

    for (i, part) in ["E", "IV", "A", "T"].into_iter().enumerate() {
        let mut v = [b3_e.clone(), iv.clone(), aad.clone(), b3_t.clone()];
        v[i][3] ^= 0x40;
        let [e, iv, a, t] = v;
        let r = cbc_hmac::<aes::Aes256, Hmac<Sha512>>(&b3_k, &iv, &a, &e, &t);
        assert!(
            matches!(r, Err(JweError::Decryption(_))),
            "a flipped bit in {part} was accepted"
        );
    }
    // The B.1 keys are not the B.3 ones: the MAC/ENC split is by halves of the CEK.
    assert!(
        cbc_hmac::<aes::Aes128, Hmac<Sha256>>(&b3_k[..32], &iv, &aad, &b1_e, &b3_t[..16]).is_err()
    );
    Ok(())
}

const RFC7518_C_ALICE: &str = r#"{"kty":"EC","crv":"P-256","x":"gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0","y":"SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps"}"#;

fn rfc7518_c_bob() -> Value {
    serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "x": "weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ",
        "y": "e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck",
        "d": "VEmDZpDXXK8p8N0Cndsxs924q6nS1RXFASRl6BfUqdw",
    })
}

/// RFC 7518 Appendix C: the header's `epk` (Alice) passes the device-side checks against
/// Bob's key, Z (computed here with Bob's private key) is the RFC's, and the Concat KDF with
/// `enc` A128GCM, apu "Alice", apv "Bob" gives the RFC's derived key.
#[test]
fn rfc7518_c_ecdh_es_concat_kdf() -> TestResult {
    let header = format!(
        r#"{{"alg":"ECDH-ES","enc":"A128GCM","apu":"QWxpY2U","apv":"Qm9i","epk":{RFC7518_C_ALICE}}}"#
    );
    let compact = format!(
        "{}..{}.{}.{}",
        crate::jose::b64(header.as_bytes()),
        crate::jose::b64(&[0; 12]),
        crate::jose::b64(b"c"),
        crate::jose::b64(&[0; 16])
    );
    let jwe = Jwe::parse(compact.as_bytes())?;
    assert_eq!(
        (jwe.apu.as_slice(), jwe.apv.as_slice()),
        (&b"Alice"[..], &b"Bob"[..])
    );
    let bob = rfc7518_c_bob();
    let op = jwe.device_op(&public_of(&bob))?;
    let z = device(&bob, &op)?;
    assert_eq!(
        z.expose(),
        [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49,
            110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196
        ]
    );
    let cek = concat_kdf(z.expose(), "A128GCM", &jwe.apu, &jwe.apv, 16);
    assert_eq!(cek.as_slice(), b64("VqqN6vgjbSBcIijNcacQGg"));
    // More than one SHA-256 block (A256CBC-HS512's 64 bytes, empty apu/apv): the counter
    // runs from 1, each block over the same OtherInfo, recomputed here by hand.
    let long = concat_kdf(z.expose(), "A256CBC-HS512", b"", b"", 64);
    let block = |counter: u32| {
        let mut h = Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z.expose());
        h.update(13u32.to_be_bytes());
        h.update(b"A256CBC-HS512");
        h.update([0u8; 8]);
        h.update(512u32.to_be_bytes());
        h.finalize().to_vec()
    };
    assert_eq!(long.as_slice(), [block(1), block(2)].concat());
    // The tag is all zeros: decryption runs through the KDF and fails at the tag.
    assert!(matches!(jwe.decrypt(&z), Err(JweError::Decryption(_))));
    Ok(())
}

fn fixtures() -> Value {
    // Unreadable fixtures give no cases, which the count check refuses.
    serde_json::from_str(include_str!("jwcrypto.json")).unwrap_or_default()
}

fn cases(fx: &Value) -> Vec<(Value, String, Vec<u8>)> {
    fx["cases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let key = fx["keys"][c["key"].as_str().unwrap_or_default()].clone();
            let jwe = c["jwe"].as_str().unwrap_or_default().to_owned();
            (key, jwe, b64(c["plaintext"].as_str().unwrap_or_default()))
        })
        .collect()
}

/// Every alg × enc on RSA-2048, P-256 and P-384, from JWEs python jwcrypto made: the plaintext
/// byte for byte, and the `kid` read from the header.
#[test]
fn jwcrypto_jwes_decrypt_for_every_alg_and_enc() -> TestResult {
    let fx = fixtures();
    let all = cases(&fx);
    assert_eq!(all.len(), 32);
    let mut seen = std::collections::BTreeSet::new();
    for (key, compact, plaintext) in &all {
        let got = open(compact.as_bytes(), key).map_err(|e| format!("{compact}: {e}"))?;
        assert_eq!(&got, plaintext, "{compact}");
        let jwe = Jwe::parse(compact.as_bytes())?;
        let thumbprint = crate::jose::thumbprint(&public_of(key));
        assert_eq!(jwe.kid(), Some(thumbprint.as_str()));
        seen.insert((jwe.alg().name(), jwe.enc().name()));
    }
    assert_eq!(seen.len(), JweAlg::ALL.len() * JweEnc::ALL.len());
    Ok(())
}

/// The five parts of a compact JWE, decoded.
fn split(compact: &str) -> Vec<Vec<u8>> {
    compact.split('.').map(b64).collect()
}

fn join(parts: &[Vec<u8>]) -> String {
    parts
        .iter()
        .map(|p| crate::jose::b64(p))
        .collect::<Vec<_>>()
        .join(".")
}

/// One flipped bit in any part (header = the AAD, encrypted key, IV, ciphertext, tag) of any
/// fixture: an error at parse, device or host step; never a panic, never a plaintext.
#[test]
fn a_flipped_bit_anywhere_is_refused() {
    let fx = fixtures();
    for (key, compact, _) in cases(&fx) {
        let parts = split(&compact);
        let mut answers = Answers::new();
        for (i, part) in parts.iter().enumerate() {
            // The first, a middle and the last byte, low and high bits.
            let len = part.len();
            for (byte, bit) in [(0, 0), (len / 2, 7), (len.saturating_sub(1), 3)] {
                if len == 0 {
                    continue;
                }
                let mut p = parts.clone();
                p[i][byte] ^= 1 << bit;
                let r = open_with(join(&p).as_bytes(), &key, &mut answers);
                assert!(
                    r.is_err(),
                    "part {i} byte {byte} bit {bit} of {compact}: accepted"
                );
            }
        }
    }
}

/// A change to the header that keeps it valid JSON with the same meaning to sigild (the
/// `kid`) fails at the tag: the header text as sent is the AAD.
#[test]
fn the_protected_header_is_the_aad() -> TestResult {
    let fx = fixtures();
    for (key, compact, _) in cases(&fx) {
        let mut parts = split(&compact);
        let mut header: serde_json::Map<String, Value> = serde_json::from_slice(&parts[0])?;
        header.insert("kid".into(), Value::String("another".into()));
        parts[0] = serde_json::to_vec(&header)?;
        let r = open(join(&parts).as_bytes(), &key);
        assert!(
            matches!(&r, Err(e) if e.starts_with("decryption failed")),
            "{r:?}"
        );
    }
    Ok(())
}

/// What the device may hand back that is not the right secret: a CEK of the wrong length
/// (RSA: replaced by a random one, so the failure is at the tag), a wrong CEK of the right
/// length, a Z of the wrong length or the wrong value.
#[test]
fn wrong_device_results_fail_without_plaintext() -> TestResult {
    let fx = fixtures();
    for (key, compact, _) in cases(&fx) {
        let jwe = Jwe::parse(compact.as_bytes())?;
        let cek_len = jwe.enc().cek_len();
        let field = match public_of(&key) {
            PublicKey::Ec { curve, .. } => curve.field_len(),
            _ => 0,
        };
        for len in [0, 1, cek_len - 1, cek_len, cek_len + 1, field, 256] {
            let r = jwe.decrypt(&SecretBytes::new(vec![0x5c; len]));
            assert!(
                matches!(r, Err(JweError::Decryption(_))),
                "{len} bytes: {r:?}"
            );
        }
    }
    Ok(())
}

fn token(header: &str, key: &[u8], iv: &[u8], ct: &[u8], tag: &[u8]) -> String {
    join(&[
        header.as_bytes().to_vec(),
        key.to_vec(),
        iv.to_vec(),
        ct.to_vec(),
        tag.to_vec(),
    ])
}

fn epk_json(jwk: &Value) -> String {
    serde_json::json!({"kty": "EC", "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"]}).to_string()
}

/// Everything `parse` refuses, each with its reason for the log.
#[test]
fn parse_refuses_bad_headers_and_lengths() {
    let fx = fixtures();
    let p256 = &fx["keys"]["p256"];
    let epk = epk_json(p256);
    let gcm = |h: &str| token(h, &[1; 256], &[0; 12], b"ct", &[0; 16]);
    let ecdh = |h: &str| token(h, &[], &[0; 12], b"ct", &[0; 16]);
    let cases: Vec<(String, JweError)> = vec![
        (
            gcm(r#"{"alg":"RSA-OAEP","enc":"A128GCM","zip":"DEF"}"#),
            JweError::Refused("zip"),
        ),
        (
            gcm(r#"{"alg":"RSA-OAEP","enc":"A128GCM","crit":["exp"],"exp":1}"#),
            JweError::Refused("crit"),
        ),
        (
            gcm(r#"{"alg":"RSA1_5","enc":"A128GCM"}"#),
            JweError::Alg("RSA1_5".into()),
        ),
        (
            gcm(r#"{"alg":"dir","enc":"A128GCM"}"#),
            JweError::Alg("dir".into()),
        ),
        (
            gcm(r#"{"alg":"A128KW","enc":"A128GCM"}"#),
            JweError::Alg("A128KW".into()),
        ),
        (gcm(r#"{"enc":"A128GCM"}"#), JweError::Alg("missing".into())),
        (
            gcm(r#"{"alg":"RSA-OAEP","enc":"A192GCM"}"#),
            JweError::Enc("A192GCM".into()),
        ),
        (
            gcm(r#"{"alg":"RSA-OAEP","enc":1}"#),
            JweError::Enc("not a string".into()),
        ),
        (
            gcm(r#"{"alg":"RSA-OAEP"}"#),
            JweError::Enc("missing".into()),
        ),
        (
            gcm(r#"{"alg":"RSA-OAEP","enc":"A128GCM","alg":"RSA-OAEP"}"#),
            JweError::Header("a member name is repeated"),
        ),
        (
            gcm(r#"{"alg":"RSA-OAEP","enc":"A128GCM","kid":7}"#),
            JweError::Header("\"kid\" is not a string"),
        ),
        (gcm(r#"["alg"]"#), JweError::Header("not a JSON object")),
        (gcm(r#"{"alg":"#), JweError::Header("not JSON")),
        (
            gcm(r#"{"alg":"RSA-OAEP","enc":"A128GCM"}"#).replacen('.', "..", 1),
            JweError::Malformed("not five parts separated by dots"),
        ),
        (
            ecdh(r#"{"alg":"ECDH-ES","enc":"A128GCM"}"#),
            JweError::Epk("missing"),
        ),
        (
            ecdh(r#"{"alg":"ECDH-ES","enc":"A128GCM","epk":"x"}"#),
            JweError::Epk("not a JSON object"),
        ),
        (
            ecdh(&format!(
                r#"{{"alg":"ECDH-ES","enc":"A128GCM","epk":{}}}"#,
                epk.replace("P-256", "P-521")
            )),
            JweError::Epk("\"crv\" is not P-256 or P-384"),
        ),
        (
            ecdh(&format!(
                r#"{{"alg":"ECDH-ES","enc":"A128GCM","epk":{}}}"#,
                epk.replace("P-256", "P-384")
            )),
            JweError::Epk("a coordinate is missing, not base64url or not the field length"),
        ),
        (
            ecdh(&format!(
                r#"{{"alg":"ECDH-ES","enc":"A128GCM","epk":{}}}"#,
                epk.replace("\"EC\"", "\"OKP\"")
            )),
            JweError::Epk("\"kty\" is not \"EC\""),
        ),
        (
            ecdh(&format!(
                r#"{{"alg":"ECDH-ES","enc":"A128GCM","epk":{}}}"#,
                epk_json(p256).replacen('{', r#"{"d":"AAAA","#, 1)
            )),
            JweError::Epk("it holds a private key"),
        ),
        (
            ecdh(&format!(
                r#"{{"alg":"ECDH-ES","enc":"A128GCM","apu":"{}","epk":{epk}}}"#,
                crate::jose::b64(&[0; 257])
            )),
            JweError::Header("apu or apv is not base64url of at most 256 bytes"),
        ),
        (
            ecdh(&format!(
                r#"{{"alg":"ECDH-ES","enc":"A128GCM","apv":5,"epk":{epk}}}"#
            )),
            JweError::Header("apu or apv is not a string"),
        ),
        (
            token(
                &format!(r#"{{"alg":"ECDH-ES","enc":"A128GCM","epk":{epk}}}"#),
                &[1; 24],
                &[0; 12],
                b"c",
                &[0; 16],
            ),
            JweError::Length("ECDH-ES (direct) has no encrypted key"),
        ),
        (
            token(
                &format!(r#"{{"alg":"ECDH-ES+A128KW","enc":"A128GCM","epk":{epk}}}"#),
                &[1; 32],
                &[0; 12],
                b"c",
                &[0; 16],
            ),
            JweError::Length("the wrapped key is not the CEK length plus 8 bytes"),
        ),
        (
            token(
                r#"{"alg":"RSA-OAEP","enc":"A128GCM"}"#,
                &[],
                &[0; 12],
                b"c",
                &[0; 16],
            ),
            JweError::Length("the encrypted key is empty"),
        ),
        (
            token(
                r#"{"alg":"RSA-OAEP","enc":"A128GCM"}"#,
                &[1],
                &[0; 16],
                b"c",
                &[0; 16],
            ),
            JweError::Length("the IV is not the length enc needs"),
        ),
        (
            token(
                r#"{"alg":"RSA-OAEP","enc":"A128CBC-HS256"}"#,
                &[1],
                &[0; 12],
                &[0; 16],
                &[0; 16],
            ),
            JweError::Length("the IV is not the length enc needs"),
        ),
        (
            token(
                r#"{"alg":"RSA-OAEP","enc":"A128GCM"}"#,
                &[1],
                &[0; 12],
                b"c",
                &[0; 15],
            ),
            JweError::Length("the tag is not the length enc needs"),
        ),
        (
            token(
                r#"{"alg":"RSA-OAEP","enc":"A256CBC-HS512"}"#,
                &[1],
                &[0; 16],
                &[0; 16],
                &[0; 16],
            ),
            JweError::Length("the tag is not the length enc needs"),
        ),
        (
            token(
                r#"{"alg":"RSA-OAEP","enc":"A128CBC-HS256"}"#,
                &[1],
                &[0; 16],
                &[0; 17],
                &[0; 16],
            ),
            JweError::Length("a CBC ciphertext must be a non-zero multiple of 16 bytes"),
        ),
        (
            token(
                r#"{"alg":"RSA-OAEP","enc":"A128CBC-HS256"}"#,
                &[1],
                &[0; 16],
                &[],
                &[0; 16],
            ),
            JweError::Length("a CBC ciphertext must be a non-zero multiple of 16 bytes"),
        ),
    ];
    for (compact, want) in cases {
        assert_eq!(Jwe::parse(compact.as_bytes()), Err(want), "{compact}");
    }
    // Not compact: the JSON serialization, truncated, padded or standard base64, not UTF-8.
    let good = gcm(r#"{"alg":"RSA-OAEP","enc":"A128GCM"}"#);
    assert!(Jwe::parse(good.as_bytes()).is_ok());
    let dot = good.rfind('.').unwrap_or_default();
    for bad in [
        r#"{"protected":"e30","ciphertext":"","iv":"","tag":""}"#.to_owned(),
        good[..dot].to_owned(),
        format!("{good}."),
        format!("{good}=="),
        good.replacen('A', "+", 1),
        String::new(),
    ] {
        assert!(
            matches!(Jwe::parse(bad.as_bytes()), Err(JweError::Malformed(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        Jwe::parse(b"\xff.a.b.c.d"),
        Err(JweError::Malformed(_))
    ));
    assert_eq!(Jwe::parse(b"...."), Err(JweError::Header("not JSON")));
}

/// The device step: the alg must fit the key; the RSA ciphertext must be the modulus length;
/// the epk must be on the key's curve, and a point of it.
#[test]
fn device_op_checks_the_key_and_the_epk() -> TestResult {
    let fx = fixtures();
    let (rsa, p256, p384) = (
        &fx["keys"]["rsa2048"],
        &fx["keys"]["p256"],
        &fx["keys"]["p384"],
    );
    let ecdh = |epk: &str| {
        token(
            &format!(r#"{{"alg":"ECDH-ES","enc":"A128GCM","epk":{epk}}}"#),
            &[],
            &[0; 12],
            b"c",
            &[0; 16],
        )
    };

    // On the key's curve: fine; on the other curve; off the curve (y + 1).
    let on = Jwe::parse(ecdh(&epk_json(p256)).as_bytes())?;
    assert!(
        matches!(on.device_op(&public_of(p256))?, DecryptOp::Ecdh { peer } if peer == public_of(p256))
    );
    assert_eq!(
        on.device_op(&public_of(p384)),
        Err(JweError::Epk("on another curve than the key"))
    );
    assert!(matches!(
        on.device_op(&public_of(rsa)),
        Err(JweError::Alg(_))
    ));
    let mut y = b64(p256["y"].as_str().unwrap_or_default());
    y[31] ^= 1;
    let mut off = p256.clone();
    off["y"] = Value::String(crate::jose::b64(&y));
    let off = Jwe::parse(ecdh(&epk_json(&off)).as_bytes())?;
    assert_eq!(
        off.device_op(&public_of(p256)),
        Err(JweError::Epk("not a point on the curve"))
    );
    // (0, 0) is no point of either curve; x = p is out of the field.
    let zeros = serde_json::json!({"crv": "P-384", "x": crate::jose::b64(&[0; 48]), "y": crate::jose::b64(&[0; 48])});
    let zeros = Jwe::parse(ecdh(&epk_json(&zeros)).as_bytes())?;
    assert_eq!(
        zeros.device_op(&public_of(p384)),
        Err(JweError::Epk("not a point on the curve"))
    );
    let p = [0xffu8; 32];
    let big = serde_json::json!({"crv": "P-256", "x": crate::jose::b64(&p), "y": p256["y"]});
    let big = Jwe::parse(ecdh(&epk_json(&big)).as_bytes())?;
    assert_eq!(
        big.device_op(&public_of(p256)),
        Err(JweError::Epk("not a point on the curve"))
    );

    // RSA: an EC key does not fit; the encrypted key must be the modulus length.
    let rsa_jwe = |n: usize| {
        token(
            r#"{"alg":"RSA-OAEP-256","enc":"A128GCM"}"#,
            &vec![1; n],
            &[0; 12],
            b"c",
            &[0; 16],
        )
    };
    let ok = Jwe::parse(rsa_jwe(256).as_bytes())?;
    assert!(matches!(
        ok.device_op(&public_of(rsa))?,
        DecryptOp::RsaOaep {
            hash: OaepHash::Sha256,
            ..
        }
    ));
    assert!(matches!(
        ok.device_op(&public_of(p256)),
        Err(JweError::Alg(_))
    ));
    for n in [255, 257, 512] {
        let j = Jwe::parse(rsa_jwe(n).as_bytes())?;
        assert!(
            matches!(j.device_op(&public_of(rsa)), Err(JweError::Length(_))),
            "{n}"
        );
    }
    Ok(())
}

/// Property tests: `parse` never panics on any bytes or on mutated real JWEs; `decrypt`
/// never panics for any device result and never returns a plaintext for a wrong one.
mod proptests {
    use proptest::prelude::*;

    use super::*;

    thread_local! {
        /// The device's answers across the cases of one property.
        static ANSWERS: std::cell::RefCell<Answers> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// One of the jwcrypto JWEs with its key.
    fn case() -> impl Strategy<Value = (Value, String, Vec<u8>)> {
        proptest::sample::select(cases(&fixtures()))
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = Jwe::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_mutated_jwes(
            (_, compact, _) in case(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let mut bytes = compact.into_bytes();
            for (at, b) in edits {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            let _ = Jwe::parse(&bytes);
        }

        #[test]
        fn decrypt_never_panics_nor_opens_with_a_wrong_result(
            (key, compact, _) in case(),
            result in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let jwe = Jwe::parse(compact.as_bytes());
            prop_assert!(jwe.is_ok());
            if let Ok(jwe) = jwe {
                let r = jwe.decrypt(&SecretBytes::new(result));
                prop_assert!(r.is_err(), "a random device result opened {}", compact);
                let _ = key;
            }
        }

        /// A header member sigild ignores (any JSON value) added to a real JWE: parse still
        /// works, and decryption fails at the tag since the AAD changed.
        #[test]
        fn any_header_change_breaks_the_tag(
            (key, compact, _) in case(),
            name in "[a-z]{1,8}",
            value in ".{0,20}",
        ) {
            let mut parts = split(&compact);
            let header: Result<serde_json::Map<String, Value>, _> = serde_json::from_slice(&parts[0]);
            prop_assume!(header.is_ok());
            let mut header = header.unwrap_or_default();
            prop_assume!(!["alg", "enc", "epk", "apu", "apv", "zip", "crit", "kid"].contains(&name.as_str()));
            header.insert(name, Value::String(value));
            parts[0] = serde_json::to_vec(&header).unwrap_or_default();
            // One RSA key, so the request alone says whose answer it is.
            let r = ANSWERS.with_borrow_mut(|answers| open_with(join(&parts).as_bytes(), &key, answers));
            prop_assert!(r.is_err());
        }
    }
}
