//! The router: resolves each request once, at the top of the client stack.
//!
//! [`RouterLayer`] follows the destination's snapshots through one [`SnapshotWatch`], compiles
//! each version once (routes with their policies and splits, subsets with their endpoints and
//! pickers), and per request loads the current version lock-free, matches the route (first
//! match wins), chooses the subset once (the route's weights by an exact weighted split, the subset the
//! request is pinned to, or its cohort's), and attaches the result as a
//! [`Resolution`] to the request's extensions. Every layer below reads that; none matches again.
//! The resolution itself, with the plan of each version, lives in [`resolution`](super::resolution),
//! beneath every layer that reads it.
//!
//! Its response future wraps every error of the stack below in a
//! [`ClientError`] that names the cause and the route, subset, endpoint and
//! attempts of the request, timeouts included.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, ready},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use http::{HeaderValue, Request, Response};
use mesh_core::{ServiceName, SnapshotWatch};
use pin_project_lite::pin_project;
use tower::{Layer, Service, ServiceExt};

use super::{
    balance::Rng,
    config::ClientConfig,
    endpoint::connect::IdentityBook,
    outlier::OutlierStats,
    resolution::{
        Choosing, Resolution,
        plan::{EndpointStates, Plan, PlanContext},
    },
};
use crate::{
    BoxError,
    failure::{ClientError, Target, Unresolved},
};

/// Resolves each request once. See the [module docs](self). Cheap to clone.
#[derive(Clone, Debug)]
pub struct RouterLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    watch: SnapshotWatch,
    cache: ArcSwapOption<Plan>,
    endpoints: Mutex<EndpointStates>,
    outlier_stats: Arc<OutlierStats>,
    rng: Arc<Rng>,
    default_rtt: Duration,
    subset_header: Option<http::HeaderName>,
    cohort_header: Option<http::HeaderName>,
    resolve_timeout: Duration,
    /// What the mTLS dialer expects of each endpoint, kept up to date with every version.
    identities: Option<Arc<IdentityBook>>,
}

impl RouterLayer {
    /// Routes by the snapshots of `watch`, with `config`'s subset and cohort headers, balancer
    /// seed and resolve timeout.
    pub fn new(watch: SnapshotWatch, config: &ClientConfig) -> Self {
        Self::build(watch, config, None)
    }

    fn build(watch: SnapshotWatch, config: &ClientConfig, identities: Option<Arc<IdentityBook>>) -> Self {
        Self {
            shared: Arc::new(Shared {
                watch,
                cache: ArcSwapOption::empty(),
                endpoints: Mutex::default(),
                outlier_stats: Arc::default(),
                rng: Arc::new(Rng::new(config.seed.unwrap_or_else(seed_from_clock))),
                default_rtt: config.default_rtt,
                subset_header: config.subset_header.clone(),
                cohort_header: config.cohort_header.clone(),
                resolve_timeout: config.resolve_timeout,
                identities,
            }),
        }
    }

    /// Routes as [`new`](Self::new) does, and keeps `book` up to date with the identities each
    /// version expects of its endpoints (what the mTLS dialer checks).
    pub(crate) fn with_identities(watch: SnapshotWatch, config: &ClientConfig, book: Arc<IdentityBook>) -> Self {
        Self::build(watch, config, Some(book))
    }

    /// Ejections by outlier detection so far, over every version.
    pub fn outlier_stats(&self) -> Arc<OutlierStats> {
        self.shared.outlier_stats.clone()
    }

    /// The destination.
    pub fn service(&self) -> &ServiceName {
        self.shared.watch.service()
    }
}

impl<S> Layer<S> for RouterLayer {
    type Service = Router<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Router { inner, shared: self.shared.clone() }
    }
}

impl Shared {
    /// The plan of the current version, built on first use; `None` before the first snapshot.
    fn plan(&self) -> Option<Arc<Plan>> {
        let version = self.watch.current_version();
        if version == 0 {
            return None;
        }
        if let Some(plan) = self.cache.load_full().filter(|p| p.version == version) {
            return Some(plan);
        }
        let snapshot = self.watch.current()?;
        // One builder at a time, and one plan per version: a request that raced here uses the plan
        // the first one built, so the version's split counts every request once.
        let mut endpoints = self.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(plan) = self.cache.load_full().filter(|p| p.version >= snapshot.version()) {
            return Some(plan);
        }
        if let Some(book) = &self.identities {
            book.record(&snapshot);
        }
        let cx = PlanContext {
            endpoints: &mut endpoints,
            default_rtt: self.default_rtt,
            outlier_stats: self.outlier_stats.clone(),
            rng: self.rng.clone(),
        };
        let fresh = Arc::new(Plan::build(snapshot, cx));
        self.cache.store(Some(fresh.clone()));
        Some(fresh)
    }

    fn resolve<B>(&self, plan: Arc<Plan>, request: &mut Request<B>) -> Result<Resolution, BoxError> {
        let cohort = self.cohort_header.as_ref().and_then(|_| crate::context::cohort());
        let choosing = Choosing { subset_header: self.subset_header.as_ref(), cohort };
        let resolution = Resolution::choose(plan, request, choosing)?;
        if let (Some(header), Some(subset)) = (&self.cohort_header, resolution.subset())
            && let Ok(value) = HeaderValue::from_str(subset.as_str())
        {
            // The next hop runs its handler in this cohort (see `crate::context`).
            request.headers_mut().insert(header.clone(), value);
        }
        Ok(resolution)
    }

