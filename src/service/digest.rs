//! `SignDigest`: a signature over a digest the caller computed, for integrations whose seam
//! passes a digest (Go `crypto.Signer`, .NET `RSA`/`ECDsa`, Java `Signature` with `NONEwith…`).
//!
//! Only algorithms whose device operation takes a digest anyway (ES256, ES384, PS256, PS384,
//! RS256) are offered; the digest length must be the alg's hash length. Granted as its own
//! policy operation (`digest`), never implied by another, `raw` included: sigild never sees the
//! message, so no content rule (claims, `typ`, HTTP target) can apply. The audit record holds
//! the SHA-256 of the digest. As on every path, the signature is verified (over the digest,
//! with RustCrypto's prehash verifiers) before it is released, and a device whose signatures do
//! not verify is asked once more afresh and fed to the quarantine.
//!
//! Depends on the keyring, the backend contract and the RustCrypto verifiers; never on gRPC.

use super::{Call, Error, Origin, RawSignature, Service, note_version};
use crate::backend::SignCheck;
use crate::crypto::{HashAlg, PublicKey, SignOp};
use crate::jose::{Alg, TokenType};
use crate::keyring::VersionInfo;
use crate::policy::Operation;

/// The algorithms `SignDigest` offers, with the hash whose digest each signs.
pub const DIGEST_ALGS: [(Alg, HashAlg); 5] = [
    (Alg::Es256, HashAlg::Sha256),
    (Alg::Es384, HashAlg::Sha384),
    (Alg::Ps256, HashAlg::Sha256),
    (Alg::Ps384, HashAlg::Sha384),
    (Alg::Rs256, HashAlg::Sha256),
];

impl Service {
    /// Sign `digest` (the caller's hash of its message) with `key` under `alg` (the key's own
    /// when `None`), the version [`Origin::version`] names or the active one.
    ///
    /// # Errors
    /// InvalidArgument for an alg `SignDigest` does not offer or a digest of the wrong length;
    /// PermissionDenied without the `digest` grant (or on a key bound to other uses); key and
    /// device errors as for [`Service::sign_raw`].
    pub async fn sign_digest(
        &self,
        origin: &Origin,
        key: &str,
        alg: Option<Alg>,
        digest: &[u8],
    ) -> Result<RawSignature, Error> {
        self.run(
            origin,
            Operation::Sign(TokenType::Digest),
            "digest",
            key,
            async |call| {
                self.authorize(call)?;
                call.record.digest_sha256 = Some(crate::audit::digest(digest));
                let (version, alg) = self.resolve(call, key, alg)?;
                let hash = digest_hash(alg, digest.len())?;
                note_version(call, &version, alg);
                self.authorize_content(call, &None)?;
                let signature = self
                    .sign_given_digest(call, &version, alg, hash, digest)
                    .await?;
                Ok(RawSignature {
                    signature,
                    kid: version.kid.clone(),
                    alg,
                    version: version.version,
                })
            },
        )
        .await
    }

    /// Have the device sign `digest`, released once it verifies over the digest (the path of
    /// every signature: [`Service::sign_op_checked`]).
    async fn sign_given_digest(
        &self,
        call: &Call,
        version: &VersionInfo,
        alg: Alg,
        hash: HashAlg,
        digest: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let kind = version.kind;
        let check: SignCheck = if self.options.verify_signatures {
            let (public, digest) = (version.public.clone(), digest.to_vec());
            Box::new(move |sig: &[u8]| {
                alg.check_signature(kind, sig).is_ok() && verify_digest(&public, alg, &digest, sig)
            })
        } else {
            Box::new(move |sig: &[u8]| alg.check_signature(kind, sig).is_ok())
        };
        self.sign_op_checked(
            version,
            alg,
            sign_op(alg, hash, digest),
            check,
            &call.record.request_id,
            call.deadline,
        )
        .await
    }
}

