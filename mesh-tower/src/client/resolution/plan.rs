//! What the client makes of one snapshot version: routes with their policies and splits, subsets
//! with their endpoints and pickers. Built once per version by the router, shared by every request
//! resolved against that version (through its [`Resolution`](super::Resolution)).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use http::uri::Authority;
use mesh_core::{
    RouteAction, RouteName, ServiceName, ServiceSnapshot, SubsetName,
    policy::{CircuitBreaker, Fault, LoadBalancerKind, OutlierDetection, RetryPolicy},
};

use super::split::WeightedSplit;
use crate::{
    client::{
        balance::{EndpointLoad, Picker, Ring, Rng},
        outlier::{Health, OutlierStats},
    },
    connection::ConnectionSlot,
};

/// An endpoint ready to be dialled.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) address: SocketAddr,
    pub(crate) authority: Authority,
    pub(crate) load: Arc<EndpointLoad>,
    pub(crate) health: Arc<Health>,
    /// The client's own connection to it (HTTP/2), kept as long as the endpoint is listed.
    pub(crate) connection: Arc<ConnectionSlot>,
}

#[derive(Debug)]
pub(crate) struct SubsetPlan {
    /// `None` for the implicit subset of every endpoint.
    pub(crate) name: Option<SubsetName>,
    pub(crate) targets: Box<[Target]>,
    pub(crate) picker: Picker,
}

/// One route of one version, with the policies that apply to it (the route's own, else the
/// service's), so nothing per request has to look further.
#[derive(Debug)]
pub(crate) struct RoutePlan {
    /// `None` for the implicit route of a destination without routes.
    pub(crate) name: Option<RouteName>,
    /// Whether it forwards (else its requests fail with [`UnsupportedRoute`](super::UnsupportedRoute)).
    pub(crate) action: RouteAction,
    /// Subset indexes, in target order, and the split between them.
    pub(crate) targets: Box<[usize]>,
    pub(crate) split: Option<WeightedSplit>,
    /// The shadow subset, the share mirrored, and the route's request count.
    pub(crate) mirror: Option<(usize, f64, AtomicU64)>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) fault: Option<Fault>,
}

#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) version: u64,
    pub(crate) service: ServiceName,
    pub(crate) snapshot: Arc<ServiceSnapshot>,
    /// The snapshot's routes in order; a destination without routes has one implicit route.
    pub(crate) routes: Box<[RoutePlan]>,
    /// The snapshot's subsets, then the implicit subset of every endpoint.
    pub(crate) subsets: Box<[SubsetPlan]>,
    pub(crate) hash_header: Option<http::HeaderName>,
    pub(crate) outlier: Option<OutlierDetection>,
    pub(crate) circuit_breaker: Option<CircuitBreaker>,
    pub(crate) all_health: Arc<[Arc<Health>]>,
    pub(crate) outlier_stats: Arc<OutlierStats>,
    pub(crate) rng: Arc<Rng>,
}

/// What the client keeps per endpoint address across snapshot versions: its latency estimate,
/// its health and its connection.
pub(crate) type EndpointStates = HashMap<SocketAddr, (Arc<EndpointLoad>, Arc<Health>, Arc<ConnectionSlot>)>;

/// What a plan is built with besides the snapshot.
pub(crate) struct PlanContext<'a> {
    pub(crate) endpoints: &'a mut EndpointStates,
    pub(crate) default_rtt: Duration,
    pub(crate) outlier_stats: Arc<OutlierStats>,
    pub(crate) rng: Arc<Rng>,
}

impl Plan {
    /// Index of the implicit subset of every endpoint.
    pub(crate) fn all(&self) -> usize {
        self.subsets.len() - 1
    }

    /// Whether the snapshot has routes of its own (else one implicit route takes everything).
    pub(crate) fn routed(&self) -> bool {
        !self.snapshot.routes().is_empty()
    }

    pub(crate) fn build(snapshot: Arc<ServiceSnapshot>, cx: PlanContext<'_>) -> Self {
        let endpoints = cx.endpoints;
        // Latency estimates follow the address across versions; gone endpoints are forgotten.
        endpoints.retain(|addr, _| snapshot.endpoints().iter().any(|ep| ep.address == *addr));
        let policies = snapshot.policies();
        let lb = &policies.load_balancer;
        let mut target = |ep: &mesh_core::Endpoint| {
            let authority = Authority::try_from(ep.address.to_string()).ok()?;
            let (load, health, connection) = endpoints
                .entry(ep.address)
                .or_insert_with(|| (Arc::new(EndpointLoad::new(cx.default_rtt)), Arc::default(), Arc::default()))
                .clone();
            Some((Target { address: ep.address, authority, load, health, connection }, ep.weight.get()))
        };
        let subset_plan = |name: Option<SubsetName>, targets: Vec<(Target, u32)>| {
            let ring = (lb.kind == LoadBalancerKind::RingHash)
                .then(|| Ring::new(targets.iter().map(|(t, w)| (t.authority.as_str(), *w))));
            SubsetPlan {
                name,
                targets: targets.into_iter().map(|(t, _)| t).collect(),
                picker: Picker::new(lb.kind, ring),
            }
        };
        let mut subsets = Vec::new();
        for subset in snapshot.subsets() {
            let targets = snapshot.subset_endpoints(subset).filter(|ep| !ep.weight.is_zero()).filter_map(&mut target);
            subsets.push(subset_plan(Some(subset.name.clone()), targets.collect()));
        }
        let every = snapshot.endpoints().iter().filter(|ep| !ep.weight.is_zero()).filter_map(&mut target).collect();
        subsets.push(subset_plan(None, every));
        let subset_index =
            |name: &SubsetName| snapshot.subsets().iter().position(|s| &s.name == name).unwrap_or(usize::MAX);
        let mut routes: Vec<RoutePlan> = snapshot
            .routes()
            .iter()
            .map(|route| RoutePlan {
                name: Some(route.name.clone()),
                action: route.action,
                targets: route.targets.iter().map(|t| subset_index(&t.subset)).collect(),
                split: WeightedSplit::new(route.targets.iter().map(|t| t.weight)),
                mirror: route.mirror.as_ref().and_then(|m| {
                    let subset = snapshot.subsets().iter().position(|s| s.name == m.subset)?;
                    Some((subset, m.percent.get(), AtomicU64::new(0)))
                }),
                timeout: route.timeout.or(policies.timeout),
                retry: route.retry.clone().or_else(|| policies.retry.clone()),
                fault: route.fault.clone(),
            })
            .collect();
        if routes.is_empty() {
            routes.push(RoutePlan {
                name: None,
                action: RouteAction::Forward,
                targets: Box::new([]),
                split: None,
                mirror: None,
                timeout: policies.timeout,
                retry: policies.retry.clone(),
                fault: None,
            });
        }
        let hash_header = lb.header.as_ref().and_then(|h| http::HeaderName::try_from(h.as_str()).ok());
        Plan {
            version: snapshot.version(),
            service: snapshot.name().clone(),
            outlier: policies.outlier_detection.clone(),
            circuit_breaker: policies.circuit_breaker.clone(),
            all_health: endpoints.values().map(|(_, health, _)| health.clone()).collect(),
            outlier_stats: cx.outlier_stats,
            rng: cx.rng,
            routes: routes.into(),
            subsets: subsets.into(),
            hash_header,
            snapshot,
        }
    }
}
