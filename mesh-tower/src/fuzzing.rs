//! Entry points for the fuzz targets (`fuzz/` in the repository), behind the `fuzzing` feature:
//! **no stability promise**, not for applications. Each runs one parser of request headers that
//! come from outside; a panic or a hang is the bug the fuzzer looks for.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::TraceContextExt;

/// The trace context headers, in the order [`trace_context`] reads its inputs.
pub const TRACE_HEADERS: [&str; 8] =
    ["traceparent", "tracestate", "baggage", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"];

/// Extracts the trace context (W3C and B3) from headers holding `values` (in the order of
/// [`TRACE_HEADERS`]; values that are not valid header values are left out), then injects it
/// into fresh headers and extracts it again: what went out must come back as it was.
pub fn trace_context(values: &[&[u8]]) -> bool {
    let mut headers = HeaderMap::new();
    for (name, value) in TRACE_HEADERS.iter().zip(values) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
    let cx = crate::telemetry::propagation::extract(&headers, true);
    let span = cx.span().span_context().clone();
    let mut out = HeaderMap::new();
    crate::telemetry::propagation::inject(&cx, &mut out);
    let again = crate::telemetry::propagation::extract(&out, false);
    if span.is_valid() {
        let back = again.span().span_context().clone();
        assert_eq!(back.trace_id(), span.trace_id(), "the trace id changed on the way out and back");
        assert_eq!(back.span_id(), span.span_id(), "the span id changed on the way out and back");
    }
    span.is_valid()
}

/// Reads the time a request asks for from `x-mesh-timeout` (when `value` is a valid header
/// value, as that header) and from `grpc-timeout`; a time read must be written back as a
/// `grpc-timeout` that reads again within a millisecond (written times are whole milliseconds).
pub fn timeouts(value: &[u8]) -> bool {
    let Ok(value) = HeaderValue::from_bytes(value) else { return false };
    let mut headers = HeaderMap::new();
    headers.insert(crate::headers::TIMEOUT_HEADER, value.clone());
    let mesh = crate::headers::requested(&headers);
    let grpc = crate::grpc::parse_timeout(&value);
    for time in [mesh, grpc].into_iter().flatten() {
        let written = crate::grpc::timeout_value(time);
        let read = crate::grpc::parse_timeout(&written).expect("mesh's own grpc-timeout parses");
        let expected = time.min(std::time::Duration::from_millis(99_999_999));
        assert!(expected.saturating_sub(read) < std::time::Duration::from_millis(1), "{time:?} came back as {read:?}");
    }
    mesh.is_some() || grpc.is_some()
}
