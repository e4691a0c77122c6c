//! `mesh_requests_total` and `mesh_request_duration_seconds`, with their handles registered once
//! per label set and kept, so a request costs a lock-free map lookup instead of building seven
//! owned labels and asking the recorder twice.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use foldhash::fast::RandomState;

use arc_swap::ArcSwap;
use mesh_core::{RouteName, ServiceName, SpiffeId, SubsetName};
use metrics::{Counter, Histogram, Label};

use super::Direction;
use crate::metrics::{REQUEST_DURATION, REQUESTS};

/// Label sets beyond this many are recorded without caching their handles: label values are
/// bounded by design, so reaching it means something upstream is not.
const MAX_CACHED: usize = 4096;

/// The labels of one request, other than direction and service (fixed per layer).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RequestLabels {
    pub(crate) route: Option<RouteName>,
    pub(crate) subset: Option<SubsetName>,
    pub(crate) status_class: &'static str,
    pub(crate) grpc_code: &'static str,
    pub(crate) peer: Option<SpiffeId>,
}

#[derive(Clone)]
pub(crate) struct Handles {
    requests: Counter,
    duration: Histogram,
}

impl Handles {
    fn record(&self, elapsed: Duration) {
        self.requests.increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

pub(crate) struct RequestMetrics {
    direction: Direction,
    service: ServiceName,
    /// Looked up on every request: SipHash over the labels' strings cost more than the rest of
    /// the lookup, and the keys are bounded label values, so a fast hasher.
    handles: ArcSwap<HashMap<RequestLabels, Handles, RandomState>>,
}

impl std::fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMetrics").field("label_sets", &self.handles.load().len()).finish()
    }
}

impl RequestMetrics {
    pub(crate) fn new(direction: Direction, service: ServiceName) -> Self {
        Self { direction, service, handles: ArcSwap::default() }
    }

    pub(crate) fn record(&self, labels: RequestLabels, elapsed: Duration) {
        if let Some(handles) = self.handles.load().get(&labels) {
            handles.record(elapsed);
            return;
        }
        self.handles(labels).record(elapsed);
    }

    /// The handles of `labels`, registered and cached the first time.
    fn handles(&self, labels: RequestLabels) -> Handles {
        if let Some(handles) = self.handles.load().get(&labels) {
            return handles.clone();
        }
        let handles = self.register(&labels);
        if self.handles.load().len() < MAX_CACHED {
            self.handles.rcu(|cached| {
                let mut cached = HashMap::clone(cached);
                cached.insert(labels.clone(), handles.clone());
                cached
            });
        }
        handles
    }

    fn register(&self, labels: &RequestLabels) -> Handles {
        let name = |n: Option<&str>| n.unwrap_or("").to_owned();
        let labels = vec![
            Label::new("direction", self.direction.as_str()),
            Label::new("service", self.service.as_str().to_owned()),
            Label::new("route", name(labels.route.as_ref().map(RouteName::as_str))),
            Label::new("subset", name(labels.subset.as_ref().map(SubsetName::as_str))),
            Label::new("status_class", labels.status_class),
            Label::new("grpc_code", labels.grpc_code),
            Label::new("peer", name(labels.peer.as_ref().map(SpiffeId::as_str))),
        ];
        Handles {
            requests: metrics::counter!(REQUESTS, labels.clone()),
            duration: metrics::histogram!(REQUEST_DURATION, labels),
        }
    }
}

/// Shared by every service a layer makes.
pub(crate) type SharedRequestMetrics = Arc<RequestMetrics>;

/// Label sets one server connection keeps beyond this many go through the layer's map.
const CONNECTION_CACHED: usize = 8;

/// The handles one server connection used, by status class and gRPC code: its other labels
/// (the peer, this server's subset, no route) are the connection's for its whole life, so a
/// request finds its handles in a short list instead of hashing the peer's SPIFFE ID.
#[derive(Default)]
pub(crate) struct ConnectionMetrics {
    seen: Mutex<Vec<(&'static str, &'static str, Handles)>>,
}

impl ConnectionMetrics {
    /// Records one request of this connection; `labels` (with these `status_class` and
    /// `grpc_code`) are built only the first time.
    pub(crate) fn record(
        &self,
        metrics: &RequestMetrics,
        status_class: &'static str,
        grpc_code: &'static str,
        labels: impl FnOnce() -> RequestLabels,
        elapsed: Duration,
    ) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, _, handles)) = seen.iter().find(|(s, g, _)| *s == status_class && *g == grpc_code) {
            return handles.record(elapsed);
        }
        let handles = metrics.handles(labels());
        handles.record(elapsed);
        if seen.len() < CONNECTION_CACHED {
            seen.push((status_class, grpc_code, handles));
        }
    }
}

impl std::fmt::Debug for ConnectionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionMetrics").finish_non_exhaustive()
    }
}
