//! RFC 9421 HTTP message signatures through the service (FAPI 2.0 request and response
//! signing): authorise (`http-request` / `http-response` on the key) → resolve the key (its
//! binding included) → build the message and the FAPI signature input in [`crate::httpsig`]
//! with `created` from sigild's clock and `keyid` = the version's kid → content rules (the
//! target URI) and rate limits → sign the signature base like any other input → the fields to
//! add.
//!
//! The caller gives message parts, never a signature base, so it cannot get a signature over a
//! base it made up; `Content-Digest` is computed here from the body (a caller's own is
//! replaced). Owns no wire types and no RFC 9421 rules (those are `httpsig`'s); never logs or
//! records field values, the body or the target URI (Authorization and DPoP carry bearer
//! tokens).

use super::{Call, Error, Origin, Service, note_version};
use crate::httpsig::{self, Algorithm, Fields, HttpSigError, Message, SignatureInput};
use crate::jose::TokenType;
use crate::keyring::VersionInfo;
use crate::policy::{Claims, Operation};

/// An HTTP request to sign, as the API receives it.
#[derive(Clone, Default)]
pub struct HttpRequestInput {
    /// The method (`GET`, `POST`, …).
    pub method: String,
    /// The absolute target URI.
    pub target_uri: String,
    /// The request's fields (`name`, `value`), in order.
    pub headers: Vec<(String, String)>,
    /// The body; when non-empty, `Content-Digest` is computed and covered.
    pub body: Vec<u8>,
    /// The signature label; `None` = `sig`.
    pub label: Option<String>,
}

impl std::fmt::Debug for HttpRequestInput {
    /// Field names and sizes only: values carry bearer tokens, the URI may carry query secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRequestInput")
            .field("method", &self.method)
            .field("target_uri", &"<redacted>")
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .field("label", &self.label)
            .finish()
    }
}

/// An HTTP response to sign, and the signed request it answers, as the API receives them.
#[derive(Clone, Default)]
pub struct HttpResponseInput {
    /// The status code.
    pub status: u32,
    /// The response's fields (`name`, `value`), in order.
    pub headers: Vec<(String, String)>,
    /// The body; when non-empty, `Content-Digest` is computed and covered.
    pub body: Vec<u8>,
    /// The request's method.
    pub request_method: String,
    /// The request's target URI.
    pub request_target_uri: String,
    /// The request's fields as received, its `Signature-Input`, `Signature` and
    /// `Content-Digest` among them.
    pub request_headers: Vec<(String, String)>,
    /// The label of the request signature to bind; `None` = the one tagged `fapi-2-request`,
    /// or the only one.
    pub request_label: Option<String>,
    /// The signature label; `None` = `sig`.
    pub label: Option<String>,
}

impl std::fmt::Debug for HttpResponseInput {
    /// Field names and sizes only, as for [`HttpRequestInput`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpResponseInput")
            .field("status", &self.status)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .field("request_method", &self.request_method)
            .field("request_target_uri", &"<redacted>")
            .field(
                "request_headers",
                &self
                    .request_headers
                    .iter()
                    .map(|(n, _)| n)
                    .collect::<Vec<_>>(),
            )
            .field("request_label", &self.request_label)
            .field("label", &self.label)
            .finish()
    }
}

/// A signed HTTP message: the fields to add to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHttpMessage {
    /// `Content-Digest` (when there is a body), `Signature-Input`, `Signature`, in that order.
    pub headers: Vec<(String, String)>,
    /// The signature base that was signed (RFC 9421 §2.5).
    pub signature_base: String,
    /// kid of the version that signed (also the `keyid` parameter).
    pub kid: String,
    /// The RFC 9421 algorithm.
    pub alg: Algorithm,
    /// Version that signed.
    pub version: u32,
}

