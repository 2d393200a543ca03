//! The fault matrix: a daemon on a SoftHSM token behind the fault-injecting PKCS#11 module
//! (tests/faulty-pkcs11), one test per kind of fault. Every returned signature is checked by
//! the independent verifier, and each test proves from the module's stats that its fault was
//! really injected. Figures are printed (`--no-capture`) for the record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::faulty::Faults;
use support::{Daemon, TestResult, Token};

/// The module passes everything through when told nothing, and counts what it saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_module_passes_through_without_faults() -> TestResult {
    let token = Token::new()?;
    let faults = Faults::new(token.dir.path());
    let config = token.write_config("faulty.toml", &faults.config(&token, ""))?;
    let d = Daemon::start_config_env(&token.conf, &config, &faults.env())?;
    d.create("k", "ES256", 0).await?;
    support::sign_verified(&d, "k", "ES256").await?;
    assert!(faults.stats().get("sign_calls") >= 2, "{}", faults.stats());
    Ok(())
}
