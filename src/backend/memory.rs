//! An in-memory [`Backend`] for fast unit tests of the keyring: software key pairs made with
//! `ring`, metadata records in a map, and fault injection at the points where a real device or
//! process can fail half-way (a `put_record` that fails, a crash between generating a key pair
//! and recording it, a destroy that does not happen, records the device stops showing, key reads
//! that fail for a while, signatures that come out corrupted).
//!
//! Compiled only for tests. It owns nothing but its own maps: no files, no network, no device,
//! and it is never wired into the daemon. Clones share one "device", so a second
//! [`crate::keyring::Keyring`] over a clone is a restarted process or a replica.
//!
//! It honours the backend contract as far as `ring` allows: Ed25519 keys are generated, imported
//! and sign (RFC 8032, verifiable); EC P-256/P-384 keys are generated and imported, but `ring`
//! signs messages, not the pre-hashed digests the contract hands a backend, so ECDSA signing is
//! refused as [`BackendError::Unsupported`]; `ring` cannot generate RSA keys, so RSA exists only
//! when imported (validated by `ring`), and signs as a raw-RSA device does (PSS / PKCS#1 v1.5
//! encoded on the host by [`super::emsa`], the private-key step by the `rsa` crate). Decryption: EC keys (made or
//! imported) perform ECDH with the RustCrypto curve crates (`p256`, `p384`); imported RSA keys
//! decrypt with raw RSA (`rsa` crate) and OAEP decoded on the host. Each key pair keeps its purpose: a decryption key refuses to sign and a
//! signing key to decrypt, as a real token's attributes make it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair as _};

use super::{
    Backend, BackendError, BackendFuture, KeyId, KeyObject, KeySpec, PrivateKeyMaterial, Record,
    StoredKeyPair,
};
use crate::crypto::{Curve, DecryptOp, KeyKind, KeyPurpose, PublicKey, SignOp};
use crate::secret::SecretBytes;

/// The URI scheme of keys on this backend: `memory:id=<hex>`.
const URI_PREFIX: &str = "memory:id=";

/// One software key pair.
struct SoftKey {
    /// Device label.
    label: String,
    /// The public half.
    public: PublicKey,
    /// The signing half, for the kinds `ring` can sign with under the backend contract.
    ed25519: Option<signature::Ed25519KeyPair>,
    /// The EC private scalar, for ECDH (`ring` agrees only with ephemeral keys, so the
    /// RustCrypto curve crates do the arithmetic).
    ec_d: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// An imported RSA private key, for raw RSA decryption (OAEP decoded on the host, as a
    /// device without OAEP does it) and signing (PSS / PKCS#1 v1.5 encoded on the host).
    rsa: Option<rsa::RsaPrivateKey>,
    /// What the key pair may do: a signing key never decrypts, a decryption key never signs,
    /// as the token attributes of a real device say.
    purpose: KeyPurpose,
}

/// Faults to inject; each fires once, then the backend behaves again.
#[derive(Debug, Default)]
struct Faults {
    /// How many `put_record` calls succeed before one fails without writing.
    put_record_fails_after: Option<usize>,
    /// The next `generate` makes and keeps the key pair, then fails as a process that died
    /// before recording it would: nothing else happens, no clean-up.
    crash_after_generate: bool,
    /// The next `destroy` fails and leaves the key pair in place.
    destroy_fails: bool,
    /// How many further `key` calls fail as a device that is briefly unreachable would.
    key_reads_failing: usize,
    /// How many `put_record` calls succeed before one writes its new copy and stops before
    /// removing the old one, as a process killed between the two device writes of a record
    /// replacement would; the call then fails.
    put_record_leaves_old_after: Option<usize>,
    /// `records` lists nothing while set (the device hides its objects: a fault, a partition
    /// being restored); the records are still there.
    records_hidden: bool,
    /// [`Backend::stalled`] answers `true` while set (every worker of a real device stuck).
    stalled: bool,
    /// How many further signatures come out corrupted (a byte flipped; `usize::MAX`: all of
    /// them until cleared), as from a device with a stale handle or a faulty signing engine.
    corrupt_signatures: usize,
}

/// What the "device" was asked to sign, for tests that count attempts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SignCounts {
    /// [`Backend::sign`] calls.
    pub signs: usize,
    /// [`Backend::sign_afresh`] calls.
    pub fresh: usize,
}

