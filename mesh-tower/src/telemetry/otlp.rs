//! Export traces and metrics over OTLP/gRPC in a few lines (feature `otlp`).
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use mesh_tower::telemetry::{TelemetryLayer, grpc_otel::GrpcMetrics, otlp::OtlpConfig};
//!
//! # async fn f(me: &mesh_core::SpiffeId) -> Result<(), Box<dyn std::error::Error>> {
//! // Endpoint from the argument, else OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4317.
//! let telemetry = OtlpConfig::new("checkout".parse()?)
//!     .endpoint("http://otel-collector:4317")
//!     .identity(me)
//!     .sample_ratio(0.1)
//!     .metrics_interval(Duration::from_secs(30))
//!     .build()?;
//! telemetry.install()?; // or: tracing_subscriber::registry().with(telemetry.layer()).with(your_layers).init()
//! // gRPC's OpenTelemetry metrics (gRFC A66), exported every 30 s to the same collector.
//! let metrics = GrpcMetrics::new(&telemetry.meter_provider());
//! let server_telemetry = TelemetryLayer::server("checkout".parse()?).grpc_metrics(metrics.register_all_methods());
//! // ... serve ...
//! telemetry.shutdown().await?; // exports the buffered spans and the metrics recorded since the last export
//! # Ok(()) }
//! ```
//!
//! Traces: the SDK pipeline (batch span processor, parent-based ratio sampler, the tonic OTLP
//! exporter) stays inside [`OtlpTelemetry`], which hands out a `tracing-subscriber` layer, so no
//! OpenTelemetry type appears on that path and an OpenTelemetry release does not break callers.
//!
//! Metrics: [`OtlpTelemetry::meter_provider`] is the OpenTelemetry SDK's `SdkMeterProvider` (a
//! periodic reader in front of the tonic OTLP metric exporter, cumulative temporality unless
//! `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` says otherwise), with the traces'
//! resource. It is the meter provider [`GrpcMetrics::new`](super::grpc_otel::GrpcMetrics::new)
//! takes, and the application's own meters can use it too (or
//! `opentelemetry::global::set_meter_provider`); it is the `opentelemetry_sdk` version mesh
//! depends on.

use std::time::Duration;

use mesh_core::{ServiceName, SpiffeId, SubsetName};
use opentelemetry::{
    Context, KeyValue,
    trace::{Link, SpanKind, TraceContextExt, TraceId, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    metrics::{PeriodicReader, SdkMeterProvider},
    trace::{Sampler, SamplingResult, SdkTracerProvider, ShouldSample},
};
use tracing::{Subscriber, level_filters::LevelFilter};
use tracing_subscriber::{Layer, filter::Targets, registry::LookupSpan};

/// The standard environment variable for the collector's address.
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const DEFAULT_ENDPOINT: &str = "http://localhost:4317";

/// How to export: where, as whom, how much. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct OtlpConfig {
    service: ServiceName,
    endpoint: Option<String>,
    version: Option<SubsetName>,
    identity: Option<SpiffeId>,
    sample_ratio: f64,
    timeout: Duration,
    metrics_interval: Option<Duration>,
    attributes: Vec<(String, String)>,
}

/// Why telemetry could not be set up or flushed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The endpoint is not an `http://` or `https://` URL with a host.
    #[error("invalid OTLP endpoint {endpoint:?}: expected http://HOST:PORT or https://HOST:PORT")]
    InvalidEndpoint {
        /// What was given.
        endpoint: String,
    },
    /// The sample ratio is not within 0..=1.
    #[error("invalid sample ratio {0}: expected a number from 0.0 to 1.0")]
    InvalidSampleRatio(f64),
    /// The metrics export interval is zero.
    #[error("invalid metrics export interval {0:?}: expected more than zero")]
    InvalidMetricsInterval(Duration),
    /// An exporter could not be built (outside a tokio runtime, for one).
    #[error("building the OTLP exporter for {endpoint}: {message}")]
    Exporter {
        /// The collector's address.
        endpoint: String,
        /// What the exporter said.
        message: String,
    },
    /// Spans or metrics could not be exported when flushing or shutting down.
    #[error("exporting to {endpoint}: {message}")]
    Export {
        /// The collector's address.
        endpoint: String,
        /// What the exporter said, after which signal failed (`spans: ...`, `metrics: ...`).
        message: String,
    },
    /// [`OtlpTelemetry::install`] found a global `tracing` subscriber already set.
    #[error("a global tracing subscriber is already installed; add OtlpTelemetry::layer() to it instead")]
    AlreadyInstalled,
}

