//! The PKCS#11 backend (crate `cryptoki`): any module loaded by path, one token selected by an
//! RFC 7512 URI, a bounded pool of worker threads ([`super::worker`]) each owning one logged-in
//! session.
//!
//! Owns: module loading, token resolution (by label/serial, re-resolved after faults because slot
//! ids change), login (once per token; a rejected PIN is never retried, since retries lock real
//! tokens), object templates, the private-key handle cache, metadata records as `CKO_DATA`
//! objects. Never touches JOSE, policy, gRPC or config files. Submodules: `token` (finding the
//! token, slot by slot, with reasons), `caps` (what its mechanisms allow, refused early),
//! `probe` (a one-shot check for `check-config`), `raw_info` (the one raw `C_GetTokenInfo`, the
//! library's only unsafe code), `objects` (templates and attributes), `decrypt` (OAEP and ECDH
//! on the token, failures folded into one error).
//!
//! Hot path per signature: one channel hop to a worker, one cached-handle lookup, one `C_Sign`.
//! No session is opened, no login made and no object searched per request. Decryption takes the
//! same path (one `C_Decrypt`, or `C_DeriveKey` + `C_GetAttributeValue` + `C_DestroyObject`).

mod caps;
mod decrypt;
mod objects;
mod probe;
pub mod provision;
mod raw_info;
mod token;
pub use crate::uri;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;

use super::worker::{Device, Failure, Fault, Pool, PoolSettings, Retry};
use super::{
    Backend, BackendError, BackendFuture, Checked, KeyId, KeyObject, KeySpec, PrivateKeyMaterial,
    Record, SignCheck, StoredKeyPair,
};
use crate::crypto::{DecryptOp, KeyKind, KeyPurpose, SignOp};
use crate::secret::{Secret, SecretBytes};
pub use caps::{Capabilities, SchemeSupport};
pub use probe::{Probe, probe};
pub use token::{SlotReport, TokenIdentity};
pub use uri::Pkcs11Uri;

/// Typed settings for one token. Built by the composition root from the config file.
#[derive(Debug)]
pub struct Pkcs11Settings {
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// Which token: label, serial, manufacturer and/or model from an RFC 7512 URI.
    pub token: Pkcs11Uri,
    /// The user PIN.
    pub pin: Secret,
    /// Number of worker threads, hence of logged-in sessions.
    pub workers: usize,
    /// Requests that may wait for a worker before callers get [`BackendError::Busy`].
    pub queue_depth: usize,
    /// Workers that may be left stuck inside the module at once (a `C_Sign` that never
    /// returns), each replaced by a new worker with its own session so the pool keeps its
    /// capacity (see [`PoolSettings::max_abandoned`]).
    pub max_abandoned_workers: usize,
}

/// How long past its deadline a job may still be inside the module before its worker counts
/// as stuck and is replaced: longer than a slow moment of a busy network HSM, short against
/// the signing timeout.
pub const STUCK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A PKCS#11 token behind a pool of session-owning workers.
pub struct Pkcs11Backend {
    /// State shared with the workers.
    shared: Arc<Shared>,
    /// The workers, each owning one session, behind the bounded queue.
    pool: Pool<Worker>,
}

/// What the workers share: the module, the token selector, the PIN and the caches.
struct Shared {
    /// The loaded module (initialised, or to be initialised again when that failed).
    ctx: Pkcs11,
    /// Where the module was loaded from, for messages and raw token information.
    module: PathBuf,
    /// Which token to use.
    selector: Pkcs11Uri,
    /// The user PIN, used for the (rare) logins.
    pin: Secret,
    /// The token's current slot and identity, cleared after a fault so it is found again.
    token: Mutex<Option<TokenRef>>,
    /// What the token last found can do (its mechanism list), checked before requests reach
    /// it; `None` until a token was found or when its list could not be read.
    caps: RwLock<Option<Arc<Capabilities>>>,
    /// Private-key handles by `CKA_ID`, so signing never searches objects.
    handles: RwLock<HashMap<KeyId, ObjectHandle>>,
    /// Set once the token refused the PIN: further logins would only burn retries.
    pin_rejected: AtomicBool,
    /// When the module was last re-initialised to look for a missing token (rate limit).
    last_reinit: Mutex<Option<std::time::Instant>>,
    /// Abandoned workers still inside the module (the pool's gauge, set once the pool runs):
    /// while any is, the module is never finalised, neither to re-initialise it nor at
    /// shutdown, since finalising under a running call crashes modules.
    stuck_inside: std::sync::OnceLock<Arc<std::sync::atomic::AtomicUsize>>,
}

