//! Client side: each attempt the retry layer makes, from its start to the end of its response
//! stream (`grpc.client.attempt.*`). The client stack puts [`AttemptLayer`] just below the
//! retry layer, so a retried call is several attempts and one call. Without gRPC metrics, or
//! for a request that is not gRPC, it passes everything through untouched.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use mesh_core::SubsetName;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{
    body::{BodyCounts, CountedBody, feed},
    code_of_error,
    record::{AttemptStart, Ending, GrpcRecorder},
    status::code_of_response,
};
use crate::{
    Upstream, grpc,
    telemetry::{TelemetryError, TelemetryLayer, grpc_frames::GrpcFrames, istio::peer_metadata::PEER_METADATA},
};

/// Measures every attempt of the client stack for
/// [`TelemetryLayer::grpc_metrics`](crate::telemetry::TelemetryLayer::grpc_metrics). The client
/// stack puts it below the retry layer; it records nothing when the telemetry layer it was made
/// from has no gRPC metrics.
#[derive(Clone, Debug, Default)]
pub struct AttemptLayer {
    recorder: Option<Arc<GrpcRecorder>>,
}

impl AttemptLayer {
    /// The attempts of the calls `telemetry` (a client side layer) sees.
    pub fn new(telemetry: &TelemetryLayer) -> Self {
        Self { recorder: telemetry.grpc_recorder() }
    }
}

impl<S> Layer<S> for AttemptLayer {
    type Service = AttemptService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AttemptService { inner, recorder: self.recorder.clone() }
    }
}

/// The service of [`AttemptLayer`].
#[derive(Clone, Debug)]
pub struct AttemptService<S> {
    inner: S,
    recorder: Option<Arc<GrpcRecorder>>,
}

impl<S, B, RB> Service<Request<B>> for AttemptService<S>
where
    S: Service<Request<CountedBody<B>>, Response = Response<RB>>,
    S::Error: TelemetryError,
    RB: Body,
{
    type Response = Response<AttemptBody<RB>>;
    type Error = S::Error;
    type Future = AttemptFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (request, attempt) = begin(&self.recorder, request);
        AttemptFuture { inner: self.inner.call(request), attempt }
    }
}

impl AttemptLayer {
    /// Starts measuring one attempt of `request` (when it is gRPC and the telemetry has gRPC
    /// metrics), its body counted as it is sent. [`settle`] takes the attempt's outcome.
    pub(crate) fn begin<B>(&self, request: Request<B>) -> (Request<CountedBody<B>>, Option<Box<Attempt>>) {
        begin(&self.recorder, request)
    }
}

fn begin<B>(
    recorder: &Option<Arc<GrpcRecorder>>,
    request: Request<B>,
) -> (Request<CountedBody<B>>, Option<Box<Attempt>>) {
    let attempt = match recorder {
        Some(recorder) if grpc::is_grpc(request.headers()) => Some(Box::new(Attempt {
            start: recorder.start_attempt(request.uri().path()),
            recorder: recorder.clone(),
            sent: Arc::default(),
            received: GrpcFrames::default(),
            status: None,
            code: None,
            peer: None,
            backend: None,
            done: false,
        })),
        _ => None,
    };
    let count = attempt.as_ref().map(|a| a.sent.clone());
    (request.map(|inner| CountedBody::new(inner, count)), attempt)
}

/// The attempt's response head or error: recorded at once when it ends the attempt, else its
/// body is wrapped to record it at its end.
pub(crate) fn settle<RB: Body, E: TelemetryError>(
    attempt: Option<Box<Attempt>>,
    result: Result<Response<RB>, E>,
) -> Result<Response<AttemptBody<RB>>, E> {
    let (response, attempt) = settle_head(attempt, result)?;
    Ok(response.map(|inner| AttemptBody { inner, attempt }))
}

/// [`settle`], the attempt not yet recorded handed back beside the response instead of wrapping
/// its body: for a body that settles it with its other duties (the client's one response body).
pub(crate) fn settle_head<RB: Body, E: TelemetryError>(
    mut attempt: Option<Box<Attempt>>,
    result: Result<Response<RB>, E>,
) -> Result<(Response<RB>, Option<Box<Attempt>>), E> {
    match result {
        Ok(response) => {
            if let Some(attempt) = &mut attempt {
                attempt.on_head(&response);
                if attempt.code.is_some() || response.body().is_end_stream() {
                    attempt.complete();
                }
            }
            Ok((response, attempt.filter(|a| !a.done)))
        }
        Err(error) => {
            if let Some(attempt) = &mut attempt {
                attempt.finish(code_of_error(error.as_error()));
            }
            Err(error)
        }
    }
}

