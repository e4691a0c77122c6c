//! The `grpc.status` of a call or attempt that has no `grpc-status` of its own: mesh failed it,
//! the caller gave up, or the server answered something that is not gRPC.

use http::StatusCode;

use crate::{
    failure::{ErrorKind, grpc_code_of},
    grpc::{self, code},
};

/// The code a gRPC caller sees for an error of the client stack: the one error table's
/// ([`ErrorKind::grpc_code`]), and `CANCELLED` for a stream hyper cancelled.
pub(crate) fn code_of_error(error: &(dyn std::error::Error + 'static)) -> u16 {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_canceled) {
            return code::CANCELLED;
        }
        source = e.source();
    }
    grpc_code_of(ErrorKind::of(error), error)
}

/// The code of a call that ended without one: a 200 whose stream ended without trailers is
/// `UNKNOWN` (as gRPC's clients report it), another HTTP status maps as gRPC maps it.
pub(crate) fn code_of_response(status: Option<StatusCode>) -> u16 {
    match status {
        Some(StatusCode::OK) | None => code::UNKNOWN,
        Some(status) => grpc::code_from_http(status),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::client::{NoEndpoints, deadline::RouteTimeout};

    #[test]
    fn mesh_failures_get_the_code_the_caller_sees() {
        let no_endpoints: crate::BoxError =
            Box::new(NoEndpoints { service: "a".parse().unwrap(), subset: None, version: 1 });
        assert_eq!(code_of_error(&*no_endpoints), code::UNAVAILABLE);
        let timeout: crate::BoxError = Box::new(RouteTimeout(std::time::Duration::from_millis(5)));
        assert_eq!(code_of_error(&*timeout), code::DEADLINE_EXCEEDED);
        assert_eq!(code_of_response(Some(StatusCode::NOT_FOUND)), code::UNIMPLEMENTED);
        assert_eq!(code_of_response(Some(StatusCode::SERVICE_UNAVAILABLE)), code::UNAVAILABLE);
        assert_eq!(code_of_response(Some(StatusCode::OK)), code::UNKNOWN);
    }
}
