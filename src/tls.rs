//! TLS for the gRPC API: the server's mTLS configuration (client certificates required and
//! verified against the configured CAs), the caller identity read from a verified client
//! certificate, the client side used by the CLI, and the dev/test PKI.
//!
//! rustls with **ring** as its one crypto provider, installed explicitly by
//! [`install_crypto_provider`] (tonic's `tls-ring` feature; no aws-lc in the tree). Certificate
//! chains are verified by rustls' `WebPkiClientVerifier` inside the handshake, so a missing,
//! untrusted or expired client certificate never reaches a gRPC handler: the connection fails
//! and the client sees a transport error (tonic reports it as `UNAVAILABLE` or `UNKNOWN`
//! depending on where the alert lands; see `tests/auth.rs`).
//!
//! May depend on config types and [`crate::secret`]; knows nothing of policy or the service.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use x509_cert::der::Decode as _;

use crate::secret::{SecretSource, write_secret_file};

/// Which certificate field names the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    /// The first `spiffe://` URI SAN (SPIFFE X.509-SVID).
    #[default]
    Spiffe,
    /// The first DNS SAN.
    Dns,
    /// The subject common name.
    Cn,
}

/// TLS set-up and identity problems.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The private key file cannot be used (permissions, missing).
    #[error(transparent)]
    Key(#[from] crate::secret::SecretError),
    /// A PEM file holds no usable certificate.
    #[error("{path}: no PEM certificate found")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate does not parse.
    #[error("certificate does not parse: {0}")]
    Parse(String),
    /// The verified certificate lacks the field that names the caller.
    #[error("the client certificate has no {0}")]
    NoIdentity(&'static str),
    /// Generating a certificate failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing dev PKI files failed.
    #[error("{0}: {1}")]
    Write(PathBuf, #[source] std::io::Error),
    /// The key file holds no PEM private key (PKCS#8, SEC1 or PKCS#1).
    #[error("{0}: no PEM private key found")]
    NoPrivateKey(PathBuf),
    /// rustls refuses a certificate or key (as a trust anchor, or as ours with this key).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier cannot be built from the configured CAs.
    #[error("client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// Make ring the process-wide rustls provider. Idempotent; call before any TLS config is
/// built (server start, CLI connect). Explicit so that a future dependency enabling another
/// provider cannot silently change which crypto code runs.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed (ours, from an earlier call).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Read one or more PEM certificate files, checking each holds at least one certificate
/// (rustls would otherwise skip unparseable ones silently and trust nothing).
///
/// # Errors
/// [`TlsError`] naming the file.
pub fn read_certificates(paths: &[PathBuf]) -> Result<Vec<u8>, TlsError> {
    let mut all = Vec::new();
    for p in paths {
        let pem = read(p)?;
        let ders = pem_certificates(&pem);
        if ders.is_empty() {
            return Err(TlsError::NoCertificate { path: p.clone() });
        }
        for d in &ders {
            x509_cert::Certificate::from_der(d)
                .map_err(|e| TlsError::Parse(format!("{}: {e}", p.display())))?;
        }
        all.extend_from_slice(&pem);
        all.push(b'\n');
    }
    Ok(all)
}

/// DER of every `CERTIFICATE` block in a PEM text.
pub fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let Ok(text) = std::str::from_utf8(pem) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line == "-----BEGIN CERTIFICATE-----" {
            body = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            if let Some(b) = body.take()
                && let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b)
            {
                out.push(der);
            }
        } else if let Some(b) = body.as_mut() {
            b.push_str(line);
        }
    }
    out
}

/// The server side: our certificate and key, and the CAs client certificates must chain to.
/// Client authentication is required: a peer without a certificate that chains to `client_ca`
/// fails the handshake. ALPN offers `h2` only (gRPC). The listener runs the handshake itself
/// (with a timeout, counting failures: `crate::server`) and hands the finished stream to
/// tonic, which reads the verified peer certificates from it.
///
/// # Errors
/// Unreadable files, a key file readable by others, PEM without certificates or key, a
/// certificate rustls refuses (as a trust anchor, or as our own with this key).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &[PathBuf],
) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsError> {
    tls_server_config(cert, key, Some(client_ca), b"h2")
}

