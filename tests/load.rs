//! Connection load on the real daemon's TCP listener: a thousand idle mutual-TLS HTTP/2
//! connections held while another client signs; a client that stalls mid-handshake dropped
//! after `server.handshake_timeout_ms`; connections beyond `server.max_connections` closed at
//! once while the open ones keep working (and a freed slot taken again); refused handshakes
//! (no client certificate, garbage instead of a ClientHello) counted and logged with the
//! peer's address.
//!
//! Every signature is checked with the independent verifiers (`sign_verified`). Connections
//! are made with bare tokio-rustls and hyper, so a test controls exactly how far each one gets.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// One HTTP/2 connection driven by hyper, as a tower service for tonic's generated clients.
#[derive(Clone)]
struct H2 {
    send: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
}

impl tower::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let uri = http::Uri::builder()
            .scheme("https")
            .authority("localhost")
            .path_and_query(req.uri().path())
            .build();
        if let Ok(uri) = uri {
            *req.uri_mut() = uri;
        }
        Box::pin(self.send.send_request(req))
    }
}

/// The daemon's TCP address.
fn addr_of(d: &Daemon) -> TestResult<SocketAddr> {
    Ok(d.endpoint
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .parse()?)
}

/// A rustls client trusting the test CA, presenting `client` (or no certificate), offering h2.
fn client_tls(
    ca: &std::path::Path,
    client: Option<&ClientFiles>,
) -> TestResult<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let mut cfg = match client {
        Some(f) => {
            let chain = CertificateDer::pem_file_iter(&f.cert)?.collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&f.key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Connect, complete the TLS handshake and the HTTP/2 handshake; the connection is then served
/// by a task of its own (answering the server's pings) and idle until used.
async fn open_h2(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> TestResult<H2> {
    let tcp = TcpStream::connect(addr).await?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    tokio::spawn(conn);
    Ok(H2 { send })
}

/// A health check over `conn`: proves the daemon serves that very connection.
async fn serving(conn: &H2) -> TestResult {
    let r = HealthClient::new(conn.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    if r.get_ref().status != ServingStatus::Serving as i32 {
        return Err(format!("health: {:?}", r.get_ref()).into());
    }
    Ok(())
}

/// The token's config with more `[server]` keys.
fn config_with_server_keys(token: &Token, keys: &str) -> TestResult<std::path::PathBuf> {
    let head = "[server]\nlisten = \"127.0.0.1:0\"\n";
    let text = token.config("");
    if !text.starts_with(head) {
        return Err("the test config no longer starts with the [server] table".into());
    }
    let text = text.replacen(head, &format!("{head}{keys}\n"), 1);
    token.write_config("load.toml", &text)
}

/// Open-file limit of this process (soft, hard), from /proc/self/limits.
fn nofile_limits() -> TestResult<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits")?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .ok_or("no open-files line in /proc/self/limits")?;
    let mut n = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .map(|v| {
            if v == "unlimited" {
                Ok(u64::MAX)
            } else {
                v.parse::<u64>()
            }
        });
    let soft = n.next().ok_or("no soft limit")??;
    let hard = n.next().ok_or("no hard limit")??;
    Ok((soft, hard))
}

/// Raise this process's soft open-file limit to `want` (up to the hard limit) with util-linux
/// `prlimit`; the daemon started afterwards inherits it.
fn ensure_open_files(want: u64) -> TestResult {
    let (soft, hard) = nofile_limits()?;
    if soft >= want {
        return Ok(());
    }
    if hard < want {
        return Err(format!("this test needs {want} open files; the hard limit is {hard}").into());
    }
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={hard}:{hard}"))
        .status()?;
    let (soft, _) = nofile_limits()?;
    if !status.success() || soft < want {
        return Err(format!("cannot raise the open-file limit to {want} (now {soft})").into());
    }
    Ok(())
}

/// Log lines containing every one of `parts`, waiting up to 10 s for at least `n`.
async fn log_lines(d: &Daemon, parts: &[&str], n: usize) -> TestResult<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found: Vec<String> = d
            .log
            .lock()
            .map_err(|_| "log lock")?
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .cloned()
            .collect();
        if found.len() >= n {
            return Ok(found);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "expected {n} log lines with {parts:?}, found {}:\n{}",
                found.len(),
                d.log_text()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_are_held_while_a_client_signs() -> TestResult {
    const IDLE: usize = 1000;
    // Both ends of every connection count against the limits: this process holds the client
    // sockets, the daemon (started after, inheriting the limit) the server sockets.
    ensure_open_files(IDLE as u64 + 512)?;
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let addr = addr_of(&d)?;
    d.create("k", "ES256", 0).await?;
    let tls = client_tls(&token.pki.ca_pem, Some(&token.pki.admin))?;

    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..IDLE {
        let (tls, gate) = (Arc::clone(&tls), Arc::clone(&gate));
        opening.spawn(async move {
            let _turn = gate.acquire_owned().await?;
            open_h2(addr, tls).await
        });
    }
    let mut idle = Vec::with_capacity(IDLE);
    while let Some(r) = opening.join_next().await {
        idle.push(r??);
    }
    assert_eq!(idle.len(), IDLE);
    // Each of them really is an HTTP/2 connection the daemon serves (checked on a sample, so
    // the rest stay idle, never having sent a request).
    for conn in idle.iter().step_by(100) {
        serving(conn).await?;
    }

    // Another client signs, and the signatures verify, with all of them open.
    for _ in 0..3 {
        sign_verified(&d, "k", "ES256").await?;
    }
    // None of the idle connections was closed in the meantime, and the daemon refused none.
    let closed = idle.iter().filter(|c| c.send.is_closed()).count();
    assert_eq!(closed, 0, "idle connections closed by the daemon");
    for conn in idle.iter().skip(50).step_by(100) {
        serving(conn).await?;
    }
    let log = d.log_text();
    assert!(!log.contains("connection refused"), "{log}");
    assert!(!log.contains("TLS handshake refused"), "{log}");
    Ok(())
}

#[tokio::test]
async fn a_client_stalling_mid_handshake_is_dropped_after_the_timeout() -> TestResult {
    let token = Token::new()?;
    let config = config_with_server_keys(&token, "handshake_timeout_ms = 700")?;
    let d = Daemon::start_config(&token.conf, &config)?;
    let addr = addr_of(&d)?;

    // The first half of a real ClientHello, and then nothing.
    let tls = client_tls(&token.pki.ca_pem, Some(&token.pki.admin))?;
    let mut conn = rustls::ClientConnection::new(tls, ServerName::try_from("localhost")?)?;
    let mut hello = Vec::new();
    conn.write_tls(&mut hello)?;
    assert!(hello.len() > 100, "a ClientHello is a few hundred bytes");
    let mut tcp = TcpStream::connect(addr).await?;
    let me = tcp.local_addr()?;
    tcp.write_all(hello.get(..hello.len() / 2).ok_or("hello")?)
        .await?;
    let sent = Instant::now();

    // The daemon closes the connection once the timeout passes (not before), without a word.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(4), tcp.read(&mut buf))
        .await
        .map_err(|_| format!("still open 4 s after a 700 ms timeout\n{}", d.log_text()))?;
    let waited = sent.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        waited >= Duration::from_millis(600),
        "closed after {waited:?}"
    );

    let lines = log_lines(&d, &["TLS handshake refused", &format!("peer={me}")], 1).await?;
    let line = lines.first().ok_or("no line")?;
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("not finished within 700 ms"), "{line}");
    assert!(line.contains("handshakes_refused=1"), "{line}");

    // A client that completes its handshake is served as before.
    d.create("k", "ES256", 0).await?;
    sign_verified(&d, "k", "ES256").await?;
    Ok(())
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_while_the_open_ones_keep_working() -> TestResult {
    let token = Token::new()?;
    let config = config_with_server_keys(&token, "max_connections = 4")?;
    let d = Daemon::start_config(&token.conf, &config)?;
    let addr = addr_of(&d)?;
    d.create("k", "ES256", 0).await?;
    let tls = client_tls(&token.pki.ca_pem, Some(&token.pki.admin))?;

    // The limit's worth of connections, each served (retried while the daemon has not yet
    // seen the key creation's own connection close).
    let mut open = Vec::new();
    for _ in 0..4 {
        let conn = eventually(&d, Duration::from_secs(10), || async {
            let conn = open_h2(addr, Arc::clone(&tls)).await?;
            serving(&conn).await?;
            Ok(conn)
        })
        .await?;
        open.push(conn);
    }
    // More are closed at once: the TCP connect succeeds (the kernel's backlog), and the daemon
    // closes the socket without a handshake.
    for _ in 0..3 {
        let refused = tokio::time::timeout(Duration::from_secs(5), open_h2(addr, Arc::clone(&tls)))
            .await
            .map_err(|_| "a connection over the limit was left hanging")?;
        // Either the TLS handshake fails, or (if the close raced the client's last flight)
        // the first request on it does.
        if let Ok(conn) = refused {
            assert!(
                serving(&conn).await.is_err(),
                "a fifth connection was served"
            );
        }
    }
    let lines = log_lines(
        &d,
        &[
            "connection refused: too many open connections",
            "max_connections=4",
        ],
        3,
    )
    .await?;
    assert!(
        lines
            .iter()
            .all(|l| l.contains("WARN") && l.contains("peer=127.0.0.1:"))
    );
    assert!(
        lines.iter().any(|l| l.contains("refused_total=3")),
        "{lines:?}"
    );

    // The open ones keep working: health on each, and a signature over one of them that the
    // independent verifier accepts.
    for conn in &open {
        serving(conn).await?;
    }
    let mut signer = sigild::api::pb::signing_service_client::SigningServiceClient::new(
        open.first().ok_or("no connection")?.clone(),
    );
    let data = b"signed while the listener was full".to_vec();
    let sig = signer
        .sign_raw(sigild::api::pb::SignRawRequest {
            version: 0,
            key: "k".into(),
            data: data.clone(),
            alg: String::new(),
        })
        .await?
        .into_inner();
    let key = get_key(&d, "k").await;
    // `get_key` needs a connection of its own: the listener is full until one closes.
    assert!(key.is_err(), "a fifth connection was served: {key:?}");

    // Closing one frees its slot: a new connection is served again.
    drop(open.pop());
    let key = eventually(&d, Duration::from_secs(10), || get_key(&d, "k")).await?;
    verify_raw("ES256", &active_jwk(&key)?, &data, &sig.signature)?;
    Ok(())
}

#[tokio::test]
async fn refused_handshakes_are_counted_and_logged() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let addr = addr_of(&d)?;

    // No client certificate: TLS 1.3 lets the client finish first; the daemon refuses the
    // handshake when it sees no certificate, and the client's first read fails.
    let no_cert = client_tls(&token.pki.ca_pem, None)?;
    let tcp = TcpStream::connect(addr).await?;
    let first = tcp.local_addr()?;
    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(no_cert)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await
    {
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await?;
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    }
    let lines = log_lines(&d, &["TLS handshake refused", &format!("peer={first}")], 1).await?;
    let line = lines.first().ok_or("no line")?;
    assert!(
        line.contains("WARN") && line.contains("handshakes_refused=1"),
        "{line}"
    );
    assert!(line.to_lowercase().contains("certificate"), "{line}");

    // Garbage instead of a ClientHello.
    let mut tcp = TcpStream::connect(addr).await?;
    let second = tcp.local_addr()?;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: sigild\r\n\r\n")
        .await?;
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await?;
    let lines = log_lines(&d, &["TLS handshake refused", &format!("peer={second}")], 1).await?;
    let line = lines.first().ok_or("no line")?;
    assert!(line.contains("handshakes_refused=2"), "{line}");

    // Two refusals, two lines: nothing else was refused, and the daemon still serves.
    assert_eq!(log_lines(&d, &["TLS handshake refused"], 2).await?.len(), 2);
    d.create("k", "ES256", 0).await?;
    sign_verified(&d, "k", "ES256").await?;
    Ok(())
}
