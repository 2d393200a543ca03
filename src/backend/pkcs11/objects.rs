//! PKCS#11 object templates and attribute decoding: how sigild's keys and records look on a
//! token, and how a public key is read back. Runs inside a worker with its session.

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use der::{Decode as _, Encode as _};
use zeroize::Zeroize as _;

use super::{Fail, Pkcs11Uri, SignData, uri::ObjectType};
use crate::backend::import::ec_point;
use crate::backend::{BackendError, KeyId, KeySpec, PrivateKeyMaterial, Record, StoredKeyPair};
use crate::crypto::{
    Curve, HashAlg, KeyKind, KeyPurpose, PublicKey, SignOp, digest_info_prefix, trim_leading_zeros,
};

/// `CKA_APPLICATION` of sigild's metadata records.
const RECORD_APPLICATION: &[u8] = b"sigild";

const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// id-Ed25519 (RFC 8410), what PKCS#11 3.0 asks for in `CKA_EC_PARAMS`.
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// PrintableString "edwards25519", what pkcs11-tool and older tokens write instead.
const NAME_ED25519: &[u8] = b"\x13\x0cedwards25519";

/// The mechanism and input for one [`SignOp`] (the DigestInfo for raw PKCS#1 v1.5 is added here).
pub(super) fn sign_mechanism(op: &SignOp) -> SignData {
    let hash_mech = |h: HashAlg| match h {
        HashAlg::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        HashAlg::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
        HashAlg::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
    };
    match op {
        SignOp::Ecdsa { digest } => (Mechanism::Ecdsa, digest.clone()),
        SignOp::RsaPss { hash, digest } => {
            let (hash_alg, mgf) = hash_mech(*hash);
            let params = PkcsPssParams {
                hash_alg,
                mgf,
                s_len: (hash.len() as u64).into(),
            };
            (Mechanism::RsaPkcsPss(params), digest.clone())
        }
        SignOp::RsaPkcs1v15 { hash, digest } => {
            let mut data = digest_info_prefix(*hash).to_vec();
            data.extend_from_slice(digest);
            (Mechanism::RsaPkcs, data)
        }
        SignOp::Ed25519 { message } => (
            Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
            message.clone(),
        ),
    }
}

/// Bring a device signature into the normal form of the backend contract, refusing anything
/// of the wrong size rather than passing a broken signature on.
pub(super) fn normalise_signature(
    kind: KeyKind,
    mut sig: Vec<u8>,
) -> Result<Vec<u8>, BackendError> {
    let want = match kind {
        KeyKind::Ec(curve) => 2 * curve.field_len(),
        KeyKind::Rsa { bits } => (bits as usize).div_ceil(8),
        KeyKind::Ed25519 => 64,
    };
    if matches!(kind, KeyKind::Rsa { .. }) && sig.len() < want {
        // PKCS#11 allows a signature shorter than the modulus; JOSE wants it full length.
        let mut padded = vec![0u8; want - sig.len()];
        padded.append(&mut sig);
        sig = padded;
    }
    if sig.len() != want {
        return Err(BackendError::Malformed(format!(
            "{kind} signature of {} bytes, expected {want}",
            sig.len()
        )));
    }
    Ok(sig)
}

/// 16 random bytes for a new `CKA_ID`.
pub(super) fn random_id() -> Result<Vec<u8>, BackendError> {
    let mut id = vec![0u8; 16];
    getrandom::fill(&mut id).map_err(|e| BackendError::Device {
        function: "getrandom".into(),
        code: e.to_string(),
    })?;
    Ok(id)
}

/// The one object of `class` with `CKA_ID` = `id`.
pub(super) fn find_one(
    session: &Session,
    class: ObjectClass,
    id: &KeyId,
) -> Result<ObjectHandle, Fail> {
    let found = session.find_objects(&[Attribute::Class(class), Attribute::Id(id.0.clone())])?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(BackendError::KeyNotFound(id.clone()).into()),
        _ => Err(BackendError::InvalidRequest(format!(
            "{} objects share CKA_ID {}; sigild needs it unique",
            found.len(),
            id.to_hex()
        ))
        .into()),
    }
}

