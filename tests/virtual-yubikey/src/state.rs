//! The card's persistent state (notes §6 "State model"): PIN, PUK, retry counters, default
//! flags, management key, slot keys with policies and origin, data objects, and the emulated
//! attestation root. Also its JSON file form and factory defaults.
//!
//! Owns persistence. It does not implement any command: the PIV applet mutates this state and
//! asks for a save. Volatile state (PIN verified, management authenticated, …) lives in the
//! applet, never here.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::attest;
use crate::keys::{Firmware, KeyError, PrivateKey, StoredKey};
use crate::mgmkey::{self, MgmAlgorithm};
use crate::tlv;

/// Errors loading or saving the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the file failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid state JSON.
    #[error("state file {path}: {source}")]
    Json {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A field does not decode (bad hex, bad key).
    #[error("state file: invalid field {0}")]
    Field(&'static str),
    /// Key generation for the factory state failed.
    #[error("key: {0}")]
    Key(#[from] KeyError),
}

/// The attestation slot.
pub const SLOT_ATTESTATION: u8 = 0xF9;
/// Object id of the F9 certificate.
pub const OBJ_ATTESTATION_CERT: u32 = 0x5F_FF01;
/// Factory PIN.
pub const DEFAULT_PIN: &[u8] = b"123456";
/// Factory PUK.
pub const DEFAULT_PUK: &[u8] = b"12345678";

/// Key origin as reported by GET METADATA tag 03.
pub const ORIGIN_GENERATED: u8 = 0x01;
/// Imported key.
pub const ORIGIN_IMPORTED: u8 = 0x02;

/// A key in a slot with its policies.
#[derive(Debug, Clone)]
pub struct SlotKey {
    /// The private key.
    pub key: PrivateKey,
    /// 1 never, 2 once, 3 always (never 0: defaults are resolved at generation).
    pub pin_policy: u8,
    /// 1 never, 2 always, 3 cached.
    pub touch_policy: u8,
    /// `ORIGIN_GENERATED` or `ORIGIN_IMPORTED`; only generated keys can be attested.
    pub origin: u8,
}

/// The persistent state of the card.
pub struct Persistent {
    /// PIN padded with FF to 8 bytes.
    pub pin: Zeroizing<Vec<u8>>,
    /// PUK padded with FF to 8 bytes.
    pub puk: Zeroizing<Vec<u8>>,
    /// Whether the PIN is still the factory value (metadata tag 05).
    pub pin_default: bool,
    /// Whether the PUK is still the factory value.
    pub puk_default: bool,
    /// PIN retries after a reset of the counter.
    pub pin_total: u8,
    /// PIN retries left; 0 means blocked.
    pub pin_left: u8,
    /// PUK retries after a reset of the counter.
    pub puk_total: u8,
    /// PUK retries left; 0 means blocked.
    pub puk_left: u8,
    /// Management key algorithm.
    pub mgm_alg: MgmAlgorithm,
    /// Management key bytes.
    pub mgm_key: Zeroizing<Vec<u8>>,
    /// Whether management authentication requires touch (SET MGMT KEY with P2=FE).
    pub mgm_touch: bool,
    /// Whether the management key is the factory key.
    pub mgm_default: bool,
    /// Keys by slot id (9a, 9c, 9d, 9e, 82–95, f9).
    pub keys: BTreeMap<u8, SlotKey>,
    /// Data objects by id (e.g. 0x5FC105): the value of tag 53 as stored by PUT DATA.
    pub objects: BTreeMap<u32, Vec<u8>>,
    /// The emulated attestation root's key (signs the F9 certificate).
    pub root_key: PrivateKey,
    /// The root certificate (DER), exported for tests.
    pub root_cert: Vec<u8>,
}

/// Pads a PIN/PUK to 8 bytes with FF, as the wire carries it.
pub fn pad8(v: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut p = Zeroizing::new(v.to_vec());
    p.resize(8, 0xFF);
    p
}

/// The certificate object format: `70 cert 71 01 00 FE 00`.
pub fn certificate_object(cert_der: &[u8]) -> Vec<u8> {
    let mut v = tlv::item(0x70, cert_der);
    tlv::push(&mut v, 0x71, &[0x00]);
    tlv::push(&mut v, 0xFE, &[]);
    v
}

/// The factory management algorithm for a firmware version.
pub fn default_mgm_alg(fw: Firmware) -> MgmAlgorithm {
    if fw >= Firmware(5, 7, 0) {
        MgmAlgorithm::Aes192
    } else {
        MgmAlgorithm::TripleDes
    }
}

impl Persistent {
    /// A factory-fresh card: default PIN/PUK/management key, a new attestation root and F9
    /// key with its certificate, no user keys.
    ///
    /// # Errors
    /// `StateError::Key` if key generation fails.
    pub fn factory(fw: Firmware) -> Result<Persistent, StateError> {
        let (root_key, root_cert) = attest::new_root()?;
        let (f9_key, f9_cert) = attest::new_f9(&root_key)?;
        let mut p = Persistent {
            pin: pad8(DEFAULT_PIN),
            puk: pad8(DEFAULT_PUK),
            pin_default: true,
            puk_default: true,
            pin_total: 3,
            pin_left: 3,
            puk_total: 3,
            puk_left: 3,
            mgm_alg: default_mgm_alg(fw),
            mgm_key: Zeroizing::new(mgmkey::DEFAULT_KEY.to_vec()),
            mgm_touch: false,
            mgm_default: true,
            keys: BTreeMap::new(),
            objects: BTreeMap::new(),
            root_key,
            root_cert,
        };
        p.keys.insert(
            SLOT_ATTESTATION,
            SlotKey {
                key: f9_key,
                pin_policy: 1,
                touch_policy: 1,
                origin: ORIGIN_IMPORTED,
            },
        );
        p.objects
            .insert(OBJ_ATTESTATION_CERT, certificate_object(&f9_cert));
        Ok(p)
    }

    /// PIV RESET (`FB`): factory PIN/PUK/retries/management key, user keys and objects gone;
    /// the attestation key and certificate stay, as on a real YubiKey.
    pub fn reset_piv(&mut self, fw: Firmware) {
        self.pin = pad8(DEFAULT_PIN);
        self.puk = pad8(DEFAULT_PUK);
        self.pin_default = true;
        self.puk_default = true;
        self.pin_total = 3;
        self.pin_left = 3;
        self.puk_total = 3;
        self.puk_left = 3;
        self.mgm_alg = default_mgm_alg(fw);
        self.mgm_key = Zeroizing::new(mgmkey::DEFAULT_KEY.to_vec());
        self.mgm_touch = false;
        self.mgm_default = true;
        self.keys.retain(|slot, _| *slot == SLOT_ATTESTATION);
        self.objects.retain(|id, _| *id == OBJ_ATTESTATION_CERT);
    }

    /// Loads the state file, or creates it with factory defaults if it does not exist.
    ///
    /// # Errors
    /// `StateError` if the file cannot be read, parsed or written.
    pub fn load_or_create(path: &Path, fw: Firmware) -> Result<Persistent, StateError> {
        let name = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => {
                let file: StateFile = serde_json::from_slice(&bytes)
                    .map_err(|source| StateError::Json { path: name, source })?;
                Persistent::from_file(file)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let p = Persistent::factory(fw)?;
                p.save(path)?;
                Ok(p)
            }
            Err(source) => Err(StateError::Io { path: name, source }),
        }
    }

    /// Writes the state file atomically (temporary file + rename).
    ///
    /// # Errors
    /// `StateError` if encoding or writing fails.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let name = path.display().to_string();
        let json = Zeroizing::new(serde_json::to_vec_pretty(&self.to_file()?).map_err(
            |source| StateError::Json {
                path: name.clone(),
                source,
            },
        )?);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json.as_slice()).map_err(|source| StateError::Io {
            path: name.clone(),
            source,
        })?;
        std::fs::rename(&tmp, path).map_err(|source| StateError::Io { path: name, source })
    }

    fn to_file(&self) -> Result<StateFile, StateError> {
        let mut keys = BTreeMap::new();
        for (slot, k) in &self.keys {
            keys.insert(
                format!("{slot:02x}"),
                StoredSlotKey {
                    key: k.key.to_stored()?,
                    pin_policy: k.pin_policy,
                    touch_policy: k.touch_policy,
                    origin: k.origin,
                },
            );
        }
        Ok(StateFile {
            pin: hex::encode(self.pin.as_slice()),
            puk: hex::encode(self.puk.as_slice()),
            pin_default: self.pin_default,
            puk_default: self.puk_default,
            pin_total: self.pin_total,
            pin_left: self.pin_left,
            puk_total: self.puk_total,
            puk_left: self.puk_left,
            mgm_alg: self.mgm_alg,
            mgm_key: hex::encode(self.mgm_key.as_slice()),
            mgm_touch: self.mgm_touch,
            mgm_default: self.mgm_default,
            keys,
            objects: self
                .objects
                .iter()
                .map(|(id, v)| (format!("{id:06x}"), hex::encode(v)))
                .collect(),
            root_key: self.root_key.to_stored()?,
            root_cert: hex::encode(&self.root_cert),
        })
    }

    fn from_file(f: StateFile) -> Result<Persistent, StateError> {
        let h = |s: &str, field| hex::decode(s).map_err(|_| StateError::Field(field));
        let mut keys = BTreeMap::new();
        for (slot, k) in &f.keys {
            let slot = u8::from_str_radix(slot, 16).map_err(|_| StateError::Field("keys"))?;
            keys.insert(
                slot,
                SlotKey {
                    key: PrivateKey::from_stored(&k.key)?,
                    pin_policy: k.pin_policy,
                    touch_policy: k.touch_policy,
                    origin: k.origin,
                },
            );
        }
        let mut objects = BTreeMap::new();
        for (id, v) in &f.objects {
            let id = u32::from_str_radix(id, 16).map_err(|_| StateError::Field("objects"))?;
            objects.insert(id, h(v, "objects")?);
        }
        Ok(Persistent {
            pin: Zeroizing::new(h(&f.pin, "pin")?),
            puk: Zeroizing::new(h(&f.puk, "puk")?),
            pin_default: f.pin_default,
            puk_default: f.puk_default,
            pin_total: f.pin_total,
            pin_left: f.pin_left,
            puk_total: f.puk_total,
            puk_left: f.puk_left,
            mgm_alg: f.mgm_alg,
            mgm_key: Zeroizing::new(h(&f.mgm_key, "mgm_key")?),
            mgm_touch: f.mgm_touch,
            mgm_default: f.mgm_default,
            keys,
            objects,
            root_key: PrivateKey::from_stored(&f.root_key)?,
            root_cert: h(&f.root_cert, "root_cert")?,
        })
    }
}

