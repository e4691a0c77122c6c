//! One call through the whole client path, as one future.
//!
//! [`MeshClient`](super::MeshClient) does what its layers do, in the order they stack
//! (telemetry, the request body's count, the router, the deadline, fault injection, retries,
//! each attempt's gRPC metrics, load shedding, the endpoint), but not as nested services: each
//! capability's decision is a function of its own module (`RouterLayer::resolve`,
//! `deadline::arm`, `FaultLayer::decide`, `RetryLayer::plan`, `AttemptLayer::begin`,
//! `LoadShedLayer::admit`, `Endpoints::send`), and [`CallPath::call`] runs them from one
//! service, into one boxed future per call. What a layer would have put in the request's
//! extensions for the next one to read (the resolution, the deadline) travels as a value.
//!
//! Nested services cost every request a future per layer, built eagerly and moved into the one
//! above it, a response moved out through each of them, and extensions written and read back.
//! Here the call is decided synchronously down to its first attempt on the endpoint's connection,
//! and the one future holds that attempt's send with what settles it ([`first`]): no request is
//! moved into a future's state on its way down, and the state stays small (an `async fn` for the
//! whole path measured over 13 KB). Only the rare paths run as `async` code in a box of their own:
//! a destination without a snapshot yet, an injected fault, a body still arriving, a wait for a
//! slot, and the retries after a first attempt that failed. The layers stay public for stacks
//! composed by hand, and behave the same: the tests beside this module run both over the same
//! endpoints.
//!
//! Everything that reads the caller's task (the handler's deadline, its retry depth, its cohort)
//! is read when the call is made, as a layer's `call` reads it, not when its future is first
//! polled.

mod first;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;

use super::{
    deadline::{self, CancelOnDeadline, Deadline, DeadlineBody, DeadlineFuture, PerTryTimeout},
    endpoint::{EndpointBody, Endpoints},
    fault::{FaultLayer, Injection},
    resolution::Resolution,
    retry::{self, RetryBody, RetryLayer},
    router::{self, RouterLayer},
    shed::{Admission, LoadShedLayer},
};
use crate::{
    BoxError,
    deadline_body::Expiry,
    failure::ClientError,
    telemetry::{
        TelemetryBody, TelemetryFuture, TelemetryLayer,
        grpc_otel::{self, AttemptBody, AttemptLayer, CountedBody},
    },
};

/// The response body of a [`MeshClient`](super::MeshClient): hyper's body, observed to its end
/// by the attempt's accounting, its gRPC metrics and by telemetry (the gRPC status in the
/// trailers counts everywhere a status does), and ended by the call's
/// [deadline](super::deadline) if it passes first.
pub type ResponseBody = TelemetryBody<DeadlineBody<AttemptBody<EndpointBody<Incoming>>>>;

/// The response future of a [`MeshClient`](super::MeshClient): the call's one boxed future.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send>>;

/// The request body as the call carries it: counted for telemetry, cancelled with the call.
type CallBody<B> = CancelOnDeadline<CountedBody<B>>;

/// The request body as an attempt sends it: the original or a retry's copy, counted per attempt.
pub(crate) type AttemptRequestBody<B> = CountedBody<RetryBody<CallBody<B>>>;

/// An attempt's response.
type AttemptResponse = Response<AttemptBody<EndpointBody<Incoming>>>;

/// The call's response, to its head, guarded by its deadline.
type CallResponse = Response<DeadlineBody<AttemptBody<EndpointBody<Incoming>>>>;

/// A rare path's future, boxed.
type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// The capabilities of the client path, each the state of its own layer. See the
/// [module docs](self).
pub(crate) struct CallPath<B> {
    pub(crate) telemetry: TelemetryLayer,
    pub(crate) router: RouterLayer,
    pub(crate) faults: FaultLayer,
    pub(crate) retries: RetryLayer,
    pub(crate) attempts: AttemptLayer,
    pub(crate) shed: LoadShedLayer,
    pub(crate) endpoints: Endpoints<AttemptRequestBody<B>>,
}

