//! Parsing PKCS#8 private keys for migration onto a device. The parsed material lives only in
//! zeroizing buffers, is handed to one backend call, and is gone when that call returns.
//!
//! Parsing uses the RustCrypto `pkcs8`/`sec1`/`pkcs1` DER decoders; the Ed25519 public key is
//! derived from the seed with `ring` (PKCS#8 v1 does not carry it).

use der::Decode as _;
use zeroize::Zeroizing;

use crate::crypto::{Curve, PublicKey, trim_leading_zeros};

const OID_EC_PUBLIC_KEY: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_RSA: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_ED25519: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.3.101.112");

/// Private key material ready for a device's "create object" call. Every secret field zeroizes
/// on drop; `Debug` shows only the public half.
pub enum PrivateKeyMaterial {
    /// An EC private scalar.
    Ec {
        /// The curve.
        curve: Curve,
        /// The private scalar, `curve.field_len()` bytes.
        d: Zeroizing<Vec<u8>>,
        /// The public point from the PKCS#8 document.
        public: PublicKey,
    },
    /// An RSA private key with its CRT parameters.
    Rsa {
        /// Private exponent.
        d: Zeroizing<Vec<u8>>,
        /// First prime.
        p: Zeroizing<Vec<u8>>,
        /// Second prime.
        q: Zeroizing<Vec<u8>>,
        /// d mod (p-1).
        dp: Zeroizing<Vec<u8>>,
        /// d mod (q-1).
        dq: Zeroizing<Vec<u8>>,
        /// q^-1 mod p.
        qinv: Zeroizing<Vec<u8>>,
        /// Modulus and public exponent.
        public: PublicKey,
    },
    /// An Ed25519 seed (RFC 8032 private key).
    Ed25519 {
        /// The 32-byte seed.
        seed: Zeroizing<Vec<u8>>,
        /// The public key derived from it.
        public: PublicKey,
    },
}

impl PrivateKeyMaterial {
    /// The public half.
    pub fn public(&self) -> &PublicKey {
        match self {
            PrivateKeyMaterial::Ec { public, .. }
            | PrivateKeyMaterial::Rsa { public, .. }
            | PrivateKeyMaterial::Ed25519 { public, .. } => public,
        }
    }
}

impl std::fmt::Debug for PrivateKeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKeyMaterial({}, ***)", self.public().kind())
    }
}

/// Parse a DER PKCS#8 `PrivateKeyInfo` (v1 or v2, unencrypted).
///
/// # Errors
/// A message fit for the caller: unsupported algorithm or curve, malformed DER, EC key without
/// its public point. Never contains key bytes.
pub fn parse_pkcs8(der: &[u8]) -> Result<PrivateKeyMaterial, String> {
    let info = pkcs8::PrivateKeyInfoRef::try_from(der)
        .map_err(|e| format!("not an unencrypted PKCS#8 private key (DER): {e}"))?;
    let oid = info.algorithm.oid;
    if oid == OID_EC_PUBLIC_KEY {
        let curve_oid = info
            .algorithm
            .parameters_oid()
            .map_err(|_| "EC key without a named curve".to_owned())?;
        let curve = match curve_oid {
            c if c == OID_P256 => Curve::P256,
            c if c == OID_P384 => Curve::P384,
            c => return Err(format!("unsupported EC curve {c}: use P-256 or P-384")),
        };
        let ec = sec1::EcPrivateKey::from_der(info.private_key.as_bytes())
            .map_err(|e| format!("malformed EC private key: {e}"))?;
        let len = curve.field_len();
        let d = left_pad(ec.private_key, len)
            .ok_or_else(|| "EC private scalar longer than the curve".to_owned())?;
        let point = ec.public_key.ok_or_else(|| {
            "EC private key without its public point; re-export it with `openssl pkey`".to_owned()
        })?;
        let public = ec_point(curve, point)?;
        Ok(PrivateKeyMaterial::Ec { curve, d, public })
    } else if oid == OID_RSA {
        let rsa = pkcs1::RsaPrivateKeyRef::from_der(info.private_key.as_bytes())
            .map_err(|e| format!("malformed RSA private key: {e}"))?;
        if rsa.other_prime_infos.is_some() {
            return Err("multi-prime RSA keys are not supported".to_owned());
        }
        let z = |u: pkcs1::UintRef<'_>| Zeroizing::new(u.as_bytes().to_vec());
        Ok(PrivateKeyMaterial::Rsa {
            d: z(rsa.private_exponent),
            p: z(rsa.prime1),
            q: z(rsa.prime2),
            dp: z(rsa.exponent1),
            dq: z(rsa.exponent2),
            qinv: z(rsa.coefficient),
            public: PublicKey::Rsa {
                n: trim_leading_zeros(rsa.modulus.as_bytes()),
                e: trim_leading_zeros(rsa.public_exponent.as_bytes()),
            },
        })
    } else if oid == OID_ED25519 {
        let inner = <&der::asn1::OctetStringRef>::from_der(info.private_key.as_bytes())
            .map_err(|e| format!("malformed Ed25519 private key: {e}"))?;
        let seed = Zeroizing::new(inner.as_bytes().to_vec());
        if seed.len() != 32 {
            return Err("Ed25519 private key must be 32 bytes".to_owned());
        }
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|_| "invalid Ed25519 seed".to_owned())?;
        let x = ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec();
        if info
            .public_key
            .is_some_and(|given| given.as_bytes() != Some(x.as_slice()))
        {
            return Err("Ed25519 public key does not match the private key".to_owned());
        }
        Ok(PrivateKeyMaterial::Ed25519 {
            seed,
            public: PublicKey::Ed25519 { x },
        })
    } else {
        Err(format!(
            "unsupported key algorithm {oid}: use EC P-256/P-384, RSA or Ed25519"
        ))
    }
}

