//! What caller authentication and the audit trail cost per signature, through the real daemon:
//! the same ES256 raw signature over one connection with plain TCP, mutual TLS, mutual TLS with
//! an audit file, and with the audit file fail-closed. Ignored by default (timing, not
//! correctness); run with
//!
//! ```text
//! cargo nextest run --release --test auth_overhead --run-ignored only --no-capture
//! ```

mod support;

use std::time::{Duration, Instant};

use sigild::api::pb;
use support::*;

async fn measure(d: &Daemon, clients: usize, secs: f64) -> TestResult<(f64, f64)> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut signer = d.signer().await?;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let end = Instant::now() + Duration::from_secs_f64(secs);
            while Instant::now() < end {
                let t = Instant::now();
                let r = signer
                    .sign_raw(pb::SignRawRequest {
                        version: 0,
                        key: "ov".into(),
                        data: b"overhead".to_vec(),
                        alg: String::new(),
                    })
                    .await;
                if r.is_ok() {
                    lat.push(t.elapsed().as_micros() as u64);
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort_unstable();
    let p50 = all.get(all.len() / 2).copied().unwrap_or(0) as f64;
    Ok((all.len() as f64 / secs, p50))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "timing measurement, not a correctness test"]
async fn tls_and_audit_overhead() -> TestResult {
    let token = Token::new()?;
    let audit = token.dir.path().join("audit.jsonl");
    let plain = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndanger_plaintext = true\n\n[[caller]]\ndanger_plaintext = true\nkeys = [\"*\"]\noperations = [\"raw\"]\nadmin = true\n\n[pkcs11]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken = \"pkcs11:token={}\"\npin = {{ file = \"{}\" }}\nworkers = 2\n",
        token.label,
        token.pin_file.display()
    );
    let setups: Vec<(&str, String)> = vec![
        ("plain TCP, no audit", plain),
        ("mTLS, no audit", token.config("")),
        (
            "mTLS, audit file",
            token.config(&format!("\n[audit]\nfile = \"{}\"\n", audit.display())),
        ),
        (
            "mTLS, audit file, fail-closed",
            token.config(&format!(
                "\n[audit]\nfile = \"{}\"\nfail_closed = true\n",
                audit.display()
            )),
        ),
    ];
    println!(
        "{:<32} {:>8} {:>10} {:>9}",
        "setup", "clients", "sig/s", "p50 µs"
    );
    for (i, (name, text)) in setups.iter().enumerate() {
        let config = token.write_config(&format!("ov{i}.toml"), text)?;
        let d = Daemon::start_config(&token.conf, &config)?;
        if i == 0 {
            d.create("ov", "ES256", 0).await?;
        }
        measure(&d, 1, 0.3).await?; // warm-up
        for clients in [1, 4] {
            let (rate, p50) = measure(&d, clients, 2.0).await?;
            println!("{name:<32} {clients:>8} {rate:>10.0} {p50:>9.0}");
        }
    }
    Ok(())
}
