//! RFC 9421 HTTP message signatures made by sigild — through gRPC (`SignHttpRequest`,
//! `SignHttpResponse`), the CLI (`sigild sign http-request|http-response`) and the client
//! library (`Client::sign_http_request`) — verified by code sigild did not write: PyPI
//! `http-message-signatures` (tests/verifiers/httpsig_verify.py). For each algorithm sigild
//! signs HTTP messages with (`ecdsa-p256-sha256`, `ed25519`, `rsa-pss-sha512`): requests with
//! and without a body, with Authorization and DPoP; tampered method, target URI and body, and a
//! covered field taken away, all fail; the response's `;req` binding to the signed request it
//! answers verifies, and fails for another request signature. RFC 9421 Appendix B.2.6 is
//! reproduced byte for byte with the RFC's Ed25519 key imported into sigild.
//!
//! One daemon per test; every check of a test goes to the verifier in one batch.

mod support;

use base64::Engine as _;
use serde_json::{Value, json};
use sigild::api::pb;
use support::httpsig::*;
use support::*;

/// One key per algorithm: (name, JOSE alg it is created with, RFC 9421 algorithm).
const KEYS: [(&str, &str, &str); 3] = [
    ("p256", "ES256", "ecdsa-p256-sha256"),
    ("ed25519", "Ed25519", "ed25519"),
    ("rsa", "PS512", "rsa-pss-sha512"),
];

const REQUEST_TAG: &str = "fapi-2-request";
const RESPONSE_TAG: &str = "fapi-2-response";

/// An access token and DPoP proof as a FAPI client sends them (opaque to sigild).
const AUTHZ: &str = "DPoP Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
const DPOP: &str = "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2In0.eyJodG0iOiJQT1NUIn0.c2ln";

/// A resource request with a body, Authorization and DPoP, and one without a body.
fn resource_requests() -> [Req; 2] {
    [
        Req::new(
            "POST",
            "https://rs.example.com/payments?idempotency=42",
            lines(&[
                ("Authorization", AUTHZ),
                ("DPoP", DPOP),
                ("Content-Type", "application/json"),
            ]),
            Some(br#"{"amount":"10.00","currency":"EUR"}"#),
        ),
        Req::new(
            "GET",
            "https://rs.example.com/accounts",
            lines(&[("Authorization", "Bearer mF_9.B5f-4.1JqM")]),
            None,
        ),
    ]
}

/// Sign `req` with `key` through `SignHttpRequest`.
async fn sign_request(d: &Daemon, key: &str, req: &Req) -> TestResult<pb::SignHttpMessageResponse> {
    Ok(d.signer()
        .await?
        .sign_http_request(pb::SignHttpRequestRequest {
            key: key.into(),
            method: req.method.clone(),
            target_uri: req.url.clone(),
            headers: pb_fields(&req.headers),
            body: req.body.clone().unwrap_or_default(),
            label: String::new(),
        })
        .await?
        .into_inner())
}

/// The components a FAPI request signature of `req` must cover.
fn request_components(req: &Req) -> Vec<&'static str> {
    let mut c = vec!["@method", "@target-uri"];
    let has = |n: &str| req.headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n));
    if has("authorization") {
        c.push("authorization");
    }
    if has("dpop") {
        c.push("dpop");
    }
    if req.body.as_ref().is_some_and(|b| !b.is_empty()) {
        c.push("content-digest");
    }
    c
}

/// The components a FAPI response signature must cover when it answers a request signed
/// under the label `sig`, with and without a request body / response body.
fn response_components(request_body: bool, response_body: bool) -> Vec<&'static str> {
    let mut c = vec!["\"@method\";req", "\"@target-uri\";req"];
    if request_body {
        c.push("\"content-digest\";req");
    }
    c.extend([
        "\"signature\";req;key=\"sig\"",
        "\"signature-input\";req;key=\"sig\"",
        "@status",
    ]);
    if response_body {
        c.push("content-digest");
    }
    c
}