/// JSON form of `Persistent`. Secrets are stored in hex in the clear: this is a test fixture.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    pin: String,
    puk: String,
    pin_default: bool,
    puk_default: bool,
    pin_total: u8,
    pin_left: u8,
    puk_total: u8,
    puk_left: u8,
    mgm_alg: MgmAlgorithm,
    mgm_key: String,
    mgm_touch: bool,
    mgm_default: bool,
    keys: BTreeMap<String, StoredSlotKey>,
    objects: BTreeMap<String, String>,
    root_key: StoredKey,
    root_cert: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSlotKey {
    key: StoredKey,
    pin_policy: u8,
    touch_policy: u8,
    origin: u8,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Algorithm;

    #[test]
    fn factory_save_load_roundtrip() {
        let dir = std::env::temp_dir().join(format!("vyk-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let _ = std::fs::remove_file(&path);
        let mut p = Persistent::load_or_create(&path, Firmware(5, 7, 1)).unwrap();
        assert_eq!(p.mgm_alg, MgmAlgorithm::Aes192);
        assert!(p.objects.contains_key(&OBJ_ATTESTATION_CERT));
        p.keys.insert(
            0x9a,
            SlotKey {
                key: PrivateKey::generate(Algorithm::EccP256).unwrap(),
                pin_policy: 2,
                touch_policy: 1,
                origin: 1,
            },
        );
        p.pin_left = 1;
        p.save(&path).unwrap();
        let q = Persistent::load_or_create(&path, Firmware(5, 4, 3)).unwrap();
        assert_eq!(q.pin_left, 1);
        assert_eq!(
            q.mgm_alg,
            MgmAlgorithm::Aes192,
            "the file wins over the firmware default"
        );
        assert_eq!(
            q.keys[&0x9a].key.public_tlvs(),
            p.keys[&0x9a].key.public_tlvs()
        );
        assert_eq!(q.root_cert, p.root_cert);
        let mut q = q;
        q.reset_piv(Firmware(5, 4, 3));
        assert_eq!(q.mgm_alg, MgmAlgorithm::TripleDes);
        assert!(q.keys.contains_key(&SLOT_ATTESTATION) && !q.keys.contains_key(&0x9a));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
