//! The one private-key step of JWE key management on a token: RSAES-OAEP decryption
//! (`CKM_RSA_PKCS_OAEP`, or `CKM_RSA_X_509` with OAEP decoded on the host) and ECDH key agreement
//! (`CKM_ECDH1_DERIVE` with `CKD_NULL`, the shared secret read from a short-lived session
//! object). Runs inside a worker (or a [`super::DirectDecrypter`]) with its session.
//!
//! Owns: the choice between device and host OAEP and the ECDH point form per token (probed or
//! learnt once, kept in [`Decisions`]), the zeroizing of every raw output, the destruction of
//! every derived object, and the folding of every failure the ciphertext can cause into one
//! error ([`failed`]) so callers cannot tell padding from anything else. Never touches JOSE
//! (Concat KDF, key unwrap and content decryption are the host's) and never logs a secret.

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use zeroize::{Zeroize as _, Zeroizing};

use super::caps::{Capabilities, Decisions, OaepPath, PointForm};
use super::{Fail, ck_code, objects};
use crate::backend::{BackendError, KeyId};
use crate::crypto::{Curve, DecryptOp, KeyKind, OaepHash, PublicKey, oaep_decode};
use crate::secret::SecretBytes;

/// The message of every decryption the ciphertext (or the peer's point) made fail, whatever the
/// device or the host decoder said: one answer, so it cannot serve as a padding oracle.
pub(super) const DECRYPTION_FAILED: &str = "decryption failed";

/// The one error of a decryption the input made fail.
pub(super) fn failed() -> BackendError {
    BackendError::InvalidRequest(DECRYPTION_FAILED.into())
}

/// What a decryption needs to know about the token: its mechanisms and its decisions.
pub(super) struct TokenView<'a> {
    /// The token's label, for the log line of a decision.
    pub label: &'a str,
    /// It lists `CKM_RSA_PKCS_OAEP` for decryption.
    pub oaep: bool,
    /// It lists `CKM_RSA_X_509` for decryption.
    pub raw: bool,
    /// Where its decisions are kept.
    pub decisions: &'a Decisions,
}

impl<'a> TokenView<'a> {
    /// The view of a token whose mechanisms were read, or (`None`: its list could not be read)
    /// one that assumes every mechanism and decides again on every call (`scratch`).
    pub(super) fn of(caps: Option<&'a Capabilities>, scratch: &'a Decisions) -> Self {
        match caps {
            Some(c) => {
                let (oaep, raw) = c.rsa_decryption();
                TokenView {
                    label: c.token(),
                    oaep,
                    raw,
                    decisions: c.decisions(),
                }
            }
            None => TokenView {
                label: "",
                oaep: true,
                raw: true,
                decisions: scratch,
            },
        }
    }
}

/// One decryption with the private key `handle` (`CKA_ID` = `id`, of `kind`) on `session`:
/// the CEK for [`DecryptOp::RsaOaep`], Z for [`DecryptOp::Ecdh`].
///
/// # Errors
/// [`failed`] for anything the input decides; raw device errors (for the retry rules) for
/// faults; [`BackendError::InvalidRequest`] naming `CKR_KEY_FUNCTION_NOT_PERMITTED` when the key
/// does not allow the operation.
pub(super) fn decrypt_on(
    session: &Session,
    token: &TokenView<'_>,
    handle: ObjectHandle,
    id: &KeyId,
    kind: KeyKind,
    op: &DecryptOp,
) -> Result<SecretBytes, Fail> {
    let result = match (op, kind) {
        (DecryptOp::RsaOaep { hash, ciphertext }, KeyKind::Rsa { bits }) => rsa_oaep(
            session,
            token,
            handle,
            id,
            (bits as usize).div_ceil(8),
            *hash,
            ciphertext,
        ),
        (DecryptOp::Ecdh { peer }, KeyKind::Ec(curve)) => ecdh(session, token, handle, curve, peer),
        _ => Err(BackendError::InvalidRequest(format!(
            "this operation needs a different key type than {kind}"
        ))
        .into()),
    };
    result.map_err(not_permitted)
}

