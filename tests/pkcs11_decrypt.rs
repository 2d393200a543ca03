//! Decryption keys in the PKCS#11 backend, against a real SoftHSM token: RSA-OAEP (SHA-1 and
//! SHA-256) and ECDH (P-256, P-384) with keys the backend generates, the sender's half done by
//! Python `cryptography` (tests/tools/jwe_keyop.py) and the result compared byte for byte; the
//! keys' usage attributes as pkcs11-tool reads them; the token refusing the other use; one error
//! for every corrupted ciphertext; no derived secret left on the token.
//!
//! A module reads its configuration once per process, so each test runs in a process of its
//! own with its own token ([`isolated`]): the test re-runs its binary for just itself with
//! `SOFTHSM2_CONF` set, under `cargo test` as under nextest.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use sigild::backend::pkcs11::{Pkcs11Backend, Pkcs11Settings};
use sigild::backend::{Backend, BackendError, KeyId, KeyObject, KeySpec};
use sigild::crypto::{Curve, DecryptOp, HashAlg, KeyKind, KeyPurpose, OaepHash, PublicKey, SignOp};
use sigild::secret::{Secret, SecretBytes};
use support::{SOFTHSM_MODULE, TestResult, Token};

/// Set in the process that runs a test's body.
const CHILD: &str = "SIGILD_PKCS11_DECRYPT_CHILD";

/// Run `body` in a new process of this test binary (just the test `name`) on a fresh token;
/// returns that process's output (its log lines included).
fn isolated(name: &str, body: impl FnOnce(&Ctx) -> TestResult) -> TestResult<String> {
    if std::env::var_os(CHILD).is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("sigild=info")
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
        let ctx = Ctx::open()?;
        let result = body(&ctx);
        ctx.backend.shutdown();
        return result.map(|()| String::new());
    }
    let token = Token::new()?;
    let mut child = Command::new(std::env::current_exe()?);
    child
        .env("SOFTHSM2_CONF", &token.conf)
        .env("SIGILD_TEST_MODULE", SOFTHSM_MODULE)
        .env("SIGILD_TEST_TOKEN", &token.label)
        .env("SIGILD_TEST_PIN", &token.pin);
    let text = run_child(name, child)?;
    drop(token);
    Ok(text)
}

/// [`isolated`] on openCryptoki's soft token (one at a time per machine: the token holds a lock).
fn isolated_ock(name: &str, body: impl FnOnce(&Ctx) -> TestResult) -> TestResult<String> {
    if std::env::var_os(CHILD).is_some() {
        return isolated(name, body);
    }
    let token = support::ock::OckToken::start()?;
    let mut child = Command::new(std::env::current_exe()?);
    child
        .env("SIGILD_TEST_MODULE", &token.module)
        .env("SIGILD_TEST_TOKEN", support::ock::LABEL)
        .env("SIGILD_TEST_PIN", token.pin()?);
    let text = run_child(name, child)?;
    drop(token);
    Ok(text)
}

/// Run the test `name` alone in `child` (this binary), its environment set; its output.
fn run_child(name: &str, mut child: Command) -> TestResult<String> {
    let out = child
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !text.contains("1 passed") {
        return Err(format!("{name} failed in its own process:\n{text}").into());
    }
    print!("{text}");
    Ok(text)
}

/// How often the child's log says `what`.
fn logged(text: &str, what: &str) -> usize {
    text.matches(what).count()
}

/// Only in the parent (the child's log is what it reads).
fn parent() -> bool {
    std::env::var_os(CHILD).is_none()
}

/// The backend on this process's token, a runtime to drive it, and the token's details.
struct Ctx {
    backend: Pkcs11Backend,
    module: String,
    rt: tokio::runtime::Runtime,
    label: String,
    pin: String,
}

impl Ctx {
    fn open() -> TestResult<Ctx> {
        let module = std::env::var("SIGILD_TEST_MODULE")?;
        let label = std::env::var("SIGILD_TEST_TOKEN")?;
        let pin = std::env::var("SIGILD_TEST_PIN")?;
        let (backend, issue) = Pkcs11Backend::open(Pkcs11Settings {
            module: module.clone().into(),
            token: format!("pkcs11:token={label}").parse()?,
            pin: Secret::new(pin.clone()),
            workers: 2,
            queue_depth: 16,
            max_abandoned_workers: 1,
        })?;
        if let Some(e) = issue {
            return Err(format!("token not ready: {e}").into());
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Ctx {
            backend,
            module,
            rt,
            label,
            pin,
        })
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(20)
    }

