//! `DnsDiscovery`: an endpoint source that looks subsets' DNS names up and follows their TTLs.

use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig},
    net::runtime::TokioRuntimeProvider,
};
use mesh_core::{
    DnsTarget,
    discovery::{
        ComposedDiscovery, ComposedDiscoveryBuilder, Discovery, DiscoveryError, EndpointDiscovery, EndpointsPublisher,
        EndpointsWatch,
    },
};
use tokio::runtime::Handle;

use crate::lookup::lookup;

/// Discovery of a subset's endpoints in DNS, the way a Kubernetes headless Service publishes its
/// pods and gRPC's default resolver reads them.
///
/// For each [`DnsTarget`] watched it looks the name up — its A and AAAA records, each address at
/// the subset's port; or, with no port, its SRV records, which give each endpoint's port and
/// weight (of the records with the lowest priority) — and looks it up again when the answer's TTL
/// runs out, the TTL bounded by [`DnsDiscoveryBuilder::refresh`]. A lookup that fails (no
/// answer, NXDOMAIN, no records) keeps the last good set and reports a [`DnsLookupError`]
/// (inside [`DiscoveryError::Backend`]) beside it; the next lookup comes sooner (from the lower
/// bound, doubling up to the upper one while it keeps failing). Watches of one name share one
/// lookup loop, which stops when the last watch is dropped.
///
/// DNS gives addresses, not routes, splits, identities or policies: those come from another
/// source, with which [`compose`](Self::compose) merges it.
///
/// ```no_run
/// use mesh_core::{ServiceName, discovery::{Discovery, FileDiscovery}};
/// use mesh_dns::DnsDiscovery;
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// // Subsets in the file name DNS names: `- { name: v1, dns: reviews-v1.default.svc.cluster.local, port: 9080 }`.
/// let file = FileDiscovery::open("/etc/mesh/services.yaml")?;
/// let discovery = DnsDiscovery::builder().build()?.compose(file).build()?;
/// let snapshot = discovery.watch(&"reviews".parse()?).ready().await?;
/// # Ok(()) }
/// ```
///
/// [`DnsLookupError`]: crate::DnsLookupError
#[derive(Clone)]
pub struct DnsDiscovery {
    inner: Arc<Inner>,
}

/// Builds a [`DnsDiscovery`]. See [`DnsDiscovery::builder`].
#[derive(Clone, Debug)]
pub struct DnsDiscoveryBuilder {
    nameservers: Vec<SocketAddr>,
    min_refresh: Duration,
    max_refresh: Duration,
    timeout: Duration,
}

/// A [`DnsDiscovery`] that could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsConfigError {
    /// Built outside a Tokio runtime, which the lookups run on.
    #[error("DnsDiscovery must be built inside a Tokio runtime")]
    NoRuntime,
    /// The system's resolver configuration (`/etc/resolv.conf`) could not be read.
    #[error("cannot read the system's DNS resolver configuration: {0}")]
    SystemConfig(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The refresh bounds are inverted or zero.
    #[error("invalid refresh bounds {min:?}..{max:?}: the lower bound must be above zero and at most the upper one")]
    RefreshBounds {
        /// The lower bound given.
        min: Duration,
        /// The upper bound given.
        max: Duration,
    },
}

struct Inner {
    resolver: TokioResolver,
    min_refresh: Duration,
    max_refresh: Duration,
    runtime: Handle,
    targets: Mutex<HashMap<DnsTarget, Arc<EndpointsPublisher>>>,
}

// === impl DnsDiscoveryBuilder ===

impl Default for DnsDiscoveryBuilder {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            min_refresh: Duration::from_secs(1),
            max_refresh: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
        }
    }
}

impl DnsDiscoveryBuilder {
    /// Asks this nameserver (UDP, and TCP for truncated answers). May be called several times;
    /// without any, the system's resolver configuration is used (`/etc/resolv.conf` on Unix, with
    /// its search domains, so `reviews-v1` works inside a Kubernetes namespace).
    ///
    /// ```
    /// let builder = mesh_dns::DnsDiscovery::builder().nameserver("10.96.0.10:53".parse().unwrap());
    /// ```
    pub fn nameserver(mut self, address: SocketAddr) -> Self {
        self.nameservers.push(address);
        self
    }

    /// Bounds the time between two lookups of a name: its TTL, but at least `min` (default 1 s)
    /// and at most `max` (default 60 s). After a failed lookup the next comes after `min`,
    /// doubling while failures go on, up to `max`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = mesh_dns::DnsDiscovery::builder().refresh(Duration::from_secs(5), Duration::from_secs(30));
    /// ```
    pub fn refresh(mut self, min: Duration, max: Duration) -> Self {
        self.min_refresh = min;
        self.max_refresh = max;
        self
    }

