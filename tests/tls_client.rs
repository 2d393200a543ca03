//! Client authentication with keys that stay behind sigild (issue 5): real TLS 1.3 and 1.2
//! handshakes in which rustls' `Signer::sign` is a `SignRaw` call to a running daemon on a
//! SoftHSM token, against `openssl s_server -Verify 1 -verify_return_error` (a peer we did not
//! write) and against a rustls server that requires client certificates. Keys: ES256 (P-256),
//! PS256 (RSA-2048, also RS256 for TLS 1.2 when the server only accepts PKCS#1 v1.5) and
//! Ed25519. The client certificate is issued by the test CA for the public key sigild reports.
//!
//! Both tokio runtime flavours are exercised: the multi-thread runtime (the signer waits in
//! `block_in_place`) and the current-thread runtime, where the TLS server task runs on the very
//! thread that waits for the signature (it cannot deadlock: the RPC runs on the signer's own
//! thread).
//!
//! Also here: a caller whose policy lacks `tls`, a certificate for another key, a missing key
//! and a signer timeout all fail cleanly with a clear error; the signer over the Unix socket;
//! `sigild tls csr` (verified by `openssl req -verify`), `sigild tls check`, `tls attach` /
//! `tls chain` (chains stored on the token, surviving a restart); DPoP with a `use_dpop_nonce`
//! retry, client assertion and JAR helpers (verified by jwcrypto); and an ignored benchmark.
//!
//! What openssl 3.0 accepts: TLS 1.3 with ECDSA P-256, RSA-PSS and Ed25519 client keys; TLS
//! 1.2 with the same (it offers `rsa_pss_rsae_*` and `ed25519` in its CertificateRequest).

#![allow(clippy::unwrap_used)] // mutex poisoning in test helpers

mod support;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{SignatureScheme, SupportedProtocolVersion};
use sigild::client::{Connection, SigildSigningKey, SignerOptions};
use sigild::tls::ClientNames;
use support::tls::*;
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A signer for `key` on `d`, connecting as `files`.
async fn signer(d: &Daemon, files: &ClientFiles, key: &str) -> TestResult<SigildSigningKey> {
    let conn = Connection::mtls(d.endpoint.clone(), &files.ca, &files.cert, &files.key);
    Ok(SigildSigningKey::connect(&conn, key, SignerOptions::default()).await?)
}

/// A client certificate from the test CA for the sigild-held key.
fn issue(
    token: &Token,
    key: &SigildSigningKey,
    cn: &str,
) -> TestResult<Vec<CertificateDer<'static>>> {
    let pem = token.pki.ca.client_for_key(
        &ClientNames {
            cn: Some(cn.into()),
            spiffe: Some(format!("spiffe://sigild.test/{cn}")),
            ..ClientNames::default()
        },
        key,
    )?;
    Ok(CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?)
}

fn client_config(
    token: &Token,
    key: &SigildSigningKey,
    chain: Vec<CertificateDer<'static>>,
    version: &'static SupportedProtocolVersion,
) -> TestResult<rustls::ClientConfig> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])?
        .with_root_certificates(roots(&token.pki.ca_pem)?)
        .with_client_cert_resolver(key.resolver(chain)?))
}

/// `openssl s_server -Verify 1 -verify_return_error -rev` for one connection.
struct OpensslServer {
    child: std::process::Child,
    addr: SocketAddr,
    output: Arc<Mutex<Vec<String>>>,
}

