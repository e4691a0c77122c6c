//! Server side: the message bytes a call receives. The telemetry layer sits above
//! authorization and the application, where the request body is still hyper's own type; this
//! service sits just above the application and counts the body's messages into the call the
//! telemetry layer started (a request extension), so the application sees a body it reads as
//! any other. `mesh_tonic::GrpcServer` puts it there.

use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use super::{body::CountedBody, record::ReceivedCounter};

/// Counts the message bytes of each request's body for the server telemetry's
/// `grpc.server.call.rcvd_total_compressed_message_size`. Put it around the application, below
/// [`TelemetryLayer::server`](crate::telemetry::TelemetryLayer::server); requests the telemetry
/// layer did not mark pass through uncounted.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountReceivedLayer;

impl<S> Layer<S> for CountReceivedLayer {
    type Service = CountReceived<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountReceived { inner }
    }
}

/// The service of [`CountReceivedLayer`].
#[derive(Clone, Debug)]
pub struct CountReceived<S> {
    inner: S,
}

impl<S> CountReceived<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> Service<Request<B>> for CountReceived<S>
where
    S: Service<Request<CountedBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let counter = request.extensions().get::<ReceivedCounter>().map(|c| c.0.clone());
        self.inner.call(request.map(|inner| CountedBody::new(inner, counter)))
    }
}
