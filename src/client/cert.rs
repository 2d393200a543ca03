//! Certificate plumbing for keys behind sigild: a PKCS#10 CSR signed by the hardware key
//! (encoded by rcgen, which calls back into [`SigildSigningKey`] for the one signature), and a
//! diagnostic mTLS handshake that reports what was negotiated (`sigild tls check`).

use std::io::{Read as _, Write as _};
use std::net::ToSocketAddrs as _;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};

use super::{ClientError, SigildSigningKey};

/// Parse a subject such as `CN=client-a,O=Example,C=SE` (attributes `CN`, `O`, `OU`, `C`,
/// `ST`, `L`; commas inside values are not supported).
///
/// # Errors
/// [`ClientError::Config`] naming the part that is not understood.
pub fn parse_subject(subject: &str) -> Result<rcgen::DistinguishedName, ClientError> {
    use rcgen::DnType;
    let mut dn = rcgen::DistinguishedName::new();
    for part in subject
        .split([',', '/'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            ClientError::Config(format!("subject part {part:?} is not ATTRIBUTE=value"))
        })?;
        let t = match k.trim().to_ascii_uppercase().as_str() {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "C" => DnType::CountryName,
            "ST" => DnType::StateOrProvinceName,
            "L" => DnType::LocalityName,
            other => {
                return Err(ClientError::Config(format!(
                    "subject attribute {other:?} is not one of CN, O, OU, C, ST, L"
                )));
            }
        };
        dn.push(t, v.trim());
    }
    Ok(dn)
}

/// A PEM CSR for `subject` with optional subject alternative names (`spiffe://…` and other
/// URIs, else DNS names), signed by the key behind sigild. Blocks for one signature (see the
/// signer's notes on runtimes).
///
/// # Errors
/// A bad subject or SAN, or the signature failing (with the daemon's status in the log of
/// the caller: rcgen only reports a remote key error).
pub fn csr_pem(
    key: &SigildSigningKey,
    subject: &str,
    sans: &[String],
) -> Result<String, ClientError> {
    let bad = |e: rcgen::Error| ClientError::Config(format!("cannot make the CSR: {e}"));
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    p.distinguished_name = parse_subject(subject)?;
    for s in sans {
        p.subject_alt_names.push(if s.contains("://") {
            rcgen::SanType::URI(s.as_str().try_into().map_err(bad)?)
        } else {
            rcgen::SanType::DnsName(s.as_str().try_into().map_err(bad)?)
        });
    }
    let csr = p.serialize_request(key).map_err(|e| match e {
        rcgen::Error::RemoteKeyError => ClientError::Signer("refused or failed to sign the CSR"),
        e => bad(e),
    })?;
    csr.pem().map_err(bad)
}

/// What a diagnostic handshake negotiated.
#[derive(Debug, Clone)]
pub struct HandshakeReport {
    /// `TLSv1_3`, `TLSv1_2`.
    pub protocol: String,
    /// The negotiated cipher suite.
    pub cipher_suite: String,
    /// The scheme our CertificateVerify used (`None` if the server asked for no certificate).
    pub signature_scheme: Option<String>,
    /// RFC 8705 `x5t#S256` of the client certificate presented.
    pub x5t_s256: String,
}

/// Complete an mTLS handshake with `host:port` using the key behind sigild and `chain`, then
/// wait briefly for the server's verdict on our certificate (in TLS 1.3 a server rejects the
/// client certificate after our handshake is done, with an alert). `roots` verifies the
/// server; `None` skips server verification (diagnostics only). Blocking: call it from a
/// blocking context, not from an async task.
///
/// # Errors
/// [`ClientError::Unsupported`] for a chain that is not the key's; [`ClientError::Config`]
/// for connection and handshake failures, with the TLS error.
pub fn handshake_check(
    key: &SigildSigningKey,
    chain: Vec<CertificateDer<'static>>,
    roots: Option<rustls::RootCertStore>,
    addr: &str,
) -> Result<HandshakeReport, ClientError> {
    let x5t = chain
        .first()
        .map(|c| super::x5t_s256(c.as_ref()))
        .unwrap_or_default();
    let cfg = match roots {
        Some(r) => super::client_config(r, chain, key)?,
        None => rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Unsupported(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoServerVerification))
        .with_client_cert_resolver(key.resolver(chain)?),
    };
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_matches(['[', ']']).to_owned();
    let failed =
        |what: &str, e: &dyn std::fmt::Display| ClientError::Config(format!("{addr}: {what}: {e}"));
    let name = ServerName::try_from(host).map_err(|e| failed("server name", &e))?;
    let mut conn =
        rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| failed("TLS setup", &e))?;
    let sockaddr = addr
        .to_socket_addrs()
        .map_err(|e| failed("address", &e))?
        .next()
        .ok_or_else(|| failed("address", &"no address"))?;
    let mut sock = std::net::TcpStream::connect_timeout(&sockaddr, Duration::from_secs(10))
        .map_err(|e| failed("connect", &e))?;
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| failed("socket", &e))?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| failed("handshake", &e))?;
    }
    // The server's verdict on our certificate: an alert arrives within moments, or nothing.
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| failed("socket", &e))?;
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let _ = tls.flush();
    let mut buf = [0u8; 1];
    match tls.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(failed("after the handshake the server said", &e)),
        Ok(_) => {}
    }
    Ok(HandshakeReport {
        protocol: conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        cipher_suite: conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        signature_scheme: key.last_scheme().map(|s| format!("{s:?}")),
        x5t_s256: x5t,
    })
}

/// Accepts any server certificate: `sigild tls check` without `--ca` is about our side of
/// the handshake, and says so in its output.
#[derive(Debug)]
struct NoServerVerification;

impl rustls::client::danger::ServerCertVerifier for NoServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_or_say_what_is_wrong() {
        assert!(parse_subject("CN=client-a,O=Example,C=SE").is_ok());
        assert!(parse_subject("/CN=client-a/O=Example").is_ok());
        let e = parse_subject("CN=a,EMAIL=x").err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("EMAIL")));
        assert!(parse_subject("CN").is_err());
    }
}
