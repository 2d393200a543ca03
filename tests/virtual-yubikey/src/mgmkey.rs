//! The PIV management key (slot 9B): its algorithm and the single-block ECB cipher used by the
//! witness/challenge protocol of GENERAL AUTHENTICATE.
//!
//! Owns the symmetric crypto only; the protocol state lives in the PIV applet.

use cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use serde::{Deserialize, Serialize};

/// Management-key algorithms (P1 of `87 xx 9B`, first byte of SET MANAGEMENT KEY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MgmAlgorithm {
    /// `03`, 24-byte key, 8-byte blocks.
    TripleDes,
    /// `08`
    Aes128,
    /// `0A`
    Aes192,
    /// `0C`
    Aes256,
}

impl MgmAlgorithm {
    /// Decodes the wire id.
    pub fn from_id(id: u8) -> Option<MgmAlgorithm> {
        Some(match id {
            0x03 => MgmAlgorithm::TripleDes,
            0x08 => MgmAlgorithm::Aes128,
            0x0A => MgmAlgorithm::Aes192,
            0x0C => MgmAlgorithm::Aes256,
            _ => return None,
        })
    }

    /// The wire id.
    pub fn id(self) -> u8 {
        match self {
            MgmAlgorithm::TripleDes => 0x03,
            MgmAlgorithm::Aes128 => 0x08,
            MgmAlgorithm::Aes192 => 0x0A,
            MgmAlgorithm::Aes256 => 0x0C,
        }
    }

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            MgmAlgorithm::TripleDes | MgmAlgorithm::Aes192 => 24,
            MgmAlgorithm::Aes128 => 16,
            MgmAlgorithm::Aes256 => 32,
        }
    }

    /// Block length in bytes (the witness and challenge size).
    pub fn block_len(self) -> usize {
        match self {
            MgmAlgorithm::TripleDes => 8,
            _ => 16,
        }
    }
}

/// Encrypts (`decrypt == false`) or decrypts one block with the key.
/// Returns `None` if the key or block length does not fit the algorithm.
pub fn crypt_block(alg: MgmAlgorithm, key: &[u8], block: &[u8], decrypt: bool) -> Option<Vec<u8>> {
    if key.len() != alg.key_len() || block.len() != alg.block_len() {
        return None;
    }
    fn run<C: BlockEncrypt + BlockDecrypt + KeyInit>(
        key: &[u8],
        block: &[u8],
        decrypt: bool,
    ) -> Option<Vec<u8>> {
        let c = C::new_from_slice(key).ok()?;
        let mut b = GenericArray::clone_from_slice(block);
        if decrypt {
            c.decrypt_block(&mut b);
        } else {
            c.encrypt_block(&mut b);
        }
        Some(b.to_vec())
    }
    match alg {
        MgmAlgorithm::TripleDes => run::<des::TdesEde3>(key, block, decrypt),
        MgmAlgorithm::Aes128 => run::<aes::Aes128>(key, block, decrypt),
        MgmAlgorithm::Aes192 => run::<aes::Aes192>(key, block, decrypt),
        MgmAlgorithm::Aes256 => run::<aes::Aes256>(key, block, decrypt),
    }
}

/// The factory management key `0102030405060708` × 3.
pub const DEFAULT_KEY: [u8; 24] = [
    1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tdes_known_answer_from_transcript() {
        // Notes §5.5 line 5/6: card sent E_K(W) = F9A2E514B9991843 with the default key; the
        // crate decrypted it and sent W back as 29444CBF4E8347B0.
        let w = crypt_block(
            MgmAlgorithm::TripleDes,
            &DEFAULT_KEY,
            &hex::decode("F9A2E514B9991843").unwrap(),
            true,
        )
        .unwrap();
        assert_eq!(hex::encode_upper(w), "29444CBF4E8347B0");
    }

    #[test]
    fn aes_roundtrip_and_lengths() {
        for alg in [
            MgmAlgorithm::Aes128,
            MgmAlgorithm::Aes192,
            MgmAlgorithm::Aes256,
        ] {
            let key = vec![7u8; alg.key_len()];
            let ct = crypt_block(alg, &key, &[1u8; 16], false).unwrap();
            assert_ne!(ct, vec![1u8; 16]);
            assert_eq!(crypt_block(alg, &key, &ct, true).unwrap(), vec![1u8; 16]);
            assert!(crypt_block(alg, &key, &[1u8; 8], false).is_none());
        }
        assert!(crypt_block(MgmAlgorithm::TripleDes, &[0u8; 16], &[0u8; 8], false).is_none());
    }
}
