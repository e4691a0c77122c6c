//! What mesh tells handlers and callers about the connection a message travelled on.

use std::net::SocketAddr;

use mesh_core::{RouteName, SubsetName};

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

/// In every response's extensions on the client side: where the request went.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Upstream {
    /// The endpoint's address.
    pub address: SocketAddr,
    /// The route the request matched (`None` when the destination has no routes).
    pub route: Option<RouteName>,
    /// The subset it was sent to (`None`: every endpoint of the destination).
    pub subset: Option<SubsetName>,
    /// Which attempt this response answers: 1 for the first, 2 for the first retry...
    pub attempt: u32,
}