/// The server side of a plain HTTPS listener (the operations listener): our certificate and
/// key, ALPN `http/1.1`, and client certificates required only when `client_ca` names CAs.
///
/// # Errors
/// As for [`server_config`].
pub fn http_server_config(
    cert: &Path,
    key: &Path,
    client_ca: &[PathBuf],
) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsError> {
    let client_ca = (!client_ca.is_empty()).then_some(client_ca);
    tls_server_config(cert, key, client_ca, b"http/1.1")
}

/// A server config with our certificate and key, offering `alpn`; with `client_ca`, client
/// certificates that chain to those CAs are required (none named is an error), without it
/// none are asked for.
fn tls_server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&[PathBuf]>,
    alpn: &[u8],
) -> Result<std::sync::Arc<rustls::ServerConfig>, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        pem_certificates(&read_certificates(&[cert.to_owned()])?)
            .into_iter()
            .map(CertificateDer::from)
            .collect();
    let key_pem = SecretSource::File(key.to_owned()).read()?;
    let key_der = PrivateKeyDer::from_pem_slice(key_pem.expose().as_bytes())
        .map_err(|_| TlsError::NoPrivateKey(key.to_owned()))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(client_ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for der in pem_certificates(&read_certificates(client_ca)?) {
                roots.add(CertificateDer::from(der))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key_der)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The client side: the CA that issued the server's certificate and our own certificate and
/// key. `domain` is the name checked against the server certificate (default: the
/// endpoint's host, which may be an IP address).
///
/// # Errors
/// Unreadable files.
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    domain: Option<&str>,
) -> Result<ClientTlsConfig, TlsError> {
    install_crypto_provider();
    let ca = read_certificates(&[ca.to_owned()])?;
    let cert = read_certificates(&[cert.to_owned()])?;
    let key = SecretSource::File(key.to_owned()).read()?;
    let c = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key.expose().as_bytes()));
    Ok(match domain {
        Some(d) => c.domain_name(d),
        None => c,
    })
}

/// The SPKI algorithm identifier and `subjectPublicKey` bits of a public key (what goes into
/// a certificate or CSR for a key held on a device).
///
/// # Errors
/// [`TlsError::Parse`] for an RSA key whose integers cannot be encoded.
pub fn public_key_bits(
    pk: &crate::crypto::PublicKey,
) -> Result<(rustls::pki_types::AlgorithmIdentifier, Vec<u8>), TlsError> {
    use crate::crypto::{Curve, PublicKey};
    use rustls::pki_types::alg_id;
    use x509_cert::der::Encode as _;
    Ok(match pk {
        PublicKey::Ec { curve, x, y } => {
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(0x04);
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            let alg = match curve {
                Curve::P256 => alg_id::ECDSA_P256,
                Curve::P384 => alg_id::ECDSA_P384,
            };
            (alg, point)
        }
        PublicKey::Rsa { n, e } => {
            let bad = |e: der::Error| TlsError::Parse(format!("RSA public key: {e}"));
            let key = pkcs1::RsaPublicKey {
                modulus: der::asn1::UintRef::new(n).map_err(bad)?,
                public_exponent: der::asn1::UintRef::new(e).map_err(bad)?,
            };
            (alg_id::RSA_ENCRYPTION, key.to_der().map_err(bad)?)
        }
        PublicKey::Ed25519 { x } => (alg_id::ED25519, x.clone()),
    })
}

/// SubjectPublicKeyInfo DER of a public key.
///
/// # Errors
/// See [`public_key_bits`].
pub fn spki_der(pk: &crate::crypto::PublicKey) -> Result<Vec<u8>, TlsError> {
    let (alg, bits) = public_key_bits(pk)?;
    Ok(rustls::sign::public_key_to_spki(&alg, bits).to_vec())
}

