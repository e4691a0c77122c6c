//! `grpc.testing.TestService` as gRPC's interop test cases expect a server to answer it
//! (doc/interop-test-descriptions.md in the gRPC repository), and the metadata echo the
//! `custom_metadata` case needs. Shared by the `interop-server` example and the tests that serve
//! it in-process (`#[path]`-included: the generated code comes with it).

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;
use tonic::{Code, Status, Streaming};

/// The code generated from `examples/proto/grpc/testing/*.proto`.
#[allow(missing_docs, unreachable_pub, dead_code, clippy::enum_variant_names, clippy::large_enum_variant)]
pub(crate) mod pb {
    include!("../proto/gen/grpc.testing.rs");
}

use pb::{
    EchoStatus, Empty, Payload, PayloadType, ResponseParameters, SimpleRequest, SimpleResponse,
    StreamingInputCallRequest, StreamingInputCallResponse, StreamingOutputCallRequest, StreamingOutputCallResponse,
    test_service_server::TestService,
};

/// The header whose value the server echoes in its response headers.
pub(crate) const ECHO_INITIAL: &str = "x-grpc-test-echo-initial";
/// The (binary) header whose value the server echoes in its trailers.
pub(crate) const ECHO_TRAILING: &str = "x-grpc-test-echo-trailing-bin";

/// How a streaming call ended on the server, for tests that watch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)]
pub(crate) enum StreamEnd {
    /// The handler sent its last message or status.
    Finished,
    /// The handler was dropped before that: the caller cancelled, or its deadline passed.
    Dropped,
}

