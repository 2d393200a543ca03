//! The service side of the tokens an authorization server issues beyond the ID token — RFC 9068
//! JWT access tokens, back-channel logout tokens — and of the client's CIBA signed
//! authentication request.
//!
//! It owns turning the API's inputs into the pure profiles' requests ([`crate::jose`]): the
//! clock (`iat`, `exp`, `nbf`), fresh `jti` values, default lifetimes, and the sender
//! constraint of an access token, for which it checks that a client certificate is one DER
//! X.509 certificate before its hash is bound. Every request runs through the same
//! authorisation, key resolution, signing and audit path as the other profiles
//! ([`Service::run`], [`Service::resolve`], [`Service::sign_parts`]); this module must never
//! sign by another path, nor put the caller's claims, hints or certificates into a log.

use serde_json::{Map, Value};
use x509_cert::der::Decode as _;

use super::{Error, Origin, Service, SignedJws, key_ref, new_jti, or_default, parse_object};
use crate::jose::{self, TokenType};
use crate::policy::Operation;

/// Default access token lifetime, seconds.
const ACCESS_TOKEN_LIFETIME: u64 = 300;
/// Default logout token lifetime, seconds (the OP posts it at once).
const LOGOUT_LIFETIME: u64 = 120;
/// Default CIBA request lifetime, seconds.
const CIBA_LIFETIME: u64 = 300;

/// Inputs of an RFC 9068 JWT access token, as the API receives them.
#[derive(Clone, Default)]
pub struct AccessTokenInput {
    /// The authorization server's issuer identifier (`iss`).
    pub issuer: String,
    /// The resource servers (`aud`): one or more.
    pub audience: Vec<String>,
    /// The resource owner or client (`sub`).
    pub subject: String,
    /// The client the token is issued to (`client_id`).
    pub client_id: String,
    /// Space-separated scopes; empty: no `scope` claim.
    pub scope: String,
    /// JSON object of further claims; empty: none.
    pub claims_json: String,
    /// Seconds; 0 = 300.
    pub lifetime: u64,
    /// The DPoP public key (JWK JSON) to bind the token to; empty: none.
    pub dpop_jwk_json: String,
    /// The DPoP key's RFC 7638 thumbprint to bind the token to; empty: none.
    pub dpop_jkt: String,
    /// The client's mTLS certificate (DER) to bind the token to; empty: none.
    pub client_certificate: Vec<u8>,
}

impl std::fmt::Debug for AccessTokenInput {
    // Hand-written: the subject and claims may be personal data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokenInput")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("subject", &"<redacted>")
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field(
                "claims_json",
                &format_args!("<{} bytes>", self.claims_json.len()),
            )
            .field("lifetime", &self.lifetime)
            .field("dpop_jwk_json", &!self.dpop_jwk_json.is_empty())
            .field("dpop_jkt", &self.dpop_jkt)
            .field(
                "client_certificate",
                &format_args!("<{} bytes>", self.client_certificate.len()),
            )
            .finish()
    }
}

/// Inputs of a back-channel logout token.
#[derive(Clone, Default)]
pub struct LogoutTokenInput {
    /// The OP's issuer identifier (`iss`).
    pub issuer: String,
    /// The relying party's client_id (`aud`).
    pub audience: String,
    /// The user (`sub`); empty: none. At least one of `subject` and `sid`.
    pub subject: String,
    /// The session (`sid`); empty: none.
    pub sid: String,
    /// JSON object of further claims; empty: none.
    pub claims_json: String,
    /// Seconds; 0 = 120.
    pub lifetime: u64,
}

