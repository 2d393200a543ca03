//! The YubiKey PIV backend (crate `yubikey`): one card, selected by serial, owned by one worker
//! thread (PC/SC access is exclusive and the crate needs `&mut`), behind the bounded queue of
//! [`super::worker`] with a per-request deadline.
//!
//! Owns: opening the card by serial and reopening it after a reset or removal (then the PIN is
//! verified again and the operation retried once), PIN verification as each slot's PIN policy
//! needs (a rejected PIN is never retried: retries lock the card), management-key
//! authentication for generation and writes, host-side PKCS#1 v1.5 / PSS encoding (the card does
//! raw RSA), DER → `r‖s` for ECDSA, decryption (raw RSA on the card then OAEP decoding on the
//! host, ECDH on the card; every input-caused failure one error), slot allocation by key
//! purpose (decryption keys only in the key-management slots 9d and 82–95), attestation, and
//! sigild's store on the card ([`store`]: the keyring's records and the slot table). Never
//! touches JOSE (the JWE's key derivation and content decryption are the caller's), policy,
//! gRPC or config files.
//!
//! Keys are addressed as `yubikey:serial=N;slot=9a`. The [`KeyId`] is the slot byte followed by
//! a 4-byte generation tag kept in the slot table, so that a slot reused after a destroy never
//! answers for the destroyed version.

mod encode;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use yubikey::piv::{self, AlgorithmId, ManagementSlotId, SlotAlgorithmId, SlotId};
use yubikey::{MgmAlgorithmId, MgmKey, PinPolicy, Serial, TouchPolicy, YubiKey};
use zeroize::Zeroizing;

use super::worker::{Device, Failure, Fault, Pool, PoolSettings, Retry};
mod settings;
use super::{
    Backend, BackendError, BackendFuture, KeyId, KeyObject, KeySpec, PrivateKeyMaterial, Record,
    StoredKeyPair,
};
use crate::crypto::{Curve, DecryptOp, KeyKind, KeyPurpose, SignOp};
use crate::secret::SecretBytes;
use encode::CardKey;
pub use settings::{PinPolicySetting, TouchPolicySetting, YubikeySettings};

/// A YubiKey behind its worker thread.
pub struct YubikeyBackend {
    /// The one worker, owning the card, behind the bounded queue.
    pool: Pool<Card>,
    /// The longest a request may take, queueing included (a caller's own deadline may be
    /// sooner, and then counts).
    timeout: Duration,
    /// The card's serial, for URIs and logs.
    serial: u32,
    /// Slot → touch policy is not `never`, learnt by the worker: a request on such a key that
    /// misses its deadline is waiting for a touch, which callers are told.
    touch_slots: Arc<Mutex<HashMap<u8, bool>>>,
}

/// Why a card operation failed: a crate error (classified for reconnects) or an already mapped
/// one.
type Fail = Failure<yubikey::Error>;

impl From<yubikey::Error> for Fail {
    fn from(e: yubikey::Error) -> Self {
        Failure::Device(e)
    }
}

/// The worker's state: the open card (if any) and what has been done on it since it was opened.
struct Card {
    /// Settings (PIN, management key, slots, policies).
    settings: YubikeySettings,
    /// The open card; `None` until first use or after a fault.
    yk: Option<YubiKey>,
    /// PIN verified on this connection (PIN-once keys need it once per connection).
    pin_verified: bool,
    /// Set once the card refused the PIN: verifying again would only burn retries.
    pin_rejected: bool,
    /// Slot policies read from the card's metadata, cleared when the slot changes.
    policies: HashMap<u8, (PinPolicy, TouchPolicy)>,
    /// Shared with the backend for deadline messages.
    touch_slots: Arc<Mutex<HashMap<u8, bool>>>,
    /// Slot → generation tag of the sigild key in it, from the last read of the store. A
    /// [`KeyId`] is slot ‖ tag, so a destroyed version never resolves to a later key that
    /// reuses its slot.
    tags: HashMap<u8, [u8; 4]>,
}

impl YubikeyBackend {
    /// Start the worker and, when the card is present, open it and verify the PIN once so a bad
    /// PIN is reported at start-up rather than on the first request.
    ///
    /// # Errors
    /// [`BackendError::PinRejected`] / [`BackendError::PinLocked`] when the card refuses the PIN;
    /// [`BackendError::Unavailable`] when the worker cannot start. An absent card is not an
    /// error: it is returned as the second value and requests get `Unavailable` until it appears.
    pub fn open(settings: YubikeySettings) -> Result<(Self, Option<BackendError>), BackendError> {
        let queue_depth = settings.queue_depth;
        let timeout = settings.timeout;
        let serial = settings.serial;
        let touch_slots = Arc::new(Mutex::new(HashMap::new()));
        let mut card = Card {
            settings,
            yk: None,
            pin_verified: false,
            pin_rejected: false,
            policies: HashMap::new(),
            touch_slots: Arc::clone(&touch_slots),
            tags: HashMap::new(),
        };
        let first = card.run(Retry::Idempotent, |c| c.verify_pin());
        // One worker and no replacement: the card takes one connection at a time, so a fresh
        // connection could not reach it while a stuck worker holds it. A worker stuck past a
        // request's deadline plus the grace makes the backend report itself stalled (readiness
        // NOT_SERVING) until the card answers or is unplugged.
        let pool = Pool::start(
            &format!("yubikey-{serial}"),
            vec![card],
            PoolSettings {
                queue_depth,
                max_abandoned: 0,
                grace: STUCK_GRACE,
            },
            None,
        )?;
        let backend = YubikeyBackend {
            pool,
            timeout,
            serial,
            touch_slots,
        };
        match first {
            Ok(()) => Ok((backend, None)),
            Err(e @ (BackendError::PinRejected(_) | BackendError::PinLocked)) => Err(e),
            Err(e) => Ok((backend, Some(e))),
        }
    }

