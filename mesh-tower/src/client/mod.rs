//! The client stack: call a service by name.
//!
//! [`MeshClient`] is a tower [`Service`](tower::Service) that calls one destination through
//! discovery, with every policy discovery configures for it applied live. Its capabilities, in
//! the order a request meets them (each one module with its public tower layer, for stacks
//! composed by hand):
//!
//! 1. [`telemetry`](crate::telemetry): the request's span, metrics, access log and golden
//!    signals, as the application sees it;
//! 2. [`router`]: the destination's snapshot loaded (a lock-free read), the route matched and the
//!    subset chosen, once, into a [`Resolution`] that every layer below reads;
//! 3. [`deadline`]: the route's timeout, the request's own, and the time left to
//!    the call being handled;
//! 4. [`fault`]: the route's fault injection;
//! 5. [`retry`]: the route's retry policy with the destination's budget, inside the chosen subset;
//! 6. [`shed`]: load shedding at the destination's limits (its circuit breaker);
//! 7. [`endpoint`]: the [balancer](balance)'s pick in the subset, outlier detection, mirroring, and
//!    the pooled connection, mutual TLS that checks the endpoint's SPIFFE ID.
//!
//! The client does not nest these layers as services: it runs each one's decision, a function of
//! its module, from one service and one future per call (`call`), so a request pays for one
//! future and no extensions written for the next layer to read back. A test runs the layers
//! stacked by hand and the client over the same endpoints, and checks every outcome and counter
//! is the same.
//!
//! Changes from discovery apply to the very next request, while requests already sent finish
//! where they started. A request sent before discovery has any snapshot waits for the first one,
//! up to [`ClientConfig::resolve_timeout`].
//!
//! Connections are mutual TLS ([`MeshClientBuilder::identity`]): the client presents its
//! workload certificate and accepts only an endpoint that proves the SPIFFE ID discovery expects
//! of it. Plaintext is an explicit opt-out ([`MeshClientBuilder::plaintext`]); there is no
//! fallback from one to the other.
//!
//! Every error is a [`ClientError`] (boxed): its `Display` names the cause (`mTLS handshake with
//! 127.0.0.1:8443 failed: the peer presented SPIFFE ID … but … was expected`), its
//! [`kind`](ClientError::kind) sorts it, and [`ErrorResponseLayer`] turns it into an HTTP
//! response for callers that want one.

pub mod balance;
mod builder;
mod call;
pub(crate) mod config;
pub mod deadline;
pub mod endpoint;
pub mod fault;
pub mod outlier;
pub mod resolution;
mod respond;
pub mod retry;
pub mod router;
pub mod shed;

pub use self::builder::{MeshClient, MeshClientBuilder, ResponseBody, ResponseFuture};
pub use self::config::{ClientConfig, Protocol};
pub use self::resolution::Resolution;
pub use self::respond::{
    ERROR_HEADER, ErrorResponse, ErrorResponseFuture, ErrorResponseLayer, ErrorResponses, response_of,
};
pub use crate::connection::ConnectError;
pub use crate::failure::{
    ClientError, ErrorKind, NoEndpoints, NoRoute, UnknownSubset, Unresolved, UnsupportedRoute, grpc_code_of, status_of,
};
