//! Routes and policies from one source, endpoints from another, one snapshot per service.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::{runtime::Handle, sync::Notify, task::AbortHandle};

use super::{Discovery, DiscoveryError, EndpointDiscovery, EndpointsWatch, SnapshotPublisher, SnapshotWatch};
use crate::{
    model::{DnsTarget, Endpoint, Labels, ServiceSnapshot, ServiceSpec},
    name::{ServiceName, SubsetName},
};

/// Discovery that takes a service's routes, splits, identity and policies from one source (code,
/// a file, xDS) and the endpoints of its DNS subsets from another (DNS), and publishes them merged
/// as one snapshot per service.
///
/// A subset that names a DNS name ([`Subset::dns`](crate::Subset::dns), or one given in code with
/// [`ComposedDiscoveryBuilder::dns_subset`]) gets the endpoints the endpoint source finds for it.
/// In the snapshots published here such a subset is an ordinary one: its endpoints carry the label
/// `<subset>: "1"` and the subset selects on it (so one address can belong to several subsets),
/// and the endpoints' identity is the service's, from the policy source. Subsets that list their
/// endpoints keep them.
///
/// The [contract](super) holds for the merged snapshots: versions only increase; when either
/// source fails, the last good value of that part stays and the error is reported beside it
/// ([`DiscoveryError::Policies`], [`DiscoveryError::Endpoints`] for the first failing subset).
/// A snapshot is published once every DNS subset has an answer (a set, or an error), so a new
/// subset is not routed to before its endpoints are known.
///
/// ```
/// use mesh_core::{DnsTarget, Endpoint, ServiceName, ServiceSnapshot, StaticDiscovery, Subset};
/// use mesh_core::discovery::{ComposedDiscovery, Discovery, EndpointDiscovery, EndpointsPublisher, EndpointsWatch};
///
/// // An endpoint source of our own: every name has one address.
/// struct Fixed(EndpointsPublisher);
/// impl EndpointDiscovery for Fixed {
///     fn watch_endpoints(&self, _: &DnsTarget) -> EndpointsWatch { self.0.subscribe() }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let reviews: ServiceName = "reviews".parse()?;
/// let target = DnsTarget::addresses("reviews-v1.test".parse()?, 9080);
/// let source = EndpointsPublisher::new(target.clone());
/// source.publish(vec![Endpoint::new("10.0.0.7:9080".parse()?)]);
///
/// let policies = StaticDiscovery::new();
/// policies.set(ServiceSnapshot::builder(reviews.clone()).subset(Subset::from_dns("v1".parse()?, target)).build()?);
/// let discovery = ComposedDiscovery::builder(policies, Fixed(source)).build()?;
/// let snapshot = discovery.watch(&reviews).ready().await?;
/// let v1 = snapshot.subset(&"v1".parse()?).unwrap();
/// assert_eq!(snapshot.subset_endpoints(v1).count(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ComposedDiscovery {
    inner: Arc<Inner>,
}

/// Builds a [`ComposedDiscovery`]. See [`ComposedDiscovery::builder`].
pub struct ComposedDiscoveryBuilder {
    policies: Arc<dyn Discovery>,
    endpoints: Arc<dyn EndpointDiscovery>,
    dns_subsets: HashMap<ServiceName, BTreeMap<SubsetName, DnsTarget>>,
}

/// [`ComposedDiscoveryBuilder::build`] was called outside a Tokio runtime, which the merging
/// tasks run on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("ComposedDiscovery must be built inside a Tokio runtime")]
pub struct NoRuntime(());

struct Inner {
    policies: Arc<dyn Discovery>,
    endpoints: Arc<dyn EndpointDiscovery>,
    dns_subsets: HashMap<ServiceName, Arc<BTreeMap<SubsetName, DnsTarget>>>,
    runtime: Handle,
    services: Mutex<HashMap<ServiceName, Merging>>,
}

/// One service being merged: its publisher and the task that feeds it.
struct Merging {
    publisher: Arc<SnapshotPublisher>,
    task: AbortHandle,
}

// === impl ComposedDiscovery ===

impl ComposedDiscovery {
    /// Routes and policies from `policies`, the endpoints of DNS subsets from `endpoints`.
    pub fn builder(policies: impl Discovery, endpoints: impl EndpointDiscovery) -> ComposedDiscoveryBuilder {
        ComposedDiscoveryBuilder {
            policies: Arc::new(policies),
            endpoints: Arc::new(endpoints),
            dns_subsets: HashMap::new(),
        }
    }
}

