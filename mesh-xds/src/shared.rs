//! What the [`XdsDiscovery`](crate::XdsDiscovery) handle and its ADS stream task share: the
//! watched targets, the stream's status, and the error type both report.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use mesh_core::{InvalidIdentity, InvalidName, ServiceName, SubsetName, discovery::SnapshotPublisher};
use tokio::sync::watch;

use crate::{
    BootstrapError,
    cascade::{Built, CascadeError},
};

/// What can go wrong with xDS discovery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum XdsError {
    /// The bootstrap is missing or invalid.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// [`XdsDiscoveryBuilder::build`](crate::XdsDiscoveryBuilder::build) was called outside a tokio runtime.
    #[error("xDS discovery must be started inside a tokio runtime")]
    NoRuntime,
    /// A listener name that cannot be turned into a service name.
    #[error("xDS target {target:?} cannot name a service: {source}")]
    InvalidTarget {
        /// The listener name.
        target: String,
        /// Why.
        #[source]
        source: InvalidName,
    },
    /// A certificate provider's files could not be loaded.
    #[error("certificate provider instance {instance:?}: {source}")]
    Identity {
        /// The instance name in the bootstrap.
        instance: String,
        /// Why.
        #[source]
        source: InvalidIdentity,
    },
    /// The bootstrap names no certificate provider instance to take the identity from.
    #[error("the bootstrap has no certificate provider instance {0:?}")]
    NoCertificateProvider(String),
    /// The control plane could not be reached, or the stream failed; the last good snapshots stay.
    #[error("xDS stream to {server}: {reason}")]
    Stream {
        /// The server URI.
        server: String,
        /// What happened.
        reason: String,
    },
    /// A target's resources do not add up to a snapshot; its last good snapshot stays.
    #[error(transparent)]
    Cascade(#[from] CascadeError),
    /// A server asked for the inbound Listener another server's address already uses.
    #[error("inbound listener {listener:?} is already followed for {address}")]
    InboundAddress {
        /// The Listener name.
        listener: String,
        /// The address it was first asked for.
        address: std::net::SocketAddr,
    },
}

/// What the ADS stream has done so far, for operations and tests: watch it to wait for an ACK,
/// a NACK or a reconnection without sleeping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct XdsStatus {
    /// Whether a stream is open.
    pub connected: bool,
    /// Streams opened so far.
    pub streams: u64,
    /// Responses received.
    pub responses: u64,
    /// Responses ACKed.
    pub acks: u64,
    /// Responses NACKed (wholly or in part).
    pub nacks: u64,
    /// The error detail of the last NACK.
    pub last_nack: Option<String>,
    /// Snapshots published, all targets together.
    pub published: u64,
}

/// One line an operator can read: whether a stream is open, what was answered, and why the last
/// NACK was sent, e.g. `connected (stream 2); 14 responses: 13 ACKed, 1 NACKed; 3 snapshots
/// published; last NACK: CDS resource "...": lb_policy: MAGLEV is not supported`.
impl std::fmt::Display for XdsStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.connected, self.streams) {
            (true, n) => write!(f, "connected (stream {n})")?,
            (false, 0) => f.write_str("not connected yet")?,
            (false, n) => write!(f, "disconnected (after {n} stream{})", if n == 1 { "" } else { "s" })?,
        }
        write!(
            f,
            "; {} response{}: {} ACKed, {} NACKed; {} snapshot{} published",
            self.responses,
            if self.responses == 1 { "" } else { "s" },
            self.acks,
            self.nacks,
            self.published,
            if self.published == 1 { "" } else { "s" },
        )?;
        if let Some(nack) = &self.last_nack {
            write!(f, "; last NACK: {nack}")?;
        }
        Ok(())
    }
}

/// One watched target.
pub(crate) struct Target {
    pub(crate) listener: String,
    pub(crate) publisher: SnapshotPublisher,
    pub(crate) last: Option<Built>,
    pub(crate) last_error: Option<CascadeError>,
    /// Every subset the target has had, and its cluster (the naming is fixed, so this only grows).
    pub(crate) known: BTreeMap<SubsetName, String>,
}

/// State shared by the handle and the stream task.
pub(crate) struct Shared {
    pub(crate) targets: Mutex<BTreeMap<ServiceName, Target>>,
    pub(crate) status: watch::Sender<XdsStatus>,
    pub(crate) aliases: Mutex<HashMap<ServiceName, String>>,
    /// Servers' inbound Listeners, by name.
    pub(crate) inbound: Mutex<BTreeMap<String, crate::server::InboundTarget>>,
}

impl Shared {
    /// Whether a watch taken from the discovery is still in use: a client's snapshot watch, or
    /// a server's security, authorization or status watch. The stream serves them even after
    /// every `XdsDiscovery` handle is gone.
    pub(crate) fn watched(&self) -> bool {
        use std::sync::PoisonError;
        self.targets.lock().unwrap_or_else(PoisonError::into_inner).values().any(|t| t.publisher.is_watched())
            || self.inbound.lock().unwrap_or_else(PoisonError::into_inner).values().any(|t| t.is_watched())
    }
}

#[cfg(test)]
mod status_tests {
    use super::XdsStatus;

    #[test]
    fn status_reads_as_one_line() {
        let mut status = XdsStatus::default();
        assert_eq!(status.to_string(), "not connected yet; 0 responses: 0 ACKed, 0 NACKed; 0 snapshots published");
        status.connected = true;
        status.streams = 2;
        status.responses = 14;
        status.acks = 13;
        status.nacks = 1;
        status.published = 1;
        status.last_nack = Some("CDS resource \"c\": lb_policy: MAGLEV is not supported".into());
        assert_eq!(
            status.to_string(),
            "connected (stream 2); 14 responses: 13 ACKed, 1 NACKed; 1 snapshot published; last NACK: CDS resource \
             \"c\": lb_policy: MAGLEV is not supported"
        );
        status.connected = false;
        assert!(status.to_string().starts_with("disconnected (after 2 streams); "), "{status}");
        // Debug names every field.
        let debug = format!("{status:?}");
        assert!(debug.contains("acks: 13") && debug.contains("last_nack: Some("), "{debug}");
    }
}
