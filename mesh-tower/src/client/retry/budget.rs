//! The retry budget: how many retries a destination tolerates.

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

const SLOTS: usize = 10;

/// Retries may add `ratio` on top of the original requests of the last `window`, plus
/// `min_per_second` for every second the budget has existed (up to the window), so quiet callers
/// can still retry. Over any stretch of time, retries ≤ requests × ratio + min_per_second × seconds:
/// no reserve is granted up front (tower's `TpsBudget` grants `min_per_second × window` at once,
/// which lets a fresh client retry 100 times into an outage).
#[derive(Debug)]
pub(crate) struct Budget {
    ratio: f64,
    min_per_second: f64,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    started: Instant,
    slot_started: Instant,
    current: usize,
    deposits: [u64; SLOTS],
    withdrawals: [u64; SLOTS],
}

impl Budget {
    pub(crate) fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        let now = Instant::now();
        Self {
            ratio,
            min_per_second: f64::from(min_per_second),
            window,
            state: Mutex::new(State {
                started: now,
                slot_started: now,
                current: 0,
                deposits: [0; SLOTS],
                withdrawals: [0; SLOTS],
            }),
        }
    }

    fn slot(&self) -> Duration {
        self.window / SLOTS as u32
    }

    fn rotate(&self, state: &mut State, now: Instant) {
        let slot = self.slot();
        while now.saturating_duration_since(state.slot_started) >= slot {
            state.current = (state.current + 1) % SLOTS;
            state.deposits[state.current] = 0;
            state.withdrawals[state.current] = 0;
            state.slot_started += slot;
            if now.saturating_duration_since(state.slot_started) >= self.window {
                // Idle for a whole window: every slot is stale.
                state.deposits = [0; SLOTS];
                state.withdrawals = [0; SLOTS];
                state.slot_started = now;
            }
        }
    }

    /// An original request.
    pub(crate) fn deposit(&self) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.rotate(&mut state, now);
        let i = state.current;
        state.deposits[i] += 1;
    }

    /// Asks for one retry; `false` when the budget is spent.
    pub(crate) fn withdraw(&self) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.rotate(&mut state, now);
        let deposits: u64 = state.deposits.iter().sum();
        let withdrawals: u64 = state.withdrawals.iter().sum();
        let age = now.saturating_duration_since(state.started).min(self.window);
        let allowed = self.ratio * deposits as f64 + self.min_per_second * age.as_secs_f64();
        if (withdrawals + 1) as f64 <= allowed {
            let i = state.current;
            state.withdrawals[i] += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retries(budget: &Budget) -> usize {
        std::iter::from_fn(|| budget.withdraw().then_some(())).count()
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_plus_a_floor_that_accrues() {
        let budget = Budget::new(0.2, 10, Duration::from_secs(10));
        for _ in 0..1000 {
            budget.deposit();
        }
        assert_eq!(retries(&budget), 200, "20% of 1,000 requests, no reserve up front");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(retries(&budget), 20, "10 per second since");
        // A window later the old requests no longer count; the floor is capped at the window.
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(retries(&budget), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn no_ratio_means_only_the_floor() {
        let budget = Budget::new(0.0, 5, Duration::from_secs(10));
        for _ in 0..1000 {
            budget.deposit();
        }
        assert_eq!(retries(&budget), 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(retries(&budget), 5);
    }
}
