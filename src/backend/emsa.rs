//! The encoded messages of RSA signatures (RFC 8017 §9: EMSA-PKCS1-v1_5 and EMSA-PSS) for a
//! device that performs only the raw private-key operation on a block as long as the modulus:
//! the YubiKey PIV card, and the in-memory test backend that stands in for such a device.
//!
//! Pure: no I/O, no device, no randomness of its own (the PSS salt is handed in). It knows
//! nothing of JOSE; the JOSE rule "salt length = hash length" (PS256/PS384/PS512, and RFC 9421's
//! `rsa-pss-sha512`) is what [`pss`] enforces.

use sha2::Digest as _;

use crate::backend::BackendError;
use crate::crypto::{HashAlg, digest_info_prefix};

/// EMSA-PKCS1-v1_5 (RFC 8017 §9.2) of a digest for a modulus of `k` bytes:
/// `00 01 FF… 00 DigestInfo`.
///
/// # Errors
/// [`BackendError::InvalidRequest`] when the digest has the wrong length or the modulus is too
/// small for it.
pub fn pkcs1v15(hash: HashAlg, digest: &[u8], k: usize) -> Result<Vec<u8>, BackendError> {
    if digest.len() != hash.len() {
        return Err(BackendError::InvalidRequest(format!(
            "digest is {} bytes, {hash:?} needs {}",
            digest.len(),
            hash.len()
        )));
    }
    let prefix = digest_info_prefix(hash);
    let t_len = prefix.len() + digest.len();
    if k < t_len + 11 {
        return Err(BackendError::InvalidRequest(
            "RSA modulus too short for this hash".into(),
        ));
    }
    let mut em = Vec::with_capacity(k);
    em.extend_from_slice(&[0x00, 0x01]);
    em.resize(k - t_len - 1, 0xff);
    em.push(0x00);
    em.extend_from_slice(prefix);
    em.extend_from_slice(digest);
    Ok(em)
}

/// EMSA-PSS-ENCODE (RFC 8017 §9.1.1) of a digest, MGF1 with the same hash, salt length = hash
/// length (what JOSE PS256/PS384/PS512 and RFC 9421 `rsa-pss-sha512` require), for a modulus of `mod_bits` bits. `salt` must be
/// `hash.len()` fresh random bytes.
///
/// Hand-written because the `rsa` crate keeps its encoder private; checked by the daemon's own
/// verification of every signature and by the independent verifier in the integration tests.
///
/// # Errors
/// [`BackendError::InvalidRequest`] for a wrong digest or salt length or a modulus too small.
pub fn pss(
    hash: HashAlg,
    digest: &[u8],
    salt: &[u8],
    mod_bits: usize,
) -> Result<Vec<u8>, BackendError> {
    let h_len = hash.len();
    if digest.len() != h_len || salt.len() != h_len {
        return Err(BackendError::InvalidRequest(
            "PSS digest or salt has the wrong length".into(),
        ));
    }
    let em_bits = mod_bits.saturating_sub(1);
    let em_len = em_bits.div_ceil(8);
    if em_len < 2 * h_len + 2 {
        return Err(BackendError::InvalidRequest(
            "RSA modulus too short for PSS with this hash".into(),
        ));
    }
    // M' = 8 zero bytes ‖ mHash ‖ salt; H = Hash(M')
    let mut m_prime = vec![0u8; 8];
    m_prime.extend_from_slice(digest);
    m_prime.extend_from_slice(salt);
    let h = hash.digest(&m_prime);
    // DB = PS ‖ 0x01 ‖ salt, |DB| = emLen - hLen - 1
    let db_len = em_len - h_len - 1;
    let mut db = vec![0u8; db_len - h_len - 1];
    db.push(0x01);
    db.extend_from_slice(salt);
    let mask = mgf1(hash, &h, db_len);
    for (d, m) in db.iter_mut().zip(mask.iter()) {
        *d ^= m;
    }
    // Clear the leftmost 8*emLen - emBits bits.
    let clear = 8 * em_len - em_bits;
    if let Some(first) = db.first_mut() {
        *first &= 0xffu8.checked_shr(clear as u32).unwrap_or(0);
    }
    let mut em = db;
    em.extend_from_slice(&h);
    em.push(0xbc);
    // The card wants a block as long as the modulus: left-pad when emLen < k.
    let k = mod_bits.div_ceil(8);
    let mut block = vec![0u8; k - em.len()];
    block.extend_from_slice(&em);
    Ok(block)
}

/// MGF1 (RFC 8017 B.2.1).
fn mgf1(hash: HashAlg, seed: &[u8], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut input = seed.to_vec();
        input.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(&match hash {
            HashAlg::Sha256 => sha2::Sha256::digest(&input).to_vec(),
            HashAlg::Sha384 => sha2::Sha384::digest(&input).to_vec(),
            HashAlg::Sha512 => sha2::Sha512::digest(&input).to_vec(),
        });
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs1v15_layout() -> Result<(), BackendError> {
        let d = HashAlg::Sha256.digest(b"abc");
        let em = pkcs1v15(HashAlg::Sha256, &d, 256)?;
        assert_eq!(em.len(), 256);
        assert_eq!(&em[..3], &[0, 1, 0xff]);
        assert!(em.ends_with(&d));
        assert_eq!(em[256 - 32 - 19 - 1], 0);
        assert!(pkcs1v15(HashAlg::Sha256, &d[1..], 256).is_err());
        Ok(())
    }

    #[test]
    fn pss_layout() -> Result<(), BackendError> {
        let d = HashAlg::Sha256.digest(b"abc");
        let em = pss(HashAlg::Sha256, &d, &[7u8; 32], 2048)?;
        assert_eq!(em.len(), 256);
        assert_eq!(em.last(), Some(&0xbc));
        assert!(em[0] & 0x80 == 0);
        // Unmask DB and find the 0x01 separator followed by the salt.
        let h = &em[256 - 33..256 - 1];
        let mut db = em[..256 - 33].to_vec();
        for (b, m) in db.iter_mut().zip(mgf1(HashAlg::Sha256, h, 256 - 33)) {
            *b ^= m;
        }
        db[0] &= 0x7f;
        let sep = db.iter().position(|b| *b != 0);
        assert_eq!(sep.map(|i| db[i]), Some(1));
        assert!(db.ends_with(&[7u8; 32]));
        Ok(())
    }

    #[test]
    fn pss_sha512_fits_rsa_2048_not_1024() -> Result<(), BackendError> {
        let d = HashAlg::Sha512.digest(b"abc");
        let em = pss(HashAlg::Sha512, &d, &[9u8; 64], 2048)?;
        assert_eq!(em.len(), 256);
        assert_eq!(em.last(), Some(&0xbc));
        // emLen = 128 < 2·64 + 2: RSA-1024 cannot carry PSS with SHA-512 and a 64-byte salt.
        assert!(pss(HashAlg::Sha512, &d, &[9u8; 64], 1024).is_err());
        // The salt must be as long as the hash (RFC 9421 §3.3.1: 64 bytes).
        assert!(pss(HashAlg::Sha512, &d, &[9u8; 32], 2048).is_err());
        Ok(())
    }
}
