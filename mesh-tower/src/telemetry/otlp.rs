//! Export traces over OTLP/gRPC in a few lines (feature `otlp`).
//!
//! ```no_run
//! use mesh_tower::telemetry::otlp::OtlpConfig;
//!
//! # async fn f(me: &mesh_core::SpiffeId) -> Result<(), Box<dyn std::error::Error>> {
//! // Endpoint from the argument, else OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4317.
//! let telemetry = OtlpConfig::new("checkout".parse()?)
//!     .endpoint("http://otel-collector:4317")
//!     .identity(me)
//!     .sample_ratio(0.1)
//!     .build()?;
//! telemetry.install()?; // or: tracing_subscriber::registry().with(telemetry.layer()).with(your_layers).init()
//! // ... serve ...
//! telemetry.shutdown().await?; // exports what is buffered
//! # Ok(()) }
//! ```
//!
//! mesh's public signatures carry no OpenTelemetry types, so an OpenTelemetry release does not
//! break callers: the SDK pipeline (batch span processor, parent-based ratio sampler, the tonic
//! OTLP exporter) stays inside [`OtlpTelemetry`], which hands out a `tracing-subscriber` layer.

use std::time::Duration;

use mesh_core::{ServiceName, SpiffeId, SubsetName};
use opentelemetry::{
    Context, KeyValue,
    trace::{Link, SpanKind, TraceContextExt, TraceId, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
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
    /// The exporter could not be built (outside a tokio runtime, for one).
    #[error("building the OTLP exporter for {endpoint}: {message}")]
    Exporter {
        /// The collector's address.
        endpoint: String,
        /// What the exporter said.
        message: String,
    },
    /// Spans could not be exported when flushing or shutting down.
    #[error("exporting spans to {endpoint}: {message}")]
    Export {
        /// The collector's address.
        endpoint: String,
        /// What the exporter said.
        message: String,
    },
    /// [`OtlpTelemetry::install`] found a global `tracing` subscriber already set.
    #[error("a global tracing subscriber is already installed; add OtlpTelemetry::layer() to it instead")]
    AlreadyInstalled,
}

impl OtlpConfig {
    /// Traces of `service` (the `service.name` resource attribute), every trace sampled, to the
    /// endpoint in `OTEL_EXPORTER_OTLP_ENDPOINT` or `http://localhost:4317`.
    pub fn new(service: ServiceName) -> Self {
        Self {
            service,
            endpoint: None,
            version: None,
            identity: None,
            sample_ratio: 1.0,
            timeout: Duration::from_secs(10),
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

    /// One more resource attribute.
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

    /// Builds the pipeline: the tonic OTLP exporter (connecting lazily), a batch span processor,
    /// the sampler and the resource. Call it inside a tokio runtime, which must outlive it.
    pub fn build(self) -> Result<OtlpTelemetry, TelemetryError> {
        let endpoint = self.resolved_endpoint()?;
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(TelemetryError::InvalidSampleRatio(self.sample_ratio));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(TelemetryError::Exporter { endpoint, message: "not inside a tokio runtime".into() });
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(self.timeout)
            .build()
            .map_err(|e| TelemetryError::Exporter { endpoint: endpoint.clone(), message: e.to_string() })?;
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
            .with_resource(resource)
            .build();
        super::sampling::set_pipeline_ratio(self.sample_ratio);
        Ok(OtlpTelemetry { provider, endpoint })
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

/// A running export pipeline. Flush or shut it down before the process exits, or buffered spans
/// are lost.
#[derive(Debug)]
pub struct OtlpTelemetry {
    provider: SdkTracerProvider,
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

    /// Exports every finished span now.
    pub async fn flush(&self) -> Result<(), TelemetryError> {
        let provider = self.provider.clone();
        // The SDK blocks while the exporter (on this runtime) sends; keep the runtime free.
        let result = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        self.check(result.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())))
    }

    /// Exports every finished span and stops the pipeline.
    pub async fn shutdown(self) -> Result<(), TelemetryError> {
        let provider = self.provider.clone();
        let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        self.check(result.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())))
    }

    fn check(&self, result: Result<(), String>) -> Result<(), TelemetryError> {
        result.map_err(|message| TelemetryError::Export { endpoint: self.endpoint.clone(), message })
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
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        let error = OtlpConfig::new("checkout".parse().unwrap()).endpoint("http://127.0.0.1:4317").build().unwrap_err();
        assert!(matches!(error, TelemetryError::Exporter { .. }), "{error}");
    }
}