/// Minimum time between two re-initialisations of the module while the token is missing.
const REINIT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Where the selected token is right now.
#[derive(Debug, Clone)]
struct TokenRef {
    /// Its slot (unstable across re-initialisation, hence re-resolved after faults).
    slot: Slot,
    /// Its label, for URIs.
    label: String,
    /// Its serial number, for URIs.
    serial: String,
}

/// A worker thread's state: its session, opened lazily and reopened after faults.
struct Worker {
    /// Shared state.
    shared: Arc<Shared>,
    /// The worker's logged-in session, `None` until first use or after a fault.
    session: Option<Session>,
}

/// A failure inside a worker: a raw PKCS#11 error (classified for retry) or one already mapped.
type Fail = Failure<CkError>;

impl From<CkError> for Fail {
    fn from(e: CkError) -> Self {
        Failure::Device(e)
    }
}

/// A logged-in session of its own on the token and one private key's handle, for signing
/// outside the worker pool (benchmarks compare the daemon against it).
pub struct DirectSigner {
    /// The session, used by this signer alone.
    session: Session,
    /// The private key's handle on `session`'s token.
    handle: ObjectHandle,
    /// The key's kind, for the mechanism and the result's normal form.
    kind: KeyKind,
}

impl DirectSigner {
    /// One signature, made exactly as a worker makes it (same mechanism, same normalised
    /// result), on this signer's own session.
    ///
    /// # Errors
    /// [`BackendError::InvalidRequest`] when `op` does not fit the key; device errors.
    pub fn sign(&self, op: &SignOp) -> Result<Vec<u8>, BackendError> {
        fits(self.kind, op)?;
        sign_on(&self.session, self.handle, self.kind, op).map_err(to_backend)
    }
}

/// A logged-in session of its own on the token and one decryption key's handle, for
/// decrypting outside the worker pool (benchmarks compare the daemon against it).
pub struct DirectDecrypter {
    /// The session, used by this decrypter alone.
    session: Session,
    /// The private key's handle on `session`'s token.
    handle: ObjectHandle,
    /// The key's `CKA_ID` (the OAEP probe finds the public object by it).
    id: KeyId,
    /// The key's kind.
    kind: KeyKind,
    /// The token's mechanisms and decisions, shared with the workers.
    caps: Option<Arc<Capabilities>>,
    /// Decisions made per call when the token's mechanisms could not be read.
    scratch: caps::Decisions,
}

impl DirectDecrypter {
    /// One decryption, made exactly as a worker makes it (same mechanisms, same host OAEP
    /// decoding where the token needs it), on this decrypter's own session.
    ///
    /// # Errors
    /// [`BackendError::InvalidRequest`] when `op` does not fit the key or the input does not
    /// decrypt (one message for every such case); device errors.
    pub fn decrypt(&self, op: &DecryptOp) -> Result<SecretBytes, BackendError> {
        fits_decrypt(self.kind, op)?;
        let view = decrypt::TokenView::of(self.caps.as_deref(), &self.scratch);
        decrypt::decrypt_on(&self.session, &view, self.handle, &self.id, self.kind, op)
            .map_err(to_backend)
    }
}

impl Pkcs11Backend {
    /// Load the module, start the workers and, when the token is present, log in once so a bad
    /// PIN or a missing token is reported at start-up rather than on the first request.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] when the module does not exist or cannot be loaded;
    /// [`BackendError::PinRejected`] / [`BackendError::PinLocked`] when the token refuses the
    /// PIN. A module whose `C_Initialize` fails (its daemon or service is down) or a token that
    /// is merely absent is not an error here: it is returned as the start-up issue, requests
    /// get `Unavailable`, and the workers initialise the module and find the token when they
    /// can.
    pub fn open(settings: Pkcs11Settings) -> Result<(Self, Option<BackendError>), BackendError> {
        let (ctx, init) = load_module(&settings.module)?;
        if let Err(e) = init {
            // Not fatal: the first connection below initialises again and reports the failure
            // with its likely cause as the start-up issue; later ones keep retrying.
            tracing::debug!(code = %ck_code(&e), "C_Initialize failed; retrying on first use");
        }
        let shared = Arc::new(Shared {
            ctx,
            module: settings.module.clone(),
            selector: settings.token,
            pin: settings.pin,
            token: Mutex::new(None),
            caps: RwLock::new(None),
            handles: RwLock::new(HashMap::new()),
            pin_rejected: AtomicBool::new(false),
            last_reinit: Mutex::new(None),
            stuck_inside: std::sync::OnceLock::new(),
        });
        let worker = {
            let shared = Arc::clone(&shared);
            move |_| Worker {
                shared: Arc::clone(&shared),
                session: None,
            }
        };
        let workers = (0..settings.workers.max(1)).map(&worker).collect();
        let pool = Pool::start(
            "pkcs11-worker",
            workers,
            PoolSettings {
                queue_depth: settings.queue_depth,
                max_abandoned: settings.max_abandoned_workers,
                grace: STUCK_GRACE,
            },
            Some(Box::new(worker)),
        )?;
        let _ = shared.stuck_inside.set(pool.abandoned_gauge());
        let backend = Pkcs11Backend { shared, pool };
        // Log in now, on this thread, with a throwaway session: the login is per token, so
        // the workers' sessions inherit it.
        let first = backend.shared.connect().map(drop);
        match first {
            Ok(()) => Ok((backend, None)),
            Err(e @ (BackendError::PinRejected(_) | BackendError::PinLocked)) => Err(e),
            Err(e) => Ok((backend, Some(e))),
        }
    }

