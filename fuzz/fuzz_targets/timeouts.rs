//! The time a caller asks for: `x-mesh-timeout` (milliseconds) and `grpc-timeout`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mesh_tower::fuzzing::timeouts(data);
});