/// Attributes both halves of every sigild key pair carry.
fn common(label: &str, id: &KeyId) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.0.clone()),
    ]
}

/// A private key that never leaves the token and can do exactly what `purpose` needs: sign; or
/// decrypt and unwrap (RSA), derive (EC). The token itself then refuses the other use.
fn private_template(label: &str, id: &KeyId, kind: KeyKind, purpose: KeyPurpose) -> Vec<Attribute> {
    let decrypt = purpose == KeyPurpose::Decrypt;
    let rsa = matches!(kind, KeyKind::Rsa { .. });
    let mut t = common(label, id);
    t.extend([
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(!decrypt),
        Attribute::Decrypt(decrypt && rsa),
        Attribute::Unwrap(decrypt && rsa),
        Attribute::Derive(decrypt && !rsa),
    ]);
    t
}

/// The public half matching [`private_template`]: verifies, or encrypts and wraps (RSA; EC
/// public keys of decryption keys do nothing on the token).
fn public_template(label: &str, id: &KeyId, kind: KeyKind, purpose: KeyPurpose) -> Vec<Attribute> {
    let decrypt = purpose == KeyPurpose::Decrypt;
    let rsa = matches!(kind, KeyKind::Rsa { .. });
    let mut t = common(label, id);
    t.extend([
        Attribute::Private(false),
        Attribute::Verify(!decrypt),
        Attribute::Encrypt(decrypt && rsa),
        Attribute::Wrap(decrypt && rsa),
    ]);
    t
}

fn curve_params(kind: KeyKind) -> Option<&'static [u8]> {
    match kind {
        KeyKind::Ec(Curve::P256) => Some(OID_P256),
        KeyKind::Ec(Curve::P384) => Some(OID_P384),
        KeyKind::Ed25519 => Some(OID_ED25519),
        KeyKind::Rsa { .. } => None,
    }
}

/// Generate a key pair and read back its public key.
pub(super) fn generate(session: &Session, spec: &KeySpec, id: &KeyId) -> Result<PublicKey, Fail> {
    let mut public = public_template(&spec.label, id, spec.kind, spec.purpose);
    let private = private_template(&spec.label, id, spec.kind, spec.purpose);
    let mechanism = match spec.kind {
        KeyKind::Rsa { bits } => {
            if !matches!(bits, 2048 | 3072 | 4096) {
                return Err(BackendError::Unsupported(format!(
                    "RSA-{bits}: sigild generates RSA-2048, 3072 or 4096"
                ))
                .into());
            }
            public.push(Attribute::ModulusBits(u64::from(bits).into()));
            public.push(Attribute::PublicExponent(vec![0x01, 0x00, 0x01]));
            Mechanism::RsaPkcsKeyPairGen
        }
        KeyKind::Ec(_) => {
            public.extend(curve_params(spec.kind).map(|p| Attribute::EcParams(p.to_vec())));
            Mechanism::EccKeyPairGen
        }
        KeyKind::Ed25519 => {
            public.extend(curve_params(spec.kind).map(|p| Attribute::EcParams(p.to_vec())));
            Mechanism::EccEdwardsKeyPairGen
        }
    };
    let (pub_handle, _priv) = session
        .generate_key_pair(&mechanism, &public, &private)
        .map_err(|e| {
            refused(
                || {
                    format!(
                        "{} key generation with {}",
                        spec.kind,
                        mechanism.mechanism_type()
                    )
                },
                e,
            )
        })?;
    read_public(session, pub_handle)
}

