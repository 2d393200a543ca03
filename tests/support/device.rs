//! The devices the backend conformance suite (`tests/conformance.rs`) runs on, each as one
//! [`Device`]: a fresh device for one test, what it can do ([`Capabilities`]), how to start
//! `sigild serve` on it, and how to reach it with the device's own tools (pkcs11-tool, ykman) —
//! to make a key pair sigild did not make, to read a public key sigild did not read, and to
//! inject a fault (objects vanish, the card is pulled) and undo it.
//!
//! Adding a device is one constructor returning a [`Device`] (a [`Fixture`] implementation plus
//! its [`Capabilities`]) and one line in the device list of `tests/conformance.rs`. The suite's
//! checks see only this module, never a device's own support type.
//!
//! What a device lacks is data here ([`Capabilities::lacks`]), never a skipped check: the suite
//! asserts that sigild refuses each lacking algorithm with FAILED_PRECONDITION naming it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::json;

use super::{Daemon, TestResult, Token, python};

/// One algorithm (and RSA size) sigild offers, as the suite creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlgCase {
    /// Key name the suite gives it (also how [`Capabilities::lacks`] names it).
    pub key: &'static str,
    /// JOSE alg.
    pub alg: &'static str,
    /// RSA modulus size (0 = sigild's default, 2048); 0 for other kinds.
    pub rsa_bits: u32,
}

impl AlgCase {
    /// The key type sigild reports for a key of this case (`KeyVersion.key_type`).
    pub fn key_type(&self) -> String {
        match self.alg {
            "ES256" => "EC P-256".into(),
            "ES384" => "EC P-384".into(),
            "EdDSA" | "Ed25519" => "Ed25519".into(),
            _ => format!(
                "RSA-{}",
                if self.rsa_bits == 0 {
                    2048
                } else {
                    self.rsa_bits
                }
            ),
        }
    }

    /// The hash OIDC Core §3.1.3.6 uses for `at_hash`/`c_hash`: the JWS alg's hash, SHA-512
    /// for Ed25519 (the hash inside Ed25519).
    pub fn token_hash(&self) -> &'static str {
        match self.alg {
            "ES384" | "PS384" => "sha384",
            "EdDSA" | "Ed25519" => "sha512",
            _ => "sha256",
        }
    }

    /// Whether a refusal message names this algorithm: the JOSE alg or the key type
    /// (`RSA-3072`, `Ed25519`, `EC P-256`) it needs.
    /// (`EdDSA` names the algorithm family of `Ed25519` too.)
    pub fn named_in(&self, msg: &str) -> bool {
        msg.contains(self.alg)
            || msg.contains(&self.key_type())
            || (self.key_type() == "Ed25519" && msg.contains("EdDSA"))
    }
}

/// Every algorithm and RSA size sigild offers. Each device either signs with each of them or
/// lists it in [`Capabilities::lacks`].
pub const OFFERED: [AlgCase; 8] = [
    AlgCase {
        key: "es256",
        alg: "ES256",
        rsa_bits: 0,
    },
    AlgCase {
        key: "es384",
        alg: "ES384",
        rsa_bits: 0,
    },
    AlgCase {
        key: "ps256",
        alg: "PS256",
        rsa_bits: 0,
    },
    AlgCase {
        key: "ps256-3072",
        alg: "PS256",
        rsa_bits: 3072,
    },
    AlgCase {
        key: "ps384-4096",
        alg: "PS384",
        rsa_bits: 4096,
    },
    AlgCase {
        key: "rs256",
        alg: "RS256",
        rsa_bits: 0,
    },
    AlgCase {
        key: "eddsa",
        alg: "EdDSA",
        rsa_bits: 0,
    },
    AlgCase {
        key: "ed25519",
        alg: "Ed25519",
        rsa_bits: 0,
    },
];

/// One decryption alg (with its RSA size or curve) sigild offers, as the suite creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecryptCase {
    /// Key name the suite gives it (also how [`Capabilities::lacks_decrypt`] names it).
    pub key: &'static str,
    /// JWE key-management alg.
    pub alg: &'static str,
    /// RSA modulus size (0 = sigild's default, 2048); 0 for EC.
    pub rsa_bits: u32,
    /// Curve of an ECDH key (`P-256`, `P-384`); empty for RSA.
    pub curve: &'static str,
}

