//! The one PKCS#11 call sigild makes itself rather than through `cryptoki`: `C_GetTokenInfo`
//! into the raw `CK_TOKEN_INFO`, for the slots whose token information `cryptoki` cannot parse.
//!
//! Why this exists: cryptoki 0.12 converts `CK_TOKEN_INFO` into its `TokenInfo` and fails the
//! whole call when one field does not parse, and it has no way to hand out the raw structure.
//! openCryptoki 3.8's soft token sets `CKF_CLOCK_ON_TOKEN` and reports its clock as
//! `"        12:56:59"` instead of `YYYYMMDDhhmmss00`, so without this module sigild cannot
//! even read that token's label to match it against the configured URI.
//!
//! Owns: a second handle on the module file `cryptoki` already loaded (the dynamic loader hands
//! out the same, already initialised instance for the same path) and the `C_GetTokenInfo`
//! pointer from the module's function list. Never calls any other function of the module, and
//! never interprets the fields: `token.rs` decides what a field that does not parse means.
//!
//! This is the only module of the crate allowed `unsafe` code (see `src/lib.rs`).
#![allow(unsafe_code)]

use std::path::Path;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, Rv};
use cryptoki_sys::{CK_FUNCTION_LIST, CK_RV, CK_SLOT_ID, CK_TOKEN_INFO, CKR_OK};

/// `C_GetTokenInfo` as the module's function list holds it.
type GetTokenInfoFn = unsafe extern "C" fn(CK_SLOT_ID, *mut CK_TOKEN_INFO) -> CK_RV;

/// A handle on a loaded PKCS#11 module that can read raw token information.
pub(super) struct RawTokenInfo {
    /// Keeps the module mapped while `get_token_info` may be called.
    _module: cryptoki_sys::Pkcs11,
    /// The module's `C_GetTokenInfo`.
    get_token_info: GetTokenInfoFn,
}

impl RawTokenInfo {
    /// Open the module at `path` (already loaded and initialised by `cryptoki` from the same
    /// path) and take `C_GetTokenInfo` from its function list.
    ///
    /// # Errors
    /// A description of what is missing: the file cannot be loaded, it has no
    /// `C_GetFunctionList`, or its list has no `C_GetTokenInfo`.
    pub(super) fn open(path: &Path) -> Result<RawTokenInfo, String> {
        // SAFETY: loading a shared object runs its initialisers. This is the PKCS#11 module
        // the backend already loaded from the same path through `cryptoki`, so the loader only
        // takes another reference to the mapped instance; no initialiser runs a second time.
        let module = unsafe { cryptoki_sys::Pkcs11::new(path) }
            .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
        let get_function_list = module
            .C_GetFunctionList
            .as_ref()
            .map_err(|e| format!("{} has no C_GetFunctionList: {e}", path.display()))?;
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: `C_GetFunctionList` writes one pointer through the pointer it is given;
        // `list` is a live local of exactly that type.
        let rv = unsafe { get_function_list(&mut list) };
        if rv != CKR_OK || list.is_null() {
            return Err(format!(
                "C_GetFunctionList of {} failed: {}",
                path.display(),
                code(rv, Function::GetFunctionList)
            ));
        }
        // SAFETY: on CKR_OK `list` points to the module's own function list, which stays valid
        // while the module is loaded (`module` keeps it loaded); one field is copied out.
        let get_token_info = unsafe { (*list).C_GetTokenInfo }
            .ok_or_else(|| format!("{} has no C_GetTokenInfo", path.display()))?;
        Ok(RawTokenInfo {
            _module: module,
            get_token_info,
        })
    }

    /// `C_GetTokenInfo` for `slot`, the structure exactly as the module filled it in.
    ///
    /// # Errors
    /// The module's return code as a `cryptoki` error.
    pub(super) fn token_info(&self, slot: CK_SLOT_ID) -> Result<CK_TOKEN_INFO, CkError> {
        let mut info = CK_TOKEN_INFO::default();
        // SAFETY: `C_GetTokenInfo` writes one CK_TOKEN_INFO through the pointer it is given;
        // `info` is an initialised, properly aligned CK_TOKEN_INFO that outlives the call. The
        // module was initialised with CKF_OS_LOCKING_OK, so it may be called from any thread;
        // on a slot id it does not know it returns an error code rather than writing.
        let rv = unsafe { (self.get_token_info)(slot, &mut info) };
        Rv::from(rv).into_result(Function::GetTokenInfo)?;
        Ok(info)
    }
}

/// A return code as `cryptoki` shows it.
fn code(rv: CK_RV, function: Function) -> String {
    match Rv::from(rv).into_result(function) {
        Ok(()) => "CKR_OK with a null list".into(),
        Err(e) => e.to_string(),
    }
}
