//! Where a running `sigild dev` can be found: a small file in the user's runtime directory that
//! names the dev state directory and endpoint, so the client commands of the same user work from
//! any directory with no flags or environment variables.
//!
//! `$XDG_RUNTIME_DIR/sigild/dev.json` (per login session, private to the user), else
//! `$HOME/.cache/sigild/dev.json`. Written when the dev daemon is ready, removed when it exits
//! (only if it still names that daemon: a newer one may have replaced it).

use std::path::{Path, PathBuf};

/// What the pointer file holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DevPointer {
    /// The dev state directory (holding the dev PKI and the Unix socket).
    pub dir: PathBuf,
    /// The mTLS endpoint, `https://127.0.0.1:7711` by default.
    pub endpoint: String,
    /// The daemon's process id, so a stale pointer can be recognised.
    pub pid: u32,
}

/// The pointer file's path for this user, if a home or runtime directory is known.
pub fn path() -> Option<PathBuf> {
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(run).join("sigild").join("dev.json"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|home| PathBuf::from(home).join(".cache/sigild/dev.json"))
}

/// Record the running dev daemon.
///
/// # Errors
/// File-system errors, as text for the log (the daemon runs on without a pointer).
pub fn write(pointer: &DevPointer) -> Result<PathBuf, String> {
    use std::os::unix::fs::DirBuilderExt as _;
    let path = path().ok_or("neither XDG_RUNTIME_DIR nor HOME is set")?;
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let json = serde_json::to_vec(pointer).map_err(|e| e.to_string())?;
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    std::fs::write(&tmp, json).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// The recorded dev daemon, when the pointer exists, parses and its state directory is there.
pub fn read() -> Option<DevPointer> {
    let text = std::fs::read(path()?).ok()?;
    let p: DevPointer = serde_json::from_slice(&text).ok()?;
    p.dir.is_dir().then_some(p)
}

/// Remove the pointer if it still names the daemon in `dir`.
pub fn remove(dir: &Path) {
    if let (Some(path), Some(p)) = (path(), read())
        && p.dir == dir
        && p.pid == std::process::id()
    {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_shape() -> Result<(), serde_json::Error> {
        let p = DevPointer {
            dir: PathBuf::from("/tmp/x"),
            endpoint: "https://127.0.0.1:7711".into(),
            pid: 7,
        };
        let back: DevPointer = serde_json::from_slice(&serde_json::to_vec(&p)?)?;
        assert_eq!(back, p);
        Ok(())
    }
}