/// Whether a DER certificate is for `pk` (its SubjectPublicKeyInfo is `pk`'s).
///
/// # Errors
/// [`TlsError::Parse`] for a certificate that does not parse.
pub fn certificate_is_for(
    cert_der: &[u8],
    pk: &crate::crypto::PublicKey,
) -> Result<bool, TlsError> {
    use x509_cert::der::Encode as _;
    let cert =
        x509_cert::Certificate::from_der(cert_der).map_err(|e| TlsError::Parse(e.to_string()))?;
    let theirs = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| TlsError::Parse(e.to_string()))?;
    Ok(theirs == spki_der(pk)?)
}

/// The caller identity in a (verified) client certificate.
///
/// # Errors
/// [`TlsError::NoIdentity`] when the certificate lacks the configured field; parse errors.
pub fn identity_of(der: &[u8], kind: IdentityKind) -> Result<String, TlsError> {
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| TlsError::Parse(e.to_string()))?;
    let tbs = cert.tbs_certificate();
    match kind {
        IdentityKind::Cn => {
            for atv in tbs.subject().iter() {
                if atv.oid == x509_cert::der::oid::db::rfc4519::CN
                    && let Ok(s) = std::str::from_utf8(atv.value.value())
                {
                    return Ok(s.to_owned());
                }
            }
            Err(TlsError::NoIdentity("subject common name"))
        }
        IdentityKind::Spiffe | IdentityKind::Dns => {
            let sans: Vec<GeneralName> = tbs
                .extensions()
                .into_iter()
                .flatten()
                .filter(|e| e.extn_id == x509_cert::der::oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME)
                .filter_map(|e| SubjectAltName::from_der(e.extn_value.as_bytes()).ok())
                .flat_map(|s| s.0)
                .collect();
            let found = sans.iter().find_map(|n| match (kind, n) {
                (IdentityKind::Spiffe, GeneralName::UniformResourceIdentifier(u))
                    if u.as_str().starts_with("spiffe://") =>
                {
                    Some(u.as_str().to_owned())
                }
                (IdentityKind::Dns, GeneralName::DnsName(d)) => Some(d.as_str().to_owned()),
                _ => None,
            });
            found.ok_or(match kind {
                IdentityKind::Spiffe => TlsError::NoIdentity("spiffe:// URI SAN"),
                _ => TlsError::NoIdentity("DNS SAN"),
            })
        }
    }
}

/// A certificate authority made for dev mode and tests.
pub struct TestCa {
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// The issuer (parameters and key) used to sign leaf certificates.
    issuer: rcgen::Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa(***)")
    }
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM (zeroized on drop).
    pub key_pem: zeroize::Zeroizing<String>,
}

/// What a client certificate says about its holder.
#[derive(Debug, Clone, Default)]
pub struct ClientNames {
    /// `spiffe://…` URI SAN.
    pub spiffe: Option<String>,
    /// DNS SAN.
    pub dns: Option<String>,
    /// Subject CN.
    pub cn: Option<String>,
    /// Make it already expired (tests).
    pub expired: bool,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"***")
            .finish()
    }
}

impl TestCa {
    /// A fresh self-signed CA (ECDSA P-256).
    ///
    /// # Errors
    /// [`TlsError::Generate`].
    pub fn new(name: &str) -> Result<TestCa, TlsError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = p.self_signed(&key)?;
        Ok(TestCa {
            cert_pem: cert.pem(),
            issuer: rcgen::Issuer::new(p, key),
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    ///
    /// # Errors
    /// [`TlsError::Generate`].
    pub fn server(&self, names: &[&str]) -> Result<Leaf, TlsError> {
        let mut p =
            CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
        p.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("sigild"),
        );
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p)
    }

    /// A client certificate for a public key whose private half is elsewhere (on a device
    /// behind sigild): PEM, no key.
    ///
    /// # Errors
    /// [`TlsError::Generate`].
    pub fn client_for_key(
        &self,
        names: &ClientNames,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<String, TlsError> {
        let p = Self::client_params(names)?;
        Ok(p.signed_by(public_key, &self.issuer)?.pem())
    }

    /// A client certificate.
    ///
    /// # Errors
    /// [`TlsError::Generate`].
    pub fn client(&self, names: &ClientNames) -> Result<Leaf, TlsError> {
        let p = Self::client_params(names)?;
        self.sign(p)
    }

    fn client_params(names: &ClientNames) -> Result<CertificateParams, TlsError> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        if let Some(u) = &names.spiffe {
            p.subject_alt_names
                .push(SanType::URI(u.as_str().try_into()?));
        }
        if let Some(d) = &names.dns {
            p.subject_alt_names
                .push(SanType::DnsName(d.as_str().try_into()?));
        }
        if let Some(cn) = &names.cn {
            p.distinguished_name.push(DnType::CommonName, cn.as_str());
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if names.expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        Ok(p)
    }

    fn sign(&self, p: CertificateParams) -> Result<Leaf, TlsError> {
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        })
    }
}

