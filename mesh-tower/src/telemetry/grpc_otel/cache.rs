//! A read-mostly map of what is made once per label set (bound metric handles, a peer's
//! labels): readers load a snapshot without locking, a miss copies the map with the new entry.
//! Bounded: past [`MAX_CACHED`] entries new ones are made for the request and not kept (a bound
//! that honest label values never reach).

use std::{borrow::Borrow, collections::HashMap, hash::Hash};

use arc_swap::ArcSwap;
use foldhash::fast::RandomState;

/// Entries kept per cache.
pub(crate) const MAX_CACHED: usize = 4096;

pub(crate) struct Cache<K, V> {
    map: ArcSwap<HashMap<K, V, RandomState>>,
}

impl<K, V> Default for Cache<K, V> {
    fn default() -> Self {
        Self { map: ArcSwap::default() }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Cache<K, V> {
    /// The entry of `key`, made by `make` (once, unless the cache is full or two requests race:
    /// then the first one kept wins).
    pub(crate) fn get_or_make<Q>(&self, key: &Q, make: impl FnOnce() -> (K, V)) -> V
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(value) = self.map.load().get(key) {
            return value.clone();
        }
        let (key, value) = make();
        if self.map.load().len() >= MAX_CACHED {
            return value;
        }
        let mut kept = value.clone();
        self.map.rcu(|map| {
            let mut map = HashMap::clone(map);
            kept = map.entry(key.clone()).or_insert_with(|| value.clone()).clone();
            map
        });
        kept
    }

    pub(crate) fn len(&self) -> usize {
        self.map.load().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_each_entry_once_and_stops_keeping_past_the_bound() {
        let cache: Cache<String, usize> = Cache::default();
        let mut made = 0;
        for _ in 0..3 {
            let v = cache.get_or_make("a", || {
                made += 1;
                ("a".to_owned(), 1)
            });
            assert_eq!(v, 1);
        }
        assert_eq!(made, 1);
        for i in 0..MAX_CACHED + 10 {
            cache.get_or_make(&i.to_string(), || (i.to_string(), i));
        }
        assert_eq!(cache.len(), MAX_CACHED);
        assert_eq!(cache.get_or_make("never-kept", || ("never-kept".to_owned(), 7)), 7);
        assert_eq!(cache.len(), MAX_CACHED);
    }
}
