//! The one place A66's measurements are recorded: the instruments, bound once per label set,
//! and what a call or an attempt keeps between its start and its end.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderName, HeaderValue};
use mesh_core::{ServiceName, SubsetName};
use opentelemetry::{
    KeyValue,
    metrics::{BoundCounter, BoundHistogram},
};

use super::{
    GrpcMetrics, Instruments, OTHER_METHOD, Registered,
    cache::{Cache, MAX_CACHED},
    csm,
};
use crate::{
    grpc,
    telemetry::{
        Direction,
        istio::{labels::destination_service, peer_metadata},
    },
};

/// The id of a peer whose labels were not cached.
const UNCACHED: u32 = u32::MAX;

static PEER_METADATA: HeaderName = HeaderName::from_static(peer_metadata::PEER_METADATA);
static PEER_METADATA_ID: HeaderName = HeaderName::from_static(peer_metadata::PEER_METADATA_ID);

/// A method as `grpc.method` names it, with the handle of its `started` counter.
#[derive(Clone)]
pub(crate) struct Method {
    name: Arc<str>,
    /// `grpc.client.attempt.started` or `grpc.server.call.started`.
    started: BoundCounter<u64>,
}

/// The peer's CSM labels, derived once per metadata value.
#[derive(Clone)]
struct Peer {
    id: u32,
    labels: Arc<[KeyValue]>,
    /// Why its metadata was ignored, counted on every call that sends it.
    rejected: Option<metrics::Counter>,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct EndKey {
    method: Arc<str>,
    status: u16,
    peer: u32,
    backend: Option<SubsetName>,
}

#[derive(Clone)]
struct EndHandles {
    duration: BoundHistogram<f64>,
    sent: Option<BoundHistogram<u64>>,
    rcvd: Option<BoundHistogram<u64>>,
}

/// What one attempt, client call or server call reports at its end.
pub(crate) struct Ending<'a> {
    pub(crate) code: u16,
    pub(crate) elapsed: Duration,
    pub(crate) sent: u64,
    pub(crate) rcvd: u64,
    /// The peer's `x-envoy-peer-metadata`.
    pub(crate) peer: Option<&'a HeaderValue>,
    pub(crate) backend: Option<&'a SubsetName>,
}

/// A66's metrics of one telemetry layer (one side, one service), with its caches.
pub(crate) struct GrpcRecorder {
    instruments: Arc<Instruments>,
    direction: Direction,
    registered: Registered,
    target: KeyValue,
    backend_service: bool,
    /// With CSM on: this workload's labels, then (client side) the destination's.
    local: Option<Vec<KeyValue>>,
    send: Option<(HeaderValue, HeaderValue)>,
    methods: Cache<Box<str>, Method>,
    peers: Cache<Option<HeaderValue>, Peer>,
    next_peer: AtomicU32,
    /// Attempt ends client side, call ends server side.
    ends: Cache<EndKey, EndHandles>,
    /// Client side: call ends.
    calls: Cache<EndKey, EndHandles>,
}

impl std::fmt::Debug for GrpcRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcRecorder")
            .field("direction", &self.direction)
            .field("methods", &self.methods.len())
            .field("label_sets", &self.ends.len())
            .finish_non_exhaustive()
    }
}

impl GrpcRecorder {
    pub(crate) fn new(direction: Direction, service: &ServiceName, config: &GrpcMetrics) -> Self {
        let registered = config.registered.clone().unwrap_or(match direction {
            Direction::Outbound => Registered::All,
            Direction::Inbound => Registered::Only { services: Arc::default(), methods: Arc::default() },
        });
        let local = config.csm.as_ref().map(|workload| {
            let mut labels = csm::local_labels(workload);
            if direction == Direction::Outbound {
                let (_, name, namespace) = destination_service(service.as_str());
                labels.extend(csm::service_labels(&name, &namespace));
            }
            labels
        });
        let send = config
            .csm
            .as_ref()
            .filter(|_| config.send_metadata)
            .map(|workload| (peer_metadata::encode(workload), peer_metadata::node_id(workload)));
        let target = config.target.clone().unwrap_or_else(|| service.as_str().to_owned());
        Self {
            instruments: config.instruments.clone(),
            direction,
            registered,
            target: KeyValue::new("grpc.target", target),
            backend_service: config.backend_service,
            local,
            send,
            methods: Cache::default(),
            peers: Cache::default(),
            next_peer: AtomicU32::new(1),
            ends: Cache::default(),
            calls: Cache::default(),
        }
    }

    /// Writes this workload's metadata on an outgoing request or response, unless CSM or
    /// sending is off or the headers are already there.
    pub(crate) fn send(&self, headers: &mut HeaderMap) {
        if let Some((metadata, id)) = &self.send {
            headers.entry(&PEER_METADATA).or_insert_with(|| metadata.clone());
            headers.entry(&PEER_METADATA_ID).or_insert_with(|| id.clone());
        }
    }

    /// Whether the peer's metadata is read (CSM on).
    pub(crate) fn reads_peer(&self) -> bool {
        self.local.is_some()
    }

    /// The method of a request's path (`/package.Service/Method`), registered or `other`.
    fn method(&self, path: &str) -> Method {
        let name = path.strip_prefix('/').unwrap_or(path);
        let name = if self.registered.contains(name) { name } else { OTHER_METHOD };
        self.methods.get_or_make(name, || {
            let attribute = KeyValue::new("grpc.method", name.to_owned());
            let started = match self.direction {
                Direction::Outbound => self.instruments.attempt_started.bind(&[attribute, self.target.clone()]),
                Direction::Inbound => self.instruments.server_started.bind(&[attribute]),
            };
            (name.into(), Method { name: name.into(), started })
        })
    }

