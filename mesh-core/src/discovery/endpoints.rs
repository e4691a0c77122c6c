//! Endpoint sources: where a subset that names a DNS name gets its endpoints.

use std::{fmt, sync::Arc};

use tokio::sync::watch;

use super::DiscoveryError;
use crate::model::{DnsTarget, Endpoint};

/// A source of endpoint sets, one per [`DnsTarget`]: DNS, or anything that turns a name into
/// addresses. A [`ComposedDiscovery`](super::ComposedDiscovery) asks it for the subsets that name
/// a DNS name.
///
/// It keeps the same promises as [`Discovery`](super::Discovery): a watch may start empty; every
/// value is a whole set; a failed lookup keeps the last good set and is reported beside it.
/// Watches of one target share one lookup; the lookups stop when the last watch is dropped.
pub trait EndpointDiscovery: Send + Sync + 'static {
    /// Watches the endpoints that `target` resolves to.
    fn watch_endpoints(&self, target: &DnsTarget) -> EndpointsWatch;
}

impl<D: EndpointDiscovery + ?Sized> EndpointDiscovery for Arc<D> {
    fn watch_endpoints(&self, target: &DnsTarget) -> EndpointsWatch {
        (**self).watch_endpoints(target)
    }
}

#[derive(Clone, Default)]
struct State {
    endpoints: Option<Arc<[Endpoint]>>,
    error: Option<Arc<DiscoveryError>>,
}

/// The source's end of one target's endpoint set.
pub struct EndpointsPublisher {
    target: DnsTarget,
    state: watch::Sender<State>,
}

impl EndpointsPublisher {
    /// A publisher for `target`, with no set yet.
    pub fn new(target: DnsTarget) -> Self {
        let (state, _) = watch::channel(State::default());
        Self { target, state }
    }

    /// The target.
    pub fn target(&self) -> &DnsTarget {
        &self.target
    }

    /// A new reader.
    pub fn subscribe(&self) -> EndpointsWatch {
        EndpointsWatch { target: self.target.clone(), state: self.state.subscribe() }
    }

    /// Makes `endpoints` the current set and clears any reported error. Readers are woken only if
    /// something changed. Returns whether the set changed.
    pub fn publish(&self, endpoints: Vec<Endpoint>) -> bool {
        let mut changed_set = false;
        self.state.send_if_modified(|state| {
            changed_set = state.endpoints.as_deref() != Some(endpoints.as_slice());
            let had_error = state.error.take().is_some();
            if changed_set {
                state.endpoints = Some(endpoints.into());
            }
            changed_set || had_error
        });
        changed_set
    }

    /// Reports that a lookup failed. The current set stays; readers see the error beside it until
    /// the next [`publish`](Self::publish).
    pub fn report_error(&self, error: DiscoveryError) {
        let error = Arc::new(error);
        self.state.send_modify(|state| state.error = Some(error));
    }

    /// The current set.
    pub fn current(&self) -> Option<Arc<[Endpoint]>> {
        self.state.borrow().endpoints.clone()
    }

    /// Whether every reader is gone (the source may stop looking this target up).
    pub fn is_unwatched(&self) -> bool {
        self.state.is_closed()
    }

    /// Waits until every reader is gone.
    pub async fn unwatched(&self) {
        self.state.closed().await
    }
}

impl fmt::Debug for EndpointsPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointsPublisher").field("target", &self.target).finish()
    }
}

/// The endpoint source stopped; the watch keeps its last set.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the lookups of {0} stopped")]
pub struct EndpointsClosed(DnsTarget);

/// A reader of one target's endpoint set. Cheap to clone.
#[derive(Clone)]
pub struct EndpointsWatch {
    target: DnsTarget,
    state: watch::Receiver<State>,
}

impl EndpointsWatch {
    /// The target watched.
    pub fn target(&self) -> &DnsTarget {
        &self.target
    }

    /// The current set, if a lookup ever succeeded.
    pub fn current(&self) -> Option<Arc<[Endpoint]>> {
        self.state.borrow().endpoints.clone()
    }

    /// The error the source last reported, if no set was published since.
    pub fn last_error(&self) -> Option<Arc<DiscoveryError>> {
        self.state.borrow().error.clone()
    }

    /// Waits until the set changed or an error was reported since this watch last looked. Fails
    /// when the source stopped.
    pub async fn changed(&mut self) -> Result<(), EndpointsClosed> {
        self.state.changed().await.map_err(|_| EndpointsClosed(self.target.clone()))
    }
}

impl fmt::Debug for EndpointsWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointsWatch")
            .field("target", &self.target)
            .field("endpoints", &self.current().map_or(0, |e| e.len()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_keep_the_last_set_and_unchanged_sets_wake_nobody() {
        let target = DnsTarget::addresses("a.test".parse().unwrap(), 80);
        let publisher = EndpointsPublisher::new(target.clone());
        let mut watch = publisher.subscribe();
        let one = vec![Endpoint::new("127.0.0.1:80".parse().unwrap())];
        assert!(publisher.publish(one.clone()));
        watch.changed().await.unwrap();
        assert_eq!(watch.current().as_deref(), Some(one.as_slice()));

        publisher.report_error(DiscoveryError::UnknownService("a".parse().unwrap()));
        watch.changed().await.unwrap();
        assert!(watch.last_error().is_some());
        assert_eq!(watch.current().as_deref(), Some(one.as_slice()), "an error keeps the set");

        assert!(!publisher.publish(one.clone()), "same set");
        watch.changed().await.unwrap();
        assert!(watch.last_error().is_none(), "a good lookup clears the error");
        assert!(!publisher.publish(one));
        assert!(!watch.state.has_changed().unwrap(), "nothing changed, nobody woken");

        assert!(!publisher.is_unwatched());
        drop(watch);
        assert!(publisher.is_unwatched());
    }
}
