//! The `[pkcs11]` table: one PKCS#11 token, named by an RFC 7512 URI, as the alternative to
//! `[yubikey]`. Plain data; the composition root maps it onto the backend's own settings.
//!
//! ```toml
//! [pkcs11]
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token = "pkcs11:token=sigild"              # label and/or serial, never slot-id
//! pin = { file = "/etc/sigild/pin" }          # or { env = "SIGILD_PIN" }; never a literal
//! workers = 2
//! queue_depth = 1024
//! max_abandoned_workers = 2                   # workers left stuck in a hung call, replaced
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use crate::secret::SecretSource;
use crate::uri::Pkcs11Uri;

/// The PKCS#11 token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module.
    pub module: PathBuf,
    /// RFC 7512 URI selecting the token by label and/or serial, e.g. `pkcs11:token=sigild`.
    pub token: String,
    /// The user PIN: `{ file = "/path" }` or `{ env = "VAR" }`; never a literal.
    pub pin: SecretSource,
    /// Logged-in sessions, one per worker thread.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Requests waiting for a worker before callers get RESOURCE_EXHAUSTED.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Workers that may be left stuck inside the module at once: a worker still inside a call
    /// (a hung `C_Sign`) past its request's deadline plus a second is abandoned and replaced
    /// by a new worker with its own session, so one hung call does not cut capacity. Each
    /// abandoned worker keeps a thread and a session until the module returns. When every
    /// worker is stuck and this many are abandoned already, readiness reports NOT_SERVING.
    /// 0 never replaces a worker.
    #[serde(default = "default_max_abandoned_workers")]
    pub max_abandoned_workers: usize,
}

fn default_workers() -> usize {
    2
}
fn default_queue_depth() -> usize {
    1024
}
fn default_max_abandoned_workers() -> usize {
    2
}

impl Pkcs11Config {
    /// The token selector: a parsed URI that names a token (label or serial) and no object.
    ///
    /// # Errors
    /// What is wrong with `token`, for the operator.
    pub fn token_uri(&self) -> Result<Pkcs11Uri, String> {
        let uri: Pkcs11Uri = self.token.parse().map_err(|e| format!("{e}"))?;
        if uri.token.is_none() && uri.serial.is_none() {
            return Err(
                "name the token by label (token=) or serial (serial=); slot ids are not stable"
                    .into(),
            );
        }
        if uri.object.is_some() || uri.id.is_some() {
            return Err("the token URI must not name an object".into());
        }
        Ok(uri)
    }

    /// Check the values that parse but cannot be used.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the field.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        self.token_uri().map_err(|e| invalid("pkcs11.token", e))?;
        if self.workers == 0 || self.workers > 256 {
            return Err(invalid("pkcs11.workers", "must be 1..=256".into()));
        }
        if self.queue_depth == 0 {
            return Err(invalid("pkcs11.queue_depth", "must be at least 1".into()));
        }
        if self.max_abandoned_workers > 256 {
            return Err(invalid(
                "pkcs11.max_abandoned_workers",
                "must be 0..=256 (each keeps a thread and a session)".into(),
            ));
        }
        Ok(())
    }

    /// Checks outside the file: the module is a file and the PIN can be read. Each problem is
    /// `(field, message)`.
    pub fn check_environment(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !self.module.is_file() {
            out.push((
                "pkcs11.module",
                format!("{} is not a file", self.module.display()),
            ));
        }
        if let Err(e) = self.pin.read() {
            out.push(("pkcs11.pin", e.to_string()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table(extra: &str) -> Pkcs11Config {
        toml::from_str(&format!(
            "module = \"/m.so\"\ntoken = \"pkcs11:token=t\"\npin = {{ env = \"P\" }}\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn abandoned_workers_default_to_a_few_and_are_bounded() {
        let path = Path::new("sigild.toml");
        let c = table("");
        assert_eq!(c.max_abandoned_workers, 2);
        assert!(c.validate(path).is_ok());
        assert!(table("max_abandoned_workers = 0").validate(path).is_ok());
        let e = table("max_abandoned_workers = 1000")
            .validate(path)
            .unwrap_err();
        assert!(e.to_string().contains("max_abandoned_workers"), "{e}");
    }
}