impl DecryptCase {
    /// Whether the key is RSA (RSA-OAEP, RSA-OAEP-256) rather than EC (ECDH-ES).
    pub fn is_rsa(&self) -> bool {
        self.alg.starts_with("RSA")
    }

    /// The key type sigild reports for a key of this case (`KeyVersion.key_type`).
    pub fn key_type(&self) -> String {
        if self.is_rsa() {
            format!(
                "RSA-{}",
                if self.rsa_bits == 0 {
                    2048
                } else {
                    self.rsa_bits
                }
            )
        } else {
            format!("EC {}", self.curve)
        }
    }

    /// Whether a refusal message names this case: the JWE alg or the key type it needs.
    pub fn named_in(&self, msg: &str) -> bool {
        msg.contains(self.alg) || msg.contains(&self.key_type())
    }
}

/// Every decryption alg (and RSA size, curve) sigild offers. Each device either decrypts with
/// each of them or lists it in [`Capabilities::lacks_decrypt`].
pub const DECRYPT_OFFERED: [DecryptCase; 6] = [
    DecryptCase {
        key: "rsa-oaep-256",
        alg: "RSA-OAEP-256",
        rsa_bits: 0,
        curve: "",
    },
    DecryptCase {
        key: "rsa-oaep",
        alg: "RSA-OAEP",
        rsa_bits: 0,
        curve: "",
    },
    DecryptCase {
        key: "rsa-oaep-256-3072",
        alg: "RSA-OAEP-256",
        rsa_bits: 3072,
        curve: "",
    },
    DecryptCase {
        key: "ecdh-es-p256",
        alg: "ECDH-ES",
        rsa_bits: 0,
        curve: "P-256",
    },
    DecryptCase {
        key: "ecdh-es-a128kw-p256",
        alg: "ECDH-ES+A128KW",
        rsa_bits: 0,
        curve: "P-256",
    },
    DecryptCase {
        key: "ecdh-es-a256kw-p384",
        alg: "ECDH-ES+A256KW",
        rsa_bits: 0,
        curve: "P-384",
    },
];

/// What a device's own tool shows of a private key's permitted operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAttributes {
    /// PKCS#11: the usage flags pkcs11-tool prints for the private key object (`decrypt`,
    /// `sign`, `unwrap`, `derive` …).
    Pkcs11Usage(std::collections::BTreeSet<String>),
    /// PIV: the slot the key is in (a key-management slot, 9d or 82–95, is for decryption).
    PivSlot(String),
}

/// What a device can do, as the suite asserts it.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// [`AlgCase::key`]s of the [`OFFERED`] cases the device cannot hold; sigild must refuse
    /// them with FAILED_PRECONDITION naming the algorithm.
    pub lacks: &'static [&'static str],
    /// [`DecryptCase::key`]s of the [`DECRYPT_OFFERED`] cases the device cannot hold; sigild
    /// must refuse them with FAILED_PRECONDITION naming the alg or key type.
    pub lacks_decrypt: &'static [&'static str],
    /// Whether the device takes imported key material (else sigild must refuse import with
    /// FAILED_PRECONDITION).
    pub import: bool,
    /// Who sees [`Fixture::fault`], and how.
    pub fault: FaultModel,
}

/// How a device's fault shows.
#[derive(Debug, Clone, Copy)]
pub enum FaultModel {
    /// A running daemon sees it: its signatures fail with one of `codes` until the fault is
    /// undone.
    Running {
        /// The statuses a signature may get while the device is faulted.
        codes: &'static [tonic::Code],
        /// Whether the first request after the fault is undone must succeed (a YubiKey
        /// reconnects on demand), rather than within the daemon's retry interval.
        recovers_at_once: bool,
    },
    /// Only a daemon that (re)connects sees it: openCryptoki's soft token works inside the
    /// daemon's own process once a session is open, and needs pkcsslotd only to initialise.
    AtStart,
}

