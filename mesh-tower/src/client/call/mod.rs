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

mod body;
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
use http_body::Body as _;
use hyper::body::Incoming;

pub use self::body::ResponseBody;
use super::{
    deadline::{self, CancelOnDeadline, Deadline, PerTryTimeout, RouteTimeout},
    endpoint::{EndpointBody, Endpoints},
    fault::{FaultLayer, Injection},
    resolution::Resolution,
    retry::{self, RetryBody, RetryLayer},
    router::{self, RouterLayer},
    shed::{Admission, LoadShedLayer},
};
use crate::{
    BoxError,
    deadline_body::{Expiry, Guard},
    failure::ClientError,
    telemetry::{
        Exchange, TelemetryError, TelemetryLayer,
        grpc_otel::{self, AttemptBody, AttemptLayer, CountedBody, MeasuredAttempt},
    },
};

/// The response future of a [`MeshClient`](super::MeshClient): the call's one boxed future.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send>>;

/// The request body as the call carries it: counted for telemetry, cancelled with the call.
type CallBody<B> = CancelOnDeadline<CountedBody<B>>;

/// The request body as an attempt sends it: the original or a retry's copy, counted per attempt.
pub(crate) type AttemptRequestBody<B> = CountedBody<RetryBody<CallBody<B>>>;

/// An attempt's response, as the retries see it: its body records the attempt at its end.
type AttemptResponse = Response<AttemptBody<EndpointBody<Incoming>>>;

/// An attempt's response head, with its gRPC metrics still to settle at the end of its body:
/// what the call's one [`ResponseBody`] is made from.
type Settled = (Response<EndpointBody<Incoming>>, Option<Box<MeasuredAttempt>>);

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
        // Client side telemetry has no scope to poll in (see `telemetry::service::begin`).
        let (exchange, _scope) = self.telemetry.begin(&mut request);
        let mut request = grpc_otel::counted(request);
        let phase = match self.router.resolve(&mut request) {
            Some(Ok(resolution)) => Phase::Routed(self.route(request, resolution)),
            Some(Err(error)) => Phase::Failed(Some(error)),
            None => Phase::Resolving(Box::pin(self.clone().route_when_ready(request))),
        };
        Box::pin(CallFuture { phase, exchange: Some(exchange) })
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
        Routed { attempts, expiry, resolution }
    }

    /// Before the destination's first snapshot: waits for it, then routes as usual.
    async fn route_when_ready(self: Arc<Self>, mut request: Request<CountedBody<B>>) -> Result<Routed<B>, BoxError> {
        let resolution = self.router.resolve_when_ready(&mut request).await?;
        Ok(self.route(request, resolution))
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
            retry::Plan::Retrying(copy, head, None) => (copy.first_request(head), copy.per_try_timeout(), Some(copy)),
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
        let (copy, head) = match plan {
            retry::Plan::Once(request, per_try) => {
                let admission = self.shed.admit(resolution);
                return self.attempt(request, resolution, deadline, per_try, admission).await;
            }
            retry::Plan::Failed(error) => return Err(error),
            retry::Plan::Retrying(copy, head, None) => (copy, head),
            retry::Plan::Retrying(mut copy, head, Some(buffering)) => {
                copy.set_body(buffering.await?);
                (copy, head)
            }
        };
        let admission = self.shed.admit(resolution);
        let first = copy.first_request(head);
        let result = self.attempt(first, resolution, deadline, copy.per_try_timeout(), admission).await;
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

/// A call, from the router's decision to its response.
struct CallFuture<B> {
    phase: Phase<B>,
    /// Telemetry's record of the call (`None` once the call's response or error settled it).
    exchange: Option<Exchange>,
}

/// Where the call is.
// The routed call is the common path and lives inside the call's one boxed future.
#[allow(clippy::large_enum_variant)]
enum Phase<B> {
    /// Waiting for the destination's first snapshot, to be routed then.
    Resolving(Boxed<Routed<B>>),
    Routed(Routed<B>),
    /// Refused by the router (`None` once returned).
    Failed(Option<ClientError>),
}

/// A call from its resolution to its response head: its attempts, bounded by its deadline, every
/// error named by the route, subset, endpoint and attempts it went to, as the router's future
/// names them.
struct Routed<B> {
    attempts: first::Attempts<B>,
    expiry: Option<Expiry>,
    resolution: Resolution,
}

impl<B> Routed<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    /// The response head of the attempt returned (with the deadline still to bound its body),
    /// or the call's error: what `DeadlineFuture` and the router's future do.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<(Settled, Option<Expiry>), BoxError>> {
        let result = match Pin::new(&mut self.attempts).poll(cx) {
            Poll::Ready(result) => result.map(|settled| (settled, self.expiry.take())),
            Poll::Pending => {
                let Some(expiry) = self.expiry.as_mut() else {
                    return Poll::Pending;
                };
                ready!(expiry.poll_passed(cx));
                // Dropping the attempts cancels each; each records itself as timed out (see
                // `client::endpoint`). The request stream is cancelled with them.
                expiry.cancel_request();
                self.attempts = first::Attempts::First(None);
                Err(RouteTimeout(expiry.limit()).into())
            }
        };
        Poll::Ready(result.map_err(|error| {
            let went = router::went(&self.resolution);
            ClientError::new(error, self.resolution.service(), Some(went)).into()
        }))
    }
}

impl<B> Future for CallFuture<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = loop {
            match &mut this.phase {
                Phase::Routed(routed) => break ready!(routed.poll_head(cx)),
                Phase::Resolving(resolving) => match ready!(resolving.as_mut().poll(cx)) {
                    Ok(routed) => this.phase = Phase::Routed(routed),
                    Err(error) => break Err(error),
                },
                Phase::Failed(error) => match error.take() {
                    Some(error) => break Err(error.into()),
                    None => break Err("the call's future was polled after it completed".into()),
                },
            }
        };
        match this.exchange.take() {
            Some(exchange) => Poll::Ready(settle(exchange, result)),
            // Polled again after it completed: tower's contract says this does not happen.
            None => Poll::Pending,
        }
    }
}

/// The call's response head, its body made the one [`ResponseBody`] that settles the attempt,
/// the deadline and the exchange at its end; or the call's error, recorded.
fn settle(
    mut exchange: Exchange,
    result: Result<(Settled, Option<Expiry>), BoxError>,
) -> Result<Response<ResponseBody>, BoxError> {
    match result {
        Ok(((mut response, attempt), expiry)) => {
            let guard = Guard::new(expiry, response.body().is_end_stream());
            // Telemetry reads it to count a body the deadline ended as timed out.
            if let Some(deadline) = guard.deadline() {
                response.extensions_mut().insert(deadline);
            }
            exchange.on_response(&mut response);
            Ok(response.map(|inner| ResponseBody::new(inner, attempt, guard, exchange)))
        }
        Err(error) => {
            exchange.finish_error(error.as_error());
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests;
