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

use super::metrics::{ConnectionMetrics, ConnectionTelemetry};
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
        let (exchange, scope) = begin(&self.shared, &mut request);
        let inner = scope.in_scope(|| self.inner.call(request));
        TelemetryFuture::new(inner, scope, exchange)
    }
}

/// A request's exchange, and the scope what serves it runs in: server side the caller's context
/// extracted; client side the context written on the request (and Istio's and gRPC's metadata),
/// with no scope. Marks the request for
/// [`CountRequestBody`](super::grpc_otel::CountRequestBody) when a metric wants its body counted.
pub(crate) fn begin<B: http_body::Body>(shared: &Arc<Shared>, request: &mut Request<B>) -> (Exchange, Scope) {
    let (exchange, scope) = match shared.direction {
        Direction::Inbound => start_inbound(shared, request),
        Direction::Outbound => {
            let (mut exchange, cx) = outbound(shared, request);
            propagation::inject(&cx, request.headers_mut());
            if let Some(istio) = &shared.istio {
                istio.send(request.headers_mut());
                exchange.note_request_size(request.body().size_hint().exact());
            }
            if let Some(grpc) = &shared.grpc {
                grpc.send(request.headers_mut());
            }
            // Client side nothing of the application's runs below this layer, so the span is
            // not entered on every poll: with an OpenTelemetry layer that is a context switch
            // each time, for nothing.
            (exchange, Scope::none())
        }
    };
    if let Some(counter) = exchange.request_counter() {
        request.extensions_mut().insert(counter);
    }
    (exchange, scope)
}

/// Where the handler of an inbound request runs: inside the request's span (its own spans and
/// mesh calls are children) and its OpenTelemetry context.
pub(crate) struct Scope {
    span: Span,
    attach: Option<opentelemetry::Context>,
}

impl Scope {
    /// No span, no context (client side, or telemetry off).
    pub(crate) fn none() -> Self {
        Self { span: Span::none(), attach: None }
    }

    /// Runs `f` inside the request's span only (for work that logs but makes no calls).
    pub(crate) fn in_span<R>(&self, f: impl FnOnce() -> R) -> R {
        self.span.in_scope(f)
    }

    /// Runs `f` inside the scope.
    pub(crate) fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _entered = self.span.enter();
        let _attached = self.attach.clone().map(opentelemetry::Context::attach);
        f()
    }
}

/// Server side: a request's exchange and the scope its handler runs in.
pub(crate) fn start_inbound<B>(shared: &Arc<Shared>, request: &Request<B>) -> (Exchange, Scope) {
    let (exchange, attach) = inbound(shared, request);
    let span = exchange.span.clone();
    (exchange, Scope { span, attach })
}

/// The end of a response future: the response's head read and its body wrapped to settle the
/// exchange at its end, or the error recorded.
pub(crate) fn settle<RB: http_body::Body, E: TelemetryError>(
    mut exchange: Exchange,
    result: Result<Response<RB>, E>,
) -> Result<Response<TelemetryBody<RB>>, E> {
    match result {
        Ok(mut response) => {
            exchange.on_response(&mut response);
            Ok(response.map(|body| TelemetryBody::new(body, exchange)))
        }
        // (An empty body may never be polled: `TelemetryBody::new` ends the exchange then.)
        Err(error) => {
            exchange.finish_error(error.as_error());
            Err(error)
        }
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
        scope: Scope,
        exchange: Option<Exchange>,
    }
}

impl<F> TelemetryFuture<F> {
    /// `inner`, polled in `scope`, its outcome settling `exchange`.
    pub(crate) fn new(inner: F, scope: Scope, exchange: Exchange) -> Self {
        Self { inner, scope, exchange: Some(exchange) }
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
        let result = ready!(this.scope.in_scope(|| this.inner.poll(cx)));
        match this.exchange.take() {
            Some(exchange) => Poll::Ready(settle(exchange, result)),
            // Polled again after it completed: tower's contract says this does not happen.
            None => Poll::Pending,
        }
    }
}

impl<F> std::fmt::Debug for TelemetryFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryFuture").finish_non_exhaustive()
    }
}

/// Server-side telemetry of one accepted connection (see `server/service.rs`).
pub(crate) struct Inbound {
    shared: Arc<Shared>,
    connection: Arc<ConnectionTelemetry>,
}

impl Inbound {
    pub(crate) fn new(layer: &super::TelemetryLayer) -> Self {
        let shared = layer.shared.clone();
        let golden = shared.golden.subset_window(shared.version.as_ref());
        Self { connection: Arc::new(ConnectionTelemetry { metrics: ConnectionMetrics::default(), golden }), shared }
    }

    /// A request's exchange and the scope its handler runs in; marks the request for
    /// [`CountRequestBody`](super::grpc_otel::CountRequestBody) when a metric wants its body
    /// counted.
    pub(crate) fn start<B>(&self, request: &mut Request<B>) -> (Exchange, Scope) {
        let (mut exchange, scope) = start_inbound(&self.shared, request);
        exchange.on_connection(self.connection.clone());
        if let Some(counter) = exchange.request_counter() {
            request.extensions_mut().insert(counter);
        }
        (exchange, scope)
    }
}
