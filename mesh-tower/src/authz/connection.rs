//! Authorization of one accepted connection: the caller's identity and the port do not change
//! for its life, so the policy's rules are narrowed to them once (per policy version), and each
//! request only checks what depends on it.

use std::{
    any::Any,
    sync::{Arc, Mutex, PoisonError},
};

use http::{Request, Response};
use mesh_core::{
    SpiffeId,
    policy::{AuthorizationDecision, AuthorizationPolicy, Call, CallerRules},
};

use super::{AuthorizationLayer, AuthorizationStats, layer::PolicySource, service::check};

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

/// A policy's rules narrowed to one connection's caller, or not narrowed at all.
#[derive(Debug)]
pub(super) enum Narrowed {
    /// The layer, which serves any connection: every call evaluates the whole policy.
    None,
    /// The rules of a fixed policy.
    Fixed(CallerRules),
    /// The rules of the last policy (or snapshot) seen, kept alive with it so its address cannot
    /// be reused by another; rebuilt when the source holds a new one.
    Latest(Mutex<Option<(Arc<dyn Any + Send + Sync>, CallerRules)>>),
}

impl Narrowed {
    /// Decides `call` under a fixed `policy`.
    pub(super) fn evaluate_fixed(&self, policy: &AuthorizationPolicy, call: &Call<'_>) -> AuthorizationDecision {
        match self {
            Self::Fixed(rules) => rules.evaluate_call(policy, call),
            Self::None | Self::Latest(_) => policy.evaluate_call(call),
        }
    }

    /// Decides `call` under `policy`, the current value of a changing source, which `version`
    /// (the policy itself, or the snapshot holding it) stands for.
    pub(super) fn evaluate_latest(
        &self,
        version: &Arc<impl Any + Send + Sync>,
        policy: &AuthorizationPolicy,
        call: &Call<'_>,
    ) -> AuthorizationDecision {
        let Self::Latest(last) = self else {
            return policy.evaluate_call(call);
        };
        let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, rules)) = &*last
            && std::ptr::addr_eq(Arc::as_ptr(seen), Arc::as_ptr(version))
        {
            return rules.evaluate_call(policy, call);
        }
        let rules = policy.for_caller(call.peer, call.port);
        let decision = rules.evaluate_call(policy, call);
        *last = Some((version.clone(), rules));
        decision
    }
}
