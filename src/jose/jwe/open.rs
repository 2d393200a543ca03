//! The host side of JWE decryption around the device's one private-key step (feature `server`):
//! the `epk` point check before the device sees it, the Concat KDF (RFC 7518 §4.6.2), AES key
//! unwrap (RFC 3394), and content decryption with the tag checked first (AES-GCM,
//! AES-CBC-HMAC-SHA2 per RFC 7518 §5.2.2).
//!
//! Every key it derives or unwraps lives in a zeroizing buffer and leaves only as the plaintext
//! it opens. A CEK that cannot be right (wrong length from the device, key-wrap integrity
//! failure) is replaced by a random one and the content is still decrypted, so that the failure
//! shows only at the tag, as RFC 7516 §11.5 asks; the log still gets the first reason.

use aes_gcm::{Aes128Gcm, Aes256Gcm, KeyInit as _};
use cbc::cipher::{BlockModeDecrypt as _, KeyIvInit as _, block_padding::Pkcs7};
use hmac::Hmac;
use sha2::{Digest as _, Sha256, Sha512};
use subtle::ConditionallySelectable as _;
use zeroize::{Zeroize as _, Zeroizing};

use super::{Jwe, JweAlg, JweEnc, JweError};
use crate::crypto::{Curve, DecryptOp, KeyKind, OaepHash, PublicKey};
use crate::secret::SecretBytes;

impl Jwe {
    /// What the device must do with the private key of `public` (the version the `kid`
    /// chose): RSA-OAEP decryption of the encrypted key (its length must be the modulus
    /// length), or ECDH with the `epk`, which must be a point on the key's curve (checked here,
    /// before the device sees it).
    ///
    /// # Errors
    /// [`JweError::Alg`] when the alg does not fit the key; [`JweError::Epk`],
    /// [`JweError::Length`].
    pub fn device_op(&self, public: &PublicKey) -> Result<DecryptOp, JweError> {
        let kind = public.kind();
        if !self.alg.fits(kind) {
            return Err(JweError::Alg(format!(
                "{} does not fit a {kind} key",
                self.alg
            )));
        }
        match (self.alg, kind) {
            (JweAlg::RsaOaep | JweAlg::RsaOaep256, KeyKind::Rsa { bits }) => {
                let k = (bits as usize).div_ceil(8);
                if self.encrypted_key.len() != k {
                    return Err(JweError::Length(
                        "the encrypted key is not the modulus length",
                    ));
                }
                let hash = if self.alg == JweAlg::RsaOaep {
                    OaepHash::Sha1
                } else {
                    OaepHash::Sha256
                };
                Ok(DecryptOp::RsaOaep {
                    hash,
                    ciphertext: self.encrypted_key.clone(),
                })
            }
            (_, KeyKind::Ec(curve)) => {
                let Some(peer @ PublicKey::Ec { curve: c, x, y }) = &self.epk else {
                    return Err(JweError::Epk("missing"));
                };
                if *c != curve {
                    return Err(JweError::Epk("on another curve than the key"));
                }
                if !on_curve(curve, x, y) {
                    return Err(JweError::Epk("not a point on the curve"));
                }
                Ok(DecryptOp::Ecdh { peer: peer.clone() })
            }
            _ => Err(JweError::Alg(format!(
                "{} does not fit a {kind} key",
                self.alg
            ))),
        }
    }

