//! HTTP message signing through the service over the in-memory backend: the FAPI components
//! and parameters (`created` from the service's clock, `keyid` = kid, alg from the key), each
//! signature over the reported base verified by Python `cryptography`
//! (tests/verifiers/jose_verify.py, op `raw`), the response bound to the signed request,
//! refusals (P-384 key, target URI outside the caller's prefixes, a response to an unsigned
//! request, malformed fields) and redaction.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;
use crate::audit::Audit;
use crate::backend::memory::MemoryBackend;
use crate::keyring::{KeySize, Keyring};
use crate::policy::{Caller, KeyPattern, Policy, Rule, Who};
use crate::service::{Clock, ErrorKind, ServiceOptions};

const NOW: u64 = 1_700_000_000;

/// A clock pinned at [`NOW`], so `created` can be checked exactly.
struct Fixed;
impl Clock for Fixed {
    fn now(&self) -> u64 {
        NOW
    }
}

struct Fixture {
    service: Service,
    audit: Arc<Audit>,
}

/// A service whose caller `rs` may sign HTTP requests and responses with `h-*` keys, requests
/// only to `https://rs.example.com/`. The in-memory backend signs with Ed25519 only: the other
/// algorithms are tested on SoftHSM (tests/httpsig.rs).
async fn fixture() -> Fixture {
    let keyring = Arc::new(Keyring::new(Arc::new(MemoryBackend::new())));
    keyring.refresh().await.unwrap();
    let rule = Rule {
        who: Some(Who::Identity("rs".into())),
        keys: vec![KeyPattern::new("h-*")],
        operations: [
            Operation::Sign(TokenType::HttpRequest),
            Operation::Sign(TokenType::HttpResponse),
        ]
        .into_iter()
        .collect(),
        target_uri_prefix: Some(vec!["https://rs.example.com/".into()]),
        ..Rule::default()
    };
    let audit = Arc::new(Audit::memory(false));
    let service = Service::new(keyring, Arc::new(Fixed), ServiceOptions::default())
        .with_access(Arc::new(Policy::new(vec![rule], None)), Arc::clone(&audit));
    let me = Origin::in_process();
    for (name, alg, curve) in [
        ("h-ed", "EdDSA", None),
        ("h-ed2", "EdDSA", None),
        ("h-es384", "ES384", Some(crate::crypto::Curve::P384)),
    ] {
        let size = KeySize {
            curve,
            ..KeySize::default()
        };
        service
            .create_key(&me, name, alg, size, false, &[])
            .await
            .unwrap();
    }
    Fixture { service, audit }
}

fn rs() -> Origin {
    Origin::new(Caller::tls("rs"))
}

fn jwk(s: &Service, key: &str) -> Value {
    let info = s.key(key).unwrap();
    let v = info.versions.first().unwrap();
    crate::jose::public_jwk(&v.public)
}

fn h(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

fn header<'a>(m: &'a SignedHttpMessage, name: &str) -> &'a str {
    m.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {:?}", m.headers))
}

/// Python `cryptography` checks the signature in `m`'s `Signature` field over the base sigild
/// reports, with the JOSE algorithm that makes the same signature.
fn python_verifies(m: &SignedHttpMessage, jwk: &Value) {
    use std::io::Write as _;
    let sig = header(m, "Signature");
    let sig = sig.split_once("=:").unwrap().1.strip_suffix(':').unwrap();
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig)
        .unwrap();
    let alg = m.alg.jose_alg().name();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/verifiers/jose_verify.py"
    );
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let req = json!({
        "op": "raw", "alg": alg, "jwk": jwk,
        "data_b64": crate::jose::b64(m.signature_base.as_bytes()),
        "sig_b64": crate::jose::b64(&sig),
    });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("python: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(v["ok"], json!(true), "python: {v}");
}

fn payment() -> HttpRequestInput {
    HttpRequestInput {
        method: "POST".into(),
        target_uri: "https://rs.example.com/payments?x=1".into(),
        headers: vec![
            h("Authorization", "DPoP at-value"),
            h("DPoP", "proof-value"),
            h("Content-Type", "application/json"),
            // The caller's own digest is never signed: sigild computes it from the body.
            h("Content-Digest", "sha-256=:AAAA:"),
        ],
        body: br#"{"amount": 10}"#.to_vec(),
        label: None,
    }
}

