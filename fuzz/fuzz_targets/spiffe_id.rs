//! SPIFFE IDs and trust domains, as they arrive in certificates and configuration.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        mesh_core::fuzzing::spiffe_id(text);
    }
});