/// A key whose attributes forbid the operation, said plainly (the bare code is the token's).
fn not_permitted(f: Fail) -> Fail {
    match f {
        Fail::Device(e @ CkError::Pkcs11(RvError::KeyFunctionNotPermitted, _)) => {
            BackendError::InvalidRequest(format!(
                "the key does not allow this decryption on the token ({})",
                ck_code(&e)
            ))
            .into()
        }
        other => other,
    }
}

/// Device errors the ciphertext or the peer's point can cause: all become [`failed`], the code
/// goes to the debug log only. Everything else stays raw (session faults are retried).
///
/// `CKR_GENERAL_ERROR` and `CKR_FUNCTION_FAILED` are ambiguous: SoftHSM 2.6 answers a
/// corrupted OAEP ciphertext with `CKR_GENERAL_ERROR`, which otherwise means a broken device.
/// They count as the input's fault when the session still answers `C_GetSessionInfo` right
/// after, as the device's otherwise (kept raw, for the retry rules and the log).
fn uniform(session: &Session, e: CkError) -> Fail {
    match e {
        CkError::Pkcs11(
            RvError::EncryptedDataInvalid
            | RvError::EncryptedDataLenRange
            | RvError::DataInvalid
            | RvError::DataLenRange,
            _,
        ) => input_failure(&e),
        CkError::Pkcs11(RvError::GeneralError | RvError::FunctionFailed, _)
            if session.get_session_info().is_ok() =>
        {
            input_failure(&e)
        }
        other => Fail::Device(other),
    }
}

/// [`failed`], with the token's code in the debug log.
fn input_failure(e: &CkError) -> Fail {
    tracing::debug!(code = %ck_code(e), "the token could not decrypt this input");
    failed().into()
}

/// `CKM_RSA_PKCS_OAEP` with `hash` for the label hash and MGF1, and the empty label.
fn oaep_mechanism(hash: OaepHash) -> Mechanism<'static> {
    let (hash_alg, mgf) = match hash {
        OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
    };
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash_alg, mgf, PkcsOaepSource::empty()))
}

fn hash_name(hash: OaepHash) -> &'static str {
    match hash {
        OaepHash::Sha1 => "SHA-1",
        OaepHash::Sha256 => "SHA-256",
    }
}

/// RSAES-OAEP decryption of `ciphertext` (`k` bytes) on the path decided for the token.
fn rsa_oaep(
    session: &Session,
    token: &TokenView<'_>,
    handle: ObjectHandle,
    id: &KeyId,
    k: usize,
    hash: OaepHash,
    ciphertext: &[u8],
) -> Result<SecretBytes, Fail> {
    if ciphertext.len() != k {
        return Err(failed().into());
    }
    let path = match token.decisions.oaep(hash).get() {
        Some(path) => *path,
        None => match decide_oaep(session, token, handle, id, hash)? {
            Decided::Always(path, why) => *token.decisions.oaep(hash).get_or_init(|| {
                tracing::info!(
                    token = token.label,
                    hash = hash_name(hash),
                    on = match path {
                        OaepPath::Device => "the token (CKM_RSA_PKCS_OAEP)",
                        OaepPath::Host => "the host (CKM_RSA_X_509, OAEP decoded by sigild)",
                    },
                    reason = %why,
                    "RSA-OAEP decryption decided for this token"
                );
                path
            }),
            Decided::ThisTime(path) => path,
        },
    };
    match path {
        OaepPath::Device => session
            .decrypt(&oaep_mechanism(hash), handle, ciphertext)
            .map(SecretBytes::new)
            .map_err(|e| uniform(session, e)),
        OaepPath::Host => {
            let out = Zeroizing::new(
                session
                    .decrypt(&Mechanism::RsaX509, handle, ciphertext)
                    .map_err(|e| uniform(session, e))?,
            );
            // PKCS#11 may drop the leading zero bytes of I2OSP(m, k): put them back.
            let mut em = Zeroizing::new(vec![0u8; k]);
            let start = k.checked_sub(out.len()).ok_or_else(failed)?;
            em.get_mut(start..)
                .ok_or_else(failed)?
                .copy_from_slice(&out);
            drop(out);
            oaep_decode(hash, k, &em).map_err(|_| failed().into())
        }
    }
}

