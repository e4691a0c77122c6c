//! Outlier detection: passive health checking of endpoints.
//!
//! Every response (or transport error) is recorded against the endpoint that produced it. An
//! endpoint with `consecutive_failures` failures in a row (5xx, a gRPC error status, a transport
//! error) is ejected: the balancer skips it for `base_ejection_time × n` on its n-th ejection,
//! capped at `max_ejection_time`; it returns when the time is up, and a success resets its count.
//! Never more than `max_ejection_percent` of the destination's endpoints are out at once (at least
//! one may always be ejected), so outlier detection cannot empty a service. The policy is the
//! destination's `policies.outlier_detection`, read live; without one nothing is ejected.

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicU32, AtomicU64, Ordering},
};

use mesh_core::policy::OutlierDetection;
use tokio::time::Instant;

/// One endpoint's health, kept with its load across snapshot versions.
#[derive(Debug, Default)]
pub struct Health {
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl Health {
    /// Whether the endpoint is out of rotation now.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|until| Instant::now() < until)
    }
}

/// Ejections so far, for tests and metrics.
#[derive(Debug, Default)]
pub struct OutlierStats {
    ejections: AtomicU64,
    refused: AtomicU64,
}

impl OutlierStats {
    /// Endpoints ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Ejections not made because the ejected share would have exceeded the maximum.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Records one outcome; returns whether it ejected the endpoint. `all` lists the health of every
/// endpoint of the destination, to respect the ejection cap.
pub(crate) fn record(
    health: &Health,
    failed: bool,
    policy: &OutlierDetection,
    all: &[Arc<Health>],
    stats: &OutlierStats,
) -> bool {
    if !failed {
        health.consecutive_failures.store(0, Ordering::Relaxed);
        return false;
    }
    let failures = health.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
    if failures < policy.consecutive_failures || health.is_ejected() {
        return false;
    }
    // Serialize ejections so two endpoints cannot both pass the cap check at once.
    static EJECTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = EJECTING.lock().unwrap_or_else(PoisonError::into_inner);
    let ejected = all.iter().filter(|h| h.is_ejected()).count();
    let max = ((all.len() as f64) * policy.max_ejection_percent.get() / 100.0).floor().max(1.0) as usize;
    if ejected + 1 > max {
        stats.refused.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    let n = health.ejections.fetch_add(1, Ordering::Relaxed) + 1;
    let duration = policy.base_ejection_time.saturating_mul(n).min(policy.max_ejection_time);
    *health.ejected_until.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + duration);
    health.consecutive_failures.store(0, Ordering::Relaxed);
    stats.ejections.fetch_add(1, Ordering::Relaxed);
    tracing::info!(?duration, ejection = n, "endpoint ejected after {failures} failures in a row");
    true
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ejects_for_growing_times_within_the_cap() {
        let mut policy = OutlierDetection::default();
        policy.consecutive_failures = 3;
        policy.base_ejection_time = Duration::from_secs(10);
        policy.max_ejection_time = Duration::from_secs(25);
        let all: Vec<Arc<Health>> = (0..4).map(|_| Arc::default()).collect();
        let stats = OutlierStats::default();
        let fail = |i: usize, n: usize| {
            for _ in 0..n {
                record(&all[i], true, &policy, &all, &stats);
            }
        };
        fail(0, 2);
        assert!(!all[0].is_ejected());
        record(&all[0], false, &policy, &all, &stats);
        fail(0, 2);
        assert!(!all[0].is_ejected(), "a success resets the count");
        fail(0, 1);
        assert!(all[0].is_ejected());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!all[0].is_ejected(), "back after 10 s");
        fail(0, 3);
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(all[0].is_ejected(), "the second ejection lasts 20 s");
        // 50% of 4: a second endpoint may go, a third may not.
        fail(1, 3);
        fail(2, 3);
        assert!(all[1].is_ejected() && !all[2].is_ejected());
        assert_eq!((stats.ejections(), stats.refused()), (3, 1));
        tokio::time::advance(Duration::from_secs(100)).await;
        fail(0, 3);
        tokio::time::advance(Duration::from_secs(24)).await;
        assert!(all[0].is_ejected(), "capped at 25 s");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!all[0].is_ejected());
    }
}