/// The hash whose digest `alg` signs, if `SignDigest` offers `alg` and `len` is its length.
fn digest_hash(alg: Alg, len: usize) -> Result<HashAlg, Error> {
    let hash = DIGEST_ALGS
        .iter()
        .find(|(a, _)| *a == alg)
        .map(|(_, h)| *h)
        .ok_or(Error::DigestAlg { alg })?;
    if len != hash.len() {
        return Err(Error::DigestLength {
            alg,
            len,
            want: hash.len(),
        });
    }
    Ok(hash)
}

/// The device operation over a given digest.
fn sign_op(alg: Alg, hash: HashAlg, digest: &[u8]) -> SignOp {
    let digest = digest.to_vec();
    match alg {
        Alg::Ps256 | Alg::Ps384 => SignOp::RsaPss { hash, digest },
        Alg::Rs256 => SignOp::RsaPkcs1v15 { hash, digest },
        _ => SignOp::Ecdsa { digest },
    }
}

/// Whether `sig` (JOSE encoding) is `public`'s signature over `digest` under `alg`.
fn verify_digest(public: &PublicKey, alg: Alg, digest: &[u8], sig: &[u8]) -> bool {
    use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
    match (public, alg) {
        (PublicKey::Ec { x, y, .. }, Alg::Es256) => {
            let point = [&[0x04], x.as_slice(), y.as_slice()].concat();
            let (Ok(key), Ok(sig)) = (
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&point),
                p256::ecdsa::Signature::from_slice(sig),
            ) else {
                return false;
            };
            key.verify_prehash(digest, &sig).is_ok()
        }
        (PublicKey::Ec { x, y, .. }, Alg::Es384) => {
            let point = [&[0x04], x.as_slice(), y.as_slice()].concat();
            let (Ok(key), Ok(sig)) = (
                p384::ecdsa::VerifyingKey::from_sec1_bytes(&point),
                p384::ecdsa::Signature::from_slice(sig),
            ) else {
                return false;
            };
            key.verify_prehash(digest, &sig).is_ok()
        }
        (PublicKey::Rsa { n, e }, Alg::Ps256 | Alg::Ps384 | Alg::Rs256) => {
            verify_rsa_digest(n, e, alg, digest, sig)
        }
        _ => false,
    }
}

/// RSA half of [`verify_digest`].
fn verify_rsa_digest(n: &[u8], e: &[u8], alg: Alg, digest: &[u8], sig: &[u8]) -> bool {
    use rsa::signature::hazmat::PrehashVerifier as _;
    let key = match rsa::RsaPublicKey::new(
        rsa::BoxedUint::from_be_slice_vartime(n),
        rsa::BoxedUint::from_be_slice_vartime(e),
    ) {
        Ok(k) => k,
        Err(_) => return false,
    };
    match alg {
        Alg::Ps256 | Alg::Ps384 => {
            let Ok(sig) = rsa::pss::Signature::try_from(sig) else {
                return false;
            };
            if alg == Alg::Ps256 {
                rsa::pss::VerifyingKey::<sha2::Sha256>::new(key).verify_prehash(digest, &sig)
            } else {
                rsa::pss::VerifyingKey::<sha2::Sha384>::new(key).verify_prehash(digest, &sig)
            }
            .is_ok()
        }
        Alg::Rs256 => {
            let Ok(sig) = rsa::pkcs1v15::Signature::try_from(sig) else {
                return false;
            };
            rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key)
                .verify_prehash(digest, &sig)
                .is_ok()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_digest_algs_with_digests_of_their_hash_length() {
        assert!(digest_hash(Alg::Es256, 32).is_ok());
        assert!(digest_hash(Alg::Es384, 48).is_ok());
        assert!(digest_hash(Alg::Ps384, 48).is_ok());
        assert!(matches!(
            digest_hash(Alg::Es256, 48),
            Err(Error::DigestLength { want: 32, .. })
        ));
        assert!(matches!(
            digest_hash(Alg::Rs256, 0),
            Err(Error::DigestLength { .. })
        ));
        for alg in [Alg::EdDsa, Alg::Ed25519, Alg::Ps512] {
            assert!(matches!(digest_hash(alg, 64), Err(Error::DigestAlg { .. })));
        }
    }
}
