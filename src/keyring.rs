//! The keyring: key names → versions → (backend key, public key, kid, state).
//!
//! The persistent state lives on the device as one small record per version (see
//! [`Backend::records`]), so a restart or a second sigild on the same token (or HSM cluster)
//! sees the same keyring without a database. The in-memory copy is what the signing path reads;
//! it is refreshed from the device before every change and periodically, and changes are
//! serialised within one process. The keyring knows whether it has ever been loaded: until
//! then it answers reads with [`KeyringError::NotLoaded`] rather than with an empty keyring.
//!
//! Depends on the backend contract and the pure JOSE layer (algorithms, thumbprints, JWKS);
//! never on gRPC or config files.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::backend::{
    Backend, BackendError, KeyId, KeyObject, KeySpec, PrivateKeyMaterial, Record,
};
use crate::crypto::{Curve, KeyKind, PublicKey};
use crate::jose::{self, Alg, JoseError};

/// Prefix of the device labels of sigild's records and keys.
const LABEL_PREFIX: &str = "sigild";

/// A validated key name: `[a-z0-9][a-z0-9._-]{0,63}`, so it is safe in labels, URIs and logs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyName(String);

impl KeyName {
    /// Validate a name.
    ///
    /// # Errors
    /// [`KeyringError::InvalidName`] explaining the rule.
    pub fn new(name: &str) -> Result<KeyName, KeyringError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().enumerate().all(|(i, c)| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || (i > 0 && matches!(c, b'.' | b'_' | b'-'))
            });
        if ok {
            Ok(KeyName(name.to_owned()))
        } else {
            Err(KeyringError::InvalidName(name.chars().take(80).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for KeyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lifecycle state of a key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published, not yet signing (pre-published before a rotation).
    Next,
    /// Signs; published.
    Active,
    /// Published until its tokens expire; never signs.
    Retired,
    /// Key pair destroyed; not published.
    Destroyed,
}

impl KeyState {
    /// Whether the version belongs in the JWKS.
    pub fn published(self) -> bool {
        matches!(self, KeyState::Next | KeyState::Active | KeyState::Retired)
    }

    /// Lower-case name, as in records and CLI output.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
            KeyState::Destroyed => "destroyed",
        }
    }
}

/// How a version's key pair came to be on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Generated on the device (the normal case).
    Generated,
    /// Imported from PKCS#8 (migration).
    Imported,
    /// Made by another tool and adopted by URI.
    Adopted,
}

impl Origin {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Generated => "generated",
            Origin::Imported => "imported",
            Origin::Adopted => "adopted",
        }
    }
}

/// What is stored on the device per version. Versioned by `format` so later releases can read
/// older records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionRecord {
    /// Record format, 1.
    format: u32,
    /// Key name.
    name: String,
    /// Version number, from 1.
    version: u32,
    /// Lifecycle state.
    state: KeyState,
    /// JOSE alg the version signs with.
    alg: String,
    /// FAPI 2.0 restrictions apply.
    fapi2: bool,
    /// Backend key id, hex.
    key_id: String,
    /// How the key pair got there.
    origin: Origin,
    /// Unix seconds.
    created_at: i64,
}

impl VersionRecord {
    /// The record that describes `v` as it is now.
    fn of(v: &VersionInfo) -> Self {
        VersionRecord {
            format: 1,
            name: v.name.0.clone(),
            version: v.version,
            state: v.state,
            alg: v.alg.name().to_owned(),
            fapi2: v.fapi2,
            key_id: v.key_id.to_hex(),
            origin: v.origin,
            created_at: v.created_at,
        }
    }
}

/// One version of a key, as the signing path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// The key's name.
    pub name: KeyName,
    /// Version number.
    pub version: u32,
    /// Lifecycle state.
    pub state: KeyState,
    /// The JOSE alg this version signs with by default.
    pub alg: Alg,
    /// FAPI 2.0 restrictions apply.
    pub fapi2: bool,
    /// Where it is on the backend.
    pub key_id: KeyId,
    /// Kind of key pair.
    pub kind: KeyKind,
    /// Public key read from the device.
    pub public: PublicKey,
    /// RFC 7638 thumbprint of the public JWK.
    pub kid: String,
    /// URI of the private key on the device.
    pub uri: String,
    /// How the key pair got there.
    pub origin: Origin,
    /// Unix seconds.
    pub created_at: i64,
    /// The device's attestation chain for the key pair (DER, leaf first); empty when none.
    pub attestation: Vec<Vec<u8>>,
}

