//! The card as the reader sees it: ATR, power events, the ISO 7816 layer (command chaining with
//! CLA `10`, response chaining with `61xx` + GET RESPONSE), applet selection and the APDU
//! trace. Persists the state after any command that changed it.
//!
//! Owns the transport-independent card behaviour. It knows nothing of sockets (`vpcd` does)
//! and nothing of PIV semantics (`piv` does). The trace never shows PIN, PUK, management-key
//! or imported-key bytes.

use std::path::PathBuf;

use log::{debug, error};
use zeroize::Zeroizing;

use crate::apdu::{Command, Response, Sw};
use crate::keys::Firmware;
use crate::mgmt;
use crate::piv::{self, Piv};

/// The YubiKey 5 USB ATR (T=1, "YubiKey" historical bytes; keep `FD` so ykman sees USB).
pub const ATR: &[u8] = &[
    0x3B, 0xFD, 0x13, 0x00, 0x00, 0x81, 0x31, 0xFE, 0x15, 0x80, 0x73, 0xC0, 0x21, 0xC0, 0x57, 0x59,
    0x75, 0x62, 0x69, 0x4B, 0x65, 0x79, 0x40,
];

/// Upper bound of a chained command, so a misbehaving client cannot grow memory without end.
const MAX_CHAIN: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applet {
    None,
    Piv,
    Mgmt,
    Otp,
}

/// Data of a command chain in progress.
struct Chain {
    /// INS, P1, P2 of the chain: a final part with another header discards it.
    header: (u8, u8, u8),
    /// The data received so far (may hold a PIN or key material, hence wiped).
    data: Zeroizing<Vec<u8>>,
}

/// The emulated card.
pub struct Card {
    /// The PIV applet with the persistent state.
    piv: Piv,
    /// Serial for the MGMT/OTP applets.
    serial: u32,
    /// Firmware for the MGMT/OTP applets.
    firmware: Firmware,
    /// The currently selected applet.
    selected: Applet,
    /// Command chain being received.
    chain: Option<Chain>,
    /// Response bytes not yet fetched with GET RESPONSE.
    pending: Option<Vec<u8>>,
    /// Where to save persistent state; `None` keeps it in memory only.
    state_path: Option<PathBuf>,
}

/// A power event from the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Power off.
    Off,
    /// Power on.
    On,
    /// Warm reset.
    Reset,
}

impl Card {
    /// Creates the card.
    pub fn new(piv: Piv, serial: u32, firmware: Firmware, state_path: Option<PathBuf>) -> Card {
        Card {
            piv,
            serial,
            firmware,
            selected: Applet::None,
            chain: None,
            pending: None,
            state_path,
        }
    }

    /// Power off/on/reset: clear every volatile thing; keep keys, PINs and objects.
    pub fn power(&mut self, ev: Power) {
        debug!("power {ev:?}");
        self.piv.reset_volatile();
        self.selected = Applet::None;
        self.chain = None;
        self.pending = None;
    }

    /// Processes one command APDU and returns `data ‖ SW`.
    pub fn transmit(&mut self, raw: &[u8]) -> Vec<u8> {
        let resp = self.process(raw);
        trace(raw, &resp);
        if self.piv.take_dirty()
            && let Some(path) = &self.state_path
            && let Err(e) = self.piv.state().save(path)
        {
            error!("cannot save state: {e}");
        }
        resp.to_bytes()
    }

