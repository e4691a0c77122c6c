//! Test fixtures, behind the `testing` feature (and in this crate's own unit tests): **no
//! stability promise**, not for applications. One home for what the unit tests, the integration
//! tests, the fuzz targets' seed corpus and the benchmarks feed an xDS client:
//!
//! - [`resources`]: Istio-shaped client resources (listener, route configuration, clusters,
//!   endpoints), as istiod's `grpcgen` writes them;
//! - [`inbound`]: Istio-shaped server (inbound) Listeners, their TLS contexts and RBAC filters;
//! - [`ControlPlane`] (feature `testing` only): an ADS server on loopback serving them, recording
//!   every ACK and NACK, and the bootstrap files a client of it needs.
#![allow(missing_docs, unreachable_pub, deprecated, clippy::unwrap_used)]

#[cfg(feature = "testing")]
mod control_plane;
pub mod inbound;
pub mod resources;

#[cfg(feature = "testing")]
pub use self::control_plane::*;
