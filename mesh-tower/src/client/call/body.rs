//! The response body of a call: one wrapper over the endpoint's body that settles every duty a
//! response body has at its end (the attempt's gRPC metrics, the call's deadline, the exchange's
//! telemetry: golden signals, metrics, span, access log), reading each frame once.
//!
//! A stack composed of the public layers wraps the body once per layer
//! (`TelemetryBody<DeadlineBody<AttemptBody<EndpointBody<_>>>>`), and each layer maps the
//! response to wrap it: every frame then passes through four bodies that each ask whether the
//! stream ended (on HTTP/2 a lock of the connection's stream store each time), and the response
//! is moved out and back in three more times. Here each capability keeps its own logic
//! (the attempt's `on_frame`, the deadline's `Guard::poll_frame`, telemetry's `on_frame`) and
//! this body runs them in the layers' order over one frame and one answer to `is_end_stream`.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::{
    BoxError,
    client::endpoint::EndpointBody,
    deadline_body::{Guard, Source},
    telemetry::{Exchange, grpc_otel::MeasuredAttempt, on_response_frame},
};

pin_project! {
    /// The response body of a [`MeshClient`](crate::client::MeshClient): hyper's body from the
    /// endpoint, observed to its end by the attempt's accounting, its gRPC metrics and
    /// telemetry (the gRPC status in the trailers counts everywhere a status does), and ended
    /// by the call's [deadline](crate::client::deadline) if it passes first. Otherwise it is
    /// the endpoint's body, frame for frame.
    pub struct ResponseBody {
        // `None` once the deadline ended the call: the endpoint's body is dropped then. Fields
        // drop in the order the layers' bodies would: the endpoint's, the attempt, the
        // deadline, the exchange.
        #[pin]
        inner: Option<EndpointBody<Incoming>>,
        attempt: Option<Box<MeasuredAttempt>>,
        guard: Guard,
        exchange: Option<Exchange>,
    }
}

impl ResponseBody {
    /// The endpoint's body with the duties still to settle at its end. An exchange whose body
    /// is already complete ends now: a reader may drop an empty body without polling it.
    pub(crate) fn new(
        inner: EndpointBody<Incoming>,
        attempt: Option<Box<MeasuredAttempt>>,
        guard: Guard,
        mut exchange: Exchange,
    ) -> Self {
        let exchange = match inner.is_end_stream() {
            true => {
                exchange.finish(crate::telemetry::End::Complete);
                None
            }
            false => Some(exchange),
        };
        Self { inner: Some(inner), attempt, guard, exchange }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let attempt = &mut *this.attempt;
        let observe = |frame: &Option<Result<Frame<Bytes>, hyper::Error>>, at_end| {
            if let Some(measured) = attempt.as_mut()
                && measured.on_frame(frame, at_end)
            {
                *attempt = None;
            }
        };
        let (frame, source) = ready!(this.guard.poll_frame(this.inner, cx, observe));
        let at_end = match source {
            Source::Inner { at_end } => at_end,
            // The deadline dropped the endpoint's body: the attempt goes with it, unfinished.
            Source::Expired | Source::Ended => {
                *this.attempt = None;
                true
            }
        };
        if let Some(exchange) = this.exchange
            && on_response_frame(exchange, &frame, at_end)
        {
            *this.exchange = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("ended", &self.inner.is_none())
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}
