//! The `sigild` command line: the daemon (`serve`, `dev`), config checking, the benchmark, and
//! client commands against a running daemon. Results go to stdout, errors to stderr. Secrets
//! are read from files or the environment, never from arguments.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::dev;
use sigild::api::pb;
use sigild::api::pb::key_service_client::KeyServiceClient;
use sigild::api::pb::signing_service_client::SigningServiceClient;
use sigild::config::Config;
use sigild::jose;

/// sigild: keeps signing keys on hardware and signs JOSE objects for the identity stack.
#[derive(Debug, Parser)]
#[command(name = "sigild", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon with a config file.
    Serve {
        /// TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the daemon on an embedded SoftHSM token (created on first run, with ES256, PS256
    /// and EdDSA keys), serving mutual TLS on 127.0.0.1:7711 with a dev CA and client
    /// certificate in the state directory (which client commands run from the same directory
    /// use by default), and a Unix socket `sigild.sock` there for the directory's owner.
    Dev {
        /// State directory (token, PINs, config).
        #[arg(long, default_value = ".sigild")]
        state_dir: PathBuf,
        /// Listen address (loopback only).
        #[arg(long, default_value = dev::DEV_LISTEN)]
        listen: SocketAddr,
    },
    /// Check a config file and the device it names: load the PKCS#11 module, find the token,
    /// log in once (a wrong PIN costs one try) and list the algorithms the token can serve;
    /// print what is wrong.
    CheckConfig {
        /// TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Check the file and the files it names only; do not touch the device.
        #[arg(long)]
        offline: bool,
    },
    /// Measure signatures/s and latency through the daemon against direct PKCS#11 calls on the
    /// same SoftHSM token.
    Bench(crate::bench::BenchArgs),
    /// Manage keys on a running daemon.
    Key {
        /// Where the daemon is.
        #[command(flatten)]
        conn: Conn,
        /// The key command.
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Print the JWK Set of every published key version.
    Jwks {
        /// Where the daemon is.
        #[command(flatten)]
        conn: Conn,
    },
    /// Client certificates for keys behind the daemon: make a CSR, test an mTLS handshake.
    Tls {
        /// Where the daemon is.
        #[command(flatten)]
        conn: TlsConn,
        /// The TLS command.
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Sign with a key on a running daemon.
    Sign {
        /// Where the daemon is.
        #[command(flatten)]
        conn: Conn,
        /// What to sign.
        #[command(subcommand)]
        command: SignCommand,
    },
    /// Decrypt a compact JWE read from stdin with an encryption key on a running daemon
    /// (the key version is chosen by the JWE's kid). Prints exactly the plaintext bytes on
    /// success; on failure nothing on stdout, the error on stderr, exit 1.
    Decrypt {
        /// Where the daemon is.
        #[command(flatten)]
        conn: Conn,
        /// The encryption key's name.
        #[arg(long)]
        key: String,
        /// Accept only these key-management algs (repeatable; default: the key's own).
        #[arg(long = "alg")]
        algs: Vec<String>,
        /// Accept only these content encryptions (repeatable; default: any).
        #[arg(long = "enc")]
        encs: Vec<String>,
    },
}

/// The endpoint of `sigild dev` on its default address.
const DEFAULT_ENDPOINT: &str = "https://127.0.0.1:7711";

/// Connection to a running daemon: `https://host:port` (mutual TLS), `unix:/path/to.sock`, or
/// `http://host:port` (only for a daemon started with `danger_plaintext`). With no endpoint
/// given, the dev daemon is used: the one whose state is in `./.sigild/`, else the one that
/// this user's `sigild dev` recorded in its pointer file (see `pointer.rs`), so `sigild dev`
/// followed by `sigild key list` works from any directory. (`--cert-key` rather than `--key`,
/// which the sign commands use for the signing key's name.)
#[derive(Debug, Args)]
pub struct Conn {
    /// gRPC endpoint of the daemon [default: the running `sigild dev`, else https://127.0.0.1:7711].
    #[arg(long, env = "SIGILD_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// CA certificate (PEM) that issued the daemon's certificate [default: ./.sigild/ca.pem].
    #[arg(long, env = "SIGILD_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) [default: ./.sigild/client.pem].
    #[arg(long, env = "SIGILD_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM, mode 0600) [default: ./.sigild/client.key].
    #[arg(long, env = "SIGILD_KEY", global = true)]
    pub cert_key: Option<PathBuf>,
}

impl Conn {
    /// The client library's description of this connection.
    ///
    /// # Errors
    /// Missing TLS files for an `https://` endpoint.
    pub fn connection(&self) -> Result<sigild::client::Connection, CliError> {
        use sigild::client::Connection;
        let (endpoint, dev_dir) = self.resolve();
        if let Some(path) = endpoint.strip_prefix("unix:") {
            return Ok(Connection::unix(path));
        }
        if endpoint.starts_with("https://") {
            let (ca, cert, key) = self.tls_files(&endpoint, &dev_dir)?;
            return Ok(Connection::mtls(endpoint, ca, cert, key));
        }
        Ok(Connection::danger_plaintext_loopback(endpoint)?)
    }

    /// The endpoint and the directory whose dev PKI is the default: an endpoint given by flag
    /// or environment with `./.sigild`; else `./.sigild` when it exists (dev daemon on the
    /// default port); else the running dev daemon recorded in this user's pointer file.
    fn resolve(&self) -> (String, PathBuf) {
        let local = PathBuf::from(".sigild");
        if let Some(e) = &self.endpoint {
            return (e.clone(), local);
        }
        if !local.is_dir()
            && let Some(p) = crate::pointer::read()
        {
            return (p.endpoint, p.dir);
        }
        (DEFAULT_ENDPOINT.to_owned(), local)
    }

    /// CA, certificate and key files: the ones given, else the dev ones in `dev_dir`.
    fn tls_files(
        &self,
        endpoint: &str,
        dev_dir: &Path,
    ) -> Result<(PathBuf, PathBuf, PathBuf), CliError> {
        let dev = sigild::tls::DevPki::in_dir(dev_dir);
        let pick = |given: &Option<PathBuf>, default: PathBuf, what: &str| match given {
            Some(p) => Ok(p.clone()),
            None if default.is_file() => Ok(default),
            None => Err(CliError::Local(format!(
                "no {what} for {endpoint}: pass --ca, --cert and --cert-key (or SIGILD_CA, SIGILD_CERT, SIGILD_KEY), or start `sigild dev` as this user"
            ))),
        };
        Ok((
            pick(&self.ca, dev.ca, "CA certificate")?,
            pick(&self.cert, dev.client_cert, "client certificate")?,
            pick(&self.cert_key, dev.client_key, "client key")?,
        ))
    }
}

/// The daemon connection for `sigild tls`, whose own `--ca` and `--cert` are about the TLS
/// peer being tested: the daemon's files are `--daemon-ca`, `--daemon-cert`, `--daemon-key`
/// (same environment variables and `./.sigild` defaults as the other commands).
#[derive(Debug, Args)]
pub struct TlsConn {
    /// gRPC endpoint of the daemon [default: the running `sigild dev`, else https://127.0.0.1:7711].
    #[arg(long, env = "SIGILD_ENDPOINT", global = true)]
    pub endpoint: Option<String>,
    /// CA certificate that issued the daemon's certificate [default: ./.sigild/ca.pem].
    #[arg(long, env = "SIGILD_CA", global = true)]
    pub daemon_ca: Option<PathBuf>,
    /// Our client certificate for the daemon [default: ./.sigild/client.pem].
    #[arg(long, env = "SIGILD_CERT", global = true)]
    pub daemon_cert: Option<PathBuf>,
    /// Our client key for the daemon [default: ./.sigild/client.key].
    #[arg(long, env = "SIGILD_KEY", global = true)]
    pub daemon_key: Option<PathBuf>,
}

impl TlsConn {
    fn conn(&self) -> Conn {
        Conn {
            endpoint: self.endpoint.clone(),
            ca: self.daemon_ca.clone(),
            cert: self.daemon_cert.clone(),
            cert_key: self.daemon_key.clone(),
        }
    }
}

/// TLS client-certificate commands.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Print a PKCS#10 CSR (PEM) for the key's active version, signed by the key itself.
    Csr {
        /// Key name.
        #[arg(long)]
        key: String,
        /// Subject, e.g. "CN=client-a,O=Example".
        #[arg(long)]
        subject: String,
        /// Subject alternative name (URI if it contains "://", else DNS); repeatable.
        #[arg(long)]
        san: Vec<String>,
    },
    /// Attach an issued certificate chain (PEM, leaf first) to the key's active version.
    Attach {
        /// Key name.
        #[arg(long)]
        key: String,
        /// The chain (PEM).
        #[arg(long)]
        cert: PathBuf,
    },
    /// Print the certificate chain attached to the key's active version (PEM).
    Chain {
        /// Key name.
        #[arg(long)]
        key: String,
    },
    /// Complete an mTLS handshake with HOST:PORT using the key and print what was negotiated.
    Check {
        /// Key name.
        #[arg(long)]
        key: String,
        /// The key's certificate chain (PEM, leaf first).
        #[arg(long)]
        cert: PathBuf,
        /// CA certificate(s) to verify the server with; without it the server is not verified.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The server.
        addr: String,
    },
}

fn pem_chain(certs: &[impl AsRef<[u8]>]) -> String {
    use base64::Engine as _;
    certs
        .iter()
        .map(|c| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .filter_map(|l| std::str::from_utf8(l).ok())
                .collect();
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            )
        })
        .collect()
}

