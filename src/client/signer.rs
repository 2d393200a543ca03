//! A rustls client-authentication key whose private half stays behind sigild: rustls asks
//! [`SigildSigningKey`] for a [`rustls::sign::Signer`], and the signer's `sign` is one
//! `SignTlsHandshake` call with the JOSE alg matching the TLS signature scheme. A TLS 1.3
//! handshake needs only the `tls` operation on the key; a TLS 1.2 one signs the transcript
//! itself, which sigild cannot tell from other bytes, so a TLS 1.2 client key also needs `raw`
//! (in the caller's rule, and in the key's binding when it has one).
//!
//! **Who hashes, what comes out.** rustls hands `sign` the whole message (the TLS 1.3
//! CertificateVerify content or the TLS 1.2 handshake hash input) and expects the scheme's
//! signature encoding. sigild's `SignTlsHandshake` hashes as the alg says and returns JOSE encodings, so
//! the mapping is: ECDSA P-256/SHA-256 → ES256, P-384/SHA-384 → ES384 (JOSE `r‖s` re-encoded as
//! the DER `ECDSA-Sig-Value` TLS wants); RSA-PSS SHA-256/384 → PS256/PS384 (salt = hash length,
//! as TLS 1.3 requires); RSA PKCS#1 v1.5 SHA-256 → RS256 (TLS 1.2 only; there is no RS384 in
//! sigild, so `rsa_pkcs1_sha384` is not offered); Ed25519 → EdDSA.
//!
//! **Sync inside async.** rustls calls `Signer::sign` synchronously, usually from inside a
//! tokio task. The RPC therefore runs on a dedicated background thread that owns its own
//! current-thread runtime and its own connection to sigild; `sign` sends the job there and
//! waits on a channel with a timeout. On a multi-thread runtime the wait is wrapped in
//! [`tokio::task::block_in_place`], so the worker's other tasks move elsewhere and no worker is
//! starved. On a current-thread runtime the wait blocks that one thread for the length of one
//! RPC, but cannot deadlock, because nothing the RPC needs runs on the waiting thread. Outside
//! any runtime it simply blocks.

use std::sync::Arc;
use std::time::Duration;

use rustls::SignatureScheme;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use rustls::sign::{CertifiedKey, SingleCertAndKey};

use super::{Client, ClientError, Connection};
use crate::crypto::{Curve, KeyKind, PublicKey};

/// How the background signer behaves.
#[derive(Debug, Clone)]
pub struct SignerOptions {
    /// How long one signature may take before the handshake is failed (a daemon that does not
    /// answer must not hang the handshake forever).
    pub timeout: Duration,
}

impl Default for SignerOptions {
    fn default() -> Self {
        SignerOptions {
            timeout: Duration::from_secs(10),
        }
    }
}

/// The TLS signature schemes a key kind can serve through sigild, in order of preference, with
/// the JOSE alg `SignTlsHandshake` is asked for.
pub fn tls_schemes(kind: KeyKind) -> &'static [(SignatureScheme, &'static str)] {
    match kind {
        KeyKind::Ec(Curve::P256) => &[(SignatureScheme::ECDSA_NISTP256_SHA256, "ES256")],
        KeyKind::Ec(Curve::P384) => &[(SignatureScheme::ECDSA_NISTP384_SHA384, "ES384")],
        KeyKind::Rsa { .. } => &[
            (SignatureScheme::RSA_PSS_SHA256, "PS256"),
            (SignatureScheme::RSA_PSS_SHA384, "PS384"),
            (SignatureScheme::RSA_PKCS1_SHA256, "RS256"),
        ],
        KeyKind::Ed25519 => &[(SignatureScheme::ED25519, "EdDSA")],
    }
}

/// Which RPC a signature goes through: what it is for decides what the caller must be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    /// `SignTlsHandshake`: a TLS handshake's CertificateVerify.
    Handshake,
    /// `SignRaw`: anything else (an X.509 structure such as a CSR).
    Raw,
}

/// One signing job for the background thread.
struct Job {
    /// The RPC to use.
    rpc: Rpc,
    /// Key name.
    key: String,
    /// The message rustls wants signed.
    data: Vec<u8>,
    /// JOSE alg for `SignTlsHandshake`.
    alg: &'static str,
    /// Where the JOSE-encoded signature goes.
    reply: std::sync::mpsc::SyncSender<Result<Vec<u8>, ClientError>>,
}

