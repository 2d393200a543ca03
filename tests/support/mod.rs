//! Shared integration-test support, the one module every test binary includes: a fresh SoftHSM
//! token per test (its own directory and `SOFTHSM2_CONF`, so tests run in parallel), the real
//! `sigild` binary started on port 0 against it, gRPC clients, and the independent verifiers
//! (Python jwcrypto/cryptography, openssl, pkcs11-tool). Submodules: `device` (the conformance
//! suite's devices), `yubikey` (pcscd + the virtual YubiKey), `ock` (openCryptoki's soft token),
//! `tls` (TLS test peers), `faulty` (the fault-injecting PKCS#11 module), `jwe` (JWEs made by
//! jwcrypto and node jose, for the decryption tests), `httpsig` (RFC 9421 messages and their
//! verification by `http-message-signatures`), `stream` (`SignStream` clients: pipelined, by hand,
//! raw bytes).
//!
//! Daemons serve mutual TLS: each token directory holds a test PKI (`pki/`: a CA, a server
//! certificate for 127.0.0.1/localhost and an admin client certificate), and [`Token::config`]
//! adds a `[[caller]]` rule that lets the admin certificate do everything. Clients made here and
//! [`run_cli`] use that certificate, so tests that are not about authentication need not care.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod device;
pub mod faulty;
pub mod httpsig;
pub mod jwe;
pub mod ock;
pub mod op;
pub mod ops;
pub mod reload;
pub mod stream;
pub mod tls;
#[cfg(feature = "yubikey")]
pub mod yubikey;

use serde_json::{Value, json};
use sigild::api::pb;
use tonic::transport::Channel;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The identity of the all-powerful test client certificate.
pub const ADMIN_SPIFFE: &str = "spiffe://sigild.test/admin";

/// Client-side TLS files.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A token directory's test PKI.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: sigild::tls::TestCa,
    pub ca_pem: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub admin: ClientFiles,
}

impl Pki {
    fn create(dir: &Path) -> TestResult<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca = sigild::tls::TestCa::new("sigild test CA")?;
        let server = ca.server(&["localhost", "127.0.0.1"])?;
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, &ca.cert_pem)?;
        let server_cert = dir.join("server.pem");
        let server_key = dir.join("server.key");
        std::fs::write(&server_cert, &server.cert_pem)?;
        write_private(&server_key, &server.key_pem)?;
        let mut pki = Pki {
            dir: dir.to_owned(),
            ca,
            ca_pem: ca_pem.clone(),
            server_cert,
            server_key,
            admin: ClientFiles {
                ca: ca_pem.clone(),
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
        };
        pki.admin = pki.client(
            "admin",
            &sigild::tls::ClientNames {
                spiffe: Some(ADMIN_SPIFFE.into()),
                cn: Some("admin".into()),
                ..Default::default()
            },
        )?;
        Ok(pki)
    }

    /// Client files for the caller whose SPIFFE identity is `spiffe://sigild.test/<name>`.
    pub fn caller(&self, name: &str) -> TestResult<ClientFiles> {
        self.client(
            name,
            &sigild::tls::ClientNames {
                spiffe: Some(format!("spiffe://sigild.test/{name}")),
                ..Default::default()
            },
        )
    }

    /// Issue a client certificate under this CA, written as `<name>.pem` / `<name>.key`.
    pub fn client(&self, name: &str, names: &sigild::tls::ClientNames) -> TestResult<ClientFiles> {
        let leaf = self.ca.client(names)?;
        Ok(self.write_client(name, &leaf))
    }

    fn write_client(&self, name: &str, leaf: &sigild::tls::Leaf) -> ClientFiles {
        let cert = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert, &leaf.cert_pem).unwrap();
        write_private(&key, &leaf.key_pem).unwrap();
        ClientFiles {
            ca: self.ca_pem.clone(),
            cert,
            key,
        }
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Every operation a caller rule can list, as a TOML array body.
pub fn all_operations() -> String {
    sigild::policy::Operation::CONFIGURABLE
        .map(|o| format!("\"{}\"", o.name()))
        .join(", ")
}

