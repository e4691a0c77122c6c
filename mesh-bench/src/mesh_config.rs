//! The `mesh` configuration: mesh's whole client stack and mesh's server with authorization.
//!
//! The server process listens on [`ENDPOINTS`] ports, one endpoint each. Discovery
//! (`StaticDiscovery`) labels two endpoints `v1` and two `v2`, and the request's route
//! (`/hello`, after a header-matched route it does not take) splits 50/50 between the two
//! subsets, so every request goes through route match, a real weighted split and a real P2C pick
//! between two endpoints. The route has a retry policy (gateway errors and connect failures, up
//! to 3 attempts, with the default 20% budget) and a 5 s timeout; the service has a circuit
//! breaker and outlier detection. Connections are mutual TLS, verified by SPIFFE ID both ways;
//! the server allows exactly the client's SPIFFE ID. Both sides run `TelemetryLayer` (a span and
//! request metrics per request) with a real metrics recorder ([`install_telemetry`]). Nothing fails in the benchmark, so no
//! request is ever retried: what is measured is the bookkeeping every request pays.

use std::{path::Path, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use mesh_core::{
    Endpoint, HeaderMatch, PathMatch, Route, RouteMatch, RouteName, ServiceName, ServiceSnapshot, StaticDiscovery,
    Subset, Weight,
    policy::{
        AuthorizationPolicy, AuthorizationRule, CircuitBreaker, OutlierDetection, PrincipalMatch, RetryOn, RetryPolicy,
        ServicePolicies,
    },
};
use mesh_tower::{
    authz::AuthorizationLayer,
    client::{ClientConfig, MeshClient, Protocol},
    server::{Server, ServerHandle},
    telemetry::{
        TelemetryLayer, WorkloadLabels,
        grpc_otel::GrpcMetrics,
        istio,
        otlp::{OtlpConfig, OtlpTelemetry},
    },
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::{
    certs::{self, CLIENT_ID, SERVER_ID},
    plumbing::BoxError,
};

/// Endpoints (listening ports) of the mesh server process.
pub(crate) const ENDPOINTS: usize = 4;

/// How many endpoints the mesh server process listens on: [`ENDPOINTS`], or
/// `MESH_BENCH_ENDPOINTS` (1 to 8) to see what balancing over several costs. With one endpoint
/// the route has one target (`v1`), so no split and a balancer with one choice: a diagnostic,
/// not the `mesh` configuration the ratios are measured on.
pub(crate) fn endpoints() -> Result<usize, BoxError> {
    match std::env::var("MESH_BENCH_ENDPOINTS") {
        Err(_) => Ok(ENDPOINTS),
        Ok(text) => match text.parse::<usize>() {
            Ok(n @ 1..=8) => Ok(n),
            _ => Err(format!("MESH_BENCH_ENDPOINTS={text:?}: expected a number of endpoints from 1 to 8").into()),
        },
    }
}

/// What [`install_telemetry`] set up; keep it alive as long as the process serves.
#[derive(Debug)]
pub(crate) struct Telemetry {
    /// The Prometheus recorder's handle (rendering the text exposition is the scraper's job).
    pub(crate) prometheus: PrometheusHandle,
    /// The trace export pipeline.
    pub(crate) otlp: OtlpTelemetry,
    /// Where the traces go.
    pub(crate) sink: crate::otlp_sink::OtlpSink,
}

/// The share of new traces sampled: a typical production setting.
pub(crate) const TRACE_SAMPLE_RATIO: f64 = 0.01;

/// Request duration buckets, seconds: 0.5 ms to 10 s (those of `examples/prometheus.rs`).
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How often [`install_telemetry`]'s stand-in for a Prometheus server scrapes the recorder.
const SCRAPE_INTERVAL: Duration = Duration::from_secs(10);

/// Installs the process's telemetry as a production service would: a real `metrics` recorder
/// (Prometheus with bucketed request durations, installed globally; mesh-tower's request and event metrics land in it, and a task
/// renders it every [`SCRAPE_INTERVAL`] as a scraper would; call it on a tokio runtime), an
/// OpenTelemetry trace pipeline ([`TRACE_SAMPLE_RATIO`], OTLP/gRPC to [`crate::otlp_sink`]) and a
/// `tracing` subscriber whose log layer writes INFO events to stderr without ANSI colours.
///
/// The log layer does not take mesh's request spans (target `mesh::trace`): formatting every
/// span's fields into a log line buffer is a log pipeline's cost, not a tracing pipeline's, and
/// with `RUST_LOG=info` (which includes them) it costs about 14% of the client's CPU in this
/// benchmark. `RUST_LOG` overrides the filter.
pub(crate) fn install_telemetry() -> Result<Telemetry, BoxError> {
    use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};

    // Request durations as a bucketed histogram, as `examples/prometheus.rs` and
    // docs/observability.md set it up: what Prometheus aggregates across instances (the
    // exporter's default, a summary, cannot be aggregated and costs a quantile sketch update per
    // sample when scraped).
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(mesh_tower::metrics::REQUEST_DURATION.to_owned()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(istio::REQUEST_DURATION.to_owned()), istio::DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(istio::REQUEST_BYTES.to_owned()), istio::BYTES_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(istio::RESPONSE_BYTES.to_owned()), istio::BYTES_BUCKETS)?
        .install_recorder()?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,mesh::trace=off"));
    let logs = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(std::io::stderr).with_filter(filter);
    // Traces: the OTLP/gRPC exporter behind the SDK's batch processor, sampling 1% of new traces
    // (the server follows the client's decision), to a collector stand-in in this process.
    let sink = crate::otlp_sink::start()?;
    let otlp = OtlpConfig::new(service()?)
        .endpoint(format!("http://{}", sink.handle.local_addr()))
        .sample_ratio(TRACE_SAMPLE_RATIO)
        .build()?;
    tracing_subscriber::registry().with(otlp.layer()).with(logs).try_init()?;
    // A Prometheus server scrapes every 10-15 s; rendering also drains the histograms' raw
    // samples, which otherwise pile up in memory for as long as the process runs.
    let scrape = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SCRAPE_INTERVAL);
        loop {
            every.tick().await;
            std::hint::black_box(scrape.render());
        }
    });
    Ok(Telemetry { prometheus, otlp, sink })
}