/// Key management commands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a key on the token (version 1, active).
    Create {
        /// Key name.
        name: String,
        /// The alg fixes the key's purpose for life. Signing: ES256, ES384, PS256, PS384, PS512,
        /// RS256, EdDSA. Decryption: RSA-OAEP-256, RSA-OAEP, ECDH-ES, ECDH-ES+A128KW,
        /// ECDH-ES+A256KW.
        #[arg(long)]
        alg: String,
        /// RSA modulus size (2048, 3072, 4096).
        #[arg(long, default_value_t = 0)]
        rsa_bits: u32,
        /// Curve of an ECDH-ES key: P-256 (default) or P-384.
        #[arg(long, default_value = "")]
        curve: String,
        /// Restrict this key to what FAPI 2.0 allows.
        #[arg(long)]
        fapi2: bool,
        /// Bind the key to these token types for life (comma-separated: id-token, jar,
        /// client-assertion, dpop, jarm, introspection, access-token, logout, userinfo, ciba,
        /// http-request, http-response, jws, raw, tls, digest); it then signs nothing else, whatever a
        /// caller's rules allow. Stored on the token and carried to every new version.
        #[arg(long, value_delimiter = ',')]
        serves: Vec<String>,
    },
    /// List keys and versions.
    List,
    /// Show a key with its versions (JSON).
    Show {
        /// Key name.
        name: String,
    },
    /// Print the public JWK of the active version.
    Jwk {
        /// Key name.
        name: String,
    },
    /// Add a version in state `next`.
    Rotate {
        /// Key name.
        name: String,
        /// A different alg for the new version.
        #[arg(long, default_value = "")]
        alg: String,
        /// RSA modulus size for the new version.
        #[arg(long, default_value_t = 0)]
        rsa_bits: u32,
        /// Curve for the new version of an ECDH-ES key.
        #[arg(long, default_value = "")]
        curve: String,
    },
    /// Activate a version (default: the newest `next`); the active one is retired.
    Activate {
        /// Key name.
        name: String,
        /// Version.
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Retire a version (default: the active one).
    Retire {
        /// Key name.
        name: String,
        /// Version.
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Destroy a retired or next version's key pair on the token.
    Destroy {
        /// Key name.
        name: String,
        /// Version.
        #[arg(long)]
        version: u32,
    },
    /// Import a PKCS#8 private key (PEM or DER) for migration; prefer generating on the token.
    Import {
        /// Key name.
        name: String,
        /// JOSE alg.
        #[arg(long)]
        alg: String,
        /// PKCS#8 file (`-----BEGIN PRIVATE KEY-----` or DER).
        #[arg(long)]
        pkcs8_file: PathBuf,
        /// FAPI 2.0 mode.
        #[arg(long)]
        fapi2: bool,
        /// Bind the key to these token types for life (comma-separated: id-token, jar,
        /// client-assertion, dpop, jarm, introspection, access-token, logout, userinfo, ciba,
        /// http-request, http-response, jws, raw, tls, digest); it then signs nothing else, whatever a
        /// caller's rules allow. Stored on the token and carried to every new version.
        #[arg(long, value_delimiter = ',')]
        serves: Vec<String>,
    },
    /// Adopt a key pair made by another tool, by PKCS#11 URI.
    Adopt {
        /// Key name.
        name: String,
        /// JOSE alg.
        #[arg(long)]
        alg: String,
        /// RFC 7512 URI of the private key.
        #[arg(long)]
        uri: String,
        /// FAPI 2.0 mode.
        #[arg(long)]
        fapi2: bool,
        /// Bind the key to these token types for life (comma-separated: id-token, jar,
        /// client-assertion, dpop, jarm, introspection, access-token, logout, userinfo, ciba,
        /// http-request, http-response, jws, raw, tls, digest); it then signs nothing else, whatever a
        /// caller's rules allow. Stored on the token and carried to every new version.
        #[arg(long, value_delimiter = ',')]
        serves: Vec<String>,
    },
    /// Follow keys as they change: one JSON line per key set (at once, then at every
    /// rotation, activation, retirement or destruction), until the daemon stops or Ctrl-C.
    Watch {
        /// Key names to watch; none: every key.
        names: Vec<String>,
    },
    /// Find what interrupted key operations (a crash, kill -9) left on the token and remove
    /// it: key pairs no record names, older record copies, a second active record, versions
    /// whose key pair is gone. Run it while no other replica is changing keys.
    Repair {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Signing commands.
#[derive(Debug, Subcommand)]
pub enum SignCommand {
    /// Sign a JWS from a header and payload given as JSON text (used byte for byte).
    Jws {
        /// Key name.
        #[arg(long)]
        key: String,
        /// Protected header JSON, e.g. '{"alg":"ES256","typ":"JWT"}'.
        #[arg(long)]
        header_json: String,
        /// Payload JSON.
        #[arg(long)]
        payload_json: String,
        /// Sign with this version (0: the active one, or the one the header's kid names); a
        /// version that is not active signs only within keyring.grace_seconds after it was.
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Sign the bytes on stdin; prints the base64url JOSE signature.
    Raw {
        /// Key name.
        #[arg(long)]
        key: String,
        /// Alg other than the key's own.
        #[arg(long, default_value = "")]
        alg: String,
        /// Sign with this version (0: the active one; see `sign jws --version`).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Sign a digest read from stdin (raw bytes, e.g. `openssl dgst -sha256 -binary`) with
    /// ES256, ES384, PS256, PS384 or RS256; prints the base64url JOSE signature. Needs the
    /// `digest` operation; no content rule can apply to a digest.
    Digest {
        /// Key name.
        #[arg(long)]
        key: String,
        /// Alg other than the key's own.
        #[arg(long, default_value = "")]
        alg: String,
        /// Sign with this version (0: the active one; see `sign jws --version`).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// An OpenID Connect ID token.
    IdToken {
        /// Key name.
        #[arg(long)]
        key: String,
        /// Claims JSON with iss, sub, aud, ...
        #[arg(long)]
        claims_json: String,
        /// Lifetime, seconds.
        #[arg(long, default_value_t = 0)]
        lifetime: u32,
        /// File holding the access token (for at_hash).
        #[arg(long)]
        access_token_file: Option<PathBuf>,
        /// File holding the authorization code (for c_hash).
        #[arg(long)]
        code_file: Option<PathBuf>,
        /// The authorization request's state (for s_hash, when the ID token is a detached
        /// signature of an authorization response).
        #[arg(long)]
        state: Option<String>,
        /// An explicit typ header, e.g. JWT (never another token type's, such as at+jwt).
        #[arg(long)]
        typ: Option<String>,
        /// Sign with this version (0: the active one; see `sign jws --version`).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// A JWT-secured authorization response (JARM): iss, aud, iat and exp are set by sigild.
    Jarm {
        /// Key name.
        #[arg(long)]
        key: String,
        /// The authorization server's issuer identifier (iss).
        #[arg(long)]
        issuer: String,
        /// The client the response is for (aud).
        #[arg(long)]
        client_id: String,
        /// File holding the response parameters as a JSON object (code, state, or error ...),
        /// `-` for stdin: the code is a secret, so it is never an argument.
        #[arg(long)]
        response_file: PathBuf,
        /// Lifetime, seconds (default 60, at most 600).
        #[arg(long, default_value_t = 0)]
        lifetime: u32,
    },
    /// A JWT introspection response (RFC 9701): the result nested under token_introspection.
    Introspection {
        /// Key name.
        #[arg(long)]
        key: String,
        /// The authorization server's issuer identifier (iss).
        #[arg(long)]
        issuer: String,
        /// The resource server that asked (aud).
        #[arg(long)]
        audience: String,
        /// The RFC 7662 introspection result as a JSON object (active, scope, sub, ...).
        #[arg(long, required_unless_present = "introspection_file")]
        introspection_json: Option<String>,
        /// File holding the introspection result, `-` for stdin.
        #[arg(long, conflicts_with = "introspection_json")]
        introspection_file: Option<PathBuf>,
    },
    /// A signed UserInfo response (OIDC Core 5.3.2): iss, aud and iat are set by sigild.
    Userinfo {
        /// Key name.
        #[arg(long)]
        key: String,
        /// The OP's issuer identifier (iss).
        #[arg(long)]
        issuer: String,
        /// The client's client_id (aud).
        #[arg(long)]
        audience: String,
        /// The UserInfo claims as a JSON object, with sub.
        #[arg(long, required_unless_present = "claims_file")]
        claims_json: Option<String>,
        /// File holding the claims, `-` for stdin.
        #[arg(long, conflicts_with = "claims_json")]
        claims_file: Option<PathBuf>,
    },
    /// A JAR request object (RFC 9101).
    Jar {
        /// Key name.
        #[arg(long)]
        key: String,
        /// client_id.
        #[arg(long)]
        client_id: String,
        /// Authorization server issuer.
        #[arg(long)]
        audience: String,
        /// Authorization request parameters as JSON.
        #[arg(long, default_value = "{}")]
        claims_json: String,
        /// Lifetime, seconds.
        #[arg(long, default_value_t = 0)]
        lifetime: u32,
    },
    /// A private_key_jwt client assertion (RFC 7523).
    ClientAssertion {
        /// Key name.
        #[arg(long)]
        key: String,
        /// client_id.
        #[arg(long)]
        client_id: String,
        /// Authorization server issuer (one string).
        #[arg(long)]
        audience: String,
        /// Lifetime, seconds.
        #[arg(long, default_value_t = 0)]
        lifetime: u32,
        /// Set the explicit typ "client-authentication+jwt" (only for servers that accept it).
        #[arg(long)]
        explicit_typ: bool,
        /// Also set nbf (= iat).
        #[arg(long)]
        nbf: bool,
    },
    /// An RFC 9068 JWT access token (typ at+jwt), optionally sender-constrained.
    AccessToken {
        /// Key name.
        #[arg(long)]
        key: String,
        /// Authorization server issuer (iss).
        #[arg(long)]
        issuer: String,
        /// Resource server (aud); repeat for several.
        #[arg(long, required = true)]
        audience: Vec<String>,
        /// Resource owner, or the client for client credentials (sub).
        #[arg(long)]
        subject: String,
        /// The client the token is issued to.
        #[arg(long)]
        client_id: String,
        /// Space-separated scopes.
        #[arg(long, default_value = "")]
        scope: String,
        /// Further claims as JSON (auth_time, acr, amr, authorization_details, ...).
        #[arg(long, default_value = "")]
        claims_json: String,
        /// Lifetime, seconds (default 300, at most 3600).
        #[arg(long, default_value_t = 0)]
        lifetime: u32,
        /// Bind to this DPoP public key: a file holding its JWK (cnf.jkt).
        #[arg(long, group = "sender")]
        dpop_jwk_file: Option<PathBuf>,
        /// Bind to the DPoP key with this RFC 7638 thumbprint (cnf.jkt).
        #[arg(long, group = "sender")]
        dpop_jkt: Option<String>,
        /// Bind to this client certificate, PEM or DER (cnf.x5t#S256).
        #[arg(long, group = "sender")]
        client_cert: Option<PathBuf>,
    },
    /// An OpenID Connect back-channel logout token (typ logout+jwt).
    Logout {
        /// Key name.
        #[arg(long)]
        key: String,
        /// OP issuer (iss).
        #[arg(long)]
        issuer: String,
        /// The relying party's client_id (aud).
        #[arg(long)]
        audience: String,
        /// The user (sub); at least one of --subject and --sid.
        #[arg(long, default_value = "")]
        subject: String,
        /// The session (sid).
        #[arg(long, default_value = "")]
        sid: String,
        /// Further claims as JSON (never nonce).
        #[arg(long, default_value = "")]
        claims_json: String,
        /// Lifetime, seconds (default 120, at most 600).
        #[arg(long, default_value_t = 0)]
        lifetime: u32,
    },
    /// A CIBA signed authentication request (CIBA Core 7.1.1).
    Ciba {
        /// Key name.
        #[arg(long)]
        key: String,
        /// client_id (iss).
        #[arg(long)]
        client_id: String,
        /// OP issuer (aud).
        #[arg(long)]
        audience: String,
        /// Authentication request parameters as JSON (scope, login_hint, binding_message, ...).
        #[arg(
            long,
            conflicts_with = "claims_file",
            required_unless_present = "claims_file"
        )]
        claims_json: Option<String>,
        /// File holding the parameters as JSON (`-`: stdin): use it when they carry a
        /// client_notification_token, which must not appear on a command line.
        #[arg(long)]
        claims_file: Option<PathBuf>,
        /// Lifetime, seconds (default 300, at most 3600).
        #[arg(long, default_value_t = 0)]
        lifetime: u32,
    },
    /// A DPoP proof (RFC 9449).
    Dpop {
        /// Key name.
        #[arg(long)]
        key: String,
        /// HTTP method.
        #[arg(long)]
        htm: String,
        /// HTTP URI.
        #[arg(long)]
        htu: String,
        /// File holding the access token (for ath).
        #[arg(long)]
        access_token_file: Option<PathBuf>,
        /// Server nonce.
        #[arg(long)]
        nonce: Option<String>,
    },
    /// An RFC 9421 signature over an HTTP request (FAPI 2.0): prints the fields to add
    /// (`Content-Digest:` when there is a body, `Signature-Input:`, `Signature:`), one
    /// `Name: value` per line.
    HttpRequest {
        /// Key name.
        #[arg(long)]
        key: String,
        /// HTTP method.
        #[arg(long)]
        method: String,
        /// Absolute target URI.
        #[arg(long)]
        target_uri: String,
        /// A request field, "Name: value" (repeat for each; Authorization and DPoP are
        /// covered when present).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// A file of request fields, one "Name: value" per line, after the --header ones:
        /// for bearer tokens and DPoP proofs, which do not belong on a command line.
        #[arg(long)]
        header_file: Option<PathBuf>,
        /// File holding the body (its Content-Digest is computed and covered).
        #[arg(long)]
        body_file: Option<PathBuf>,
        /// Signature label (default "sig").
        #[arg(long, default_value = "")]
        label: String,
    },
    /// An RFC 9421 signature over an HTTP response, bound to the signed request it answers
    /// (FAPI 2.0): prints the fields to add, one `Name: value` per line.
    HttpResponse {
        /// Key name.
        #[arg(long)]
        key: String,
        /// HTTP status code.
        #[arg(long)]
        status: u32,
        /// A response field, "Name: value" (repeat for each).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// A file of response fields, one "Name: value" per line, after the --header ones.
        #[arg(long)]
        header_file: Option<PathBuf>,
        /// File holding the body (its Content-Digest is computed and covered).
        #[arg(long)]
        body_file: Option<PathBuf>,
        /// The request's method.
        #[arg(long)]
        request_method: String,
        /// The request's target URI.
        #[arg(long)]
        request_target_uri: String,
        /// A field of the request as received, "Name: value" (repeat for each; its
        /// Signature-Input, Signature and Content-Digest among them).
        #[arg(long = "request-header")]
        request_headers: Vec<String>,
        /// A file of the request's fields, one "Name: value" per line, after the
        /// --request-header ones (for its Authorization and DPoP values).
        #[arg(long)]
        request_header_file: Option<PathBuf>,
        /// The label of the request signature to bind (default: the one tagged
        /// fapi-2-request, or the only one).
        #[arg(long, default_value = "")]
        request_label: String,
        /// Signature label (default "sig").
        #[arg(long, default_value = "")]
        label: String,
    },
}

/// `Name: value` arguments, then the lines of `file` (blank lines skipped), as proto fields
/// (the value's surrounding whitespace trimmed).
fn http_fields(args: &[String], file: &Option<PathBuf>) -> Result<Vec<pb::HttpField>, CliError> {
    let from_file = match file {
        None => Zeroizing::new(String::new()),
        Some(p) => read_file_secret(p)?,
    };
    args.iter()
        .map(String::as_str)
        .chain(from_file.lines().map(|l| l.trim_end_matches('\r')))
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.split_once(':').ok_or_else(|| {
                CliError::Local(format!(
                    "--header/--request-header expects \"Name: value\", got one without ':' ({} bytes)",
                    l.len()
                ))
            })?;
            Ok(pb::HttpField {
                name: name.trim().to_owned(),
                value: value.trim().to_owned(),
            })
        })
        .collect()
}

/// A body file's bytes; no file, no body.
fn body(path: &Option<PathBuf>) -> Result<Vec<u8>, CliError> {
    match path {
        None => Ok(Vec::new()),
        Some(p) => std::fs::read(p).map_err(|e| CliError::Local(format!("{}: {e}", p.display()))),
    }
}

/// The fields a signed HTTP message gets, one `Name: value` per line.
fn http_lines(r: pb::SignHttpMessageResponse) -> String {
    r.headers
        .iter()
        .map(|f| format!("{}: {}", f.name, f.value))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `sigild decrypt`: the compact JWE on stdin (one trailing newline or other whitespace
/// trimmed), the plaintext alone on stdout.
///
/// # Errors
/// Unreadable stdin; the daemon's status (one message for every JWE it cannot decrypt).
pub async fn decrypt_command(
    conn: &Conn,
    key: &str,
    algs: &[String],
    encs: &[String],
) -> Result<(), CliError> {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| CliError::Local(format!("stdin: {e}")))?;
    let jwe = input.trim_ascii();
    let client = sigild::client::Client::connect(&conn.connection()?).await?;
    let algs: Vec<&str> = algs.iter().map(String::as_str).collect();
    let encs: Vec<&str> = encs.iter().map(String::as_str).collect();
    let d = client.decrypt_jwe(key, jwe, &algs, &encs).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(&d.plaintext)
        .and_then(|()| out.flush())
        .map_err(|e| CliError::Local(format!("stdout: {e}")))
}

/// A CLI failure: printed to stderr, exit code 1 (2 for usage, which clap handles).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The daemon answered with an error status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(#[from] tonic::Status),
    /// A local problem (file, input).
    #[error("{0}")]
    Local(String),
    /// The client library failed (connection, TLS files).
    #[error(transparent)]
    Client(#[from] sigild::client::ClientError),
}

use sigild::client::code_name;

async fn connect(conn: &Conn) -> Result<Channel, CliError> {
    Ok(conn.connection()?.connect().await?)
}

fn read_file_secret(path: &Path) -> Result<Zeroizing<String>, CliError> {
    let bytes = Zeroizing::new(
        std::fs::read(path).map_err(|e| CliError::Local(format!("{}: {e}", path.display())))?,
    );
    let s = std::str::from_utf8(&bytes)
        .map_err(|_| CliError::Local(format!("{}: not UTF-8", path.display())))?;
    Ok(Zeroizing::new(s.trim_end_matches(['\r', '\n']).to_owned()))
}

fn read_text(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|e| CliError::Local(format!("{}: {e}", path.display())))
}

/// One certificate from a PEM or DER file, as DER.
fn read_one_certificate(path: &Path) -> Result<Vec<u8>, CliError> {
    let bytes =
        std::fs::read(path).map_err(|e| CliError::Local(format!("{}: {e}", path.display())))?;
    if !bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Ok(bytes);
    }
    let mut ders = sigild::tls::pem_certificates(&bytes);
    match (ders.pop(), ders.is_empty()) {
        (Some(der), true) => Ok(der),
        _ => Err(CliError::Local(format!(
            "{}: expected exactly one PEM CERTIFICATE",
            path.display()
        ))),
    }
}

/// A JSON input given as an argument, or in a file (`-`: stdin), whitespace-trimmed.
fn json_input(json: Option<String>, file: Option<&Path>) -> Result<Zeroizing<String>, CliError> {
    match (json, file) {
        (Some(json), _) => Ok(Zeroizing::new(json)),
        (None, Some(path)) if path == Path::new("-") => {
            let mut text = Zeroizing::new(String::new());
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::Local(format!("stdin: {e}")))?;
            Ok(Zeroizing::new(text.trim().to_owned()))
        }
        (None, Some(path)) => read_file_secret(path),
        (None, None) => Err(CliError::Local("no JSON input given".into())),
    }
}

fn opt_secret(path: &Option<PathBuf>) -> Result<Zeroizing<String>, CliError> {
    match path {
        Some(p) => read_file_secret(p),
        None => Ok(Zeroizing::new(String::new())),
    }
}

fn print(s: &str) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}").map_err(|e| CliError::Local(format!("stdout: {e}")))
}

