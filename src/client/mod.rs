//! The client side of sigild's gRPC API, for applications whose private keys live behind a
//! sigild daemon: how to reach the daemon ([`Connection`]: mutual TLS, Unix socket, or plaintext
//! on loopback), a thin typed [`Client`] for every RPC, a rustls signer whose private-key
//! operation is a `SignRaw` call ([`SigildSigningKey`]), the certificate and DPoP helpers
//! a FAPI client needs, RFC 9421 HTTP message signatures (sign an `http::Request` through sigild,
//! [`verify_http_response`]), JWE decryption with a check of nested tokens ([`verify_nested`]), and
//! many signatures in flight on one `SignStream` for callers that sign a lot ([`SignPipeline`]).
//!
//! Built by the `client` feature, which pulls in neither `cryptoki` nor `yubikey`: this module
//! may depend on the generated [`crate::api::pb`] types, on the pure [`crate::jose`] and
//! [`crate::crypto`] vocabulary and on [`crate::tls`] for reading PEM files; it must never touch
//! a backend, the keyring, the service or policy. Every failure is one [`ClientError`], which
//! keeps the daemon's gRPC status code.

mod cert;
mod decrypt;
mod dpop;
mod httpsig;
mod rotation;
mod signer;
mod stream;

use std::path::{Path, PathBuf};

use tonic::transport::Channel;

use crate::api::pb;
use crate::api::pb::decryption_service_client::DecryptionServiceClient;
use crate::api::pb::key_service_client::KeyServiceClient;
use crate::api::pb::signing_service_client::SigningServiceClient;

type Result<T> = std::result::Result<T, ClientError>;

pub use cert::{HandshakeReport, csr_pem, handshake_check, parse_subject};
pub use decrypt::{Decrypted, NestedTokenError, VerifiedToken, verify_nested};
pub use dpop::{DpopOutcome, DpopRequest, dpop_jkt, use_dpop_nonce, x5t_s256};
pub use httpsig::{VerifiedResponse, verify_http_response};
pub use signer::{SigildSigningKey, SignerOptions, client_config, tls_schemes};
pub use stream::{DEFAULT_WINDOW, Pending, SignPipeline, Signed, StreamRequest};

