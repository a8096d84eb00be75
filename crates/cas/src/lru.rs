//! A byte-bounded least-recently-used index, shared by the action-cache stores.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

pub(crate) struct Lru<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// Use tick → key, oldest first.
    order: BTreeMap<u64, K>,
    tick: u64,
    total: u64,
    capacity: u64,
}

struct Entry<V> {
    value: V,
    size: u64,
    tick: u64,
}

impl<K: Clone + Eq + Hash, V> Lru<K, V> {
    pub(crate) fn new(capacity: u64) -> Lru<K, V> {
        Lru {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            total: 0,
            capacity,
        }
    }

    /// The value of `key`, now the most recently used.
    pub(crate) fn get(&mut self, key: &K) -> Option<&V> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(key)?;
        self.order.remove(&entry.tick);
        entry.tick = tick;
        self.order.insert(tick, key.clone());
        Some(&entry.value)
    }

    /// Inserts or replaces `key`, then evicts least recently used entries (never this one) while
    /// over capacity. Returns what was evicted (the replaced value is dropped).
    pub(crate) fn insert(&mut self, key: K, value: V, size: u64) -> Vec<(K, V)> {
        self.remove(&key);
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.entries.insert(
            key.clone(),
            Entry {
                value,
                size,
                tick: self.tick,
            },
        );
        self.total += size;
        let mut evicted = Vec::new();
        while self.total > self.capacity {
            let Some((_, oldest)) = self.order.first_key_value() else {
                break;
            };
            if *oldest == key {
                break;
            }
            let oldest = oldest.clone();
            if let Some(value) = self.remove(&oldest) {
                evicted.push((oldest, value));
            }
        }
        evicted
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let entry = self.entries.remove(key)?;
        self.order.remove(&entry.tick);
        self.total -= entry.size;
        Some(entry.value)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_first() {
        let mut lru = Lru::new(10);
        assert!(lru.insert("a", 1, 4).is_empty());
        assert!(lru.insert("b", 2, 4).is_empty());
        assert_eq!(lru.get(&"a"), Some(&1));
        assert_eq!(lru.insert("c", 3, 4), vec![("b", 2)]);
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.total(), 8);
        // Replacing keeps one entry; an entry larger than the capacity is still kept alone.
        assert!(lru.insert("a", 5, 2).is_empty());
        assert_eq!(lru.insert("big", 9, 50).len(), 2);
        assert_eq!(lru.get(&"big"), Some(&9));
        assert_eq!(lru.remove(&"big"), Some(9));
        assert_eq!(lru.total(), 0);
    }
}
