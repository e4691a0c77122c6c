//! The [`ServiceSpec`] a target's cached resources add up to: each cluster a route sends to
//! becomes one subset, named after the cluster ([`subset_for_cluster`]); an endpoint belongs to
//! the subsets of every cluster that lists it; the clusters' policies become the service's.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mesh_core::{
    Endpoint, ExpectedIdentity, Labels, Route, RouteName, ServiceSpec, Subset, SubsetName, Weight,
    policy::{CircuitBreaker, LoadBalancer, OutlierDetection},
};

use super::{
    error::CascadeError,
    follow::{clusters_of, good, listener, route_config, virtual_host},
};
use crate::{
    ads::AdsState,
    resource::{
        Resource, ResourceType,
        cluster::{Cluster, LbKind},
        listener::Listener,
        route::VirtualHost,
    },
};

/// What the cascade adds up to for a target.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Built {
    pub(crate) spec: ServiceSpec,
    /// Subset name -> cluster name.
    pub(crate) clusters: BTreeMap<SubsetName, String>,
}

/// How to build.
#[derive(Debug, Clone, Default)]
pub(crate) struct BuildOptions {
    pub(crate) allow_plaintext: bool,
}

/// The subset standing for a cluster: its name with every character a subset name may not hold
/// replaced by `_` (`outbound|9080|v1|reviews.default.svc.cluster.local` ->
/// `outbound_9080_v1_reviews.default.svc.cluster.local`), shortened with a hash past 63 bytes.
pub fn subset_for_cluster(cluster: &str) -> SubsetName {
    let mut name: String = cluster
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    if name.len() > 63 || name.is_empty() {
        // FNV-1a: stable across runs and platforms.
        let hash =
            cluster.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        name.truncate(46);
        name = format!("{name}-{hash:016x}");
    }
    SubsetName::new(&name).unwrap_or_else(|e| unreachable!("sanitized subset name: {e}"))
}

/// The spec for the target `listener`: `Ok(None)` while resources are still on their way.
pub(super) fn build(state: &AdsState, listener_name: &str, opts: &BuildOptions) -> Result<Option<Built>, CascadeError> {
    let unsupported = |reason: String| CascadeError::Unsupported { target: listener_name.to_owned(), reason };
    let Some(l) = listener(state, listener_name)? else { return Ok(None) };
    let Some(rc) = route_config(state, l)? else { return Ok(None) };
    let vh = virtual_host(rc, listener_name).ok_or_else(|| unsupported("no virtual host matches the target".into()))?;
    let mut clusters: Vec<(&str, &Cluster)> = Vec::new();
    let mut assignments = Vec::new();
    // Clusters refused (NACKed with no good version) or reported as not existing, and why. As
    // gRPC does, they fail only the calls routed to them: their subsets have no endpoints.
    let mut failed: Vec<(&str, CascadeError)> = Vec::new();
    for name in clusters_of(vh) {
        let c = match good(state, ResourceType::Cluster, name) {
            Ok(Some(Resource::Cluster(c))) => c,
            Ok(_) => return Ok(None),
            Err(e) => {
                failed.push((name, e));
                continue;
            }
        };
        match good(state, ResourceType::ClusterLoadAssignment, &c.eds_service_name) {
            Ok(Some(Resource::ClusterLoadAssignment(la))) => {
                clusters.push((name, c));
                assignments.push(la);
            }
            Ok(_) => return Ok(None),
            Err(e) => failed.push((name, e)),
        }
    }
    if clusters.is_empty()
        && let Some((_, e)) = failed.first()
    {
        // Nothing to serve at all: the target fails with the reason.
        return Err(e.clone());
    }
    let mut spec = ServiceSpec::default();
    let mut subsets = BTreeMap::new();
    let mut by_cluster = HashMap::new();
    let mut endpoints: Vec<Endpoint> = Vec::new();
    let mut index: HashMap<std::net::SocketAddr, usize> = HashMap::new();
    for ((name, cluster), la) in clusters.iter().zip(&assignments) {
        let subset = subset_for_cluster(name);
        if let Some(other) = subsets.insert(subset.clone(), (*name).to_owned()) {
            return Err(unsupported(format!("clusters {other:?} and {name:?} map to the same subset {subset}")));
        }
        by_cluster.insert(*name, subset.clone());
        let mut labels = Labels::new();
        labels.insert(subset.as_str(), "1").map_err(|e| unsupported(e.to_string()))?;
        spec.subsets.push(Subset::new(subset.clone(), labels));
        let identity: Option<&ExpectedIdentity> = cluster.tls.as_ref().map(|t| &t.identity);
        if identity.is_none() && !opts.allow_plaintext {
            return Err(unsupported(format!(
                "cluster {name:?} has no UpstreamTlsContext and plaintext is not allowed (XdsDiscoveryBuilder::allow_plaintext)"
            )));
        }
        for (address, weight) in &la.endpoints {
            let weight = Weight::new(*weight).map_err(|e| unsupported(e.to_string()))?;
            let i = *index.entry(*address).or_insert_with(|| {
                let mut ep = Endpoint::new(*address).with_weight(weight);
                ep.identity = identity.cloned();
                endpoints.push(ep);
                endpoints.len() - 1
            });
            let ep = &mut endpoints[i];
            if ep.identity.as_ref() != identity {
                return Err(unsupported(format!("endpoint {address} is in clusters that expect different identities")));
            }
            ep.labels.insert(subset.as_str(), "1").map_err(|e| unsupported(e.to_string()))?;
        }
    }
    for (name, _) in &failed {
        let subset = subset_for_cluster(name);
        if let Some(other) = subsets.insert(subset.clone(), (*name).to_owned()) {
            return Err(unsupported(format!("clusters {other:?} and {name:?} map to the same subset {subset}")));
        }
        by_cluster.insert(*name, subset.clone());
        let mut labels = Labels::new();
        labels.insert(subset.as_str(), "1").map_err(|e| unsupported(e.to_string()))?;
        spec.subsets.push(Subset::new(subset, labels));
    }
    spec.endpoints = endpoints;
    spec.routes = routes(l, vh, &by_cluster).map_err(unsupported)?;
    spec.policies.load_balancer = load_balancer(&clusters, vh).map_err(unsupported)?;
    if let Some(min) = clusters.iter().map(|(_, c)| c.max_requests).min() {
        let mut cb = CircuitBreaker::default();
        cb.max_concurrent = min;
        cb.max_pending = 0;
        spec.policies.circuit_breaker = Some(cb);
    }
    spec.policies.outlier_detection = outlier(&clusters).map_err(unsupported)?;
    let instances: BTreeSet<&str> =
        clusters.iter().filter_map(|(_, c)| c.tls.as_ref().map(|t| t.instance.as_str())).collect();
    if instances.len() > 1 {
        return Err(unsupported(format!(
            "clusters use several certificate provider instances {instances:?}: a channel has one identity"
        )));
    }
    if instances.len() == 1 && clusters.iter().any(|(_, c)| c.tls.is_none()) {
        return Err(unsupported("some clusters use TLS and some do not: a channel is either mTLS or plaintext".into()));
    }
    Ok(Some(Built { spec, clusters: subsets }))
}

