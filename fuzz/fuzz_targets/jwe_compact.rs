//! Fuzz the compact JWE parser: any bytes. It must never panic, and an accepted JWE must name
//! an alg and enc sigild decrypts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sigild::jose::{Jwe, JweAlg, JweEnc};

fuzz_target!(|data: &[u8]| {
    if let Ok(jwe) = Jwe::parse(data) {
        assert!(JweAlg::ALL.contains(&jwe.alg()));
        assert!(JweEnc::ALL.contains(&jwe.enc()));
    }
});
