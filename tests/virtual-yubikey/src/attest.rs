//! The emulated attestation PKI: a "Virtual YubiKey Attestation Root CA" (P-256, generated on
//! first run and kept in the state), the slot-F9 attestation key (RSA-2048, as on a real
//! YubiKey) with its certificate issued by that root, and the per-slot attestation
//! certificates that ATTEST (`F9`) returns, carrying Yubico's extensions
//! 1.3.6.1.4.1.41482.3.3 (firmware), .3.7 (serial), .3.8 (PIN/touch policy), .3.9 (form factor).
//!
//! Owns X.509 construction only. Keys come from `keys`; nothing here touches the wire.

use std::str::FromStr;
use std::time::Duration;

use der::asn1::{BitString, GeneralizedTime, ObjectIdentifier, OctetString, UtcTime};
use der::{Decode, Encode};
use sha2::{Digest, Sha256};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

use crate::keys::{Algorithm, Firmware, KeyError, PrivateKey};

/// Subject of the emulated root.
pub const ROOT_SUBJECT: &str = "CN=Virtual YubiKey Attestation Root CA";
/// Subject of the F9 (device attestation) certificate.
pub const F9_SUBJECT: &str = "CN=Virtual YubiKey PIV Attestation";

const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_YK_FIRMWARE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.3");
const OID_YK_SERIAL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.7");
const OID_YK_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.8");
const OID_YK_FORM_FACTOR: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.9");

/// Form factor reported in the attestation extension and READ CONFIG: USB-A keychain.
pub const FORM_FACTOR: u8 = 0x01;

fn der_err(e: der::Error) -> KeyError {
    KeyError::Crypto(e.to_string())
}

/// Everything the ATTEST command needs to describe a slot.
pub struct SlotFacts<'a> {
    /// The slot id, e.g. 0x9a, for the subject name.
    pub slot: u8,
    /// The key being attested.
    pub key: &'a PrivateKey,
    /// PIN policy byte (1 never, 2 once, 3 always).
    pub pin_policy: u8,
    /// Touch policy byte (1 never, 2 always, 3 cached).
    pub touch_policy: u8,
    /// Device serial.
    pub serial: u32,
    /// Device firmware.
    pub firmware: Firmware,
}

/// Creates the root CA key and its self-signed certificate (DER).
///
/// # Errors
/// `KeyError` if generation or encoding fails.
pub fn new_root() -> Result<(PrivateKey, Vec<u8>), KeyError> {
    let key = PrivateKey::generate(Algorithm::EccP256)?;
    let name = Name::from_str(ROOT_SUBJECT).map_err(der_err)?;
    let exts = ca_extensions()?;
    let cert = issue(&key, &name, &name, key.spki_der()?, exts)?;
    Ok((key, cert))
}

/// Creates the F9 attestation key (RSA-2048) and its certificate issued by the root (DER).
///
/// # Errors
/// `KeyError` if generation or encoding fails.
pub fn new_f9(root_key: &PrivateKey) -> Result<(PrivateKey, Vec<u8>), KeyError> {
    let key = PrivateKey::generate(Algorithm::Rsa2048)?;
    let issuer = Name::from_str(ROOT_SUBJECT).map_err(der_err)?;
    let subject = Name::from_str(F9_SUBJECT).map_err(der_err)?;
    let cert = issue(
        root_key,
        &issuer,
        &subject,
        key.spki_der()?,
        ca_extensions()?,
    )?;
    Ok((key, cert))
}

