//! Asymmetric keys held in PIV slots: generation, import, public-key encodings, private-key
//! operations and their persisted form.
//!
//! Owns everything that touches private key material. It does not know about slots, policies
//! or status words (the PIV applet maps `KeyError` to those) and never logs anything.

use ecdsa::signature::hazmat::PrehashSigner;
use rand_core::OsRng;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey};
use serde::{Deserialize, Serialize};
use spki::EncodePublicKey;
use zeroize::Zeroizing;

use crate::tlv;

/// Errors of key operations. They carry no key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The algorithm is unknown or not available on this firmware.
    #[error("unsupported algorithm")]
    Unsupported,
    /// The input has the wrong length or is out of range for the key.
    #[error("invalid input for this key")]
    BadInput,
    /// The crypto library failed (e.g. key generation).
    #[error("crypto failure: {0}")]
    Crypto(String),
}

/// Firmware version `major.minor.patch`; it decides which algorithms exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Firmware(pub u8, pub u8, pub u8);

impl Firmware {
    /// The three bytes GET VERSION returns.
    pub fn bytes(self) -> [u8; 3] {
        [self.0, self.1, self.2]
    }
}

impl std::str::FromStr for Firmware {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<u8> = s
            .split('.')
            .map(|p| {
                p.parse::<u8>()
                    .map_err(|e| format!("bad version {s:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        match parts.as_slice() {
            [a, b, c] => Ok(Firmware(*a, *b, *c)),
            _ => Err(format!("version {s:?} is not X.Y.Z")),
        }
    }
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// PIV asymmetric algorithms (P1 of GENERAL AUTHENTICATE/IMPORT, tag 80 of GENERATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    /// `06`
    Rsa1024,
    /// `07`
    Rsa2048,
    /// `05`, fw 5.7+
    Rsa3072,
    /// `16`, fw 5.7+
    Rsa4096,
    /// `11`
    EccP256,
    /// `14`
    EccP384,
    /// `E0`, fw 5.7+
    Ed25519,
}

impl Algorithm {
    /// Decodes an algorithm id.
    pub fn from_id(id: u8) -> Option<Algorithm> {
        Some(match id {
            0x06 => Algorithm::Rsa1024,
            0x07 => Algorithm::Rsa2048,
            0x05 => Algorithm::Rsa3072,
            0x16 => Algorithm::Rsa4096,
            0x11 => Algorithm::EccP256,
            0x14 => Algorithm::EccP384,
            0xE0 => Algorithm::Ed25519,
            _ => return None,
        })
    }

    /// The wire id.
    pub fn id(self) -> u8 {
        match self {
            Algorithm::Rsa1024 => 0x06,
            Algorithm::Rsa2048 => 0x07,
            Algorithm::Rsa3072 => 0x05,
            Algorithm::Rsa4096 => 0x16,
            Algorithm::EccP256 => 0x11,
            Algorithm::EccP384 => 0x14,
            Algorithm::Ed25519 => 0xE0,
        }
    }

    /// Whether a YubiKey with this firmware supports the algorithm.
    pub fn supported_on(self, fw: Firmware) -> bool {
        match self {
            Algorithm::Rsa3072 | Algorithm::Rsa4096 | Algorithm::Ed25519 => fw >= Firmware(5, 7, 0),
            _ => true,
        }
    }

    fn rsa_bits(self) -> Option<usize> {
        match self {
            Algorithm::Rsa1024 => Some(1024),
            Algorithm::Rsa2048 => Some(2048),
            Algorithm::Rsa3072 => Some(3072),
            Algorithm::Rsa4096 => Some(4096),
            _ => None,
        }
    }
}

/// A private key in a slot. `Debug` is hand-written and prints only the algorithm.
#[derive(Clone)]
pub enum PrivateKey {
    /// RSA (boxed: it is much larger than the others).
    Rsa(Box<RsaPrivateKey>),
    /// NIST P-256.
    P256(p256::SecretKey),
    /// NIST P-384.
    P384(p384::SecretKey),
    /// Ed25519.
    Ed25519(ed25519_dalek::SigningKey),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({:?}, <redacted>)", self.algorithm())
    }
}

fn crypto<E: std::fmt::Display>(e: E) -> KeyError {
    KeyError::Crypto(e.to_string())
}

impl PrivateKey {
    /// Generates a fresh key.
    ///
    /// # Errors
    /// `KeyError::Crypto` if the RNG or prime search fails.
    pub fn generate(alg: Algorithm) -> Result<PrivateKey, KeyError> {
        Ok(match alg {
            Algorithm::EccP256 => PrivateKey::P256(p256::SecretKey::random(&mut OsRng)),
            Algorithm::EccP384 => PrivateKey::P384(p384::SecretKey::random(&mut OsRng)),
            Algorithm::Ed25519 => {
                PrivateKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng))
            }
            rsa_alg => {
                let bits = rsa_alg.rsa_bits().ok_or(KeyError::Unsupported)?;
                PrivateKey::Rsa(Box::new(
                    RsaPrivateKey::new(&mut OsRng, bits).map_err(crypto)?,
                ))
            }
        })
    }

    /// Builds a key from the TLVs of IMPORT KEY (`FE`): RSA `01`–`05` (p, q, dP, dQ, qInv),
    /// EC `06` (scalar), Ed25519 `07` (seed).
    ///
    /// # Errors
    /// `KeyError::BadInput` if a component is missing or inconsistent.
    pub fn import(alg: Algorithm, items: &[tlv::Tlv<'_>]) -> Result<PrivateKey, KeyError> {
        let get = |tag| tlv::find(items, tag).ok_or(KeyError::BadInput);
        let key = match alg {
            Algorithm::EccP256 => PrivateKey::P256(
                p256::SecretKey::from_slice(get(0x06)?).map_err(|_| KeyError::BadInput)?,
            ),
            Algorithm::EccP384 => PrivateKey::P384(
                p384::SecretKey::from_slice(get(0x06)?).map_err(|_| KeyError::BadInput)?,
            ),
            Algorithm::Ed25519 => {
                let seed: [u8; 32] = get(0x07)?.try_into().map_err(|_| KeyError::BadInput)?;
                PrivateKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
            }
            rsa_alg => {
                let bits = rsa_alg.rsa_bits().ok_or(KeyError::Unsupported)?;
                let p = BigUint::from_bytes_be(get(0x01)?);
                let q = BigUint::from_bytes_be(get(0x02)?);
                let key = RsaPrivateKey::from_p_q(p, q, BigUint::from(65537u32))
                    .map_err(|_| KeyError::BadInput)?;
                if key.size() * 8 != bits {
                    return Err(KeyError::BadInput);
                }
                PrivateKey::Rsa(Box::new(key))
            }
        };
        Ok(key)
    }

    /// The algorithm of this key.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PrivateKey::Rsa(k) => match k.size() * 8 {
                1024 => Algorithm::Rsa1024,
                3072 => Algorithm::Rsa3072,
                4096 => Algorithm::Rsa4096,
                _ => Algorithm::Rsa2048,
            },
            PrivateKey::P256(_) => Algorithm::EccP256,
            PrivateKey::P384(_) => Algorithm::EccP384,
            PrivateKey::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// The public key as the TLVs inside `7F49` (GENERATE) and metadata tag `04`:
    /// `81 n 82 e` for RSA, `86 point` for EC (uncompressed) and Ed25519.
    pub fn public_tlvs(&self) -> Vec<u8> {
        match self {
            PrivateKey::Rsa(k) => {
                let mut v = tlv::item(0x81, &k.n().to_bytes_be());
                tlv::push(&mut v, 0x82, &k.e().to_bytes_be());
                v
            }
            PrivateKey::P256(k) => {
                use p256::elliptic_curve::sec1::ToEncodedPoint;
                tlv::item(0x86, k.public_key().to_encoded_point(false).as_bytes())
            }
            PrivateKey::P384(k) => {
                use p384::elliptic_curve::sec1::ToEncodedPoint;
                tlv::item(0x86, k.public_key().to_encoded_point(false).as_bytes())
            }
            PrivateKey::Ed25519(k) => tlv::item(0x86, k.verifying_key().as_bytes()),
        }
    }

    /// The public key as DER SubjectPublicKeyInfo (for attestation certificates).
    ///
    /// # Errors
    /// `KeyError::Crypto` if encoding fails.
    pub fn spki_der(&self) -> Result<Vec<u8>, KeyError> {
        let doc = match self {
            PrivateKey::Rsa(k) => k.to_public_key().to_public_key_der(),
            PrivateKey::P256(k) => k.public_key().to_public_key_der(),
            PrivateKey::P384(k) => k.public_key().to_public_key_der(),
            PrivateKey::Ed25519(k) => k.verifying_key().to_public_key_der(),
        };
        Ok(doc.map_err(crypto)?.into_vec())
    }

    /// The private-key operation of GENERAL AUTHENTICATE tag `81`, as a YubiKey does it:
    /// ECDSA over the given digest (left-padded or truncated to the field size) returning a DER
    /// signature; raw RSA (`c^d mod n`) on a modulus-sized block; Ed25519 over the message.
    ///
    /// # Errors
    /// `KeyError::BadInput` for a wrong-sized or out-of-range input.
    pub fn sign(&self, input: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            PrivateKey::P256(k) => {
                let digest = fit_digest(input, 32)?;
                let sig: p256::ecdsa::Signature = p256::ecdsa::SigningKey::from(k)
                    .sign_prehash(&digest)
                    .map_err(crypto)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            PrivateKey::P384(k) => {
                let digest = fit_digest(input, 48)?;
                let sig: p384::ecdsa::Signature = p384::ecdsa::SigningKey::from(k)
                    .sign_prehash(&digest)
                    .map_err(crypto)?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
            PrivateKey::Ed25519(k) => {
                use ed25519_dalek::Signer;
                Ok(k.sign(input).to_bytes().to_vec())
            }
            PrivateKey::Rsa(k) => rsa_private(k, input),
        }
    }

    /// ECDH (GENERAL AUTHENTICATE tag `85`): the shared x-coordinate with the peer's
    /// uncompressed point.
    ///
    /// # Errors
    /// `KeyError::BadInput` for an invalid point, `Unsupported` for non-EC keys.
    pub fn ecdh(&self, peer: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self {
            PrivateKey::P256(k) => {
                let pk = p256::PublicKey::from_sec1_bytes(peer).map_err(|_| KeyError::BadInput)?;
                let s = p256::ecdh::diffie_hellman(k.to_nonzero_scalar(), pk.as_affine());
                Ok(s.raw_secret_bytes().to_vec())
            }
            PrivateKey::P384(k) => {
                let pk = p384::PublicKey::from_sec1_bytes(peer).map_err(|_| KeyError::BadInput)?;
                let s = p384::ecdh::diffie_hellman(k.to_nonzero_scalar(), pk.as_affine());
                Ok(s.raw_secret_bytes().to_vec())
            }
            _ => Err(KeyError::Unsupported),
        }
    }

    /// The persisted form.
    ///
    /// # Errors
    /// `KeyError::Crypto` if PKCS#8 encoding of an RSA key fails.
    pub fn to_stored(&self) -> Result<StoredKey, KeyError> {
        let secret: Zeroizing<Vec<u8>> = match self {
            PrivateKey::Rsa(k) => {
                use rsa::pkcs8::EncodePrivateKey;
                Zeroizing::new(k.to_pkcs8_der().map_err(crypto)?.as_bytes().to_vec())
            }
            PrivateKey::P256(k) => Zeroizing::new(k.to_bytes().to_vec()),
            PrivateKey::P384(k) => Zeroizing::new(k.to_bytes().to_vec()),
            PrivateKey::Ed25519(k) => Zeroizing::new(k.to_bytes().to_vec()),
        };
        Ok(StoredKey {
            algorithm: self.algorithm(),
            secret: hex::encode(secret.as_slice()),
        })
    }

    /// Restores a key from its persisted form.
    ///
    /// # Errors
    /// `KeyError::BadInput` if the stored bytes do not decode.
    pub fn from_stored(s: &StoredKey) -> Result<PrivateKey, KeyError> {
        let bytes = Zeroizing::new(hex::decode(&s.secret).map_err(|_| KeyError::BadInput)?);
        let key = match s.algorithm {
            Algorithm::EccP256 => PrivateKey::P256(
                p256::SecretKey::from_slice(&bytes).map_err(|_| KeyError::BadInput)?,
            ),
            Algorithm::EccP384 => PrivateKey::P384(
                p384::SecretKey::from_slice(&bytes).map_err(|_| KeyError::BadInput)?,
            ),
            Algorithm::Ed25519 => {
                let seed: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyError::BadInput)?;
                PrivateKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
            }
            _ => {
                use rsa::pkcs8::DecodePrivateKey;
                PrivateKey::Rsa(Box::new(
                    RsaPrivateKey::from_pkcs8_der(&bytes).map_err(|_| KeyError::BadInput)?,
                ))
            }
        };
        Ok(key)
    }
}