impl std::fmt::Debug for LogoutTokenInput {
    // Hand-written: the subject is personal data, the sid names a live session.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogoutTokenInput")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field(
                "subject",
                &(!self.subject.is_empty()).then_some("<redacted>"),
            )
            .field("sid", &(!self.sid.is_empty()).then_some("<redacted>"))
            .field(
                "claims_json",
                &format_args!("<{} bytes>", self.claims_json.len()),
            )
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// Inputs of a CIBA signed authentication request.
#[derive(Clone, Default)]
pub struct CibaRequestInput {
    /// The client (`iss`).
    pub client_id: String,
    /// The OP's issuer identifier (`aud`).
    pub audience: String,
    /// JSON object of the authentication request parameters.
    pub claims_json: String,
    /// Seconds; 0 = 300.
    pub lifetime: u64,
}

impl std::fmt::Debug for CibaRequestInput {
    // Hand-written: hints identify the user; client_notification_token is a bearer token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CibaRequestInput")
            .field("client_id", &self.client_id)
            .field("audience", &self.audience)
            .field(
                "claims_json",
                &format_args!("<{} bytes>", self.claims_json.len()),
            )
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// The further claims of a request: an empty text means none.
fn further_claims(json: &str) -> Result<Map<String, Value>, Error> {
    if json.trim().is_empty() {
        Ok(Map::new())
    } else {
        parse_object("claims_json", json)
    }
}

/// `Some(s)` for a non-empty text (proto3's "not set" is empty).
fn given(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// The access token's sender constraint from the API's three optional inputs.
fn confirmation(input: &AccessTokenInput) -> Result<Option<jose::Confirmation>, Error> {
    let jwk = if input.dpop_jwk_json.is_empty() {
        None
    } else {
        match serde_json::from_str::<Value>(&input.dpop_jwk_json) {
            Ok(v @ Value::Object(_)) => Some(v),
            Ok(_) => {
                return Err(Error::NotAnObject {
                    field: "dpop_jwk_json",
                });
            }
            Err(e) => {
                return Err(Error::InvalidJson {
                    field: "dpop_jwk_json",
                    line: e.line(),
                    column: e.column(),
                });
            }
        }
    };
    let cert =
        (!input.client_certificate.is_empty()).then_some(input.client_certificate.as_slice());
    if let Some(der) = cert
        && x509_cert::Certificate::from_der(der).is_err()
    {
        return Err(jose::JoseError::InvalidClaim {
            claim: "client_certificate",
            reason: "must be one X.509 certificate in DER (not PEM)",
        }
        .into());
    }
    let jkt = (!input.dpop_jkt.is_empty()).then_some(input.dpop_jkt.as_str());
    Ok(jose::Confirmation::from_inputs(jwk.as_ref(), jkt, cert)?)
}

impl Service {
    /// An RFC 9068 JWT access token (`typ: at+jwt`), sender-constrained with `cnf.jkt` or
    /// `cnf.x5t#S256` when a DPoP key or a client certificate is given.
    ///
    /// # Errors
    /// InvalidArgument for missing or conflicting claims, a bad JWK, jkt or certificate, or
    /// two sender constraints; key and device errors.
    pub async fn sign_access_token(
        &self,
        origin: &Origin,
        key: &str,
        input: AccessTokenInput,
    ) -> Result<SignedJws, Error> {
        let op = Operation::Sign(TokenType::AccessToken);
        self.run(origin, op, "access-token", key, async |call| {
            self.authorize(call)?;
            self.check_size(
                "claims, JWK and certificate",
                input.claims_json.len()
                    + input.dpop_jwk_json.len()
                    + input.client_certificate.len(),
            )?;
            let (version, alg) = self.resolve(call, key, None)?;
            let confirmation = confirmation(&input)?;
            let req = jose::AccessTokenRequest {
                claims: further_claims(&input.claims_json)?,
                issuer: input.issuer,
                audience: input.audience,
                subject: input.subject,
                client_id: input.client_id,
                scope: given(input.scope),
                now: self.clock.now(),
                lifetime: or_default(input.lifetime, ACCESS_TOKEN_LIFETIME),
                jti: new_jti()?,
                confirmation,
            };
            let parts = jose::access_token(key_ref(&version, alg), &req)?;
            self.sign_parts(call, &version, parts).await
        })
        .await
    }

    /// An OpenID Connect back-channel logout token (`typ: logout+jwt`).
    ///
    /// # Errors
    /// InvalidArgument for a `nonce`, neither `sub` nor `sid`, or conflicting claims; key and
    /// device errors.
    pub async fn sign_logout_token(
        &self,
        origin: &Origin,
        key: &str,
        input: LogoutTokenInput,
    ) -> Result<SignedJws, Error> {
        let op = Operation::Sign(TokenType::Logout);
        self.run(origin, op, "logout", key, async |call| {
            self.authorize(call)?;
            self.check_size("claims", input.claims_json.len())?;
            let (version, alg) = self.resolve(call, key, None)?;
            let req = jose::LogoutTokenRequest {
                claims: further_claims(&input.claims_json)?,
                issuer: input.issuer,
                audience: input.audience,
                subject: given(input.subject),
                sid: given(input.sid),
                now: self.clock.now(),
                lifetime: or_default(input.lifetime, LOGOUT_LIFETIME),
                jti: new_jti()?,
            };
            let parts = jose::logout_token(key_ref(&version, alg), &req)?;
            self.sign_parts(call, &version, parts).await
        })
        .await
    }

    /// A CIBA signed authentication request (CIBA Core §7.1.1), at most an hour long.
    ///
    /// # Errors
    /// InvalidArgument for missing scope or hint, reserved or conflicting claims, a lifetime
    /// over an hour; key and device errors.
    pub async fn sign_ciba_request(
        &self,
        origin: &Origin,
        key: &str,
        input: CibaRequestInput,
    ) -> Result<SignedJws, Error> {
        let op = Operation::Sign(TokenType::Ciba);
        self.run(origin, op, "ciba", key, async |call| {
            self.authorize(call)?;
            self.check_size("claims", input.claims_json.len())?;
            let (version, alg) = self.resolve(call, key, None)?;
            let req = jose::CibaRequest {
                client_id: input.client_id,
                audience: input.audience,
                claims: further_claims(&input.claims_json)?,
                now: self.clock.now(),
                lifetime: or_default(input.lifetime, CIBA_LIFETIME),
                jti: new_jti()?,
            };
            let parts = jose::ciba_request(key_ref(&version, alg), &req)?;
            self.sign_parts(call, &version, parts).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_inputs_hides_personal_data_and_tokens() {
        let at = AccessTokenInput {
            subject: "alice-248289761001".into(),
            claims_json: r#"{"email":"alice@example.com"}"#.into(),
            ..AccessTokenInput::default()
        };
        let logout = LogoutTokenInput {
            subject: "alice-248289761001".into(),
            sid: "08a5019c-17e1".into(),
            ..LogoutTokenInput::default()
        };
        let ciba = CibaRequestInput {
            claims_json:
                r#"{"login_hint":"alice@example.com","client_notification_token":"8d67dc78"}"#
                    .into(),
            ..CibaRequestInput::default()
        };
        for dbg in [
            format!("{at:?}"),
            format!("{logout:?}"),
            format!("{ciba:?}"),
        ] {
            for secret in ["alice", "08a5019c", "8d67dc78"] {
                assert!(!dbg.contains(secret), "{dbg}");
            }
        }
    }

    #[test]
    fn a_client_certificate_must_be_der() {
        let input = AccessTokenInput {
            client_certificate: b"-----BEGIN CERTIFICATE-----".to_vec(),
            ..AccessTokenInput::default()
        };
        assert!(matches!(
            confirmation(&input),
            Err(Error::Jose(jose::JoseError::InvalidClaim {
                claim: "client_certificate",
                ..
            }))
        ));
        let input = AccessTokenInput {
            dpop_jwk_json: "[1]".into(),
            ..AccessTokenInput::default()
        };
        assert!(matches!(
            confirmation(&input),
            Err(Error::NotAnObject { .. })
        ));
        assert!(matches!(
            confirmation(&AccessTokenInput::default()),
            Ok(None)
        ));
    }
}
