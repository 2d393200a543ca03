//! The PIV applet of a YubiKey 5 (notes §6.2): PIN/PUK, management-key authentication, key
//! generation/import, private-key operations with PIN and touch policies, data objects,
//! metadata, attestation, and the YubiKey extensions (FA, FB, FF, F6, F7, F8, F9, FD).
//!
//! Owns the command semantics and the volatile security state. It receives complete commands
//! (chaining already undone by `card`) and returns complete responses (`card` splits them
//! with 61xx). It must never panic on card input: every failure is a status word.

use std::time::{Duration, Instant};

use log::{debug, info, warn};
use rand_core::{OsRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::apdu::{Command, Response, Sw};
use crate::attest;
use crate::keys::{Algorithm, Firmware, KeyError, PrivateKey};
use crate::mgmkey::{self, MgmAlgorithm};
use crate::state::{self, Persistent, SlotKey};
use crate::tlv;

/// The PIV AID prefix (`A0 00 00 03 08`); SELECT matches any AID it prefixes or that
/// prefixes it (partial selection as OpenSC does it).
pub const AID: &[u8] = &[0xA0, 0x00, 0x00, 0x03, 0x08];

/// How the emulator answers a touch request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TouchMode {
    /// Touch policies are ignored: operations succeed at once.
    Never,
    /// The "user" touches after the delay; the operation succeeds.
    Accept,
    /// Nobody touches: after the delay the card returns 6985, as a real key does.
    Timeout,
}

/// Fixed device parameters from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Device serial number.
    pub serial: u32,
    /// Firmware version (decides algorithms, default management key, commands).
    pub firmware: Firmware,
    /// Touch simulation mode.
    pub touch: TouchMode,
    /// How long a simulated touch (or timeout) takes.
    pub touch_delay: Duration,
}

/// Pending step of a management-key authentication.
enum MgmPending {
    /// Mutual auth: the card sent E(W) and expects W back.
    Witness {
        alg: MgmAlgorithm,
        plain: Zeroizing<Vec<u8>>,
    },
    /// One-way auth: the card sent C and expects E(C).
    Challenge {
        alg: MgmAlgorithm,
        plain: Zeroizing<Vec<u8>>,
    },
}

/// Volatile security state, cleared by power events and by SELECT PIV.
#[derive(Default)]
struct Volatile {
    /// PIN verified since the last reset/SELECT.
    pin_verified: bool,
    /// One private-key operation with PIN policy "always" is allowed (set by each VERIFY).
    pin_always_token: bool,
    /// Management key authenticated.
    mgm_authenticated: bool,
    /// The management-key exchange in progress.
    mgm_pending: Option<MgmPending>,
    /// "Cached" touch is valid until then.
    touch_cached_until: Option<Instant>,
}

/// The PIV applet.
pub struct Piv {
    /// Fixed device parameters.
    cfg: Config,
    /// Persistent state (saved by the caller when `dirty`).
    state: Persistent,
    /// Volatile state.
    vol: Volatile,
    /// Set when persistent state changed and must be saved.
    dirty: bool,
}

const PIN_NEVER: u8 = 1;
const PIN_ONCE: u8 = 2;
const PIN_ALWAYS: u8 = 3;
const TOUCH_NEVER: u8 = 1;
const TOUCH_ALWAYS: u8 = 2;
const TOUCH_CACHED: u8 = 3;

fn is_user_slot(slot: u8) -> bool {
    matches!(slot, 0x9a | 0x9c | 0x9d | 0x9e | 0x82..=0x95)
}

fn default_pin_policy(slot: u8) -> u8 {
    match slot {
        0x9c => PIN_ALWAYS,
        0x9e | state::SLOT_ATTESTATION => PIN_NEVER,
        _ => PIN_ONCE,
    }
}

/// The value of a PIN/PUK as entered: FF padding removed; `None` if not 6–8 bytes.
fn unpadded_len_ok(padded: &[u8]) -> bool {
    let len = padded
        .iter()
        .position(|b| *b == 0xFF)
        .unwrap_or(padded.len());
    padded.len() == 8 && (6..=8).contains(&len) && padded.iter().skip(len).all(|b| *b == 0xFF)
}

fn key_sw(e: KeyError) -> Sw {
    match e {
        KeyError::Unsupported | KeyError::BadInput => Sw::IncorrectData,
        KeyError::Crypto(msg) => {
            warn!("crypto failure: {msg}");
            Sw::Unknown
        }
    }
}

type R = Result<Response, Sw>;

impl Piv {
    /// Creates the applet over loaded state.
    pub fn new(cfg: Config, state: Persistent) -> Piv {
        Piv {
            cfg,
            state,
            vol: Volatile::default(),
            dirty: false,
        }
    }

    /// The persistent state (for saving and for exporting the attestation root).
    pub fn state(&self) -> &Persistent {
        &self.state
    }

    /// Returns whether persistent state changed since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Power off/on/reset: forget everything volatile.
    pub fn reset_volatile(&mut self) {
        self.vol = Volatile::default();
    }

    /// SELECT PIV: clears PIN-verified and management-authenticated state, answers the APT.
    pub fn select(&mut self) -> Response {
        self.reset_volatile();
        Response::ok(hex_bytes("61114F0600001000010079074F05A000000308"))
    }

