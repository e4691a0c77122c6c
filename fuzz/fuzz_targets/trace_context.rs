//! Trace context headers: `traceparent`, `tracestate`, `baggage`, `b3` and the `X-B3-*` set, one
//! value per line of the input, in that order.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let values: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    mesh_tower::fuzzing::trace_context(&values);
});
