//! [`ErrorKind`] and its one table: which of mesh's errors is which kind, and what every reader
//! of a failure (the client's errors, [`ErrorResponseLayer`](crate::client::ErrorResponseLayer),
//! mesh-tonic's statuses, the classifier, telemetry's `error.type` and Istio's response flags)
//! makes of each kind. A new cause touches [`own_kind`]; a new kind, [`ErrorKind::row`].

use std::error::Error;

use http::StatusCode;

use super::cause::{
    InjectedFault, NoEndpoints, NoRoute, Overloaded, PerTryTimeout, RouteTimeout, UnknownSubset, Unresolved,
    UnsupportedRoute,
};
use crate::{connection::ConnectError, grpc};

/// What kind of failure a [`ClientError`](super::ClientError) is, and what each part of mesh
/// makes of it. This is the one table; every column below is read from it.
///
/// | kind | the error in the chain | [`as_str`](Self::as_str) (`x-mesh-error`, span `error.type`) | [HTTP status](Self::http_status) | [gRPC code](Self::grpc_code) | [Envoy response flag](Self::response_flag) |
/// |---|---|---|---|---|---|
/// | `NoRoute` | [`NoRoute`](crate::client::NoRoute) | `no_route` | 404 | `UNIMPLEMENTED` | `NR` |
/// | `UnsupportedRoute` | [`UnsupportedRoute`](crate::client::UnsupportedRoute): the matched route is a redirect, a direct response, ... (gRFC A28) | `unsupported_route` | 503 | `UNAVAILABLE` (as gRPC) | `NR` |
/// | `UnknownSubset` | [`UnknownSubset`](crate::client::UnknownSubset) | `unknown_subset` | 400 | `FAILED_PRECONDITION` | `NC` |
/// | `NoEndpoints` | [`NoEndpoints`](crate::client::NoEndpoints) | `no_endpoints` | 503 | `UNAVAILABLE` | `UH` |
/// | `Unresolved` | [`Unresolved`](crate::client::Unresolved) | `unresolved` | 503 | `UNAVAILABLE` | `DF` |
/// | `IdentityMismatch` | a [`ConnectError`](crate::client::ConnectError) whose peer proved another SPIFFE ID, or none was expected | `identity_mismatch` | 502 | `UNAVAILABLE` | `UF` |
/// | `Connect` | any other [`ConnectError`](crate::client::ConnectError), or hyper's connect error | `connect` | 502 | `UNAVAILABLE` | `UF` |
/// | `Timeout` | [`RouteTimeout`](crate::client::deadline::RouteTimeout), [`PerTryTimeout`](crate::client::deadline::PerTryTimeout), tokio's `Elapsed` | `timeout` | 504 | `DEADLINE_EXCEEDED` | `UT` |
/// | `Overloaded` | [`Overloaded`](crate::client::shed::Overloaded) | `overloaded` | 503 | `UNAVAILABLE` | `UO` |
/// | `InjectedFault` | [`InjectedFault`](crate::client::fault::InjectedFault) | `injected_fault` | the fault's HTTP status; 200 for a gRPC status (a trailers-only answer) | the fault's gRPC status, else gRPC's mapping of its HTTP status ([`grpc::code_from_http`]) | `FI` |
/// | `Transport` | anything else: the connection or stream failed once open | `transport` | 502 | `UNAVAILABLE` (mesh-tonic reads an HTTP/2 reset's reason, and says `UNKNOWN` for an error that is no transport failure at all) | `UC` |
///
/// The classifier ([`classify::error_of`](crate::classify::error_of)) makes `Connect` and
/// `IdentityMismatch` a connect failure, `Timeout` a timeout and every other kind a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No route of the destination matches the request.
    NoRoute,
    /// The matched route does not forward (a redirect, a direct response: what a gRPC client does
    /// not perform).
    UnsupportedRoute,
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

/// One row of the table: what each reader makes of one kind.
struct Row {
    name: &'static str,
    http: StatusCode,
    grpc: u16,
    flag: &'static str,
}

