//! The client stack: call a service by name.
//!
//! [`MeshClient`] is a tower [`Service`](tower::Service) over hyper-util's pooled client. It reads
//! the destination's [`ServiceSnapshot`](mesh_core::ServiceSnapshot) from a
//! [`Discovery`](mesh_core::Discovery) watch on every request (a lock-free load), so changes apply
//! to the very next request, while requests already sent finish where they started. Per request it
//! [routes](crate::route) (first matching route), [splits](crate::split) (the route's weighted
//! subsets, or the subset pinned by the `x-mesh-subset` header), and
//! [balances](crate::balance) (P2C over peak-EWMA by default) inside the subset; the response's
//! [`Upstream`](crate::Upstream) extension says which route, subset and endpoint served it.
//!
//! It is cheap to clone (clones share the connection pool and the balancer), and it is always
//! ready: a request sent before discovery has any snapshot waits for the first one, up to
//! [`ClientConfig::resolve_timeout`].
//!
//! Connections are mutual TLS ([`MeshClientBuilder::identity`]): the client presents its
//! workload certificate and accepts only an endpoint that proves the SPIFFE ID discovery expects
//! of it. Plaintext is an explicit opt-out ([`MeshClientBuilder::plaintext`]); there is no
//! fallback from one to the other.
//!
//! Errors are boxed; downcast them to [`NoRoute`], [`UnknownSubset`], [`NoEndpoints`],
//! [`Unresolved`], or hyper-util's
//! `client::legacy::Error` for transport failures, whose source is a [`ConnectError`] when the
//! connection could not be opened (see [`ConnectError::peer_rejected`] for identity failures).

mod config;
mod connect;
mod error;
mod future;
mod plan;
mod service;

pub use self::config::{ClientConfig, Protocol};
pub use self::connect::ConnectError;
pub use self::error::{NoEndpoints, UnknownSubset, Unresolved};
pub use self::future::ResponseFuture;
pub use self::service::{ClientStack, MeshClient, MeshClientBuilder, ResponseBody};
pub use crate::route::NoRoute;