impl Telemetry {
    /// Exports what the batch processor holds and returns the exports and bytes the sink has
    /// received.
    pub(crate) async fn flush_traces(self) -> Result<(u64, u64), BoxError> {
        use std::sync::atomic::Ordering::Relaxed;
        self.otlp.shutdown().await?;
        Ok((self.sink.received.exports.load(Relaxed), self.sink.received.bytes.load(Relaxed)))
    }
}

/// The destination's service name (`hello`), for the client, the server and telemetry.
pub(crate) fn service() -> Result<ServiceName, BoxError> {
    Ok("hello".parse()?)
}

/// What the routed requests are: the path prefix the `hello` route matches and what it retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Traffic {
    /// `GET /hello`; retried on gateway errors and connect failures.
    Http,
    /// `helloworld.Greeter` calls; retried on `UNAVAILABLE` and connect failures.
    Grpc,
}

/// The destination as discovery describes it: `ports` on loopback, half `v1`, half `v2`.
pub(crate) fn snapshot(ports: &[u16], traffic: Traffic) -> Result<ServiceSnapshot, BoxError> {
    let mut retry = RetryPolicy::default();
    let (prefix, retry_on) = match traffic {
        Traffic::Http => ("/hello", RetryOn::GatewayError),
        Traffic::Grpc => ("/helloworld.Greeter", RetryOn::GrpcUnavailable),
    };
    retry.retry_on = vec![retry_on, RetryOn::ConnectFailure];
    let testers = Route::new(RouteName::new("testers")?)
        .with_match(RouteMatch::any().header(HeaderMatch::exact("x-user".parse()?, "qa")))
        .with_target("v2".parse()?, Weight::new(100)?);
    let mut hello = Route::new(RouteName::new("hello")?)
        .with_match(RouteMatch::any().path(PathMatch::prefix(prefix)?))
        .with_target("v1".parse()?, Weight::new(50)?);
    if ports.len() > 1 {
        hello = hello.with_target("v2".parse()?, Weight::new(50)?);
    }
    let hello = hello.with_retry(retry).with_timeout(Duration::from_secs(5));
    let mut policies = ServicePolicies::default();
    policies.circuit_breaker = Some(CircuitBreaker::default());
    policies.outlier_detection = Some(OutlierDetection::default());
    let mut builder = ServiceSnapshot::builder(service()?)
        .identity(SERVER_ID.parse()?)
        .subset(Subset::version("v1")?)
        .subset(Subset::version("v2")?)
        .route(testers)
        .route(hello)
        .policies(policies);
    for (i, port) in ports.iter().enumerate() {
        // The first half is v1 (a single endpoint too), the rest v2.
        let version = if i < ports.len().div_ceil(2) { "v1" } else { "v2" };
        builder = builder.endpoint(Endpoint::new(([127, 0, 0, 1], *port).into()).with_label("version", version)?);
    }
    Ok(builder.build()?)
}