    /// Queue `f` for the worker, to be answered within the backend's timeout.
    fn submit<T: Send + 'static>(
        &self,
        slot: Option<u8>,
        f: impl FnOnce(&mut Card) -> Result<T, BackendError> + Send + 'static,
    ) -> BackendFuture<T> {
        self.submit_by(Instant::now() + self.timeout, slot, f)
    }

    /// Queue one signature for the card's worker, answered by `deadline` (at most the
    /// backend's own timeout) (`fresh`: on a new connection, PIN verified again, with the key's
    /// slot found again, see [`Backend::sign_afresh`]).
    fn submit_sign(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: SignOp,
        deadline: Instant,
        fresh: bool,
    ) -> BackendFuture<Vec<u8>> {
        let slot = match Self::slot_of(key) {
            Ok(s) => s,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let key = key.clone();
        let deadline = deadline.min(Instant::now() + self.timeout);
        self.submit_by(deadline, Some(slot), move |c| {
            if fresh {
                c.disconnect();
                c.tags.clear();
            }
            c.run(Retry::Idempotent, |c| {
                let slot = c.resolve(&key)?;
                c.sign(slot, kind, &op)
            })
        })
    }

    /// Queue `f` for the worker, to be answered by `deadline`. A full queue is answered at once;
    /// a job still queued at its deadline never touches the card. A request on a `slot` whose
    /// key needs a touch is told [`BackendError::TouchRequired`] when the deadline passes.
    fn submit_by<T: Send + 'static>(
        &self,
        deadline: Instant,
        slot: Option<u8>,
        f: impl FnOnce(&mut Card) -> Result<T, BackendError> + Send + 'static,
    ) -> BackendFuture<T> {
        let touch_slots = Arc::clone(&self.touch_slots);
        let started = Instant::now();
        let late = move || {
            let touch = slot.is_some_and(|s| {
                touch_slots
                    .lock()
                    .map(|m| m.get(&s).copied().unwrap_or(false))
                    .unwrap_or(false)
            });
            if touch {
                BackendError::TouchRequired
            } else {
                BackendError::Unavailable(format!(
                    "the YubiKey did not answer within {} ms",
                    started.elapsed().as_millis()
                ))
            }
        };
        self.pool.submit_by(deadline, late, f)
    }
}

impl Device for Card {
    type Error = yubikey::Error;

    /// Open the card by serial unless it is open.
    fn connect(&mut self) -> Result<(), BackendError> {
        if self.yk.is_some() {
            return Ok(());
        }
        let serial = self.settings.serial;
        let yk = YubiKey::open_by_serial(Serial(serial)).map_err(|e| {
            BackendError::Unavailable(format!("YubiKey with serial {serial} not found: {e}"))
        })?;
        tracing::info!(serial, firmware = %yk.version(), reader = yk.name(), "YubiKey opened");
        self.yk = Some(yk);
        self.pin_verified = false;
        self.policies.clear();
        Ok(())
    }

    /// Forget the connection (dropping it resets the card, as after any fault).
    fn disconnect(&mut self) {
        self.yk = None;
        self.pin_verified = false;
        self.policies.clear();
    }

    /// PC/SC errors (card reset, removed, pcscd restarted) break the connection; a command
    /// may have reached the card before they did.
    fn fault(&self, e: &yubikey::Error) -> Fault {
        if is_connection_fault(e) {
            Fault::Connection
        } else {
            Fault::Operation
        }
    }

    fn map_error(&self, e: &yubikey::Error) -> BackendError {
        match e {
            yubikey::Error::PcscError { .. } => {
                BackendError::Unavailable(format!("YubiKey {} lost: {e}", self.settings.serial))
            }
            other => map_yk(other),
        }
    }
}

impl Card {
    fn yk(&mut self) -> Result<&mut YubiKey, Fail> {
        self.yk
            .as_mut()
            .ok_or_else(|| BackendError::Unavailable("YubiKey not open".into()).into())
    }

    fn firmware(&mut self) -> Result<(u8, u8), Fail> {
        let v = self.yk()?.version();
        Ok((v.major, v.minor))
    }

