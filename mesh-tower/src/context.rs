//! What a server knows about the request it is handling and hands on to the mesh calls the
//! handler makes, without the application copying a header: the cohort, and how many retrying
//! hops the request has passed.
//!
//! [`ContextLayer`] (server side) reads both from the incoming request and runs the handler inside
//! them (a tokio task-local); [`MeshClient`](crate::client::MeshClient) and
//! [`RetryLayer`](crate::client::retry::RetryLayer) read them from there. Calls made from tasks the handler
//! spawns do not inherit the context: wrap those with [`scope`]`(`[`current`]`(), ...)`.
//!
//! # Cohort pinning across hops (off by default)
//!
//! With [`ClientConfig::cohort_header`](crate::client::ClientConfig::cohort_header) set, a client
//! marks each request with the subset it chose (`x-mesh-cohort: v2`), and, inside a cohort, pins
//! requests to the destination's subset of the same name where there is one (an explicit
//! `x-mesh-subset` still wins). So a request routed to `v2` of one service reaches `v2` of the
//! next. A request keeps its cohort's subset on every retry.
//!
//! # Deadlines
//!
//! A request that carries `x-mesh-timeout: <milliseconds>` (or gRPC's `grpc-timeout`) gets a
//! deadline, for the whole call, response body included, so the work stops when the caller has
//! given up:
//!
//! - before the handler answers, [`ContextLayer`] drops the handler's future and answers
//!   `504 Gateway Timeout` (a gRPC request gets `grpc-status: 4`, `DEADLINE_EXCEEDED`, as a
//!   trailers-only response, which is what gRPC clients expect);
//! - after, the response body is dropped where it stands (a streaming handler's stream with it)
//!   and a gRPC call ends with `grpc-status: 4` in trailers; any other response is cut off with
//!   an error, which hyper sends as `RST_STREAM(CANCEL)` (or by closing an HTTP/1.1
//!   connection). grpc-go's server resets the stream at the deadline without a status; mesh
//!   sends the status first, so a caller without a deadline of its own still learns why.
//!
//! The mesh calls the handler makes carry the remaining time on (the client's
//! [deadline](crate::client::deadline) starts from [`remaining`]).
//!
//! # Retry depth
//!
//! Each retrying hop adds one to `x-mesh-retry-depth`; a retry policy whose `max_retry_depth` is
//! reached does not retry (see [`crate::client::retry`]), so a chain of services cannot multiply load by
//! attempts^hops.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderName, Request, Response, StatusCode};
use mesh_core::SubsetName;
use pin_project_lite::pin_project;
use tokio::{task::futures::TaskLocalFuture, time::Instant};
use tower::{Layer, Service};

pub use crate::deadline_body::DeadlineBody;
use crate::deadline_body::{Expiry, SERVER_MESSAGE, Side};

/// The header that carries the cohort.
pub const COHORT_HEADER: HeaderName = HeaderName::from_static("x-mesh-cohort");
/// The header that counts retrying hops upstream.
pub const RETRY_DEPTH_HEADER: HeaderName = HeaderName::from_static("x-mesh-retry-depth");

/// The context of the request being handled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshContext {
    /// The subset the request was routed to by its caller, if the caller said.
    pub cohort: Option<SubsetName>,
    /// How many hops upstream retry this request.
    pub retry_depth: u32,
    /// When the caller stops waiting.
    pub deadline: Option<Instant>,
}

tokio::task_local! {
    static CONTEXT: MeshContext;
}

/// The context of the current task (empty outside a handler).
pub fn current() -> MeshContext {
    CONTEXT.try_with(Clone::clone).unwrap_or_default()
}

/// The cohort of the current task, if any.
pub fn cohort() -> Option<SubsetName> {
    CONTEXT.try_with(|c| c.cohort.clone()).ok().flatten()
}

/// The retry depth of the current task (0 outside a handler).
pub fn retry_depth() -> u32 {
    CONTEXT.try_with(|c| c.retry_depth).unwrap_or(0)
}

