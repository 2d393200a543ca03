//! JWE decryption through the service: authorise (`decrypt` on the key) → size limit → parse
//! the compact JWE → pick the key version by the header `kid` → check the header's algorithms
//! against the key, the request and the caller's rule → rate limits → the device's private-key
//! step (RSA-OAEP or ECDH) by the deadline → content decryption on the host → the plaintext.
//!
//! **No oracle.** Every reason a JWE cannot be decrypted — malformed, refused header members,
//! a `kid` of no published version, an `alg` or `enc` outside what is allowed, the device's
//! refusal of the ciphertext, a key unwrap or tag that does not verify, an oversized input — is
//! answered with one error ([`Error::Undecryptable`]) whose caller-facing message is the same
//! for all; the reason goes only to the log and the audit record, under the request id. Only
//! what says nothing about the ciphertext keeps its own answer: the caller's rights, the key's
//! name, state and purpose, the request's own allow-lists, and device faults (unavailable,
//! busy, timeout).
//!
//! Decryption never feeds the signing quarantine: the quarantine is about signatures that do
//! not verify, and a JWE that does not decrypt is the sender's (or an attacker's) doing, not
//! the device's.
//!
//! Owns no wire types and no JOSE rules (those are [`crate::jose::Jwe`]'s); never logs or
//! records the plaintext, the CEK or the shared secret.

use std::sync::Arc;

use super::{Call, Error, Origin, Service, by_deadline, sign_deadline};
use crate::audit;
use crate::backend::BackendError;
use crate::jose::{self, Jwe, JweAlg, JweEnc};
use crate::keyring::{KeyringError, VersionInfo};
use crate::policy::{Operation, PolicyError};
use crate::secret::SecretBytes;

/// A decrypted JWE: the plaintext (a secret, zeroized when dropped and never in `Debug`) and
/// what the caller may want to check about how it was encrypted.
pub struct Decrypted {
    /// The plaintext (an inner JWS for a nested token, or JSON claims).
    pub plaintext: SecretBytes,
    /// The protected header, as the JSON text the sender wrote.
    pub protected_header: String,
    /// The key version that decrypted.
    pub version: u32,
    /// Its kid.
    pub kid: String,
    /// The header's key-management alg.
    pub alg: JweAlg,
    /// The header's content encryption.
    pub enc: JweEnc,
}

impl std::fmt::Debug for Decrypted {
    // Hand-written: the plaintext is what sigild exists to protect.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decrypted")
            .field(
                "plaintext",
                &format_args!("<{} bytes redacted>", self.plaintext.expose().len()),
            )
            .field("version", &self.version)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("enc", &self.enc)
            .finish_non_exhaustive()
    }
}

/// The uniform answer for a JWE that cannot be decrypted, with the reason for the log.
fn undecryptable(reason: impl Into<String>) -> Error {
    Error::Undecryptable {
        reason: reason.into(),
    }
}

/// Parse the request's allow-list of names with `parse`; an unknown name is the caller's own
/// mistake about its own request (not an oracle) and is said plainly.
fn allow_list<T: Copy>(
    field: &'static str,
    names: &[String],
    parse: fn(&str) -> Option<T>,
) -> Result<Option<Vec<T>>, Error> {
    if names.is_empty() {
        return Ok(None);
    }
    names
        .iter()
        .map(|n| {
            parse(n).ok_or_else(|| Error::UnknownJweName {
                field,
                name: n.clone(),
            })
        })
        .collect::<Result<Vec<T>, Error>>()
        .map(Some)
}

/// Whether the device's refusal is about the ciphertext (bad padding, a length or value it
/// rejects) rather than the device's health: such refusals are answered like every other
/// JWE that cannot be decrypted, so the caller cannot tell them from a bad tag.
fn refuses_ciphertext(e: &BackendError) -> bool {
    match e {
        BackendError::InvalidRequest(_) | BackendError::Malformed(_) => true,
        BackendError::Device { code, .. } => [
            "CKR_ENCRYPTED_DATA_INVALID",
            "CKR_ENCRYPTED_DATA_LEN_RANGE",
            "CKR_WRAPPED_KEY_INVALID",
            "CKR_WRAPPED_KEY_LEN_RANGE",
            "CKR_DATA_INVALID",
            "CKR_DATA_LEN_RANGE",
            "CKR_DOMAIN_PARAMS_INVALID",
        ]
        .iter()
        .any(|c| code.contains(c)),
        _ => false,
    }
}

/// The protected header of a compact JWE as JSON text (the JWE has parsed, so this cannot
/// fail in practice; should it, the JWE is refused like any other).
fn protected_header(compact: &[u8]) -> Result<String, Error> {
    let first = compact.split(|&b| b == b'.').next().unwrap_or_default();
    let text = std::str::from_utf8(first).map_err(|_| undecryptable("header not UTF-8"))?;
    let json = jose::b64_decode(text).map_err(|_| undecryptable("header not base64url"))?;
    String::from_utf8(json).map_err(|_| undecryptable("header JSON not UTF-8"))
}

