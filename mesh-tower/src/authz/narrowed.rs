//! A policy's rules narrowed to one connection's caller and port ([`Narrowed`]): what
//! [`ConnectionAuthorization`](super::connection::ConnectionAuthorization) keeps per connection and
//! the one decision path (`service::check`) reads.

use std::{
    any::Any,
    sync::{Arc, Mutex, PoisonError},
};

use mesh_core::policy::{AuthorizationDecision, AuthorizationPolicy, Call, CallerRules};

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