/// Create the private and public objects of imported key material, then zeroize every copy of
/// the secret attributes made for the call.
pub(super) fn import(
    session: &Session,
    label: &str,
    id: &KeyId,
    m: &PrivateKeyMaterial,
    purpose: KeyPurpose,
) -> Result<(), Fail> {
    let kind = m.public().kind();
    let mut private = private_template(label, id, kind, purpose);
    let mut public = public_template(label, id, kind, purpose);
    private.push(Attribute::Class(ObjectClass::PRIVATE_KEY));
    public.push(Attribute::Class(ObjectClass::PUBLIC_KEY));
    match m {
        PrivateKeyMaterial::Ec {
            curve,
            d,
            public: pk,
        } => {
            let params = curve_params(KeyKind::Ec(*curve))
                .unwrap_or_default()
                .to_vec();
            let PublicKey::Ec { x, y, .. } = pk else {
                return Err(BackendError::Import("EC key with a non-EC public key".into()).into());
            };
            let mut point = vec![0x04];
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            private.extend([
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(params.clone()),
                Attribute::Value(d.to_vec()),
            ]);
            public.extend([
                Attribute::KeyType(KeyType::EC),
                Attribute::EcParams(params),
                Attribute::EcPoint(octet_string(&point)?),
            ]);
        }
        PrivateKeyMaterial::Rsa {
            d,
            p,
            q,
            dp,
            dq,
            qinv,
            public: pk,
        } => {
            let PublicKey::Rsa { n, e } = pk else {
                return Err(
                    BackendError::Import("RSA key with a non-RSA public key".into()).into(),
                );
            };
            private.extend([
                Attribute::KeyType(KeyType::RSA),
                Attribute::Modulus(n.clone()),
                Attribute::PublicExponent(e.clone()),
                Attribute::PrivateExponent(d.to_vec()),
                Attribute::Prime1(p.to_vec()),
                Attribute::Prime2(q.to_vec()),
                Attribute::Exponent1(dp.to_vec()),
                Attribute::Exponent2(dq.to_vec()),
                Attribute::Coefficient(qinv.to_vec()),
            ]);
            public.extend([
                Attribute::KeyType(KeyType::RSA),
                Attribute::Modulus(n.clone()),
                Attribute::PublicExponent(e.clone()),
            ]);
        }
        PrivateKeyMaterial::Ed25519 { seed, public: pk } => {
            let PublicKey::Ed25519 { x } = pk else {
                return Err(
                    BackendError::Import("Ed25519 key with another public key".into()).into(),
                );
            };
            private.extend([
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::EcParams(OID_ED25519.to_vec()),
                Attribute::Value(seed.to_vec()),
            ]);
            public.extend([
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::EcParams(OID_ED25519.to_vec()),
                Attribute::EcPoint(octet_string(x)?),
            ]);
        }
    }
    let what = || format!("import of an {} key (C_CreateObject)", m.public().kind());
    let created = session.create_object(&private);
    wipe(&mut private);
    let priv_handle = created.map_err(|e| refused(what, e))?;
    if let Err(e) = session.create_object(&public) {
        // Leave nothing half-imported behind.
        let _ = session.destroy_object(priv_handle);
        return Err(refused(what, e));
    }
    Ok(())
}

/// A device error of a key-making call, with what was attempted when the token refused it as
/// unsupported (`CKR_MECHANISM_INVALID`, `CKR_CURVE_NOT_SUPPORTED`, …): the bare code does not
/// say which key or mechanism. Other errors stay raw, for the retry rules.
fn refused(what: impl FnOnce() -> String, e: cryptoki::error::Error) -> Fail {
    match super::map_ck(&e) {
        BackendError::Unsupported(code) => {
            BackendError::Unsupported(format!("{}: the token refused it ({code})", what())).into()
        }
        _ => Fail::Device(e),
    }
}

/// Zeroize the secret-bearing attributes of a template.
pub(super) fn wipe(template: &mut [Attribute]) {
    for a in template {
        match a {
            Attribute::Value(v)
            | Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v) => v.zeroize(),
            _ => {}
        }
    }
}

pub(super) fn octet_string(bytes: &[u8]) -> Result<Vec<u8>, Fail> {
    der::asn1::OctetStringRef::new(bytes)
        .and_then(|o| o.to_der())
        .map_err(|e| BackendError::Import(format!("cannot encode EC point: {e}")).into())
}

