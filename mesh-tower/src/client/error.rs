use std::{fmt, sync::Arc};

use mesh_core::{DiscoveryError, ServiceName};

use super::{
    deadline::{PerTryTimeout, RouteTimeout},
    fault::InjectedFault,
    resolution::{NoEndpoints, NoRoute, UnknownSubset, UnsupportedRoute},
    shed::Overloaded,
};
pub(crate) use crate::failure::Target;
pub use crate::failure::{ClientError, ErrorKind};
use crate::{BoxError, connection::ConnectError};

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

impl ErrorKind {
    /// Sorts any error of the client stack's layers.
    pub fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        let mut source = Some(error);
        while let Some(e) = source {
            if let Some(client) = e.downcast_ref::<ClientError>() {
                return client.kind();
            }
            let kind = if e.is::<NoRoute>() {
                Some(Self::NoRoute)
            } else if e.is::<UnsupportedRoute>() {
                Some(Self::UnsupportedRoute)
            } else if e.is::<UnknownSubset>() {
                Some(Self::UnknownSubset)
            } else if e.is::<NoEndpoints>() {
                Some(Self::NoEndpoints)
            } else if e.is::<Unresolved>() {
                Some(Self::Unresolved)
            } else if let Some(connect) = e.downcast_ref::<ConnectError>() {
                Some(if connect.peer_rejected().is_some() || connect.is_missing_identity() {
                    Self::IdentityMismatch
                } else {
                    Self::Connect
                })
            } else if e.is::<RouteTimeout>() || e.is::<PerTryTimeout>() || e.is::<tokio::time::error::Elapsed>() {
                Some(Self::Timeout)
            } else if e.is::<Overloaded>() {
                Some(Self::Overloaded)
            } else if e.is::<InjectedFault>() {
                Some(Self::InjectedFault)
            } else {
                None
            };
            if let Some(kind) = kind {
                return kind;
            }
            source = e.source();
        }
        // hyper-util's own wrapper says "connect" but not why; mesh's errors beneath it say more.
        let mut source = Some(error);
        while let Some(e) = source {
            if e.downcast_ref::<hyper_util::client::legacy::Error>().is_some_and(|e| e.is_connect()) {
                return Self::Connect;
            }
            source = e.source();
        }
        Self::Transport
    }
}

impl ClientError {
    /// Wraps `source`, an error of the stack below the router, with where the request went: the
    /// route and subset it resolved to, the endpoint of its last attempt and its attempts.
    pub(crate) fn new(source: BoxError, service: &ServiceName, target: Option<Target>) -> Self {
        let kind = ErrorKind::of(source.as_ref());
        let cause = describe(source.as_ref(), kind);
        Self::from_parts(kind, cause, service, target.unwrap_or_default(), source)
    }
}

/// What an error says first: the first of mesh's own errors in the chain (their messages name the
/// cause), else the deepest one (hyper's wrappers say only "client error (Connect)"), with the
/// outermost added for a transport failure, whose own words rarely say which layer it came from.
fn describe(error: &(dyn std::error::Error + 'static), kind: ErrorKind) -> String {
    let mut deepest = error;
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<NoRoute>()
            || e.is::<UnsupportedRoute>()
            || e.is::<UnknownSubset>()
            || e.is::<NoEndpoints>()
            || e.is::<Unresolved>()
            || e.is::<ConnectError>()
            || e.is::<RouteTimeout>()
            || e.is::<PerTryTimeout>()
            || e.is::<Overloaded>()
            || e.is::<InjectedFault>()
        {
            return e.to_string();
        }
        deepest = e;
        source = e.source();
    }
    if kind == ErrorKind::Transport && !std::ptr::addr_eq(deepest, error) {
        format!("{deepest} ({error})")
    } else {
        deepest.to_string()
    }
}
