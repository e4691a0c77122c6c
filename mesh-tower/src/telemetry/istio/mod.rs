//! Istio's standard metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`, `istio_request_messages_total`,
//! `istio_response_messages_total`), with the
//! labels Istio's sidecars write, reported `source` by the client and `destination` by the
//! server, and the peer-metadata exchange that tells each side who the other is.
//!
//! Turned on per layer with [`TelemetryLayer::istio_metrics`](super::TelemetryLayer::istio_metrics).
//! Labels are derived once per peer (its SPIFFE ID and exchanged metadata), per target and per
//! subset, and the metric handles of each label set registered once: a request costs two map
//! lookups, not label strings.

pub(crate) mod labels;
pub mod peer_metadata;
pub mod workload;

use std::{collections::HashMap, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use foldhash::fast::RandomState;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use mesh_core::{ServiceName, SpiffeId, SubsetName};
use metrics::{Counter, Histogram, Label};

use self::labels::{Ending, PeerLabels};
use self::workload::{UNKNOWN, WorkloadLabels};
use super::{Direction, grpc_frames::GrpcFrames};

/// `istio_requests_total`.
pub const REQUESTS: &str = "istio_requests_total";
/// `istio_request_duration_milliseconds`.
pub const REQUEST_DURATION: &str = "istio_request_duration_milliseconds";
/// `istio_request_bytes`.
pub const REQUEST_BYTES: &str = "istio_request_bytes";
/// `istio_response_bytes`.
pub const RESPONSE_BYTES: &str = "istio_response_bytes";
/// `istio_request_messages_total` (gRPC messages in requests).
pub const REQUEST_MESSAGES: &str = "istio_request_messages_total";
/// `istio_response_messages_total` (gRPC messages in responses).
pub const RESPONSE_MESSAGES: &str = "istio_response_messages_total";

/// Istio's default buckets of `istio_request_duration_milliseconds`.
pub const DURATION_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];
/// Istio's default buckets of `istio_request_bytes` and `istio_response_bytes`.
pub const BYTES_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0, 100000000.0];

/// Peers, label sets: beyond this many, labels are built for each request instead of cached (a
/// bound that honest label values never reach).
const MAX_CACHED: usize = 4096;
/// The peer id of labels that were not cached.
const UNCACHED: u32 = u32::MAX;

static PEER_METADATA: HeaderName = HeaderName::from_static(peer_metadata::PEER_METADATA);
static PEER_METADATA_ID: HeaderName = HeaderName::from_static(peer_metadata::PEER_METADATA_ID);

/// What one request adds to Istio's metrics beyond what the exchange already keeps.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    /// The peer's `x-envoy-peer-metadata` (request inbound, response outbound).
    pub(crate) peer_metadata: Option<HeaderValue>,
    pub(crate) request_bytes: u64,
    /// The request's gRPC messages (counted below the telemetry layer).
    pub(crate) request_messages: u64,
    pub(crate) response_bytes: u64,
    pub(crate) response_frames: GrpcFrames,
    pub(crate) denied: bool,
}

impl Observed {
    pub(crate) fn read_peer(&mut self, headers: &HeaderMap) {
        self.peer_metadata = headers.get(&PEER_METADATA).cloned();
    }

    pub(crate) fn on_data(&mut self, data: &[u8], grpc: bool) {
        self.response_bytes += data.len() as u64;
        if grpc {
            self.response_frames.feed(data);
        }
    }
}

/// How a request ended, for the one call that records it.
pub(crate) struct Outcome<'a> {
    pub(crate) peer: Option<&'a SpiffeId>,
    pub(crate) subset: Option<&'a SubsetName>,
    pub(crate) status: Option<StatusCode>,
    pub(crate) grpc: bool,
    pub(crate) grpc_code: Option<u16>,
    pub(crate) ending: Ending,
    pub(crate) elapsed: Duration,
}

#[derive(Clone)]
struct Peer {
    id: u32,
    labels: Arc<PeerLabels>,
    /// Why its metadata was ignored, counted on every request that sends it.
    rejected: Option<Counter>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PeerKey {
    id: Option<SpiffeId>,
    metadata: Option<HeaderValue>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct HandleKey {
    peer: u32,
    subset: Option<SubsetName>,
    status: u16,
    grpc_code: Option<u16>,
    grpc: bool,
    flags: &'static str,
    mtls: bool,
}

#[derive(Clone)]
struct Handles {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
    request_messages: Counter,
    response_messages: Counter,
}

/// Istio's metrics of one layer: this workload, the destination service, and the caches.
pub(crate) struct IstioMetrics {
    direction: Direction,
    workload: WorkloadLabels,
    /// `destination_service`, `_name`, `_namespace`.
    service: (String, String, String),
    /// Sent on requests (outbound) or responses (inbound), unless turned off.
    send: Option<(HeaderValue, HeaderValue)>,
    peers: ArcSwap<HashMap<PeerKey, Peer, RandomState>>,
    handles: ArcSwap<HashMap<HandleKey, Handles, RandomState>>,
}

impl std::fmt::Debug for IstioMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IstioMetrics")
            .field("workload", &self.workload)
            .field("peers", &self.peers.load().len())
            .field("label_sets", &self.handles.load().len())
            .finish()
    }
}

