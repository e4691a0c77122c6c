//! One request's telemetry from start to end: its span, what the response said, and the single
//! place that records metrics, golden signals and the access log when it ends.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use http::{HeaderMap, Method, Request, Response, StatusCode};
use mesh_core::{RouteName, SpiffeId, SubsetName};
use opentelemetry::trace::{TraceContextExt, TraceId};
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{
    ACCESS_LOG_TARGET, Direction, SPAN_TARGET, Shared,
    grpc_frames::GrpcFrames,
    grpc_otel::{self, CallStart, ServerCall},
    istio::{self, labels::Ending},
    metrics::{ConnectionTelemetry, RequestLabels},
};
use crate::{
    ConnectionInfo, PeerIdentity, Upstream,
    classify::{self, Class, ClassifyHead, TransportFailure},
    deadline_body::Deadline,
    failure::{ClientError, ErrorKind},
    grpc,
};

/// How the exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The response body reached its end.
    Complete,
    /// The response body failed part way.
    BodyError,
    /// The response was dropped before its end (the caller stopped reading).
    Dropped,
    /// No response: the service failed.
    Failed(ErrorKind),
}

pub(crate) struct Exchange {
    shared: Arc<Shared>,
    pub(crate) span: Span,
    start: Instant,
    method: Method,
    /// Only kept for the access log: raw paths never become metric labels.
    path: Option<Box<str>>,
    grpc: bool,
    status: Option<StatusCode>,
    grpc_code: Option<u16>,
    /// The verdict, once known: from the response head, or from its trailers.
    class: Option<Class>,
    route: Option<RouteName>,
    subset: Option<SubsetName>,
    endpoint: Option<SocketAddr>,
    attempts: u32,
    peer: Option<SpiffeId>,
    /// Client side: the call's deadline, while it guards the response body.
    deadline: Option<Deadline>,
    trace_id: Option<TraceId>,
    /// Whether the span's fields are worth recording (see [`Exchange::record`]).
    recording: bool,
    /// What Istio's metrics need beyond the above, when they are on. Boxed, as `grpc_call`: the
    /// exchange travels inside the response body and is moved with it, and without those
    /// metrics these would double its size.
    istio: Option<Box<istio::Observed>>,
    /// A gRPC call's state for gRPC's OpenTelemetry metrics, when they are on.
    grpc_call: Option<Box<GrpcCall>>,
    /// The request body's bytes and messages, counted below this layer, when a metric wants them.
    request_counts: Option<Arc<grpc_otel::BodyCounts>>,
    /// The code a gRPC caller sees for the error that failed the exchange.
    error_code: Option<u16>,
    /// Server side, with the server's own stack: what the connection's requests share.
    connection: Option<Arc<ConnectionTelemetry>>,
    done: bool,
}

/// A gRPC call under A66's metrics: client side the call (its attempts are measured below), server
/// side the call with the response's messages counted here.
enum GrpcCall {
    Client(CallStart),
    Server(ServerCall, GrpcFrames),
}

/// `/package.Service/Method` split into service and method.
fn rpc_names(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some((service, method))
}

impl Exchange {
    /// Starts the exchange of `request`, with its span when `traced` (the request was sampled).
    pub(crate) fn start<B>(shared: &Arc<Shared>, request: &Request<B>, traced: bool) -> Self {
        let grpc = grpc::is_grpc(request.headers());
        let path = request.uri().path();
        let span = if traced { Self::span(shared, request, grpc, path) } else { Span::none() };
        let mut exchange = Self {
            shared: shared.clone(),
            span,
            start: Instant::now(),
            method: request.method().clone(),
            path: shared.access_log.then(|| path.into()),
            grpc,
            status: None,
            grpc_code: None,
            class: None,
            route: None,
            subset: shared.version.clone(),
            endpoint: None,
            attempts: 1,
            peer: None,
            deadline: None,
            trace_id: None,
            recording: traced,
            istio: shared.istio.as_ref().map(|_| Box::default()),
            grpc_call: None,
            request_counts: None,
            error_code: None,
            connection: None,
            done: false,
        };
        // Istio's request bytes and messages either side; gRPC's received sizes server side.
        let server_grpc = shared.direction == Direction::Inbound && shared.grpc.is_some() && grpc;
        if shared.istio.is_some() || server_grpc {
            exchange.request_counts = Some(Arc::default());
        }
        if let Some(recorder) = shared.grpc.as_ref().filter(|_| grpc) {
            exchange.grpc_call = Some(Box::new(match shared.direction {
                Direction::Outbound => GrpcCall::Client(recorder.start_call(path)),
                Direction::Inbound => {
                    let peer = request.headers().get(istio::peer_metadata::PEER_METADATA).cloned();
                    GrpcCall::Server(recorder.start_server(path, peer), GrpcFrames::default())
                }
            }));
        }
        if let Some(observed) = &mut exchange.istio {
            observed.request_bytes = request_size(request.headers()).unwrap_or(0);
            if shared.direction == Direction::Inbound {
                observed.read_peer(request.headers());
            }
        }
        if shared.direction == Direction::Inbound {
            exchange.peer = request.extensions().get::<PeerIdentity>().map(|p| p.id().clone());
            if let Some(peer) = &exchange.peer {
                exchange.span.record("mesh.peer_identity", peer.as_str());
            }
        }
        exchange
    }

