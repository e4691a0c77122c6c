//! One classifier for every layer that judges an outcome: success, a failure worth retrying, or a
//! failure that is not.
//!
//! It reads the HTTP status, a `grpc-status` in the response headers (trailers-only gRPC
//! responses; a status in trailers arrives after the response is handed on, too late for a
//! retry), and transport errors (connect refused, reset, timeout). What counts as retryable comes
//! from the route's [`RetryOn`] list.

use http::{HeaderMap, StatusCode};
use mesh_core::policy::RetryOn;

use crate::{BoxError, client::ConnectError};

/// The verdict on one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Success,
    /// It failed in a way the policy retries.
    Retryable(RetryOn),
    /// It failed in a way the policy does not retry.
    Failure,
}

/// The gRPC status code in `headers` (a trailers-only response's headers, or trailers).
pub fn grpc_status(headers: &HeaderMap) -> Option<u8> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u8>().ok())
}

/// Classifies a response by its status and headers.
pub fn response(status: StatusCode, headers: &HeaderMap, retry_on: &[RetryOn]) -> Outcome {
    let grpc = grpc_status(headers);
    let failed = status.is_server_error() || status.is_client_error() || grpc.is_some_and(|code| code != 0);
    if !failed {
        return Outcome::Success;
    }
    let retryable = retry_on.iter().copied().find(|on| match on {
        RetryOn::ServerError => status.is_server_error(),
        RetryOn::GatewayError => matches!(status.as_u16(), 502..=504),
        RetryOn::Status(code) => status.as_u16() == *code,
        RetryOn::GrpcUnavailable => grpc == Some(14),
        RetryOn::GrpcResourceExhausted => grpc == Some(8),
        RetryOn::GrpcCancelled => grpc == Some(1),
        _ => false,
    });
    retryable.map_or(Outcome::Failure, Outcome::Retryable)
}

/// Classifies a transport error.
pub fn error(error: &BoxError, retry_on: &[RetryOn]) -> Outcome {
    let kind = if is_connect(error) {
        RetryOn::ConnectFailure
    } else if is_timeout(error) {
        RetryOn::PerTryTimeout
    } else {
        RetryOn::Reset
    };
    if retry_on.contains(&kind) { Outcome::Retryable(kind) } else { Outcome::Failure }
}

fn sources(error: &BoxError) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error.as_ref() as &(dyn std::error::Error + 'static)), |e| e.source())
}

fn is_connect(error: &BoxError) -> bool {
    sources(error).any(|e| {
        e.downcast_ref::<ConnectError>().is_some()
            || e.downcast_ref::<hyper_util::client::legacy::Error>().is_some_and(|e| e.is_connect())
    })
}

fn is_timeout(error: &BoxError) -> bool {
    sources(error).any(|e| e.downcast_ref::<tokio::time::error::Elapsed>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_grpc_codes() {
        let on = [RetryOn::GatewayError, RetryOn::GrpcUnavailable, RetryOn::Status(429)];
        let empty = HeaderMap::new();
        assert_eq!(response(StatusCode::OK, &empty, &on), Outcome::Success);
        assert_eq!(response(StatusCode::SERVICE_UNAVAILABLE, &empty, &on), Outcome::Retryable(RetryOn::GatewayError));
        assert_eq!(response(StatusCode::INTERNAL_SERVER_ERROR, &empty, &on), Outcome::Failure);
        assert_eq!(response(StatusCode::TOO_MANY_REQUESTS, &empty, &on), Outcome::Retryable(RetryOn::Status(429)));
        let mut grpc = HeaderMap::new();
        grpc.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(response(StatusCode::OK, &grpc, &on), Outcome::Retryable(RetryOn::GrpcUnavailable));
        grpc.insert("grpc-status", "3".parse().unwrap());
        assert_eq!(response(StatusCode::OK, &grpc, &on), Outcome::Failure);
        grpc.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(response(StatusCode::OK, &grpc, &on), Outcome::Success);
    }
}