    /// Client side: a call starts (`grpc.client.call.duration` has no `started` counter).
    pub(crate) fn start_call(&self, path: &str) -> CallStart {
        CallStart { method: self.method(path) }
    }

    /// Client side: an attempt starts; counts `grpc.client.attempt.started`.
    pub(crate) fn start_attempt(&self, path: &str) -> AttemptStart {
        let method = self.method(path);
        method.started.add(1);
        AttemptStart { method, started: Instant::now() }
    }

    /// Server side: a call starts; counts `grpc.server.call.started`.
    pub(crate) fn start_server(&self, path: &str, peer: Option<HeaderValue>) -> ServerCall {
        let method = self.method(path);
        method.started.add(1);
        ServerCall { method, peer: if self.reads_peer() { peer } else { None } }
    }

    /// Client side: the call's `grpc.client.call.duration`.
    pub(crate) fn finish_call(&self, call: &CallStart, code: u16, elapsed: Duration) {
        let key = EndKey { method: call.method.name.clone(), status: code, peer: 0, backend: None };
        let handles = self.calls.get_or_make(&key, || {
            let attributes = [self.method_attribute(&key), self.target.clone(), status_attribute(code)];
            let handles =
                EndHandles { duration: self.instruments.call_duration.bind(&attributes), sent: None, rcvd: None };
            (key.clone(), handles)
        });
        handles.duration.record(elapsed.as_secs_f64());
    }

    /// The end of an attempt (client side) or a call (server side): its duration and sizes.
    pub(crate) fn finish(&self, method: &Method, ending: &Ending<'_>) {
        let peer = self.reads_peer().then(|| self.peer(ending.peer));
        if let Some(rejected) = peer.as_ref().and_then(|p| p.rejected.as_ref()) {
            rejected.increment(1);
        }
        let backend = if self.backend_service { ending.backend.cloned() } else { None };
        let key = EndKey {
            method: method.name.clone(),
            status: ending.code,
            peer: peer.as_ref().map_or(0, |p| p.id),
            backend,
        };
        let handles = match &peer {
            Some(peer) if peer.id == UNCACHED => self.bind_end(&key, Some(peer)),
            _ => self.ends.get_or_make(&key, || (key.clone(), self.bind_end(&key, peer.as_ref()))),
        };
        handles.duration.record(ending.elapsed.as_secs_f64());
        if let Some(sent) = &handles.sent {
            sent.record(ending.sent);
        }
        if let Some(rcvd) = &handles.rcvd {
            rcvd.record(ending.rcvd);
        }
    }

    fn method_attribute(&self, key: &EndKey) -> KeyValue {
        KeyValue::new("grpc.method", key.method.to_string())
    }

    fn bind_end(&self, key: &EndKey, peer: Option<&Peer>) -> EndHandles {
        let mut attributes = vec![self.method_attribute(key)];
        if self.direction == Direction::Outbound {
            attributes.push(self.target.clone());
        }
        attributes.push(status_attribute(key.status));
        if let Some(backend) = &key.backend {
            attributes.push(KeyValue::new(super::LB_BACKEND_SERVICE, backend.as_str().to_owned()));
        }
        if let Some(local) = &self.local {
            attributes.extend(local.iter().cloned());
        }
        if let Some(peer) = peer {
            attributes.extend(peer.labels.iter().cloned());
        }
        let i = &self.instruments;
        let (duration, sent, rcvd) = match self.direction {
            Direction::Outbound => (&i.attempt_duration, &i.attempt_sent, &i.attempt_rcvd),
            Direction::Inbound => (&i.server_duration, &i.server_sent, &i.server_rcvd),
        };
        EndHandles {
            duration: duration.bind(&attributes),
            sent: Some(sent.bind(&attributes)),
            rcvd: Some(rcvd.bind(&attributes)),
        }
    }

    /// The peer's labels, derived once per metadata value.
    fn peer(&self, metadata: Option<&HeaderValue>) -> Peer {
        let key = metadata.cloned();
        self.peers.get_or_make(&key, || {
            let (labels, error) = csm::remote_labels(metadata.map(HeaderValue::as_bytes));
            let rejected = error.map(|error| {
                tracing::debug!(target: "mesh::telemetry", %error, "ignoring the peer's metadata");
                metrics::counter!(peer_metadata::REJECTED, "reason" => error.as_str())
            });
            // Peers past the bound are not cached, nor are their handles.
            let id = self.next_peer.fetch_add(1, Ordering::Relaxed);
            let id = if id as usize > MAX_CACHED { UNCACHED } else { id };
            (key.clone(), Peer { id, labels: labels.into(), rejected })
        })
    }
}

fn status_attribute(code: u16) -> KeyValue {
    KeyValue::new("grpc.status", grpc::code_name(code))
}

/// A client call, from its start at the top of the stack.
pub(crate) struct CallStart {
    method: Method,
}

/// A client attempt, from its start below the retry layer.
pub(crate) struct AttemptStart {
    pub(crate) method: Method,
    pub(crate) started: Instant,
}

/// A server call, from its start to its end.
pub(crate) struct ServerCall {
    pub(crate) method: Method,
    /// The caller's `x-envoy-peer-metadata`.
    pub(crate) peer: Option<HeaderValue>,
}