impl OpensslServer {
    fn start(token: &Token, version_flag: &str) -> TestResult<OpensslServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept"])
            .arg(addr.to_string())
            .args([
                "-naccept",
                "1",
                "-rev",
                "-Verify",
                "1",
                "-verify_return_error",
            ])
            .arg(version_flag)
            .arg("-cert")
            .arg(&token.pki.server_cert)
            .arg("-key")
            .arg(&token.pki.server_key)
            .arg("-CAfile")
            .arg(&token.pki.ca_pem)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().ok_or("stdout")?) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().ok_or("stderr")?),
        ] {
            let output = Arc::clone(&output);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains("ACCEPT") {
                        let _ = tx.send(());
                    }
                    output.lock().unwrap().push(line);
                }
            });
        }
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = child.kill();
            return Err(format!(
                "openssl s_server did not start: {}",
                output.lock().unwrap().join("\n")
            )
            .into());
        }
        Ok(OpensslServer {
            child,
            addr,
            output,
        })
    }

    /// Everything it printed, after it exited (or was stopped).
    fn finish(mut self) -> String {
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(100));
        self.output.lock().unwrap().join("\n")
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const KEYS: [(&str, &str, u32); 3] = [
    ("tls-es256", "ES256", 0),
    ("tls-ps256", "PS256", 2048),
    ("tls-ed25519", "EdDSA", 0),
];

/// The daemon with the three client keys.
async fn daemon_with_keys(token: &Token) -> TestResult<Daemon> {
    let d = Daemon::start(token)?;
    for (name, alg, bits) in KEYS {
        d.create(name, alg, bits).await?;
    }
    Ok(d)
}

