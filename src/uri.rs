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
            // Two hex digits exactly: `from_str_radix` alone would also take "+F" as 0x0F.
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))?;
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
    fn percent_escapes_are_two_hex_digits() {
        // Found by the property test below: "%+1" used to decode as 0x01.
        for bad in [
            "pkcs11:id=%+1",
            "pkcs11:object=%+F",
            "pkcs11:token=%1",
            "pkcs11:id=%-1",
        ] {
            assert!(
                matches!(bad.parse::<Pkcs11Uri>(), Err(UriError::Encoding(_))),
                "{bad}"
            );
        }
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

/// Property tests: parsing never panics, formatting and parsing are inverse, and percent
/// decoding accepts exactly RFC 3986 `pct-encoded` (`%` and two hex digits).
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 7512 formatting of every attribute this parser keeps (a test-side formatter: the
    /// daemon itself only formats key URIs, with [`key_uri`]).
    fn format(u: &Pkcs11Uri) -> String {
        let mut path = Vec::new();
        let mut text = |name: &str, v: &Option<String>| {
            if let Some(v) = v {
                path.push(format!("{name}={}", percent_encode(v.as_bytes())));
            }
        };
        text("token", &u.token);
        text("manufacturer", &u.manufacturer);
        text("serial", &u.serial);
        text("model", &u.model);
        text("object", &u.object);
        if let Some(id) = &u.id {
            path.push(format!("id={}", percent_encode_all(id)));
        }
        if let Some(t) = u.object_type {
            let name = match t {
                ObjectType::Private => "private",
                ObjectType::Public => "public",
                ObjectType::Cert => "cert",
                ObjectType::Data => "data",
                ObjectType::SecretKey => "secret-key",
            };
            path.push(format!("type={name}"));
        }
        if let Some(s) = u.slot_id {
            path.push(format!("slot-id={s}"));
        }
        let mut s = format!("pkcs11:{}", path.join(";"));
        if let Some(m) = &u.module_path {
            let bytes = m.to_str().unwrap_or_default().as_bytes();
            s.push_str(&format!("?module-path={}", percent_encode_all(bytes)));
        }
        s
    }

    fn uri() -> impl Strategy<Value = Pkcs11Uri> {
        let text = || proptest::option::of(".{0,12}");
        (
            (text(), text(), text(), text(), text()),
            proptest::option::of(prop::collection::vec(any::<u8>(), 0..12)),
            proptest::option::of(proptest::sample::select(vec![
                ObjectType::Private,
                ObjectType::Public,
                ObjectType::Cert,
                ObjectType::Data,
                ObjectType::SecretKey,
            ])),
            proptest::option::of(any::<u64>()),
            proptest::option::of("/[a-z0-9 ;?&=%/._-]{0,20}"),
        )
            .prop_map(
                |((token, manufacturer, serial, model, object), id, object_type, slot_id, m)| {
                    Pkcs11Uri {
                        token,
                        manufacturer,
                        serial,
                        model,
                        object,
                        id,
                        object_type,
                        slot_id,
                        module_path: m.map(PathBuf::from),
                    }
                },
            )
    }

    /// The reference: `%` must be followed by exactly two hex digits.
    fn strict_decode(s: &str) -> Option<Vec<u8>> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let hi = (*b.get(i + 1)? as char).to_digit(16)?;
                let lo = (*b.get(i + 2)? as char).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        Some(out)
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Pkcs11Uri>();
            let _ = format!("pkcs11:{s}").parse::<Pkcs11Uri>();
        }

        /// Inputs made of the characters that structure a URI, so the parser's branches
        /// (attributes, query, percent-escapes, repeats) are reached often.
        #[test]
        fn parse_never_panics_on_uri_like_text(
            s in "(token|id|type|slot-id|object|serial|module-path|pin-value|pin-source|x|[;=?&%0-9a-fA-F+\\-é]){0,16}",
        ) {
            let _ = format!("pkcs11:{s}").parse::<Pkcs11Uri>();
        }

        #[test]
        fn parse_inverts_format(u in uri()) {
            let text = format(&u);
            prop_assert_eq!(text.parse::<Pkcs11Uri>(), Ok(u), "{}", text);
        }

        #[test]
        fn key_uri_round_trips(
            label in ".{0,16}",
            serial in proptest::option::of("[ -~]{0,8}"),
            object in ".{0,16}",
            id in prop::collection::vec(any::<u8>(), 0..16),
        ) {
            let u: Result<Pkcs11Uri, _> =
                key_uri(&label, serial.as_deref(), &object, &id).parse();
            prop_assert!(u.is_ok(), "{:?}", u);
            let u = u.unwrap_or_default();
            prop_assert_eq!(u.token.as_deref(), Some(label.as_str()));
            prop_assert_eq!(u.serial, serial.filter(|s| !s.is_empty()));
            prop_assert_eq!(u.object.as_deref(), Some(object.as_str()));
            prop_assert_eq!(u.id, Some(id));
            prop_assert_eq!(u.object_type, Some(ObjectType::Private));
        }

        #[test]
        fn percent_encoding_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
            let some = percent_encode(&bytes);
            // The characters that delimit attributes and the query never appear literally.
            prop_assert!(!some.contains([';', '?', '=', '/', ' ', '#']), "{}", some);
            prop_assert_eq!(percent_decode(&some), Some(bytes.clone()));
            prop_assert_eq!(percent_decode(&percent_encode_all(&bytes)), Some(bytes));
        }

        #[test]
        fn percent_decode_accepts_exactly_pct_encoded(
            s in "(%[+\\-0-9a-fA-Fg ]{0,2}|[a-z+]|.){0,8}",
        ) {
            prop_assert_eq!(percent_decode(&s), strict_decode(&s));
        }

        /// Every attribute given twice is refused, so the first and the second can never be
        /// read differently by two tools.
        #[test]
        fn repeated_attributes_are_refused(
            name in proptest::sample::select(vec![
                "token", "manufacturer", "serial", "model", "object", "id", "type", "slot-id",
            ]),
        ) {
            let value = match name {
                "type" => "cert",
                "slot-id" => "1",
                _ => "a",
            };
            let s = format!("pkcs11:{name}={value};{name}={value}");
            prop_assert_eq!(s.parse::<Pkcs11Uri>(), Err(UriError::Attribute(name.into())));
        }
    }
}
