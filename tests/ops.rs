//! The operations listener through the real daemon: `/livez`, `/readyz` (ready on a loaded
//! token; 503 with the reasons while the token is absent), `/metrics` read by Prometheus's own
//! Python parser (`prometheus_client`) and following what happened: signatures by operation,
//! outcome and code, policy and rate-limit refusals, device queue wait and device time, key
//! versions by state, refused TLS handshakes; and JSON logs (`[log] format = "json"`), one
//! object per line, with the request id of a refused request in its line.

mod support;

use std::io::Write as _;

use serde_json::{Value, json};
use sigild::api::pb;
use support::ops::{OPS_TABLE, http, ops_addr, sample, scrape};
use support::*;
use tonic::Code;

/// A caller allowed generic JWS on `ops-*` keys, twice a minute.
const LIMITED: &str = "limited";
/// A caller allowed nothing that exists.
const DENIED: &str = "denied";

fn extra() -> String {
    format!(
        "[[caller]]\nidentity = \"spiffe://sigild.test/{LIMITED}\"\nkeys = [\"ops-*\"]\noperations = [\"jws\"]\nrate = \"2/m\"\n\n\
         [[caller]]\nidentity = \"spiffe://sigild.test/{DENIED}\"\nkeys = [\"nothing-*\"]\noperations = [\"jws\"]\n\n\
         [log]\nformat = \"json\"\n{OPS_TABLE}"
    )
}

/// A generic JWS over `payload` with `key`'s active version, as `who`.
async fn sign_as(
    d: &Daemon,
    who: &ClientFiles,
    key: &pb::Key,
    payload: &Value,
) -> TestResult<Result<pb::SignJwsResponse, tonic::Status>> {
    let v = key
        .versions
        .iter()
        .find(|v| v.version == key.active_version)
        .ok_or("no active version")?;
    let header = json!({"alg": v.alg, "kid": v.kid}).to_string();
    Ok(d.signer_as(who)
        .await?
        .sign_jws(pb::SignJwsRequest {
            version: 0,
            key: key.name.clone(),
            protected_header: header.into_bytes(),
            payload: payload.to_string().into_bytes(),
        })
        .await
        .map(tonic::Response::into_inner))
}

