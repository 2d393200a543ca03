//! RFC 9421 HTTP message signatures in the tests: messages as the independent verifier
//! (tests/verifiers/httpsig_verify.py, PyPI `http-message-signatures`) reads them, and the
//! verifier itself, one call for many checks.

use serde_json::{Value, json};
use sigild::api::pb;

use super::{TestResult, b64, run_json};

/// Field lines in order, as `(name, value)`.
pub type Lines = Vec<(String, String)>;

/// `[("Name", "value")]` → owned field lines.
pub fn lines(l: &[(&str, &str)]) -> Lines {
    l.iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// Field lines → the proto's `HttpField`s.
pub fn pb_fields(l: &Lines) -> Vec<pb::HttpField> {
    l.iter()
        .map(|(name, value)| pb::HttpField {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

/// The proto's `HttpField`s → field lines.
pub fn from_pb(f: &[pb::HttpField]) -> Lines {
    f.iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect()
}

/// `Name: value` lines (what `sigild sign http-request|http-response` prints) → field lines.
pub fn parse_lines(text: &str) -> TestResult<Lines> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (n, v) = l
                .split_once(": ")
                .ok_or_else(|| format!("not a `Name: value` line: {l}"))?;
            Ok((n.to_owned(), v.to_owned()))
        })
        .collect()
}

/// A request as the verifier reads it.
#[derive(Debug, Clone)]
pub struct Req {
    /// The method.
    pub method: String,
    /// The absolute target URI.
    pub url: String,
    /// Its field lines, in order.
    pub headers: Lines,
    /// Its body (None: none given to the verifier).
    pub body: Option<Vec<u8>>,
}

impl Req {
    /// A request of `method` to `url` with `headers` and `body`.
    pub fn new(method: &str, url: &str, headers: Lines, body: Option<&[u8]>) -> Req {
        Req {
            method: method.into(),
            url: url.into(),
            headers,
            body: body.map(<[u8]>::to_vec),
        }
    }

    /// The verifier's JSON for this request.
    pub fn json(&self) -> Value {
        let mut v = json!({"method": self.method, "url": self.url, "headers": self.headers});
        if let Some(b) = &self.body {
            v["body_b64"] = json!(b64(b));
        }
        v
    }

    /// This request with `more` field lines appended (the signature fields sigild returned).
    pub fn with(&self, more: &Lines) -> Req {
        let mut r = self.clone();
        r.headers.extend(more.iter().cloned());
        r
    }

    /// This request without the field lines named `name` (case-insensitive).
    pub fn without(&self, name: &str) -> Req {
        let mut r = self.clone();
        r.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        r
    }

    /// This request with the value of the field `name` replaced by `value`.
    pub fn replacing(&self, name: &str, value: &str) -> Req {
        let mut r = self.clone();
        for (n, v) in &mut r.headers {
            if n.eq_ignore_ascii_case(name) {
                *v = value.to_owned();
            }
        }
        r
    }
}

/// A response as the verifier reads it: status, fields, body, and the request it answers.
pub fn response_json(status: u32, headers: &Lines, body: Option<&[u8]>, request: &Req) -> Value {
    let mut v = json!({"status": status, "headers": headers, "request": request.json()});
    if let Some(b) = body {
        v["body_b64"] = json!(b64(b));
    }
    v
}

/// One verification for the verifier: `message` (a request or response JSON), the public
/// `jwk`, the RFC 9421 `alg`, the expected `tag`, and the components that must be covered.
pub fn check(message: Value, jwk: &Value, alg: &str, tag: &str, require: &[&str]) -> Value {
    json!({"op": "verify", "message": message, "jwk": jwk, "alg": alg, "tag": tag,
           "require": require})
}

/// Run many checks in one verifier process: for each, `Ok(result)` when
/// `http-message-signatures` accepts the signature, `Err(its reason)` when not.
pub fn verify_all(items: Vec<Value>) -> TestResult<Vec<Result<Value, String>>> {
    let n = items.len();
    let r = run_json(
        "python3",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/verifiers/httpsig_verify.py"
        ),
        &json!({"op": "batch", "items": items}),
    )?;
    let results = r["results"].as_array().ok_or("results")?;
    if results.len() != n {
        return Err(format!("{} results for {n} checks", results.len()).into());
    }
    Ok(results
        .iter()
        .map(|v| {
            if v["ok"] == json!(true) {
                Ok(v.clone())
            } else {
                Err(v["error"].as_str().unwrap_or("no reason").to_owned())
            }
        })
        .collect())
}

/// The signature base `http-message-signatures` builds for `message` over `components` with
/// the signature `params` (RFC 9421 §2.5), and its `@signature-params` value.
pub fn library_base(message: Value, components: &[&str], params: Value) -> TestResult<String> {
    let r = run_json(
        "python3",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/verifiers/httpsig_verify.py"
        ),
        &json!({"op": "base", "message": message, "components": components, "params": params}),
    )?;
    Ok(r["base"].as_str().ok_or("base")?.to_owned())
}
