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
//! above it, a response moved out through each of them, and extensions written and read back;
//! here the future is built in place as the call progresses, and the retry loop is part of it
//! (nothing boxed for a route that may retry). The layers stay public for stacks composed by
//! hand, and behave the same: the tests beside this module run both over the same endpoints.
//!
//! Everything that reads the caller's task (the handler's deadline, its retry depth, its cohort)
//! is read when the call is made, as a layer's `call` reads it, not when its future is first
//! polled.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

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
    shed::LoadShedLayer,
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

/// The response body of a [`MeshClient`]: hyper's body, observed to its end by the attempt's
/// accounting, its gRPC metrics and by telemetry (the gRPC status in the trailers counts
/// everywhere a status does), and ended by the call's [deadline](super::deadline) if it passes
/// first.
pub type ResponseBody = TelemetryBody<DeadlineBody<AttemptBody<EndpointBody<Incoming>>>>;

/// The response future of a [`MeshClient`]: the stack's one boxed future.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send>>;

/// The request body as the call carries it: counted for telemetry, cancelled with the call.
type CallBody<B> = CancelOnDeadline<CountedBody<B>>;

/// The request body as an attempt sends it: the original or a retry's copy, counted per attempt.
pub(crate) type AttemptRequestBody<B> = CountedBody<RetryBody<CallBody<B>>>;

/// An attempt's response.
type AttemptResponse = Response<AttemptBody<EndpointBody<Incoming>>>;

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

/// How a call starts, decided when it is made.
enum Start<B> {
    /// Resolved, its deadline armed, its fault and attempts decided.
    Resolved(Prepared<B>),
    /// The destination has no snapshot yet: resolved once it has, up to the resolve timeout.
    Unresolved(Request<CountedBody<B>>),
    /// It resolves to nowhere.
    Failed(ClientError),
}

/// A resolved call, before anything of it has been sent.
struct Prepared<B> {
    resolution: Resolution,
    expiry: Option<Expiry>,
    deadline: Option<Deadline>,
    then: Then<B>,
}

/// After the deadline is armed: fault injection first, then the attempts.
enum Then<B> {
    /// No fault for this call: its attempts, planned.
    Send(retry::Plan<CallBody<B>>),
    /// A fault (a delay or an abort) before it leaves; the attempts are planned after a delay,
    /// as the retry layer sees the request only once the fault layer lets it go.
    Inject(Injection, Request<CallBody<B>>),
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
        let start = match self.router.resolve(&mut request) {
            Some(Ok(resolution)) => Start::Resolved(self.prepare(request, resolution)),
            Some(Err(error)) => Start::Failed(error),
            None => Start::Unresolved(request),
        };
        Box::pin(TelemetryFuture::new(self.clone().run(start), scope, exchange))
    }

    /// The deadline armed, the fault decided, and (without one) the attempts planned.
    fn prepare(&self, request: Request<CountedBody<B>>, resolution: Resolution) -> Prepared<B> {
        let (request, expiry) = deadline::arm(request, resolution.timeout());
        let deadline = expiry.as_ref().map(Expiry::deadline);
        let then = match self.faults.decide(&resolution) {
            Injection::None => Then::Send(self.retries.plan(request, Some(&resolution))),
            injection => Then::Inject(injection, request),
        };
        Prepared { resolution, expiry, deadline, then }
    }

    /// The call, to its response head; every error named by the route, subset, endpoint and
    /// attempts it went to, as the router's future names them.
    async fn run(
        self: Arc<Self>,
        start: Start<B>,
    ) -> Result<Response<DeadlineBody<AttemptBody<EndpointBody<Incoming>>>>, BoxError> {
        let Prepared { resolution, expiry, deadline, then } = match start {
            Start::Resolved(prepared) => prepared,
            Start::Failed(error) => return Err(error.into()),
            Start::Unresolved(mut request) => {
                let resolution = self.router.resolve_when_ready(&mut request).await?;
                self.prepare(request, resolution)
            }
        };
        let result = DeadlineFuture::new(self.send_attempts(then, &resolution, deadline), expiry).await;
        result.map_err(|error| {
            let went = router::went(&resolution);
            ClientError::new(error, resolution.service(), Some(went)).into()
        })
    }

    /// The fault, then every attempt the retry policy and its budget allow.
    async fn send_attempts(
        &self,
        then: Then<B>,
        resolution: &Resolution,
        deadline: Option<Deadline>,
    ) -> Result<AttemptResponse, BoxError> {
        let plan = match then {
            Then::Send(plan) => plan,
            Then::Inject(injection, request) => {
                injection.apply().await?;
                self.retries.plan(request, Some(resolution))
            }
        };
        let copy = match plan {
            retry::Plan::Once(request, per_try) => return self.attempt(request, resolution, deadline, per_try).await,
            retry::Plan::Failed(error) => return Err(error),
            retry::Plan::Retrying(copy, None) => copy,
            retry::Plan::Retrying(mut copy, Some(buffering)) => {
                copy.set_body(buffering.await?);
                copy
            }
        };
        let per_try = copy.per_try_timeout();
        let mut number = 1;
        loop {
            let result = self.attempt(copy.request(number), resolution, deadline, per_try).await;
            match copy.next(&result, number) {
                retry::Next::Return => return result,
                retry::Next::RetryAfter(delay) => tokio::time::sleep(delay).await,
            }
            number += 1;
        }
    }

    /// One attempt, bounded by the per-try timeout when that comes before the call's deadline.
    async fn attempt(
        &self,
        request: Request<RetryBody<CallBody<B>>>,
        resolution: &Resolution,
        deadline: Option<Deadline>,
        per_try: Option<Duration>,
    ) -> Result<AttemptResponse, BoxError> {
        match deadline::attempt_deadline(deadline, per_try) {
            Some((at, true)) => {
                let measured = self.measured(request, resolution, Some(at));
                match tokio::time::timeout_at(at.instant(), measured).await {
                    Ok(result) => result,
                    Err(_) => Err(PerTryTimeout(per_try.unwrap_or_default()).into()),
                }
            }
            bound => self.measured(request, resolution, bound.map(|(at, _)| at)).await,
        }
    }

    /// One attempt measured for gRPC's metrics, admitted by the load shedder (its slot held
    /// until the response head), sent to the endpoint the balancer picks.
    async fn measured(
        &self,
        request: Request<RetryBody<CallBody<B>>>,
        resolution: &Resolution,
        deadline: Option<Deadline>,
    ) -> Result<AttemptResponse, BoxError> {
        let (request, attempt) = self.attempts.begin(request);
        let sent = async {
            let slot = self.shed.admit(resolution).slot().await?;
            let response = self.endpoints.send(request, resolution.clone(), deadline).await;
            drop(slot);
            response
        };
        grpc_otel::settle_attempt(attempt, sent.await)
    }
}

#[cfg(test)]
mod tests;
