//! What mesh tells handlers and callers about the connection a message travelled on.

use std::{fmt, io, net::SocketAddr, sync::Arc};

use mesh_core::{RouteName, SubsetName, identity::tls::PeerRejected};

// Spelled out rather than `crate::BoxError`: this module sits below the crate root.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// Why a connection to an endpoint could not be opened. Found in the source chain of a
/// transport error. Cheap to clone: every request that waited for the same failed connection
/// gets the same error.
#[derive(Clone, Debug)]
pub struct ConnectError {
    pub(crate) endpoint: String,
    pub(crate) kind: Arc<ConnectErrorKind>,
}

#[derive(Debug)]
pub(crate) enum ConnectErrorKind {
    Tcp(BoxError),
    Tls(io::Error),
    NoExpectedIdentity(String),
    EndpointGone(String),
    HandshakeTimeout(std::time::Duration),
}

impl ConnectError {
    pub(crate) fn new(endpoint: String, kind: ConnectErrorKind) -> Self {
        Self { endpoint, kind: Arc::new(kind) }
    }

    /// The endpoint dialled.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether the TLS handshake failed or timed out (including a peer refused by identity).
    pub fn is_tls(&self) -> bool {
        matches!(*self.kind, ConnectErrorKind::Tls(_) | ConnectErrorKind::HandshakeTimeout(_))
    }

    /// Why the peer was refused, when its certificate was the problem beyond X.509 validation
    /// (wrong SPIFFE ID, none, several, untrusted trust domain).
    pub fn peer_rejected(&self) -> Option<&PeerRejected> {
        match &*self.kind {
            ConnectErrorKind::Tls(e) => PeerRejected::find(e),
            _ => None,
        }
    }

    /// Whether discovery gave no identity to check the endpoint against, so it was not dialled.
    pub fn is_missing_identity(&self) -> bool {
        matches!(*self.kind, ConnectErrorKind::NoExpectedIdentity(_))
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.kind {
            ConnectErrorKind::Tcp(e) => write!(f, "cannot connect to {}: {e}", self.endpoint),
            ConnectErrorKind::Tls(e) => match PeerRejected::find(e) {
                // rustls would print its own Debug form of our error; say it plainly.
                Some(rejected) => write!(f, "mTLS handshake with {} failed: {rejected}", self.endpoint),
                None => write!(f, "mTLS handshake with {} failed: {e}", self.endpoint),
            },
            ConnectErrorKind::NoExpectedIdentity(service) => write!(
                f,
                "endpoint {} of service {service} has no expected SPIFFE ID in discovery (set `identity` on the service \
                 or the endpoint); refusing to dial it without one",
                self.endpoint
            ),
            ConnectErrorKind::HandshakeTimeout(limit) => {
                write!(f, "mTLS handshake with {} did not finish within {limit:?}", self.endpoint)
            }
            ConnectErrorKind::EndpointGone(service) => {
                write!(f, "endpoint {} left service {service} before it was dialled", self.endpoint)
            }
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.kind {
            ConnectErrorKind::Tcp(e) => Some(e.as_ref()),
            ConnectErrorKind::Tls(e) => Some(e),
            _ => None,
        }
    }
}
