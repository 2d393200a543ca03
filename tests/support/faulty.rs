//! The fault-injecting PKCS#11 module (`tests/faulty-pkcs11/faulty.c`) for tests: [`module`]
//! builds it once per target directory (under a file lock, so parallel test processes do not
//! race) and [`Faults`] drives one instance through its control file and reads what it injected.
//!
//! The module wraps the real one (`SIGILD_FAULTY_TARGET`, SoftHSM by default) and reads its
//! control file (`SIGILD_FAULTY_CONTROL`) whenever the file changes; the keys are listed at the
//! top of `faulty.c`. Its stats belong to the last process that loaded it and injected
//! something (a daemon restarted on the same control file starts counting again).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{SOFTHSM_MODULE, TestResult, Token};

/// The source of the module.
const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/faulty-pkcs11/faulty.c");

/// Path of the built module (`<target>/faulty-pkcs11/libsigild_faulty.so`), compiled on first
/// use and again whenever the source is newer than the library.
pub fn module() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            build()
                .map_err(|e| e.to_string())
                .expect("cannot build the faulty module")
        })
        .clone()
}

/// The target directory of this test binary (`…/target`, from `…/target/debug/deps/NAME`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .nth(3)
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")))
}

fn build() -> TestResult<PathBuf> {
    let dir = target_dir().join("faulty-pkcs11");
    std::fs::create_dir_all(&dir)?;
    let lib = dir.join("libsigild_faulty.so");
    let lock = std::fs::File::create(dir.join("build.lock"))?;
    lock.lock()?;
    let fresh = match (std::fs::metadata(&lib), std::fs::metadata(SOURCE)) {
        (Ok(l), Ok(s)) => l.modified()? >= s.modified()?,
        _ => false,
    };
    if !fresh {
        let tmp = dir.join(format!("libsigild_faulty.so.{}.tmp", std::process::id()));
        let out = Command::new("cc")
            .args([
                "-shared",
                "-fPIC",
                "-O1",
                "-Wall",
                "-Werror",
                "-I/usr/include/p11-kit-1",
                SOURCE,
                "-o",
            ])
            .arg(&tmp)
            .arg("-ldl")
            .output()?;
        if !out.status.success() {
            return Err(format!("cc {SOURCE}: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        std::fs::rename(&tmp, &lib)?;
    }
    lock.unlock()?;
    Ok(lib)
}

/// One instance of the module, driven through its control file.
#[derive(Debug, Clone)]
pub struct Faults {
    /// The control file.
    pub control: PathBuf,
    /// The real module it wraps.
    pub target: PathBuf,
}

impl Faults {
    /// A control file `faulty.control` in `dir`, empty (no faults), wrapping SoftHSM.
    pub fn new(dir: &Path) -> Faults {
        let f = Faults {
            control: dir.join("faulty.control"),
            target: PathBuf::from(SOFTHSM_MODULE),
        };
        f.set("");
        f
    }

    /// The environment the process that loads the module needs.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "SIGILD_FAULTY_TARGET".into(),
                self.target.display().to_string(),
            ),
            (
                "SIGILD_FAULTY_CONTROL".into(),
                self.control.display().to_string(),
            ),
        ]
    }

    /// Replace the control file with `text` (`key=value` lines; "" clears every fault). Written
    /// to a new file renamed over the old one, so the module never reads half of it.
    pub fn set(&self, text: &str) {
        let tmp = self.control.with_extension(format!(
            "{}.{}.tmp",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.control).unwrap();
    }

    /// The stats file the module writes.
    pub fn stats_path(&self) -> PathBuf {
        let mut p = self.control.clone().into_os_string();
        p.push(".stats");
        PathBuf::from(p)
    }

    /// What the module has counted so far (all zero before it counted anything).
    pub fn stats(&self) -> Stats {
        let text = std::fs::read_to_string(self.stats_path()).unwrap_or_default();
        Stats(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .filter_map(|(k, v)| Some((k.trim().to_owned(), v.trim().parse().ok()?)))
                .collect(),
        )
    }

    /// `token.config(extra)` with the module replaced by the fault-injecting one.
    pub fn config(&self, token: &Token, extra: &str) -> String {
        let text = token.config(extra);
        let module = module();
        text.replace(
            &format!("module = \"{SOFTHSM_MODULE}\""),
            &format!("module = \"{}\"", module.display()),
        )
    }
}

/// Counters read from the stats file: `sign_calls` (data-producing `C_Sign` calls),
/// `sign_inits`, `corrupted`, `other_key`, `sign_errors`, `delayed`, `hung`, `sessions_dropped`
/// (drop generations applied), `sessions_invalidated`, `token_removals`, `absent_refusals`,
/// `invalid_handle_calls`, `control_reads`, `logins` (successful `C_Login` calls).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats(pub BTreeMap<String, u64>);

impl Stats {
    /// One counter (0 when absent).
    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .filter(|(_, v)| **v != 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        f.write_str(&parts.join(" "))
    }
}
