//! Traces, golden metrics and access logs for every request, on the client and the server side.
//!
//! [`TelemetryLayer`] is the outermost layer of both stacks (see `docs/architecture.md`), so it
//! sees what the application sees: one span, one metrics sample and (optionally) one access-log
//! event per request, however many attempts the retry layer made below it.
//!
//! # Traces
//!
//! Each request gets a [`tracing`] span named after the OpenTelemetry semantic conventions for
//! HTTP and RPC (`otel.kind` client or server, `http.request.method`, `url.path`,
//! `http.response.status_code`, `server.address`, `rpc.system`/`rpc.service`/`rpc.method` and
//! `rpc.grpc.status_code` for gRPC, `error.type` and an error status on failure) plus mesh's own
//! attributes (`mesh.service`, `mesh.route`, `mesh.subset`, `mesh.endpoint`, `mesh.attempts`,
//! `mesh.peer_identity`). With the `tracing-opentelemetry` layer installed (the `otlp` feature's
//! [`otlp::OtlpTelemetry`] sets one up) they become OpenTelemetry spans.
//!
//! Sampling is decided before any span is built ([`TelemetryLayer::sample_ratio`]): a request
//! that continues a trace follows its caller, a new trace is sampled at the ratio, and an
//! unsampled request gets no span, only its own span context to carry on.
//!
//! Context flows with no help from the application: the server side reads W3C `traceparent`,
//! `tracestate` and `baggage` (and B3, with [`TelemetryLayer::accept_b3`]), runs the handler in
//! its span, and every mesh client call the handler makes is a child span whose context is
//! written on the outgoing request. Calls from tasks the handler spawns need the span carried
//! along (`tokio::spawn(fut.in_current_span())`), as with any `tracing` span.
//!
//! # Metrics
//!
//! `mesh_requests_total` and `mesh_request_duration_seconds` per direction, service, route,
//! subset, status class, gRPC code and peer identity, through the [`metrics`](::metrics) facade;
//! the table of every name is in [`crate::metrics`]. Each layer registers the handles of a label
//! set once and keeps them, so install the recorder before the first request.
//!
//! Beside them, opt in: Istio's standard metrics ([`istio`], through the same facade) and gRPC's
//! OpenTelemetry metrics ([`grpc_otel`], gRFC A66 with Cloud Service Mesh's labels, through the
//! OpenTelemetry metrics API into the application's `MeterProvider`, which with the `otlp`
//! feature can be [`otlp::OtlpTelemetry::meter_provider`], exporting over OTLP).
//!
//! # Access log
//!
//! With [`TelemetryLayer::access_log`], one `tracing` event per request at `INFO` on the target
//! [`ACCESS_LOG_TARGET`] (`mesh::access`), so it can be routed or filtered on its own
//! (`RUST_LOG=mesh::access=info`).
//!
//! # Golden signals
//!
//! [`GoldenSignals`] keeps requests, success rate and latency percentiles per subset over a
//! sliding window, in process, for a canary controller to read.

mod body;
mod exchange;
mod grpc_frames;
pub mod grpc_otel;
pub mod istio;
mod metrics;
#[cfg(feature = "otlp")]
pub mod otlp;
pub(crate) mod propagation;
mod sampling;
mod service;

use std::{sync::Arc, time::Duration};

use mesh_core::{ServiceName, SubsetName};
use tower::Layer;

pub use self::body::TelemetryBody;
pub(crate) use self::body::on_frame as on_response_frame;
pub(crate) use self::exchange::{End, Exchange};
pub use self::istio::workload::WorkloadLabels;
pub(crate) use self::service::{Inbound, Scope, settle};
pub use self::service::{Telemetry, TelemetryError, TelemetryFuture};
pub use crate::golden::{GoldenSignals, SubsetSignals};

/// The `tracing` target of access-log events.
pub const ACCESS_LOG_TARGET: &str = "mesh::access";
/// The `tracing` target of request spans.
pub const SPAN_TARGET: &str = "mesh::trace";
/// The field every request span starts with (see `Exchange::span`), by which the pipeline's
/// sampler knows a span mesh built only because it sampled the request.
#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
pub(crate) const REQUEST_SPAN_MARK: &str = "mesh.direction";

/// Which side of a call a [`TelemetryLayer`] is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Requests this process sends (client side); metrics label `outbound`, span kind client.
    Outbound,
    /// Requests this process serves (server side); metrics label `inbound`, span kind server.
    Inbound,
}

