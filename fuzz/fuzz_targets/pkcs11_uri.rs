//! Fuzz the RFC 7512 PKCS#11 URI parser: any text must parse or be refused without a panic,
//! and the key URI sigild formats from what was parsed must parse back to the same values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigild::uri::{Pkcs11Uri, key_uri};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(uri) = text.parse::<Pkcs11Uri>() else {
        return;
    };
    let token = uri.token.as_deref().unwrap_or_default();
    let object = uri.object.as_deref().unwrap_or_default();
    let id = uri.id.as_deref().unwrap_or_default();
    let again: Pkcs11Uri = key_uri(token, uri.serial.as_deref(), object, id)
        .parse()
        .expect("a formatted key URI parses");
    assert_eq!(again.token.as_deref(), Some(token));
    assert_eq!(again.object.as_deref(), Some(object));
    assert_eq!(again.id.as_deref(), Some(id));
    assert_eq!(again.serial, uri.serial.filter(|s| !s.is_empty()));
});