impl Capabilities {
    /// The offered cases the device signs with, in [`OFFERED`] order.
    pub fn supported(&self) -> Vec<AlgCase> {
        OFFERED
            .into_iter()
            .filter(|c| !self.lacks.contains(&c.key))
            .collect()
    }

    /// The offered cases the device lacks.
    pub fn lacking(&self) -> Vec<AlgCase> {
        OFFERED
            .into_iter()
            .filter(|c| self.lacks.contains(&c.key))
            .collect()
    }

    /// Whether the device signs with the case named `key`.
    pub fn has(&self, key: &str) -> bool {
        !self.lacks.contains(&key)
    }

    /// The offered decryption cases the device decrypts with, in [`DECRYPT_OFFERED`] order.
    pub fn decrypt_supported(&self) -> Vec<DecryptCase> {
        DECRYPT_OFFERED
            .into_iter()
            .filter(|c| !self.lacks_decrypt.contains(&c.key))
            .collect()
    }

    /// The offered decryption cases the device lacks.
    pub fn decrypt_lacking(&self) -> Vec<DecryptCase> {
        DECRYPT_OFFERED
            .into_iter()
            .filter(|c| self.lacks_decrypt.contains(&c.key))
            .collect()
    }

    /// The first supported case among `keys`, in that order.
    pub fn first_of(&self, keys: &[&str]) -> TestResult<AlgCase> {
        keys.iter()
            .find_map(|k| OFFERED.into_iter().find(|c| c.key == *k && self.has(k)))
            .ok_or_else(|| format!("the device supports none of {keys:?}").into())
    }
}

/// A key pair made on the device by the device's own tool, for adoption.
#[derive(Debug, Clone)]
pub struct Foreign {
    /// The URI to adopt it by.
    pub uri: String,
    /// Another URI naming the same key pair (adopting it again must be refused).
    pub alias: String,
    /// The alg it signs with.
    pub alg: &'static str,
    /// An alg that does not fit it.
    pub wrong_alg: &'static str,
    /// Text the URI sigild reports for it must contain.
    pub reported: String,
}

/// How the suite reaches one kind of device.
pub trait Fixture: Send + Sync {
    /// Start `sigild serve` on the device; `extra` is appended to the config (whole tables,
    /// e.g. `[keyring]`).
    fn daemon(&self, extra: &str) -> TestResult<Daemon>;

    /// How the URI of every key sigild generates on this device begins.
    fn uri_prefix(&self) -> String;

    /// Make a key pair with the device's own tool.
    fn foreign_key(&self) -> TestResult<Foreign>;

    /// Make a key pair whose private key can leave the device (sigild must refuse to adopt
    /// it); `None` where the device cannot hold one (a PIV private key never leaves the card).
    fn extractable_key(&self) -> TestResult<Option<String>>;

    /// A well-formed key URI on some other device of the same kind.
    fn other_device_uri(&self) -> String;

    /// A well-formed key URI on this device where there is no key.
    fn empty_uri(&self) -> String;

    /// The RFC 7638 thumbprint of the public key that the device's own tool reads at `uri`
    /// (computed by jwcrypto); `None` when the tool finds no key there.
    fn public_kid(&self, uri: &str) -> TestResult<Option<String>>;

    /// What the device's own tool shows of the permitted operations of the private key at
    /// `uri`.
    fn key_attributes(&self, uri: &str) -> TestResult<KeyAttributes>;

    /// Make the device's keys unreachable (objects vanish, card pulled).
    fn fault(&self) -> TestResult;

    /// Undo [`Fixture::fault`].
    fn recover(&self) -> TestResult;

    /// What the daemon's log says during the fault, in its own words (which a caller must not
    /// see): about a request that failed ([`FaultModel::Running`]), or at start-up
    /// ([`FaultModel::AtStart`]).
    fn fault_log(&self) -> Vec<String>;
}

/// One fresh device for one test.
pub struct Device {
    /// Name in messages (`softhsm`, `yubikey-5.7.1` …).
    pub name: &'static str,
    /// What it can do.
    pub caps: Capabilities,
    fixture: Box<dyn Fixture>,
}