    /// A signer with its own logged-in session and the handle of the private key `key`, outside
    /// the worker pool: benchmarks compare the daemon against it. Blocks on the device.
    ///
    /// # Errors
    /// [`BackendError::KeyNotFound`], or why no session could be opened.
    pub fn direct_signer(&self, key: &KeyId, kind: KeyKind) -> Result<DirectSigner, BackendError> {
        let session = self.shared.connect()?;
        let handle =
            objects::find_one(&session, ObjectClass::PRIVATE_KEY, key).map_err(to_backend)?;
        Ok(DirectSigner {
            session,
            handle,
            kind,
        })
    }

    /// A decrypter with its own logged-in session and the handle of the private key `key`,
    /// outside the worker pool: benchmarks compare the daemon against it. Blocks on the device.
    ///
    /// # Errors
    /// [`BackendError::KeyNotFound`], or why no session could be opened.
    pub fn direct_decrypter(
        &self,
        key: &KeyId,
        kind: KeyKind,
    ) -> Result<DirectDecrypter, BackendError> {
        let session = self.shared.connect()?;
        let handle =
            objects::find_one(&session, ObjectClass::PRIVATE_KEY, key).map_err(to_backend)?;
        Ok(DirectDecrypter {
            session,
            handle,
            id: key.clone(),
            kind,
            caps: self.shared.caps_now()?,
            scratch: caps::Decisions::default(),
        })
    }

    /// Queue one signature for a worker, answered by `deadline`, refused early when the
    /// token's mechanisms cannot make it (`fresh`: with the key handle and the worker's session
    /// renewed first, see [`Backend::sign_afresh`]).
    fn submit_sign(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: SignOp,
        deadline: Instant,
        fresh: bool,
    ) -> BackendFuture<Vec<u8>> {
        if let Err(e) = self.shared.capable(|c| c.check_sign(kind, &op)) {
            return Box::pin(async { Err(e) });
        }
        let key = key.clone();
        self.pool.submit_by(
            deadline,
            move || {
                BackendError::Unavailable(if fresh {
                    "the PKCS#11 token did not sign again before the deadline".into()
                } else {
                    "the PKCS#11 token did not sign before the deadline".into()
                })
            },
            move |w| {
                if fresh {
                    w.sign_afresh(&key, kind, &op)
                } else {
                    w.sign(&key, kind, &op)
                }
            },
        )
    }

    /// Queue one checked signature ([`Backend::sign_checked`]) for a worker: sign, check,
    /// and only when the check fails sign afresh and check again, all on that worker, which
    /// then wakes the caller once.
    fn submit_checked(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: SignOp,
        check: SignCheck,
        deadline: Instant,
    ) -> BackendFuture<Checked> {
        if let Err(e) = self.shared.capable(|c| c.check_sign(kind, &op)) {
            return Box::pin(async { Err(e) });
        }
        let key = key.clone();
        self.pool.submit_by(
            deadline,
            || {
                BackendError::Unavailable(
                    "the PKCS#11 token did not sign before the deadline".into(),
                )
            },
            move |w| {
                let signature = w.sign(&key, kind, &op)?;
                if check(&signature) {
                    return Ok(Checked::first(signature));
                }
                let signature = w.sign_afresh(&key, kind, &op)?;
                let passed = check(&signature);
                Ok(Checked::again(signature, passed))
            },
        )
    }

    /// Queue `f` for a worker, without a deadline: a full queue is answered at once.
    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Worker) -> Result<T, BackendError> + Send + 'static,
    ) -> BackendFuture<T> {
        self.pool.submit(f)
    }
}

