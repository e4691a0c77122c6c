//! The refusals of a request that resolves to nowhere: no route matches it, the route it matches
//! does not forward, it is pinned to a subset that does not exist, or the chosen subset has no
//! endpoint.

use std::fmt;

use mesh_core::{RouteAction, RouteName, ServiceName, SubsetName};

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
