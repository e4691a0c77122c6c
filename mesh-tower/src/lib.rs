//! mesh's tower layers, and the client and server stacks that assemble them.
//!
//! - [`client::MeshClient`]: a tower [`Service`](tower::Service) that calls a service *by name*:
//!   it resolves endpoints through a [`Discovery`](mesh_core::Discovery) backend, follows every
//!   change live, balances across endpoints and sends over hyper-util's pooled client.
//! - [`server::Server`]: serves any tower service over HTTP/1.1 and HTTP/2 with graceful drain.
//!
//! Later layers (identity, authorization, routing, splits, retries, telemetry) slot into these
//! stacks at the places `docs/architecture.md` names.
//!
//! # Example
//!
//! ```
//! use http_body_util::{BodyExt, Empty};
//! use mesh_core::{Endpoint, ServiceName, ServiceSnapshot, StaticDiscovery};
//! use mesh_tower::{client::MeshClient, server::Server};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // A backend: any tower service.
//! let hello = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let backend = Server::builder().build().spawn(listener, hello)?;
//!
//! // Discovery says where `hello` lives; the client calls it by name.
//! let name: ServiceName = "hello".parse()?;
//! let discovery = StaticDiscovery::new();
//! discovery.set(ServiceSnapshot::builder(name.clone()).endpoint(Endpoint::new(backend.local_addr())).build()?);
//! let client = MeshClient::builder(discovery, name).build::<Empty<bytes::Bytes>>();
//!
//! let response = client.oneshot(http::Request::get("/").body(Empty::new())?).await?;
//! assert_eq!(response.into_body().collect().await?.to_bytes(), "hello");
//! backend.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod client;
mod connection;
pub mod server;

pub use crate::connection::{ConnectionInfo, Upstream};

/// The error type of mesh's services: a boxed error that callers downcast to the concrete types
/// each module documents.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
