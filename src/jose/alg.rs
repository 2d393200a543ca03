//! The JWS algorithm table: which `alg` names sigild signs with, which keys they fit, what a
//! backend must do for each ([`SignOp`]) and what size of signature must come back.
//!
//! It owns the mapping from JOSE names to neutral crypto operations and nothing else: no policy
//! (see `fapi.rs` and `policy/`), no device, no encoding of whole tokens.

use std::fmt;
use std::str::FromStr;

use super::{JoseError, JweAlg, shown};
use crate::crypto::{Curve, HashAlg, KeyKind, KeyPurpose, SignOp};

/// A JWS `alg` that sigild can produce (RFC 7518, RFC 8037, RFC 9864).
///
/// `none` is deliberately absent: an unsecured JWS is never something a signer should make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// ECDSA P-256 with SHA-256, signature `r‖s` (64 bytes).
    Es256,
    /// ECDSA P-384 with SHA-384, signature `r‖s` (96 bytes).
    Es384,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, 32-byte salt.
    Ps256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384, 48-byte salt.
    Ps384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512, 64-byte salt: also RFC 9421's `rsa-pss-sha512`,
    /// the RSA algorithm of HTTP message signatures.
    Ps512,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (kept for relying parties that know nothing else).
    Rs256,
    /// `EdDSA` as in RFC 8037, here always with Ed25519; the name FAPI 2.0 uses.
    EdDsa,
    /// RFC 9864's fully specified `Ed25519`: the same signature as [`Alg::EdDsa`] on an
    /// Ed25519 key, named so that verifiers need not infer the curve from the key.
    Ed25519,
}

impl Alg {
    /// Every supported algorithm, in the order error messages list them.
    pub const ALL: [Alg; 8] = [
        Alg::Es256,
        Alg::Es384,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Rs256,
        Alg::EdDsa,
        Alg::Ed25519,
    ];

    /// Parse a JOSE `alg` name exactly (case-sensitive, as RFC 7515 requires).
    ///
    /// # Errors
    ///
    /// [`JoseError::AlgNone`] for `"none"`, [`JoseError::UnsupportedAlg`] for any other name
    /// sigild does not sign with (including different capitalisations of supported names).
    pub fn parse(name: &str) -> Result<Alg, JoseError> {
        match name {
            "none" => Err(JoseError::AlgNone),
            _ => Alg::ALL
                .into_iter()
                .find(|a| a.name() == name)
                .ok_or_else(|| JoseError::UnsupportedAlg { alg: shown(name) }),
        }
    }

