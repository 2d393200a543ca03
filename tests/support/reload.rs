//! Reload and systemd-notification helpers: a stand-in for systemd's notification socket
//! (`NOTIFY_SOCKET`) that records what the daemon tells it, the certificate a fresh TLS
//! connection is served, and new server certificates written over the daemon's files.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject as _;

use super::{ClientFiles, TestResult};

/// A datagram socket standing in for systemd's: pass [`Notify::env`] to the daemon.
pub struct Notify {
    /// The bound socket.
    socket: UnixDatagram,
    /// Its path.
    pub path: PathBuf,
    /// Every message received so far, in order.
    pub seen: Vec<String>,
}

impl Notify {
    /// Bind `notify.sock` in `dir`.
    pub fn bind(dir: &Path) -> TestResult<Notify> {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path)?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        Ok(Notify {
            socket,
            path,
            seen: Vec::new(),
        })
    }

    /// The environment that points the daemon at this socket.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("NOTIFY_SOCKET".into(), self.path.display().to_string())]
    }

    /// Wait up to `within` for a message containing the line `line` (e.g. `READY=1`); the
    /// message. Messages before it are kept in [`Notify::seen`].
    pub fn wait_for(&mut self, line: &str, within: Duration) -> TestResult<String> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.seen.push(msg.clone());
                    if msg.lines().any(|l| l == line) {
                        return Ok(msg);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            if Instant::now() > deadline {
                return Err(format!("no {line} from the daemon; got {:?}", self.seen).into());
            }
        }
    }
}

/// The DER of the first certificate in a PEM file.
pub fn certificate_der(pem: &Path) -> TestResult<Vec<u8>> {
    Ok(rustls::pki_types::CertificateDer::pem_file_iter(pem)?
        .next()
        .ok_or("no certificate")??
        .to_vec())
}

/// Open a fresh TLS connection to `addr` as the holder of `client` (trusting `client.ca`)
/// and return the leaf certificate the server presented.
pub async fn served_certificate(addr: SocketAddr, client: &ClientFiles) -> TestResult<Vec<u8>> {
    let roots = super::tls::roots(&client.ca)?;
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&client.cert)?
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&client.key)?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(super::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let run = async move {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let tls = connector
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no server certificate")?
            .to_vec();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(leaf)
    };
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| "the handshake hung")?
}

/// Issue a new localhost server certificate under `ca` and write it and its key over `cert`
/// and `key` (the key 0600, as the daemon requires).
pub fn replace_server_certificate(ca: &sigild::tls::TestCa, cert: &Path, key: &Path) -> TestResult {
    use std::os::unix::fs::PermissionsExt as _;
    let leaf = ca.server(&["localhost", "127.0.0.1"])?;
    std::fs::write(key, leaf.key_pem.as_bytes())?;
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600))?;
    std::fs::write(cert, &leaf.cert_pem)?;
    Ok(())
}
