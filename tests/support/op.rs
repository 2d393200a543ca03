//! A real OpenID Provider for end-to-end tests: node-oidc-provider (`tests/node/op/provider.mjs`)
//! started on a port the kernel picks and killed on drop, the headless relying party that logs
//! in through it (`tests/node/op/login.mjs`). The Node modules come from `scripts/install-deps.sh --test`;
//! npm never runs at test time.
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::TestResult;

/// `tests/node`, checked to hold the installed modules.
pub fn node_dir() -> TestResult<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node"));
    for module in ["oidc-provider", "jose"] {
        if !dir.join("node_modules").join(module).is_dir() {
            return Err(format!(
                "{} has no node_modules/{module}: run `scripts/install-deps.sh --test` first",
                dir.display()
            )
            .into());
        }
    }
    Ok(dir)
}

fn no_node(e: std::io::Error) -> String {
    format!("node: {e} (install Node.js and the test peers with scripts/install-deps.sh --test)")
}

/// Run `node tests/node/op/<script> <args…>`; its stdout, or an error with its stderr.
fn node(script: &str, args: &[&str]) -> TestResult<String> {
    let dir = node_dir()?;
    let out = Command::new("node")
        .arg(dir.join("op").join(script))
        .args(args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .map_err(no_node)?;
    if !out.status.success() {
        return Err(format!(
            "node {script} {}: {}\n{}",
            args.first().unwrap_or(&""),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// How a client authenticates at the OP's token endpoint.
pub enum ClientAuth<'a> {
    /// client_secret_basic with this secret.
    Secret(&'a str),
    /// private_key_jwt with this signed client assertion.
    Assertion(&'a str),
}

/// A running node-oidc-provider with the given clients.
pub struct Op {
    /// `http://127.0.0.1:PORT`.
    pub issuer: String,
    child: Child,
    /// The OP's stderr (warnings, server errors), for failure messages.
    log: Arc<Mutex<Vec<String>>>,
    /// Holds the clients file.
    _dir: tempfile::TempDir,
}

impl Op {
    /// Start an OP whose static clients are `clients` (an array of client metadata).
    pub fn start(clients: &Value) -> TestResult<Op> {
        let dir = node_dir()?;
        let tmp = tempfile::tempdir()?;
        let clients_file = tmp.path().join("clients.json");
        std::fs::write(&clients_file, clients.to_string())?;
        let mut child = Command::new("node")
            .arg(dir.join("op").join("provider.mjs"))
            .arg(&clients_file)
            .current_dir(&dir)
            // the OP exits when this pipe closes: with the test process, however it ends
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(no_node)?;
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let stderr = child.stderr.take().ok_or("no stderr")?;
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            // keep the pipe drained until the OP exits
            let _ = reader.read_to_end(&mut Vec::new());
        });
        let mut op = Op {
            issuer: String::new(),
            child,
            log,
            _dir: tmp,
        };
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(line)) if !line.is_empty() => line,
            other => {
                return Err(format!("the OP did not start ({other:?}):\n{}", op.log_text()).into());
            }
        };
        let v: Value = serde_json::from_str(&line)?;
        op.issuer = v["issuer"].as_str().ok_or("no issuer line")?.to_owned();
        Ok(op)
    }

    /// The OP's stderr so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn login(&self, command: &str, mut args: Value) -> TestResult<Value> {
        args["issuer"] = self.issuer.clone().into();
        let out = node("login.mjs", &[command, &args.to_string()])
            .map_err(|e| format!("{e}\nOP log:\n{}", self.log_text()))?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Log `login` in as `client_id` (authorization code flow, PKCE, the OP's development
    /// interactions) up to the redirect: `{redirect, params, code_verifier}`. `response_mode`
    /// "jwt" asks for a JARM response.
    pub fn authorize(
        &self,
        client_id: &str,
        redirect_uri: &str,
        nonce: &str,
        state: &str,
        response_mode: Option<&str>,
    ) -> TestResult<Value> {
        let mut args = serde_json::json!({
            "client_id": client_id, "redirect_uri": redirect_uri, "nonce": nonce,
            "state": state, "login": "alice",
        });
        if let Some(mode) = response_mode {
            args["response_mode"] = mode.into();
        }
        self.login("authorize", args)
    }

    /// Exchange a code at the token endpoint: the token response.
    pub fn token(
        &self,
        client_id: &str,
        auth: ClientAuth<'_>,
        redirect_uri: &str,
        code: &str,
        code_verifier: &str,
    ) -> TestResult<Value> {
        let mut args = serde_json::json!({
            "client_id": client_id, "redirect_uri": redirect_uri, "code": code,
            "code_verifier": code_verifier,
        });
        match auth {
            ClientAuth::Secret(secret) => args["client_secret"] = secret.into(),
            ClientAuth::Assertion(jwt) => args["client_assertion"] = jwt.into(),
        }
        self.login("token", args)
    }

    /// The OP's published JWKS (its jwks_uri, found through discovery).
    pub fn jwks(&self) -> TestResult<Value> {
        self.login("jwks", serde_json::json!({}))
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
