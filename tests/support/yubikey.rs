//! Integration-test support for the YubiKey backend: a private pcscd + the virtual YubiKey
//! (`scripts/vyk-up.sh` in a temporary directory), "removal" and "reinsertion" of the card
//! (stop and restart the emulator on the same state file), and `[yubikey]` daemon configs.
//!
//! Only one pcscd can run per machine, so every test that uses a [`VirtualCard`] takes
//! [`serial_guard`] first. Without root or pcscd, [`VirtualCard::start`] fails loudly: the tests
//! fail, they never pass silently.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::TestResult;

pub const SERIAL: u32 = 12_345_678;
pub const PIN: &str = "123456";
pub const DEFAULT_MGM: &str = "010203040506070801020304050607080102030405060708";

/// Serialises the tests that need pcscd (one per machine).
pub async fn serial_guard() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn emulator_bin() -> PathBuf {
    root().join("tests/virtual-yubikey/target/release/virtual-yubikey")
}

/// pcscd + the virtual card, stopped on drop.
pub struct VirtualCard {
    pub dir: tempfile::TempDir,
    pub version: String,
    pub pin_file: PathBuf,
    pub mgm_file: PathBuf,
    /// Emulator options given at start (firmware, serial, state).
    args: Vec<String>,
    /// Further options given at start (touch …), replaceable on reinsertion.
    extra: Vec<String>,
}

impl VirtualCard {
    /// Start pcscd and a card with firmware `version`; `extra` are further emulator options
    /// (e.g. `--touch timeout`).
    pub fn start(version: &str, extra: &[&str]) -> TestResult<VirtualCard> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir()?;
        let w = dir.path().join("vyk");
        let args: Vec<String> = vec![
            "--version".into(),
            version.into(),
            "--serial".into(),
            SERIAL.to_string(),
            "--state".into(),
            w.join("state.json").display().to_string(),
        ];
        // Output to a file, not a pipe: pcscd and the emulator inherit it and outlive the script.
        let up_log = dir.path().join("vyk-up.log");
        let log = std::fs::File::create(&up_log)?;
        let status = Command::new(root().join("scripts/vyk-up.sh"))
            .arg(&w)
            .args(&args)
            .args(extra)
            .arg("--export-attestation-root")
            .arg(w.join("root.pem"))
            .env("VYK_LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()?;
        if !status.success() {
            return Err(format!(
                "YubiKey tests need root, pcscd and vsmartcard-vpcd (they do not skip): vyk-up.sh failed: {}",
                std::fs::read_to_string(&up_log).unwrap_or_default()
            )
            .into());
        }
        let pin_file = dir.path().join("pin");
        let mgm_file = dir.path().join("mgm");
        for (f, v) in [(&pin_file, PIN), (&mgm_file, DEFAULT_MGM)] {
            std::fs::write(f, format!("{v}\n"))?;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(VirtualCard {
            dir,
            version: version.into(),
            pin_file,
            mgm_file,
            args,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        })
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("vyk")
    }

    /// The emulator's exported attestation root (PEM).
    pub fn attestation_root(&self) -> PathBuf {
        self.work().join("root.pem")
    }

    /// "Pull the card": stop the emulator (pcscd sees the reader empty).
    pub fn remove(&self) -> TestResult {
        let pid = std::fs::read_to_string(self.work().join("vyk.pid"))?;
        let pid = pid.trim();
        Command::new("kill").arg(pid).status()?;
        for _ in 0..50 {
            if !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Let pcscd's presence poll (~0.4 s) notice.
        std::thread::sleep(Duration::from_millis(800));
        Ok(())
    }

    /// "Insert the card" again: restart the emulator on the same state, with `extra` options
    /// instead of those given at start when `Some` (e.g. another `--touch`).
    pub fn insert(&self, extra: Option<&[&str]>) -> TestResult {
        let extra: Vec<String> = match extra {
            Some(e) => e.iter().map(|s| s.to_string()).collect(),
            None => self.extra.clone(),
        };
        let w = self.work();
        let child = Command::new(emulator_bin())
            .args(["--port", "35963", "--log-level", "info", "--log"])
            .arg(w.join("vyk.log"))
            .args(&self.args)
            .args(&extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::fs::write(w.join("vyk.pid"), child.id().to_string())?;
        // Wait until pcscd reports the card present.
        for _ in 0..100 {
            let out = Command::new("opensc-tool").arg("-l").output()?;
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.contains("Yes") && l.contains("Yubico YubiKey"))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("re-inserted virtual card not present after 10 s".into())
    }

    /// A `[yubikey]` daemon config; `extra` lines go into the table.
    pub fn config(&self, extra: &str) -> String {
        format!(
            // Loopback plaintext with an allow-all rule: these tests are about the card, and
            // caller authentication has its own tests (tests/auth.rs).
            "[server]\nlisten = \"127.0.0.1:0\"\ndanger_plaintext = true\n\n[[caller]]\ndanger_plaintext = true\nkeys = [\"*\"]\noperations = [{}]\nadmin = true\n\n[yubikey]\nserial = {SERIAL}\npin = {{ file = \"{}\" }}\nmanagement_key = {{ file = \"{}\" }}\n{extra}\n",
            super::all_operations(),
            self.pin_file.display(),
            self.mgm_file.display()
        )
    }

    pub fn write_config(&self, text: &str) -> TestResult<PathBuf> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = self
            .dir
            .path()
            .join(format!("sigild-{}.toml", N.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&p, text)?;
        Ok(p)
    }

    /// `sigild serve` on `config`, returned once it reports SERVING. A daemon that starts while
    /// the card is still held or being reset for a daemon that just exited answers UNAVAILABLE
    /// until its next device check finds the card; a client waits for readiness, and so do
    /// these tests.
    pub async fn daemon(&self, config: &Path) -> TestResult<super::Daemon> {
        let d = super::Daemon::start_config(&self.work(), config)?;
        super::wait_health(
            &d,
            "",
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            Duration::from_secs(30),
        )
        .await?;
        Ok(d)
    }

    /// Run yubico-piv-tool against the card.
    pub fn piv_tool(&self, args: &[&str]) -> TestResult<std::process::Output> {
        Ok(Command::new("yubico-piv-tool").args(args).output()?)
    }
}

impl Drop for VirtualCard {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/vyk-down.sh"))
            .arg(self.work())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