impl Service {
    /// Decrypt a compact JWE with `key`, the version chosen by the header `kid` among the
    /// published ones (`next`, `active`, `retired`; no `kid`: the active version). The
    /// header's `alg` must be the version's own and within `allowed_algs` (empty: any) and the
    /// caller's rule; its `enc` within `allowed_encs` and the rule.
    ///
    /// # Errors
    /// [`Error::Undecryptable`] (INVALID_ARGUMENT, one message) for every JWE that cannot be
    /// decrypted, whatever the reason; PermissionDenied or ResourceExhausted from the policy;
    /// NotFound for an unknown key; FailedPrecondition for a signing key or a key without an
    /// active version when the JWE names no `kid`; InvalidArgument for an unknown name in the
    /// allow-lists; device faults (Unavailable, ResourceExhausted).
    pub async fn decrypt_jwe(
        &self,
        origin: &Origin,
        key: &str,
        jwe: &[u8],
        allowed_algs: &[String],
        allowed_encs: &[String],
    ) -> Result<Decrypted, Error> {
        self.run(origin, Operation::Decrypt, "decrypt", key, async |call| {
            self.authorize(call)?;
            call.record.jwe_sha256 = Some(audit::digest(jwe));
            let algs = allow_list("allowed_algs", allowed_algs, JweAlg::parse)?;
            let encs = allow_list("allowed_encs", allowed_encs, JweEnc::parse)?;
            let r = self.decrypt_checked(call, key, jwe, algs, encs).await;
            if let Err(Error::Undecryptable { reason }) = &r {
                tracing::info!(request_id = %call.record.request_id, key, "JWE not decrypted: {reason}");
                call.record.reason = Some(reason.clone());
            }
            r
        })
        .await
    }

    /// The body of [`Service::decrypt_jwe`] once the caller may decrypt with `key` at all.
    async fn decrypt_checked(
        &self,
        call: &mut Call,
        key: &str,
        compact: &[u8],
        algs: Option<Vec<JweAlg>>,
        encs: Option<Vec<JweEnc>>,
    ) -> Result<Decrypted, Error> {
        let limit = self.options.max_jwe_bytes;
        if compact.len() > limit {
            return Err(undecryptable(format!(
                "{} bytes exceed [decryption] max_jwe_bytes = {limit}",
                compact.len()
            )));
        }
        // The key's purpose is its own for life and says nothing about the JWE: a signing key
        // is refused plainly, whatever was sent.
        let info = self.keyring.get(key)?;
        if let Some(v) = info.versions.last()
            && v.alg.jwe_alg().is_none()
        {
            return Err(KeyringError::WrongPurpose {
                name: key.to_owned(),
                purpose: v.purpose(),
                want: "decrypt",
            }
            .into());
        }
        let jwe = Jwe::parse(compact).map_err(|e| undecryptable(e.to_string()))?;
        let (alg, enc) = (jwe.alg(), jwe.enc());
        call.record.alg = Some(alg.name().to_owned());
        call.record.enc = Some(enc.name().to_owned());
        let version: Arc<VersionInfo> = match jwe.kid() {
            Some(kid) => info
                .versions
                .iter()
                .find(|v| v.kid == kid && v.state.published())
                .cloned()
                .ok_or_else(|| undecryptable("the kid names no published version of the key"))?,
            None => info
                .active()
                .cloned()
                .ok_or_else(|| KeyringError::NoActiveVersion(key.to_owned()))?,
        };
        call.record.version = Some(version.version);
        call.record.kid = Some(version.kid.clone());
        if version.alg.jwe_alg() != Some(alg) {
            return Err(undecryptable(format!(
                "alg {alg} is not the key version's ({})",
                version.alg.name()
            )));
        }
        if algs.as_ref().is_some_and(|a| !a.contains(&alg)) {
            return Err(undecryptable(format!(
                "alg {alg} not in the request's allowed_algs"
            )));
        }
        if encs.as_ref().is_some_and(|e| !e.contains(&enc)) {
            return Err(undecryptable(format!(
                "enc {enc} not in the request's allowed_encs"
            )));
        }
        let policy = self.policy();
        let grant = policy
            .evaluate_jwe(&call.caller, key, alg, enc)
            .ok_or_else(|| {
                undecryptable(format!("no rule of the caller allows {alg} with {enc}"))
            })?;
        call.grant = Some(grant);
        policy
            .admit(&call.caller, grant, key, self.epoch.elapsed())
            .map_err(|e: PolicyError| Self::refused(call, e))?;
        let op = jwe
            .device_op(&version.public)
            .map_err(|e| undecryptable(e.to_string()))?;
        let secret = self
            .device_decrypt(&version, alg, op, call.deadline)
            .await?;
        let plaintext = jwe
            .decrypt(&secret)
            .map_err(|e| undecryptable(e.to_string()))?;
        drop(secret);
        Ok(Decrypted {
            plaintext,
            protected_header: protected_header(compact)?,
            version: version.version,
            kid: version.kid.clone(),
            alg,
            enc,
        })
    }

    /// The device's private-key step, answered by the caller's deadline bounded by the
    /// configured timeout (as for signing). A refusal of the ciphertext is a JWE that cannot
    /// be decrypted; anything else is the device's and keeps its own answer.
    async fn device_decrypt(
        &self,
        version: &VersionInfo,
        alg: JweAlg,
        op: crate::crypto::DecryptOp,
        deadline: Option<std::time::Instant>,
    ) -> Result<SecretBytes, Error> {
        let deadline = sign_deadline(self.options.sign_timeout, deadline)?;
        let pending = self
            .keyring
            .backend()
            .decrypt(&version.key_id, version.kind, op, deadline);
        by_deadline(version, deadline, pending).await?.map_err(|e| {
            if refuses_ciphertext(&e) {
                undecryptable(format!("the device refused the ciphertext: {e}"))
            } else {
                Error::from(e).for_alg(alg, "decrypt with")
            }
        })
    }
}

#[cfg(test)]
#[path = "decrypt_tests.rs"]
mod tests;
