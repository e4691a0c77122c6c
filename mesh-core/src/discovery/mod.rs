//! How a client learns a service's endpoints, routes and policies, and every change of them.
//!
//! # The contract
//!
//! A [`Discovery`] backend hands out a [`SnapshotWatch`] per [`ServiceName`]. Every backend,
//! ours or yours, keeps these promises:
//!
//! - **First value.** A watch may start empty: the backend may still be fetching.
//!   [`SnapshotWatch::ready`] waits for the first snapshot; [`SnapshotWatch::current`] never waits.
//! - **Whole snapshots, in order.** Each value is a complete [`ServiceSnapshot`], never a delta, and
//!   its [`version`](ServiceSnapshot::version) is higher than the one before. A slow reader may skip
//!   versions; because snapshots are whole, it misses nothing but history.
//! - **Errors keep the last good snapshot.** When the source fails (a malformed file, an
//!   unreachable control plane), the backend reports a [`DiscoveryError`] through the watch
//!   ([`SnapshotWatch::last_error`]) and the current snapshot stays as it was. An error never
//!   empties an endpoint set. The next good snapshot clears the error.
//! - **Removing an endpoint** is publishing a snapshot without it. Requests already sent to it
//!   finish; new requests see the new set at once.
//! - **Closing.** When the backend stops, [`SnapshotWatch::changed`] returns an error and the watch
//!   keeps its last snapshot.
//!
//! # Writing a backend
//!
//! Implement [`Discovery`] with one [`SnapshotPublisher`] per service: `watch` returns
//! [`SnapshotPublisher::subscribe`], and the task that talks to your control plane calls
//! [`SnapshotPublisher::publish`] and [`SnapshotPublisher::report_error`]. The publisher stamps
//! versions and upholds the contract above.
//!
//! ```
//! use std::{collections::HashMap, sync::Mutex};
//! use mesh_core::{ServiceName, discovery::{Discovery, SnapshotPublisher, SnapshotWatch}};
//!
//! #[derive(Default)]
//! struct ControlPlane {
//!     services: Mutex<HashMap<ServiceName, SnapshotPublisher>>,
//! }
//!
//! impl Discovery for ControlPlane {
//!     fn watch(&self, service: &ServiceName) -> SnapshotWatch {
//!         let mut services = self.services.lock().unwrap();
//!         services
//!             .entry(service.clone())
//!             .or_insert_with(|| {
//!                 // Here: start fetching `service` and publish what arrives.
//!                 SnapshotPublisher::new(service.clone())
//!             })
//!             .subscribe()
//!     }
//! }
//! ```

mod compose;
mod endpoints;
mod file;
mod memory;
pub mod metrics;
mod watch;

use std::sync::Arc;

pub use self::compose::{ComposedDiscovery, ComposedDiscoveryBuilder, NoRuntime};
pub use self::endpoints::{EndpointDiscovery, EndpointsClosed, EndpointsPublisher, EndpointsWatch};
#[cfg(feature = "fuzzing")]
pub(crate) use self::file::parse as file_parse;
pub use self::file::{FileDiscovery, FileDiscoveryError};
pub use self::memory::StaticDiscovery;
pub use self::watch::{SnapshotPublisher, SnapshotWatch, WatchClosed, WrongService};
use crate::{
    model::{DnsTarget, ServiceSnapshot},
    name::{ServiceName, SubsetName},
};

/// A source of service snapshots: a file, code, or a control plane.
///
/// The trait is object-safe: clients hold an `Arc<dyn Discovery>`. See the [module
/// docs](self) for the contract every backend keeps.
pub trait Discovery: Send + Sync + 'static {
    /// Watches `service`: its current snapshot, and every later change.
    ///
    /// This never fails and never blocks: a service the backend does not know (yet) gives a watch
    /// that is empty until it appears, with the reason in [`SnapshotWatch::last_error`].
    fn watch(&self, service: &ServiceName) -> SnapshotWatch;
}

impl<D: Discovery + ?Sized> Discovery for Arc<D> {
    fn watch(&self, service: &ServiceName) -> SnapshotWatch {
        (**self).watch(service)
    }
}

impl<D: Discovery + ?Sized> Discovery for Box<D> {
    fn watch(&self, service: &ServiceName) -> SnapshotWatch {
        (**self).watch(service)
    }
}

/// Why a discovery backend could not give a (new) snapshot.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The backend has no configuration for the service.
    #[error("service {0} is not known to the discovery backend")]
    UnknownService(ServiceName),
    /// A discovery file could not be read or parsed; the last good snapshot stays.
    #[error(transparent)]
    File(#[from] FileDiscoveryError),
    /// A snapshot from the source broke a rule; the last good snapshot stays.
    #[error(transparent)]
    Invalid(#[from] crate::model::InvalidSnapshot),
    /// The routes and policies of a [`ComposedDiscovery`] could not be had from their source; the
    /// last good ones stay.
    #[error("the policy source failed: {0}")]
    Policies(#[source] Arc<DiscoveryError>),
    /// The endpoints of a DNS subset could not be looked up; its last good set stays.
    #[error("the endpoints of subset {subset} could not be had: {source}")]
    Endpoints {
        /// The subset.
        subset: SubsetName,
        /// What was looked up.
        target: DnsTarget,
        /// Why it failed.
        #[source]
        source: Arc<DiscoveryError>,
    },
    /// The backend stopped before it published a snapshot.
    #[error("discovery of service {0} stopped before any snapshot was published")]
    Closed(ServiceName),
    /// A backend of your own failed.
    #[error("discovery backend {backend} failed: {source}")]
    Backend {
        /// The backend's name, such as `"consul"`.
        backend: &'static str,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Shorthand used by backends.
pub(crate) type SharedSnapshot = Arc<ServiceSnapshot>;
