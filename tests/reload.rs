//! SIGHUP reload and systemd notifications, against the real daemon on a SoftHSM token (behind
//! the fault-injecting module, to hold a signature inside the device across a reload): a new
//! server certificate and client CA swapped on disk serve new connections after SIGHUP while a
//! request in flight and an open connection carry on; caller rules change with the file; a
//! broken certificate or a broken config is refused as a whole, the daemon keeps what it had
//! and says why; systemd hears READY=1 once the daemon serves, RELOADING=1 / READY=1 around
//! each reload and STOPPING=1 at SIGTERM. Signatures are checked with jwcrypto.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sigild::api::pb;
use support::reload::{Notify, certificate_der, replace_server_certificate, served_certificate};
use support::*;

/// A `[[caller]]` rule letting `spiffe://sigild.test/<name>` sign JWS with key `k`.
fn jws_caller(name: &str) -> String {
    format!(
        "\n[[caller]]\nidentity = \"spiffe://sigild.test/{name}\"\nkeys = [\"k\"]\noperations = [\"jws\"]\n"
    )
}

async fn sign_as(d: &Daemon, who: &ClientFiles) -> TestResult<pb::SignJwsResponse> {
    let mut s = d.signer_as(who).await?;
    Ok(s.sign_jws(pb::SignJwsRequest {
        version: 0,
        key: "k".into(),
        protected_header: br#"{"alg":"ES256"}"#.to_vec(),
        payload: br#"{"sub":"reload"}"#.to_vec(),
    })
    .await?
    .into_inner())
}