/// The shared "device".
#[derive(Default)]
struct State {
    /// Key pairs by id.
    keys: BTreeMap<KeyId, SoftKey>,
    /// Records by label.
    records: BTreeMap<String, Vec<u8>>,
    /// Older copies of records that an interrupted replacement left next to the current one;
    /// listed before the current copies, so a reader that takes the last copy it sees is wrong.
    old_copies: Vec<(String, Vec<u8>)>,
    /// The next key id.
    next_id: u64,
    /// Pending faults.
    faults: Faults,
    /// Signing attempts so far.
    counts: SignCounts,
    /// [`Backend::shutdown`] was called: every later call answers
    /// [`BackendError::ShuttingDown`].
    shut_down: bool,
}

/// An in-memory device for unit tests (see the module documentation).
#[derive(Clone, Default)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
}

impl MemoryBackend {
    /// An empty device.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, BackendError> {
        lock(&self.state)
    }

    /// Let `n` further `put_record` calls succeed, then fail the next one without writing it
    /// (`0`: the very next call fails).
    pub fn fail_put_record_after(&self, n: usize) -> Result<(), BackendError> {
        self.lock()?.faults.put_record_fails_after = Some(n);
        Ok(())
    }

    /// The next `generate` makes the key pair and then fails, as if the process died before
    /// its record was written.
    pub fn crash_after_generate(&self) -> Result<(), BackendError> {
        self.lock()?.faults.crash_after_generate = true;
        Ok(())
    }

    /// Let `n` further `put_record` calls succeed; the next one that replaces a record writes
    /// the new copy, keeps the old one, and fails (a process killed between the two writes).
    pub fn crash_in_record_replacement_after(&self, n: usize) -> Result<(), BackendError> {
        self.lock()?.faults.put_record_leaves_old_after = Some(n);
        Ok(())
    }

    /// The next `destroy` fails and leaves the key pair on the device.
    pub fn fail_destroy(&self) -> Result<(), BackendError> {
        self.lock()?.faults.destroy_fails = true;
        Ok(())
    }

    /// The next `n` `key` calls (reading a key pair's public half) fail with
    /// [`BackendError::Unavailable`], as on a device that is briefly busy or unreachable.
    pub fn fail_key_reads(&self, n: usize) -> Result<(), BackendError> {
        self.lock()?.faults.key_reads_failing = n;
        Ok(())
    }

    /// Report every worker stuck (`true`) or none (`false`) through [`Backend::stalled`].
    pub fn set_stalled(&self, stalled: bool) -> Result<(), BackendError> {
        self.lock()?.faults.stalled = stalled;
        Ok(())
    }

    /// Hide (`true`) or show again (`false`) every record.
    pub fn hide_records(&self, hidden: bool) -> Result<(), BackendError> {
        self.lock()?.faults.records_hidden = hidden;
        Ok(())
    }

    /// Corrupt the next `n` signatures (`usize::MAX`: every one until set to 0 again).
    pub fn corrupt_signatures(&self, n: usize) -> Result<(), BackendError> {
        self.lock()?.faults.corrupt_signatures = n;
        Ok(())
    }

    /// How often the device was asked to sign, and how often afresh.
    pub fn sign_counts(&self) -> Result<SignCounts, BackendError> {
        Ok(self.lock()?.counts)
    }

    /// The ids of every key pair on the device.
    pub fn key_ids(&self) -> Result<Vec<KeyId>, BackendError> {
        Ok(self.lock()?.keys.keys().cloned().collect())
    }

    /// The labels of every record copy on the device (hidden or not).
    pub fn record_labels(&self) -> Result<Vec<String>, BackendError> {
        let s = self.lock()?;
        Ok(s.old_copies
            .iter()
            .map(|(l, _)| l.clone())
            .chain(s.records.keys().cloned())
            .collect())
    }

    /// Put an Ed25519 key pair on the device as another tool would; returns its URI for
    /// [`Backend::adopt`].
    pub fn add_foreign_ed25519(&self, label: &str) -> Result<String, BackendError> {
        let key = generate_key(KeyKind::Ed25519, label.to_owned())?;
        let mut state = self.lock()?;
        let id = fresh_id(&mut state);
        state.keys.insert(id.clone(), key);
        Ok(format!("{URI_PREFIX}{}", id.to_hex()))
    }
}

fn lock(state: &Mutex<State>) -> Result<MutexGuard<'_, State>, BackendError> {
    state.lock().map_err(|_| BackendError::Device {
        function: "memory".into(),
        code: "lock poisoned".into(),
    })
}

fn fresh_id(state: &mut State) -> KeyId {
    state.next_id += 1;
    KeyId(state.next_id.to_be_bytes().to_vec())
}

fn object(id: &KeyId, key: &SoftKey) -> KeyObject {
    KeyObject {
        id: id.clone(),
        label: key.label.clone(),
        uri: format!("{URI_PREFIX}{}", id.to_hex()),
        public: key.public.clone(),
    }
}