/// How one OAEP decision came out.
enum Decided {
    /// For every key of the token from now on, with the reason (for the log).
    Always(OaepPath, String),
    /// For this call only: the probe said nothing about the token (the key would not take
    /// part in it), so the next call asks again.
    ThisTime(OaepPath),
}

/// Decide where OAEP with `hash` runs: from the mechanism list when it offers one way only,
/// else by a probe (C_GetMechanismInfo cannot say which hashes OAEP takes: SoftHSM 2.6 lists
/// it but refuses SHA-256 with `CKR_ARGUMENTS_BAD`) — a random message encrypted with the key's
/// public object on the token and decrypted with OAEP.
fn decide_oaep(
    session: &Session,
    token: &TokenView<'_>,
    handle: ObjectHandle,
    id: &KeyId,
    hash: OaepHash,
) -> Result<Decided, Fail> {
    match (token.oaep, token.raw) {
        (false, true) => {
            return Ok(Decided::Always(
                OaepPath::Host,
                "the token does not list CKM_RSA_PKCS_OAEP for decryption".into(),
            ));
        }
        (true, false) => {
            return Ok(Decided::Always(
                OaepPath::Device,
                "the token does not list CKM_RSA_X_509 for decryption".into(),
            ));
        }
        (false, false) => {
            return Err(BackendError::Unsupported(
                "RSA decryption needs CKM_RSA_PKCS_OAEP or CKM_RSA_X_509".into(),
            )
            .into());
        }
        (true, true) => {}
    }
    let public = match objects::find_one(session, ObjectClass::PUBLIC_KEY, id) {
        Ok(h) => h,
        Err(Fail::Backend(BackendError::KeyNotFound(_))) => {
            return Ok(Decided::ThisTime(OaepPath::Host));
        }
        Err(e) => return Err(e),
    };
    let mut message = Zeroizing::new(vec![0u8; 32]);
    getrandom::fill(&mut message).map_err(|e| BackendError::Device {
        function: "getrandom".into(),
        code: e.to_string(),
    })?;
    let mechanism = oaep_mechanism(hash);
    let ciphertext = match session.encrypt(&mechanism, public, &message) {
        Ok(c) => c,
        Err(e) if super::is_session_fault(&e) => return Err(Fail::Device(e)),
        // The key's public object may not encrypt (an adopted key): no verdict on the token.
        Err(CkError::Pkcs11(
            RvError::KeyFunctionNotPermitted | RvError::KeyTypeInconsistent,
            _,
        )) => {
            return Ok(Decided::ThisTime(OaepPath::Host));
        }
        Err(e) => {
            return Ok(Decided::Always(
                OaepPath::Host,
                format!("OAEP encryption refused ({})", ck_code(&e)),
            ));
        }
    };
    match session.decrypt(&mechanism, handle, &ciphertext) {
        Ok(mut out) => {
            let same = out.as_slice() == message.as_slice();
            out.zeroize();
            Ok(if same {
                Decided::Always(OaepPath::Device, "a probe decryption succeeded".into())
            } else {
                Decided::Always(
                    OaepPath::Host,
                    "a probe decryption returned another message".into(),
                )
            })
        }
        Err(e) if super::is_session_fault(&e) => Err(Fail::Device(e)),
        Err(CkError::Pkcs11(
            RvError::KeyFunctionNotPermitted | RvError::KeyTypeInconsistent,
            _,
        )) => Ok(Decided::ThisTime(OaepPath::Host)),
        Err(e) => Ok(Decided::Always(
            OaepPath::Host,
            format!("a probe decryption failed ({})", ck_code(&e)),
        )),
    }
}