/// File names of the dev PKI inside a state directory.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// CA certificate (trusted by both sides).
    pub ca: PathBuf,
    /// Server certificate (SAN `localhost`, `127.0.0.1`).
    pub server_cert: PathBuf,
    /// Server key (0600).
    pub server_key: PathBuf,
    /// Client certificate (`spiffe://sigild.dev/admin`, CN `sigild-dev-admin`).
    pub client_cert: PathBuf,
    /// Client key (0600).
    pub client_key: PathBuf,
}

/// The identity of the dev client certificate.
pub const DEV_CLIENT_SPIFFE: &str = "spiffe://sigild.dev/admin";

impl DevPki {
    /// The paths in `dir`.
    pub fn in_dir(dir: &Path) -> DevPki {
        DevPki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }

    /// Whether every file is there.
    pub fn complete(&self) -> bool {
        [
            &self.ca,
            &self.server_cert,
            &self.server_key,
            &self.client_cert,
            &self.client_key,
        ]
        .iter()
        .all(|p| p.is_file())
    }

    /// Create a new CA, server and client certificate unless all files exist. The CA key is
    /// not kept: nothing else can ever be issued under this dev CA. Returns whether files
    /// were written.
    ///
    /// # Errors
    /// Generation or file errors.
    pub fn ensure(&self) -> Result<bool, TlsError> {
        if self.complete() {
            return Ok(false);
        }
        let ca = TestCa::new("sigild dev CA")?;
        let server = ca.server(&["localhost", "127.0.0.1"])?;
        let client = ca.client(&ClientNames {
            spiffe: Some(DEV_CLIENT_SPIFFE.into()),
            dns: Some("admin.sigild.dev".into()),
            cn: Some("sigild-dev-admin".into()),
            expired: false,
        })?;
        for p in [
            &self.ca,
            &self.server_cert,
            &self.server_key,
            &self.client_cert,
            &self.client_key,
        ] {
            if p.exists() {
                std::fs::remove_file(p).map_err(|e| TlsError::Write(p.clone(), e))?;
            }
        }
        let w =
            |p: &PathBuf, s: &str| std::fs::write(p, s).map_err(|e| TlsError::Write(p.clone(), e));
        w(&self.ca, &ca.cert_pem)?;
        w(&self.server_cert, &server.cert_pem)?;
        w(&self.client_cert, &client.cert_pem)?;
        let ws = |p: &PathBuf, s: &str| {
            write_secret_file(p, s.trim_end()).map_err(|e| TlsError::Write(p.clone(), e))
        };
        ws(&self.server_key, &server.key_pem)?;
        ws(&self.client_key, &client.key_pem)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_from_each_field() -> Result<(), TlsError> {
        let ca = TestCa::new("t")?;
        let leaf = ca.client(&ClientNames {
            spiffe: Some("spiffe://example.org/idp".into()),
            dns: Some("idp.example.org".into()),
            cn: Some("idp".into()),
            expired: false,
        })?;
        let der = pem_certificates(leaf.cert_pem.as_bytes())
            .pop()
            .ok_or(TlsError::Parse("no cert".into()))?;
        assert_eq!(
            identity_of(&der, IdentityKind::Spiffe)?,
            "spiffe://example.org/idp"
        );
        assert_eq!(identity_of(&der, IdentityKind::Dns)?, "idp.example.org");
        assert_eq!(identity_of(&der, IdentityKind::Cn)?, "idp");
        let bare = ca.client(&ClientNames {
            cn: Some("only-cn".into()),
            ..ClientNames::default()
        })?;
        let der = pem_certificates(bare.cert_pem.as_bytes())
            .pop()
            .ok_or(TlsError::Parse("no cert".into()))?;
        assert!(matches!(
            identity_of(&der, IdentityKind::Spiffe),
            Err(TlsError::NoIdentity(_))
        ));
        Ok(())
    }

    #[test]
    fn dev_pki_is_written_once_with_private_keys() -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir()?;
        let pki = DevPki::in_dir(dir.path());
        assert!(pki.ensure()?);
        assert!(!pki.ensure()?);
        let mode = std::fs::metadata(&pki.client_key)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            server_config(
                &pki.server_cert,
                &pki.server_key,
                std::slice::from_ref(&pki.ca)
            )
            .is_ok()
        );
        assert!(
            client_config(
                &pki.ca,
                &pki.client_cert,
                &pki.client_key,
                Some("localhost")
            )
            .is_ok()
        );
        Ok(())
    }
}

