//! RFC 9421 HTTP message signatures for applications that send FAPI 2.0 resource requests:
//! [`Client::sign_http_request`] signs an outgoing [`http::Request`] through sigild's
//! `SignHttpRequest` (sigild builds the signature base and stamps `created` itself; this adds
//! the `Content-Digest`, `Signature-Input` and `Signature` fields it returns), and
//! [`verify_http_response`] checks a resource server's signed response with its public JWK: the
//! signature (with [`crate::httpsig::verify`]), the FAPI 2.0 coverage (the status, the body's
//! digest, and the request it answers bound with `;req` components, its own signature among
//! them), the body against its digest, and the signature's age.
//!
//! Works with any `http` 1.x stack (reqwest converts an `http::Request`, hyper takes one): the
//! body is anything that is bytes (`Vec<u8>`, `Bytes`, `String`). It may depend on the pure
//! [`crate::httpsig`] module and the generated [`crate::api::pb`] types; it never touches a
//! backend, the service or policy. Field values (Authorization, DPoP) go to sigild only, and
//! never into an error or a log line.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::{Client, ClientError, Result};
use crate::api::pb;
use crate::httpsig::{self, Component, Fields, HttpSigError, Message};

/// How far in the future a response's `created` may lie (clock skew between the resource
/// server and this host).
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// A response signature [`verify_http_response`] accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedResponse {
    /// The label the signature was found under.
    pub label: String,
    /// Its `keyid` parameter, if any (a kid of the resource server's JWKS).
    pub keyid: Option<String>,
    /// Its `created` parameter (seconds since the Unix epoch).
    pub created: i64,
    /// The RFC 9421 algorithm that verified it.
    pub alg: httpsig::Algorithm,
}

/// The fields of an `http` message as RFC 9421 reads them: every field line, in order.
///
/// # Errors
/// [`ClientError::Unsupported`] for a value that is not visible ASCII (RFC 9421 signs text);
/// [`ClientError::HttpSignature`] for a field sigild could not sign either.
fn fields_of(headers: &http::HeaderMap) -> Result<Fields> {
    let mut fields = Fields::new();
    for (name, value) in headers {
        let value = value.to_str().map_err(|_| {
            ClientError::Unsupported(format!(
                "HTTP field {name}: the value is not visible ASCII text, which RFC 9421 signs"
            ))
        })?;
        fields.push(name.as_str(), value)?;
    }
    Ok(fields)
}

/// An `http` request as RFC 9421 reads it (its URI must be absolute, as a client sends it).
fn request_of<B>(request: &http::Request<B>) -> Result<httpsig::Request> {
    Ok(httpsig::Request::new(
        request.method().as_str(),
        &request.uri().to_string(),
        fields_of(request.headers())?,
    )?)
}

