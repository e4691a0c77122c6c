use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use mesh_core::{Discovery, ServiceName, SnapshotWatch, policy::AuthorizationPolicy};
use tower::Layer;

use super::Authorization;

/// Applies an [`AuthorizationPolicy`] to the services it wraps. Cheap to clone: the policy and
/// the counters are shared.
#[derive(Clone, Debug)]
pub struct AuthorizationLayer {
    pub(super) policy: PolicySource,
    pub(super) stats: Arc<AuthorizationStats>,
}

/// Where the policy comes from.
#[derive(Clone, Debug)]
pub(super) enum PolicySource {
    Fixed(Arc<AuthorizationPolicy>),
    /// The serving service's own snapshot, read per request (lock-free), so edits apply live.
    Discovery(SnapshotWatch),
    /// Whatever the watch holds when a request arrives (`None`: no authorization configured).
    Watch(tokio::sync::watch::Receiver<Option<Arc<AuthorizationPolicy>>>),
}

/// What an authorization layer decided so far.
#[derive(Debug, Default)]
pub struct AuthorizationStats {
    allowed: AtomicU64,
    denied: AtomicU64,
    would_deny: AtomicU64,
}

impl AuthorizationStats {
    /// Calls let through by a rule.
    pub fn allowed(&self) -> u64 {
        self.allowed.load(Ordering::Relaxed)
    }

    /// Calls refused with 403.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::Relaxed)
    }

    /// Calls a dry-run policy would have refused, and let through.
    pub fn would_deny(&self) -> u64 {
        self.would_deny.load(Ordering::Relaxed)
    }

    pub(super) fn record_allowed(&self) {
        self.allowed.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn record_denied(&self) {
        self.denied.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn record_would_deny(&self) {
        self.would_deny.fetch_add(1, Ordering::Relaxed);
    }
}

impl AuthorizationLayer {
    /// Enforces (or dry-runs, as the policy's mode says) `policy`.
    pub fn new(policy: AuthorizationPolicy) -> Self {
        Self { policy: PolicySource::Fixed(Arc::new(policy)), stats: Arc::default() }
    }

    /// Follows the policy under `policies.authorization` in `service`'s own snapshot, live: an
    /// edit applies to the next request. While the snapshot has no policy, every authenticated
    /// caller is allowed (nothing is configured); before discovery has any snapshot of the
    /// service, every call is denied (fail closed), with the reason in the log.
    pub fn from_discovery(discovery: &impl Discovery, service: &ServiceName) -> Self {
        Self { policy: PolicySource::Discovery(discovery.watch(service)), stats: Arc::default() }
    }

    /// Follows the policy a control plane sets (an xDS listener's RBAC filters, from
    /// `mesh_xds::XdsDiscovery::inbound`), read per request: a change applies to the next request,
    /// on open connections too. While the watch holds `None`, no authorization is configured and
    /// every caller is served, as on a server without this layer.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use mesh_core::policy::AuthorizationPolicy;
    ///
    /// let (set, policy) = tokio::sync::watch::channel(None);
    /// let layer = mesh_tower::authz::AuthorizationLayer::from_watch(policy);
    /// set.send_replace(Some(Arc::new(AuthorizationPolicy::enforce(vec![])))); // now deny all
    /// # let _ = layer;
    /// ```
    pub fn from_watch(policy: tokio::sync::watch::Receiver<Option<Arc<AuthorizationPolicy>>>) -> Self {
        Self { policy: PolicySource::Watch(policy), stats: Arc::default() }
    }

    /// The counters of every service this layer made.
    pub fn stats(&self) -> Arc<AuthorizationStats> {
        self.stats.clone()
    }
}

impl<S> Layer<S> for AuthorizationLayer {
    type Service = Authorization<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorization { inner, policy: self.policy.clone(), stats: self.stats.clone() }
    }
}