    /// The registered JOSE name, as it appears in a header.
    pub fn name(&self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Rs256 => "RS256",
            Alg::EdDsa => "EdDSA",
            Alg::Ed25519 => "Ed25519",
        }
    }

    /// Whether a key of `kind` can produce this algorithm's signatures. ECDSA algorithms are
    /// tied to one curve; RSA algorithms accept any modulus size (size policy lives elsewhere).
    pub fn fits(&self, kind: KeyKind) -> bool {
        matches!(
            (self, kind),
            (Alg::Es256, KeyKind::Ec(Curve::P256))
                | (Alg::Es384, KeyKind::Ec(Curve::P384))
                | (
                    Alg::Ps256 | Alg::Ps384 | Alg::Ps512 | Alg::Rs256,
                    KeyKind::Rsa { .. }
                )
                | (Alg::EdDsa | Alg::Ed25519, KeyKind::Ed25519)
        )
    }

    /// The algorithm a key signs with when the caller does not say: the strongest widely
    /// interoperable choice for that key (PSS rather than PKCS#1 v1.5 for RSA).
    pub fn default_for(kind: KeyKind) -> Alg {
        match kind {
            KeyKind::Ec(Curve::P256) => Alg::Es256,
            KeyKind::Ec(Curve::P384) => Alg::Es384,
            KeyKind::Rsa { .. } => Alg::Ps256,
            KeyKind::Ed25519 => Alg::EdDsa,
        }
    }

    /// The exact operation a backend must perform over `signing_input`. The message is hashed
    /// here wherever the algorithm allows it, so a device never receives a whole token for
    /// ECDSA or RSA; Ed25519 cannot be pre-hashed and gets the whole input.
    pub fn sign_op(&self, signing_input: &[u8]) -> SignOp {
        match self {
            Alg::Es256 => SignOp::Ecdsa {
                digest: HashAlg::Sha256.digest(signing_input),
            },
            Alg::Es384 => SignOp::Ecdsa {
                digest: HashAlg::Sha384.digest(signing_input),
            },
            Alg::Ps256 => SignOp::RsaPss {
                hash: HashAlg::Sha256,
                digest: HashAlg::Sha256.digest(signing_input),
            },
            Alg::Ps384 => SignOp::RsaPss {
                hash: HashAlg::Sha384,
                digest: HashAlg::Sha384.digest(signing_input),
            },
            Alg::Ps512 => SignOp::RsaPss {
                hash: HashAlg::Sha512,
                digest: HashAlg::Sha512.digest(signing_input),
            },
            Alg::Rs256 => SignOp::RsaPkcs1v15 {
                hash: HashAlg::Sha256,
                digest: HashAlg::Sha256.digest(signing_input),
            },
            Alg::EdDsa | Alg::Ed25519 => SignOp::Ed25519 {
                message: signing_input.to_vec(),
            },
        }
    }

    /// The hash OIDC uses for `at_hash` and `c_hash` with this algorithm: the hash of the JWS
    /// algorithm, and SHA-512 for Ed25519 (the hash inside Ed25519).
    pub fn token_hash_alg(&self) -> HashAlg {
        match self {
            Alg::Es256 | Alg::Ps256 | Alg::Rs256 => HashAlg::Sha256,
            Alg::Es384 | Alg::Ps384 => HashAlg::Sha384,
            Alg::Ps512 | Alg::EdDsa | Alg::Ed25519 => HashAlg::Sha512,
        }
    }

    /// Check that a backend's raw signature has the size JOSE requires for this algorithm and
    /// key, before it is encoded and released. A DER ECDSA signature, a truncated read or a
    /// signature from the wrong key all fail here rather than reaching a relying party.
    ///
    /// # Errors
    ///
    /// [`JoseError::AlgKeyMismatch`] if the algorithm does not fit `kind`,
    /// [`JoseError::SignatureLength`] if `sig` has the wrong length.
    pub fn check_signature(&self, kind: KeyKind, sig: &[u8]) -> Result<(), JoseError> {
        if !self.fits(kind) {
            return Err(JoseError::AlgKeyMismatch {
                alg: *self,
                key: kind,
            });
        }
        let expected = match kind {
            KeyKind::Ec(curve) => 2 * curve.field_len(),
            KeyKind::Rsa { bits } => usize::try_from(bits.div_ceil(8)).unwrap_or(usize::MAX),
            KeyKind::Ed25519 => 64,
        };
        if sig.len() == expected {
            Ok(())
        } else {
            Err(JoseError::SignatureLength {
                alg: *self,
                expected,
                actual: sig.len(),
            })
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Alg {
    type Err = JoseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Alg::parse(s)
    }
}

/// The alg a key version is made for, which fixes its purpose: a JWS alg for a signing key, a
/// JWE key-management alg for a decryption key. The JWK publishes it (`alg`, and `use` from
/// [`KeyAlg::purpose`]); a decryption key decrypts JWEs of exactly this alg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlg {
    /// A signing key's default JWS alg.
    Sign(Alg),
    /// A decryption key's JWE key-management alg.
    Decrypt(JweAlg),
}

impl KeyAlg {
    /// Parse a JWS or JWE key-management alg name exactly.
    ///
    /// # Errors
    /// [`JoseError::AlgNone`] for `none`; [`JoseError::UnsupportedKeyAlg`] for anything else
    /// that is neither (`RSA1_5` included).
    pub fn parse(name: &str) -> Result<KeyAlg, JoseError> {
        if let Some(a) = JweAlg::parse(name) {
            return Ok(KeyAlg::Decrypt(a));
        }
        match Alg::parse(name) {
            Ok(a) => Ok(KeyAlg::Sign(a)),
            Err(JoseError::AlgNone) => Err(JoseError::AlgNone),
            Err(_) => Err(JoseError::UnsupportedKeyAlg { alg: shown(name) }),
        }
    }

