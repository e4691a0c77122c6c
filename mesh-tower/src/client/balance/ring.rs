//! A consistent-hash ring.

/// Virtual nodes per unit of endpoint weight.
const VNODES: u64 = 64;

/// Points on a ring, each owned by an endpoint index.
#[derive(Debug)]
pub(crate) struct Ring {
    points: Box<[(u64, usize)]>,
}

/// FNV-1a: stable across runs and Rust versions, unlike `DefaultHasher`.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV mixes the low bits poorly for short keys; finish with a splitmix step.
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    hash ^ (hash >> 31)
}

impl Ring {
    /// A ring over endpoints identified by `keys` (their addresses) with `weights`.
    pub(crate) fn new<'a>(endpoints: impl IntoIterator<Item = (&'a str, u32)>) -> Self {
        let mut points = Vec::new();
        for (i, (key, weight)) in endpoints.into_iter().enumerate() {
            for v in 0..VNODES * u64::from(weight.clamp(1, 100)) {
                points.push((fnv1a(format!("{key}#{v}").as_bytes()), i));
            }
        }
        points.sort_unstable();
        Self { points: points.into_boxed_slice() }
    }

    /// The endpoint owning `key`.
    pub(crate) fn pick(&self, key: &[u8]) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let hash = fnv1a(key);
        let i = self.points.partition_point(|(p, _)| *p < hash);
        Some(self.points[i % self.points.len()].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_and_moves_little_when_an_endpoint_leaves() {
        let four = Ring::new([("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
        let three = Ring::new([("a", 1), ("b", 1), ("c", 1)]);
        let mut counts = [0usize; 4];
        let mut moved = 0;
        for user in 0..10_000 {
            let key = format!("user-{user}");
            let owner = four.pick(key.as_bytes()).unwrap();
            assert_eq!(four.pick(key.as_bytes()), Some(owner), "sticky");
            counts[owner] += 1;
            if owner != 3 && three.pick(key.as_bytes()) != Some(owner) {
                moved += 1;
            }
        }
        assert!(counts.iter().all(|c| (1_800..3_200).contains(c)), "{counts:?}");
        assert_eq!(moved, 0, "only d's keys move when d leaves");
    }
}
