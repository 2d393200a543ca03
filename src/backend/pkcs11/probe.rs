//! A one-shot check of a PKCS#11 configuration against the real device, for `check-config`:
//! load the module, initialise it, find the token, log in once, and report what the token is
//! and which signature schemes it can serve — or exactly which of those steps failed and why.
//!
//! Owns nothing that lives on: no workers, no cached state; the module is finalised before
//! returning. Never creates, changes or destroys objects on the token.

use std::path::PathBuf;

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::UserType;

use super::caps::SchemeSupport;
use super::token::{self, SlotReport, TokenIdentity};
use super::{Pkcs11Settings, ck_code};
use crate::backend::BackendError;

/// What a successful probe found.
#[derive(Debug, Clone)]
pub struct Probe {
    /// The module that was loaded.
    pub module: PathBuf,
    /// The module's own description (`C_GetInfo`: manufacturer, description, version).
    pub library: String,
    /// The slot the token is in now.
    pub slot: u64,
    /// The token the selector matched.
    pub token: TokenIdentity,
    /// Fields of the token information that could not be parsed and are ignored.
    pub ignored: Vec<String>,
    /// The signature schemes and what the token lacks for each; `None` when the token's
    /// mechanism list could not be read.
    pub schemes: Option<Vec<SchemeSupport>>,
    /// The slots that were not used, and why.
    pub others: Vec<SlotReport>,
}

/// Check `settings` against the device: module, initialisation, token, PIN, mechanisms.
///
/// The PIN is tried once; a wrong PIN costs one try of the token's retry counter, as a failed
/// daemon start would.
///
/// # Errors
/// [`BackendError::Unavailable`] naming the step that failed (module missing or not loadable,
/// `C_Initialize` with its likely cause, no or several matching tokens with every slot seen);
/// [`BackendError::PinRejected`] / [`BackendError::PinLocked`] when the token refuses the PIN.
pub fn probe(settings: &Pkcs11Settings) -> Result<Probe, BackendError> {
    let (ctx, init) = super::load_module(&settings.module)?;
    if let Err(e) = init {
        return Err(token::init_failure(&settings.module, &e));
    }
    let result = examine(&ctx, settings);
    let _ = ctx.finalize();
    result
}

/// Everything after initialisation, so that the module is finalised on every path.
fn examine(ctx: &Pkcs11, settings: &Pkcs11Settings) -> Result<Probe, BackendError> {
    let library = ctx
        .get_library_info()
        .map(|i| {
            format!(
                "{} {} {}",
                i.manufacturer_id().trim_end(),
                i.library_description().trim_end(),
                i.library_version()
            )
        })
        .unwrap_or_else(|e| format!("(C_GetInfo failed: {})", ck_code(&e)));
    let shown = super::describe(&settings.token);
    let found = token::discover(ctx, &settings.module, &settings.token, &shown)?;
    let session = ctx.open_ro_session(found.slot).map_err(|e| {
        BackendError::Unavailable(format!(
            "cannot open a session on token '{}': {}",
            found.identity.label,
            ck_code(&e)
        ))
    })?;
    let pin = cryptoki::types::AuthPin::from(settings.pin.expose().to_owned());
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(
            e @ CkError::Pkcs11(
                RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange,
                _,
            ),
        ) => return Err(BackendError::PinRejected(ck_code(&e))),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => return Err(BackendError::PinLocked),
        Err(e) => {
            return Err(BackendError::Unavailable(format!(
                "C_Login on token '{}' failed: {}",
                found.identity.label,
                ck_code(&e)
            )));
        }
    }
    let _ = session.logout();
    Ok(Probe {
        module: settings.module.clone(),
        library,
        slot: found.slot.id(),
        token: found.identity,
        ignored: found.ignored,
        schemes: found.caps.map(|c| c.schemes()),
        others: found.others,
    })
}

/// The report `check-config` prints: the module, the token, what was ignored, what the token can
/// serve and what it lacks.
impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.token;
        writeln!(f, "module: {} ({})", self.module.display(), self.library)?;
        writeln!(
            f,
            "token: '{}' serial '{}' ({} {}) in slot {}; user login OK",
            t.label, t.serial, t.manufacturer, t.model, self.slot
        )?;
        for field in &self.ignored {
            writeln!(f, "ignored: {field} in the token information")?;
        }
        match &self.schemes {
            None => write!(
                f,
                "algorithms: unknown (the token's mechanism list cannot be read)"
            )?,
            Some(schemes) => {
                let served: Vec<&str> = schemes
                    .iter()
                    .filter(|s| s.missing.is_empty())
                    .map(|s| s.name)
                    .collect();
                let lacking: Vec<String> = schemes
                    .iter()
                    .filter(|s| !s.missing.is_empty())
                    .map(|s| format!("{} (needs {})", s.name, s.missing.join(", ")))
                    .collect();
                write!(
                    f,
                    "algorithms: {}",
                    if served.is_empty() {
                        "none".to_owned()
                    } else {
                        served.join(" ")
                    }
                )?;
                if !lacking.is_empty() {
                    write!(f, "\nnot offered by this token: {}", lacking.join("; "))?;
                }
            }
        }
        Ok(())
    }
}