    fn span<B>(shared: &Shared, request: &Request<B>, grpc: bool, path: &str) -> Span {
        let (kind, direction) = match shared.direction {
            Direction::Outbound => ("client", "outbound"),
            Direction::Inbound => ("server", "inbound"),
        };
        let method = request.method().as_str();
        let rpc = if grpc { rpc_names(path) } else { None };
        let span = tracing::info_span!(
            target: SPAN_TARGET,
            "request",
            otel.name = Empty,
            otel.kind = kind,
            otel.status_code = Empty,
            otel.status_description = Empty,
            http.request.method = method,
            url.path = path,
            http.response.status_code = Empty,
            server.address = Empty,
            server.port = Empty,
            client.address = Empty,
            rpc.system = Empty,
            rpc.service = Empty,
            rpc.method = Empty,
            rpc.grpc.status_code = Empty,
            error.type = Empty,
            mesh.direction = direction,
            mesh.service = shared.service.as_str(),
            mesh.route = Empty,
            mesh.subset = Empty,
            mesh.endpoint = Empty,
            mesh.attempts = Empty,
            mesh.peer_identity = Empty,
        );
        if span.is_disabled() {
            return span;
        }
        // Span names stay low-cardinality: `package.Service/Method` for gRPC, the method for HTTP.
        match rpc {
            Some((service, method)) => {
                span.record("otel.name", format_args!("{service}/{method}"));
                span.record("rpc.system", "grpc");
                span.record("rpc.service", service);
                span.record("rpc.method", method);
            }
            None => {
                span.record("otel.name", method);
            }
        }
        if let Some(version) = &shared.version {
            span.record("mesh.subset", version.as_str());
        }
        if shared.direction == Direction::Inbound
            && let Some(info) = request.extensions().get::<ConnectionInfo>()
        {
            span.record("server.address", format_args!("{}", info.local_addr.ip()));
            span.record("server.port", info.local_addr.port());
            span.record("client.address", format_args!("{}", info.remote_addr.ip()));
        }
        span
    }

    /// Records a field on the span, unless nobody will see it: an OpenTelemetry span that was not
    /// sampled is never exported, so its attributes are not worth building (OpenTelemetry's own
    /// instrumentation checks `is_recording` the same way).
    fn record(&self, field: &str, value: impl tracing::Value) {
        if self.recording {
            self.span.record(field, value);
        }
    }

    /// Server side: the request arrived on a connection whose telemetry is `connection` (its
    /// peer and subset are this exchange's).
    pub(crate) fn on_connection(&mut self, connection: Arc<ConnectionTelemetry>) {
        self.connection = Some(connection);
    }

    /// The trace this exchange belongs to, for the access log (read once the span has a parent).
    pub(crate) fn note_trace(&mut self, cx: &opentelemetry::Context) {
        let span = cx.span();
        let id = span.span_context().trace_id();
        if id != TraceId::INVALID {
            self.trace_id = Some(id);
        }
    }

