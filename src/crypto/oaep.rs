//! RSAES-OAEP decoding (RFC 8017 §7.1.2 steps 3–4) on the host, for devices that can only do raw
//! RSA (YubiKey PIV; PKCS#11 tokens without OAEP for the hash a JWE asks for).
//!
//! Constant-time in everything the ciphertext decides: which check fails, and where, must not
//! show in timing or in the error (Manger's attack needs only one bit). The leading zero byte,
//! the label hash and the `0x01` separator are checked with `subtle` over the whole block, and
//! one verdict is taken at the end. Only the lengths (`k`, the hash) are public and may end the
//! work early. Every intermediate (seed, data block, masks) is zeroized.

use sha2::digest::{Digest, FixedOutputReset};
use subtle::{Choice, ConditionallySelectable as _, ConstantTimeEq as _};
use zeroize::{Zeroize as _, Zeroizing};

use crate::crypto::OaepHash;
use crate::secret::SecretBytes;

/// OAEP decoding failed. Deliberately without detail: the reason is the oracle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("OAEP decoding failed")]
pub struct OaepError;

/// Decode `em`, the raw RSA output (`I2OSP(m, k)`, exactly `k` = modulus bytes), as OAEP with
/// `hash` for both the label hash and MGF1 and the empty label; returns the message.
///
/// # Errors
/// [`OaepError`] for any malformed encoding, always after the same work.
pub fn oaep_decode(hash: OaepHash, k: usize, em: &[u8]) -> Result<SecretBytes, OaepError> {
    match hash {
        OaepHash::Sha1 => decode::<sha1::Sha1>(k, em),
        OaepHash::Sha256 => decode::<sha2::Sha256>(k, em),
    }
}

/// EME-OAEP decoding with hash `D` (RFC 8017 §7.1.2 step 3), empty label.
fn decode<D: Digest + FixedOutputReset>(k: usize, em: &[u8]) -> Result<SecretBytes, OaepError> {
    let h_len = <D as Digest>::output_size();
    // Public lengths only: the modulus length and the hash decide these, not the ciphertext.
    if em.len() != k || k < 2 * h_len + 2 {
        return Err(OaepError);
    }
    let (y, rest) = em.split_first().ok_or(OaepError)?;
    let (masked_seed, masked_db) = rest.split_at(h_len);

    // seed = maskedSeed ⊕ MGF1(maskedDB, hLen); DB = maskedDB ⊕ MGF1(seed, k − hLen − 1).
    let mut seed = Zeroizing::new(masked_seed.to_vec());
    mgf1_xor::<D>(masked_db, &mut seed);
    let mut db = Zeroizing::new(masked_db.to_vec());
    mgf1_xor::<D>(&seed, &mut db);

    // DB = lHash' ‖ PS (zeros) ‖ 0x01 ‖ M.
    let l_hash = D::digest(b"");
    let (l_hash_found, after) = db.split_at(h_len);
    let mut good = y.ct_eq(&0u8) & l_hash_found.ct_eq(l_hash.as_slice());
    // Scan every byte after lHash': the first non-zero byte must be 0x01, and its position is
    // recorded without a branch on the data.
    let mut found = Choice::from(0);
    let mut separator: u32 = 0;
    for (i, b) in after.iter().enumerate() {
        let is_zero = b.ct_eq(&0);
        let is_one = b.ct_eq(&1);
        let first_one = !found & is_one;
        // `after` is shorter than k, which a u32 holds for any RSA modulus.
        separator.conditional_assign(&(i as u32), first_one);
        good &= found | is_zero | is_one;
        found |= is_one;
    }
    good &= found;
    if !bool::from(good) {
        return Err(OaepError);
    }
    // Only now, with the encoding valid, does the message length (public once decrypted) steer
    // the copy.
    let start = (separator as usize).saturating_add(1);
    let message = after.get(start..).ok_or(OaepError)?;
    Ok(SecretBytes::new(message.to_vec()))
}

