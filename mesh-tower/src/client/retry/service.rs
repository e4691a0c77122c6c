use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
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
    grpc,
};
use pin_project_lite::pin_project;

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

/// How a request's body can be sent again.
enum Replay<B> {
    /// Buffered now: every attempt sends a copy.
    Now(Bytes),
    /// Its size is within the limit, but not all of it is here yet: buffered before the first
    /// attempt.
    Later(Attempt<Bytes, BoxError>),
    /// It cannot be: sent once.
    Never(RetryBody<B>),
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
    type Future = RetryFuture<S::Future, Response<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let resolution = request.extensions().get::<Resolution>().cloned();
        match self.shared.plan(request, resolution.as_ref()) {
            // Nothing to retry and no per-try timeout: the ready inner service takes the request
            // as it is, unboxed.
            Plan::Once(request, None) => RetryFuture::direct(self.inner.call(request)),
            Plan::Once(request, Some(limit)) => {
                RetryFuture::boxed(per_try(take_ready(&mut self.inner), request, Some(limit)))
            }
            Plan::Failed(error) => RetryFuture::boxed(std::future::ready(Err(error))),
            Plan::Retrying(mut copy, first_head, buffering) => {
                if buffering.is_some() || copy.per_try_timeout().is_some() {
                    // The body still arriving, or attempts that race their own timer: the general
                    // loop.
                    let first = take_ready(&mut self.inner);
                    let service = self.inner.clone();
                    return RetryFuture::boxed(async move {
                        if let Some(buffering) = buffering {
                            copy.set_body(buffering.await?);
                        }
                        Retrying { copy, service }.run(first, first_head).await
                    });
                }
                // The first attempt: the ready inner service takes a copy of the request,
                // unboxed; what a retry needs is kept aside (boxed, small) for the few requests
                // that need one.
                let request = copy.first_request(first_head);
                let retry = Retrying { copy, service: self.inner.clone() };
                RetryFuture::first(self.inner.call(request), Box::new(retry))
            }
        }
    }
}

/// How a request's attempts go, decided once when it enters the retry layer.
// A plan is returned and matched at once, never stored: boxing a variant would cost every call
// an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Plan<B> {
    /// Sent once, bounded by this per-try timeout if any.
    Once(Request<RetryBody<B>>, Option<Duration>),
    /// May be retried: the copy every retry is made from, the first attempt's head (the
    /// request's own, so the headers the attempt adds fit in the map it already has; a clone's
    /// map has no room to spare), and the body's buffering when it is still arriving (the copy's
    /// body is empty until it ends).
    Retrying(RetryCopy<B>, http::request::Parts, Option<Attempt<Bytes, BoxError>>),
    /// The body could not be read.
    Failed(BoxError),
}

impl RetryLayer {
    /// How `request`, resolved to `resolution`, is sent: counts it, writes the hop guard's
    /// header, deposits into the budget, and buffers what a retry replays.
    pub(crate) fn plan<B>(&self, request: Request<B>, resolution: Option<&Resolution>) -> Plan<B>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.shared.plan(request, resolution)
    }
}

impl Shared {
    fn plan<B>(self: &Arc<Self>, mut request: Request<B>, resolution: Option<&Resolution>) -> Plan<B>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        // How many hops upstream already retry this request; this hop retries only below the
        // policy's depth, and tells the next hop how deep the request now is.
        let depth = crate::context::retry_depth();
        let policy = resolution.and_then(Resolution::retry_policy);
        let retrying = policy.is_some_and(|p| p.max_attempts > 1 && depth < p.max_retry_depth);
        let outgoing = depth + u32::from(retrying);
        if outgoing > 0 {
            request.headers_mut().insert(RETRY_DEPTH_HEADER, crate::headers::small_number(outgoing));
        }
        let per_try_timeout = policy.and_then(|p| p.per_try_timeout);
        let (Some(resolution), Some(policy)) = (resolution, policy) else {
            return Plan::Once(request.map(RetryBody::original), None);
        };
        if !retrying {
            return Plan::Once(request.map(RetryBody::original), per_try_timeout);
        }
        // Every gRPC call is a POST; as in gRPC's retry design, a policy listing the method's
        // route is the declaration that the method may be retried. Otherwise only RFC 9110's
        // idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), unless the policy says.
        let grpc = grpc::is_grpc(request.headers());
        let replayable = grpc || request.method().is_idempotent() || policy.retry_non_idempotent;
        // Every original request of a retrying route deposits into its budget.
        let budget = self.budget(&policy.budget);
        budget.deposit();
        let (parts, body) = request.into_parts();
        if !replayable {
            return Plan::Once(Request::from_parts(parts, RetryBody::original(body)), per_try_timeout);
        }
        let (bytes, buffering) = match self.replay(body, policy, grpc, resolution.service()) {
            Ok(Replay::Now(bytes)) => (bytes, None),
            Ok(Replay::Later(buffering)) => (Bytes::new(), Some(buffering)),
            Ok(Replay::Never(body)) => return Plan::Once(Request::from_parts(parts, body), per_try_timeout),
            Err(error) => return Plan::Failed(error),
        };
        let copy = RetryCopy {
            budget,
            shared: self.clone(),
            parts: parts.clone(),
            bytes,
            resolution: resolution.clone(),
            grpc,
            _body: std::marker::PhantomData,
        };
        Plan::Retrying(copy, parts, buffering)
    }
}

