//! The refusals of a request that resolves to nowhere: no route matches it, it is pinned to a
//! subset that does not exist, or the chosen subset has no endpoint.

use std::fmt;

use mesh_core::{ServiceName, SubsetName};

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