/// The handle on the background thread; the thread ends when the last handle is dropped.
#[derive(Debug)]
struct Worker {
    /// Jobs to the thread.
    tx: tokio::sync::mpsc::UnboundedSender<Job>,
    /// Per-signature limit.
    timeout: Duration,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("rpc", &self.rpc)
            .field("key", &self.key)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Start the thread, connect from it, and fetch `key`'s public key there.
    async fn start(
        conn: &Connection,
        key: &str,
        options: &SignerOptions,
    ) -> Result<(Worker, PublicKey), ClientError> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let conn = conn.clone();
        let name = key.to_owned();
        std::thread::Builder::new()
            .name("sigild-signer".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(_) => {
                        let _ = ready_tx.send(Err(ClientError::Signer("runtime cannot start")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let client = match Client::connect(&conn).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(client.active_public_key(&name).await);
                    while let Some(job) = rx.recv().await {
                        let c = client.clone();
                        tokio::spawn(async move {
                            let r = match job.rpc {
                                Rpc::Handshake => {
                                    c.sign_tls_handshake(&job.key, &job.data, Some(job.alg))
                                        .await
                                }
                                Rpc::Raw => c.sign_raw(&job.key, &job.data, Some(job.alg)).await,
                            }
                            .map(|r| r.signature);
                            let _ = job.reply.send(r);
                        });
                    }
                });
            })
            .map_err(|_| ClientError::Signer("thread cannot start"))?;
        let public = ready_rx
            .await
            .map_err(|_| ClientError::Signer("thread stopped while starting"))??;
        Ok((
            Worker {
                tx,
                timeout: options.timeout,
            },
            public,
        ))
    }

    /// Sign on the background thread and wait for the answer (see the module docs for why
    /// this is safe on both runtime flavours).
    fn sign_blocking(
        &self,
        rpc: Rpc,
        key: &str,
        data: &[u8],
        alg: &'static str,
    ) -> Result<Vec<u8>, ClientError> {
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        self.tx
            .send(Job {
                rpc,
                key: key.to_owned(),
                data: data.to_vec(),
                alg,
                reply,
            })
            .map_err(|_| ClientError::Signer("thread has stopped"))?;
        let wait = || rx.recv_timeout(self.timeout);
        let answer = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        match answer {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(ClientError::Signer("did not answer in time"))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(ClientError::Signer("thread has stopped"))
            }
        }
    }
}

/// A [`rustls::sign::SigningKey`] for a key held by sigild. Cloning shares the background
/// thread and its connection.
#[derive(Debug, Clone)]
pub struct SigildSigningKey {
    /// Key name on the daemon.
    key: String,
    /// The active version's public key (for the schemes and the SPKI).
    public: PublicKey,
    /// SubjectPublicKeyInfo DER of `public`, for rustls' key/certificate consistency check.
    spki: Vec<u8>,
    /// The `subjectPublicKey` bits of `spki` (what rcgen calls the key's DER bytes).
    key_bits: Vec<u8>,
    /// The background signer.
    worker: Arc<Worker>,
    /// The scheme of the last successful handshake signature (diagnostics: rustls does not
    /// report the client's own scheme).
    last_scheme: Arc<std::sync::Mutex<Option<SignatureScheme>>>,
}

impl SigildSigningKey {
    /// Start a signer for `key` on the daemon described by `conn`: a background thread
    /// connects (its own connection, on its own runtime) and fetches the key's active public
    /// key.
    ///
    /// # Errors
    /// Connection failures, [`ClientError::Status`] (e.g. `NOT_FOUND`, `PERMISSION_DENIED`
    /// from reading the key), [`ClientError::InvalidResponse`] when the key has no active
    /// version.
    pub async fn connect(
        conn: &Connection,
        key: &str,
        options: SignerOptions,
    ) -> Result<SigildSigningKey, ClientError> {
        let (worker, public) = Worker::start(conn, key, &options).await?;
        let (alg_id, key_bits) = public_key_bits(&public)?;
        let spki = rustls::sign::public_key_to_spki(&alg_id, &key_bits).to_vec();
        Ok(SigildSigningKey {
            key: key.to_owned(),
            public,
            spki,
            key_bits,
            worker: Arc::new(worker),
            last_scheme: Arc::default(),
        })
    }

    /// The TLS signature scheme of the last handshake signature this key (or a clone) made.
    pub fn last_scheme(&self) -> Option<SignatureScheme> {
        self.last_scheme.lock().ok().and_then(|g| *g)
    }

    /// The key's name on the daemon.
    pub fn name(&self) -> &str {
        &self.key
    }

    /// The active version's public key.
    pub fn public_key_info(&self) -> &PublicKey {
        &self.public
    }