/// One line per leftover (`KIND<TAB>description<TAB>action`), then a summary line.
fn repair_report(r: &pb::RepairKeyringResponse) -> String {
    let mut lines: Vec<String> = r
        .leftovers
        .iter()
        .map(|l| {
            let verb = if r.repaired { "done" } else { "would" };
            format!("{}\t{}\t{verb}: {}", l.kind, l.description, l.action)
        })
        .collect();
    lines.push(match (r.leftovers.len(), r.repaired) {
        (0, _) => "nothing to repair".to_owned(),
        (n, true) => format!("repaired {n} leftover(s)"),
        (n, false) => format!("{n} leftover(s) found; run `sigild key repair` to remove them"),
    });
    lines.join("\n")
}

fn key_json(k: &pb::Key) -> serde_json::Value {
    let versions: Vec<serde_json::Value> = k
        .versions
        .iter()
        .map(|v| {
            serde_json::json!({
                "version": v.version,
                "state": state_name(v.state),
                "alg": v.alg,
                "use": v.r#use,
                "kid": v.kid,
                "key_type": v.key_type,
                "origin": v.origin,
                "uri": v.uri,
                "created_at": v.created_at,
                "jwk": serde_json::from_str::<serde_json::Value>(&v.public_jwk_json).unwrap_or(serde_json::Value::Null),
            })
        })
        .collect();
    serde_json::json!({ "name": k.name, "fapi2": k.fapi2, "serves": k.serves, "active_version": k.active_version, "versions": versions })
}

