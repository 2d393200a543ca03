//! TLS peers for handshake tests (shared by the SoftHSM and YubiKey suites): a rustls server
//! that requires a client certificate from a given CA and records the scheme the client signed
//! with, and a client round trip with a deadline so a broken signer fails instead of hanging.
#![allow(dead_code, clippy::unwrap_used)] // mutex poisoning in test helpers

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{TestResult, Token};

/// The files a test TLS server needs: the CA its clients must chain to, its certificate, its key.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    pub ca_pem: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ServerFiles {
    /// The test PKI of a SoftHSM test token.
    pub fn of(token: &Token) -> ServerFiles {
        ServerFiles {
            ca_pem: token.pki.ca_pem.clone(),
            cert: token.pki.server_cert.clone(),
            key: token.pki.server_key.clone(),
        }
    }

    /// A fresh CA with a localhost server certificate, written into `dir`.
    pub fn new_ca(dir: &Path) -> TestResult<(sigild::tls::TestCa, ServerFiles)> {
        let ca = sigild::tls::TestCa::new("sigild TLS test CA")?;
        let server = ca.server(&["localhost", "127.0.0.1"])?;
        let files = ServerFiles {
            ca_pem: dir.join("tls-ca.pem"),
            cert: dir.join("tls-server.pem"),
            key: dir.join("tls-server.key"),
        };
        std::fs::write(&files.ca_pem, &ca.cert_pem)?;
        std::fs::write(&files.cert, &server.cert_pem)?;
        std::fs::write(&files.key, &server.key_pem)?;
        Ok((ca, files))
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn roots(ca_pem: &std::path::Path) -> TestResult<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem)? {
        roots.add(c?)?;
    }
    Ok(roots)
}

/// Connect, finish the handshake, send `ping`, read the answer. Returns the negotiated
/// version and the answer.
pub async fn talk(cfg: rustls::ClientConfig, addr: SocketAddr) -> TestResult<(String, String)> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let run = async move {
        let mut tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let version = format!("{:?}", tls.get_ref().1.protocol_version());
        tls.write_all(b"ping\n").await?;
        tls.flush().await?;
        let mut buf = vec![0u8; 64];
        let n = tls.read(&mut buf).await?;
        let _ = tls.shutdown().await;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
            version,
            String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned(),
        ))
    };
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .map_err(|_| "the handshake hung")?
}

/// A client-certificate verifier that records the schemes clients signed with and can restrict
/// the schemes it asks for (to force PKCS#1 v1.5 in TLS 1.2).
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ClientCertVerifier>,
    only: Option<Vec<SignatureScheme>>,
    seen: Arc<Mutex<Vec<SignatureScheme>>>,
}

impl ClientCertVerifier for Recording {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.seen.lock().unwrap().push(dss.scheme);
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.seen.lock().unwrap().push(dss.scheme);
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        let all = self.inner.supported_verify_schemes();
        match &self.only {
            Some(only) => all.into_iter().filter(|s| only.contains(s)).collect(),
            None => all,
        }
    }
}

/// A rustls server (on the current runtime) requiring a client certificate from the test CA;
/// answers one connection by echoing the first line reversed. The join handle yields the
/// schemes the client signed with.
pub async fn rustls_server(
    files: &ServerFiles,
    version: &'static SupportedProtocolVersion,
    only: Option<Vec<SignatureScheme>>,
) -> TestResult<(
    SocketAddr,
    tokio::task::JoinHandle<TestResult<Vec<SignatureScheme>>>,
)> {
    let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(&files.ca_pem)?),
        provider(),
    )
    .build()?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let verifier = Arc::new(Recording {
        inner,
        only,
        seen: Arc::clone(&seen),
    });
    let certs = CertificateDer::pem_file_iter(&files.cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&files.key)?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let mut buf = vec![0u8; 64];
        let n = tls.read(&mut buf).await?;
        let line = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned();
        let reversed: String = line.trim_end().chars().rev().collect();
        tls.write_all(format!("{reversed}\n").as_bytes()).await?;
        tls.flush().await?;
        let _ = tls.shutdown().await;
        Ok(seen.lock().unwrap().clone())
    });
    Ok((addr, task))
}
