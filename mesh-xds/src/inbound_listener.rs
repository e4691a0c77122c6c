//! [`InboundListener`]: the handle of an xDS-configured server (gRFC A36) on the inbound Listener
//! of its address, followed live as the security of new connections and the authorization policy
//! of every request.

use std::{
    net::SocketAddr,
    sync::{Arc, PoisonError},
};

use mesh_core::{identity::tls::ServerSecurity, policy::AuthorizationPolicy};
use tokio::sync::watch;

use crate::{discovery::XdsDiscovery, error::XdsError, status::InboundStatus, targets::InboundTarget};

/// A server's inbound Listener, as the control plane sets it: give [`security`](Self::security)
/// to `ServerBuilder::security_from` and [`authorization`](Self::authorization) to
/// `AuthorizationLayer::from_watch`.
///
/// Until a first valid Listener arrives, the security is
/// [`ServerSecurity::NotServing`] (connections are closed, never served in plaintext). A
/// Listener that is later refused (NACKed) or removed leaves the last good configuration in place;
/// [`status`](Self::status) says why it was not applied. Holding this keeps the ADS stream open.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let xds = mesh_xds::XdsDiscovery::from_env()?;
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
/// let inbound = xds.inbound(listener.local_addr()?)?; // xds.istio.io/grpc/lds/inbound/0.0.0.0:8080
/// // Server::builder()
/// //     .security_from(inbound.security())
/// //     .authorization(AuthorizationLayer::from_watch(inbound.authorization()))
/// # let _ = inbound; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct InboundListener {
    name: String,
    address: SocketAddr,
    security: watch::Receiver<Arc<ServerSecurity>>,
    authorization: watch::Receiver<Option<Arc<AuthorizationPolicy>>>,
    status: watch::Receiver<InboundStatus>,
    _discovery: XdsDiscovery,
}

impl InboundListener {
    /// The Listener's resource name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's address the Listener is for.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The security of the connections accepted next.
    pub fn security(&self) -> watch::Receiver<Arc<ServerSecurity>> {
        self.security.clone()
    }

    /// The policy of the RBAC filters (`None`: no RBAC filter, every caller is served).
    pub fn authorization(&self) -> watch::Receiver<Option<Arc<AuthorizationPolicy>>> {
        self.authorization.clone()
    }

    /// What has been applied, and the last error: watch it to wait for a change without sleeping.
    pub fn status(&self) -> watch::Receiver<InboundStatus> {
        self.status.clone()
    }
}

impl XdsDiscovery {
    /// Subscribes to the inbound Listener of a server listening on `address` (gRFC A36), named by
    /// the bootstrap's `server_listener_resource_name_template`. The Listener's address must be
    /// `address`; its one filter chain gives the transport (mTLS with the certificate provider
    /// instances it names, or plaintext) and the RBAC filters (gRFC A41).
    pub fn inbound(&self, address: SocketAddr) -> Result<InboundListener, XdsError> {
        let name = self.bootstrap.server_listener_name(address)?;
        let mut inbound = self.shared.inbound.lock().unwrap_or_else(PoisonError::into_inner);
        let target = inbound.entry(name.clone()).or_insert_with(|| InboundTarget::new(address));
        if target.address != address {
            return Err(XdsError::InboundAddress { listener: name, address: target.address });
        }
        let listener = InboundListener {
            name,
            address,
            security: target.security.subscribe(),
            authorization: target.authorization.subscribe(),
            status: target.status.subscribe(),
            _discovery: self.clone(),
        };
        drop(inbound);
        let _ = self.wake.send(());
        Ok(listener)
    }
}