/// The ready service `inner`, for a boxed future to call; a clone takes its place.
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

impl Shared {
    /// How `body` can be sent again: buffered at once when it is all here and within
    /// `max_replay_bytes` (most requests: an empty GET, a unary gRPC message), later when its
    /// size is within the limit but it is still arriving, never when it is larger, of unknown size
    /// (counted), or a gRPC client stream still being written.
    fn replay<B>(
        &self,
        body: B,
        policy: &RetryPolicy,
        grpc: bool,
        service: &mesh_core::ServiceName,
    ) -> Result<Replay<B>, BoxError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let hint = body.size_hint();
        if hint.exact() == Some(0) && body.is_end_stream() {
            return Ok(Replay::Now(Bytes::new()));
        }
        let bounded = hint.upper().is_some_and(|upper| upper <= policy.max_replay_bytes);
        if bounded || grpc {
            // gRPC bodies never say their size; a unary or server-streaming call's one message is
            // ready at once, while a client stream may wait on the application, so only what is
            // ready now is buffered.
            return Ok(match ready_prefix(body, policy.max_replay_bytes)? {
                Buffered::Whole(bytes) => Replay::Now(bytes),
                Buffered::Partial(rest) if bounded => Replay::Later(collect(rest)),
                Buffered::Partial(rest) => self.not_replayable(RetryBody::partial(rest), service),
            });
        }
        Ok(self.not_replayable(RetryBody::original(body), service))
    }

    fn not_replayable<B>(&self, body: RetryBody<B>, service: &mesh_core::ServiceName) -> Replay<B> {
        self.stats.not_replayable.fetch_add(1, Ordering::Relaxed);
        crate::metrics::per_service(crate::metrics::RETRY_NOT_REPLAYABLE, service);
        Replay::Never(body)
    }
}

/// Everything a retry needs that the first attempt does not consume: the head and body every
/// attempt is copied from, and what decides whether there is a next one.
pub(crate) struct RetryCopy<B> {
    shared: Arc<Shared>,
    parts: http::request::Parts,
    bytes: Bytes,
    resolution: Resolution,
    budget: Arc<Budget>,
    grpc: bool,
    _body: std::marker::PhantomData<fn() -> B>,
}

/// The retries of one request through the service below the layer.
struct Retrying<S, B> {
    copy: RetryCopy<B>,
    service: S,
}

/// What to do after an attempt.
enum Next {
    /// Return its result.
    Return,
    /// Wait this long, then send the next attempt.
    RetryAfter(Duration),
}

impl<S, B, ResBody> Retrying<S, B>
where
    S: Service<Request<RetryBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    /// Every attempt, the first with `first` (a ready service) and `head`.
    async fn run(self, first: S, head: http::request::Parts) -> Result<Response<ResBody>, BoxError> {
        let result = per_try(first, self.copy.first_request(head), self.copy.per_try_timeout()).await;
        self.after(result, 1).await
    }

    /// After attempt `number` gave `result`: retries while the policy and the budget allow.
    async fn after(
        self,
        result: Result<Response<ResBody>, BoxError>,
        number: u32,
    ) -> Result<Response<ResBody>, BoxError> {
        let (copy, service) = (&self.copy, self.service);
        let limit = copy.per_try_timeout();
        copy.retry(result, number, move |request| per_try(service.clone(), request, limit)).await
    }
}

impl<B> RetryCopy<B> {
    /// After attempt `number` gave `result`: sends the next attempts with `send`, after each
    /// one's backoff or pushback, while the policy and the budget allow; the last result.
    pub(crate) async fn retry<ResBody, F, Sent>(
        &self,
        mut result: Result<Response<ResBody>, BoxError>,
        mut number: u32,
        mut send: F,
    ) -> Result<Response<ResBody>, BoxError>
    where
        F: FnMut(Request<RetryBody<B>>) -> Sent,
        Sent: Future<Output = Result<Response<ResBody>, BoxError>>,
    {
        loop {
            match self.next(&result, number) {
                Next::Return => return result,
                Next::RetryAfter(delay) => tokio::time::sleep(delay).await,
            }
            number += 1;
            result = send(self.request(number)).await;
        }
    }

    /// The first attempt's request: `head` (the plan's), with the body a retry replays.
    pub(crate) fn first_request(&self, head: http::request::Parts) -> Request<RetryBody<B>> {
        Request::from_parts(head, RetryBody::replay(self.bytes.clone()))
    }

    /// Attempt `number`'s copy of the request.
    pub(crate) fn request(&self, number: u32) -> Request<RetryBody<B>> {
        let mut request = Request::from_parts(self.parts.clone(), RetryBody::replay(self.bytes.clone()));
        if self.grpc && number > 1 {
            request.headers_mut().insert(grpc::PREVIOUS_ATTEMPTS, crate::headers::small_number(number - 1));
        }
        request
    }

