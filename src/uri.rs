//! RFC 7512 PKCS#11 URIs: how operators name a token (by label or serial, never by slot id,
//! which changes when tokens are initialised) and a key on it.
//!
//! Pure parsing and formatting; no PKCS#11 calls.

use std::path::PathBuf;

/// The object class a URI may select (`type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectType {
    /// `type=private`
    Private,
    /// `type=public`
    Public,
    /// `type=cert`
    Cert,
    /// `type=data`
    Data,
    /// `type=secret-key`
    SecretKey,
}

/// A parsed PKCS#11 URI. Unknown attributes are refused rather than ignored, so a typo never
/// silently selects a different token or key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=` (CKA token label).
    pub token: Option<String>,
    /// `manufacturer=`.
    pub manufacturer: Option<String>,
    /// `serial=` (token serial number).
    pub serial: Option<String>,
    /// `model=`.
    pub model: Option<String>,
    /// `object=` (CKA_LABEL).
    pub object: Option<String>,
    /// `id=` (CKA_ID, percent-decoded bytes).
    pub id: Option<Vec<u8>>,
    /// `type=`.
    pub object_type: Option<ObjectType>,
    /// `slot-id=`; accepted for completeness, but a token chosen this way can change identity.
    pub slot_id: Option<u64>,
    /// `module-path=` query attribute.
    pub module_path: Option<PathBuf>,
}

/// Why a URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// Does not start with `pkcs11:`.
    #[error("a PKCS#11 URI starts with \"pkcs11:\"")]
    Scheme,
    /// Bad percent-encoding or non-UTF-8 where text is required.
    #[error("bad percent-encoding in attribute {0}")]
    Encoding(String),
    /// An attribute this parser does not know, or one given twice.
    #[error("unsupported or repeated attribute {0:?}")]
    Attribute(String),
    /// A value that does not parse (e.g. `type=foo`).
    #[error("invalid value for {0}")]
    Value(String),
    /// `pin-value=` puts a secret into a string that ends up in logs and configs.
    #[error("pin-value is refused: give the PIN through pin_file or an environment variable")]
    PinValue,
}

impl std::str::FromStr for Pkcs11Uri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, UriError> {
        let rest = s.strip_prefix("pkcs11:").ok_or(UriError::Scheme)?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Pkcs11Uri::default();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, raw) = attr
                .split_once('=')
                .ok_or_else(|| UriError::Attribute(attr.to_owned()))?;
            let bytes = percent_decode(raw).ok_or_else(|| UriError::Encoding(name.to_owned()))?;
            let text = || {
                String::from_utf8(bytes.clone()).map_err(|_| UriError::Encoding(name.to_owned()))
            };
            let dup = || UriError::Attribute(name.to_owned());
            match name {
                "token" => set(&mut uri.token, text()?).ok_or_else(dup)?,
                "manufacturer" => set(&mut uri.manufacturer, text()?).ok_or_else(dup)?,
                "serial" => set(&mut uri.serial, text()?).ok_or_else(dup)?,
                "model" => set(&mut uri.model, text()?).ok_or_else(dup)?,
                "object" => set(&mut uri.object, text()?).ok_or_else(dup)?,
                "id" => set(&mut uri.id, bytes.clone()).ok_or_else(dup)?,
                "type" => {
                    let t = match text()?.as_str() {
                        "private" => ObjectType::Private,
                        "public" => ObjectType::Public,
                        "cert" => ObjectType::Cert,
                        "data" => ObjectType::Data,
                        "secret-key" => ObjectType::SecretKey,
                        _ => return Err(UriError::Value("type".into())),
                    };
                    set(&mut uri.object_type, t).ok_or_else(dup)?;
                }
                "slot-id" => {
                    let v = text()?
                        .parse()
                        .map_err(|_| UriError::Value("slot-id".into()))?;
                    set(&mut uri.slot_id, v).ok_or_else(dup)?;
                }
                // Library and slot descriptions select nothing we need; accept and ignore them
                // so URIs printed by p11tool / pkcs11-tool paste in unchanged.
                "library-manufacturer"
                | "library-description"
                | "library-version"
                | "slot-description"
                | "slot-manufacturer" => {}
                other => return Err(UriError::Attribute(other.to_owned())),
            }
        }
        for attr in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|a| !a.is_empty())
        {
            let (name, raw) = attr
                .split_once('=')
                .ok_or_else(|| UriError::Attribute(attr.to_owned()))?;
            let text = String::from_utf8(
                percent_decode(raw).ok_or_else(|| UriError::Encoding(name.to_owned()))?,
            )
            .map_err(|_| UriError::Encoding(name.to_owned()))?;
            match name {
                "module-path" => set(&mut uri.module_path, PathBuf::from(text))
                    .ok_or_else(|| UriError::Attribute(name.to_owned()))?,
                "pin-value" => return Err(UriError::PinValue),
                // pin-source and module-name are resolved by the daemon's own config.
                "pin-source" | "module-name" => {}
                other => return Err(UriError::Attribute(other.to_owned())),
            }
        }
        Ok(uri)
    }
}