/// The `Signature` field of `req` with the first byte of its `sig` signature changed: still a
/// well-formed field, but another signature.
fn other_signature(req: &Req) -> TestResult<String> {
    let std_b64 = base64::engine::general_purpose::STANDARD;
    let (_, value) = req
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("signature"))
        .ok_or("no Signature field")?;
    let inner = value
        .strip_prefix("sig=:")
        .and_then(|v| v.strip_suffix(':'))
        .ok_or("Signature is not sig=:…:")?;
    let mut sig = std_b64.decode(inner)?;
    sig[0] ^= 0x01;
    Ok(format!("sig=:{}:", std_b64.encode(sig)))
}

/// One expected outcome of the batch: what is checked, and whether it must verify.
struct Expect {
    what: String,
    verifies: bool,
    /// For a signature that must verify: the base sigild says it signed, which must be the
    /// base the library verified, byte for byte.
    base: Option<String>,
}

fn assert_outcomes(expects: &[Expect], results: &[Result<Value, String>]) -> TestResult {
    let mut wrong = Vec::new();
    for (e, r) in expects.iter().zip(results) {
        match (e.verifies, r) {
            (true, Ok(v)) => {
                if let Some(base) = &e.base
                    && v["base"].as_str() != Some(base.as_str())
                {
                    wrong.push(format!(
                        "{}: sigild signed\n{base}\nthe library verified\n{}",
                        e.what, v["base"]
                    ));
                }
            }
            (true, Err(why)) => wrong.push(format!("{}: rejected: {why}", e.what)),
            (false, Ok(_)) => wrong.push(format!("{}: verified, must not", e.what)),
            (false, Err(_)) => {}
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("\n").into())
    }
}

