//! Trace context on the wire: W3C `traceparent`/`tracestate` and `baggage` in and out, B3 in
//! (single `b3` header or the `X-B3-*` set) when asked for.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::propagation::BaggagePropagator;

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        let name = match key {
            "baggage" => Ok(HeaderName::from_static("baggage")),
            other => HeaderName::from_bytes(other.as_bytes()),
        };
        if let (Ok(name), Ok(value)) = (name, HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

/// The context a request carries: its remote parent span (W3C, else B3 when `b3` is on) and its
/// baggage, on top of the current context. Without either it is the current context.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn extract(headers: &HeaderMap, b3: bool) -> Context {
    let (cx, parent) = extract_parent(headers, b3);
    if parent.is_valid() { cx.with_remote_span_context(parent) } else { cx }
}

/// [`extract`] in two parts: the current context with the request's baggage, and its remote
/// parent span (invalid when it has none), so a caller that puts its own span in the context
/// builds it once.
///
/// `traceparent` is read here rather than by the SDK's propagator: every request pays for it,
/// and the propagator splits into a vector and parses through `from_str_radix`; this does the
/// same checks on the bytes.
pub(crate) fn extract_parent(headers: &HeaderMap, b3: bool) -> (Context, SpanContext) {
    let mut parent = SpanContext::empty_context();
    if let Some(remote) = headers.get(TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes())) {
        let state = headers
            .get(TRACESTATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<TraceState>().ok())
            .unwrap_or_default();
        parent = SpanContext::new(remote.trace_id, remote.span_id, remote.flags, true, state);
    } else if b3 && let Some(remote) = extract_b3(headers) {
        parent = remote;
    }
    let mut cx = Context::current();
    if headers.contains_key(BAGGAGE) {
        cx = BaggagePropagator::new().extract_with_context(&cx, &Headers(headers));
    }
    (cx, parent)
}

/// Writes `cx`'s span as `traceparent` (and `tracestate` when it has one) and its baggage as
/// `baggage`.
pub(crate) fn inject(cx: &Context, headers: &mut HeaderMap) {
    let span = cx.span();
    let span_context = span.span_context();
    if span_context.is_valid()
        && let Some(mut traceparent) = format_traceparent(span_context)
    {
        // A value new on every request: HTTP/2 would add each to its header table and evict the
        // headers that do repeat. Marked never-indexed, it is sent as a literal and the table
        // keeps what compresses.
        traceparent.set_sensitive(true);
        headers.insert(TRACEPARENT, traceparent);
        let state = span_context.trace_state().header();
        if !state.is_empty()
            && let Ok(value) = HeaderValue::try_from(state)
        {
            headers.insert(TRACESTATE, value);
        }
    }
    BaggagePropagator::new().inject_context(cx, &mut HeadersMut(headers));
}

/// The fields of a `traceparent` header.
#[derive(Debug, PartialEq, Eq)]
struct TraceParent {
    trace_id: TraceId,
    span_id: SpanId,
    flags: TraceFlags,
}

/// Parses `traceparent` as W3C Trace Context level 1 says: `version-trace_id-parent_id-flags` in
/// lowercase hex (2, 32, 16 and 2 digits); version `ff` is invalid, version `00` has exactly four
/// fields, a later version may add fields after a `-`; all-zero ids are invalid. Of the flags only
/// `sampled` is kept.
fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    let value = value.trim_ascii();
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex::<1>(&value[..2])?[0];
    let rest = &value[55..];
    let valid_tail = match version {
        0xff => false,
        0 => rest.is_empty(),
        _ => rest.is_empty() || rest[0] == b'-',
    };
    if !valid_tail {
        return None;
    }
    let trace_id = TraceId::from_bytes(hex::<16>(&value[3..35])?);
    let span_id = SpanId::from_bytes(hex::<8>(&value[36..52])?);
    let flags = TraceFlags::new(hex::<1>(&value[53..55])?[0]) & TraceFlags::SAMPLED;
    (trace_id != TraceId::INVALID && span_id != SpanId::INVALID).then_some(TraceParent { trace_id, span_id, flags })
}

/// `2 * N` lowercase hex digits as `N` bytes (W3C and B3 both say lowercase). Every server
/// request decodes 25 bytes of `traceparent`, so this is a table lookup per digit, with one
/// check for a bad digit at the end.
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    /// The value of each lowercase hex digit; `BAD` (a bit no digit has) for every other byte.
    const BAD: u8 = 0x10;
    const NIBBLES: [u8; 256] = {
        let mut table = [BAD; 256];
        let mut i = 0;
        while i < 10 {
            table[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            table[b'a' as usize + i] = 10 + i as u8;
            i += 1;
        }
        table
    };
    if digits.len() != 2 * N {
        return None;
    }
    let (mut out, mut bad) = ([0u8; N], 0u8);
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (NIBBLES[usize::from(pair[0])], NIBBLES[usize::from(pair[1])]);
        bad |= high | low;
        *byte = (high << 4) | (low & 0xf);
    }
    (bad & BAD == 0).then_some(out)
}

/// `00-{trace_id}-{span_id}-{flags}`, written without formatting machinery.
fn format_traceparent(span_context: &SpanContext) -> Option<HeaderValue> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut line = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let mut write = |at: usize, bytes: &[u8]| {
        for (i, byte) in bytes.iter().enumerate() {
            line[at + 2 * i] = DIGITS[usize::from(byte >> 4)];
            line[at + 2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
        }
    };
    write(3, &span_context.trace_id().to_bytes());
    write(36, &span_context.span_id().to_bytes());
    write(53, &[(span_context.trace_flags() & TraceFlags::SAMPLED).to_u8()]);
    // Owned, not copied into a vector: a retry's copy of the request head then shares it (a
    // vector's bytes are moved to the heap a second time on their first clone).
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(line)).ok()
}

