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
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use mesh_core::policy::{RetryBudget, RetryPolicy};
use tower::{Layer, Service, ServiceExt};

use super::{
    RetryBody,
    budget::Budget,
    replay::{Buffered, ready_prefix},
};
use crate::{
    BoxError, classify,
    client::{
        balance::Rng,
        deadline::{self, Deadline, PerTryTimeout},
        resolution::Resolution,
    },
    context::RETRY_DEPTH_HEADER,
    future::PassThrough,
    grpc,
};

/// Retries requests by their routes' policies. Cheap to clone: the budget and the counters are
/// shared by every service it makes, so use one layer per destination.
#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
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

impl Default for RetryLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryLayer {
    /// The layer; each request's policy comes from its resolution.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
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

/// Buffers a body known to fit (type-erased: keeps the retry loop's future `Send` without
/// higher-ranked bounds on the body).
fn collect<B>(body: B) -> Attempt<Bytes, BoxError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Box::pin(async move { Ok(body.collect().await.map_err(Into::into)?.to_bytes()) })
}

impl<S, B, ResBody> Service<Request<B>> for Retry<S>
where
    S: Service<Request<RetryBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = PassThrough<S::Future, Response<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        self.shared.stats.requests.fetch_add(1, Ordering::Relaxed);
        // How many hops upstream already retry this request; this hop retries only below the
        // policy's depth, and tells the next hop how deep the request now is.
        let depth = crate::context::retry_depth();
        let resolution = request.extensions().get::<Resolution>().cloned();
        let policy = resolution.as_ref().and_then(Resolution::retry_policy);
        let retrying = policy.is_some_and(|p| p.max_attempts > 1 && depth < p.max_retry_depth);
        let outgoing = depth + u32::from(retrying);
        if outgoing > 0 {
            request.headers_mut().insert(RETRY_DEPTH_HEADER, crate::headers::small_number(outgoing));
        }
        let per_try = policy.and_then(|p| p.per_try_timeout);
        let (Some(resolution), true) = (resolution.clone(), retrying || per_try.is_some()) else {
            // Nothing to retry and no per-try timeout: the ready inner service takes the request
            // as it is, unboxed.
            return PassThrough::direct(self.inner.call(request.map(RetryBody::original)), None);
        };
        let shared = self.shared.clone();
        // The ready service takes the first attempt; clones take the retries.
        let inner = self.inner.clone();
        let first = std::mem::replace(&mut self.inner, inner);
        PassThrough::boxed(async move { shared.run(first, request, resolution, retrying).await })
    }
}

