//! HTTP filters of the client's listener: the fault filter (gRFC A33) and the router (gRFC A39).

use envoy_types::pb::envoy::{
    extensions::filters::{
        common::fault::v3::fault_delay::FaultDelaySecifier,
        http::fault::v3::{HttpFault, fault_abort::ErrorType},
    },
    r#type::v3::{FractionalPercent, fractional_percent::DenominatorType},
};
use mesh_core::policy::{AbortStatus, Fault, FaultAbort, FaultDelay, Percentage};

use super::field::{FieldError, FieldResult, duration};

/// The type URL of the fault filter's config.
pub(crate) const FAULT: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
/// The type URL of the router filter's config.
pub(crate) const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";

/// A fractional percent as a percentage.
pub(crate) fn percent(p: &FractionalPercent, field: &str) -> FieldResult<Percentage> {
    let denominator = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::Hundred) => 100.0,
        Ok(DenominatorType::TenThousand) => 10_000.0,
        Ok(DenominatorType::Million) => 1_000_000.0,
        Err(_) => {
            return Err(FieldError::new(
                format!("{field}.denominator"),
                format!("unknown denominator {}", p.denominator),
            ));
        }
    };
    // Above 100% is 100%, as Envoy and gRPC read it.
    let percent = (f64::from(p.numerator) / denominator * 100.0).min(100.0);
    Percentage::new(percent).map_err(|e| FieldError::new(field, e.reason))
}

/// Checks a fault filter config (gRFC A33) and turns it into mesh's fault policy.
pub(crate) fn fault(config: &HttpFault, field: &str) -> FieldResult<Fault> {
    let unsupported =
        |name: &str, what: &str| Err(FieldError::new(format!("{field}.{name}"), format!("{what} is not supported")));
    if !config.headers.is_empty() {
        return unsupported("headers", "a fault limited to requests with given headers");
    }
    if !config.downstream_nodes.is_empty() {
        return unsupported("downstream_nodes", "a fault limited to given downstream nodes");
    }
    if !config.upstream_cluster.is_empty() {
        return unsupported("upstream_cluster", "a fault limited to one upstream cluster");
    }
    if config.max_active_faults.is_some() {
        return unsupported("max_active_faults", "a cap on active faults");
    }
    if config.response_rate_limit.is_some() {
        return unsupported("response_rate_limit", "a response rate limit");
    }
    let mut fault = Fault::default();
    if let Some(delay) = &config.delay {
        let field = format!("{field}.delay");
        let fixed = match &delay.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(d)) => duration(d, &format!("{field}.fixed_delay"))?,
            Some(FaultDelaySecifier::HeaderDelay(_)) => {
                return Err(FieldError::new(
                    format!("{field}.header_delay"),
                    "a delay read from request headers is not supported",
                ));
            }
            None => return Err(FieldError::new(format!("{field}.fixed_delay"), "missing")),
        };
        // gRFC A33 (and grpc-go): no percentage is 0%.
        let share = delay.percentage.as_ref().map(|p| percent(p, &format!("{field}.percentage"))).transpose()?;
        fault.delay = Some(FaultDelay { duration: fixed, percent: share.unwrap_or(zero()) });
    }
    if let Some(abort) = &config.abort {
        let field = format!("{field}.abort");
        let status = match abort.error_type {
            Some(ErrorType::HttpStatus(s)) if (200..600).contains(&s) => Some(AbortStatus::Http(s as u16)),
            // grpc-go ignores an abort with a malformed HTTP status.
            Some(ErrorType::HttpStatus(_)) => None,
            // As grpc-go: OK (which fails the call with UNKNOWN there) and codes past 16 are UNKNOWN.
            Some(ErrorType::GrpcStatus(code)) => {
                Some(AbortStatus::Grpc(u16::try_from(code).ok().filter(|c| (1..=16).contains(c)).unwrap_or(2)))
            }
            Some(ErrorType::HeaderAbort(_)) => {
                return Err(FieldError::new(
                    format!("{field}.header_abort"),
                    "an abort read from request headers is not supported",
                ));
            }
            None => return Err(FieldError::new(format!("{field}.error_type"), "missing")),
        };
        let share = abort.percentage.as_ref().map(|p| percent(p, &format!("{field}.percentage"))).transpose()?;
        fault.abort = status.map(|status| FaultAbort { status, percent: share.unwrap_or(zero()) });
    }
    fault.validate().map_err(|e| FieldError::new(format!("{field}.{}", e.field), e.reason))?;
    Ok(fault)
}

fn zero() -> Percentage {
    Percentage::new(0.0).unwrap_or_else(|e| unreachable!("{e}"))
}