    fn generate(&self, kind: KeyKind, purpose: KeyPurpose, label: &str) -> TestResult<KeyObject> {
        Ok(self.rt.block_on(self.backend.generate(KeySpec {
            kind,
            label: label.into(),
            purpose,
        }))?)
    }

    fn decrypt(&self, key: &KeyObject, op: DecryptOp) -> Result<SecretBytes, BackendError> {
        self.rt.block_on(
            self.backend
                .decrypt(&key.id, key.public.kind(), op, Self::deadline()),
        )
    }

    fn sign(&self, key: &KeyObject, op: SignOp) -> Result<Vec<u8>, BackendError> {
        self.rt.block_on(
            self.backend
                .sign(&key.id, key.public.kind(), op, Self::deadline()),
        )
    }

    /// pkcs11-tool on this token, logged in; its stdout.
    fn tool(&self, args: &[&str]) -> TestResult<String> {
        let out = Command::new("pkcs11-tool")
            .args([
                "--module",
                &self.module,
                "--token-label",
                &self.label,
                "--login",
                "--pin",
                &self.pin,
            ])
            .args(args)
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "pkcs11-tool {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `Usage:` and `Access:` lines pkcs11-tool prints for the object of `kind` (`Private`
    /// or `Public`) with `CKA_ID` = `id` (its `--id` does not filter listings).
    fn usage(&self, kind: &str, id: &KeyId) -> TestResult<(String, String)> {
        let text = self.tool(&["--list-objects"])?;
        let want_id = format!("ID:         {}", id.to_hex());
        let mut blocks: Vec<Vec<&str>> = Vec::new();
        for line in text.lines() {
            if !line.starts_with(' ') {
                blocks.push(Vec::new());
            }
            if let Some(b) = blocks.last_mut() {
                b.push(line.trim());
            }
        }
        let block = blocks
            .iter()
            .find(|b| {
                b.first()
                    .is_some_and(|h| h.starts_with(&format!("{kind} Key Object")))
                    && b.contains(&want_id.as_str())
            })
            .ok_or_else(|| format!("no {kind} key {} in {text}", id.to_hex()))?;
        let line = |p: &str| {
            block
                .iter()
                .find_map(|l| l.strip_prefix(p))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        Ok((line("Usage:"), line("Access:")))
    }

    /// Secret-key objects this process's sessions can see on the token (session objects are
    /// visible to every session of the process that made them, and to no other process).
    fn secret_objects(&self) -> TestResult<usize> {
        let ctx = Pkcs11::new(&self.module)?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::CryptokiAlreadyInitialized,
                _,
            )) => {}
            Err(e) => return Err(e.into()),
        }
        let slot = ctx
            .get_slots_with_token()?
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .map(|i| i.label() == self.label)
                    .unwrap_or(false)
            })
            .ok_or("token not found")?;
        let session = ctx.open_ro_session(slot)?;
        match session.login(UserType::User, Some(&AuthPin::from(self.pin.clone()))) {
            Ok(())
            | Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])?
            .len())
    }
}

/// The error every undecryptable input must give, as a string to compare.
fn uniform(r: Result<SecretBytes, BackendError>) -> TestResult<String> {
    match r {
        Err(e @ BackendError::InvalidRequest(_)) => Ok(e.to_string()),
        other => Err(format!("expected the uniform decryption error, got {other:?}").into()),
    }
}