impl OtlpConfig {
    /// Traces and metrics of `service` (the `service.name` resource attribute), every trace
    /// sampled, to the endpoint in `OTEL_EXPORTER_OTLP_ENDPOINT` or `http://localhost:4317`.
    pub fn new(service: ServiceName) -> Self {
        Self {
            service,
            endpoint: None,
            version: None,
            identity: None,
            sample_ratio: 1.0,
            timeout: Duration::from_secs(10),
            metrics_interval: None,
            attributes: Vec::new(),
        }
    }

    /// The collector's OTLP/gRPC address, `http://HOST:PORT`.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The version this process runs (`service.version`).
    pub fn version(mut self, version: SubsetName) -> Self {
        self.version = Some(version);
        self
    }

    /// This workload's SPIFFE ID (`mesh.identity`, and its trust domain as `service.namespace`).
    pub fn identity(mut self, id: &SpiffeId) -> Self {
        self.identity = Some(id.clone());
        self
    }

    /// The share of new traces to sample, 0.0 to 1.0 (default 1.0). A request that arrives with
    /// a sampling decision keeps it (parent-based), so a trace is whole or absent. mesh's
    /// [`TelemetryLayer`](super::TelemetryLayer)s apply it before building any span (unless
    /// given their own): an unsampled request costs a `traceparent` header, not a span.
    pub fn sample_ratio(mut self, ratio: f64) -> Self {
        self.sample_ratio = ratio;
        self
    }

    /// How long one export may take (default 10 s).
    pub fn export_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often the [meter provider](OtlpTelemetry::meter_provider) exports (default:
    /// `OTEL_METRIC_EXPORT_INTERVAL`, in milliseconds, else 60 s, as the OpenTelemetry SDK);
    /// [`build`](Self::build) refuses zero. Each export carries every point since the start
    /// (cumulative temporality), unless `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` asks
    /// for `delta`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use mesh_tower::telemetry::otlp::OtlpConfig;
    ///
    /// let config = OtlpConfig::new("checkout".parse()?).metrics_interval(Duration::from_secs(15));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.metrics_interval = Some(interval);
        self
    }

    /// One more resource attribute (of the spans and the metrics).
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.push((key.into(), value.into()));
        self
    }

    fn resolved_endpoint(&self) -> Result<String, TelemetryError> {
        let endpoint = match &self.endpoint {
            Some(endpoint) => endpoint.clone(),
            None => {
                std::env::var(ENDPOINT_ENV).ok().filter(|e| !e.is_empty()).unwrap_or_else(|| DEFAULT_ENDPOINT.into())
            }
        };
        let valid = endpoint.parse::<http::Uri>().is_ok_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some_and(|h| !h.is_empty())
        });
        if valid { Ok(endpoint) } else { Err(TelemetryError::InvalidEndpoint { endpoint }) }
    }

    /// Builds the pipelines: the tonic OTLP span and metric exporters (connecting lazily), a
    /// batch span processor and the sampler, a periodic metric reader, and their one resource.
    /// Call it inside a tokio runtime, which must outlive it.
    pub fn build(self) -> Result<OtlpTelemetry, TelemetryError> {
        let endpoint = self.resolved_endpoint()?;
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(TelemetryError::InvalidSampleRatio(self.sample_ratio));
        }
        if let Some(interval) = self.metrics_interval.filter(Duration::is_zero) {
            return Err(TelemetryError::InvalidMetricsInterval(interval));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TelemetryError::Exporter { endpoint, message: "not inside a tokio runtime".into() });
        }
        let exporter_error = |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter {
            endpoint: endpoint.clone(),
            message: e.to_string(),
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(self.timeout)
            .build()
            .map_err(exporter_error)?;
        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(self.timeout)
            .build()
            .map_err(exporter_error)?;
        let mut attributes = vec![KeyValue::new("telemetry.sdk.name", "mesh")];
        if let Some(version) = &self.version {
            attributes.push(KeyValue::new("service.version", version.as_str().to_owned()));
        }
        if let Some(id) = &self.identity {
            attributes.push(KeyValue::new("mesh.identity", id.as_str().to_owned()));
            attributes.push(KeyValue::new("service.namespace", id.trust_domain().as_str().to_owned()));
        }
        attributes.extend(self.attributes.into_iter().map(|(k, v)| KeyValue::new(k, v)));
        let resource = Resource::builder_empty()
            .with_service_name(self.service.as_str().to_owned())
            .with_attributes(attributes)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(PipelineSampler::new(self.sample_ratio))
            .with_resource(resource.clone())
            .build();
        let mut reader = PeriodicReader::builder(metric_exporter);
        if let Some(interval) = self.metrics_interval {
            reader = reader.with_interval(interval);
        }
        let meter_provider = SdkMeterProvider::builder().with_reader(reader.build()).with_resource(resource).build();
        super::sampling::set_pipeline_ratio(self.sample_ratio);
        Ok(OtlpTelemetry { provider, meter_provider, endpoint })
    }
}