    /// Runs one complete command.
    pub fn handle(&mut self, cmd: &Command) -> Response {
        let result = match cmd.ins {
            0xFD => Ok(Response::ok(self.cfg.firmware.bytes().to_vec())),
            0xF8 => Ok(Response::ok(self.cfg.serial.to_be_bytes().to_vec())),
            0x20 => self.verify(cmd),
            0x24 => self.change_reference(cmd),
            0x2C => self.reset_retry(cmd),
            0x87 => self.general_authenticate(cmd),
            0x47 => self.generate(cmd),
            0xFE => self.import(cmd),
            0xCB => self.get_data(cmd),
            0xDB => self.put_data(cmd),
            0xF7 => self.metadata(cmd),
            0xF9 => self.attest(cmd),
            0xFA => self.set_pin_retries(cmd),
            0xFB => self.reset(cmd),
            0xFF => self.set_mgm_key(cmd),
            0xF6 => self.move_key(cmd),
            _ => Err(Sw::InsNotSupported),
        };
        result.unwrap_or_else(Response::status)
    }

    // ---- PIN / PUK ----------------------------------------------------------------------

    fn verify(&mut self, cmd: &Command) -> R {
        if cmd.p2 != 0x80 {
            return Err(Sw::RefNotFound);
        }
        match cmd.p1 {
            0xFF if cmd.data.is_empty() => {
                self.vol.pin_verified = false;
                self.vol.pin_always_token = false;
                return Ok(Sw::Ok.into());
            }
            0x00 => {}
            _ => return Err(Sw::IncorrectP1P2),
        }
        if cmd.data.is_empty() {
            return Err(match (self.state.pin_left, self.vol.pin_verified) {
                (0, _) => Sw::AuthBlocked,
                (_, true) => Sw::Ok,
                (n, false) => Sw::RetriesLeft(n),
            });
        }
        if cmd.data.len() != 8 {
            return Err(Sw::IncorrectData);
        }
        if self.state.pin_left == 0 {
            return Err(Sw::AuthBlocked);
        }
        if bool::from(cmd.data.as_slice().ct_eq(self.state.pin.as_slice())) {
            if self.state.pin_left != self.state.pin_total {
                self.state.pin_left = self.state.pin_total;
                self.dirty = true;
            }
            self.vol.pin_verified = true;
            self.vol.pin_always_token = true;
            Ok(Sw::Ok.into())
        } else {
            self.vol.pin_verified = false;
            self.vol.pin_always_token = false;
            self.state.pin_left = self.state.pin_left.saturating_sub(1);
            self.dirty = true;
            info!("wrong PIN, {} retries left", self.state.pin_left);
            Err(match self.state.pin_left {
                0 => Sw::AuthBlocked,
                n => Sw::RetriesLeft(n),
            })
        }
    }

    /// Checks `given` against the PIN (`puk == false`) or PUK, maintaining the counter.
    fn check_reference(&mut self, puk: bool, given: &[u8]) -> Result<(), Sw> {
        let (secret, left, total) = if puk {
            (
                &self.state.puk,
                &mut self.state.puk_left,
                self.state.puk_total,
            )
        } else {
            (
                &self.state.pin,
                &mut self.state.pin_left,
                self.state.pin_total,
            )
        };
        if *left == 0 {
            return Err(Sw::AuthBlocked);
        }
        self.dirty = true;
        if bool::from(given.ct_eq(secret.as_slice())) {
            *left = total;
            Ok(())
        } else {
            *left = left.saturating_sub(1);
            info!(
                "wrong {}, {} retries left",
                if puk { "PUK" } else { "PIN" },
                *left
            );
            Err(match *left {
                0 => Sw::AuthBlocked,
                n => Sw::RetriesLeft(n),
            })
        }
    }

    fn change_reference(&mut self, cmd: &Command) -> R {
        let puk = match (cmd.p1, cmd.p2) {
            (0, 0x80) => false,
            (0, 0x81) => true,
            _ => return Err(Sw::IncorrectP1P2),
        };
        let (old, new) = cmd.data.split_at_checked(8).ok_or(Sw::IncorrectData)?;
        if new.len() != 8 {
            return Err(Sw::IncorrectData);
        }
        self.check_reference(puk, old)?;
        if !unpadded_len_ok(new) {
            return Err(Sw::IncorrectData);
        }
        if puk {
            self.state.puk = Zeroizing::new(new.to_vec());
            self.state.puk_default = false;
        } else {
            self.state.pin = Zeroizing::new(new.to_vec());
            self.state.pin_default = false;
        }
        Ok(Sw::Ok.into())
    }

    fn reset_retry(&mut self, cmd: &Command) -> R {
        if (cmd.p1, cmd.p2) != (0, 0x80) {
            return Err(Sw::IncorrectP1P2);
        }
        let (puk, new) = cmd.data.split_at_checked(8).ok_or(Sw::IncorrectData)?;
        if new.len() != 8 {
            return Err(Sw::IncorrectData);
        }
        self.check_reference(true, puk)?;
        if !unpadded_len_ok(new) {
            return Err(Sw::IncorrectData);
        }
        self.state.pin = Zeroizing::new(new.to_vec());
        self.state.pin_left = self.state.pin_total;
        self.state.pin_default = false;
        Ok(Sw::Ok.into())
    }

