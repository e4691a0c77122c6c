//! xDS discovery for mesh: join an existing control plane (Istio's istiod, or any xDS server)
//! the way gRPC's proxyless clients do.
//!
//! [`XdsDiscovery`] implements mesh's [`Discovery`](mesh_core::Discovery): watching a service
//! subscribes to its Listener over one ADS stream (state of the world) and follows the cascade
//! LDS -> RDS -> CDS -> EDS. Routes, weighted clusters, retries, timeouts, fault injection, load
//! balancing, circuit breaking, outlier detection and the endpoints' SPIFFE IDs become a
//! [`ServiceSnapshot`](mesh_core::ServiceSnapshot) that mesh's client stack follows live. What mesh
//! cannot honour is NACKed with an error naming the resource, the field and the reason.
//!
//! Servers follow their inbound Listener (gRFC A36) with [`XdsDiscovery::inbound`]: its TLS
//! context becomes the security of new connections and its RBAC filters (gRFC A41) the
//! authorization policy of every request, translated exactly or NACKed.
//!
//! # Start
//!
//! ```no_run
//! use mesh_xds::XdsDiscovery;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The bootstrap from GRPC_XDS_BOOTSTRAP, as Istio's grpc-agent template writes it.
//! let xds = XdsDiscovery::from_env()?;
//! let reviews = xds.target("reviews.default.svc.cluster.local:9080")?;
//! let identity = xds.identity("default")?; // the bootstrap's file_watcher certificates
//! // mesh_tonic::MeshChannel::builder(xds.clone(), reviews).identity(identity).build()?
//! # let _ = (reviews, identity); Ok(()) }
//! ```
//!
//! See `docs/xds.md` for what is supported, gRFC by gRFC.

// From the bottom up: the bootstrap; decoding, one file per resource type; the ADS protocol state
// and resource cache; the cascade, one pure step over the cache; the error and status types; the
// watched targets; the driver (all the I/O); and the handles users hold.
mod bootstrap;
mod resource;

mod ads;
mod cascade;

mod error;
mod status;
mod targets;

mod driver;

mod discovery;
mod inbound_listener;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use crate::bootstrap::{
    Bootstrap, BootstrapError, CertificateProvider, ChannelCredentials, Locality, Node, ServerTarget, XdsServer,
};
pub use crate::cascade::{CascadeError, subset_for_cluster};
pub use crate::discovery::{XdsDiscovery, XdsDiscoveryBuilder};
pub use crate::error::XdsError;
pub use crate::inbound_listener::InboundListener;
pub use crate::resource::{ResourceError, ResourceType};
pub use crate::status::{InboundStatus, XdsStatus};

#[cfg(test)]
mod tests;
