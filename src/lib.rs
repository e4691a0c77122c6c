//! mesh: an embeddable, proxyless service mesh for Rust.
//!
//! This facade re-exports the workspace's crates under one name:
//!
//! - [`core`] (`mesh-core`): the model, identity and discovery; no tower, hyper or tonic.
//! - [`tower`] (`mesh-tower`): the layers and the client and server stacks.
//! - [`tonic`] (`mesh-tonic`): gRPC on the mesh.
//! - `xds` (`mesh-xds`, feature `xds`): discovery from istiod or any xDS control plane.
//! - `dns` (`mesh-dns`, feature `dns`): subsets' endpoints from DNS (Kubernetes headless
//!   Services), with routes and policies from a file, code or xDS.
//! - `spiffe` (`mesh-spiffe`, feature `spiffe`): the workload's identity from the SPIFFE Workload
//!   API (a SPIRE agent's socket), rotated live.
//!
//! Features: `otlp` (on by default) exports traces and metrics over OTLP/gRPC; `dev-certs` adds
//! `core::identity::dev`, an in-memory development CA for tests and trying mesh by hand; `xds`;
//! `dns`; `spiffe`.
//!
//! Start with the README and `docs/architecture.md`; `cargo run --example hello` is the smallest
//! real use (an axum service and its client over mTLS), and `cargo run --example quickstart`
//! shows a client following endpoint changes live.

pub use mesh_core as core;
/// DNS discovery: subsets' endpoints from A/AAAA or SRV records (feature `dns`).
#[cfg(feature = "dns")]
pub use mesh_dns as dns;
/// Identity from the SPIFFE Workload API (feature `spiffe`).
#[cfg(feature = "spiffe")]
pub use mesh_spiffe as spiffe;
pub use mesh_tonic as tonic;
pub use mesh_tower as tower;
/// xDS discovery: join Istio's istiod or any xDS control plane (feature `xds`).
#[cfg(feature = "xds")]
pub use mesh_xds as xds;
