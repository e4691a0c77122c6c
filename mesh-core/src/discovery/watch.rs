//! The channel between a discovery backend and its readers.

use std::{fmt, sync::Arc};

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use super::{DiscoveryError, SharedSnapshot};
use crate::{ServiceName, ServiceSnapshot};

/// What readers are told: the version they last saw, and the backend's last error.
#[derive(Clone, Default)]
struct Status {
    version: u64,
    error: Option<Arc<DiscoveryError>>,
}

/// The backend's end: publishes snapshots of one service and reports errors.
///
/// Versions are stamped here, under one lock, so they strictly increase whoever publishes.
pub struct SnapshotPublisher {
    service: ServiceName,
    current: Arc<ArcSwapOption<ServiceSnapshot>>,
    status: watch::Sender<Status>,
}

/// A snapshot for a different service than the publisher's.
#[derive(Debug, thiserror::Error)]
#[error("a snapshot of service {got} was published to the watch of service {expected}")]
pub struct WrongService {
    expected: ServiceName,
    got: ServiceName,
}

impl SnapshotPublisher {
    /// A publisher for `service`, with no snapshot yet.
    pub fn new(service: ServiceName) -> Self {
        let (status, _) = watch::channel(Status::default());
        Self { service, current: Arc::new(ArcSwapOption::empty()), status }
    }

    /// The service.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// A new reader.
    pub fn subscribe(&self) -> SnapshotWatch {
        SnapshotWatch { service: self.service.clone(), current: self.current.clone(), status: self.status.subscribe() }
    }

    /// Makes `snapshot` current, stamped with the next version, and clears any reported error.
    /// Returns the snapshot as readers see it.
    pub fn publish(&self, snapshot: ServiceSnapshot) -> Result<SharedSnapshot, WrongService> {
        if snapshot.name() != &self.service {
            return Err(WrongService { expected: self.service.clone(), got: snapshot.name().clone() });
        }
        let mut published = None;
        self.status.send_modify(|status| {
            status.version += 1;
            status.error = None;
            let stamped = Arc::new(snapshot.with_version(status.version));
            // Store before readers are woken, so a woken reader sees the new snapshot.
            self.current.store(Some(stamped.clone()));
            super::metrics::published(&stamped);
            published = Some(stamped);
        });
        Ok(published.unwrap_or_else(|| unreachable!("send_modify runs its closure")))
    }

    /// Reports that the source failed. The current snapshot stays; readers see the error in
    /// [`SnapshotWatch::last_error`] until the next [`publish`](Self::publish).
    pub fn report_error(&self, error: DiscoveryError) {
        let error = Arc::new(error);
        super::metrics::error(&self.service);
        self.status.send_modify(|status| status.error = Some(error));
    }

    /// The current snapshot.
    pub fn current(&self) -> Option<SharedSnapshot> {
        self.current.load_full()
    }

    /// Whether a reader (a [`SnapshotWatch`] or a clone of one) is still held: a backend keeps
    /// feeding a watched service even when nothing else of it is left.
    pub fn is_watched(&self) -> bool {
        self.status.receiver_count() > 0
    }
}

impl fmt::Debug for SnapshotPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotPublisher")
            .field("service", &self.service)
            .field("version", &self.status.borrow().version)
            .finish()
    }
}

/// A reader of one service's snapshots. Cheap to clone; each clone tracks what it has seen.
///
/// [`current`](Self::current) is lock-free and meant for the request path; the async methods are
/// for whoever follows changes.
#[derive(Clone)]
pub struct SnapshotWatch {
    service: ServiceName,
    current: Arc<ArcSwapOption<ServiceSnapshot>>,
    status: watch::Receiver<Status>,
}

/// The backend stopped; the watch keeps its last snapshot.
#[derive(Debug, Clone, thiserror::Error)]
#[error("discovery of service {0} stopped")]
pub struct WatchClosed(ServiceName);

impl SnapshotWatch {
    /// The service watched.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The current snapshot, if one was published. Lock-free.
    pub fn current(&self) -> Option<SharedSnapshot> {
        self.current.load_full()
    }

