//! The request body's bytes and messages. The telemetry layer sits at the top of a stack, where
//! the request body is still the caller's own type (hyper's, server side); this service sits
//! below it and counts the body into the exchange the telemetry layer started (a request
//! extension), so what is below sees a body it reads as any other. Server side
//! `mesh_tonic::GrpcServer` puts it above the application; the client stack right below its
//! telemetry.

use std::task::{Context, Poll};

use http::Request;
use tower::{Layer, Service};

use super::body::{BodyCounts, CountedBody};

/// The request extension by which the telemetry layer asks [`CountRequestBody`] to count a
/// request's body.
#[derive(Clone, Debug)]
pub(crate) struct RequestCounts(pub(crate) std::sync::Arc<BodyCounts>);

/// Counts each request body's bytes and gRPC messages for the telemetry layer above it (the
/// server's `grpc.server.call.rcvd_total_compressed_message_size`, Istio's request bytes and
/// messages). Server side put it around the application, below
/// [`TelemetryLayer::server`](crate::telemetry::TelemetryLayer::server); requests the telemetry
/// layer did not mark pass through uncounted.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountRequestBodyLayer;

impl<S> Layer<S> for CountRequestBodyLayer {
    type Service = CountRequestBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountRequestBody { inner }
    }
}

/// The service of [`CountRequestBodyLayer`].
#[derive(Clone, Debug)]
pub struct CountRequestBody<S> {
    inner: S,
}

impl<S> CountRequestBody<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> Service<Request<B>> for CountRequestBody<S>
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
        self.inner.call(counted(request))
    }
}

/// `request` with its body counted, when the telemetry layer above asked for it.
pub(crate) fn counted<B>(request: Request<B>) -> Request<CountedBody<B>> {
    let counter = request.extensions().get::<RequestCounts>().map(|c| c.0.clone());
    request.map(|inner| CountedBody::new(inner, counter))
}