fn rsa_case(ctx: &Ctx, bits: u32) -> TestResult {
    let key = ctx.generate(KeyKind::Rsa { bits }, KeyPurpose::Decrypt, "sigild/enc-rsa")?;
    let mut errors = Vec::new();
    for hash in [OaepHash::Sha1, OaepHash::Sha256] {
        // Several times: the first decides the token's path, the others take it.
        for _ in 0..3 {
            let (ciphertext, cek) = support::jwe::oaep_to(&key.public, hash)?;
            let got = ctx.decrypt(&key, DecryptOp::RsaOaep { hash, ciphertext })?;
            assert_eq!(got.expose(), cek.as_slice(), "{hash:?}");
        }
        // Corrupted ciphertexts: a flipped byte (bad padding after decryption), an integer
        // larger than the modulus, a wrong length: all one error.
        let (mut ciphertext, _) = support::jwe::oaep_to(&key.public, hash)?;
        if let Some(b) = ciphertext.get_mut(10) {
            *b ^= 0x40;
        }
        errors.push(uniform(
            ctx.decrypt(&key, DecryptOp::RsaOaep { hash, ciphertext }),
        )?);
        let k = (bits / 8) as usize;
        errors.push(uniform(ctx.decrypt(
            &key,
            DecryptOp::RsaOaep {
                hash,
                ciphertext: vec![0xff; k],
            },
        ))?);
        errors.push(uniform(ctx.decrypt(
            &key,
            DecryptOp::RsaOaep {
                hash,
                ciphertext: vec![1; k - 1],
            },
        ))?);
        // The key still decrypts after the failures.
        let (ciphertext, cek) = support::jwe::oaep_to(&key.public, hash)?;
        let got = ctx.decrypt(&key, DecryptOp::RsaOaep { hash, ciphertext })?;
        assert_eq!(got.expose(), cek.as_slice());
    }
    assert!(
        errors.iter().all(|e| e == &errors[0]),
        "not one error: {errors:?}"
    );
    assert!(!errors[0].contains("CKR_"), "{}", errors[0]);

    // The direct decrypter (the benchmark's) gives the same CEK.
    let direct = ctx.backend.direct_decrypter(&key.id, key.public.kind())?;
    let (ciphertext, cek) = support::jwe::oaep_to(&key.public, OaepHash::Sha256)?;
    let got = direct.decrypt(&DecryptOp::RsaOaep {
        hash: OaepHash::Sha256,
        ciphertext,
    })?;
    assert_eq!(got.expose(), cek.as_slice());
    Ok(())
}

fn ec_case(ctx: &Ctx, curve: Curve) -> TestResult {
    let key = ctx.generate(KeyKind::Ec(curve), KeyPurpose::Decrypt, "sigild/enc-ec")?;
    let before = ctx.secret_objects()?;
    for _ in 0..3 {
        let (peer, z) = support::jwe::ecdh_with(&key.public)?;
        let got = ctx.decrypt(&key, DecryptOp::Ecdh { peer })?;
        assert_eq!(got.expose(), z.as_slice());
        assert_eq!(got.expose().len(), curve.field_len());
    }
    assert_eq!(ctx.secret_objects()?, before, "a derived secret was left");

    // A point that is not on the curve: the derivation fails, and leaves nothing behind.
    let n = curve.field_len();
    let mut x = vec![0u8; n];
    let mut y = vec![0u8; n];
    x[n - 1] = 1;
    y[n - 1] = 1;
    let bad = ctx.decrypt(
        &key,
        DecryptOp::Ecdh {
            peer: PublicKey::Ec { curve, x, y },
        },
    );
    println!("off-curve point: {bad:?}");
    assert!(bad.is_err(), "an off-curve point was agreed with");
    assert_eq!(
        ctx.secret_objects()?,
        before,
        "a failed derive left an object"
    );

    // Still works afterwards, and the direct decrypter agrees.
    let (peer, z) = support::jwe::ecdh_with(&key.public)?;
    let direct = ctx.backend.direct_decrypter(&key.id, key.public.kind())?;
    let got = direct.decrypt(&DecryptOp::Ecdh { peer })?;
    assert_eq!(got.expose(), z.as_slice());
    assert_eq!(ctx.secret_objects()?, before);
    Ok(())
}

/// Each OAEP hash is decided once for the token, and logged once.
fn decided_once(text: &str) -> TestResult {
    if parent() {
        assert_eq!(logged(text, "RSA-OAEP decryption decided"), 2, "{text}");
        assert_eq!(logged(text, "hash=\"SHA-1\""), 1, "{text}");
        assert_eq!(logged(text, "hash=\"SHA-256\""), 1, "{text}");
    }
    Ok(())
}

/// The ECDH point form is decided once for the token, and logged once.
fn form_decided_once(text: &str) -> TestResult {
    if parent() {
        assert_eq!(logged(text, "ECDH peer point form decided"), 1, "{text}");
    }
    Ok(())
}

#[test]
fn rsa_2048_oaep_sha1_and_sha256() -> TestResult {
    decided_once(&isolated("rsa_2048_oaep_sha1_and_sha256", |ctx| {
        rsa_case(ctx, 2048)
    })?)
}

#[test]
fn rsa_3072_oaep_sha1_and_sha256() -> TestResult {
    decided_once(&isolated("rsa_3072_oaep_sha1_and_sha256", |ctx| {
        rsa_case(ctx, 3072)
    })?)
}

#[test]
fn ecdh_p256() -> TestResult {
    form_decided_once(&isolated("ecdh_p256", |ctx| ec_case(ctx, Curve::P256))?)
}

