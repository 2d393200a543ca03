//! The embedded SoftHSM default (`sigild dev`, and the token `sigild bench` measures on): a
//! state directory holding a SoftHSM token, random PINs in private files, and a config that
//! points at them. Created on first run, reused afterwards.
//!
//! Callers authenticate as in production, with no set-up: the state directory gets a dev CA,
//! a server certificate for `localhost`/`127.0.0.1` and an admin client certificate
//! (`spiffe://sigild.dev/admin`), which the CLI finds in `./.sigild` by default; and a Unix
//! socket `sigild.sock` (mode 0600) on which the directory's owner is allowed everything.
//! Every request is audited to `audit.jsonl` in the same directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sigild::backend::pkcs11::provision;
use sigild::secret::{SecretSource, write_secret_file};
use sigild::service::Service;

/// Label of the dev token.
pub const DEV_TOKEN_LABEL: &str = "sigild-dev";

/// The fixed localhost address of `sigild dev`, which client commands use by default.
pub const DEV_LISTEN: &str = "127.0.0.1:7711";

/// Keys `sigild dev` creates on first run: signing keys for the three algorithms FAPI 2.0
/// allows, and a decryption key of each family (RSA-OAEP-256, ECDH-ES+A256KW on P-256) that
/// JWEs can be encrypted to (`use: "enc"` in the JWKS).
pub const DEV_KEYS: [(&str, &str); 5] = [
    ("dev-es256", "ES256"),
    ("dev-ps256", "PS256"),
    ("dev-eddsa", "EdDSA"),
    ("dev-enc-rsa", "RSA-OAEP-256"),
    ("dev-enc-ec", "ECDH-ES+A256KW"),
];

/// Where Debian, Ubuntu, Fedora and source builds put the SoftHSM module.
const SOFTHSM_MODULES: [&str; 4] = [
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// The files of a dev state directory.
#[derive(Debug, Clone)]
pub struct DevPaths {
    /// The state directory.
    pub dir: PathBuf,
    /// SoftHSM configuration (what `SOFTHSM2_CONF` must point at).
    pub softhsm_conf: PathBuf,
    /// The daemon config.
    pub config: PathBuf,
    /// User PIN file.
    pub user_pin: PathBuf,
    /// SO PIN file.
    pub so_pin: PathBuf,
    /// The SoftHSM module found on this machine.
    pub module: PathBuf,
    /// The dev CA, server and client certificates.
    pub pki: sigild::tls::DevPki,
    /// The Unix socket.
    pub socket: PathBuf,
}

/// Why dev setup failed.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// File system.
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    /// No SoftHSM module.
    #[error(
        "SoftHSM2 is not installed (looked for {0}); install it with `apt-get install softhsm2`, or set SIGILD_PKCS11_MODULE"
    )]
    NoModule(String),
    /// A random PIN could not be made.
    #[error("cannot make a random PIN: {0}")]
    Random(String),
    /// Token initialisation failed.
    #[error("cannot initialise the dev token: {0}")]
    Provision(#[from] provision::ProvisionError),
    /// Reading a PIN back.
    #[error(transparent)]
    Secret(#[from] sigild::secret::SecretError),
    /// Creating the dev certificates.
    #[error(transparent)]
    Tls(#[from] sigild::tls::TlsError),
}

/// The SoftHSM module: `SIGILD_PKCS11_MODULE` if set, else the first usual path that exists.
///
/// # Errors
/// [`DevError::NoModule`].
pub fn softhsm_module() -> Result<PathBuf, DevError> {
    if let Ok(p) = std::env::var("SIGILD_PKCS11_MODULE") {
        return Ok(PathBuf::from(p));
    }
    SOFTHSM_MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| DevError::NoModule(SOFTHSM_MODULES.join(", ")))
}

/// Create the state directory, SoftHSM config, PINs and daemon config where missing. Does not
/// touch the token (that needs `SOFTHSM2_CONF` set first; see [`ensure_token`]).
///
/// # Errors
/// [`DevError`].
pub fn prepare(dir: &Path, listen: SocketAddr) -> Result<DevPaths, DevError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let io = |p: &Path| {
        let p = p.to_owned();
        move |e| DevError::Io(p, e)
    };
    let module = softhsm_module()?;
    let tokens = dir.join("tokens");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&tokens)
        .map_err(io(&tokens))?;
    let dir = std::fs::canonicalize(dir).map_err(io(dir))?;
    let tokens = dir.join("tokens");
    let paths = DevPaths {
        softhsm_conf: dir.join("softhsm2.conf"),
        config: dir.join("sigild.toml"),
        user_pin: dir.join("user.pin"),
        so_pin: dir.join("so.pin"),
        module,
        pki: sigild::tls::DevPki::in_dir(&dir),
        socket: dir.join("sigild.sock"),
        dir,
    };
    if !paths.softhsm_conf.exists() {
        let conf = format!(
            "# SoftHSM2 token store of sigild dev (created by sigild)\ndirectories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        );
        std::fs::write(&paths.softhsm_conf, conf).map_err(io(&paths.softhsm_conf))?;
    }
    for pin in [&paths.user_pin, &paths.so_pin] {
        if !pin.exists() {
            write_secret_file(pin, &random_pin()?).map_err(io(pin))?;
        }
    }
    paths.pki.ensure()?;
    // The directory's owner is the user running dev: allowed everything on the socket.
    let uid = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&paths.dir).map_err(io(&paths.dir))?.uid()
    };
    let all_ops = sigild::policy::Operation::CONFIGURABLE
        .map(|o| format!("\"{}\"", o.name()))
        .join(", ");
    // Rewritten every start so it follows --listen and the module found on this machine.
    let config = format!(
        r#"# sigild dev config (rewritten by `sigild dev` on each start)
[server]
listen = "{listen}"

[server.tls]
cert = "{server_cert}"
key = "{server_key}"
client_ca = ["{ca}"]
identity = "spiffe"

[server.unix]
path = "{socket}"
mode = "0600"

# The dev client certificate (client.pem / client.key) may do everything.
[[caller]]
identity = "{client}"
keys = ["*"]
operations = [{all_ops}]
admin = true

# So may the owner of this directory, over the Unix socket.
[[caller]]
uid = {uid}
keys = ["*"]
operations = [{all_ops}]
admin = true

[audit]
file = "{audit}"

[pkcs11]
module = "{module}"
token = "pkcs11:token={DEV_TOKEN_LABEL}"
pin = {{ file = "{pin}" }}
workers = 2
"#,
        server_cert = paths.pki.server_cert.display(),
        server_key = paths.pki.server_key.display(),
        ca = paths.pki.ca.display(),
        socket = paths.socket.display(),
        client = sigild::tls::DEV_CLIENT_SPIFFE,
        audit = paths.dir.join("audit.jsonl").display(),
        module = paths.module.display(),
        pin = paths.user_pin.display(),
    );
    std::fs::write(&paths.config, config).map_err(io(&paths.config))?;
    Ok(paths)
}