    /// The span's OpenTelemetry context, if an OpenTelemetry layer is installed and enabled it.
    /// Starts the OpenTelemetry span (its sampling decision is made here): an unsampled one stops
    /// recording fields (see [`Exchange::record`]).
    pub(crate) fn otel_context(&mut self) -> Option<opentelemetry::Context> {
        if self.span.is_disabled() {
            return None;
        }
        let cx = self.span.context();
        let span_context = cx.span().span_context().clone();
        if !span_context.is_valid() {
            return None;
        }
        if !span_context.is_sampled() {
            self.recording = false;
        }
        Some(cx)
    }

    /// The request extension by which the request body is counted below this layer, when a
    /// metric wants its bytes or messages.
    pub(crate) fn request_counter(&self) -> Option<grpc_otel::RequestCounts> {
        self.request_counts.clone().map(grpc_otel::RequestCounts)
    }

    /// Reads what the response head says: status, trailers-only gRPC status, and (client side)
    /// where it went and who answered.
    pub(crate) fn on_response<B>(&mut self, response: &mut Response<B>) {
        if let (Some(recorder), Direction::Inbound) = (&self.shared.grpc, self.shared.direction) {
            recorder.send(response.headers_mut());
        }
        if let (Some(istio), Some(observed)) = (&self.shared.istio, &mut self.istio) {
            match self.shared.direction {
                Direction::Inbound => {
                    istio.send(response.headers_mut());
                    observed.denied = response.extensions().get::<crate::authz::Denied>().is_some();
                }
                Direction::Outbound => observed.read_peer(response.headers()),
            }
        }
        let status = response.status();
        self.status = Some(status);
        self.record("http.response.status_code", status.as_u16());
        self.on_grpc_status(response.headers());
        if let ClassifyHead::Ready(class) = classify::head(status, response.headers()) {
            self.class = Some(class);
        }
        if self.shared.direction == Direction::Outbound {
            if let Some(upstream) = response.extensions().get::<Upstream>() {
                self.note_upstream(
                    upstream.route.as_ref(),
                    upstream.subset.as_ref(),
                    Some(upstream.address),
                    upstream.attempt,
                );
            }
            if let Some(peer) = response.extensions().get::<PeerIdentity>() {
                self.record("mesh.peer_identity", peer.id().as_str());
                self.peer = Some(peer.id().clone());
            }
            self.deadline = response.extensions().get::<Deadline>().copied();
        }
    }

    /// Client side: where the request went, from the response's `Upstream` or the error.
    fn note_upstream(
        &mut self,
        route: Option<&RouteName>,
        subset: Option<&SubsetName>,
        endpoint: Option<SocketAddr>,
        attempts: u32,
    ) {
        self.route = route.cloned();
        self.subset = subset.cloned();
        self.endpoint = endpoint;
        self.attempts = attempts;
        if let Some(address) = endpoint {
            self.record("server.address", format_args!("{}", address.ip()));
            self.record("server.port", address.port());
            self.record("mesh.endpoint", format_args!("{address}"));
        }
        self.record("mesh.attempts", attempts);
        if let Some(route) = route {
            self.record("mesh.route", route.as_str());
        }
        if let Some(subset) = subset {
            self.record("mesh.subset", subset.as_str());
        }
    }

    /// A `grpc-status` in the response headers (trailers-only).
    fn on_grpc_status(&mut self, headers: &HeaderMap) {
        if let Some(code) = grpc::status(headers) {
            self.grpc_code = Some(code);
            self.record("rpc.grpc.status_code", code);
        }
    }

    /// Client side: the request's declared body size, once the caller's body is known.
    pub(crate) fn note_request_size(&mut self, size: Option<u64>) {
        if let (Some(observed), Some(size)) = (&mut self.istio, size) {
            observed.request_bytes = size;
        }
    }

    /// A data frame of the response body (only read with Istio's metrics on).
    pub(crate) fn on_data(&mut self, data: &[u8]) {
        if let Some(observed) = &mut self.istio {
            observed.on_data(data, self.grpc);
        }
        if let Some(GrpcCall::Server(_, frames)) = self.grpc_call.as_deref_mut() {
            frames.feed(data);
        }
    }

    /// Response bytes past the chunks [`Exchange::on_data`] saw.
    pub(crate) fn on_data_uncounted(&mut self, bytes: usize) {
        if let Some(observed) = &mut self.istio {
            observed.response_bytes += bytes as u64;
        }
    }