    fn set_pin_retries(&mut self, cmd: &Command) -> R {
        self.require_mgm()?;
        if !self.vol.pin_verified {
            return Err(Sw::SecurityStatus);
        }
        if cmd.p1 == 0 || cmd.p2 == 0 || cmd.p1 > 15 || cmd.p2 > 15 {
            return Err(Sw::IncorrectP1P2);
        }
        let s = &mut self.state;
        s.pin_total = cmd.p1;
        s.pin_left = cmd.p1;
        s.puk_total = cmd.p2;
        s.puk_left = cmd.p2;
        s.pin = state::pad8(state::DEFAULT_PIN);
        s.puk = state::pad8(state::DEFAULT_PUK);
        s.pin_default = true;
        s.puk_default = true;
        self.dirty = true;
        Ok(Sw::Ok.into())
    }

    fn reset(&mut self, cmd: &Command) -> R {
        if (cmd.p1, cmd.p2) != (0, 0) {
            return Err(Sw::IncorrectP1P2);
        }
        if self.state.pin_left != 0 || self.state.puk_left != 0 {
            return Err(Sw::Conditions);
        }
        info!("PIV reset");
        self.state.reset_piv(self.cfg.firmware);
        self.reset_volatile();
        self.dirty = true;
        Ok(Sw::Ok.into())
    }

    // ---- management key -----------------------------------------------------------------

    fn require_mgm(&self) -> Result<(), Sw> {
        if self.vol.mgm_authenticated {
            Ok(())
        } else {
            Err(Sw::SecurityStatus)
        }
    }

