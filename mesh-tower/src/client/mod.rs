//! The client stack: call a service by name.
//!
//! [`MeshClient`] is a tower [`Service`](tower::Service) over hyper-util's pooled client. It reads
//! the destination's [`ServiceSnapshot`](mesh_core::ServiceSnapshot) from a
//! [`Discovery`](mesh_core::Discovery) watch on every request (a lock-free load), so endpoint
//! changes apply to the very next request, while requests already sent finish on the endpoint
//! they started on.
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
//! Errors are boxed; downcast them to [`NoEndpoints`], [`Unresolved`], or hyper-util's
//! `client::legacy::Error` for transport failures, whose source is a [`ConnectError`] when the
//! connection could not be opened (see [`ConnectError::peer_rejected`] for identity failures).

mod balance;
mod config;
mod connect;
mod error;
mod future;
mod service;

pub use self::config::{ClientConfig, Protocol};
pub use self::connect::ConnectError;
pub use self::error::{NoEndpoints, Unresolved};
pub use self::future::ResponseFuture;
pub use self::service::{MeshClient, MeshClientBuilder};