    /// How long one query waits for an answer (default 2 s); a query that times out is retried
    /// twice before the lookup counts as failed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Builds it. Must run inside a Tokio runtime.
    pub fn build(self) -> Result<DnsDiscovery, DnsConfigError> {
        if self.min_refresh.is_zero() || self.min_refresh > self.max_refresh {
            return Err(DnsConfigError::RefreshBounds { min: self.min_refresh, max: self.max_refresh });
        }
        let runtime = Handle::try_current().map_err(|_| DnsConfigError::NoRuntime)?;
        let mut builder = if self.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsConfigError::SystemConfig(Box::new(e)))?
        } else {
            let servers = self.nameservers.iter().map(|address| {
                let connection = |mut c: ConnectionConfig| {
                    c.port = address.port();
                    c
                };
                NameServerConfig::new(
                    address.ip(),
                    true,
                    vec![connection(ConnectionConfig::udp()), connection(ConnectionConfig::tcp())],
                )
            });
            let mut builder = TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers.collect()),
                TokioRuntimeProvider::default(),
            );
            // Given nameservers are the whole truth: no hosts file.
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        };
        let options = builder.options_mut();
        // We schedule lookups by TTL ourselves: a cache would only answer them with old records.
        options.cache_size = 0;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = self.timeout;
        options.attempts = 2; // retries after the first try
        let resolver = builder.build().map_err(|e| DnsConfigError::SystemConfig(Box::new(e)))?;
        Ok(DnsDiscovery {
            inner: Arc::new(Inner {
                resolver,
                min_refresh: self.min_refresh,
                max_refresh: self.max_refresh,
                runtime,
                targets: Mutex::new(HashMap::new()),
            }),
        })
    }
}

// === impl DnsDiscovery ===

impl DnsDiscovery {
    /// The system's resolver configuration, TTLs bounded to 1 s..60 s.
    pub fn builder() -> DnsDiscoveryBuilder {
        DnsDiscoveryBuilder::default()
    }

    /// Routes, splits, identities and policies from `policies` (a
    /// [`FileDiscovery`](mesh_core::FileDiscovery), a [`StaticDiscovery`](mesh_core::StaticDiscovery),
    /// xDS), the endpoints of its subsets that name a DNS name from here.
    pub fn compose(self, policies: impl Discovery) -> ComposedDiscoveryBuilder {
        ComposedDiscovery::builder(policies, self)
    }
}

impl Inner {
    fn targets(&self) -> MutexGuard<'_, HashMap<DnsTarget, Arc<EndpointsPublisher>>> {
        // Every change is one insert or remove: a panic elsewhere cannot leave it half-changed.
        self.targets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl EndpointDiscovery for DnsDiscovery {
    fn watch_endpoints(&self, target: &DnsTarget) -> EndpointsWatch {
        let mut targets = self.inner.targets();
        if let Some(publisher) = targets.get(target).filter(|p| !p.is_unwatched()) {
            return publisher.subscribe();
        }
        let publisher = Arc::new(EndpointsPublisher::new(target.clone()));
        let watch = publisher.subscribe();
        targets.insert(target.clone(), publisher.clone());
        self.inner.runtime.spawn(follow(Arc::downgrade(&self.inner), publisher));
        watch
    }
}

/// Looks `publisher`'s target up at every TTL until nobody watches it (or the discovery is gone).
async fn follow(inner: std::sync::Weak<Inner>, publisher: Arc<EndpointsPublisher>) {
    let target = publisher.target().clone();
    let mut failures = 0u32;
    loop {
        let Some(strong) = inner.upgrade() else { return };
        let (resolver, min, max) = (strong.resolver.clone(), strong.min_refresh, strong.max_refresh);
        drop(strong);
        let wait = tokio::select! {
            found = lookup(&resolver, &target) => match found {
                Ok(found) => {
                    failures = 0;
                    if publisher.publish(found.endpoints) {
                        tracing::debug!(%target, endpoints = publisher.current().map_or(0, |e| e.len()), "DNS endpoints changed");
                    }
                    found.ttl.clamp(min, max)
                }
                Err(error) => {
                    tracing::warn!(%error, "DNS lookup failed; the subset keeps its last endpoints");
                    publisher.report_error(DiscoveryError::Backend { backend: "dns", source: Box::new(error) });
                    failures = failures.saturating_add(1);
                    min.saturating_mul(1 << (failures - 1).min(16)).min(max)
                }
            },
            () = publisher.unwatched() => break,
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = publisher.unwatched() => break,
        }
    }
    if let Some(inner) = inner.upgrade() {
        let mut targets = inner.targets();
        if targets.get(&target).is_some_and(|p| Arc::ptr_eq(p, &publisher)) {
            targets.remove(&target);
        }
    }
}

impl fmt::Debug for DnsDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsDiscovery")
            .field("targets", &self.inner.targets().keys().collect::<Vec<_>>())
            .field("refresh", &(self.inner.min_refresh..self.inner.max_refresh))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_builds_say_why() {
        let error = DnsDiscovery::builder().nameserver("127.0.0.1:53".parse().unwrap()).build().unwrap_err();
        assert!(matches!(error, DnsConfigError::NoRuntime), "{error}");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = runtime.enter();
        let inverted = DnsDiscovery::builder().refresh(Duration::from_secs(5), Duration::from_secs(1)).build();
        assert!(matches!(inverted, Err(DnsConfigError::RefreshBounds { .. })));
        let zero = DnsDiscovery::builder().refresh(Duration::ZERO, Duration::from_secs(1)).build();
        assert!(zero.unwrap_err().to_string().contains("above zero"));
        assert!(DnsDiscovery::builder().nameserver("127.0.0.1:53".parse().unwrap()).build().is_ok());
    }
}
