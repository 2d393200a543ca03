//! What a token can do, read once from its mechanisms when the token is found: which of the
//! mechanisms sigild's key kinds and signature schemes need it offers, and the refusal that
//! names the scheme and the missing mechanism when it does not (openCryptoki's soft token, for
//! one, has no EC or EdDSA mechanisms at all).
//!
//! Owns: the mapping from key kinds, purposes and [`SignOp`]s to PKCS#11 mechanisms, the checks
//! made before a request reaches the device, and the per-token decisions on how to decrypt that
//! the mechanism list cannot settle ([`Decisions`]: OAEP on the device or on the host, the form
//! of an ECDH peer point), made once by the first decryption and kept with the capabilities. Schemes are named by their registered names (`ES256`,
//! `PS384`, `EdDSA` …) because those are what operators configure; nothing here depends on the
//! JOSE layer. Never talks to the device after [`Capabilities::read`] (the decisions are probed
//! by the backend's workers and only recorded here).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{MechanismInfo, MechanismType};
use cryptoki::slot::Slot;

use crate::backend::BackendError;
use crate::crypto::{Curve, HashAlg, KeyKind, KeyPurpose, OaepHash, SignOp};

/// Every mechanism sigild may use, looked up in the token's list.
const USED: [MechanismType; 10] = [
    MechanismType::RSA_PKCS_KEY_PAIR_GEN,
    MechanismType::RSA_PKCS,
    MechanismType::RSA_PKCS_PSS,
    MechanismType::ECC_KEY_PAIR_GEN,
    MechanismType::ECDSA,
    MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
    MechanismType::EDDSA,
    MechanismType::RSA_PKCS_OAEP,
    MechanismType::RSA_X_509,
    MechanismType::ECDH1_DERIVE,
];

/// The signature schemes sigild signs with, by registered name, each with the key kind it is
/// generated as and the operation it performs (the digest is empty: only its shape matters).
fn schemes() -> [(&'static str, KeyKind, SignOp); 7] {
    let rsa = KeyKind::Rsa { bits: 2048 };
    [
        (
            "ES256",
            KeyKind::Ec(Curve::P256),
            SignOp::Ecdsa { digest: Vec::new() },
        ),
        (
            "ES384",
            KeyKind::Ec(Curve::P384),
            SignOp::Ecdsa { digest: Vec::new() },
        ),
        (
            "PS256",
            rsa,
            SignOp::RsaPss {
                hash: HashAlg::Sha256,
                digest: Vec::new(),
            },
        ),
        (
            "PS384",
            rsa,
            SignOp::RsaPss {
                hash: HashAlg::Sha384,
                digest: Vec::new(),
            },
        ),
        (
            "PS512",
            rsa,
            SignOp::RsaPss {
                hash: HashAlg::Sha512,
                digest: Vec::new(),
            },
        ),
        (
            "RS256",
            rsa,
            SignOp::RsaPkcs1v15 {
                hash: HashAlg::Sha256,
                digest: Vec::new(),
            },
        ),
        (
            "EdDSA",
            KeyKind::Ed25519,
            SignOp::Ed25519 {
                message: Vec::new(),
            },
        ),
    ]
}

/// What a mechanism is needed for: the token must list it with the matching flag.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// `CKF_GENERATE_KEY_PAIR`.
    Generate,
    /// `CKF_SIGN`.
    Sign,
    /// `CKF_DECRYPT`.
    Decrypt,
    /// `CKF_DERIVE`.
    Derive,
}

/// How RSA-OAEP decryption with one hash is done on this token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OaepPath {
    /// `CKM_RSA_PKCS_OAEP` on the device.
    Device,
    /// `CKM_RSA_X_509` on the device, OAEP decoded on the host.
    Host,
}

/// How the token wants the peer's point in `CK_ECDH1_DERIVE_PARAMS.pPublicData`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PointForm {
    /// The raw uncompressed point `04‖x‖y` (what PKCS#11 says every token must accept).
    Raw,
    /// The point wrapped in a DER OCTET STRING, as `CKA_EC_POINT` holds it.
    Der,
}