/// Issues the attestation certificate for a slot, signed by the F9 key, issued in the name of
/// the F9 certificate's subject.
///
/// # Errors
/// `KeyError` if the F9 key cannot sign or encoding fails.
pub fn attest_slot(
    f9_key: &PrivateKey,
    f9_cert_der: &[u8],
    facts: &SlotFacts<'_>,
) -> Result<Vec<u8>, KeyError> {
    let f9 = Certificate::from_der(f9_cert_der).map_err(der_err)?;
    let issuer = f9.tbs_certificate.subject;
    let subject = Name::from_str(&format!("CN=YubiKey PIV Attestation {:02x}", facts.slot))
        .map_err(der_err)?;
    let raw = |oid, value: Vec<u8>| -> Result<Extension, KeyError> {
        Ok(Extension {
            extn_id: oid,
            critical: false,
            extn_value: OctetString::new(value).map_err(der_err)?,
        })
    };
    let exts = vec![
        raw(OID_YK_FIRMWARE, facts.firmware.bytes().to_vec())?,
        raw(OID_YK_SERIAL, facts.serial.to_der().map_err(der_err)?)?,
        raw(OID_YK_POLICY, vec![facts.pin_policy, facts.touch_policy])?,
        raw(OID_YK_FORM_FACTOR, vec![FORM_FACTOR])?,
    ];
    issue(f9_key, &issuer, &subject, facts.key.spki_der()?, exts)
}

/// PEM of a DER certificate.
///
/// # Errors
/// `KeyError` if the DER does not parse.
pub fn to_pem(der_cert: &[u8]) -> Result<String, KeyError> {
    use der::EncodePem;
    Certificate::from_der(der_cert)
        .map_err(der_err)?
        .to_pem(der::pem::LineEnding::LF)
        .map_err(der_err)
}

fn ca_extensions() -> Result<Vec<Extension>, KeyError> {
    use der::oid::AssociatedOid;
    let bc = BasicConstraints {
        ca: true,
        path_len_constraint: None,
    };
    let ku = KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign);
    Ok(vec![
        Extension {
            extn_id: BasicConstraints::OID,
            critical: true,
            extn_value: OctetString::new(bc.to_der().map_err(der_err)?).map_err(der_err)?,
        },
        Extension {
            extn_id: KeyUsage::OID,
            critical: true,
            extn_value: OctetString::new(ku.to_der().map_err(der_err)?).map_err(der_err)?,
        },
    ])
}

fn validity() -> Result<Validity, KeyError> {
    // Fixed, like a device certificate: 2020-01-01 (UTCTime) to 2052-01-01 (GeneralizedTime).
    Ok(Validity {
        not_before: Time::UtcTime(
            UtcTime::from_unix_duration(Duration::from_secs(1_577_836_800)).map_err(der_err)?,
        ),
        not_after: Time::GeneralTime(
            GeneralizedTime::from_unix_duration(Duration::from_secs(2_587_766_400))
                .map_err(der_err)?,
        ),
    })
}

fn random_serial() -> Result<SerialNumber, KeyError> {
    use rand_core::RngCore;
    let mut b = [0u8; 8];
    rand_core::OsRng.fill_bytes(&mut b);
    b[0] = (b[0] & 0x7F) | 0x10; // positive, no leading zero byte
    SerialNumber::new(&b).map_err(der_err)
}

/// Builds and signs a v3 certificate.
fn issue(
    signer: &PrivateKey,
    issuer: &Name,
    subject: &Name,
    spki_der: Vec<u8>,
    extensions: Vec<Extension>,
) -> Result<Vec<u8>, KeyError> {
    let algorithm = signature_algorithm(signer)?;
    let tbs = TbsCertificate {
        version: Version::V3,
        serial_number: random_serial()?,
        signature: algorithm.clone(),
        issuer: issuer.clone(),
        validity: validity()?,
        subject: subject.clone(),
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(&spki_der).map_err(der_err)?,
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der().map_err(der_err)?;
    let signature = sign_tbs(signer, &tbs_der)?;
    let cert = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: algorithm,
        signature: BitString::from_bytes(&signature).map_err(der_err)?,
    };
    cert.to_der().map_err(der_err)
}