/// SIGHUP, then wait until the reload is over (READY=1 after RELOADING=1).
fn hangup(d: &Daemon, notify: &mut Notify) -> TestResult {
    send_signal(d.pid(), "HUP")?;
    notify.wait_for("RELOADING=1", Duration::from_secs(10))?;
    notify.wait_for("READY=1", Duration::from_secs(10))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_swaps_certificates_and_callers_without_dropping_requests() -> TestResult {
    let token = Token::new()?;
    let faults = faulty::Faults::new(token.dir.path());
    let mut notify = Notify::bind(token.dir.path())?;
    let pki = &token.pki;
    let rs = pki.caller("rs")?;
    // A partner whose certificate comes from a CA the daemon does not trust yet.
    let ca2 = sigild::tls::TestCa::new("partner CA")?;
    let ca2_pem = token.dir.path().join("ca2.pem");
    std::fs::write(&ca2_pem, &ca2.cert_pem)?;
    let leaf = ca2.client(&sigild::tls::ClientNames {
        spiffe: Some("spiffe://sigild.test/partner".into()),
        ..Default::default()
    })?;
    let partner = ClientFiles {
        ca: pki.ca_pem.clone(),
        cert: token.dir.path().join("partner.pem"),
        key: token.dir.path().join("partner.key"),
    };
    std::fs::write(&partner.cert, &leaf.cert_pem)?;
    std::fs::write(&partner.key, leaf.key_pem.as_bytes())?;
    std::fs::set_permissions(
        &partner.key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;

    let first = faults.config(&token, &jws_caller("rs"));
    let config = token.write_config("reload.toml", &first)?;
    let mut env = faults.env();
    env.extend(notify.env());
    let mut d = Daemon::start_config_env(&token.conf, &config, &env)?;
    let ready = notify.wait_for("READY=1", Duration::from_secs(10))?;
    assert!(ready.contains("STATUS=serving on 127.0.0.1:"), "{ready}");
    let addr: SocketAddr = d.endpoint.trim_start_matches("https://").parse()?;
    let admin = d.client.clone().ok_or("no admin files")?;
    d.create("k", "ES256", 0).await?;
    let cert1 = certificate_der(&pki.server_cert)?;
    assert_eq!(served_certificate(addr, &admin).await?, cert1);
    sign_as(&d, &rs).await?;
    assert!(
        sign_as(&d, &partner).await.is_err(),
        "a client certificate from an untrusted CA was accepted"
    );

    // A signature held inside the device across the reload, on a connection opened before it.
    let mut open = d.signer().await?;
    faults.set("sign_delay_ms=1500\n");
    let mut held = open.clone();
    let in_flight = tokio::spawn(async move {
        held.sign_jws(pb::SignJwsRequest {
            version: 0,
            key: "k".into(),
            protected_header: br#"{"alg":"ES256"}"#.to_vec(),
            payload: br#"{"sub":"in flight"}"#.to_vec(),
        })
        .await
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while faults.stats().get("delayed") == 0 {
        assert!(Instant::now() < deadline, "no C_Sign was delayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // New certificate and key on disk, the partner's CA trusted, `rs` replaced by `partner`.
    replace_server_certificate(&pki.ca, &pki.server_cert, &pki.server_key)?;
    let cert2 = certificate_der(&pki.server_cert)?;
    assert_ne!(cert1, cert2);
    let ca_line = format!("client_ca = [\"{}\"]", pki.ca_pem.display());
    let second = faults.config(&token, &jws_caller("partner")).replace(
        &ca_line,
        &format!(
            "client_ca = [\"{}\", \"{}\"]",
            pki.ca_pem.display(),
            ca2_pem.display()
        ),
    );
    std::fs::write(&config, &second)?;
    hangup(&d, &mut notify)?;

    let signed = in_flight.await??.into_inner();
    faults.set("");
    let jwks = d.jwks().await?;
    verify_jws(&signed.compact, &jwks)?;
    // The connection opened before the reload still serves.
    let again = open
        .sign_jws(pb::SignJwsRequest {
            version: 0,
            key: "k".into(),
            protected_header: br#"{"alg":"ES256"}"#.to_vec(),
            payload: b"{}".to_vec(),
        })
        .await?
        .into_inner();
    verify_jws(&again.compact, &jwks)?;
    // New connections get the new certificate; the new CA and rules are in effect.
    assert_eq!(served_certificate(addr, &admin).await?, cert2);
    verify_jws(&sign_as(&d, &partner).await?.compact, &jwks)?;
    let denied = sign_as(&d, &rs).await.err().ok_or("rs still allowed")?;
    let status = denied
        .downcast_ref::<tonic::Status>()
        .ok_or(format!("{denied}"))?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let log = d.log_text();
    assert!(log.contains("reloaded"), "{log}");

    // A broken certificate file: nothing changes, not even the caller rules of the same file.
    std::fs::write(&pki.server_cert, "not a certificate\n")?;
    std::fs::write(&config, &first)?;
    hangup(&d, &mut notify)?;
    assert_eq!(served_certificate(addr, &admin).await?, cert2);
    verify_jws(&sign_as(&d, &partner).await?.compact, &jwks)?;
    assert!(
        sign_as(&d, &rs).await.is_err(),
        "rs allowed by a refused reload"
    );
    let log = d.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reload refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    assert!(
        refused[0].contains(&pki.server_cert.display().to_string()),
        "the refusal does not name the file: {}",
        refused[0]
    );

    // A good certificate but a config with a typo: refused, the certificate is not taken up.
    replace_server_certificate(&pki.ca, &pki.server_cert, &pki.server_key)?;
    std::fs::write(
        &config,
        second.replace(
            "identity = \"spiffe://sigild.test/partner\"",
            "identiy = \"spiffe://sigild.test/partner\"",
        ),
    )?;
    hangup(&d, &mut notify)?;
    assert_eq!(served_certificate(addr, &admin).await?, cert2);
    verify_jws(&sign_as(&d, &partner).await?.compact, &jwks)?;
    let log = d.log_text();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("reload refused"))
        .collect();
    assert_eq!(refused.len(), 2, "{log}");
    assert!(refused[1].contains("reload.toml"), "{}", refused[1]);
    // toml's message, on the lines after, names the field.
    assert!(log.contains("unknown field `identiy`"), "{log}");

    // Still serving after two refused reloads; a stop is announced and the exit is clean.
    let status = d.signal_and_wait("TERM", Duration::from_secs(30))?;
    assert_eq!(status.code(), Some(0), "{status}\n{}", d.log_text());
    notify.wait_for("STOPPING=1", Duration::from_secs(5))?;
    Ok(())
}
