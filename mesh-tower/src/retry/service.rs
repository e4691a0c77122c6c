use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use mesh_core::{
    Discovery, ServiceName, SnapshotWatch,
    policy::{RetryBudget, RetryPolicy},
};
use tower::{Layer, Service, ServiceExt};

use super::{
    ATTEMPT_HEADER, AvoidEndpoints, GRPC_PREVIOUS_ATTEMPTS_HEADER,
    budget::Budget,
    replay::{Buffered, ready_prefix},
};
use crate::context::RETRY_DEPTH_HEADER;
use crate::{BoxError, Upstream, balance::Rng, classify, classify::Outcome, route};

/// The response header a gRPC server uses to ask for a delay before the next retry, or none.
const GRPC_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// The body type the retry layer hands to the service below it: a buffered copy for replayable
/// requests, the caller's own body otherwise.
pub type RetryBody = UnsyncBoxBody<Bytes, BoxError>;

/// Retries requests to one destination by its routes' policies. Cheap to clone: the budget and
/// the counters are shared by every service it makes.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    watch: SnapshotWatch,
    /// The budget and the settings it was made with; read without a lock on every request.
    budget: ArcSwapOption<(RetryBudget, Arc<Budget>)>,
    stats: Arc<RetryStats>,
    jitter: Rng,
}

/// What a retry layer did.
#[derive(Debug, Default)]
pub struct RetryStats {
    requests: AtomicU64,
    retries: AtomicU64,
    budget_exhausted: AtomicU64,
    not_replayable: AtomicU64,
}

impl RetryStats {
    /// Original requests.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Retries sent (attempts beyond the first).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Retries the budget refused.
    pub fn budget_exhausted(&self) -> u64 {
        self.budget_exhausted.load(Ordering::Relaxed)
    }

    /// Requests sent once because their body could not be buffered for replay.
    pub fn not_replayable(&self) -> u64 {
        self.not_replayable.load(Ordering::Relaxed)
    }
}

/// The request's deadline passed, retries included: the route's (or service's) timeout, or the
/// request's own `grpc-timeout`/`x-mesh-timeout`, or the time left to the call being handled,
/// whichever is shortest.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the request took longer than its deadline of {0:?} (the route's timeout, or less if the request or the call being handled had less time)"
)]
pub struct RouteTimeout(pub Duration);

impl RetryLayer {
    /// Retries requests to `service`, by the policies its snapshot carries.
    pub fn from_discovery(discovery: &impl Discovery, service: &ServiceName) -> Self {
        Self {
            shared: Arc::new(Shared {
                watch: discovery.watch(service),
                budget: ArcSwapOption::empty(),
                stats: Arc::default(),
                jitter: Rng::new(0x853C_49E6_748F_EA9B),
            }),
        }
    }

    /// The counters of every service this layer made.
    pub fn stats(&self) -> Arc<RetryStats> {
        self.shared.stats.clone()
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry { inner, shared: self.shared.clone() }
    }
}