impl Direction {
    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

/// Traces, metrics, access log and golden signals for every request. See the
/// [module docs](self).
///
/// Cheap to clone. Client side, hand it to
/// [`MeshClientBuilder::telemetry`](crate::client::MeshClientBuilder::telemetry) (the client stack
/// has one by default); server side, to
/// [`ServerBuilder::telemetry`](crate::server::ServerBuilder::telemetry), which puts it outermost,
/// above authorization and the caller's deadline.
///
/// Its service passes the inner service's errors on unchanged, so it fits where errors cannot
/// happen, such as an axum `Router`:
///
/// ```
/// use axum::{Router, routing::get};
/// use mesh_tower::{authz::AuthorizationLayer, telemetry::TelemetryLayer};
/// use mesh_core::policy::AuthorizationPolicy;
///
/// # fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let app: Router = Router::new()
///     .route("/reviews/{id}", get(|| async { "a review" }))
///     .layer(AuthorizationLayer::new(AuthorizationPolicy::enforce(vec![])))
///     .layer(TelemetryLayer::server("reviews".parse()?));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TelemetryLayer {
    shared: Arc<Shared>,
}

#[derive(Clone, Debug)]
pub(crate) struct Shared {
    pub(crate) direction: Direction,
    pub(crate) service: ServiceName,
    pub(crate) version: Option<SubsetName>,
    pub(crate) traces: bool,
    /// The layer's own head-sampling ratio; `None` follows the pipeline's.
    pub(crate) sample_ratio: Option<f64>,
    pub(crate) metrics: bool,
    pub(crate) access_log: bool,
    pub(crate) b3: bool,
    pub(crate) golden: GoldenSignals,
    pub(crate) attempts: GoldenSignals,
    pub(crate) request_metrics: metrics::SharedRequestMetrics,
    /// Istio's standard metrics, when on.
    pub(crate) istio: Option<Arc<istio::IstioMetrics>>,
    /// This workload, as Istio's metrics and the metadata exchange name it.
    pub(crate) workload: Option<WorkloadLabels>,
    /// Whether the peer-metadata headers are sent (read either way).
    pub(crate) send_peer_metadata: bool,
    /// gRPC's OpenTelemetry metrics (A66), when on.
    pub(crate) grpc: Option<Arc<grpc_otel::GrpcRecorder>>,
}

impl Shared {
    fn rebuild_istio(&mut self) {
        self.istio = self.workload.clone().map(|workload| {
            Arc::new(istio::IstioMetrics::new(self.direction, &self.service, workload, self.send_peer_metadata))
        });
    }

    /// The head-sampling ratio of new traces.
    pub(crate) fn sample_ratio(&self) -> f64 {
        self.sample_ratio.unwrap_or_else(sampling::pipeline_ratio)
    }
}

impl TelemetryLayer {
    /// The client side of calls to `service`.
    pub fn client(service: ServiceName) -> Self {
        Self::new(Direction::Outbound, service)
    }

    /// The server side of `service` (this process).
    pub fn server(service: ServiceName) -> Self {
        Self::new(Direction::Inbound, service)
    }