    /// VERIFY the PIN. A wrong PIN is remembered and never sent again.
    fn verify_pin(&mut self) -> Result<(), Fail> {
        if self.pin_rejected {
            return Err(BackendError::PinRejected(
                "rejected earlier; not retried to protect the card's retry counter".into(),
            )
            .into());
        }
        let pin = Zeroizing::new(self.settings.pin.expose().as_bytes().to_vec());
        match self.yk()?.verify_pin(&pin) {
            Ok(()) => {
                self.pin_verified = true;
                Ok(())
            }
            Err(yubikey::Error::WrongPin { tries: 0 }) | Err(yubikey::Error::PinLocked) => {
                Err(BackendError::PinLocked.into())
            }
            Err(yubikey::Error::WrongPin { tries }) => {
                self.pin_rejected = true;
                Err(BackendError::PinRejected(format!("{tries} retries left")).into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Authenticate with the management key (for generation and writes).
    fn authenticate(&mut self) -> Result<(), Fail> {
        let bytes = Zeroizing::new(
            base16ct::mixed::decode_vec(self.settings.management_key.expose().trim()).map_err(
                |_| BackendError::InvalidRequest("the management key is not hex".into()),
            )?,
        );
        let yk = self.yk()?;
        let alg = match piv::metadata(yk, SlotId::Management(ManagementSlotId::Management)) {
            Ok(m) => match m.algorithm {
                SlotAlgorithmId::Management(a) => a,
                _ => MgmAlgorithmId::ThreeDes,
            },
            Err(yubikey::Error::NotSupported) => MgmAlgorithmId::ThreeDes,
            Err(e) => return Err(e.into()),
        };
        let key = MgmKey::from_bytes(bytes.as_slice(), Some(alg)).map_err(|_| {
            BackendError::InvalidRequest(format!(
                "the management key does not fit the card's {alg:?} management key"
            ))
        })?;
        match yk.authenticate(&key) {
            Ok(()) => Ok(()),
            Err(yubikey::Error::AuthenticationError) => Err(BackendError::Device {
                function: "GENERAL AUTHENTICATE (management key)".into(),
                code: "the card rejected the configured management key".into(),
            }
            .into()),
            Err(e) => Err(e.into()),
        }
    }

    /// The slot's PIN and touch policy, from the card's metadata (cached per connection).
    fn policy(&mut self, slot: u8) -> Result<(PinPolicy, TouchPolicy), Fail> {
        if let Some(p) = self.policies.get(&slot) {
            return Ok(*p);
        }
        let id = slot_id(slot)?;
        let meta = match piv::metadata(self.yk()?, id) {
            Ok(m) => m,
            Err(yubikey::Error::NotFound) => {
                return Err(BackendError::KeyNotFound(KeyId(vec![slot])).into());
            }
            Err(e) => return Err(e.into()),
        };
        let (pin, touch) = meta
            .policy
            .unwrap_or((PinPolicy::Default, TouchPolicy::Default));
        let pin = match pin {
            PinPolicy::Default if slot == 0x9c => PinPolicy::Always,
            PinPolicy::Default if slot == 0x9e => PinPolicy::Never,
            PinPolicy::Default => PinPolicy::Once,
            p => p,
        };
        let touch = match touch {
            TouchPolicy::Default => TouchPolicy::Never,
            t => t,
        };
        self.policies.insert(slot, (pin, touch));
        if let Ok(mut m) = self.touch_slots.lock() {
            m.insert(slot, touch != TouchPolicy::Never);
        }
        Ok((pin, touch))
    }

    /// The public key in `slot` (GET METADATA, firmware 5.3+).
    fn public(&mut self, slot: u8) -> Result<crate::crypto::PublicKey, Fail> {
        let id = slot_id(slot)?;
        let meta = match piv::metadata(self.yk()?, id) {
            Ok(m) => m,
            Err(yubikey::Error::NotFound) => {
                return Err(BackendError::KeyNotFound(KeyId(vec![slot])).into());
            }
            Err(yubikey::Error::NotSupported) => {
                return Err(BackendError::Unsupported(
                    "reading public keys needs YubiKey firmware 5.3 or newer".into(),
                )
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        let alg = match meta.algorithm {
            SlotAlgorithmId::Asymmetric(a) => a,
            _ => return Err(BackendError::Malformed("slot holds no key pair".into()).into()),
        };
        let spki = meta
            .public
            .ok_or_else(|| BackendError::Malformed("metadata without a public key".into()))?;
        Ok(encode::public_key(
            card_key(alg)?,
            spki.subject_public_key.raw_bytes(),
        )?)
    }

    fn sign(&mut self, slot: u8, kind: KeyKind, op: &SignOp) -> Result<Vec<u8>, Fail> {
        if !op.fits(kind) {
            return Err(BackendError::InvalidRequest(format!(
                "this operation needs a different key type than {kind}"
            ))
            .into());
        }
        let alg = algorithm(kind)?;
        let input = Zeroizing::new(match (op, kind) {
            (SignOp::Ecdsa { digest }, _) => digest.clone(),
            (SignOp::RsaPkcs1v15 { hash, digest }, KeyKind::Rsa { bits }) => {
                super::emsa::pkcs1v15(*hash, digest, bits as usize / 8)?
            }
            (SignOp::RsaPss { hash, digest }, KeyKind::Rsa { bits }) => {
                let mut salt = vec![0u8; hash.len()];
                getrandom::fill(&mut salt).map_err(|e| BackendError::Device {
                    function: "getrandom".into(),
                    code: e.to_string(),
                })?;
                super::emsa::pss(*hash, digest, &salt, bits as usize)?
            }
            (SignOp::Ed25519 { message }, _) => message.clone(),
            _ => {
                return Err(
                    BackendError::InvalidRequest("operation does not fit the key".into()).into(),
                );
            }
        });
        let raw = self.private_op(slot, alg, &input, Private::Sign)?;
        match kind {
            KeyKind::Ec(curve) => {
                Ok(crate::crypto::ecdsa_der_to_fixed(&raw, curve).map_err(|e| {
                    BackendError::Malformed(format!("ECDSA signature from the card: {e}"))
                })?)
            }
            KeyKind::Rsa { bits } => {
                let k = bits as usize / 8;
                if raw.len() > k {
                    return Err(BackendError::Malformed("RSA signature too long".into()).into());
                }
                let mut out = vec![0u8; k - raw.len()];
                out.extend_from_slice(&raw);
                Ok(out)
            }
            KeyKind::Ed25519 if raw.len() == 64 => Ok(raw.to_vec()),
            KeyKind::Ed25519 => {
                Err(BackendError::Malformed("Ed25519 signature is not 64 bytes".into()).into())
            }
        }
    }

    /// One private-key operation (GENERAL AUTHENTICATE) on `slot`: the PIN verified as the
    /// slot's PIN policy needs (and once more if the card forgot it), a touch timeout told
    /// apart. Any other refusal is returned as the crate's error for the caller to map.
    fn private_op(
        &mut self,
        slot: u8,
        alg: AlgorithmId,
        input: &[u8],
        what: Private,
    ) -> Result<yubikey::Buffer, Fail> {
        let id = slot_id(slot)?;
        let (pin, touch) = self.policy(slot)?;
        if pin == PinPolicy::Always || (pin == PinPolicy::Once && !self.pin_verified) {
            self.verify_pin()?;
        }
        let call = |yk: &mut YubiKey| match what {
            Private::Sign => piv::sign_data(yk, input, alg, id),
            Private::Decrypt => piv::decrypt_data(yk, input, alg, id),
        };
        let raw = match call(self.yk()?) {
            Err(yubikey::Error::AuthenticationError) if pin != PinPolicy::Never => {
                // The card forgot the PIN (reset by another program): verify and try once more.
                self.verify_pin()?;
                call(self.yk()?)
            }
            other => other,
        };
        match raw {
            Ok(r) => Ok(r),
            Err(yubikey::Error::GenericError) if touch != TouchPolicy::Never => {
                tracing::warn!(
                    slot = format!("{slot:02x}"),
                    operation = what.name(),
                    "refused on a touch-policy key: no touch in time"
                );
                Err(BackendError::TouchTimeout.into())
            }
            Err(yubikey::Error::AuthenticationError) => Err(BackendError::Device {
                function: format!("GENERAL AUTHENTICATE ({})", what.name()),
                code: "security status not satisfied (PIN)".into(),
            }
            .into()),
            Err(e) => Err(e.into()),
        }
    }

    /// The private-key step of a decryption on `slot`: raw RSA on the card then OAEP decoding
    /// here, or ECDH on the card. Every failure the ciphertext or peer point can cause is the
    /// one [`decryption_failed`] error; the reason goes to the log only.
    fn decrypt(&mut self, slot: u8, kind: KeyKind, op: &DecryptOp) -> Result<SecretBytes, Fail> {
        if !op.fits(kind) {
            return Err(BackendError::InvalidRequest(format!(
                "this decryption needs a different key type than {kind}"
            ))
            .into());
        }
        let alg = algorithm(kind)?;
        match (op, kind) {
            (DecryptOp::RsaOaep { hash, ciphertext }, KeyKind::Rsa { bits }) => {
                let k = bits as usize / 8;
                if ciphertext.len() != k {
                    tracing::debug!(
                        slot = format!("{slot:02x}"),
                        len = ciphertext.len(),
                        k,
                        "RSA ciphertext is not the modulus length"
                    );
                    return Err(decryption_failed().into());
                }
                let raw = self.card_decrypt(slot, alg, ciphertext)?;
                // The card returns I2OSP(m, k); be lenient with a short block, as with signatures.
                if raw.len() > k {
                    return Err(BackendError::Malformed("raw RSA output too long".into()).into());
                }
                let mut em = Zeroizing::new(vec![0u8; k]);
                em[k - raw.len()..].copy_from_slice(&raw);
                drop(raw);
                let decoded = crate::crypto::oaep_decode(*hash, k, &em);
                drop(em);
                decoded.map_err(|_| {
                    tracing::debug!(slot = format!("{slot:02x}"), "OAEP decoding failed");
                    decryption_failed().into()
                })
            }
            (DecryptOp::Ecdh { peer }, KeyKind::Ec(curve)) => {
                let point = match peer {
                    crate::crypto::PublicKey::Ec { x, y, .. }
                        if x.len() == curve.field_len() && y.len() == curve.field_len() =>
                    {
                        [&[0x04][..], x, y].concat()
                    }
                    _ => return Err(decryption_failed().into()),
                };
                let z = self.card_decrypt(slot, alg, &point)?;
                if z.len() != curve.field_len() {
                    return Err(BackendError::Malformed(format!(
                        "ECDH result of {} bytes from the card, expected {}",
                        z.len(),
                        curve.field_len()
                    ))
                    .into());
                }
                Ok(SecretBytes::new(z.to_vec()))
            }
            _ => Err(BackendError::InvalidRequest("operation does not fit the key".into()).into()),
        }
    }

    /// GENERAL AUTHENTICATE for decryption (tag 81: raw RSA, tag 85: ECDH). The card refusing
    /// the input itself (e.g. an RSA block not below the modulus, a point it rejects) is
    /// [`decryption_failed`].
    fn card_decrypt(
        &mut self,
        slot: u8,
        alg: AlgorithmId,
        input: &[u8],
    ) -> Result<yubikey::Buffer, Fail> {
        match self.private_op(slot, alg, input, Private::Decrypt) {
            Err(Failure::Device(
                e @ (yubikey::Error::GenericError | yubikey::Error::SizeError),
            )) => {
                tracing::debug!(
                    slot = format!("{slot:02x}"),
                    error = %e,
                    "the card refused the decryption input"
                );
                Err(decryption_failed().into())
            }
            other => other,
        }
    }

    /// Read sigild's store from the card (empty when it was never written).
    fn load_store(&mut self) -> Result<BTreeMap<String, Vec<u8>>, Fail> {
        let mut blob = Vec::new();
        for id in store::OBJECTS {
            match self.yk()?.fetch_object(id) {
                Ok(part) => blob.extend_from_slice(&part),
                Err(yubikey::Error::NotFound) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let entries = store::decode(&blob).map_err(|e| BackendError::Malformed(e.to_string()))?;
        self.tags = entries
            .iter()
            .filter_map(|(label, value)| {
                let slot = u8::from_str_radix(label.strip_prefix(store::SLOT_PREFIX)?, 16).ok()?;
                let tag: [u8; 4] = value.get(..4)?.try_into().ok()?;
                Some((slot, tag))
            })
            .collect();
        Ok(entries)
    }

    /// The slot of `key`, checking that the key sigild put there is still the one in it.
    fn resolve(&mut self, key: &KeyId) -> Result<u8, Fail> {
        let (slot, tag) = split_key_id(key)?;
        if self.tags.get(&slot) != Some(&tag) {
            self.load_store()?;
            if self.tags.get(&slot) != Some(&tag) {
                return Err(BackendError::KeyNotFound(key.clone()).into());
            }
        }
        Ok(slot)
    }

    /// Write sigild's store (management-key authenticated), deleting objects no longer needed.
    fn save_store(&mut self, entries: &BTreeMap<String, Vec<u8>>) -> Result<(), Fail> {
        let chunks =
            store::encode(entries).map_err(|e| BackendError::Unsupported(e.to_string()))?;
        self.authenticate()?;
        for (i, id) in store::OBJECTS.iter().enumerate() {
            match chunks.get(i) {
                Some(chunk) => {
                    let mut data = chunk.clone();
                    self.yk()?.save_object(*id, &mut data)?;
                }
                None => {
                    // Delete a stale chunk from a larger earlier store; absent is fine.
                    match self.yk()?.fetch_object(*id) {
                        Ok(_) => self.yk()?.save_object(*id, &mut [])?,
                        Err(yubikey::Error::NotFound) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether `slot` has a key pair (metadata), `None` on firmware without metadata.
    fn occupied(&mut self, slot: u8) -> Result<bool, Fail> {
        match piv::metadata(self.yk()?, slot_id(slot)?) {
            Ok(_) => Ok(true),
            Err(yubikey::Error::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn generate(&mut self, spec: &KeySpec) -> Result<(KeyId, crate::crypto::PublicKey), Fail> {
        let alg = algorithm(spec.kind)?;
        let (major, minor) = self.firmware()?;
        let needs_57 = matches!(
            alg,
            AlgorithmId::Ed25519 | AlgorithmId::Rsa3072 | AlgorithmId::Rsa4096
        );
        if needs_57 && (major, minor) < (5, 7) {
            return Err(BackendError::Unsupported(format!(
                "{} needs YubiKey firmware 5.7 or newer; this card has {major}.{minor}",
                spec.kind
            ))
            .into());
        }
        let mut entries = self.load_store()?;
        let mut chosen = None;
        for slot in candidate_slots(&self.settings.slots, spec.purpose) {
            match entries.get(&slot_label(slot)) {
                Some(label) if !label.is_empty() => continue, // sigild's, in use
                Some(_) => {}                                 // scrubbed by sigild: reusable
                None if self.occupied(slot)? => continue,     // someone else's key
                None => {}
            }
            chosen = Some(slot);
            break;
        }
        let slot = chosen.ok_or_else(|| {
            BackendError::Unsupported(match spec.purpose {
                KeyPurpose::Sign => "no free slot left among the configured YubiKey slots \
                                     (9d is kept for decryption keys); destroy unused versions"
                    .into(),
                KeyPurpose::Decrypt => "no free key-management slot (9d, 82-95) left among the \
                                        configured YubiKey slots; destroy unused versions"
                    .into(),
            })
        })?;
        self.authenticate()?;
        let (pin, touch) = self.generation_policies();
        let spki = match piv::generate(self.yk()?, slot_id(slot)?, alg, pin, touch) {
            Ok(s) => s,
            Err(yubikey::Error::AlgorithmError | yubikey::Error::NotSupported) => {
                return Err(BackendError::Unsupported(format!(
                    "this YubiKey cannot generate {}",
                    spec.kind
                ))
                .into());
            }
            Err(e) => return Err(e.into()),
        };
        self.forget_slot(slot);
        let public = encode::public_key(card_key(alg)?, spki.subject_public_key.raw_bytes())?;
        let tag = new_tag()?;
        entries.insert(slot_label(slot), slot_entry(tag, &spec.label));
        self.save_store(&entries)?;
        self.tags.insert(slot, tag);
        Ok((key_id(slot, tag), public))
    }

    fn generation_policies(&self) -> (PinPolicy, TouchPolicy) {
        let pin = match self.settings.pin_policy {
            PinPolicySetting::Default => PinPolicy::Default,
            PinPolicySetting::Never => PinPolicy::Never,
            PinPolicySetting::Once => PinPolicy::Once,
            PinPolicySetting::Always => PinPolicy::Always,
        };
        let touch = match self.settings.touch_policy {
            TouchPolicySetting::Never => TouchPolicy::Never,
            TouchPolicySetting::Always => TouchPolicy::Always,
            TouchPolicySetting::Cached => TouchPolicy::Cached,
        };
        (pin, touch)
    }

    fn forget_slot(&mut self, slot: u8) {
        self.policies.remove(&slot);
        if let Ok(mut m) = self.touch_slots.lock() {
            m.remove(&slot);
        }
    }

    /// Destroy the key in `slot`: the crate has no DELETE KEY, so the slot is overwritten with a
    /// fresh key that nobody records (the old private key is gone for good) and marked reusable.
    fn destroy(&mut self, key: &KeyId) -> Result<(), Fail> {
        let slot = self.resolve(key)?;
        let mut entries = self.load_store()?;
        if self.occupied(slot)? {
            self.authenticate()?;
            piv::generate(
                self.yk()?,
                slot_id(slot)?,
                AlgorithmId::EccP256,
                PinPolicy::Default,
                TouchPolicy::Never,
            )?;
        }
        self.forget_slot(slot);
        entries.insert(slot_label(slot), Vec::new());
        self.save_store(&entries)?;
        self.tags.remove(&slot);
        Ok(())
    }

    fn label(&mut self, slot: u8) -> Result<String, Fail> {
        let entries = self.load_store()?;
        Ok(entries
            .get(&slot_label(slot))
            .and_then(|l| l.get(4..))
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .unwrap_or_default())
    }

    /// Attestation chain: the slot's attestation certificate, then the card's F9 certificate.
    fn attestation(&mut self, slot: u8) -> Result<Vec<Vec<u8>>, Fail> {
        let id = slot_id(slot)?;
        let leaf = match piv::attest(self.yk()?, id) {
            Ok(c) => c.to_vec(),
            // Imported keys, and keys on cards without attestation, have none.
            Err(yubikey::Error::NotSupported | yubikey::Error::GenericError) => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        let f9 = self.yk()?.fetch_object(0x5F_FF01)?;
        let f9 = certificate_from_object(&f9).ok_or_else(|| {
            BackendError::Malformed("the F9 attestation certificate object is malformed".into())
        })?;
        Ok(vec![leaf, f9])
    }
}

impl YubikeyBackend {
    fn uri(serial: u32, slot: u8) -> String {
        format!("yubikey:serial={serial};slot={slot:02x}")
    }

    fn slot_of(key: &KeyId) -> Result<u8, BackendError> {
        split_key_id(key).map(|(slot, _)| slot)
    }
}

impl Backend for YubikeyBackend {
    fn describe(&self) -> String {
        format!("yubikey:serial={}", self.serial)
    }

    /// Answered by the caller's deadline or the backend's timeout, whichever comes first: a
    /// key waiting for a touch is reported [`BackendError::TouchRequired`] while the caller
    /// still listens.
    fn sign(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: SignOp,
        deadline: Instant,
    ) -> BackendFuture<Vec<u8>> {
        self.submit_sign(key, kind, op, deadline, false)
    }

    /// As [`Backend::sign`], on a fresh connection to the card (PIN verified again) with the
    /// key's slot found again from sigild's store.
    fn sign_afresh(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: SignOp,
        deadline: Instant,
    ) -> BackendFuture<Vec<u8>> {
        self.submit_sign(key, kind, op, deadline, true)
    }

    fn decrypt(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: DecryptOp,
        deadline: Instant,
    ) -> BackendFuture<SecretBytes> {
        let slot = match Self::slot_of(key) {
            Ok(s) => s,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let key = key.clone();
        let deadline = deadline.min(Instant::now() + self.timeout);
        self.submit_by(deadline, Some(slot), move |c| {
            // Repeatable: a decryption changes nothing on the card.
            c.run(Retry::Idempotent, |c| {
                let slot = c.resolve(&key)?;
                c.decrypt(slot, kind, &op)
            })
        })
    }

    fn generate(&self, spec: KeySpec) -> BackendFuture<KeyObject> {
        let serial = self.serial;
        // On-card RSA generation takes seconds (RSA-4096 up to about a minute): a deadline
        // shorter than that would abandon a key the card goes on to make.
        let within = self.timeout.max(GENERATE_TIMEOUT);
        self.submit_by(Instant::now() + within, None, move |c| {
            // Not repeated after a fault that may have come after the card made the key: a
            // second run would make another key in the next free slot.
            c.run(Retry::IfNotRun, |c| {
                let (id, public) = c.generate(&spec)?;
                let (slot, _) = split_key_id(&id)?;
                Ok(KeyObject {
                    id,
                    label: spec.label.clone(),
                    uri: Self::uri(serial, slot),
                    public,
                })
            })
        })
    }

    fn import(
        &self,
        _label: String,
        material: PrivateKeyMaterial,
        _purpose: KeyPurpose,
    ) -> BackendFuture<KeyObject> {
        drop(material); // zeroizes
        Box::pin(async {
            Err(BackendError::Unsupported(
                "import into a YubiKey is not supported by sigild: keys imported into PIV cannot \
                 be attested; generate on the card or import with ykman and adopt the slot"
                    .into(),
            ))
        })
    }

    fn adopt(&self, uri: String, purpose: KeyPurpose) -> BackendFuture<KeyObject> {
        let serial = self.serial;
        let parsed = parse_uri(&uri).and_then(|(serial, slot)| {
            // A PIV card enforces no usage flags: the slot is the rule.
            if purpose == KeyPurpose::Decrypt && !is_key_management(slot) {
                return Err(BackendError::InvalidRequest(format!(
                    "slot {slot:02x} is not a key-management slot: a decryption key must be in \
                     9d or 82-95"
                )));
            }
            Ok((serial, slot))
        });
        self.submit(None, move |c| {
            let (want_serial, slot) = parsed?;
            if want_serial != serial {
                return Err(BackendError::InvalidRequest(format!(
                    "the URI names YubiKey {want_serial}; this daemon serves {serial}"
                )));
            }
            // Repeatable: a slot already recorded as sigild's keeps its tag.
            c.run(Retry::Idempotent, |c| {
                let public = c.public(slot)?;
                if purpose == KeyPurpose::Decrypt
                    && matches!(public, crate::crypto::PublicKey::Ed25519 { .. })
                {
                    return Err(BackendError::InvalidRequest(format!(
                        "slot {slot:02x} holds an Ed25519 key, which cannot decrypt"
                    ))
                    .into());
                }
                let mut entries = c.load_store()?;
                let tag = match c.tags.get(&slot) {
                    // Already sigild's (generated, or adopted before): the same key pair.
                    Some(tag) => *tag,
                    None => {
                        let tag = new_tag()?;
                        let label = format!("adopted/{slot:02x}");
                        entries.insert(slot_label(slot), slot_entry(tag, &label));
                        c.save_store(&entries)?;
                        c.tags.insert(slot, tag);
                        tag
                    }
                };
                Ok(KeyObject {
                    id: key_id(slot, tag),
                    label: c.label(slot)?,
                    uri: Self::uri(serial, slot),
                    public,
                })
            })
        })
    }

    fn key(&self, key: &KeyId) -> BackendFuture<KeyObject> {
        let serial = self.serial;
        let slot = match Self::slot_of(key) {
            Ok(s) => s,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let key = key.clone();
        self.submit(Some(slot), move |c| {
            c.run(Retry::Idempotent, |c| {
                let slot = c.resolve(&key)?;
                let public = c.public(slot)?;
                // Learn the touch policy now, for deadline messages.
                let _ = c.policy(slot)?;
                Ok(KeyObject {
                    id: key.clone(),
                    label: c.label(slot)?,
                    uri: Self::uri(serial, slot),
                    public,
                })
            })
        })
    }

    fn destroy(&self, key: &KeyId) -> BackendFuture<()> {
        let key = key.clone();
        // Repeatable: overwriting the slot again and saving the same store converge (a destroy
        // that completed answers KeyNotFound, which callers take as done).
        self.submit(None, move |c| c.run(Retry::Idempotent, |c| c.destroy(&key)))
    }

    /// The slot table's sigild keys (a PIV slot always holds both halves); keys of other
    /// tools have no entry and no key id, so they are not listed.
    fn key_pairs(&self) -> BackendFuture<Vec<StoredKeyPair>> {
        self.submit(None, |c| {
            c.run(Retry::Idempotent, |c| {
                Ok(c.load_store()?
                    .into_iter()
                    .filter_map(|(label, entry)| {
                        let slot = label.strip_prefix(store::SLOT_PREFIX)?;
                        let slot = u8::from_str_radix(slot, 16).ok()?;
                        let tag: [u8; 4] = entry.get(..4)?.try_into().ok()?;
                        Some(StoredKeyPair {
                            id: key_id(slot, tag),
                            label: String::from_utf8_lossy(entry.get(4..)?).into_owned(),
                            private: true,
                            public: true,
                        })
                    })
                    .collect())
            })
        })
    }

    fn records(&self) -> BackendFuture<Vec<Record>> {
        self.submit(None, |c| {
            c.run(Retry::Idempotent, |c| {
                Ok(c.load_store()?
                    .into_iter()
                    .filter(|(label, _)| !label.starts_with(store::SLOT_PREFIX))
                    .map(|(label, value)| Record { label, value })
                    .collect())
            })
        })
    }

    fn put_record(&self, record: Record) -> BackendFuture<()> {
        self.submit(None, move |c| {
            if record.label.starts_with(store::SLOT_PREFIX) {
                return Err(BackendError::InvalidRequest(
                    "record label is reserved by the YubiKey backend".into(),
                ));
            }
            // Repeatable: the same store written twice is the same store.
            c.run(Retry::Idempotent, |c| {
                let mut entries = c.load_store()?;
                entries.insert(record.label.clone(), record.value.clone());
                c.save_store(&entries)
            })
        })
    }

    /// The slot's attestation certificate, then the card's F9 certificate; empty for keys that
    /// were imported (the card attests generated keys only).
    fn attestation(&self, key: &KeyId) -> BackendFuture<Vec<Vec<u8>>> {
        let key = key.clone();
        self.submit(None, move |c| {
            c.run(Retry::Idempotent, |c| {
                let slot = c.resolve(&key)?;
                c.attestation(slot)
            })
        })
    }

    fn check(&self) -> BackendFuture<()> {
        self.submit(None, |c| {
            c.run(Retry::Idempotent, |c| {
                // A GET DATA: cheap, proves the card answers, and does not un-verify the PIN.
                match c.yk()?.fetch_object(store::OBJECTS[0]) {
                    Ok(_) | Err(yubikey::Error::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
                if c.pin_rejected {
                    return Err(BackendError::PinRejected("rejected earlier".into()).into());
                }
                // VERIFY without data: the retry counter, without using a retry or un-verifying.
                // A locked PIN makes the daemon NOT_SERVING, so balancers drain it.
                match c.yk()?.verify_pin(&[]) {
                    Err(yubikey::Error::WrongPin { tries: 0 }) => {
                        Err(BackendError::PinLocked.into())
                    }
                    Ok(()) | Err(yubikey::Error::WrongPin { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            })
        })
    }

    fn stalled(&self) -> bool {
        self.pool.status().stalled
    }

    /// Waits for the card's current operation (a touch wait: up to ~15 s), then releases the
    /// card; a worker stuck past its deadline plus the grace is left behind.
    fn shutdown(&self) {
        self.pool.shutdown();
    }
}

/// How long past its deadline a request may keep the card before the worker counts as stuck:
/// longer than the card's own wait for a touch (~15 s), which may outlast a request's deadline
/// and is no hang.
const STUCK_GRACE: Duration = Duration::from_secs(20);

/// Least deadline of a key generation.
const GENERATE_TIMEOUT: Duration = Duration::from_secs(120);

/// A [`KeyId`]: the slot, then the 4-byte generation tag of the sigild key in it.
fn key_id(slot: u8, tag: [u8; 4]) -> KeyId {
    let mut id = vec![slot];
    id.extend_from_slice(&tag);
    KeyId(id)
}

fn split_key_id(key: &KeyId) -> Result<(u8, [u8; 4]), BackendError> {
    match key.0.as_slice() {
        [slot, t0, t1, t2, t3] => Ok((*slot, [*t0, *t1, *t2, *t3])),
        _ => Err(BackendError::KeyNotFound(key.clone())),
    }
}

fn new_tag() -> Result<[u8; 4], BackendError> {
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).map_err(|e| BackendError::Device {
        function: "getrandom".into(),
        code: e.to_string(),
    })?;
    Ok(tag)
}

/// The slot-table value: generation tag ‖ label (empty = scrubbed, reusable).
fn slot_entry(tag: [u8; 4], label: &str) -> Vec<u8> {
    let mut v = tag.to_vec();
    v.extend_from_slice(label.as_bytes());
    v
}

/// Which private-key operation GENERAL AUTHENTICATE performs.
#[derive(Clone, Copy)]
enum Private {
    /// Sign (tag 81 with the prepared input).
    Sign,
    /// Decrypt (tag 81: raw RSA) or key agreement (tag 85: ECDH).
    Decrypt,
}

impl Private {
    fn name(self) -> &'static str {
        match self {
            Private::Sign => "sign",
            Private::Decrypt => "decrypt",
        }
    }
}

/// The one error of every decryption the input made fail (padding, length, a point the card
/// refuses): telling them apart would be an oracle.
fn decryption_failed() -> BackendError {
    BackendError::InvalidRequest("decryption failed".into())
}

/// PIV key-management slots: 9d (KEY MANAGEMENT) and the retired key-management slots 82-95,
/// the only slots sigild puts or accepts decryption keys in.
fn is_key_management(slot: u8) -> bool {
    matches!(slot, 0x9d | 0x82..=0x95)
}

/// The configured slots a new key of `purpose` may go in, in order of preference. Decryption
/// keys: the key-management slots (9d, 82-95) in configured order. Signing keys: never 9d (the
/// slot PIV middleware uses for decryption); first the other configured slots (9a, 9c, 9e),
/// then the retired ones, so retired slots go to signing keys only when nothing else is free.
fn candidate_slots(configured: &[u8], purpose: KeyPurpose) -> Vec<u8> {
    match purpose {
        KeyPurpose::Decrypt => configured
            .iter()
            .copied()
            .filter(|s| is_key_management(*s))
            .collect(),
        KeyPurpose::Sign => {
            let (retired, other): (Vec<u8>, Vec<u8>) = configured
                .iter()
                .copied()
                .filter(|s| *s != 0x9d)
                .partition(|s| is_key_management(*s));
            other.into_iter().chain(retired).collect()
        }
    }
}

/// The store entry naming the sigild key in `slot`.
fn slot_label(slot: u8) -> String {
    format!("{}{slot:02x}", store::SLOT_PREFIX)
}

fn slot_id(slot: u8) -> Result<SlotId, Fail> {
    match SlotId::try_from(slot) {
        Ok(
            id @ (SlotId::Authentication
            | SlotId::Signature
            | SlotId::KeyManagement
            | SlotId::CardAuthentication
            | SlotId::Retired(_)),
        ) => Ok(id),
        _ => Err(BackendError::InvalidRequest(format!("{slot:02x} is not a PIV key slot")).into()),
    }
}

/// The card algorithm for a key kind.
fn algorithm(kind: KeyKind) -> Result<AlgorithmId, Fail> {
    Ok(match kind {
        KeyKind::Ec(Curve::P256) => AlgorithmId::EccP256,
        KeyKind::Ec(Curve::P384) => AlgorithmId::EccP384,
        KeyKind::Rsa { bits: 2048 } => AlgorithmId::Rsa2048,
        KeyKind::Rsa { bits: 3072 } => AlgorithmId::Rsa3072,
        KeyKind::Rsa { bits: 4096 } => AlgorithmId::Rsa4096,
        KeyKind::Ed25519 => AlgorithmId::Ed25519,
        other => {
            return Err(BackendError::Unsupported(format!("a YubiKey cannot hold {other}")).into());
        }
    })
}

fn card_key(alg: AlgorithmId) -> Result<CardKey, BackendError> {
    match alg {
        AlgorithmId::EccP256 => Ok(CardKey::Ec(Curve::P256)),
        AlgorithmId::EccP384 => Ok(CardKey::Ec(Curve::P384)),
        AlgorithmId::Rsa1024
        | AlgorithmId::Rsa2048
        | AlgorithmId::Rsa3072
        | AlgorithmId::Rsa4096 => Ok(CardKey::Rsa),
        AlgorithmId::Ed25519 => Ok(CardKey::Ed25519),
        AlgorithmId::X25519 => Err(BackendError::Unsupported("X25519 keys cannot sign".into())),
    }
}

/// `yubikey:serial=N;slot=9a` → (serial, slot).
fn parse_uri(uri: &str) -> Result<(u32, u8), BackendError> {
    let bad = |why: &str| BackendError::InvalidRequest(format!("bad YubiKey URI {uri:?}: {why}"));
    let rest = uri
        .strip_prefix("yubikey:")
        .ok_or_else(|| bad("must start with yubikey:"))?;
    let (mut serial, mut slot) = (None, None);
    for part in rest.split(';') {
        match part.split_once('=') {
            Some(("serial", v)) => serial = Some(v.parse::<u32>().map_err(|_| bad("serial"))?),
            Some(("slot", v)) => slot = Some(u8::from_str_radix(v, 16).map_err(|_| bad("slot"))?),
            _ => return Err(bad("expected serial=N;slot=XX")),
        }
    }
    let slot = slot.ok_or_else(|| bad("slot= missing"))?;
    slot_id(slot).map_err(|_| bad("not a PIV key slot"))?;
    Ok((serial.ok_or_else(|| bad("serial= missing"))?, slot))
}

/// The DER certificate inside a PIV certificate object (`70 cert 71 … FE …`).
fn certificate_from_object(obj: &[u8]) -> Option<Vec<u8>> {
    let (&tag, rest) = obj.split_first()?;
    if tag != 0x70 {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        n @ 0..=0x7f => (n as usize, rest),
        0x81 => (*rest.first()? as usize, rest.get(1..)?),
        0x82 => (
            u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize,
            rest.get(2..)?,
        ),
        _ => return None,
    };
    rest.get(..len).map(<[u8]>::to_vec)
}

/// PC/SC errors after which the card must be opened again (reset, removed, pcscd restarted).
fn is_connection_fault(e: &yubikey::Error) -> bool {
    matches!(e, yubikey::Error::PcscError { .. })
}

/// Map a crate error to the backend's vocabulary.
fn map_yk(e: &yubikey::Error) -> BackendError {
    match e {
        yubikey::Error::PcscError { .. } => BackendError::Unavailable(format!("PC/SC: {e}")),
        yubikey::Error::PinLocked | yubikey::Error::WrongPin { tries: 0 } => {
            BackendError::PinLocked
        }
        yubikey::Error::WrongPin { tries } => {
            BackendError::PinRejected(format!("{tries} retries left"))
        }
        yubikey::Error::NotSupported | yubikey::Error::AlgorithmError => {
            BackendError::Unsupported(e.to_string())
        }
        yubikey::Error::NotFound => BackendError::Unavailable(format!("not found: {e}")),
        other => BackendError::Device {
            function: "yubikey".into(),
            code: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(
            YubikeyBackend::uri(12345678, 0x9a),
            "yubikey:serial=12345678;slot=9a"
        );
        assert!(matches!(
            parse_uri("yubikey:serial=12345678;slot=9c"),
            Ok((12345678, 0x9c))
        ));
        assert!(matches!(
            parse_uri("yubikey:slot=82;serial=1"),
            Ok((1, 0x82))
        ));
        assert!(parse_uri("yubikey:serial=1;slot=9b").is_err());
        assert!(parse_uri("pkcs11:token=x").is_err());
        assert!(parse_uri("yubikey:serial=1").is_err());
    }

    #[test]
    fn slot_choice_by_purpose() {
        let configured = [0x82, 0x9d, 0x9a, 0x83, 0x9e];
        assert_eq!(
            candidate_slots(&configured, KeyPurpose::Decrypt),
            vec![0x82, 0x9d, 0x83]
        );
        assert_eq!(
            candidate_slots(&configured, KeyPurpose::Sign),
            vec![0x9a, 0x9e, 0x82, 0x83]
        );
        let retired: Vec<u8> = (0x82..=0x95).collect();
        assert_eq!(candidate_slots(&retired, KeyPurpose::Sign), retired);
        assert_eq!(candidate_slots(&retired, KeyPurpose::Decrypt), retired);
        assert!(is_key_management(0x95) && !is_key_management(0x96));
        assert!(!is_key_management(0x9a) && !is_key_management(0x9c));
    }

    #[test]
    fn certificate_object() {
        let mut obj = vec![0x70, 0x82, 0x01, 0x00];
        obj.extend_from_slice(&[0x30; 256]);
        obj.extend_from_slice(&[0x71, 0x01, 0x00, 0xfe, 0x00]);
        assert_eq!(certificate_from_object(&obj).map(|c| c.len()), Some(256));
        assert_eq!(certificate_from_object(&[0x53, 0x00]), None);
    }
}
