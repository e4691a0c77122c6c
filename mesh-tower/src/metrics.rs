//! The counters mesh reports through the [`metrics`](https://docs.rs/metrics) facade, so any
//! exporter works (Prometheus, StatsD, OpenTelemetry): install a recorder and they appear. Names
//! are stable; labels have bounded cardinality (service names, reasons, modes; never paths or ids).
//!
//! | name | kind | labels | counts |
//! |---|---|---|---|
//! | `mesh_retries_total` | counter | `service` | retries sent (attempts beyond the first) |
//! | `mesh_retry_budget_exhausted_total` | counter | `service` | retries the budget refused |
//! | `mesh_retry_not_replayable_total` | counter | `service` | requests sent once: body too large to replay |
//! | `mesh_outlier_ejections_total` | counter | `service` | endpoints ejected by outlier detection |
//! | `mesh_circuit_breaker_rejections_total` | counter | `service` | requests shed by the circuit breaker |
//! | `mesh_tls_handshake_failures_total` | counter | `reason` ([`HandshakeFailure`](crate::HandshakeFailure) names) | refused mTLS handshakes (server) |
//! | `mesh_authz_denials_total` | counter | `mode` (`enforce`, `dry_run`) | calls denied, or that a dry run would deny |
//!
//! Request counts and durations per route and subset arrive with the observability work.

use mesh_core::ServiceName;

/// `mesh_retries_total`.
pub const RETRIES: &str = "mesh_retries_total";
/// `mesh_retry_budget_exhausted_total`.
pub const RETRY_BUDGET_EXHAUSTED: &str = "mesh_retry_budget_exhausted_total";
/// `mesh_retry_not_replayable_total`.
pub const RETRY_NOT_REPLAYABLE: &str = "mesh_retry_not_replayable_total";
/// `mesh_outlier_ejections_total`.
pub const OUTLIER_EJECTIONS: &str = "mesh_outlier_ejections_total";
/// `mesh_circuit_breaker_rejections_total`.
pub const CIRCUIT_BREAKER_REJECTIONS: &str = "mesh_circuit_breaker_rejections_total";
/// `mesh_tls_handshake_failures_total`.
pub const TLS_HANDSHAKE_FAILURES: &str = "mesh_tls_handshake_failures_total";
/// `mesh_authz_denials_total`.
pub const AUTHZ_DENIALS: &str = "mesh_authz_denials_total";

pub(crate) fn per_service(name: &'static str, service: &ServiceName) {
    metrics::counter!(name, "service" => service.as_str().to_owned()).increment(1);
}

pub(crate) fn tls_handshake_failure(reason: &'static str) {
    metrics::counter!(TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
}

pub(crate) fn authz_denial(dry_run: bool) {
    metrics::counter!(AUTHZ_DENIALS, "mode" => if dry_run { "dry_run" } else { "enforce" }).increment(1);
}
