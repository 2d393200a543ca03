//! DPoP (RFC 9449) and certificate-binding helpers for clients: the `DPoP` header value for one
//! HTTP request, signed by sigild; the `use_dpop_nonce` retry; the key's RFC 7638 thumbprint for
//! `dpop_jkt`; and the RFC 8705 `x5t#S256` of a client certificate. No HTTP client is assumed:
//! the caller sends the request and tells [`Client::dpop_with_nonce_retry`] what came back.

use std::future::Future;

use super::{Client, ClientError};
use crate::api::pb;

/// The `jkt` of a public key: its RFC 7638 SHA-256 thumbprint, base64url (equal to sigild's
/// `kid`), for `dpop_jkt` in PAR and for checking `cnf.jkt` in tokens.
pub fn dpop_jkt(pk: &crate::crypto::PublicKey) -> String {
    crate::jose::dpop_jkt(pk)
}

/// The RFC 8705 `x5t#S256` of a certificate: base64url SHA-256 of its DER (not its PEM).
pub fn x5t_s256(cert_der: &[u8]) -> String {
    crate::jose::x5t_s256(cert_der)
}

/// One HTTP request that needs a DPoP proof.
#[derive(Debug, Clone, Copy)]
pub struct DpopRequest<'a> {
    /// The sigild key holding the DPoP key pair.
    pub key: &'a str,
    /// HTTP method (`POST`).
    pub method: &'a str,
    /// The request URL (query and fragment are dropped by sigild for `htu`).
    pub url: &'a str,
    /// The access token being presented (adds `ath`), if any.
    pub access_token: Option<&'a str>,
    /// The server's latest `DPoP-Nonce`, if it sent one.
    pub nonce: Option<&'a str>,
}

/// What the server said to a request carrying a DPoP proof.
#[derive(Debug)]
pub enum DpopOutcome<R> {
    /// Anything but a nonce challenge: handed back to the caller.
    Done(R),
    /// `use_dpop_nonce` with this `DPoP-Nonce`: the request is retried once with it.
    UseNonce(String),
}

/// Whether an HTTP response is a `use_dpop_nonce` challenge (RFC 9449 §8 and §9): a 400 from
/// an authorization server with error `use_dpop_nonce` in the JSON body, or a 401 from a
/// resource server with `error="use_dpop_nonce"` in `WWW-Authenticate`, either with a
/// `DPoP-Nonce` header. Returns the nonce to retry with.
pub fn use_dpop_nonce(
    status: u16,
    www_authenticate: Option<&str>,
    body: Option<&str>,
    dpop_nonce: Option<&str>,
) -> Option<String> {
    let nonce = dpop_nonce?.trim();
    if nonce.is_empty() {
        return None;
    }
    let challenged = match status {
        400 => body
            .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .is_some_and(|v| v["error"] == "use_dpop_nonce"),
        401 => www_authenticate.is_some_and(|w| {
            w.trim_start().starts_with("DPoP") && w.contains("error=\"use_dpop_nonce\"")
        }),
        _ => false,
    };
    challenged.then(|| nonce.to_owned())
}

