//! Fuzz the caller-built JWS header check: any bytes, against each kind of key. It must never
//! panic, and an accepted header must name an algorithm that fits the key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigild::crypto::{Curve, KeyKind};
use sigild::jose::check_header;

const KID: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";

fuzz_target!(|data: &[u8]| {
    let Some((first, header)) = data.split_first() else {
        return;
    };
    let kind = match first % 4 {
        0 => KeyKind::Ec(Curve::P256),
        1 => KeyKind::Ec(Curve::P384),
        2 => KeyKind::Rsa { bits: 2048 },
        _ => KeyKind::Ed25519,
    };
    if let Ok(alg) = check_header(header, kind, KID) {
        assert!(alg.fits(kind), "{alg} accepted for {kind}");
    }
});
