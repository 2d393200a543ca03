//! Runs `e2e.sh` (pcscd + vpcd + the emulator, driven by yubico-piv-tool, ykman and ykcs11).
//! Ignored by default, so a plain `cargo test` needs neither root nor the PC/SC stack, and
//! reported as ignored rather than passed; `scripts/test.sh` runs `e2e.sh` itself.

use std::process::Command;

#[test]
#[ignore = "needs root, pcscd, vpcd and Yubico's tools; scripts/test.sh runs e2e.sh directly"]
fn e2e_with_yubico_tools() -> Result<(), Box<dyn std::error::Error>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e.sh");
    let status = Command::new("bash").arg(script).status()?;
    if !status.success() {
        return Err(format!("{script} failed: {status}").into());
    }
    Ok(())
}