    /// SubjectPublicKeyInfo DER (to put in a certificate or CSR).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// Sign the TLS handshake `message` with `alg` (`SignTlsHandshake`) on the background
    /// thread, blocking as described in the module docs; JOSE-encoded result.
    ///
    /// # Errors
    /// The daemon's status, or [`ClientError::Signer`] on timeout.
    pub fn sign_blocking(&self, message: &[u8], alg: &'static str) -> Result<Vec<u8>, ClientError> {
        self.worker
            .sign_blocking(Rpc::Handshake, &self.key, message, alg)
    }

    /// Sign arbitrary bytes (`SignRaw`: the caller needs `raw`), blocking like
    /// [`SigildSigningKey::sign_blocking`].
    ///
    /// # Errors
    /// As for [`SigildSigningKey::sign_blocking`].
    pub fn sign_raw_blocking(
        &self,
        message: &[u8],
        alg: &'static str,
    ) -> Result<Vec<u8>, ClientError> {
        self.worker.sign_blocking(Rpc::Raw, &self.key, message, alg)
    }

    /// This key with its certificate chain (leaf first), checked to belong together.
    ///
    /// # Errors
    /// [`ClientError::Unsupported`] when the leaf certificate is for another key or does not
    /// parse.
    pub fn certified(
        &self,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<Arc<CertifiedKey>, ClientError> {
        let ck = CertifiedKey::new(chain, Arc::new(self.clone()));
        ck.keys_match().map_err(|e| {
            ClientError::Unsupported(format!(
                "the certificate does not belong to sigild key {:?}: {e}",
                self.key
            ))
        })?;
        Ok(Arc::new(ck))
    }

    /// A client certificate resolver presenting `chain` with this key, for
    /// `ConfigBuilder::with_client_cert_resolver`.
    ///
    /// # Errors
    /// See [`SigildSigningKey::certified`].
    pub fn resolver(
        &self,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<Arc<SingleCertAndKey>, ClientError> {
        Ok(Arc::new(SingleCertAndKey::from(self.certified(chain)?)))
    }
}

/// A rustls client configuration (ring provider, safe default protocol versions) that trusts
/// `roots` and authenticates with `chain` and the sigild-held `key`.
///
/// # Errors
/// [`ClientError::Unsupported`] for a certificate that is not the key's.
pub fn client_config(
    roots: rustls::RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: &SigildSigningKey,
) -> Result<rustls::ClientConfig, ClientError> {
    let resolver = key.resolver(chain)?;
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Unsupported(e.to_string()))?
    .with_root_certificates(roots)
    .with_client_cert_resolver(resolver))
}

/// SubjectPublicKeyInfo DER of a public key.
#[cfg(test)]
fn spki_der(pk: &PublicKey) -> Result<Vec<u8>, ClientError> {
    Ok(crate::tls::spki_der(pk)?)
}

/// The SPKI algorithm identifier and `subjectPublicKey` bits of a public key.
fn public_key_bits(
    pk: &PublicKey,
) -> Result<(rustls::pki_types::AlgorithmIdentifier, Vec<u8>), ClientError> {
    Ok(crate::tls::public_key_bits(pk)?)
}

/// JOSE `r‖s` → DER `ECDSA-Sig-Value` (RFC 3279), as TLS and X.509 carry ECDSA signatures.
fn ecdsa_der(rs: &[u8], curve: Curve) -> Result<Vec<u8>, ClientError> {
    crate::crypto::ecdsa_fixed_to_der(rs, curve)
        .map_err(|e| ClientError::InvalidResponse(format!("ECDSA signature: {e}")))
}

impl rustls::sign::SigningKey for SigildSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        let (scheme, alg) = tls_schemes(self.public.kind())
            .iter()
            .find(|(s, _)| offered.contains(s))?;
        Some(Box::new(SigildSigner {
            key: self.clone(),
            scheme: *scheme,
            alg,
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        match self.public {
            PublicKey::Ec { .. } => rustls::SignatureAlgorithm::ECDSA,
            PublicKey::Rsa { .. } => rustls::SignatureAlgorithm::RSA,
            PublicKey::Ed25519 { .. } => rustls::SignatureAlgorithm::ED25519,
        }
    }
}

/// The public half for rcgen (certificates and CSRs naming this key).
impl rcgen::PublicKeyData for SigildSigningKey {
    fn der_bytes(&self) -> &[u8] {
        &self.key_bits
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match &self.public {
            PublicKey::Ec {
                curve: Curve::P256, ..
            } => &rcgen::PKCS_ECDSA_P256_SHA256,
            PublicKey::Ec {
                curve: Curve::P384, ..
            } => &rcgen::PKCS_ECDSA_P384_SHA384,
            // rsaEncryption key, sha256WithRSAEncryption (PKCS#1 v1.5) signatures: RS256.
            PublicKey::Rsa { .. } => &rcgen::PKCS_RSA_SHA256,
            PublicKey::Ed25519 { .. } => &rcgen::PKCS_ED25519,
        }
    }
}

/// rcgen signs X.509 structures (a CSR) with the key behind sigild: X.509 wants DER ECDSA
/// signatures and PKCS#1 v1.5 for `sha256WithRSAEncryption`. They are raw signatures
/// (`SignRaw`), not handshakes: the caller needs `raw` on the key (and a bound key `raw` in its
/// binding).
impl rcgen::SigningKey for SigildSigningKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        let (alg, curve) = match &self.public {
            PublicKey::Ec { curve, .. } => (
                match curve {
                    Curve::P256 => "ES256",
                    Curve::P384 => "ES384",
                },
                Some(*curve),
            ),
            PublicKey::Rsa { .. } => ("RS256", None),
            PublicKey::Ed25519 { .. } => ("EdDSA", None),
        };
        let sig = self
            .sign_raw_blocking(msg, alg)
            .map_err(|_| rcgen::Error::RemoteKeyError)?;
        match curve {
            Some(c) => ecdsa_der(&sig, c).map_err(|_| rcgen::Error::RemoteKeyError),
            None => Ok(sig),
        }
    }
}