/// Make [`run_cli`] use `files` for `endpoint` (e.g. the dev PKI of a `sigild dev`).
pub fn register_client(endpoint: &str, files: ClientFiles) {
    registry()
        .lock()
        .unwrap()
        .insert(endpoint.to_owned(), files);
}

/// Which client files belong to which daemon endpoint (for [`run_cli`]).
fn registry() -> &'static Mutex<std::collections::HashMap<String, ClientFiles>> {
    static R: std::sync::OnceLock<Mutex<std::collections::HashMap<String, ClientFiles>>> =
        std::sync::OnceLock::new();
    R.get_or_init(Default::default)
}

/// A SoftHSM token in its own temporary directory.
pub struct Token {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub label: String,
    pub pin: String,
    pub pin_file: PathBuf,
    pub pki: Pki,
}

impl Token {
    pub fn new() -> TestResult<Token> {
        Self::with_label("sigild-test")
    }

    pub fn with_label(label: &str) -> TestResult<Token> {
        Self::with_pin(label, "87654321")
    }

    /// A token whose user PIN is `pin` (tests that look for the PIN in output use a
    /// distinctive one).
    pub fn with_pin(label: &str, pin: &str) -> TestResult<Token> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir()?;
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens)?;
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )?;
        let pin = pin.to_owned();
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                "12345678",
                "--pin",
                &pin,
            ])
            .output()?;
        if !out.status.success() {
            return Err(format!("softhsm2-util: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let pin_file = dir.path().join("user.pin");
        std::fs::write(&pin_file, format!("{pin}\n"))?;
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600))?;
        let pki = Pki::create(&dir.path().join("pki"))?;
        Ok(Token {
            dir,
            conf,
            label: label.to_owned(),
            pin,
            pin_file,
            pki,
        })
    }

    /// A config for this token: mutual TLS with the test PKI, the admin certificate allowed
    /// everything; `extra` is appended after the `[pkcs11]` table (so it may hold more pkcs11
    /// keys, or other tables such as `[signing]`, `[[caller]]`, `[audit]`).
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = [\"{}\"]\n\n[[caller]]\nidentity = \"{ADMIN_SPIFFE}\"\nkeys = [\"*\"]\noperations = [{}]\nadmin = true\n\n[pkcs11]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken = \"pkcs11:token={}\"\npin = {{ file = \"{}\" }}\nworkers = 2\n{extra}",
            self.pki.server_cert.display(),
            self.pki.server_key.display(),
            self.pki.ca_pem.display(),
            all_operations(),
            self.label,
            self.pin_file.display()
        )
    }

    pub fn write_config(&self, name: &str, text: &str) -> TestResult<PathBuf> {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    }

    /// Run pkcs11-tool against this token, logged in.
    pub fn pkcs11_tool(&self, args: &[&str]) -> TestResult<Output> {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &self.conf)
            .args([
                "--module",
                SOFTHSM_MODULE,
                "--token-label",
                &self.label,
                "--login",
                "--pin",
                &self.pin,
            ])
            .args(args)
            .output()?;
        Ok(out)
    }
}

/// A running `sigild serve` on a token.
pub struct Daemon {
    /// `https://127.0.0.1:PORT` with TLS (the default), `http://…` with danger_plaintext.
    pub endpoint: String,
    pub config: PathBuf,
    child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    /// The admin client files, when the daemon serves TLS.
    pub client: Option<ClientFiles>,
    /// Standard output (the audit trail when `[audit] stdout = true`).
    pub stdout: Arc<Mutex<Vec<String>>>,
}

pub fn sigild_bin() -> &'static str {
    env!("CARGO_BIN_EXE_sigild")
}

impl Daemon {
    pub fn start(token: &Token) -> TestResult<Daemon> {
        Self::start_with(token, "")
    }

