//! Pure encodings the card does not do for us: the card's SubjectPublicKeyInfo bytes →
//! [`PublicKey`] (the PKCS#1 v1.5 and PSS encoded messages for the card's raw RSA are
//! [`crate::backend::emsa`]). No I/O, no card. (ECDSA DER → `r‖s` is [`crate::crypto::ecdsa_der_to_fixed`],
//! shared with the client.)

use crate::backend::BackendError;
use crate::crypto::{Curve, PublicKey, trim_leading_zeros};
use der::Decode as _;

/// The algorithms sigild uses on a card, as far as public-key parsing is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardKey {
    /// ECDSA on a NIST curve.
    Ec(Curve),
    /// RSA.
    Rsa,
    /// Ed25519.
    Ed25519,
}

/// The `subjectPublicKey` bits of the card's SPKI → [`PublicKey`].
///
/// # Errors
/// [`BackendError::Malformed`] when the bytes do not fit the algorithm.
pub fn public_key(kind: CardKey, spk: &[u8]) -> Result<PublicKey, BackendError> {
    let bad = |why: String| BackendError::Malformed(format!("public key from the card: {why}"));
    match kind {
        CardKey::Ec(curve) => {
            let n = curve.field_len();
            match spk.split_first() {
                Some((0x04, xy)) if xy.len() == 2 * n => Ok(PublicKey::Ec {
                    curve,
                    x: xy[..n].to_vec(),
                    y: xy[n..].to_vec(),
                }),
                _ => Err(bad(format!("not an uncompressed {curve:?} point"))),
            }
        }
        CardKey::Ed25519 if spk.len() == 32 => Ok(PublicKey::Ed25519 { x: spk.to_vec() }),
        CardKey::Ed25519 => Err(bad(format!("Ed25519 key of {} bytes", spk.len()))),
        CardKey::Rsa => {
            let k = pkcs1::RsaPublicKeyRef::from_der(spk).map_err(|e| bad(e.to_string()))?;
            Ok(PublicKey::Rsa {
                n: trim_leading_zeros(k.modulus.as_bytes()),
                e: trim_leading_zeros(k.public_exponent.as_bytes()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_point() -> Result<(), BackendError> {
        let mut p = vec![4u8];
        p.extend_from_slice(&[1; 64]);
        assert!(matches!(
            public_key(CardKey::Ec(Curve::P256), &p)?,
            PublicKey::Ec {
                curve: Curve::P256,
                ..
            }
        ));
        assert!(public_key(CardKey::Ec(Curve::P384), &p).is_err());
        Ok(())
    }
}