    /// The current snapshot's version without cloning it (0 when there is none). Lock-free.
    pub fn current_version(&self) -> u64 {
        self.current.load().as_ref().map_or(0, |s| s.version())
    }

    /// The error the backend last reported, if no snapshot was published since.
    pub fn last_error(&self) -> Option<Arc<DiscoveryError>> {
        self.status.borrow().error.clone()
    }

    /// Waits until something happened since this watch last looked: a new snapshot or an error.
    pub async fn changed(&mut self) -> Result<(), WatchClosed> {
        self.status.changed().await.map_err(|_| WatchClosed(self.service.clone()))
    }

    /// Waits for the first snapshot (returns at once if there is one).
    ///
    /// Errors reported meanwhile do not end the wait: the backend may still recover. Bound the
    /// wait with `tokio::time::timeout`, and read [`last_error`](Self::last_error) to say why
    /// nothing came.
    pub async fn ready(&mut self) -> Result<SharedSnapshot, DiscoveryError> {
        loop {
            if let Some(snapshot) = self.current() {
                return Ok(snapshot);
            }
            if self.status.changed().await.is_err() {
                return self.current().ok_or_else(|| DiscoveryError::Closed(self.service.clone()));
            }
        }
    }

    /// Waits until the current snapshot satisfies `condition` (checks the current one first).
    pub async fn wait_for(
        &mut self,
        mut condition: impl FnMut(&ServiceSnapshot) -> bool,
    ) -> Result<SharedSnapshot, WatchClosed> {
        loop {
            self.status.borrow_and_update();
            if let Some(snapshot) = self.current().filter(|s| condition(s)) {
                return Ok(snapshot);
            }
            self.changed().await?;
        }
    }
}

impl fmt::Debug for SnapshotWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotWatch")
            .field("service", &self.service)
            .field("version", &self.current_version())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(name: &ServiceName) -> ServiceSnapshot {
        ServiceSnapshot::builder(name.clone()).build().unwrap()
    }

    #[test]
    fn a_publisher_knows_whether_it_is_watched() {
        let name: ServiceName = "a".parse().unwrap();
        let publisher = SnapshotPublisher::new(name);
        assert!(!publisher.is_watched());
        let watch = publisher.subscribe();
        let clone = watch.clone();
        drop(watch);
        assert!(publisher.is_watched(), "a clone still reads");
        drop(clone);
        assert!(!publisher.is_watched());
    }

    #[tokio::test]
    async fn versions_increase_and_errors_keep_the_snapshot() {
        let name: ServiceName = "a".parse().unwrap();
        let publisher = SnapshotPublisher::new(name.clone());
        let mut watch = publisher.subscribe();
        assert!(watch.current().is_none());

        let first = publisher.publish(snapshot(&name)).unwrap();
        assert_eq!(first.version(), 1);
        assert_eq!(watch.ready().await.unwrap().version(), 1);

        publisher.report_error(DiscoveryError::UnknownService(name.clone()));
        watch.changed().await.unwrap();
        assert!(watch.last_error().is_some());
        assert_eq!(watch.current_version(), 1, "an error keeps the last good snapshot");

        publisher.publish(snapshot(&name)).unwrap();
        let s = watch.wait_for(|s| s.version() >= 2).await.unwrap();
        assert_eq!(s.version(), 2);
        assert!(watch.last_error().is_none(), "a good snapshot clears the error");

        let other: ServiceName = "b".parse().unwrap();
        assert!(publisher.publish(snapshot(&other)).is_err());

        drop(publisher);
        assert!(watch.changed().await.is_err());
        assert_eq!(watch.current_version(), 2, "a closed watch keeps its snapshot");
    }

    #[tokio::test]
    async fn ready_fails_when_closed_empty() {
        let name: ServiceName = "a".parse().unwrap();
        let publisher = SnapshotPublisher::new(name.clone());
        let mut watch = publisher.subscribe();
        drop(publisher);
        assert!(matches!(watch.ready().await, Err(DiscoveryError::Closed(_))));
    }
}