impl ComposedDiscoveryBuilder {
    /// Looks up the endpoints of `service`'s subset `subset` at `target`, whatever the policy
    /// source says of that subset's endpoints: for sources whose subsets cannot name a DNS name
    /// (xDS clusters, snapshots built in code without [`Subset::from_dns`](crate::Subset::from_dns)).
    pub fn dns_subset(mut self, service: ServiceName, subset: SubsetName, target: DnsTarget) -> Self {
        self.dns_subsets.entry(service).or_default().insert(subset, target);
        self
    }

    /// Builds it. Must run inside a Tokio runtime: each watched service is merged by a task.
    pub fn build(self) -> Result<ComposedDiscovery, NoRuntime> {
        let runtime = Handle::try_current().map_err(|_| NoRuntime(()))?;
        Ok(ComposedDiscovery {
            inner: Arc::new(Inner {
                policies: self.policies,
                endpoints: self.endpoints,
                dns_subsets: self.dns_subsets.into_iter().map(|(s, t)| (s, Arc::new(t))).collect(),
                runtime,
                services: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Inner {
    fn services(&self) -> MutexGuard<'_, HashMap<ServiceName, Merging>> {
        // Every change is one insert: a panic elsewhere cannot leave the map half-changed.
        self.services.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for merging in self.services().values() {
            merging.task.abort();
        }
    }
}

impl Discovery for ComposedDiscovery {
    fn watch(&self, service: &ServiceName) -> SnapshotWatch {
        let mut services = self.inner.services();
        if let Some(merging) = services.get(service) {
            return merging.publisher.subscribe();
        }
        let publisher = Arc::new(SnapshotPublisher::new(service.clone()));
        let watch = publisher.subscribe();
        let merger = Merger {
            policies: self.inner.policies.watch(service),
            endpoints: self.inner.endpoints.clone(),
            dns_subsets: self.inner.dns_subsets.get(service).cloned().unwrap_or_default(),
            publisher: publisher.clone(),
            wake: Arc::new(Notify::new()),
            followed: BTreeMap::new(),
            reported: None,
        };
        let task = self.inner.runtime.spawn(merger.run()).abort_handle();
        services.insert(service.clone(), Merging { publisher, task });
        watch
    }
}

impl fmt::Debug for ComposedDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComposedDiscovery")
            .field("services", &self.inner.services().keys().collect::<Vec<_>>())
            .finish()
    }
}

impl fmt::Debug for ComposedDiscoveryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ComposedDiscoveryBuilder").field("dns_subsets", &self.dns_subsets).finish()
    }
}

// === impl Merger ===

/// The task that merges one service.
struct Merger {
    policies: SnapshotWatch,
    endpoints: Arc<dyn EndpointDiscovery>,
    dns_subsets: Arc<BTreeMap<SubsetName, DnsTarget>>,
    publisher: Arc<SnapshotPublisher>,
    /// Woken by the tasks that follow the endpoint watches.
    wake: Arc<Notify>,
    followed: BTreeMap<DnsTarget, Followed>,
    /// The source error last reported (compared by address: each report of a source is a new `Arc`).
    reported: Option<Arc<DiscoveryError>>,
}

struct Followed {
    watch: EndpointsWatch,
    forwarder: AbortHandle,
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

impl Merger {
    async fn run(mut self) {
        loop {
            self.step();
            tokio::select! {
                changed = self.policies.changed() => if changed.is_err() { break },
                () = self.wake.notified() => {}
            }
        }
        // The policy source stopped: watches keep their last snapshot.
        self.followed.clear();
    }

    /// The DNS subsets of `policy`, by subset name.
    fn targets(&self, policy: &ServiceSnapshot) -> BTreeMap<SubsetName, DnsTarget> {
        let mut targets: BTreeMap<_, _> =
            policy.subsets().iter().filter_map(|s| Some((s.name.clone(), s.dns_target()?))).collect();
        for (subset, target) in self.dns_subsets.iter() {
            if policy.subset(subset).is_some() {
                targets.insert(subset.clone(), target.clone());
            }
        }
        targets
    }

