//! A client target through the cascade: what it last made, so that a step reports only news.

use std::collections::BTreeMap;

use mesh_core::{InvalidSnapshot, ServiceName, ServiceSnapshot, SubsetName};

use super::{
    build::{BuildOptions, Built, build},
    error::CascadeError,
};
use crate::ads::AdsState;

/// What the cascade remembers of one client target between steps.
#[derive(Debug)]
pub(crate) struct ClientCascade {
    listener: String,
    last: Option<Built>,
    last_error: Option<CascadeError>,
}

/// News of a client target.
#[derive(Debug)]
pub(crate) enum ClientUpdate {
    /// Its resources are complete and make a new snapshot.
    Snapshot {
        snapshot: Box<ServiceSnapshot>,
        /// Subset name -> cluster name.
        clusters: BTreeMap<SubsetName, String>,
    },
    /// Its resources are complete but make no valid snapshot (reported at every step, until they
    /// change).
    Invalid(InvalidSnapshot),
    /// Its resources cannot make a snapshot, for a reason not reported before.
    Failed(CascadeError),
}

impl ClientCascade {
    /// A target following the Listener `listener`.
    pub(crate) fn new(listener: String) -> Self {
        Self { listener, last: None, last_error: None }
    }

    /// The Listener the target follows.
    pub(crate) fn listener(&self) -> &str {
        &self.listener
    }

    /// What the cache now makes of the target, if it is news (`None` while resources are on their
    /// way, or when nothing changed).
    pub(super) fn update(
        &mut self,
        cache: &AdsState,
        service: &ServiceName,
        options: &BuildOptions,
    ) -> Option<ClientUpdate> {
        match build(cache, &self.listener, options) {
            Ok(Some(built)) => {
                if self.last.as_ref() == Some(&built) {
                    return None;
                }
                match ServiceSnapshot::new(service.clone(), built.spec.clone()) {
                    Ok(snapshot) => {
                        let clusters = built.clusters.clone();
                        self.last = Some(built);
                        self.last_error = None;
                        Some(ClientUpdate::Snapshot { snapshot: Box::new(snapshot), clusters })
                    }
                    Err(invalid) => Some(ClientUpdate::Invalid(invalid)),
                }
            }
            Ok(None) => None,
            Err(e) if self.last_error.as_ref() == Some(&e) => None,
            Err(e) => {
                self.last_error = Some(e.clone());
                Some(ClientUpdate::Failed(e))
            }
        }
    }
}
