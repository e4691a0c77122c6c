//! gRPC's OpenTelemetry metrics (gRFC A66), with the optional labels of A78/A89 and the Cloud
//! Service Mesh labels of A79, through the OpenTelemetry metrics API: whatever `MeterProvider`
//! the application hands [`GrpcMetrics::new`] receives them, under the names, units, bucket
//! boundaries and attributes grpc-go, grpc-java and grpcio (C-core) use, so Cloud Monitoring's
//! and everyone's gRPC dashboards read a mesh workload as they read any gRPC one.
//!
//! | instrument | unit | attributes |
//! |---|---|---|
//! | `grpc.client.attempt.started` | `{attempt}` | `grpc.method`, `grpc.target` |
//! | `grpc.client.attempt.duration` | `s` | `grpc.method`, `grpc.target`, `grpc.status`, optional, CSM |
//! | `grpc.client.attempt.sent_total_compressed_message_size` | `By` | as the duration |
//! | `grpc.client.attempt.rcvd_total_compressed_message_size` | `By` | as the duration |
//! | `grpc.client.call.duration` | `s` | `grpc.method`, `grpc.target`, `grpc.status` |
//! | `grpc.server.call.started` | `{call}` | `grpc.method` |
//! | `grpc.server.call.duration` | `s` | `grpc.method`, `grpc.status`, CSM |
//! | `grpc.server.call.sent_total_compressed_message_size` | `By` | as the duration |
//! | `grpc.server.call.rcvd_total_compressed_message_size` | `By` | as the duration |
//!
//! Durations use [`LATENCY_BOUNDS`], sizes [`SIZE_BOUNDS`] (A66's). Sizes are the gRPC messages'
//! lengths on the wire (after compression, without the 5-byte prefix), summed over the attempt
//! or call. `grpc.status` is the canonical code name (`OK`, `UNAVAILABLE`); a call mesh itself
//! failed (no endpoint, timeout, refused connection) gets the code the caller sees, as in
//! `mesh_tonic::status_from_error`.
//!
//! **Calls and attempts.** The call is what the application sees, timed by the
//! [`TelemetryLayer`](super::TelemetryLayer) at the top of the client stack; each attempt the
//! retry layer makes is timed below it by [`AttemptLayer`] (the client stack puts it there), from
//! its start to the end of its response stream.
//!
//! **`grpc.method`.** As in gRPC: a method the application registered keeps its name
//! (`helloworld.Greeter/SayHello`), any other is `other`, so a caller cannot blow up the
//! metrics' cardinality. Client side every method counts as registered by default (tonic's
//! generated clients are static methods); server side none is until
//! [`register_service`](GrpcMetrics::register_service) or
//! [`register_method`](GrpcMetrics::register_method) names it.
//!
//! **Optional labels** ([`optional_label`](GrpcMetrics::optional_label)):
//! `grpc.lb.backend_service` is the subset (the cluster) the attempt went to. mesh's endpoints
//! carry no locality, so `grpc.lb.locality` is never recorded.
//!
//! **CSM labels** ([`csm`](GrpcMetrics::csm)): `csm.workload_canonical_service` and `csm.mesh_id`
//! of this workload, and `csm.remote_workload_type`, `_canonical_service` (and for GKE and GCE
//! peers `_project_id`, `_location`, `_name`, `_cluster_name`, `_namespace_name`) of the peer, read
//! from the `x-envoy-peer-metadata` it sends; client attempts also carry `csm.service_name` and
//! `csm.service_namespace_name` of the destination. Values nobody gave are `unknown`. Turning
//! CSM on also sends this workload's metadata (as Istio's metrics do).
//!
//! **Cost.** Instruments are made once; each label set's bound handles once (per method, status,
//! peer and subset), then a request costs map lookups and atomic adds, no attribute building.

mod attempt;
mod body;
mod cache;
mod csm;
mod record;
mod request;
mod status;

use std::{collections::HashSet, sync::Arc};

use opentelemetry::{
    InstrumentationScope,
    metrics::{Counter, Histogram, MeterProvider},
};

pub(crate) use self::attempt::{
    Attempt as MeasuredAttempt, settle as settle_attempt, settle_head as settle_attempt_head,
};
pub use self::attempt::{AttemptBody, AttemptFuture, AttemptLayer, AttemptService};
pub(crate) use self::body::BodyCounts;
pub use self::body::CountedBody;
pub(crate) use self::record::{CallStart, Ending, GrpcRecorder, ServerCall};
pub use self::request::{CountRequestBody, CountRequestBodyLayer};
pub(crate) use self::request::{RequestCounts, counted};
pub(crate) use self::status::{code_of_error, code_of_response};
use super::istio::workload::WorkloadLabels;