    /// Follows the targets `policy` needs and no others.
    fn follow(&mut self, targets: &BTreeMap<SubsetName, DnsTarget>) {
        self.followed.retain(|target, _| targets.values().any(|t| t == target));
        for target in targets.values() {
            if self.followed.contains_key(target) {
                continue;
            }
            let watch = self.endpoints.watch_endpoints(target);
            let (mut changes, wake) = (watch.clone(), self.wake.clone());
            let forwarder = tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    wake.notify_one();
                }
            })
            .abort_handle();
            self.followed.insert(target.clone(), Followed { watch, forwarder });
        }
    }

    fn step(&mut self) {
        let policy_error = self.policies.last_error();
        let Some(policy) = self.policies.current() else {
            if let Some(error) = policy_error {
                self.report(&error, |e| DiscoveryError::Policies(e.clone()));
            }
            return;
        };
        let targets = self.targets(&policy);
        self.follow(&targets);
        if self.followed.values().any(|f| f.watch.current().is_none() && f.watch.last_error().is_none()) {
            return; // Wait until every DNS subset has an answer.
        }
        let resolved = |target: &DnsTarget| self.followed.get(target).and_then(|f| f.watch.current());
        let spec = merge(policy.spec(), &targets, resolved);
        let endpoint_error = targets.iter().find_map(|(subset, target)| {
            let error = self.followed.get(target)?.watch.last_error()?;
            Some((subset.clone(), target.clone(), error))
        });

        let changed = self.publisher.current().is_none_or(|current| current.spec() != &spec);
        // A good state after a reported error is published too: the next snapshot clears it.
        let recovered = policy_error.is_none() && endpoint_error.is_none() && self.reported.is_some();
        if changed || recovered {
            match ServiceSnapshot::new(policy.name().clone(), spec) {
                Ok(snapshot) => {
                    let snapshot = self.publisher.publish(snapshot).unwrap_or_else(|_| unreachable!("same service"));
                    tracing::debug!(service = %snapshot.name(), version = snapshot.version(), "composed snapshot published");
                    self.reported = None;
                }
                // Merging only adds labelled endpoints to a valid spec; this guards the two drifting apart.
                Err(invalid) => self.publisher.report_error(DiscoveryError::Invalid(invalid)),
            }
        }
        if let Some(error) = policy_error {
            self.report(&error, |e| DiscoveryError::Policies(e.clone()));
        } else if let Some((subset, target, error)) = endpoint_error {
            self.report(&error, |e| DiscoveryError::Endpoints { subset, target, source: e.clone() });
        }
    }

    /// Reports `error` unless it is the one reported last.
    fn report(&mut self, error: &Arc<DiscoveryError>, wrap: impl FnOnce(&Arc<DiscoveryError>) -> DiscoveryError) {
        if self.reported.as_ref().is_some_and(|reported| Arc::ptr_eq(reported, error)) {
            return;
        }
        self.reported = Some(error.clone());
        self.publisher.report_error(wrap(error));
    }
}

/// `policy` with the endpoints of its DNS subsets (`targets`) as `resolved` gives them: each
/// endpoint labelled `<subset>: "1"`, each DNS subset selecting on that label.
fn merge(
    policy: &ServiceSpec,
    targets: &BTreeMap<SubsetName, DnsTarget>,
    resolved: impl Fn(&DnsTarget) -> Option<Arc<[Endpoint]>>,
) -> ServiceSpec {
    let mut spec = policy.clone();
    let mut index: HashMap<_, _> = spec.endpoints.iter().enumerate().map(|(i, ep)| (ep.address, i)).collect();
    for subset in &mut spec.subsets {
        let Some(target) = targets.get(&subset.name) else { continue };
        let mut selector = Labels::new();
        // A subset name is a valid label key, and "1" a valid value.
        selector.insert(subset.name.as_str(), "1").unwrap_or_else(|e| unreachable!("{e}"));
        for found in resolved(target).iter().flat_map(|eps| eps.iter()) {
            let i = *index.entry(found.address).or_insert_with(|| {
                let mut ep = found.clone();
                ep.labels = Labels::new();
                spec.endpoints.push(ep);
                spec.endpoints.len() - 1
            });
            let labels = &mut spec.endpoints[i].labels;
            labels.insert(subset.name.as_str(), "1").unwrap_or_else(|e| unreachable!("{e}"));
        }
        subset.labels = selector;
        subset.dns = None;
        subset.port = None;
    }
    spec
}

#[cfg(test)]
mod tests;
