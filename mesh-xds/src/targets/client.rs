//! One watched client target: the cascade's memory of it, the publisher its watchers read, and
//! every subset it has had.

use std::collections::BTreeMap;

use mesh_core::{DiscoveryError, ServiceName, SubsetName, discovery::SnapshotPublisher};

use crate::{
    cascade::{ClientCascade, ClientUpdate},
    error::XdsError,
};

/// One watched target.
pub(crate) struct ClientTarget {
    pub(crate) cascade: ClientCascade,
    pub(crate) publisher: SnapshotPublisher,
    /// Every subset the target has had, and its cluster (the naming is fixed, so this only grows).
    pub(crate) known: BTreeMap<SubsetName, String>,
}

impl ClientTarget {
    pub(crate) fn new(service: ServiceName, listener: String) -> Self {
        Self {
            cascade: ClientCascade::new(listener),
            publisher: SnapshotPublisher::new(service),
            known: BTreeMap::new(),
        }
    }

    /// Tells the watchers the news of a cascade step; returns whether a snapshot was published.
    pub(crate) fn apply(&mut self, update: ClientUpdate) -> bool {
        match update {
            ClientUpdate::Snapshot { snapshot, clusters } => {
                self.known.extend(clusters);
                let _ = self.publisher.publish(*snapshot);
                true
            }
            ClientUpdate::Invalid(invalid) => {
                self.publisher.report_error(DiscoveryError::Invalid(invalid));
                false
            }
            ClientUpdate::Failed(e) => {
                tracing::warn!(error = %e, target = %self.cascade.listener(), "xDS target has no new configuration");
                self.publisher.report_error(XdsError::Cascade(e).into_discovery());
                false
            }
        }
    }
}