fn version(v: &str) -> &'static SupportedProtocolVersion {
    if v == "1.2" {
        &rustls::version::TLS12
    } else {
        &rustls::version::TLS13
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_with_openssl_s_server() -> TestResult {
    let token = Token::new()?;
    let d = daemon_with_keys(&token).await?;
    let admin = d.client.clone().ok_or("tls")?;
    for (name, alg, _) in KEYS {
        let key = signer(&d, &admin, name).await?;
        let chain = issue(&token, &key, name)?;
        for v in ["1.3", "1.2"] {
            let server =
                OpensslServer::start(&token, if v == "1.2" { "-tls1_2" } else { "-tls1_3" })?;
            let cfg = client_config(&token, &key, chain.clone(), version(v))?;
            let addr = server.addr;
            // The handshake runs in a spawned task, on a runtime worker: the signer must
            // not starve it (block_in_place).
            let result = tokio::spawn(talk(cfg, addr)).await?;
            let out = server.finish();
            let (negotiated, answer) =
                result.map_err(|e| format!("{alg} TLS {v}: {e}\nopenssl said:\n{out}"))?;
            assert_eq!(
                negotiated,
                if v == "1.2" {
                    "Some(TLSv1_2)"
                } else {
                    "Some(TLSv1_3)"
                }
            );
            assert_eq!(answer.trim(), "gnip", "{alg} TLS {v}: {out}");
            assert!(
                out.contains(&format!("CN = {name}")) && out.contains("verify return:1"),
                "{alg} TLS {v}: openssl did not verify the client certificate:\n{out}"
            );
            assert!(!out.contains("verify error"), "{out}");
        }
    }
    Ok(())
}

async fn rustls_round(
    token: &Token,
    d: &Daemon,
    only: Option<Vec<SignatureScheme>>,
    cases: &[(&str, &str, SignatureScheme)],
) -> TestResult {
    let admin = d.client.clone().ok_or("tls")?;
    for (name, v, want) in cases {
        let key = signer(d, &admin, name).await?;
        let chain = issue(token, &key, name)?;
        let (addr, server) =
            rustls_server(&ServerFiles::of(token), version(v), only.clone()).await?;
        let cfg = client_config(token, &key, chain, version(v))?;
        let (_, answer) = talk(cfg, addr)
            .await
            .map_err(|e| format!("{name} TLS {v}: {e}"))?;
        assert_eq!(answer.trim(), "gnip");
        let seen = server.await??;
        assert_eq!(seen, vec![*want], "{name} TLS {v}");
    }
    Ok(())
}

const RUSTLS_CASES: [(&str, &str, SignatureScheme); 6] = [
    ("tls-es256", "1.3", SignatureScheme::ECDSA_NISTP256_SHA256),
    ("tls-es256", "1.2", SignatureScheme::ECDSA_NISTP256_SHA256),
    ("tls-ps256", "1.3", SignatureScheme::RSA_PSS_SHA256),
    ("tls-ps256", "1.2", SignatureScheme::RSA_PSS_SHA256),
    ("tls-ed25519", "1.3", SignatureScheme::ED25519),
    ("tls-ed25519", "1.2", SignatureScheme::ED25519),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_with_a_rustls_server_on_a_multi_thread_runtime() -> TestResult {
    let token = Token::new()?;
    let d = daemon_with_keys(&token).await?;
    rustls_round(&token, &d, None, &RUSTLS_CASES).await?;
    // A TLS 1.2 server that only takes PKCS#1 v1.5 gets RS256 from the PS256 key.
    rustls_round(
        &token,
        &d,
        Some(vec![SignatureScheme::RSA_PKCS1_SHA256]),
        &[("tls-ps256", "1.2", SignatureScheme::RSA_PKCS1_SHA256)],
    )
    .await
}

/// The server task and the waiting signer share the one runtime thread: no deadlock.
#[tokio::test(flavor = "current_thread")]
async fn handshakes_with_a_rustls_server_on_a_current_thread_runtime() -> TestResult {
    let token = Token::new()?;
    let d = daemon_with_keys(&token).await?;
    rustls_round(&token, &d, None, &RUSTLS_CASES).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_tls_permission_fails_the_handshake_cleanly() -> TestResult {
    let token = Token::new()?;
    let limited = "spiffe://sigild.test/limited";
    let rules = format!(
        "[[caller]]\nidentity = \"{limited}\"\nkeys = [\"tls-*\"]\noperations = [\"dpop\"]\n"
    );
    let d = Daemon::start_with(&token, &rules)?;
    d.create("tls-es256", "ES256", 0).await?;
    let files = token.pki.client(
        "limited",
        &ClientNames {
            spiffe: Some(limited.into()),
            ..ClientNames::default()
        },
    )?;
    // Reading the public key is allowed; signing for TLS is not.
    let key = signer(&d, &files, "tls-es256").await?;
    let chain = issue(&token, &key, "tls-es256")?;
    let (addr, server) =
        rustls_server(&ServerFiles::of(&token), &rustls::version::TLS13, None).await?;
    let cfg = client_config(&token, &key, chain, &rustls::version::TLS13)?;
    let err = talk(cfg, addr)
        .await
        .err()
        .ok_or("the handshake succeeded without permission")?
        .to_string();
    assert!(
        err.contains("sigild could not sign") && err.contains("PERMISSION_DENIED"),
        "{err}"
    );
    assert!(
        server.await?.is_err(),
        "the server saw a handshake complete"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_key_is_refused_before_any_handshake() -> TestResult {
    let token = Token::new()?;
    let d = daemon_with_keys(&token).await?;
    let admin = d.client.clone().ok_or("tls")?;
    let es = signer(&d, &admin, "tls-es256").await?;
    let ed = signer(&d, &admin, "tls-ed25519").await?;
    let chain = issue(&token, &es, "tls-es256")?;
    let err = sigild::client::client_config(roots(&token.pki.ca_pem)?, chain, &ed)
        .err()
        .ok_or("a certificate for another key was accepted")?;
    assert!(
        err.to_string()
            .contains("does not belong to sigild key \"tls-ed25519\""),
        "{err}"
    );
    // A key name the daemon does not have: NOT_FOUND, with the gRPC code kept.
    let conn = Connection::mtls(d.endpoint.clone(), &admin.ca, &admin.cert, &admin.key);
    let err = SigildSigningKey::connect(&conn, "nope", SignerOptions::default())
        .await
        .err()
        .ok_or("a missing key connected")?;
    assert_eq!(err.code(), Some(tonic::Code::NotFound), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_makes_csrs_that_openssl_verifies() -> TestResult {
    let token = Token::new()?;
    let d = daemon_with_keys(&token).await?;
    for (name, alg, _) in KEYS {
        let out = d.cli(
            &[
                "tls",
                "csr",
                "--key",
                name,
                "--subject",
                "CN=client-a,O=Example",
                "--san",
                "spiffe://example.org/client-a",
            ],
            None,
        )?;
        assert!(
            out.status.success(),
            "{alg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let csr = token.dir.path().join(format!("{name}.csr"));
        std::fs::write(&csr, &out.stdout)?;
        let v = Command::new("openssl")
            .args(["req", "-verify", "-noout", "-subject", "-in"])
            .arg(&csr)
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        assert!(
            v.status.success() && text.contains("verify OK"),
            "{alg}: {text}"
        );
        assert!(text.contains("CN = client-a, O = Example"), "{text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tls_check_reports_the_handshake() -> TestResult {
    let token = Token::new()?;
    let d = daemon_with_keys(&token).await?;
    let admin = d.client.clone().ok_or("tls")?;
    let key = signer(&d, &admin, "tls-ps256").await?;
    let chain = issue(&token, &key, "tls-ps256")?;
    let chain_file = token.dir.path().join("tls-ps256.chain.pem");
    let pem: String = chain
        .iter()
        .map(|c| {
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                base64_std(c.as_ref())
            )
        })
        .collect();
    std::fs::write(&chain_file, pem)?;
    let server = OpensslServer::start(&token, "-tls1_3")?;
    let addr = server.addr.to_string();
    let ca = token.pki.ca_pem.display().to_string();
    let chain_arg = chain_file.display().to_string();
    let args = [
        "tls",
        "check",
        "--key",
        "tls-ps256",
        "--cert",
        &chain_arg,
        "--ca",
        &ca,
        &addr,
    ];
    let out = tokio::task::spawn_blocking({
        let endpoint = d.endpoint.clone();
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cli(&endpoint, &args, None)
        }
    })
    .await??;
    let s_server = server.finish();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\nopenssl:\n{s_server}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("protocol: TLSv1_3"), "{stdout}");
    assert!(stdout.contains("cipher suite: TLS13_"), "{stdout}");
    assert!(
        stdout.contains("signature scheme: RSA_PSS_SHA256"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "x5t#S256: {}",
            sigild::client::x5t_s256(chain[0].as_ref())
        )),
        "{stdout}"
    );
    assert!(s_server.contains("verify return:1"), "{s_server}");
    assert!(stdout.contains("server certificate: verified"), "{stdout}");

    // Without --ca the server is not verified, and the report says so.
    let server = OpensslServer::start(&token, "-tls1_2")?;
    let addr = server.addr.to_string();
    let out = tokio::task::spawn_blocking({
        let endpoint = d.endpoint.clone();
        move || {
            run_cli(
                &endpoint,
                &[
                    "tls",
                    "check",
                    "--key",
                    "tls-ps256",
                    "--cert",
                    &chain_arg,
                    &addr,
                ],
                None,
            )
        }
    })
    .await??;
    let s_server = server.finish();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("protocol: TLSv1_2"), "{stdout}");
    assert!(
        stdout.contains("server certificate: NOT verified"),
        "{stdout}"
    );
    assert!(s_server.contains("verify return:1"), "{s_server}");
    Ok(())
}

fn base64_std(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// DPoP for clients: the proof for a token request, a `use_dpop_nonce` challenge answered
/// once with a new proof carrying the nonce, verified by jwcrypto against the daemon's JWKS;
/// the jkt equals the key's kid; client assertion and JAR helpers verify too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_nonce_retry_and_client_helpers() -> TestResult {
    use sigild::client::{Client, DpopOutcome, DpopRequest, use_dpop_nonce};
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let key = d.create("client-dpop", "ES256", 0).await?;
    let admin = d.client.clone().ok_or("tls")?;
    let client = Client::connect(&Connection::mtls(
        d.endpoint.clone(),
        &admin.ca,
        &admin.cert,
        &admin.key,
    ))
    .await?;
    let jkt = client.dpop_jkt("client-dpop").await?;
    assert_eq!(jkt, key.versions[0].kid);

    let req = DpopRequest {
        key: "client-dpop",
        method: "POST",
        url: "https://as.example.com/token?x=1",
        access_token: None,
        nonce: None,
    };
    let mut proofs = Vec::new();
    let (status, nonce) = client
        .dpop_with_nonce_retry(&req, |proof| {
            proofs.push(proof);
            let first = proofs.len() == 1;
            async move {
                // The authorization server's answers: a nonce challenge, then success.
                Ok::<_, sigild::client::ClientError>(if first {
                    match use_dpop_nonce(
                        400,
                        None,
                        Some(r#"{"error":"use_dpop_nonce"}"#),
                        Some("server-nonce-1"),
                    ) {
                        Some(n) => DpopOutcome::UseNonce(n),
                        None => DpopOutcome::Done(400),
                    }
                } else {
                    DpopOutcome::Done(200)
                })
            }
        })
        .await?;
    assert_eq!((status, nonce.as_deref()), (200, Some("server-nonce-1")));
    assert_eq!(proofs.len(), 2);
    let jwks = d.jwks().await?;
    for (i, proof) in proofs.iter().enumerate() {
        let v = verify_jws(proof, &jwks)?;
        let (header, claims) = decode(proof)?;
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "https://as.example.com/token");
        assert_eq!(claims.get("nonce").is_some(), i == 1, "{claims}");
        assert_eq!(v["thumbprint"], jkt);
    }
    assert_eq!(decode(&proofs[1])?.1["nonce"], "server-nonce-1");

    let ca = client
        .client_assertion("client-dpop", "client-a", "https://as.example.com")
        .await?;
    let (_, claims) = decode(&ca)?;
    verify_jws(&ca, &jwks)?;
    assert_eq!(claims["aud"], "https://as.example.com");
    assert_eq!(claims["sub"], "client-a");
    let jar = client
        .request_object(
            "client-dpop",
            "client-a",
            "https://as.example.com",
            &serde_json::json!({"response_type": "code", "scope": "openid"}),
        )
        .await?;
    verify_jws(&jar, &jwks)?;
    assert_eq!(decode(&jar)?.1["scope"], "openid");
    Ok(())
}

/// Handshakes/s with the client key behind sigild against the same kind of key in a PEM file,
/// TLS 1.3 with client authentication, resumption off (every handshake signs), against an
/// in-process rustls server on the same machine. Ignored by default (a measurement, not a
/// check); run with
/// `cargo nextest run --release --test tls_client --run-ignored only bench -- --nocapture`
/// (or `cargo test --release --test tls_client -- --ignored --nocapture bench`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_handshakes_per_second() -> TestResult {
    let seconds: f64 = std::env::var("SIGILD_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let concurrency: usize = 4;
    let token = Token::new()?;
    let d = daemon_with_keys(&token).await?;
    let admin = d.client.clone().ok_or("tls")?;

    // A long-running server: accept, handshake, echo one byte.
    let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&token.pki.ca_pem)?),
        provider(),
    )
    .build()?;
    let certs =
        CertificateDer::pem_file_iter(&token.pki.server_cert)?.collect::<Result<Vec<_>, _>>()?;
    let server_key = PrivateKeyDer::from_pem_file(&token.pki.server_key)?;
    let mut scfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(inner)
        .with_single_cert(certs, server_key)?;
    scfg.send_tls13_tickets = 0;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(scfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            // Without it, delayed ACKs put ~40 ms into every handshake on loopback.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut b = [0u8; 1];
                    if tls.read_exact(&mut b).await.is_ok() {
                        let _ = tls.write_all(&b).await;
                        let _ = tls.flush().await;
                    }
                }
            });
        }
    });

    let sigild_key = signer(&d, &admin, "tls-es256").await?;
    let sigild_chain = issue(&token, &sigild_key, "tls-es256")?;
    let mut behind_sigild =
        client_config(&token, &sigild_key, sigild_chain, &rustls::version::TLS13)?;
    behind_sigild.resumption = rustls::client::Resumption::disabled();

    let pem_leaf = token.pki.ca.client(&ClientNames {
        cn: Some("pem-client".into()),
        ..ClientNames::default()
    })?;
    let mut in_pem = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&token.pki.ca_pem)?)
        .with_client_auth_cert(
            CertificateDer::pem_slice_iter(pem_leaf.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_slice(pem_leaf.key_pem.as_bytes())?,
        )?;
    in_pem.resumption = rustls::client::Resumption::disabled();

    let mut lines = Vec::new();
    for (label, cfg) in [
        ("PEM file (ring)", in_pem),
        ("behind sigild", behind_sigild),
    ] {
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
        let start = std::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let connector = connector.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while tokio::time::Instant::now() < deadline {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    let mut tls = connector
                        .connect(ServerName::try_from("localhost")?, tcp)
                        .await?;
                    tls.write_all(b"x").await?;
                    tls.flush().await?;
                    let mut b = [0u8; 1];
                    tls.read_exact(&mut b).await?;
                    n += 1;
                }
                Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(n)
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await??;
        }
        let rate = total as f64 / start.elapsed().as_secs_f64();
        lines.push(format!(
            "{label:<16} {total:>6} handshakes in {:.1} s = {rate:>7.0} handshakes/s (TLS 1.3, ECDSA P-256 client key, {concurrency} concurrent clients)",
            start.elapsed().as_secs_f64()
        ));
    }
    server.abort();
    println!("{}", lines.join("\n"));
    Ok(())
}

