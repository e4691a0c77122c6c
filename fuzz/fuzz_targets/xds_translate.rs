//! A whole cascade from the control plane (listener, route configuration, cluster, endpoints)
//! translated into a service snapshot. The input is three little-endian u16 lengths, then the
//! four resources' protobuf encodings back to back (the last takes the rest).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (header, mut rest) = data.split_at(6);
    let mut parts: [&[u8]; 4] = [&[]; 4];
    for (i, part) in parts.iter_mut().take(3).enumerate() {
        let len = (u16::from_le_bytes([header[2 * i], header[2 * i + 1]]) as usize).min(rest.len());
        (*part, rest) = rest.split_at(len);
    }
    parts[3] = rest;
    mesh_xds::fuzzing::translate(parts);
});
