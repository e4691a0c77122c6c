//! How long to wait before reconnecting to the Workload API: exponential, capped, jittered.

use std::time::Duration;

/// The reconnection backoff: the n-th wait in a row is drawn from `[d/2, d]` with
/// `d = min(initial * 2^n, max)`, so agents restarted at once do not see every workload of the
/// node reconnect in the same instant. A delivered update starts the sequence over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backoff {
    /// The first wait's ceiling (default 100 ms).
    pub initial: Duration,
    /// The longest wait (default 5 s): how long after the agent is back, at worst, the stream is.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { initial: Duration::from_millis(100), max: Duration::from_secs(5) }
    }
}

impl Backoff {
    /// A backoff from `initial` doubling up to `max` (swapped if given the wrong way round; a
    /// zero `initial` counts as 1 ms).
    pub fn new(initial: Duration, max: Duration) -> Self {
        let (initial, max) = if initial <= max { (initial, max) } else { (max, initial) };
        Self { initial: initial.max(Duration::from_millis(1)), max: max.max(Duration::from_millis(1)) }
    }
}

/// The waits of one [`Backoff`], in order.
#[derive(Debug)]
pub(crate) struct Delays {
    backoff: Backoff,
    failures: u32,
    rng: u64,
}

impl Delays {
    /// Seeded: the same seed gives the same waits.
    pub(crate) fn new(backoff: Backoff, seed: u64) -> Self {
        Self { backoff, failures: 0, rng: seed }
    }

    /// Seeded from the clock and the process, so workloads of one node spread out.
    pub(crate) fn unseeded(backoff: Backoff) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        Self::new(backoff, (nanos as u64) ^ (u64::from(std::process::id()) << 32))
    }

    /// The wait after one more failure in a row.
    pub(crate) fn next(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.random() % spread.saturating_add(1))
    }

    /// After a success: the next wait is short again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.backoff.initial.saturating_mul(factor).min(self.backoff.max)
    }

    /// splitmix64.
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_double_up_to_the_cap_within_the_jitter() {
        let mut delays = Delays::new(Backoff::new(100 * MS, 1600 * MS), 7);
        for ceiling in [100, 200, 400, 800, 1600, 1600, 1600].map(|c| c * MS) {
            let wait = delays.next();
            assert!(wait >= ceiling / 2 && wait <= ceiling, "{wait:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
        }
        // Many failures in a row neither overflow nor pass the cap.
        for _ in 0..100 {
            assert!(delays.next() <= 1600 * MS);
        }
    }

    #[test]
    fn a_success_starts_over() {
        let mut delays = Delays::new(Backoff::new(100 * MS, Duration::from_secs(5)), 1);
        for _ in 0..6 {
            delays.next();
        }
        assert!(delays.next() > 1600 * MS);
        delays.reset();
        assert!(delays.next() <= 100 * MS);
    }

    #[test]
    fn jitter_spreads_and_is_seeded() {
        let draw = |seed| {
            let mut d = Delays::new(Backoff::new(Duration::from_secs(1), Duration::from_secs(1)), seed);
            (0..64).map(|_| d.next()).collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42), "the same seed, the same waits");
        let waits = draw(42);
        let (low, high) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        // 64 uniform draws in [500, 1000] ms all landing in one 100 ms band: (1/5)^63 odds.
        assert!(*high - *low > 100 * MS, "no spread: {low:?}..{high:?}");
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn bad_bounds_are_made_sane() {
        let b = Backoff::new(Duration::from_secs(5), Duration::ZERO);
        assert_eq!((b.initial, b.max), (MS, Duration::from_secs(5)));
    }
}
