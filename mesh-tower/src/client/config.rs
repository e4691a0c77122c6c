use std::time::Duration;

/// How a [`MeshClient`](super::MeshClient) talks to endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// HTTP/1.1 or HTTP/2 to every endpoint.
    pub protocol: Protocol,
    /// How long opening a connection may take; with mTLS, the TCP connect and the handshake each
    /// get this long.
    pub connect_timeout: Duration,
    /// How long an idle connection is kept: an HTTP/1.1 connection on its endpoint's idle list,
    /// or an endpoint's HTTP/2 connection no request used for this long (either closed between
    /// one and 1.25 times this after its last request, once the requests still open on it are
    /// done).
    pub pool_idle_timeout: Duration,
    /// TCP keepalive: after this long without traffic, the kernel probes the peer (every
    /// [`tcp_keepalive_interval`](Self::tcp_keepalive_interval), 3 probes), so a pooled
    /// connection to a host that vanished is closed instead of kept. `None` turns probes off.
    pub tcp_keepalive: Option<Duration>,
    /// The time between two TCP keepalive probes.
    pub tcp_keepalive_interval: Duration,
    /// `TCP_USER_TIMEOUT` (Linux): a connection whose sent data stays unacknowledged this long is
    /// closed, so a request written to a blackholed peer fails instead of waiting out the
    /// kernel's retransmissions (about 15 minutes). Only unacknowledged data counts, never a
    /// slow answer. `None` leaves the kernel's default.
    pub tcp_user_timeout: Option<Duration>,
    /// HTTP/2 keepalive: while requests are open on a connection, a PING is sent after this long
    /// without frames, and the connection (with its requests) fails when the answer does not come
    /// within [`http2_keepalive_timeout`](Self::http2_keepalive_timeout). Bounds a request
    /// whose peer went silent when the route has no timeout. `None` turns pings off.
    pub http2_keepalive_interval: Option<Duration>,
    /// How long an HTTP/2 keepalive PING may wait for its answer.
    pub http2_keepalive_timeout: Duration,
    /// Idle HTTP/1.1 connections kept per endpoint (over HTTP/2 an endpoint has one connection).
    pub pool_max_idle_per_endpoint: usize,
    /// How long a request waits for the destination's first snapshot before failing with
    /// [`Unresolved`](super::Unresolved).
    pub resolve_timeout: Duration,
    /// The request header that pins a request to a named subset, whatever the route's weights
    /// (default `x-mesh-subset`; `None` turns overrides off).
    pub subset_header: Option<http::HeaderName>,
    /// Cohort pinning across hops (off by default): with a header name, each request is marked
    /// with the subset it went to, and requests made inside a cohort (see [`crate::context`]) are
    /// pinned to the destination's subset of the same name where one exists.
    pub cohort_header: Option<http::HeaderName>,
    /// The latency a new endpoint is assumed to have until it answers (P2C).
    pub default_rtt: Duration,
    /// Seeds the balancer's random choices; fixed in tests for repeatable runs.
    pub seed: Option<u64>,
    /// The largest request body copied for a mirror; larger bodies are not mirrored.
    pub mirror_body_limit: usize,
    /// Mirrored copies in flight at once; beyond this, copies are skipped.
    pub max_mirrors_in_flight: usize,
    /// How long a mirrored copy may take before it is abandoned.
    pub mirror_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            protocol: Protocol::Http1,
            connect_timeout: Duration::from_secs(3),
            pool_idle_timeout: Duration::from_secs(90),
            tcp_keepalive: Some(Duration::from_secs(30)),
            tcp_keepalive_interval: Duration::from_secs(10),
            tcp_user_timeout: Some(Duration::from_secs(30)),
            http2_keepalive_interval: Some(Duration::from_secs(30)),
            http2_keepalive_timeout: Duration::from_secs(10),
            pool_max_idle_per_endpoint: usize::MAX,
            resolve_timeout: Duration::from_secs(5),
            subset_header: Some(http::HeaderName::from_static("x-mesh-subset")),
            cohort_header: None,
            default_rtt: Duration::from_millis(5),
            seed: None,
            mirror_body_limit: 64 * 1024,
            max_mirrors_in_flight: 256,
            mirror_timeout: Duration::from_secs(10),
        }
    }
}

/// The HTTP version spoken to endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive: one request at a time per connection.
    #[default]
    Http1,
    /// HTTP/2 (with prior knowledge on plaintext): many concurrent streams per connection.
    Http2,
}