impl Client {
    /// Sign `request` with `key` for a FAPI 2.0 resource server: sigild covers `@method`,
    /// `@target-uri`, `Authorization` and `DPoP` when present, and the body's
    /// `Content-Digest` when there is a body, with `created` from its own clock, `keyid` and
    /// `tag="fapi-2-request"`. The fields sigild returns (`Content-Digest` when there is a body,
    /// `Signature-Input`, `Signature`) are appended to `request`, which is then ready to send;
    /// the answer is returned too (kid, algorithm, the signature base for debugging).
    ///
    /// Sign last: the method, URI, covered fields and body must not change afterwards. The URI
    /// must be absolute (`https://rs.example.com/accounts`), as clients send it.
    ///
    /// # Errors
    /// [`ClientError::HttpSignature`] / [`ClientError::Unsupported`] for a request RFC 9421
    /// cannot sign (relative URI, a field value that is not ASCII text); the daemon's status
    /// ([`ClientError::Status`]: `PERMISSION_DENIED` for a target URI the caller's policy does
    /// not allow, `FAILED_PRECONDITION` for a key that cannot sign HTTP messages);
    /// [`ClientError::InvalidResponse`] if sigild returned a field `http` cannot carry.
    pub async fn sign_http_request<B: AsRef<[u8]>>(
        &self,
        key: &str,
        request: &mut http::Request<B>,
    ) -> Result<pb::SignHttpMessageResponse> {
        // Checked here first, so a request RFC 9421 cannot represent fails before any call.
        let checked = request_of(request)?;
        let headers = checked
            .fields
            .iter()
            .map(|(name, value)| pb::HttpField {
                name: name.to_owned(),
                value: value.to_owned(),
            })
            .collect();
        let answer = self
            .signing
            .clone()
            .sign_http_request(pb::SignHttpRequestRequest {
                key: key.to_owned(),
                method: checked.method().to_owned(),
                target_uri: checked.target_uri().to_owned(),
                headers,
                body: request.body().as_ref().to_vec(),
                label: String::new(),
            })
            .await?
            .into_inner();
        let mut add = Vec::with_capacity(answer.headers.len());
        for f in &answer.headers {
            let name = http::HeaderName::from_bytes(f.name.as_bytes())
                .map_err(|_| ClientError::InvalidResponse(format!("a field named {:?}", f.name)))?;
            let value = http::HeaderValue::from_str(&f.value).map_err(|_| {
                ClientError::InvalidResponse(format!("a {name} field value HTTP cannot carry"))
            })?;
            add.push((name, value));
        }
        let target = request.headers_mut();
        for (name, value) in add {
            target.append(name, value);
        }
        Ok(answer)
    }

    /// `SignHttpResponse`, for a resource server: sigild signs the response and binds the
    /// signed request it answers (`;req` components, the request's own signature among them);
    /// add the returned fields to the response.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code (`INVALID_ARGUMENT` for a request without
    /// the signature to bind).
    pub async fn sign_http_response(
        &self,
        req: pb::SignHttpResponseRequest,
    ) -> Result<pb::SignHttpMessageResponse> {
        Ok(self
            .signing
            .clone()
            .sign_http_response(req)
            .await?
            .into_inner())
    }
}