#[tokio::test(flavor = "multi_thread")]
async fn probes_metrics_and_json_logs_follow_what_the_daemon_does() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start_with(&token, &extra())?;
    let ops = ops_addr(&d)?;

    // Probes.
    let (code, _, body) = http(ops, "GET", "/livez")?;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, _, body) = http(ops, "GET", "/readyz")?;
    let ready: Value = serde_json::from_str(&body)?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        ready,
        json!({"ready": true, "serving": true, "keyring_loaded": true, "quarantined": false, "device_stalled": false})
    );
    assert_eq!(http(ops, "GET", "/nothing")?.0, 404);
    assert_eq!(http(ops, "POST", "/metrics")?.0, 405);

    // Traffic: a key, signatures (verified), a policy refusal, rate-limit refusals.
    let key = d.create("ops-es256", "ES256", 0).await?;
    let limited = token.pki.caller(LIMITED)?;
    let denied = token.pki.caller(DENIED)?;
    let jwks = d.jwks().await?;
    let mut signed = 0;
    let mut limited_count = 0;
    for i in 0..4 {
        match sign_as(&d, &limited, &key, &json!({"n": i})).await? {
            Ok(r) => {
                verify_jws(&r.compact, &jwks)?;
                signed += 1;
            }
            Err(s) if s.code() == Code::ResourceExhausted => limited_count += 1,
            Err(s) => return Err(format!("unexpected {s:?}").into()),
        }
    }
    assert_eq!((signed, limited_count), (2, 2));
    let refused = sign_as(&d, &denied, &key, &json!({"n": 9}))
        .await?
        .err()
        .ok_or("the denied caller signed")?;
    assert_eq!(refused.code(), Code::PermissionDenied);
    let request_id = refused
        .metadata()
        .get("x-request-id")
        .ok_or("no request id")?
        .to_str()?
        .to_owned();

    // A TLS handshake refused: garbage instead of a ClientHello.
    let grpc: std::net::SocketAddr = d.endpoint.trim_start_matches("https://").parse()?;
    let mut s = std::net::TcpStream::connect(grpc)?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    drop(s);

    // Metrics, as Prometheus reads them.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let m = loop {
        let m = scrape(ops)?;
        if sample(
            &m,
            "sigild_tls_handshakes_refused_total",
            &[("reason", "failed")],
        ) >= 1.0
            || std::time::Instant::now() > until
        {
            break m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let sign_jws = |outcome, code| {
        sample(
            &m,
            "sigild_requests_total",
            &[
                ("operation", "SignJws"),
                ("outcome", outcome),
                ("code", code),
            ],
        )
    };
    assert_eq!(sign_jws("ok", "OK"), f64::from(signed));
    assert_eq!(
        sign_jws("refused", "RESOURCE_EXHAUSTED"),
        f64::from(limited_count)
    );
    assert_eq!(sign_jws("refused", "PERMISSION_DENIED"), 1.0);
    assert_eq!(
        sample(
            &m,
            "sigild_requests_total",
            &[("operation", "CreateKey"), ("code", "OK")]
        ),
        1.0
    );
    assert_eq!(
        sample(&m, "sigild_refusals_total", &[("reason", "policy")]),
        1.0
    );
    assert_eq!(
        sample(&m, "sigild_refusals_total", &[("reason", "rate_limit")]),
        f64::from(limited_count)
    );
    assert_eq!(
        sample(
            &m,
            "sigild_request_duration_seconds_count",
            &[("operation", "SignJws")]
        ),
        f64::from(signed + limited_count + 1)
    );
    assert!(sample(&m, "sigild_device_seconds_count", &[]) >= f64::from(signed));
    assert!(sample(&m, "sigild_device_queue_wait_seconds_count", &[]) >= f64::from(signed));
    assert_eq!(
        sample(
            &m,
            "sigild_device_queue_wait_seconds_bucket",
            &[("le", "+Inf")]
        ),
        sample(&m, "sigild_device_queue_wait_seconds_count", &[])
    );
    assert_eq!(sample(&m, "sigild_device_queue_depth", &[]), 0.0);
    assert_eq!(sample(&m, "sigild_device_sessions_in_use", &[]), 0.0);
    assert_eq!(
        sample(&m, "sigild_key_versions", &[("state", "active")]),
        1.0
    );
    assert_eq!(sample(&m, "sigild_key_versions", &[("state", "next")]), 0.0);
    assert!(
        sample(
            &m,
            "sigild_tls_handshakes_refused_total",
            &[("reason", "failed")]
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(sample(&m, "sigild_audit_write_failures_total", &[]), 0.0);
    assert_eq!(sample(&m, "sigild_ready", &[]), 1.0);
    assert_eq!(sample(&m, "sigild_keyring_loaded", &[]), 1.0);
    for (name, kind) in [
        ("sigild_requests", "counter"),
        ("sigild_request_duration_seconds", "histogram"),
        ("sigild_device_queue_wait_seconds", "histogram"),
        ("sigild_device_seconds", "histogram"),
        ("sigild_device_errors", "counter"),
        ("sigild_device_queue_depth", "gauge"),
        ("sigild_device_sessions_in_use", "gauge"),
        ("sigild_refusals", "counter"),
        ("sigild_audit_write_failures", "counter"),
        ("sigild_key_versions", "gauge"),
        ("sigild_tls_handshakes_refused", "counter"),
        ("sigild_connections_refused", "counter"),
        ("sigild_ready", "gauge"),
    ] {
        assert_eq!(m["families"][name], kind, "{name}");
    }

    // JSON logs: every line an object; the refusal's line carries its request id.
    let log = d.log.lock().map_err(|_| "log lock")?.clone();
    assert!(!log.is_empty());
    for line in &log {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{e}: {line}"))?;
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(
        log.iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["request_id"] == request_id.as_str() && v["level"] == "INFO"),
        "no log line with request id {request_id}:\n{}",
        log.join("\n")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_says_why_while_the_token_is_absent() -> TestResult {
    let token = Token::new()?;
    let text = token
        .config(OPS_TABLE)
        .replace(&format!("token={}", token.label), "token=not-there");
    let config = token.write_config("absent.toml", &text)?;
    let d = Daemon::start_config(&token.conf, &config)?;
    let ops = ops_addr(&d)?;
    assert_eq!(http(ops, "GET", "/livez")?.0, 200);
    let (code, head, body) = http(ops, "GET", "/readyz")?;
    assert_eq!(code, 503, "{head}{body}");
    let r: Value = serde_json::from_str(&body)?;
    assert_eq!(r["ready"], false);
    assert_eq!(r["serving"], false);
    assert_eq!(r["keyring_loaded"], false);
    let m = scrape(ops)?;
    assert_eq!(sample(&m, "sigild_ready", &[]), 0.0);
    assert_eq!(sample(&m, "sigild_keyring_loaded", &[]), 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ops_serves_https_with_its_own_certificate() -> TestResult {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let token = Token::new()?;
    let extra = format!(
        "{OPS_TABLE}[ops.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        token.pki.server_cert.display(),
        token.pki.server_key.display()
    );
    let d = Daemon::start_with(&token, &extra)?;
    let ops = ops_addr(&d)?;
    // Plain HTTP is not served there.
    assert!(http(ops, "GET", "/livez").is_err());
    let mut roots = rustls::RootCertStore::empty();
    for der in sigild::tls::pem_certificates(&std::fs::read(&token.pki.ca_pem)?) {
        roots.add(rustls::pki_types::CertificateDer::from(der))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(ops).await?;
    let mut tls = connector
        .connect(rustls::pki_types::ServerName::try_from("localhost")?, tcp)
        .await?;
    tls.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"ready\":true"), "{answer}");
    Ok(())
}