/// The issued chain is attached to the key on the token (admin only, leaf checked against
/// the key), survives a daemon restart, and is what a client fetches to authenticate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_chains_are_attached_on_the_token_and_fetched() -> TestResult {
    use sigild::client::Client;
    let token = Token::new()?;
    let limited = "spiffe://sigild.test/limited";
    let rules = format!(
        "[[caller]]\nidentity = \"{limited}\"\nkeys = [\"tls-*\"]\noperations = [\"tls\"]\n"
    );
    let d = Daemon::start_with(&token, &rules)?;
    for (name, alg, bits) in KEYS {
        d.create(name, alg, bits).await?;
    }
    let admin = d.client.clone().ok_or("tls")?;
    let es = signer(&d, &admin, "tls-es256").await?;
    let ed = signer(&d, &admin, "tls-ed25519").await?;
    let chain = issue(&token, &es, "tls-es256")?;
    let chain_file = token.dir.path().join("es.chain.pem");
    std::fs::write(&chain_file, sigild_pem(&chain))?;

    let out = d.cli(
        &[
            "tls",
            "attach",
            "--key",
            "tls-es256",
            "--cert",
            &chain_file.display().to_string(),
        ],
        None,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&sigild::client::x5t_s256(chain[0].as_ref())),
        "{stdout}"
    );
    let out = d.cli(&["tls", "chain", "--key", "tls-es256"], None)?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        std::fs::read_to_string(&chain_file)?.trim()
    );

    let client = Client::connect(&Connection::mtls(
        d.endpoint.clone(),
        &admin.ca,
        &admin.cert,
        &admin.key,
    ))
    .await?;
    // A chain whose leaf is another key's is refused.
    let ed_chain = issue(&token, &ed, "tls-ed25519")?;
    let err = client
        .set_certificate_chain(
            "tls-es256",
            0,
            ed_chain.iter().map(|c| c.to_vec()).collect(),
        )
        .await
        .err()
        .ok_or("a chain for another key was attached")?;
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("different public key"), "{err}");
    let err = client
        .certificate_chain("tls-ed25519", 0)
        .await
        .err()
        .ok_or("a chain nobody attached")?;
    assert_eq!(err.code(), Some(tonic::Code::NotFound), "{err}");

    // A non-admin caller may fetch but not attach.
    let files = token.pki.client(
        "limited",
        &ClientNames {
            spiffe: Some(limited.into()),
            ..ClientNames::default()
        },
    )?;
    let limited_client = Client::connect(&Connection::mtls(
        d.endpoint.clone(),
        &files.ca,
        &files.cert,
        &files.key,
    ))
    .await?;
    let err = limited_client
        .set_certificate_chain("tls-es256", 0, chain.iter().map(|c| c.to_vec()).collect())
        .await
        .err()
        .ok_or("a non-admin attached a chain")?;
    assert_eq!(err.code(), Some(tonic::Code::PermissionDenied), "{err}");

    // After a restart, the chain is still on the token, and it authenticates a handshake.
    drop(limited_client);
    drop(client);
    drop(es);
    drop(ed);
    drop(d);
    let d = Daemon::start_with(&token, &rules)?;
    let conn = Connection::mtls(d.endpoint.clone(), &files.ca, &files.cert, &files.key);
    let fetched = Client::connect(&conn)
        .await?
        .certificate_chain("tls-es256", 0)
        .await?;
    assert_eq!(fetched, chain);
    let key = SigildSigningKey::connect(&conn, "tls-es256", SignerOptions::default()).await?;
    let (addr, server) =
        rustls_server(&ServerFiles::of(&token), &rustls::version::TLS13, None).await?;
    let (_, answer) = talk(
        client_config(&token, &key, fetched, &rustls::version::TLS13)?,
        addr,
    )
    .await?;
    assert_eq!(answer.trim(), "gnip");
    assert_eq!(server.await??, vec![SignatureScheme::ECDSA_NISTP256_SHA256]);
    Ok(())
}

