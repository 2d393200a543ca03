//! Integration-test support for openCryptoki's software token, a second PKCS#11 implementation
//! next to SoftHSM: a freshly initialised token per test (`scripts/ock-up.sh` in a temporary
//! directory, undone by `scripts/ock-down.sh` on drop, so no object outlives its test), daemon
//! configs pointing at it, and stopping / restarting `pkcsslotd` for fault tests.
//!
//! openCryptoki 3.8.1 reads one fixed config file and runs one `pkcsslotd` per machine, so every
//! [`OckToken`] holds an exclusive `flock` on [`OCK_LOCK`] for its whole life: tests on the token
//! run one at a time, across threads (`cargo test`), processes (nextest) and test binaries.
//! Several independent soft tokens do exist in 3.8.1 (`tokname`, one slot each;
//! [`OckToken::start_tokens`]), but they share that pkcsslotd, which a fault test stops, so they
//! are not a way to run tests in parallel. Without root or the `opencryptoki` package
//! [`OckToken::start`] fails loudly: the tests fail, they never pass silently.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{ADMIN_SPIFFE, Daemon, Pki, TestResult, all_operations};

/// The lock every [`OckToken`] holds for its life. Not `/tmp/sigild-ock.lock`, which whole test
/// runs may be wrapped in (`flock /tmp/sigild-ock.lock cargo nextest run …`): a test taking the
/// same file as its wrapper would wait for itself.
pub const OCK_LOCK: &str = "/tmp/sigild-ock-token.lock";

/// The label of the (first) token.
pub const LABEL: &str = "sigild-ock";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// openCryptoki's soft token(s), initialised for one test; taken down on drop.
pub struct OckToken {
    /// Test PKI (`pki/`), the daemon configs, and `ock/`, the scripts' work directory.
    pub dir: tempfile::TempDir,
    /// The PKCS#11 module (`libopencryptoki.so`).
    pub module: PathBuf,
    /// Token labels, slot 0 first.
    pub labels: Vec<String>,
    /// The user PIN file (the same PIN on every token).
    pub pin_file: PathBuf,
    /// The daemon's TLS files and the admin client certificate.
    pub pki: Pki,
    /// Held for the token's life: one user of openCryptoki per machine at a time.
    _lock: std::fs::File,
}

impl OckToken {
    /// One token labelled [`LABEL`].
    pub fn start() -> TestResult<OckToken> {
        Self::start_tokens(1)
    }