    /// The body, once buffered (a copy planned while it was still arriving has none until then).
    pub(crate) fn set_body(&mut self, bytes: Bytes) {
        self.bytes = bytes;
    }

    /// The per-try timeout of the route's policy.
    pub(crate) fn per_try_timeout(&self) -> Option<Duration> {
        self.resolution.retry_policy().and_then(|p| p.per_try_timeout)
    }

    /// Whether the outcome may be retried at all (no side effects: the budget is not touched).
    pub(crate) fn retryable<ResBody>(&self, result: &Result<Response<ResBody>, BoxError>, number: u32) -> bool {
        let Some(policy) = self.resolution.retry_policy() else { return false };
        let class = match result {
            Ok(response) => match classify::head(response.status(), response.headers()) {
                classify::ClassifyHead::Ready(class) => class,
                // The status is in the trailers: the response is streaming, so committed.
                classify::ClassifyHead::RequiresEos { .. } => return false,
            },
            Err(error) => classify::error(error),
        };
        class.retryable(&policy.retry_on).is_some() && number < policy.max_attempts
    }

    /// The decision after attempt `number`: pushback, then the budget (withdrawn here).
    fn next<ResBody>(&self, result: &Result<Response<ResBody>, BoxError>, number: u32) -> Next {
        let Some(policy) = self.resolution.retry_policy() else { return Next::Return };
        if !self.retryable(result, number) {
            return Next::Return;
        }
        // gRPC server pushback: a delay to wait instead of the backoff, or (any value that is
        // not a count of milliseconds) a request not to retry at all.
        let pushback = match result.as_ref().ok().and_then(|r| r.headers().get(grpc::RETRY_PUSHBACK)) {
            Some(value) => match value.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
                Some(ms) => Some(Duration::from_millis(ms)),
                None => return Next::Return,
            },
            None => None,
        };
        let service = self.resolution.service();
        if !self.budget.withdraw() {
            self.shared.stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
            crate::metrics::per_service(crate::metrics::RETRY_BUDGET_EXHAUSTED, service);
            tracing::debug!(attempt = number, "retry budget exhausted; returning the failure");
            return Next::Return;
        }
        self.shared.stats.retries.fetch_add(1, Ordering::Relaxed);
        crate::metrics::per_service(crate::metrics::RETRIES, service);
        tracing::debug!(attempt = number, "retrying");
        Next::RetryAfter(pushback.unwrap_or_else(|| self.shared.backoff(policy, number)))
    }
}

/// What the first attempt's future hands its result to.
trait AfterFirst<T>: Send {
    /// The result to return, or the retries to run.
    fn after_first(self: Box<Self>, result: Result<T, BoxError>) -> Result<Result<T, BoxError>, Boxed<T>>;
}

impl<S, B, ResBody> AfterFirst<Response<ResBody>> for Retrying<S, B>
where
    S: Service<Request<RetryBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Send + 'static,
{
    fn after_first(
        self: Box<Self>,
        result: Result<Response<ResBody>, BoxError>,
    ) -> Result<Result<Response<ResBody>, BoxError>, Boxed<Response<ResBody>>> {
        if self.copy.retryable(&result, 1) { Err(Box::pin(self.after(result, 1))) } else { Ok(result) }
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Retry`]: the inner service's own future, unboxed, for a request
    /// sent once and for the first attempt of one that may be retried; a boxed loop only once a
    /// retry is needed (or for attempts with a per-try timeout, or bodies still arriving).
    pub struct RetryFuture<F, T> {
        #[pin]
        state: State<F, T>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, T> {
        Direct { #[pin] inner: F },
        First { #[pin] attempt: F, retry: Option<Box<dyn AfterFirst<T>>> },
        Boxed { inner: Boxed<T> },
    }
}

impl<F, T> RetryFuture<F, T> {
    fn direct(inner: F) -> Self {
        Self { state: State::Direct { inner } }
    }

    fn first(attempt: F, retry: Box<dyn AfterFirst<T>>) -> Self {
        Self { state: State::First { attempt, retry: Some(retry) } }
    }

    fn boxed(inner: impl Future<Output = Result<T, BoxError>> + Send + 'static) -> Self {
        Self { state: State::Boxed { inner: Box::pin(inner) } }
    }
}

impl<F, T, E> Future for RetryFuture<F, T>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let retries = match self.as_mut().project().state.project() {
            StateProj::Direct { inner } => return inner.poll(cx).map_err(Into::into),
            StateProj::Boxed { inner } => return inner.as_mut().poll(cx),
            StateProj::First { attempt, retry } => {
                let result = ready!(attempt.poll(cx)).map_err(Into::into);
                let Some(retry) = retry.take() else { return Poll::Ready(result) };
                match retry.after_first(result) {
                    Ok(result) => return Poll::Ready(result),
                    Err(retries) => retries,
                }
            }
        };
        self.as_mut().project().state.set(State::Boxed { inner: retries });
        self.poll(cx)
    }
}

impl<F, T> std::fmt::Debug for RetryFuture<F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryFuture").finish_non_exhaustive()
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

#[cfg(test)]
mod tests;