    fn new(direction: Direction, service: ServiceName) -> Self {
        Self {
            shared: Arc::new(Shared {
                direction,
                service: service.clone(),
                version: None,
                traces: true,
                sample_ratio: None,
                metrics: true,
                access_log: false,
                b3: false,
                golden: GoldenSignals::new(Duration::from_secs(60)),
                attempts: GoldenSignals::new(Duration::from_secs(60)),
                request_metrics: Arc::new(metrics::RequestMetrics::new(direction, service.clone())),
                istio: None,
                workload: None,
                send_peer_metadata: true,
                grpc: None,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }

    /// Server side: the version (subset) this process serves, for the `subset` label and the
    /// golden signals. Client side the subset is the one each request went to.
    pub fn version(self, version: SubsetName) -> Self {
        self.edit(|s| s.version = Some(version))
    }

    /// One span per sampled request (default on). Off, requests still carry the trace context
    /// on (server side from the caller to the handler's calls, client side onto the wire).
    pub fn traces(self, on: bool) -> Self {
        self.edit(|s| s.traces = on)
    }

    /// The share of new traces (requests that arrive without a caller's decision) this layer
    /// samples, 0.0 to 1.0 (values outside are clamped). Requests that continue a trace follow
    /// the caller's decision. Unsampled requests get no span, only a trace context to pass on.
    ///
    /// Default: the ratio of the [`otlp::OtlpTelemetry`] pipeline built last in this process
    /// ([`otlp::OtlpConfig::sample_ratio`]), or 1.0 (every request gets a span, and the
    /// OpenTelemetry SDK installed, if any, decides) when none was built.
    pub fn sample_ratio(self, ratio: f64) -> Self {
        self.edit(|s| s.sample_ratio = Some(sampling::clamp(ratio)))
    }

    /// Request counts and durations through the `metrics` facade (default on).
    pub fn metrics(self, on: bool) -> Self {
        self.edit(|s| s.metrics = on)
    }

    /// Istio's standard metrics beside mesh's own (default off): `istio_requests_total`,
    /// `istio_request_duration_milliseconds`, `istio_request_bytes`, `istio_response_bytes`,
    /// `istio_request_messages_total` and `istio_response_messages_total`, reporter `source` client side and `destination` server
    /// side, with `workload` as this side's labels and the peer's from its SPIFFE ID and the
    /// `x-envoy-peer-metadata` it sends. Turns on the metadata exchange (see
    /// [`send_peer_metadata`](Self::send_peer_metadata)). The names are in [`istio`].
    pub fn istio_metrics(self, workload: WorkloadLabels) -> Self {
        self.edit(|s| {
            s.workload = Some(workload);
            s.rebuild_istio();
        })
    }

    /// With [`istio_metrics`](Self::istio_metrics): whether this side sends its own
    /// `x-envoy-peer-metadata` and `x-envoy-peer-metadata-id` (default on: client side on
    /// requests, server side on responses). The peer's are read either way.
    pub fn send_peer_metadata(self, on: bool) -> Self {
        self.edit(|s| {
            s.send_peer_metadata = on;
            s.rebuild_istio();
        })
    }

    /// gRPC's OpenTelemetry metrics (gRFC A66, with CSM's labels when `metrics` has
    /// [`csm`](grpc_otel::GrpcMetrics::csm)) for the gRPC calls this layer sees, recorded into the
    /// meter provider `metrics` was made from (default off). Client side the call's duration is
    /// measured here and each attempt's by the client stack's [`grpc_otel::AttemptLayer`] (so
    /// hand this layer to [`MeshClientBuilder::telemetry`](crate::client::MeshClientBuilder::telemetry));
    /// server side the received message sizes are counted by [`grpc_otel::CountRequestBody`] around
    /// the application (`mesh_tonic::GrpcServer` puts it there). See [`grpc_otel`].
    pub fn grpc_metrics(self, metrics: grpc_otel::GrpcMetrics) -> Self {
        self.edit(|s| s.grpc = Some(Arc::new(grpc_otel::GrpcRecorder::new(s.direction, &s.service, &metrics))))
    }

    /// The gRPC metrics' recorder, for the client stack's attempt layer.
    pub(crate) fn grpc_recorder(&self) -> Option<Arc<grpc_otel::GrpcRecorder>> {
        self.shared.grpc.clone()
    }

    /// One access-log event per request on [`ACCESS_LOG_TARGET`] (default off).
    pub fn access_log(self, on: bool) -> Self {
        self.edit(|s| s.access_log = on)
    }

    /// Server side: accept a B3 parent (`b3` or `X-B3-*` headers) when the request has no W3C
    /// `traceparent` (default off).
    pub fn accept_b3(self, on: bool) -> Self {
        self.edit(|s| s.b3 = on)
    }

    /// The sliding window of the golden signals (default 60 s). Starts fresh sets of signals:
    /// call it before [`golden_signals`](Self::golden_signals) and
    /// [`attempt_signals`](Self::attempt_signals).
    pub fn golden_window(self, window: Duration) -> Self {
        self.edit(|s| {
            s.golden = GoldenSignals::new(window);
            s.attempts = GoldenSignals::new(window);
        })
    }

    /// The golden signals of requests as the application saw them (client side: after retries,
    /// under the subset of the last attempt; server side: this server's version). Every service
    /// made from this layer (or its clones) records into them.
    pub fn golden_signals(&self) -> GoldenSignals {
        self.shared.golden.clone()
    }

    /// Client side: the golden signals of every attempt, under the subset it went to, timed to
    /// the response headers. Retries hide a failing canary from
    /// [`golden_signals`](Self::golden_signals) (its failed attempts succeed on the stable
    /// version); here they count against it, which is what canary analysis should read. Filled
    /// by the client of [`MeshClientBuilder::telemetry`](crate::client::MeshClientBuilder::telemetry).
    pub fn attempt_signals(&self) -> GoldenSignals {
        self.shared.attempts.clone()
    }

    /// Which side this layer is on.
    pub fn direction(&self) -> Direction {
        self.shared.direction
    }

    /// What [`Telemetry`] does to a request before it goes on: its exchange started, and the
    /// scope it is served in.
    pub(crate) fn begin<B: http_body::Body>(&self, request: &mut http::Request<B>) -> (Exchange, Scope) {
        service::begin(&self.shared, request)
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Telemetry::new(inner, self.shared.clone())
    }
}
