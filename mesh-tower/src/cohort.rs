//! Cohort pinning across hops: a request routed to subset `v2` of one service reaches `v2` of the
//! services it calls next, where they have one. Off by default.
//!
//! Two halves, both opt-in:
//!
//! - the client ([`ClientConfig::cohort_header`](crate::client::ClientConfig::cohort_header)) marks
//!   each outgoing request with the subset it chose (`x-mesh-cohort: v2`), and, when the current
//!   task belongs to a cohort, pins the request to the destination's subset of the same name if
//!   there is one (an explicit `x-mesh-subset` still wins; a destination without that subset splits
//!   as usual);
//! - the server ([`CohortLayer`]) reads the header of each incoming request and runs the handler
//!   inside that cohort, so the mesh calls the handler makes carry it on without the application
//!   copying a header.
//!
//! The cohort is a tokio task-local: calls made from tasks the handler spawns do not inherit it;
//! wrap them with [`scope`]`(`[`current`]`(), ...)`.
//!
//! A request keeps its cohort's subset on every retry (the pin is applied on each attempt).

use std::{
    future::Future,
    task::{Context, Poll},
};

use http::{HeaderName, Request};
use mesh_core::SubsetName;
use tokio::task::futures::TaskLocalFuture;
use tower::{Layer, Service};

tokio::task_local! {
    static COHORT: Option<SubsetName>;
}

/// The cohort the current task belongs to, if any.
pub fn current() -> Option<SubsetName> {
    COHORT.try_with(Clone::clone).ok().flatten()
}

/// Runs `future` inside `cohort` (for tasks a handler spawns).
pub fn scope<F: Future>(cohort: Option<SubsetName>, future: F) -> TaskLocalFuture<Option<SubsetName>, F> {
    COHORT.scope(cohort, future)
}

/// Runs each request's handler inside the cohort its `x-mesh-cohort` header names.
#[derive(Clone, Debug)]
pub struct CohortLayer {
    header: HeaderName,
}

impl CohortLayer {
    /// Reads the cohort from `x-mesh-cohort`.
    pub fn new() -> Self {
        Self { header: HeaderName::from_static("x-mesh-cohort") }
    }

    /// Reads the cohort from `header` (it must match the clients' `cohort_header`).
    pub fn with_header(header: HeaderName) -> Self {
        Self { header }
    }
}

impl Default for CohortLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for CohortLayer {
    type Service = Cohort<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Cohort { inner, header: self.header.clone() }
    }
}

/// The service [`CohortLayer`] makes.
#[derive(Clone, Debug)]
pub struct Cohort<S> {
    inner: S,
    header: HeaderName,
}

impl<S, B> Service<Request<B>> for Cohort<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TaskLocalFuture<Option<SubsetName>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // An unparsable value is no cohort: the header is a hint, never a reason to fail.
        let cohort =
            request.headers().get(&self.header).and_then(|v| v.to_str().ok()).and_then(|v| SubsetName::new(v).ok());
        COHORT.scope(cohort, self.inner.call(request))
    }
}
