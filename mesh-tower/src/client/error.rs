use std::{fmt, sync::Arc};

use mesh_core::{DiscoveryError, ServiceName};

/// The destination's current snapshot has no endpoint that can take traffic.
#[derive(Debug, Clone)]
pub struct NoEndpoints {
    pub(crate) service: ServiceName,
    pub(crate) version: u64,
}

impl NoEndpoints {
    /// The destination.
    pub fn service(&self) -> &ServiceName {
        &self.service
    }
}

impl fmt::Display for NoEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service {} has no endpoint with a weight above 0 (snapshot version {})", self.service, self.version)
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
