//! The goals every ratio of `summary.json` is held to (issues 8 and 13), the instruction-count
//! ratios' among them: what both the report and the instruction-count merge check.

use serde_json::{Value, json};

/// The `ratios` keys: mesh's instructions per request over bare-mtls's, per side and protocol,
/// and grpc-mesh's over grpc-tonic's per side.
pub(crate) const RATIO_KEYS: [&str; 6] = [
    "instructions_mesh_over_bare_mtls_client_h2",
    "instructions_mesh_over_bare_mtls_server_h2",
    "instructions_mesh_over_bare_mtls_client_h1",
    "instructions_mesh_over_bare_mtls_server_h1",
    "instructions_grpc_mesh_over_tonic_client",
    "instructions_grpc_mesh_over_tonic_server",
];

/// The goal for every ratio of [`RATIO_KEYS`]: at most this.
pub(crate) const GOAL: f64 = 1.25;

/// Each ratio against its target (issue 8's and issue 13's goals).
pub(crate) fn goals(ratios: &Value) -> Value {
    let at_least = |key: &str, target: f64| {
        let value = ratios[key].as_f64();
        json!({ "value": value, "target": format!(">= {target}"), "met": value.map(|v| v >= target) })
    };
    let at_most = |key: &str, target: f64| {
        let value = ratios[key].as_f64();
        json!({ "value": value, "target": format!("<= {target}"), "met": value.map(|v| v <= target) })
    };
    let mut goals = json!({
        "mesh_over_bare_mtls_h1": at_least("mesh_over_bare_mtls_h1", 0.90),
        "mesh_over_bare_mtls_h2": at_least("mesh_over_bare_mtls_h2", 0.90),
        "mesh_over_bare_h1": at_least("mesh_over_bare_h1", 0.80),
        "mesh_over_bare_h2": at_least("mesh_over_bare_h2", 0.80),
        "mesh_over_sidecar_haproxy_h1": at_least("mesh_over_sidecar_haproxy_h1", 4.0),
        "mesh_over_sidecar_nginx_h1": at_least("mesh_over_sidecar_nginx_h1", 5.0),
        "mesh_over_sidecar_envoy_h1": at_least("mesh_over_sidecar_envoy_h1", 5.0),
        "mesh_over_sidecar_envoy_h2": at_least("mesh_over_sidecar_envoy_h2", 5.0),
        // Issue 13 tightened these two (issue 8 had 100 µs and 1.25).
        "p99_added_us_fixed_rate": at_most("p99_added_us_fixed_rate", 50.0),
        "cpu_per_request_mesh_over_bare_mtls_fixed_rate": at_most("cpu_per_request_mesh_over_bare_mtls_fixed_rate", 1.15),
        "handshakes_mesh_over_rustls": at_least("handshakes_mesh_over_rustls", 0.90),
        "cpu_per_request_mesh_over_sidecar_envoy_fixed_rate":
            at_most("cpu_per_request_mesh_over_sidecar_envoy_fixed_rate", 0.35),
        "grpc_mesh_over_tonic": at_least("grpc_mesh_over_tonic", 0.90),
        "idle_conn_kib_mesh_minus_bare_mtls": at_most("idle_conn_kib_mesh_minus_bare_mtls", 8.0),
    });
    for key in RATIO_KEYS {
        goals[key] = at_most(key, GOAL);
    }
    goals
}