impl Device {
    pub fn new(name: &'static str, caps: Capabilities, fixture: Box<dyn Fixture>) -> Device {
        Device {
            name,
            caps,
            fixture,
        }
    }
}

impl std::ops::Deref for Device {
    type Target = dyn Fixture;
    fn deref(&self) -> &Self::Target {
        self.fixture.as_ref()
    }
}

/// The RFC 7638 thumbprint of a DER SubjectPublicKeyInfo or a PEM public key, by jwcrypto.
pub fn spki_thumbprint(spki: &[u8]) -> TestResult<String> {
    let req = match std::str::from_utf8(spki) {
        Ok(pem) if pem.contains("-----BEGIN") => json!({"op": "spki_thumbprint", "pem": pem}),
        _ => json!({"op": "spki_thumbprint", "der_b64": super::b64(spki)}),
    };
    Ok(python(&req)?["thumbprint"]
        .as_str()
        .ok_or("thumbprint")?
        .to_owned())
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// PKCS#11 tokens, reached with OpenSC's pkcs11-tool

/// A logged-in pkcs11-tool on one token of one module.
#[derive(Debug, Clone)]
pub struct Pkcs11Tool {
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// Token label.
    pub label: String,
    /// User PIN.
    pub pin: String,
    /// Environment the module needs (e.g. `SOFTHSM2_CONF`).
    pub env: Vec<(String, PathBuf)>,
}

impl Pkcs11Tool {
    /// Run pkcs11-tool logged in on the token.
    pub fn run(&self, args: &[&str]) -> TestResult<Output> {
        let mut cmd = Command::new("pkcs11-tool");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        Ok(cmd
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", &self.label, "--login", "--pin", &self.pin])
            .args(args)
            .output()?)
    }

    /// Generate a key pair with pkcs11-tool (`key_type` as it spells it, e.g. `EC:prime256v1`,
    /// `rsa:2048`), with the token's defaults for what pkcs11-tool does not set; `--extractable`
    /// when asked.
    pub fn keypairgen(
        &self,
        key_type: &str,
        label: &str,
        id: &str,
        extractable: bool,
    ) -> TestResult {
        let mut args = vec![
            "--keypairgen",
            "--key-type",
            key_type,
            "--label",
            label,
            "--id",
            id,
        ];
        if extractable {
            args.push("--extractable");
        }
        let out = self.run(&args)?;
        if !out.status.success() {
            return Err(format!("pkcs11-tool --keypairgen: {}", output_text(&out)).into());
        }
        Ok(())
    }

    /// Generate a key pair with PyKCS11 (tests/tools/p11_keygen.py), whose private key never
    /// leaves the token (`kind`: `rsa` or `ec-p256`). pkcs11-tool cannot ask for that, and
    /// some tokens (openCryptoki's soft token) make extractable keys unless asked.
    pub fn keygen_non_extractable(&self, kind: &str, label: &str, id: &str) -> TestResult {
        use std::io::Write as _;
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/p11_keygen.py");
        let mut cmd = Command::new("python3");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let req = json!({"module": self.module, "token": self.label, "pin": self.pin,
            "kind": kind, "bits": 2048, "label": label, "id": id, "extractable": false});
        child
            .stdin
            .take()
            .ok_or("stdin")?
            .write_all(req.to_string().as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(format!("p11_keygen.py: {}", output_text(&out)).into());
        }
        Ok(())
    }

    /// The [`Foreign`] for a key pair made by [`Pkcs11Tool::keypairgen`] or
    /// [`Pkcs11Tool::keygen_non_extractable`] with the label `legacy-idp` and id `a1b2`.
    pub fn legacy_idp(&self, alg: &'static str) -> Foreign {
        Foreign {
            uri: format!("pkcs11:token={};id=%a1%b2;type=private", self.label),
            alias: "pkcs11:object=legacy-idp".into(),
            alg,
            wrong_alg: if alg.starts_with("ES") {
                "RS256"
            } else {
                "ES256"
            },
            reported: "object=legacy-idp".into(),
        }
    }

    /// The URI of a key pair made by [`Pkcs11Tool::keypairgen`] with the label `leaky` and id
    /// `e1`.
    pub fn leaky_uri(&self) -> String {
        format!("pkcs11:token={};id=%e1;type=private", self.label)
    }

    /// The usage flags pkcs11-tool prints for the private key object whose `CKA_ID` the URI
    /// names.
    pub fn usage(&self, uri: &str) -> TestResult<KeyAttributes> {
        let id = uri_id_hex(uri).ok_or_else(|| format!("no id in {uri}"))?;
        let listing = self.run(&["--list-objects", "--type", "privkey"])?;
        if !listing.status.success() {
            return Err(format!("pkcs11-tool --list-objects: {}", output_text(&listing)).into());
        }
        let text = String::from_utf8_lossy(&listing.stdout);
        let block = text
            .split("Private Key Object")
            .find(|block| {
                block
                    .lines()
                    .any(|l| l.trim().strip_prefix("ID:").map(str::trim) == Some(id.as_str()))
            })
            .ok_or_else(|| format!("no private key with id {id}:\n{text}"))?;
        let usage = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("Usage:"))
            .ok_or_else(|| format!("no Usage line for id {id}:\n{block}"))?;
        Ok(KeyAttributes::Pkcs11Usage(
            usage
                .split(',')
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty() && u != "none")
                .collect(),
        ))
    }

    /// Thumbprint of the public key object whose `CKA_ID` the URI names; `None` when neither
    /// half of the key pair is on the token, an error when only one half is.
    pub fn public_kid(&self, uri: &str) -> TestResult<Option<String>> {
        let id = uri_id_hex(uri).ok_or_else(|| format!("no id in {uri}"))?;
        let listing = self.run(&["--list-objects", "--type", "privkey"])?;
        if !listing.status.success() {
            return Err(format!("pkcs11-tool --list-objects: {}", output_text(&listing)).into());
        }
        // pkcs11-tool lists every private key whatever --id says: pick the block by its ID line.
        let private = String::from_utf8_lossy(&listing.stdout)
            .split("Private Key Object")
            .any(|block| {
                block
                    .lines()
                    .any(|l| l.trim().strip_prefix("ID:").map(str::trim) == Some(id.as_str()))
            });
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("pub.der");
        let out = self.run(&[
            "--read-object",
            "--type",
            "pubkey",
            "--id",
            &id,
            "--output-file",
            file.to_str().ok_or("path")?,
        ])?;
        let public = if out.status.success() {
            Some(spki_thumbprint(&std::fs::read(&file)?)?)
        } else if output_text(&out).contains("object not found") {
            None
        } else {
            return Err(format!("pkcs11-tool --read-object: {}", output_text(&out)).into());
        };
        match (private, public) {
            (true, Some(kid)) => Ok(Some(kid)),
            (false, None) => Ok(None),
            (private, public) => Err(format!(
                "half a key pair with id {id} on the token: private key {}, public key {}",
                if private { "present" } else { "absent" },
                if public.is_some() {
                    "present"
                } else {
                    "absent"
                }
            )
            .into()),
        }
    }
}