    /// Whether [`Exchange::on_data`] wants the response's bytes.
    pub(crate) fn reads_data(&self) -> bool {
        self.istio.is_some() || matches!(self.grpc_call.as_deref(), Some(GrpcCall::Server(..)))
    }

    /// The trailers at the end of the response body.
    pub(crate) fn on_trailers(&mut self, trailers: &HeaderMap) {
        self.on_grpc_status(trailers);
        if self.class.is_none()
            && let Some(status) = self.status
        {
            self.class = Some(classify::trailers(status, Some(trailers)));
        }
    }

    pub(crate) fn finish_error(&mut self, error: &(dyn std::error::Error + 'static)) {
        // Client side the error says where the request went, timeouts included.
        if let Some(client) = error.downcast_ref::<ClientError>() {
            self.note_upstream(client.route(), client.subset(), client.endpoint(), client.attempts());
        }
        self.class = Some(classify::error_of(error));
        if self.grpc_call.is_some() {
            self.error_code = Some(grpc_otel::code_of_error(error));
        }
        let kind = ErrorKind::of(error);
        self.record("otel.status_description", format_args!("{error}"));
        self.finish(End::Failed(kind));
    }

    /// Records the exchange once: span status, metrics, golden signals, access log.
    pub(crate) fn finish(&mut self, end: End) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.start.elapsed();
        let (end, cut_off) = match self.cut_off_by_deadline(end) {
            true => (End::Failed(ErrorKind::Timeout), true),
            false => (end, false),
        };
        let class = self.class_at(end);
        // Mesh's own refusals (no route, shed, ...) never reached a server but failed the request.
        let server_failure = matches!(end, End::Failed(_)) || class.is_server_failure();
        let error_type = match end {
            End::Failed(kind) => Some(kind.as_str()),
            End::BodyError => Some("body"),
            End::Complete | End::Dropped => None,
        };
        // Semantic conventions: a client span fails on any 4xx/5xx or non-OK gRPC status; a
        // server span only on what is the server's fault.
        let span_failed = match self.shared.direction {
            Direction::Outbound => error_type.is_some() || class.is_failure(),
            Direction::Inbound => server_failure,
        };
        if let Some(kind) = error_type {
            self.record("error.type", kind);
        } else if span_failed {
            match (self.grpc_code, self.status) {
                (Some(code), _) if code != 0 => self.record("error.type", grpc::code_name(code)),
                (_, Some(status)) => self.record("error.type", status.as_u16()),
                _ => {}
            }
        }
        // A failure without a response already set an error status with its description.
        if span_failed && (cut_off || !matches!(end, End::Failed(_))) {
            self.record("otel.status_code", "error");
        }
        if self.shared.metrics {
            self.record_metrics(elapsed);
        }
        if let (Some(observed), Some(counts)) = (&mut self.istio, &self.request_counts) {
            // A body read in part counts what was read; a declared length, what was declared.
            observed.request_bytes = observed.request_bytes.max(counts.bytes());
            observed.request_messages = counts.messages();
        }
        if let (Some(istio), Some(observed)) = (&self.shared.istio, &self.istio) {
            istio.record(observed, &self.istio_outcome(end, elapsed));
        }
        if let (Some(recorder), Some(call)) = (&self.shared.grpc, &self.grpc_call) {
            self.record_grpc(recorder, call, end, elapsed);
        }
        match &self.connection {
            Some(connection) => connection.golden.record(elapsed, !server_failure),
            None => self.shared.golden.record(self.subset.as_ref(), elapsed, !server_failure),
        }
        if self.shared.access_log {
            self.access_log(end, elapsed);
        }
    }

    /// Whether the call's deadline ended the response body: it failed, was dropped, or ended
    /// with `DEADLINE_EXCEEDED`, once the deadline passed (here, or at the server it was told
    /// to). That is a timeout, as a late head is.
    fn cut_off_by_deadline(&self, end: End) -> bool {
        let ended_by_it = match end {
            End::BodyError | End::Dropped => true,
            End::Complete => self.grpc_code == Some(grpc::code::DEADLINE_EXCEEDED),
            End::Failed(_) => false,
        };
        ended_by_it && self.deadline.is_some_and(|d| d.has_passed_at_peer())
    }

