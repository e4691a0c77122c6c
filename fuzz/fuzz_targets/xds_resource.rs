//! One xDS resource from the control plane: the first byte picks its type (LDS, RDS, CDS, EDS),
//! the rest is its protobuf encoding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((kind, bytes)) = data.split_first() {
        mesh_xds::fuzzing::decode_resource(*kind, bytes);
    }
});