fn sigild_pem(chain: &[CertificateDer<'static>]) -> String {
    chain
        .iter()
        .map(|c| {
            let b64 = base64_std(c.as_ref());
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|l| std::str::from_utf8(l).unwrap())
                .collect();
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            )
        })
        .collect()
}

/// The signer reaches the daemon over its Unix socket (the kernel's peer credentials name the
/// caller; the rule allows `tls` only), and a daemon that does not answer in time fails the
/// handshake with a clear error instead of hanging it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signer_over_the_unix_socket_and_a_signer_timeout() -> TestResult {
    use std::os::unix::fs::MetadataExt as _;
    let token = Token::new()?;
    let uid = std::fs::metadata("/proc/self")?.uid();
    let sock = token.dir.path().join("sigild.sock");
    let extra = format!(
        "[server.unix]\npath = \"{}\"\n\n[[caller]]\nuid = {uid}\nkeys = [\"tls-*\"]\noperations = [\"tls\"]\n",
        sock.display()
    );
    let d = Daemon::start_with(&token, &extra)?;
    d.create("tls-ed25519", "EdDSA", 0).await?;
    let conn = Connection::unix(&sock);
    let key = SigildSigningKey::connect(&conn, "tls-ed25519", SignerOptions::default()).await?;
    let chain = issue(&token, &key, "tls-ed25519")?;
    let (addr, server) =
        rustls_server(&ServerFiles::of(&token), &rustls::version::TLS13, None).await?;
    let (_, answer) = talk(
        client_config(&token, &key, chain.clone(), &rustls::version::TLS13)?,
        addr,
    )
    .await?;
    assert_eq!(answer.trim(), "gnip");
    assert_eq!(server.await??, vec![SignatureScheme::ED25519]);

    let impatient = SigildSigningKey::connect(
        &conn,
        "tls-ed25519",
        SignerOptions {
            timeout: Duration::from_nanos(1),
        },
    )
    .await?;
    let (addr, server) =
        rustls_server(&ServerFiles::of(&token), &rustls::version::TLS13, None).await?;
    let err = talk(
        client_config(&token, &impatient, chain, &rustls::version::TLS13)?,
        addr,
    )
    .await
    .err()
    .ok_or("a signature arrived within a nanosecond")?
    .to_string();
    assert!(err.contains("did not answer in time"), "{err}");
    assert!(server.await?.is_err());
    Ok(())
}
