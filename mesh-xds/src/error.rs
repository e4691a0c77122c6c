//! [`XdsError`]: what can go wrong with xDS discovery, as the handle returns it and as the
//! watchers of a target are told.

use mesh_core::{DiscoveryError, InvalidIdentity, InvalidName};

use crate::{bootstrap::BootstrapError, cascade::CascadeError};

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

impl XdsError {
    /// The error as a target's watchers receive it.
    pub(crate) fn into_discovery(self) -> DiscoveryError {
        DiscoveryError::Backend { backend: "xds", source: Box::new(self) }
    }
}
