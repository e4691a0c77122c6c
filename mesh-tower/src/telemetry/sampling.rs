//! Head sampling: whether a request's trace is recorded, decided before any span is built.
//!
//! Most requests of a production service are not sampled (1% is common). Building a `tracing`
//! span with its OpenTelemetry attributes, only for the SDK to drop it at the end, cost more than
//! everything else telemetry does per request, so the decision comes first: a request that
//! continues a trace follows its caller's decision (parent-based, so a trace is whole or
//! absent), a new trace is sampled with the layer's ratio. An unsampled request gets no span at
//! all, only its own non-recording span context: a fresh span id in the caller's trace (or a new
//! trace), which the calls it makes carry on with the `sampled` flag off.
//!
//! The ratio is the one of the [`OtlpTelemetry`](super::otlp::OtlpTelemetry) pipeline built last
//! in the process (every trace without one), unless the layer sets its own with
//! [`TelemetryLayer::sample_ratio`](super::TelemetryLayer::sample_ratio). The pipeline's SDK
//! sampler agrees: it samples the root spans mesh built (mesh already decided), and other roots
//! by the same ratio.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::trace::{SpanContext, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};

/// The ratio of the last pipeline built (as `f64` bits); every trace until one is.
static PIPELINE_RATIO: AtomicU64 = AtomicU64::new(1.0f64.to_bits());

/// Makes `ratio` the one layers without their own follow (called when a pipeline is built).
#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
pub(crate) fn set_pipeline_ratio(ratio: f64) {
    PIPELINE_RATIO.store(clamp(ratio).to_bits(), Ordering::Relaxed);
}

/// The ratio layers without their own follow.
pub(crate) fn pipeline_ratio() -> f64 {
    f64::from_bits(PIPELINE_RATIO.load(Ordering::Relaxed))
}

/// `ratio` within 0.0..=1.0 (NaN is 0.0: sample nothing rather than everything).
pub(crate) fn clamp(ratio: f64) -> f64 {
    if ratio.is_nan() { 0.0 } else { ratio.clamp(0.0, 1.0) }
}

/// The head decision for one request.
#[derive(Debug)]
pub(crate) enum Head {
    /// Record it: build the span (its parent is the one the decision was made from).
    Sampled,
    /// Do not record it; this is its own span context (not sampled, not remote), to put in the
    /// context its calls carry on.
    Unsampled(SpanContext),
}

/// Decides for a request whose parent is `parent` (invalid when the request starts a trace),
/// sampling new traces with `ratio`.
pub(crate) fn decide(parent: &SpanContext, ratio: f64) -> Head {
    let ids = RandomIdGenerator::default();
    let own = |trace_id: TraceId, state: TraceState| {
        SpanContext::new(trace_id, ids.new_span_id(), TraceFlags::default(), false, state)
    };
    if parent.is_valid() {
        return if parent.is_sampled() {
            Head::Sampled
        } else {
            Head::Unsampled(own(parent.trace_id(), parent.trace_state().clone()))
        };
    }
    if ratio >= 1.0 {
        return Head::Sampled;
    }
    let trace_id = ids.new_trace_id();
    if by_ratio(trace_id, ratio) { Head::Sampled } else { Head::Unsampled(own(trace_id, TraceState::default())) }
}

/// OpenTelemetry's `TraceIdRatioBased` rule: the trace id's low 63 bits below `ratio * 2^63`, so
/// every process that applies it to a trace id agrees.
pub(crate) fn by_ratio(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let low = u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().unwrap_or_default());
    (low >> 1) < bound
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::SpanId;

    use super::*;

    fn parent(sampled: bool) -> SpanContext {
        let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let state: TraceState = "vendor=x".parse().unwrap_or_default();
        SpanContext::new(TraceId::from(0x4bf9_u128 << 64 | 7), SpanId::from(9), flags, true, state)
    }

    #[test]
    fn a_caller_s_decision_is_followed_whatever_the_ratio() {
        for ratio in [0.0, 0.01, 1.0] {
            assert!(matches!(decide(&parent(true), ratio), Head::Sampled), "{ratio}");
            let Head::Unsampled(own) = decide(&parent(false), ratio) else { panic!("{ratio}: sampled") };
            assert_eq!(own.trace_id(), parent(false).trace_id(), "same trace");
            assert_ne!(own.span_id(), parent(false).span_id(), "its own span id");
            assert!(own.is_valid() && !own.is_sampled() && !own.is_remote());
            assert_eq!(own.trace_state().header(), "vendor=x", "tracestate carried on");
        }
    }

    #[test]
    fn new_traces_are_sampled_at_the_ratio() {
        let none = SpanContext::empty_context();
        assert!(matches!(decide(&none, 1.0), Head::Sampled));
        assert!((0..1000).all(|_| matches!(decide(&none, 0.0), Head::Unsampled(_))));
        // 20,000 seeded (splitmix64) trace ids at 10%: within 6 standard deviations (~254) of 2,000.
        let mut state = 0x5eed_u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            TraceId::from(u128::from(z ^ (z >> 31)))
        };
        let sampled = (0..20_000).filter(|_| by_ratio(next(), 0.1)).count();
        assert!((1_746..=2_254).contains(&sampled), "{sampled} of 20000 at 10%");
    }

    #[test]
    fn the_ratio_rule_is_opentelemetry_s() {
        // The low 64 bits shifted right once, against ratio * 2^63.
        let id = |low: u64| TraceId::from_bytes(u128::from(low).to_be_bytes());
        assert!(by_ratio(id(0), 0.5) && by_ratio(id((1 << 63) - 2), 0.5));
        assert!(!by_ratio(id(1 << 63), 0.5) && !by_ratio(id(u64::MAX), 0.5));
        assert!(!by_ratio(id(0), 0.0) && by_ratio(id(u64::MAX), 1.0));
        assert_eq!(clamp(f64::NAN), 0.0);
        assert_eq!(clamp(7.0), 1.0);
    }
}
