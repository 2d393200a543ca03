//! The vsmartcard vpcd wire protocol (notes §4): the card is a TCP client of the vpcd driver
//! inside pcscd; each message is a 2-byte big-endian length plus payload; 1-byte payloads are
//! control bytes (0 power off, 1 power on, 2 reset, 4 get ATR), anything else is an APDU.
//!
//! Owns the socket, framing and the reconnect loop. Card behaviour is `card`'s business.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::{debug, info, warn};

use crate::card::{ATR, Card, Power};

/// How long a blocking read waits before checking the shutdown flag.
const POLL: Duration = Duration::from_millis(200);
/// Longest pause between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Connects to vpcd and serves the card until `shutdown` is set, reconnecting with a short
/// backoff whenever the connection drops (e.g. pcscd restarts) or cannot be made.
pub fn run(host: &str, port: u16, card: &mut Card, shutdown: &AtomicBool, log_atr: bool) {
    let mut backoff = Duration::from_millis(100);
    let mut announced = false;
    while !shutdown.load(Ordering::Relaxed) {
        match TcpStream::connect((host, port)) {
            Ok(stream) => {
                info!("connected to vpcd at {host}:{port}: card inserted");
                backoff = Duration::from_millis(100);
                announced = false;
                card.power(Power::Off);
                match serve(stream, card, shutdown, log_atr) {
                    Ok(()) => info!("shutting down"),
                    Err(e) => info!("vpcd connection closed ({e}): card removed, reconnecting"),
                }
            }
            Err(e) => {
                if !announced {
                    info!("waiting for vpcd at {host}:{port} ({e})");
                    announced = true;
                }
                sleep_unless(shutdown, backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn sleep_unless(shutdown: &AtomicBool, total: Duration) {
    let step = Duration::from_millis(50);
    let mut slept = Duration::ZERO;
    while slept < total && !shutdown.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}

/// Serves one connection. `Ok(())` means shutdown was requested.
///
/// # Errors
/// Any socket error, including the peer closing the connection.
pub fn serve<S: Read + Write + ReadTimeout>(
    mut stream: S,
    card: &mut Card,
    shutdown: &AtomicBool,
    log_atr: bool,
) -> io::Result<()> {
    stream.set_poll_timeout(POLL)?;
    loop {
        let Some(len) = read_full(&mut stream, 2, shutdown)? else {
            return Ok(());
        };
        let n = u16::from_be_bytes([
            len.first().copied().unwrap_or(0),
            len.get(1).copied().unwrap_or(0),
        ]) as usize;
        let Some(msg) = read_full(&mut stream, n, shutdown)? else {
            return Ok(());
        };
        match msg.as_slice() {
            [] => {}
            [0x00] => card.power(Power::Off),
            [0x01] => card.power(Power::On),
            [0x02] => card.power(Power::Reset),
            [0x04] => {
                if log_atr {
                    debug!("get ATR");
                }
                write_frame(&mut stream, ATR)?;
            }
            [other] => warn!("unknown vpcd control byte {other:02X}"),
            apdu => {
                let mut resp = card.transmit(apdu);
                if resp.len() > u16::MAX as usize {
                    resp = vec![0x6F, 0x00];
                }
                write_frame(&mut stream, &resp)?;
            }
        }
    }
}

/// A stream whose reads can time out, so the loop can notice a shutdown request.
pub trait ReadTimeout {
    /// Sets the read timeout.
    ///
    /// # Errors
    /// The socket error.
    fn set_poll_timeout(&mut self, d: Duration) -> io::Result<()>;
}

impl ReadTimeout for TcpStream {
    fn set_poll_timeout(&mut self, d: Duration) -> io::Result<()> {
        self.set_nodelay(true)?;
        self.set_read_timeout(Some(d))
    }
}

impl<T: ReadTimeout> ReadTimeout for &mut T {
    fn set_poll_timeout(&mut self, d: Duration) -> io::Result<()> {
        (**self).set_poll_timeout(d)
    }
}

fn write_frame(stream: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    let len = u16::try_from(payload.len()).map_err(|_| io::Error::other("frame too long"))?;
    let mut buf = Vec::with_capacity(payload.len() + 2);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(payload);
    stream.write_all(&buf)?;
    stream.flush()
}

/// Reads exactly `n` bytes. `Ok(None)` if shutdown was requested while idle.
fn read_full(
    stream: &mut impl Read,
    n: usize,
    shutdown: &AtomicBool,
) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let Some(dst) = buf.get_mut(got..) else { break };
        match stream.read(dst) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => got += k,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if shutdown.load(Ordering::Relaxed) {
                    return Ok(None);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Firmware;
    use crate::piv::{Config, Piv, TouchMode};
    use crate::state::Persistent;
    use std::io::Cursor;

    /// An in-memory "vpcd": scripted input, captured output.
    struct Pipe {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl ReadTimeout for Pipe {
        fn set_poll_timeout(&mut self, _: Duration) -> io::Result<()> {
            Ok(())
        }
    }

    fn frame(p: &[u8]) -> Vec<u8> {
        [(p.len() as u16).to_be_bytes().to_vec(), p.to_vec()].concat()
    }

    #[test]
    fn framing_control_and_apdu() {
        let fw = Firmware(5, 4, 3);
        let cfg = Config {
            serial: 1,
            firmware: fw,
            touch: TouchMode::Never,
            touch_delay: Duration::ZERO,
        };
        let mut card = Card::new(Piv::new(cfg, Persistent::factory(fw).unwrap()), 1, fw, None);
        let select = hex::decode("00A4040005A000000308").unwrap();
        let input = [frame(&[1]), frame(&[4]), frame(&select), frame(&[2])].concat();
        let mut pipe = Pipe {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        let err = serve(&mut pipe, &mut card, &AtomicBool::new(false), false).unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::UnexpectedEof,
            "EOF = card removed"
        );
        let mut apt = hex::decode("61114F0600001000010079074F05A000000308").unwrap();
        apt.extend_from_slice(&[0x90, 0x00]);
        assert_eq!(pipe.output, [frame(ATR), frame(&apt)].concat());
    }
}
