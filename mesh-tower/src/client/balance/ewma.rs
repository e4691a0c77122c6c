use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

/// How fast the latency estimate forgets: tower's default decay.
const DECAY: Duration = Duration::from_secs(10);

/// One endpoint's load: a peak-sensitive moving average of its latency and the requests it has
/// outstanding. Shared by every clone of the client; kept across snapshot versions.
///
/// Read by every pick and written by every response, so it is two atomics rather than a mutex:
/// two responses observed at the same instant may lose one sample to each other, which moves an
/// average of thousands of samples by nothing a balancer can tell.
#[derive(Debug)]
pub struct EndpointLoad {
    /// The estimate, nanoseconds, as `f64` bits.
    rtt_ns: AtomicU64,
    /// When it was last updated, nanoseconds after `origin`.
    updated_ns: AtomicU64,
    origin: Instant,
    pending: AtomicU64,
}

/// A request outstanding on an endpoint. Dropping it without [`finish`](Self::finish) (a
/// cancelled or failed request) still releases the slot.
#[derive(Debug)]
pub struct InFlight {
    load: Arc<EndpointLoad>,
    started: Instant,
    finished: bool,
}

/// `e^(-elapsed / DECAY)`: the share of the estimate that `elapsed` keeps. Under 100 ms (the usual
/// gap between a busy endpoint's responses) a second-order Taylor step, within 2e-7 of `exp`.
fn kept(elapsed: Duration) -> f64 {
    let x = elapsed.as_secs_f64() / DECAY.as_secs_f64();
    if x < 0.01 { 1.0 - x + x * x / 2.0 } else { (-x).exp() }
}

impl EndpointLoad {
    /// A new endpoint, assumed to answer in `default_rtt` until it shows otherwise.
    pub fn new(default_rtt: Duration) -> Self {
        Self {
            rtt_ns: AtomicU64::new((default_rtt.as_nanos() as f64).to_bits()),
            updated_ns: AtomicU64::new(0),
            origin: Instant::now(),
            pending: AtomicU64::new(0),
        }
    }

    fn since_update(&self, now: Instant) -> Duration {
        let at = Duration::from_nanos(self.updated_ns.load(Ordering::Relaxed));
        now.saturating_duration_since(self.origin).saturating_sub(at)
    }

    /// The cost P2C compares: estimated latency × (outstanding + 1).
    pub fn cost(&self) -> f64 {
        let pending = self.pending.load(Ordering::Relaxed) as f64;
        let rtt = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        // An estimate decays towards zero while nothing is observed, so an endpoint that was slow
        // long ago gets tried again.
        rtt * kept(self.since_update(Instant::now())) * (pending + 1.0)
    }

    fn observe(&self, rtt: Duration) {
        let rtt = rtt.as_nanos() as f64;
        let now = Instant::now();
        let current = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let estimate = if rtt > current {
            // Peak: a slow response raises the estimate at once.
            rtt
        } else {
            let kept = kept(self.since_update(now));
            current * kept + rtt * (1.0 - kept)
        };
        self.rtt_ns.store(estimate.to_bits(), Ordering::Relaxed);
        self.updated_ns.store(now.saturating_duration_since(self.origin).as_nanos() as u64, Ordering::Relaxed);
    }
}

impl InFlight {
    /// Starts a request on `load`.
    pub fn start(load: Arc<EndpointLoad>) -> Self {
        load.pending.fetch_add(1, Ordering::Relaxed);
        Self { load, started: Instant::now(), finished: false }
    }

    /// The response headers arrived: record the latency.
    pub fn finish(&mut self) {
        if !self.finished {
            self.finished = true;
            self.load.observe(self.started.elapsed());
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.pending.fetch_sub(1, Ordering::Relaxed);
        if !self.finished {
            self.load.observe(self.started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_step_matches_exp() {
        for ms in [0, 1, 10, 50, 99, 100, 500, 10_000] {
            let elapsed = Duration::from_millis(ms);
            let exact = (-(elapsed.as_secs_f64() / DECAY.as_secs_f64())).exp();
            assert!((kept(elapsed) - exact).abs() < 2e-7, "{ms} ms: {} vs {exact}", kept(elapsed));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn peaks_rise_at_once_and_calm_decays() {
        let load = EndpointLoad::new(Duration::from_millis(5));
        load.observe(Duration::from_millis(50));
        assert!((load.cost() - 50e6).abs() < 1.0, "a peak is taken whole: {}", load.cost());
        tokio::time::advance(DECAY).await;
        load.observe(Duration::from_millis(10));
        // 50 ms kept at e^-1, plus 10 ms at 1 - e^-1: about 24.7 ms.
        let expected = 50e6 * (-1f64).exp() + 10e6 * (1.0 - (-1f64).exp());
        assert!((load.cost() - expected).abs() < 1e3, "{} vs {expected}", load.cost());
    }
}