fn rejected(e: ring::error::KeyRejected) -> BackendError {
    BackendError::Import(format!("ring rejected the key: {e}"))
}

fn ecdsa_alg(curve: Curve) -> &'static signature::EcdsaSigningAlgorithm {
    match curve {
        Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
    }
}

/// Sign `op` with `key` as the device would, corrupting the result while a corruption fault
/// is pending.
fn sign_with(
    s: &mut State,
    key: &KeyId,
    kind: KeyKind,
    op: &SignOp,
) -> Result<Vec<u8>, BackendError> {
    let soft = s
        .keys
        .get(key)
        .ok_or_else(|| BackendError::KeyNotFound(key.clone()))?;
    if soft.public.kind() != kind || !op.fits(kind) {
        return Err(BackendError::InvalidRequest(format!(
            "this operation needs a different key type than {kind}"
        )));
    }
    if soft.purpose != KeyPurpose::Sign {
        return Err(BackendError::InvalidRequest(
            "the key is a decryption key and does not sign".into(),
        ));
    }
    let mut sig = match (op, &soft.ed25519, &soft.rsa) {
        (SignOp::Ed25519 { message }, Some(pair), _) => pair.sign(message).as_ref().to_vec(),
        (SignOp::RsaPss { hash, digest }, _, Some(key)) => {
            let mut salt = vec![0u8; hash.len()];
            getrandom::fill(&mut salt).map_err(|e| BackendError::Device {
                function: "getrandom".into(),
                code: e.to_string(),
            })?;
            rsa_raw_sign(key, |bits| super::emsa::pss(*hash, digest, &salt, bits))?
        }
        (SignOp::RsaPkcs1v15 { hash, digest }, _, Some(key)) => {
            rsa_raw_sign(key, |bits| super::emsa::pkcs1v15(*hash, digest, bits / 8))?
        }
        _ => {
            return Err(BackendError::Unsupported(format!(
                "the in-memory backend signs with Ed25519 and imported RSA keys only ({kind}: \
                 ring signs messages, not pre-hashed digests)"
            )));
        }
    };
    let corrupt = &mut s.faults.corrupt_signatures;
    if *corrupt > 0 {
        if *corrupt != usize::MAX {
            *corrupt -= 1;
        }
        if let Some(b) = sig.get_mut(10) {
            *b ^= 0x5a;
        }
    }
    Ok(sig)
}

/// The private-key step of a decryption with `key`, as a device does it: ECDH with the
/// peer's point (the shared secret's x-coordinate). A signing key refuses, as does a kind this
/// fake cannot serve.
fn decrypt_with(
    s: &State,
    key: &KeyId,
    kind: KeyKind,
    op: &DecryptOp,
) -> Result<SecretBytes, BackendError> {
    let soft = s
        .keys
        .get(key)
        .ok_or_else(|| BackendError::KeyNotFound(key.clone()))?;
    if soft.public.kind() != kind || !op.fits(kind) {
        return Err(BackendError::InvalidRequest(format!(
            "this operation needs a different key type than {kind}"
        )));
    }
    if soft.purpose != KeyPurpose::Decrypt {
        return Err(BackendError::InvalidRequest(
            "the key is a signing key and does not decrypt".into(),
        ));
    }
    match (op, &soft.ec_d) {
        (DecryptOp::Ecdh { peer }, Some(d)) => ecdh(d, peer),
        (DecryptOp::RsaOaep { hash, ciphertext }, _) => match &soft.rsa {
            Some(key) => rsa_oaep(key, *hash, ciphertext),
            None => Err(BackendError::Unsupported(format!(
                "the in-memory backend decrypts with imported RSA keys only ({kind})"
            ))),
        },
        _ => Err(BackendError::Unsupported(format!(
            "the in-memory backend cannot decrypt with this key ({kind})"
        ))),
    }
}

/// Raw RSA with `key`, then OAEP decoding on the host. Every failure (a ciphertext out of
/// range, bad padding) is the same refusal, as a device's would be.
fn rsa_oaep(
    key: &rsa::RsaPrivateKey,
    hash: crate::crypto::OaepHash,
    ciphertext: &[u8],
) -> Result<SecretBytes, BackendError> {
    use rsa::traits::PublicKeyParts as _;
    let refused = || BackendError::InvalidRequest("decryption failed".into());
    let k = key.size();
    if ciphertext.len() != k {
        return Err(refused());
    }
    let bits = u32::try_from(k * 8).map_err(|_| refused())?;
    let c = rsa::BoxedUint::from_be_slice(ciphertext, bits).map_err(|_| refused())?;
    let raw = rsa::hazmat::rsa_decrypt_and_check(
        key,
        None::<&mut dyn rsa::rand_core::TryCryptoRng<Error = core::convert::Infallible>>,
        &c,
    )
    .map_err(|_| refused())?;
    let em = zeroize::Zeroizing::new(raw.to_be_bytes());
    let em = em.get(em.len().saturating_sub(k)..).ok_or_else(refused)?;
    crate::crypto::oaep_decode(hash, k, em).map_err(|_| refused())
}

