//! gRPC on the mesh: tonic clients that call services by name through discovery.
//!
//! [`MeshChannel`] is what a generated tonic client takes in place of tonic's `Channel`: it
//! resolves the destination through a [`Discovery`] backend, follows its
//! changes live, and speaks HTTP/2 to the endpoints through the mesh client stack
//! ([`MeshClient`]). Serve the other side with any tonic service
//! (a generated `…Server`, or a `tonic::service::Routes`) on
//! [`mesh_tower::server::Server`].
//!
//! This crate grows with the mesh: mTLS identity, per-method routing and authorization, retries
//! by gRPC status, deadlines and RPC telemetry arrive as the matching layers land.
//!
//! ```no_run
//! use mesh_core::StaticDiscovery;
//! use mesh_tonic::MeshChannel;
//! use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
//!
//! # async fn f(discovery: StaticDiscovery) -> Result<(), Box<dyn std::error::Error>> {
//! let channel = MeshChannel::new(discovery, "inventory".parse()?);
//! let mut client = HealthClient::new(channel); // any tonic-generated client
//! let reply = client.check(HealthCheckRequest { service: String::new() }).await?;
//! # Ok(()) }
//! ```

use std::{
    fmt,
    task::{Context, Poll},
};

use hyper::body::Incoming;
use mesh_core::{Discovery, ServiceName};
use mesh_tower::{
    BoxError,
    client::{ClientConfig, MeshClient, Protocol, ResponseFuture},
};

/// A gRPC channel to one service, resolved through discovery.
///
/// Cheap to clone, like tonic's `Channel`: clones share the connection pool and the balancer,
/// so make one per destination and clone it into every task that calls it.
#[derive(Clone)]
pub struct MeshChannel {
    client: MeshClient<tonic::body::Body>,
}

impl MeshChannel {
    /// A channel to `service`, with the default client configuration over HTTP/2.
    pub fn new(discovery: impl Discovery, service: ServiceName) -> Self {
        Self::with_config(discovery, service, ClientConfig::default())
    }

    /// A channel with a client configuration of your own; the protocol is always HTTP/2.
    pub fn with_config(discovery: impl Discovery, service: ServiceName, config: ClientConfig) -> Self {
        let client = MeshClient::builder(discovery, service).config(config).protocol(Protocol::Http2).build();
        Self { client }
    }

    /// The destination.
    pub fn service(&self) -> &ServiceName {
        self.client.service()
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for MeshChannel {
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.client.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.client.call(request)
    }
}

impl fmt::Debug for MeshChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshChannel").field("service", self.service()).finish()
    }
}

#[cfg(test)]
mod tests;
