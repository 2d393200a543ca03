//! What a signature is made for: one of the token types sigild builds itself (ID token, JAR,
//! JARM, access token, …, and the two RFC 9421 HTTP message signatures), or one of the generic
//! paths that sign whatever the caller assembled (`jws`, `raw`, `tls`, `digest`).
//!
//! One vocabulary serves three rules that must agree: the operations a caller rule grants, the
//! token types a key is bound to (stored with the key on the token), and the `typ` header values
//! that only a profile may put in a JWS. It owns the names (as config, CLI and audit spell them)
//! and the `typ` ↔ token type mapping; it decides nothing about who may do what.

use std::fmt;

/// One use of a signing key. Config, CLI flags, audit records and key bindings spell these in
/// kebab case ([`TokenType::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TokenType {
    /// A caller-built JWS: header and payload signed as given.
    Jws,
    /// A raw signature over arbitrary bytes. On a key bound to token types this would mint any
    /// of them (a JWS signing input is just bytes), so it is a use of its own.
    Raw,
    /// A TLS handshake signature (CertificateVerify), for a client or server whose TLS key
    /// stays on the device.
    Tls,
    /// An OpenID Connect ID token.
    IdToken,
    /// A JAR request object (RFC 9101), `typ: oauth-authz-req+jwt`.
    Jar,
    /// A `private_key_jwt` client assertion (RFC 7523), optionally
    /// `typ: client-authentication+jwt`.
    ClientAssertion,
    /// A DPoP proof (RFC 9449), `typ: dpop+jwt`.
    Dpop,
    /// A JWT-secured authorization response (JARM).
    Jarm,
    /// A JWT introspection response (RFC 9701), `typ: token-introspection+jwt`.
    Introspection,
    /// A JWT access token (RFC 9068), `typ: at+jwt`.
    AccessToken,
    /// A back-channel logout token (OIDC Back-Channel Logout), `typ: logout+jwt`.
    Logout,
    /// A signed UserInfo response (OIDC Core §5.3.2).
    Userinfo,
    /// A signed CIBA authentication request (CIBA Core §7.1.1).
    Ciba,
    /// An RFC 9421 signature over an HTTP request (FAPI 2.0 HTTP signatures).
    HttpRequest,
    /// An RFC 9421 signature over an HTTP response, bound to the request it answers.
    HttpResponse,
    /// A signature over a digest the caller computed (`SignDigest`). Whatever the digest is of
    /// (a JWS signing input, a handshake, a document) is unknown to sigild, so no content rule
    /// can apply and no other grant implies it, `raw` included.
    Digest,
}

impl TokenType {
    /// Every signing use, in the order messages list them.
    pub const ALL: [TokenType; 16] = [
        TokenType::Jws,
        TokenType::Raw,
        TokenType::Tls,
        TokenType::IdToken,
        TokenType::Jar,
        TokenType::ClientAssertion,
        TokenType::Dpop,
        TokenType::Jarm,
        TokenType::Introspection,
        TokenType::AccessToken,
        TokenType::Logout,
        TokenType::Userinfo,
        TokenType::Ciba,
        TokenType::HttpRequest,
        TokenType::HttpResponse,
        TokenType::Digest,
    ];

    /// The config / CLI / audit name.
    pub fn name(self) -> &'static str {
        match self {
            TokenType::Jws => "jws",
            TokenType::Raw => "raw",
            TokenType::Tls => "tls",
            TokenType::IdToken => "id-token",
            TokenType::Jar => "jar",
            TokenType::ClientAssertion => "client-assertion",
            TokenType::Dpop => "dpop",
            TokenType::Jarm => "jarm",
            TokenType::Introspection => "introspection",
            TokenType::AccessToken => "access-token",
            TokenType::Logout => "logout",
            TokenType::Userinfo => "userinfo",
            TokenType::Ciba => "ciba",
            TokenType::HttpRequest => "http-request",
            TokenType::HttpResponse => "http-response",
            TokenType::Digest => "digest",
        }
    }

    /// Parse a name as [`TokenType::name`] spells it.
    pub fn parse(name: &str) -> Option<TokenType> {
        TokenType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The `typ` header value that identifies this token type, for the types whose profile sets
    /// an explicit one (RFC 8725 §3.11). A generic JWS carrying one of these values is claiming
    /// to be that token type.
    pub fn typ(self) -> Option<&'static str> {
        match self {
            TokenType::Jar => Some("oauth-authz-req+jwt"),
            TokenType::ClientAssertion => Some("client-authentication+jwt"),
            TokenType::Dpop => Some("dpop+jwt"),
            TokenType::Introspection => Some("token-introspection+jwt"),
            TokenType::AccessToken => Some("at+jwt"),
            TokenType::Logout => Some("logout+jwt"),
            _ => None,
        }
    }

    /// The token type a `typ` header value claims, if sigild has a profile for it. Compared as
    /// RFC 7515 §4.1.9 says media types compare: case-insensitively, with or without the
    /// `application/` prefix.
    pub fn for_typ(typ: &str) -> Option<TokenType> {
        let bare = match typ.get(..12) {
            Some(p) if p.eq_ignore_ascii_case("application/") => typ.get(12..).unwrap_or(""),
            _ => typ,
        };
        TokenType::ALL
            .into_iter()
            .find(|t| t.typ().is_some_and(|v| v.eq_ignore_ascii_case(bare)))
    }

    /// Whether this is one of the generic paths (the caller assembles what is signed), as
    /// opposed to a profile sigild builds itself.
    pub fn is_generic(self) -> bool {
        matches!(
            self,
            TokenType::Jws | TokenType::Raw | TokenType::Tls | TokenType::Digest
        )
    }
}

impl fmt::Display for TokenType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for t in TokenType::ALL {
            assert_eq!(TokenType::parse(t.name()), Some(t));
        }
        let mut names: Vec<_> = TokenType::ALL.iter().map(|t| t.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TokenType::ALL.len());
        assert_eq!(TokenType::parse("ID-TOKEN"), None);
        assert_eq!(TokenType::parse(""), None);
    }

    #[test]
    fn typ_values_map_back_as_media_types_compare() {
        assert_eq!(TokenType::for_typ("at+jwt"), Some(TokenType::AccessToken));
        assert_eq!(
            TokenType::for_typ("application/AT+JWT"),
            Some(TokenType::AccessToken)
        );
        assert_eq!(TokenType::for_typ("Logout+JWT"), Some(TokenType::Logout));
        assert_eq!(
            TokenType::for_typ("token-introspection+jwt"),
            Some(TokenType::Introspection)
        );
        assert_eq!(TokenType::for_typ("dpop+jwt"), Some(TokenType::Dpop));
        assert_eq!(TokenType::for_typ("JWT"), None);
        assert_eq!(TokenType::for_typ("application/"), None);
        assert_eq!(TokenType::for_typ(""), None);
        assert_eq!(TokenType::for_typ("secevent+jwt"), None);
        for t in TokenType::ALL {
            if let Some(typ) = t.typ() {
                assert_eq!(TokenType::for_typ(typ), Some(t));
            }
        }
    }
}