fn state_name(s: i32) -> &'static str {
    match pb::KeyState::try_from(s) {
        Ok(pb::KeyState::Next) => "next",
        Ok(pb::KeyState::Active) => "active",
        Ok(pb::KeyState::Retired) => "retired",
        Ok(pb::KeyState::Destroyed) => "destroyed",
        _ => "unknown",
    }
}

/// One key set of `key watch` as one JSON object: the generation, each key as `key show`
/// prints it, and the JWKS.
fn key_set_json(set: &pb::KeySet) -> serde_json::Value {
    serde_json::json!({
        "generation": set.generation,
        "keys": set.keys.iter().map(key_json).collect::<Vec<_>>(),
        "jwks": serde_json::from_str::<serde_json::Value>(&set.jwks_json).unwrap_or_default(),
    })
}

fn print_key(k: &pb::Key) -> Result<(), CliError> {
    print(&serde_json::to_string_pretty(&key_json(k)).unwrap_or_default())
}

/// Run a key command.
///
/// # Errors
/// [`CliError`].
pub async fn key_command(conn: &Conn, cmd: KeyCommand) -> Result<(), CliError> {
    let mut c = KeyServiceClient::new(connect(conn).await?);
    match cmd {
        KeyCommand::Create {
            name,
            alg,
            rsa_bits,
            curve,
            fapi2,
            serves,
        } => {
            let k = c
                .create_key(pb::CreateKeyRequest {
                    serves,
                    name,
                    alg,
                    rsa_bits,
                    fapi2,
                    curve,
                })
                .await?
                .into_inner();
            print_key(&k)
        }
        KeyCommand::List => {
            let keys = c.list_keys(pb::ListKeysRequest {}).await?.into_inner().keys;
            let mut lines = vec![format!(
                "{:<24} {:>7} {:<9} {:<14} {:<3} {:<9} {:<43} {}",
                "NAME", "VERSION", "STATE", "ALG", "USE", "TYPE", "KID", "SERVES"
            )];
            for k in &keys {
                // A key's binding: the token types it signs, or `*` for an unbound key.
                let serves = if k.serves.is_empty() {
                    "*".to_owned()
                } else {
                    k.serves.join(",")
                };
                for v in &k.versions {
                    lines.push(format!(
                        "{:<24} {:>7} {:<9} {:<14} {:<3} {:<9} {:<43} {}",
                        k.name,
                        v.version,
                        state_name(v.state),
                        v.alg,
                        v.r#use,
                        v.key_type,
                        v.kid,
                        serves
                    ));
                }
            }
            print(&lines.join("\n"))
        }
        KeyCommand::Show { name } => {
            print_key(&c.get_key(pb::GetKeyRequest { name }).await?.into_inner())
        }
        KeyCommand::Jwk { name } => {
            let k = c
                .get_key(pb::GetKeyRequest { name: name.clone() })
                .await?
                .into_inner();
            let active = k
                .versions
                .iter()
                .find(|v| v.version == k.active_version && k.active_version != 0)
                .ok_or_else(|| CliError::Local(format!("key {name:?} has no active version")))?;
            print(&active.public_jwk_json)
        }
        KeyCommand::Rotate {
            name,
            alg,
            rsa_bits,
            curve,
        } => print_key(
            &c.rotate_key(pb::RotateKeyRequest {
                name,
                alg,
                rsa_bits,
                curve,
            })
            .await?
            .into_inner(),
        ),
        KeyCommand::Activate { name, version } => print_key(
            &c.activate_key_version(pb::KeyVersionRequest { name, version })
                .await?
                .into_inner(),
        ),
        KeyCommand::Retire { name, version } => print_key(
            &c.retire_key_version(pb::KeyVersionRequest { name, version })
                .await?
                .into_inner(),
        ),
        KeyCommand::Destroy { name, version } => print_key(
            &c.destroy_key_version(pb::KeyVersionRequest { name, version })
                .await?
                .into_inner(),
        ),
        KeyCommand::Import {
            name,
            alg,
            pkcs8_file,
            fapi2,
            serves,
        } => {
            let der = sigild::client::read_pkcs8(&pkcs8_file)?;
            let mut req = pb::ImportKeyRequest {
                serves,
                name,
                alg,
                pkcs8_der: der.to_vec(),
                fapi2,
            };
            let result = c.import_key(tonic::Request::new(req.clone())).await;
            zeroize::Zeroize::zeroize(&mut req.pkcs8_der);
            print_key(&result?.into_inner())
        }
        KeyCommand::Watch { names } => {
            let mut sets = c
                .watch_keys(pb::WatchKeysRequest { names })
                .await?
                .into_inner();
            while let Some(set) = sets.message().await? {
                print(&key_set_json(&set).to_string())?;
            }
            Ok(())
        }
        KeyCommand::Repair { dry_run } => {
            let r = c
                .repair_keyring(pb::RepairKeyringRequest { dry_run })
                .await?
                .into_inner();
            print(&repair_report(&r))
        }
        KeyCommand::Adopt {
            name,
            alg,
            uri,
            fapi2,
            serves,
        } => print_key(
            &c.adopt_key(pb::AdoptKeyRequest {
                serves,
                name,
                alg,
                uri,
                fapi2,
            })
            .await?
            .into_inner(),
        ),
    }
}