    /// The request's verdict by the one classifier, however it ended.
    fn class_at(&self, end: End) -> Class {
        match (end, self.class) {
            (End::BodyError, _) => Class::Transport(TransportFailure::Reset),
            (_, Some(class)) => class,
            // A gRPC response whose body ended without a status.
            (End::Complete, None) => match self.status {
                Some(status) => classify::trailers(status, None),
                None => Class::Cancelled,
            },
            (End::Dropped | End::Failed(_), None) => Class::Cancelled,
        }
    }

    fn record_metrics(&self, elapsed: std::time::Duration) {
        let status_class = match self.status {
            Some(status) => status_class(status),
            None => "error",
        };
        let grpc_code = match (self.grpc, self.grpc_code) {
            (_, Some(code)) => grpc::code_name(code),
            (true, None) => "NONE",
            (false, None) => "",
        };
        let labels = || RequestLabels {
            route: self.route.clone(),
            subset: self.subset.clone(),
            status_class,
            grpc_code,
            peer: self.peer.clone(),
        };
        let metrics = &self.shared.request_metrics;
        match &self.connection {
            Some(connection) => connection.metrics.record(metrics, status_class, grpc_code, labels, elapsed),
            None => metrics.record(labels(), elapsed),
        }
    }

    /// gRPC's OpenTelemetry metrics of the call: the status the caller sees, however it ended.
    fn record_grpc(&self, recorder: &grpc_otel::GrpcRecorder, call: &GrpcCall, end: End, elapsed: std::time::Duration) {
        let code = match (self.grpc_code, end) {
            (Some(code), _) => code,
            (None, End::Failed(_)) => self.error_code.unwrap_or(grpc::code::UNAVAILABLE),
            (None, End::Dropped) => grpc::code::CANCELLED,
            (None, End::BodyError) => match self.shared.direction {
                Direction::Outbound => grpc::code::UNAVAILABLE,
                Direction::Inbound => grpc::code::UNKNOWN,
            },
            (None, End::Complete) => grpc_otel::code_of_response(self.status),
        };
        match call {
            GrpcCall::Client(call) => recorder.finish_call(call, code, elapsed),
            GrpcCall::Server(call, frames) => recorder.finish(
                &call.method,
                &grpc_otel::Ending {
                    code,
                    elapsed,
                    sent: frames.message_bytes(),
                    rcvd: self.request_counts.as_ref().map_or(0, |c| c.message_bytes()),
                    peer: call.peer.as_ref(),
                    backend: None,
                },
            ),
        }
    }

    fn istio_outcome(&self, end: End, elapsed: std::time::Duration) -> istio::Outcome<'_> {
        istio::Outcome {
            peer: self.peer.as_ref(),
            subset: self.subset.as_ref(),
            status: self.status,
            grpc: self.grpc,
            grpc_code: self.grpc_code,
            ending: match end {
                End::Complete => Ending::Complete,
                End::BodyError => Ending::BodyError,
                End::Dropped => Ending::Dropped,
                End::Failed(kind) => Ending::Failed(kind),
            },
            elapsed,
        }
    }

    fn access_log(&self, end: End, elapsed: std::time::Duration) {
        let outcome = match end {
            End::Complete => "complete",
            End::BodyError => "body_error",
            End::Dropped => "dropped",
            End::Failed(kind) => kind.as_str(),
        };
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            direction = self.shared.direction.as_str(),
            service = self.shared.service.as_str(),
            method = self.method.as_str(),
            path = self.path.as_deref().unwrap_or(""),
            status = self.status.map_or(0, |s| s.as_u16()),
            grpc_status = self.grpc_code.map(i64::from).unwrap_or(-1),
            duration_us = elapsed.as_micros() as u64,
            peer = self.peer.as_ref().map_or("", |p| p.as_str()),
            upstream = self.endpoint.map(|a| a.to_string()).unwrap_or_default(),
            route = self.route.as_ref().map_or("", |r| r.as_str()),
            subset = self.subset.as_ref().map_or("", |s| s.as_str()),
            attempts = self.attempts,
            trace_id = self.trace_id.map(|t| t.to_string()).unwrap_or_default(),
            outcome,
            "request"
        );
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish(End::Dropped);
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// A request's `content-length`, when it declares one.
fn request_size(headers: &HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