/// B3, as Zipkin and older Istio deployments send it: `b3: {trace}-{span}[-{sampled}[-{parent}]]`,
/// or `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled` / `X-B3-Flags`. 64-bit trace ids are
/// left-padded to 128 bits, as the B3 specification says.
fn extract_b3(headers: &HeaderMap) -> Option<SpanContext> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (trace, span, sampled) = if let Some(single) = get("b3") {
        let mut parts = single.split('-');
        let trace = parts.next()?;
        let span = parts.next()?;
        (trace, span, parts.next())
    } else {
        let sampled = get("x-b3-flags").filter(|f| *f == "1").or_else(|| get("x-b3-sampled"));
        (get("x-b3-traceid")?, get("x-b3-spanid")?, sampled)
    };
    let trace = match trace.len() {
        16 => u128::from(u64::from_be_bytes(hex::<8>(trace.as_bytes())?)).to_be_bytes(),
        _ => hex::<16>(trace.as_bytes())?,
    };
    let (trace, span) = (TraceId::from_bytes(trace), SpanId::from_bytes(hex::<8>(span.as_bytes())?));
    let flags = match sampled {
        Some("1" | "d" | "true") => TraceFlags::SAMPLED,
        _ => TraceFlags::default(),
    };
    let context = SpanContext::new(trace, span, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use opentelemetry::baggage::BaggageExt;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn w3c_round_trip_keeps_ids_flags_state_and_baggage() {
        let incoming = headers(&[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("baggage", "tenant=acme"),
        ]);
        let cx = extract(&incoming, false);
        let span = cx.span().span_context().clone();
        assert_eq!(span.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span.is_sampled() && span.is_remote());
        assert_eq!(cx.baggage().get("tenant").map(|v| v.to_string()), Some("acme".to_owned()));
        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(out["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(out["tracestate"], "congo=t61rcWkgMzE");
        assert_eq!(out["baggage"], "tenant=acme");
    }

    #[test]
    fn malformed_traceparent_starts_no_trace() {
        for bad in ["00-xyz-00f067aa0ba902b7-01", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "garbage"]
        {
            let cx = extract(&headers(&[("traceparent", bad)]), true);
            assert!(!cx.span().span_context().is_valid(), "{bad}");
        }
    }

    #[test]
    fn b3_only_when_asked_and_only_without_traceparent() {
        let single = headers(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")]);
        assert!(!extract(&single, false).span().span_context().is_valid());
        let span = extract(&single, true).span().span_context().clone();
        assert_eq!(span.trace_id().to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(span.span_id().to_string(), "e457b5a2e4d86bd1");
        assert!(span.is_sampled());

        let multi = headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
        ]);
        let span = extract(&multi, true).span().span_context().clone();
        assert_eq!(span.trace_id().to_string(), "0000000000000000a3ce929d0e0e4736");
        assert!(!span.is_sampled());

        let both = headers(&[
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]);
        let span = extract(&both, true).span().span_context().clone();
        assert_eq!(span.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736", "W3C wins");

        for bad in ["nothex-e457b5a2e4d86bd1", "80f198ee56343ba864fe8b2a57d3eff7", "80f1-e457b5a2e4d86bd1-1"] {
            let cx = extract(&headers(&[("b3", bad)]), true);
            assert!(!cx.span().span_context().is_valid(), "{bad}");
        }
    }

    #[test]
    fn hex_decodes_lowercase_digits_only() {
        for byte in 0..=255u8 {
            assert_eq!(hex::<1>(format!("{byte:02x}").as_bytes()), Some([byte]));
        }
        for digit in 0..=255u8 {
            if !matches!(digit, b'0'..=b'9' | b'a'..=b'f') {
                assert_eq!(hex::<1>(&[b'0', digit]), None, "{digit:#x}");
                assert_eq!(hex::<1>(&[digit, b'0']), None, "{digit:#x}");
            }
        }
        assert_eq!(hex::<2>(b"00ff"), Some([0, 255]));
        assert_eq!(hex::<2>(b"00f"), None, "a digit short");
    }

    #[test]
    fn traceparent_follows_the_w3c_grammar() {
        let ids = |tp: &TraceParent| (tp.trace_id.to_string(), tp.span_id.to_string(), tp.flags.is_sampled());
        let good = [
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", true),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", false),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09", true),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-08", false),
            (" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ", true),
            ("02-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-later", true),
        ];
        for (value, sampled) in good {
            let parsed = parse_traceparent(value.as_bytes()).unwrap_or_else(|| panic!("{value}"));
            assert_eq!(
                ids(&parsed),
                ("4bf92f3577b34da6a3ce929d0e0e4736".into(), "00f067aa0ba902b7".into(), sampled),
                "{value}"
            );
        }
        let bad = [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "02-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ];
        for value in bad {
            assert_eq!(parse_traceparent(value.as_bytes()), None, "{value}");
        }
    }

    #[test]
    fn an_empty_tracestate_is_not_sent() {
        let cx =
            extract(&headers(&[("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")]), false);
        let mut out = HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(out["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert!(!out.contains_key("tracestate") && !out.contains_key("baggage"), "{out:?}");
    }
}