/// `grpc.client.attempt.started`.
pub const CLIENT_ATTEMPT_STARTED: &str = "grpc.client.attempt.started";
/// `grpc.client.attempt.duration`.
pub const CLIENT_ATTEMPT_DURATION: &str = "grpc.client.attempt.duration";
/// `grpc.client.attempt.sent_total_compressed_message_size`.
pub const CLIENT_ATTEMPT_SENT_SIZE: &str = "grpc.client.attempt.sent_total_compressed_message_size";
/// `grpc.client.attempt.rcvd_total_compressed_message_size`.
pub const CLIENT_ATTEMPT_RCVD_SIZE: &str = "grpc.client.attempt.rcvd_total_compressed_message_size";
/// `grpc.client.call.duration`.
pub const CLIENT_CALL_DURATION: &str = "grpc.client.call.duration";
/// `grpc.server.call.started`.
pub const SERVER_CALL_STARTED: &str = "grpc.server.call.started";
/// `grpc.server.call.duration`.
pub const SERVER_CALL_DURATION: &str = "grpc.server.call.duration";
/// `grpc.server.call.sent_total_compressed_message_size`.
pub const SERVER_CALL_SENT_SIZE: &str = "grpc.server.call.sent_total_compressed_message_size";
/// `grpc.server.call.rcvd_total_compressed_message_size`.
pub const SERVER_CALL_RCVD_SIZE: &str = "grpc.server.call.rcvd_total_compressed_message_size";

/// The optional label of the locality of the endpoint an attempt went to (A78).
pub const LB_LOCALITY: &str = "grpc.lb.locality";
/// The optional label of the backend service (the cluster) an attempt went to (A89).
pub const LB_BACKEND_SERVICE: &str = "grpc.lb.backend_service";
/// The `grpc.method` of a method that was not registered.
pub const OTHER_METHOD: &str = "other";

/// A66's bucket boundaries of the durations, in seconds.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.01,
    0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8,
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];
/// A66's bucket boundaries of the message sizes, in bytes.
pub const SIZE_BOUNDS: &[f64] = &[
    0.0,
    1024.0,
    2048.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
    4294967296.0,
];

/// The instruments, made once from the application's meter provider.
pub(crate) struct Instruments {
    pub(crate) attempt_started: Counter<u64>,
    pub(crate) attempt_duration: Histogram<f64>,
    pub(crate) attempt_sent: Histogram<u64>,
    pub(crate) attempt_rcvd: Histogram<u64>,
    pub(crate) call_duration: Histogram<f64>,
    pub(crate) server_started: Counter<u64>,
    pub(crate) server_duration: Histogram<f64>,
    pub(crate) server_sent: Histogram<u64>,
    pub(crate) server_rcvd: Histogram<u64>,
}

impl Instruments {
    fn new<P: MeterProvider + ?Sized>(provider: &P) -> Self {
        let scope = InstrumentationScope::builder("mesh").with_version(env!("CARGO_PKG_VERSION")).build();
        let meter = provider.meter_with_scope(scope);
        let seconds = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(LATENCY_BOUNDS.to_vec())
                .build()
        };
        let bytes = |name: &'static str, description: &'static str| {
            meter
                .u64_histogram(name)
                .with_unit("By")
                .with_description(description)
                .with_boundaries(SIZE_BOUNDS.to_vec())
                .build()
        };
        Self {
            attempt_started: meter
                .u64_counter(CLIENT_ATTEMPT_STARTED)
                .with_unit("{attempt}")
                .with_description("Number of client call attempts started.")
                .build(),
            attempt_duration: seconds(
                CLIENT_ATTEMPT_DURATION,
                "End-to-end time taken to complete a client call attempt.",
            ),
            attempt_sent: bytes(CLIENT_ATTEMPT_SENT_SIZE, "Compressed message bytes sent per client call attempt."),
            attempt_rcvd: bytes(CLIENT_ATTEMPT_RCVD_SIZE, "Compressed message bytes received per call attempt."),
            call_duration: seconds(
                CLIENT_CALL_DURATION,
                "Time taken by gRPC to complete an RPC from application's perspective.",
            ),
            server_started: meter
                .u64_counter(SERVER_CALL_STARTED)
                .with_unit("{call}")
                .with_description("Number of server calls started.")
                .build(),
            server_duration: seconds(
                SERVER_CALL_DURATION,
                "End-to-end time taken to complete a call from server transport's perspective.",
            ),
            server_sent: bytes(SERVER_CALL_SENT_SIZE, "Compressed message bytes sent per server call."),
            server_rcvd: bytes(SERVER_CALL_RCVD_SIZE, "Compressed message bytes received per server call."),
        }
    }
}

