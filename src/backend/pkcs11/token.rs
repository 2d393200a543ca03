//! Token discovery: find the one token the configured URI names among the module's slots, read
//! its identity even when the module reports a field `cryptoki` cannot parse, read what it can
//! do, and say for every slot that was not used why not. Also the message for a module that
//! cannot be initialised, with the likely cause.
//!
//! Owns: slot enumeration, matching slots against the selector, decoding raw token information
//! (through `raw_info`, only for slots `cryptoki` cannot decode), and the operator-facing texts
//! of these failures. Never opens a session or logs in; never caches (the backend does).

use std::fmt;
use std::path::Path;

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::slot::Slot;
use cryptoki_sys::{CK_TOKEN_INFO, CKF_CLOCK_ON_TOKEN};

use super::caps::Capabilities;
use super::raw_info::RawTokenInfo;
use super::{Pkcs11Uri, ck_code};
use crate::backend::BackendError;

/// A token's identity as its slot reports it (blank padding removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// `CKA_LABEL` of the token (`token=` in a URI).
    pub label: String,
    /// Serial number (`serial=`).
    pub serial: String,
    /// Manufacturer id (`manufacturer=`).
    pub manufacturer: String,
    /// Model (`model=`).
    pub model: String,
}

/// A slot discovery looked at and did not use, and why: shown to operators when no token
/// matches, so that a token that is there but unusable is never mistaken for a missing one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotReport {
    /// The slot id (unstable across re-initialisation; for reading, not for configuring).
    pub slot: u64,
    /// The token in it, when its identity could be read.
    pub token: Option<TokenIdentity>,
    /// Why it was not used.
    pub reason: String,
}

impl fmt::Display for SlotReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {}", self.slot)?;
        if let Some(t) = &self.token {
            write!(f, " (token '{}', serial '{}')", t.label, t.serial)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// The token discovery selected.
pub(super) struct Discovered {
    /// Where it is now.
    pub slot: Slot,
    /// What it says it is.
    pub identity: TokenIdentity,
    /// Fields of its token information that could not be parsed and were ignored.
    pub ignored: Vec<String>,
    /// Its mechanisms; `None` when the list could not be read (requests then meet the
    /// device's own refusals).
    pub caps: Option<Capabilities>,
    /// The other slots, and why they were not used.
    pub others: Vec<SlotReport>,
}

/// Search the slots of `ctx` (loaded from `module`) for the one token matching `selector`
/// (`shown` is the selector as operators wrote it, for messages).
///
/// # Errors
/// [`BackendError::Unavailable`] when the slot list cannot be read, or when no token or more
/// than one matches; the message lists every slot that was not used and why.
pub(super) fn discover(
    ctx: &Pkcs11,
    module: &Path,
    selector: &Pkcs11Uri,
    shown: &str,
) -> Result<Discovered, BackendError> {
    let slots = ctx
        .get_all_slots()
        .map_err(|e| BackendError::Unavailable(format!("C_GetSlotList failed: {}", ck_code(&e))))?;
    let mut raw: Option<Result<RawTokenInfo, String>> = None;
    let mut matches = Vec::new();
    let mut others = Vec::new();
    for slot in slots {
        let report = |token: Option<TokenIdentity>, reason: String| SlotReport {
            slot: slot.id(),
            token,
            reason,
        };
        match ctx.get_slot_info(slot) {
            Ok(info) if !info.token_present() => {
                others.push(report(None, "no token present".into()));
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                others.push(report(
                    None,
                    format!("C_GetSlotInfo failed: {}", ck_code(&e)),
                ));
                continue;
            }
        }
        let (identity, ignored) = match read_identity(ctx, module, &mut raw, slot) {
            Ok(found) => found,
            Err(reason) => {
                tracing::warn!(slot = slot.id(), %reason, "cannot read the token information of a slot; not using it");
                others.push(report(None, reason));
                continue;
            }
        };
        let differs = mismatches(selector, slot, &identity);
        if differs.is_empty() {
            matches.push((slot, identity, ignored));
        } else {
            tracing::debug!(slot = slot.id(), label = %identity.label, differs = %differs.join(", "), "token does not match the selector");
            others.push(report(
                Some(identity),
                format!("{} differs", differs.join(", ")),
            ));
        }
    }
    if matches.len() > 1 {
        let list = matches
            .iter()
            .map(|(s, id, _)| format!("slot {} ('{}', serial '{}')", s.id(), id.label, id.serial))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(BackendError::Unavailable(format!(
            "{} tokens match {shown}: {list}; name one by serial= or give each token its own label",
            matches.len()
        )));
    }
    let Some((slot, identity, ignored)) = matches.pop() else {
        let seen = if others.is_empty() {
            "the module reports no slots".to_owned()
        } else {
            others
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(BackendError::Unavailable(format!(
            "no token matches {shown}; {seen}"
        )));
    };
    for field in &ignored {
        tracing::warn!(slot = slot.id(), token = %identity.label, field = %field, "the token reports a field sigild cannot parse; ignoring it");
    }
    let caps = match Capabilities::read(ctx, slot, &identity.label) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(slot = slot.id(), token = %identity.label, code = %ck_code(&e), "cannot read the token's mechanisms; unsupported algorithms will fail on the device");
            None
        }
    };
    Ok(Discovered {
        slot,
        identity,
        ignored,
        caps,
        others,
    })
}

