//! Secrets (PINs, management keys, imported key material): where they may come from and how they
//! are held. They are read from a file or an environment variable, never from argv; held in
//! zeroizing buffers; redacted in `Debug`; never `Display`ed.
//!
//! Depends on nothing else in the crate, so every layer can hold a secret without leaking it.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use zeroize::{Zeroize, Zeroizing};

/// Where a secret is read from. Deliberately has no variant for a literal value: a PIN written
/// into a config file or a command line ends up in shell history, `ps` output and backups.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub enum SecretSource {
    /// A file holding the secret (a trailing newline is stripped). Must not be readable by
    /// group or others.
    #[serde(rename = "file")]
    File(PathBuf),
    /// An environment variable holding the secret.
    #[serde(rename = "env")]
    Env(String),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The location is not secret; the value never passes through here.
        match self {
            SecretSource::File(p) => write!(f, "file:{}", p.display()),
            SecretSource::Env(v) => write!(f, "env:{v}"),
        }
    }
}

/// Why a secret could not be read. Messages name the location, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is readable by group or others.
    #[error("secret file {path} is readable by group or others (mode {mode:o}); chmod 600 it")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The environment variable is unset or not UTF-8.
    #[error("environment variable {0} is not set (or not UTF-8)")]
    EnvMissing(String),
    /// The secret is empty.
    #[error("secret from {0} is empty")]
    Empty(String),
}

impl SecretSource {
    /// Read the secret.
    ///
    /// # Errors
    /// [`SecretError`] when the source is missing, unreadable, too permissive or empty.
    pub fn read(&self) -> Result<Secret, SecretError> {
        let value = match self {
            SecretSource::File(path) => read_secret_file(path)?,
            SecretSource::Env(var) => Zeroizing::new(
                std::env::var(var).map_err(|_| SecretError::EnvMissing(var.clone()))?,
            ),
        };
        let trimmed = value.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            return Err(SecretError::Empty(format!("{self:?}")));
        }
        Ok(Secret(SecretString::from(trimmed.to_owned())))
    }
}

fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, SecretError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |source| SecretError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    let mut bytes = std::fs::read(path).map_err(err)?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(s) => Zeroizing::new(s.to_owned()),
        Err(_) => {
            bytes.zeroize();
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not UTF-8",
            )));
        }
    };
    bytes.zeroize();
    Ok(text)
}

/// A secret string (PIN, passphrase). Zeroized on drop, `Debug` prints `Secret(***)`, no
/// `Display`, no `Clone` to multiply copies silently.
pub struct Secret(SecretString);

impl Secret {
    /// Wrap a value that is already in memory (e.g. a freshly generated dev PIN).
    pub fn new(value: String) -> Self {
        Secret(SecretString::from(value))
    }

    /// Borrow the value for the one call that needs it (a PKCS#11 login).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Bytes that must not outlive their use (imported private key material, a PKCS#8 file).
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Take ownership of `bytes`; they are zeroized when this is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(bytes))
    }

    /// Borrow the bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes, ***)", self.0.len())
    }
}

/// Write a secret to a new file readable only by its owner (mode 0600, created exclusively so
/// an existing file is never silently replaced).
///
/// # Errors
/// The I/O error, e.g. when the file already exists.
pub fn write_secret_file(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(value.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("123456".into());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let b = SecretBytes::new(b"private".to_vec());
        assert!(!format!("{b:?}").contains("private"));
    }

    #[test]
    fn file_must_be_private_and_newline_is_stripped() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("pin");
        write_secret_file(&path, "98765")?;
        let src = SecretSource::File(path.clone());
        assert_eq!(src.read()?.expose(), "98765");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        let err = src.read().err().ok_or("world-readable PIN file accepted")?;
        assert!(err.to_string().contains("readable by group or others"));
        assert!(!err.to_string().contains("98765"));
        Ok(())
    }

    #[test]
    fn missing_env_names_the_variable() {
        let err = SecretSource::Env("SIGILD_TEST_SURELY_UNSET".into()).read();
        assert!(matches!(err, Err(SecretError::EnvMissing(v)) if v == "SIGILD_TEST_SURELY_UNSET"));
    }
}