    fn process(&mut self, raw: &[u8]) -> Response {
        let cmd = match Command::parse(raw) {
            Ok(c) => c,
            Err(sw) => {
                self.chain = None;
                self.pending = None;
                return sw.into();
            }
        };
        if cmd.cla & !0x10 != 0 {
            self.chain = None;
            return Sw::ClaNotSupported.into();
        }
        if cmd.ins == 0xC0 && !cmd.is_chained() {
            return match self.pending.take() {
                Some(rest) => self.split(rest, cmd.max_response()),
                None => Sw::Conditions.into(),
            };
        }
        self.pending = None;
        let header = (cmd.ins, cmd.p1, cmd.p2);
        if cmd.is_chained() {
            let chain = match self.chain.take() {
                Some(c) if c.header == header => c,
                _ => Chain {
                    header,
                    data: Zeroizing::new(Vec::new()),
                },
            };
            let mut chain = chain;
            if chain.data.len() + cmd.data.len() > MAX_CHAIN {
                return Sw::WrongLength.into();
            }
            chain.data.extend_from_slice(&cmd.data);
            self.chain = Some(chain);
            return Sw::Ok.into();
        }
        let full = match self.chain.take() {
            Some(c) if c.header == header => {
                let mut data = c.data;
                data.extend_from_slice(&cmd.data);
                Command {
                    data: data.to_vec(),
                    ..cmd
                }
            }
            _ => cmd,
        };
        let max = full.max_response();
        let resp = self.dispatch(&full);
        if resp.sw == Sw::Ok && resp.data.len() > max {
            return self.split(resp.data, max);
        }
        resp
    }

    /// Sends the first `max` bytes and keeps the rest for GET RESPONSE.
    fn split(&mut self, mut data: Vec<u8>, max: usize) -> Response {
        if data.len() <= max {
            return Response::ok(data);
        }
        let rest = data.split_off(max);
        let sw = Sw::MoreData(rest.len().min(0xFF) as u8);
        self.pending = Some(rest);
        Response { data, sw }
    }

    fn dispatch(&mut self, cmd: &Command) -> Response {
        if cmd.ins == 0xA4 {
            if cmd.p1 != 0x04 {
                return Sw::IncorrectP1P2.into();
            }
            let aid = cmd.data.as_slice();
            let matches =
                |full: &[u8]| aid.len() >= 5 && (aid.starts_with(full) || full.starts_with(aid));
            let (applet, resp) = if aid.starts_with(piv::AID) {
                (Applet::Piv, self.piv.select())
            } else if matches(mgmt::MGMT_AID) {
                (Applet::Mgmt, mgmt::select_mgmt(self.firmware))
            } else if matches(mgmt::OTP_AID) {
                (Applet::Otp, mgmt::select_otp(self.firmware))
            } else {
                return Sw::NotFound.into();
            };
            self.selected = applet;
            return if cmd.p2 == 0x0C { Sw::Ok.into() } else { resp };
        }
        match self.selected {
            Applet::Piv => self.piv.handle(cmd),
            Applet::Mgmt => mgmt::handle_mgmt(cmd, self.serial, self.firmware),
            Applet::Otp => mgmt::handle_otp(cmd, self.serial),
            Applet::None => Sw::InsNotSupported.into(),
        }
    }
}

/// Whether a command's data must not be logged: VERIFY, CHANGE REFERENCE, RESET RETRY, SET
/// MANAGEMENT KEY, IMPORT KEY, and PUT/GET DATA of PRINTED (5FC109, which may hold the
/// management key).
fn secret_command(raw: &[u8]) -> bool {
    let ins = raw.get(1).copied().unwrap_or(0);
    let printed = raw.windows(4).any(|w| w == [0x5C, 0x03, 0x5F, 0xC1])
        && raw.windows(3).any(|w| w == [0x5F, 0xC1, 0x09]);
    matches!(ins, 0x20 | 0x24 | 0x2C | 0xFF | 0xFE) || (matches!(ins, 0xCB | 0xDB) && printed)
}