impl IstioMetrics {
    pub(crate) fn new(direction: Direction, service: &ServiceName, workload: WorkloadLabels, send: bool) -> Self {
        let send = send.then(|| (peer_metadata::encode(&workload), peer_metadata::node_id(&workload)));
        Self {
            direction,
            service: labels::destination_service(service.as_str()),
            workload,
            send,
            peers: ArcSwap::default(),
            handles: ArcSwap::default(),
        }
    }

    /// Writes this workload's metadata on an outgoing request or response, unless sending is off
    /// or the headers are already there.
    pub(crate) fn send(&self, headers: &mut HeaderMap) {
        if let Some((metadata, id)) = &self.send {
            headers.entry(&PEER_METADATA).or_insert_with(|| metadata.clone());
            headers.entry(&PEER_METADATA_ID).or_insert_with(|| id.clone());
        }
    }

    pub(crate) fn record(&self, observed: &Observed, outcome: &Outcome<'_>) {
        let peer = self.peer(outcome.peer, observed.peer_metadata.as_ref());
        if let Some(rejected) = &peer.rejected {
            rejected.increment(1);
        }
        let inbound = self.direction == Direction::Inbound;
        let ending = if observed.denied { Ending::Denied } else { outcome.ending };
        let key = HandleKey {
            peer: peer.id,
            // Inbound, the version is this workload's: the subset adds nothing.
            subset: if inbound { None } else { outcome.subset.cloned() },
            status: outcome.status.map_or(0, |s| s.as_u16()),
            grpc_code: outcome.grpc_code,
            grpc: outcome.grpc,
            flags: labels::response_flags(ending, inbound),
            mtls: outcome.peer.is_some(),
        };
        // Read through the guard: cloning five handles would be five atomic increments.
        let cached = self.handles.load();
        let registered;
        let handles = match cached.get(&key) {
            Some(handles) => handles,
            None => {
                registered = self.register(key, &peer.labels);
                &registered
            }
        };
        handles.requests.increment(1);
        handles.duration.record(outcome.elapsed.as_secs_f64() * 1000.0);
        handles.request_bytes.record(observed.request_bytes as f64);
        handles.response_bytes.record(observed.response_bytes as f64);
        if outcome.grpc {
            handles.request_messages.increment(observed.request_messages);
            handles.response_messages.increment(observed.response_frames.messages());
        }
    }

    /// The peer's labels, derived once per SPIFFE ID and metadata value.
    fn peer(&self, id: Option<&SpiffeId>, metadata: Option<&HeaderValue>) -> Peer {
        let key = PeerKey { id: id.cloned(), metadata: metadata.cloned() };
        if let Some(peer) = self.peers.load().get(&key) {
            return peer.clone();
        }
        let (decoded, rejected) = match metadata.map(|m| peer_metadata::decode(m.as_bytes())) {
            Some(Ok(decoded)) => (Some(decoded), None),
            Some(Err(error)) => {
                tracing::debug!(target: "mesh::telemetry", %error, "ignoring the peer's metadata");
                (None, Some(metrics::counter!(peer_metadata::REJECTED, "reason" => error.as_str())))
            }
            None => (None, None),
        };
        let labels = Arc::new(PeerLabels::of(id, decoded.as_ref()));
        let cached = self.peers.load().len();
        if cached >= MAX_CACHED {
            return Peer { id: UNCACHED, labels, rejected };
        }
        let peer = Peer { id: cached as u32, labels, rejected };
        let mut inserted = peer.clone();
        self.peers.rcu(|peers| {
            let mut peers = HashMap::clone(peers);
            // A racing request may have cached it first (under another id): keep one.
            let id = peers.len() as u32;
            inserted = peers.entry(key.clone()).or_insert_with(|| Peer { id, ..peer.clone() }).clone();
            peers
        });
        inserted
    }