impl ErrorKind {
    /// The table (see the type's docs).
    const fn row(self) -> Row {
        use grpc::code::{DEADLINE_EXCEEDED, FAILED_PRECONDITION, UNAVAILABLE, UNIMPLEMENTED};
        const fn row(name: &'static str, http: StatusCode, grpc: u16, flag: &'static str) -> Row {
            Row { name, http, grpc, flag }
        }
        match self {
            Self::NoRoute => row("no_route", StatusCode::NOT_FOUND, UNIMPLEMENTED, "NR"),
            Self::UnsupportedRoute => row("unsupported_route", StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, "NR"),
            Self::UnknownSubset => row("unknown_subset", StatusCode::BAD_REQUEST, FAILED_PRECONDITION, "NC"),
            Self::NoEndpoints => row("no_endpoints", StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, "UH"),
            Self::Unresolved => row("unresolved", StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, "DF"),
            Self::IdentityMismatch => row("identity_mismatch", StatusCode::BAD_GATEWAY, UNAVAILABLE, "UF"),
            Self::Connect => row("connect", StatusCode::BAD_GATEWAY, UNAVAILABLE, "UF"),
            Self::Timeout => row("timeout", StatusCode::GATEWAY_TIMEOUT, DEADLINE_EXCEEDED, "UT"),
            Self::Overloaded => row("overloaded", StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, "UO"),
            // The fault's own status, when the error is at hand (`status_of`, `grpc_code_of`).
            Self::InjectedFault => row("injected_fault", StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE, "FI"),
            Self::Transport => row("transport", StatusCode::BAD_GATEWAY, UNAVAILABLE, "UC"),
        }
    }

    /// A short, stable name: the `x-mesh-error` header's value and the `error.type` of spans.
    pub fn as_str(self) -> &'static str {
        self.row().name
    }

    /// The HTTP status mesh answers with for this kind ([`status_of`] also reads an injected
    /// fault's own status; this gives 503 for one).
    pub fn http_status(self) -> StatusCode {
        self.row().http
    }

    /// The gRPC status code a gRPC caller sees for this kind ([`grpc_code_of`] also reads an
    /// injected fault's own status; this gives `UNAVAILABLE` for one).
    pub fn grpc_code(self) -> u16 {
        self.row().grpc
    }

    /// Envoy's response flag for a request that failed with this kind (`UH`, `UF`, `UT`, ...), as
    /// Istio's telemetry reports it.
    pub fn response_flag(self) -> &'static str {
        self.row().flag
    }

    /// Sorts any error of the client stack's layers: the kind of the first
    /// [`ClientError`](super::ClientError) or of mesh's own errors in its source chain, else
    /// [`Connect`](Self::Connect) when hyper says the connection failed, else
    /// [`Transport`](Self::Transport).
    pub fn of(error: &(dyn Error + 'static)) -> Self {
        for e in chain(error) {
            if let Some(client) = e.downcast_ref::<super::ClientError>() {
                return client.kind();
            }
            if let Some(kind) = own_kind(e) {
                return kind;
            }
            if e.is::<tokio::time::error::Elapsed>() {
                return Self::Timeout;
            }
        }
        // hyper-util's own wrapper says "connect" but not why; mesh's errors beneath it say more.
        if chain(error).any(|e| e.downcast_ref::<hyper_util::client::legacy::Error>().is_some_and(|e| e.is_connect())) {
            return Self::Connect;
        }
        Self::Transport
    }
}