/// Which methods keep their name in `grpc.method`.
#[derive(Clone, Debug)]
pub(crate) enum Registered {
    /// Every method (the client side's default).
    All,
    /// These services (`package.Service`) and methods (`package.Service/Method`); the rest are
    /// `other`.
    Only { services: Arc<HashSet<String>>, methods: Arc<HashSet<String>> },
}

impl Registered {
    /// Whether `method` (`package.Service/Method`, no leading slash) is registered.
    pub(crate) fn contains(&self, method: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only { services, methods } => {
                methods.contains(method)
                    || method.split_once('/').is_some_and(|(service, _)| services.contains(service))
            }
        }
    }
}

/// gRPC's OpenTelemetry metrics for a [`TelemetryLayer`](super::TelemetryLayer): what to record
/// and into which meter provider. See the [module docs](self).
///
/// ```
/// use mesh_tower::telemetry::{TelemetryLayer, WorkloadLabels, grpc_otel::GrpcMetrics};
/// use opentelemetry_sdk::metrics::SdkMeterProvider;
///
/// let provider = SdkMeterProvider::builder().build(); // with the application's exporter
/// let metrics = GrpcMetrics::new(&provider).csm(WorkloadLabels::from_env());
/// let client = TelemetryLayer::client("greeter".parse()?).grpc_metrics(metrics.clone().target("xds:///greeter"));
/// let server = TelemetryLayer::server("reviews".parse()?).grpc_metrics(metrics.register_service("helloworld.Greeter"));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct GrpcMetrics {
    pub(crate) instruments: Arc<Instruments>,
    pub(crate) target: Option<String>,
    /// `None`: the side's default (client all, server none).
    pub(crate) registered: Option<Registered>,
    pub(crate) backend_service: bool,
    pub(crate) csm: Option<WorkloadLabels>,
    pub(crate) send_metadata: bool,
}

impl std::fmt::Debug for GrpcMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcMetrics")
            .field("target", &self.target)
            .field("registered", &self.registered)
            .field("backend_service", &self.backend_service)
            .field("csm", &self.csm)
            .finish_non_exhaustive()
    }
}

impl GrpcMetrics {
    /// A66's instruments, made now in `provider` (under the instrumentation scope `mesh`).
    pub fn new(provider: &impl MeterProvider) -> Self {
        Self {
            instruments: Arc::new(Instruments::new(provider)),
            target: None,
            registered: None,
            backend_service: false,
            csm: None,
            send_metadata: true,
        }
    }

    /// Client side: the `grpc.target` (default: the service name the client calls). gRPC writes
    /// the channel's canonical target URI, such as `xds:///greeter` or `dns:///10.0.0.1:50051`.
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Every method of `service` (`package.Service`, as tonic's `NamedService::NAME`) keeps its
    /// name in `grpc.method`; unregistered methods are `other`.
    pub fn register_service(mut self, service: impl Into<String>) -> Self {
        self.only().0.insert(service.into());
        self
    }

    /// `method` (`package.Service/Method`) keeps its name in `grpc.method`.
    pub fn register_method(mut self, method: impl Into<String>) -> Self {
        let method = method.into();
        self.only().1.insert(method.trim_start_matches('/').to_owned());
        self
    }

    /// Every method keeps its name (the client side's default). Server side only where callers
    /// are trusted: each method a caller makes up becomes a label value (up to a bound).
    pub fn register_all_methods(mut self) -> Self {
        self.registered = Some(Registered::All);
        self
    }

    fn only(&mut self) -> (&mut HashSet<String>, &mut HashSet<String>) {
        if !matches!(self.registered, Some(Registered::Only { .. })) {
            self.registered = Some(Registered::Only { services: Arc::default(), methods: Arc::default() });
        }
        match &mut self.registered {
            Some(Registered::Only { services, methods }) => (Arc::make_mut(services), Arc::make_mut(methods)),
            _ => unreachable!("set just above"),
        }
    }

    /// Records an optional label: [`LB_BACKEND_SERVICE`]. Others (such as [`LB_LOCALITY`],
    /// which mesh does not know) are not recorded.
    pub fn optional_label(mut self, label: &str) -> Self {
        if label == LB_BACKEND_SERVICE {
            self.backend_service = true;
        }
        self
    }

    /// Cloud Service Mesh's labels, with `workload` as this side (its canonical service, mesh
    /// id, type, location, project, name, namespace, cluster), sent to the peer in
    /// `x-envoy-peer-metadata` and the peer's read from what it sends.
    pub fn csm(mut self, workload: WorkloadLabels) -> Self {
        self.csm = Some(workload);
        self
    }

    /// With [`csm`](Self::csm): whether this side sends its metadata (default on). The peer's is
    /// read either way.
    pub fn send_peer_metadata(mut self, on: bool) -> Self {
        self.send_metadata = on;
        self
    }
}