/// An RSA signature as a device that performs only the raw private-key operation makes it (the
/// YubiKey PIV card does): `encode` builds the encoded message for a modulus of the given bit
/// length on the host ([`super::emsa`]), the key raises it to `d` (with the CRT and the
/// `rsa` crate's check of the result), and the signature comes out as long as the modulus.
fn rsa_raw_sign(
    key: &rsa::RsaPrivateKey,
    encode: impl FnOnce(usize) -> Result<Vec<u8>, BackendError>,
) -> Result<Vec<u8>, BackendError> {
    use rsa::traits::PublicKeyParts as _;
    let k = key.size();
    let em = zeroize::Zeroizing::new(encode(k * 8)?);
    let bits = u32::try_from(k * 8)
        .map_err(|_| BackendError::InvalidRequest("RSA modulus too long".into()))?;
    let m = rsa::BoxedUint::from_be_slice(&em, bits)
        .map_err(|_| BackendError::InvalidRequest("encoded message too long".into()))?;
    let raw = rsa::hazmat::rsa_decrypt_and_check(
        key,
        None::<&mut dyn rsa::rand_core::TryCryptoRng<Error = core::convert::Infallible>>,
        &m,
    )
    .map_err(|e| BackendError::Device {
        function: "rsa private operation".into(),
        code: e.to_string(),
    })?;
    let raw = raw.to_be_bytes();
    let mut sig = vec![0u8; k.saturating_sub(raw.len())];
    sig.extend_from_slice(raw.get(raw.len().saturating_sub(k)..).unwrap_or_default());
    Ok(sig)
}

/// ECDH of the private scalar `d` with `peer`: the x-coordinate of `d·peer`.
fn ecdh(d: &[u8], peer: &PublicKey) -> Result<SecretBytes, BackendError> {
    use p256::elliptic_curve::point::AffineCoordinates as _;
    let PublicKey::Ec { curve, x, y } = peer else {
        return Err(BackendError::InvalidRequest(
            "ECDH needs an EC point".into(),
        ));
    };
    let sec1 = [&[0x04][..], x, y].concat();
    let off_curve = |_| BackendError::InvalidRequest("the peer point is not on the curve".into());
    let bad_key = |_| BackendError::Malformed("the stored scalar is not a private key".into());
    let z = match curve {
        Curve::P256 => {
            let sk = p256::SecretKey::from_slice(d).map_err(bad_key)?;
            let pk = p256::PublicKey::from_sec1_bytes(&sec1).map_err(off_curve)?;
            let shared = (pk.to_projective() * sk.to_nonzero_scalar().as_ref()).to_affine();
            shared.x().to_vec()
        }
        Curve::P384 => {
            let sk = p384::SecretKey::from_slice(d).map_err(bad_key)?;
            let pk = p384::PublicKey::from_sec1_bytes(&sec1).map_err(off_curve)?;
            let shared = (pk.to_projective() * sk.to_nonzero_scalar().as_ref()).to_affine();
            shared.x().to_vec()
        }
    };
    Ok(SecretBytes::new(z))
}

/// A fresh software key pair of `kind`.
fn generate_key(kind: KeyKind, label: String) -> Result<SoftKey, BackendError> {
    let rng = SystemRandom::new();
    let unspecified = |_| BackendError::Device {
        function: "ring generate".into(),
        code: "unspecified".into(),
    };
    match kind {
        KeyKind::Ed25519 => {
            let pkcs8 = signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(unspecified)?;
            let pair = signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(rejected)?;
            Ok(SoftKey {
                label,
                public: PublicKey::Ed25519 {
                    x: pair.public_key().as_ref().to_vec(),
                },
                ed25519: Some(pair),
                ec_d: None,
                rsa: None,
                purpose: KeyPurpose::Sign,
            })
        }
        KeyKind::Ec(curve) => {
            let alg = ecdsa_alg(curve);
            let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).map_err(unspecified)?;
            let pair =
                signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).map_err(rejected)?;
            let public = super::import::ec_point(curve, pair.public_key().as_ref())
                .map_err(BackendError::Malformed)?;
            let ec_d = match super::import::parse_pkcs8(pkcs8.as_ref()) {
                Ok(PrivateKeyMaterial::Ec { d, .. }) => Some(d),
                _ => None,
            };
            Ok(SoftKey {
                label,
                public,
                ed25519: None,
                ec_d,
                rsa: None,
                purpose: KeyPurpose::Sign,
            })
        }
        KeyKind::Rsa { .. } => Err(BackendError::Unsupported(format!(
            "the in-memory backend cannot generate {kind} (ring generates no RSA keys)"
        ))),
    }
}