/// Print the JWKS.
///
/// # Errors
/// [`CliError`].
pub async fn jwks_command(conn: &Conn) -> Result<(), CliError> {
    let mut c = KeyServiceClient::new(connect(conn).await?);
    let jwks = c
        .get_jwks(pb::GetJwksRequest {})
        .await?
        .into_inner()
        .jwks_json;
    let pretty = serde_json::from_str::<serde_json::Value>(&jwks)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(jwks);
    print(&pretty)
}

/// Run a sign command.
///
/// # Errors
/// [`CliError`].
pub async fn sign_command(conn: &Conn, cmd: SignCommand) -> Result<(), CliError> {
    let mut c = SigningServiceClient::new(connect(conn).await?);
    let compact = match cmd {
        SignCommand::Jws {
            key,
            header_json,
            payload_json,
            version,
        } => {
            let req = pb::SignJwsRequest {
                version,
                key,
                protected_header: header_json.into_bytes(),
                payload: payload_json.into_bytes(),
            };
            c.sign_jws(req).await?.into_inner().compact
        }
        SignCommand::Raw { key, alg, version } => {
            let mut data = Vec::new();
            std::io::stdin()
                .read_to_end(&mut data)
                .map_err(|e| CliError::Local(format!("stdin: {e}")))?;
            let sig = c
                .sign_raw(pb::SignRawRequest {
                    version,
                    key,
                    data,
                    alg,
                })
                .await?
                .into_inner()
                .signature;
            jose::b64(&sig)
        }
        SignCommand::Digest { key, alg, version } => {
            let mut digest = Vec::new();
            std::io::stdin()
                .read_to_end(&mut digest)
                .map_err(|e| CliError::Local(format!("stdin: {e}")))?;
            let sig = c
                .sign_digest(pb::SignDigestRequest {
                    key,
                    alg,
                    digest,
                    version,
                })
                .await?
                .into_inner()
                .signature;
            jose::b64(&sig)
        }
        SignCommand::IdToken {
            key,
            claims_json,
            lifetime,
            access_token_file,
            code_file,
            state,
            typ,
            version,
        } => {
            let access_token = opt_secret(&access_token_file)?;
            let code = opt_secret(&code_file)?;
            let req = pb::SignIdTokenRequest {
                version,
                state: state.unwrap_or_default(),
                typ: typ.unwrap_or_default(),
                key,
                claims_json,
                lifetime_seconds: lifetime,
                access_token: access_token.to_string(),
                code: code.to_string(),
            };
            c.sign_id_token(req).await?.into_inner().compact
        }
        SignCommand::Jarm {
            key,
            issuer,
            client_id,
            response_file,
            lifetime,
        } => {
            let response = json_input(None, Some(&response_file))?;
            let req = pb::SignJarmRequest {
                key,
                issuer,
                client_id,
                response_json: response.to_string(),
                lifetime_seconds: lifetime,
            };
            c.sign_jarm(req).await?.into_inner().compact
        }
        SignCommand::Introspection {
            key,
            issuer,
            audience,
            introspection_json,
            introspection_file,
        } => {
            let result = json_input(introspection_json, introspection_file.as_deref())?;
            let req = pb::SignIntrospectionRequest {
                key,
                issuer,
                audience,
                introspection_json: result.to_string(),
            };
            c.sign_introspection(req).await?.into_inner().compact
        }
        SignCommand::Userinfo {
            key,
            issuer,
            audience,
            claims_json,
            claims_file,
        } => {
            let claims = json_input(claims_json, claims_file.as_deref())?;
            let req = pb::SignUserinfoRequest {
                key,
                issuer,
                audience,
                claims_json: claims.to_string(),
            };
            c.sign_userinfo(req).await?.into_inner().compact
        }
        SignCommand::Jar {
            key,
            client_id,
            audience,
            claims_json,
            lifetime,
        } => {
            let req = pb::SignRequestObjectRequest {
                key,
                client_id,
                audience,
                claims_json,
                lifetime_seconds: lifetime,
            };
            c.sign_request_object(req).await?.into_inner().compact
        }
        SignCommand::ClientAssertion {
            key,
            client_id,
            audience,
            lifetime,
            explicit_typ,
            nbf,
        } => {
            let req = pb::SignClientAssertionRequest {
                explicit_typ,
                nbf,
                key,
                client_id,
                audience,
                lifetime_seconds: lifetime,
            };
            c.sign_client_assertion(req).await?.into_inner().compact
        }
        SignCommand::AccessToken {
            key,
            issuer,
            audience,
            subject,
            client_id,
            scope,
            claims_json,
            lifetime,
            dpop_jwk_file,
            dpop_jkt,
            client_cert,
        } => {
            let dpop_jwk_json = match &dpop_jwk_file {
                Some(p) => read_text(p)?,
                None => String::new(),
            };
            let client_certificate = match &client_cert {
                Some(p) => read_one_certificate(p)?,
                None => Vec::new(),
            };
            let req = pb::SignAccessTokenRequest {
                key,
                issuer,
                audience,
                subject,
                client_id,
                scope,
                claims_json,
                lifetime_seconds: lifetime,
                dpop_jwk_json,
                dpop_jkt: dpop_jkt.unwrap_or_default(),
                client_certificate,
            };
            c.sign_access_token(req).await?.into_inner().compact
        }
        SignCommand::Logout {
            key,
            issuer,
            audience,
            subject,
            sid,
            claims_json,
            lifetime,
        } => {
            let req = pb::SignLogoutTokenRequest {
                key,
                issuer,
                audience,
                subject,
                sid,
                claims_json,
                lifetime_seconds: lifetime,
            };
            c.sign_logout_token(req).await?.into_inner().compact
        }
        SignCommand::Ciba {
            key,
            client_id,
            audience,
            claims_json,
            claims_file,
            lifetime,
        } => {
            let claims = json_input(claims_json, claims_file.as_deref())?;
            let req = pb::SignCibaRequestRequest {
                key,
                client_id,
                audience,
                claims_json: claims.to_string(),
                lifetime_seconds: lifetime,
            };
            c.sign_ciba_request(req).await?.into_inner().compact
        }
        SignCommand::Dpop {
            key,
            htm,
            htu,
            access_token_file,
            nonce,
        } => {
            let access_token = opt_secret(&access_token_file)?;
            let req = pb::SignDpopProofRequest {
                key,
                htm,
                htu,
                access_token: access_token.to_string(),
                nonce: nonce.unwrap_or_default(),
            };
            c.sign_dpop_proof(req).await?.into_inner().compact
        }
        SignCommand::HttpRequest {
            key,
            method,
            target_uri,
            headers,
            header_file,
            body_file,
            label,
        } => {
            let req = pb::SignHttpRequestRequest {
                key,
                method,
                target_uri,
                headers: http_fields(&headers, &header_file)?,
                body: body(&body_file)?,
                label,
            };
            http_lines(c.sign_http_request(req).await?.into_inner())
        }
        SignCommand::HttpResponse {
            key,
            status,
            headers,
            header_file,
            body_file,
            request_method,
            request_target_uri,
            request_headers,
            request_header_file,
            request_label,
            label,
        } => {
            let req = pb::SignHttpResponseRequest {
                key,
                status,
                headers: http_fields(&headers, &header_file)?,
                body: body(&body_file)?,
                request_method,
                request_target_uri,
                request_headers: http_fields(&request_headers, &request_header_file)?,
                request_label,
                label,
            };
            http_lines(c.sign_http_response(req).await?.into_inner())
        }
    };
    print(&compact)
}

