//! What mesh tells handlers and callers about the connection a message travelled on.

use std::net::SocketAddr;

/// In every request's extensions on the server side: the connection it arrived on.
///
/// ```
/// # fn handler(req: http::Request<()>) {
/// if let Some(info) = req.extensions().get::<mesh_tower::ConnectionInfo>() {
///     println!("called from {}", info.remote_addr);
/// }
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The peer's address.
    pub remote_addr: SocketAddr,
    /// The address the server accepted the connection on.
    pub local_addr: SocketAddr,
}

/// In every response's extensions on the client side: the endpoint that answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Upstream {
    /// The endpoint's address.
    pub address: SocketAddr,
}