/// Check imported material with `ring` and keep what can sign or decrypt.
fn import_key(
    material: &PrivateKeyMaterial,
    label: String,
    purpose: KeyPurpose,
) -> Result<SoftKey, BackendError> {
    let rng = SystemRandom::new();
    let public = material.public().clone();
    let mut ec_d = None;
    let mut rsa_key = None;
    let ed25519 = match (material, &public) {
        (PrivateKeyMaterial::Ed25519 { seed, .. }, PublicKey::Ed25519 { x }) => {
            Some(signature::Ed25519KeyPair::from_seed_and_public_key(seed, x).map_err(rejected)?)
        }
        (PrivateKeyMaterial::Ec { curve, d, .. }, PublicKey::Ec { x, y, .. }) => {
            let point = [&[0x04][..], x, y].concat();
            signature::EcdsaKeyPair::from_private_key_and_public_key(
                ecdsa_alg(*curve),
                d,
                &point,
                &rng,
            )
            .map_err(rejected)?;
            ec_d = Some(d.clone());
            None
        }
        (
            PrivateKeyMaterial::Rsa {
                d,
                p,
                q,
                dp,
                dq,
                qinv,
                ..
            },
            PublicKey::Rsa { n, e },
        ) => {
            signature::RsaKeyPair::from_components(&ring::rsa::KeyPairComponents {
                public_key: ring::rsa::PublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                },
                d: d.as_slice(),
                p: p.as_slice(),
                q: q.as_slice(),
                dP: dp.as_slice(),
                dQ: dq.as_slice(),
                qInv: qinv.as_slice(),
            })
            .map_err(rejected)?;
            let bits = u32::try_from(n.len() * 8).unwrap_or(u32::MAX);
            let uint = |v: &[u8]| {
                rsa::BoxedUint::from_be_slice(v, bits)
                    .map_err(|_| BackendError::Import("RSA component too long".into()))
            };
            rsa_key = Some(
                rsa::RsaPrivateKey::from_components(
                    uint(n)?,
                    uint(e)?,
                    uint(d)?,
                    vec![uint(p)?, uint(q)?],
                )
                .map_err(|e| BackendError::Import(format!("RSA key: {e}")))?,
            );
            None
        }
        _ => {
            return Err(BackendError::Import(
                "private and public halves are of different kinds".into(),
            ));
        }
    };
    Ok(SoftKey {
        label,
        public,
        ed25519,
        ec_d,
        rsa: rsa_key,
        purpose,
    })
}

impl MemoryBackend {
    /// Run `f` on the state as one device call.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, BackendError> + Send + 'static,
    ) -> BackendFuture<T> {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            let mut state = lock(&state)?;
            if state.shut_down {
                return Err(BackendError::ShuttingDown);
            }
            f(&mut state)
        })
    }
}

impl Backend for MemoryBackend {
    fn describe(&self) -> String {
        "memory".into()
    }

    /// Answers at once, so the deadline never matters.
    fn sign(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: SignOp,
        _deadline: Instant,
    ) -> BackendFuture<Vec<u8>> {
        let key = key.clone();
        self.call(move |s| {
            s.counts.signs += 1;
            sign_with(s, &key, kind, &op)
        })
    }

    /// The in-memory device keeps no handles or sessions: signing afresh is signing again,
    /// counted apart.
    fn sign_afresh(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: SignOp,
        _deadline: Instant,
    ) -> BackendFuture<Vec<u8>> {
        let key = key.clone();
        self.call(move |s| {
            s.counts.fresh += 1;
            sign_with(s, &key, kind, &op)
        })
    }

    fn decrypt(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: DecryptOp,
        deadline: Instant,
    ) -> BackendFuture<SecretBytes> {
        let _ = deadline; // answers at once
        let key = key.clone();
        self.call(move |s| decrypt_with(s, &key, kind, &op))
    }

    fn generate(&self, spec: KeySpec) -> BackendFuture<KeyObject> {
        self.call(move |s| {
            let mut key = generate_key(spec.kind, spec.label)?;
            key.purpose = spec.purpose;
            let id = fresh_id(s);
            let obj = object(&id, &key);
            s.keys.insert(id, key);
            if std::mem::take(&mut s.faults.crash_after_generate) {
                return Err(BackendError::Unavailable(
                    "injected crash after generate, before the record".into(),
                ));
            }
            Ok(obj)
        })
    }

