//! The JOSE layer: everything sigild knows about JWS, JWK and the token profiles it signs.
//!
//! It owns the byte-exact JWS signing input and compact form, base64url, the algorithm table
//! (which operation a backend performs for each `alg` and what comes back), JWKs and RFC 7638
//! thumbprints (the kid), the generic header check for caller-built JWS, the profiles (ID token,
//! JAR request object, `private_key_jwt` client assertion, DPoP proof; RFC 9068 access token,
//! back-channel logout token, CIBA signed authentication request), the signed responses (JARM,
//! RFC 9701 introspection, UserInfo) and the FAPI 2.0 rules.
//!
//! It depends only on [`crate::crypto`] and on serde_json, base64 and sha2. It must never touch
//! I/O, a clock, randomness, a backend, gRPC or configuration: times (`now`) and `jti` values are
//! handed in by the service, which keeps every rule here deterministic and testable against RFC
//! vectors. Error messages are meant for API callers and never echo tokens, codes or payloads.

mod alg;
mod fapi;
mod header;
mod issued;
mod jwe;
mod jwk;
mod profiles;
mod responses;
mod token_type;
mod verify;

pub use alg::{Alg, KeyAlg};
pub use fapi::{check_alg, check_fapi2, check_key_alg};
pub use header::{JwsHeader, check_header, header_kid, header_typ};
pub use issued::{
    AccessTokenRequest, BACKCHANNEL_LOGOUT_EVENT, CibaRequest, Confirmation, LogoutTokenRequest,
    access_token, ciba_request, logout_token,
};
pub use jwe::{Jwe, JweAlg, JweEnc, JweError};
pub use jwk::{jwks, jwks_entry, public_jwk, public_key_from_jwk, thumbprint};
pub use profiles::{
    ClientAssertionRequest, DpopRequest, IdTokenRequest, JarRequest, JwsParts, KeyRef,
    client_assertion, dpop_jkt, dpop_proof, id_token, jar_request_object, x5t_s256,
};
pub use responses::{
    IntrospectionRequest, JARM_MAX_LIFETIME, JarmRequest, UserinfoRequest, introspection_response,
    jarm_response, userinfo_response,
};
pub use token_type::TokenType;
pub use verify::verify;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::crypto::KeyKind;