/// One attempt's measurements, recorded once, however it ends (dropped unfinished: `CANCELLED`).
/// Kept boxed: it travels in the call's future and its response body, which are moved, and
/// without it (no gRPC metrics, or a call that is not gRPC) costs them 8 bytes, not 168.
pub(crate) struct Attempt {
    recorder: Arc<GrpcRecorder>,
    start: AttemptStart,
    sent: Arc<BodyCounts>,
    received: GrpcFrames,
    status: Option<StatusCode>,
    code: Option<u16>,
    peer: Option<HeaderValue>,
    backend: Option<SubsetName>,
    done: bool,
}

impl Attempt {
    fn on_head<B>(&mut self, response: &Response<B>) {
        self.status = Some(response.status());
        self.on_metadata(response.headers());
        self.backend = response.extensions().get::<Upstream>().and_then(|u| u.subset.clone());
    }

    /// Response headers or trailers: the status (trailers-only or at the end) and the server's
    /// exchanged metadata (in its headers, or in the trailers of a trailers-only answer).
    fn on_metadata(&mut self, headers: &HeaderMap) {
        if let Some(code) = grpc::status(headers) {
            self.code = Some(code);
        }
        if self.peer.is_none() && self.recorder.reads_peer() {
            self.peer = headers.get(PEER_METADATA).cloned();
        }
    }

    fn finish(&mut self, code: u16) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let ending = Ending {
            code,
            elapsed: self.start.started.elapsed(),
            sent: self.sent.message_bytes(),
            rcvd: self.received.message_bytes(),
            peer: self.peer.as_ref(),
            backend: self.backend.as_ref(),
        };
        self.recorder.finish(&self.start.method, &ending);
    }

    /// A frame of the response body (`at_end` when the body ended with it): whether the attempt
    /// is recorded now.
    pub(crate) fn on_frame<D: bytes::Buf, E>(&mut self, frame: &Option<Result<Frame<D>, E>>, at_end: bool) -> bool {
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    feed(&mut self.received, data);
                }
                if let Some(trailers) = frame.trailers_ref() {
                    self.on_metadata(trailers);
                }
                if !at_end {
                    return false;
                }
            }
            // The stream broke part way: as gRPC reports a lost stream.
            Some(Err(_)) => self.finish(grpc::code::UNAVAILABLE),
            None => {}
        }
        self.complete();
        true
    }

    /// The stream ended: with the status it carried, else as gRPC reads a status-less end.
    fn complete(&mut self) {
        let code = self.code.unwrap_or_else(|| code_of_response(self.status));
        self.finish(code);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.finish(grpc::code::CANCELLED);
    }
}

pin_project! {
    /// The response future of [`AttemptService`].
    pub struct AttemptFuture<F> {
        #[pin]
        inner: F,
        attempt: Option<Box<Attempt>>,
    }
}

impl<F, RB, E> Future for AttemptFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: Body,
    E: TelemetryError,
{
    type Output = Result<Response<AttemptBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        Poll::Ready(settle(this.attempt.take(), result))
    }
}

impl<F> std::fmt::Debug for AttemptFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// A response body of the client stack, observed to its end for the attempt's metrics;
    /// otherwise the inner body, frame for frame.
    pub struct AttemptBody<B> {
        #[pin]
        inner: B,
        attempt: Option<Box<Attempt>>,
    }
}

impl<B> AttemptBody<B> {
    /// `inner`, recording `attempt` at its end.
    pub(crate) fn new(inner: B, attempt: Option<Box<Attempt>>) -> Self {
        Self { inner, attempt }
    }

    /// The inner body.
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// The inner body and the attempt it has yet to record.
    pub(crate) fn into_parts(self) -> (B, Option<Box<Attempt>>) {
        (self.inner, self.attempt)
    }
}

impl<B: Body> Body for AttemptBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(attempt) = this.attempt {
            let at_end = !matches!(frame, Some(Ok(_))) || this.inner.is_end_stream();
            if attempt.on_frame(&frame, at_end) {
                *this.attempt = None;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> std::fmt::Debug for AttemptBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptBody").finish_non_exhaustive()
    }
}