/// Everything that can go wrong talking to sigild.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The daemon answered with an error status; [`ClientError::code`] gives its gRPC code.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
    /// The daemon cannot be reached (refused, TLS handshake failed, socket missing).
    #[error("cannot reach sigild at {endpoint}: {source}")]
    Connect {
        /// The endpoint that was tried.
        endpoint: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The connection options are unusable (bad endpoint, plaintext to a non-loopback host).
    #[error("{0}")]
    Config(String),
    /// A certificate or key file cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The daemon answered with something this client cannot use.
    #[error("unexpected answer from sigild: {0}")]
    InvalidResponse(String),
    /// The key cannot serve what was asked (no TLS scheme, key/certificate mismatch).
    #[error("{0}")]
    Unsupported(String),
    /// The background signer thread is gone or did not answer in time.
    #[error("the sigild signer {0}")]
    Signer(&'static str),
    /// A decrypted nested token's inner JWS was not accepted.
    #[error(transparent)]
    NestedToken(#[from] NestedTokenError),
    /// An HTTP message cannot be signed as given, or a response signature does not verify,
    /// does not cover what it must, or its body does not match its digest (RFC 9421).
    #[error("HTTP message signature: {0}")]
    HttpSignature(#[from] crate::httpsig::HttpSigError),
    /// A response signature that cannot be accepted: none (or several) tagged for FAPI 2.0
    /// responses, or one without `created` or outside its time window.
    #[error("response signature not accepted: {0}")]
    ResponseSignature(String),
}

impl ClientError {
    /// The gRPC status code of a daemon answer, `None` for local and transport failures.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

/// `FailedPrecondition` → `FAILED_PRECONDITION`, as gRPC tools print codes.
pub fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, ch)| {
            let sep = (i > 0 && ch.is_ascii_uppercase()).then_some('_');
            sep.into_iter()
                .chain(std::iter::once(ch.to_ascii_uppercase()))
        })
        .collect()
}

/// Where the daemon is and how to authenticate to it. Cheap to clone; connecting happens in
/// [`Connection::connect`] (the signer connects again on its own thread, which is why this is a
/// description rather than a channel).
#[derive(Debug, Clone)]
pub struct Connection {
    /// The transport.
    target: Target,
}

#[derive(Debug, Clone)]
enum Target {
    /// `https://…` with our client certificate.
    Mtls {
        endpoint: String,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        /// Name checked against the server certificate (default: the endpoint's host).
        domain: Option<String>,
    },
    /// The daemon's Unix socket; the kernel's peer credentials identify us.
    Unix(PathBuf),
    /// `http://` to a daemon on loopback with `danger_plaintext`.
    Plaintext(String),
}

impl Connection {
    /// Mutual TLS to `endpoint` (`https://host:port`): `ca` issued the daemon's certificate,
    /// `cert`/`key` (PEM, key file mode 0600) are ours.
    pub fn mtls(
        endpoint: impl Into<String>,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Connection {
        Connection {
            target: Target::Mtls {
                endpoint: endpoint.into(),
                ca: ca.into(),
                cert: cert.into(),
                key: key.into(),
                domain: None,
            },
        }
    }

    /// Check the server certificate against `domain` instead of the endpoint's host (mTLS
    /// only; ignored otherwise).
    #[must_use]
    pub fn with_domain(mut self, domain: impl Into<String>) -> Connection {
        if let Target::Mtls { domain: d, .. } = &mut self.target {
            *d = Some(domain.into());
        }
        self
    }

    /// The daemon's Unix socket.
    pub fn unix(path: impl Into<PathBuf>) -> Connection {
        Connection {
            target: Target::Unix(path.into()),
        }
    }

    /// Plaintext `http://` to a daemon started with `danger_plaintext`; only loopback hosts
    /// are accepted, because nothing else would protect the signatures in transit.
    ///
    /// # Errors
    /// [`ClientError::Config`] for a non-`http://` or non-loopback endpoint.
    pub fn danger_plaintext_loopback(endpoint: impl Into<String>) -> Result<Connection> {
        let endpoint = endpoint.into();
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| ClientError::Config(format!("bad endpoint {endpoint}: {e}")))?;
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if uri.scheme_str() != Some("http") || !loopback {
            return Err(ClientError::Config(format!(
                "plaintext is only allowed to a loopback http:// endpoint, not {endpoint}"
            )));
        }
        Ok(Connection {
            target: Target::Plaintext(endpoint),
        })
    }

    /// The endpoint as a user would write it (`https://…`, `unix:/…`, `http://…`).
    pub fn endpoint(&self) -> String {
        match &self.target {
            Target::Mtls { endpoint, .. } | Target::Plaintext(endpoint) => endpoint.clone(),
            Target::Unix(p) => format!("unix:{}", p.display()),
        }
    }

    /// Open a gRPC channel (on the current tokio runtime, which the channel's background task
    /// then lives on).
    ///
    /// # Errors
    /// [`ClientError::Connect`], [`ClientError::Tls`] for unreadable files,
    /// [`ClientError::Config`] for a malformed endpoint.
    pub async fn connect(&self) -> Result<Channel> {
        let failed = |source| ClientError::Connect {
            endpoint: self.endpoint(),
            source,
        };
        match &self.target {
            Target::Unix(path) => unix_channel(path).await.map_err(failed),
            Target::Plaintext(endpoint) => Channel::from_shared(endpoint.clone())
                .map_err(|e| ClientError::Config(format!("bad endpoint {endpoint}: {e}")))?
                .connect()
                .await
                .map_err(failed),
            Target::Mtls {
                endpoint,
                ca,
                cert,
                key,
                domain,
            } => {
                let tls = crate::tls::client_config(ca, cert, key, domain.as_deref())?;
                Channel::from_shared(endpoint.clone())
                    .map_err(|e| ClientError::Config(format!("bad endpoint {endpoint}: {e}")))?
                    .tls_config(tls)
                    .map_err(failed)?
                    .connect()
                    .await
                    .map_err(failed)
            }
        }
    }
}

/// A gRPC channel over the daemon's Unix socket.
///
/// # Errors
/// The socket cannot be connected.
pub async fn unix_channel(path: &Path) -> std::result::Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}