/// The `id` attribute of a PKCS#11 URI, as lower-case hex.
pub fn uri_id_hex(uri: &str) -> Option<String> {
    let value = uri
        .trim_start_matches("pkcs11:")
        .split(['?', ';'])
        .find_map(|a| a.strip_prefix("id="))?;
    let mut bytes = Vec::new();
    let mut rest = value.as_bytes();
    while let Some((&c, tail)) = rest.split_first() {
        if c == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = tail.get(2..)?;
        } else {
            bytes.push(c);
            rest = tail;
        }
    }
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// SoftHSM: a fresh token in its own directory per test ([`Token`]).
pub struct SoftHsm {
    token: Token,
    tool: Pkcs11Tool,
    /// The token's object directory while it is moved aside by [`Fixture::fault`].
    moved: std::sync::Mutex<Option<PathBuf>>,
}

impl SoftHsm {
    /// Where the token's object directory is moved while faulted.
    fn aside(&self) -> PathBuf {
        self.token.dir.path().join("aside")
    }

    fn token_dir(&self) -> TestResult<PathBuf> {
        let tokens = self.token.dir.path().join("tokens");
        let entry = std::fs::read_dir(&tokens)?
            .next()
            .ok_or("no token directory")??;
        Ok(entry.path())
    }
}