impl<B> CallPath<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// One call: its telemetry begun and everything decidable now decided, the rest in the one
    /// future returned.
    pub(crate) fn call(self: &Arc<Self>, mut request: Request<B>) -> ResponseFuture {
        let (exchange, scope) = self.telemetry.begin(&mut request);
        let mut request = grpc_otel::counted(request);
        let routed = match self.router.resolve(&mut request) {
            Some(Ok(resolution)) => self.route(request, resolution),
            Some(Err(error)) => Routed::Failed { error: Some(error) },
            None => Routed::Boxed { inner: Box::pin(self.clone().route_when_ready(request)) },
        };
        Box::pin(TelemetryFuture::new(routed, scope, exchange))
    }

    /// The resolved call: its deadline armed, its fault decided, and (without one) its first
    /// attempt sent.
    fn route(self: &Arc<Self>, request: Request<CountedBody<B>>, resolution: Resolution) -> Routed<B> {
        let (request, expiry) = deadline::arm(request, resolution.timeout());
        let deadline = expiry.as_ref().map(Expiry::deadline);
        let attempts = match self.faults.decide(&resolution) {
            Injection::None => self.first(self.retries.plan(request, Some(&resolution)), &resolution, deadline),
            injection => {
                let path = self.clone();
                let resolution = resolution.clone();
                first::Attempts::boxed(async move {
                    injection.apply().await?;
                    let plan = path.retries.plan(request, Some(&resolution));
                    path.send(plan, &resolution, deadline).await
                })
            }
        };
        Routed::Sending { inner: DeadlineFuture::new(attempts, expiry), resolution }
    }

    /// Before the destination's first snapshot: waits for it, then routes as usual.
    async fn route_when_ready(self: Arc<Self>, mut request: Request<CountedBody<B>>) -> Result<CallResponse, BoxError> {
        let resolution = self.router.resolve_when_ready(&mut request).await?;
        self.route(request, resolution).await
    }

    /// The first attempt of `plan` on its way: sent now when the request's body is here and a
    /// slot is free (or no limit applies), else from a boxed future.
    fn first(
        self: &Arc<Self>,
        plan: retry::Plan<CallBody<B>>,
        resolution: &Resolution,
        deadline: Option<Deadline>,
    ) -> first::Attempts<B> {
        let (request, per_try, retry) = match plan {
            retry::Plan::Once(request, per_try) => (request, per_try, None),
            retry::Plan::Retrying(copy, None) => (copy.request(1), copy.per_try_timeout(), Some(copy)),
            plan => {
                let (path, resolution) = (self.clone(), resolution.clone());
                return first::Attempts::boxed(async move { path.send(plan, &resolution, deadline).await });
            }
        };
        let slot = match self.shed.admit(resolution) {
            Admission::Unlimited => None,
            Admission::Slot(permit) => Some(permit),
            admission => {
                let (path, resolution) = (self.clone(), resolution.clone());
                return first::Attempts::boxed(async move {
                    let result = path.attempt(request, &resolution, deadline, per_try, admission).await;
                    match retry {
                        Some(copy) => path.after(&copy, result, 1, &resolution, deadline).await,
                        None => result,
                    }
                });
            }
        };
        let (at, per_try) = match deadline::attempt_deadline(deadline, per_try) {
            Some((at, true)) => {
                (Some(at), per_try.map(|limit| (Box::pin(tokio::time::sleep_until(at.instant())), limit)))
            }
            bound => (bound.map(|(at, _)| at), None),
        };
        let (request, measure) = self.attempts.begin(request);
        let sending = self.endpoints.send(request, resolution.clone(), at);
        let retry = retry.map(|copy| (copy, self.clone()));
        let resolution = resolution.clone();
        first::Attempts::first(first::FirstAttempt { sending, measure, slot, per_try, retry, resolution, deadline })
    }

    /// Every attempt of `plan`, from the first.
    async fn send(
        &self,
        plan: retry::Plan<CallBody<B>>,
        resolution: &Resolution,
        deadline: Option<Deadline>,
    ) -> Result<AttemptResponse, BoxError> {
        let copy = match plan {
            retry::Plan::Once(request, per_try) => {
                let admission = self.shed.admit(resolution);
                return self.attempt(request, resolution, deadline, per_try, admission).await;
            }
            retry::Plan::Failed(error) => return Err(error),
            retry::Plan::Retrying(copy, None) => copy,
            retry::Plan::Retrying(mut copy, Some(buffering)) => {
                copy.set_body(buffering.await?);
                copy
            }
        };
        let admission = self.shed.admit(resolution);
        let result = self.attempt(copy.request(1), resolution, deadline, copy.per_try_timeout(), admission).await;
        self.after(&copy, result, 1, resolution, deadline).await
    }

    /// After attempt `number` gave `result`: it, or the retries the policy and the budget allow.
    async fn after(
        &self,
        copy: &retry::RetryCopy<CallBody<B>>,
        result: Result<AttemptResponse, BoxError>,
        number: u32,
        resolution: &Resolution,
        deadline: Option<Deadline>,
    ) -> Result<AttemptResponse, BoxError> {
        let per_try = copy.per_try_timeout();
        let send = |request| {
            let admission = self.shed.admit(resolution);
            self.attempt(request, resolution, deadline, per_try, admission)
        };
        copy.retry(result, number, send).await
    }

    /// One attempt, bounded by the per-try timeout when that comes before the call's deadline.
    async fn attempt(
        &self,
        request: Request<RetryBody<CallBody<B>>>,
        resolution: &Resolution,
        deadline: Option<Deadline>,
        per_try: Option<Duration>,
        admission: Admission,
    ) -> Result<AttemptResponse, BoxError> {
        match deadline::attempt_deadline(deadline, per_try) {
            Some((at, true)) => {
                let measured = self.measured(request, resolution, Some(at), admission);
                match tokio::time::timeout_at(at.instant(), measured).await {
                    Ok(result) => result,
                    Err(_) => Err(PerTryTimeout(per_try.unwrap_or_default()).into()),
                }
            }
            bound => self.measured(request, resolution, bound.map(|(at, _)| at), admission).await,
        }
    }

    /// One attempt measured for gRPC's metrics, admitted by the load shedder (its slot held
    /// until the response head), sent to the endpoint the balancer picks.
    async fn measured(
        &self,
        request: Request<RetryBody<CallBody<B>>>,
        resolution: &Resolution,
        deadline: Option<Deadline>,
        admission: Admission,
    ) -> Result<AttemptResponse, BoxError> {
        let (request, attempt) = self.attempts.begin(request);
        let sent = async {
            let slot = admission.slot().await?;
            let response = self.endpoints.send(request, resolution.clone(), deadline).await;
            drop(slot);
            response
        };
        grpc_otel::settle_attempt(attempt, sent.await)
    }
}

pin_project_lite::pin_project! {
    /// A call from its resolution to its response head: every error named by the route, subset,
    /// endpoint and attempts it went to, as the router's future names them.
    #[project = RoutedProj]
    enum Routed<B> {
        Sending { #[pin] inner: DeadlineFuture<first::Attempts<B>>, resolution: Resolution },
        Boxed { inner: Boxed<CallResponse> },
        Failed { error: Option<ClientError> },
    }
}

impl<B> Future for Routed<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<CallResponse, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RoutedProj::Sending { inner, resolution } => Poll::Ready(ready!(inner.poll(cx)).map_err(|error| {
                let went = router::went(resolution);
                ClientError::new(error, resolution.service(), Some(went)).into()
            })),
            RoutedProj::Boxed { inner } => inner.as_mut().poll(cx),
            RoutedProj::Failed { error } => Poll::Ready(Err(match error.take() {
                Some(error) => error.into(),
                None => "the call's future was polled after it completed".into(),
            })),
        }
    }
}

#[cfg(test)]
mod tests;