    /// Finish with the device's result (the CEK for RSA-OAEP, the shared secret Z for ECDH):
    /// Concat KDF and key unwrap where the alg needs them, then content decryption with the
    /// protected header as AAD and the tag checked. The plaintext is returned as a secret.
    ///
    /// # Errors
    /// [`JweError::Decryption`] or [`JweError::Length`]; the work done does not depend on
    /// where decryption failed more than the algorithms force.
    pub fn decrypt(&self, device_result: &SecretBytes) -> Result<SecretBytes, JweError> {
        let cek_len = self.enc.cek_len();
        let (cek, cek_fault) = match self.alg {
            JweAlg::RsaOaep | JweAlg::RsaOaep256 => {
                let r = device_result.expose();
                let fits = r.len() == cek_len;
                let cek = cek_or_random(fits.then_some(r), cek_len)?;
                (
                    cek,
                    (!fits).then_some("the decrypted CEK has the wrong length"),
                )
            }
            JweAlg::EcdhEs | JweAlg::EcdhEsA128Kw | JweAlg::EcdhEsA256Kw => {
                let z = device_result.expose();
                let field_len = match &self.epk {
                    Some(PublicKey::Ec { curve, .. }) => curve.field_len(),
                    _ => return Err(JweError::Epk("missing")),
                };
                if z.len() != field_len {
                    return Err(JweError::Decryption(
                        "the shared secret is not the field length",
                    ));
                }
                match self.alg {
                    JweAlg::EcdhEs => {
                        let cek = concat_kdf(z, self.enc.name(), &self.apu, &self.apv, cek_len);
                        (cek, None)
                    }
                    _ => {
                        let kek_len = if self.alg == JweAlg::EcdhEsA128Kw {
                            16
                        } else {
                            32
                        };
                        let kek = concat_kdf(z, self.alg.name(), &self.apu, &self.apv, kek_len);
                        let unwrapped = aes_unwrap(&kek, &self.encrypted_key, cek_len);
                        let fault = unwrapped
                            .is_none()
                            .then_some("AES key unwrap failed its integrity check");
                        (
                            cek_or_random(unwrapped.as_deref().map(|v| &v[..]), cek_len)?,
                            fault,
                        )
                    }
                }
            }
        };
        let opened = self.open_content(&cek);
        match (cek_fault, opened) {
            (Some(reason), _) => Err(JweError::Decryption(reason)),
            (None, result) => result,
        }
    }

    /// Content decryption with `cek` and the protected header (its base64url text) as AAD.
    fn open_content(&self, cek: &[u8]) -> Result<SecretBytes, JweError> {
        let aad = self.protected_b64.as_bytes();
        match self.enc {
            JweEnc::A128Gcm => gcm::<Aes128Gcm>(cek, &self.iv, aad, &self.ciphertext, &self.tag),
            JweEnc::A256Gcm => gcm::<Aes256Gcm>(cek, &self.iv, aad, &self.ciphertext, &self.tag),
            JweEnc::A128CbcHs256 => cbc_hmac::<aes::Aes128, Hmac<Sha256>>(
                cek,
                &self.iv,
                aad,
                &self.ciphertext,
                &self.tag,
            ),
            JweEnc::A256CbcHs512 => cbc_hmac::<aes::Aes256, Hmac<Sha512>>(
                cek,
                &self.iv,
                aad,
                &self.ciphertext,
                &self.tag,
            ),
        }
    }
}

/// Whether `(x, y)` is a point of `curve` (never the identity, which has no affine
/// coordinates): decoded as an uncompressed SEC1 point, which checks the curve equation.
fn on_curve(curve: Curve, x: &[u8], y: &[u8]) -> bool {
    let mut sec1 = Vec::with_capacity(1 + x.len() + y.len());
    sec1.push(0x04);
    sec1.extend_from_slice(x);
    sec1.extend_from_slice(y);
    match curve {
        Curve::P256 => p256::PublicKey::from_sec1_bytes(&sec1).is_ok(),
        Curve::P384 => p384::PublicKey::from_sec1_bytes(&sec1).is_ok(),
    }
}

/// `key` when given (it has the right length), else `len` random bytes, chosen without a branch
/// on the key bytes: a CEK that cannot be right then fails at the tag like any other.
fn cek_or_random(key: Option<&[u8]>, len: usize) -> Result<Zeroizing<Vec<u8>>, JweError> {
    let mut cek = Zeroizing::new(vec![0u8; len]);
    getrandom::fill(&mut cek).map_err(|_| JweError::Decryption("no randomness for the CEK"))?;
    let use_key = subtle::Choice::from(u8::from(key.is_some()));
    let key = key.unwrap_or_default();
    for (i, b) in cek.iter_mut().enumerate() {
        b.conditional_assign(key.get(i).unwrap_or(&0), use_key);
    }
    Ok(cek)
}