/// The selector's attributes that `identity` in `slot` does not have (empty: it matches).
fn mismatches(selector: &Pkcs11Uri, slot: Slot, identity: &TokenIdentity) -> Vec<&'static str> {
    let fits =
        |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w.trim_end() == have);
    let mut differs = Vec::new();
    if !fits(&selector.token, &identity.label) {
        differs.push("label");
    }
    if !fits(&selector.serial, &identity.serial) {
        differs.push("serial");
    }
    if !fits(&selector.manufacturer, &identity.manufacturer) {
        differs.push("manufacturer");
    }
    if !fits(&selector.model, &identity.model) {
        differs.push("model");
    }
    if selector.slot_id.is_some_and(|id| id != slot.id()) {
        differs.push("slot-id");
    }
    differs
}

/// The identity of the token in `slot`, through `cryptoki`, or from the raw structure when
/// `cryptoki` cannot parse a field (then with the names of the fields that were ignored).
fn read_identity(
    ctx: &Pkcs11,
    module: &Path,
    raw: &mut Option<Result<RawTokenInfo, String>>,
    slot: Slot,
) -> Result<(TokenIdentity, Vec<String>), String> {
    let parse_error = match ctx.get_token_info(slot) {
        Ok(info) => {
            let identity = TokenIdentity {
                label: info.label().trim_end().to_owned(),
                serial: info.serial_number().trim_end().to_owned(),
                manufacturer: info.manufacturer_id().trim_end().to_owned(),
                model: info.model().trim_end().to_owned(),
            };
            return Ok((identity, Vec::new()));
        }
        Err(e @ CkError::Pkcs11(..)) => {
            return Err(format!("C_GetTokenInfo failed: {}", ck_code(&e)));
        }
        Err(other) => other,
    };
    let reader = raw
        .get_or_insert_with(|| RawTokenInfo::open(module))
        .as_ref()
        .map_err(|why| {
            format!(
                "its token information does not parse ({parse_error}) and cannot be read raw: {why}"
            )
        })?;
    let info = reader
        .token_info(slot.id())
        .map_err(|e| format!("C_GetTokenInfo failed: {}", ck_code(&e)))?;
    let mut ignored = unparsable_fields(&info);
    if ignored.is_empty() {
        // cryptoki refused something this module does not recognise; keep its words.
        ignored.push(format!("token information ({parse_error})"));
    }
    Ok((identity_of(&info), ignored))
}

/// The identity fields of a raw `CK_TOKEN_INFO` (blank-padded, UTF-8 by the standard; bytes
/// that are not UTF-8 are shown replaced).
fn identity_of(info: &CK_TOKEN_INFO) -> TokenIdentity {
    TokenIdentity {
        label: padded(&info.label),
        serial: padded(&info.serialNumber),
        manufacturer: padded(&info.manufacturerID),
        model: padded(&info.model),
    }
}

fn padded(field: &[u8]) -> String {
    String::from_utf8_lossy(field)
        .trim_end_matches(' ')
        .to_owned()
}

