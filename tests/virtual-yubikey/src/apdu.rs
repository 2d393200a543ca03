//! ISO 7816-4 command APDUs (cases 1–4, short and extended) and status words.
//!
//! Owns the byte-level parsing of commands and the status-word vocabulary. It knows nothing of
//! applets, chaining state or crypto. Parsing never panics: malformed input is a `Sw::WrongLength`.

use std::fmt;

/// A status word. Only the set a YubiKey's PIV applet uses (notes §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sw {
    /// 9000
    Ok,
    /// 61xx: more data available through GET RESPONSE.
    MoreData(u8),
    /// 63Cx: wrong PIN/PUK, x retries left.
    RetriesLeft(u8),
    /// 6700
    WrongLength,
    /// 6982: security status not satisfied (PIN or management key missing, auth failed).
    SecurityStatus,
    /// 6983: authentication method blocked.
    AuthBlocked,
    /// 6985: conditions of use not satisfied (touch timeout, reset refused).
    Conditions,
    /// 6A80: incorrect data field (bad algorithm, malformed TLV).
    IncorrectData,
    /// 6A82: file or application not found.
    NotFound,
    /// 6A86: incorrect P1/P2.
    IncorrectP1P2,
    /// 6A88: referenced data not found (empty slot in GET METADATA/ATTEST).
    RefNotFound,
    /// 6D00: instruction not supported.
    InsNotSupported,
    /// 6E00: class not supported.
    ClaNotSupported,
    /// 6F00: no precise diagnosis (internal failure, e.g. a crypto error).
    Unknown,
}

impl Sw {
    /// The two wire bytes.
    pub fn bytes(self) -> [u8; 2] {
        match self {
            Sw::Ok => [0x90, 0x00],
            Sw::MoreData(n) => [0x61, n],
            Sw::RetriesLeft(n) => [0x63, 0xC0 | (n & 0x0F)],
            Sw::WrongLength => [0x67, 0x00],
            Sw::SecurityStatus => [0x69, 0x82],
            Sw::AuthBlocked => [0x69, 0x83],
            Sw::Conditions => [0x69, 0x85],
            Sw::IncorrectData => [0x6A, 0x80],
            Sw::NotFound => [0x6A, 0x82],
            Sw::IncorrectP1P2 => [0x6A, 0x86],
            Sw::RefNotFound => [0x6A, 0x88],
            Sw::InsNotSupported => [0x6D, 0x00],
            Sw::ClaNotSupported => [0x6E, 0x00],
            Sw::Unknown => [0x6F, 0x00],
        }
    }
}

impl fmt::Display for Sw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b] = self.bytes();
        write!(f, "{a:02X}{b:02X}")
    }
}

/// A parsed command APDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Class byte; bit 0x10 means "more commands of this chain follow".
    pub cla: u8,
    /// Instruction.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    /// Command data (empty for cases 1 and 2).
    pub data: Vec<u8>,
    /// Maximum response length Ne; `None` when Le is absent.
    pub ne: Option<usize>,
    /// Whether the APDU used the extended-length encoding.
    pub extended: bool,
}

impl Command {
    /// Parses a command APDU (ISO 7816-4 §5.1, cases 1, 2S/E, 3S/E, 4S/E).
    ///
    /// # Errors
    /// `Sw::WrongLength` if the length fields do not match the buffer.
    pub fn parse(buf: &[u8]) -> Result<Command, Sw> {
        let (header, body) = buf.split_at_checked(4).ok_or(Sw::WrongLength)?;
        let [cla, ins, p1, p2] = <[u8; 4]>::try_from(header).map_err(|_| Sw::WrongLength)?;
        let mk = |data: &[u8], ne, extended| Command {
            cla,
            ins,
            p1,
            p2,
            data: data.to_vec(),
            ne,
            extended,
        };
        match body {
            // Case 1.
            [] => Ok(mk(&[], None, false)),
            // Case 2S.
            [le] => Ok(mk(&[], Some(short_ne(*le)), false)),
            // Extended: a 00 byte followed by at least two more.
            [0, rest @ ..] if rest.len() >= 2 => {
                let (lc_bytes, tail) = rest.split_at(2);
                let n = match lc_bytes {
                    [a, b] => u16::from_be_bytes([*a, *b]) as usize,
                    _ => return Err(Sw::WrongLength),
                };
                if tail.is_empty() {
                    // Case 2E: the two bytes are Le.
                    return Ok(mk(&[], Some(ext_ne(n)), true));
                }
                let data = tail.get(..n).ok_or(Sw::WrongLength)?;
                match tail.get(n..).unwrap_or_default() {
                    [] => Ok(mk(data, None, true)),
                    [a, b] => Ok(mk(
                        data,
                        Some(ext_ne(u16::from_be_bytes([*a, *b]) as usize)),
                        true,
                    )),
                    _ => Err(Sw::WrongLength),
                }
            }
            // Short case 3/4.
            [lc, rest @ ..] => {
                let n = *lc as usize;
                if n == 0 {
                    return Err(Sw::WrongLength);
                }
                let data = rest.get(..n).ok_or(Sw::WrongLength)?;
                match rest.get(n..).unwrap_or_default() {
                    [] => Ok(mk(data, None, false)),
                    [le] => Ok(mk(data, Some(short_ne(*le)), false)),
                    _ => Err(Sw::WrongLength),
                }
            }
        }
    }

