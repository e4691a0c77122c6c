//! Discovery configured in code.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use super::{Discovery, DiscoveryError, SharedSnapshot, SnapshotPublisher, SnapshotWatch};
use crate::{
    model::{ServiceSnapshot, ServiceSpec},
    name::ServiceName,
};

/// Discovery configured in code, and changed live through the same handle.
///
/// Cheap to clone: clones share the services, so one clone can sit in the client stack while
/// another changes endpoints and weights. Useful for tests, for fixed topologies, and as the
/// target of a control-plane client of your own.
///
/// ```
/// use mesh_core::{Endpoint, ServiceName, ServiceSnapshot, discovery::{Discovery, StaticDiscovery}};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let name: ServiceName = "reviews".parse()?;
/// let discovery = StaticDiscovery::new();
/// discovery.set(ServiceSnapshot::builder(name.clone()).build()?);
/// let watch = discovery.watch(&name);
///
/// // Add an endpoint: readers see version 2 at once.
/// discovery.update(&name, |spec| spec.endpoints.push(Endpoint::new("127.0.0.1:8080".parse().unwrap())))?;
/// assert_eq!(watch.current().unwrap().version(), 2);
///
/// // An invalid change is refused and the old snapshot stays.
/// let ep = Endpoint::new("127.0.0.1:8080".parse()?);
/// assert!(discovery.update(&name, |spec| spec.endpoints.push(ep)).is_err());
/// assert_eq!(watch.current().unwrap().endpoints().len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct StaticDiscovery {
    services: Arc<Mutex<HashMap<ServiceName, SnapshotPublisher>>>,
}

impl StaticDiscovery {
    /// No services yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn services(&self) -> MutexGuard<'_, HashMap<ServiceName, SnapshotPublisher>> {
        // A panic elsewhere cannot leave the map half-changed: every change is one insert.
        self.services.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes `snapshot` as the current configuration of its service.
    pub fn set(&self, snapshot: ServiceSnapshot) -> SharedSnapshot {
        let name = snapshot.name().clone();
        let mut services = self.services();
        let publisher = services.entry(name.clone()).or_insert_with(|| SnapshotPublisher::new(name));
        publisher
            .publish(snapshot)
            .unwrap_or_else(|_| unreachable!("the publisher was looked up by the snapshot's own name"))
    }

    /// Edits a service's configuration (an empty one if it has none) and publishes the result.
    ///
    /// The edit is checked first: an invalid one returns the error and changes nothing. Edits are
    /// serialized, so two concurrent updates never lose one another.
    pub fn update(
        &self,
        service: &ServiceName,
        edit: impl FnOnce(&mut ServiceSpec),
    ) -> Result<SharedSnapshot, DiscoveryError> {
        let mut services = self.services();
        let publisher = services.entry(service.clone()).or_insert_with(|| SnapshotPublisher::new(service.clone()));
        let mut spec = publisher.current().map(|s| s.spec().clone()).unwrap_or_default();
        edit(&mut spec);
        let snapshot = ServiceSnapshot::new(service.clone(), spec)?;
        Ok(publisher
            .publish(snapshot)
            .unwrap_or_else(|_| unreachable!("the snapshot was built with the publisher's name")))
    }

    /// The current snapshot of `service`.
    pub fn get(&self, service: &ServiceName) -> Option<SharedSnapshot> {
        self.services().get(service).and_then(SnapshotPublisher::current)
    }
}

impl Discovery for StaticDiscovery {
    fn watch(&self, service: &ServiceName) -> SnapshotWatch {
        let mut services = self.services();
        let publisher = services.entry(service.clone()).or_insert_with(|| {
            let publisher = SnapshotPublisher::new(service.clone());
            publisher.report_error(DiscoveryError::UnknownService(service.clone()));
            publisher
        });
        publisher.subscribe()
    }
}

impl std::fmt::Debug for StaticDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticDiscovery").field("services", &self.services().keys().collect::<Vec<_>>()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Endpoint;

    #[tokio::test]
    async fn unknown_service_waits_then_appears() {
        let name: ServiceName = "late".parse().unwrap();
        let discovery = StaticDiscovery::new();
        let mut watch = discovery.watch(&name);
        assert!(matches!(watch.last_error().as_deref(), Some(DiscoveryError::UnknownService(_))));
        let d2 = discovery.clone();
        let n2 = name.clone();
        let publish = tokio::spawn(async move {
            d2.update(&n2, |spec| spec.endpoints.push(Endpoint::new("127.0.0.1:1".parse().unwrap())))
        });
        let snapshot = watch.ready().await.unwrap();
        assert_eq!(snapshot.endpoints().len(), 1);
        publish.await.unwrap().unwrap();
        assert!(watch.last_error().is_none());
    }

    #[test]
    fn concurrent_updates_are_not_lost() {
        let name: ServiceName = "s".parse().unwrap();
        let discovery = StaticDiscovery::new();
        std::thread::scope(|scope| {
            for t in 0..4u16 {
                let discovery = &discovery;
                let name = &name;
                scope.spawn(move || {
                    for i in 0..50u16 {
                        let addr = ([127, 0, 0, 1], t * 1000 + i + 1).into();
                        discovery.update(name, |spec| spec.endpoints.push(Endpoint::new(addr))).unwrap();
                    }
                });
            }
        });
        let snapshot = discovery.get(&name).unwrap();
        assert_eq!(snapshot.endpoints().len(), 200);
        assert_eq!(snapshot.version(), 200);
    }
}
