//! A map bounded by size and by age, for what Gatehouse keeps in memory on behalf of clients
//! that have not signed in yet (used login states, logins waiting for their second factor,
//! refused tokens). Expiry is O(log n) per entry: entries are also kept in expiry order, so
//! dropping the expired ones never scans the map. When the map is full, the entry closest to
//! its expiry makes room, and the caller is told (to count it).
//!
//! Not thread-safe on its own: the owner wraps it in a lock, and every operation under that
//! lock is O(log n).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// What an insert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// False when the key was already there (its value and expiry are replaced).
    pub new: bool,
    /// Live entries dropped to make room (0 unless the map was full).
    pub evicted: usize,
}

#[derive(Debug)]
pub struct ExpiringMap<K, V> {
    capacity: usize,
    entries: HashMap<K, (V, u64, u64)>,
    /// (expiry, insertion number) -> key: the order entries expire in.
    by_expiry: BTreeMap<(u64, u64), K>,
    next: u64,
}

impl<K: Hash + Eq + Clone, V> ExpiringMap<K, V> {
    /// A map of at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            next: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every entry whose expiry is at or before `now`. Returns how many.
    pub fn purge(&mut self, now: u64) -> usize {
        let mut dropped = 0;
        while let Some(entry) = self.by_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.entries.remove(&key);
            dropped += 1;
        }
        dropped
    }

    /// Keeps `value` under `key` until `expires` (unix seconds).
    pub fn insert(&mut self, key: K, value: V, expires: u64, now: u64) -> Inserted {
        self.purge(now);
        let new = match self.entries.remove(&key) {
            Some((_, exp, n)) => {
                self.by_expiry.remove(&(exp, n));
                false
            }
            None => true,
        };
        let mut evicted = 0;
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_expiry.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            evicted += 1;
        }
        let n = self.next;
        self.next += 1;
        self.by_expiry.insert((expires, n), key.clone());
        self.entries.insert(key, (value, expires, n));
        Inserted { new, evicted }
    }

    /// The value under `key` unless it has expired.
    pub fn get(&self, key: &K, now: u64) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(_, exp, _)| *exp > now)
            .map(|(v, _, _)| v)
    }

    /// Takes the value under `key` out, unless it has expired.
    pub fn remove(&mut self, key: &K, now: u64) -> Option<V> {
        let (value, exp, n) = self.entries.remove(key)?;
        self.by_expiry.remove(&(exp, n));
        (exp > now).then_some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_until_its_expiry_and_not_after() {
        let mut map = ExpiringMap::new(10);
        map.insert("a", 1, 100, 0);
        assert_eq!(map.get(&"a", 99), Some(&1));
        assert_eq!(map.get(&"a", 100), None);
        assert_eq!(map.purge(100), 1);
        assert!(map.is_empty());
    }

    #[test]
    fn a_second_insert_of_a_key_says_so_and_replaces_it() {
        let mut map = ExpiringMap::new(10);
        assert!(map.insert("a", 1, 100, 0).new);
        let again = map.insert("a", 2, 200, 0);
        assert!(!again.new);
        assert_eq!(map.get(&"a", 150), Some(&2));
        assert_eq!(map.len(), 1);
        assert_eq!(
            map.purge(150),
            0,
            "the first expiry must be gone with the first value"
        );
    }

    #[test]
    fn a_full_map_drops_the_entry_closest_to_expiry_and_counts_it() {
        let mut map = ExpiringMap::new(3);
        map.insert("late", 0, 300, 0);
        map.insert("soon", 0, 100, 0);
        map.insert("mid", 0, 200, 0);
        let outcome = map.insert("new", 0, 400, 0);
        assert_eq!(outcome.evicted, 1);
        assert_eq!(map.len(), 3);
        assert!(map.get(&"soon", 0).is_none());
        assert!(map.get(&"late", 0).is_some());
    }

    #[test]
    fn expired_entries_make_room_before_live_ones_are_evicted() {
        let mut map = ExpiringMap::new(2);
        map.insert("old", 0, 10, 0);
        map.insert("live", 0, 100, 0);
        let outcome = map.insert("new", 0, 100, 50);
        assert_eq!(outcome.evicted, 0);
        assert!(map.get(&"live", 50).is_some());
    }

    #[test]
    fn a_flood_of_keys_never_grows_the_map_past_its_capacity() {
        let mut map = ExpiringMap::new(1000);
        for i in 0..100_000u64 {
            map.insert(i, (), 1_000_000 + i, i / 10);
            assert!(map.len() <= 1000);
        }
        assert_eq!(map.by_expiry.len(), map.entries.len());
    }

    #[test]
    fn remove_takes_a_live_entry_once_and_never_an_expired_one() {
        let mut map = ExpiringMap::new(10);
        map.insert("a", 1, 100, 0);
        map.insert("b", 2, 100, 0);
        assert_eq!(map.remove(&"a", 50), Some(1));
        assert_eq!(map.remove(&"a", 50), None);
        assert_eq!(map.remove(&"b", 100), None);
        assert!(map.is_empty());
    }
}
