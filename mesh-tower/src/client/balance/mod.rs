//! Load balancing inside a subset: which endpoint takes the request.
//!
//! - [`LoadBalancerKind::P2cPeakEwma`] (default): of two endpoints picked at random, the one
//!   with the lower cost, where cost = peak-EWMA latency × (requests outstanding + 1), as in
//!   tower's `balance::p2c` with `load::PeakEwma`. A slow or stuck endpoint quickly costs more
//!   and gets less. The estimate is per endpoint address and survives snapshot changes.
//! - [`LoadBalancerKind::RoundRobin`]: each endpoint in turn.
//! - [`LoadBalancerKind::RingHash`]: consistent hashing of a header's value onto a ring of
//!   virtual nodes (64 per unit of endpoint weight): the same value reaches the same endpoint, and
//!   a membership change moves only the keys of the endpoints that changed. Requests without the
//!   header fall back to round robin.
//!
//! We keep our own small pickers rather than tower's `Balance` service: tower's needs `&mut self`
//! for readiness and a `Discover` stream per subset, while mesh picks synchronously, lock-free,
//! from a snapshot shared by every clone of the client.

mod ewma;
mod ring;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub use self::ewma::{EndpointLoad, InFlight};
pub(crate) use self::ring::Ring;
use mesh_core::policy::LoadBalancerKind;

/// A fast, lock-free pseudo-random source (splitmix64 over an atomic counter), seeded so tests
/// are deterministic.
#[derive(Debug)]
pub struct Rng(AtomicU64);

impl Rng {
    /// A source seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(AtomicU64::new(seed))
    }

    /// The next number.
    pub fn next_u64(&self) -> u64 {
        let mut z = self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Picks among `loads` (one per endpoint of a subset). Returns an index.
#[derive(Debug)]
pub(crate) struct Picker {
    kind: LoadBalancerKind,
    next: AtomicUsize,
    ring: Option<Ring>,
}

impl Picker {
    pub(crate) fn new(kind: LoadBalancerKind, ring: Option<Ring>) -> Self {
        Self { kind, next: AtomicUsize::new(0), ring }
    }

    /// The endpoint for a request among `n`, whose loads `load(i)` gives; `hash_key` is the
    /// ring-hash header's value, if any.
    pub(crate) fn pick<'a>(
        &self,
        n: usize,
        load: impl Fn(usize) -> &'a EndpointLoad,
        rng: &Rng,
        hash_key: Option<&[u8]>,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        if n == 1 {
            return Some(0);
        }
        match self.kind {
            LoadBalancerKind::P2cPeakEwma => {
                let a = rng.below(n);
                let b = (a + 1 + rng.below(n - 1)) % n;
                Some(if load(b).cost() < load(a).cost() { b } else { a })
            }
            LoadBalancerKind::RingHash if hash_key.is_some() && self.ring.is_some() => {
                self.ring.as_ref().zip(hash_key).and_then(|(ring, key)| ring.pick(key))
            }
            _ => Some(self.next.fetch_add(1, Ordering::Relaxed) % n),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn p2c_avoids_the_slow_endpoint() {
        let loads: Vec<Arc<EndpointLoad>> =
            (0..4).map(|_| Arc::new(EndpointLoad::new(Duration::from_millis(5)))).collect();
        let rng = Rng::new(7);
        let picker = Picker::new(LoadBalancerKind::P2cPeakEwma, None);
        let refs: Vec<&EndpointLoad> = loads.iter().map(|l| &**l).collect();
        let mut counts = [0usize; 4];
        for _ in 0..10_000 {
            let i = picker.pick(refs.len(), |i| refs[i], &rng, None).unwrap();
            counts[i] += 1;
            // Endpoint 0 takes 50 ms, the others 1 ms.
            let mut guard = InFlight::start(loads[i].clone());
            tokio::time::advance(Duration::from_micros(if i == 0 { 50_000 } else { 1_000 })).await;
            guard.finish();
        }
        assert!(counts[0] < 500, "the slow endpoint got {counts:?}");
        assert!(counts[1..].iter().all(|c| *c > 2500), "{counts:?}");
    }

    #[test]
    fn round_robin_and_rng_are_even() {
        let loads: Vec<EndpointLoad> = (0..3).map(|_| EndpointLoad::new(Duration::from_millis(5))).collect();
        let refs: Vec<&EndpointLoad> = loads.iter().collect();
        let picker = Picker::new(LoadBalancerKind::RoundRobin, None);
        let rng = Rng::new(1);
        let picks: Vec<usize> = (0..6).map(|_| picker.pick(refs.len(), |i| refs[i], &rng, None).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let mut counts = [0usize; 5];
        for _ in 0..50_000 {
            counts[rng.below(5)] += 1;
        }
        assert!(counts.iter().all(|c| (9_500..10_500).contains(c)), "{counts:?}");
    }
}
