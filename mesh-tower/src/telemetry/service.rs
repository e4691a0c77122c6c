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

use opentelemetry::trace::TraceContextExt;

use super::{
    Direction, Shared, TelemetryBody,
    exchange::Exchange,
    propagation,
    sampling::{self, Head},
};
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
    B: http_body::Body,
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
        let (exchange, attach) = match self.shared.direction {
            Direction::Inbound => {
                let (exchange, cx) = inbound(&self.shared, &request);
                if let Some(counter) = exchange.request_counter() {
                    request.extensions_mut().insert(counter);
                }
                (exchange, cx)
            }
            Direction::Outbound => {
                let (mut exchange, cx) = outbound(&self.shared, &request);
                propagation::inject(&cx, request.headers_mut());
                if let Some(istio) = &self.shared.istio {
                    istio.send(request.headers_mut());
                    exchange.note_request_size(request.body().size_hint().exact());
                }
                if let Some(grpc) = &self.shared.grpc {
                    grpc.send(request.headers_mut());
                }
                if let Some(counter) = exchange.request_counter() {
                    request.extensions_mut().insert(counter);
                }
                (exchange, None)
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

/// Server side: the exchange, and the context the handler runs in (the caller's trace, with this
/// request's span or, unsampled, its own span context), so even without an OpenTelemetry
/// `tracing` layer the mesh calls the handler makes carry the trace and baggage on.
fn inbound<B>(shared: &Arc<Shared>, request: &Request<B>) -> (Exchange, Option<opentelemetry::Context>) {
    let (base, remote) = propagation::extract_parent(request.headers(), shared.b3);
    let head = sampling::decide(&remote, shared.sample_ratio());
    let parent = || if remote.is_valid() { base.with_remote_span_context(remote.clone()) } else { base.clone() };
    let cx = match head {
        Head::Sampled if shared.traces => {
            let parent = parent();
            let mut exchange = Exchange::start(shared, request, true);
            // Only fails when no OpenTelemetry layer is installed (or the span is disabled):
            // then the parent context travels as the current OpenTelemetry context below.
            let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&exchange.span, parent.clone());
            let cx = exchange.otel_context().unwrap_or(parent);
            exchange.note_trace(&cx);
            return (exchange, Some(cx));
        }
        Head::Sampled => parent(),
        Head::Unsampled(own) => base.with_remote_span_context(own),
    };
    let mut exchange = Exchange::start(shared, request, false);
    exchange.note_trace(&cx);
    (exchange, Some(cx))
}

/// Client side: the exchange, and the context to write on the request (this request's span, or
/// unsampled its own span context, in the trace of the span or context current at the call).
fn outbound<B>(shared: &Arc<Shared>, request: &Request<B>) -> (Exchange, opentelemetry::Context) {
    let parent = current_context();
    let head = sampling::decide(parent.span().span_context(), shared.sample_ratio());
    let (mut exchange, cx) = match head {
        Head::Sampled if shared.traces => {
            let mut exchange = Exchange::start(shared, request, true);
            let cx = exchange.otel_context().unwrap_or(parent);
            (exchange, cx)
        }
        Head::Sampled => (Exchange::start(shared, request, false), parent),
        Head::Unsampled(own) => (Exchange::start(shared, request, false), parent.with_remote_span_context(own)),
    };
    exchange.note_trace(&cx);
    (exchange, cx)
}

/// The OpenTelemetry context a call made now belongs to: the current `tracing` span's (a mesh
/// server span, or the application's own) when it has one, else the current context (which the
/// server side sets for an unsampled request, or the application attached).
fn current_context() -> opentelemetry::Context {
    let span = Span::current();
    if !span.is_none() {
        let cx = tracing_opentelemetry::OpenTelemetrySpanExt::context(&span);
        if cx.span().span_context().is_valid() {
            return cx;
        }
    }
    opentelemetry::Context::current()
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
            Ok(mut response) => {
                exchange.on_response(&mut response);
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