/// `out ⊕= MGF1(seed, out.len())` with hash `D` (RFC 8017 Appendix B.2.1).
fn mgf1_xor<D: Digest + FixedOutputReset>(seed: &[u8], out: &mut [u8]) {
    let mut hasher = D::new();
    for (counter, chunk) in out.chunks_mut(<D as Digest>::output_size()).enumerate() {
        // A mask of at most k bytes needs far fewer than 2^32 blocks.
        Digest::update(&mut hasher, seed);
        Digest::update(&mut hasher, (counter as u32).to_be_bytes());
        let mut block = hasher.finalize_reset();
        for (o, m) in chunk.iter_mut().zip(block.iter()) {
            *o ^= m;
        }
        block.as_mut_slice().zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8017 §7.1.1 EME-OAEP encoding with the empty label, hash `D`, seed given.
    pub(crate) fn encode<D: Digest + FixedOutputReset>(k: usize, m: &[u8], seed: &[u8]) -> Vec<u8> {
        let h_len = <D as Digest>::output_size();
        assert!(m.len() <= k - 2 * h_len - 2, "message too long");
        assert_eq!(seed.len(), h_len);
        let mut db = D::digest(b"").to_vec();
        db.resize(k - m.len() - h_len - 2, 0);
        db.push(1);
        db.extend_from_slice(m);
        mgf1_xor::<D>(seed, &mut db);
        let mut masked_seed = seed.to_vec();
        mgf1_xor::<D>(&db, &mut masked_seed);
        let mut em = vec![0u8];
        em.extend(masked_seed);
        em.extend(db);
        em
    }

    /// Messages of every length class (empty, one byte, the longest for SHA-256 at k = 128)
    /// come back from the encoder of RFC 8017 §7.1.1 (the RFC 7516 A.1 test in `jose` checks
    /// decoding against an encoding we did not write).
    #[test]
    fn decodes_what_the_rfc_encoder_makes() -> Result<(), OaepError> {
        let k = 128;
        for m in [&b""[..], b"A", &[0x42u8; 62]] {
            let em = encode::<sha1::Sha1>(k, m, &[0x5a; 20]);
            assert_eq!(oaep_decode(OaepHash::Sha1, k, &em)?.expose(), m);
            let em = encode::<sha2::Sha256>(k, m, &[0xa5; 32]);
            assert_eq!(oaep_decode(OaepHash::Sha256, k, &em)?.expose(), m);
        }
        Ok(())
    }

    #[test]
    fn every_broken_encoding_is_one_error() {
        let k = 256;
        let em = encode::<sha2::Sha256>(k, b"0123456789abcdef", &[7; 32]);
        // Wrong hash, wrong length, too short a modulus for the hash.
        assert_eq!(oaep_decode(OaepHash::Sha1, k, &em).err(), Some(OaepError));
        assert!(oaep_decode(OaepHash::Sha256, k, &em[1..]).is_err());
        assert_eq!(
            oaep_decode(OaepHash::Sha256, k + 1, &em).err(),
            Some(OaepError)
        );
        assert_eq!(
            oaep_decode(OaepHash::Sha256, 65, &[0; 65]).err(),
            Some(OaepError)
        );
        // Leading byte not zero.
        let mut bad = em.clone();
        bad[0] = 1;
        assert_eq!(
            oaep_decode(OaepHash::Sha256, k, &bad).err(),
            Some(OaepError)
        );
        // Any other flipped bit garbles the seed, lHash', PS or the separator.
        for i in [1, 20, 33, 40, 100, k - 18] {
            let mut bad = em.clone();
            bad[i] ^= 0x10;
            assert_eq!(
                oaep_decode(OaepHash::Sha256, k, &bad).err(),
                Some(OaepError),
                "byte {i}"
            );
        }
    }

    /// A DB with the wrong lHash, with no 0x01 separator, or with a non-zero byte before it.
    #[test]
    fn separator_is_required_and_must_follow_zeros() {
        let k = 128;
        let h_len = 20;
        let make_labelled = |label: &[u8], after: &[u8]| {
            let mut db = sha1::Sha1::digest(label).to_vec();
            db.extend_from_slice(after);
            let seed = [3u8; 20];
            mgf1_xor::<sha1::Sha1>(&seed, &mut db);
            let mut ms = seed.to_vec();
            mgf1_xor::<sha1::Sha1>(&db, &mut ms);
            let mut em = vec![0];
            em.extend(ms);
            em.extend(db);
            em
        };
        let make = |after: &[u8]| make_labelled(b"", after);
        let n = k - h_len - 1 - h_len;
        // A valid structure under another label: lHash' differs.
        let mut labelled = vec![0; n];
        labelled[n - 2] = 1;
        assert!(oaep_decode(OaepHash::Sha1, k, &make_labelled(b"L", &labelled)).is_err());
        assert!(oaep_decode(OaepHash::Sha1, k, &make(&labelled)).is_ok());
        assert!(oaep_decode(OaepHash::Sha1, k, &make(&vec![0; n])).is_err());
        let mut two = vec![0; n];
        two[3] = 2;
        two[10] = 1;
        assert!(oaep_decode(OaepHash::Sha1, k, &make(&two)).is_err());
        let mut ok = vec![0; n];
        ok[10] = 1;
        ok[11] = 2;
        let m = oaep_decode(OaepHash::Sha1, k, &make(&ok));
        assert_eq!(
            m.map(|m| m.expose().to_vec()),
            Ok(vec![2; 1].into_iter().chain(vec![0; n - 12]).collect())
        );
        // The separator as the very last byte: an empty message.
        let mut last = vec![0; n];
        last[n - 1] = 1;
        assert_eq!(
            oaep_decode(OaepHash::Sha1, k, &make(&last)).map(|m| m.expose().len()),
            Ok(0)
        );
    }
}

/// Property tests: decoding never panics on any input, and decodes whatever the RFC 8017
/// encoder (written here, with a random seed) produced.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::tests::encode;
    use super::*;

    fn hash() -> impl Strategy<Value = OaepHash> {
        prop_oneof![Just(OaepHash::Sha1), Just(OaepHash::Sha256)]
    }

    proptest! {
        #[test]
        fn decode_never_panics(h in hash(), k in 0usize..300, em in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = oaep_decode(h, k, &em);
            // The same bytes as a block of the right length, leading zero forced.
            let mut em0 = em.clone();
            if let Some(b) = em0.first_mut() {
                *b = 0;
            }
            let _ = oaep_decode(h, em0.len(), &em0);
        }

        #[test]
        fn encode_decode_round_trips(
            h in hash(),
            k in prop_oneof![Just(128usize), Just(256), Just(384), Just(512), 74usize..140],
            seed in prop::collection::vec(any::<u8>(), 32),
            m in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let h_len = match h {
                OaepHash::Sha1 => 20,
                OaepHash::Sha256 => 32,
            };
            prop_assume!(k >= 2 * h_len + 2 + m.len());
            let em = match h {
                OaepHash::Sha1 => encode::<sha1::Sha1>(k, &m, &seed[..20]),
                OaepHash::Sha256 => encode::<sha2::Sha256>(k, &m, &seed),
            };
            prop_assert_eq!(em.len(), k);
            let got = oaep_decode(h, k, &em).map(|g| g.expose().to_vec());
            prop_assert_eq!(got, Ok(m));
        }
    }
}