/// Everything that can be wrong with a JOSE request, phrased for the API caller.
///
/// Variants name the condition; the service maps them to gRPC `InvalidArgument` (the request is
/// malformed) or `FailedPrecondition` (the request does not fit the key or the FAPI mode).
/// Messages may name claims, algorithms and key kinds, but never contain tokens, codes, payloads
/// or URIs supplied by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoseError {
    /// The `alg` is not one sigild signs with.
    #[error(
        "unsupported JWS alg {alg:?}; supported algs are ES256, ES384, PS256, PS384, PS512, RS256, EdDSA and Ed25519"
    )]
    UnsupportedAlg {
        /// The name the caller sent, shortened.
        alg: String,
    },
    /// The alg named for a new key is neither a JWS alg nor a JWE key-management alg sigild
    /// serves.
    #[error(
        "unsupported key alg {alg:?}; signing keys: ES256, ES384, PS256, PS384, PS512, RS256, EdDSA, Ed25519; decryption keys: RSA-OAEP-256, RSA-OAEP, ECDH-ES, ECDH-ES+A128KW, ECDH-ES+A256KW (RSA1_5 is never offered)"
    )]
    UnsupportedKeyAlg {
        /// The name the caller sent, shortened.
        alg: String,
    },
    /// The JWE key-management alg cannot be used with this key.
    #[error("JWE alg {alg} cannot be used with a {key} key")]
    JweAlgKeyMismatch {
        /// The requested algorithm.
        alg: JweAlg,
        /// The kind of the key.
        key: KeyKind,
    },
    /// `alg: none` was asked for; sigild never produces unsecured JWS.
    #[error("JWS alg \"none\" is never allowed")]
    AlgNone,
    /// The algorithm cannot be used with this key.
    #[error("JWS alg {alg} cannot be used with a {key} key")]
    AlgKeyMismatch {
        /// The requested algorithm.
        alg: Alg,
        /// The kind of the signing key.
        key: KeyKind,
    },
    /// A backend returned a signature of the wrong size: it is not released to the caller.
    #[error("signer returned a {actual}-byte signature where {alg} needs {expected} bytes")]
    SignatureLength {
        /// The algorithm being signed.
        alg: Alg,
        /// The length JOSE requires.
        expected: usize,
        /// The length the backend returned.
        actual: usize,
    },
    /// A value that should be unpadded base64url is not.
    #[error("invalid base64url (unpadded, URL-safe alphabet expected)")]
    InvalidBase64,
    /// The protected header is not UTF-8.
    #[error("JWS header is not valid UTF-8")]
    HeaderNotUtf8,
    /// The protected header is not JSON.
    #[error("JWS header is not valid JSON (line {line}, column {column})")]
    HeaderNotJson {
        /// Line of the syntax error.
        line: usize,
        /// Column of the syntax error.
        column: usize,
    },
    /// The protected header is JSON but not an object.
    #[error("JWS header must be a JSON object")]
    HeaderNotObject,
    /// The protected header names a member twice (RFC 7515 §4 requires unique names).
    #[error("JWS header member {name:?} appears more than once")]
    DuplicateHeaderMember {
        /// The repeated member name, shortened.
        name: String,
    },
    /// The protected header has no `alg`.
    #[error("JWS header has no \"alg\" member")]
    MissingAlg,
    /// A header member has the wrong JSON type or an unusable value.
    #[error("JWS header member {member:?} {reason}")]
    InvalidHeaderMember {
        /// The member name.
        member: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The header names a different key than the one selected for signing.
    #[error("JWS header kid {found:?} does not match the signing key's kid {expected:?}")]
    KidMismatch {
        /// The kid of the selected key.
        expected: String,
        /// The kid in the header, shortened.
        found: String,
    },
    /// A JWK is malformed, private, or describes a key sigild cannot use.
    #[error("invalid JWK: {reason}")]
    InvalidJwk {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two different keys were offered for one JWKS under the same kid.
    #[error("two different keys share the kid {kid:?}; a JWKS must not hold duplicate kids")]
    DuplicateKid {
        /// The shared kid.
        kid: String,
    },
    /// A required claim or input is missing.
    #[error("{claim:?} is required")]
    MissingClaim {
        /// The claim or input name.
        claim: &'static str,
    },
    /// A claim or input has the wrong type or an unusable value.
    #[error("{claim:?} {reason}")]
    InvalidClaim {
        /// The claim or input name.
        claim: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The caller supplied a claim that sigild sets itself (times, `jti`, hashes, identities).
    #[error("claim {claim:?} is set by sigild for this token type; do not supply it")]
    ReservedClaim {
        /// The claim name.
        claim: &'static str,
    },
    /// The caller supplied a claim that the token type forbids.
    #[error("claim {claim:?} is not allowed in {profile}")]
    ForbiddenClaim {
        /// The claim name.
        claim: &'static str,
        /// The token type, e.g. "a request object (RFC 9101)".
        profile: &'static str,
    },
    /// A token lifetime is outside what the profile allows.
    #[error("lifetime of {lifetime} s is outside the allowed {min}..={max} s for {profile}")]
    InvalidLifetime {
        /// The requested lifetime in seconds.
        lifetime: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
        /// The token type.
        profile: &'static str,
    },
    /// `now + lifetime` does not fit a JSON-safe integer.
    #[error("\"now\" + lifetime is out of range")]
    TimeOutOfRange,
    /// The algorithm is not allowed in FAPI 2.0 mode.
    #[error("FAPI 2.0 mode allows PS256, ES256 or EdDSA (Ed25519); {alg} is not allowed")]
    FapiAlgNotAllowed {
        /// The refused algorithm.
        alg: Alg,
    },
    /// The key is too weak for FAPI 2.0.
    #[error("FAPI 2.0 mode requires RSA keys of at least 2048 bits; this key has {bits}")]
    FapiKeyTooSmall {
        /// Modulus length of the refused key.
        bits: u32,
    },
    /// JSON serialization failed (should not happen for the values sigild builds).
    #[error("could not serialize JSON")]
    Serialize,
}

/// Shorten a caller-supplied name before it goes into an error message, so that a huge or
/// hostile value cannot flood logs or status messages.
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        None => s.to_owned(),
        Some((cut, _)) => format!("{}…", s.get(..cut).unwrap_or_default()),
    }
}

