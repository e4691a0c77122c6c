//! The state of the world, per resource type: what is subscribed, what was accepted (version),
//! what the last response was (nonce), and the cache of decoded resources. No I/O: the driver
//! feeds it responses and the clock, and sends the requests it returns.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use envoy_types::pb::{
    envoy::{
        config::core::v3::Node,
        service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
    },
    google::rpc::Status,
};
use tokio::time::Instant;

use crate::resource::{self, DecodeContext, Resource, ResourceError, ResourceType};

/// What the cache knows of one resource name.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Entry {
    /// The last good version of the resource (kept when a later update is refused, gRFC A46).
    pub(crate) good: Option<Resource>,
    /// Why the last update of the resource was refused.
    pub(crate) error: Option<ResourceError>,
    /// The control plane says (or the does-not-exist timer decided) it does not exist.
    pub(crate) missing: bool,
}

/// The state of one resource type.
#[derive(Debug, Default)]
pub(crate) struct TypeState {
    /// The names subscribed to.
    pub(crate) wanted: BTreeSet<String>,
    /// The last version accepted (ACKed).
    pub(crate) version: String,
    /// The nonce of the last response on the current stream.
    pub(crate) nonce: String,
    /// Decoded resources by name.
    pub(crate) cache: HashMap<String, Entry>,
    /// Names asked for on the current stream and not yet seen, with the time of asking.
    pending: HashMap<String, Instant>,
}

/// What handling a response gives: the ACK or NACK to send, and whether the cache took it.
#[derive(Debug)]
pub(crate) struct Handled {
    pub(crate) reply: DiscoveryRequest,
    /// The NACK's error detail, if the response was refused (wholly or in part).
    pub(crate) nack: Option<String>,
    /// Whether the response was of a type this client asks for and so reached the cache (a
    /// response of an unknown type is NACKed and changes nothing).
    pub(crate) applied: bool,
}

/// The whole ADS state.
#[derive(Debug)]
pub(crate) struct AdsState {
    node: Node,
    types: BTreeMap<ResourceType, TypeState>,
    resource_timeout: Duration,
    /// The node goes with the first request of each stream only.
    node_sent: bool,
    /// Whether a stream is current (between [`on_stream_start`](Self::on_stream_start) and
    /// [`on_stream_end`](Self::on_stream_end)): only then do subscription changes make requests;
    /// otherwise the next stream's first requests carry them.
    on_stream: bool,
    /// gRFC A53: LDS and CDS resources left out of a response are kept.
    ignore_resource_deletion: bool,
}

impl AdsState {
    pub(crate) fn new(node: Node, resource_timeout: Duration) -> Self {
        let types = ResourceType::ALL.into_iter().map(|t| (t, TypeState::default())).collect();
        Self { node, types, resource_timeout, node_sent: false, on_stream: false, ignore_resource_deletion: false }
    }

    /// Keeps LDS and CDS resources that a response leaves out (the server feature
    /// `ignore_resource_deletion`, gRFC A53).
    pub(crate) fn ignoring_deletions(mut self, ignore: bool) -> Self {
        self.ignore_resource_deletion = ignore;
        self
    }

    pub(crate) fn get(&self, kind: ResourceType) -> &TypeState {
        &self.types[&kind]
    }

    fn get_mut(&mut self, kind: ResourceType) -> &mut TypeState {
        self.types.entry(kind).or_default()
    }

    /// The cached entry of a resource.
    pub(crate) fn entry(&self, kind: ResourceType, name: &str) -> Option<&Entry> {
        self.get(kind).cache.get(name)
    }

    /// A new stream: nonces belong to the old one, and every subscription is asked again. Returns
    /// the requests to send first.
    pub(crate) fn on_stream_start(&mut self, now: Instant) -> Vec<DiscoveryRequest> {
        self.node_sent = false;
        self.on_stream = true;
        let kinds: Vec<_> = self.types.keys().copied().collect();
        let mut requests = Vec::new();
        for kind in kinds {
            let t = self.get_mut(kind);
            t.nonce.clear();
            t.pending.clear();
            if !t.wanted.is_empty() {
                requests.push(self.request(kind, now));
            }
        }
        requests
    }

    /// The stream broke: does-not-exist timers stop until the next stream asks again.
    pub(crate) fn on_stream_end(&mut self) {
        self.on_stream = false;
        for t in self.types.values_mut() {
            t.pending.clear();
        }
    }