/// Run a TLS command.
///
/// # Errors
/// [`CliError`].
pub async fn tls_command(conn: &TlsConn, cmd: TlsCommand) -> Result<(), CliError> {
    use sigild::client::{SigildSigningKey, SignerOptions};
    let connection = conn.conn().connection()?;
    match cmd {
        TlsCommand::Attach { key, cert } => {
            let pem = sigild::tls::read_certificates(std::slice::from_ref(&cert))
                .map_err(sigild::client::ClientError::from)?;
            let chain = sigild::tls::pem_certificates(&pem);
            let c = sigild::client::Client::connect(&connection).await?;
            let r = c.set_certificate_chain(&key, 0, chain).await?;
            print(&format!(
                "attached {} certificate(s) to {} version {}; x5t#S256 {}",
                r.certificates.len(),
                r.name,
                r.version,
                r.x5t_s256
            ))
        }
        TlsCommand::Chain { key } => {
            let c = sigild::client::Client::connect(&connection).await?;
            let chain = c.certificate_chain(&key, 0).await?;
            print(pem_chain(&chain).trim_end())
        }
        TlsCommand::Csr { key, subject, san } => {
            let k = SigildSigningKey::connect(&connection, &key, SignerOptions::default()).await?;
            let pem =
                tokio::task::spawn_blocking(move || sigild::client::csr_pem(&k, &subject, &san))
                    .await
                    .map_err(|e| CliError::Local(e.to_string()))??;
            print(pem.trim_end())
        }
        TlsCommand::Check {
            key,
            cert,
            ca,
            addr,
        } => {
            let k = SigildSigningKey::connect(&connection, &key, SignerOptions::default()).await?;
            let chain_pem = sigild::tls::read_certificates(std::slice::from_ref(&cert))
                .map_err(sigild::client::ClientError::from)?;
            let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
                sigild::tls::pem_certificates(&chain_pem)
                    .into_iter()
                    .map(rustls::pki_types::CertificateDer::from)
                    .collect();
            let roots = match &ca {
                None => None,
                Some(p) => {
                    let pem = sigild::tls::read_certificates(std::slice::from_ref(p))
                        .map_err(sigild::client::ClientError::from)?;
                    let mut roots = rustls::RootCertStore::empty();
                    for der in sigild::tls::pem_certificates(&pem) {
                        roots
                            .add(der.into())
                            .map_err(|e| CliError::Local(format!("{}: {e}", p.display())))?;
                    }
                    Some(roots)
                }
            };
            let verified = roots.is_some();
            let target = addr.clone();
            let report = tokio::task::spawn_blocking(move || {
                sigild::client::handshake_check(&k, chain, roots, &target)
            })
            .await
            .map_err(|e| CliError::Local(e.to_string()))??;
            print(&format!(
                "handshake with {addr}: OK\nprotocol: {}\ncipher suite: {}\nsignature scheme: {}\nclient certificate x5t#S256: {}\nserver certificate: {}",
                report.protocol,
                report.cipher_suite,
                report
                    .signature_scheme
                    .as_deref()
                    .unwrap_or("none (no client certificate requested)"),
                report.x5t_s256,
                if verified {
                    "verified"
                } else {
                    "NOT verified (no --ca)"
                }
            ))
        }
    }
}

