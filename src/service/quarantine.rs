//! Quarantine of a signing device that keeps producing signatures that do not verify.
//!
//! Owns the streak of requests whose signature failed verification even on the retry (with
//! their request ids, for the one log line that announces the quarantine), the quarantined
//! state, and when the next probe is due. While quarantined the service refuses to sign at
//! once; the readiness upkeep reports NOT_SERVING and asks for probe signatures, and the first
//! probe that verifies lifts the quarantine. Never touches the device, the keyring or JOSE
//! itself: the service signs and verifies, and tells this module what happened.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The quarantine state of one signing device.
#[derive(Debug)]
pub struct Quarantine {
    /// Failed requests in a row that quarantine the device (0: never).
    after: u32,
    /// Time between two probe signatures while quarantined.
    probe_every: Duration,
    /// The streak and the quarantine.
    state: Mutex<State>,
    /// Woken when the device enters or leaves quarantine (readiness follows at once).
    changed: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Request ids of the current streak of failed requests, oldest first.
    streak: Vec<String>,
    /// Since when the device is quarantined.
    since: Option<Instant>,
    /// When the last probe was started.
    last_probe: Option<Instant>,
}

impl Quarantine {
    /// Quarantine after `after` requests in a row whose signatures did not verify (0: never),
    /// probing every `probe_every` while quarantined.
    pub fn new(after: u32, probe_every: Duration) -> Self {
        Quarantine {
            after,
            probe_every,
            state: Mutex::new(State::default()),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Since when the device is quarantined, or `None` when it may sign.
    pub fn since(&self) -> Option<Instant> {
        self.lock().since
    }

    /// The time between two probes.
    pub fn probe_interval(&self) -> Duration {
        self.probe_every
    }

    /// A request's signature verified: the streak is broken. (While quarantined only a probe
    /// lifts the quarantine: a request that started before it may still have been lucky.)
    pub fn verified(&self) {
        let mut s = self.lock();
        if s.since.is_none() {
            s.streak.clear();
        }
    }

    /// Request `request_id` got signatures that did not verify, first and on the retry.
    /// Returns true when this request put the device into quarantine (logged here, once, with
    /// the request ids of the streak).
    pub fn failed(&self, request_id: &str) -> bool {
        let mut s = self.lock();
        if self.after == 0 || s.since.is_some() {
            return false;
        }
        s.streak.push(request_id.to_owned());
        if s.streak.len() < self.after as usize {
            return false;
        }
        s.since = Some(Instant::now());
        s.last_probe = None;
        tracing::error!(
            requests = %s.streak.join(","),
            after = self.after,
            probe_ms = self.probe_every.as_millis(),
            "signing device quarantined: {} requests in a row got signatures that do not verify, \
             also on a fresh session; signing is refused until a probe signature verifies",
            s.streak.len()
        );
        s.streak.clear();
        drop(s);
        self.changed.notify_one();
        true
    }

    /// Whether a probe signature should be made now (quarantined, and the last probe at least
    /// one interval ago); when so, the probe counts as started.
    pub fn probe_due(&self) -> bool {
        let mut s = self.lock();
        let now = Instant::now();
        let due = s.since.is_some()
            && s.last_probe
                .is_none_or(|t| now.duration_since(t) >= self.probe_every);
        if due {
            s.last_probe = Some(now);
        }
        due
    }

    /// A probe signature verified: the device signs again.
    pub fn lift(&self) {
        let mut s = self.lock();
        if let Some(since) = s.since.take() {
            s.streak.clear();
            tracing::info!(
                quarantined_ms = since.elapsed().as_millis(),
                "signing device out of quarantine: a probe signature verified"
            );
            drop(s);
            self.changed.notify_one();
        }
    }

    /// Resolves when the device entered or left quarantine since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::backend::memory::MemoryBackend;
    use crate::keyring::Keyring;
    use crate::service::{Error, Origin, Service, ServiceOptions, SystemClock};

    #[test]
    fn a_streak_quarantines_and_a_verified_signature_breaks_it() {
        let q = Quarantine::new(3, Duration::from_secs(60));
        assert!(!q.failed("a"));
        assert!(!q.failed("b"));
        q.verified();
        assert!(!q.failed("c"));
        assert!(!q.failed("d"));
        assert!(q.since().is_none());
        assert!(q.failed("e"));
        assert!(q.since().is_some());
        // Already quarantined: neither more failures nor a lucky request change that.
        assert!(!q.failed("f"));
        q.verified();
        assert!(q.since().is_some());
        // The first probe is due at once, the next only after the interval.
        assert!(q.probe_due());
        assert!(!q.probe_due());
        q.lift();
        assert!(q.since().is_none());
        assert!(!q.probe_due());
    }

    #[test]
    fn zero_means_never() {
        let q = Quarantine::new(0, Duration::from_secs(1));
        for i in 0..100 {
            assert!(!q.failed(&i.to_string()));
        }
        assert!(q.since().is_none());
    }

    /// A service over the in-memory device with an Ed25519 key `k` (and an ES256 key `a`, first
    /// by name, that the in-memory device cannot sign with: a probe passes it over).
    async fn service(after: u32, probe: Duration) -> (Service, MemoryBackend) {
        let backend = MemoryBackend::new();
        let keyring = Arc::new(Keyring::new(Arc::new(backend.clone())));
        keyring.refresh().await.unwrap();
        let options = ServiceOptions {
            quarantine_after: after,
            quarantine_probe: probe,
            ..ServiceOptions::default()
        };
        let service = Service::new(keyring, Arc::new(SystemClock), options);
        for (name, alg) in [("a", "ES256"), ("k", "EdDSA")] {
            service
                .create_key(
                    &Origin::in_process(),
                    name,
                    alg,
                    Default::default(),
                    false,
                    &[],
                )
                .await
                .unwrap();
        }
        (service, backend)
    }

    async fn sign(service: &Service) -> Result<Vec<u8>, Error> {
        service
            .sign_raw(&Origin::in_process(), "k", b"message", None)
            .await
            .map(|r| r.signature)
    }

    #[tokio::test]
    async fn a_bad_signature_is_retried_afresh_and_the_caller_sees_success() {
        let (service, backend) = service(3, Duration::from_secs(60)).await;
        backend.corrupt_signatures(1).unwrap();
        let sig = sign(&service).await.unwrap();
        let v = service.keyring().active("k").unwrap();
        let alg = v.alg.sign_alg().unwrap();
        assert!(crate::jose::verify(&v.public, alg, b"message", &sig));
        let counts = backend.sign_counts().unwrap();
        assert_eq!((counts.signs, counts.fresh), (1, 1));
        // A good first signature needs no retry.
        sign(&service).await.unwrap();
        assert_eq!(backend.sign_counts().unwrap().fresh, 1);
    }

    #[tokio::test]
    async fn a_device_that_keeps_failing_is_quarantined_until_a_probe_verifies() {
        let (service, backend) = service(2, Duration::from_millis(1)).await;
        backend.corrupt_signatures(usize::MAX).unwrap();
        for _ in 0..2 {
            let e = sign(&service).await.unwrap_err();
            assert!(matches!(e, Error::BadSignature { .. }), "{e:?}");
        }
        assert!(service.quarantine().since().is_some());
        // Refused at once, without asking the device.
        let before = backend.sign_counts().unwrap();
        let e = sign(&service).await.unwrap_err();
        assert!(matches!(e, Error::Quarantined), "{e:?}");
        assert_eq!(e.kind(), crate::service::ErrorKind::Unavailable);
        assert!(e.message().contains("quarantined"), "{}", e.message());
        assert_eq!(backend.sign_counts().unwrap(), before);
        // A probe while the device still fails keeps the quarantine.
        assert!(!service.probe_quarantine().await);
        assert!(service.quarantine().since().is_some());
        // Fixed: the next probe lifts it and signing works again.
        backend.corrupt_signatures(0).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(service.probe_quarantine().await);
        assert!(service.quarantine().since().is_none());
        sign(&service).await.unwrap();
    }
}