    /// Whether CLA announces that more parts of a command chain follow.
    pub fn is_chained(&self) -> bool {
        self.cla & 0x10 != 0
    }

    /// The number of response bytes the client accepts in one reply: Ne, or 256 when Le is
    /// absent (the crate never sends Le; a real YubiKey answers those with 61xx chaining).
    pub fn max_response(&self) -> usize {
        self.ne.unwrap_or(256)
    }
}

fn short_ne(le: u8) -> usize {
    if le == 0 { 256 } else { le as usize }
}

fn ext_ne(le: usize) -> usize {
    if le == 0 { 65536 } else { le }
}

/// A response: data plus status word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Response data.
    pub data: Vec<u8>,
    /// Status word.
    pub sw: Sw,
}

impl Response {
    /// 9000 with data.
    pub fn ok(data: Vec<u8>) -> Response {
        Response { data, sw: Sw::Ok }
    }

    /// A bare status word.
    pub fn status(sw: Sw) -> Response {
        Response {
            data: Vec::new(),
            sw,
        }
    }

    /// The wire bytes `data ‖ SW1 SW2`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.data.len() + 2);
        v.extend_from_slice(&self.data);
        v.extend_from_slice(&self.sw.bytes());
        v
    }
}

impl From<Sw> for Response {
    fn from(sw: Sw) -> Response {
        Response::status(sw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case1_and_case2() {
        let c = Command::parse(&[0, 0xFD, 0, 0]).unwrap();
        assert_eq!((c.data.len(), c.ne), (0, None));
        // The crate's "Lc 00" is a case-2 APDU with Le=256.
        let c = Command::parse(&[0, 0xFD, 0, 0, 0]).unwrap();
        assert_eq!((c.data.len(), c.ne), (0, Some(256)));
        // ykman 4's extended case 2.
        let c = Command::parse(&[0, 0xF7, 0, 0x80, 0, 0, 0]).unwrap();
        assert_eq!((c.data.len(), c.ne, c.extended), (0, Some(65536), true));
    }

    #[test]
    fn case3_and_case4() {
        let c = Command::parse(&hex::decode("00A4040005A000000308").unwrap()).unwrap();
        assert_eq!(c.data, hex::decode("A000000308").unwrap());
        assert_eq!(c.ne, None);
        let c = Command::parse(&hex::decode("00CB3FFF035C017E08").unwrap()).unwrap();
        assert_eq!((c.data.len(), c.ne), (3, Some(8)));
        let c = Command::parse(&hex::decode("00CB3FFF0000055C035FFF00").unwrap()).unwrap();
        assert_eq!((c.data.len(), c.ne, c.extended), (5, None, true));
        let c = Command::parse(&hex::decode("00CB3FFF0000055C035FFF000000").unwrap()).unwrap();
        assert_eq!((c.data.len(), c.ne), (5, Some(65536)));
    }

    #[test]
    fn malformed_lengths() {
        for bad in [
            "",
            "00",
            "00A404",
            "00A4040005A0",
            "00A4040002A00000FF",
            "00CB3FFF0000055C03",
        ] {
            assert_eq!(
                Command::parse(&hex::decode(bad).unwrap()),
                Err(Sw::WrongLength),
                "{bad}"
            );
        }
    }

    #[test]
    fn status_words() {
        assert_eq!(Sw::RetriesLeft(2).bytes(), [0x63, 0xC2]);
        assert_eq!(Response::ok(vec![1]).to_bytes(), vec![1, 0x90, 0]);
        assert_eq!(Sw::IncorrectData.to_string(), "6A80");
    }
}
