//! An mTLS client whose private key stays on the HSM behind sigild: the key name and the
//! certificate chain are all the TLS setup needs.
//!
//! ```text
//! sigild dev &                                   # daemon + dev PKI in ./.sigild
//! sigild key create client-a --alg ES256
//! sigild tls csr --key client-a --subject "CN=client-a" > client-a.csr   # get it issued
//! cargo run --example mtls_client -- client-a client-a.chain.pem server-ca.pem server.example:443
//! ```
//!
//! The daemon connection uses `SIGILD_ENDPOINT` (default `https://127.0.0.1:7711`) and the dev
//! PKI in `./.sigild` (or `SIGILD_CA`, `SIGILD_CERT`, `SIGILD_KEY`).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use sigild::client::{Connection, SigildSigningKey, SignerOptions, client_config, x5t_s256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [key_name, chain_pem, server_ca, addr] = args.as_slice() else {
        return Err("usage: mtls_client KEY CHAIN.pem SERVER-CA.pem HOST:PORT".into());
    };
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let sigild = Connection::mtls(
        var("SIGILD_ENDPOINT", "https://127.0.0.1:7711"),
        var("SIGILD_CA", ".sigild/ca.pem"),
        var("SIGILD_CERT", ".sigild/client.pem"),
        var("SIGILD_KEY", ".sigild/client.key"),
    );

    // 1. The key behind sigild, and its certificate chain.
    let key = SigildSigningKey::connect(&sigild, key_name, SignerOptions::default()).await?;
    let chain = CertificateDer::pem_file_iter(chain_pem)?.collect::<Result<Vec<_>, _>>()?;
    if let Some(leaf) = chain.first() {
        println!("client certificate x5t#S256: {}", x5t_s256(leaf));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(server_ca)? {
        roots.add(c?)?;
    }

    // 2. A rustls config: every CertificateVerify is signed by sigild.
    let config = client_config(roots, chain, &key)?;

    // 3. Any rustls-based client works from here; a bare HTTP/1.1 request over tokio-rustls.
    let host = addr
        .rsplit_once(':')
        .map_or(addr.as_str(), |(h, _)| h)
        .to_owned();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(host.clone())?, tcp)
        .await?;
    let (_, conn) = tls.get_ref();
    println!(
        "{:?} {:?}",
        conn.protocol_version(),
        conn.negotiated_cipher_suite().map(|s| s.suite())
    );
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await?;
    let head = String::from_utf8_lossy(&response);
    println!("{}", head.lines().next().unwrap_or("(no response)"));
    println!("signature scheme: {:?}", key.last_scheme());
    Ok(())
}