/// Decode an uncompressed SEC1 point (`04‖x‖y`).
///
/// # Errors
/// A message when the point is compressed or has the wrong length.
pub fn ec_point(curve: Curve, point: &[u8]) -> Result<PublicKey, String> {
    let len = curve.field_len();
    match point.split_first() {
        Some((0x04, xy)) if xy.len() == 2 * len => {
            let (x, y) = xy.split_at(len);
            Ok(PublicKey::Ec {
                curve,
                x: x.to_vec(),
                y: y.to_vec(),
            })
        }
        _ => Err(format!(
            "EC point is not an uncompressed {}-byte point",
            2 * len + 1
        )),
    }
}

fn left_pad(v: &[u8], len: usize) -> Option<Zeroizing<Vec<u8>>> {
    let v = v.get(v.iter().position(|b| *b != 0).unwrap_or(v.len())..)?;
    if v.len() > len {
        return None;
    }
    let mut out = Zeroizing::new(vec![0u8; len - v.len()]);
    out.extend_from_slice(v);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8037 A.1 private key as PKCS#8 (from `openssl pkey` of the RFC's JWK).
    const RFC8037_PKCS8: &str = "302e020100300506032b6570042204209d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

    fn unhex(s: &str) -> Result<Vec<u8>, String> {
        base16ct::lower::decode_vec(s).map_err(|e| e.to_string())
    }

    #[test]
    fn ed25519_public_is_derived() -> Result<(), String> {
        let m = parse_pkcs8(&unhex(RFC8037_PKCS8)?)?;
        let PublicKey::Ed25519 { x } = m.public() else {
            return Err("not Ed25519".into());
        };
        // RFC 8037 A.1 "x": 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo
        assert_eq!(
            x.as_slice(),
            unhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")?.as_slice()
        );
        assert!(!format!("{m:?}").contains("9d61"));
        Ok(())
    }

    #[test]
    fn garbage_is_refused_with_a_message() {
        let err = parse_pkcs8(b"not der").err().unwrap_or_default();
        assert!(err.contains("PKCS#8"), "{err}");
    }

    #[test]
    fn ec_point_checks_length_and_form() {
        assert!(ec_point(Curve::P256, &[4; 65]).is_ok());
        assert!(ec_point(Curve::P256, &[2; 33]).is_err());
        assert!(ec_point(Curve::P384, &[4; 65]).is_err());
    }

    #[test]
    fn left_pad_pads_and_refuses_overlong() {
        assert_eq!(
            left_pad(&[0, 1], 3).map(|v| v.to_vec()),
            Some(vec![0, 0, 1])
        );
        assert!(left_pad(&[1, 2, 3, 4], 3).is_none());
    }
}

