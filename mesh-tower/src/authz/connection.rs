//! Authorization of one accepted connection: the caller's identity and the port do not change
//! for its life, so the policy's rules are narrowed to them once (per policy version), and each
//! request only checks what depends on it.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use mesh_core::SpiffeId;

use super::{AuthorizationLayer, AuthorizationStats, layer::PolicySource, narrowed::Narrowed, service::check};

/// An [`AuthorizationLayer`]'s policy applied to the requests of one connection, as the layer
/// would apply it (the same decisions, logs, counters and denial responses).
#[derive(Debug)]
pub(crate) struct ConnectionAuthorization {
    source: PolicySource,
    stats: Arc<AuthorizationStats>,
    peer: Option<SpiffeId>,
    port: u16,
    narrowed: Narrowed,
}

impl ConnectionAuthorization {
    /// `layer`'s policy for the connection of `peer` accepted on `port`.
    pub(crate) fn new(layer: &AuthorizationLayer, peer: Option<&SpiffeId>, port: u16) -> Self {
        let narrowed = match &layer.policy {
            PolicySource::Fixed(policy) => Narrowed::Fixed(policy.for_caller(peer, Some(port))),
            PolicySource::Watch(_) | PolicySource::Discovery(_) => Narrowed::Latest(Mutex::default()),
        };
        Self { source: layer.policy.clone(), stats: layer.stats.clone(), peer: peer.cloned(), port, narrowed }
    }

    /// `None` lets `request` through; otherwise the response that refuses it.
    pub(crate) fn check<ReqBody, ResBody: Default>(&self, request: &Request<ReqBody>) -> Option<Response<ResBody>> {
        check(&self.source, &self.stats, request, self.peer.as_ref(), Some(self.port), &self.narrowed)
    }
}
