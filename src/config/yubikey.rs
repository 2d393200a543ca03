//! The `[yubikey]` table: one YubiKey, by serial, as the alternative to `[pkcs11]`. Plain data,
//! compiled in every server build (not only with the `yubikey` feature) so that a build without
//! the backend refuses the table with a clear message instead of "unknown field"; the
//! composition root maps it onto the backend's own settings.
//!
//! ```toml
//! [yubikey]
//! serial = 12345678
//! pin = { file = "/etc/sigild/yubikey.pin" }          # or { env = "SIGILD_YK_PIN" }
//! management_key = { file = "/etc/sigild/yubikey.mgm" } # hex; 3DES or AES, read from the card
//! slots = ["82", "83", "84"]                           # default: retired slots 82..95
//! pin_policy = "once"                                  # default | never | once | always
//! touch_policy = "never"                               # never | always | cached
//! queue_depth = 64
//! timeout_ms = 10000
//! ```

use std::path::Path;

use serde::Deserialize;

use super::ConfigError;
use crate::secret::{Secret, SecretSource};

/// The PIN policy given to keys sigild generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinPolicy {
    /// The slot's default (9a/9d/82–95: once, 9c: always, 9e: never).
    Default,
    /// No PIN needed to sign.
    Never,
    /// PIN verified once per card session.
    Once,
    /// PIN verified before every signature.
    Always,
}

/// The touch policy given to keys sigild generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TouchPolicy {
    /// No touch.
    Never,
    /// A touch for every signature (someone must be at the card).
    Always,
    /// A touch, then 15 s without.
    Cached,
}

/// The default slots: the 20 retired-key slots, which no PIV middleware uses for login or
/// e-mail, so sigild never takes a slot someone relies on.
pub fn default_slots() -> Vec<u8> {
    (0x82..=0x95).collect()
}

/// The YubiKey.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YubikeyConfig {
    /// Serial number (printed on the key, `ykman list --serials`); two keys may be present.
    pub serial: u32,
    /// The PIV PIN: `{ file = … }` or `{ env = … }`.
    pub pin: SecretSource,
    /// The PIV management key, hex: `{ file = … }` or `{ env = … }`.
    pub management_key: SecretSource,
    /// Slots sigild may generate keys in (hex), in order; default the retired slots 82–95.
    #[serde(default)]
    pub slots: Option<Vec<String>>,
    /// PIN policy of generated keys.
    #[serde(default = "default_pin_policy")]
    pub pin_policy: PinPolicy,
    /// Touch policy of generated keys.
    #[serde(default = "default_touch_policy")]
    pub touch_policy: TouchPolicy,
    /// Requests waiting for the card before callers get RESOURCE_EXHAUSTED (a YubiKey signs
    /// about 10 times a second, so a deep queue only adds latency).
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Deadline of one request (queueing, PIN, touch and signature), milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_pin_policy() -> PinPolicy {
    PinPolicy::Once
}
fn default_touch_policy() -> TouchPolicy {
    TouchPolicy::Never
}
fn default_queue_depth() -> usize {
    64
}
fn default_timeout_ms() -> u64 {
    10_000
}

impl YubikeyConfig {
    /// The slots sigild may generate keys in, parsed.
    ///
    /// # Errors
    /// A slot that is not a PIV key slot, or an empty list.
    pub fn slots(&self) -> Result<Vec<u8>, String> {
        let Some(list) = &self.slots else {
            return Ok(default_slots());
        };
        if list.is_empty() {
            return Err("list at least one slot".into());
        }
        list.iter()
            .map(|s| match u8::from_str_radix(s, 16) {
                Ok(v @ (0x9a | 0x9c | 0x9d | 0x9e | 0x82..=0x95)) => Ok(v),
                _ => Err(format!(
                    "{s:?} is not a PIV key slot (9a, 9c, 9d, 9e, 82..95)"
                )),
            })
            .collect()
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
        if !cfg!(feature = "yubikey") {
            return Err(invalid(
                "yubikey",
                "this sigild was built without the `yubikey` feature".into(),
            ));
        }
        self.slots().map_err(|e| invalid("yubikey.slots", e))?;
        if self.queue_depth == 0 {
            return Err(invalid("yubikey.queue_depth", "must be at least 1".into()));
        }
        if self.timeout_ms == 0 {
            return Err(invalid("yubikey.timeout_ms", "must be at least 1".into()));
        }
        Ok(())
    }

    /// The PIN and management key can be read, and the key is hex.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`].
    pub fn check_environment(&self, path: &Path) -> Result<(), ConfigError> {
        self.secrets(path).map(drop)
    }

    /// Read the PIN and the management key now and check their form.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when a secret cannot be read or is malformed.
    pub fn secrets(&self, path: &Path) -> Result<(Secret, Secret), ConfigError> {
        let invalid = |field, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        let pin = self
            .pin
            .read()
            .map_err(|e| invalid("yubikey.pin", e.to_string()))?;
        if !(6..=8).contains(&pin.expose().len()) {
            return Err(invalid(
                "yubikey.pin",
                "a PIV PIN has 6 to 8 characters".into(),
            ));
        }
        let management_key = self
            .management_key
            .read()
            .map_err(|e| invalid("yubikey.management_key", e.to_string()))?;
        let hex_ok = {
            let k = management_key.expose().trim();
            matches!(k.len(), 32 | 48 | 64) && k.bytes().all(|b| b.is_ascii_hexdigit())
        };
        if !hex_ok {
            return Err(invalid(
                "yubikey.management_key",
                "must be 32, 48 or 64 hex digits (AES-128, 3DES/AES-192, AES-256)".into(),
            ));
        }
        Ok((pin, management_key))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    const YK: &str = r#"
[server]
listen = "127.0.0.1:7711"
danger_plaintext = true

[yubikey]
serial = 12345678
pin = { env = "SIGILD_YK_PIN" }
management_key = { env = "SIGILD_YK_MGM" }
slots = ["82", "9a"]
touch_policy = "cached"
"#;

    #[test]
    fn yubikey_table_parses_and_is_exclusive() -> Result<(), Box<dyn std::error::Error>> {
        let c = Config::parse(Path::new("x"), YK)?;
        let yk = c.yubikey.as_ref().ok_or("no yubikey table")?;
        assert_eq!(yk.slots()?, vec![0x82, 0x9a]);
        assert!(c.pkcs11.is_none());
        let both = format!(
            "{YK}\n[pkcs11]\nmodule = \"/x.so\"\ntoken = \"pkcs11:token=t\"\npin = {{ env = \"P\" }}\n"
        );
        let err = Config::parse(Path::new("x"), &both)
            .map(drop)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("exactly one"), "{err}");
        let bad = YK.replace("\"9a\"", "\"9b\"");
        assert!(Config::parse(Path::new("x"), &bad).is_err());
        Ok(())
    }
}