/// The service [`RetryLayer`] makes.
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl Shared {
    /// The destination's budget; rebuilt when the policy's budget settings change.
    fn budget(&self, settings: &RetryBudget) -> Arc<Budget> {
        if let Some(current) = self.budget.load().as_ref()
            && current.0 == *settings
        {
            return current.1.clone();
        }
        // Racing rebuilds after a change are harmless: one of the fresh budgets stays.
        let fresh = Arc::new(Budget::new(settings.ratio, settings.min_per_second, settings.window));
        self.budget.store(Some(Arc::new((settings.clone(), fresh.clone()))));
        fresh
    }

    /// Full jitter: a uniform wait up to `min(max, base * 2^(retry - 1))`.
    fn backoff(&self, policy: &RetryPolicy, retry: u32) -> Duration {
        let ceiling = policy.backoff.base.saturating_mul(1 << (retry - 1).min(16)).min(policy.backoff.max);
        ceiling.mul_f64((self.jitter.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

type Attempt<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// One call, type-erased: keeps the retry loop's future `Send` without higher-ranked bounds.
fn attempt<S, ResBody>(service: S, request: Request<RetryBody>) -> Attempt<Response<ResBody>, S::Error>
where
    S: Service<Request<RetryBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
{
    Box::pin(service.oneshot(request))
}

/// Buffers a body known to fit (type-erased for the same reason as [`attempt`]).
fn collect<B>(body: B) -> Attempt<Bytes, BoxError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Box::pin(async move { Ok(body.collect().await.map_err(Into::into)?.to_bytes()) })
}

fn boxed<B>(body: B) -> RetryBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

impl<S, B, ResBody> Service<Request<B>> for Retry<S>
where
    S: Service<Request<RetryBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = self.shared.clone();
        // The ready service takes the first attempt; clones take the retries.
        let inner = self.inner.clone();
        let first = std::mem::replace(&mut self.inner, inner);
        Box::pin(async move { shared.run(first, request).await })
    }
}

impl Shared {
    async fn run<S, B, ResBody>(self: Arc<Self>, first: S, request: Request<B>) -> Result<Response<ResBody>, BoxError>
    where
        S: Service<Request<RetryBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        // The policy is read in place from the snapshot this call holds: no copy per request.
        let snapshot = self.watch.current();
        let (policy, timeout) = match &snapshot {
            Some(snapshot) => {
                let route = route::select(snapshot.routes(), &request).map(|i| &snapshot.routes()[i]);
                let policy = route.and_then(|r| r.retry.as_ref()).or(snapshot.policies().retry.as_ref());
                (policy, route.and_then(|r| r.timeout).or(snapshot.policies().timeout))
            }
            None => (None, None),
        };
        // The route's timeout, or less if the caller asked for less (a tonic client's
        // `grpc-timeout`) or the request being handled has less time left.
        let limit = [timeout, crate::context::timeout_of(request.headers()), crate::context::remaining()]
            .into_iter()
            .flatten()
            .min();
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        let attempts = self.clone().attempts(first, request, policy, deadline);
        match (limit, deadline) {
            (Some(limit), Some(deadline)) => {
                tokio::time::timeout_at(deadline, attempts).await.map_err(|_| RouteTimeout(limit))?
            }
            _ => attempts.await,
        }
    }

    async fn attempts<S, B, ResBody>(
        self: Arc<Self>,
        first: S,
        request: Request<B>,
        policy: Option<&RetryPolicy>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Response<ResBody>, BoxError>
    where
        S: Service<Request<RetryBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // How many hops upstream already retry this request; this hop retries only below the
        // policy's depth, and tells the next hop how deep the request now is.
        let depth = crate::context::retry_depth();
        let mut request = request;
        let stamp = |headers: &mut http::HeaderMap| {
            if let Some(deadline) = deadline {
                crate::context::propagate_timeout(
                    headers,
                    deadline.saturating_duration_since(tokio::time::Instant::now()),
                );
            }
        };
        let retrying = policy.is_some_and(|p| p.max_attempts > 1 && depth < p.max_retry_depth);
        let outgoing = depth + u32::from(retrying);
        if outgoing > 0 {
            request.headers_mut().insert(RETRY_DEPTH_HEADER, HeaderValue::from(outgoing));
        }
        let Some(policy) = policy.filter(|_| retrying) else {
            stamp(request.headers_mut());
            return attempt(first, request.map(boxed)).await.map_err(Into::into);
        };
        let budget = self.budget(&policy.budget);
        budget.deposit();
        // Every gRPC call is a POST; as in gRPC's retry design, a policy listing the method's
        // route is the declaration that the method may be retried.
        let grpc = crate::context::is_grpc(request.headers());
        // RFC 9110's idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
        let idempotent = grpc || request.method().is_idempotent();
        if !idempotent && !policy.retry_non_idempotent {
            stamp(request.headers_mut());
            return attempt(first, request.map(boxed)).await.map_err(Into::into);
        }
        let (parts, body) = request.into_parts();
        let hint = body.size_hint();
        let fits = hint.upper().is_some_and(|upper| upper <= policy.max_replay_bytes);
        let bytes = if hint.exact() == Some(0) && body.is_end_stream() {
            // Most GETs: nothing to buffer.
            Bytes::new()
        } else if fits {
            collect(body).await?
        } else {
            // gRPC bodies never say their size; a unary or server-streaming call's one message is
            // ready at once, while a client stream may wait on the application, so only what is
            // ready now is buffered.
            let body = if grpc {
                match ready_prefix(body, policy.max_replay_bytes).await? {
                    Buffered::Whole(bytes) => Ok(bytes),
                    Buffered::Partial(body) => Err(body),
                }
            } else {
                Err(boxed(body))
            };
            match body {
                Ok(bytes) => bytes,
                Err(body) => {
                    self.stats.not_replayable.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::per_service(crate::metrics::RETRY_NOT_REPLAYABLE, self.watch.service());
                    let mut request = Request::from_parts(parts, body);
                    stamp(request.headers_mut());
                    return attempt(first, request).await.map_err(Into::into);
                }
            }
        };

        let mut service = first;
        let mut avoid = Vec::new();
        let mut number = 1u32;
        loop {
            let mut request = Request::from_parts(parts.clone(), boxed(Full::new(bytes.clone())));
            request.headers_mut().insert(ATTEMPT_HEADER, HeaderValue::from(number));
            if grpc && number > 1 {
                request.headers_mut().insert(GRPC_PREVIOUS_ATTEMPTS_HEADER, HeaderValue::from(number - 1));
            }
            // Each attempt says how much of the overall deadline is left.
            request.headers_mut().remove(crate::context::TIMEOUT_HEADER);
            request.headers_mut().remove("grpc-timeout");
            stamp(request.headers_mut());
            if !avoid.is_empty() {
                request.extensions_mut().insert(AvoidEndpoints(avoid.clone()));
            }
            let call = attempt(service.clone(), request);
            let result = match policy.per_try_timeout {
                Some(limit) => match tokio::time::timeout(limit, call).await {
                    Ok(result) => result.map_err(Into::into),
                    Err(elapsed) => Err(BoxError::from(elapsed)),
                },
                None => call.await.map_err(Into::into),
            };
            let outcome = match &result {
                Ok(response) => classify::response(response.status(), response.headers(), &policy.retry_on),
                Err(error) => classify::error(error, &policy.retry_on),
            };
            let Outcome::Retryable(why) = outcome else { return result };
            if number >= policy.max_attempts {
                return result;
            }
            // gRPC server pushback: a delay to wait instead of the backoff, or (any value that is
            // not a count of milliseconds) a request not to retry at all.
            let pushback = match result.as_ref().ok().and_then(|r| r.headers().get(GRPC_PUSHBACK_HEADER)) {
                Some(value) => match value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
                    Some(ms) => Some(Duration::from_millis(ms)),
                    None => return result,
                },
                None => None,
            };
            if !budget.withdraw() {
                self.stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                crate::metrics::per_service(crate::metrics::RETRY_BUDGET_EXHAUSTED, self.watch.service());
                tracing::debug!(attempt = number, ?why, "retry budget exhausted; returning the failure");
                return result;
            }
            if let Ok(response) = &result
                && let Some(upstream) = response.extensions().get::<Upstream>()
            {
                avoid.push(upstream.address);
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            crate::metrics::per_service(crate::metrics::RETRIES, self.watch.service());
            tracing::debug!(attempt = number, ?why, "retrying");
            tokio::time::sleep(pushback.unwrap_or_else(|| self.backoff(policy, number))).await;
            number += 1;
            service = service.clone();
        }
    }
}