/// Load the module and initialise it (a module another part of the process initialised
/// already is fine). A missing or unloadable module is an error; a failing `C_Initialize` is
/// returned beside the context, for the caller to decide whether it is fatal.
///
/// # Errors
/// [`BackendError::Unavailable`] when the module does not exist or cannot be loaded.
pub(super) fn load_module(module: &Path) -> Result<(Pkcs11, Result<(), CkError>), BackendError> {
    if !module.is_file() {
        return Err(BackendError::Unavailable(format!(
            "PKCS#11 module {} does not exist",
            module.display()
        )));
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        BackendError::Unavailable(format!(
            "cannot load PKCS#11 module {}: {e}",
            module.display()
        ))
    })?;
    let init = match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(e),
    };
    Ok((ctx, init))
}

impl Shared {
    /// Find the token's slot (cached) or search the slots for it. When no slot holds it, the
    /// module is re-initialised (at most every [`REINIT_INTERVAL`]) and searched again: many
    /// modules, SoftHSM among them, only discover tokens added after start-up that way.
    fn token(&self) -> Result<TokenRef, BackendError> {
        let mut cached = self.token.lock().map_err(|_| poisoned())?;
        if let Some(t) = cached.as_ref() {
            return Ok(t.clone());
        }
        match self.find_token() {
            Err(BackendError::Unavailable(why)) if !self.anyone_stuck() && self.may_reinit() => {
                tracing::info!(reason = %why, "re-initialising the PKCS#11 module to look for the token");
                // Every session of ours is on the missing token, so none is in use: closing
                // them all (C_Finalize) loses nothing. Workers reconnect and log in again.
                let _ = self.ctx.clone().finalize();
                match self
                    .ctx
                    .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
                {
                    Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
                    Err(e) => return Err(token::init_failure(&self.module, &e)),
                }
                let found = self.find_token()?;
                *cached = Some(found.clone());
                Ok(found)
            }
            Ok(found) => {
                *cached = Some(found.clone());
                Ok(found)
            }
            Err(e) => Err(e),
        }
    }

    /// Re-initialise the module now (if the rate limit allows), dropping every session and
    /// cached handle; `true` when it was done.
    fn force_reinit(&self) -> bool {
        let Ok(mut cached) = self.token.lock() else {
            return false;
        };
        if self.anyone_stuck() || !self.may_reinit() {
            return false;
        }
        tracing::warn!("re-initialising the PKCS#11 module after a key vanished from the token");
        // Sessions of other workers become invalid; their idempotent operations are retried
        // once after reconnecting (see `Device::run`).
        let _ = self.ctx.clone().finalize();
        let ok = self
            .ctx
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .is_ok();
        *cached = None;
        if let Ok(mut h) = self.handles.write() {
            h.clear();
        }
        ok
    }

    /// Whether an abandoned worker may still be inside the module: then it must not be
    /// finalised (re-initialising waits until the call returns).
    fn anyone_stuck(&self) -> bool {
        let stuck = self
            .stuck_inside
            .get()
            .map_or(0, |g| g.load(std::sync::atomic::Ordering::Acquire));
        if stuck > 0 {
            tracing::warn!(
                stuck,
                "not re-initialising the PKCS#11 module: a worker is still inside a call"
            );
        }
        stuck > 0
    }