/// The message's fields with `Content-Digest` replaced by sigild's own (from `body`; none
/// without a body), and the digest field to hand back.
fn fields_with_digest(
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(Fields, Option<String>), HttpSigError> {
    let mut fields = Fields::new();
    for (name, value) in headers {
        fields.push(name, value)?;
    }
    fields.remove("content-digest");
    if body.is_empty() {
        return Ok((fields, None));
    }
    let digest = httpsig::content_digest(body);
    fields.push("Content-Digest", &digest)?;
    Ok((fields, Some(digest)))
}

/// A label for the new signature (`sig` when none), refused when the message already carries a
/// signature under it (the two would collide in the dictionary fields).
fn new_label(label: Option<&str>, fields: &Fields) -> Result<String, HttpSigError> {
    let label = label
        .filter(|l| !l.is_empty())
        .unwrap_or(httpsig::DEFAULT_LABEL);
    httpsig::signature_fields(label, &SignatureInput::new(Vec::new())?, &[])?;
    if fields.contains("signature-input")
        && httpsig::signature_inputs(fields)?
            .iter()
            .any(|(l, _)| l == label)
    {
        return Err(HttpSigError::InvalidLabel {
            label: format!("{label} (already used by a signature in the message)"),
        });
    }
    Ok(label.to_owned())
}

fn total_len(headers: &[(String, String)]) -> usize {
    headers.iter().map(|(n, v)| n.len() + v.len()).sum()
}

impl Service {
    /// An RFC 9421 signature over an HTTP request, as FAPI 2.0 signs resource requests:
    /// `@method`, `@target-uri`, `authorization` and `dpop` when present, `content-digest`
    /// when there is a body; `created` (sigild's clock), `keyid`, `tag="fapi-2-request"`.
    ///
    /// # Errors
    /// InvalidArgument for a malformed method, URI, field or label, or oversized input;
    /// FailedPrecondition for a key that cannot sign HTTP messages (P-384); policy, key and
    /// device errors.
    pub async fn sign_http_request(
        &self,
        origin: &Origin,
        key: &str,
        input: HttpRequestInput,
    ) -> Result<SignedHttpMessage, Error> {
        let op = Operation::Sign(TokenType::HttpRequest);
        self.run(origin, op, "http-request", key, async |call| {
            self.authorize(call)?;
            self.check_size(
                "HTTP fields and body",
                total_len(&input.headers) + input.body.len() + input.target_uri.len(),
            )?;
            let (fields, digest) = fields_with_digest(&input.headers, &input.body)?;
            let label = new_label(input.label.as_deref(), &fields)?;
            let request = httpsig::Request::new(&input.method, &input.target_uri, fields)?;
            let (version, _) = self.resolve(call, key, None)?;
            let alg = Algorithm::for_key(version.kind)?;
            let sig_input = httpsig::fapi_request_input(
                &request,
                !input.body.is_empty(),
                self.clock.now(),
                &version.kid,
            )?;
            let base = httpsig::signature_base(Message::Request(&request), &sig_input)?;
            let claims = Claims {
                target_uri: Some(request.target_uri().to_owned()),
                ..Claims::default()
            };
            self.sign_http(
                call, &version, alg, &claims, &label, &sig_input, base, digest,
            )
            .await
        })
        .await
    }

    /// An RFC 9421 signature over an HTTP response, bound to the signed request it answers,
    /// as FAPI 2.0 signs resource responses: `"@method";req`, `"@target-uri";req`,
    /// `"content-digest";req` when the request has one, the request signature's
    /// `"signature";req;key=…` and `"signature-input";req;key=…`, `@status`, and
    /// `content-digest` when there is a body; `created`, `keyid`, `tag="fapi-2-response"`.
    /// The request's target URI is what the caller's content rules check.
    ///
    /// # Errors
    /// As for [`Service::sign_http_request`]; InvalidArgument when the request has no
    /// signature to bind (or several and none named).
    pub async fn sign_http_response(
        &self,
        origin: &Origin,
        key: &str,
        input: HttpResponseInput,
    ) -> Result<SignedHttpMessage, Error> {
        let op = Operation::Sign(TokenType::HttpResponse);
        self.run(origin, op, "http-response", key, async |call| {
            self.authorize(call)?;
            self.check_size(
                "HTTP fields and body",
                total_len(&input.headers)
                    + input.body.len()
                    + total_len(&input.request_headers)
                    + input.request_target_uri.len(),
            )?;
            let (fields, digest) = fields_with_digest(&input.headers, &input.body)?;
            let label = new_label(input.label.as_deref(), &fields)?;
            let response = httpsig::Response::new(input.status, fields)?;
            let mut request_fields = Fields::new();
            for (name, value) in &input.request_headers {
                request_fields.push(name, value)?;
            }
            let request = httpsig::Request::new(
                &input.request_method,
                &input.request_target_uri,
                request_fields,
            )?;
            let request_label =
                httpsig::request_signature_label(&request.fields, input.request_label.as_deref())?;
            let (version, _) = self.resolve(call, key, None)?;
            let alg = Algorithm::for_key(version.kind)?;
            let sig_input = httpsig::fapi_response_input(
                &request,
                &request_label,
                &response,
                !input.body.is_empty(),
                self.clock.now(),
                &version.kid,
            )?;
            let msg = Message::Response {
                response: &response,
                request: Some(&request),
            };
            let base = httpsig::signature_base(msg, &sig_input)?;
            let claims = Claims {
                target_uri: Some(request.target_uri().to_owned()),
                ..Claims::default()
            };
            self.sign_http(
                call, &version, alg, &claims, &label, &sig_input, base, digest,
            )
            .await
        })
        .await
    }

    /// The common tail: content rules and rate limits, the device signature over `base`
    /// (checked and verified like every signature), the fields to add.
    #[allow(clippy::too_many_arguments)] // one private tail shared by the two RPCs
    async fn sign_http(
        &self,
        call: &mut Call,
        version: &VersionInfo,
        alg: Algorithm,
        claims: &Claims,
        label: &str,
        sig_input: &SignatureInput,
        base: String,
        digest: Option<String>,
    ) -> Result<SignedHttpMessage, Error> {
        note_version(call, version, alg.jose_alg());
        call.record.alg = Some(alg.name().to_owned());
        self.authorize_content(call, &Some(claims.clone()))?;
        let sig = self
            .sign_input(
                version,
                alg.jose_alg(),
                base.as_bytes(),
                &call.record.request_id,
                call.deadline,
            )
            .await?;
        let (signature_input, signature) = httpsig::signature_fields(label, sig_input, &sig)?;
        let mut headers = Vec::with_capacity(3);
        if let Some(d) = digest {
            headers.push(("Content-Digest".to_owned(), d));
        }
        headers.push(("Signature-Input".to_owned(), signature_input));
        headers.push(("Signature".to_owned(), signature));
        Ok(SignedHttpMessage {
            headers,
            signature_base: base,
            kid: version.kid.clone(),
            alg,
            version: version.version,
        })
    }
}

#[cfg(test)]
#[path = "httpsig_tests.rs"]
mod tests;
