//! Verifying a JOSE signature with a public key (pure, `ring`): the service's last check before
//! a signature leaves the daemon, so a device fault can never hand a caller a wrong signature.

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};

use super::Alg;
use crate::crypto::PublicKey;

/// Whether `sig` (JOSE encoding) is a valid `alg` signature of `input` under `public`.
/// RSA-PSS is checked with salt length = hash length, as JOSE requires.
pub fn verify(public: &PublicKey, alg: Alg, input: &[u8], sig: &[u8]) -> bool {
    match (public, alg) {
        (PublicKey::Ec { x, y, .. }, Alg::Es256 | Alg::Es384) => {
            let algorithm: &dyn VerificationAlgorithm = if alg == Alg::Es256 {
                &signature::ECDSA_P256_SHA256_FIXED
            } else {
                &signature::ECDSA_P384_SHA384_FIXED
            };
            let mut point = Vec::with_capacity(1 + x.len() + y.len());
            point.push(0x04);
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            UnparsedPublicKey::new(algorithm, point)
                .verify(input, sig)
                .is_ok()
        }
        (PublicKey::Rsa { n, e }, Alg::Ps256 | Alg::Ps384 | Alg::Ps512 | Alg::Rs256) => {
            let params = match alg {
                Alg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                Alg::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                Alg::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                _ => &signature::RSA_PKCS1_2048_8192_SHA256,
            };
            RsaPublicKeyComponents { n, e }
                .verify(params, input, sig)
                .is_ok()
        }
        (PublicKey::Ed25519 { x }, Alg::EdDsa | Alg::Ed25519) => {
            UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(input, sig)
                .is_ok()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair as _;

    #[test]
    fn ed25519_rfc8037_a4_verifies_and_tampering_fails() -> Result<(), Box<dyn std::error::Error>> {
        let seed = super::super::b64_decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")?;
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| e.to_string())?;
        let public = PublicKey::Ed25519 {
            x: pair.public_key().as_ref().to_vec(),
        };
        let input = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let sig = super::super::b64_decode(
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg",
        )?;
        assert!(verify(&public, Alg::EdDsa, input, &sig));
        assert!(verify(&public, Alg::Ed25519, input, &sig));
        assert!(!verify(&public, Alg::EdDsa, b"other", &sig));
        assert!(!verify(&public, Alg::Es256, input, &sig));
        Ok(())
    }
}