    fn may_reinit(&self) -> bool {
        let Ok(mut last) = self.last_reinit.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < REINIT_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Search the module's slots for the one token matching the selector (see
    /// [`token::discover`]) and remember what it can do.
    fn find_token(&self) -> Result<TokenRef, BackendError> {
        let found = token::discover(
            &self.ctx,
            &self.module,
            &self.selector,
            &self.describe_selector(),
        )?;
        if let Ok(mut caps) = self.caps.write() {
            *caps = found.caps.map(Arc::new);
        }
        Ok(TokenRef {
            slot: found.slot,
            label: found.identity.label,
            serial: found.identity.serial,
        })
    }

    /// The token's capabilities as last read (`None` before it was found or when its list could
    /// not be read).
    fn caps_now(&self) -> Result<Option<Arc<Capabilities>>, BackendError> {
        Ok(self.caps.read().map_err(|_| poisoned())?.clone())
    }

    /// Refuse early what the token's mechanism list says it cannot do (no check before the
    /// token was first found: such requests fail as unavailable anyway).
    fn capable(
        &self,
        check: impl FnOnce(&Capabilities) -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        match self.caps.read() {
            Ok(caps) => caps.as_deref().map_or(Ok(()), check),
            Err(_) => Err(poisoned()),
        }
    }

    fn describe_selector(&self) -> String {
        describe(&self.selector)
    }

    /// Forget the slot and the handles after a fault: the token may come back elsewhere.
    fn invalidate(&self) {
        if let Ok(mut t) = self.token.lock() {
            *t = None;
        }
        if let Ok(mut h) = self.handles.write() {
            h.clear();
        }
    }

    /// Open a read-write session on the token and make sure the user is logged in.
    fn connect(&self) -> Result<Session, BackendError> {
        let token = self.token()?;
        let session = self.ctx.open_rw_session(token.slot).map_err(|e| {
            self.invalidate();
            BackendError::Unavailable(format!(
                "cannot open a session on {}: {}",
                self.describe_selector(),
                ck_code(&e)
            ))
        })?;
        let logged_in = session
            .get_session_info()
            .map(|i| i.session_state() == SessionState::RwUser)
            .unwrap_or(false);
        if !logged_in {
            self.login(&session)?;
        }
        Ok(session)
    }

    fn login(&self, session: &Session) -> Result<(), BackendError> {
        if self.pin_rejected.load(Ordering::Acquire) {
            return Err(BackendError::PinRejected(
                "rejected earlier; not retried to protect the token's retry counter".into(),
            ));
        }
        let pin = cryptoki::types::AuthPin::from(self.pin.expose().to_owned());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(CkError::Pkcs11(
                RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
                _,
            )) => {
                self.pin_rejected.store(true, Ordering::Release);
                Err(BackendError::PinRejected("CKR_PIN_INCORRECT".into()))
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                self.pin_rejected.store(true, Ordering::Release);
                Err(BackendError::PinLocked)
            }
            Err(e) => Err(BackendError::Unavailable(format!(
                "C_Login failed: {}",
                ck_code(&e)
            ))),
        }
    }

    /// The private-key handle for `id`, from the cache or found once and cached.
    fn private_handle(&self, session: &Session, id: &KeyId) -> Result<ObjectHandle, Fail> {
        if let Some(h) = self.handles.read().map_err(|_| poisoned())?.get(id) {
            return Ok(*h);
        }
        let h = objects::find_one(session, ObjectClass::PRIVATE_KEY, id)?;
        self.handles
            .write()
            .map_err(|_| poisoned())?
            .insert(id.clone(), h);
        Ok(h)
    }

    fn forget_handle(&self, id: &KeyId) {
        if let Ok(mut h) = self.handles.write() {
            h.remove(id);
        }
    }

    fn key_uri(&self, object: &str, id: &KeyId) -> String {
        match self.token.lock().ok().and_then(|t| t.clone()) {
            Some(t) => uri::key_uri(&t.label, Some(&t.serial), object, &id.0),
            None => uri::key_uri(
                self.selector.token.as_deref().unwrap_or_default(),
                self.selector.serial.as_deref(),
                object,
                &id.0,
            ),
        }
    }
}

impl Device for Worker {
    type Error = CkError;

    fn connect(&mut self) -> Result<(), BackendError> {
        if self.session.is_none() {
            self.session = Some(self.shared.connect()?);
        }
        Ok(())
    }

    fn disconnect(&mut self) {
        self.session = None;
        self.shared.invalidate();
    }

    fn fault(&self, e: &CkError) -> Fault {
        if is_session_gone(e) {
            Fault::ConnectionBeforeRun
        } else if is_session_fault(e) {
            Fault::Connection
        } else {
            Fault::Operation
        }
    }

    fn map_error(&self, e: &CkError) -> BackendError {
        map_ck(e)
    }
}

impl Worker {
    /// This worker's session and the shared state, inside [`Device::run`] (which connects
    /// first).
    fn parts(&self) -> Result<(&Session, &Shared), Fail> {
        match &self.session {
            Some(s) => Ok((s, &self.shared)),
            None => Err(BackendError::Unavailable("no PKCS#11 session".into()).into()),
        }
    }

    fn sign(&mut self, key: &KeyId, kind: KeyKind, op: &SignOp) -> Result<Vec<u8>, BackendError> {
        fits(kind, op)?;
        self.with_private_key(key, |session, _, handle| sign_on(session, handle, kind, op))
    }

