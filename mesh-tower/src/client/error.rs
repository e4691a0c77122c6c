use std::{fmt, sync::Arc};

use mesh_core::{DiscoveryError, ServiceName, SubsetName};

/// The chosen subset (or the whole destination) has no endpoint that can take traffic.
#[derive(Debug, Clone)]
pub struct NoEndpoints {
    pub(crate) service: ServiceName,
    pub(crate) subset: Option<SubsetName>,
    pub(crate) version: u64,
}

impl NoEndpoints {
    /// The destination.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The subset that was chosen, if any.
    pub fn subset(&self) -> Option<&SubsetName> {
        self.subset.as_ref()
    }
}

impl fmt::Display for NoEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subset {
            Some(subset) => write!(
                f,
                "subset {subset} of service {} has no endpoint with a weight above 0 (snapshot version {})",
                self.service, self.version
            ),
            None => write!(
                f,
                "service {} has no endpoint with a weight above 0 (snapshot version {})",
                self.service, self.version
            ),
        }
    }
}

impl std::error::Error for NoEndpoints {}

/// Discovery gave no snapshot of the destination in time.
#[derive(Debug, Clone)]
pub struct Unresolved {
    pub(crate) service: ServiceName,
    pub(crate) cause: Option<Arc<DiscoveryError>>,
}

impl Unresolved {
    /// The destination.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The discovery backend's last error, which usually says why.
    pub fn cause(&self) -> Option<&DiscoveryError> {
        self.cause.as_deref()
    }
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "discovery has no snapshot of service {}", self.service)?;
        match &self.cause {
            Some(cause) => write!(f, ": {cause}"),
            None => write!(f, " yet"),
        }
    }
}

impl std::error::Error for Unresolved {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|e| e as _)
    }
}

/// A request pinned (by the subset header) to a subset the destination does not define.
#[derive(Debug, Clone)]
pub struct UnknownSubset {
    pub(crate) service: ServiceName,
    pub(crate) subset: String,
}

impl UnknownSubset {
    /// The subset asked for.
    pub fn subset(&self) -> &str {
        &self.subset
    }
}

impl fmt::Display for UnknownSubset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the request is pinned to subset {:?}, which service {} does not define", self.subset, self.service)
    }
}

impl std::error::Error for UnknownSubset {}

/// Every error of the client stack, at the top: what went wrong, in words a person can act on,
/// and where the request was going.
///
/// `Display` names the cause first (`the peer presented SPIFFE ID … but … was expected`, `no
/// route of service reviews matches GET /x`, `the request took longer than its deadline of
/// 200ms`), then the request's destination, route, subset, endpoint and attempts. [`kind`]
/// sorts it for code; [`find`] reaches the typed error underneath
/// ([`NoRoute`](super::NoRoute), [`ConnectError`](super::ConnectError),
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
    source: crate::BoxError,
}

/// What kind of failure a [`ClientError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No route of the destination matches the request.
    NoRoute,
    /// The request is pinned to a subset the destination does not define.
    UnknownSubset,
    /// The chosen subset has no endpoint that can take traffic.
    NoEndpoints,
    /// Discovery has no snapshot of the destination.
    Unresolved,
    /// The endpoint proved another identity than discovery expects of it (or none).
    IdentityMismatch,
    /// The connection could not be opened (refused, unreachable, TLS failure).
    Connect,
    /// The request's deadline, or the last attempt's per-try timeout, passed.
    Timeout,
    /// The circuit breaker shed the request: the destination is at its limit.
    Overloaded,
    /// The route's fault injection aborted the request.
    InjectedFault,
    /// The connection or stream failed after it was open.
    Transport,
}

impl ErrorKind {
    /// A short, stable name: the `x-mesh-error` header's value and the `error.type` of spans.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::UnknownSubset => "unknown_subset",
            Self::NoEndpoints => "no_endpoints",
            Self::Unresolved => "unresolved",
            Self::IdentityMismatch => "identity_mismatch",
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Overloaded => "overloaded",
            Self::InjectedFault => "injected_fault",
            Self::Transport => "transport",
        }
    }

    /// Sorts any error of the client stack's layers.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut source = Some(error);
        while let Some(e) = source {
            if let Some(client) = e.downcast_ref::<ClientError>() {
                return client.kind;
            }
            let kind = if e.is::<super::NoRoute>() {
                Some(Self::NoRoute)
            } else if e.is::<UnknownSubset>() {
                Some(Self::UnknownSubset)
            } else if e.is::<NoEndpoints>() {
                Some(Self::NoEndpoints)
            } else if e.is::<Unresolved>() {
                Some(Self::Unresolved)
            } else if let Some(connect) = e.downcast_ref::<super::ConnectError>() {
                Some(if connect.peer_rejected().is_some() || connect.is_missing_identity() {
                    Self::IdentityMismatch
                } else {
                    Self::Connect
                })
            } else if e.is::<crate::client::deadline::RouteTimeout>()
                || e.is::<crate::client::deadline::PerTryTimeout>()
                || e.is::<tokio::time::error::Elapsed>()
            {
                Some(Self::Timeout)
            } else if e.is::<super::shed::Overloaded>() {
                Some(Self::Overloaded)
            } else if e.is::<super::fault::InjectedFault>() {
                Some(Self::InjectedFault)
            } else if e.downcast_ref::<hyper_util::client::legacy::Error>().is_some_and(|e| e.is_connect()) {
                Some(Self::Connect)
            } else {
                None
            };
            if let Some(kind) = kind {
                return kind;
            }
            source = e.source();
        }
        Self::Transport
    }
}

impl ClientError {
    /// Wraps `source`, an error of the stack below the router, with what the request resolved to.
    pub(crate) fn new(source: crate::BoxError, service: &ServiceName, resolution: Option<&super::Resolution>) -> Self {
        let kind = ErrorKind::of(source.as_ref());
        let mut error =
            Self { kind, service: service.clone(), route: None, subset: None, endpoint: None, attempts: 0, source };
        if let Some(resolution) = resolution {
            error.route = resolution.route().cloned();
            error.subset = resolution.subset().cloned();
            error.endpoint = resolution.endpoint();
            error.attempts = resolution.attempts();
        }
        error
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

    /// The error that says the most: the first of mesh's own in the chain (their messages name
    /// the cause), else the deepest one (hyper's wrappers say only "client error (Connect)").
    fn cause(&self) -> &(dyn std::error::Error + 'static) {
        let mut deepest: &(dyn std::error::Error + 'static) = self.source.as_ref();
        let mut source = Some(deepest);
        while let Some(e) = source {
            if e.is::<super::NoRoute>()
                || e.is::<UnknownSubset>()
                || e.is::<NoEndpoints>()
                || e.is::<Unresolved>()
                || e.is::<super::ConnectError>()
                || e.is::<crate::client::deadline::RouteTimeout>()
                || e.is::<crate::client::deadline::PerTryTimeout>()
                || e.is::<super::shed::Overloaded>()
                || e.is::<super::fault::InjectedFault>()
            {
                return e;
            }
            deepest = e;
            source = e.source();
        }
        deepest
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cause = self.cause();
        write!(f, "{cause}")?;
        // A transport failure's own words rarely say which layer it came from.
        if self.kind == ErrorKind::Transport && !std::ptr::addr_eq(cause, self.source.as_ref()) {
            write!(f, " ({})", self.source)?;
        }
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