/// The kind of one of mesh's own errors (not looking at its sources): the table's "error in the
/// chain" column.
fn own_kind(e: &(dyn Error + 'static)) -> Option<ErrorKind> {
    Some(if e.is::<NoRoute>() {
        ErrorKind::NoRoute
    } else if e.is::<UnsupportedRoute>() {
        ErrorKind::UnsupportedRoute
    } else if e.is::<UnknownSubset>() {
        ErrorKind::UnknownSubset
    } else if e.is::<NoEndpoints>() {
        ErrorKind::NoEndpoints
    } else if e.is::<Unresolved>() {
        ErrorKind::Unresolved
    } else if let Some(connect) = e.downcast_ref::<ConnectError>() {
        if connect.peer_rejected().is_some() || connect.is_missing_identity() {
            ErrorKind::IdentityMismatch
        } else {
            ErrorKind::Connect
        }
    } else if e.is::<RouteTimeout>() || e.is::<PerTryTimeout>() {
        ErrorKind::Timeout
    } else if e.is::<Overloaded>() {
        ErrorKind::Overloaded
    } else if e.is::<InjectedFault>() {
        ErrorKind::InjectedFault
    } else {
        return None;
    })
}

/// The HTTP status mesh answers with for `error`, of `kind`: the table's, or for an injected
/// fault the status its policy names.
pub fn status_of(kind: ErrorKind, error: &(dyn Error + 'static)) -> StatusCode {
    match (kind, injected(error)) {
        (ErrorKind::InjectedFault, Some(fault)) => fault.status(),
        _ => kind.http_status(),
    }
}

/// The gRPC status code a gRPC caller sees for `error`, of `kind`: the table's, or for an
/// injected fault the gRPC status its policy names, else gRPC's mapping of its HTTP status.
pub fn grpc_code_of(kind: ErrorKind, error: &(dyn Error + 'static)) -> u16 {
    match (kind, injected(error)) {
        (ErrorKind::InjectedFault, Some(fault)) => {
            fault.grpc_status().unwrap_or_else(|| grpc::code_from_http(fault.status()))
        }
        _ => kind.grpc_code(),
    }
}

fn injected<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a InjectedFault> {
    chain(error).find_map(|e| e.downcast_ref::<InjectedFault>())
}

/// What an error says first: the first of mesh's own errors in the chain (their messages name the
/// cause), else the deepest one (hyper's wrappers say only "client error (Connect)"), with the
/// outermost added for a transport failure, whose own words rarely say which layer it came from.
pub(super) fn describe(error: &(dyn Error + 'static), kind: ErrorKind) -> String {
    if let Some(own) = chain(error).find(|e| own_kind(*e).is_some()) {
        return own.to_string();
    }
    let deepest = chain(error).last().unwrap_or(error);
    if kind == ErrorKind::Transport && !std::ptr::addr_eq(deepest, error) {
        format!("{deepest} ({error})")
    } else {
        deepest.to_string()
    }
}

fn chain<'a>(error: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(error), |e| (*e).source())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const ALL: [ErrorKind; 11] = [
        ErrorKind::NoRoute,
        ErrorKind::UnsupportedRoute,
        ErrorKind::UnknownSubset,
        ErrorKind::NoEndpoints,
        ErrorKind::Unresolved,
        ErrorKind::IdentityMismatch,
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Overloaded,
        ErrorKind::InjectedFault,
        ErrorKind::Transport,
    ];

    #[test]
    fn every_kind_has_its_own_name_and_a_status_that_fails() {
        let names: std::collections::HashSet<_> = ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ALL.len(), "two kinds share a name");
        for kind in ALL {
            assert!(kind.http_status().as_u16() >= 400, "{kind:?}");
            assert_ne!(kind.grpc_code(), grpc::code::OK, "{kind:?}");
            assert_ne!(kind.response_flag(), "-", "{kind:?}");
        }
    }

    #[test]
    fn the_error_decides_what_its_kind_leaves_open() {
        let fault = InjectedFault { status: mesh_core::policy::AbortStatus::Http(403) };
        assert_eq!(ErrorKind::of(&fault), ErrorKind::InjectedFault);
        assert_eq!(status_of(ErrorKind::InjectedFault, &fault), StatusCode::FORBIDDEN);
        assert_eq!(grpc_code_of(ErrorKind::InjectedFault, &fault), grpc::code::PERMISSION_DENIED);
        let grpc_fault = InjectedFault { status: mesh_core::policy::AbortStatus::Grpc(8) };
        assert_eq!(status_of(ErrorKind::InjectedFault, &grpc_fault), StatusCode::OK, "a trailers-only answer");
        assert_eq!(grpc_code_of(ErrorKind::InjectedFault, &grpc_fault), grpc::code::RESOURCE_EXHAUSTED);
        let timeout = RouteTimeout(Duration::from_millis(5));
        assert_eq!(ErrorKind::of(&timeout), ErrorKind::Timeout);
        assert_eq!(status_of(ErrorKind::Timeout, &timeout), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(grpc_code_of(ErrorKind::Timeout, &timeout), grpc::code::DEADLINE_EXCEEDED);
        let other = std::io::Error::other("reset by peer");
        assert_eq!(ErrorKind::of(&other), ErrorKind::Transport);
        assert_eq!(describe(&other, ErrorKind::Transport), "reset by peer");
    }
}