fn signature_algorithm(signer: &PrivateKey) -> Result<AlgorithmIdentifierOwned, KeyError> {
    Ok(match signer {
        PrivateKey::P256(_) => AlgorithmIdentifierOwned {
            oid: OID_ECDSA_SHA256,
            parameters: None,
        },
        PrivateKey::P384(_) => AlgorithmIdentifierOwned {
            oid: OID_ECDSA_SHA384,
            parameters: None,
        },
        PrivateKey::Rsa(_) => AlgorithmIdentifierOwned {
            oid: OID_RSA_SHA256,
            parameters: Some(der::Any::from_der(&[0x05, 0x00]).map_err(der_err)?),
        },
        PrivateKey::Ed25519(_) => return Err(KeyError::Unsupported),
    })
}

fn sign_tbs(signer: &PrivateKey, tbs_der: &[u8]) -> Result<Vec<u8>, KeyError> {
    match signer {
        PrivateKey::P256(_) => signer.sign(&Sha256::digest(tbs_der)),
        PrivateKey::P384(_) => signer.sign(&sha2::Sha384::digest(tbs_der)),
        PrivateKey::Rsa(k) => k
            .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(tbs_der))
            .map_err(|e| KeyError::Crypto(e.to_string())),
        PrivateKey::Ed25519(_) => Err(KeyError::Unsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecdsa::signature::hazmat::PrehashVerifier;
    use spki::DecodePublicKey;

    fn verify(issuer_cert: &Certificate, cert: &Certificate) {
        let tbs = cert.tbs_certificate.to_der().unwrap();
        let sig = cert.signature.raw_bytes();
        let spki = issuer_cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .unwrap();
        if cert.signature_algorithm.oid == OID_ECDSA_SHA256 {
            let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
            vk.verify_prehash(
                &Sha256::digest(&tbs),
                &p256::ecdsa::Signature::from_der(sig).unwrap(),
            )
            .unwrap();
        } else {
            let pk = rsa::RsaPublicKey::from_public_key_der(&spki).unwrap();
            pk.verify(
                rsa::Pkcs1v15Sign::new::<Sha256>(),
                &Sha256::digest(&tbs),
                sig,
            )
            .unwrap();
        }
    }

    #[test]
    fn chain_root_f9_leaf_verifies() {
        let (root_key, root_der) = new_root().unwrap();
        let (f9_key, f9_der) = new_f9(&root_key).unwrap();
        let slot_key = PrivateKey::generate(Algorithm::EccP256).unwrap();
        let facts = SlotFacts {
            slot: 0x9a,
            key: &slot_key,
            pin_policy: 2,
            touch_policy: 1,
            serial: 12_345_678,
            firmware: Firmware(5, 4, 3),
        };
        let leaf_der = attest_slot(&f9_key, &f9_der, &facts).unwrap();
        let root = Certificate::from_der(&root_der).unwrap();
        let f9 = Certificate::from_der(&f9_der).unwrap();
        let leaf = Certificate::from_der(&leaf_der).unwrap();
        verify(&root, &root);
        verify(&root, &f9);
        verify(&f9, &leaf);
        assert_eq!(leaf.tbs_certificate.issuer, f9.tbs_certificate.subject);
        assert_eq!(
            leaf.tbs_certificate
                .subject_public_key_info
                .to_der()
                .unwrap(),
            slot_key.spki_der().unwrap()
        );
        let exts = leaf.tbs_certificate.extensions.unwrap();
        let get = |oid| {
            exts.iter()
                .find(|e| e.extn_id == oid)
                .unwrap()
                .extn_value
                .as_bytes()
                .to_vec()
        };
        assert_eq!(get(OID_YK_FIRMWARE), vec![5, 4, 3]);
        assert_eq!(get(OID_YK_SERIAL), hex::decode("020400BC614E").unwrap());
        assert_eq!(get(OID_YK_POLICY), vec![2, 1]);
        assert!(
            to_pem(&root_der)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
    }
}