/// Property tests of the certificate readers that see caller-supplied bytes (a chain sent to
/// `SetCertificateChain`, a client certificate's names): no input panics, and the names a
/// certificate was made with are the names read back.
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn pk() -> crate::crypto::PublicKey {
        crate::crypto::PublicKey::Ed25519 { x: vec![9; 32] }
    }

    proptest! {
        #[test]
        fn names_round_trip_and_mutations_never_panic(
            spiffe in "spiffe://[a-z]{1,8}/[a-z/]{0,8}",
            dns in "[a-z]{1,8}\\.example",
            cn in "[ -~]{1,16}",
            flips in prop::collection::vec((any::<usize>(), 1u8..=255), 0..4),
            cut in any::<usize>(),
        ) {
            let ca = TestCa::new("proptest CA").map_err(|e| TestCaseError::fail(e.to_string()))?;
            let names = ClientNames {
                spiffe: Some(spiffe.clone()),
                dns: Some(dns.clone()),
                cn: Some(cn.clone()),
                expired: false,
            };
            let leaf = ca.client(&names).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let ders = pem_certificates(leaf.cert_pem.as_bytes());
            prop_assert_eq!(ders.len(), 1);
            let der = ders.into_iter().next().unwrap_or_default();
            prop_assert_eq!(identity_of(&der, IdentityKind::Spiffe).ok(), Some(spiffe));
            prop_assert_eq!(identity_of(&der, IdentityKind::Dns).ok(), Some(dns));
            prop_assert_eq!(identity_of(&der, IdentityKind::Cn).ok(), Some(cn));
            prop_assert_eq!(certificate_is_for(&der, &pk()).ok(), Some(false));

            let mut bad = der.clone();
            for (i, x) in flips {
                let n = bad.len();
                if let Some(b) = bad.get_mut(i % n) {
                    *b ^= x;
                }
            }
            bad.truncate(cut % (bad.len() + 1) + bad.len() / 2);
            for kind in [IdentityKind::Spiffe, IdentityKind::Dns, IdentityKind::Cn] {
                let _ = identity_of(&bad, kind);
            }
            let _ = certificate_is_for(&bad, &pk());
        }
    }

    proptest! {
        #[test]
        fn garbage_never_panics(der in prop::collection::vec(any::<u8>(), 0..300)) {
            for kind in [IdentityKind::Spiffe, IdentityKind::Dns, IdentityKind::Cn] {
                let _ = identity_of(&der, kind);
            }
            let _ = certificate_is_for(&der, &pk());
        }

        #[test]
        fn pem_blocks_round_trip(
            blocks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..4),
            junk in "[ -~\n]{0,40}",
        ) {
            use base64::Engine as _;
            let mut pem = junk.replace("-----", "");
            pem.push('\n');
            for b in &blocks {
                let text = base64::engine::general_purpose::STANDARD.encode(b);
                pem.push_str("-----BEGIN CERTIFICATE-----\n");
                for chunk in text.as_bytes().chunks(64) {
                    pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                    pem.push('\n');
                }
                pem.push_str("-----END CERTIFICATE-----\n");
            }
            prop_assert_eq!(pem_certificates(pem.as_bytes()), blocks);
            let _ = pem_certificates(junk.as_bytes());
        }
    }
}