/// A private key as stored in the state file: algorithm plus hex of the scalar, seed or
/// PKCS#8 DER (RSA). The state file is test-fixture data, not a secure store.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredKey {
    /// The algorithm, so the bytes can be decoded.
    pub algorithm: Algorithm,
    /// Hex of the private key bytes.
    pub secret: String,
}

/// ECDSA input as a YubiKey takes it: a longer input keeps its leftmost bytes, a shorter one
/// is left-padded with zeros to the field size.
fn fit_digest(input: &[u8], size: usize) -> Result<Vec<u8>, KeyError> {
    if input.is_empty() {
        return Err(KeyError::BadInput);
    }
    let mut v = vec![0u8; size.saturating_sub(input.len())];
    v.extend_from_slice(input.get(..size.min(input.len())).unwrap_or(input));
    Ok(v)
}

/// Raw RSA private operation on a block that must be exactly the modulus size and below n.
fn rsa_private(k: &RsaPrivateKey, input: &[u8]) -> Result<Vec<u8>, KeyError> {
    let size = k.size();
    if input.len() != size {
        return Err(KeyError::BadInput);
    }
    let c = BigUint::from_bytes_be(input);
    if &c >= k.n() {
        return Err(KeyError::BadInput);
    }
    let m = rsa::hazmat::rsa_decrypt_and_check(k, Some(&mut OsRng), &c).map_err(crypto)?;
    let bytes = m.to_bytes_be();
    let mut out = vec![0u8; size.saturating_sub(bytes.len())];
    out.extend_from_slice(&bytes);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256, Sha384};

    #[test]
    fn p256_sign_verifies() {
        let k = PrivateKey::generate(Algorithm::EccP256).unwrap();
        let digest = Sha256::digest(b"hello");
        let der = k.sign(&digest).unwrap();
        let PrivateKey::P256(sk) = &k else {
            unreachable!()
        };
        let vk = p256::ecdsa::VerifyingKey::from(sk.public_key());
        let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
        use ecdsa::signature::hazmat::PrehashVerifier;
        vk.verify_prehash(&digest, &sig).unwrap();
        // Public key encoding: 86 41 04 ‖ x ‖ y.
        assert_eq!(k.public_tlvs()[..3], [0x86, 0x41, 0x04]);
    }

    #[test]
    fn p384_sign_verifies() {
        let k = PrivateKey::generate(Algorithm::EccP384).unwrap();
        let digest = Sha384::digest(b"hello");
        let der = k.sign(&digest).unwrap();
        let PrivateKey::P384(sk) = &k else {
            unreachable!()
        };
        let vk = p384::ecdsa::VerifyingKey::from(sk.public_key());
        let sig = p384::ecdsa::Signature::from_der(&der).unwrap();
        use ecdsa::signature::hazmat::PrehashVerifier;
        vk.verify_prehash(&digest, &sig).unwrap();
    }

    #[test]
    fn ed25519_sign_verifies() {
        let k = PrivateKey::generate(Algorithm::Ed25519).unwrap();
        let sig = k.sign(b"message").unwrap();
        let PrivateKey::Ed25519(sk) = &k else {
            unreachable!()
        };
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        sk.verifying_key().verify_strict(b"message", &sig).unwrap();
    }

    #[test]
    fn rsa_raw_sign_is_pkcs1_verifiable() {
        let k = PrivateKey::generate(Algorithm::Rsa1024).unwrap();
        let PrivateKey::Rsa(sk) = &k else {
            unreachable!()
        };
        // Build the PKCS#1 v1.5 block the way a host does and let the card exponentiate.
        let digest = Sha256::digest(b"hello");
        let prefix = hex::decode("3031300d060960864801650304020105000420").unwrap();
        let t = [prefix, digest.to_vec()].concat();
        let mut block = vec![0x00, 0x01];
        block.resize(128 - t.len() - 1, 0xFF);
        block.push(0x00);
        block.extend_from_slice(&t);
        let sig = k.sign(&block).unwrap();
        sk.to_public_key()
            .verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, &sig)
            .unwrap();
        assert!(matches!(k.sign(&block[1..]), Err(KeyError::BadInput)));
        assert!(matches!(k.sign(&[0xFF; 128]), Err(KeyError::BadInput)));
        // 7F49 content: 81 81 80 n 82 03 010001.
        assert_eq!(k.public_tlvs()[..3], [0x81, 0x81, 0x80]);
    }

    #[test]
    fn stored_roundtrip_and_import() {
        for alg in [
            Algorithm::EccP256,
            Algorithm::EccP384,
            Algorithm::Ed25519,
            Algorithm::Rsa1024,
        ] {
            let k = PrivateKey::generate(alg).unwrap();
            let back = PrivateKey::from_stored(&k.to_stored().unwrap()).unwrap();
            assert_eq!(back.public_tlvs(), k.public_tlvs());
            assert!(!format!("{k:?}").contains(&k.to_stored().unwrap().secret));
        }
        let k = PrivateKey::generate(Algorithm::EccP256).unwrap();
        let PrivateKey::P256(sk) = &k else {
            unreachable!()
        };
        let data = tlv::item(0x06, &sk.to_bytes());
        let items = tlv::parse_all(&data).unwrap();
        let imported = PrivateKey::import(Algorithm::EccP256, &items).unwrap();
        assert_eq!(imported.public_tlvs(), k.public_tlvs());
    }

    #[test]
    fn ecdh_agrees() {
        let a = PrivateKey::generate(Algorithm::EccP256).unwrap();
        let b = p256::SecretKey::random(&mut OsRng);
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let shared = a
            .ecdh(b.public_key().to_encoded_point(false).as_bytes())
            .unwrap();
        let PrivateKey::P256(ask) = &a else {
            unreachable!()
        };
        let expect =
            p256::ecdh::diffie_hellman(b.to_nonzero_scalar(), ask.public_key().as_affine());
        assert_eq!(shared, expect.raw_secret_bytes().to_vec());
    }

    #[test]
    fn firmware_gates() {
        let old: Firmware = "5.4.3".parse().unwrap();
        let new: Firmware = "5.7.1".parse().unwrap();
        assert!(!Algorithm::Ed25519.supported_on(old));
        assert!(Algorithm::Ed25519.supported_on(new));
        assert!(Algorithm::EccP256.supported_on(old));
        assert!("5.7".parse::<Firmware>().is_err());
    }
}
