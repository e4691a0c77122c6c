//! What the [`XdsDiscovery`](crate::XdsDiscovery) handle and the driver share: the watched client
//! targets and servers' inbound Listeners, each with the watch its watchers read, and the stream's
//! status. The handle adds targets; the driver applies each cascade step to them.

mod client;
mod inbound;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, PoisonError},
};

use mesh_core::ServiceName;
use tokio::sync::watch;

pub(crate) use self::{client::ClientTarget, inbound::InboundTarget};
use crate::status::XdsStatus;

/// State shared by the handle and the driver.
pub(crate) struct Shared {
    pub(crate) targets: Mutex<BTreeMap<ServiceName, ClientTarget>>,
    pub(crate) status: watch::Sender<XdsStatus>,
    pub(crate) aliases: Mutex<HashMap<ServiceName, String>>,
    /// Servers' inbound Listeners, by name.
    pub(crate) inbound: Mutex<BTreeMap<String, InboundTarget>>,
}

impl Shared {
    pub(crate) fn new() -> Self {
        let (status, _) = watch::channel(XdsStatus::default());
        Self { targets: Mutex::default(), status, aliases: Mutex::default(), inbound: Mutex::default() }
    }

    /// Whether a watch taken from the discovery is still in use: a client's snapshot watch, or
    /// a server's security, authorization or status watch. The driver serves them even after
    /// every `XdsDiscovery` handle is gone.
    pub(crate) fn watched(&self) -> bool {
        self.targets.lock().unwrap_or_else(PoisonError::into_inner).values().any(|t| t.publisher.is_watched())
            || self.inbound.lock().unwrap_or_else(PoisonError::into_inner).values().any(|t| t.is_watched())
    }
}
