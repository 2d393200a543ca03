//! A real OpenID Provider for end-to-end tests: node-oidc-provider (`tests/node/op/provider.mjs`)
//! started on a port the kernel picks and killed on drop, optionally with its JARM responses
//! signed by sigild (`sigild sign jarm`), and the headless relying party that logs in through it
//! and checks JARM responses with node jose (`tests/node/op/login.mjs`). The Node modules come
//! from `scripts/install-deps.sh --test`; npm never runs at test time.
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{ClientFiles, TestResult};

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

/// How the OP reaches sigild to have its JARM responses signed through the JARM profile.
pub struct JarmSigner<'a> {
    /// The daemon's endpoint (`SIGILD_ENDPOINT` of the OP's `sigild sign jarm`).
    pub endpoint: &'a str,
    /// The OP's client certificate at sigild.
    pub client: &'a ClientFiles,
    /// `(JWS alg, sigild key name)`: the key that signs for clients whose
    /// `authorization_signed_response_alg` is that alg.
    pub keys: Vec<(&'a str, String)>,
    /// The public JWKs of those keys, published in the OP's JWKS.
    pub jwks: Vec<Value>,
}

/// One authorization request of [`Op::authorize_with`].
#[derive(Default)]
pub struct Authorization<'a> {
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub nonce: &'a str,
    pub state: &'a str,
    /// `jwt`, `query.jwt`, … for a JARM response; the OP's default otherwise.
    pub response_mode: Option<&'a str>,
    /// `none` for an answer without interaction (`login_required` without a session).
    pub prompt: Option<&'a str>,
    /// Push the request first (RFC 9126, as FAPI 2.0 requires), the client authenticated with
    /// this private_key_jwt assertion, and send only its `request_uri` to the authorization
    /// endpoint.
    pub par_assertion: Option<&'a str>,
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
        Self::start_with(clients, None)
    }

    /// [`Op::start`], with JARM responses signed by sigild when `jarm` is given.
    pub fn start_with(clients: &Value, jarm: Option<&JarmSigner<'_>>) -> TestResult<Op> {
        let dir = node_dir()?;
        let tmp = tempfile::tempdir()?;
        let clients_file = tmp.path().join("clients.json");
        std::fs::write(&clients_file, clients.to_string())?;
        let mut command = Command::new("node");
        command
            .arg(dir.join("op").join("provider.mjs"))
            .arg(&clients_file);
        if let Some(jarm) = jarm {
            let jarm_file = tmp.path().join("jarm.json");
            let keys: serde_json::Map<String, Value> = jarm
                .keys
                .iter()
                .map(|(alg, key)| ((*alg).to_owned(), key.as_str().into()))
                .collect();
            let config = serde_json::json!({
                "sigild": super::sigild_bin(),
                "keys": keys,
                "jwks": {"keys": jarm.jwks},
            });
            std::fs::write(&jarm_file, config.to_string())?;
            command
                .arg(&jarm_file)
                .env("SIGILD_ENDPOINT", jarm.endpoint)
                .env("SIGILD_CA", &jarm.client.ca)
                .env("SIGILD_CERT", &jarm.client.cert)
                .env("SIGILD_KEY", &jarm.client.key);
        }
        let mut child = command
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
        self.authorize_with(&Authorization {
            client_id,
            redirect_uri,
            nonce,
            state,
            response_mode,
            ..Default::default()
        })
    }

    /// [`Op::authorize`] with every option of [`Authorization`].
    pub fn authorize_with(&self, a: &Authorization<'_>) -> TestResult<Value> {
        let mut args = serde_json::json!({
            "client_id": a.client_id, "redirect_uri": a.redirect_uri, "nonce": a.nonce,
            "state": a.state, "login": "alice",
        });
        for (name, value) in [
            ("response_mode", a.response_mode),
            ("prompt", a.prompt),
            ("client_assertion", a.par_assertion),
        ] {
            if let Some(value) = value {
                args[name] = value.into();
            }
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

    /// The relying party's check of JARM responses with node jose (one process for them all):
    /// for each `(client_id, response, alg)`, the signature against the OP's published JWKS with
    /// `alg`, `iss` = this OP, `aud` = `client_id`, `exp` present and in
    /// the future. Per case, in order: `{header, payload}`, or why it does not verify.
    pub fn verify_jarm(
        &self,
        cases: &[(&str, &str, &str)],
    ) -> TestResult<Vec<Result<Value, String>>> {
        let cases: Vec<Value> = cases
            .iter()
            .map(|(client_id, response, alg)| {
                serde_json::json!({
                    "client_id": client_id, "response": response, "algorithms": [alg],
                })
            })
            .collect();
        let results = self.login("verify-jarm", serde_json::json!({ "cases": cases }))?;
        let results = results.as_array().ok_or("verify-jarm: not an array")?;
        if results.len() != cases.len() {
            return Err(format!(
                "verify-jarm: {} results for {} cases",
                results.len(),
                cases.len()
            )
            .into());
        }
        Ok(results
            .iter()
            .map(|r| match r["error"].as_str() {
                Some(why) => Err(why.to_owned()),
                None => Ok(r.clone()),
            })
            .collect())
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
