//! The rules on which algorithm may sign with which key, in FAPI 2.0 mode and outside it.
//!
//! It owns the questions "does this algorithm fit this key?" and "may this algorithm and key
//! sign in FAPI 2.0 mode?" and nothing else: which keys a caller may use is `policy/`'s
//! business, and which algorithms exist at all is `alg.rs`'s. Pure: no I/O, no configuration.

use super::{Alg, JoseError, KeyAlg};
use crate::crypto::{Curve, KeyKind};

/// Smallest RSA modulus FAPI 2.0 accepts.
const FAPI2_MIN_RSA_BITS: u32 = 2048;

/// Check that `alg` can sign with a key of `kind`, and, for a key in FAPI 2.0 mode, that the
/// profile allows the pair (see [`check_fapi2`]). The keyring checks it when a key or version
/// is made, the service before every signature.
///
/// # Errors
///
/// [`JoseError::AlgKeyMismatch`] if the algorithm does not fit the key; the FAPI 2.0 refusals
/// of [`check_fapi2`].
pub fn check_alg(alg: Alg, kind: KeyKind, fapi2: bool) -> Result<(), JoseError> {
    if !alg.fits(kind) {
        return Err(JoseError::AlgKeyMismatch { alg, key: kind });
    }
    if fapi2 {
        check_fapi2(alg, kind)?;
    }
    Ok(())
}

/// [`check_alg`] for a key version of either purpose. A decryption alg must fit the key; in
/// FAPI mode an RSA decryption key must have at least 2048 bits (RSA1_5 is never offered at
/// all, FAPI or not: [`KeyAlg::parse`] refuses it).
///
/// # Errors
/// As for [`check_alg`]; [`JoseError::JweAlgKeyMismatch`]; [`JoseError::FapiKeyTooSmall`].
pub fn check_key_alg(alg: KeyAlg, kind: KeyKind, fapi2: bool) -> Result<(), JoseError> {
    match alg {
        KeyAlg::Sign(a) => check_alg(a, kind, fapi2),
        KeyAlg::Decrypt(a) if !a.fits(kind) => {
            Err(JoseError::JweAlgKeyMismatch { alg: a, key: kind })
        }
        KeyAlg::Decrypt(_) => match kind {
            KeyKind::Rsa { bits } if fapi2 && bits < FAPI2_MIN_RSA_BITS => {
                Err(JoseError::FapiKeyTooSmall { bits })
            }
            _ => Ok(()),
        },
    }
}