/// Per-token answers that the mechanism list cannot give, each decided once (by a probe or by
/// the first decryption) and shared by every worker. A token found again gets new ones.
#[derive(Debug, Default)]
pub(super) struct Decisions {
    /// OAEP with SHA-1.
    oaep_sha1: OnceLock<OaepPath>,
    /// OAEP with SHA-256.
    oaep_sha256: OnceLock<OaepPath>,
    /// The ECDH peer point's form.
    point_form: OnceLock<PointForm>,
}

impl Decisions {
    /// Where OAEP with `hash` is decided.
    pub(super) fn oaep(&self, hash: OaepHash) -> &OnceLock<OaepPath> {
        match hash {
            OaepHash::Sha1 => &self.oaep_sha1,
            OaepHash::Sha256 => &self.oaep_sha256,
        }
    }

    /// Where the ECDH point form is decided.
    pub(super) fn point_form(&self) -> &OnceLock<PointForm> {
        &self.point_form
    }
}

/// The mechanisms one token offers, as far as sigild cares.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// The token's label, for messages.
    token: String,
    /// Each mechanism of [`USED`] the token lists, with its info when the token gave it.
    offered: HashMap<u64, Option<MechanismInfo>>,
    /// How this token decrypts, where its mechanism list cannot tell.
    decisions: Arc<Decisions>,
}

/// Whether one signature scheme can be served, and if not which mechanisms are missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemeSupport {
    /// Registered name (`ES256`, `PS256`, …).
    pub name: &'static str,
    /// The mechanisms the token lacks for it (key generation and signing); empty when it can
    /// serve the scheme.
    pub missing: Vec<String>,
}

