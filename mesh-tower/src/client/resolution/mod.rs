//! [`Resolution`]: one request's route, policies and subset, decided once by the
//! [router](super::router) and read by every layer below it; the plan each snapshot version is
//! compiled into; and the refusals of a request that resolves to nowhere.

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
    time::Duration,
};

use http::Request;
use mesh_core::{
    RouteName, ServiceName, ServiceSnapshot, SubsetName,
    policy::{CircuitBreaker, Fault, RetryPolicy},
};

pub(crate) mod plan;
pub(crate) mod route;
pub(crate) mod split;

use self::{
    plan::{EndpointStates, Plan, PlanContext, RoutePlan, SubsetPlan, Target},
    split::in_share,
};
pub use crate::failure::{NoEndpoints, NoRoute, UnknownSubset, UnsupportedRoute};
use crate::{BoxError, client::balance::Rng};

/// In a request's extensions below the router: what the request resolved to, once.
///
/// The router of the client stack loads the destination's snapshot, matches the route and
/// chooses the subset (the route's weighted split, the subset the request is pinned to, or its
/// cohort's) once per request, and attaches this. Every layer below reads it: the deadline layer
/// the route's timeout, fault injection the route's faults, retries the route's retry policy (and
/// every retry stays in the same subset, as Envoy and gRPC retry inside the weighted cluster they
/// picked), load shedding the service's limits, and the balancer the subset's endpoints. Nothing
/// below matches again or holds its own discovery watch, so one request never mixes two
/// snapshot versions.
///
/// Cheap to clone (one reference count). It also keeps the request's progress: how many
/// attempts were sent, the endpoint of the latest, and the endpoints that failed it (which the
/// balancer avoids on a retry).
///
/// ```
/// use std::sync::Arc;
/// use mesh_core::{Route, RouteName, ServiceSnapshot};
/// use mesh_tower::client::Resolution;
///
/// // A layer can be tested with a plain snapshot: no discovery backend involved.
/// let snapshot = ServiceSnapshot::builder("reviews".parse()?)
///     .route(Route::new(RouteName::new("all")?).with_timeout(std::time::Duration::from_millis(200)))
///     .build()?;
/// let request = http::Request::get("/reviews/1").body(())?;
/// let resolution = Resolution::resolve(Arc::new(snapshot), &request)?;
/// assert_eq!(resolution.route().map(|r| r.as_str()), Some("all"));
/// assert_eq!(resolution.timeout(), Some(std::time::Duration::from_millis(200)));
/// # Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
/// ```
#[derive(Clone)]
pub struct Resolution {
    inner: Arc<Resolved>,
}

struct Resolved {
    plan: Arc<Plan>,
    route: usize,
    subset: usize,
    progress: Mutex<Progress>,
}

#[derive(Default)]
struct Progress {
    attempts: u32,
    endpoint: Option<SocketAddr>,
    failed: Vec<SocketAddr>,
}

/// What the router needs to choose a subset besides the plan.
pub(crate) struct Choosing<'a> {
    pub(crate) subset_header: Option<&'a http::HeaderName>,
    pub(crate) cohort: Option<SubsetName>,
}

impl Resolution {
    /// Resolves `request` against `snapshot` alone: route, policies, and subset by the route's
    /// weights (or the `x-mesh-subset` header). For tests and hand-built stacks; the client stack's
    /// router does this against the snapshot discovery gives it, keeping endpoint state across
    /// versions.
    pub fn resolve<B>(snapshot: Arc<ServiceSnapshot>, request: &Request<B>) -> Result<Self, BoxError> {
        let mut endpoints = EndpointStates::new();
        let cx = PlanContext {
            endpoints: &mut endpoints,
            default_rtt: Duration::from_millis(5),
            outlier_stats: Arc::default(),
            rng: Arc::new(Rng::new(0)),
        };
        let plan = Arc::new(Plan::build(snapshot, cx));
        let header = http::HeaderName::from_static("x-mesh-subset");
        Self::choose(plan, request, Choosing { subset_header: Some(&header), cohort: None })
    }

    /// Matches the route and chooses the subset.
    pub(crate) fn choose<B>(plan: Arc<Plan>, request: &Request<B>, choosing: Choosing<'_>) -> Result<Self, BoxError> {
        let route = if plan.routed() {
            match route::select(plan.snapshot.routes(), request) {
                Some(i) => i,
                None => {
                    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
                    return Err(NoRoute { service: plan.service.clone(), method, path }.into());
                }
            }
        } else {
            0
        };
        let action = plan.routes[route].action;
        if !action.is_forward() {
            let name = plan.snapshot.routes()[route].name.clone();
            return Err(UnsupportedRoute { service: plan.service.clone(), route: name, action }.into());
        }
        // A pinned subset (testers, internal traffic) wins over the route's weights; then the
        // caller's cohort, where this destination has a subset of that name; then the split.
        let pinned = choosing.subset_header.and_then(|h| request.headers().get(h));
        let subset = if let Some(value) = pinned {
            let wanted = value.to_str().unwrap_or_default();
            match plan.subsets.iter().position(|s| s.name.as_ref().is_some_and(|n| n.as_str() == wanted)) {
                Some(i) => i,
                None => return Err(UnknownSubset { service: plan.service.clone(), subset: wanted.to_owned() }.into()),
            }
        } else if let Some(i) =
            choosing.cohort.and_then(|c| plan.subsets.iter().position(|s| s.name.as_ref() == Some(&c)))
        {
            i
        } else {
            match &plan.routes[route] {
                RoutePlan { split: Some(split), targets, .. } => targets[split.pick()],
                _ => plan.all(),
            }
        };
        if subset >= plan.subsets.len() {
            return Err(NoEndpoints { service: plan.service.clone(), subset: None, version: plan.version }.into());
        }
        Ok(Self { inner: Arc::new(Resolved { plan, route, subset, progress: Mutex::default() }) })
    }

