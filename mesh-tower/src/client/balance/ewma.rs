use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

/// How fast the latency estimate forgets: tower's default decay.
const DECAY: Duration = Duration::from_secs(10);

/// One endpoint's load: a peak-sensitive moving average of its latency and the requests it has
/// outstanding. Shared by every clone of the client; kept across snapshot versions.
#[derive(Debug)]
pub struct EndpointLoad {
    state: Mutex<Estimate>,
    pending: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct Estimate {
    rtt_ns: f64,
    updated: Instant,
}

/// A request outstanding on an endpoint. Dropping it without [`finish`](Self::finish) (a
/// cancelled or failed request) still releases the slot.
#[derive(Debug)]
pub struct InFlight {
    load: Arc<EndpointLoad>,
    started: Instant,
    finished: bool,
}

impl EndpointLoad {
    /// A new endpoint, assumed to answer in `default_rtt` until it shows otherwise.
    pub fn new(default_rtt: Duration) -> Self {
        Self {
            state: Mutex::new(Estimate { rtt_ns: default_rtt.as_nanos() as f64, updated: Instant::now() }),
            pending: Default::default(),
        }
    }

    /// The cost P2C compares: estimated latency × (outstanding + 1).
    pub fn cost(&self) -> f64 {
        let pending = self.pending.load(std::sync::atomic::Ordering::Relaxed) as f64;
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // An estimate decays towards zero while nothing is observed, so an endpoint that was slow
        // long ago gets tried again.
        let elapsed = Instant::now().saturating_duration_since(state.updated);
        let decayed = state.rtt_ns * (-(elapsed.as_secs_f64()) / DECAY.as_secs_f64()).exp();
        decayed * (pending + 1.0)
    }

    fn observe(&self, rtt: Duration) {
        let rtt = rtt.as_nanos() as f64;
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if rtt > state.rtt_ns {
            // Peak: a slow response raises the estimate at once.
            state.rtt_ns = rtt;
        } else {
            let elapsed = now.saturating_duration_since(state.updated).as_secs_f64();
            let decay = (-elapsed / DECAY.as_secs_f64()).exp();
            state.rtt_ns = state.rtt_ns * decay + rtt * (1.0 - decay);
        }
        state.updated = now;
    }
}

impl InFlight {
    /// Starts a request on `load`.
    pub fn start(load: Arc<EndpointLoad>) -> Self {
        load.pending.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        self.load.pending.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if !self.finished {
            self.load.observe(self.started.elapsed());
        }
    }
}
