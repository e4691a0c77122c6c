//! Trace context on the wire: W3C `traceparent`/`tracestate` and `baggage` in and out, B3 in
//! (single `b3` header or the `X-B3-*` set) when asked for.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

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
        // The W3C names are known: no allocation for them on every request.
        let name = match key {
            "traceparent" => Ok(HeaderName::from_static("traceparent")),
            "tracestate" => Ok(HeaderName::from_static("tracestate")),
            "baggage" => Ok(HeaderName::from_static("baggage")),
            other => HeaderName::from_bytes(other.as_bytes()),
        };
        if let (Ok(name), Ok(value)) = (name, HeaderValue::try_from(value)) {
            self.0.insert(name, value);
        }
    }
}

/// The context a request carries: its remote parent span (W3C, else B3 when `b3` is on) and its
/// baggage. Empty when the request carries neither.
pub(crate) fn extract(headers: &HeaderMap, b3: bool) -> Context {
    let carrier = Headers(headers);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let cx = BaggagePropagator::new().extract_with_context(&cx, &carrier);
    if b3
        && !cx.span().span_context().is_valid()
        && let Some(remote) = extract_b3(headers)
    {
        return cx.with_remote_span_context(remote);
    }
    cx
}

/// Writes `cx`'s span as `traceparent`/`tracestate` and its baggage as `baggage`.
pub(crate) fn inject(cx: &Context, headers: &mut HeaderMap) {
    let mut carrier = HeadersMut(headers);
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    BaggagePropagator::new().inject_context(cx, &mut carrier);
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
        16 | 32 => TraceId::from_bytes(parse_hex::<16>(trace)?),
        _ => return None,
    };
    let span = SpanId::from_bytes(parse_hex::<8>(span).filter(|_| span.len() == 16)?);
    let flags = match sampled {
        Some("1" | "d" | "true") => TraceFlags::SAMPLED,
        _ => TraceFlags::default(),
    };
    let context = SpanContext::new(trace, span, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

/// Parses up to `2 * N` hex digits into `N` bytes, right-aligned (zero-padded on the left).
fn parse_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    if hex.len() > 2 * N || !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    let offset = N - hex.len() / 2;
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[offset + i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
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
}