    pub(crate) fn plan(&self) -> &Plan {
        &self.inner.plan
    }

    fn route_plan(&self) -> &RoutePlan {
        &self.inner.plan.routes[self.inner.route]
    }

    pub(crate) fn subset_plan(&self) -> &SubsetPlan {
        &self.inner.plan.subsets[self.inner.subset]
    }

    /// The destination.
    pub fn service(&self) -> &ServiceName {
        &self.inner.plan.service
    }

    /// The version of the snapshot the request was resolved against.
    pub fn version(&self) -> u64 {
        self.inner.plan.version
    }

    /// The matched route (`None` when the destination has no routes).
    pub fn route(&self) -> Option<&RouteName> {
        self.route_plan().name.as_ref()
    }

    /// The chosen subset (`None`: every endpoint of the destination).
    pub fn subset(&self) -> Option<&SubsetName> {
        self.subset_plan().name.as_ref()
    }

    /// The route's timeout, else the service's.
    pub fn timeout(&self) -> Option<Duration> {
        self.route_plan().timeout
    }

    /// The route's retry policy, else the service's.
    pub fn retry_policy(&self) -> Option<&RetryPolicy> {
        self.route_plan().retry.as_ref()
    }

    /// The route's fault injection.
    pub fn fault(&self) -> Option<&Fault> {
        self.route_plan().fault.as_ref()
    }

    /// The service's circuit breaker (limits on requests in flight and waiting).
    pub fn circuit_breaker(&self) -> Option<&CircuitBreaker> {
        self.inner.plan.circuit_breaker.as_ref()
    }

    /// Attempts sent so far.
    pub fn attempts(&self) -> u32 {
        self.progress().attempts
    }

    /// The endpoint of the latest attempt, once one was picked.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.progress().endpoint
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.inner.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers that `address` failed this request: later attempts go elsewhere when they can.
    pub(crate) fn record_failed(&self, address: SocketAddr) {
        let mut progress = self.progress();
        if !progress.failed.contains(&address) {
            progress.failed.push(address);
        }
    }

    /// Starts the next attempt: the subset's balancer picks its endpoint, skipping ejected
    /// endpoints and the ones that failed this request when the subset has others (never leaving
    /// a request with nowhere to go); the attempt is counted. Returns the endpoint and the
    /// attempt's number (1 for the first).
    pub(crate) fn start_attempt<B>(&self, request: &Request<B>) -> Result<(&Target, u32), NoEndpoints> {
        let plan = &self.inner.plan;
        let subset = self.subset_plan();
        let hash_key = plan.hash_header.as_ref().and_then(|h| request.headers().get(h)).map(|v| v.as_bytes());
        let targets = &subset.targets;
        let picked = subset.picker.pick(targets.len(), |i| &targets[i].load, &plan.rng, hash_key);
        let Some(mut i) = picked else {
            return Err(NoEndpoints {
                service: plan.service.clone(),
                subset: subset.name.clone(),
                version: plan.version,
            });
        };
        let mut progress = self.progress();
        let failed = &progress.failed;
        let acceptable = |t: &Target| !t.health.is_ejected() && !failed.contains(&t.address);
        if !acceptable(&targets[i]) {
            let n = targets.len();
            i = (1..n).map(|k| (i + k) % n).find(|j| acceptable(&targets[*j])).unwrap_or(i);
        }
        progress.attempts += 1;
        progress.endpoint = Some(targets[i].address);
        Ok((&targets[i], progress.attempts))
    }

    /// On a request the route mirrors (by its share), an endpoint of the shadow subset.
    pub(crate) fn mirror_target<B>(&self, request: &Request<B>) -> Option<&Target> {
        let plan = &self.inner.plan;
        let (subset, percent, count) = self.route_plan().mirror.as_ref()?;
        if !in_share(count.fetch_add(1, Ordering::Relaxed), *percent) {
            return None;
        }
        let hash_key = plan.hash_header.as_ref().and_then(|h| request.headers().get(h)).map(|v| v.as_bytes());
        let shadow = &plan.subsets[*subset];
        let i = shadow.picker.pick(shadow.targets.len(), |i| &shadow.targets[i].load, &plan.rng, hash_key)?;
        Some(&shadow.targets[i])
    }
}

impl fmt::Debug for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolution")
            .field("service", self.service())
            .field("version", &self.version())
            .field("route", &self.route())
            .field("subset", &self.subset())
            .finish_non_exhaustive()
    }
}