/// ECDH with `peer` (checked to be on `curve` by the caller): Z, `curve.field_len()` bytes.
/// The first agreement on a token finds out which point form it takes.
fn ecdh(
    session: &Session,
    token: &TokenView<'_>,
    handle: ObjectHandle,
    curve: Curve,
    peer: &PublicKey,
) -> Result<SecretBytes, Fail> {
    let PublicKey::Ec { curve: c, x, y } = peer else {
        return Err(failed().into());
    };
    if *c != curve {
        return Err(failed().into());
    }
    let mut raw = Vec::with_capacity(1 + x.len() + y.len());
    raw.push(0x04);
    raw.extend_from_slice(x);
    raw.extend_from_slice(y);
    let der = objects::octet_string(&raw)?;
    let point = |form| match form {
        PointForm::Raw => raw.as_slice(),
        PointForm::Der => der.as_slice(),
    };
    let field_len = curve.field_len();
    if let Some(form) = token.decisions.point_form().get() {
        return derive(session, handle, field_len, point(*form)).map_err(|f| match f {
            // The form is settled, so the token is refusing this point.
            Fail::Device(CkError::Pkcs11(
                RvError::ArgumentsBad | RvError::MechanismParamInvalid,
                _,
            )) => failed().into(),
            other => other,
        });
    }
    let decide = |form: PointForm| {
        token.decisions.point_form().get_or_init(|| {
            tracing::info!(
                token = token.label,
                form = match form {
                    PointForm::Raw => "the raw point 04||x||y",
                    PointForm::Der => "a DER OCTET STRING",
                },
                "ECDH peer point form decided for this token"
            );
            form
        });
    };
    match derive(session, handle, field_len, &raw) {
        Ok(z) => {
            decide(PointForm::Raw);
            Ok(z)
        }
        Err(Fail::Device(CkError::Pkcs11(
            RvError::ArgumentsBad | RvError::MechanismParamInvalid,
            _,
        ))) => {
            let z = derive(session, handle, field_len, &der).map_err(|f| match f {
                Fail::Device(CkError::Pkcs11(
                    RvError::ArgumentsBad | RvError::MechanismParamInvalid,
                    _,
                )) => failed().into(),
                other => other,
            })?;
            decide(PointForm::Der);
            Ok(z)
        }
        Err(e) => Err(e),
    }
}

/// `CKM_ECDH1_DERIVE` (`CKD_NULL`) into a session secret key that may be read, its value read
/// and the object destroyed at once, whatever happens in between.
fn derive(
    session: &Session,
    handle: ObjectHandle,
    field_len: usize,
    public_data: &[u8],
) -> Result<SecretBytes, Fail> {
    let params = Ecdh1DeriveParams::new(EcKdf::null(), public_data);
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::ValueLen((field_len as u64).into()),
    ];
    let object = session
        .derive_key(&Mechanism::Ecdh1Derive(params), handle, &template)
        .map_err(|e| match e {
            CkError::Pkcs11(RvError::ArgumentsBad | RvError::MechanismParamInvalid, _) => {
                Fail::Device(e)
            }
            other => uniform(session, other),
        })?;
    let read = session.get_attributes(object, &[AttributeType::Value]);
    let destroyed = session.destroy_object(object);
    let mut attrs = read?;
    let mut z = Zeroizing::new(Vec::new());
    for a in &mut attrs {
        if let Attribute::Value(v) = a {
            std::mem::swap(&mut *z, v);
        }
    }
    objects::wipe(&mut attrs);
    if let Err(e) = destroyed {
        // A session object dies with its session at the latest; say so in the log.
        tracing::warn!(code = %ck_code(&e), "could not destroy the derived ECDH secret object");
        return Err(Fail::Device(e));
    }
    if z.len() != field_len {
        return Err(BackendError::Malformed(format!(
            "ECDH secret of {} bytes, expected {field_len}",
            z.len()
        ))
        .into());
    }
    Ok(SecretBytes::new(std::mem::take(&mut *z)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_by_key_attributes_are_said_plainly() {
        let f = cryptoki::context::Function::Decrypt;
        assert!(matches!(
            not_permitted(Fail::Device(CkError::Pkcs11(RvError::KeyFunctionNotPermitted, f))),
            Fail::Backend(BackendError::InvalidRequest(m)) if m.contains("CKR_KEY_FUNCTION_NOT_PERMITTED")
        ));
        assert!(matches!(
            not_permitted(Fail::Device(CkError::Pkcs11(
                RvError::SessionHandleInvalid,
                f
            ))),
            Fail::Device(_)
        ));
    }
}
