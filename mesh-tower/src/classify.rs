//! The one classifier: what an attempt or a request came to, for every layer that judges it.
//!
//! Retries, outlier detection, the per-attempt and per-request golden signals, request metrics
//! and spans all ask this module, so they never disagree on what failed. As in tower-http's
//! `classify`, a response is judged from its head when it can be ([`ClassifyHead::Ready`]), and
//! at the end of its body when the verdict is in the trailers ([`ClassifyHead::RequiresEos`]: a
//! gRPC response whose `grpc-status` is not in the headers).
//!
//! # What counts as a failure, for each purpose
//!
//! | outcome | [`Class`] | retried when `retry_on` has | outlier detection, golden signals, server span | client span | metrics `status_class` |
//! |---|---|---|---|---|---|
//! | 1xx-3xx, gRPC `OK` | `Success` | never | success | ok | `2xx`… |
//! | 4xx | `Error` | its status (`429`…) | success: the caller's fault | error | `4xx` |
//! | 5xx | `Error` | `server_error`; 502-504 also `gateway_error`; its status | **failure** | error | `5xx` |
//! | gRPC `UNKNOWN`, `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS` (headers or trailers) | `Error` | `UNAVAILABLE`: `grpc_unavailable`; `DEADLINE_EXCEEDED`: `grpc_deadline_exceeded`; `INTERNAL`: `grpc_internal` | **failure** | error | the HTTP status's (`2xx`) |
//! | other gRPC codes (`CANCELLED`, `RESOURCE_EXHAUSTED`, `INVALID_ARGUMENT`, …) | `Error` | `grpc_cancelled`, `grpc_resource_exhausted` | success: the caller's fault or a limit | error | the HTTP status's |
//! | a gRPC response whose body ends without `grpc-status` | `Error` (`INTERNAL`) | never (already streaming) | **failure** | error | the HTTP status's |
//! | connection could not be opened (refused, TLS, wrong SPIFFE ID) | `Transport(Connect)` | `connect_failure` | **failure** | error | `error` |
//! | per-try or route timeout | `Transport(Timeout)` | `per_try_timeout` (per-try only) | **failure** | error | `error` |
//! | reset or other transport failure, body error | `Transport(Reset)` | `reset` | **failure** | error | `error` |
//! | the caller stopped waiting before an outcome | `Cancelled` | never | not a failure: outlier detection ignores it; the golden signals count it as a request that did not fail | unset | `error` |
//!
//! Mesh's own refusals (no route, no endpoints, load shed, injected faults) never reach an
//! endpoint; they are requests that failed, never attempts.

use http::{HeaderMap, StatusCode};
use mesh_core::policy::RetryOn;

use crate::{BoxError, failure::ErrorKind, grpc};

/// What one attempt or request came to. See the [module docs](self) for the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Class {
    /// It worked.
    Success,
    /// An answer that reports a failure: an HTTP status of 400 or more, or a gRPC status other
    /// than `OK`.
    Error {
        /// The HTTP status.
        status: StatusCode,
        /// The gRPC status code, for gRPC responses.
        grpc: Option<u16>,
    },
    /// No answer: the transport failed.
    Transport(TransportFailure),
    /// The caller gave up before there was an outcome.
    Cancelled,
}

/// How a transport failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportFailure {
    /// The connection could not be opened: refused, unreachable, the TLS handshake failed, or the
    /// peer proved another identity.
    Connect,
    /// A per-try timeout or the request's deadline passed.
    Timeout,
    /// The connection or stream was reset, or failed in another way, after it was open.
    Reset,
}

/// The verdict on a response head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassifyHead {
    /// The head says it all.
    Ready(Class),
    /// A gRPC response whose status comes in the trailers: classify it with [`trailers`] at the
    /// end of the body.
    RequiresEos {
        /// The HTTP status of the head.
        status: StatusCode,
    },
}

impl Class {
    /// Whether the server, or the path to it, failed: what outlier detection, the golden signals
    /// and server spans count as a failure. A 4xx is the caller's fault; a cancellation is
    /// nobody's.
    pub fn is_server_failure(&self) -> bool {
        match *self {
            Self::Success | Self::Cancelled => false,
            Self::Error { status, grpc } => status.is_server_error() || grpc.is_some_and(grpc::is_server_failure),
            Self::Transport(_) => true,
        }
    }

    /// Whether the request failed from the caller's point of view (what a client span reports):
    /// an answer that reports a failure, or no answer. A cancellation is the caller's own doing.
    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Error { .. } | Self::Transport(_))
    }

    /// The first of `retry_on` that makes this outcome worth retrying, if any.
    pub fn retryable(&self, retry_on: &[RetryOn]) -> Option<RetryOn> {
        retry_on.iter().copied().find(|on| match (*self, on) {
            (Self::Error { status, .. }, RetryOn::ServerError) => status.is_server_error(),
            (Self::Error { status, .. }, RetryOn::GatewayError) => matches!(status.as_u16(), 502..=504),
            (Self::Error { status, .. }, RetryOn::Status(code)) => status.as_u16() == *code,
            (Self::Error { grpc, .. }, RetryOn::GrpcUnavailable) => grpc == Some(grpc::code::UNAVAILABLE),
            (Self::Error { grpc, .. }, RetryOn::GrpcResourceExhausted) => grpc == Some(grpc::code::RESOURCE_EXHAUSTED),
            (Self::Error { grpc, .. }, RetryOn::GrpcCancelled) => grpc == Some(grpc::code::CANCELLED),
            (Self::Error { grpc, .. }, RetryOn::GrpcDeadlineExceeded) => grpc == Some(grpc::code::DEADLINE_EXCEEDED),
            (Self::Error { grpc, .. }, RetryOn::GrpcInternal) => grpc == Some(grpc::code::INTERNAL),
            (Self::Transport(TransportFailure::Connect), RetryOn::ConnectFailure) => true,
            (Self::Transport(TransportFailure::Reset), RetryOn::Reset) => true,
            (Self::Transport(TransportFailure::Timeout), RetryOn::PerTryTimeout) => true,
            _ => false,
        })
    }
}