    /// Run `f` with the private key `key` (its handle cached by `CKA_ID`) on this worker's
    /// session, as an idempotent operation (retried once on a fresh session after a session
    /// fault). A stale cached handle (key destroyed and re-created, token re-inserted) is
    /// looked up once more. Callers only use keys the keyring has seen on this token, so an
    /// absent key means the module's view is stale or the token is recovering: the module is
    /// re-initialised (rate-limited) and `f` retried once; if the key is really gone the retry
    /// says so.
    fn with_private_key<T>(
        &mut self,
        key: &KeyId,
        f: impl Fn(&Session, &Shared, ObjectHandle) -> Result<T, Fail>,
    ) -> Result<T, BackendError> {
        let once = |w: &mut Worker| {
            w.run(Retry::Idempotent, |w| {
                let (session, shared) = w.parts()?;
                let handle = shared.private_handle(session, key)?;
                match f(session, shared, handle) {
                    Err(Failure::Device(CkError::Pkcs11(
                        RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid,
                        _,
                    ))) => {
                        shared.forget_handle(key);
                        let handle = shared.private_handle(session, key)?;
                        f(session, shared, handle)
                    }
                    other => other,
                }
            })
        };
        match once(self) {
            Err(BackendError::KeyNotFound(_)) if self.shared.force_reinit() => {
                self.session = None;
                once(self)
            }
            other => other,
        }
    }

    /// [`Worker::sign`] after a signature that did not verify: forget the key's cached handle
    /// (found again by `CKA_ID`) and this worker's session (a new one is opened, logged in if
    /// the token needs it), then sign.
    fn sign_afresh(
        &mut self,
        key: &KeyId,
        kind: KeyKind,
        op: &SignOp,
    ) -> Result<Vec<u8>, BackendError> {
        self.shared.forget_handle(key);
        self.session = None;
        self.sign(key, kind, op)
    }

    fn decrypt(
        &mut self,
        key: &KeyId,
        kind: KeyKind,
        op: &DecryptOp,
    ) -> Result<SecretBytes, BackendError> {
        fits_decrypt(kind, op)?;
        let scratch = caps::Decisions::default();
        self.with_private_key(key, |session, shared, handle| {
            let caps = shared.caps_now()?;
            let view = decrypt::TokenView::of(caps.as_deref(), &scratch);
            decrypt::decrypt_on(session, &view, handle, key, kind, op)
        })
    }
}

/// Refuse a decryption the key cannot perform, before touching the device.
fn fits_decrypt(kind: KeyKind, op: &DecryptOp) -> Result<(), BackendError> {
    if op.fits(kind) {
        Ok(())
    } else {
        Err(BackendError::InvalidRequest(format!(
            "this decryption needs a different key type than {kind}"
        )))
    }
}

/// Refuse an operation the key cannot perform, before touching the device.
fn fits(kind: KeyKind, op: &SignOp) -> Result<(), BackendError> {
    if op.fits(kind) {
        Ok(())
    } else {
        Err(BackendError::InvalidRequest(format!(
            "this operation needs a different key type than {kind}"
        )))
    }
}

/// One `C_Sign` with `handle` on `session` and its result in the backend contract's form: what
/// a worker does per signature, and what [`DirectSigner`] does.
fn sign_on(
    session: &Session,
    handle: ObjectHandle,
    kind: KeyKind,
    op: &SignOp,
) -> Result<Vec<u8>, Fail> {
    let (mechanism, data) = objects::sign_mechanism(op);
    let sig = session.sign(&mechanism, handle, data.as_ref())?;
    Ok(objects::normalise_signature(kind, sig)?)
}

impl Backend for Pkcs11Backend {
    fn describe(&self) -> String {
        self.shared.describe_selector()
    }

    fn sign(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: SignOp,
        deadline: Instant,
    ) -> BackendFuture<Vec<u8>> {
        self.submit_sign(key, kind, op, deadline, false)
    }

    fn sign_afresh(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: SignOp,
        deadline: Instant,
    ) -> BackendFuture<Vec<u8>> {
        self.submit_sign(key, kind, op, deadline, true)
    }

    fn sign_checked(
        self: Arc<Self>,
        key: &KeyId,
        kind: KeyKind,
        op: SignOp,
        check: SignCheck,
        deadline: Instant,
    ) -> BackendFuture<Checked> {
        self.submit_checked(key, kind, op, check, deadline)
    }

    fn decrypt(
        &self,
        key: &KeyId,
        kind: KeyKind,
        op: DecryptOp,
        deadline: Instant,
    ) -> BackendFuture<SecretBytes> {
        if let Err(e) = self.shared.capable(|c| c.check_decrypt(kind)) {
            return Box::pin(async { Err(e) });
        }
        let key = key.clone();
        self.pool.submit_by(
            deadline,
            || {
                BackendError::Unavailable(
                    "the PKCS#11 token did not decrypt before the deadline".into(),
                )
            },
            move |w| w.decrypt(&key, kind, &op),
        )
    }