/// Adopt a key made by another tool: find exactly one private key by `id` and/or `object`,
/// check that it allows `purpose` (`CKA_SIGN`; `CKA_DECRYPT` for RSA, `CKA_DERIVE` for EC
/// decryption keys) and cannot leave the token, and read its public key.
pub(super) fn adopt(
    session: &Session,
    uri: &Pkcs11Uri,
    purpose: KeyPurpose,
) -> Result<(KeyId, String, PublicKey), Fail> {
    if uri.id.is_none() && uri.object.is_none() {
        return Err(BackendError::InvalidRequest("the key URI needs id= or object=".into()).into());
    }
    if uri.object_type.is_some_and(|t| t != ObjectType::Private) {
        return Err(BackendError::InvalidRequest(
            "the key URI must name a private key (type=private)".into(),
        )
        .into());
    }
    let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
    template.extend(uri.id.clone().map(Attribute::Id));
    template.extend(
        uri.object
            .as_ref()
            .map(|o| Attribute::Label(o.as_bytes().to_vec())),
    );
    let found = session.find_objects(&template)?;
    let handle = match found.as_slice() {
        [one] => *one,
        [] => {
            return Err(BackendError::InvalidRequest(
                "no private key on the token matches the URI".into(),
            )
            .into());
        }
        _ => {
            return Err(BackendError::InvalidRequest(format!(
                "{} private keys match the URI; add id=",
                found.len()
            ))
            .into());
        }
    };
    let attrs = session.get_attributes(
        handle,
        &[
            AttributeType::Id,
            AttributeType::Label,
            AttributeType::Sign,
            AttributeType::Decrypt,
            AttributeType::Derive,
            AttributeType::Sensitive,
            AttributeType::Extractable,
        ],
    )?;
    let mut id = Vec::new();
    let mut label = String::new();
    let (mut sign, mut decrypt, mut derive) = (false, false, false);
    let (mut sensitive, mut extractable) = (false, true);
    for a in attrs {
        match a {
            Attribute::Id(v) => id = v,
            Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
            Attribute::Sign(b) => sign = b,
            Attribute::Decrypt(b) => decrypt = b,
            Attribute::Derive(b) => derive = b,
            Attribute::Sensitive(b) => sensitive = b,
            Attribute::Extractable(b) => extractable = b,
            _ => {}
        }
    }
    if id.is_empty() {
        return Err(BackendError::InvalidRequest(
            "the key has no CKA_ID; give it one with pkcs11-tool --id".into(),
        )
        .into());
    }
    if !sensitive || extractable {
        return Err(BackendError::InvalidRequest(
            "the key can leave the token (CKA_SENSITIVE=false or CKA_EXTRACTABLE=true); sigild only adopts non-extractable keys".into(),
        )
        .into());
    }
    let id = KeyId(id);
    let (_, public) = read_key(session, &id)?;
    let refuse = |what: &str| -> Fail {
        BackendError::InvalidRequest(format!("the key does not allow {what}=false)")).into()
    };
    match (purpose, public.kind()) {
        (KeyPurpose::Sign, _) if !sign => return Err(refuse("signing (CKA_SIGN")),
        (KeyPurpose::Decrypt, KeyKind::Rsa { .. }) if !decrypt => {
            return Err(refuse("decryption (CKA_DECRYPT"));
        }
        (KeyPurpose::Decrypt, KeyKind::Ec(_)) if !derive => {
            return Err(refuse("key agreement (CKA_DERIVE"));
        }
        (KeyPurpose::Decrypt, KeyKind::Ed25519) => {
            return Err(BackendError::InvalidRequest(
                "an Ed25519 key cannot decrypt; decryption keys are RSA or EC P-256/P-384".into(),
            )
            .into());
        }
        _ => {}
    }
    Ok((id, label, public))
}

