//! A bounded, self-expiring record of keys and when they were recorded: used for the
//! back-channel logout replay cache (`jti`) and for the subjects whose bearer tokens a
//! back-channel logout ended.
//!
//! Every entry lives `ttl` seconds. At most `capacity` entries are held: when full, the
//! oldest is dropped. A thin layer over [`crate::bounded::ExpiringMap`]: expiry is O(log n),
//! never a scan of the whole map.

use std::hash::Hash;

use crate::bounded::ExpiringMap;

pub struct Expiring<K> {
    /// key -> when it was recorded; each entry expires `ttl` after that.
    recorded: ExpiringMap<K, u64>,
    ttl: u64,
}

impl<K: Eq + Hash + Clone> Expiring<K> {
    pub fn new(ttl_secs: u64, capacity: usize) -> Self {
        Self {
            recorded: ExpiringMap::new(capacity),
            ttl: ttl_secs,
        }
    }

    /// Records `key` at `now` (a later record replaces an earlier one). Returns whether the
    /// key was new, i.e. not recorded within the last `ttl` seconds.
    pub fn record(&mut self, key: K, now: u64) -> bool {
        let expires = now.saturating_add(self.ttl);
        self.recorded.insert(key, now, expires, now).new
    }

    /// When `key` was last recorded, if that was within the last `ttl` seconds.
    pub fn get(&self, key: &K, now: u64) -> Option<u64> {
        self.recorded.get(key, now).copied()
    }

    pub fn len(&self) -> usize {
        self.recorded.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recorded.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_key_is_new_once_per_ttl() {
        let mut set = Expiring::new(10, 100);
        assert!(set.record("a", 100));
        assert!(!set.record("a", 105));
        assert_eq!(set.get(&"a", 105), Some(105));
        assert_eq!(set.get(&"a", 115), None);
        assert!(set.record("a", 116));
    }

    #[test]
    fn the_oldest_entry_goes_when_full() {
        let mut set = Expiring::new(1_000, 3);
        for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            set.record(k, i as u64);
        }
        assert_eq!(set.len(), 3);
        assert_eq!(set.get(&"a", 10), None);
        assert_eq!(set.get(&"d", 10), Some(3));
    }

    proptest! {
        /// Whatever is recorded, the record never holds more than its capacity, and a key
        /// recorded within the ttl (and not pushed out) is found with its latest time.
        #[test]
        fn the_record_stays_bounded_and_correct(
            ops in proptest::collection::vec((0u8..20, 0u64..5), 1..400),
        ) {
            let mut set = Expiring::new(30, 16);
            let mut now = 0;
            for (key, step) in ops {
                now += step;
                set.record(key, now);
                prop_assert!(set.len() <= 16);
                prop_assert_eq!(set.get(&key, now), Some(now));
            }
        }
    }
}