/// A typed client for the sigild services over one channel. Cheap to clone (clones share the
/// channel); methods take `&self`.
#[derive(Debug, Clone)]
pub struct Client {
    /// Key management.
    keys: KeyServiceClient<Channel>,
    /// Signing.
    signing: SigningServiceClient<Channel>,
    /// Decryption.
    decryption: DecryptionServiceClient<Channel>,
}

impl Client {
    /// Connect as described by `conn`.
    ///
    /// # Errors
    /// See [`Connection::connect`].
    pub async fn connect(conn: &Connection) -> Result<Client> {
        Ok(Client::from_channel(conn.connect().await?))
    }

    /// Use an existing channel.
    pub fn from_channel(channel: Channel) -> Client {
        Client {
            keys: KeyServiceClient::new(channel.clone()),
            signing: SigningServiceClient::new(channel.clone()),
            decryption: DecryptionServiceClient::new(channel),
        }
    }

    /// `CreateKey`: generate a key on the daemon's token.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn create_key(&self, req: pb::CreateKeyRequest) -> Result<pb::Key> {
        Ok(self.keys.clone().create_key(req).await?.into_inner())
    }

    /// `ImportKey` (migration only). The request's key bytes are zeroized after sending.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn import_key(&self, mut req: pb::ImportKeyRequest) -> Result<pb::Key> {
        let r = self.keys.clone().import_key(req.clone()).await;
        zeroize::Zeroize::zeroize(&mut req.pkcs8_der);
        Ok(r?.into_inner())
    }

    /// `AdoptKey`: take over a key pair by PKCS#11 URI.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn adopt_key(&self, req: pb::AdoptKeyRequest) -> Result<pb::Key> {
        Ok(self.keys.clone().adopt_key(req).await?.into_inner())
    }

    /// `ListKeys`.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn list_keys(&self) -> Result<Vec<pb::Key>> {
        Ok(self
            .keys
            .clone()
            .list_keys(pb::ListKeysRequest {})
            .await?
            .into_inner()
            .keys)
    }

    /// `GetKey`: one key with its versions.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn key(&self, name: &str) -> Result<pb::Key> {
        Ok(self
            .keys
            .clone()
            .get_key(pb::GetKeyRequest { name: name.into() })
            .await?
            .into_inner())
    }

    /// `RotateKey`: add a version in state `next`.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn rotate_key(&self, req: pb::RotateKeyRequest) -> Result<pb::Key> {
        Ok(self.keys.clone().rotate_key(req).await?.into_inner())
    }

    /// `ActivateKeyVersion` (version 0: the newest `next`).
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn activate_key_version(&self, name: &str, version: u32) -> Result<pb::Key> {
        let req = pb::KeyVersionRequest {
            name: name.into(),
            version,
        };
        Ok(self
            .keys
            .clone()
            .activate_key_version(req)
            .await?
            .into_inner())
    }

    /// `RetireKeyVersion` (version 0: the active one).
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn retire_key_version(&self, name: &str, version: u32) -> Result<pb::Key> {
        let req = pb::KeyVersionRequest {
            name: name.into(),
            version,
        };
        Ok(self
            .keys
            .clone()
            .retire_key_version(req)
            .await?
            .into_inner())
    }

    /// `DestroyKeyVersion` (an explicit version).
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn destroy_key_version(&self, name: &str, version: u32) -> Result<pb::Key> {
        let req = pb::KeyVersionRequest {
            name: name.into(),
            version,
        };
        Ok(self
            .keys
            .clone()
            .destroy_key_version(req)
            .await?
            .into_inner())
    }

    /// `GetJwks`: the JWK Set JSON text.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn jwks(&self) -> Result<String> {
        Ok(self
            .keys
            .clone()
            .get_jwks(pb::GetJwksRequest {})
            .await?
            .into_inner()
            .jwks_json)
    }

    /// `SetCertificateChain`: attach an issued chain (DER, leaf first) to a version (0: the
    /// active one) so clients can fetch it with [`Client::certificate_chain`]. Admin.
    ///
    /// # Errors
    /// [`ClientError::Status`]: `INVALID_ARGUMENT` when the leaf is for another key.
    pub async fn set_certificate_chain(
        &self,
        name: &str,
        version: u32,
        certificates: Vec<Vec<u8>>,
    ) -> Result<pb::CertificateChain> {
        let req = pb::SetCertificateChainRequest {
            name: name.into(),
            version,
            certificates,
        };
        Ok(self
            .keys
            .clone()
            .set_certificate_chain(req)
            .await?
            .into_inner())
    }

    /// `GetCertificateChain`: the chain attached to a version (0: the active one), ready for
    /// [`client_config`].
    ///
    /// # Errors
    /// [`ClientError::Status`]: `NOT_FOUND` when none is attached.
    pub async fn certificate_chain(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
        let req = pb::GetCertificateChainRequest {
            name: name.into(),
            version,
        };
        Ok(self
            .keys
            .clone()
            .get_certificate_chain(req)
            .await?
            .into_inner()
            .certificates
            .into_iter()
            .map(rustls::pki_types::CertificateDer::from)
            .collect())
    }

    /// The public JWK of a key's active version, parsed.
    ///
    /// # Errors
    /// [`ClientError::Status`]; [`ClientError::InvalidResponse`] when the key has no active
    /// version or its JWK does not parse.
    pub async fn active_public_key(&self, name: &str) -> Result<crate::crypto::PublicKey> {
        let k = self.key(name).await?;
        let v = k
            .versions
            .iter()
            .find(|v| v.version == k.active_version && k.active_version != 0)
            .ok_or_else(|| {
                ClientError::InvalidResponse(format!("key {name:?} has no active version"))
            })?;
        let jwk: serde_json::Value = serde_json::from_str(&v.public_jwk_json)
            .map_err(|e| ClientError::InvalidResponse(format!("public JWK: {e}")))?;
        crate::jose::public_key_from_jwk(&jwk)
            .map_err(|e| ClientError::InvalidResponse(format!("public JWK: {e}")))
    }

    /// `SignJws`: a caller-built JWS, header and payload used byte for byte.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn sign_jws(&self, req: pb::SignJwsRequest) -> Result<pb::SignJwsResponse> {
        Ok(self.signing.clone().sign_jws(req).await?.into_inner())
    }

    /// `SignRaw`: `data` signed with `key`'s active version; `alg` overrides the key's own
    /// JOSE alg (e.g. RS256 on a PS256 key). The signature is JOSE-encoded (ECDSA `r‖s`).
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn sign_raw(
        &self,
        key: &str,
        data: &[u8],
        alg: Option<&str>,
    ) -> Result<pb::SignRawResponse> {
        let req = pb::SignRawRequest {
            version: 0,
            key: key.into(),
            data: data.to_vec(),
            alg: alg.unwrap_or_default().into(),
        };
        Ok(self.signing.clone().sign_raw(req).await?.into_inner())
    }

    /// `SignTlsHandshake`: a TLS handshake signature over `message` (what the TLS stack asks
    /// the key to sign). A caller granted `tls` alone gets TLS 1.3 CertificateVerify content
    /// signed; other input, TLS 1.2 handshakes included, also needs `raw`.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn sign_tls_handshake(
        &self,
        key: &str,
        message: &[u8],
        alg: Option<&str>,
    ) -> Result<pb::SignRawResponse> {
        let req = pb::SignTlsHandshakeRequest {
            key: key.into(),
            message: message.to_vec(),
            alg: alg.unwrap_or_default().into(),
        };
        Ok(self
            .signing
            .clone()
            .sign_tls_handshake(req)
            .await?
            .into_inner())
    }

    /// `SignIdToken`.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn sign_id_token(&self, req: pb::SignIdTokenRequest) -> Result<pb::SignJwsResponse> {
        Ok(self.signing.clone().sign_id_token(req).await?.into_inner())
    }

    /// `SignRequestObject`: a JAR request object (RFC 9101) for PAR.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn sign_request_object(
        &self,
        req: pb::SignRequestObjectRequest,
    ) -> Result<pb::SignJwsResponse> {
        Ok(self
            .signing
            .clone()
            .sign_request_object(req)
            .await?
            .into_inner())
    }

    /// `SignClientAssertion`: a `private_key_jwt` assertion (RFC 7523); single-use, so make a
    /// new one for every token request.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn sign_client_assertion(
        &self,
        req: pb::SignClientAssertionRequest,
    ) -> Result<pb::SignJwsResponse> {
        Ok(self
            .signing
            .clone()
            .sign_client_assertion(req)
            .await?
            .into_inner())
    }

    /// `SignAccessToken`: an RFC 9068 JWT access token (`typ: at+jwt`); sigild stamps `iat`,
    /// `exp` and `jti`, and derives `cnf` from the DPoP JWK, its jkt, or the client
    /// certificate (at most one of them).
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn sign_access_token(
        &self,
        req: pb::SignAccessTokenRequest,
    ) -> Result<pb::SignJwsResponse> {
        Ok(self
            .signing
            .clone()
            .sign_access_token(req)
            .await?
            .into_inner())
    }

    /// `SignLogoutToken`: an OpenID Connect back-channel logout token (`typ: logout+jwt`) for
    /// a user (`subject`), a session (`sid`) or both.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn sign_logout_token(
        &self,
        req: pb::SignLogoutTokenRequest,
    ) -> Result<pb::SignJwsResponse> {
        Ok(self
            .signing
            .clone()
            .sign_logout_token(req)
            .await?
            .into_inner())
    }

    /// `SignCibaRequest`: a CIBA signed authentication request (CIBA Core §7.1.1), for the
    /// `request` parameter of a backchannel authentication request.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn sign_ciba_request(
        &self,
        req: pb::SignCibaRequestRequest,
    ) -> Result<pb::SignJwsResponse> {
        Ok(self
            .signing
            .clone()
            .sign_ciba_request(req)
            .await?
            .into_inner())
    }

    /// `SignDpopProof`: one DPoP proof (RFC 9449). See [`DpopRequest`] for the nonce retry.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn sign_dpop_proof(
        &self,
        req: pb::SignDpopProofRequest,
    ) -> Result<pb::SignJwsResponse> {
        Ok(self
            .signing
            .clone()
            .sign_dpop_proof(req)
            .await?
            .into_inner())
    }

    /// `SignJarm`: a JWT-secured authorization response (JARM) for the redirect to the client
    /// (`response_mode=jwt`, `query.jwt`, `fragment.jwt` or `form_post.jwt`).
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn sign_jarm(&self, req: pb::SignJarmRequest) -> Result<pb::SignJwsResponse> {
        Ok(self.signing.clone().sign_jarm(req).await?.into_inner())
    }

    /// `SignIntrospection`: a JWT introspection response (RFC 9701), the result nested under
    /// `token_introspection`; serve it as `application/token-introspection+jwt`.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn sign_introspection(
        &self,
        req: pb::SignIntrospectionRequest,
    ) -> Result<pb::SignJwsResponse> {
        Ok(self
            .signing
            .clone()
            .sign_introspection(req)
            .await?
            .into_inner())
    }

    /// `SignUserinfo`: a signed UserInfo response (OIDC Core §5.3.2); serve it as
    /// `application/jwt`.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn sign_userinfo(&self, req: pb::SignUserinfoRequest) -> Result<pb::SignJwsResponse> {
        Ok(self.signing.clone().sign_userinfo(req).await?.into_inner())
    }

    /// `DecryptJwe`: decrypt a compact JWE with `key` (the version is chosen by the JWE's
    /// `kid`). `allowed_algs` / `allowed_encs` narrow what this call accepts (empty: whatever
    /// the key and the caller's rule allow).
    ///
    /// # Errors
    /// [`ClientError::Status`]: `INVALID_ARGUMENT` with one and the same message for every
    /// JWE that cannot be decrypted (the daemon's log has the reason, under the request id in
    /// the message); `PERMISSION_DENIED`, `FAILED_PRECONDITION` (a signing key), device faults.
    pub async fn decrypt_jwe(
        &self,
        key: &str,
        jwe: &[u8],
        allowed_algs: &[&str],
        allowed_encs: &[&str],
    ) -> Result<Decrypted> {
        let req = pb::DecryptJweRequest {
            key: key.into(),
            jwe: jwe.to_vec(),
            allowed_algs: allowed_algs.iter().map(|a| (*a).to_owned()).collect(),
            allowed_encs: allowed_encs.iter().map(|e| (*e).to_owned()).collect(),
        };
        let r = self.decryption.clone().decrypt_jwe(req).await?.into_inner();
        Ok(Decrypted {
            plaintext: zeroize::Zeroizing::new(r.plaintext),
            protected_header: r.protected_header_json,
            version: r.key_version,
            kid: r.kid,
            alg: r.alg,
            enc: r.enc,
        })
    }

    /// Decrypt a nested token — an encrypted ID token, JARM response, UserInfo response or
    /// request object — through sigild, then verify its inner JWS against `jwks` (the
    /// signer's JWK Set) with one of `jws_algs` (see [`verify_nested`]). Returns the verified
    /// claims; checking `iss`, `aud`, `exp`, `nonce` is the caller's.
    ///
    /// # Errors
    /// As for [`Client::decrypt_jwe`]; [`ClientError::NestedToken`] when the inner JWS is not
    /// accepted.
    pub async fn decrypt_nested(
        &self,
        key: &str,
        jwe: &[u8],
        allowed_algs: &[&str],
        allowed_encs: &[&str],
        jwks: &serde_json::Value,
        jws_algs: &[crate::jose::Alg],
    ) -> Result<VerifiedToken> {
        let d = self
            .decrypt_jwe(key, jwe, allowed_algs, allowed_encs)
            .await?;
        Ok(verify_nested(&d, jwks, jws_algs)?)
    }
}

