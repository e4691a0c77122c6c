//! Golden signals per subset, in process: requests, success rate and latency percentiles over a
//! sliding window, for a canary controller that should not wait on a Prometheus round trip.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use mesh_core::SubsetName;

/// Slots per window: the window slides in steps of a tenth of its length.
const SLOTS: usize = 10;
/// Latency buckets per power of two: values are reported within 1/8 octave (about 9%).
const STEPS_PER_OCTAVE: f64 = 8.0;
/// Buckets from 1 µs to about 2^28 µs (4.5 minutes); slower requests land in the last one.
const BUCKETS: usize = 28 * STEPS_PER_OCTAVE as usize;

/// The golden signals of every subset a [`TelemetryLayer`](crate::telemetry::TelemetryLayer) has seen, over
/// a sliding window. Cheap to clone; every clone reads the same figures.
///
/// ```
/// use mesh_tower::telemetry::TelemetryLayer;
///
/// let telemetry = TelemetryLayer::client("reviews".parse()?);
/// let signals = telemetry.golden_signals();
/// // ... build the client stack with `telemetry`, send traffic, then:
/// for subset in signals.snapshot() {
///     println!("{:?}: {} requests, {:.1}% ok, p99 {:?}", subset.subset, subset.requests, subset.success_rate() * 100.0, subset.p99);
/// }
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct GoldenSignals {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    window: Duration,
    origin: Instant,
    /// Read on every request without a lock; copied on the rare insert of a new subset.
    subsets: ArcSwap<HashMap<Option<SubsetName>, Arc<Mutex<Window>>, foldhash::fast::RandomState>>,
}

/// The figures of one subset over the window, from [`GoldenSignals::snapshot`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct SubsetSignals {
    /// The subset (version); `None` for requests that went to no named subset.
    pub subset: Option<SubsetName>,
    /// Requests that ended within the window.
    pub requests: u64,
    /// Of those, the ones that succeeded: an answer below 500, and a gRPC status that is not a
    /// server-side failure (see `docs/observability.md`).
    pub successes: u64,
    /// Median latency, `None` without requests.
    pub p50: Option<Duration>,
    /// 90th percentile latency.
    pub p90: Option<Duration>,
    /// 99th percentile latency.
    pub p99: Option<Duration>,
    /// The length of the window the figures cover.
    pub window: Duration,
}

impl SubsetSignals {
    /// `successes / requests`, or 1.0 without requests (nothing failed).
    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 { 1.0 } else { self.successes as f64 / self.requests as f64 }
    }
}

/// One subset's window of a [`GoldenSignals`], found once (see [`GoldenSignals::subset_window`]).
#[derive(Debug)]
pub(crate) struct SubsetWindow {
    signals: GoldenSignals,
    subset: Option<SubsetName>,
    window: OnceLock<Arc<Mutex<Window>>>,
}

impl SubsetWindow {
    /// Counts one request that ended now, as [`GoldenSignals::record`] does.
    pub(crate) fn record(&self, latency: Duration, success: bool) {
        let window = self.window.get_or_init(|| self.signals.window_of(self.subset.as_ref()));
        self.signals.record_in(window, latency, success);
    }
}

#[derive(Debug)]
struct Window {
    slots: Box<[Slot; SLOTS]>,
}

#[derive(Clone, Debug)]
struct Slot {
    /// Which step of time this slot holds; a slot from an older step is stale and reset on use.
    step: u64,
    requests: u64,
    successes: u64,
    latency: [u32; BUCKETS],
}

impl Slot {
    fn empty() -> Self {
        Self { step: u64::MAX, requests: 0, successes: 0, latency: [0; BUCKETS] }
    }
}

impl GoldenSignals {
    /// Signals over a sliding `window` (at least 10 ms).
    pub fn new(window: Duration) -> Self {
        let window = window.max(Duration::from_millis(10));
        Self { inner: Arc::new(Inner { window, origin: Instant::now(), subsets: ArcSwap::default() }) }
    }

    /// The window length.
    pub fn window(&self) -> Duration {
        self.inner.window
    }

    fn step(&self, at: Instant) -> u64 {
        let slot = self.inner.window.as_nanos() / SLOTS as u128;
        (at.saturating_duration_since(self.inner.origin).as_nanos() / slot.max(1)) as u64
    }

    /// Counts one request that ended now.
    pub(crate) fn record(&self, subset: Option<&SubsetName>, latency: Duration, success: bool) {
        self.record_in(&self.window_of(subset), latency, success);
    }

    /// The window of `subset`, for a caller that records into the same subset many times (a
    /// server connection: its subset is the server's version). Found at its first request, so
    /// a subset without requests stays out of [`snapshot`](Self::snapshot).
    pub(crate) fn subset_window(&self, subset: Option<&SubsetName>) -> SubsetWindow {
        SubsetWindow { signals: self.clone(), subset: subset.cloned(), window: OnceLock::new() }
    }

    fn record_in(&self, window: &Mutex<Window>, latency: Duration, success: bool) {
        let step = self.step(Instant::now());
        let mut window = window.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut window.slots[(step % SLOTS as u64) as usize];
        if slot.step != step {
            *slot = Slot { step, ..Slot::empty() };
        }
        slot.requests += 1;
        slot.successes += u64::from(success);
        slot.latency[bucket(latency)] += 1;
    }

