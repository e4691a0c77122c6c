//! A call's first attempt, sent when the call is made, and what settles it: the attempt's gRPC
//! metrics, its slot, its per-try timeout, and the retries after it when it failed retryably.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::Response;
use tokio::{sync::OwnedSemaphorePermit, time::Sleep};

use super::{AttemptResponse, Boxed, CallBody, CallPath, Settled};
use crate::{
    BoxError,
    client::{
        deadline::{Deadline, PerTryTimeout},
        endpoint::ResponseFuture,
        resolution::Resolution,
        retry::RetryCopy,
    },
    telemetry::grpc_otel::{self, AttemptBody, MeasuredAttempt},
};

/// A call's attempts, to the response head of the one that is returned.
// The first variant is the common path and lives inside the call's one boxed future: boxing it
// again would cost every call an allocation to save the rare paths a few hundred bytes.
#[allow(clippy::large_enum_variant)]
pub(super) enum Attempts<B> {
    /// The first, on its way (`None` once it settled).
    First(Option<FirstAttempt<B>>),
    /// A rare path: a fault, a body still arriving, a wait for a slot, or the retries after a
    /// first attempt that failed.
    Boxed(Boxed<AttemptResponse>),
}

/// The first attempt on its way, with everything that settles it.
pub(super) struct FirstAttempt<B> {
    /// The endpoint's send.
    pub(super) sending: ResponseFuture,
    /// Its gRPC metrics, when they are on and the call is gRPC.
    pub(super) measure: Option<Box<MeasuredAttempt>>,
    /// Its load shedder's slot, held until the response head.
    pub(super) slot: Option<OwnedSemaphorePermit>,
    /// Its per-try timeout, when that comes before the call's deadline.
    pub(super) per_try: Option<(Pin<Box<Sleep>>, Duration)>,
    /// What a retry is made from, when the route may retry the call.
    pub(super) retry: Option<Retry<B>>,
    pub(super) resolution: Resolution,
    /// The call's deadline.
    pub(super) deadline: Option<Deadline>,
}

/// What a retry is made from, and the path that sends it.
pub(super) type Retry<B> = (RetryCopy<CallBody<B>>, Arc<CallPath<B>>);

impl<B> Attempts<B> {
    pub(super) fn first(attempt: FirstAttempt<B>) -> Self {
        Self::First(Some(attempt))
    }

    pub(super) fn boxed(inner: impl Future<Output = Result<AttemptResponse, BoxError>> + Send + 'static) -> Self {
        Self::Boxed(Box::pin(inner))
    }
}

impl<B> Future for Attempts<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Settled, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let first = match this {
            Self::Boxed(inner) => return inner.as_mut().poll(cx).map(|result| result.map(unwrap)),
            Self::First(first) => first,
        };
        let Some(attempt) = first.as_mut() else {
            return Poll::Ready(Err("the call's future was polled after it completed".into()));
        };
        let sent = match Pin::new(&mut attempt.sending).poll(cx) {
            Poll::Ready(sent) => Some(sent),
            Poll::Pending => {
                let timed_out = attempt.per_try.as_mut().is_some_and(|(timer, _)| timer.as_mut().poll(cx).is_ready());
                if !timed_out {
                    return Poll::Pending;
                }
                None
            }
        };
        let Some(FirstAttempt { sending, measure, slot, per_try, retry, resolution, deadline }) = first.take() else {
            return Poll::Pending;
        };
        let (sent, measure) = match sent {
            Some(sent) => (sent, measure),
            None => {
                // Timed out: the attempt is dropped unfinished, as a timer around it drops it
                // (the endpoint records a timeout, the gRPC metrics a cancelled attempt).
                drop(sending);
                drop(measure);
                (Err(PerTryTimeout(per_try.map(|(_, limit)| limit).unwrap_or_default()).into()), None)
            }
        };
        let retrying = retry.filter(|(copy, _)| copy.retryable(&sent, 1));
        let settled = grpc_otel::settle_attempt_head(measure, sent);
        // The slot frees as soon as the response head is back.
        drop(slot);
        let Some((copy, path)) = retrying else {
            return Poll::Ready(settled);
        };
        let result = settled.map(|(response, attempt)| response.map(|body| AttemptBody::new(body, attempt)));
        let mut retries: Boxed<AttemptResponse> =
            Box::pin(async move { path.after(&copy, result, 1, &resolution, deadline).await });
        let poll = retries.as_mut().poll(cx);
        *this = Self::Boxed(retries);
        poll.map(|result| result.map(unwrap))
    }
}

/// A rare path's response: its head, and the attempt its body would have recorded.
fn unwrap(response: AttemptResponse) -> Settled {
    let (parts, body) = response.into_parts();
    let (body, attempt) = body.into_parts();
    (Response::from_parts(parts, body), attempt)
}