/// The Concat KDF of NIST SP 800-56A §5.8.1 as RFC 7518 §4.6.2 uses it: SHA-256 over
/// `counter ‖ Z ‖ OtherInfo`, OtherInfo = AlgorithmID ‖ PartyUInfo ‖ PartyVInfo (each with a
/// 32-bit big-endian length prefix) ‖ SuppPubInfo (the key length in bits, 32-bit big-endian).
fn concat_kdf(z: &[u8], alg_id: &str, apu: &[u8], apv: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len.next_multiple_of(32)));
    // Lengths here are a key length (≤ 64) and header members bounded at parse.
    let prefixed = |h: &mut Sha256, v: &[u8]| {
        h.update((v.len() as u32).to_be_bytes());
        h.update(v);
    };
    let mut counter: u32 = 1;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        prefixed(&mut h, alg_id.as_bytes());
        prefixed(&mut h, apu);
        prefixed(&mut h, apv);
        h.update(((len * 8) as u32).to_be_bytes());
        let mut block = h.finalize();
        out.extend_from_slice(&block);
        block.as_mut_slice().zeroize();
        counter += 1;
    }
    out.truncate(len);
    out
}

/// AES key unwrap (RFC 3394) of `wrapped` with `kek` (16 or 32 bytes), expecting `cek_len`
/// bytes; `None` when the integrity check fails.
fn aes_unwrap(kek: &[u8], wrapped: &[u8], cek_len: usize) -> Option<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(vec![0u8; wrapped.len()]);
    let n = match kek.len() {
        16 => aes_kw::KwAes128::new_from_slice(kek)
            .ok()?
            .unwrap_key(wrapped, &mut buf)
            .ok()?
            .len(),
        32 => aes_kw::KwAes256::new_from_slice(kek)
            .ok()?
            .unwrap_key(wrapped, &mut buf)
            .ok()?
            .len(),
        _ => return None,
    };
    buf.truncate(n);
    (n == cek_len).then_some(buf)
}

/// AES-GCM decryption with the 16-byte tag checked (by the `aead` crate, in constant time).
fn gcm<C: aes_gcm::KeyInit + aes_gcm::aead::AeadInOut>(
    cek: &[u8],
    iv: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
) -> Result<SecretBytes, JweError> {
    let cipher = C::new_from_slice(cek).map_err(|_| JweError::Length("CEK"))?;
    let nonce = aes_gcm::aead::Nonce::<C>::try_from(iv).map_err(|_| JweError::Length("IV"))?;
    let tag = aes_gcm::aead::Tag::<C>::try_from(tag).map_err(|_| JweError::Length("tag"))?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_inout_detached(&nonce, aad, buf.as_mut_slice().into(), &tag)
        .map_err(|_| JweError::Decryption("the GCM tag does not verify"))?;
    Ok(SecretBytes::new(std::mem::take(&mut *buf)))
}

/// AES-CBC with HMAC-SHA2 (RFC 7518 §5.2.2.2): MAC key the first half of the CEK, encryption
/// key the second; the tag (the first half of HMAC over AAD ‖ IV ‖ ciphertext ‖ AL, AL the
/// AAD length in bits as 64-bit big-endian) is checked in constant time before anything is
/// decrypted, then CBC with PKCS#7 unpadding.
fn cbc_hmac<C, M>(
    cek: &[u8],
    iv: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
) -> Result<SecretBytes, JweError>
where
    C: cbc::cipher::BlockCipherDecrypt + cbc::cipher::KeyInit,
    cbc::Decryptor<C>: cbc::cipher::KeyIvInit,
    M: hmac::Mac + hmac::KeyInit,
{
    let (mac_key, enc_key) = cek.split_at(cek.len() / 2);
    let mut mac =
        <M as hmac::KeyInit>::new_from_slice(mac_key).map_err(|_| JweError::Length("MAC key"))?;
    mac.update(aad);
    mac.update(iv);
    mac.update(ciphertext);
    mac.update(&((aad.len() as u64) * 8).to_be_bytes());
    mac.verify_truncated_left(tag)
        .map_err(|_| JweError::Decryption("the CBC-HMAC tag does not verify"))?;
    let mut buf = Zeroizing::new(ciphertext.to_vec());
    let n = cbc::Decryptor::<C>::new_from_slices(enc_key, iv)
        .map_err(|_| JweError::Length("CBC key or IV"))?
        .decrypt_padded::<Pkcs7>(&mut buf)
        .map_err(|_| JweError::Decryption("the CBC padding is invalid"))?
        .len();
    buf.truncate(n);
    Ok(SecretBytes::new(std::mem::take(&mut *buf)))
}

#[cfg(test)]
mod tests;
