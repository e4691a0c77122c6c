//! The headers mesh writes for the next hop and reads from the previous one: the time the caller
//! still waits. (The client's [deadline](crate::client::deadline) writes it; the server's
//! [context](crate::context) reads it.)

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::grpc;

/// The header that carries the time the caller still waits, in milliseconds (non-gRPC requests;
/// gRPC requests use `grpc-timeout`).
pub const TIMEOUT_HEADER: HeaderName = HeaderName::from_static("x-mesh-timeout");

/// The time a request asks for in its own headers: `x-mesh-timeout` (milliseconds), else
/// `grpc-timeout`.
pub(crate) fn requested(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers.get(TIMEOUT_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()) {
        return Some(Duration::from_millis(ms));
    }
    grpc::parse_timeout(headers.get(grpc::TIMEOUT)?)
}

/// Tells the next hop how long the caller still waits: `grpc-timeout` on a gRPC request,
/// `x-mesh-timeout` otherwise, replacing what the request carried.
///
/// Both are rounded down to whole milliseconds below a second and to 10 ms above (at most 1%
/// early, never late), so requests under the same route timeout send the same value: HTTP/2's
/// header compression then sends it as one byte, and the value is formatted once per thread
/// rather than per request.
pub(crate) fn propagate(headers: &mut HeaderMap, remaining: Duration) {
    thread_local! {
        static MESH: Cached = const { std::cell::RefCell::new(None) };
        static GRPC: Cached = const { std::cell::RefCell::new(None) };
    }
    let ms = rounded_millis(remaining);
    if grpc::is_grpc(headers) {
        headers.remove(TIMEOUT_HEADER);
        let value = GRPC.with(|last| cached(last, ms, || grpc::timeout_value(Duration::from_millis(ms))));
        headers.insert(grpc::TIMEOUT, value);
    } else {
        headers.insert(TIMEOUT_HEADER, MESH.with(|last| cached(last, ms, || HeaderValue::from(ms))));
    }
}

/// The last value one thread formatted, by the milliseconds it says.
type Cached = std::cell::RefCell<Option<(u64, HeaderValue)>>;

/// `remaining` in whole milliseconds, rounded down to 10 ms from a second up (see [`propagate`]).
/// The most [`propagate`] shaves off a deadline of at most `limit`: the next hop's deadline can
/// pass this much before the caller's does.
pub(crate) fn rounding_slack(limit: Duration) -> Duration {
    Duration::from_millis(if limit >= Duration::from_secs(1) { 10 } else { 1 })
}

fn rounded_millis(remaining: Duration) -> u64 {
    let ms = remaining.as_millis().min(99_999_999) as u64;
    if ms >= 1_000 { ms - ms % 10 } else { ms }
}

/// The value for `ms`: the last one when it said the same, else `make`'s (kept for next time).
fn cached(last: &Cached, ms: u64, make: impl FnOnce() -> HeaderValue) -> HeaderValue {
    let mut last = last.borrow_mut();
    match &*last {
        Some((cached, value)) if *cached == ms => value.clone(),
        _ => {
            let value = make();
            *last = Some((ms, value.clone()));
            value
        }
    }
}

/// A header value for a small count (attempts, hops) without allocating for the common ones.
pub(crate) fn small_number(n: u32) -> HeaderValue {
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match DIGITS.get(n as usize) {
        Some(digit) => HeaderValue::from_static(digit),
        None => HeaderValue::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_timeouts() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(requested(&headers), Some(Duration::from_millis(250)));
        headers.insert(TIMEOUT_HEADER, "180".parse().unwrap());
        assert_eq!(requested(&headers), Some(Duration::from_millis(180)), "the mesh header wins");
        let mut grpc = HeaderMap::new();
        grpc.insert(http::header::CONTENT_TYPE, "application/grpc".parse().unwrap());
        grpc.insert(TIMEOUT_HEADER, "5000".parse().unwrap());
        propagate(&mut grpc, Duration::from_millis(99));
        assert_eq!(grpc["grpc-timeout"], "99m");
        assert!(!grpc.contains_key(TIMEOUT_HEADER), "gRPC carries only gRPC's header");
        let mut http = HeaderMap::new();
        propagate(&mut http, Duration::from_millis(42));
        assert_eq!(http[TIMEOUT_HEADER], "42");
        for (remaining, sent) in [(4_999_900, "4990"), (4_990_000, "4990"), (999_999, "999"), (1_000_001, "1000")] {
            propagate(&mut http, Duration::from_micros(remaining));
            assert_eq!(http[TIMEOUT_HEADER], sent, "{remaining} µs: never later than the caller's deadline");
            propagate(&mut grpc, Duration::from_micros(remaining));
            assert_eq!(grpc[grpc::TIMEOUT], format!("{sent}m"), "gRPC's deadline is rounded the same way");
        }
    }
}