impl Client {
    /// A fresh `private_key_jwt` client assertion (RFC 7523) for `client_id` at the
    /// authorization server `issuer` (the `aud`, one string as FAPI 2.0 requires), default
    /// lifetime. Assertions are single-use: make one per token request, retries included.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn client_assertion(
        &self,
        key: &str,
        client_id: &str,
        issuer: &str,
    ) -> Result<String, ClientError> {
        let r = self
            .sign_client_assertion(pb::SignClientAssertionRequest {
                key: key.into(),
                client_id: client_id.into(),
                audience: issuer.into(),
                lifetime_seconds: 0,
                explicit_typ: false,
                nbf: false,
            })
            .await?;
        Ok(r.compact)
    }

    /// A JAR request object (RFC 9101) carrying the authorization request `params`
    /// (`response_type`, `redirect_uri`, `scope`, `state`, `nonce`, `code_challenge`, …) for
    /// PAR at `issuer`; sigild adds `iss`, `aud`, `client_id`, `exp`, `nbf`, `iat`, `jti`.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn request_object(
        &self,
        key: &str,
        client_id: &str,
        issuer: &str,
        params: &serde_json::Value,
    ) -> Result<String, ClientError> {
        let r = self
            .sign_request_object(pb::SignRequestObjectRequest {
                key: key.into(),
                client_id: client_id.into(),
                audience: issuer.into(),
                claims_json: params.to_string(),
                lifetime_seconds: 0,
            })
            .await?;
        Ok(r.compact)
    }

    /// The `dpop_jkt` of a key: the RFC 7638 thumbprint of its active version's public key
    /// (for PAR's `dpop_jkt` parameter and to check `cnf.jkt` in tokens).
    ///
    /// # Errors
    /// See [`Client::active_public_key`].
    pub async fn dpop_jkt(&self, key: &str) -> Result<String, ClientError> {
        Ok(dpop_jkt(&self.active_public_key(key).await?))
    }

    /// The `DPoP` header value (a compact proof JWT) for one request.
    ///
    /// # Errors
    /// [`ClientError::Status`] with the daemon's code.
    pub async fn dpop_header(&self, req: &DpopRequest<'_>) -> Result<String, ClientError> {
        let r = self
            .sign_dpop_proof(pb::SignDpopProofRequest {
                key: req.key.into(),
                htm: req.method.into(),
                htu: req.url.into(),
                access_token: req.access_token.unwrap_or_default().into(),
                nonce: req.nonce.unwrap_or_default().into(),
            })
            .await?;
        Ok(r.compact)
    }

    /// Send a request with a fresh DPoP proof; when the server answers `use_dpop_nonce`,
    /// send it once more with a new proof carrying the nonce. `send` gets the `DPoP` header
    /// value and reports the outcome (see [`use_dpop_nonce`] to recognise the challenge).
    /// Returns the final outcome and the nonce to use next time, if the server sent one.
    ///
    /// # Errors
    /// Signing failures; `send`'s own errors, converted; a second nonce challenge in a row
    /// is returned as [`ClientError::InvalidResponse`].
    pub async fn dpop_with_nonce_retry<R, E, F, Fut>(
        &self,
        req: &DpopRequest<'_>,
        mut send: F,
    ) -> Result<(R, Option<String>), E>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<DpopOutcome<R>, E>>,
        E: From<ClientError>,
    {
        let header = self.dpop_header(req).await?;
        let nonce = match send(header).await? {
            DpopOutcome::Done(r) => return Ok((r, req.nonce.map(str::to_owned))),
            DpopOutcome::UseNonce(n) => n,
        };
        let retry = DpopRequest {
            nonce: Some(&nonce),
            ..*req
        };
        let header = self.dpop_header(&retry).await?;
        match send(header).await? {
            DpopOutcome::Done(r) => Ok((r, Some(nonce))),
            DpopOutcome::UseNonce(_) => Err(ClientError::InvalidResponse(
                "the server asked for a DPoP nonce twice in a row".into(),
            )
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_challenges_are_recognised() {
        assert_eq!(
            use_dpop_nonce(
                400,
                None,
                Some(r#"{"error":"use_dpop_nonce","error_description":"x"}"#),
                Some("n-1")
            ),
            Some("n-1".into())
        );
        assert_eq!(
            use_dpop_nonce(
                401,
                Some(r#"DPoP error="use_dpop_nonce", error_description="x""#),
                None,
                Some("n-2")
            ),
            Some("n-2".into())
        );
        assert_eq!(
            use_dpop_nonce(400, None, Some(r#"{"error":"invalid_grant"}"#), Some("n")),
            None
        );
        assert_eq!(
            use_dpop_nonce(400, None, Some(r#"{"error":"use_dpop_nonce"}"#), None),
            None
        );
    }
}
