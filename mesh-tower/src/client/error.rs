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
