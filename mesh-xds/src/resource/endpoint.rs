//! EDS: the endpoints of a cluster, by locality and priority.

use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::{
    core::v3::{HealthStatus, address::Address, socket_address::PortSpecifier},
    endpoint::v3::{ClusterLoadAssignment, lb_endpoint::HostIdentifier},
};

use super::field::{FieldError, FieldResult};

/// The endpoints a cluster sends to: those of the lowest priority that has a healthy one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LoadAssignment {
    /// Address and weight (locality weight times endpoint weight).
    pub(crate) endpoints: Vec<(SocketAddr, u32)>,
}

pub(crate) fn parse(raw: &ClusterLoadAssignment) -> FieldResult<LoadAssignment> {
    if let Some(policy) = &raw.policy
        && !policy.drop_overloads.is_empty()
    {
        return Err(FieldError::new("policy.drop_overloads", "dropping a share of requests is not supported"));
    }
    // priority -> endpoints; only HEALTHY and UNKNOWN endpoints are used.
    let mut by_priority: std::collections::BTreeMap<u32, Vec<(SocketAddr, u32)>> = Default::default();
    for (i, locality) in raw.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}]");
        // gRFC A27 (and gRPC's xDS client): every locality names itself.
        if locality.locality.is_none() {
            return Err(FieldError::new(format!("{field}.locality"), "missing"));
        }
        // gRFC A27: a locality with weight 0 (or none) gets no traffic.
        let locality_weight = locality.load_balancing_weight.as_ref().map_or(0, |w| w.value);
        let list = by_priority.entry(locality.priority).or_default();
        if locality_weight == 0 {
            continue;
        }
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            let field = format!("{field}.lb_endpoints[{j}]");
            let health = HealthStatus::try_from(lb.health_status).unwrap_or(HealthStatus::Unknown);
            if !matches!(health, HealthStatus::Healthy | HealthStatus::Unknown) {
                continue;
            }
            let endpoint = match &lb.host_identifier {
                Some(HostIdentifier::Endpoint(e)) => e,
                _ => return Err(FieldError::new(format!("{field}.endpoint"), "missing")),
            };
            let address = match endpoint.address.as_ref().and_then(|a| a.address.as_ref()) {
                Some(Address::SocketAddress(s)) => s,
                _ => {
                    return Err(FieldError::new(
                        format!("{field}.endpoint.address.socket_address"),
                        "missing (pipes and internal addresses are not supported)",
                    ));
                }
            };
            let ip: IpAddr = address.address.parse().map_err(|_| {
                FieldError::new(
                    format!("{field}.endpoint.address.socket_address.address"),
                    format!("{:?} is not an IP address", address.address),
                )
            })?;
            let port = match address.port_specifier {
                Some(PortSpecifier::PortValue(p)) if p > 0 && p <= u32::from(u16::MAX) => p as u16,
                _ => {
                    return Err(FieldError::new(
                        format!("{field}.endpoint.address.socket_address.port_value"),
                        "missing or out of range",
                    ));
                }
            };
            let weight = lb.load_balancing_weight.as_ref().map_or(1, |w| w.value);
            if weight == 0 {
                return Err(FieldError::new(format!("{field}.load_balancing_weight"), "must be at least 1"));
            }
            let weight = locality_weight.saturating_mul(weight).min(mesh_core::Weight::MAX.get());
            list.push((SocketAddr::new(ip, port), weight));
        }
    }
    let endpoints = by_priority.into_values().find(|list| !list.is_empty()).unwrap_or_default();
    Ok(LoadAssignment { endpoints })
}