    /// Changes the subscriptions of `kind`; returns the request to send if they changed while a
    /// stream is current.
    pub(crate) fn subscribe(
        &mut self,
        kind: ResourceType,
        names: BTreeSet<String>,
        now: Instant,
    ) -> Option<DiscoveryRequest> {
        let on_stream = self.on_stream;
        let t = self.get_mut(kind);
        if t.wanted == names {
            return None;
        }
        t.cache.retain(|name, _| names.contains(name));
        t.pending.retain(|name, _| names.contains(name));
        t.wanted = names;
        // An empty list would be a wildcard subscription for LDS and CDS.
        if !on_stream || (t.wanted.is_empty() && kind.response_is_complete()) {
            return None;
        }
        Some(self.request(kind, now))
    }

    /// The current request for `kind` (version, nonce, names), without an error.
    fn request(&mut self, kind: ResourceType, now: Instant) -> DiscoveryRequest {
        let node = if self.node_sent { None } else { Some(self.node.clone()) };
        self.node_sent = true;
        let t = self.get_mut(kind);
        for name in &t.wanted {
            if !t.cache.get(name).is_some_and(|e| e.good.is_some() || e.missing || e.error.is_some()) {
                t.pending.entry(name.clone()).or_insert(now);
            }
        }
        DiscoveryRequest {
            version_info: t.version.clone(),
            node,
            resource_names: t.wanted.iter().cloned().collect(),
            type_url: kind.type_url().to_owned(),
            response_nonce: t.nonce.clone(),
            ..Default::default()
        }
    }

    /// Applies a response and returns the ACK or NACK.
    ///
    /// Valid resources are used even when others in the same response are refused (gRFC A46); a
    /// refused resource keeps its last good version. For LDS and CDS, a subscribed resource that
    /// a response leaves out was deleted. A response of a type this client never asks for is
    /// NACKed and changes nothing.
    pub(crate) fn on_response(
        &mut self,
        response: DiscoveryResponse,
        ctx: &DecodeContext<'_>,
        now: Instant,
    ) -> Handled {
        let Some(kind) = ResourceType::from_type_url(&response.type_url) else {
            let detail = format!("the control plane sent a response of unknown type {}", response.type_url);
            let reply = DiscoveryRequest {
                type_url: response.type_url,
                response_nonce: response.nonce,
                error_detail: Some(invalid_argument(&detail)),
                ..Default::default()
            };
            return Handled { reply, nack: Some(detail), applied: false };
        };
        let mut errors = Vec::new();
        let mut seen = BTreeSet::new();
        let mut decoded = Vec::new();
        for any in &response.resources {
            match resource::decode(kind, any, ctx) {
                Ok((name, result)) => {
                    seen.insert(name.clone());
                    if let Err(e) = &result {
                        errors.push(e.to_string());
                    }
                    decoded.push((name, result));
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        let deletes = kind.response_is_complete() && errors.is_empty() && !self.ignore_resource_deletion;
        let t = self.get_mut(kind);
        t.nonce = response.nonce.clone();
        for (name, result) in decoded {
            if !t.wanted.contains(&name) {
                continue; // not subscribed: ignored, as gRPC does
            }
            t.pending.remove(&name);
            let entry = t.cache.entry(name).or_default();
            entry.missing = false;
            match result {
                Ok(resource) => {
                    entry.good = Some(resource);
                    entry.error = None;
                }
                Err(e) => entry.error = Some(e),
            }
        }
        if deletes {
            for name in &t.wanted {
                if !seen.contains(name) && t.cache.get(name).is_some_and(|e| e.good.is_some()) {
                    t.cache.insert(name.clone(), Entry { missing: true, ..Entry::default() });
                }
            }
        }
        let nack = if errors.is_empty() {
            t.version = response.version_info.clone();
            None
        } else {
            Some(errors.join("; "))
        };
        let mut reply = self.request(kind, now);
        reply.error_detail = nack.as_deref().map(invalid_argument);
        Handled { reply, nack, applied: true }
    }

    /// When the next does-not-exist timer fires.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.types.values().flat_map(|t| t.pending.values()).min().map(|asked| *asked + self.resource_timeout)
    }

    /// Marks the resources asked for longer than the timeout ago as not existing (gRFC A57).
    /// Returns whether any was.
    pub(crate) fn expire(&mut self, now: Instant) -> bool {
        let timeout = self.resource_timeout;
        let mut any = false;
        for t in self.types.values_mut() {
            let expired: Vec<String> =
                t.pending.iter().filter(|(_, asked)| **asked + timeout <= now).map(|(n, _)| n.clone()).collect();
            for name in expired {
                t.pending.remove(&name);
                t.cache.insert(name, Entry { missing: true, ..Entry::default() });
                any = true;
            }
        }
        any
    }
}

/// A NACK's `error_detail`: gRPC's `INVALID_ARGUMENT` with the reason.
fn invalid_argument(message: &str) -> Status {
    Status { code: 3, message: message.to_owned(), details: Vec::new() }
}
