//! Creating a token on a PKCS#11 module that hands out empty slots (SoftHSM): find a free slot,
//! `C_InitToken` with the SO PIN, then `C_InitPIN` for the user PIN. What `sigild dev` needs on
//! first start, kept here so that only `backend/` speaks PKCS#11.
//!
//! Owns: that one sequence of calls, on a module context of its own that it finalises when done
//! (before the daemon loads the module for serving). Never touches keys, the worker pool, or any
//! file but the module.

use std::path::Path;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::Error as CkError;
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::secret::Secret;

/// Why a token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A PKCS#11 call failed.
    #[error("{step} failed: {source}")]
    Device {
        /// What was being done (e.g. `C_InitToken`).
        step: &'static str,
        /// The module's error, with its `CKR_…` code.
        #[source]
        source: CkError,
    },
    /// Every slot of the module holds an initialised token.
    #[error("the PKCS#11 module offers no free slot for a new token")]
    NoFreeSlot,
    /// The token was initialised but is not found by its label afterwards.
    #[error("the token {0:?} vanished after initialisation")]
    Vanished(String),
}

/// Make sure a token labelled `label` exists on the module at `module`: when none does, create
/// it in the first free slot with the SO PIN `so_pin` and set its user PIN to `user_pin`.
/// Returns whether a token was created. Loads and finalises the module itself, so it must run
/// before anything else in the process uses the module (SoftHSM also needs `SOFTHSM2_CONF` set
/// by then).
///
/// # Errors
/// [`ProvisionError`] when the module cannot be loaded, has no free slot, or refuses a step.
pub fn ensure_token(
    module: &Path,
    label: &str,
    so_pin: &Secret,
    user_pin: &Secret,
) -> Result<bool, ProvisionError> {
    let at = |step: &'static str| move |source| ProvisionError::Device { step, source };
    let ctx = Pkcs11::new(module).map_err(at("loading the module"))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(at("C_Initialize"))?;
    if find_label(&ctx, label)?.is_some() {
        return Ok(false);
    }
    let free = ctx
        .get_slots_with_token()
        .map_err(at("C_GetSlotList"))?
        .into_iter()
        .find(|s| ctx.get_token_info(*s).is_ok_and(|t| !t.token_initialized()))
        .ok_or(ProvisionError::NoFreeSlot)?;
    let so_pin = AuthPin::from(so_pin.expose().to_owned());
    ctx.init_token(free, &so_pin, label)
        .map_err(at("C_InitToken"))?;
    // SoftHSM renumbers slots after initialisation: find the token again by label.
    let slot = find_label(&ctx, label)?.ok_or_else(|| ProvisionError::Vanished(label.into()))?;
    let session = ctx.open_rw_session(slot).map_err(at("C_OpenSession"))?;
    session
        .login(UserType::So, Some(&so_pin))
        .map_err(at("C_Login (SO)"))?;
    session
        .init_pin(&AuthPin::from(user_pin.expose().to_owned()))
        .map_err(at("C_InitPIN"))?;
    session.logout().map_err(at("C_Logout"))?;
    drop(session);
    ctx.finalize().map_err(at("C_Finalize"))?;
    Ok(true)
}

/// The slot holding the token labelled `label`, if any.
fn find_label(ctx: &Pkcs11, label: &str) -> Result<Option<Slot>, ProvisionError> {
    Ok(ctx
        .get_slots_with_token()
        .map_err(|source| ProvisionError::Device {
            step: "C_GetSlotList",
            source,
        })?
        .into_iter()
        .find(|s| {
            ctx.get_token_info(*s)
                .is_ok_and(|t| t.label().trim_end() == label)
        }))
}