    /// [`resolve`](Self::resolve), the resolution attached to the request for the layers below.
    fn attach<B>(&self, plan: Arc<Plan>, request: &mut Request<B>) -> Result<Resolution, BoxError> {
        let resolution = self.resolve(plan, request)?;
        request.extensions_mut().insert(resolution.clone());
        Ok(resolution)
    }

    /// Waits for the first snapshot, up to the resolve timeout; the plan of the version it gives.
    async fn first_plan(&self) -> Result<Arc<Plan>, ClientError> {
        let mut watch = self.watch.clone();
        let waited = tokio::time::timeout(self.resolve_timeout, first_snapshot(&mut watch)).await;
        let service = self.watch.service();
        match (waited, self.plan()) {
            (Ok(true), Some(plan)) => Ok(plan),
            _ => {
                let unresolved = Unresolved { service: service.clone(), cause: watch.last_error() };
                Err(ClientError::new(unresolved.into(), service, None))
            }
        }
    }
}

impl RouterLayer {
    /// What [`Router`] decides for `request`, without attaching it: `None` before the
    /// destination's first snapshot (see [`resolve_when_ready`](Self::resolve_when_ready)).
    pub(crate) fn resolve<B>(&self, request: &mut Request<B>) -> Option<Result<Resolution, ClientError>> {
        let plan = self.shared.plan()?;
        let service = self.shared.watch.service();
        Some(self.shared.resolve(plan, request).map_err(|error| ClientError::new(error, service, None)))
    }

    /// [`resolve`](Self::resolve) once the destination has a snapshot, waiting for the first up
    /// to the resolve timeout.
    pub(crate) async fn resolve_when_ready<B>(&self, request: &mut Request<B>) -> Result<Resolution, ClientError> {
        let plan = self.shared.first_plan().await?;
        let service = self.shared.watch.service();
        self.shared.resolve(plan, request).map_err(|error| ClientError::new(error, service, None))
    }
}

/// The service [`RouterLayer`] makes.
#[derive(Clone, Debug)]
pub struct Router<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, B, RB> Service<Request<B>> for Router<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = RouterFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let service = self.shared.watch.service();
        if let Some(plan) = self.shared.plan() {
            return match self.shared.attach(plan, &mut request) {
                Ok(resolution) => RouterFuture::routed(self.inner.call(request), resolution),
                Err(error) => RouterFuture::failed(ClientError::new(error, service, None)),
            };
        }
        // Only before the first snapshot: wait for it, then resolve as usual.
        let shared = self.shared.clone();
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        RouterFuture::waiting(async move {
            let plan = shared.first_plan().await?;
            let service = shared.watch.service();
            let resolution =
                shared.attach(plan, &mut request).map_err(|e| BoxError::from(ClientError::new(e, service, None)))?;
            inner
                .oneshot(request)
                .await
                .map_err(|e| BoxError::from(ClientError::new(e.into(), service, Some(went(&resolution)))))
        })
    }
}

/// Waits for the first snapshot: `true` once there is one; `false` as soon as discovery reports
/// why there is none (a refused resource, an unreachable control plane; not merely that the
/// service is not known yet), so the call fails at
/// once with that reason instead of waiting out the resolve timeout, as gRPC fails a call on a
/// channel in transient failure; `false` too if the backend stops.
async fn first_snapshot(watch: &mut SnapshotWatch) -> bool {
    loop {
        if watch.current().is_some() {
            return true;
        }
        // "Not known (yet)" is no reason: the service may still be published.
        if watch.last_error().is_some_and(|e| !matches!(*e, mesh_core::DiscoveryError::UnknownService(_))) {
            return false;
        }
        if watch.changed().await.is_err() {
            return watch.current().is_some();
        }
    }
}

type Waiting<RB> = Pin<Box<dyn Future<Output = Result<Response<RB>, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Router`].
    pub struct RouterFuture<F, RB> {
        #[pin]
        state: State<F, RB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, RB> {
        Routed { #[pin] inner: F, resolution: Resolution },
        Waiting { inner: Waiting<RB> },
        Failed { error: Option<ClientError> },
    }
}

impl<F, RB> RouterFuture<F, RB> {
    fn routed(inner: F, resolution: Resolution) -> Self {
        Self { state: State::Routed { inner, resolution } }
    }

    fn waiting(inner: impl Future<Output = Result<Response<RB>, BoxError>> + Send + 'static) -> Self {
        Self { state: State::Waiting { inner: Box::pin(inner) } }
    }

    fn failed(error: ClientError) -> Self {
        Self { state: State::Failed { error: Some(error) } }
    }
}

impl<F, RB, E> Future for RouterFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<RB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Routed { inner, resolution } => Poll::Ready(ready!(inner.poll(cx)).map_err(|e| {
                let service = resolution.service();
                ClientError::new(e.into(), service, Some(went(resolution))).into()
            })),
            StateProj::Waiting { inner } => inner.as_mut().poll(cx),
            StateProj::Failed { error } => Poll::Ready(Err(match error.take() {
                Some(error) => error.into(),
                None => "RouterFuture polled after completion".into(),
            })),
        }
    }
}

impl<F, RB> std::fmt::Debug for RouterFuture<F, RB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterFuture").finish_non_exhaustive()
    }
}

/// Where a request went, from its resolution and progress, for its error.
pub(crate) fn went(resolution: &Resolution) -> Target {
    Target {
        route: resolution.route().cloned(),
        subset: resolution.subset().cloned(),
        endpoint: resolution.endpoint(),
        attempts: resolution.attempts(),
    }
}

/// A seed that differs per client and per run, for when none is configured.
fn seed_from_clock() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CLIENTS: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ CLIENTS.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests;
