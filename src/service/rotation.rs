//! Rotation an OP can follow: signing with a named key version within its grace period, and
//! watching the key set.
//!
//! - A request may name the version it signs with ([`super::Origin::version`], or a generic
//!   JWS header's `kid`). The named version signs while it is active or stopped being active
//!   less than `keyring.grace_seconds` ago (the time is on the device, so every replica agrees);
//!   otherwise the request fails with FAILED_PRECONDITION naming the active kid. An OP that
//!   cached the previous kid keeps issuing tokens under a kid that verifies (the version stays
//!   published as `retired`) until it has re-read the key set.
//! - [`Service::watch_keys`] gives the watched keys (versions, states, kids, JWKS) at once and
//!   again whenever they change, so an OP re-publishes its JWKS and switches kids without
//!   polling. Authorized as `read` and audited once, when the watch starts.
//!
//! Depends on the keyring only; never on gRPC.

use std::sync::Arc;

use serde_json::Value;

use super::{Call, Error, Origin, Service};
use crate::jose::Alg;
use crate::keyring::{self, KeyInfo, Keyring, Pick, VersionInfo, Watch};
use crate::policy::Operation;

impl Service {
    /// The version `call` names for `key` (by number, else by its JWS header's `kid`, else the
    /// active one), with its own JWS alg, if it may sign now.
    pub(super) fn named_version(
        &self,
        call: &Call,
        key: &str,
    ) -> Result<(Arc<VersionInfo>, Alg), Error> {
        let pick = match (call.version, call.kid.as_deref()) {
            (0, None) => return Ok(self.keyring.signing(key)?),
            (0, Some(kid)) => Pick::Kid(kid),
            (n, _) => Pick::Version(n),
        };
        Ok(self.keyring.signing_version(key, pick, self.now())?)
    }

    /// Watch keys `names` (empty: every key): the returned [`KeyWatch`] yields the key set at
    /// once, then again at every change of it (made through this daemon, or through another
    /// replica on the same device, seen within the keyring's refresh period). Authorized as
    /// `read`; one audit record when the watch starts. The number of watches at once is
    /// bounded (`keyring.max_watchers`), and every watch ends at shutdown.
    ///
    /// # Errors
    /// NotFound for a name that is no key; ResourceExhausted when every watch slot is taken;
    /// Unavailable while the keyring was never loaded or the daemon is shutting down.
    pub async fn watch_keys(&self, origin: &Origin, names: &[String]) -> Result<KeyWatch, Error> {
        let shown = names.join(",");
        self.run(
            origin,
            Operation::Read,
            "read:watch",
            &shown,
            async |call| {
                self.authorize(call)?;
                // Subscribe before the first read, so no change falls between the two.
                let watch = self.keyring.watch()?;
                let mut w = KeyWatch {
                    keyring: Arc::clone(&self.keyring),
                    names: names.to_vec(),
                    watch,
                    last: None,
                    generation: 0,
                    first: None,
                };
                w.first = Some(w.current()?);
                Ok(w)
            },
        )
        .await
    }
}

/// The watched keys at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySet {
    /// The keys, each with its versions, states and kids.
    pub keys: Vec<KeyInfo>,
    /// Their JWKS (published versions), as `GetJwks` publishes it.
    pub jwks: Value,
    /// Grows by one at every key set this watch yields, from 1.
    pub generation: u64,
}

/// An open watch on some keys ([`Service::watch_keys`]).
pub struct KeyWatch {
    /// Where the keys are.
    keyring: Arc<Keyring>,
    /// The keys watched; empty: every key.
    names: Vec<String>,
    /// Wakes at keyring changes.
    watch: Watch,
    /// The keys last yielded, so a change to other keys yields nothing.
    last: Option<Vec<KeyInfo>>,
    /// Key sets yielded so far.
    generation: u64,
    /// The keys read when the watch started, yielded first.
    first: Option<Vec<KeyInfo>>,
}

impl std::fmt::Debug for KeyWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyWatch")
            .field("names", &self.names)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl KeyWatch {
    /// The next key set: the first at once, each later one when the watched keys changed.
    /// `None` once the watch is over (shutdown).
    ///
    /// # Errors
    /// Unavailable or NotFound if the keyring can no longer be read for these keys.
    pub async fn next(&mut self) -> Option<Result<KeySet, Error>> {
        loop {
            let keys = match self.first.take() {
                Some(k) => k,
                None => {
                    if !self.watch.changed().await {
                        return None;
                    }
                    match self.current() {
                        Ok(k) => k,
                        Err(e) => return Some(Err(e)),
                    }
                }
            };
            if self.last.as_ref() == Some(&keys) {
                continue;
            }
            let jwks = match keyring::jwks_of(&keys) {
                Ok(j) => j,
                Err(e) => return Some(Err(e.into())),
            };
            self.generation += 1;
            self.last = Some(keys.clone());
            return Some(Ok(KeySet {
                keys,
                jwks,
                generation: self.generation,
            }));
        }
    }

    /// The watched keys as the keyring holds them now.
    fn current(&self) -> Result<Vec<KeyInfo>, Error> {
        if self.names.is_empty() {
            return Ok(self.keyring.list()?);
        }
        Ok(self
            .names
            .iter()
            .map(|n| self.keyring.get(n))
            .collect::<Result<Vec<_>, _>>()?)
    }
}