/// The pipeline's SDK sampler: parent-based, new traces at the ratio, except the root spans of
/// mesh's requests, which mesh builds only for requests it already sampled at the same ratio
/// (`telemetry::sampling`): sampling them again would sample ratio² of new traces.
#[derive(Clone, Debug)]
struct PipelineSampler {
    others: Sampler,
}

impl PipelineSampler {
    fn new(ratio: f64) -> Self {
        Self { others: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))) }
    }
}

impl ShouldSample for PipelineSampler {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let root = parent.is_none_or(|cx| !cx.span().span_context().is_valid());
        let sampler = if root && attributes.iter().any(|kv| kv.key.as_str() == super::REQUEST_SPAN_MARK) {
            &Sampler::AlwaysOn
        } else {
            &self.others
        };
        sampler.should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

/// A running export pipeline of traces and metrics. Flush or shut it down before the process
/// exits, or buffered spans and the metrics recorded since the last export are lost.
#[derive(Debug)]
pub struct OtlpTelemetry {
    provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    endpoint: String,
}

impl OtlpTelemetry {
    /// The collector's address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A `tracing-subscriber` layer that turns spans into OpenTelemetry spans for this pipeline.
    /// Spans of the HTTP/2, gRPC and TLS libraries underneath (including the exporter's own
    /// calls) are left out; everything else at `INFO` and above is exported.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        let quiet =
            ["h2", "hyper", "hyper_util", "tonic", "tower", "rustls", "tokio", "opentelemetry", "opentelemetry_sdk"];
        let filter = quiet.into_iter().fold(Targets::new().with_default(LevelFilter::INFO), |targets, target| {
            targets.with_target(target, LevelFilter::OFF)
        });
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("mesh"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            // mesh attaches the request's context itself where it matters (the server handler);
            // activating it on every span entry would cost a context switch per poll.
            .with_context_activation(false)
            .with_filter(filter)
    }

    /// The meter provider whose metrics this pipeline exports, every
    /// [`metrics_interval`](OtlpConfig::metrics_interval) and on [`flush`](Self::flush) and
    /// [`shutdown`](Self::shutdown), with the traces' resource (`service.name`, ...). A handle:
    /// clones share one pipeline. Give it to
    /// [`GrpcMetrics::new`](super::grpc_otel::GrpcMetrics::new) for gRPC's OpenTelemetry metrics:
    ///
    /// ```no_run
    /// use mesh_tower::telemetry::{TelemetryLayer, grpc_otel::GrpcMetrics, otlp::OtlpConfig};
    ///
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let telemetry = OtlpConfig::new("frontend".parse()?).build()?;
    /// let metrics = GrpcMetrics::new(&telemetry.meter_provider()).target("xds:///greeter");
    /// let client_telemetry = TelemetryLayer::client("greeter".parse()?).grpc_metrics(metrics);
    /// // ... MeshChannel::builder(discovery, "greeter".parse()?).telemetry(client_telemetry) ...
    /// # Ok(()) }
    /// ```
    pub fn meter_provider(&self) -> SdkMeterProvider {
        self.meter_provider.clone()
    }

