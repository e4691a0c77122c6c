//! What one client process measured: the JSON line it prints, which the run reads back and the
//! report sums up.

use serde::{Deserialize, Serialize};

/// What one client process measured over its window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Measurement {
    /// Requests completed in the window (fixed rate: scheduled in the window and sent).
    pub(crate) requests: u64,
    /// Requests that failed in the window.
    pub(crate) errors: u64,
    /// Fixed rate: requests scheduled in the window but never sent (the path could not keep up).
    pub(crate) dropped: u64,
    /// Length of the window, seconds.
    pub(crate) seconds: f64,
    /// `requests / seconds`.
    pub(crate) rps: f64,
    /// Latency percentiles, microseconds.
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
    /// This process's CPU seconds over the window.
    pub(crate) cpu_s: f64,
    /// This process's peak RSS, KiB.
    pub(crate) peak_rss_kib: u64,
    /// The first error seen, if any.
    pub(crate) first_error: Option<String>,
    /// Idle workload: connections this process opened and held (established TCP connections
    /// to the server's ports, counted from `/proc/net/tcp`, after minus before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) idle_connections: Option<u64>,
    /// Idle workload: this process's current RSS (`VmRSS`) while holding them minus before
    /// opening them, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) idle_rss_delta_kib: Option<i64>,
}