/// One handshake's signer: a key and the scheme rustls agreed on.
#[derive(Debug)]
struct SigildSigner {
    /// The key.
    key: SigildSigningKey,
    /// The negotiated scheme.
    scheme: SignatureScheme,
    /// The JOSE alg serving it.
    alg: &'static str,
}

impl rustls::sign::Signer for SigildSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let fail = |e: ClientError| {
            rustls::Error::General(format!(
                "sigild could not sign with key {:?} ({}): {e}",
                self.key.key, self.alg
            ))
        };
        let sig = self.key.sign_blocking(message, self.alg).map_err(fail)?;
        if let Ok(mut g) = self.key.last_scheme.lock() {
            *g = Some(self.scheme);
        }
        match &self.key.public {
            PublicKey::Ec { curve, .. } => ecdsa_der(&sig, *curve).map_err(fail),
            _ => Ok(sig),
        }
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use ring::signature::{self as rs, KeyPair as _};

    #[test]
    fn jose_ecdsa_becomes_der_that_ring_verifies() {
        let rng = ring::rand::SystemRandom::new();
        for (fixed, asn1, curve) in [
            (
                &rs::ECDSA_P256_SHA256_FIXED_SIGNING,
                &rs::ECDSA_P256_SHA256_ASN1,
                Curve::P256,
            ),
            (
                &rs::ECDSA_P384_SHA384_FIXED_SIGNING,
                &rs::ECDSA_P384_SHA384_ASN1,
                Curve::P384,
            ),
        ] {
            let pkcs8 = rs::EcdsaKeyPair::generate_pkcs8(fixed, &rng).unwrap();
            let kp = rs::EcdsaKeyPair::from_pkcs8(fixed, pkcs8.as_ref(), &rng).unwrap();
            // Many signatures, so r or s with a high bit or a leading zero byte turn up.
            for i in 0..64u8 {
                let msg = [i; 20];
                let sig = kp.sign(&rng, &msg).unwrap();
                let der = ecdsa_der(sig.as_ref(), curve).unwrap();
                rs::UnparsedPublicKey::new(asn1, kp.public_key().as_ref())
                    .verify(&msg, &der)
                    .unwrap();
            }
        }
        assert!(ecdsa_der(&[1; 63], Curve::P256).is_err());
    }

    #[test]
    fn spki_matches_what_rcgen_writes() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = rcgen::PublicKeyData::der_bytes(&kp);
        let pk = PublicKey::Ec {
            curve: Curve::P256,
            x: raw[1..33].to_vec(),
            y: raw[33..].to_vec(),
        };
        assert_eq!(
            spki_der(&pk).unwrap(),
            rcgen::PublicKeyData::subject_public_key_info(&kp)
        );
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let pk = PublicKey::Ed25519 {
            x: rcgen::PublicKeyData::der_bytes(&kp).to_vec(),
        };
        assert_eq!(
            spki_der(&pk).unwrap(),
            rcgen::PublicKeyData::subject_public_key_info(&kp)
        );
    }

    #[test]
    fn schemes_only_what_sigild_signs() {
        let rsa = tls_schemes(KeyKind::Rsa { bits: 2048 });
        assert!(
            rsa.iter()
                .all(|(s, _)| *s != SignatureScheme::RSA_PKCS1_SHA384)
        );
        assert_eq!(rsa[0], (SignatureScheme::RSA_PSS_SHA256, "PS256"));
        assert_eq!(
            tls_schemes(KeyKind::Ed25519),
            &[(SignatureScheme::ED25519, "EdDSA")]
        );
    }
}