/// A SoftHSM device: everything sigild offers, import included.
pub async fn softhsm() -> TestResult<Device> {
    let token = Token::new()?;
    let tool = Pkcs11Tool {
        module: super::SOFTHSM_MODULE.into(),
        label: token.label.clone(),
        pin: token.pin.clone(),
        env: vec![("SOFTHSM2_CONF".into(), token.conf.clone())],
    };
    Ok(Device::new(
        "softhsm",
        Capabilities {
            lacks: &[],
            lacks_decrypt: &[],
            import: true,
            fault: FaultModel::Running {
                // The token's objects vanish: depending on what the daemon was doing, the key
                // is not found (FAILED_PRECONDITION) or the token not reachable (UNAVAILABLE).
                codes: &[tonic::Code::Unavailable, tonic::Code::FailedPrecondition],
                recovers_at_once: false,
            },
        },
        Box::new(SoftHsm {
            token,
            tool,
            moved: std::sync::Mutex::new(None),
        }),
    ))
}

impl Fixture for SoftHsm {
    fn daemon(&self, extra: &str) -> TestResult<Daemon> {
        Daemon::start_with(&self.token, &format!("\n{extra}"))
    }

    fn uri_prefix(&self) -> String {
        format!("pkcs11:token={}", self.token.label)
    }

    /// pkcs11-tool makes an EC P-256 key pair (SoftHSM's default: never extractable).
    fn foreign_key(&self) -> TestResult<Foreign> {
        self.tool
            .keypairgen("EC:prime256v1", "legacy-idp", "a1b2", false)?;
        Ok(self.tool.legacy_idp("ES256"))
    }

    fn extractable_key(&self) -> TestResult<Option<String>> {
        self.tool.keypairgen("EC:prime256v1", "leaky", "e1", true)?;
        Ok(Some(self.tool.leaky_uri()))
    }

    fn other_device_uri(&self) -> String {
        "pkcs11:token=other;object=x".into()
    }

    fn empty_uri(&self) -> String {
        format!("pkcs11:token={};id=%ee%ee;type=private", self.token.label)
    }

    fn public_kid(&self, uri: &str) -> TestResult<Option<String>> {
        self.tool.public_kid(uri)
    }

    fn key_attributes(&self, uri: &str) -> TestResult<KeyAttributes> {
        self.tool.usage(uri)
    }

    /// The token's objects vanish (a storage fault, a partition being restored).
    fn fault(&self) -> TestResult {
        let dir = self.token_dir()?;
        std::fs::rename(&dir, self.aside())?;
        *self.moved.lock().unwrap() = Some(dir);
        Ok(())
    }

    fn recover(&self) -> TestResult {
        let dir = self
            .moved
            .lock()
            .unwrap()
            .take()
            .ok_or("no fault to undo")?;
        std::fs::rename(self.aside(), dir)?;
        Ok(())
    }

    fn fault_log(&self) -> Vec<String> {
        vec![format!(
            "no token matches pkcs11:token={}",
            self.token.label
        )]
    }
}

// ---------------------------------------------------------------------------------------------
// The virtual YubiKey, reached with ykman

/// A virtual YubiKey behind its own pcscd ([`super::yubikey::VirtualCard`]), holding the
/// in-process pcscd lock for as long as it lives.
#[cfg(feature = "yubikey")]
pub struct Yubikey {
    card: super::yubikey::VirtualCard,
    _one_pcscd: tokio::sync::MutexGuard<'static, ()>,
}

/// A virtual YubiKey with firmware 5.7.1: every algorithm (Ed25519 and RSA-3072/4096 are 5.7
/// features); PIV import is refused by sigild (imported keys cannot be attested).
#[cfg(feature = "yubikey")]
pub async fn yubikey_5_7_1() -> TestResult<Device> {
    yubikey("yubikey-5.7.1", "5.7.1", &[], &[]).await
}