/// Label and public key of the pair with `CKA_ID` = `id` (public object, or the private
/// object's public attributes for RSA keys stored without one).
pub(super) fn read_key(session: &Session, id: &KeyId) -> Result<(String, PublicKey), Fail> {
    let private = find_one(session, ObjectClass::PRIVATE_KEY, id)?;
    let label = session
        .get_attributes(private, &[AttributeType::Label])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Label(v) => Some(String::from_utf8_lossy(&v).into_owned()),
            _ => None,
        })
        .unwrap_or_default();
    let public = match find_one(session, ObjectClass::PUBLIC_KEY, id) {
        Ok(h) => read_public(session, h)?,
        Err(Fail::Backend(BackendError::KeyNotFound(_))) => read_public(session, private)?,
        Err(e) => return Err(e),
    };
    Ok((label, public))
}

/// Decode the public key attributes of a key object.
fn read_public(session: &Session, handle: ObjectHandle) -> Result<PublicKey, Fail> {
    let kt = session
        .get_attributes(handle, &[AttributeType::KeyType])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::KeyType(k) => Some(k),
            _ => None,
        })
        .ok_or_else(|| BackendError::Malformed("key without CKA_KEY_TYPE".into()))?;
    if kt == KeyType::RSA {
        let attrs = session.get_attributes(
            handle,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )?;
        let (mut n, mut e) = (Vec::new(), Vec::new());
        for a in attrs {
            match a {
                Attribute::Modulus(v) => n = trim_leading_zeros(&v),
                Attribute::PublicExponent(v) => e = trim_leading_zeros(&v),
                _ => {}
            }
        }
        if n.is_empty() || e.is_empty() {
            return Err(
                BackendError::Malformed("RSA key without modulus or exponent".into()).into(),
            );
        }
        return Ok(PublicKey::Rsa { n, e });
    }
    if kt != KeyType::EC && kt != KeyType::EC_EDWARDS {
        return Err(BackendError::Unsupported(format!("key type {kt}")).into());
    }
    let attrs =
        session.get_attributes(handle, &[AttributeType::EcParams, AttributeType::EcPoint])?;
    let (mut params, mut point) = (Vec::new(), Vec::new());
    for a in attrs {
        match a {
            Attribute::EcParams(v) => params = v,
            Attribute::EcPoint(v) => point = v,
            _ => {}
        }
    }
    let raw = unwrap_octet_string(&point);
    if kt == KeyType::EC_EDWARDS {
        if params != OID_ED25519 && params != NAME_ED25519 {
            return Err(
                BackendError::Unsupported("Edwards curve other than Ed25519".into()).into(),
            );
        }
        if raw.len() != 32 {
            return Err(BackendError::Malformed("Ed25519 point is not 32 bytes".into()).into());
        }
        return Ok(PublicKey::Ed25519 { x: raw.to_vec() });
    }
    let curve = if params == OID_P256 {
        Curve::P256
    } else if params == OID_P384 {
        Curve::P384
    } else {
        return Err(BackendError::Unsupported("EC curve other than P-256 or P-384".into()).into());
    };
    ec_point(curve, raw).map_err(|e| BackendError::Malformed(e).into())
}

/// `CKA_EC_POINT` is a DER OCTET STRING by the standard, the raw point on some tokens.
fn unwrap_octet_string(v: &[u8]) -> &[u8] {
    match <&der::asn1::OctetStringRef>::from_der(v) {
        Ok(o) => o.as_bytes(),
        Err(_) => v,
    }
}

/// Destroy the private and public objects with `CKA_ID` = `id`, private first; a half found
/// alone (a destroy interrupted between the two) is destroyed too.
pub(super) fn destroy(session: &Session, id: &KeyId) -> Result<(), Fail> {
    let of = |class| session.find_objects(&[Attribute::Class(class), Attribute::Id(id.0.clone())]);
    let private = of(ObjectClass::PRIVATE_KEY)?;
    if private.len() > 1 {
        return Err(BackendError::InvalidRequest(format!(
            "{} private keys share CKA_ID {}; sigild needs it unique",
            private.len(),
            id.to_hex()
        ))
        .into());
    }
    let public = of(ObjectClass::PUBLIC_KEY)?;
    if private.is_empty() && public.is_empty() {
        return Err(BackendError::KeyNotFound(id.clone()).into());
    }
    for h in private.into_iter().chain(public) {
        session.destroy_object(h)?;
    }
    Ok(())
}

