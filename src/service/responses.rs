//! The signed responses of an authorization server through the service: JARM authorization
//! responses, RFC 9701 introspection responses and signed UserInfo responses.
//!
//! Each runs the path every profile runs: authorise the token type on the key → size limit →
//! resolve the key for that use → build the exact bytes with the pure [`crate::jose`] profile,
//! stamped with the service's clock → content check, rate limits, sign, verify, audit
//! ([`Service::sign_parts`]). Owns only the mapping from API inputs to those profiles and the
//! default lifetimes; the claim rules are the JOSE layer's, and nothing here logs or records a
//! response's values (the JARM code is a secret, UserInfo and introspection results are personal
//! data).

use std::fmt;

use super::{Error, Origin, Service, SignedJws, key_ref, or_default, parse_object};
use crate::jose::{self, TokenType};
use crate::policy::Operation;

/// A JARM response lives as long as this unless the caller asks otherwise: long enough for the
/// browser's redirect, short enough that a leaked response is soon useless.
pub const JARM_DEFAULT_LIFETIME: u64 = 60;

/// Inputs of a JARM authorization response, as the API receives them.
#[derive(Clone, Default)]
pub struct JarmInput {
    /// The authorization server's issuer identifier (`iss`).
    pub issuer: String,
    /// The client the response is for (`aud`).
    pub client_id: String,
    /// JSON object of the authorization response parameters (`code`, `state`, or `error` …).
    pub response_json: String,
    /// Seconds; 0 = [`JARM_DEFAULT_LIFETIME`], at most [`jose::JARM_MAX_LIFETIME`].
    pub lifetime: u64,
}

impl fmt::Debug for JarmInput {
    // Hand-written: the response carries the authorization code.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JarmInput")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "response_json",
                &format_args!("<{} bytes>", self.response_json.len()),
            )
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// Inputs of an RFC 9701 introspection response, as the API receives them.
#[derive(Clone, Default)]
pub struct IntrospectionInput {
    /// The authorization server's issuer identifier (`iss`).
    pub issuer: String,
    /// The resource server that asked (`aud`).
    pub audience: String,
    /// JSON object of the RFC 7662 introspection result, nested under `token_introspection`.
    pub introspection_json: String,
}

impl fmt::Debug for IntrospectionInput {
    // Hand-written: the result names the token's subject and may hold personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionInput")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field(
                "introspection_json",
                &format_args!("<{} bytes>", self.introspection_json.len()),
            )
            .finish()
    }
}

/// Inputs of a signed UserInfo response, as the API receives them.
#[derive(Clone, Default)]
pub struct UserinfoInput {
    /// The OP's issuer identifier (`iss`).
    pub issuer: String,
    /// The client's `client_id` (`aud`).
    pub audience: String,
    /// JSON object of the UserInfo claims, with `sub`.
    pub claims_json: String,
}

impl fmt::Debug for UserinfoInput {
    // Hand-written: UserInfo claims are personal data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserinfoInput")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field(
                "claims_json",
                &format_args!("<{} bytes>", self.claims_json.len()),
            )
            .finish()
    }
}

impl Service {
    /// A JWT-secured authorization response (JARM), signed with `key`'s active version.
    ///
    /// # Errors
    /// PermissionDenied without `jarm` on the key; InvalidArgument for malformed, reserved or
    /// contradicting parameters and lifetimes outside 1..=600 s; key and device errors.
    pub async fn sign_jarm(
        &self,
        origin: &Origin,
        key: &str,
        input: JarmInput,
    ) -> Result<SignedJws, Error> {
        let op = Operation::Sign(TokenType::Jarm);
        self.run(origin, op, "jarm", key, async |call| {
            self.authorize(call)?;
            self.check_size("response", input.response_json.len())?;
            let (version, alg) = self.resolve(call, key, None)?;
            let req = jose::JarmRequest {
                issuer: input.issuer,
                client_id: input.client_id,
                response: parse_object("response_json", &input.response_json)?,
                now: self.clock.now(),
                lifetime: or_default(input.lifetime, JARM_DEFAULT_LIFETIME),
            };
            let parts = jose::jarm_response(key_ref(&version, alg), &req)?;
            self.sign_parts(call, &version, parts).await
        })
        .await
    }

    /// A JWT introspection response (RFC 9701), `typ: token-introspection+jwt`.
    ///
    /// # Errors
    /// PermissionDenied without `introspection` on the key; InvalidArgument for a result
    /// without a boolean `active`, an already nested one, or mistyped RFC 7662 members; key
    /// and device errors.
    pub async fn sign_introspection(
        &self,
        origin: &Origin,
        key: &str,
        input: IntrospectionInput,
    ) -> Result<SignedJws, Error> {
        let op = Operation::Sign(TokenType::Introspection);
        self.run(origin, op, "introspection", key, async |call| {
            self.authorize(call)?;
            self.check_size("introspection result", input.introspection_json.len())?;
            let (version, alg) = self.resolve(call, key, None)?;
            let req = jose::IntrospectionRequest {
                issuer: input.issuer,
                audience: input.audience,
                result: parse_object("introspection_json", &input.introspection_json)?,
                now: self.clock.now(),
            };
            let parts = jose::introspection_response(key_ref(&version, alg), &req)?;
            self.sign_parts(call, &version, parts).await
        })
        .await
    }

    /// A signed UserInfo response (OIDC Core §5.3.2).
    ///
    /// # Errors
    /// PermissionDenied without `userinfo` on the key; InvalidArgument for claims without
    /// `sub`, with `iat`, `exp`, `nbf` or `nonce`, or with a contradicting `iss`/`aud`; key and
    /// device errors.
    pub async fn sign_userinfo(
        &self,
        origin: &Origin,
        key: &str,
        input: UserinfoInput,
    ) -> Result<SignedJws, Error> {
        let op = Operation::Sign(TokenType::Userinfo);
        self.run(origin, op, "userinfo", key, async |call| {
            self.authorize(call)?;
            self.check_size("claims", input.claims_json.len())?;
            let (version, alg) = self.resolve(call, key, None)?;
            let req = jose::UserinfoRequest {
                issuer: input.issuer,
                audience: input.audience,
                claims: parse_object("claims_json", &input.claims_json)?,
                now: self.clock.now(),
            };
            let parts = jose::userinfo_response(key_ref(&version, alg), &req)?;
            self.sign_parts(call, &version, parts).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_inputs_hides_codes_and_personal_data() {
        let jarm = JarmInput {
            issuer: "https://as.example".into(),
            client_id: "client-1".into(),
            response_json: r#"{"code":"code-secret-value"}"#.into(),
            lifetime: 0,
        };
        let intro = IntrospectionInput {
            issuer: "https://as.example".into(),
            audience: "https://rs.example".into(),
            introspection_json: r#"{"active":true,"sub":"alice-the-subject"}"#.into(),
        };
        let info = UserinfoInput {
            issuer: "https://as.example".into(),
            audience: "client-1".into(),
            claims_json: r#"{"sub":"alice-the-subject"}"#.into(),
        };
        for text in [
            format!("{jarm:?}"),
            format!("{intro:?}"),
            format!("{info:?}"),
        ] {
            assert!(text.contains("bytes>"), "{text}");
            for secret in ["code-secret-value", "alice-the-subject"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
    }
}