    fn window_of(&self, subset: Option<&SubsetName>) -> Arc<Mutex<Window>> {
        let key = subset.cloned();
        if let Some(window) = self.inner.subsets.load().get(&key) {
            return window.clone();
        }
        let fresh = Arc::new(Mutex::new(Window { slots: Box::new(std::array::from_fn(|_| Slot::empty())) }));
        let mut chosen = None;
        self.inner.subsets.rcu(|subsets| {
            let mut subsets = HashMap::clone(subsets);
            chosen = Some(subsets.entry(key.clone()).or_insert_with(|| fresh.clone()).clone());
            subsets
        });
        chosen.unwrap_or(fresh)
    }

    /// The figures of every subset seen, over the window ending now, sorted by subset name.
    pub fn snapshot(&self) -> Vec<SubsetSignals> {
        let windows: Vec<_> =
            self.inner.subsets.load().iter().map(|(name, window)| (name.clone(), window.clone())).collect();
        let now = self.step(Instant::now());
        let mut out: Vec<_> = windows.into_iter().map(|(name, window)| self.read(name, &window, now)).collect();
        out.sort_by(|a, b| a.subset.cmp(&b.subset));
        out
    }

    /// The figures of one subset over the window ending now (zero requests if never seen).
    pub fn subset(&self, subset: &SubsetName) -> SubsetSignals {
        let window = self.inner.subsets.load().get(&Some(subset.clone())).cloned();
        match window {
            Some(window) => self.read(Some(subset.clone()), &window, self.step(Instant::now())),
            None => SubsetSignals {
                subset: Some(subset.clone()),
                requests: 0,
                successes: 0,
                p50: None,
                p90: None,
                p99: None,
                window: self.inner.window,
            },
        }
    }

    fn read(&self, subset: Option<SubsetName>, window: &Mutex<Window>, now: u64) -> SubsetSignals {
        let window = window.lock().unwrap_or_else(PoisonError::into_inner);
        let live = window.slots.iter().filter(|s| s.step != u64::MAX && s.step + SLOTS as u64 > now && s.step <= now);
        let (mut requests, mut successes, mut latency) = (0, 0, [0u64; BUCKETS]);
        for slot in live {
            requests += slot.requests;
            successes += slot.successes;
            for (sum, n) in latency.iter_mut().zip(slot.latency.iter()) {
                *sum += u64::from(*n);
            }
        }
        let percentile = |q: f64| percentile(&latency, requests, q);
        SubsetSignals {
            subset,
            requests,
            successes,
            p50: percentile(0.50),
            p90: percentile(0.90),
            p99: percentile(0.99),
            window: self.inner.window,
        }
    }
}

fn bucket(latency: Duration) -> usize {
    let micros = latency.as_secs_f64() * 1e6;
    if micros <= 1.0 {
        return 0;
    }
    ((micros.log2() * STEPS_PER_OCTAVE).ceil() as usize).min(BUCKETS - 1)
}

/// The upper bound of the bucket holding the `q` quantile.
fn percentile(latency: &[u64; BUCKETS], total: u64, q: f64) -> Option<Duration> {
    if total == 0 {
        return None;
    }
    let rank = ((total as f64 * q).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, n) in latency.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(Duration::from_secs_f64(2f64.powf(i as f64 / STEPS_PER_OCTAVE) / 1e6));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str) -> SubsetName {
        name.parse().unwrap()
    }

    #[test]
    fn counts_and_percentiles_per_subset() {
        let signals = GoldenSignals::new(Duration::from_secs(3600));
        for i in 1..=1000u64 {
            signals.record(Some(&v("v1")), Duration::from_micros(i * 100), i % 100 != 0);
        }
        signals.record(Some(&v("v2")), Duration::from_millis(5), false);
        let all = signals.snapshot();
        assert_eq!(all.len(), 2);
        let v1 = signals.subset(&v("v1"));
        assert_eq!((v1.requests, v1.successes), (1000, 990));
        assert!((v1.success_rate() - 0.99).abs() < 1e-9);
        // True p50 = 50 ms, p90 = 90 ms, p99 = 99 ms; buckets are 1/8 octave wide (+9%).
        let within = |got: Option<Duration>, want_ms: f64| {
            let got = got.unwrap().as_secs_f64() * 1e3;
            assert!(got >= want_ms && got <= want_ms * 1.1, "{got} ms vs {want_ms} ms");
        };
        within(v1.p50, 50.0);
        within(v1.p90, 90.0);
        within(v1.p99, 99.0);
        let v2 = signals.subset(&v("v2"));
        assert_eq!((v2.requests, v2.successes), (1, 0));
        assert_eq!(signals.subset(&v("v3")).requests, 0);
    }

    #[test]
    fn old_requests_leave_the_window() {
        let signals = GoldenSignals::new(Duration::from_millis(10));
        signals.record(Some(&v("v1")), Duration::from_millis(1), true);
        assert_eq!(signals.subset(&v("v1")).requests, 1);
        // A whole window later the slot is stale, whichever slot the clock lands on.
        std::thread::sleep(Duration::from_millis(12));
        assert_eq!(signals.subset(&v("v1")).requests, 0);
    }
}
