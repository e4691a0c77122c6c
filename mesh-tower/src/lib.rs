//! mesh's tower layers, and the client and server stacks that assemble them.
//!
//! - [`client::MeshClient`]: a tower [`Service`](tower::Service) that calls a service *by name*:
//!   it resolves endpoints through a [`Discovery`](mesh_core::Discovery) backend, follows every
//!   change live, balances across endpoints and sends over connections of its own per endpoint.
//! - [`server::Server`]: serves any tower service over HTTP/1.1 and HTTP/2 with graceful drain.
//!
//! The modules follow a request's path: [`client`] (router, deadline, fault, retry, shed,
//! endpoint) on the way out, [`server`] (connection, then telemetry, [`authz`] and [`context`])
//! on the way in; [`telemetry`] traces and measures both sides, and [`classify`] is the one place
//! that decides what a failure is.
//!
//! # Example
//!
//! ```
//! use http_body_util::{BodyExt, Empty};
//! use mesh_core::{Endpoint, IdentitySource, ServiceName, ServiceSnapshot, StaticDiscovery, identity::dev::DevCa};
//! use mesh_tower::{PeerIdentity, client::MeshClient, server::Server};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // Identities: in production a SPIRE agent or cert-manager writes them (IdentitySource::from_files).
//! let ca = DevCa::new("example.org".parse()?)?;
//! let (hello_id, web_id) = (ca.identity("/hello")?, ca.identity("/web")?);
//!
//! // A backend: any tower service; it learns who called from the request's extensions.
//! let hello = tower::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
//!     let caller = req.extensions().get::<PeerIdentity>().map(|p| p.id().to_string());
//!     Ok::<_, std::convert::Infallible>(http::Response::new(format!("hello {}", caller.unwrap_or_default())))
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let backend = Server::builder().identity(IdentitySource::fixed(hello_id)).build()?.spawn(listener, hello)?;
//!
//! // Discovery says where `hello` lives and who it must prove to be; the client calls it by name.
//! let name: ServiceName = "hello".parse()?;
//! let discovery = StaticDiscovery::new();
//! discovery.set(
//!     ServiceSnapshot::builder(name.clone())
//!         .identity("spiffe://example.org/hello".parse()?)
//!         .endpoint(Endpoint::new(backend.local_addr()))
//!         .build()?,
//! );
//! let client = MeshClient::builder(discovery, name).identity(IdentitySource::fixed(web_id)).build()?;
//!
//! let response = client.oneshot(http::Request::get("/").body(Empty::<bytes::Bytes>::new())?).await?;
//! assert_eq!(response.into_body().collect().await?.to_bytes(), "hello spiffe://example.org/web");
//! backend.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod authz;
pub mod classify;
pub mod client;
mod connection;
pub mod context;
mod deadline_body;
mod failure;
mod future;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod golden;
pub mod grpc;
mod headers;
mod identity;
pub mod metrics;
pub mod server;
pub mod telemetry;
pub mod unstable;

pub use crate::connection::{ConnectionInfo, Upstream};
pub use crate::identity::{HandshakeCounts, HandshakeFailure, MissingIdentity, PeerIdentity};

/// The error type of mesh's services: a boxed error that callers downcast to the concrete types
/// each module documents.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