    fn register(&self, key: HandleKey, peer: &PeerLabels) -> Handles {
        let labels = self.labels(&key, peer);
        let handles = Handles {
            requests: metrics::counter!(REQUESTS, labels.clone()),
            duration: metrics::histogram!(REQUEST_DURATION, labels.clone()),
            request_bytes: metrics::histogram!(REQUEST_BYTES, labels.clone()),
            response_bytes: metrics::histogram!(RESPONSE_BYTES, labels.clone()),
            request_messages: metrics::counter!(REQUEST_MESSAGES, labels.clone()),
            response_messages: metrics::counter!(RESPONSE_MESSAGES, labels),
        };
        if key.peer != UNCACHED && self.handles.load().len() < MAX_CACHED {
            self.handles.rcu(|cached| {
                let mut cached = HashMap::clone(cached);
                cached.insert(key.clone(), handles.clone());
                cached
            });
        }
        handles
    }

    /// Every label Istio's standard metrics carry, in Istio's names.
    fn labels(&self, key: &HandleKey, peer: &PeerLabels) -> Vec<Label> {
        let own = &self.workload;
        let own_principal = own.principal.clone();
        let (reporter, source, destination) = match self.direction {
            Direction::Outbound => ("source", Side::Own(own, own_principal), Side::Peer(peer)),
            Direction::Inbound => ("destination", Side::Peer(peer), Side::Own(own, own_principal)),
        };
        let mut destination_version = destination.get(|w| &w.version, |p| &p.version);
        if destination_version == UNKNOWN
            && let Some(subset) = &key.subset
        {
            destination_version = labels::subset_version(subset.as_str());
        }
        let (service, service_name, service_namespace) = &self.service;
        let security = match (self.direction, key.mtls) {
            (Direction::Outbound, _) => "unknown",
            (Direction::Inbound, true) => "mutual_tls",
            (Direction::Inbound, false) => "none",
        };
        let grpc_status = match (key.grpc, key.grpc_code) {
            (true, Some(code)) => code.to_string(),
            _ => String::new(),
        };
        vec![
            Label::new("reporter", reporter),
            Label::new("source_workload", source.get(|w| &w.name, |p| &p.workload)),
            Label::new("source_workload_namespace", source.get(|w| &w.namespace, |p| &p.namespace)),
            Label::new("source_principal", source.principal()),
            Label::new("source_app", source.get(|w| &w.app, |p| &p.app)),
            Label::new("source_version", source.get(|w| &w.version, |p| &p.version)),
            Label::new("source_canonical_service", source.get(|w| &w.canonical_service, |p| &p.canonical_service)),
            Label::new("source_canonical_revision", source.get(|w| &w.canonical_revision, |p| &p.canonical_revision)),
            Label::new("source_cluster", source.get(|w| &w.cluster, |p| &p.cluster)),
            Label::new("destination_workload", destination.get(|w| &w.name, |p| &p.workload)),
            Label::new("destination_workload_namespace", destination.get(|w| &w.namespace, |p| &p.namespace)),
            Label::new("destination_principal", destination.principal()),
            Label::new("destination_app", destination.get(|w| &w.app, |p| &p.app)),
            Label::new("destination_version", destination_version),
            Label::new("destination_service", service.clone()),
            Label::new("destination_service_name", service_name.clone()),
            Label::new("destination_service_namespace", service_namespace.clone()),
            Label::new(
                "destination_canonical_service",
                destination.get(|w| &w.canonical_service, |p| &p.canonical_service),
            ),
            Label::new(
                "destination_canonical_revision",
                destination.get(|w| &w.canonical_revision, |p| &p.canonical_revision),
            ),
            Label::new("destination_cluster", destination.get(|w| &w.cluster, |p| &p.cluster)),
            Label::new("request_protocol", if key.grpc { "grpc" } else { "http" }),
            Label::new("response_code", key.status.to_string()),
            Label::new("grpc_response_status", grpc_status),
            Label::new("response_flags", key.flags),
            Label::new("connection_security_policy", security),
        ]
    }
}

/// One side of the call: this workload, or the peer.
enum Side<'a> {
    /// This workload, with its principal (`unknown` unless its labels name it).
    Own(&'a WorkloadLabels, String),
    Peer(&'a PeerLabels),
}

impl Side<'_> {
    fn get(&self, own: impl Fn(&WorkloadLabels) -> &String, peer: impl Fn(&PeerLabels) -> &String) -> String {
        match self {
            Self::Own(w, _) => own(w).clone(),
            Self::Peer(p) => peer(p).clone(),
        }
    }

    fn principal(&self) -> String {
        match self {
            Self::Own(_, principal) => principal.clone(),
            Self::Peer(p) => p.principal.clone(),
        }
    }
}