/// The time left before the current request's deadline, if it has one.
pub fn remaining() -> Option<Duration> {
    let deadline = CONTEXT.try_with(|c| c.deadline).ok().flatten()?;
    Some(deadline.saturating_duration_since(Instant::now()))
}

/// Runs `future` inside `context` (for tasks a handler spawns).
pub fn scope<F: Future>(context: MeshContext, future: F) -> TaskLocalFuture<MeshContext, F> {
    CONTEXT.scope(context, future)
}

/// Runs each request's handler inside the context its headers carry.
#[derive(Clone, Debug)]
pub struct ContextLayer {
    cohort_header: HeaderName,
}

impl ContextLayer {
    /// Reads the cohort from `x-mesh-cohort`.
    pub fn new() -> Self {
        Self { cohort_header: COHORT_HEADER }
    }

    /// Reads the cohort from `header` (it must match the clients' `cohort_header`).
    pub fn with_cohort_header(header: HeaderName) -> Self {
        Self { cohort_header: header }
    }
}

impl Default for ContextLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for ContextLayer {
    type Service = WithContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithContext { inner, cohort_header: self.cohort_header.clone() }
    }
}

/// The service [`ContextLayer`] makes.
#[derive(Clone, Debug)]
pub struct WithContext<S> {
    inner: S,
    cohort_header: HeaderName,
}

impl<S, B, ResBody> Service<Request<B>> for WithContext<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: http_body::Body + Default,
{
    type Response = Response<DeadlineBody<ResBody>>;
    type Error = S::Error;
    type Future = ContextFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Unparsable values are ignored: these headers are hints, never a reason to fail.
        let header = |name: &HeaderName| request.headers().get(name).and_then(|v| v.to_str().ok());
        let limit = crate::headers::requested(request.headers());
        let deadline = limit.map(|t| Instant::now() + t);
        let context = MeshContext {
            cohort: header(&self.cohort_header).and_then(|v| SubsetName::new(v).ok()),
            retry_depth: header(&RETRY_DEPTH_HEADER).and_then(|v| v.parse().ok()).unwrap_or(0).min(64),
            deadline,
        };
        let grpc = crate::grpc::is_grpc(request.headers());
        let expiry = deadline.zip(limit).map(|(at, limit)| Expiry::new(at, limit, grpc, Side::Server, None));
        let inner = Deadline { future: self.inner.call(request), expiry };
        ContextFuture { inner: CONTEXT.scope(context, inner) }
    }
}

pin_project! {
    /// The response future of [`WithContext`]: the handler's, inside its context, bounded by the
    /// caller's deadline.
    pub struct ContextFuture<F> {
        #[pin]
        inner: TaskLocalFuture<MeshContext, Deadline<F>>,
    }
}

pin_project! {
    // The handler's future, and the caller's deadline if it has one.
    struct Deadline<F> {
        #[pin]
        future: F,
        expiry: Option<Expiry>,
    }
}

impl<F, ResBody, E> Future for Deadline<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: http_body::Body + Default,
{
    type Output = Result<Response<DeadlineBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.future.poll(cx) {
            let expiry = this.expiry.take();
            return Poll::Ready(result.map(|response| response.map(|body| DeadlineBody::new(body, expiry))));
        }
        let Some(expiry) = this.expiry else {
            return Poll::Pending;
        };
        if expiry.poll_passed(cx).is_pending() {
            return Poll::Pending;
        }
        let response = if expiry.is_grpc() {
            tracing::debug!("the caller's deadline passed; the gRPC handler was cancelled");
            crate::grpc::status_response(crate::grpc::code::DEADLINE_EXCEEDED, SERVER_MESSAGE)
        } else {
            tracing::debug!("the caller's deadline passed; the handler was cancelled");
            let mut response = Response::new(DeadlineBody::default());
            *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            response
        };
        Poll::Ready(Ok(response))
    }
}

impl<F, ResBody, E> Future for ContextFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: http_body::Body + Default,
{
    type Output = Result<Response<DeadlineBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}

impl<F> std::fmt::Debug for ContextFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextFuture").finish_non_exhaustive()
    }
}
