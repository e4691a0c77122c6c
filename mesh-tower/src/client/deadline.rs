//! Deadlines, client side, in one place: the route's timeout, the per-try timeout, and the time
//! left to the call being handled, whether or not retries are configured.
//!
//! [`DeadlineLayer`] sits right under the router in the client stack. It gives each request one
//! deadline, the earliest of:
//!
//! - the matched route's `timeout` (else the service's), from the request's
//!   [`Resolution`];
//! - the time the request itself asks for (`grpc-timeout`, as tonic sets it, or `x-mesh-timeout`);
//! - the time left to the request being handled, when the call is made from a handler (see
//!   [`crate::context`]);
//!
//! puts it in the request's extensions as a [`Deadline`], and fails the request with
//! [`RouteTimeout`] when it passes, retries included. The retry layer bounds each attempt by the
//! route's `per_try_timeout` within that deadline ([`PerTryTimeout`]). Every attempt tells the
//! next hop how much time is left (`grpc-timeout` on gRPC, `x-mesh-timeout` otherwise), so the
//! whole call chain stops when the first caller stops waiting. Only requests with a deadline
//! carry the header.
//!
//! ```
//! # use std::time::Duration;
//! use mesh_tower::client::deadline::{Deadline, DeadlineLayer};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = DeadlineLayer::new().layer(tower::service_fn(|req: http::Request<()>| async move {
//!     // Below the layer every request knows when its caller stops waiting.
//!     let deadline = req.extensions().get::<Deadline>().copied();
//!     Ok::<_, std::convert::Infallible>(deadline.map(|d| d.remaining()))
//! }));
//! let request = http::Request::builder().header("grpc-timeout", "250m").body(()).unwrap();
//! let left = svc.oneshot(request).await.unwrap().unwrap();
//! assert!(left <= Duration::from_millis(250));
//! # }
//! ```

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::Request;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use super::resolution::Resolution;
use crate::{BoxError, headers::requested};

pub use crate::headers::TIMEOUT_HEADER;

/// In a request's extensions below [`DeadlineLayer`]: when its caller stops waiting. On an
/// attempt, the earlier of that and the attempt's per-try timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    /// A deadline at `at`.
    pub fn at(at: Instant) -> Self {
        Self { at }
    }

    /// When it passes.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// The time left (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Whether it passed.
    pub fn has_passed(&self) -> bool {
        Instant::now() >= self.at
    }
}

pub use crate::failure::{PerTryTimeout, RouteTimeout};

/// The deadline of one attempt: the request's, or sooner by the per-try timeout. The bool says
/// whether the per-try timeout is the one that binds.
pub(crate) fn attempt_deadline(request: Option<Deadline>, per_try: Option<Duration>) -> Option<(Deadline, bool)> {
    let per_try = per_try.map(|limit| Deadline::at(Instant::now() + limit));
    match (request, per_try) {
        (Some(r), Some(p)) if p.at < r.at => Some((p, true)),
        (Some(r), _) => Some((r, false)),
        (None, Some(p)) => Some((p, true)),
        (None, None) => None,
    }
}

/// Gives every request its deadline. See the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer {
    _private: (),
}

impl DeadlineLayer {
    /// The layer; the timeouts come from each request's resolution and headers.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner }
    }
}

/// The service [`DeadlineLayer`] makes.
#[derive(Clone, Debug)]
pub struct DeadlineService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for DeadlineService<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let route = request.extensions().get::<Resolution>().and_then(Resolution::timeout);
        let limit = [route, requested(request.headers()), crate::context::remaining()].into_iter().flatten().min();
        let Some(limit) = limit else {
            return DeadlineFuture { inner: self.inner.call(request), sleep: None, limit: Duration::ZERO };
        };
        let at = Instant::now() + limit;
        request.extensions_mut().insert(Deadline::at(at));
        let inner = self.inner.call(request);
        DeadlineFuture { inner, sleep: Some(tokio::time::sleep_until(at)), limit }
    }
}

pin_project! {
    /// The response future of [`DeadlineService`].
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        limit: Duration,
    }
}

impl<F, T, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
            // Dropping the inner future now cancels every attempt below; each one records itself
            // as timed out (see `client::endpoint`).
            return Poll::Ready(Err(RouteTimeout(*this.limit).into()));
        }
        Poll::Pending
    }
}

impl<F> std::fmt::Debug for DeadlineFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineFuture").field("limit", &self.limit).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_the_request_without_any_retry_policy() {
        let slow = tower::service_fn(|_: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, Infallible>(())
        });
        let request = Request::builder().header("x-mesh-timeout", "300").body(()).unwrap();
        let started = Instant::now();
        let error = DeadlineLayer::new().layer(slow).oneshot(request).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(error.downcast_ref::<RouteTimeout>().unwrap().0, Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn per_try_binds_only_when_sooner() {
        let request = Deadline::at(Instant::now() + Duration::from_millis(100));
        let (d, per_try) = attempt_deadline(Some(request), Some(Duration::from_millis(30))).unwrap();
        assert!(per_try && d.remaining() == Duration::from_millis(30));
        let (d, per_try) = attempt_deadline(Some(request), Some(Duration::from_secs(1))).unwrap();
        assert!(!per_try && d == request);
        assert!(attempt_deadline(None, None).is_none());
    }
}