fn routes(l: &Listener, vh: &VirtualHost, by_cluster: &HashMap<&str, SubsetName>) -> Result<Vec<Route>, String> {
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (i, r) in vh.routes.iter().enumerate() {
        let name = RouteName::new(&r.name)
            .ok()
            .filter(|n| !names.contains(n))
            .unwrap_or_else(|| RouteName::new(&format!("route-{i}")).unwrap_or_else(|e| unreachable!("{e}")));
        names.insert(name.clone());
        let mut route = Route::new(name).with_match(r.matches.clone()).with_action(r.action);
        for (cluster, weight) in r.clusters.iter().filter(|(_, w)| *w > 0) {
            let subset = by_cluster
                .get(cluster.as_str())
                .ok_or_else(|| format!("route {:?}: cluster {cluster:?} is unknown", r.name))?;
            // Weights are relative; scale into mesh's range keeping the ratios.
            let weight = Weight::new((*weight).min(Weight::MAX.get())).map_err(|e| e.to_string())?;
            route = route.with_target(subset.clone(), weight);
        }
        if let Some(retry) = &r.retry {
            route = route.with_retry(retry.clone());
        }
        let timeout = match r.timeout {
            Some(t) => t,
            None => l.max_stream_duration,
        };
        if let Some(t) = timeout {
            route = route.with_timeout(t);
        }
        let fault = match &r.fault {
            Some(f) => f.clone(),
            None => l.fault.clone(),
        };
        if let Some(f) = fault.filter(|f| f.delay.is_some() || f.abort.is_some()) {
            route = route.with_fault(f);
        }
        out.push(route);
    }
    Ok(out)
}

fn load_balancer(clusters: &[(&str, &Cluster)], vh: &VirtualHost) -> Result<LoadBalancer, String> {
    let kinds: BTreeSet<_> = clusters.iter().map(|(_, c)| format!("{:?}", c.lb)).collect();
    if kinds.len() > 1 {
        return Err(format!("the clusters use different lb_policy values {kinds:?}; mesh balances a service one way"));
    }
    Ok(match clusters.first().map(|(_, c)| c.lb) {
        None | Some(LbKind::LeastRequest) => LoadBalancer::default(),
        Some(LbKind::RoundRobin) => LoadBalancer::round_robin(),
        Some(LbKind::RingHash) => {
            let headers: BTreeSet<_> = vh.routes.iter().filter_map(|r| r.hash_header.clone()).collect();
            match headers.len() {
                1 => LoadBalancer::ring_hash(headers.into_iter().next().unwrap_or_else(|| unreachable!())),
                // Nothing to hash (gRFC A42: gRPC then hashes a random value per call, so calls
                // spread over the ring): spread them evenly.
                0 => LoadBalancer::round_robin(),
                _ => return Err(format!("routes hash different headers {headers:?}; mesh hashes one per service")),
            }
        }
    })
}

fn outlier(clusters: &[(&str, &Cluster)]) -> Result<Option<OutlierDetection>, String> {
    let mut policies = clusters.iter().map(|(_, c)| &c.outlier_detection);
    let first = policies.next().cloned().flatten();
    if policies.any(|p| p != &first) {
        return Err("the clusters' outlier_detection differ; mesh applies one per service".into());
    }
    Ok(first)
}
