//! Reconnection delays: gRPC's connection backoff (initial delay, x1.6 per failure, +/-20%
//! jitter, capped), seeded for tests.

use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::SmallRng};

/// Exponential backoff with jitter.
#[derive(Debug)]
pub(super) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    rng: SmallRng,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Self { initial, max, next: initial, rng: SmallRng::seed_from_u64(seed) }
    }

    /// The delay before the next attempt; each call lengthens the following one.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = self.next.mul_f64(1.6).min(self.max);
        base.mul_f64(self.rng.random_range(0.8..=1.2)).min(self.max)
    }

    /// A stream that got a response starts over from the initial delay.
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 7);
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(80) && delays[0] <= Duration::from_millis(120), "{delays:?}");
        assert!(delays[3] >= Duration::from_millis(327) && delays[3] <= Duration::from_millis(492), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)), "{delays:?}");
        assert!(delays[9] >= Duration::from_millis(800), "{delays:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
        // Two clients with different seeds do not reconnect in lockstep.
        let mut other = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 8);
        let theirs: Vec<Duration> = (0..10).map(|_| other.next_delay()).collect();
        assert_ne!(delays, theirs);
    }
}