impl VersionInfo {
    /// The JWKS entry with `x5c` = the attestation chain, or `None` without attestation.
    ///
    /// # Errors
    /// From the JOSE layer when the public key is malformed.
    pub fn jwk_with_x5c(&self) -> Result<Option<serde_json::Value>, JoseError> {
        use base64::Engine as _;
        if self.attestation.is_empty() {
            return Ok(None);
        }
        let mut jwk = self.jwk()?;
        if let serde_json::Value::Object(m) = &mut jwk {
            let chain = self
                .attestation
                .iter()
                .map(|c| base64::engine::general_purpose::STANDARD.encode(c).into())
                .collect();
            m.insert("x5c".into(), serde_json::Value::Array(chain));
        }
        Ok(Some(jwk))
    }

    /// The JWKS entry of this version (kty, key members, kid, alg, use=sig).
    ///
    /// # Errors
    /// From the JOSE layer when the public key is malformed.
    pub fn jwk(&self) -> Result<serde_json::Value, JoseError> {
        jose::jwks_entry(&self.public, &self.kid, self.alg)
    }
}

/// A key and its versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// Name.
    pub name: KeyName,
    /// FAPI 2.0 mode (from the newest version).
    pub fapi2: bool,
    /// Versions by number, oldest first.
    pub versions: Vec<Arc<VersionInfo>>,
}

impl KeyInfo {
    /// The version that signs now.
    pub fn active(&self) -> Option<&Arc<VersionInfo>> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state == KeyState::Active)
    }
}

/// Why a keyring operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The name breaks the naming rule.
    #[error("invalid key name {0:?}: use 1-64 of a-z 0-9 . _ - starting with a letter or digit")]
    InvalidName(String),
    /// No key by that name.
    #[error("no key named {0:?}")]
    KeyNotFound(String),
    /// No such version.
    #[error("key {name:?} has no version {version}")]
    VersionNotFound {
        /// Key name.
        name: String,
        /// Version asked for.
        version: u32,
    },
    /// A key by that name exists already.
    #[error("a key named {0:?} already exists; use rotate to add a version")]
    AlreadyExists(String),
    /// The key has no active version.
    #[error("key {0:?} has no active version (activate one)")]
    NoActiveVersion(String),
    /// The state change is not allowed from the version's state.
    #[error("key {name:?} version {version} is {state}; {why}")]
    InvalidState {
        /// Key name.
        name: String,
        /// Version.
        version: u32,
        /// Its state.
        state: &'static str,
        /// What would be allowed.
        why: &'static str,
    },
    /// An RSA size sigild does not generate.
    #[error("RSA key size {0}: sigild generates 2048, 3072 or 4096 bits")]
    UnsupportedKeySize(u32),
    /// Algorithm problems (unknown alg, alg does not fit the key, FAPI refusal).
    #[error(transparent)]
    Jose(#[from] JoseError),
    /// The device failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The keyring has not been loaded from the device since start-up, so what it holds is
    /// unknown (not empty).
    #[error("the keyring has not been loaded from the device yet ({why})")]
    NotLoaded {
        /// Why: the last refresh's failure, or that none has run.
        why: String,
    },
    /// A record on the device could not be written as JSON.
    #[error("cannot encode keyring record: {0}")]
    Encode(String),
    /// A certificate chain that cannot be attached (empty, unparsable, leaf for another key).
    #[error("certificate chain for key {name:?} version {version}: {why}")]
    InvalidChain {
        /// Key name.
        name: String,
        /// Version.
        version: u32,
        /// What is wrong.
        why: String,
    },
    /// No certificate chain is attached to the version.
    #[error("key {name:?} version {version} has no certificate chain attached")]
    NoChain {
        /// Key name.
        name: String,
        /// Version.
        version: u32,
    },
}

/// A version's certificate chain as stored on the device (`sigild/chain/<name>/<version>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainRecord {
    /// Record format, 1.
    format: u32,
    /// DER certificates, leaf first, base64url.
    certificates: Vec<String>,
}

/// How the in-memory keyring relates to what the device holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Never loaded: the device has not been readable since start-up. `why` is the last
    /// refresh's failure, `None` before any refresh ran.
    NeverLoaded {
        /// The last refresh's failure.
        why: Option<String>,
    },
    /// The last refresh succeeded.
    Current,
    /// Loaded before, but the last refresh failed (device unavailable, records vanished): the
    /// last known keyring is served, so the JWKS stays stable.
    Stale {
        /// The last refresh's failure.
        why: String,
    },
}

