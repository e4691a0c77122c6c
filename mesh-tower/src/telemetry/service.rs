use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::Service;
use tracing::Span;

use super::{Direction, Shared, TelemetryBody, exchange::Exchange, propagation};
use crate::BoxError;

/// The service [`TelemetryLayer`](super::TelemetryLayer) makes.
#[derive(Clone, Debug)]
pub struct Telemetry<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Telemetry<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

/// An error telemetry can read without taking it: its service passes errors on unchanged (so a
/// service that cannot fail, such as an axum `Router`, stays one), and records what it can of
/// them. Implemented for mesh's [`BoxError`], for [`Infallible`](std::convert::Infallible),
/// and for the error types of hyper and `std::io`; map other errors to one of these.
pub trait TelemetryError {
    /// The error, to classify and describe.
    fn as_error(&self) -> &(dyn std::error::Error + 'static);
}

impl TelemetryError for BoxError {
    fn as_error(&self) -> &(dyn std::error::Error + 'static) {
        self.as_ref()
    }
}

impl TelemetryError for std::convert::Infallible {
    fn as_error(&self) -> &(dyn std::error::Error + 'static) {
        match *self {}
    }
}

impl TelemetryError for hyper::Error {
    fn as_error(&self) -> &(dyn std::error::Error + 'static) {
        self
    }
}

impl TelemetryError for std::io::Error {
    fn as_error(&self) -> &(dyn std::error::Error + 'static) {
        self
    }
}

impl<S, B, RB> Service<Request<B>> for Telemetry<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    RB: http_body::Body,
    S::Error: TelemetryError,
{
    type Response = Response<TelemetryBody<RB>>;
    type Error = S::Error;
    type Future = TelemetryFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let mut exchange = Exchange::start(&self.shared, &request);
        let attach = match self.shared.direction {
            Direction::Inbound => {
                // The handler runs in the span parented on the caller's context, and in that
                // context as the current OpenTelemetry context, so even without an OpenTelemetry
                // `tracing` layer the mesh calls it makes carry the trace and baggage on.
                let parent = propagation::extract(request.headers(), self.shared.b3);
                // Only fails when no OpenTelemetry layer is installed (or the span is disabled):
                // then the parent context travels as the current OpenTelemetry context below.
                let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&exchange.span, parent.clone());
                let cx = exchange.otel_context().unwrap_or(parent);
                exchange.note_trace(&cx);
                Some(cx)
            }
            Direction::Outbound => {
                let cx = exchange.otel_context().unwrap_or_else(opentelemetry::Context::current);
                propagation::inject(&cx, request.headers_mut());
                exchange.note_trace(&cx);
                None
            }
        };
        // Server side the handler runs inside the span (its own spans and mesh calls are
        // children). Client side nothing of the application's runs below this layer, so the span
        // is not entered on every poll: with an OpenTelemetry layer that is a context switch each
        // time, for nothing.
        let span = match self.shared.direction {
            Direction::Inbound => exchange.span.clone(),
            Direction::Outbound => Span::none(),
        };
        let inner = {
            let _entered = span.enter();
            let _attached = attach.clone().map(opentelemetry::Context::attach);
            self.inner.call(request)
        };
        TelemetryFuture { inner, span, attach, exchange: Some(exchange) }
    }
}

pin_project! {
    /// The response future of [`Telemetry`]: polls the inner future inside the request's span.
    pub struct TelemetryFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        attach: Option<opentelemetry::Context>,
        exchange: Option<Exchange>,
    }
}

impl<F, RB, E> Future for TelemetryFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    RB: http_body::Body,
    E: TelemetryError,
{
    type Output = Result<Response<TelemetryBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.enter();
            let _attached = this.attach.clone().map(opentelemetry::Context::attach);
            ready!(this.inner.poll(cx))
        };
        let Some(mut exchange) = this.exchange.take() else {
            // Polled again after it completed: tower's contract says this does not happen.
            return Poll::Pending;
        };
        Poll::Ready(match result {
            Ok(response) => {
                exchange.on_response(&response);
                Ok(response.map(|body| TelemetryBody::new(body, exchange)))
            }
            // (An empty body may never be polled: `TelemetryBody::new` ends the exchange then.)
            Err(error) => {
                exchange.finish_error(error.as_error());
                Err(error)
            }
        })
    }
}

impl<F> std::fmt::Debug for TelemetryFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryFuture").finish_non_exhaustive()
    }
}