/// Property tests: no byte string makes the PKCS#8 reader panic, including mutations of real
/// keys; what it accepts has a well-formed public half (ring made the originals, so their
/// public keys are checked against ring's).
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use ring::signature::KeyPair as _;

    /// PKCS#8 documents made by ring (an independent encoder), with the public key ring
    /// computed for each.
    fn originals() -> Vec<(Vec<u8>, PublicKey)> {
        let rng = ring::rand::SystemRandom::new();
        let mut out = Vec::new();
        for (alg, curve) in [
            (
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                Curve::P256,
            ),
            (
                &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                Curve::P384,
            ),
        ] {
            let Ok(doc) = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng) else {
                continue;
            };
            let Ok(pair) = ring::signature::EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng)
            else {
                continue;
            };
            if let Ok(public) = ec_point(curve, pair.public_key().as_ref()) {
                out.push((doc.as_ref().to_vec(), public));
            }
        }
        if let Ok(doc) = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
            && let Ok(pair) = ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref())
        {
            let x = pair.public_key().as_ref().to_vec();
            out.push((doc.as_ref().to_vec(), PublicKey::Ed25519 { x }));
        }
        out
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        Flip(usize, u8),
        Truncate(usize),
        Insert(usize, u8),
        Remove(usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
            any::<usize>().prop_map(Mutation::Truncate),
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<usize>().prop_map(Mutation::Remove),
        ]
    }

    fn apply(doc: &mut Vec<u8>, m: &Mutation) {
        let len = doc.len().max(1);
        match *m {
            Mutation::Flip(i, x) => {
                if let Some(b) = doc.get_mut(i % len) {
                    *b ^= x;
                }
            }
            Mutation::Truncate(i) => doc.truncate(i % len),
            Mutation::Insert(i, b) => doc.insert(i % (doc.len() + 1), b),
            Mutation::Remove(i) => {
                if !doc.is_empty() {
                    doc.remove(i % len);
                }
            }
        }
    }

    fn well_formed(pk: &PublicKey) -> bool {
        match pk {
            PublicKey::Ec { curve, x, y } => {
                x.len() == curve.field_len() && y.len() == curve.field_len()
            }
            PublicKey::Ed25519 { x } => x.len() == 32,
            PublicKey::Rsa { n, e } => n.first() != Some(&0) && e.first() != Some(&0),
        }
    }

    #[test]
    fn ring_keys_parse_to_ring_public_keys() -> Result<(), String> {
        let originals = originals();
        assert_eq!(
            originals.len(),
            3,
            "ring made a P-256, a P-384 and an Ed25519 key"
        );
        for (doc, public) in originals {
            assert_eq!(parse_pkcs8(&doc)?.public(), &public);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn garbage_never_panics(der in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(m) = parse_pkcs8(&der) {
                prop_assert!(well_formed(m.public()));
            }
        }

        #[test]
        fn mutated_keys_never_panic(
            which in 0usize..3,
            mutations in prop::collection::vec(mutation(), 1..4),
        ) {
            let originals = originals();
            let Some((doc, _)) = originals.get(which % originals.len().max(1)) else {
                return Err(TestCaseError::fail("ring made no keys"));
            };
            let mut doc = doc.clone();
            for m in &mutations {
                apply(&mut doc, m);
            }
            if let Ok(m) = parse_pkcs8(&doc) {
                prop_assert!(well_formed(m.public()));
            }
        }

        #[test]
        fn ec_point_never_panics(p256 in any::<bool>(), point in prop::collection::vec(any::<u8>(), 0..100)) {
            let curve = if p256 { Curve::P256 } else { Curve::P384 };
            if let Ok(pk) = ec_point(curve, &point) {
                prop_assert!(well_formed(&pk));
                prop_assert_eq!(point.len(), 2 * curve.field_len() + 1);
            }
        }

        #[test]
        fn left_pad_keeps_the_value(v in prop::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..12), len in 0usize..12) {
            let significant = v.iter().skip_while(|b| **b == 0).count();
            match left_pad(&v, len) {
                Some(p) => {
                    prop_assert_eq!(p.len(), len);
                    prop_assert_eq!(p.get(len - significant..), v.get(v.len() - significant..));
                    prop_assert!(p.iter().take(len - significant).all(|b| *b == 0));
                }
                None => prop_assert!(significant > len),
            }
        }
    }
}
