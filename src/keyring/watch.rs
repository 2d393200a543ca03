//! Change notification for the keyring: what `WatchKeys` streams wait on.
//!
//! The keyring bumps a counter whenever a load finds the keyring different from what it held
//! (a change made through this process, or one another replica made, seen by the periodic
//! refresh), and each [`Watch`] wakes at a bump. The number of watches open at once is bounded,
//! and a shutdown closes them all, so no stream keeps a draining daemon alive.
//!
//! Owns only tokio's `watch` channel and a semaphore; knows nothing of what changed (a watcher
//! reads the keyring again and decides whether its keys changed).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::KeyringError;

/// What a watcher sees: how many changes so far, and whether watching is over.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// Changes so far.
    changes: u64,
    /// Set at shutdown.
    closed: bool,
}

/// The keyring's side: announces changes and hands out bounded watches.
pub(super) struct Changes {
    /// Announces [`Seen`] to every watch.
    tx: watch::Sender<Seen>,
    /// One permit per open watch.
    slots: Arc<Semaphore>,
    /// The bound, for the refusal message.
    limit: usize,
}

impl Changes {
    /// No watches yet, at most `limit` at once.
    pub(super) fn new(limit: usize) -> Self {
        Changes {
            tx: watch::channel(Seen::default()).0,
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// The keyring changed.
    pub(super) fn changed(&self) {
        self.tx.send_modify(|s| s.changes += 1);
    }

    /// Shutdown: end every watch, refuse new ones.
    pub(super) fn close(&self) {
        self.tx.send_modify(|s| s.closed = true);
    }

    /// A new watch, which wakes at changes after this call.
    pub(super) fn subscribe(&self) -> Result<Watch, KeyringError> {
        if self.tx.borrow().closed {
            return Err(KeyringError::WatchesClosed);
        }
        let slot = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| KeyringError::TooManyWatchers(self.limit))?;
        Ok(Watch {
            rx: self.tx.subscribe(),
            _slot: slot,
        })
    }
}

/// One open watch on the keyring; its slot is given back when it is dropped.
pub struct Watch {
    /// The keyring's announcements.
    rx: watch::Receiver<Seen>,
    /// Held while open, so the number of watches stays bounded.
    _slot: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    /// Wait until the keyring changes after the last call (or after the watch was made).
    /// `false` once watching is over (shutdown): the watcher should end.
    pub async fn changed(&mut self) -> bool {
        // `borrow`, not `borrow_and_update`: a change not yet seen must still wake the wait.
        if self.rx.borrow().closed {
            return false;
        }
        // An error means the keyring is gone, which ends watching too.
        self.rx.changed().await.is_ok() && !self.rx.borrow_and_update().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watches_wake_at_changes_are_bounded_and_end_at_close() -> Result<(), KeyringError> {
        let changes = Changes::new(2);
        let mut a = changes.subscribe()?;
        let _b = changes.subscribe()?;
        assert!(matches!(
            changes.subscribe(),
            Err(KeyringError::TooManyWatchers(2))
        ));
        changes.changed();
        assert!(a.changed().await);
        drop(_b);
        let mut c = changes.subscribe()?;
        changes.close();
        assert!(!a.changed().await);
        assert!(!c.changed().await);
        assert!(matches!(
            changes.subscribe(),
            Err(KeyringError::WatchesClosed)
        ));
        Ok(())
    }
}