#[test]
fn ecdh_p384() -> TestResult {
    form_decided_once(&isolated("ecdh_p384", |ctx| ec_case(ctx, Curve::P384))?)
}

#[test]
fn usage_attributes_follow_the_purpose_and_the_token_refuses_the_other_use() -> TestResult {
    isolated(
        "usage_attributes_follow_the_purpose_and_the_token_refuses_the_other_use",
        |ctx| {
            let rsa = KeyKind::Rsa { bits: 2048 };
            let sig_rsa = ctx.generate(rsa, KeyPurpose::Sign, "sigild/sig-rsa")?;
            let enc_rsa = ctx.generate(rsa, KeyPurpose::Decrypt, "sigild/enc-rsa")?;
            let sig_ec =
                ctx.generate(KeyKind::Ec(Curve::P256), KeyPurpose::Sign, "sigild/sig-ec")?;
            let enc_ec = ctx.generate(
                KeyKind::Ec(Curve::P256),
                KeyPurpose::Decrypt,
                "sigild/enc-ec",
            )?;

            let usage = |k: &KeyObject, t| ctx.usage(t, &k.id).map(|u| u.0);
            assert_eq!(usage(&sig_rsa, "Private")?, "sign");
            assert_eq!(usage(&sig_rsa, "Public")?, "verify");
            assert_eq!(usage(&enc_rsa, "Private")?, "decrypt, unwrap");
            assert_eq!(usage(&enc_rsa, "Public")?, "encrypt, wrap");
            assert_eq!(usage(&sig_ec, "Private")?, "sign");
            assert_eq!(usage(&enc_ec, "Private")?, "derive");
            assert_eq!(usage(&enc_ec, "Public")?, "none");
            for k in [&enc_rsa, &enc_ec] {
                // The device's own tool reads the public key back (pkcs11-tool of this machine
                // cannot read any P-384 public key: "cannot create EVP_PKEY", sign keys too).
                let dir = tempfile::tempdir()?;
                let file = dir.path().join("pub.der");
                ctx.tool(&[
                    "--read-object",
                    "--type",
                    "pubkey",
                    "--id",
                    &k.id.to_hex(),
                    "--output-file",
                    file.to_str().ok_or("path")?,
                ])?;
                assert!(!std::fs::read(&file)?.is_empty());
            }
            for k in [&enc_rsa, &enc_ec] {
                let (_, access) = ctx.usage("Private", &k.id)?;
                assert!(access.contains("sensitive"), "{access}");
                assert!(access.contains("never extractable"), "{access}");
            }

            // A decryption key does not sign; the token says so.
            let pss = SignOp::RsaPss {
                hash: HashAlg::Sha256,
                digest: vec![7; 32],
            };
            let refused = ctx.sign(&enc_rsa, pss);
            println!("sign with an RSA decryption key: {refused:?}");
            assert!(
                matches!(&refused, Err(e) if e.to_string().contains("CKR_KEY_FUNCTION_NOT_PERMITTED")),
                "{refused:?}"
            );
            let refused = ctx.sign(
                &enc_ec,
                SignOp::Ecdsa {
                    digest: vec![7; 32],
                },
            );
            assert!(
                matches!(&refused, Err(e) if e.to_string().contains("CKR_KEY_FUNCTION_NOT_PERMITTED")),
                "{refused:?}"
            );

            // A signing key does not decrypt; the token says so (not the uniform error).
            let (ciphertext, _) = support::jwe::oaep_to(&sig_rsa.public, OaepHash::Sha1)?;
            let refused = ctx.decrypt(
                &sig_rsa,
                DecryptOp::RsaOaep {
                    hash: OaepHash::Sha1,
                    ciphertext,
                },
            );
            println!("decrypt with an RSA signing key: {refused:?}");
            assert!(
                matches!(&refused, Err(BackendError::InvalidRequest(m)) if m.contains("CKR_KEY_FUNCTION_NOT_PERMITTED")),
                "{refused:?}"
            );
            let (peer, _) = support::jwe::ecdh_with(&sig_ec.public)?;
            let refused = ctx.decrypt(&sig_ec, DecryptOp::Ecdh { peer });
            println!("ECDH with an EC signing key: {refused:?}");
            assert!(
                matches!(&refused, Err(BackendError::InvalidRequest(m)) if m.contains("CKR_KEY_FUNCTION_NOT_PERMITTED")),
                "{refused:?}"
            );
            // The refusals did not spoil the token's decisions: the decryption keys still work.
            let (ciphertext, cek) = support::jwe::oaep_to(&enc_rsa.public, OaepHash::Sha1)?;
            let got = ctx.decrypt(
                &enc_rsa,
                DecryptOp::RsaOaep {
                    hash: OaepHash::Sha1,
                    ciphertext,
                },
            )?;
            assert_eq!(got.expose(), cek.as_slice());
            Ok(())
        },
    ).map(drop)
}