/// Check that `alg` with a key of `kind` is allowed by the FAPI 2.0 Security Profile §5.4.1:
/// PS256, ES256 (P-256) or EdDSA with Ed25519, RSA keys of at least 2048 bits.
///
/// RFC 9864's fully specified `Ed25519` identifier is accepted too: it names exactly the
/// signature FAPI 2.0 calls `EdDSA` (Ed25519), only more precisely. Relying parties that predate
/// RFC 9864 may not know the name, so FAPI deployments should prefer `EdDSA`.
///
/// # Errors
///
/// [`JoseError::FapiAlgNotAllowed`] for ES384, PS384, PS512 and RS256; [`JoseError::AlgKeyMismatch`]
/// if the algorithm does not fit the key; [`JoseError::FapiKeyTooSmall`] for RSA below 2048
/// bits.
pub fn check_fapi2(alg: Alg, kind: KeyKind) -> Result<(), JoseError> {
    match alg {
        Alg::Ps256 | Alg::Es256 | Alg::EdDsa | Alg::Ed25519 => {}
        Alg::Es384 | Alg::Ps384 | Alg::Ps512 | Alg::Rs256 => {
            return Err(JoseError::FapiAlgNotAllowed { alg });
        }
    }
    if !alg.fits(kind) {
        return Err(JoseError::AlgKeyMismatch { alg, key: kind });
    }
    match kind {
        KeyKind::Rsa { bits } if bits < FAPI2_MIN_RSA_BITS => {
            Err(JoseError::FapiKeyTooSmall { bits })
        }
        KeyKind::Rsa { .. } | KeyKind::Ec(Curve::P256) | KeyKind::Ed25519 => Ok(()),
        // ES256 only fits P-256, so this is unreachable after `fits`; refuse rather than assume.
        KeyKind::Ec(Curve::P384) => Err(JoseError::AlgKeyMismatch { alg, key: kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::JweAlg;

    #[test]
    fn fapi_decryption_keys_need_rsa_2048_and_fitting_algs() {
        let oaep = KeyAlg::Decrypt(JweAlg::RsaOaep256);
        assert_eq!(
            check_key_alg(oaep, KeyKind::Rsa { bits: 2048 }, true),
            Ok(())
        );
        assert_eq!(
            check_key_alg(oaep, KeyKind::Rsa { bits: 1024 }, true),
            Err(JoseError::FapiKeyTooSmall { bits: 1024 })
        );
        // Outside FAPI mode the size rule is the keyring's (it only makes 2048 and up).
        assert_eq!(
            check_key_alg(oaep, KeyKind::Rsa { bits: 1024 }, false),
            Ok(())
        );
        assert!(matches!(
            check_key_alg(oaep, KeyKind::Ec(Curve::P256), false),
            Err(JoseError::JweAlgKeyMismatch { .. })
        ));
        let ecdh = KeyAlg::Decrypt(JweAlg::EcdhEsA128Kw);
        assert_eq!(check_key_alg(ecdh, KeyKind::Ec(Curve::P384), true), Ok(()));
        assert_eq!(
            check_key_alg(KeyAlg::Sign(Alg::Rs256), KeyKind::Rsa { bits: 2048 }, true),
            Err(JoseError::FapiAlgNotAllowed { alg: Alg::Rs256 })
        );
    }

    #[test]
    fn fapi2_allow_deny_table() {
        let p256 = KeyKind::Ec(Curve::P256);
        let p384 = KeyKind::Ec(Curve::P384);
        let rsa2048 = KeyKind::Rsa { bits: 2048 };
        let rsa4096 = KeyKind::Rsa { bits: 4096 };
        let rsa1024 = KeyKind::Rsa { bits: 1024 };
        let ed = KeyKind::Ed25519;
        let table: [(Alg, KeyKind, Result<(), JoseError>); 12] = [
            (Alg::Ps256, rsa2048, Ok(())),
            (Alg::Ps256, rsa4096, Ok(())),
            (Alg::Es256, p256, Ok(())),
            (Alg::EdDsa, ed, Ok(())),
            (Alg::Ed25519, ed, Ok(())),
            (
                Alg::Ps256,
                rsa1024,
                Err(JoseError::FapiKeyTooSmall { bits: 1024 }),
            ),
            (
                Alg::Rs256,
                rsa2048,
                Err(JoseError::FapiAlgNotAllowed { alg: Alg::Rs256 }),
            ),
            (
                Alg::Ps384,
                rsa2048,
                Err(JoseError::FapiAlgNotAllowed { alg: Alg::Ps384 }),
            ),
            (
                Alg::Es384,
                p384,
                Err(JoseError::FapiAlgNotAllowed { alg: Alg::Es384 }),
            ),
            (
                Alg::Es256,
                p384,
                Err(JoseError::AlgKeyMismatch {
                    alg: Alg::Es256,
                    key: p384,
                }),
            ),
            (
                Alg::EdDsa,
                p256,
                Err(JoseError::AlgKeyMismatch {
                    alg: Alg::EdDsa,
                    key: p256,
                }),
            ),
            (
                Alg::Ps256,
                ed,
                Err(JoseError::AlgKeyMismatch {
                    alg: Alg::Ps256,
                    key: ed,
                }),
            ),
        ];
        for (alg, kind, want) in table {
            assert_eq!(check_fapi2(alg, kind), want, "{alg} with {kind}");
        }
        let msg = check_fapi2(Alg::Rs256, rsa2048)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            msg,
            "FAPI 2.0 mode allows PS256, ES256 or EdDSA (Ed25519); RS256 is not allowed"
        );
    }

    #[test]
    fn alg_must_fit_the_key_and_the_mode() {
        let rsa = KeyKind::Rsa { bits: 2048 };
        assert_eq!(
            check_alg(Alg::Rs256, rsa, true),
            Err(JoseError::FapiAlgNotAllowed { alg: Alg::Rs256 })
        );
        assert_eq!(check_alg(Alg::Rs256, rsa, false), Ok(()));
        assert_eq!(
            check_alg(Alg::Es256, KeyKind::Ed25519, false),
            Err(JoseError::AlgKeyMismatch {
                alg: Alg::Es256,
                key: KeyKind::Ed25519
            })
        );
    }
}