    fn mgm_auth(&mut self, alg_id: u8, items: &[tlv::Tlv<'_>]) -> R {
        let alg = MgmAlgorithm::from_id(alg_id).ok_or(Sw::IncorrectP1P2)?;
        if alg != self.state.mgm_alg {
            return Err(Sw::IncorrectP1P2);
        }
        let block = alg.block_len();
        let key = self.state.mgm_key.clone();
        let crypt = |data: &[u8], decrypt| {
            mgmkey::crypt_block(alg, &key, data, decrypt).ok_or(Sw::IncorrectData)
        };
        let witness = tlv::find(items, 0x80);
        let challenge = tlv::find(items, 0x81);
        let response = tlv::find(items, 0x82);
        match (witness, challenge, response) {
            // Mutual, step 1: send E(W).
            (Some([]), None, _) => {
                self.vol.mgm_authenticated = false;
                let mut w = Zeroizing::new(vec![0u8; block]);
                OsRng.fill_bytes(&mut w);
                let enc = crypt(&w, false)?;
                self.vol.mgm_pending = Some(MgmPending::Witness { alg, plain: w });
                Ok(Response::ok(tlv::item(0x7C, &tlv::item(0x80, &enc))))
            }
            // Mutual, step 2: check W, answer E(C).
            (Some(w), Some(c), _) => {
                let pending = self.vol.mgm_pending.take();
                let Some(MgmPending::Witness { alg: palg, plain }) = pending else {
                    return Err(Sw::SecurityStatus);
                };
                if palg != alg || !bool::from(w.ct_eq(plain.as_slice())) {
                    info!("management key authentication failed");
                    return Err(Sw::SecurityStatus);
                }
                if c.len() != block {
                    return Err(Sw::IncorrectData);
                }
                self.touch(if self.state.mgm_touch {
                    TOUCH_ALWAYS
                } else {
                    TOUCH_NEVER
                })?;
                let enc = crypt(c, false)?;
                self.vol.mgm_authenticated = true;
                Ok(Response::ok(tlv::item(0x7C, &tlv::item(0x82, &enc))))
            }
            // One-way, step 1: send C.
            (None, Some([]), None) => {
                self.vol.mgm_authenticated = false;
                let mut c = Zeroizing::new(vec![0u8; block]);
                OsRng.fill_bytes(&mut c);
                let out = tlv::item(0x7C, &tlv::item(0x81, &c));
                self.vol.mgm_pending = Some(MgmPending::Challenge { alg, plain: c });
                Ok(Response::ok(out))
            }
            // One-way, step 2: check E(C).
            (None, None, Some(r)) if !r.is_empty() => {
                let pending = self.vol.mgm_pending.take();
                let Some(MgmPending::Challenge { alg: palg, plain }) = pending else {
                    return Err(Sw::SecurityStatus);
                };
                let expect = crypt(&plain, false)?;
                if palg != alg || !bool::from(r.ct_eq(expect.as_slice())) {
                    info!("management key authentication failed");
                    return Err(Sw::SecurityStatus);
                }
                self.touch(if self.state.mgm_touch {
                    TOUCH_ALWAYS
                } else {
                    TOUCH_NEVER
                })?;
                self.vol.mgm_authenticated = true;
                Ok(Sw::Ok.into())
            }
            _ => Err(Sw::IncorrectData),
        }
    }

    fn set_mgm_key(&mut self, cmd: &Command) -> R {
        let touch = match (cmd.p1, cmd.p2) {
            (0xFF, 0xFF) => false,
            (0xFF, 0xFE) => true,
            _ => return Err(Sw::IncorrectP1P2),
        };
        self.require_mgm()?;
        let [alg, 0x9B, len, key @ ..] = cmd.data.as_slice() else {
            return Err(Sw::IncorrectData);
        };
        let alg = MgmAlgorithm::from_id(*alg).ok_or(Sw::IncorrectData)?;
        if *len as usize != alg.key_len() || key.len() != alg.key_len() {
            return Err(Sw::IncorrectData);
        }
        if alg != MgmAlgorithm::TripleDes && self.cfg.firmware < Firmware(5, 4, 0) {
            return Err(Sw::IncorrectData);
        }
        self.state.mgm_alg = alg;
        self.state.mgm_key = Zeroizing::new(key.to_vec());
        self.state.mgm_touch = touch;
        self.state.mgm_default = false;
        self.dirty = true;
        info!("management key changed (algorithm {alg:?}, touch {touch})");
        Ok(Sw::Ok.into())
    }

    // ---- touch --------------------------------------------------------------------------

    fn touch(&mut self, policy: u8) -> Result<(), Sw> {
        if policy != TOUCH_ALWAYS && policy != TOUCH_CACHED {
            return Ok(());
        }
        if policy == TOUCH_CACHED
            && self
                .vol
                .touch_cached_until
                .is_some_and(|t| Instant::now() < t)
        {
            return Ok(());
        }
        match self.cfg.touch {
            TouchMode::Never => Ok(()),
            TouchMode::Accept => {
                info!(
                    "touch required: simulating a touch after {:?}",
                    self.cfg.touch_delay
                );
                std::thread::sleep(self.cfg.touch_delay);
                self.vol.touch_cached_until = Some(Instant::now() + Duration::from_secs(15));
                Ok(())
            }
            TouchMode::Timeout => {
                info!(
                    "touch required: simulating a timeout after {:?}",
                    self.cfg.touch_delay
                );
                std::thread::sleep(self.cfg.touch_delay);
                Err(Sw::Conditions)
            }
        }
    }

    // ---- GENERAL AUTHENTICATE -----------------------------------------------------------

    fn general_authenticate(&mut self, cmd: &Command) -> R {
        let (outer, rest) = tlv::parse_one(&cmd.data).ok_or(Sw::IncorrectData)?;
        if outer.tag != 0x7C || !rest.is_empty() {
            return Err(Sw::IncorrectData);
        }
        let items = tlv::parse_all(outer.value).ok_or(Sw::IncorrectData)?;
        if cmd.p2 == 0x9B {
            return self.mgm_auth(cmd.p1, &items);
        }
        if !is_user_slot(cmd.p2) {
            return Err(Sw::IncorrectP1P2);
        }
        let alg = Algorithm::from_id(cmd.p1).ok_or(Sw::IncorrectP1P2)?;
        let (pin_policy, touch_policy) = match self.state.keys.get(&cmd.p2) {
            Some(k) if k.key.algorithm() == alg => (k.pin_policy, k.touch_policy),
            Some(_) => return Err(Sw::IncorrectP1P2),
            None => return Err(Sw::RefNotFound),
        };
        if tlv::find(&items, 0x82) != Some(&[][..]) {
            return Err(Sw::IncorrectData);
        }
        let input = tlv::find(&items, 0x81);
        let peer = tlv::find(&items, 0x85);
        if input.is_none() && peer.is_none() {
            return Err(Sw::IncorrectData);
        }
        let pin_ok = match pin_policy {
            PIN_NEVER => true,
            PIN_ALWAYS => self.vol.pin_verified && self.vol.pin_always_token,
            _ => self.vol.pin_verified,
        };
        if !pin_ok {
            debug!(
                "slot {:02x}: PIN policy {} not satisfied",
                cmd.p2, pin_policy
            );
            return Err(Sw::SecurityStatus);
        }
        self.touch(touch_policy)?;
        if pin_policy == PIN_ALWAYS {
            self.vol.pin_always_token = false;
        }
        let key = &self.state.keys.get(&cmd.p2).ok_or(Sw::RefNotFound)?.key;
        let result = match (input, peer) {
            (Some(data), _) => key.sign(data),
            (None, Some(point)) => key.ecdh(point),
            (None, None) => return Err(Sw::IncorrectData),
        }
        .map_err(key_sw)?;
        Ok(Response::ok(tlv::item(0x7C, &tlv::item(0x82, &result))))
    }

    // ---- keys ---------------------------------------------------------------------------

    fn policies(&self, slot: u8, items: &[tlv::Tlv<'_>]) -> Result<(u8, u8), Sw> {
        let pin = match tlv::find(items, 0xAA) {
            None | Some([0]) => default_pin_policy(slot),
            Some([p @ 1..=3]) => *p,
            _ => return Err(Sw::IncorrectData),
        };
        let touch = match tlv::find(items, 0xAB) {
            None | Some([0]) => TOUCH_NEVER,
            Some([t @ 1..=3]) => *t,
            _ => return Err(Sw::IncorrectData),
        };
        Ok((pin, touch))
    }

    fn generate(&mut self, cmd: &Command) -> R {
        if cmd.p1 != 0 || !is_user_slot(cmd.p2) {
            return Err(Sw::IncorrectP1P2);
        }
        self.require_mgm()?;
        let (outer, _) = tlv::parse_one(&cmd.data).ok_or(Sw::IncorrectData)?;
        if outer.tag != 0xAC {
            return Err(Sw::IncorrectData);
        }
        let items = tlv::parse_all(outer.value).ok_or(Sw::IncorrectData)?;
        let alg = match tlv::find(&items, 0x80) {
            Some([id]) => Algorithm::from_id(*id).filter(|a| a.supported_on(self.cfg.firmware)),
            _ => None,
        }
        .ok_or(Sw::IncorrectData)?;
        let (pin_policy, touch_policy) = self.policies(cmd.p2, &items)?;
        let key = PrivateKey::generate(alg).map_err(key_sw)?;
        let public = key.public_tlvs();
        info!(
            "generated {alg:?} in slot {:02x} (pin policy {pin_policy}, touch policy {touch_policy})",
            cmd.p2
        );
        self.state.keys.insert(
            cmd.p2,
            SlotKey {
                key,
                pin_policy,
                touch_policy,
                origin: state::ORIGIN_GENERATED,
            },
        );
        self.dirty = true;
        Ok(Response::ok(tlv::item(0x7F49, &public)))
    }

    fn import(&mut self, cmd: &Command) -> R {
        if !is_user_slot(cmd.p2) && cmd.p2 != state::SLOT_ATTESTATION {
            return Err(Sw::IncorrectP1P2);
        }
        self.require_mgm()?;
        let alg = Algorithm::from_id(cmd.p1)
            .filter(|a| a.supported_on(self.cfg.firmware))
            .ok_or(Sw::IncorrectP1P2)?;
        let items = tlv::parse_all(&cmd.data).ok_or(Sw::IncorrectData)?;
        let (pin_policy, touch_policy) = self.policies(cmd.p2, &items)?;
        let key = PrivateKey::import(alg, &items).map_err(key_sw)?;
        info!("imported {alg:?} into slot {:02x}", cmd.p2);
        self.state.keys.insert(
            cmd.p2,
            SlotKey {
                key,
                pin_policy,
                touch_policy,
                origin: state::ORIGIN_IMPORTED,
            },
        );
        self.dirty = true;
        Ok(Sw::Ok.into())
    }

    fn move_key(&mut self, cmd: &Command) -> R {
        if self.cfg.firmware < Firmware(5, 7, 0) {
            return Err(Sw::InsNotSupported);
        }
        let (dst, src) = (cmd.p1, cmd.p2);
        if !is_user_slot(src) || !(dst == 0xFF || is_user_slot(dst)) {
            return Err(Sw::IncorrectP1P2);
        }
        self.require_mgm()?;
        let key = self.state.keys.remove(&src).ok_or(Sw::RefNotFound)?;
        if dst != 0xFF {
            self.state.keys.insert(dst, key);
        }
        self.dirty = true;
        Ok(Sw::Ok.into())
    }

    fn metadata(&mut self, cmd: &Command) -> R {
        if self.cfg.firmware < Firmware(5, 3, 0) {
            return Err(Sw::InsNotSupported);
        }
        if cmd.p1 != 0 {
            return Err(Sw::IncorrectP1P2);
        }
        let s = &self.state;
        let mut out = Vec::new();
        match cmd.p2 {
            0x80 | 0x81 => {
                let (def, total, left) = if cmd.p2 == 0x80 {
                    (s.pin_default, s.pin_total, s.pin_left)
                } else {
                    (s.puk_default, s.puk_total, s.puk_left)
                };
                tlv::push(&mut out, 0x01, &[0xFF]);
                tlv::push(&mut out, 0x05, &[u8::from(def)]);
                tlv::push(&mut out, 0x06, &[total, left]);
            }
            0x9B => {
                tlv::push(&mut out, 0x01, &[s.mgm_alg.id()]);
                let touch = if s.mgm_touch {
                    TOUCH_ALWAYS
                } else {
                    TOUCH_NEVER
                };
                tlv::push(&mut out, 0x02, &[0x00, touch]);
                tlv::push(&mut out, 0x05, &[u8::from(s.mgm_default)]);
            }
            slot => {
                let k = s.keys.get(&slot).ok_or(Sw::RefNotFound)?;
                tlv::push(&mut out, 0x01, &[k.key.algorithm().id()]);
                tlv::push(&mut out, 0x02, &[k.pin_policy, k.touch_policy]);
                tlv::push(&mut out, 0x03, &[k.origin]);
                tlv::push(&mut out, 0x04, &k.key.public_tlvs());
            }
        }
        Ok(Response::ok(out))
    }

    fn attest(&mut self, cmd: &Command) -> R {
        if cmd.p2 != 0 {
            return Err(Sw::IncorrectP1P2);
        }
        let slot = cmd.p1;
        if !is_user_slot(slot) {
            return Err(Sw::RefNotFound);
        }
        let k = self.state.keys.get(&slot).ok_or(Sw::RefNotFound)?;
        if k.origin != state::ORIGIN_GENERATED {
            return Err(Sw::IncorrectData);
        }
        let f9 = self
            .state
            .keys
            .get(&state::SLOT_ATTESTATION)
            .ok_or(Sw::RefNotFound)?;
        let f9_obj = self
            .state
            .objects
            .get(&state::OBJ_ATTESTATION_CERT)
            .ok_or(Sw::RefNotFound)?;
        let f9_cert = tlv::parse_all(f9_obj)
            .and_then(|items| tlv::find(&items, 0x70))
            .ok_or(Sw::Unknown)?;
        let facts = attest::SlotFacts {
            slot,
            key: &k.key,
            pin_policy: k.pin_policy,
            touch_policy: k.touch_policy,
            serial: self.cfg.serial,
            firmware: self.cfg.firmware,
        };
        let cert = attest::attest_slot(&f9.key, f9_cert, &facts).map_err(key_sw)?;
        Ok(Response::ok(cert))
    }

    // ---- data objects -------------------------------------------------------------------

    fn object_id(data: &[u8]) -> Result<(u32, &[u8]), Sw> {
        let (tag, rest) = tlv::parse_one(data).ok_or(Sw::IncorrectData)?;
        if tag.tag != 0x5C {
            return Err(Sw::IncorrectData);
        }
        let id = match tag.value {
            [a] => *a as u32,
            [a, b, c] => u32::from_be_bytes([0, *a, *b, *c]),
            _ => return Err(Sw::IncorrectData),
        };
        Ok((id, rest))
    }

    fn get_data(&mut self, cmd: &Command) -> R {
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF) {
            return Err(Sw::IncorrectP1P2);
        }
        let (id, _) = Self::object_id(&cmd.data)?;
        if id == 0x7E {
            return Ok(Response::ok(hex_bytes(
                "7E124F0BA0000003080000100001005F2F024000",
            )));
        }
        if id == 0x5F_C109 && !self.vol.pin_verified {
            return Err(Sw::SecurityStatus);
        }
        let value = self.state.objects.get(&id).ok_or(Sw::NotFound)?;
        Ok(Response::ok(tlv::item(0x53, value)))
    }

    fn put_data(&mut self, cmd: &Command) -> R {
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF) {
            return Err(Sw::IncorrectP1P2);
        }
        self.require_mgm()?;
        let (id, rest) = Self::object_id(&cmd.data)?;
        if !(0x5F_C101..=0x5F_C123).contains(&id) && !(0x5F_FF00..=0x5F_FF15).contains(&id) {
            return Err(Sw::IncorrectData);
        }
        let (value, tail) = tlv::parse_one(rest).ok_or(Sw::IncorrectData)?;
        if value.tag != 0x53 || !tail.is_empty() {
            return Err(Sw::IncorrectData);
        }
        if value.value.is_empty() {
            self.state.objects.remove(&id);
        } else {
            self.state.objects.insert(id, value.value.to_vec());
        }
        self.dirty = true;
        Ok(Sw::Ok.into())
    }
}