    /// `n` independent tokens in slots 0..n, labelled `sigild-ock`, `sigild-ock-1`, … (all
    /// with serial "123", as openCryptoki gives every soft token).
    pub fn start_tokens(n: usize) -> TestResult<OckToken> {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(OCK_LOCK)?;
        lock.lock()?;
        let dir = tempfile::tempdir()?;
        let work = dir.path().join("ock");
        let log = dir.path().join("ock-up.log");
        // Output to a file, not a pipe: pkcsslotd inherits it and outlives the script.
        let out = std::fs::File::create(&log)?;
        let status = Command::new(root().join("scripts/ock-up.sh"))
            .arg(&work)
            .env("OCK_TOKENS", n.to_string())
            .env("OCK_LABEL", LABEL)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if !status.success() {
            // Leave nothing half set up behind.
            let _ = Command::new(root().join("scripts/ock-down.sh"))
                .arg(&work)
                .status();
            return Err(format!(
                "openCryptoki tests need root and the opencryptoki package (they do not skip): ock-up.sh failed: {text}"
            )
            .into());
        }
        let env = std::fs::read_to_string(work.join("env"))?;
        let value = |key: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(|v| v.trim_matches('"').to_owned())
                .ok_or_else(|| format!("{key} missing from ock-up.sh's env file"))
        };
        let module = PathBuf::from(value("OCK_MODULE")?);
        let labels = value("OCK_LABELS")?
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let pki = Pki::create(&dir.path().join("pki"))?;
        Ok(OckToken {
            pin_file: work.join("user.pin"),
            dir,
            module,
            labels,
            pki,
            _lock: lock,
        })
    }

    /// The scripts' work directory.
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("ock")
    }

    /// The user PIN (for pkcs11-tool; the daemon reads [`OckToken::pin_file`]).
    pub fn pin(&self) -> TestResult<String> {
        Ok(std::fs::read_to_string(&self.pin_file)?.trim().to_owned())
    }

    /// A daemon config for the first token, as [`super::Token::config`] makes one for SoftHSM:
    /// mutual TLS with the test PKI, the admin certificate allowed everything, `extra` appended
    /// after the `[pkcs11]` table.
    pub fn config(&self, extra: &str) -> String {
        self.config_for(&self.labels[0], extra)
    }

    /// As [`OckToken::config`], for the token labelled `label`.
    pub fn config_for(&self, label: &str, extra: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = [\"{}\"]\n\n[[caller]]\nidentity = \"{ADMIN_SPIFFE}\"\nkeys = [\"*\"]\noperations = [{}]\nadmin = true\n\n[pkcs11]\nmodule = \"{}\"\ntoken = \"pkcs11:token={label}\"\npin = {{ file = \"{}\" }}\nworkers = 2\n{extra}",
            self.pki.server_cert.display(),
            self.pki.server_key.display(),
            self.pki.ca_pem.display(),
            all_operations(),
            self.module.display(),
            self.pin_file.display()
        )
    }

    /// Write a config file into the test directory.
    pub fn write_config(&self, name: &str, text: &str) -> TestResult<PathBuf> {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    }

    /// Start `sigild serve` on `config`. ([`Daemon::start_config`] finds the test PKI next to
    /// the SoftHSM config path it is given; openCryptoki has none, so a path in this directory
    /// stands in, and the `SOFTHSM2_CONF` it sets is ignored by openCryptoki.)
    pub fn daemon_with_config(&self, config: &Path) -> TestResult<Daemon> {
        Daemon::start_config(&self.dir.path().join("softhsm2.conf"), config)
    }

    /// Start `sigild serve` on the first token with `extra` config.
    pub fn daemon(&self, extra: &str) -> TestResult<Daemon> {
        let config = self.write_config(
            &format!("sigild-{}.toml", super::unique()),
            &self.config(extra),
        )?;
        self.daemon_with_config(&config)
    }

    /// Stop pkcsslotd (tokens and config stay): the module's `C_Initialize` fails from now on.
    pub fn stop_slotd(&self) -> TestResult {
        self.script("ock-down.sh")
    }

    /// Start pkcsslotd again after [`OckToken::stop_slotd`].
    pub fn start_slotd(&self) -> TestResult {
        self.script("ock-up.sh")
    }

    fn script(&self, name: &str) -> TestResult {
        let log = self.dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let status = Command::new(root().join("scripts").join(name))
            .arg("--daemon")
            .arg(self.work())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()?;
        if !status.success() {
            return Err(format!(
                "{name} --daemon failed: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
            .into());
        }
        Ok(())
    }

    /// `sigild check-config` with `args` after `--config FILE`.
    pub fn check_config(&self, config: &Path, args: &[&str]) -> TestResult<Output> {
        Ok(Command::new(super::sigild_bin())
            .args(["check-config", "--config"])
            .arg(config)
            .args(args)
            .env("SIGILD_LOG", "warn")
            .output()?)
    }

    /// pkcs11-tool against the first token, logged in (the PIN from its file).
    pub fn pkcs11_tool(&self, args: &[&str]) -> TestResult<Output> {
        let pin = self.pin()?;
        Ok(Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", &self.labels[0], "--login", "--pin", &pin])
            .args(args)
            .output()?)
    }
}

impl Drop for OckToken {
    fn drop(&mut self) {
        // Daemons using the token are dropped first by the tests that own them; this stops
        // pkcsslotd, removes the token data and restores the config before the lock is released.
        let _ = Command::new(root().join("scripts/ock-down.sh"))
            .arg(self.work())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
