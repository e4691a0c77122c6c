//! The one place mesh's errors become gRPC statuses.

use std::error::Error as StdError;

use mesh_tower::{
    BoxError,
    client::{ClientError, ErrorKind, grpc_code_of},
};
use tonic::{Code, Status};

/// The [`Status`] a gRPC caller sees for an error of the mesh client stack.
///
/// | error | code |
/// |---|---|
/// | a `Status` already (anywhere in the source chain) | as is |
/// | one of mesh's own errors ([`NoRoute`](mesh_tower::client::NoRoute), [`RouteTimeout`](mesh_tower::client::deadline::RouteTimeout), [`ConnectError`](mesh_tower::client::ConnectError), ...) | its [`ErrorKind`]'s, from the one table there: `UNIMPLEMENTED` for no route, `FAILED_PRECONDITION` for an unknown subset, `DEADLINE_EXCEEDED` for a timeout, `UNAVAILABLE` for no endpoints, no snapshot, a refused or mistrusted connection and a shed call (as gRPC's circuit breaking, gRFC A32), an injected fault's own gRPC status, or its HTTP status as gRPC maps HTTP statuses; `UNAVAILABLE` for a route that does not forward ([`UnsupportedRoute`](mesh_tower::client::UnsupportedRoute), as gRPC) |
/// | an HTTP/2 stream reset | by its reason, as gRPC's HTTP/2 mapping says (`REFUSED_STREAM`: `UNAVAILABLE`, `CANCEL`: `CANCELLED`, …) |
/// | any other transport failure | `UNAVAILABLE` |
/// | anything else | `UNKNOWN` |
///
/// The message is the error with its causes (`wrong peer: ... but spiffe://… was expected`), so
/// it says what happened rather than only which code it maps to.
///
/// ```
/// use mesh_tonic::status_from_error;
///
/// let status = status_from_error(Box::new(mesh_tower::client::deadline::RouteTimeout(std::time::Duration::from_millis(250))));
/// assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
/// ```
pub fn status_from_error(error: BoxError) -> Status {
    let error = match error.downcast::<Status>() {
        Ok(status) => return *status,
        Err(error) => error,
    };
    let code = code_of(&*error);
    if code == Code::Unknown
        && let Some(status) = chain(&*error).find_map(|e| e.downcast_ref::<Status>())
    {
        return status.clone();
    }
    Status::new(code, describe(&*error))
}

fn chain<'a>(error: &'a (dyn StdError + 'static)) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |e| (*e).source())
}

fn code_of(error: &(dyn StdError + 'static)) -> Code {
    match ErrorKind::of(error) {
        ErrorKind::Transport => code_of_transport(error),
        kind => Code::from(i32::from(grpc_code_of(kind, error))),
    }
}

/// What failed beneath a transport failure: an HTTP/2 reset says why; an error that is no
/// transport failure at all (the kind's catch-all) is `UNKNOWN`.
fn code_of_transport(error: &(dyn StdError + 'static)) -> Code {
    for e in chain(error) {
        if let Some(h2) = e.downcast_ref::<h2::Error>()
            && let Some(reason) = h2.reason()
        {
            return code_of_h2(reason);
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            if hyper.is_canceled() {
                return Code::Cancelled;
            }
            if hyper.source().is_none_or(|s| !s.is::<h2::Error>()) {
                return Code::Unavailable;
            }
        }
        if e.is::<std::io::Error>() {
            return Code::Unavailable;
        }
    }
    if chain(error).any(|e| e.is::<hyper_util::client::legacy::Error>()) {
        return Code::Unavailable;
    }
    Code::Unknown
}

/// gRPC's mapping of an HTTP/2 `RST_STREAM` reason.
fn code_of_h2(reason: h2::Reason) -> Code {
    match reason {
        h2::Reason::REFUSED_STREAM => Code::Unavailable,
        h2::Reason::CANCEL => Code::Cancelled,
        h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
        h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
        _ => Code::Internal,
    }
}

/// The error and its causes, each said once (wrappers often repeat their source's message).
fn describe(error: &(dyn StdError + 'static)) -> String {
    // The client stack's errors already name their cause and where the call went.
    if let Some(client) = error.downcast_ref::<ClientError>() {
        return client.to_string();
    }
    let mut out = String::new();
    for e in chain(error) {
        let text = e.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_pass_through_and_resets_map_like_grpc() {
        let status = status_from_error(Box::new(Status::not_found("gone")));
        assert_eq!((status.code(), status.message()), (Code::NotFound, "gone"));
        assert_eq!(code_of_h2(h2::Reason::REFUSED_STREAM), Code::Unavailable);
        let other = status_from_error("something odd".into());
        assert_eq!((other.code(), other.message()), (Code::Unknown, "something odd"));
    }

    #[test]
    fn causes_are_said_once() {
        let io = std::io::Error::other("connection reset");
        let status = status_from_error(Box::new(io));
        assert_eq!((status.code(), status.message()), (Code::Unavailable, "connection reset"));
    }
}