/// `sigild check-config`: parse, validate, check the module and PIN source, then (unless
/// `offline`) probe the PKCS#11 device: module, token, login, algorithms.
///
/// # Errors
/// The first problem found, located.
pub fn check_config(path: &Path, offline: bool) -> Result<(), CliError> {
    let c = Config::load(path).map_err(|e| CliError::Local(e.to_string()))?;
    c.check_environment(path)
        .map_err(|e| CliError::Local(e.to_string()))?;
    let device = match &c.pkcs11 {
        _ if offline => "device: not checked (--offline)".to_owned(),
        None => "device: not checked (only [pkcs11] devices are probed)".to_owned(),
        Some(_) => {
            let settings = sigild::app::pkcs11_settings(&c, path)
                .map_err(|e| CliError::Local(e.to_string()))?;
            sigild::backend::pkcs11::probe(&settings)
                .map_err(|e| {
                    CliError::Local(format!(
                        "{}: the file is valid, but the device check failed: {e}",
                        path.display()
                    ))
                })?
                .to_string()
        }
    };
    print(&format!("{}: OK\n{device}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_print_like_grpc() {
        assert_eq!(
            code_name(tonic::Code::FailedPrecondition),
            "FAILED_PRECONDITION"
        );
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
    }

    #[test]
    fn pem_of_the_wrong_kind_gets_a_hint() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("k.pem");
        std::fs::write(
            &p,
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
        )?;
        let err = sigild::client::read_pkcs8(&p)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("openssl pkcs8 -topk8"), "{err}");
        Ok(())
    }

    #[test]
    fn cli_parses() {
        assert!(Cli::try_parse_from(["sigild", "key", "create", "k", "--alg", "ES256"]).is_ok());
        assert!(
            Cli::try_parse_from([
                "sigild",
                "sign",
                "--endpoint",
                "http://x:1",
                "raw",
                "--key",
                "k"
            ])
            .is_ok()
        );
        assert!(Cli::try_parse_from(["sigild", "serve"]).is_err());
        let sign = |args: &[&str]| {
            let mut argv = vec!["sigild", "sign", "--endpoint", "http://x:1"];
            argv.extend_from_slice(args);
            Cli::try_parse_from(argv).is_ok()
        };
        let intro = [
            "introspection",
            "--key",
            "k",
            "--issuer",
            "i",
            "--audience",
            "a",
        ];
        assert!(sign(
            &[&intro[..], &["--introspection-json", "{}"]].concat()
        ));
        assert!(sign(&[&intro[..], &["--introspection-file", "-"]].concat()));
        // Exactly one of the two.
        assert!(!sign(&intro));
        assert!(!sign(
            &[
                &intro[..],
                &["--introspection-json", "{}", "--introspection-file", "-"]
            ]
            .concat()
        ));
        let jarm = ["jarm", "--key", "k", "--issuer", "i", "--client-id", "c"];
        assert!(sign(&[&jarm[..], &["--response-file", "-"]].concat()));
        // The code is a secret: there is no argument that takes the response itself.
        assert!(!sign(&jarm));
        assert!(!sign(&[&jarm[..], &["--response-json", "{}"]].concat()));
        assert!(sign(&[
            "userinfo",
            "--key",
            "k",
            "--issuer",
            "i",
            "--audience",
            "a",
            "--claims-json",
            "{}"
        ]));
        assert!(sign(&[
            "id-token",
            "--key",
            "k",
            "--claims-json",
            "{}",
            "--state",
            "s",
            "--typ",
            "JWT"
        ]));
    }
}