#[test]
fn adopt_checks_the_usage_attributes() -> TestResult {
    isolated("adopt_checks_the_usage_attributes", |ctx| {
        let gen_key = |key_type: &str, usage: &str, id: &str| {
            ctx.tool(&[
                "--keypairgen",
                "--key-type",
                key_type,
                usage,
                "--label",
                id,
                "--id",
                id,
            ])
            .map(drop)
        };
        gen_key("EC:prime256v1", "--usage-derive", "e1")?;
        gen_key("rsa:2048", "--usage-decrypt", "d1")?;
        gen_key("EC:prime256v1", "--usage-sign", "51")?;
        let uri = |id: &str| format!("pkcs11:token={};id=%{id};type=private", ctx.label);
        let adopt = |id: &str, p| ctx.rt.block_on(ctx.backend.adopt(uri(id), p));

        let ec = adopt("e1", KeyPurpose::Decrypt)?;
        let rsa = adopt("d1", KeyPurpose::Decrypt)?;
        // Adopted keys decrypt.
        let (peer, z) = support::jwe::ecdh_with(&ec.public)?;
        assert_eq!(
            ctx.decrypt(&ec, DecryptOp::Ecdh { peer })?.expose(),
            z.as_slice()
        );
        for hash in [OaepHash::Sha1, OaepHash::Sha256] {
            let (ciphertext, cek) = support::jwe::oaep_to(&rsa.public, hash)?;
            let got = ctx.decrypt(&rsa, DecryptOp::RsaOaep { hash, ciphertext })?;
            assert_eq!(got.expose(), cek.as_slice());
        }

        let refusal = |r: Result<KeyObject, BackendError>| match r {
            Err(BackendError::InvalidRequest(m)) => m,
            other => format!("unexpected {other:?}"),
        };
        // pkcs11-tool keys can decrypt, sign and unwrap whatever --usage-* says, but derive only
        // when asked: one made to sign is no ECDH key.
        assert_eq!(
            refusal(adopt("51", KeyPurpose::Decrypt)),
            "the key does not allow key agreement (CKA_DERIVE=false)"
        );
        // sigild's own decryption keys cannot sign, its signing keys cannot decrypt.
        let enc = ctx.generate(KeyKind::Ec(Curve::P256), KeyPurpose::Decrypt, "enc")?;
        let sig = ctx.generate(KeyKind::Rsa { bits: 2048 }, KeyPurpose::Sign, "sig")?;
        let by_id = |k: &KeyObject, p| {
            let uri = format!(
                "pkcs11:token={};id={};type=private",
                ctx.label,
                k.id.0
                    .iter()
                    .map(|b| format!("%{b:02x}"))
                    .collect::<String>()
            );
            ctx.rt.block_on(ctx.backend.adopt(uri, p))
        };
        assert_eq!(
            refusal(by_id(&enc, KeyPurpose::Sign)),
            "the key does not allow signing (CKA_SIGN=false)"
        );
        assert_eq!(
            refusal(by_id(&sig, KeyPurpose::Decrypt)),
            "the key does not allow decryption (CKA_DECRYPT=false)"
        );
        assert!(by_id(&enc, KeyPurpose::Decrypt).is_ok());
        Ok(())
    })
    .map(drop)
}

/// openCryptoki's soft token: RSA decryption keys (it has no EC mechanisms at all, so no ECDH
/// keys; the backend refuses them naming CKM_ECDH1_DERIVE).
#[test]
fn opencryptoki_rsa_oaep_sha1_and_sha256() -> TestResult {
    decided_once(&isolated_ock(
        "opencryptoki_rsa_oaep_sha1_and_sha256",
        |ctx| {
            rsa_case(ctx, 2048)?;
            let refused = ctx.generate(KeyKind::Ec(Curve::P256), KeyPurpose::Decrypt, "ec");
            println!("EC decryption key on openCryptoki: {refused:?}");
            assert!(
                matches!(&refused, Err(e) if e.to_string().contains("CKM_ECDH1_DERIVE")),
                "{refused:?}"
            );
            Ok(())
        },
    )?)
}
