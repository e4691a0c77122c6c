//! Following the cascade through the cache, LDS -> RDS -> CDS -> EDS: a target's listener, its
//! route configuration, the virtual host that matches it, the clusters its routes send to, and so
//! the names each type must subscribe to.

use std::collections::{BTreeMap, BTreeSet};

use super::error::CascadeError;
use crate::{
    ads::AdsState,
    resource::{
        Resource, ResourceError, ResourceType,
        listener::{Listener, RouteSource},
        route::{RouteConfig, VirtualHost},
    },
};

pub(super) fn good<'a>(
    state: &'a AdsState,
    kind: ResourceType,
    name: &str,
) -> Result<Option<&'a Resource>, CascadeError> {
    match state.entry(kind, name) {
        None => Ok(None),
        Some(e) if e.missing => Err(CascadeError::DoesNotExist { kind, name: name.to_owned() }),
        Some(e) => match (&e.good, &e.error) {
            (Some(r), _) => Ok(Some(r)),
            (None, Some(err)) => Err(CascadeError::Refused(err.clone())),
            (None, None) => Ok(None),
        },
    }
}

pub(super) fn listener<'a>(state: &'a AdsState, name: &str) -> Result<Option<&'a Listener>, CascadeError> {
    Ok(match good(state, ResourceType::Listener, name)? {
        Some(Resource::Listener(l)) => Some(l),
        Some(Resource::InboundListener(_)) => {
            return Err(CascadeError::Refused(ResourceError::new(
                ResourceType::Listener,
                name,
                "api_listener",
                "missing: this is a server listener, and a client listener is an API listener",
            )));
        }
        _ => None,
    })
}

pub(super) fn route_config<'a>(state: &'a AdsState, l: &'a Listener) -> Result<Option<&'a RouteConfig>, CascadeError> {
    Ok(match &l.routes {
        RouteSource::Inline(rc) => Some(rc),
        RouteSource::Rds(name) => match good(state, ResourceType::RouteConfiguration, name)? {
            Some(Resource::RouteConfiguration(rc)) => Some(rc),
            _ => None,
        },
    })
}

/// The virtual host for `host`, by gRPC's rules: exact, then `*.suffix`, then `prefix.*`, then `*`
/// (longest first within each kind).
pub(crate) fn virtual_host<'a>(rc: &'a RouteConfig, host: &str) -> Option<&'a VirtualHost> {
    let host = host.to_ascii_lowercase();
    let mut best: Option<(u8, usize, &VirtualHost)> = None;
    for vh in &rc.virtual_hosts {
        for domain in &vh.domains {
            let d = domain.to_ascii_lowercase();
            let rank = if d == host {
                Some((0, d.len()))
            } else if d == "*" {
                Some((3, 0))
            } else if let Some(suffix) = d.strip_prefix('*') {
                host.ends_with(suffix).then_some((1, d.len()))
            } else if let Some(prefix) = d.strip_suffix('*') {
                host.starts_with(prefix).then_some((2, d.len()))
            } else {
                None
            };
            if let Some((kind, len)) = rank
                && best.is_none_or(|(k, l, _)| kind < k || (kind == k && len > l))
            {
                best = Some((kind, len, vh));
            }
        }
    }
    best.map(|(_, _, vh)| vh)
}

/// The clusters the matched virtual host's routes send to (weight 0 excluded).
pub(super) fn clusters_of(vh: &VirtualHost) -> Vec<&str> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for route in &vh.routes {
        for (cluster, weight) in &route.clusters {
            if *weight > 0 && seen.insert(cluster.as_str()) {
                out.push(cluster.as_str());
            }
        }
    }
    out
}

/// The names each type must subscribe to for `listeners`, given what is cached so far.
pub(super) fn wanted<'a>(
    state: &AdsState,
    listeners: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<ResourceType, BTreeSet<String>> {
    let mut out: BTreeMap<ResourceType, BTreeSet<String>> =
        ResourceType::ALL.into_iter().map(|t| (t, BTreeSet::new())).collect();
    let mut add = |kind: ResourceType, name: &str| {
        out.entry(kind).or_default().insert(name.to_owned());
    };
    for name in listeners {
        add(ResourceType::Listener, name);
        let Ok(Some(l)) = listener(state, name) else { continue };
        if let RouteSource::Rds(rds) = &l.routes {
            add(ResourceType::RouteConfiguration, rds);
        }
        let Ok(Some(rc)) = route_config(state, l) else { continue };
        let Some(vh) = virtual_host(rc, name) else { continue };
        for cluster in clusters_of(vh) {
            add(ResourceType::Cluster, cluster);
            if let Ok(Some(Resource::Cluster(c))) = good(state, ResourceType::Cluster, cluster) {
                add(ResourceType::ClusterLoadAssignment, &c.eds_service_name);
            }
        }
    }
    out
}
