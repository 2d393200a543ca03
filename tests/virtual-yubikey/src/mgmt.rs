//! The YubiKey management applet (device info for ykman) and the OTP applet stub (the YK4
//! serial command the `yubikey` crate uses on firmware 4).
//!
//! Owns only these two tiny applets; no state, no secrets.

use crate::apdu::{Command, Response, Sw};
use crate::attest::FORM_FACTOR;
use crate::keys::Firmware;
use crate::tlv;

/// The management AID.
pub const MGMT_AID: &[u8] = &[0xA0, 0x00, 0x00, 0x05, 0x27, 0x47, 0x11, 0x17];
/// The OTP AID.
pub const OTP_AID: &[u8] = &[0xA0, 0x00, 0x00, 0x05, 0x27, 0x20, 0x01, 0x01];

/// SELECT MGMT: the version string ykman parses with a regex.
pub fn select_mgmt(fw: Firmware) -> Response {
    Response::ok(format!("Virtual mgr - FW version {fw}").into_bytes())
}

/// MGMT commands: READ CONFIG (`1D`).
pub fn handle_mgmt(cmd: &Command, serial: u32, fw: Firmware) -> Response {
    match cmd.ins {
        0x1D => {
            if cmd.p1 > 0 {
                // fw 5.6+ pages device info; one page holds everything we report.
                return Response::ok(vec![0x00]);
            }
            let mut t = Vec::new();
            // USB supported capabilities: OTP 01, U2F 02, OpenPGP 08, PIV 10, OATH 20, FIDO2 200.
            tlv::push(&mut t, 0x01, &[0x02, 0x3B]);
            tlv::push(&mut t, 0x02, &serial.to_be_bytes());
            tlv::push(&mut t, 0x03, &[0x02, 0x3B]);
            tlv::push(&mut t, 0x04, &[FORM_FACTOR]);
            tlv::push(&mut t, 0x05, &fw.bytes());
            tlv::push(&mut t, 0x06, &[0x00, 0x00]);
            tlv::push(&mut t, 0x07, &[0x0F]);
            tlv::push(&mut t, 0x08, &[0x00]);
            tlv::push(&mut t, 0x0A, &[0x00]);
            let mut out = vec![t.len() as u8];
            out.extend_from_slice(&t);
            Response::ok(out)
        }
        _ => Sw::InsNotSupported.into(),
    }
}

/// SELECT OTP: the status bytes (version, sequence, touch level).
pub fn select_otp(fw: Firmware) -> Response {
    let [a, b, c] = fw.bytes();
    Response::ok(vec![a, b, c, 0x01, 0x00, 0x00])
}

/// OTP commands: only `01 10 00` (read serial, YK4 path).
pub fn handle_otp(cmd: &Command, serial: u32) -> Response {
    match (cmd.ins, cmd.p1, cmd.p2) {
        (0x01, 0x10, 0x00) => Response::ok(serial.to_be_bytes().to_vec()),
        _ => Sw::InsNotSupported.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_config_matches_transcript() {
        let cmd = Command::parse(&[0, 0x1D, 0, 0, 0]).unwrap();
        let r = handle_mgmt(&cmd, 12_345_678, Firmware(5, 4, 3));
        assert_eq!(
            hex::encode_upper(r.data),
            "230102023B020400BC614E0302023B04010105030504030602000007010F0801000A0100"
        );
        assert_eq!(
            select_mgmt(Firmware(5, 7, 1)).data,
            b"Virtual mgr - FW version 5.7.1"
        );
    }
}