    pub fn start_with(token: &Token, extra: &str) -> TestResult<Daemon> {
        let config =
            token.write_config(&format!("sigild-{}.toml", unique()), &token.config(extra))?;
        Self::start_config(&token.conf, &config)
    }

    pub fn start_config(softhsm_conf: &Path, config: &Path) -> TestResult<Daemon> {
        Self::start_config_env(softhsm_conf, config, &[])
    }

    /// [`Daemon::start_config`] with extra environment variables for the daemon (e.g.
    /// [`faulty::Faults::env`]).
    pub fn start_config_env(
        softhsm_conf: &Path,
        config: &Path,
        env: &[(String, String)],
    ) -> TestResult<Daemon> {
        let text = std::fs::read_to_string(config)?;
        let client = text.contains("[server.tls]").then(|| {
            let pki = softhsm_conf.parent().unwrap_or(Path::new(".")).join("pki");
            ClientFiles {
                ca: pki.join("ca.pem"),
                cert: pki.join("admin.pem"),
                key: pki.join("admin.key"),
            }
        });
        let mut child = Command::new(sigild_bin())
            .args(["serve", "--config"])
            .arg(config)
            .env("SOFTHSM2_CONF", softhsm_conf)
            .env("SIGILD_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        {
            let out = child.stdout.take().ok_or("no stdout")?;
            let stdout = Arc::clone(&stdout);
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    stdout.lock().unwrap().push(line);
                }
            });
        }
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Text (`addr=…`) or JSON (`"addr":"…"`) log lines.
                if let Some(addr) = ops::addr_in(&line).filter(|_| line.contains("listening")) {
                    let _ = tx.send(addr.to_string());
                }
                log2.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => {
                let endpoint = match &client {
                    Some(files) => {
                        let e = format!("https://{addr}");
                        registry().lock().unwrap().insert(e.clone(), files.clone());
                        e
                    }
                    None => format!("http://{addr}"),
                };
                Ok(Daemon {
                    endpoint,
                    config: config.to_owned(),
                    child,
                    log,
                    client,
                    stdout,
                })
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("sigild did not start:\n{}", log.lock().unwrap().join("\n")).into())
            }
        }
    }

    /// A channel authenticated with the admin certificate (or plain, without TLS).
    pub async fn channel(&self) -> TestResult<Channel> {
        match &self.client {
            Some(files) => self.channel_as(files).await,
            None => Ok(Channel::from_shared(self.endpoint.clone())?
                .connect()
                .await?),
        }
    }

    /// A channel authenticated with the given client certificate.
    pub async fn channel_as(&self, files: &ClientFiles) -> TestResult<Channel> {
        let tls = sigild::tls::client_config(&files.ca, &files.cert, &files.key, None)?;
        Ok(Channel::from_shared(self.endpoint.clone())?
            .tls_config(tls)?
            .connect()
            .await?)
    }

    /// Audit lines written to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub async fn keys(&self) -> TestResult<pb::key_service_client::KeyServiceClient<Channel>> {
        Ok(pb::key_service_client::KeyServiceClient::new(
            self.channel().await?,
        ))
    }

    pub async fn signer(
        &self,
    ) -> TestResult<pb::signing_service_client::SigningServiceClient<Channel>> {
        Ok(pb::signing_service_client::SigningServiceClient::new(
            self.channel().await?,
        ))
    }

    /// A client of the signing service authenticated with `files` (a caller other than the
    /// admin).
    pub async fn signer_as(
        &self,
        files: &ClientFiles,
    ) -> TestResult<pb::signing_service_client::SigningServiceClient<Channel>> {
        Ok(pb::signing_service_client::SigningServiceClient::new(
            self.channel_as(files).await?,
        ))
    }

    /// A client of the decryption service, authenticated like [`Daemon::channel`].
    pub async fn decrypter(
        &self,
    ) -> TestResult<pb::decryption_service_client::DecryptionServiceClient<Channel>> {
        Ok(pb::decryption_service_client::DecryptionServiceClient::new(
            self.channel().await?,
        ))
    }

    pub async fn create(&self, name: &str, alg: &str, rsa_bits: u32) -> TestResult<pb::Key> {
        let req = pb::CreateKeyRequest {
            name: name.into(),
            alg: alg.into(),
            rsa_bits,
            fapi2: false,
            ..Default::default()
        };
        Ok(self.keys().await?.create_key(req).await?.into_inner())
    }

    pub async fn jwks(&self) -> TestResult<Value> {
        let r = self
            .keys()
            .await?
            .get_jwks(pb::GetJwksRequest {})
            .await?
            .into_inner();
        Ok(serde_json::from_str(&r.jwks_json)?)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Run the CLI against this daemon.
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> TestResult<Output> {
        run_cli(&self.endpoint, args, stdin)
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send `signal` (`TERM`, `INT`, …) and wait up to `within` for the daemon to exit; its exit
    /// status (a code, or the signal that ended it).
    pub fn signal_and_wait(
        &mut self,
        signal: &str,
        within: Duration,
    ) -> TestResult<std::process::ExitStatus> {
        send_signal(self.child.id(), signal)?;
        wait_exit(&mut self.child, within)
    }

    /// Wait up to `within` for the daemon to exit by itself (after a signal sent meanwhile).
    pub fn wait_exit(&mut self, within: Duration) -> TestResult<std::process::ExitStatus> {
        wait_exit(&mut self.child, within)
    }

    /// Wait up to `within` for the daemon to exit by itself (a crash, a kill it did not get
    /// from the test): its exit status, or `None` while it still runs.
    pub fn exited_within(
        &mut self,
        within: Duration,
    ) -> TestResult<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Send `signal` (`TERM`, `INT`, `KILL`, …) to process `pid`.
pub fn send_signal(pid: u32, signal: &str) -> TestResult {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()?;
    if !status.success() {
        return Err(format!("kill -s {signal} {pid} failed: {status}").into());
    }
    Ok(())
}

/// Wait up to `within` for `child` to exit (killing it if it does not); its exit status.
pub fn wait_exit(child: &mut Child, within: Duration) -> TestResult<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("process {} did not exit within {within:?}", child.id()).into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run_cli(endpoint: &str, args: &[&str], stdin: Option<&[u8]>) -> TestResult<Output> {
    use std::io::Write as _;
    let mut cmd = Command::new(sigild_bin());
    if let Some(files) = registry().lock().unwrap().get(endpoint) {
        cmd.env("SIGILD_CA", &files.ca)
            .env("SIGILD_CERT", &files.cert)
            .env("SIGILD_KEY", &files.key);
    }
    let mut child = cmd
        .args(args)
        .env("SIGILD_ENDPOINT", endpoint)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut s) = child.stdin.take() {
        s.write_all(stdin.unwrap_or_default())?;
    }
    Ok(child.wait_with_output()?)
}

/// Run `sigild serve` expecting it to exit; returns (success, stderr).
pub fn serve_until_exit(softhsm_conf: &Path, config: &Path) -> TestResult<(bool, String)> {
    let mut child = Command::new(sigild_bin())
        .args(["serve", "--config"])
        .arg(config)
        .env("SOFTHSM2_CONF", softhsm_conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output()?;
            return Ok((
                status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("sigild serve did not exit".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Run the Python verifier (jwcrypto / cryptography); Err when the check fails.
pub fn python(req: &Value) -> TestResult<Value> {
    run_json(
        "python3",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/verifiers/jose_verify.py"
        ),
        req,
    )
}

/// Run one of the tests' JSON tools (`program script`, one JSON request on stdin, one JSON
/// answer with `"ok": true` on stdout): the independent verifiers and producers that are code
/// sigild did not write. An answer without `ok` fails the test with the tool's error and stderr.
pub fn run_json(program: &str, script: &str, req: &Value) -> TestResult<Value> {
    use std::io::Write as _;
    let name = Path::new(script)
        .file_name()
        .map_or_else(|| script.to_owned(), |n| n.to_string_lossy().into_owned());
    let mut child = Command::new(program)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("{program} {name}: {e} (install it with scripts/install-deps.sh --test)")
        })?;
    child
        .stdin
        .take()
        .ok_or("stdin")?
        .write_all(req.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{name} output {e}: {} {} (are the test tools installed? scripts/install-deps.sh --test)",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if v["ok"] != json!(true) {
        return Err(format!(
            "{name} failed: {} {}",
            v["error"],
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(v)
}

/// Verify a compact JWS against a JWKS with jwcrypto; returns {header, payload, thumbprint}.
pub fn verify_jws(compact: &str, jwks: &Value) -> TestResult<Value> {
    python(&json!({"op": "jws", "jws": compact, "jwks": jwks}))
}

/// Compact JWS collected during a test and verified by jwcrypto in one Python process at the
/// end (each Python start costs about a second on a busy CI machine).
#[derive(Debug, Default)]
pub struct JwsBatch {
    jws: Vec<Value>,
}

impl JwsBatch {
    /// Queue `compact` for verification with the JWKS entry named by its header's kid (or by
    /// `kid` when the header has none); returns its decoded header and payload, unverified
    /// until [`JwsBatch::verify`] passes.
    pub fn push(&mut self, compact: &str, kid: &str) -> TestResult<(Value, Value)> {
        self.jws.push(json!({"jws": compact, "kid": kid}));
        decode(compact)
    }

    /// Verify every queued JWS against `jwks`; Err names the ones jwcrypto refused.
    pub fn verify(self, jwks: &Value) -> TestResult<usize> {
        let n = self.jws.len();
        let v = python(&json!({"op": "jws_batch", "jws": self.jws, "jwks": jwks}))?;
        if v["verified"] != json!(n) {
            return Err(format!("jwcrypto verified {} of {n}", v["verified"]).into());
        }
        Ok(n)
    }
}

/// The RFC 8705 `x5t#S256` of a PEM certificate, computed by Python `cryptography`.
pub fn x5t_s256_of_pem(pem: &str) -> TestResult<String> {
    let v = python(&json!({"op": "x5t_s256", "pem": pem}))?;
    Ok(v["x5t_s256"].as_str().ok_or("no x5t_s256")?.to_owned())
}

/// The RFC 7638 thumbprint of a JWK, computed by jwcrypto.
pub fn thumbprint_of(jwk: &Value) -> TestResult<String> {
    let v = python(&json!({"op": "thumbprint", "jwk": jwk}))?;
    Ok(v["thumbprint"].as_str().ok_or("no thumbprint")?.to_owned())
}

/// Verify a compact JWS with the JWKS entry whose kid is `kid` (for headers that carry no kid).
pub fn verify_jws_with_kid(compact: &str, kid: &str, jwks: &Value) -> TestResult<Value> {
    let entry = jwks["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["kid"] == json!(kid)))
        .ok_or("kid not in JWKS")?;
    verify_jws(compact, &json!({"keys": [entry]}))
}

/// Run many verifier requests (any op of `jose_verify.py`) in one Python process: their
/// answers in order; Err with the index of the first failed check.
pub fn python_batch(requests: &[Value]) -> TestResult<Vec<Value>> {
    let r = python(&json!({"op": "batch", "requests": requests}))?;
    Ok(serde_json::from_value(r["results"].clone())?)
}

/// OIDC's left-half hash (`at_hash`, `c_hash`, `s_hash`) of `value` with `hash` (`sha256`,
/// `sha384`, `sha512`), computed by Python's hashlib.
pub fn half_hash(hash: &str, value: &str) -> TestResult<String> {
    let r = python(&json!({"op": "half_hash", "hash": hash, "value": value}))?;
    Ok(r["half_hash"].as_str().ok_or("half_hash")?.to_owned())
}

/// Sign `data` raw with `key` on `d` and check the signature with Python `cryptography` against
/// the key's active public JWK.
pub async fn sign_raw_verified(
    d: &Daemon,
    key: &str,
    data: &[u8],
) -> TestResult<pb::SignRawResponse> {
    let raw = d
        .signer()
        .await?
        .sign_raw(pb::SignRawRequest {
            version: 0,
            key: key.into(),
            data: data.to_vec(),
            alg: String::new(),
        })
        .await?
        .into_inner();
    let info = d
        .keys()
        .await?
        .get_key(pb::GetKeyRequest { name: key.into() })
        .await?
        .into_inner();
    verify_raw(&raw.alg, &active_jwk(&info)?, data, &raw.signature)
        .map_err(|e| format!("{key} raw: {e}"))?;
    Ok(raw)
}

/// Verify a raw JOSE-encoded signature with Python `cryptography`.
pub fn verify_raw(alg: &str, jwk: &Value, data: &[u8], sig: &[u8]) -> TestResult {
    python(
        &json!({"op": "raw", "alg": alg, "jwk": jwk, "data_b64": b64(data), "sig_b64": b64(sig)}),
    )?;
    Ok(())
}

pub fn b64(b: &[u8]) -> String {
    sigild::jose::b64(b)
}

/// The JWK of the active version of a key, parsed.
pub fn active_jwk(key: &pb::Key) -> TestResult<Value> {
    let v = key
        .versions
        .iter()
        .find(|v| v.version == key.active_version)
        .ok_or("no active version")?;
    Ok(serde_json::from_str(&v.public_jwk_json)?)
}

pub fn code_of<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
) -> TestResult<(tonic::Code, String)> {
    match r {
        Ok(v) => Err(format!("expected an error status, got {v:?}").into()),
        Err(s) => Ok((s.code(), s.message().to_owned())),
    }
}

/// Decode the JSON header and payload of a compact JWS (no verification).
pub fn decode(compact: &str) -> TestResult<(Value, Value)> {
    let mut parts = compact.split('.');
    let h = sigild::jose::b64_decode(parts.next().ok_or("header")?)?;
    let p = sigild::jose::b64_decode(parts.next().ok_or("payload")?)?;
    Ok((serde_json::from_slice(&h)?, serde_json::from_slice(&p)?))
}

/// The kids of a JWKS, in order.
pub fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Sign `{}` as a caller who looked the key up first: the header carries the alg and kid of
/// the version it expects to sign (ES256 and no kid when the key has no active version).
pub async fn sign_active(d: &Daemon, key: &str) -> Result<pb::SignJwsResponse, tonic::Status> {
    let mut s = d
        .signer()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let info = d
        .keys()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?
        .get_key(pb::GetKeyRequest { name: key.into() })
        .await?
        .into_inner();
    let header = match info
        .versions
        .iter()
        .find(|v| v.version == info.active_version)
    {
        Some(v) => format!("{{\"alg\":\"{}\",\"kid\":\"{}\"}}", v.alg, v.kid),
        None => r#"{"alg":"ES256"}"#.to_owned(),
    }
    .into_bytes();
    Ok(s.sign_jws(pb::SignJwsRequest {
        version: 0,
        key: key.into(),
        protected_header: header,
        payload: b"{}".to_vec(),
    })
    .await?
    .into_inner())
}

/// Sign a JWS with exactly these header and payload bytes.
pub async fn sign_jws(
    d: &Daemon,
    key: &str,
    header: &[u8],
    payload: &[u8],
) -> Result<pb::SignJwsResponse, tonic::Status> {
    let mut s = d
        .signer()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    Ok(s.sign_jws(pb::SignJwsRequest {
        version: 0,
        key: key.into(),
        protected_header: header.to_vec(),
        payload: payload.to_vec(),
    })
    .await?
    .into_inner())
}

/// Every key the daemon lists.
pub async fn list_keys(d: &Daemon) -> TestResult<Vec<pb::Key>> {
    Ok(d.keys()
        .await?
        .list_keys(pb::ListKeysRequest {})
        .await?
        .into_inner()
        .keys)
}

/// One key with its versions.
pub async fn get_key(d: &Daemon, name: &str) -> TestResult<pb::Key> {
    Ok(d.keys()
        .await?
        .get_key(pb::GetKeyRequest { name: name.into() })
        .await?
        .into_inner())
}

/// Unix seconds now.
pub fn now() -> TestResult<i64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64)
}

/// Wait until the daemon's health for `service` ("" = the whole server) is `want`.
pub async fn wait_health(
    d: &Daemon,
    service: &str,
    want: tonic_health::pb::health_check_response::ServingStatus,
    within: Duration,
) -> TestResult {
    let mut health = tonic_health::pb::health_client::HealthClient::new(d.channel().await?);
    let deadline = Instant::now() + within;
    loop {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await;
        if r.as_ref().is_ok_and(|r| r.get_ref().status == want as i32) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("health never became {want:?}: {r:?}\n{}", d.log_text()).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Retry `f` until it succeeds or `within` passes (then its last error, with the daemon log).
pub async fn eventually<T, F, Fut>(d: &Daemon, within: Duration, mut f: F) -> TestResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = TestResult<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("{e}\n{}", d.log_text()).into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The audit records on the daemon's stdout (`[audit] stdout = true`) once `want` holds for
/// them: the lines arrive through a pipe, a moment after the answer they record.
pub async fn audit_until(d: &Daemon, want: impl Fn(&[Value]) -> bool) -> TestResult<Vec<Value>> {
    eventually(d, Duration::from_secs(5), || async {
        let records: Vec<Value> = d
            .stdout_lines()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if want(&records) {
            Ok(records)
        } else {
            Err(format!("audit records so far: {records:?}").into())
        }
    })
    .await
}

/// The code, message and request id (`x-request-id`) of a failed call.
pub fn failure<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
) -> TestResult<(tonic::Code, String, String)> {
    let s = match r {
        Ok(v) => return Err(format!("expected an error status, got {v:?}").into()),
        Err(s) => s,
    };
    let id = s
        .metadata()
        .get(sigild::api::REQUEST_ID)
        .ok_or("no request id in the status")?
        .to_str()?
        .to_owned();
    Ok((s.code(), s.message().to_owned(), id))
}

/// The daemon's log line about request `id` (it may reach the log just after the answer).
pub async fn log_line(d: &Daemon, id: &str) -> TestResult<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(line) = d
            .log
            .lock()
            .map_err(|_| "log lock")?
            .iter()
            .find(|l| l.contains(id) && l.contains("request failed"))
        {
            return Ok(line.clone());
        }
        if Instant::now() > deadline {
            return Err(format!("no log line for request {id}:\n{}", d.log_text()).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sign a JWS (header `{"typ":"JWT","alg":ALG}`, no kid) and a raw signature with `key`, and
/// check both with the independent verifiers: the JWS against the key's JWKS entry (alg as
/// asked, kid = its RFC 7638 thumbprint), the raw one against its active public JWK. Returns
/// the kid that signed.
pub async fn sign_verified(d: &Daemon, key: &str, alg: &str) -> TestResult<String> {
    let header = format!("{{\"typ\":\"JWT\", \"alg\":\"{alg}\"}}");
    let payload = format!("{{\"sub\":\"alice\", \"key\":\"{key}\"}}");
    let r = sign_jws(d, key, header.as_bytes(), payload.as_bytes())
        .await
        .map_err(|e| format!("{key}: sign_jws: {e}"))?;
    let v = verify_jws_with_kid(&r.compact, &r.kid, &d.jwks().await?)
        .map_err(|e| format!("{key}: {e}"))?;
    assert_eq!(v["header"]["alg"], alg, "{key}");
    assert_eq!(v["thumbprint"], r.kid, "{key}: kid = RFC 7638 thumbprint");
    sign_raw_verified(d, key, format!("raw input for {key}").as_bytes()).await?;
    Ok(r.kid)
}