#[tokio::test]
async fn requests_and_responses_of_every_algorithm_verify_with_http_message_signatures()
-> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let mut items = Vec::new();
    let mut expects = Vec::new();
    let mut expect = |item: Value, what: String, verifies: bool, base: Option<String>| {
        items.push(item);
        expects.push(Expect {
            what,
            verifies,
            base,
        });
    };
    for (key, jose_alg, alg) in KEYS {
        let created = d.create(key, jose_alg, 0).await?;
        let jwk = active_jwk(&created)?;
        for req in resource_requests() {
            let what = format!("{key} {} {}", req.method, req.url);
            let r = sign_request(&d, key, &req).await?;
            assert_eq!(r.alg, alg, "{what}");
            assert_eq!(json!(r.kid), jwk["kid"], "{what}");
            let returned = from_pb(&r.headers);
            let names: Vec<&str> = returned.iter().map(|(n, _)| n.as_str()).collect();
            let with_body = req.body.as_ref().is_some_and(|b| !b.is_empty());
            assert_eq!(
                names,
                if with_body {
                    vec!["Content-Digest", "Signature-Input", "Signature"]
                } else {
                    vec!["Signature-Input", "Signature"]
                },
                "{what}"
            );
            let signed = req.with(&returned);
            let require = request_components(&req);
            let ok = |m: &Req| check(m.json(), &jwk, alg, REQUEST_TAG, &require);
            expect(
                ok(&signed),
                what.clone(),
                true,
                Some(r.signature_base.clone()),
            );

            // Tampering: another method, another target URI, another body, a covered field
            // taken away — each must fail.
            let mut m = signed.clone();
            m.method = if req.method == "POST" { "PUT" } else { "POST" }.into();
            expect(ok(&m), format!("{what}: method changed"), false, None);
            let mut m = signed.clone();
            m.url = req.url.replace("rs.example.com/", "rs.example.com/other/");
            expect(ok(&m), format!("{what}: target URI changed"), false, None);
            let m = signed.without("authorization");
            expect(
                check(m.json(), &jwk, alg, REQUEST_TAG, &["@method"]),
                format!("{what}: Authorization taken away"),
                false,
                None,
            );
            if with_body {
                let mut m = signed.clone();
                m.body = Some(br#"{"amount":"99.00","currency":"EUR"}"#.to_vec());
                expect(ok(&m), format!("{what}: body changed"), false, None);
                let m = signed.without("dpop");
                expect(
                    check(m.json(), &jwk, alg, REQUEST_TAG, &["@method"]),
                    format!("{what}: DPoP taken away"),
                    false,
                    None,
                );
                let m = signed.replacing("dpop", "eyJ0eXAiOiJkcG9wK2p3dCJ9.e30.b3RoZXI");
                expect(ok(&m), format!("{what}: DPoP replaced"), false, None);
            }

            // The response to it, bound to its signature with `;req` components.
            for body in [Some(&br#"{"status":"accepted"}"#[..]), None] {
                let headers = lines(&[("Content-Type", "application/json")]);
                let resp = d
                    .signer()
                    .await?
                    .sign_http_response(pb::SignHttpResponseRequest {
                        key: key.into(),
                        status: 201,
                        headers: pb_fields(&headers),
                        body: body.unwrap_or_default().to_vec(),
                        request_method: signed.method.clone(),
                        request_target_uri: signed.url.clone(),
                        request_headers: pb_fields(&signed.headers),
                        request_label: String::new(),
                        label: String::new(),
                    })
                    .await?
                    .into_inner();
                let what = format!("{what} → 201 (body: {})", body.is_some());
                assert_eq!(resp.alg, alg, "{what}");
                let mut response = headers.clone();
                response.extend(from_pb(&resp.headers));
                let require = response_components(with_body, body.is_some());
                let ok = |status: u32, headers: &Lines, body: Option<&[u8]>, request: &Req| {
                    check(
                        response_json(status, headers, body, request),
                        &jwk,
                        alg,
                        RESPONSE_TAG,
                        &require,
                    )
                };
                expect(
                    ok(201, &response, body, &signed),
                    what.clone(),
                    true,
                    Some(resp.signature_base.clone()),
                );
                expect(
                    ok(200, &response, body, &signed),
                    format!("{what}: status changed"),
                    false,
                    None,
                );
                if body.is_some() {
                    expect(
                        ok(201, &response, Some(b"{\"status\":\"rejected\"}"), &signed),
                        format!("{what}: body changed"),
                        false,
                        None,
                    );
                }
                // The same response presented as the answer to another signature of the
                // request: the request's `Signature` with one byte changed.
                let other = signed.replacing("signature", &other_signature(&signed)?);
                expect(
                    ok(201, &response, body, &other),
                    format!("{what}: answers another request signature"),
                    false,
                    None,
                );
                let mut m = signed.clone();
                m.method = "DELETE".into();
                expect(
                    ok(201, &response, body, &m),
                    format!("{what}: request method changed"),
                    false,
                    None,
                );
            }
        }
    }
    let results = verify_all(items)?;
    assert_outcomes(&expects, &results)
}

/// `sigild sign http-request` and `sigild sign http-response` print the lines to add, which
/// `http-message-signatures` accepts.
#[tokio::test]
async fn cli_signatures_verify_with_http_message_signatures() -> TestResult {
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let key = d.create("cli", "ES256", 0).await?;
    let jwk = active_jwk(&key)?;
    let body = br#"{"amount":"10.00"}"#;
    let body_file = token.dir.path().join("body.json");
    std::fs::write(&body_file, body)?;
    let body_path = body_file.to_str().ok_or("path")?;
    let url = "https://rs.example.com/payments";
    let out = d.cli(
        &[
            "sign",
            "http-request",
            "--key",
            "cli",
            "--method",
            "POST",
            "--target-uri",
            url,
            "--header",
            &format!("Authorization: {AUTHZ}"),
            "--header",
            &format!("DPoP: {DPOP}"),
            "--header",
            "Content-Type: application/json",
            "--body-file",
            body_path,
        ],
        None,
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let added = parse_lines(&String::from_utf8(out.stdout)?)?;
    let names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Content-Digest", "Signature-Input", "Signature"]);
    let req = Req::new(
        "POST",
        url,
        lines(&[
            ("Authorization", AUTHZ),
            ("DPoP", DPOP),
            ("Content-Type", "application/json"),
        ]),
        Some(body),
    );
    let signed = req.with(&added);

    let mut args: Vec<String> = [
        "sign",
        "http-response",
        "--key",
        "cli",
        "--status",
        "200",
        "--header",
        "Content-Type: application/json",
        "--body-file",
        body_path,
        "--request-method",
        "POST",
        "--request-target-uri",
        url,
    ]
    .map(str::to_owned)
    .to_vec();
    for (n, v) in &signed.headers {
        args.push("--request-header".into());
        args.push(format!("{n}: {v}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = d.cli(&args, None)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut response = lines(&[("Content-Type", "application/json")]);
    response.extend(parse_lines(&String::from_utf8(out.stdout)?)?);

    let results = verify_all(vec![
        check(
            signed.json(),
            &jwk,
            "ecdsa-p256-sha256",
            REQUEST_TAG,
            &request_components(&req),
        ),
        check(
            response_json(200, &response, Some(body), &signed),
            &jwk,
            "ecdsa-p256-sha256",
            RESPONSE_TAG,
            &response_components(true, true),
        ),
    ])?;
    assert_outcomes(
        &[
            Expect {
                what: "CLI request".into(),
                verifies: true,
                base: None,
            },
            Expect {
                what: "CLI response".into(),
                verifies: true,
                base: None,
            },
        ],
        &results,
    )
}

/// The RFC 9421 B.1.4 test key `test-key-ed25519`, PKCS#8 as the RFC prints it.
const RFC9421_ED25519_PKCS8: &str =
    "MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF";
/// Its public key (B.1.4), base64url.
const RFC9421_ED25519_X: &str = "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs";

/// RFC 9421 B.2.6, the signature base as the RFC prints it.
const B26_BASE: &str = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\
\"@method\": POST\n\
\"@path\": /foo\n\
\"@authority\": example.com\n\
\"content-type\": application/json\n\
\"content-length\": 18\n\
\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"";
/// RFC 9421 B.2.6, the `Signature` field.
const B26_SIGNATURE: &str = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";
/// RFC 9421 B.2.6, the `Signature-Input` field.
const B26_SIGNATURE_INPUT: &str = "sig-b26=(\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"";

/// RFC 9421 Appendix B.2.6 (Ed25519, deterministic): the base built by sigild's RFC 9421 code
/// is the RFC's byte for byte (and the one `http-message-signatures` builds); signed with the
/// RFC's key imported into sigild (`SignRaw`), the signature is the RFC's; and sigild's own
/// verification accepts the RFC's signed message.
#[tokio::test]
async fn rfc9421_b26_reproduced_byte_for_byte() -> TestResult {
    use sigild::httpsig::{
        Component, Fields, Message, Request, SignatureInput, signature_base, signature_fields,
    };
    let std_b64 = base64::engine::general_purpose::STANDARD;

    // The B.2 test request's fields.
    let mut fields = Fields::new();
    for (n, v) in [
        ("Host", "example.com"),
        ("Date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("Content-Type", "application/json"),
        (
            "Content-Digest",
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
        ),
        ("Content-Length", "18"),
    ] {
        fields.push(n, v)?;
    }
    let url = "http://example.com/foo?param=Value&Pet=dog";
    let request = Request::new("POST", url, fields.clone())?;
    let components = [
        "date",
        "@method",
        "@path",
        "@authority",
        "content-type",
        "content-length",
    ]
    .iter()
    .map(|c| Component::new(c))
    .collect::<Result<Vec<_>, _>>()?;
    let input = SignatureInput::new(components)?
        .created(1_618_884_473)
        .keyid("test-key-ed25519")?;
    let base = signature_base(Message::Request(&request), &input)?;
    assert_eq!(base, B26_BASE);

    // The independent library builds the same base from the same message.
    let message = Req::new(
        "POST",
        url,
        fields
            .iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect(),
        None,
    );
    let theirs = library_base(
        message.json(),
        &[
            "date",
            "@method",
            "@path",
            "@authority",
            "content-type",
            "content-length",
        ],
        json!({"created": 1_618_884_473, "keyid": "test-key-ed25519"}),
    )?;
    assert_eq!(theirs, B26_BASE);

    // The RFC's key, imported; SignRaw over the base gives the RFC's signature (Ed25519 is
    // deterministic).
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let key = d
        .keys()
        .await?
        .import_key(pb::ImportKeyRequest {
            name: "test-key-ed25519".into(),
            alg: "Ed25519".into(),
            pkcs8_der: std_b64.decode(RFC9421_ED25519_PKCS8)?,
            fapi2: false,
            ..Default::default()
        })
        .await?
        .into_inner();
    let jwk = active_jwk(&key)?;
    assert_eq!(jwk["x"], RFC9421_ED25519_X);
    let raw = d
        .signer()
        .await?
        .sign_raw(pb::SignRawRequest {
            version: 0,
            key: "test-key-ed25519".into(),
            data: base.as_bytes().to_vec(),
            alg: String::new(),
        })
        .await?
        .into_inner();
    let expected = B26_SIGNATURE
        .strip_prefix("sig-b26=:")
        .and_then(|s| s.strip_suffix(':'))
        .ok_or("B.2.6 signature")?;
    assert_eq!(std_b64.encode(&raw.signature), expected);

    // Serialised as the RFC's fields, and verified by sigild's own verifier.
    let (sig_input, sig) = signature_fields("sig-b26", &input, &raw.signature)?;
    assert_eq!(sig_input, B26_SIGNATURE_INPUT);
    assert_eq!(sig, B26_SIGNATURE);
    let mut signed = fields.clone();
    signed.push("Signature-Input", B26_SIGNATURE_INPUT)?;
    signed.push("Signature", B26_SIGNATURE)?;
    let signed = Request::new("POST", url, signed)?;
    let v = sigild::httpsig::verify(Message::Request(&signed), "sig-b26", &jwk)?;
    assert_eq!(v.base, B26_BASE);
    Ok(())
}

/// The client library: `Client::sign_http_request` signs an `http::Request` (what reqwest and
/// hyper send) and `http-message-signatures` accepts it; `verify_http_response` accepts the
/// resource server's signed response bound to it, and refuses a changed status, a changed body,
/// the response presented for another request signature, a key that did not sign it, and a
/// signature older than allowed.
#[tokio::test]
async fn client_library_signs_requests_and_verifies_responses() -> TestResult {
    use sigild::client::{Client, ClientError, Connection, verify_http_response};
    use std::time::Duration;
    let token = Token::new()?;
    let d = Daemon::start(&token)?;
    let client_key = d.create("client", "PS512", 0).await?;
    let rs_key = d.create("rs", "ES256", 0).await?;
    let other = d.create("other", "ES256", 0).await?;
    let admin = d.client.clone().ok_or("tls")?;
    let client = Client::connect(&Connection::mtls(
        d.endpoint.clone(),
        &admin.ca,
        &admin.cert,
        &admin.key,
    ))
    .await?;

    let body = br#"{"amount":"10.00"}"#.to_vec();
    let mut request = http::Request::builder()
        .method("POST")
        .uri("https://rs.example.com/payments")
        .header("Authorization", AUTHZ)
        .header("DPoP", DPOP)
        .header("Content-Type", "application/json")
        .body(body.clone())?;
    let answer = client.sign_http_request("client", &mut request).await?;
    assert_eq!(answer.alg, "rsa-pss-sha512");
    for name in ["content-digest", "signature-input", "signature"] {
        assert_eq!(request.headers().get_all(name).iter().count(), 1, "{name}");
    }
    let header_lines = |h: &http::HeaderMap| -> TestResult<Lines> {
        h.iter()
            .map(|(n, v)| Ok((n.as_str().to_owned(), v.to_str()?.to_owned())))
            .collect()
    };
    let sent = Req::new(
        "POST",
        "https://rs.example.com/payments",
        header_lines(request.headers())?,
        Some(&body),
    );
    let base = answer.signature_base.clone();

    // The resource server's response, signed by sigild and bound to the request as sent.
    let resp_body = br#"{"id":"p-1","status":"accepted"}"#.to_vec();
    let signed = client
        .sign_http_response(pb::SignHttpResponseRequest {
            key: "rs".into(),
            status: 201,
            headers: pb_fields(&lines(&[("Content-Type", "application/json")])),
            body: resp_body.clone(),
            request_method: "POST".into(),
            request_target_uri: "https://rs.example.com/payments".into(),
            request_headers: pb_fields(&sent.headers),
            request_label: String::new(),
            label: String::new(),
        })
        .await?;
    let response = |status: u16, body: &[u8]| -> TestResult<http::Response<Vec<u8>>> {
        let mut b = http::Response::builder()
            .status(status)
            .header("Content-Type", "application/json");
        for f in &signed.headers {
            b = b.header(f.name.as_str(), f.value.as_str());
        }
        Ok(b.body(body.to_vec())?)
    };
    let rs_jwk = active_jwk(&rs_key)?;
    let ok = verify_http_response(
        &request,
        &response(201, &resp_body)?,
        &rs_jwk,
        Duration::from_secs(60),
    )?;
    assert_eq!(ok.keyid.as_deref(), rs_jwk["kid"].as_str());
    assert_eq!(ok.alg.name(), "ecdsa-p256-sha256");

    let refused = |r: Result<sigild::client::VerifiedResponse, ClientError>, what: &str| {
        assert!(r.is_err(), "{what}: accepted");
    };
    refused(
        verify_http_response(
            &request,
            &response(200, &resp_body)?,
            &rs_jwk,
            Duration::from_secs(60),
        ),
        "status changed",
    );
    refused(
        verify_http_response(
            &request,
            &response(201, b"{\"id\":\"p-1\",\"status\":\"rejected\"}")?,
            &rs_jwk,
            Duration::from_secs(60),
        ),
        "body changed",
    );
    refused(
        verify_http_response(
            &request,
            &response(201, &resp_body)?,
            &active_jwk(&other)?,
            Duration::from_secs(60),
        ),
        "another key",
    );
    let mut another = request.clone();
    another.headers_mut().insert(
        "signature",
        http::HeaderValue::from_str(&other_signature(&sent)?)?,
    );
    refused(
        verify_http_response(
            &another,
            &response(201, &resp_body)?,
            &rs_jwk,
            Duration::from_secs(60),
        ),
        "another request signature",
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    refused(
        verify_http_response(
            &request,
            &response(201, &resp_body)?,
            &rs_jwk,
            Duration::from_secs(1),
        ),
        "older than allowed",
    );

    // The independent library agrees on both.
    let results = verify_all(vec![
        check(
            sent.json(),
            &active_jwk(&client_key)?,
            "rsa-pss-sha512",
            REQUEST_TAG,
            &request_components(&sent),
        ),
        check(
            response_json(
                201,
                &header_lines(response(201, &resp_body)?.headers())?,
                Some(&resp_body),
                &sent,
            ),
            &rs_jwk,
            "ecdsa-p256-sha256",
            RESPONSE_TAG,
            &response_components(true, true),
        ),
    ])?;
    assert_outcomes(
        &[
            Expect {
                what: "client-library request".into(),
                verifies: true,
                base: Some(base),
            },
            Expect {
                what: "response to it".into(),
                verifies: true,
                base: Some(signed.signature_base.clone()),
            },
        ],
        &results,
    )
}