/// The interop `TestService`. `ends`, if set, hears how each streaming call ended.
#[derive(Clone, Default)]
pub(crate) struct InteropService {
    /// Told how every streaming call ended (tests watch cancellation with it).
    pub ends: Option<mpsc::UnboundedSender<(&'static str, StreamEnd)>>,
    /// What `fill_server_id` answers.
    pub server_id: String,
}

/// Sends how a stream ended when it is dropped.
struct EndGuard {
    method: &'static str,
    ends: Option<mpsc::UnboundedSender<(&'static str, StreamEnd)>>,
    finished: bool,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if let Some(ends) = &self.ends {
            let end = if self.finished { StreamEnd::Finished } else { StreamEnd::Dropped };
            let _ = ends.send((self.method, end));
        }
    }
}

/// A payload of `size` zeros of the type asked for (only `COMPRESSABLE` exists).
fn payload(response_type: i32, size: i32) -> Result<Payload, Status> {
    if response_type != PayloadType::Compressable as i32 {
        return Err(Status::invalid_argument(format!("unsupported payload type {response_type}")));
    }
    let size = usize::try_from(size).map_err(|_| Status::invalid_argument(format!("negative size {size}")))?;
    Ok(Payload { r#type: response_type, body: vec![0; size] })
}

/// The status a request asks for, if it asks for one that is not OK.
fn echo_status(status: Option<&EchoStatus>) -> Option<Status> {
    status.filter(|s| s.code != 0).map(|s| Status::new(Code::from_i32(s.code), s.message.clone()))
}

/// Every request that reaches a handler was sent uncompressed: tonic refuses a `grpc-encoding`
/// the service has not enabled, and this one enables none. So a request that says it is
/// compressed is answered `INVALID_ARGUMENT`, as the compression cases expect of such a server.
fn check_uncompressed(expect_compressed: Option<&pb::BoolValue>) -> Result<(), Status> {
    if expect_compressed.is_some_and(|b| b.value) {
        return Err(Status::invalid_argument("expected a compressed message, got an uncompressed one"));
    }
    Ok(())
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<StreamingOutputCallResponse, Status>> + Send>>;

/// One response a stream still owes: its parameters and the payload type.
struct Owed {
    response_type: i32,
    size: i32,
    interval: Duration,
}

impl Owed {
    fn all(response_type: i32, params: &[ResponseParameters]) -> impl Iterator<Item = Owed> + '_ {
        params.iter().map(move |p| Owed {
            response_type,
            size: p.size,
            interval: Duration::from_micros(u64::try_from(p.interval_us).unwrap_or(0)),
        })
    }

    async fn send(self) -> Result<StreamingOutputCallResponse, Status> {
        if !self.interval.is_zero() {
            tokio::time::sleep(self.interval).await;
        }
        let payload = payload(self.response_type, self.size)?;
        Ok(StreamingOutputCallResponse { payload: Some(payload), peer_socket_address: String::new() })
    }
}

/// What a duplex stream's handler holds between two messages.
struct Duplex {
    inbound: Option<Streaming<StreamingOutputCallRequest>>,
    owed: VecDeque<Owed>,
    guard: EndGuard,
}

impl Duplex {
    /// The next message or status, or `None` when the call is over: each request's responses as
    /// soon as it arrives.
    async fn next(mut self) -> Option<(Result<StreamingOutputCallResponse, Status>, Self)> {
        loop {
            if let Some(owed) = self.owed.pop_front() {
                let response = owed.send().await;
                if response.is_err() {
                    self.end();
                }
                return Some((response, self));
            }
            let inbound = self.inbound.as_mut()?;
            match inbound.message().await {
                Ok(Some(request)) => {
                    if let Some(status) = echo_status(request.response_status.as_ref()) {
                        self.end();
                        return Some((Err(status), self));
                    }
                    self.owed.extend(Owed::all(request.response_type, &request.response_parameters));
                }
                Ok(None) => {
                    self.guard.finished = true;
                    return None;
                }
                Err(status) => {
                    self.end();
                    return Some((Err(status), self));
                }
            }
        }
    }

    /// After a status: nothing more is read or sent.
    fn end(&mut self) {
        self.inbound = None;
        self.owed.clear();
        self.guard.finished = true;
    }
}

impl InteropService {
    fn guard(&self, method: &'static str) -> EndGuard {
        EndGuard { method, ends: self.ends.clone(), finished: false }
    }

    fn unary(&self, request: &SimpleRequest) -> Result<SimpleResponse, Status> {
        if let Some(status) = echo_status(request.response_status.as_ref()) {
            return Err(status);
        }
        check_uncompressed(request.expect_compressed.as_ref())?;
        let payload = payload(request.response_type, request.response_size)?;
        let server_id = if request.fill_server_id { self.server_id.clone() } else { String::new() };
        Ok(SimpleResponse { payload: Some(payload), server_id, ..SimpleResponse::default() })
    }
}

#[tonic::async_trait]
impl TestService for InteropService {
    type StreamingOutputCallStream = ResponseStream;
    type FullDuplexCallStream = ResponseStream;
    type HalfDuplexCallStream = ResponseStream;

    async fn empty_call(&self, _: tonic::Request<Empty>) -> Result<tonic::Response<Empty>, Status> {
        Ok(tonic::Response::new(Empty {}))
    }

    async fn unary_call(
        &self,
        request: tonic::Request<SimpleRequest>,
    ) -> Result<tonic::Response<SimpleResponse>, Status> {
        self.unary(request.get_ref()).map(tonic::Response::new)
    }

    async fn cacheable_unary_call(
        &self,
        request: tonic::Request<SimpleRequest>,
    ) -> Result<tonic::Response<SimpleResponse>, Status> {
        self.unary(request.get_ref()).map(tonic::Response::new)
    }

    async fn streaming_output_call(
        &self,
        request: tonic::Request<StreamingOutputCallRequest>,
    ) -> Result<tonic::Response<ResponseStream>, Status> {
        let request = request.into_inner();
        let owed: VecDeque<Owed> = Owed::all(request.response_type, &request.response_parameters).collect();
        let status = echo_status(request.response_status.as_ref());
        let guard = self.guard("StreamingOutputCall");
        let stream =
            futures_util::stream::unfold((owed, status, guard), |(mut owed, mut status, mut guard)| async move {
                match owed.pop_front() {
                    Some(next) => Some((next.send().await, (owed, status, guard))),
                    None => {
                        guard.finished = true;
                        status.take().map(|status| (Err(status), (owed, None, guard)))
                    }
                }
            });
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn streaming_input_call(
        &self,
        request: tonic::Request<Streaming<StreamingInputCallRequest>>,
    ) -> Result<tonic::Response<StreamingInputCallResponse>, Status> {
        let mut guard = self.guard("StreamingInputCall");
        let mut inbound = request.into_inner();
        let mut total = 0usize;
        while let Some(message) = inbound.message().await? {
            check_uncompressed(message.expect_compressed.as_ref())?;
            total += message.payload.map_or(0, |p| p.body.len());
        }
        guard.finished = true;
        let aggregated_payload_size =
            i32::try_from(total).map_err(|_| Status::invalid_argument("more than 2 GiB of payloads"))?;
        Ok(tonic::Response::new(StreamingInputCallResponse { aggregated_payload_size }))
    }

    async fn full_duplex_call(
        &self,
        request: tonic::Request<Streaming<StreamingOutputCallRequest>>,
    ) -> Result<tonic::Response<ResponseStream>, Status> {
        let duplex =
            Duplex { inbound: Some(request.into_inner()), owed: VecDeque::new(), guard: self.guard("FullDuplexCall") };
        Ok(tonic::Response::new(Box::pin(futures_util::stream::unfold(duplex, Duplex::next))))
    }

    async fn half_duplex_call(
        &self,
        request: tonic::Request<Streaming<StreamingOutputCallRequest>>,
    ) -> Result<tonic::Response<ResponseStream>, Status> {
        let mut guard = self.guard("HalfDuplexCall");
        let mut inbound = request.into_inner();
        let mut owed = Vec::new();
        while let Some(request) = inbound.message().await? {
            owed.extend(Owed::all(request.response_type, &request.response_parameters));
        }
        guard.finished = true;
        let stream = futures_util::stream::iter(owed).then(Owed::send);
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn unimplemented_call(&self, _: tonic::Request<Empty>) -> Result<tonic::Response<Empty>, Status> {
        Err(Status::unimplemented("grpc.testing.TestService/UnimplementedCall is not implemented"))
    }
}

/// Echoes the caller's `x-grpc-test-echo-initial` in the response headers and its
/// `x-grpc-test-echo-trailing-bin` in the trailers, around any gRPC service: tonic's handlers
/// cannot set trailers on a successful call, so the echo is done on the HTTP response.
#[derive(Clone)]
pub(crate) struct EchoMetadata<S> {
    inner: S,
}

impl<S> EchoMetadata<S> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B, RB> tower::Service<Request<B>> for EchoMetadata<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = Response<EchoBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let initial = request.headers().get(ECHO_INITIAL).cloned();
        let trailing = request.headers().get(ECHO_TRAILING).cloned();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let (mut head, body) = response.into_parts();
            if let Some(value) = initial {
                head.headers.insert(HeaderName::from_static(ECHO_INITIAL), value);
            }
            // A trailers-only response (an error status in the headers) has no trailers frame.
            let mut trailing = trailing;
            if head.headers.contains_key("grpc-status")
                && let Some(value) = trailing.take()
            {
                head.headers.insert(HeaderName::from_static(ECHO_TRAILING), value);
            }
            Ok(Response::from_parts(head, EchoBody { inner: body, trailing }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body with one more trailer.
    pub(crate) struct EchoBody<B> {
        #[pin]
        inner: B,
        trailing: Option<HeaderValue>,
    }
}

impl<B: Default> Default for EchoBody<B> {
    fn default() -> Self {
        Self { inner: B::default(), trailing: None }
    }
}

impl<B: Body<Data = Bytes>> Body for EchoBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(match frame.into_trailers() {
                Ok(mut trailers) => {
                    if let Some(value) = this.trailing.take() {
                        trailers.insert(HeaderName::from_static(ECHO_TRAILING), value);
                    }
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            }))),
            Poll::Ready(None) => Poll::Ready(this.trailing.take().map(|value| {
                let mut trailers = HeaderMap::new();
                trailers.insert(HeaderName::from_static(ECHO_TRAILING), value);
                Ok(Frame::trailers(trailers))
            })),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailing.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