    /// The registered JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlg::Sign(a) => a.name(),
            KeyAlg::Decrypt(a) => a.name(),
        }
    }

    /// Signing or decryption.
    pub fn purpose(self) -> KeyPurpose {
        match self {
            KeyAlg::Sign(_) => KeyPurpose::Sign,
            KeyAlg::Decrypt(_) => KeyPurpose::Decrypt,
        }
    }

    /// The JWS alg of a signing key; `None` for a decryption key.
    pub fn sign_alg(self) -> Option<Alg> {
        match self {
            KeyAlg::Sign(a) => Some(a),
            KeyAlg::Decrypt(_) => None,
        }
    }

    /// The JWE alg of a decryption key; `None` for a signing key.
    pub fn jwe_alg(self) -> Option<JweAlg> {
        match self {
            KeyAlg::Sign(_) => None,
            KeyAlg::Decrypt(a) => Some(a),
        }
    }

    /// Whether a key of `kind` can serve this alg.
    pub fn fits(self, kind: KeyKind) -> bool {
        match self {
            KeyAlg::Sign(a) => a.fits(kind),
            KeyAlg::Decrypt(a) => a.fits(kind),
        }
    }
}

impl From<Alg> for KeyAlg {
    fn from(a: Alg) -> KeyAlg {
        KeyAlg::Sign(a)
    }
}

