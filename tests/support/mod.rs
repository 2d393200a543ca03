//! Shared integration-test support: a fresh SoftHSM token per test (its own directory and
//! `SOFTHSM2_CONF`, so tests run in parallel), the real `sigild` binary started on port 0 against
//! it, gRPC clients, and the independent verifiers (Python jwcrypto/cryptography, openssl,
//! pkcs11-tool).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sigild::api::pb;
use tonic::transport::Channel;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM token in its own temporary directory.
pub struct Token {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub label: String,
    pub pin: String,
    pub pin_file: PathBuf,
}

impl Token {
    pub fn new() -> TestResult<Token> {
        Self::with_label("sigild-test")
    }

    pub fn with_label(label: &str) -> TestResult<Token> {
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
        let pin = "87654321".to_owned();
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
        Ok(Token {
            dir,
            conf,
            label: label.to_owned(),
            pin,
            pin_file,
        })
    }

    /// A config for this token; `extra` is appended (e.g. a `[signing]` table).
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndanger_plaintext = true\n\n[pkcs11]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken = \"pkcs11:token={}\"\npin = {{ file = \"{}\" }}\nworkers = 2\n{extra}",
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
    pub endpoint: String,
    pub config: PathBuf,
    child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
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
        let mut child = Command::new(sigild_bin())
            .args(["serve", "--config"])
            .arg(config)
            .env("SOFTHSM2_CONF", softhsm_conf)
            .env("SIGILD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split("addr=")
                    .nth(1)
                    .filter(|_| line.contains("listening"))
                {
                    let _ = tx.send(
                        addr.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
                log2.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Ok(Daemon {
                endpoint: format!("http://{addr}"),
                config: config.to_owned(),
                child,
                log,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("sigild did not start:\n{}", log.lock().unwrap().join("\n")).into())
            }
        }
    }

    pub async fn channel(&self) -> TestResult<Channel> {
        Ok(Channel::from_shared(self.endpoint.clone())?
            .connect()
            .await?)
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

    pub async fn create(&self, name: &str, alg: &str, rsa_bits: u32) -> TestResult<pb::Key> {
        let req = pb::CreateKeyRequest {
            name: name.into(),
            alg: alg.into(),
            rsa_bits,
            fapi2: false,
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
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run_cli(endpoint: &str, args: &[&str], stdin: Option<&[u8]>) -> TestResult<Output> {
    use std::io::Write as _;
    let mut child = Command::new(sigild_bin())
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
    use std::io::Write as _;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/verifiers/jose_verify.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("stdin")?
        .write_all(req.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "verifier output {e}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if v["ok"] != json!(true) {
        return Err(format!("independent verifier rejected: {}", v["error"]).into());
    }
    Ok(v)
}

/// Verify a compact JWS against a JWKS with jwcrypto; returns {header, payload, thumbprint}.
pub fn verify_jws(compact: &str, jwks: &Value) -> TestResult<Value> {
    python(&json!({"op": "jws", "jws": compact, "jwks": jwks}))
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