/// Unpadded base64url, the only base64 JOSE uses (RFC 7515 §2).
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decode unpadded base64url strictly: padding, the standard alphabet and non-zero trailing bits
/// are refused, so that each value has exactly one accepted encoding.
///
/// # Errors
///
/// [`JoseError::InvalidBase64`] if `s` is not canonical unpadded base64url.
pub fn b64_decode(s: &str) -> Result<Vec<u8>, JoseError> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JoseError::InvalidBase64)
}

/// The JWS signing input `BASE64URL(header) "." BASE64URL(payload)` (RFC 7515 §5.1).
///
/// The bytes are encoded exactly as given and never re-serialized: OPs that assemble the signing
/// input themselves can only use a signature over their own bytes.
pub fn signing_input(header: &[u8], payload: &[u8]) -> String {
    let mut out = b64(header);
    out.push('.');
    out.push_str(&b64(payload));
    out
}

/// The JWS compact serialization: the signing input, ".", and the base64url signature. Check the
/// signature with [`Alg::check_signature`] first.
pub fn compact(signing_input: &str, sig: &[u8]) -> String {
    let mut out = String::with_capacity(signing_input.len() + 1 + sig.len().div_ceil(3) * 4);
    out.push_str(signing_input);
    out.push('.');
    out.push_str(&b64(sig));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7515_a2_signing_input_uses_bytes_as_given() {
        let header = br#"{"alg":"RS256"}"#;
        let payload =
            b"{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";
        assert_eq!(
            signing_input(header, payload),
            "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ"
        );
    }

    #[test]
    fn rfc8037_a4_signing_input() {
        assert_eq!(
            signing_input(br#"{"alg":"EdDSA"}"#, b"Example of Ed25519 signing"),
            "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
        );
    }

    #[test]
    fn rfc8037_a4_full_jws_with_ring() -> Result<(), Box<dyn std::error::Error>> {
        // Independent signer: ring, with the RFC 8037 A.1 private key.
        let seed = b64_decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")?;
        let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| format!("{e}"))?;
        let input = signing_input(br#"{"alg":"EdDSA"}"#, b"Example of Ed25519 signing");
        let crate::crypto::SignOp::Ed25519 { message } = Alg::EdDsa.sign_op(input.as_bytes())
        else {
            return Err("EdDSA must sign the whole message".into());
        };
        let sig = kp.sign(&message);
        Alg::EdDsa.check_signature(KeyKind::Ed25519, sig.as_ref())?;
        assert_eq!(
            compact(&input, sig.as_ref()),
            "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
        Ok(())
    }

    #[test]
    fn b64_is_strict() {
        assert_eq!(b64(b"\xfb\xff"), "-_8");
        assert_eq!(b64_decode("-_8"), Ok(vec![0xfb, 0xff]));
        assert_eq!(b64_decode("-_8="), Err(JoseError::InvalidBase64));
        assert_eq!(b64_decode("+/8"), Err(JoseError::InvalidBase64));
        // Non-zero trailing bits: a second encoding of the same bytes.
        assert_eq!(b64_decode("-_9"), Err(JoseError::InvalidBase64));
    }

    #[test]
    fn shown_truncates() {
        assert_eq!(shown("abc"), "abc");
        let long = "x".repeat(100);
        assert_eq!(shown(&long).chars().count(), 41);
    }
}

#[cfg(test)]
mod proptests;