impl Freshness {
    /// The state after a refresh that ended with `outcome`.
    fn after(&self, outcome: Result<(), &KeyringError>) -> Freshness {
        match (self, outcome) {
            (_, Ok(())) => Freshness::Current,
            (Freshness::NeverLoaded { .. }, Err(e)) => Freshness::NeverLoaded {
                why: Some(e.to_string()),
            },
            (Freshness::Current | Freshness::Stale { .. }, Err(e)) => {
                Freshness::Stale { why: e.to_string() }
            }
        }
    }

    /// Whether reads may be answered: the keyring was loaded at least once.
    fn check_loaded(&self) -> Result<(), KeyringError> {
        match self {
            Freshness::NeverLoaded { why } => Err(KeyringError::NotLoaded {
                why: why
                    .clone()
                    .unwrap_or_else(|| "the device has not been readable since start-up".into()),
            }),
            Freshness::Current | Freshness::Stale { .. } => Ok(()),
        }
    }
}

/// The key names → versions map, kept on and refreshed from one backend.
pub struct Keyring {
    /// The device that holds keys and records.
    backend: Arc<dyn Backend>,
    /// The current view, read by every signature.
    keys: RwLock<BTreeMap<KeyName, KeyInfo>>,
    /// Whether `keys` was ever loaded and how the last refresh went.
    freshness: RwLock<Freshness>,
    /// Serialises changes (and refreshes) within this process.
    admin: tokio::sync::Mutex<()>,
}

