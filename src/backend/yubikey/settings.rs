//! Typed settings of the YubiKey PIV backend, owned by the backend; the composition root builds
//! them from the `[yubikey]` config table.

use std::time::Duration;

use crate::secret::Secret;

/// The PIN policy given to keys sigild generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinPolicySetting {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TouchPolicySetting {
    /// No touch.
    Never,
    /// A touch for every signature (someone must be at the card).
    Always,
    /// A touch, then 15 s without.
    Cached,
}

/// Typed settings for one card. Built by the composition root from the config file.
#[derive(Debug)]
pub struct YubikeySettings {
    /// Serial number of the card (two cards may be present).
    pub serial: u32,
    /// The PIV PIN.
    pub pin: Secret,
    /// The management key, hex (3DES or AES; the algorithm is read from the card).
    pub management_key: Secret,
    /// Slots sigild may generate keys in, in order of preference.
    pub slots: Vec<u8>,
    /// PIN policy of generated keys.
    pub pin_policy: PinPolicySetting,
    /// Touch policy of generated keys.
    pub touch_policy: TouchPolicySetting,
    /// Requests that may wait for the card before callers get
    /// [`BackendError::Busy`](crate::backend::BackendError::Busy).
    pub queue_depth: usize,
    /// How long a request may take, queueing included.
    pub timeout: Duration,
}