/// Fields of a raw `CK_TOKEN_INFO` that do not have the form PKCS#11 gives them, described for
/// the log.
fn unparsable_fields(info: &CK_TOKEN_INFO) -> Vec<String> {
    let mut out = Vec::new();
    let clock = &info.utcTime;
    if info.flags & CKF_CLOCK_ON_TOKEN != 0
        && !clock
            .get(..14)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    {
        out.push(format!(
            "utcTime {:?} (PKCS#11 wants YYYYMMDDhhmmss00)",
            String::from_utf8_lossy(clock)
        ));
    }
    for (name, field) in [
        ("label", &info.label[..]),
        ("manufacturerID", &info.manufacturerID[..]),
        ("model", &info.model[..]),
        ("serialNumber", &info.serialNumber[..]),
    ] {
        if std::str::from_utf8(field).is_err() {
            out.push(format!("{name} (not UTF-8)"));
        }
    }
    out
}

/// The error for a module whose `C_Initialize` failed: names the module, the code and what
/// usually causes it, so an operator knows what to check. Not fatal: the backend keeps trying.
pub(super) fn init_failure(module: &Path, e: &CkError) -> BackendError {
    BackendError::Unavailable(format!(
        "C_Initialize of PKCS#11 module {} failed: {}; {}",
        module.display(),
        ck_code(e),
        init_hint(module, e)
    ))
}

/// The likely cause of a failed `C_Initialize`, by module and code.
fn init_hint(module: &Path, e: &CkError) -> &'static str {
    let names = [
        module.to_string_lossy().to_ascii_lowercase(),
        std::fs::canonicalize(module)
            .map(|p| p.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default(),
    ];
    let is = |needle: &str| names.iter().any(|n| n.contains(needle));
    if is("opencryptoki") || is("pkcs11_api") {
        "openCryptoki needs its slot daemon: is pkcsslotd running (systemctl status pkcsslotd), and is this user in the pkcs11 group?"
    } else if is("softhsm") {
        "SoftHSM: does SOFTHSM2_CONF (or /etc/softhsm/softhsm2.conf) name a readable config whose tokendir exists and is writable by this user?"
    } else if matches!(e, CkError::Pkcs11(RvError::HostMemory, _)) {
        "the module could not set up its shared state or reach its service; check the module's own configuration, daemon and logs"
    } else {
        "check the module's own configuration and, for a network HSM, its connection to the HSM"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(label: &str, clock: &[u8; 16], flags: u64) -> CK_TOKEN_INFO {
        let mut info = CK_TOKEN_INFO {
            flags,
            utcTime: *clock,
            ..Default::default()
        };
        info.label = [b' '; 32];
        info.label[..label.len()].copy_from_slice(label.as_bytes());
        info.serialNumber = *b"123             ";
        info
    }

    #[test]
    fn opencryptoki_clock_is_reported_and_identity_kept() {
        let info = raw("sigild-ock", b"        12:56:59", CKF_CLOCK_ON_TOKEN);
        let id = identity_of(&info);
        assert_eq!(id.label, "sigild-ock");
        assert_eq!(id.serial, "123");
        let ignored = unparsable_fields(&info);
        assert_eq!(ignored.len(), 1);
        assert!(
            ignored[0].contains("utcTime \"        12:56:59\""),
            "{ignored:?}"
        );
        // A proper clock, or none, is nothing to report.
        assert!(unparsable_fields(&raw("t", b"2025112913560000", CKF_CLOCK_ON_TOKEN)).is_empty());
        assert!(unparsable_fields(&raw("t", b"        12:56:59", 0)).is_empty());
    }

    #[test]
    fn slot_reports_say_which_attribute_differs() -> Result<(), Box<dyn std::error::Error>> {
        let selector: Pkcs11Uri = "pkcs11:token=wanted;serial=9".parse()?;
        let id = TokenIdentity {
            label: "other".into(),
            serial: "9".into(),
            manufacturer: "IBM".into(),
            model: "SoftTok".into(),
        };
        let slot = Slot::try_from(3u64)?;
        assert_eq!(mismatches(&selector, slot, &id), ["label"]);
        let report = SlotReport {
            slot: 3,
            token: Some(id),
            reason: "label differs".into(),
        };
        assert_eq!(
            report.to_string(),
            "slot 3 (token 'other', serial '9'): label differs"
        );
        Ok(())
    }

    #[test]
    fn init_hints_name_the_likely_cause() {
        let e = CkError::Pkcs11(RvError::HostMemory, cryptoki::context::Function::Initialize);
        let m = init_failure(
            Path::new("/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so"),
            &e,
        )
        .to_string();
        assert!(m.contains("libopencryptoki.so"), "{m}");
        assert!(m.contains("CKR_HOST_MEMORY"), "{m}");
        assert!(m.contains("pkcsslotd"), "{m}");
    }
}
