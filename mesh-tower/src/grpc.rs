//! Everything mesh-tower knows about gRPC, in one place.
//!
//! mesh-tower recognises gRPC by its `content-type`, reads and writes gRPC's few headers
//! (`grpc-status`, `grpc-message`, `grpc-timeout`, `grpc-previous-rpc-attempts`,
//! `grpc-retry-pushback-ms`) by hand, and so never depends on a gRPC library: the tonic glue lives
//! in `mesh-tonic`.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Response};

/// `grpc-status`: the call's status code, in trailers (or in the headers of a trailers-only
/// response).
pub const STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// `grpc-message`: the status message, percent-encoded.
pub const MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// `grpc-timeout`: the time the caller waits, as digits and a unit.
pub const TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// `grpc-previous-rpc-attempts`: on a retried call, how many attempts came before it.
pub const PREVIOUS_ATTEMPTS: HeaderName = HeaderName::from_static("grpc-previous-rpc-attempts");
/// `grpc-retry-pushback-ms`: a server's request to wait before the next retry, or not to retry.
pub const RETRY_PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// gRPC status codes mesh-tower itself reads or writes.
pub mod code {
    /// `OK`.
    pub const OK: u16 = 0;
    /// `CANCELLED`.
    pub const CANCELLED: u16 = 1;
    /// `UNKNOWN`.
    pub const UNKNOWN: u16 = 2;
    /// `DEADLINE_EXCEEDED`.
    pub const DEADLINE_EXCEEDED: u16 = 4;
    /// `PERMISSION_DENIED`.
    pub const PERMISSION_DENIED: u16 = 7;
    /// `RESOURCE_EXHAUSTED`.
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    /// `FAILED_PRECONDITION`.
    pub const FAILED_PRECONDITION: u16 = 9;
    /// `UNIMPLEMENTED`.
    pub const UNIMPLEMENTED: u16 = 12;
    /// `INTERNAL`.
    pub const INTERNAL: u16 = 13;
    /// `UNAVAILABLE`.
    pub const UNAVAILABLE: u16 = 14;
    /// `DATA_LOSS`.
    pub const DATA_LOSS: u16 = 15;
    /// `UNAUTHENTICATED`.
    pub const UNAUTHENTICATED: u16 = 16;
}

/// The gRPC status a caller reads from an HTTP status that did not come from a gRPC server, as
/// gRPC's HTTP-to-gRPC status mapping says: 400 `INTERNAL`, 401 `UNAUTHENTICATED`, 403
/// `PERMISSION_DENIED`, 404 `UNIMPLEMENTED`, 429 and 502-504 `UNAVAILABLE`, anything else
/// `UNKNOWN`.
///
/// ```
/// use mesh_tower::grpc::{code, code_from_http};
///
/// assert_eq!(code_from_http(http::StatusCode::SERVICE_UNAVAILABLE), code::UNAVAILABLE);
/// assert_eq!(code_from_http(http::StatusCode::IM_A_TEAPOT), code::UNKNOWN);
/// ```
pub fn code_from_http(status: http::StatusCode) -> u16 {
    match status.as_u16() {
        400 => code::INTERNAL,
        401 => code::UNAUTHENTICATED,
        403 => code::PERMISSION_DENIED,
        404 => code::UNIMPLEMENTED,
        429 | 502..=504 => code::UNAVAILABLE,
        _ => code::UNKNOWN,
    }
}

/// Whether a message is gRPC: `content-type: application/grpc`, `application/grpc+proto`, ...
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/grpc") && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The gRPC status code in `headers` (a trailers-only response's headers, or trailers).
pub fn status(headers: &HeaderMap) -> Option<u16> {
    let value = headers.get(STATUS)?.as_bytes();
    // At most three digits: anything else is not a status code.
    if value.is_empty() || value.len() > 3 {
        return None;
    }
    value.iter().try_fold(0u16, |n, b| b.is_ascii_digit().then(|| n * 10 + u16::from(b - b'0')))
}

/// The canonical name of a gRPC status code (`UNAVAILABLE`), for metrics labels and logs.
pub fn code_name(code: u16) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(usize::from(code)).copied().unwrap_or("UNKNOWN")
}

/// Whether a gRPC status blames the server (or the path to it) rather than the caller: what
/// outlier detection, golden signals and server spans count as a failure. `UNKNOWN`,
/// `DEADLINE_EXCEEDED`, `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE` and `DATA_LOSS`, as in
/// OpenTelemetry's semantic conventions for gRPC servers.
pub fn is_server_failure(code: u16) -> bool {
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

/// Parses `grpc-timeout` (at most 8 digits and a unit: `H`, `M`, `S`, `m`, `u`, `n`).
pub(crate) fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let value = value.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok().filter(|_| digits.len() <= 8)?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `grpc-timeout` for `remaining`, in milliseconds (at most 8 digits, as gRPC requires).
pub(crate) fn timeout_value(remaining: Duration) -> HeaderValue {
    let ms = remaining.as_millis().min(99_999_999) as u64;
    let mut buf = itoa_buf(ms);
    buf.push('m');
    HeaderValue::from_str(&buf).unwrap_or_else(|_| HeaderValue::from_static("0m"))
}

fn itoa_buf(n: u64) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(10);
    let _ = write!(s, "{n}");
    s
}

/// A trailers-only gRPC response: HTTP 200 with the status in the headers and an empty body, the
/// way a gRPC server answers a call it fails before sending any message.
pub(crate) fn status_response<B: Default>(code: u16, message: &str) -> Response<B> {
    let mut response = Response::new(B::default());
    let headers = response.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    write_status(headers, code, message);
    response
}

/// The trailers that end a call with `code` and `message`.
pub(crate) fn status_trailers(code: u16, message: &str) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    write_status(&mut trailers, code, message);
    trailers
}

fn write_status(headers: &mut HeaderMap, code: u16, message: &str) {
    headers.insert(STATUS, HeaderValue::from(code));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(MESSAGE, value);
    }
}

/// gRPC's encoding of `grpc-message`: printable ASCII except `%` as is, every other byte `%XX`.
fn percent_encode(message: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;

    #[test]
    fn grpc_is_known_by_its_content_type() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        for (value, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            headers.insert(http::header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(is_grpc(&headers), grpc, "{value}");
        }
    }

    #[test]
    fn statuses_parse_strictly() {
        let mut headers = HeaderMap::new();
        for (value, want) in
            [("0", Some(0)), ("14", Some(14)), ("13", Some(13)), ("x", None), ("1234", None), ("", None)]
        {
            headers.insert(STATUS, value.parse().unwrap());
            assert_eq!(status(&headers), want, "{value:?}");
        }
    }

    #[test]
    fn timeouts_parse_and_format() {
        let parse = |v: &str| parse_timeout(&v.parse().unwrap());
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("123456789m"), None, "more than 8 digits is invalid gRPC");
        assert_eq!(parse("5x"), None);
        assert_eq!(timeout_value(Duration::from_micros(99_700)), "99m");
    }

    #[test]
    fn trailers_only_status_with_an_encoded_message() {
        let response: Response<()> = status_response(7, "100% denied: caf\u{e9}");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "7");
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["grpc-message"], "100%25 denied: caf%C3%A9");
    }
}