/// Every private and public key object with a `CKA_ID`, grouped by it.
pub(super) fn key_pairs(session: &Session) -> Result<Vec<StoredKeyPair>, Fail> {
    let mut pairs: std::collections::BTreeMap<Vec<u8>, StoredKeyPair> = Default::default();
    for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
        for h in session.find_objects(&[Attribute::Class(class)])? {
            let (mut id, mut label) = (Vec::new(), String::new());
            for a in session.get_attributes(h, &[AttributeType::Id, AttributeType::Label])? {
                match a {
                    Attribute::Id(v) => id = v,
                    Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
                    _ => {}
                }
            }
            if id.is_empty() {
                continue;
            }
            let pair = pairs.entry(id.clone()).or_insert_with(|| StoredKeyPair {
                id: KeyId(id),
                label: label.clone(),
                private: false,
                public: false,
            });
            if pair.label.is_empty() {
                pair.label = label;
            }
            if class == ObjectClass::PRIVATE_KEY {
                pair.private = true;
            } else {
                pair.public = true;
            }
        }
    }
    Ok(pairs.into_values().collect())
}

fn record_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(RECORD_APPLICATION.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// Every sigild record on the token.
pub(super) fn records(session: &Session) -> Result<Vec<Record>, Fail> {
    let handles = session.find_objects(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Application(RECORD_APPLICATION.to_vec()),
    ])?;
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        let (mut label, mut value) = (String::new(), Vec::new());
        for a in session.get_attributes(h, &[AttributeType::Label, AttributeType::Value])? {
            match a {
                Attribute::Label(v) => label = String::from_utf8_lossy(&v).into_owned(),
                Attribute::Value(v) => value = v,
                _ => {}
            }
        }
        out.push(Record { label, value });
    }
    Ok(out)
}

/// Create the record, or replace its value. Replacing writes a new object before destroying
/// the old one, so a crash in between leaves the record readable (the newest wins on load).
pub(super) fn put_record(session: &Session, record: &Record) -> Result<(), Fail> {
    let existing = session.find_objects(&record_template(&record.label))?;
    let mut t = record_template(&record.label);
    t.extend([
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Modifiable(true),
        Attribute::Value(record.value.clone()),
    ]);
    session.create_object(&t)?;
    for h in existing {
        session.destroy_object(h)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_signatures_are_left_padded_and_ec_lengths_checked() {
        let sig = normalise_signature(KeyKind::Rsa { bits: 2048 }, vec![1; 255]);
        assert!(matches!(sig, Ok(ref s) if s.len() == 256 && s[0] == 0));
        assert!(normalise_signature(KeyKind::Ec(Curve::P256), vec![0; 63]).is_err());
        assert!(normalise_signature(KeyKind::Ed25519, vec![0; 64]).is_ok());
    }

    #[test]
    fn pkcs1_input_carries_digest_info() {
        let (m, data) = sign_mechanism(&SignOp::RsaPkcs1v15 {
            hash: HashAlg::Sha256,
            digest: vec![7; 32],
        });
        assert_eq!(m.mechanism_type(), MechanismType::RSA_PKCS);
        assert_eq!(data.len(), 19 + 32);
    }

    #[test]
    fn ec_point_octet_string_is_unwrapped_either_way() {
        let raw = [4u8; 65];
        let wrapped = octet_string(&raw).ok().unwrap_or_default();
        assert_eq!(unwrap_octet_string(&wrapped), raw);
        assert_eq!(unwrap_octet_string(&raw), raw);
    }
}