fn random_pin() -> Result<String, DevError> {
    let mut b = [0u8; 12];
    getrandom::fill(&mut b).map_err(|e| DevError::Random(e.to_string()))?;
    Ok(base16ct::lower::encode_string(&b))
}

/// Initialise the dev token on first run (SO and user PIN from the state directory). Must run
/// with `SOFTHSM2_CONF` pointing at `paths.softhsm_conf`, before the daemon loads the module.
///
/// # Errors
/// [`DevError::Provision`], or [`DevError::Secret`] when a PIN file cannot be read.
pub fn ensure_token(paths: &DevPaths) -> Result<bool, DevError> {
    let so = SecretSource::File(paths.so_pin.clone()).read()?;
    let user = SecretSource::File(paths.user_pin.clone()).read()?;
    Ok(provision::ensure_token(
        &paths.module,
        DEV_TOKEN_LABEL,
        &so,
        &user,
    )?)
}

/// Create the default dev keys that are missing, one after the other, stopping between two
/// keys once `stop` is requested (a key being made is finished first: generation and its
/// keyring record together, so the token never holds half a key). Returns the names created.
///
/// # Errors
/// Service errors (the token refused to generate).
pub async fn ensure_default_keys(
    service: &Service,
    stop: &sigild::app::Stop,
) -> Result<Vec<String>, sigild::service::Error> {
    let mut created = Vec::new();
    for (name, alg) in DEV_KEYS {
        if service.key(name).is_ok() {
            continue;
        }
        if stop.requested() {
            break;
        }
        tracing::info!(key = name, alg, "creating default dev key");
        service
            .create_key(
                &sigild::service::Origin::in_process(),
                name,
                alg,
                sigild::keyring::KeySize::default(),
                true,
                &[],
            )
            .await?;
        created.push(name.to_owned());
    }
    Ok(created)
}