impl From<JweAlg> for KeyAlg {
    fn from(a: JweAlg) -> KeyAlg {
        KeyAlg::Decrypt(a)
    }
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_names_only() -> Result<(), JoseError> {
        for a in Alg::ALL {
            assert_eq!(Alg::parse(a.name())?, a);
            assert_eq!(a.to_string().parse::<Alg>()?, a);
        }
        assert_eq!(Alg::parse("none"), Err(JoseError::AlgNone));
        assert!(matches!(
            Alg::parse("es256"),
            Err(JoseError::UnsupportedAlg { .. })
        ));
        assert!(matches!(
            Alg::parse("HS256"),
            Err(JoseError::UnsupportedAlg { .. })
        ));
        let msg = Alg::parse("RS512")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("RS512") && msg.contains("PS256") && msg.contains("Ed25519"));
        Ok(())
    }

    #[test]
    fn fits_and_defaults() {
        let p256 = KeyKind::Ec(Curve::P256);
        let p384 = KeyKind::Ec(Curve::P384);
        let rsa = KeyKind::Rsa { bits: 2048 };
        assert!(Alg::Es256.fits(p256) && !Alg::Es256.fits(p384));
        assert!(Alg::Es384.fits(p384) && !Alg::Es384.fits(p256));
        assert!(Alg::Ps256.fits(rsa) && Alg::Ps384.fits(rsa) && Alg::Rs256.fits(rsa));
        assert!(Alg::EdDsa.fits(KeyKind::Ed25519) && Alg::Ed25519.fits(KeyKind::Ed25519));
        assert!(!Alg::EdDsa.fits(p256) && !Alg::Ps256.fits(KeyKind::Ed25519));
        for kind in [p256, p384, rsa, KeyKind::Ed25519] {
            assert!(Alg::default_for(kind).fits(kind));
        }
        assert_eq!(Alg::default_for(rsa), Alg::Ps256);
        assert_eq!(Alg::default_for(KeyKind::Ed25519), Alg::EdDsa);
    }

    #[test]
    fn sign_ops_hash_where_allowed() {
        let input = b"a.b";
        assert_eq!(
            Alg::Es256.sign_op(input),
            SignOp::Ecdsa {
                digest: HashAlg::Sha256.digest(input)
            }
        );
        assert_eq!(
            Alg::Es384.sign_op(input),
            SignOp::Ecdsa {
                digest: HashAlg::Sha384.digest(input)
            }
        );
        assert_eq!(
            Alg::Ps384.sign_op(input),
            SignOp::RsaPss {
                hash: HashAlg::Sha384,
                digest: HashAlg::Sha384.digest(input)
            }
        );
        assert_eq!(
            Alg::Rs256.sign_op(input),
            SignOp::RsaPkcs1v15 {
                hash: HashAlg::Sha256,
                digest: HashAlg::Sha256.digest(input)
            }
        );
        assert_eq!(
            Alg::Ed25519.sign_op(input),
            SignOp::Ed25519 {
                message: input.to_vec()
            }
        );
        for a in Alg::ALL {
            assert!(a.sign_op(input).fits(Alg::default_for_test(a)));
        }
    }

    impl Alg {
        fn default_for_test(self) -> KeyKind {
            match self {
                Alg::Es256 => KeyKind::Ec(Curve::P256),
                Alg::Es384 => KeyKind::Ec(Curve::P384),
                Alg::Ps256 | Alg::Ps384 | Alg::Ps512 | Alg::Rs256 => KeyKind::Rsa { bits: 3072 },
                Alg::EdDsa | Alg::Ed25519 => KeyKind::Ed25519,
            }
        }
    }

    #[test]
    fn token_hash_algs() {
        assert_eq!(Alg::Es256.token_hash_alg(), HashAlg::Sha256);
        assert_eq!(Alg::Ps384.token_hash_alg(), HashAlg::Sha384);
        assert_eq!(Alg::Ps512.token_hash_alg(), HashAlg::Sha512);
        assert_eq!(Alg::EdDsa.token_hash_alg(), HashAlg::Sha512);
    }

    #[test]
    fn signature_lengths() {
        let p256 = KeyKind::Ec(Curve::P256);
        assert_eq!(Alg::Es256.check_signature(p256, &[0; 64]), Ok(()));
        // A DER-encoded ECDSA signature is the classic mistake.
        assert!(matches!(
            Alg::Es256.check_signature(p256, &[0; 71]),
            Err(JoseError::SignatureLength {
                expected: 64,
                actual: 71,
                ..
            })
        ));
        assert_eq!(
            Alg::Es384.check_signature(KeyKind::Ec(Curve::P384), &[0; 96]),
            Ok(())
        );
        assert_eq!(
            Alg::Ps256.check_signature(KeyKind::Rsa { bits: 2048 }, &[0; 256]),
            Ok(())
        );
        assert_eq!(
            Alg::Rs256.check_signature(KeyKind::Rsa { bits: 2047 }, &[0; 256]),
            Ok(())
        );
        assert!(
            Alg::Ps256
                .check_signature(KeyKind::Rsa { bits: 3072 }, &[0; 256])
                .is_err()
        );
        assert_eq!(
            Alg::Ed25519.check_signature(KeyKind::Ed25519, &[0; 64]),
            Ok(())
        );
        assert!(matches!(
            Alg::Es256.check_signature(KeyKind::Ed25519, &[0; 64]),
            Err(JoseError::AlgKeyMismatch { .. })
        ));
    }

    #[test]
    fn key_algs_name_their_purpose() -> Result<(), JoseError> {
        for a in Alg::ALL {
            assert_eq!(KeyAlg::parse(a.name())?, KeyAlg::Sign(a));
            assert_eq!(KeyAlg::parse(a.name())?.purpose(), KeyPurpose::Sign);
        }
        for a in JweAlg::ALL {
            let k = KeyAlg::parse(a.name())?;
            assert_eq!(
                (k, k.purpose(), k.name()),
                (KeyAlg::Decrypt(a), KeyPurpose::Decrypt, a.name())
            );
            assert_eq!((k.sign_alg(), k.jwe_alg()), (None, Some(a)));
        }
        assert_eq!(KeyAlg::parse("none"), Err(JoseError::AlgNone));
        // Never offered: RSA1_5 (padding oracle), dir and the shared-secret algs (no key pair).
        for name in ["RSA1_5", "dir", "A128KW", "rsa-oaep-256", "HS256", ""] {
            assert!(
                matches!(
                    KeyAlg::parse(name),
                    Err(JoseError::UnsupportedKeyAlg { .. })
                ),
                "{name}"
            );
        }
        Ok(())
    }

    #[test]
    fn decryption_algs_fit_their_key_kinds() {
        let rsa = KeyKind::Rsa { bits: 2048 };
        let p384 = KeyKind::Ec(Curve::P384);
        assert!(KeyAlg::Decrypt(JweAlg::RsaOaep256).fits(rsa));
        assert!(!KeyAlg::Decrypt(JweAlg::RsaOaep256).fits(p384));
        assert!(KeyAlg::Decrypt(JweAlg::EcdhEsA256Kw).fits(p384));
        assert!(!KeyAlg::Decrypt(JweAlg::EcdhEs).fits(KeyKind::Ed25519));
        assert!(!KeyAlg::Decrypt(JweAlg::EcdhEs).fits(rsa));
    }
}
