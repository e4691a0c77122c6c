//! What the client does with one snapshot version: routes compiled with their splits, subsets
//! with their endpoints and pickers. Built once per version, read lock-free per request.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use http::{Request, uri::Authority};
use mesh_core::{
    RouteName, ServiceSnapshot, SnapshotWatch, SubsetName,
    policy::{LoadBalancerKind, OutlierDetection},
};

use super::{NoEndpoints, UnknownSubset, connect::IdentityBook};
use crate::{
    BoxError,
    balance::{EndpointLoad, Picker, Ring, Rng},
    outlier::{Health, OutlierStats},
    route::{self, NoRoute},
    split::{WeightedSplit, in_share},
};

/// An endpoint ready to be dialled.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) address: SocketAddr,
    pub(crate) authority: Authority,
    pub(crate) load: Arc<EndpointLoad>,
    pub(crate) health: Arc<Health>,
}

/// Where an attempt's outcome is recorded for outlier detection.
#[derive(Debug, Clone)]
pub(crate) struct OutlierRecorder {
    pub(crate) service: mesh_core::ServiceName,
    pub(crate) health: Arc<Health>,
    pub(crate) policy: Arc<OutlierDetection>,
    pub(crate) all: Arc<[Arc<Health>]>,
    pub(crate) stats: Arc<OutlierStats>,
}

impl OutlierRecorder {
    pub(crate) fn record(&self, failed: bool) {
        if crate::outlier::record(&self.health, failed, &self.policy, &self.all, &self.stats) {
            crate::metrics::per_service(crate::metrics::OUTLIER_EJECTIONS, &self.service);
        }
    }
}

/// Where a request goes.
#[derive(Debug)]
pub(crate) struct Choice {
    pub(crate) target: Target,
    pub(crate) route: Option<RouteName>,
    pub(crate) subset: Option<SubsetName>,
    /// Where a copy goes, when the route mirrors this request.
    pub(crate) mirror: Option<Target>,
    pub(crate) outlier: Option<OutlierRecorder>,
}

#[derive(Debug)]
struct SubsetPlan {
    /// `None` for the implicit subset of every endpoint.
    name: Option<SubsetName>,
    targets: Box<[Target]>,
    picker: Picker,
}

#[derive(Debug)]
struct RoutePlan {
    name: RouteName,
    /// Subset indexes, in target order, and the split between them.
    targets: Box<[usize]>,
    split: Option<WeightedSplit>,
    /// The shadow subset, the share mirrored, and the route's request count.
    mirror: Option<(usize, f64, AtomicU64)>,
}

#[derive(Debug)]
struct Plan {
    version: u64,
    snapshot: Arc<ServiceSnapshot>,
    routes: Box<[RoutePlan]>,
    /// The snapshot's subsets, then the implicit subset of every endpoint.
    subsets: Box<[SubsetPlan]>,
    hash_header: Option<http::HeaderName>,
    outlier: Option<Arc<OutlierDetection>>,
    all_health: Arc<[Arc<Health>]>,
}

impl Plan {
    fn all(&self) -> usize {
        self.subsets.len() - 1
    }
}

/// Follows the destination's snapshots and picks a target per request.
#[derive(Debug)]
pub(crate) struct Planner {
    watch: SnapshotWatch,
    cache: ArcSwapOption<Plan>,
    loads: Mutex<HashMap<SocketAddr, EndpointState>>,
    outlier_stats: Arc<OutlierStats>,
    rng: Rng,
    default_rtt: Duration,
    subset_header: Option<http::HeaderName>,
    follow_cohort: bool,
    identities: Arc<IdentityBook>,
}

/// What the client keeps per endpoint address across snapshot versions.
type EndpointState = (Arc<EndpointLoad>, Arc<Health>);

/// What a pick found.
// Returned once per request and taken apart at once: boxing the large variant would allocate.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Pick {
    Chosen(Choice),
    /// Discovery has published nothing yet.
    NotResolved,
    Failed(BoxError),
}

