//! `virtual-yubikey`: a virtual YubiKey 5 (PIV applet, management and OTP stubs) that plugs
//! into the real PC/SC stack through the vsmartcard `vpcd` reader driver, so CI can test a
//! YubiKey PIV backend end to end without hardware. Reference: shared/notes/YUBIKEY-PIV.md.
//!
//! `main` only parses options, loads the state, installs logging and signal handling, and
//! hands over to `vpcd::run`. It is a test fixture: the state file holds secrets in the clear.
#![forbid(unsafe_code)]

mod apdu;
mod attest;
mod card;
mod keys;
mod logger;
mod mgmkey;
mod mgmt;
mod piv;
mod state;
mod tlv;
mod vpcd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Parser;
use log::{error, info};

use crate::keys::Firmware;
use crate::piv::TouchMode;

/// A virtual YubiKey 5 for the vsmartcard vpcd reader.
#[derive(Parser, Debug)]
#[command(name = "virtual-yubikey")]
struct Args {
    /// vpcd host (pcscd with the vpcd driver listens there).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// vpcd port: CHANNELID of the reader (35963 for slot "00 00", 35964 for "00 01").
    #[arg(long, default_value_t = 35963)]
    port: u16,
    /// Device serial number.
    #[arg(long, default_value_t = 12_345_678)]
    serial: u32,
    /// Firmware version X.Y.Z. 5.4.x: 3DES default management key, no Ed25519/RSA-3072/4096.
    /// 5.7+: AES-192 default management key, Ed25519, RSA-3072/4096, MOVE KEY.
    #[arg(long, default_value = "5.7.1")]
    version: Firmware,
    /// JSON state file (PINs, keys, objects, attestation CA); created with factory defaults if
    /// absent. Without it the card is factory-fresh at every start.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Touch simulation: never (policies ignored), accept (touched after the delay), timeout
    /// (6985 after the delay).
    #[arg(long, value_enum, default_value = "accept")]
    touch: TouchMode,
    /// Duration of a simulated touch or touch timeout.
    #[arg(long, default_value_t = 300)]
    touch_delay_ms: u64,
    /// Log file (default: stderr).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Log level: error, warn, info, debug (APDU trace, secrets redacted), trace.
    #[arg(long, default_value = "info")]
    log_level: log::LevelFilter,
    /// Also log vpcd's GET ATR presence polls.
    #[arg(long)]
    log_atr: bool,
    /// Write the emulated attestation root certificate (PEM) to this file at start-up.
    #[arg(long)]
    export_attestation_root: Option<PathBuf>,
    /// Create/load the state, do the exports, and exit without connecting.
    #[arg(long)]
    init_only: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let out: Box<dyn std::io::Write + Send> = match &args.log {
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!(
                    "virtual-yubikey: cannot open log file {}: {e}",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
        },
        None => Box::new(std::io::stderr()),
    };
    if let Err(e) = logger::Logger::install(out, args.log_level) {
        eprintln!("virtual-yubikey: {e}");
        return ExitCode::FAILURE;
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let fw = args.version;
    let state = match &args.state {
        Some(path) => state::Persistent::load_or_create(path, fw)?,
        None => state::Persistent::factory(fw)?,
    };
    if let Some(path) = &args.export_attestation_root {
        std::fs::write(path, attest::to_pem(&state.root_cert)?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        info!("attestation root written to {}", path.display());
    }
    if args.init_only {
        return Ok(());
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&shutdown))?;
    }
    let cfg = piv::Config {
        serial: args.serial,
        firmware: fw,
        touch: args.touch,
        touch_delay: Duration::from_millis(args.touch_delay_ms),
    };
    info!("virtual YubiKey serial {} firmware {fw}", args.serial);
    let mut card = card::Card::new(
        piv::Piv::new(cfg, state),
        args.serial,
        fw,
        args.state.clone(),
    );
    vpcd::run(&args.host, args.port, &mut card, &shutdown, args.log_atr);
    Ok(())
}
