//! The counters mesh reports through the [`metrics`](https://docs.rs/metrics) facade, so any
//! exporter works (Prometheus, StatsD, OpenTelemetry): install a recorder and they appear. Names
//! are stable; labels have bounded cardinality (service names, reasons, modes; never paths or ids).
//!
//! | name | kind | labels | counts |
//! |---|---|---|---|
//! | `mesh_requests_total` | counter | `direction`, `service`, `route`, `subset`, `status_class`, `grpc_code`, `peer` | requests that ended (see below) |
//! | `mesh_request_duration_seconds` | histogram | same as `mesh_requests_total` | from the call to the end of the response body |
//! | `mesh_retries_total` | counter | `service` | retries sent (attempts beyond the first) |
//! | `mesh_retry_budget_exhausted_total` | counter | `service` | retries the budget refused |
//! | `mesh_retry_not_replayable_total` | counter | `service` | requests sent once: body too large to replay |
//! | `mesh_outlier_ejections_total` | counter | `service` | endpoints ejected by outlier detection |
//! | `mesh_circuit_breaker_rejections_total` | counter | `service` | requests shed by the circuit breaker |
//! | `mesh_tls_handshake_failures_total` | counter | `reason` ([`HandshakeFailure`](crate::HandshakeFailure) names) | refused mTLS handshakes (server) |
//! | `mesh_authz_denials_total` | counter | `mode` (`enforce`, `dry_run`) | calls denied, or that a dry run would deny |
//! | `mesh_discovery_updates_total` | counter | `service` | snapshots published by a discovery backend |
//! | `mesh_discovery_errors_total` | counter | `service` | errors a discovery backend reported (the last good snapshot stays) |
//! | `mesh_discovery_endpoints` | gauge | `service`, `subset` (empty: every endpoint) | endpoints with weight > 0 in the latest snapshot |
//!
//! Request labels ([`TelemetryLayer`](crate::telemetry::TelemetryLayer)): `direction` is
//! `outbound` (client side) or `inbound` (server side); `service` the destination (outbound) or
//! this service (inbound); `route` the route name the request matched (empty without routes, and
//! inbound); `subset` the subset it went to (outbound) or this server's version (inbound, when
//! set); `status_class` `2xx`..`5xx`, or `error` when no response came; `grpc_code` the gRPC
//! status name (`OK`, `UNAVAILABLE`...) for gRPC, `NONE` when a gRPC response ended without one,
//! empty for plain HTTP; `peer` the SPIFFE ID on the other side of the mTLS connection (the
//! caller inbound, the server outbound; empty in plaintext). Never raw paths or request ids.

use mesh_core::ServiceName;

/// `mesh_requests_total`.
pub const REQUESTS: &str = "mesh_requests_total";
/// `mesh_request_duration_seconds`.
pub const REQUEST_DURATION: &str = "mesh_request_duration_seconds";
/// `mesh_discovery_updates_total` (counted by mesh-core's `SnapshotPublisher`).
pub const DISCOVERY_UPDATES: &str = mesh_core::discovery::metrics::UPDATES;
/// `mesh_discovery_errors_total` (counted by mesh-core's `SnapshotPublisher`).
pub const DISCOVERY_ERRORS: &str = mesh_core::discovery::metrics::ERRORS;
/// `mesh_discovery_endpoints` (set by mesh-core's `SnapshotPublisher`).
pub const DISCOVERY_ENDPOINTS: &str = mesh_core::discovery::metrics::ENDPOINTS;
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