impl Planner {
    pub(crate) fn new(
        watch: SnapshotWatch,
        seed: u64,
        default_rtt: Duration,
        subset_header: Option<http::HeaderName>,
        follow_cohort: bool,
        identities: Arc<IdentityBook>,
    ) -> Self {
        Self {
            watch,
            cache: ArcSwapOption::empty(),
            loads: Mutex::default(),
            outlier_stats: Arc::default(),
            rng: Rng::new(seed),
            default_rtt,
            subset_header,
            follow_cohort,
            identities,
        }
    }

    pub(crate) fn watch(&self) -> &SnapshotWatch {
        &self.watch
    }

    pub(crate) fn outlier_stats(&self) -> Arc<OutlierStats> {
        self.outlier_stats.clone()
    }

    fn plan(&self) -> Option<Arc<Plan>> {
        let version = self.watch.current_version();
        if version == 0 {
            return None;
        }
        if let Some(plan) = self.cache.load_full().filter(|p| p.version == version) {
            return Some(plan);
        }
        let snapshot = self.watch.current()?;
        let fresh = Arc::new(self.build(snapshot));
        // Racing rebuilds of one version are harmless; a newer plan is never replaced by an older.
        self.cache.rcu(|old| match old {
            Some(old) if old.version > fresh.version => Some(old.clone()),
            _ => Some(fresh.clone()),
        });
        Some(fresh)
    }

    fn build(&self, snapshot: Arc<ServiceSnapshot>) -> Plan {
        self.identities.record(&snapshot);
        let mut loads = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        // Latency estimates follow the address across versions; gone endpoints are forgotten.
        loads.retain(|addr, _| snapshot.endpoints().iter().any(|ep| ep.address == *addr));
        let lb = &snapshot.policies().load_balancer;
        let mut target = |ep: &mesh_core::Endpoint| {
            let authority = Authority::try_from(ep.address.to_string()).ok()?;
            let (load, health) = loads
                .entry(ep.address)
                .or_insert_with(|| (Arc::new(EndpointLoad::new(self.default_rtt)), Arc::default()))
                .clone();
            Some((Target { address: ep.address, authority, load, health }, ep.weight.get()))
        };
        let subset_plan = |name: Option<SubsetName>, endpoints: Vec<(Target, u32)>| {
            let ring = (lb.kind == LoadBalancerKind::RingHash)
                .then(|| Ring::new(endpoints.iter().map(|(t, w)| (t.authority.as_str(), *w))));
            SubsetPlan {
                name,
                targets: endpoints.into_iter().map(|(t, _)| t).collect(),
                picker: Picker::new(lb.kind, ring),
            }
        };
        let mut subsets = Vec::new();
        for subset in snapshot.subsets() {
            let endpoints = snapshot.subset_endpoints(subset).filter(|ep| !ep.weight.is_zero()).filter_map(&mut target);
            let endpoints = endpoints.collect();
            subsets.push(subset_plan(Some(subset.name.clone()), endpoints));
        }
        let every = snapshot.endpoints().iter().filter(|ep| !ep.weight.is_zero()).filter_map(&mut target).collect();
        subsets.push(subset_plan(None, every));
        let routes = snapshot
            .routes()
            .iter()
            .map(|route| {
                let targets = route
                    .targets
                    .iter()
                    .map(|t| snapshot.subsets().iter().position(|s| s.name == t.subset).unwrap_or(usize::MAX))
                    .collect();
                let mirror = route.mirror.as_ref().and_then(|m| {
                    let subset = snapshot.subsets().iter().position(|s| s.name == m.subset)?;
                    Some((subset, m.percent.get(), AtomicU64::new(0)))
                });
                RoutePlan {
                    name: route.name.clone(),
                    targets,
                    split: WeightedSplit::new(route.targets.iter().map(|t| t.weight)),
                    mirror,
                }
            })
            .collect();
        let hash_header = lb.header.as_ref().and_then(|h| http::HeaderName::try_from(h.as_str()).ok());
        let outlier = snapshot.policies().outlier_detection.clone().map(Arc::new);
        let all_health = loads.values().map(|(_, health)| health.clone()).collect();
        Plan {
            version: snapshot.version(),
            snapshot,
            routes,
            subsets: subsets.into(),
            hash_header,
            outlier,
            all_health,
        }
    }