/// A virtual YubiKey with firmware 5.4.3: no Ed25519 and no RSA above 2048 bits before 5.7
/// (for decryption too).
#[cfg(feature = "yubikey")]
pub async fn yubikey_5_4_3() -> TestResult<Device> {
    yubikey(
        "yubikey-5.4.3",
        "5.4.3",
        &["ps256-3072", "ps384-4096", "eddsa", "ed25519"],
        &["rsa-oaep-256-3072"],
    )
    .await
}

#[cfg(feature = "yubikey")]
async fn yubikey(
    name: &'static str,
    firmware: &str,
    lacks: &'static [&'static str],
    lacks_decrypt: &'static [&'static str],
) -> TestResult<Device> {
    let guard = super::yubikey::serial_guard().await;
    let card = super::yubikey::VirtualCard::start(firmware, &[])?;
    Ok(Device::new(
        name,
        Capabilities {
            lacks,
            lacks_decrypt,
            import: false,
            fault: FaultModel::Running {
                codes: &[tonic::Code::Unavailable],
                recovers_at_once: true,
            },
        },
        Box::new(Yubikey {
            card,
            _one_pcscd: guard,
        }),
    ))
}

#[cfg(feature = "yubikey")]
impl Yubikey {
    fn ykman(&self, args: &[&str]) -> TestResult<Output> {
        Ok(Command::new("ykman")
            .args(["--device", &super::yubikey::SERIAL.to_string(), "piv"])
            .args(args)
            .output()?)
    }
}

/// The slot of a `yubikey:serial=…;slot=…` URI.
pub fn uri_slot(uri: &str) -> Option<&str> {
    uri.split(';').find_map(|a| a.strip_prefix("slot="))
}

#[cfg(feature = "yubikey")]
impl Fixture for Yubikey {
    fn daemon(&self, extra: &str) -> TestResult<Daemon> {
        // Key generation on the card (RSA above all) takes seconds.
        let config = self
            .card
            .write_config(&self.card.config(&format!("timeout_ms = 8000\n{extra}")))?;
        Daemon::start_config(&self.card.work(), &config)
    }

    fn uri_prefix(&self) -> String {
        format!("yubikey:serial={};slot=", super::yubikey::SERIAL)
    }

    /// ykman makes an EC P-256 key in slot 9c, whose PIN policy is "always": the daemon must
    /// verify the PIN before every signature with it.
    fn foreign_key(&self) -> TestResult<Foreign> {
        let dir = tempfile::tempdir()?;
        let pubfile = dir.path().join("9c.pem");
        let out = self.ykman(&[
            "keys",
            "generate",
            "-a",
            "ECCP256",
            "-m",
            super::yubikey::DEFAULT_MGM,
            "9c",
            pubfile.to_str().ok_or("path")?,
        ])?;
        if !out.status.success() {
            return Err(format!("ykman piv keys generate: {}", output_text(&out)).into());
        }
        let uri = format!("yubikey:serial={};slot=9c", super::yubikey::SERIAL);
        Ok(Foreign {
            alias: uri.clone(),
            reported: uri.clone(),
            uri,
            alg: "ES256",
            wrong_alg: "RS256",
        })
    }

    fn extractable_key(&self) -> TestResult<Option<String>> {
        Ok(None)
    }

    fn other_device_uri(&self) -> String {
        "yubikey:serial=87654321;slot=9a".into()
    }

    fn empty_uri(&self) -> String {
        format!("yubikey:serial={};slot=9e", super::yubikey::SERIAL)
    }

    fn public_kid(&self, uri: &str) -> TestResult<Option<String>> {
        let slot = uri_slot(uri).ok_or_else(|| format!("no slot in {uri}"))?;
        let out = self.ykman(&["keys", "export", slot, "-"])?;
        if !out.status.success() {
            let text = output_text(&out);
            if text.contains("No key") || text.contains("not found") || text.contains("No data") {
                return Ok(None);
            }
            return Err(format!("ykman piv keys export {slot}: {text}").into());
        }
        spki_thumbprint(&out.stdout).map(Some)
    }