/// Set an option once; `None` when it was already set (a repeated attribute).
fn set<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    Some(out)
}

/// Percent-encode a path attribute value per RFC 7512 §2.3 (unreserved and a few safe chars
/// stay literal).
pub fn percent_encode(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    for &c in value {
        if c.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,&".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// Every byte percent-encoded, as RFC 7512 recommends for `id`.
pub fn percent_encode_all(value: &[u8]) -> String {
    value.iter().map(|c| format!("%{c:02X}")).collect()
}

/// The URI of a private key: token by label (and serial, when known), object by label and id.
pub fn key_uri(token_label: &str, serial: Option<&str>, object: &str, id: &[u8]) -> String {
    let mut s = format!("pkcs11:token={}", percent_encode(token_label.as_bytes()));
    if let Some(serial) = serial.filter(|s| !s.is_empty()) {
        s.push_str(&format!(";serial={}", percent_encode(serial.as_bytes())));
    }
    s.push_str(&format!(
        ";object={};id={};type=private",
        percent_encode(object.as_bytes()),
        percent_encode_all(id)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc7512_examples() -> Result<(), UriError> {
        let u: Pkcs11Uri = "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91?module-path=/usr/lib/libsofttoken.so".parse()?;
        assert_eq!(u.token.as_deref(), Some("The Software PKCS#11 Softtoken"));
        assert_eq!(u.manufacturer.as_deref(), Some("Snake Oil, Inc."));
        assert_eq!(u.object.as_deref(), Some("my-certificate"));
        assert_eq!(u.object_type, Some(ObjectType::Cert));
        assert_eq!(
            u.id,
            Some(vec![0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91])
        );
        assert_eq!(
            u.module_path,
            Some(PathBuf::from("/usr/lib/libsofttoken.so"))
        );
        let e: Pkcs11Uri = "pkcs11:".parse()?;
        assert_eq!(e, Pkcs11Uri::default());
        Ok(())
    }

    #[test]
    fn refuses_what_would_mislead() {
        assert_eq!("token=x".parse::<Pkcs11Uri>(), Err(UriError::Scheme));
        assert_eq!(
            "pkcs11:tokn=x".parse::<Pkcs11Uri>(),
            Err(UriError::Attribute("tokn".into()))
        );
        assert_eq!(
            "pkcs11:token=a;token=b".parse::<Pkcs11Uri>(),
            Err(UriError::Attribute("token".into()))
        );
        assert_eq!(
            "pkcs11:token=a?pin-value=1234".parse::<Pkcs11Uri>(),
            Err(UriError::PinValue)
        );
        assert!(matches!(
            "pkcs11:id=%zz".parse::<Pkcs11Uri>(),
            Err(UriError::Encoding(_))
        ));
        assert!(matches!(
            "pkcs11:type=foo".parse::<Pkcs11Uri>(),
            Err(UriError::Value(_))
        ));
    }

    #[test]
    fn key_uri_round_trips() -> Result<(), UriError> {
        let s = key_uri("sigild dev", Some("abc123"), "idp/v1", &[0, 0xff]);
        assert_eq!(
            s,
            "pkcs11:token=sigild%20dev;serial=abc123;object=idp%2Fv1;id=%00%FF;type=private"
        );
        let u: Pkcs11Uri = s.parse()?;
        assert_eq!(u.token.as_deref(), Some("sigild dev"));
        assert_eq!(u.object.as_deref(), Some("idp/v1"));
        assert_eq!(u.id, Some(vec![0, 0xff]));
        Ok(())
    }
}
