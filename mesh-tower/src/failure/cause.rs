//! The typed causes mesh itself gives a failed request, each the error one layer of the client
//! stack makes: the router's refusals (no route, a route that does not forward, unknown subset, no
//! endpoints, no snapshot), the
//! load shedder's, the fault injector's and the deadlines'. They sit here, beneath the stack,
//! so that [`ErrorKind::of`](super::ErrorKind::of) recognises each of them in one place; each is
//! re-exported where its layer is (`client::NoRoute`, `client::shed::Overloaded`, ...).

use std::{fmt, sync::Arc, time::Duration};

use http::StatusCode;
use mesh_core::{DiscoveryError, RouteAction, RouteName, ServiceName, SubsetName, policy::AbortStatus};
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

/// A request that matches none of its destination's routes.
#[derive(Debug, Clone)]
pub struct NoRoute {
    pub(crate) service: ServiceName,
    pub(crate) method: http::Method,
    pub(crate) path: String,
}

impl NoRoute {
    /// The destination.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }
}

impl fmt::Display for NoRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no route of service {} matches {} {}", self.service, self.method, self.path)
    }
}

impl std::error::Error for NoRoute {}

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

/// A request refused because the destination already has `max_concurrent` requests in flight and
/// `max_pending` waiting.
#[derive(Debug, Clone, thiserror::Error)]
#[error("service {service} is at its limit ({max_concurrent} in flight, {max_pending} waiting): request shed")]
pub struct Overloaded {
    pub(crate) service: ServiceName,
    pub(crate) max_concurrent: u32,
    pub(crate) max_pending: u32,
}

/// A request failed on purpose by the route's fault policy.
#[derive(Debug, Clone)]
pub struct InjectedFault {
    pub(crate) status: AbortStatus,
}

impl InjectedFault {
    /// The HTTP status of the answer: the policy's, or 200 for a gRPC abort (answered, as a gRPC
    /// server fails a call at once, with a trailers-only response).
    pub fn status(&self) -> StatusCode {
        match self.status {
            AbortStatus::Http(s) => StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            _ => StatusCode::OK,
        }
    }

    /// The gRPC status code the policy asked for, when it named one (`8` for
    /// `RESOURCE_EXHAUSTED`); `None` for an HTTP status.
    pub fn grpc_status(&self) -> Option<u16> {
        match self.status {
            AbortStatus::Grpc(code) => Some(code),
            _ => None,
        }
    }
}

impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // gRPC's own words for it (grpc-go's fault filter), then what the policy named.
        f.write_str("RPC terminated due to fault injection: ")?;
        match self.status {
            AbortStatus::Grpc(code) => write!(f, "aborted with gRPC status {code} ({})", crate::grpc::code_name(code)),
            _ => write!(f, "aborted with status {}", self.status()),
        }
    }
}

impl std::error::Error for InjectedFault {}

/// A request whose matched route does not forward: a redirect, a direct response or another
/// action a gRPC client does not perform (gRFC A28). As gRPC does, the route still takes the
/// requests it matches and fails them, `UNAVAILABLE` on gRPC (gRPC says "matched route does not
/// have a supported route action type"), 503 as an HTTP response.
#[derive(Debug, Clone)]
pub struct UnsupportedRoute {
    pub(crate) service: ServiceName,
    pub(crate) route: RouteName,
    pub(crate) action: RouteAction,
}

impl UnsupportedRoute {
    /// The destination.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }

    /// The matched route.
    pub fn route(&self) -> &RouteName {
        &self.route
    }

    /// What the route does instead of forwarding.
    pub fn action(&self) -> RouteAction {
        self.action
    }
}

impl fmt::Display for UnsupportedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the matched route {} of service {} does not have a supported route action type (its action is {}, which a gRPC client does not perform)",
            self.route, self.service, self.action
        )
    }
}

impl std::error::Error for UnsupportedRoute {}

/// The request's deadline passed, retries included.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the request took longer than its deadline of {0:?} (the route's timeout, or less if the request or the call being handled had less time)"
)]
pub struct RouteTimeout(pub Duration);

/// One attempt took longer than the route's `per_try_timeout`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the attempt took longer than the route's per-try timeout of {0:?}")]
pub struct PerTryTimeout(pub Duration);