    fn key_attributes(&self, uri: &str) -> TestResult<KeyAttributes> {
        let slot = uri_slot(uri).ok_or_else(|| format!("no slot in {uri}"))?;
        Ok(KeyAttributes::PivSlot(slot.to_owned()))
    }

    /// "Pull the card": the emulator stops and pcscd sees the reader empty.
    fn fault(&self) -> TestResult {
        self.card.remove()
    }

    fn recover(&self) -> TestResult {
        self.card.insert(None)
    }

    fn fault_log(&self) -> Vec<String> {
        vec![format!(
            "YubiKey with serial {} not found",
            super::yubikey::SERIAL
        )]
    }
}

// ---------------------------------------------------------------------------------------------
// openCryptoki's soft token, reached with pkcs11-tool

/// openCryptoki's soft token ([`super::ock::OckToken`]: one per machine at a time, held for the
/// device's life).
pub struct Ock {
    token: super::ock::OckToken,
    tool: Pkcs11Tool,
}

/// openCryptoki 3.8.1's soft token: RSA only (no EC or EdDSA mechanisms, so no ECDH either),
/// import included.
pub async fn opencryptoki() -> TestResult<Device> {
    let token = super::ock::OckToken::start()?;
    let tool = Pkcs11Tool {
        module: token.module.clone(),
        label: token.labels[0].clone(),
        pin: token.pin()?,
        env: Vec::new(),
    };
    Ok(Device::new(
        "opencryptoki",
        Capabilities {
            lacks: &["es256", "es384", "eddsa", "ed25519"],
            lacks_decrypt: &["ecdh-es-p256", "ecdh-es-a128kw-p256", "ecdh-es-a256kw-p384"],
            import: true,
            fault: FaultModel::AtStart,
        },
        Box::new(Ock { token, tool }),
    ))
}

impl Fixture for Ock {
    fn daemon(&self, extra: &str) -> TestResult<Daemon> {
        self.token.daemon(&format!("\n{extra}"))
    }

    fn uri_prefix(&self) -> String {
        format!("pkcs11:token={}", self.tool.label)
    }

    /// PyKCS11 makes a non-extractable RSA key pair (the soft token has no EC, and pkcs11-tool
    /// gets extractable keys from it).
    fn foreign_key(&self) -> TestResult<Foreign> {
        self.tool
            .keygen_non_extractable("rsa", "legacy-idp", "a1b2")?;
        Ok(self.tool.legacy_idp("PS256"))
    }

    /// pkcs11-tool's RSA key pair: the soft token makes it extractable.
    fn extractable_key(&self) -> TestResult<Option<String>> {
        self.tool.keypairgen("rsa:2048", "leaky", "e1", false)?;
        Ok(Some(self.tool.leaky_uri()))
    }

    fn other_device_uri(&self) -> String {
        "pkcs11:token=other;object=x".into()
    }

    fn empty_uri(&self) -> String {
        format!("pkcs11:token={};id=%ee%ee;type=private", self.tool.label)
    }

    fn public_kid(&self, uri: &str) -> TestResult<Option<String>> {
        self.tool.public_kid(uri)
    }

    fn key_attributes(&self, uri: &str) -> TestResult<KeyAttributes> {
        self.tool.usage(uri)
    }

    /// pkcsslotd stops (token data and configuration stay): the module cannot initialise.
    /// With a daemon connected, pkcsslotd may outlive ock-down.sh for a moment (it ends with a
    /// KILL); wait until it is gone, so that starting it again finds no stranger.
    fn fault(&self) -> TestResult {
        self.token.stop_slotd()?;
        for _ in 0..150 {
            let running = Command::new("pgrep")
                .args(["-x", "pkcsslotd"])
                .output()?
                .status
                .success();
            if !running {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err("pkcsslotd still running 15 s after ock-down.sh --daemon".into())
    }

    fn recover(&self) -> TestResult {
        self.token.start_slotd()
    }

    /// A daemon starting meanwhile names the module and the likely cause.
    fn fault_log(&self) -> Vec<String> {
        vec![
            "NOT_SERVING".into(),
            self.token.module.display().to_string(),
            "pkcsslotd running".into(),
        ]
    }
}