    fn import(
        &self,
        label: String,
        material: PrivateKeyMaterial,
        purpose: KeyPurpose,
    ) -> BackendFuture<KeyObject> {
        self.call(move |s| {
            let key = import_key(&material, label, purpose)?;
            drop(material); // zeroizes
            let id = fresh_id(s);
            let obj = object(&id, &key);
            s.keys.insert(id, key);
            Ok(obj)
        })
    }

    /// Adopting states the purpose the key pair is used for from now on (a real token's
    /// attributes were set by the tool that made it; this fake takes the caller's word).
    fn adopt(&self, uri: String, purpose: KeyPurpose) -> BackendFuture<KeyObject> {
        self.call(move |s| {
            let id = uri
                .strip_prefix(URI_PREFIX)
                .and_then(KeyId::from_hex)
                .ok_or_else(|| {
                    BackendError::InvalidRequest(format!("not a {URI_PREFIX}<hex> URI: {uri}"))
                })?;
            let key = s
                .keys
                .get_mut(&id)
                .ok_or_else(|| BackendError::KeyNotFound(id.clone()))?;
            key.purpose = purpose;
            Ok(object(&id, key))
        })
    }

    fn key(&self, key: &KeyId) -> BackendFuture<KeyObject> {
        let id = key.clone();
        self.call(move |s| {
            if s.faults.key_reads_failing > 0 {
                s.faults.key_reads_failing -= 1;
                return Err(BackendError::Unavailable(
                    "injected key read failure".into(),
                ));
            }
            let key = s
                .keys
                .get(&id)
                .ok_or_else(|| BackendError::KeyNotFound(id.clone()))?;
            Ok(object(&id, key))
        })
    }

    fn destroy(&self, key: &KeyId) -> BackendFuture<()> {
        let id = key.clone();
        self.call(move |s| {
            if std::mem::take(&mut s.faults.destroy_fails) {
                return Err(BackendError::Unavailable("injected destroy failure".into()));
            }
            s.keys
                .remove(&id)
                .map(|_| ())
                .ok_or(BackendError::KeyNotFound(id))
        })
    }

    fn key_pairs(&self) -> BackendFuture<Vec<StoredKeyPair>> {
        self.call(|s| {
            Ok(s.keys
                .iter()
                .map(|(id, k)| StoredKeyPair {
                    id: id.clone(),
                    label: k.label.clone(),
                    private: true,
                    public: true,
                })
                .collect())
        })
    }

    fn records(&self) -> BackendFuture<Vec<Record>> {
        self.call(|s| {
            if s.faults.records_hidden {
                return Ok(Vec::new());
            }
            Ok(s.old_copies
                .iter()
                .map(|(label, value)| (label, value))
                .chain(s.records.iter())
                .map(|(label, value)| Record {
                    label: label.clone(),
                    value: value.clone(),
                })
                .collect())
        })
    }

    fn put_record(&self, record: Record) -> BackendFuture<()> {
        self.call(move |s| {
            match s.faults.put_record_fails_after {
                Some(0) => {
                    s.faults.put_record_fails_after = None;
                    return Err(BackendError::Unavailable(format!(
                        "injected put_record failure ({})",
                        record.label
                    )));
                }
                Some(n) => s.faults.put_record_fails_after = Some(n - 1),
                None => {}
            }
            let replaces = s.records.contains_key(&record.label);
            match s.faults.put_record_leaves_old_after {
                Some(0) if replaces => {
                    s.faults.put_record_leaves_old_after = None;
                    let label = record.label.clone();
                    if let Some(old) = s.records.insert(record.label, record.value) {
                        s.old_copies.push((label.clone(), old));
                    }
                    return Err(BackendError::Unavailable(format!(
                        "injected crash between writing record {label} and removing its old copy"
                    )));
                }
                Some(n) if replaces => s.faults.put_record_leaves_old_after = Some(n - 1),
                _ => {}
            }
            // A replacement removes every older copy, as the PKCS#11 backend does.
            s.old_copies.retain(|(l, _)| *l != record.label);
            s.records.insert(record.label, record.value);
            Ok(())
        })
    }

    fn attestation(&self, key: &KeyId) -> BackendFuture<Vec<Vec<u8>>> {
        let id = key.clone();
        self.call(move |s| {
            if s.keys.contains_key(&id) {
                Ok(Vec::new())
            } else {
                Err(BackendError::KeyNotFound(id))
            }
        })
    }

    fn check(&self) -> BackendFuture<()> {
        self.call(|_| Ok(()))
    }

    fn stalled(&self) -> bool {
        self.lock().is_ok_and(|s| s.faults.stalled)
    }

