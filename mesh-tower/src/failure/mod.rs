//! What a caller learns when a request of the client stack failed: [`ClientError`], sorted by
//! [`ErrorKind`], whose one table (`kind.rs`) says which of mesh's errors is which kind and what
//! the HTTP answer, the gRPC status, telemetry's `error.type` and Istio's response flag are for
//! each. The typed causes the table recognises (`cause.rs`) sit here too, beneath the client
//! stack whose layers make them, so that the classifier and telemetry read them without
//! importing the stack.

mod cause;
mod kind;

use std::fmt;

use mesh_core::{ServiceName, SubsetName};

pub use self::cause::{
    InjectedFault, NoEndpoints, NoRoute, Overloaded, PerTryTimeout, RouteTimeout, UnknownSubset, Unresolved,
    UnsupportedRoute,
};
pub use self::kind::{ErrorKind, grpc_code_of, status_of};
use crate::BoxError;

/// Every error of the client stack, at the top: what went wrong, in words a person can act on,
/// and where the request was going.
///
/// `Display` names the cause first (`the peer presented SPIFFE ID … but … was expected`, `no
/// route of service reviews matches GET /x`, `the request took longer than its deadline of
/// 200ms`), then the request's destination, route, subset, endpoint and attempts. [`kind`]
/// sorts it for code; [`find`] reaches the typed error underneath
/// ([`NoRoute`](crate::client::NoRoute), [`ConnectError`](crate::client::ConnectError),
/// [`RouteTimeout`](crate::client::deadline::RouteTimeout), …), which is also its
/// [`source`](std::error::Error::source).
///
/// [`kind`]: ClientError::kind
/// [`find`]: ClientError::find
///
/// ```
/// # async fn f(client: mesh_tower::client::MeshClient<http_body_util::Empty<bytes::Bytes>>) {
/// use mesh_tower::client::{ClientError, ErrorKind};
/// use tower::ServiceExt;
///
/// if let Err(error) = client.oneshot(http::Request::get("/").body(Default::default()).unwrap()).await {
///     let error = error.downcast_ref::<ClientError>().expect("the stack's errors are ClientErrors");
///     if error.kind() == ErrorKind::Timeout {
///         eprintln!("gave up after {} attempts: {error}", error.attempts());
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct ClientError {
    kind: ErrorKind,
    service: ServiceName,
    route: Option<mesh_core::RouteName>,
    subset: Option<SubsetName>,
    endpoint: Option<std::net::SocketAddr>,
    attempts: u32,
    /// What `Display` says first: computed once, when the error is made.
    cause: String,
    source: BoxError,
}

/// Where a request went before it failed, for [`ClientError::new`].
#[derive(Debug, Default)]
pub(crate) struct Target {
    pub(crate) route: Option<mesh_core::RouteName>,
    pub(crate) subset: Option<SubsetName>,
    pub(crate) endpoint: Option<std::net::SocketAddr>,
    pub(crate) attempts: u32,
}

impl ClientError {
    /// Wraps `source`, an error of the stack below the router, with where the request went: the
    /// route and subset it resolved to, the endpoint of its last attempt and its attempts.
    pub(crate) fn new(source: BoxError, service: &ServiceName, target: Option<Target>) -> Self {
        let kind = ErrorKind::of(source.as_ref());
        let cause = kind::describe(source.as_ref(), kind);
        let Target { route, subset, endpoint, attempts } = target.unwrap_or_default();
        Self { kind, service: service.clone(), route, subset, endpoint, attempts, cause, source }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The destination.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The route the request matched, if it got that far and the destination has routes.
    pub fn route(&self) -> Option<&mesh_core::RouteName> {
        self.route.as_ref()
    }

    /// The subset the request was sent to, if one was chosen.
    pub fn subset(&self) -> Option<&SubsetName> {
        self.subset.as_ref()
    }

    /// The endpoint of the last attempt, if one was picked.
    pub fn endpoint(&self) -> Option<std::net::SocketAddr> {
        self.endpoint
    }

    /// Attempts sent (0 when the request never left: no route, no endpoints, shed...).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The first error of type `E` in the chain under this one.
    pub fn find<E: std::error::Error + 'static>(&self) -> Option<&E> {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self.source.as_ref());
        while let Some(e) = source {
            if let Some(found) = e.downcast_ref::<E>() {
                return Some(found);
            }
            source = e.source();
        }
        None
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.cause)?;
        // Where the request went, once it got past the router: the cause rarely says all of it.
        if self.route.is_none() && self.subset.is_none() && self.endpoint.is_none() {
            return Ok(());
        }
        write!(f, " [service {}", self.service)?;
        if let Some(route) = &self.route {
            write!(f, ", route {route}")?;
        }
        if let Some(subset) = &self.subset {
            write!(f, ", subset {subset}")?;
        }
        if let Some(endpoint) = &self.endpoint {
            write!(f, ", endpoint {endpoint}")?;
        }
        if self.attempts > 1 {
            write!(f, ", {} attempts", self.attempts)?;
        }
        write!(f, "]")
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}