impl Capabilities {
    /// Read which of the mechanisms sigild uses the token in `slot` offers, with their details.
    ///
    /// Each is asked for with `C_GetMechanismInfo` (`CKR_MECHANISM_INVALID`: not offered)
    /// rather than read from `C_GetMechanismList`: the answer is the same, and cryptoki logs an
    /// error for every listed mechanism it has no name for (openCryptoki lists DES, SSL3, …).
    ///
    /// # Errors
    /// Any other failure of `C_GetMechanismInfo`.
    pub(super) fn read(ctx: &Pkcs11, slot: Slot, token: &str) -> Result<Capabilities, CkError> {
        let mut offered = HashMap::new();
        for m in USED {
            match ctx.get_mechanism_info(slot, m) {
                Ok(info) => {
                    offered.insert(*m, Some(info));
                }
                Err(CkError::Pkcs11(RvError::MechanismInvalid, _)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Capabilities {
            token: token.to_owned(),
            offered,
            decisions: Arc::default(),
        })
    }

    /// Capabilities from a list of mechanisms offered for every purpose (unit tests).
    #[cfg(test)]
    fn listing(token: &str, mechanisms: &[MechanismType]) -> Capabilities {
        Capabilities {
            token: token.to_owned(),
            offered: mechanisms.iter().map(|m| (**m, None)).collect(),
            decisions: Arc::default(),
        }
    }

    /// Whether the token lists `m` for `purpose` (a mechanism listed without details counts).
    fn offers(&self, m: MechanismType, purpose: Purpose) -> bool {
        match self.offered.get(&*m) {
            None => false,
            Some(None) => true,
            Some(Some(info)) => match purpose {
                Purpose::Generate => info.generate_key_pair(),
                Purpose::Sign => info.sign(),
                Purpose::Decrypt => info.decrypt(),
                Purpose::Derive => info.derive(),
            },
        }
    }

    /// The token's label, for log lines about its decisions.
    pub(super) fn token(&self) -> &str {
        &self.token
    }

    /// The decisions on how this token decrypts.
    pub(super) fn decisions(&self) -> &Arc<Decisions> {
        &self.decisions
    }

    /// Whether the token lists `CKM_RSA_PKCS_OAEP` / `CKM_RSA_X_509` for decryption.
    pub(super) fn rsa_decryption(&self) -> (bool, bool) {
        (
            self.offers(MechanismType::RSA_PKCS_OAEP, Purpose::Decrypt),
            self.offers(MechanismType::RSA_X_509, Purpose::Decrypt),
        )
    }

    /// Refuse a decryption the token has no mechanism for, naming what is missing.
    ///
    /// # Errors
    /// [`BackendError::Unsupported`].
    pub(super) fn check_decrypt(&self, kind: KeyKind) -> Result<(), BackendError> {
        let mut missing = Vec::new();
        self.missing_decrypt(kind, &mut missing);
        if missing.is_empty() {
            return Ok(());
        }
        Err(self.refusal(&decrypt_name(kind), &missing))
    }

    /// Refuse an operation the token cannot sign with, naming the scheme and the mechanism.
    ///
    /// # Errors
    /// [`BackendError::Unsupported`].
    pub(super) fn check_sign(&self, kind: KeyKind, op: &SignOp) -> Result<(), BackendError> {
        let m = sign_mechanism(op);
        if self.offers(m, Purpose::Sign) {
            return Ok(());
        }
        Err(self.refusal(&scheme_name(kind, op), &[m.to_string()]))
    }

    /// Refuse to generate a key the token cannot generate, or could not use for `purpose`
    /// afterwards.
    ///
    /// # Errors
    /// [`BackendError::Unsupported`].
    pub(super) fn check_generate(
        &self,
        kind: KeyKind,
        purpose: KeyPurpose,
    ) -> Result<(), BackendError> {
        let gen_mech = keygen_mechanism(kind);
        let mut missing = Vec::new();
        if !self.offers(gen_mech, Purpose::Generate) {
            missing.push(gen_mech.to_string());
        }
        if let KeyKind::Rsa { bits } = kind
            && let Some(Some(info)) = self.offered.get(&*gen_mech)
        {
            let (min, max) = (info.min_key_size(), info.max_key_size());
            let bits = bits as usize;
            // Some tokens leave the range at 0; only a real range is enforced.
            if max > 0 && (bits < min || bits > max) {
                return Err(BackendError::Unsupported(format!(
                    "{kind} keys: token '{}' generates RSA keys of {min} to {max} bits ({gen_mech})",
                    self.token
                )));
            }
        }
        self.missing_use(kind, purpose, &mut missing);
        if missing.is_empty() {
            return Ok(());
        }
        Err(self.refusal(&purpose_name(kind, purpose), &missing))
    }

    /// Refuse to import a key the token could not use for `purpose`.
    ///
    /// # Errors
    /// [`BackendError::Unsupported`].
    pub(super) fn check_import(
        &self,
        kind: KeyKind,
        purpose: KeyPurpose,
    ) -> Result<(), BackendError> {
        let mut missing = Vec::new();
        self.missing_use(kind, purpose, &mut missing);
        if missing.is_empty() {
            return Ok(());
        }
        Err(self.refusal(&purpose_name(kind, purpose), &missing))
    }

    /// The mechanisms a key of `kind` needs for `purpose` and the token lacks.
    fn missing_use(&self, kind: KeyKind, purpose: KeyPurpose, missing: &mut Vec<String>) {
        match purpose {
            KeyPurpose::Sign => self.missing_sign(kind, missing),
            KeyPurpose::Decrypt => self.missing_decrypt(kind, missing),
        }
    }

    /// The decryption mechanisms a key of `kind` needs and the token lacks (RSA needs either
    /// OAEP or raw RSA, EC needs ECDH; Ed25519 keys do not decrypt).
    fn missing_decrypt(&self, kind: KeyKind, missing: &mut Vec<String>) {
        match kind {
            KeyKind::Ec(_) if !self.offers(MechanismType::ECDH1_DERIVE, Purpose::Derive) => {
                missing.push(MechanismType::ECDH1_DERIVE.to_string());
            }
            KeyKind::Rsa { .. } if self.rsa_decryption() == (false, false) => {
                missing.push(format!(
                    "{} or {}",
                    MechanismType::RSA_PKCS_OAEP,
                    MechanismType::RSA_X_509
                ));
            }
            KeyKind::Ed25519 => missing.push(MechanismType::ECDH1_DERIVE.to_string()),
            _ => {}
        }
    }

    /// The signing mechanisms a key of `kind` needs and the token lacks (RSA needs either).
    fn missing_sign(&self, kind: KeyKind, missing: &mut Vec<String>) {
        match kind {
            KeyKind::Ec(_) if !self.offers(MechanismType::ECDSA, Purpose::Sign) => {
                missing.push(MechanismType::ECDSA.to_string());
            }
            KeyKind::Ed25519 if !self.offers(MechanismType::EDDSA, Purpose::Sign) => {
                missing.push(MechanismType::EDDSA.to_string());
            }
            KeyKind::Rsa { .. }
                if !self.offers(MechanismType::RSA_PKCS_PSS, Purpose::Sign)
                    && !self.offers(MechanismType::RSA_PKCS, Purpose::Sign) =>
            {
                missing.push(format!(
                    "{} or {}",
                    MechanismType::RSA_PKCS_PSS,
                    MechanismType::RSA_PKCS
                ));
            }
            _ => {}
        }
    }

    /// Every scheme sigild signs with, and what the token lacks for each.
    pub fn schemes(&self) -> Vec<SchemeSupport> {
        schemes()
            .into_iter()
            .map(|(name, kind, op)| {
                let mut missing = Vec::new();
                let g = keygen_mechanism(kind);
                if !self.offers(g, Purpose::Generate) {
                    missing.push(g.to_string());
                }
                let s = sign_mechanism(&op);
                if !self.offers(s, Purpose::Sign) {
                    missing.push(s.to_string());
                }
                SchemeSupport { name, missing }
            })
            .collect()
    }

    fn refusal(&self, what: &str, missing: &[String]) -> BackendError {
        let verb = if what.ends_with("keys") {
            "need"
        } else {
            "needs"
        };
        BackendError::Unsupported(format!(
            "{what} {verb} {}, which token '{}' does not offer",
            missing.join(" and "),
            self.token
        ))
    }
}

/// The mechanism sigild signs `op` with (the host hashes, so these are the raw mechanisms).
fn sign_mechanism(op: &SignOp) -> MechanismType {
    match op {
        SignOp::Ecdsa { .. } => MechanismType::ECDSA,
        SignOp::RsaPss { .. } => MechanismType::RSA_PKCS_PSS,
        SignOp::RsaPkcs1v15 { .. } => MechanismType::RSA_PKCS,
        SignOp::Ed25519 { .. } => MechanismType::EDDSA,
    }
}

/// The mechanism sigild generates a key of `kind` with.
fn keygen_mechanism(kind: KeyKind) -> MechanismType {
    match kind {
        KeyKind::Rsa { .. } => MechanismType::RSA_PKCS_KEY_PAIR_GEN,
        KeyKind::Ec(_) => MechanismType::ECC_KEY_PAIR_GEN,
        KeyKind::Ed25519 => MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
    }
}

/// The registered name of the scheme `op` performs with a key of `kind`.
fn scheme_name(kind: KeyKind, op: &SignOp) -> String {
    let bits = |h: &HashAlg| h.len() * 8;
    match op {
        SignOp::Ecdsa { .. } => kind_name(kind),
        SignOp::RsaPss { hash, .. } => format!("PS{}", bits(hash)),
        SignOp::RsaPkcs1v15 { hash, .. } => format!("RS{}", bits(hash)),
        SignOp::Ed25519 { .. } => "EdDSA".into(),
    }
}

/// What a key of `kind` for `purpose` is called in refusals.
fn purpose_name(kind: KeyKind, purpose: KeyPurpose) -> String {
    match purpose {
        KeyPurpose::Sign => kind_name(kind),
        KeyPurpose::Decrypt => decrypt_name(kind),
    }
}

/// A decryption key of `kind`, as refusals name it.
fn decrypt_name(kind: KeyKind) -> String {
    match kind {
        KeyKind::Rsa { .. } => format!("{kind} decryption keys"),
        KeyKind::Ec(_) | KeyKind::Ed25519 => format!("{kind} decryption (ECDH) keys"),
    }
}

/// What a key of `kind` is for: its scheme where the kind fixes one, else the key itself.
fn kind_name(kind: KeyKind) -> String {
    match kind {
        KeyKind::Ec(Curve::P256) => "ES256".into(),
        KeyKind::Ec(Curve::P384) => "ES384".into(),
        KeyKind::Ed25519 => "EdDSA".into(),
        KeyKind::Rsa { .. } => format!("{kind} keys"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soft_token() -> Capabilities {
        // What openCryptoki's soft token lists (of the mechanisms sigild uses).
        Capabilities::listing(
            "ock",
            &[
                MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                MechanismType::RSA_PKCS,
                MechanismType::RSA_PKCS_PSS,
            ],
        )
    }

    fn message(r: Result<(), BackendError>) -> String {
        match r {
            Err(BackendError::Unsupported(m)) => m,
            other => format!("unexpected {other:?}"),
        }
    }

    #[test]
    fn refusals_name_the_scheme_and_the_missing_mechanism() {
        let caps = soft_token();
        assert_eq!(
            message(caps.check_generate(KeyKind::Ec(Curve::P256), KeyPurpose::Sign)),
            "ES256 needs CKM_EC_KEY_PAIR_GEN and CKM_ECDSA, which token 'ock' does not offer"
        );
        assert_eq!(
            message(caps.check_sign(
                KeyKind::Ed25519,
                &SignOp::Ed25519 {
                    message: vec![1, 2]
                }
            )),
            "EdDSA needs CKM_EDDSA, which token 'ock' does not offer"
        );
        assert_eq!(
            message(caps.check_import(KeyKind::Ec(Curve::P384), KeyPurpose::Sign)),
            "ES384 needs CKM_ECDSA, which token 'ock' does not offer"
        );
        assert!(
            caps.check_generate(KeyKind::Rsa { bits: 3072 }, KeyPurpose::Sign)
                .is_ok()
        );
        let pss = SignOp::RsaPss {
            hash: HashAlg::Sha384,
            digest: vec![0; 48],
        };
        assert!(caps.check_sign(KeyKind::Rsa { bits: 2048 }, &pss).is_ok());

        let no_pss = Capabilities::listing("t", &[MechanismType::RSA_PKCS_KEY_PAIR_GEN]);
        assert_eq!(
            message(no_pss.check_sign(KeyKind::Rsa { bits: 2048 }, &pss)),
            "PS384 needs CKM_RSA_PKCS_PSS, which token 't' does not offer"
        );
        assert_eq!(
            message(no_pss.check_generate(KeyKind::Rsa { bits: 2048 }, KeyPurpose::Sign)),
            "RSA-2048 keys need CKM_RSA_PKCS_PSS or CKM_RSA_PKCS, which token 't' does not offer"
        );
    }

    #[test]
    fn decryption_keys_need_their_mechanisms() {
        let caps = soft_token();
        assert_eq!(
            message(caps.check_generate(KeyKind::Rsa { bits: 2048 }, KeyPurpose::Decrypt)),
            "RSA-2048 decryption keys need CKM_RSA_PKCS_OAEP or CKM_RSA_X_509, which token 'ock' does not offer"
        );
        let with_raw = Capabilities::listing(
            "t",
            &[
                MechanismType::ECC_KEY_PAIR_GEN,
                MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                MechanismType::RSA_X_509,
            ],
        );
        assert!(
            with_raw
                .check_generate(KeyKind::Rsa { bits: 2048 }, KeyPurpose::Decrypt)
                .is_ok()
        );
        assert_eq!(
            message(with_raw.check_import(KeyKind::Ec(Curve::P384), KeyPurpose::Decrypt)),
            "EC P-384 decryption (ECDH) keys need CKM_ECDH1_DERIVE, which token 't' does not offer"
        );
        // A signing key on the same token needs the signing mechanisms, not these.
        assert!(
            with_raw
                .check_generate(KeyKind::Ec(Curve::P256), KeyPurpose::Sign)
                .is_err()
        );
    }

    #[test]
    fn schemes_list_what_is_missing() {
        let s = soft_token().schemes();
        let served: Vec<_> = s
            .iter()
            .filter(|x| x.missing.is_empty())
            .map(|x| x.name)
            .collect();
        assert_eq!(served, ["PS256", "PS384", "PS512", "RS256"]);
        let eddsa = s.iter().find(|x| x.name == "EdDSA");
        assert_eq!(
            eddsa.map(|x| x.missing.clone()),
            Some(vec![
                "CKM_EC_EDWARDS_KEY_PAIR_GEN".to_owned(),
                "CKM_EDDSA".to_owned()
            ])
        );
    }
}