#[tokio::test]
async fn a_request_is_signed_as_fapi_2_requires() {
    let f = fixture().await;
    let kid = f.service.key("h-ed").unwrap().versions[0].kid.clone();
    let m = f
        .service
        .sign_http_request(&rs(), "h-ed", payment())
        .await
        .unwrap();
    assert_eq!(m.alg, crate::httpsig::Algorithm::Ed25519);
    assert_eq!(m.kid, kid);
    let names: Vec<&str> = m.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Content-Digest", "Signature-Input", "Signature"]);
    let digest = crate::httpsig::content_digest(br#"{"amount": 10}"#);
    assert_eq!(header(&m, "Content-Digest"), digest);
    let params = format!(
        "(\"@method\" \"@target-uri\" \"authorization\" \"dpop\" \"content-digest\");created={NOW};keyid=\"{kid}\";tag=\"fapi-2-request\""
    );
    assert_eq!(header(&m, "Signature-Input"), format!("sig={params}"));
    assert_eq!(
        m.signature_base,
        format!(
            "\"@method\": POST\n\"@target-uri\": https://rs.example.com/payments?x=1\n\"authorization\": DPoP at-value\n\"dpop\": proof-value\n\"content-digest\": {digest}\n\"@signature-params\": {params}"
        )
    );
    python_verifies(&m, &jwk(&f.service, "h-ed"));
    let record = f.audit.lines().pop().unwrap();
    assert!(
        record.contains("\"operation\":\"http-request\""),
        "{record}"
    );
    assert!(record.contains("\"alg\":\"ed25519\""), "{record}");
    for secret in ["at-value", "proof-value", "payments", "amount"] {
        assert!(!record.contains(secret), "{record}");
    }

    // Without a body, Authorization or DPoP: just the method and URI, no digest.
    let m = f
        .service
        .sign_http_request(
            &rs(),
            "h-ed2",
            HttpRequestInput {
                method: "GET".into(),
                target_uri: "https://rs.example.com/accounts".into(),
                label: Some("fapi".into()),
                ..HttpRequestInput::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(m.alg, crate::httpsig::Algorithm::Ed25519);
    assert_eq!(m.headers.len(), 2);
    assert!(
        header(&m, "Signature-Input")
            .starts_with("fapi=(\"@method\" \"@target-uri\");created=1700000000;keyid=")
    );
    assert!(header(&m, "Signature").starts_with("fapi=:"));
    python_verifies(&m, &jwk(&f.service, "h-ed2"));
}

#[tokio::test]
async fn a_response_is_bound_to_the_signed_request() {
    let f = fixture().await;
    let req = payment();
    let signed = f
        .service
        .sign_http_request(&rs(), "h-ed2", req.clone())
        .await
        .unwrap();
    let mut request_headers: Vec<(String, String)> = req
        .headers
        .into_iter()
        .filter(|(n, _)| n != "Content-Digest")
        .collect();
    request_headers.extend(signed.headers.iter().cloned());
    let input = HttpResponseInput {
        status: 200,
        headers: vec![h("Content-Type", "application/json")],
        body: br#"{"ok": true}"#.to_vec(),
        request_method: "POST".into(),
        request_target_uri: "https://rs.example.com/payments?x=1".into(),
        request_headers,
        request_label: None,
        label: None,
    };
    let m = f
        .service
        .sign_http_response(&rs(), "h-ed", input.clone())
        .await
        .unwrap();
    let kid = &m.kid;
    let si = header(&m, "Signature-Input");
    assert_eq!(
        si,
        format!(
            "sig=(\"@method\";req \"@target-uri\";req \"content-digest\";req \"signature\";req;key=\"sig\" \"signature-input\";req;key=\"sig\" \"@status\" \"content-digest\");created={NOW};keyid=\"{kid}\";tag=\"fapi-2-response\""
        )
    );
    let req_sig = header(&signed, "Signature").strip_prefix("sig=").unwrap();
    let req_si = header(&signed, "Signature-Input")
        .strip_prefix("sig=")
        .unwrap();
    assert!(m.signature_base.contains(&format!(
        "\"signature\";req;key=\"sig\": {req_sig}\n\"signature-input\";req;key=\"sig\": {req_si}\n\"@status\": 200\n"
    )));
    python_verifies(&m, &jwk(&f.service, "h-ed"));

    // A request without a signature cannot be answered with a bound one.
    let mut unsigned = input.clone();
    unsigned
        .request_headers
        .retain(|(n, _)| n != "Signature" && n != "Signature-Input");
    let e = f
        .service
        .sign_http_response(&rs(), "h-ed", unsigned)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("Signature-Input"), "{}", e.message());
    // Nor one whose named signature is not there.
    let mut other = input;
    other.request_label = Some("other".into());
    let e = f
        .service
        .sign_http_response(&rs(), "h-ed", other)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[tokio::test]
async fn refusals_say_what_to_fix_without_echoing_values() {
    let f = fixture().await;
    // P-384 makes no FAPI HTTP signature.
    let e = f
        .service
        .sign_http_request(&rs(), "h-es384", payment())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    assert!(e.message().contains("P-384"), "{}", e.message());

    // A target URI outside the caller's prefixes.
    let mut evil = payment();
    evil.target_uri = "https://rs.example.com.evil/payments".into();
    let e = f
        .service
        .sign_http_request(&rs(), "h-ed", evil)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{}", e.message());

    // A caller with no HTTP signing rights.
    let e = f
        .service
        .sign_http_request(&Origin::new(Caller::tls("other")), "h-ed", payment())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);

    // Malformed parts.
    for (what, input) in [
        ("smuggled line", {
            let mut i = payment();
            i.headers
                .push(h("Authorization", "Bearer secret-token\r\nX-Evil: 1"));
            i
        }),
        ("relative URI", {
            let mut i = payment();
            i.target_uri = "/payments?token=secret-token".into();
            i
        }),
        ("bad method", {
            let mut i = payment();
            i.method = "PO ST".into();
            i
        }),
        ("bad label", {
            let mut i = payment();
            i.label = Some("Secret-Token".into());
            i
        }),
    ] {
        let e = f
            .service
            .sign_http_request(&rs(), "h-ed", input)
            .await
            .unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::InvalidArgument,
            "{what}: {}",
            e.message()
        );
        assert!(
            !e.message().contains("secret-token"),
            "{what}: {}",
            e.message()
        );
    }
    let e = f
        .service
        .sign_http_response(
            &rs(),
            "h-ed",
            HttpResponseInput {
                status: 1000,
                ..HttpResponseInput::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn debug_of_inputs_hides_field_values_uri_and_body() {
    let r = HttpRequestInput {
        method: "POST".into(),
        target_uri: "https://rs.example/pay?access_token=query-secret".into(),
        headers: vec![("Authorization".into(), "DPoP bearer-secret".into())],
        body: b"body-secret".to_vec(),
        label: None,
    };
    let s = HttpResponseInput {
        status: 200,
        headers: vec![("Set-Cookie".into(), "cookie-secret".into())],
        body: b"body-secret".to_vec(),
        request_method: "POST".into(),
        request_target_uri: "https://rs.example/?code=query-secret".into(),
        request_headers: vec![("DPoP".into(), "proof-secret".into())],
        request_label: None,
        label: None,
    };
    for d in [format!("{r:?}"), format!("{s:?}")] {
        assert!(!d.contains("secret"), "{d}");
    }
    assert!(format!("{r:?}").contains("Authorization"));
}

#[test]
fn caller_digests_are_replaced_and_labels_checked() -> Result<(), HttpSigError> {
    let headers = vec![
        ("Content-Digest".to_owned(), "sha-256=:AAAA:".to_owned()),
        ("Content-Type".to_owned(), "text/plain".to_owned()),
    ];
    let (fields, digest) = fields_with_digest(&headers, b"hello")?;
    let want = httpsig::content_digest(b"hello");
    assert_eq!(digest.as_deref(), Some(want.as_str()));
    assert_eq!(fields.combined("content-digest"), Some(want));
    let (fields, digest) = fields_with_digest(&headers, b"")?;
    assert_eq!(digest, None);
    assert!(!fields.contains("content-digest"));

    assert_eq!(new_label(None, &fields)?, "sig");
    assert_eq!(new_label(Some(""), &fields)?, "sig");
    assert!(new_label(Some("Not A Key"), &fields).is_err());
    let mut signed = Fields::new();
    signed.push("Signature-Input", "sig=(\"@method\");created=1")?;
    assert!(new_label(None, &signed).is_err());
    assert_eq!(new_label(Some("sig2"), &signed)?, "sig2");
    Ok(())
}