/// Decodes a compile-time hex constant. Only used with literals that are valid hex.
fn hex_bytes(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn piv(fw: Firmware) -> Piv {
        let cfg = Config {
            serial: 12_345_678,
            firmware: fw,
            touch: TouchMode::Accept,
            touch_delay: Duration::ZERO,
        };
        Piv::new(cfg, Persistent::factory(fw).unwrap())
    }

    fn run(p: &mut Piv, apdu: &str) -> Response {
        p.handle(&Command::parse(&hex::decode(apdu.replace(' ', "")).unwrap()).unwrap())
    }

    pub(crate) fn mgm_auth(p: &mut Piv, alg: MgmAlgorithm, key: &[u8]) -> Sw {
        let r = run(p, &format!("0087{:02X}9B047C028000", alg.id()));
        assert_eq!(r.sw, Sw::Ok);
        let enc_w = &r.data[4..];
        let w = mgmkey::crypt_block(alg, key, enc_w, true).unwrap();
        let c = vec![0x55u8; alg.block_len()];
        let inner = [tlv::item(0x80, &w), tlv::item(0x81, &c)].concat();
        let data = tlv::item(0x7C, &inner);
        let r = run(
            p,
            &format!(
                "0087{:02X}9B{:02X}{}",
                alg.id(),
                data.len(),
                hex::encode(&data)
            ),
        );
        if r.sw == Sw::Ok {
            assert_eq!(
                &r.data[4..],
                mgmkey::crypt_block(alg, key, &c, false).unwrap().as_slice()
            );
        }
        r.sw
    }

    #[test]
    fn pin_counter_and_lockout() {
        let mut p = piv(Firmware(5, 4, 3));
        assert_eq!(run(&mut p, "0020008000").sw, Sw::RetriesLeft(3));
        assert_eq!(
            run(&mut p, "002000800839393939393939FF").sw,
            Sw::RetriesLeft(2)
        );
        assert_eq!(run(&mut p, "0020008008313233343536FFFF").sw, Sw::Ok);
        assert_eq!(
            run(&mut p, "0020008000").sw,
            Sw::Ok,
            "verified status query"
        );
        assert_eq!(p.select().sw, Sw::Ok);
        assert_eq!(
            run(&mut p, "0020008000").sw,
            Sw::RetriesLeft(3),
            "SELECT un-verifies, counter reset"
        );
        for expect in [
            Sw::RetriesLeft(2),
            Sw::RetriesLeft(1),
            Sw::AuthBlocked,
            Sw::AuthBlocked,
        ] {
            assert_eq!(run(&mut p, "00200080083939393939393939").sw, expect);
        }
        assert_eq!(
            run(&mut p, "0020008008313233343536FFFF").sw,
            Sw::AuthBlocked
        );
        // Unblock with the PUK, new PIN 654321.
        assert_eq!(
            run(&mut p, "002C0080103132333435363738363534333231FFFF").sw,
            Sw::Ok
        );
        assert_eq!(run(&mut p, "0020008008363534333231FFFF").sw, Sw::Ok);
        assert!(!p.state.pin_default);
        // Change back; wrong old PIN counts down.
        assert_eq!(
            run(&mut p, "00240080100000000000000000313233343536FFFF").sw,
            Sw::RetriesLeft(2)
        );
        assert_eq!(
            run(&mut p, "0024008010363534333231FFFF313233343536FFFF").sw,
            Sw::Ok
        );
        assert_eq!(run(&mut p, "0020FF8000").sw, Sw::Ok);
        assert_eq!(run(&mut p, "0020008000").sw, Sw::RetriesLeft(3));
        // Malformed: wrong length, too-short new PIN.
        assert_eq!(run(&mut p, "0020008003313233").sw, Sw::IncorrectData);
        assert_eq!(
            run(&mut p, "0024008010313233343536FFFF3132FFFFFFFFFFFF").sw,
            Sw::IncorrectData
        );
    }

    #[test]
    fn mgm_auth_3des_and_aes() {
        let mut p = piv(Firmware(5, 4, 3));
        assert_eq!(run(&mut p, "0047009A05AC03800111").sw, Sw::SecurityStatus);
        assert_eq!(
            run(&mut p, "00870A9B047C028000").sw,
            Sw::IncorrectP1P2,
            "wrong algorithm"
        );
        assert_eq!(
            mgm_auth(&mut p, MgmAlgorithm::TripleDes, &[9u8; 24]),
            Sw::SecurityStatus
        );
        assert_eq!(
            mgm_auth(&mut p, MgmAlgorithm::TripleDes, &mgmkey::DEFAULT_KEY),
            Sw::Ok
        );
        assert_eq!(
            run(
                &mut p,
                "00FFFFFF1B0A9B18000102030405060708090A0B0C0D0E0F1011121314151617"
            )
            .sw,
            Sw::Ok
        );
        assert_eq!(p.state.mgm_alg, MgmAlgorithm::Aes192);
        let key: Vec<u8> = (0u8..24).collect();
        assert_eq!(mgm_auth(&mut p, MgmAlgorithm::Aes192, &key), Sw::Ok);
        let mut p = piv(Firmware(5, 7, 1));
        assert_eq!(p.state.mgm_alg, MgmAlgorithm::Aes192);
        assert_eq!(
            run(&mut p, "0087039B047C028000").sw,
            Sw::IncorrectP1P2,
            "0.8 crate on 5.7"
        );
        assert_eq!(
            mgm_auth(&mut p, MgmAlgorithm::Aes192, &mgmkey::DEFAULT_KEY),
            Sw::Ok
        );
        // One-way variant.
        let r = run(&mut p, "00870A9B047C028100");
        let c = &r.data[4..];
        let e = mgmkey::crypt_block(MgmAlgorithm::Aes192, &mgmkey::DEFAULT_KEY, c, false).unwrap();
        let data = tlv::item(0x7C, &tlv::item(0x82, &e));
        assert_eq!(
            run(
                &mut p,
                &format!("00870A9B{:02X}{}", data.len(), hex::encode(&data))
            )
            .sw,
            Sw::Ok
        );
    }

    fn sign_apdu(alg: u8, slot: u8, input: &[u8]) -> Command {
        let inner = [tlv::item(0x82, &[]), tlv::item(0x81, input)].concat();
        let data = tlv::item(0x7C, &inner);
        Command {
            cla: 0,
            ins: 0x87,
            p1: alg,
            p2: slot,
            data,
            ne: None,
            extended: false,
        }
    }

    #[test]
    fn generate_sign_policies_metadata_attest() {
        let mut p = piv(Firmware(5, 4, 3));
        assert_eq!(
            mgm_auth(&mut p, MgmAlgorithm::TripleDes, &mgmkey::DEFAULT_KEY),
            Sw::Ok
        );
        assert_eq!(
            run(&mut p, "0047009E05AC038001E0").sw,
            Sw::IncorrectData,
            "no Ed25519 on 5.4"
        );
        let r = run(&mut p, "0047009A05AC03800111");
        assert_eq!(r.sw, Sw::Ok);
        assert_eq!(r.data[..5], [0x7F, 0x49, 0x43, 0x86, 0x41]);
        let r = run(&mut p, "0047009C05AC03800114");
        assert_eq!(r.data[..5], [0x7F, 0x49, 0x63, 0x86, 0x61]);
        let digest = [0x11u8; 32];
        // 9a = PIN once: needs VERIFY, then any number of signatures.
        assert_eq!(
            p.handle(&sign_apdu(0x11, 0x9a, &digest)).sw,
            Sw::SecurityStatus
        );
        assert_eq!(run(&mut p, "0020008008313233343536FFFF").sw, Sw::Ok);
        for _ in 0..2 {
            let r = p.handle(&sign_apdu(0x11, 0x9a, &digest));
            assert_eq!(r.sw, Sw::Ok);
            let (outer, _) = tlv::parse_one(&r.data).unwrap();
            let items = tlv::parse_all(outer.value).unwrap();
            let sig = p256::ecdsa::Signature::from_der(tlv::find(&items, 0x82).unwrap()).unwrap();
            let crate::keys::PrivateKey::P256(sk) = &p.state.keys[&0x9a].key else {
                unreachable!()
            };
            use ecdsa::signature::hazmat::PrehashVerifier;
            p256::ecdsa::VerifyingKey::from(sk.public_key())
                .verify_prehash(&digest, &sig)
                .unwrap();
        }
        // 9c = PIN always: one signature per VERIFY.
        assert_eq!(p.handle(&sign_apdu(0x14, 0x9c, &[1u8; 48])).sw, Sw::Ok);
        assert_eq!(
            p.handle(&sign_apdu(0x14, 0x9c, &[1u8; 48])).sw,
            Sw::SecurityStatus
        );
        assert_eq!(
            p.handle(&sign_apdu(0x11, 0x9c, &[1u8; 32])).sw,
            Sw::IncorrectP1P2,
            "wrong alg"
        );
        // Metadata and attestation.
        let r = run(&mut p, "00F7009A00");
        assert_eq!(r.data[..10], hex_bytes("01011102020201030101"));
        assert_eq!(run(&mut p, "00F7009D00").sw, Sw::RefNotFound);
        assert_eq!(
            run(&mut p, "00F7008000").data,
            hex_bytes("0101FF05010106020303")
        );
        assert_eq!(
            run(&mut p, "00F7009B00").data,
            hex_bytes("01010302020001050101")
        );
        let r = run(&mut p, "00F99A0000");
        assert_eq!(r.sw, Sw::Ok);
        assert_eq!(r.data[0], 0x30);
        assert_eq!(run(&mut p, "00F99D0000").sw, Sw::RefNotFound);
        // Touch "always" key with timeout mode → 6985.
        let r = run(&mut p, "0047008208AC06800111AB0102");
        assert_eq!(r.sw, Sw::Ok);
        p.cfg.touch = TouchMode::Timeout;
        assert_eq!(p.handle(&sign_apdu(0x11, 0x82, &digest)).sw, Sw::Conditions);
        p.cfg.touch = TouchMode::Accept;
        assert_eq!(p.handle(&sign_apdu(0x11, 0x82, &digest)).sw, Sw::Ok);
    }

    #[test]
    fn data_objects_and_reset() {
        let mut p = piv(Firmware(5, 7, 1));
        assert_eq!(run(&mut p, "00CB3FFF055C035FC105").sw, Sw::NotFound);
        assert_eq!(
            run(&mut p, "00DB3FFF095C035FC1055302AABB").sw,
            Sw::SecurityStatus
        );
        assert_eq!(
            mgm_auth(&mut p, MgmAlgorithm::Aes192, &mgmkey::DEFAULT_KEY),
            Sw::Ok
        );
        assert_eq!(run(&mut p, "00DB3FFF095C035FC1055302AABB").sw, Sw::Ok);
        assert_eq!(
            run(&mut p, "00CB3FFF055C035FC105").data,
            hex_bytes("5302AABB")
        );
        assert_eq!(run(&mut p, "00DB3FFF075C035FC1055300").sw, Sw::Ok);
        assert_eq!(run(&mut p, "00CB3FFF055C035FC105").sw, Sw::NotFound);
        assert_eq!(run(&mut p, "00CB3FFF035C017E").data[..2], [0x7E, 0x12]);
        assert_eq!(
            run(&mut p, "00CB3FFF055C035FFF01").sw,
            Sw::Ok,
            "F9 certificate from the factory"
        );
        assert_eq!(run(&mut p, "00DB3FFF095C035FC1095302AABB").sw, Sw::Ok);
        assert_eq!(
            run(&mut p, "00CB3FFF055C035FC109").sw,
            Sw::SecurityStatus,
            "PRINTED needs the PIN"
        );
        assert_eq!(run(&mut p, "00CB3FFF025C00").sw, Sw::IncorrectData);
        // Reset only when PIN and PUK are blocked.
        assert_eq!(run(&mut p, "00FB0000").sw, Sw::Conditions);
        for _ in 0..3 {
            run(&mut p, "00200080083939393939393939");
            run(&mut p, &("002C008010".to_owned() + &"39".repeat(16)));
        }
        assert_eq!(run(&mut p, "00FB0000").sw, Sw::Ok);
        assert_eq!(run(&mut p, "0020008000").sw, Sw::RetriesLeft(3));
        assert!(p.state.objects.contains_key(&state::OBJ_ATTESTATION_CERT));
        assert!(!p.state.objects.contains_key(&0x5F_C109));
    }

    #[test]
    fn ed25519_rsa_move_on_57() {
        let mut p = piv(Firmware(5, 7, 1));
        assert_eq!(
            mgm_auth(&mut p, MgmAlgorithm::Aes192, &mgmkey::DEFAULT_KEY),
            Sw::Ok
        );
        let r = run(&mut p, "0047009E05AC038001E0");
        assert_eq!(r.data[..5], [0x7F, 0x49, 0x22, 0x86, 0x20]);
        let r = p.handle(&sign_apdu(0xE0, 0x9e, b"hello"));
        assert_eq!(r.sw, Sw::Ok, "9e is PIN never");
        let r = run(&mut p, "0047009D05AC03800106");
        assert_eq!(r.data[..6], [0x7F, 0x49, 0x81, 0x88, 0x81, 0x81]);
        assert_eq!(run(&mut p, "00F6859D00").sw, Sw::Ok);
        assert_eq!(run(&mut p, "00F7009D00").sw, Sw::RefNotFound);
        assert_eq!(run(&mut p, "00F7008500").sw, Sw::Ok);
        assert_eq!(run(&mut p, "00F6FF8500").sw, Sw::Ok);
        assert_eq!(run(&mut p, "00F7008500").sw, Sw::RefNotFound);
        // Malformed sign input never panics.
        for bad in [
            "0087119A00",
            "0087119A027C00",
            "0087119A037C0181",
            "0087119A047C0282FF",
        ] {
            let _ = Command::parse(&hex::decode(bad).unwrap()).map(|c| p.handle(&c));
        }
    }
}