/// Verify the FAPI 2.0 response signature (`tag="fapi-2-response"`) of `response` with the
/// resource server's public `jwk`. `request` is the request it answers, exactly as it was sent
/// (signed by [`Client::sign_http_request`], its `Signature-Input` and `Signature` included).
///
/// Accepted only when the signature verifies and covers `@status`, the request's `@method`,
/// `@target-uri` (and `Content-Digest`, when it had one) and its signature
/// (`"signature";req;key=…`, `"signature-input";req;key=…`), plus the response's
/// `Content-Digest` when the response has a body, which must match it; and when `created` is
/// at most `max_age` old and not more than a minute ahead of this host's clock.
///
/// # Errors
/// [`ClientError::HttpSignature`] when a field is malformed, the signature does not verify, a
/// required component is not covered, or the body does not match its digest;
/// [`ClientError::ResponseSignature`] for no (or more than one) response signature, or one
/// without `created` or outside its time window.
pub fn verify_http_response<B: AsRef<[u8]>, C>(
    request: &http::Request<C>,
    response: &http::Response<B>,
    jwk: &Value,
    max_age: Duration,
) -> Result<VerifiedResponse> {
    let req = request_of(request)?;
    let resp = httpsig::Response::new(
        u32::from(response.status().as_u16()),
        fields_of(response.headers())?,
    )?;
    let tagged: Vec<String> = httpsig::signature_inputs(&resp.fields)?
        .into_iter()
        .filter(|(_, input)| input.tag_value() == Some(httpsig::FAPI_RESPONSE_TAG))
        .map(|(label, _)| label)
        .collect();
    let label = match tagged.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(ClientError::ResponseSignature(format!(
                "the response has no signature tagged {}",
                httpsig::FAPI_RESPONSE_TAG
            )));
        }
        _ => {
            return Err(ClientError::ResponseSignature(format!(
                "the response has {} signatures tagged {}",
                tagged.len(),
                httpsig::FAPI_RESPONSE_TAG
            )));
        }
    };
    let verified = httpsig::verify(
        Message::Response {
            response: &resp,
            request: Some(&req),
        },
        &label,
        jwk,
    )?;

    // What a FAPI 2.0 response signature must cover, stated here rather than taken from the
    // signature: the request's own signature is bound under its label.
    let request_label = httpsig::request_signature_label(&req.fields, None)?;
    let mut required = vec![
        Component::new("@status")?,
        Component::new("@method")?.req(),
        Component::new("@target-uri")?.req(),
        Component::new("signature")?.req().key(&request_label)?,
        Component::new("signature-input")?
            .req()
            .key(&request_label)?,
    ];
    if req.fields.contains("content-digest") {
        required.push(Component::new("content-digest")?.req());
    }
    let body = response.body().as_ref();
    if !body.is_empty() || resp.fields.contains("content-digest") {
        required.push(Component::new("content-digest")?);
        httpsig::check_content_digest(&resp.fields, body)?;
    }
    for c in &required {
        if !verified.input.covers(c) {
            return Err(HttpSigError::MissingComponent {
                component: c.serialize(),
            }
            .into());
        }
    }

    let created = verified.input.created_at().ok_or_else(|| {
        ClientError::ResponseSignature("the response signature has no created time".into())
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    if created > now.saturating_add(secs(MAX_CLOCK_SKEW)) {
        return Err(ClientError::ResponseSignature(
            "the response signature was created in the future".into(),
        ));
    }
    if now.saturating_sub(created) > secs(max_age) {
        return Err(ClientError::ResponseSignature(format!(
            "the response signature is older than {} s",
            max_age.as_secs()
        )));
    }
    Ok(VerifiedResponse {
        label,
        keyid: verified.input.key_id().map(str::to_owned),
        created,
        alg: verified.alg,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    use serde_json::json;

    use super::*;

    const URI: &str = "https://rs.example.com/payments";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn key() -> (Ed25519KeyPair, Value) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519",
                         "x": crate::jose::b64(pair.public_key().as_ref())});
        (pair, jwk)
    }

    /// Sign `input` over `msg` with `pair` and add the fields under `label`.
    fn add_signature(
        headers: &mut http::HeaderMap,
        msg: Message<'_>,
        input: &httpsig::SignatureInput,
        pair: &Ed25519KeyPair,
        label: &str,
    ) {
        let base = httpsig::signature_base(msg, input).unwrap();
        let sig = pair.sign(base.as_bytes());
        let (si, s) = httpsig::signature_fields(label, input, sig.as_ref()).unwrap();
        headers.append("signature-input", si.parse().unwrap());
        headers.append("signature", s.parse().unwrap());
    }

    /// A request signed by `pair` as a FAPI client signs it, with a body.
    fn signed_request(pair: &Ed25519KeyPair) -> http::Request<Vec<u8>> {
        let body = b"{\"amount\":\"1\"}".to_vec();
        let mut r = http::Request::builder()
            .method("POST")
            .uri(URI)
            .header("authorization", "Bearer abc")
            .header("content-digest", httpsig::content_digest(&body))
            .body(body)
            .unwrap();
        let req = request_of(&r).unwrap();
        let input = httpsig::fapi_request_input(&req, true, now(), "client").unwrap();
        add_signature(r.headers_mut(), Message::Request(&req), &input, pair, "sig");
        r
    }

    /// The response to `request`, signed by `pair` over `input(request, response)`.
    fn signed_response(
        pair: &Ed25519KeyPair,
        request: &http::Request<Vec<u8>>,
        body: &[u8],
        input: impl Fn(&httpsig::Request, &httpsig::Response) -> httpsig::SignatureInput,
    ) -> http::Response<Vec<u8>> {
        let mut r = http::Response::builder()
            .status(201)
            .header("content-digest", httpsig::content_digest(body))
            .body(body.to_vec())
            .unwrap();
        let req = request_of(request).unwrap();
        let resp = httpsig::Response::new(201, fields_of(r.headers()).unwrap()).unwrap();
        let input = input(&req, &resp);
        let msg = Message::Response {
            response: &resp,
            request: Some(&req),
        };
        add_signature(r.headers_mut(), msg, &input, pair, "sig");
        r
    }

    fn fapi(
        created: u64,
    ) -> impl Fn(&httpsig::Request, &httpsig::Response) -> httpsig::SignatureInput {
        move |req, resp| {
            httpsig::fapi_response_input(req, "sig", resp, true, created, "rs").unwrap()
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_fapi_response_signature_verifies() {
        let (client, _) = key();
        let (rs, rs_jwk) = key();
        let request = signed_request(&client);
        let response = signed_response(&rs, &request, b"{}", fapi(now()));
        let v = verify_http_response(&request, &response, &rs_jwk, MINUTE).unwrap();
        assert_eq!(v.label, "sig");
        assert_eq!(v.keyid.as_deref(), Some("rs"));
        assert_eq!(v.alg, httpsig::Algorithm::Ed25519);
    }

    #[test]
    fn what_a_fapi_response_signature_must_have_is_required() {
        let (client, _) = key();
        let (rs, rs_jwk) = key();
        let request = signed_request(&client);
        let refused = |response: &http::Response<Vec<u8>>, what: &str| {
            let r = verify_http_response(&request, response, &rs_jwk, MINUTE);
            assert!(r.is_err(), "{what}: accepted");
            r.unwrap_err().to_string()
        };

        // The response's body digest not covered.
        let no_digest = signed_response(&rs, &request, b"{}", |req, resp| {
            let mut components = fapi(now())(req, resp).components().to_vec();
            components.retain(|c| c.serialize() != "\"content-digest\"");
            httpsig::SignatureInput::new(components)
                .unwrap()
                .created(now())
                .tag(httpsig::FAPI_RESPONSE_TAG)
                .unwrap()
        });
        let msg = refused(&no_digest, "body digest not covered");
        assert!(msg.contains("\"content-digest\""), "{msg}");

        // The request's signature not bound.
        let unbound = signed_response(&rs, &request, b"{}", |req, resp| {
            let mut components = fapi(now())(req, resp).components().to_vec();
            components.retain(|c| !c.serialize().starts_with("\"signature\""));
            httpsig::SignatureInput::new(components)
                .unwrap()
                .created(now())
                .tag(httpsig::FAPI_RESPONSE_TAG)
                .unwrap()
        });
        let msg = refused(&unbound, "request signature not bound");
        assert!(msg.contains("\"signature\";req"), "{msg}");

        // Not tagged as a FAPI response signature.
        let untagged = signed_response(&rs, &request, b"{}", |req, resp| {
            httpsig::SignatureInput::new(fapi(now())(req, resp).components().to_vec())
                .unwrap()
                .created(now())
        });
        let msg = refused(&untagged, "untagged");
        assert!(msg.contains("fapi-2-response"), "{msg}");

        // Too old, from the future, no created.
        let old = signed_response(&rs, &request, b"{}", fapi(now() - 600));
        assert!(refused(&old, "old").contains("older than 60 s"));
        let ahead = signed_response(&rs, &request, b"{}", fapi(now() + 3600));
        assert!(refused(&ahead, "ahead").contains("future"));
        let timeless = signed_response(&rs, &request, b"{}", |req, resp| {
            httpsig::SignatureInput::new(fapi(now())(req, resp).components().to_vec())
                .unwrap()
                .tag(httpsig::FAPI_RESPONSE_TAG)
                .unwrap()
        });
        assert!(refused(&timeless, "no created").contains("created"));

        // A body that does not match its (covered) digest.
        let mut swapped = signed_response(&rs, &request, b"{}", fapi(now()));
        *swapped.body_mut() = b"[]".to_vec();
        refused(&swapped, "body swapped");
    }
}
