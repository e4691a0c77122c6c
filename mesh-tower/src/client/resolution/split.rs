//! Weighted split: which subset a request goes to, by the matched route's weights.
//!
//! Shares are exact in the long run, without randomness: the n-th request of a route takes the
//! target whose slice of the cumulative weights holds `frac(n × φ)` (a Weyl sequence, the
//! golden-ratio low-discrepancy sequence). After N requests every target's share is within
//! O(log N / N) of its weight, whatever the interleaving of concurrent callers, and a target of
//! weight 0 is never chosen. (tower's weighted balancing skews shares: tower-rs/tower#696.)
//!
//! Weights come from the snapshot the request is routed with, so a new snapshot applies to the
//! next request: a blue-green switch from 100/0 to 0/100 sends nothing to the old subset after it.

use std::sync::atomic::{AtomicU64, Ordering};

use mesh_core::Weight;

/// 2^64 / φ: consecutive multiples spread evenly over the u64 range.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The split of one route, built once per snapshot version.
#[derive(Debug)]
pub struct WeightedSplit {
    /// Running sums of the weights, one per target.
    cumulative: Box<[u64]>,
    next: AtomicU64,
}

impl WeightedSplit {
    /// A split over `weights`, in target order. `None` if every weight is 0.
    pub fn new(weights: impl IntoIterator<Item = Weight>) -> Option<Self> {
        let mut total = 0u64;
        let cumulative: Box<[u64]> = weights
            .into_iter()
            .map(|w| {
                total += u64::from(w.get());
                total
            })
            .collect();
        (total > 0).then(|| Self { cumulative, next: AtomicU64::new(0) })
    }

    /// The target index of the next request.
    pub fn pick(&self) -> usize {
        self.pick_nth(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// The target index of the n-th request.
    pub fn pick_nth(&self, n: u64) -> usize {
        let total = *self.cumulative.last().unwrap_or(&1);
        let point = n.wrapping_mul(GOLDEN);
        // Scale the point into [0, total) without overflow.
        let scaled = ((u128::from(point) * u128::from(total)) >> 64) as u64;
        self.cumulative.partition_point(|&c| c <= scaled)
    }
}

/// Whether the n-th event falls in a `percent` share, by the same low-discrepancy sequence: over
/// N events, the share is within O(log N / N) of `percent`.
pub(crate) fn in_share(n: u64, percent: f64) -> bool {
    let point = n.wrapping_mul(GOLDEN) as f64 / 18_446_744_073_709_551_616.0;
    point * 100.0 < percent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(weights: &[u32], n: u64, start: u64) -> Vec<f64> {
        let split = WeightedSplit::new(weights.iter().map(|w| Weight::new(*w).unwrap())).unwrap();
        let mut counts = vec![0u64; weights.len()];
        for i in start..start + n {
            counts[split.pick_nth(i)] += 1;
        }
        counts.iter().map(|c| 100.0 * *c as f64 / n as f64).collect()
    }

    #[test]
    fn shares_are_within_half_a_point_over_100k_requests() {
        for (weights, start) in [(&[90, 10][..], 0), (&[95, 5][..], 12345), (&[1, 2, 3, 4][..], 7), (&[50, 50][..], 99)]
        {
            let total: u32 = weights.iter().sum();
            let got = shares(weights, 100_000, start);
            for (w, share) in weights.iter().zip(&got) {
                let want = 100.0 * f64::from(*w) / f64::from(total);
                assert!((share - want).abs() < 0.5, "weights {weights:?}: got {got:?}");
                // In fact far tighter: a low-discrepancy sequence.
                assert!((share - want).abs() < 0.01, "weights {weights:?}: got {got:?}");
            }
        }
    }

    #[test]
    fn zero_weight_gets_nothing_and_all_zero_is_refused() {
        let got = shares(&[0, 100, 0], 10_000, 0);
        assert_eq!(got, vec![0.0, 100.0, 0.0]);
        assert!(WeightedSplit::new([Weight::ZERO, Weight::ZERO]).is_none());
    }
}