    fn generate(&self, spec: KeySpec) -> BackendFuture<KeyObject> {
        if let Err(e) = self
            .shared
            .capable(|c| c.check_generate(spec.kind, spec.purpose))
        {
            return Box::pin(async { Err(e) });
        }
        self.submit(move |w| {
            let id = KeyId(objects::random_id()?);
            w.run(Retry::IfNotRun, |w| {
                let (session, shared) = w.parts()?;
                let public = objects::generate(session, &spec, &id)?;
                Ok(KeyObject {
                    id: id.clone(),
                    label: spec.label.clone(),
                    uri: shared.key_uri(&spec.label, &id),
                    public,
                })
            })
        })
    }

    fn import(
        &self,
        label: String,
        material: PrivateKeyMaterial,
        purpose: KeyPurpose,
    ) -> BackendFuture<KeyObject> {
        if let Err(e) = self
            .shared
            .capable(|c| c.check_import(material.public().kind(), purpose))
        {
            return Box::pin(async { Err(e) });
        }
        self.submit(move |w| {
            let id = KeyId(objects::random_id()?);
            let result = w.run(Retry::IfNotRun, |w| {
                let (session, shared) = w.parts()?;
                objects::import(session, &label, &id, &material, purpose)?;
                Ok(KeyObject {
                    id: id.clone(),
                    label: label.clone(),
                    uri: shared.key_uri(&label, &id),
                    public: material.public().clone(),
                })
            });
            drop(material); // zeroizes
            result
        })
    }

    fn adopt(&self, uri: String, purpose: KeyPurpose) -> BackendFuture<KeyObject> {
        self.submit(move |w| {
            let parsed: Pkcs11Uri = uri
                .parse()
                .map_err(|e| BackendError::InvalidRequest(format!("{e}")))?;
            w.run(Retry::Idempotent, |w| {
                let (session, shared) = w.parts()?;
                let token = shared.token()?;
                let fits =
                    |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
                if !fits(&parsed.token, &token.label) || !fits(&parsed.serial, &token.serial) {
                    return Err(BackendError::InvalidRequest(format!(
                        "the URI names another token than this backend's ({})",
                        shared.describe_selector()
                    ))
                    .into());
                }
                let (id, label, public) = objects::adopt(session, &parsed, purpose)?;
                Ok(KeyObject {
                    uri: shared.key_uri(&label, &id),
                    id,
                    label,
                    public,
                })
            })
        })
    }

    fn key(&self, key: &KeyId) -> BackendFuture<KeyObject> {
        let key = key.clone();
        self.submit(move |w| {
            w.run(Retry::Idempotent, |w| {
                let (session, shared) = w.parts()?;
                let (label, public) = objects::read_key(session, &key)?;
                Ok(KeyObject {
                    uri: shared.key_uri(&label, &key),
                    id: key.clone(),
                    label,
                    public,
                })
            })
        })
    }

    fn destroy(&self, key: &KeyId) -> BackendFuture<()> {
        let key = key.clone();
        self.submit(move |w| {
            w.run(Retry::IfNotRun, |w| {
                let (session, shared) = w.parts()?;
                shared.forget_handle(&key);
                objects::destroy(session, &key)
            })
        })
    }

    fn key_pairs(&self) -> BackendFuture<Vec<StoredKeyPair>> {
        self.submit(|w| {
            w.run(Retry::Idempotent, |w| {
                let (session, _) = w.parts()?;
                objects::key_pairs(session)
            })
        })
    }

    fn records(&self) -> BackendFuture<Vec<Record>> {
        self.submit(|w| {
            w.run(Retry::Idempotent, |w| {
                let (session, _) = w.parts()?;
                objects::records(session)
            })
        })
    }

    fn put_record(&self, record: Record) -> BackendFuture<()> {
        self.submit(move |w| {
            w.run(Retry::IfNotRun, |w| {
                let (session, _) = w.parts()?;
                objects::put_record(session, &record)
            })
        })
    }

    fn attestation(&self, _key: &KeyId) -> BackendFuture<Vec<Vec<u8>>> {
        // PKCS#11 has no standard key attestation (vendors differ: Luna, nShield, CloudHSM).
        Box::pin(async { Ok(Vec::new()) })
    }

    fn check(&self) -> BackendFuture<()> {
        self.submit(|w| {
            w.run(Retry::Idempotent, |w| {
                w.parts()?.0.get_session_info()?;
                Ok(())
            })
        })
    }

    fn stalled(&self) -> bool {
        self.pool.status().stalled
    }