    fn cohort_subset(&self, plan: &Plan) -> Option<usize> {
        if !self.follow_cohort {
            return None;
        }
        let cohort = crate::context::cohort()?;
        plan.subsets.iter().position(|s| s.name.as_ref() == Some(&cohort))
    }

    /// Route, split, balance: where `request` goes.
    pub(crate) fn pick<B>(&self, request: &Request<B>) -> Pick {
        let Some(plan) = self.plan() else { return Pick::NotResolved };
        let service = || self.watch.service().clone();
        let route = if plan.routes.is_empty() {
            None
        } else {
            match route::select(plan.snapshot.routes(), request) {
                Some(i) => Some(&plan.routes[i]),
                None => {
                    let path = request.uri().path().to_owned();
                    return Pick::Failed(NoRoute { service: service(), method: request.method().clone(), path }.into());
                }
            }
        };
        // A pinned subset (testers, internal traffic) wins over the route's weights.
        let pinned = self.subset_header.as_ref().and_then(|h| request.headers().get(h));
        let subset = match (pinned, route) {
            (Some(value), _) => {
                let wanted = value.to_str().unwrap_or_default();
                match plan.subsets.iter().position(|s| s.name.as_ref().is_some_and(|n| n.as_str() == wanted)) {
                    Some(i) => i,
                    None => {
                        return Pick::Failed(UnknownSubset { service: service(), subset: wanted.to_owned() }.into());
                    }
                }
            }
            // The caller's cohort, where this destination has a subset of that name.
            (None, route) => match self.cohort_subset(&plan) {
                Some(i) => i,
                None => match route {
                    Some(RoutePlan { split: Some(split), targets, .. }) => targets[split.pick()],
                    _ => plan.all(),
                },
            },
        };
        let Some(subset_plan) = plan.subsets.get(subset) else {
            return Pick::Failed(NoEndpoints { service: service(), subset: None, version: plan.version }.into());
        };
        let hash_key = plan.hash_header.as_ref().and_then(|h| request.headers().get(h)).map(|v| v.as_bytes());
        let mut picked =
            subset_plan.picker.pick(subset_plan.targets.len(), |i| &subset_plan.targets[i].load, &self.rng, hash_key);
        // Skip ejected endpoints, and on a retry the endpoints that failed this request, when the
        // subset has another; never leave a request with nowhere to go.
        let avoid = request.extensions().get::<crate::retry::AvoidEndpoints>();
        let acceptable = |t: &Target| !t.health.is_ejected() && avoid.is_none_or(|a| !a.0.contains(&t.address));
        if let Some(i) = picked
            && !acceptable(&subset_plan.targets[i])
        {
            let n = subset_plan.targets.len();
            picked = (1..n).map(|k| (i + k) % n).find(|j| acceptable(&subset_plan.targets[*j])).or(picked);
        }
        let mirror = route
            .and_then(|r| r.mirror.as_ref())
            .filter(|(_, percent, count)| in_share(count.fetch_add(1, Ordering::Relaxed), *percent))
            .and_then(|(s, _, _)| {
                let shadow = &plan.subsets[*s];
                let i = shadow.picker.pick(shadow.targets.len(), |i| &shadow.targets[i].load, &self.rng, hash_key)?;
                Some(shadow.targets[i].clone())
            });
        match picked {
            Some(i) => Pick::Chosen(Choice {
                outlier: plan.outlier.as_ref().map(|policy| OutlierRecorder {
                    service: self.watch.service().clone(),
                    health: subset_plan.targets[i].health.clone(),
                    policy: policy.clone(),
                    all: plan.all_health.clone(),
                    stats: self.outlier_stats.clone(),
                }),
                target: subset_plan.targets[i].clone(),
                route: route.map(|r| r.name.clone()),
                subset: subset_plan.name.clone(),
                mirror,
            }),
            None => Pick::Failed(
                NoEndpoints { service: service(), subset: subset_plan.name.clone(), version: plan.version }.into(),
            ),
        }
    }
}