    /// No workers to stop: later calls answer [`BackendError::ShuttingDown`].
    fn shutdown(&self) {
        if let Ok(mut s) = self.lock() {
            s.shut_down = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<T>(f: BackendFuture<T>) -> Result<T, BackendError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| BackendError::Unavailable(e.to_string()))?
            .block_on(f)
    }

    #[test]
    fn ed25519_signatures_verify_with_ring() -> Result<(), BackendError> {
        let b = MemoryBackend::new();
        let obj = block_on(b.generate(KeySpec {
            kind: KeyKind::Ed25519,
            label: "k".into(),
            purpose: KeyPurpose::Sign,
        }))?;
        let PublicKey::Ed25519 { x } = &obj.public else {
            return Err(BackendError::Malformed("not Ed25519".into()));
        };
        let sig = block_on(b.sign(
            &obj.id,
            KeyKind::Ed25519,
            SignOp::Ed25519 {
                message: b"msg".to_vec(),
            },
            Instant::now(),
        ))?;
        let verified =
            signature::UnparsedPublicKey::new(&signature::ED25519, x).verify(b"msg", &sig);
        assert!(verified.is_ok());
        assert!(
            signature::UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(b"other", &sig)
                .is_err()
        );
        Ok(())
    }

    /// A fresh RSA-2048 key in PKCS#8 DER, made by python `cryptography` (ring makes none).
    fn rsa_pkcs8() -> Result<Vec<u8>, BackendError> {
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import sys\nfrom cryptography.hazmat.primitives.asymmetric import rsa\n\
                 from cryptography.hazmat.primitives import serialization as s\n\
                 k = rsa.generate_private_key(public_exponent=65537, key_size=2048)\n\
                 sys.stdout.buffer.write(k.private_bytes(s.Encoding.DER, \
                 s.PrivateFormat.PKCS8, s.NoEncryption()))",
            )
            .output()
            .map_err(|e| BackendError::Unavailable(format!("python3: {e}")))?;
        if !out.status.success() {
            return Err(BackendError::Unavailable(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        Ok(out.stdout)
    }

    #[test]
    fn imported_rsa_signs_pss_and_pkcs1_as_a_raw_rsa_device() -> Result<(), BackendError> {
        use crate::crypto::HashAlg;
        let b = MemoryBackend::new();
        let material = super::super::parse_pkcs8(&SecretBytes::new(rsa_pkcs8()?))?;
        let obj = block_on(b.import("rsa".into(), material, KeyPurpose::Sign))?;
        let PublicKey::Rsa { n, e } = &obj.public else {
            return Err(BackendError::Malformed("not RSA".into()));
        };
        let kind = KeyKind::Rsa { bits: 2048 };
        let public = ring::rsa::PublicKeyComponents { n, e };
        let msg = b"@method: POST";
        for (op, ring_alg) in [
            (
                SignOp::RsaPss {
                    hash: HashAlg::Sha512,
                    digest: HashAlg::Sha512.digest(msg),
                },
                &signature::RSA_PSS_2048_8192_SHA512,
            ),
            (
                SignOp::RsaPss {
                    hash: HashAlg::Sha256,
                    digest: HashAlg::Sha256.digest(msg),
                },
                &signature::RSA_PSS_2048_8192_SHA256,
            ),
            (
                SignOp::RsaPkcs1v15 {
                    hash: HashAlg::Sha256,
                    digest: HashAlg::Sha256.digest(msg),
                },
                &signature::RSA_PKCS1_2048_8192_SHA256,
            ),
        ] {
            let sig = block_on(b.sign(&obj.id, kind, op.clone(), Instant::now()))?;
            assert_eq!(sig.len(), 256, "{op:?}");
            assert!(public.verify(ring_alg, msg, &sig).is_ok(), "{op:?}");
            assert!(public.verify(ring_alg, b"other", &sig).is_err(), "{op:?}");
        }
        // PSS with a fresh salt: two signatures of one digest differ, and both verify.
        let pss = SignOp::RsaPss {
            hash: HashAlg::Sha512,
            digest: HashAlg::Sha512.digest(msg),
        };
        let one = block_on(b.sign(&obj.id, kind, pss.clone(), Instant::now()))?;
        let two = block_on(b.sign(&obj.id, kind, pss, Instant::now()))?;
        assert_ne!(one, two);
        Ok(())
    }

    #[test]
    fn what_ring_cannot_do_is_refused_not_faked() -> Result<(), BackendError> {
        let b = MemoryBackend::new();
        let ec = block_on(b.generate(KeySpec {
            kind: KeyKind::Ec(Curve::P256),
            label: "ec".into(),
            purpose: KeyPurpose::Sign,
        }))?;
        assert!(matches!(ec.public, PublicKey::Ec { ref x, .. } if x.len() == 32));
        let r = block_on(b.sign(
            &ec.id,
            KeyKind::Ec(Curve::P256),
            SignOp::Ecdsa {
                digest: vec![0; 32],
            },
            Instant::now(),
        ));
        assert!(matches!(r, Err(BackendError::Unsupported(_))), "{r:?}");
        let r = block_on(b.generate(KeySpec {
            kind: KeyKind::Rsa { bits: 2048 },
            label: "rsa".into(),
            purpose: KeyPurpose::Sign,
        }));
        assert!(matches!(r, Err(BackendError::Unsupported(_))), "{r:?}");
        Ok(())
    }

    #[test]
    fn ecdh_agrees_with_ring_and_purposes_are_kept() -> Result<(), BackendError> {
        use ring::agreement;
        let b = MemoryBackend::new();
        for (curve, ring_alg) in [
            (Curve::P256, &agreement::ECDH_P256),
            (Curve::P384, &agreement::ECDH_P384),
        ] {
            let kind = KeyKind::Ec(curve);
            let enc = block_on(b.generate(KeySpec {
                kind,
                label: "enc".into(),
                purpose: KeyPurpose::Decrypt,
            }))?;
            // The other party: an ephemeral key of ring's.
            let rng = SystemRandom::new();
            let eph = agreement::EphemeralPrivateKey::generate(ring_alg, &rng)
                .map_err(|_| BackendError::Malformed("ring".into()))?;
            let eph_pub = eph
                .compute_public_key()
                .map_err(|_| BackendError::Malformed("ring".into()))?;
            let peer = super::super::import::ec_point(curve, eph_pub.as_ref())
                .map_err(BackendError::Malformed)?;
            let z = block_on(b.decrypt(&enc.id, kind, DecryptOp::Ecdh { peer }, Instant::now()))?;
            let PublicKey::Ec { x, y, .. } = &enc.public else {
                return Err(BackendError::Malformed("not EC".into()));
            };
            let ours = [&[0x04][..], x, y].concat();
            let theirs = agreement::agree_ephemeral(
                eph,
                &agreement::UnparsedPublicKey::new(ring_alg, &ours),
                |z| z.to_vec(),
            )
            .map_err(|_| BackendError::Malformed("ring agreement".into()))?;
            assert_eq!(z.expose(), theirs.as_slice());
            assert_eq!(z.expose().len(), curve.field_len());
            // An encryption key never signs.
            let r = block_on(b.sign(
                &enc.id,
                kind,
                SignOp::Ecdsa {
                    digest: vec![0; 32],
                },
                Instant::now(),
            ));
            assert!(matches!(r, Err(BackendError::InvalidRequest(_))), "{r:?}");
        }
        // A signing key never decrypts.
        let sig = block_on(b.generate(KeySpec {
            kind: KeyKind::Ec(Curve::P256),
            label: "sig".into(),
            purpose: KeyPurpose::Sign,
        }))?;
        let peer = sig.public.clone();
        let r = block_on(b.decrypt(
            &sig.id,
            KeyKind::Ec(Curve::P256),
            DecryptOp::Ecdh { peer },
            Instant::now(),
        ));
        assert!(matches!(r, Err(BackendError::InvalidRequest(_))), "{r:?}");
        Ok(())
    }

    #[test]
    fn injected_faults_fire_once() -> Result<(), BackendError> {
        let b = MemoryBackend::new();
        let put = |label: &str| {
            block_on(b.put_record(Record {
                label: label.into(),
                value: vec![1],
            }))
        };
        b.fail_put_record_after(1)?;
        put("a")?;
        assert!(put("b").is_err());
        put("c")?;
        assert_eq!(b.record_labels()?, vec!["a".to_owned(), "c".to_owned()]);

        b.crash_after_generate()?;
        let spec = || KeySpec {
            kind: KeyKind::Ed25519,
            label: "k".into(),
            purpose: KeyPurpose::Sign,
        };
        assert!(block_on(b.generate(spec())).is_err());
        assert_eq!(b.key_ids()?.len(), 1, "the key pair stays behind");
        let obj = block_on(b.generate(spec()))?;

        b.fail_destroy()?;
        assert!(block_on(b.destroy(&obj.id)).is_err());
        block_on(b.destroy(&obj.id))?;
        assert_eq!(b.key_ids()?.len(), 1);

        b.hide_records(true)?;
        assert!(block_on(b.records())?.is_empty());
        b.hide_records(false)?;
        assert_eq!(block_on(b.records())?.len(), 2);

        b.shutdown();
        assert!(matches!(
            block_on(b.records()),
            Err(BackendError::ShuttingDown)
        ));
        Ok(())
    }
}
