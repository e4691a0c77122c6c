//! What discovery reports through the [`metrics`](https://docs.rs/metrics) facade: the names are
//! stable and listed with the rest in mesh-tower's `metrics` module.

use crate::{model::ServiceSnapshot, name::ServiceName};

/// `mesh_discovery_updates_total{service}`: snapshots published.
pub const UPDATES: &str = "mesh_discovery_updates_total";
/// `mesh_discovery_errors_total{service}`: errors reported by a backend.
pub const ERRORS: &str = "mesh_discovery_errors_total";
/// `mesh_discovery_endpoints{service, subset}`: endpoints with weight > 0 per subset of the
/// latest snapshot; `subset` empty for every endpoint of the service.
pub const ENDPOINTS: &str = "mesh_discovery_endpoints";

pub(crate) fn published(snapshot: &ServiceSnapshot) {
    let service = snapshot.name().as_str().to_owned();
    metrics::counter!(UPDATES, "service" => service.clone()).increment(1);
    let live = snapshot.endpoints().iter().filter(|ep| !ep.weight.is_zero()).count();
    metrics::gauge!(ENDPOINTS, "service" => service.clone(), "subset" => "").set(live as f64);
    for subset in snapshot.subsets() {
        let live = snapshot.subset_endpoints(subset).filter(|ep| !ep.weight.is_zero()).count();
        metrics::gauge!(ENDPOINTS, "service" => service.clone(), "subset" => subset.name.as_str().to_owned())
            .set(live as f64);
    }
}

pub(crate) fn error(service: &ServiceName) {
    metrics::counter!(ERRORS, "service" => service.as_str().to_owned()).increment(1);
}