/// A static discovery holding [`snapshot`].
pub(crate) fn discovery(ports: &[u16], traffic: Traffic) -> Result<StaticDiscovery, BoxError> {
    let discovery = StaticDiscovery::new();
    discovery.set(snapshot(ports, traffic)?);
    Ok(discovery)
}

/// The whole client stack (`MeshClient`: telemetry, the router, the deadline, fault injection,
/// retries with budget, load shedding, then P2C and the mTLS connection pool). With `pooled == false` every
/// request opens a new connection (the handshake workload).
pub(crate) fn client(certs: &Path, ports: &[u16], h2: bool, pooled: bool) -> Result<MeshClient<Full<Bytes>>, BoxError> {
    let discovery = discovery(ports, Traffic::Http)?;
    let mut config = ClientConfig::default();
    config.protocol = if h2 { Protocol::Http2 } else { Protocol::Http1 };
    if !pooled {
        config.pool_max_idle_per_endpoint = 0;
    }
    let mut telemetry = TelemetryLayer::client(service()?);
    if let Some(workload) = istio_workload() {
        telemetry = telemetry.istio_metrics(workload);
    }
    Ok(MeshClient::builder(discovery, service()?)
        .telemetry(telemetry)
        .config(config)
        .identity(certs::identity(certs, "client")?)
        .build::<Full<Bytes>>()?)
}

/// The mesh server: mTLS, telemetry (span and request metrics), authorization allowing only the
/// client's SPIFFE ID, the request context layer, then the service, in the order
/// `docs/architecture.md` gives.
pub(crate) fn server(certs: &Path) -> Result<Server, BoxError> {
    let policy =
        AuthorizationPolicy::enforce(vec![AuthorizationRule::allow(vec![PrincipalMatch::Exact(CLIENT_ID.parse()?)])]);
    let mut telemetry = TelemetryLayer::server(service()?);
    if let Some(workload) = istio_workload() {
        telemetry = telemetry.istio_metrics(workload);
    }
    if let Some(metrics) = grpc_metrics() {
        telemetry = telemetry.grpc_metrics(metrics.register_service("helloworld.Greeter"));
    }
    Ok(Server::builder()
        .identity(certs::identity(certs, "server")?)
        .telemetry(telemetry)
        .authorization(AuthorizationLayer::new(policy))
        .build()?)
}

/// With `MESH_BENCH_ISTIO_METRICS=1`, the `mesh` configuration also records Istio's standard
/// metrics (and exchanges peer metadata), its workload labels from the environment: what they
/// cost per request.
fn istio_workload() -> Option<WorkloadLabels> {
    (std::env::var("MESH_BENCH_ISTIO_METRICS").as_deref() == Ok("1")).then(WorkloadLabels::from_env)
}

/// With `MESH_BENCH_GRPC_METRICS=1`, the gRPC configurations' mesh sides also record gRPC's
/// OpenTelemetry metrics (gRFC A66) into an OpenTelemetry SDK meter provider (aggregating as a
/// real one does; its exporter drops what it is given, once a minute): what they cost per call.
pub(crate) fn grpc_metrics() -> Option<GrpcMetrics> {
    use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
    static PROVIDER: std::sync::OnceLock<Option<SdkMeterProvider>> = std::sync::OnceLock::new();
    let provider = PROVIDER.get_or_init(|| {
        (std::env::var("MESH_BENCH_GRPC_METRICS").as_deref() == Ok("1")).then(|| {
            let reader = PeriodicReader::builder(Discard).with_interval(Duration::from_secs(60)).build();
            SdkMeterProvider::builder().with_reader(reader).build()
        })
    });
    provider.as_ref().map(GrpcMetrics::new)
}

/// An exporter that drops every export.
struct Discard;

impl opentelemetry_sdk::metrics::exporter::PushMetricExporter for Discard {
    async fn export(
        &self,
        _metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
        opentelemetry_sdk::metrics::Temporality::Cumulative
    }
}

/// Starts [`server`] with the hello handler on [`endpoints`] listeners.
pub(crate) async fn serve(certs: &Path) -> Result<(Vec<u16>, Vec<ServerHandle>), BoxError> {
    let server = server(certs)?;
    let service = tower::service_fn(crate::hello::hello);
    let (mut ports, mut handles) = (Vec::new(), Vec::new());
    for _ in 0..endpoints()? {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let handle = server.spawn(listener, service)?;
        ports.push(handle.local_addr().port());
        handles.push(handle);
    }
    Ok((ports, handles))
}