fn trace(raw: &[u8], resp: &Response) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let head = hex::encode_upper(raw.get(..4).unwrap_or(raw));
    if secret_command(raw) {
        debug!("> {head} <{} bytes redacted>", raw.len().saturating_sub(4));
        debug!(
            "< {}{}",
            if resp.data.is_empty() {
                ""
            } else {
                "<redacted> "
            },
            resp.sw
        );
    } else {
        debug!(
            "> {head} {}",
            hex::encode_upper(raw.get(4..).unwrap_or_default())
        );
        debug!("< {} {}", hex::encode_upper(&resp.data), resp.sw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::piv::{Config, TouchMode};
    use crate::state::Persistent;
    use std::time::Duration;

    fn card(fw: Firmware) -> Card {
        let cfg = Config {
            serial: 12_345_678,
            firmware: fw,
            touch: TouchMode::Never,
            touch_delay: Duration::ZERO,
        };
        Card::new(
            Piv::new(cfg, Persistent::factory(fw).unwrap()),
            12_345_678,
            fw,
            None,
        )
    }

    fn tx(c: &mut Card, apdu: &str) -> String {
        hex::encode_upper(c.transmit(&hex::decode(apdu).unwrap()))
    }

    #[test]
    fn select_version_serial_like_the_crate() {
        let mut c = card(Firmware(5, 4, 3));
        assert_eq!(tx(&mut c, "00FD000000"), "6D00", "nothing selected yet");
        assert_eq!(
            tx(&mut c, "00A4040005A000000308"),
            "61114F0600001000010079074F05A0000003089000"
        );
        assert_eq!(tx(&mut c, "00FD000000"), "0504039000");
        assert_eq!(tx(&mut c, "00F8000000"), "00BC614E9000");
        assert_eq!(tx(&mut c, "00A4040007A0000000010199"), "6A82");
        assert_eq!(
            tx(&mut c, "00F8000000"),
            "00BC614E9000",
            "failed SELECT keeps the applet"
        );
        assert_eq!(tx(&mut c, "80F8000000"), "6E00");
        // OpenSC's partial AID.
        assert_eq!(
            tx(&mut c, "00A4040009A0000003080000100000"),
            "61114F0600001000010079074F05A0000003089000"
        );
        // Management applet.
        assert!(tx(&mut c, "00A4040008A000000527471117").ends_with("9000"));
        assert!(tx(&mut c, "001D000000").starts_with("23"));
        // Malformed APDUs get a status word.
        assert_eq!(tx(&mut c, "00A404"), "6700");
        assert_eq!(tx(&mut c, "00A4040005A0"), "6700");
    }

    #[test]
    fn response_chaining_and_le() {
        let mut c = card(Firmware(5, 4, 3));
        tx(&mut c, "00A4040005A000000308");
        // The F9 certificate object is > 256 bytes: 61xx then GET RESPONSE until 9000.
        let first = c.transmit(&hex::decode("00CB3FFF055C035FFF01").unwrap());
        assert_eq!(first.len(), 258);
        assert_eq!(first[256], 0x61);
        let mut all = first[..256].to_vec();
        let mut sw = [first[256], first[257]];
        while sw[0] == 0x61 {
            let r = c.transmit(&[0, 0xC0, 0, 0, 0]);
            let n = r.len() - 2;
            all.extend_from_slice(&r[..n]);
            sw = [r[n], r[n + 1]];
        }
        assert_eq!(sw, [0x90, 0x00]);
        assert_eq!(all[0], 0x53);
        let (obj, rest) = crate::tlv::parse_one(&all).unwrap();
        assert!(rest.is_empty() && obj.value[0] == 0x70);
        // OpenSC: Le = 8 gives 8 bytes and 61 0C.
        assert_eq!(tx(&mut c, "00CB3FFF035C017E08"), "7E124F0BA0000003610C");
        assert_eq!(
            tx(&mut c, "00CB3FFF035C017E14"),
            "7E124F0BA0000003080000100001005F2F0240009000"
        );
        // Extended Le takes everything at once.
        let r = c.transmit(&hex::decode("00CB3FFF0000055C035FFF010000").unwrap());
        assert_eq!(r[r.len() - 2..], [0x90, 0x00]);
        assert_eq!(tx(&mut c, "00C0000000"), "6985", "nothing pending");
    }

    #[test]
    fn command_chaining() {
        let mut c = card(Firmware(5, 4, 3));
        tx(&mut c, "00A4040005A000000308");
        // VERIFY split in two chained parts: "1234" then "56" + padding.
        assert_eq!(tx(&mut c, "102000800431323334"), "9000");
        assert_eq!(tx(&mut c, "00200080043536FFFF"), "9000");
        assert_eq!(tx(&mut c, "0020008000"), "9000", "verified");
        // A chain interrupted by another command is dropped.
        assert_eq!(tx(&mut c, "102000800431323334"), "9000");
        assert_eq!(tx(&mut c, "00FD000000"), "0504039000");
        assert_eq!(tx(&mut c, "00200080043536FFFF"), "6A80");
    }
}
