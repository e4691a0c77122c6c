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
//! # async fn f(discovery: StaticDiscovery, identity: mesh_core::IdentitySource) -> Result<(), Box<dyn std::error::Error>> {
//! let channel = MeshChannel::builder(discovery, "inventory".parse()?).identity(identity).build()?;
//! let mut client = HealthClient::new(channel); // any tonic-generated client
//! let reply = client.check(HealthCheckRequest { service: String::new() }).await?;
//! # Ok(()) }
//! ```

use std::{
    fmt,
    task::{Context, Poll},
};

use hyper::body::Incoming;
use mesh_core::{Discovery, IdentitySource, ServiceName};
use mesh_tower::{
    BoxError, MissingIdentity,
    client::{ClientConfig, MeshClient, MeshClientBuilder, Protocol, ResponseFuture},
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
    /// Starts configuring a channel to `service`, resolved through `discovery`.
    pub fn builder(discovery: impl Discovery, service: ServiceName) -> MeshChannelBuilder {
        MeshChannelBuilder { client: MeshClient::builder(discovery, service) }
    }

    /// The destination.
    pub fn service(&self) -> &ServiceName {
        self.client.service()
    }
}

/// Configures a [`MeshChannel`]: the mesh client's settings, always over HTTP/2.
#[derive(Debug)]
pub struct MeshChannelBuilder {
    client: MeshClientBuilder,
}

impl MeshChannelBuilder {
    /// Mutual TLS with SPIFFE verification of every endpoint (see
    /// [`MeshClientBuilder::identity`]).
    pub fn identity(mut self, source: IdentitySource) -> Self {
        self.client = self.client.identity(source);
        self
    }

    /// Plaintext, as an explicit choice.
    pub fn plaintext(mut self) -> Self {
        self.client = self.client.plaintext();
        self
    }

    /// The client configuration (the protocol is always HTTP/2).
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.client = self.client.config(config);
        self
    }

    /// The channel. Fails if neither `identity` nor `plaintext` was chosen.
    pub fn build(self) -> Result<MeshChannel, MissingIdentity> {
        Ok(MeshChannel { client: self.client.protocol(Protocol::Http2).build()? })
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