impl Shared {
    async fn run<S, B, ResBody>(
        self: Arc<Self>,
        first: S,
        request: Request<B>,
        resolution: Resolution,
        retrying: bool,
    ) -> Result<Response<ResBody>, BoxError>
    where
        S: Service<Request<RetryBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let Some(policy) = resolution.retry_policy() else {
            return first.oneshot(request.map(RetryBody::original)).await.map_err(Into::into);
        };
        if !retrying {
            return per_try(first, request.map(RetryBody::original), policy.per_try_timeout).await;
        }
        let budget = self.budget(&policy.budget);
        budget.deposit();
        // Every gRPC call is a POST; as in gRPC's retry design, a policy listing the method's
        // route is the declaration that the method may be retried.
        let grpc = grpc::is_grpc(request.headers());
        // RFC 9110's idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE).
        let idempotent = grpc || request.method().is_idempotent();
        if !idempotent && !policy.retry_non_idempotent {
            return per_try(first, request.map(RetryBody::original), policy.per_try_timeout).await;
        }
        let (parts, body) = request.into_parts();
        let bytes = match self.replayable(body, policy, grpc, resolution.service()).await? {
            Ok(bytes) => bytes,
            Err(body) => return per_try(first, Request::from_parts(parts, body), policy.per_try_timeout).await,
        };
        let mut service = first;
        let mut number = 1u32;
        loop {
            let mut request = Request::from_parts(parts.clone(), RetryBody::replay(bytes.clone()));
            if grpc && number > 1 {
                request.headers_mut().insert(grpc::PREVIOUS_ATTEMPTS, crate::headers::small_number(number - 1));
            }
            let result = per_try(service.clone(), request, policy.per_try_timeout).await;
            let class = match &result {
                Ok(response) => match classify::head(response.status(), response.headers()) {
                    classify::ClassifyHead::Ready(class) => class,
                    // The status is in the trailers: the response is streaming, so committed.
                    classify::ClassifyHead::RequiresEos { .. } => return result,
                },
                Err(error) => classify::error(error),
            };
            let Some(why) = class.retryable(&policy.retry_on) else { return result };
            if number >= policy.max_attempts {
                return result;
            }
            // gRPC server pushback: a delay to wait instead of the backoff, or (any value that is
            // not a count of milliseconds) a request not to retry at all.
            let pushback = match result.as_ref().ok().and_then(|r| r.headers().get(grpc::RETRY_PUSHBACK)) {
                Some(value) => match value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
                    Some(ms) => Some(Duration::from_millis(ms)),
                    None => return result,
                },
                None => None,
            };
            if !budget.withdraw() {
                self.stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                crate::metrics::per_service(crate::metrics::RETRY_BUDGET_EXHAUSTED, resolution.service());
                tracing::debug!(attempt = number, ?why, "retry budget exhausted; returning the failure");
                return result;
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            crate::metrics::per_service(crate::metrics::RETRIES, resolution.service());
            tracing::debug!(attempt = number, ?why, "retrying");
            tokio::time::sleep(pushback.unwrap_or_else(|| self.backoff(policy, number))).await;
            number += 1;
            service = service.clone();
        }
    }

    /// The body as bytes to replay, or (too large, or a client stream still being written) as a
    /// body to send once.
    async fn replayable<B>(
        &self,
        body: B,
        policy: &RetryPolicy,
        grpc: bool,
        service: &mesh_core::ServiceName,
    ) -> Result<Result<Bytes, RetryBody<B>>, BoxError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let hint = body.size_hint();
        if hint.exact() == Some(0) && body.is_end_stream() {
            // Most GETs: nothing to buffer.
            return Ok(Ok(Bytes::new()));
        }
        if hint.upper().is_some_and(|upper| upper <= policy.max_replay_bytes) {
            return Ok(Ok(collect(body).await?));
        }
        // gRPC bodies never say their size; a unary or server-streaming call's one message is
        // ready at once, while a client stream may wait on the application, so only what is
        // ready now is buffered.
        let body = if grpc {
            match ready_prefix(body, policy.max_replay_bytes).await? {
                Buffered::Whole(bytes) => return Ok(Ok(bytes)),
                Buffered::Partial(body) => RetryBody::partial(body),
            }
        } else {
            RetryBody::original(body)
        };
        self.stats.not_replayable.fetch_add(1, Ordering::Relaxed);
        crate::metrics::per_service(crate::metrics::RETRY_NOT_REPLAYABLE, service);
        Ok(Err(body))
    }
}

/// One attempt, bounded by the per-try timeout when that comes before the request's deadline.
async fn per_try<S, B, ResBody>(
    service: S,
    mut request: Request<RetryBody<B>>,
    limit: Option<Duration>,
) -> Result<Response<ResBody>, BoxError>
where
    S: Service<Request<RetryBody<B>>, Response = Response<ResBody>> + Send + 'static,
    B: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let request_deadline = request.extensions().get::<Deadline>().copied();
    match deadline::attempt_deadline(request_deadline, limit) {
        Some((at, true)) => {
            // The attempt knows its own deadline: what it tells the next hop, and how the
            // endpoint accounts for it if it is cut off.
            request.extensions_mut().insert(at);
            let call = service.oneshot(request);
            match tokio::time::timeout_at(at.instant(), call).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(PerTryTimeout(limit.unwrap_or_default()).into()),
            }
        }
        _ => service.oneshot(request).await.map_err(Into::into),
    }
}
