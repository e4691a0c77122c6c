//! Discovery files in JSON.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        mesh_core::fuzzing::discovery_file(text, true);
    }
});