/// Classifies a response head: its status, and a `grpc-status` in its headers.
pub fn head(status: StatusCode, headers: &HeaderMap) -> ClassifyHead {
    let grpc = grpc::status(headers);
    if grpc.is_none() && status.is_success() && grpc::is_grpc(headers) {
        return ClassifyHead::RequiresEos { status };
    }
    ClassifyHead::Ready(answered(status, grpc))
}

/// Classifies a gRPC response at the end of its body, by the `grpc-status` of its trailers. A body
/// that ends without one is `INTERNAL`, as gRPC clients report it.
pub fn trailers(status: StatusCode, trailers: Option<&HeaderMap>) -> Class {
    let grpc = trailers.and_then(grpc::status).unwrap_or(grpc::code::INTERNAL);
    answered(status, Some(grpc))
}

fn answered(status: StatusCode, grpc: Option<u16>) -> Class {
    if status.as_u16() >= 400 || grpc.is_some_and(|code| code != grpc::code::OK) {
        Class::Error { status, grpc }
    } else {
        Class::Success
    }
}

/// Classifies an error that came instead of a response.
pub fn error(error: &BoxError) -> Class {
    error_of(error.as_ref())
}

/// [`error`], for any error type.
pub fn error_of(error: &(dyn std::error::Error + 'static)) -> Class {
    // The error's kind, from the one table of failures; mesh's own refusals never reached an
    // endpoint, so they count as neither a connect failure nor a timeout.
    Class::Transport(match ErrorKind::of(error) {
        ErrorKind::Connect | ErrorKind::IdentityMismatch => TransportFailure::Connect,
        ErrorKind::Timeout => TransportFailure::Timeout,
        ErrorKind::NoRoute
        | ErrorKind::UnsupportedRoute
        | ErrorKind::UnknownSubset
        | ErrorKind::NoEndpoints
        | ErrorKind::Unresolved
        | ErrorKind::Overloaded
        | ErrorKind::InjectedFault
        | ErrorKind::Transport => TransportFailure::Reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc_headers(code: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, "application/grpc".parse().unwrap());
        if let Some(code) = code {
            headers.insert("grpc-status", code.parse().unwrap());
        }
        headers
    }

    #[test]
    fn statuses_and_what_each_purpose_makes_of_them() {
        let on = [RetryOn::GatewayError, RetryOn::GrpcUnavailable, RetryOn::Status(429)];
        let empty = HeaderMap::new();
        let class = |status: u16| match head(StatusCode::from_u16(status).unwrap(), &empty) {
            ClassifyHead::Ready(class) => class,
            other => panic!("{other:?}"),
        };
        assert_eq!(class(200), Class::Success);
        assert_eq!(class(503).retryable(&on), Some(RetryOn::GatewayError));
        assert!(class(503).is_server_failure());
        assert_eq!(class(500).retryable(&on), None);
        assert_eq!(class(429).retryable(&on), Some(RetryOn::Status(429)));
        assert!(!class(429).is_server_failure(), "a 4xx is the caller's fault");
        assert!(class(429).is_failure(), "but a failed request for the caller");
    }

    #[test]
    fn grpc_status_in_headers_or_trailers_is_judged_the_same() {
        let on = [RetryOn::GrpcUnavailable];
        for (code, server_failure, retry) in [("14", true, true), ("13", true, false), ("3", false, false)] {
            let ClassifyHead::Ready(in_headers) = head(StatusCode::OK, &grpc_headers(Some(code))) else {
                panic!("a trailers-only response is classified from its head");
            };
            let ClassifyHead::RequiresEos { status } = head(StatusCode::OK, &grpc_headers(None)) else {
                panic!("a streaming response waits for its trailers");
            };
            let mut t = HeaderMap::new();
            t.insert("grpc-status", code.parse().unwrap());
            let in_trailers = trailers(status, Some(&t));
            assert_eq!(in_headers, in_trailers, "{code}");
            assert_eq!(in_trailers.is_server_failure(), server_failure, "{code}");
            assert_eq!(in_trailers.retryable(&on).is_some(), retry, "{code}");
        }
        assert_eq!(trailers(StatusCode::OK, None), Class::Error { status: StatusCode::OK, grpc: Some(13) });
        let ok = head(StatusCode::OK, &grpc_headers(Some("0")));
        assert_eq!(ok, ClassifyHead::Ready(Class::Success));
    }

    #[test]
    fn transport_errors() {
        let timeout: BoxError = Box::new(crate::failure::PerTryTimeout(std::time::Duration::from_millis(5)));
        assert_eq!(error(&timeout), Class::Transport(TransportFailure::Timeout));
        assert_eq!(error(&timeout).retryable(&[RetryOn::PerTryTimeout]), Some(RetryOn::PerTryTimeout));
        let reset: BoxError = "connection reset".into();
        assert_eq!(error(&reset), Class::Transport(TransportFailure::Reset));
        assert!(Class::Cancelled.retryable(&[RetryOn::Reset, RetryOn::PerTryTimeout]).is_none());
        assert!(!Class::Cancelled.is_server_failure());
    }
}