    fn shutdown(&self) {
        let stuck = self.pool.shutdown();
        if stuck > 0 {
            // Finalising under a running call is what crashes modules at exit: leave the
            // module initialised; the process exit releases it.
            tracing::warn!(
                stuck,
                "not calling C_Finalize: abandoned workers are still inside the PKCS#11 module"
            );
            return;
        }
        // No worker is inside the module any more and their sessions are closed: finalising
        // cannot pull the module out from under a call. Re-initialising (token discovery) is
        // the workers' only other use of the context, and they are gone.
        if let Err(e) = self.shared.ctx.clone().finalize() {
            tracing::warn!(code = %ck_code(&e), "C_Finalize failed at shutdown");
        }
    }
}

/// A failure inside a worker in the backend's vocabulary.
fn to_backend(f: Fail) -> BackendError {
    match f {
        Failure::Device(e) => map_ck(&e),
        Failure::Backend(e) => e,
    }
}

/// A token selector as a URI for messages (`pkcs11:token=…;serial=…`).
fn describe(s: &Pkcs11Uri) -> String {
    let mut parts = Vec::new();
    if let Some(v) = &s.token {
        parts.push(format!("token={}", uri::percent_encode(v.as_bytes())));
    }
    if let Some(v) = &s.serial {
        parts.push(format!("serial={v}"));
    }
    if let Some(v) = &s.manufacturer {
        parts.push(format!(
            "manufacturer={}",
            uri::percent_encode(v.as_bytes())
        ));
    }
    if let Some(v) = &s.model {
        parts.push(format!("model={}", uri::percent_encode(v.as_bytes())));
    }
    format!("pkcs11:{}", parts.join(";"))
}

/// Map a PKCS#11 error to the backend's vocabulary, keeping the `CKR_…` code.
fn map_ck(e: &CkError) -> BackendError {
    match e {
        CkError::Pkcs11(rv, function) => match rv {
            RvError::PinIncorrect => BackendError::PinRejected(ck_code(e)),
            RvError::PinLocked => BackendError::PinLocked,
            RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid => BackendError::Device {
                function: format!("{function}"),
                code: ck_code(e),
            },
            RvError::MechanismInvalid
            | RvError::MechanismParamInvalid
            | RvError::KeyTypeInconsistent
            | RvError::KeyFunctionNotPermitted
            | RvError::CurveNotSupported
            | RvError::AttributeValueInvalid
            | RvError::TemplateInconsistent
            | RvError::KeySizeRange
            | RvError::DomainParamsInvalid => BackendError::Unsupported(ck_code(e)),
            RvError::DataLenRange | RvError::DataInvalid => {
                BackendError::InvalidRequest(ck_code(e))
            }
            _ if is_session_fault(e) => BackendError::Unavailable(ck_code(e)),
            _ => BackendError::Device {
                function: format!("{function}"),
                code: ck_code(e),
            },
        },
        other => BackendError::Device {
            function: "cryptoki".into(),
            code: other.to_string(),
        },
    }
}

/// Errors after which the session (or the token) must be found again.
fn is_session_fault(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::UserNotLoggedIn
                | RvError::DeviceError
                | RvError::GeneralError
                | RvError::SlotIdInvalid
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

/// Faults that show the operation cannot have run (safe to retry anything).
fn is_session_gone(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid | RvError::SessionClosed | RvError::UserNotLoggedIn,
            _
        )
    )
}

/// `CKR_SESSION_HANDLE_INVALID` from `RvError::SessionHandleInvalid`: the name operators and
/// vendor docs use.
fn ck_code(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, _) => {
            let name = format!("{rv:?}");
            let mut out = String::from("CKR");
            for c in name.chars() {
                if c.is_ascii_uppercase() {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        }
        other => other.to_string(),
    }
}

fn poisoned() -> BackendError {
    BackendError::Device {
        function: "internal".into(),
        code: "lock poisoned".into(),
    }
}

/// Used by [`objects`] to turn a mechanism into what `C_Sign` takes.
pub(crate) type SignData = (Mechanism<'static>, Vec<u8>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names() {
        let e = CkError::Pkcs11(
            RvError::SessionHandleInvalid,
            cryptoki::context::Function::Sign,
        );
        assert_eq!(ck_code(&e), "CKR_SESSION_HANDLE_INVALID");
        assert!(is_session_fault(&e));
        assert!(matches!(map_ck(&e), BackendError::Unavailable(_)));
        let pin = CkError::Pkcs11(RvError::PinIncorrect, cryptoki::context::Function::Login);
        assert!(matches!(map_ck(&pin), BackendError::PinRejected(_)));
    }
}