/// Read a PKCS#8 key file for [`Client::import_key`] as DER (PEM is decoded), in zeroizing
/// buffers so the key material does not linger in this process.
///
/// # Errors
/// Unreadable file, wrong PEM type (with a hint to convert).
pub fn read_pkcs8(path: &Path) -> std::result::Result<zeroize::Zeroizing<Vec<u8>>, ClientError> {
    use base64::Engine as _;
    let raw = zeroize::Zeroizing::new(
        std::fs::read(path).map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?,
    );
    if !raw.starts_with(b"-----BEGIN") {
        return Ok(raw);
    }
    let text = std::str::from_utf8(&raw)
        .map_err(|_| ClientError::Config("PEM file is not UTF-8".into()))?;
    let first = text.lines().next().unwrap_or_default();
    if first.trim() != "-----BEGIN PRIVATE KEY-----" {
        return Err(ClientError::Config(format!(
            "{}: expected an unencrypted PKCS#8 \"PRIVATE KEY\" PEM, found {first:?}; convert with `openssl pkcs8 -topk8 -nocrypt -in KEY -out key.p8.pem`",
            path.display()
        )));
    }
    let body: zeroize::Zeroizing<String> = zeroize::Zeroizing::new(
        text.lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect(),
    );
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|e| ClientError::Config(format!("{}: bad PEM base64: {e}", path.display())))?;
    Ok(zeroize::Zeroizing::new(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_only_to_loopback() {
        assert!(Connection::danger_plaintext_loopback("http://127.0.0.1:7711").is_ok());
        assert!(Connection::danger_plaintext_loopback("http://localhost:1").is_ok());
        assert!(Connection::danger_plaintext_loopback("http://[::1]:1").is_ok());
        assert!(Connection::danger_plaintext_loopback("http://10.0.0.1:7711").is_err());
        assert!(Connection::danger_plaintext_loopback("https://127.0.0.1:7711").is_err());
    }

    #[test]
    fn status_codes_print_like_grpc() {
        assert_eq!(
            code_name(tonic::Code::FailedPrecondition),
            "FAILED_PRECONDITION"
        );
        let e = ClientError::from(tonic::Status::permission_denied("no"));
        assert_eq!(e.code(), Some(tonic::Code::PermissionDenied));
        assert_eq!(e.to_string(), "PERMISSION_DENIED: no");
    }
}