impl Keyring {
    /// An empty keyring on `backend`; call [`Keyring::refresh`] to load it.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Keyring {
            backend,
            keys: RwLock::new(BTreeMap::new()),
            freshness: RwLock::new(Freshness::NeverLoaded { why: None }),
            admin: tokio::sync::Mutex::new(()),
        }
    }

    /// The backend holding the keys.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Reload the keyring from the device (other replicas may have changed it).
    ///
    /// # Errors
    /// Backend errors. Records that cannot be parsed or keys that are gone are logged and
    /// skipped, so one bad record does not take the whole keyring down.
    pub async fn refresh(&self) -> Result<(), KeyringError> {
        let _guard = self.admin.lock().await;
        self.refresh_locked().await
    }

    /// Whether the keyring was ever loaded, and how the last refresh went.
    pub fn freshness(&self) -> Freshness {
        self.freshness
            .read()
            .map(|f| f.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Refresh, and note how it went.
    async fn refresh_locked(&self) -> Result<(), KeyringError> {
        let outcome = self.load().await;
        let mut freshness = self
            .freshness
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *freshness = freshness.after(outcome.as_ref().map(|_| ()));
        outcome
    }

    /// Read every record from the device and rebuild the in-memory keyring.
    async fn load(&self) -> Result<(), KeyringError> {
        let records = self.backend.records().await?;
        // Public keys already known are not read again.
        let known: HashMap<KeyId, Arc<VersionInfo>> = self
            .read_map()
            .values()
            .flat_map(|k| k.versions.iter())
            .map(|v| (v.key_id.clone(), Arc::clone(v)))
            .collect();
        let mut parsed: BTreeMap<KeyName, BTreeMap<u32, VersionRecord>> = BTreeMap::new();
        for rec in records {
            if !rec.label.starts_with(&format!("{LABEL_PREFIX}/keyring/")) {
                continue;
            }
            match serde_json::from_slice::<VersionRecord>(&rec.value) {
                Ok(r) if r.format == 1 => match KeyName::new(&r.name) {
                    Ok(name) => {
                        parsed.entry(name).or_default().insert(r.version, r);
                    }
                    Err(e) => {
                        tracing::error!(label = %rec.label, error = %e, "skipping keyring record")
                    }
                },
                Ok(r) => {
                    tracing::error!(label = %rec.label, format = r.format, "unknown keyring record format")
                }
                Err(e) => {
                    tracing::error!(label = %rec.label, error = %e, "unreadable keyring record")
                }
            }
        }
        // Records are never deleted (destroyed versions keep theirs), so a known version whose
        // record is gone means the device is not showing what it holds (a fault, a partition
        // being restored): keep serving the last known keyring, and so a stable JWKS, rather
        // than unpublishing keys whose tokens are still in use.
        let vanished: Vec<String> = known
            .values()
            .filter(|v| {
                !parsed
                    .get(&v.name)
                    .is_some_and(|vs| vs.contains_key(&v.version))
            })
            .map(|v| format!("{}/{}", v.name, v.version))
            .collect();
        if !vanished.is_empty() {
            tracing::error!(
                versions = ?vanished,
                "keyring records disappeared from the device; keeping the last known keyring"
            );
            return Err(KeyringError::Backend(BackendError::Unavailable(
                "keyring records disappeared from the device".into(),
            )));
        }
        let mut map = BTreeMap::new();
        for (name, versions) in parsed {
            let mut infos: Vec<Arc<VersionInfo>> = Vec::new();
            let newest_active = versions
                .values()
                .rev()
                .find(|r| r.state == KeyState::Active)
                .map(|r| r.version);
            for rec in versions.values() {
                match self
                    .version_from_record(&name, rec, &known, newest_active)
                    .await
                {
                    Ok(v) => infos.push(v),
                    // The device could not answer for this key right now: a keyring without
                    // the version (its key with no active version, its kid gone from the
                    // JWKS) must never be served. Keep the last known one; the next refresh
                    // retries.
                    Err(KeyringError::Backend(e)) if !matches!(e, BackendError::KeyNotFound(_)) => {
                        tracing::warn!(key = %name, version = rec.version, error = %e, "cannot read a key version from the device; keeping the last known keyring");
                        return Err(KeyringError::Backend(e));
                    }
                    // The record itself is unusable, or its key is gone from the device: skip
                    // that version so one bad record does not take the whole keyring down.
                    Err(e) => {
                        tracing::error!(key = %name, version = rec.version, error = %e, "keyring version unavailable")
                    }
                }
            }
            let fapi2 = infos.last().is_some_and(|v| v.fapi2);
            map.insert(
                name.clone(),
                KeyInfo {
                    name,
                    fapi2,
                    versions: infos,
                },
            );
        }
        *self.keys.write().map_err(|_| poisoned())? = map;
        Ok(())
    }

    async fn version_from_record(
        &self,
        name: &KeyName,
        rec: &VersionRecord,
        known: &HashMap<KeyId, Arc<VersionInfo>>,
        newest_active: Option<u32>,
    ) -> Result<Arc<VersionInfo>, KeyringError> {
        let key_id = KeyId::from_hex(&rec.key_id)
            .ok_or_else(|| KeyringError::Encode(format!("bad key id in record {}", rec.version)))?;
        let alg = Alg::parse(&rec.alg)?;
        // Two active versions can only follow a crash half-way through an activation: the
        // newest wins and the other is treated as retired.
        let state = match rec.state {
            KeyState::Active if Some(rec.version) != newest_active => KeyState::Retired,
            s => s,
        };
        let (public, uri, attestation) = match known.get(&key_id) {
            Some(v) => (v.public.clone(), v.uri.clone(), v.attestation.clone()),
            None if state == KeyState::Destroyed => (
                PublicKey::Ed25519 { x: Vec::new() },
                String::new(),
                Vec::new(),
            ),
            None => {
                let obj = self.backend.key(&key_id).await?;
                // Attestation is metadata: a device that cannot give it must not hide the key.
                let attestation = match self.backend.attestation(&key_id).await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(key = %name, version = rec.version, error = %e, "no attestation");
                        Vec::new()
                    }
                };
                (obj.public, obj.uri, attestation)
            }
        };
        let kind = public.kind();
        let kid = if state == KeyState::Destroyed && uri.is_empty() {
            String::new()
        } else {
            jose::thumbprint(&public)
        };
        Ok(Arc::new(VersionInfo {
            name: name.clone(),
            version: rec.version,
            state,
            alg,
            fapi2: rec.fapi2,
            key_id,
            kind,
            public,
            kid,
            uri,
            origin: rec.origin,
            created_at: rec.created_at,
            attestation,
        }))
    }

    fn read_map(&self) -> BTreeMap<KeyName, KeyInfo> {
        self.keys.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// The in-memory keyring for a read, once it has been loaded.
    fn loaded(
        &self,
    ) -> Result<std::sync::RwLockReadGuard<'_, BTreeMap<KeyName, KeyInfo>>, KeyringError> {
        self.freshness
            .read()
            .map_err(|_| poisoned())?
            .check_loaded()?;
        self.keys.read().map_err(|_| poisoned())
    }

    /// The version of `name` that signs now. Cheap: a map lookup under a read lock.
    ///
    /// # Errors
    /// [`KeyringError::KeyNotFound`] or [`KeyringError::NoActiveVersion`];
    /// [`KeyringError::NotLoaded`].
    pub fn active(&self, name: &str) -> Result<Arc<VersionInfo>, KeyringError> {
        let not_found = || KeyringError::KeyNotFound(name.to_owned());
        let map = self.loaded()?;
        let key_name = KeyName::new(name).map_err(|_| not_found())?;
        let key = map.get(&key_name).ok_or_else(not_found)?;
        key.active()
            .cloned()
            .ok_or_else(|| KeyringError::NoActiveVersion(name.to_owned()))
    }

    /// One key with its versions.
    ///
    /// # Errors
    /// [`KeyringError::KeyNotFound`]; [`KeyringError::NotLoaded`].
    pub fn get(&self, name: &str) -> Result<KeyInfo, KeyringError> {
        let map = self.loaded()?;
        let name = KeyName::new(name).map_err(|_| KeyringError::KeyNotFound(name.to_owned()))?;
        map.get(&name)
            .cloned()
            .ok_or(KeyringError::KeyNotFound(name.0))
    }

    /// Every key.
    ///
    /// # Errors
    /// [`KeyringError::NotLoaded`]: an empty list would claim the device holds no keys.
    pub fn list(&self) -> Result<Vec<KeyInfo>, KeyringError> {
        Ok(self.loaded()?.values().cloned().collect())
    }

    /// The JWK Set of every published version, without duplicate kids.
    ///
    /// # Errors
    /// From the JOSE layer; [`KeyringError::NotLoaded`].
    pub fn jwks(&self) -> Result<serde_json::Value, KeyringError> {
        let map = self.loaded()?;
        let entries = map
            .values()
            .flat_map(|k| k.versions.iter())
            .filter(|v| v.state.published())
            .map(|v| v.jwk())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(jose::jwks(entries)?)
    }

    /// Generate a new key; its version 1 is active at once.
    ///
    /// # Errors
    /// Name, alg, FAPI and backend errors; [`KeyringError::AlreadyExists`].
    pub async fn create(
        &self,
        name: &str,
        alg: Alg,
        rsa_bits: u32,
        fapi2: bool,
        now: i64,
    ) -> Result<KeyInfo, KeyringError> {
        let name = KeyName::new(name)?;
        let kind = kind_for(alg, rsa_bits)?;
        jose::check_alg(alg, kind, fapi2)?;
        let _guard = self.admin.lock().await;
        self.refresh_locked().await?;
        self.ensure_absent(&name)?;
        let obj = self
            .backend
            .generate(KeySpec {
                kind,
                label: device_label(&name, 1),
            })
            .await?;
        self.add_version(
            &name,
            1,
            KeyState::Active,
            alg,
            fapi2,
            Origin::Generated,
            obj,
            now,
        )
        .await
    }

    /// Import PKCS#8 key material as version 1 of a new key (migration).
    ///
    /// # Errors
    /// As for [`Keyring::create`], plus import errors.
    pub async fn import(
        &self,
        name: &str,
        alg: Alg,
        fapi2: bool,
        material: PrivateKeyMaterial,
        now: i64,
    ) -> Result<KeyInfo, KeyringError> {
        let name = KeyName::new(name)?;
        jose::check_alg(alg, material.public().kind(), fapi2)?;
        let _guard = self.admin.lock().await;
        self.refresh_locked().await?;
        self.ensure_absent(&name)?;
        let obj = self
            .backend
            .import(device_label(&name, 1), material)
            .await?;
        self.add_version(
            &name,
            1,
            KeyState::Active,
            alg,
            fapi2,
            Origin::Imported,
            obj,
            now,
        )
        .await
    }

    /// Adopt a key pair made by another tool as version 1 of a new key.
    ///
    /// # Errors
    /// As for [`Keyring::create`], plus URI errors.
    pub async fn adopt(
        &self,
        name: &str,
        alg: Alg,
        fapi2: bool,
        uri: &str,
        now: i64,
    ) -> Result<KeyInfo, KeyringError> {
        let name = KeyName::new(name)?;
        let _guard = self.admin.lock().await;
        self.refresh_locked().await?;
        self.ensure_absent(&name)?;
        let obj = self.backend.adopt(uri.to_owned()).await?;
        // Compare what the URI resolved to, not its text: many URIs name one key pair.
        let in_use = self
            .read_map()
            .values()
            .flat_map(|k| k.versions.clone())
            .find(|v| v.state != KeyState::Destroyed && v.key_id == obj.id);
        if let Some(v) = in_use {
            return Err(KeyringError::AlreadyExists(format!(
                "{} version {} (already holds that key pair)",
                v.name, v.version
            )));
        }
        jose::check_alg(alg, obj.public.kind(), fapi2)?;
        self.add_version(
            &name,
            1,
            KeyState::Active,
            alg,
            fapi2,
            Origin::Adopted,
            obj,
            now,
        )
        .await
    }

    /// Add a version in state `next`, with the same alg unless another is given.
    ///
    /// # Errors
    /// [`KeyringError::KeyNotFound`], alg/FAPI and backend errors.
    pub async fn rotate(
        &self,
        name: &str,
        alg: Option<Alg>,
        rsa_bits: u32,
        now: i64,
    ) -> Result<KeyInfo, KeyringError> {
        let _guard = self.admin.lock().await;
        self.refresh_locked().await?;
        let key = self.get(name)?;
        let newest = key
            .versions
            .last()
            .ok_or_else(|| KeyringError::KeyNotFound(name.to_owned()))?;
        let alg = alg.unwrap_or(newest.alg);
        let bits = match (rsa_bits, newest.kind) {
            (0, KeyKind::Rsa { bits }) => bits,
            (b, _) => b,
        };
        let kind = kind_for(alg, bits)?;
        jose::check_alg(alg, kind, key.fapi2)?;
        let version = newest.version + 1;
        let obj = self
            .backend
            .generate(KeySpec {
                kind,
                label: device_label(&key.name, version),
            })
            .await?;
        self.add_version(
            &key.name,
            version,
            KeyState::Next,
            alg,
            key.fapi2,
            Origin::Generated,
            obj,
            now,
        )
        .await
    }

    /// Make `version` (0 = the newest `next`) active; the previous active version is retired.
    ///
    /// # Errors
    /// Not found, or the version is not `next`/`retired`.
    pub async fn activate(&self, name: &str, version: u32) -> Result<KeyInfo, KeyringError> {
        let _guard = self.admin.lock().await;
        self.refresh_locked().await?;
        let key = self.get(name)?;
        let target = if version == 0 {
            key.versions
                .iter()
                .rev()
                .find(|v| v.state == KeyState::Next)
                .cloned()
                .ok_or_else(|| KeyringError::InvalidState {
                    name: name.to_owned(),
                    version: key.active().map(|v| v.version).unwrap_or_default(),
                    state: "active",
                    why: "there is no `next` version to activate (rotate first)",
                })?
        } else {
            find_version(&key, version)?
        };
        require_state(
            &target,
            &[KeyState::Next, KeyState::Retired],
            "only a `next` or `retired` version can be activated",
        )?;
        let previous = key.active().cloned();
        // New active first: a crash in between leaves two actives, which load resolves to the
        // newest, never zero.
        self.set_state(&target, KeyState::Active).await?;
        if let Some(prev) = previous {
            self.set_state(&prev, KeyState::Retired).await?;
        }
        self.refresh_locked().await?;
        self.get(name)
    }

    /// Retire `version` (0 = the active one): it stops signing and stays published.
    ///
    /// # Errors
    /// Not found, or the version is already retired or destroyed.
    pub async fn retire(&self, name: &str, version: u32) -> Result<KeyInfo, KeyringError> {
        let _guard = self.admin.lock().await;
        self.refresh_locked().await?;
        let key = self.get(name)?;
        let target = if version == 0 {
            key.active()
                .cloned()
                .ok_or_else(|| KeyringError::NoActiveVersion(name.to_owned()))?
        } else {
            find_version(&key, version)?
        };
        require_state(
            &target,
            &[KeyState::Next, KeyState::Active],
            "only a `next` or `active` version can be retired",
        )?;
        self.set_state(&target, KeyState::Retired).await?;
        self.refresh_locked().await?;
        self.get(name)
    }

    /// Destroy `version`'s key pair on the device. The active version cannot be destroyed.
    ///
    /// # Errors
    /// Not found, active, or already destroyed.
    pub async fn destroy(&self, name: &str, version: u32) -> Result<KeyInfo, KeyringError> {
        let _guard = self.admin.lock().await;
        self.refresh_locked().await?;
        let key = self.get(name)?;
        let target = find_version(&key, version)?;
        require_state(
            &target,
            &[KeyState::Next, KeyState::Retired],
            "retire it first; only `next` or `retired` versions can be destroyed",
        )?;
        // Record first: a crash after it leaves an orphan key pair (visible in vendor tools),
        // never a published key that cannot sign.
        self.set_state(&target, KeyState::Destroyed).await?;
        match self.backend.destroy(&target.key_id).await {
            Ok(()) | Err(BackendError::KeyNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.refresh_locked().await?;
        self.get(name)
    }

    fn ensure_absent(&self, name: &KeyName) -> Result<(), KeyringError> {
        if self.read_map().contains_key(name) {
            return Err(KeyringError::AlreadyExists(name.0.clone()));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn add_version(
        &self,
        name: &KeyName,
        version: u32,
        state: KeyState,
        alg: Alg,
        fapi2: bool,
        origin: Origin,
        obj: KeyObject,
        now: i64,
    ) -> Result<KeyInfo, KeyringError> {
        let rec = VersionRecord {
            format: 1,
            name: name.0.clone(),
            version,
            state,
            alg: alg.name().to_owned(),
            fapi2,
            key_id: obj.id.to_hex(),
            origin,
            created_at: now,
        };
        if let Err(e) = self.put(&rec).await {
            // No record, no key: do not leave an unreachable key pair behind.
            let _ = self.backend.destroy(&obj.id).await;
            return Err(e);
        }
        self.refresh_locked().await?;
        self.get(name.as_str())
    }

    async fn set_state(&self, v: &VersionInfo, state: KeyState) -> Result<(), KeyringError> {
        self.put(&VersionRecord {
            state,
            ..VersionRecord::of(v)
        })
        .await
    }

    /// The version `version` of `name` (0: the active one).
    fn version_or_active(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Arc<VersionInfo>, KeyringError> {
        if version == 0 {
            self.active(name)
        } else {
            find_version(&self.get(name)?, version)
        }
    }

    /// Attach a certificate chain (DER, leaf first) to a version, on the device next to its
    /// record so every replica serves it. The leaf must be for the version's public key.
    /// Returns the version.
    ///
    /// # Errors
    /// Not found; [`KeyringError::InvalidChain`]; device errors.
    pub async fn set_chain(
        &self,
        name: &str,
        version: u32,
        chain: &[Vec<u8>],
    ) -> Result<u32, KeyringError> {
        let _guard = self.admin.lock().await;
        let v = self.version_or_active(name, version)?;
        let invalid = |why: String| KeyringError::InvalidChain {
            name: name.to_owned(),
            version: v.version,
            why,
        };
        let leaf = chain
            .first()
            .ok_or_else(|| invalid("no certificates".into()))?;
        for c in chain {
            <x509_cert::Certificate as x509_cert::der::Decode>::from_der(c)
                .map_err(|e| invalid(format!("a certificate does not parse: {e}")))?;
        }
        if !crate::tls::certificate_is_for(leaf, &v.public).map_err(|e| invalid(e.to_string()))? {
            return Err(invalid(
                "the leaf certificate is for a different public key".into(),
            ));
        }
        let rec = ChainRecord {
            format: 1,
            certificates: chain.iter().map(|c| jose::b64(c)).collect(),
        };
        let value = serde_json::to_vec(&rec).map_err(|e| KeyringError::Encode(e.to_string()))?;
        self.backend
            .put_record(Record {
                label: chain_label(&v.name, v.version),
                value,
            })
            .await?;
        Ok(v.version)
    }

    /// The certificate chain attached to a version (0: the active one), with the version.
    ///
    /// # Errors
    /// Not found, [`KeyringError::NoChain`], device errors.
    pub async fn chain(
        &self,
        name: &str,
        version: u32,
    ) -> Result<(u32, Vec<Vec<u8>>), KeyringError> {
        let v = self.version_or_active(name, version)?;
        let label = chain_label(&v.name, v.version);
        let no_chain = || KeyringError::NoChain {
            name: name.to_owned(),
            version: v.version,
        };
        let rec = self
            .backend
            .records()
            .await?
            .into_iter()
            .find(|r| r.label == label)
            .ok_or_else(no_chain)?;
        let parsed: ChainRecord = serde_json::from_slice(&rec.value)
            .map_err(|e| KeyringError::Encode(format!("chain record {label}: {e}")))?;
        let certs = parsed
            .certificates
            .iter()
            .map(|c| jose::b64_decode(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| KeyringError::Encode(format!("chain record {label}: {e}")))?;
        Ok((v.version, certs))
    }

    async fn put(&self, rec: &VersionRecord) -> Result<(), KeyringError> {
        let value = serde_json::to_vec(rec).map_err(|e| KeyringError::Encode(e.to_string()))?;
        self.backend
            .put_record(Record {
                label: format!("{LABEL_PREFIX}/keyring/{}/{}", rec.name, rec.version),
                value,
            })
            .await?;
        Ok(())
    }
}

/// Refuse a state change unless `v` is in one of the `allowed` states.
fn require_state(
    v: &VersionInfo,
    allowed: &[KeyState],
    why: &'static str,
) -> Result<(), KeyringError> {
    if allowed.contains(&v.state) {
        return Ok(());
    }
    Err(KeyringError::InvalidState {
        name: v.name.to_string(),
        version: v.version,
        state: v.state.as_str(),
        why,
    })
}

fn find_version(key: &KeyInfo, version: u32) -> Result<Arc<VersionInfo>, KeyringError> {
    key.versions
        .iter()
        .find(|v| v.version == version)
        .cloned()
        .ok_or_else(|| KeyringError::VersionNotFound {
            name: key.name.0.clone(),
            version,
        })
}

/// The device label of a version's certificate chain record.
fn chain_label(name: &KeyName, version: u32) -> String {
    format!("{LABEL_PREFIX}/chain/{name}/{version}")
}

/// The device label of a version's key pair: what `pkcs11-tool --list-objects` shows.
fn device_label(name: &KeyName, version: u32) -> String {
    format!("{LABEL_PREFIX}/{name}/v{version}")
}

/// The key kind to generate for an alg (RSA size from `rsa_bits`, 0 = 2048).
///
/// # Errors
/// [`KeyringError::Jose`] for RSA sizes sigild does not generate.
pub fn kind_for(alg: Alg, rsa_bits: u32) -> Result<KeyKind, KeyringError> {
    Ok(match alg {
        Alg::Es256 => KeyKind::Ec(Curve::P256),
        Alg::Es384 => KeyKind::Ec(Curve::P384),
        Alg::EdDsa | Alg::Ed25519 => KeyKind::Ed25519,
        Alg::Ps256 | Alg::Ps384 | Alg::Rs256 => match rsa_bits {
            0 => KeyKind::Rsa { bits: 2048 },
            b @ (2048 | 3072 | 4096) => KeyKind::Rsa { bits: b },
            b => {
                return Err(KeyringError::UnsupportedKeySize(b));
            }
        },
    })
}

fn poisoned() -> KeyringError {
    KeyringError::Backend(BackendError::Device {
        function: "keyring".into(),
        code: "lock poisoned".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(KeyName::new("idp-signing.v2_a").is_ok());
        assert!(KeyName::new("").is_err());
        assert!(KeyName::new("-x").is_err());
        assert!(KeyName::new("Upper").is_err());
        assert!(KeyName::new("a/b").is_err());
        assert!(KeyName::new(&"a".repeat(65)).is_err());
    }

    #[test]
    fn record_round_trip_is_stable() -> Result<(), serde_json::Error> {
        let rec = VersionRecord {
            format: 1,
            name: "idp".into(),
            version: 2,
            state: KeyState::Next,
            alg: "PS256".into(),
            fapi2: true,
            key_id: "00ff".into(),
            origin: Origin::Generated,
            created_at: 1_700_000_000,
        };
        let json = serde_json::to_string(&rec)?;
        assert!(json.contains("\"state\":\"next\""));
        assert_eq!(serde_json::from_str::<VersionRecord>(&json)?, rec);
        Ok(())
    }

    #[test]
    fn kinds_for_algs() {
        assert!(matches!(
            kind_for(Alg::Ps256, 0),
            Ok(KeyKind::Rsa { bits: 2048 })
        ));
        assert!(matches!(
            kind_for(Alg::Rs256, 4096),
            Ok(KeyKind::Rsa { bits: 4096 })
        ));
        assert!(kind_for(Alg::Ps256, 1024).is_err());
        assert!(matches!(kind_for(Alg::EdDsa, 0), Ok(KeyKind::Ed25519)));
    }

    #[test]
    fn fapi_refuses_rs256() {
        // The one alg-vs-key check lives in the JOSE layer; the keyring's errors carry it.
        let refuse = |alg, kind, fapi2| -> Result<(), KeyringError> {
            Ok(jose::check_alg(alg, kind, fapi2)?)
        };
        assert!(refuse(Alg::Rs256, KeyKind::Rsa { bits: 2048 }, true).is_err());
        assert!(refuse(Alg::Rs256, KeyKind::Rsa { bits: 2048 }, false).is_ok());
        assert!(refuse(Alg::Es256, KeyKind::Ed25519, false).is_err());
    }

    #[test]
    fn reads_wait_for_the_first_load() {
        let down = KeyringError::Backend(BackendError::Unavailable("no token".into()));
        let never = Freshness::NeverLoaded { why: None };
        assert!(matches!(
            never.check_loaded(),
            Err(KeyringError::NotLoaded { why }) if why.contains("since start-up")
        ));
        // A failed refresh before the first load keeps it unloaded, with the reason.
        let still = never.after(Err(&down));
        assert!(matches!(
            still.check_loaded(),
            Err(KeyringError::NotLoaded { why }) if why.contains("no token")
        ));
        // Loaded once, a failed refresh leaves it stale but readable (the last known keyring).
        let current = still.after(Ok(()));
        assert_eq!(current, Freshness::Current);
        let stale = current.after(Err(&down));
        assert!(matches!(&stale, Freshness::Stale { why } if why.contains("no token")));
        assert!(stale.check_loaded().is_ok());
        assert_eq!(stale.after(Ok(())), Freshness::Current);
    }
}

#[cfg(test)]
#[path = "keyring_tests.rs"]
mod memory_tests;
