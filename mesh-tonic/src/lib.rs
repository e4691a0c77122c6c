//! gRPC on the mesh: tonic clients and servers with mTLS identity, per-method routing and
//! authorization, weighted splits, retries by gRPC status, and deadlines.
//!
//! - [`MeshChannel`] is what a generated tonic client takes in place of tonic's `Channel`
//!   (`GreeterClient::new(channel)`): it resolves the destination through a
//!   [`Discovery`](mesh_core::Discovery) backend, follows its changes live, and sends each call
//!   through the whole mesh client stack over HTTP/2 with mTLS.
//! - [`GrpcServer`] serves any tonic service (a generated `…Server`, a `tonic::service::Routes`)
//!   with the mesh server stack: mTLS, authorization per gRPC method (`PERMISSION_DENIED`), the
//!   caller's deadline (`DEADLINE_EXCEEDED`), graceful drain. Handlers read the caller's SPIFFE ID
//!   with [`PeerIdentityExt::peer_identity`].
//! - [`status_from_error`] is the one place mesh's errors become [`tonic::Status`]es, with the
//!   right code and a message that says what happened.
//!
//! The routes, splits, retry and authorization policies are mesh-core's, written against gRPC
//! paths: a route matching the path prefix `/helloworld.Greeter` covers the service, the exact
//! path `/helloworld.Greeter/SayHello` one method. `docs/grpc.md` walks through it, and the
//! `greeter-server`, `greeter-client` and `greeter-canary` examples run it.
//!
//! ```no_run
//! use mesh_core::StaticDiscovery;
//! use mesh_tonic::MeshChannel;
//! use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
//!
//! # async fn f(discovery: StaticDiscovery, identity: mesh_core::IdentitySource) -> Result<(), Box<dyn std::error::Error>> {
//! let channel = MeshChannel::builder(discovery, "inventory".parse()?).identity(identity).build()?;
//! let mut client = HealthClient::new(channel); // any tonic-generated client
//! let reply = client.check(HealthCheckRequest { service: String::new() }).await?;
//! # Ok(()) }
//! ```

mod channel;
mod server;
mod status;

pub use crate::channel::{MeshChannel, MeshChannelBuilder, ResponseFuture};
pub use crate::server::{GrpcServer, PeerIdentityExt, RequestBody};
pub use crate::status::status_from_error;

#[cfg(test)]
mod tests;
