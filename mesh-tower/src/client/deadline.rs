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
//! puts it in the request's extensions as a [`Deadline`], and ends the call when it passes,
//! retries included, whether or not the response has started:
//!
//! - before the response head, the request fails with [`RouteTimeout`];
//! - after it, the response body ends the call ([`DeadlineBody`]): a gRPC call with
//!   `grpc-status: 4` (`DEADLINE_EXCEEDED`) in trailers, what tonic turns into
//!   `Status::deadline_exceeded` and grpc-go's client reports for its own deadline; any other
//!   with a [`RouteTimeout`] error from the body. Either way the HTTP/2 stream is reset with
//!   `CANCEL`, the request stream included ([`CancelOnDeadline`]), so the server stops too.
//!
//! For plain HTTP this is what Envoy's route `timeout` does: it runs until the response is
//! complete, body included, and a response cut off after its head is reset rather than answered
//! 504. (Envoy starts counting when the request is complete; mesh counts from the call, as a
//! gRPC deadline does, since a mesh client sends requests as they are written.)
//!
//! The retry layer bounds each attempt by the
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
//! let svc = DeadlineLayer::new().layer(tower::service_fn(|req: http::Request<_>| async move {
//!     // Below the layer every request knows when its caller stops waiting.
//!     let deadline = req.extensions().get::<Deadline>().copied();
//!     let left = deadline.map(|d| d.remaining()).unwrap_or_default();
//!     assert!(left > Duration::ZERO && left <= Duration::from_millis(250));
//!     let body = http_body_util::Full::<bytes::Bytes>::from(format!("{left:?}"));
//!     Ok::<_, std::convert::Infallible>(http::Response::new(body))
//! }));
//! let request = http::Request::builder().header("grpc-timeout", "250m").body(http_body_util::Empty::<bytes::Bytes>::new());
//! let response = svc.oneshot(request.unwrap()).await.unwrap();
//! // The deadline covers the body too, until it is complete.
//! assert!(response.extensions().get::<Deadline>().is_some());
//! let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
//! assert!(!body.is_empty());
//! # }
//! ```

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{Request, Response};
use tokio::{sync::oneshot, time::Instant};
use tower::{Layer, Service};

use super::resolution::Resolution;
pub use crate::deadline_body::{CancelOnDeadline, Deadline, DeadlineBody};
pub use crate::failure::{PerTryTimeout, RouteTimeout};
pub use crate::headers::TIMEOUT_HEADER;
use crate::{
    BoxError,
    deadline_body::{Expiry, Side},
    headers::requested,
};

/// The deadline of one attempt: the request's, or sooner by the per-try timeout. The bool says
/// whether the per-try timeout is the one that binds.
pub(crate) fn attempt_deadline(request: Option<Deadline>, per_try: Option<Duration>) -> Option<(Deadline, bool)> {
    let per_try = per_try.map(|limit| Deadline::at(Instant::now() + limit));
    match (request, per_try) {
        (Some(r), Some(p)) if p.instant() < r.instant() => Some((p, true)),
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

impl<S, B, ResBody> Service<Request<B>> for DeadlineService<S>
where
    S: Service<Request<CancelOnDeadline<B>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    B: http_body::Body,
    ResBody: http_body::Body,
{
    type Response = Response<DeadlineBody<ResBody>>;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let route = request.extensions().get::<Resolution>().and_then(Resolution::timeout);
        let (mut request, expiry) = arm(request, route);
        if let Some(expiry) = &expiry {
            request.extensions_mut().insert(expiry.deadline());
        }
        DeadlineFuture::new(self.inner.call(request), expiry)
    }
}

/// The call's deadline, armed: the earliest of the route's timeout `route`, the request's own and
/// the handler's time left; `None` when none applies. A request body still being written is
/// cancelled with the call.
pub(crate) fn arm<B: http_body::Body>(
    request: Request<B>,
    route: Option<Duration>,
) -> (Request<CancelOnDeadline<B>>, Option<Expiry>) {
    let limit = [route, requested(request.headers()), crate::context::remaining()].into_iter().flatten().min();
    let Some(limit) = limit else {
        return (request.map(CancelOnDeadline::open), None);
    };
    let at = Instant::now() + limit;
    let grpc = crate::grpc::is_grpc(request.headers());
    // A request body already complete has nothing left to cancel.
    let (cancel, request) = if request.body().is_end_stream() {
        (None, request.map(CancelOnDeadline::open))
    } else {
        let (cancel, cancelled) = oneshot::channel();
        (Some(cancel), request.map(|body| CancelOnDeadline::new(body, cancelled)))
    };
    (request, Some(Expiry::new(at, limit, grpc, Side::Client, cancel)))
}

pin_project_lite::pin_project! {
    /// The response future of [`DeadlineService`].
    pub struct DeadlineFuture<F> {
        #[pin]
        inner: F,
        expiry: Option<Expiry>,
    }
}

impl<F> DeadlineFuture<F> {
    /// `inner`, ended by `expiry` if it passes first.
    pub(crate) fn new(inner: F, expiry: Option<Expiry>) -> Self {
        Self { inner, expiry }
    }
}

impl<F, ResBody, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
    ResBody: http_body::Body,
{
    type Output = Result<Response<DeadlineBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            let expiry = this.expiry.take();
            let response = result.map_err(Into::into)?;
            let deadline = expiry.as_ref().map(Expiry::deadline);
            let mut response = response.map(|body| DeadlineBody::new(body, expiry));
            // Telemetry reads it to count a body the deadline ended as timed out.
            if let Some(deadline) = deadline.filter(|_| response.body().is_guarded()) {
                response.extensions_mut().insert(deadline);
            }
            return Poll::Ready(Ok(response));
        }
        let Some(expiry) = this.expiry.as_mut() else {
            return Poll::Pending;
        };
        ready!(expiry.poll_passed(cx));
        // Dropping the inner future now cancels every attempt below; each one records itself
        // as timed out (see `client::endpoint`). The request stream is cancelled with them.
        expiry.cancel_request();
        Poll::Ready(Err(RouteTimeout(expiry.limit()).into()))
    }
}

impl<F> std::fmt::Debug for DeadlineFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineFuture")
            .field("limit", &self.expiry.as_ref().map(Expiry::limit))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_the_request_without_any_retry_policy() {
        let slow = tower::service_fn(|_: Request<_>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
        });
        let request =
            Request::builder().header("x-mesh-timeout", "300").body(http_body_util::Empty::<bytes::Bytes>::new());
        let request = request.unwrap();
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