    /// Installs a global `tracing` subscriber: [`layer`](Self::layer) plus a `fmt` layer on
    /// stderr filtered by `RUST_LOG` (default `warn`). For applications with no subscriber of
    /// their own.
    pub fn install(&self) -> Result<(), TelemetryError> {
        use tracing_subscriber::layer::SubscriberExt;
        let fmt_filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let subscriber = tracing_subscriber::registry()
            .with(self.layer())
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(fmt_filter));
        tracing::subscriber::set_global_default(subscriber).map_err(|_| TelemetryError::AlreadyInstalled)
    }

    /// Exports every finished span, and the metrics' points, now.
    pub async fn flush(&self) -> Result<(), TelemetryError> {
        let (spans, metrics) = (self.provider.clone(), self.meter_provider.clone());
        self.blocking(move || {
            (spans.force_flush().map_err(|e| e.to_string()), metrics.force_flush().map_err(|e| e.to_string()))
        })
        .await
    }

    /// Exports every finished span and the metrics' points, and stops both pipelines.
    pub async fn shutdown(self) -> Result<(), TelemetryError> {
        let (spans, metrics) = (self.provider.clone(), self.meter_provider.clone());
        self.blocking(move || {
            (spans.shutdown().map_err(|e| e.to_string()), metrics.shutdown().map_err(|e| e.to_string()))
        })
        .await
    }

    /// Runs a flush or a shutdown of both providers. The SDK blocks while the exporters (on this
    /// runtime) send, so it runs off the runtime's workers; both run even if the first fails.
    async fn blocking<F>(&self, f: F) -> Result<(), TelemetryError>
    where
        F: FnOnce() -> (Result<(), String>, Result<(), String>) + Send + 'static,
    {
        let failure = match tokio::task::spawn_blocking(f).await {
            Ok((Ok(()), Ok(()))) => return Ok(()),
            Ok((Err(spans), Ok(()))) => format!("spans: {spans}"),
            Ok((Ok(()), Err(metrics))) => format!("metrics: {metrics}"),
            Ok((Err(spans), Err(metrics))) => format!("spans: {spans}; metrics: {metrics}"),
            Err(join) => join.to_string(),
        };
        Err(TelemetryError::Export { endpoint: self.endpoint.clone(), message: failure })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_endpoints_and_ratios_are_refused_by_name() {
        let config = || OtlpConfig::new("checkout".parse().unwrap());
        for bad in ["localhost:4317", "ftp://collector:4317", "http://", "not a url"] {
            let error = config().endpoint(bad).resolved_endpoint().unwrap_err();
            assert!(
                matches!(&error, TelemetryError::InvalidEndpoint { endpoint } if endpoint == bad),
                "{bad}: {error}"
            );
        }
        assert_eq!(config().endpoint("http://127.0.0.1:4317").resolved_endpoint().unwrap(), "http://127.0.0.1:4317");
        let error = config().sample_ratio(1.5).build().unwrap_err();
        assert!(matches!(error, TelemetryError::InvalidSampleRatio(r) if r == 1.5));
        let error = config().metrics_interval(Duration::ZERO).build().unwrap_err();
        assert!(matches!(error, TelemetryError::InvalidMetricsInterval(d) if d.is_zero()), "{error}");
    }

    #[tokio::test]
    async fn flushing_and_shutting_down_with_no_collector_say_which_signal_failed() {
        // Nobody listens: the span exporter has nothing to send (no span was made); the metrics
        // one has a point to send and fails.
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", unused.local_addr().unwrap());
        drop(unused);
        let telemetry = OtlpConfig::new("checkout".parse().unwrap())
            .endpoint(endpoint.clone())
            .export_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        use opentelemetry::metrics::MeterProvider as _;
        telemetry.meter_provider().meter("test").u64_counter("requests").build().add(1, &[]);
        let error = telemetry.shutdown().await.unwrap_err();
        let TelemetryError::Export { endpoint: failed, message } = &error else { panic!("{error}") };
        assert_eq!(failed, &endpoint);
        assert!(message.starts_with("metrics: "), "{error}");
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        let error = OtlpConfig::new("checkout".parse().unwrap()).endpoint("http://127.0.0.1:4317").build().unwrap_err();
        assert!(matches!(error, TelemetryError::Exporter { .. }), "{error}");
    }
}
