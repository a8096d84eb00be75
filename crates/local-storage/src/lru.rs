//! [`Lru`]: the index of a byte-bounded cache, with pinning.
//!
//! Recency is a logical clock, bumped on every use. Unpinned entries sit in `order` keyed by
//! their last tick, so the least recently used one is the first key and eviction costs O(log n)
//! per evicted entry. A pinned entry is taken out of `order` while pinned, which is what keeps it
//! from being evicted; when its last pin goes it goes back under the tick of its last use.
//!
//! Every entry carries a [`Generation`] handed out when it is inserted. Pins are released
//! against it, so a pin taken on an entry that was since removed and inserted again cannot
//! release a pin of the newer entry.
//!
//! The index holds no data of its own beyond what the owner gives it as the value (the bytes
//! themselves, or metadata about a file); evicted entries are handed back so that the owner can
//! free what they stand for (delete a file, say) outside its lock.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Which insertion of a key an entry is; pins and generation-checked removals name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Generation(u64);

struct Entry<V> {
    size: u64,
    pins: u32,
    tick: u64,
    generation: Generation,
    value: V,
}

/// A map from keys to values with a size each, ranked by last use, bounded by the total size
/// of its entries (see the module documentation).
pub struct Lru<K, V> {
    entries: HashMap<K, Entry<V>>,
    order: BTreeMap<u64, K>,
    clock: u64,
    next_generation: u64,
    total: u64,
    capacity: u64,
}

/// What [`Lru::pin`] hands back: the entry, and the generation to release the pin with.
pub struct Pinned<'a, V> {
    pub size: u64,
    pub generation: Generation,
    pub value: &'a mut V,
}

impl<K: Clone + Eq + Hash, V> Lru<K, V> {
    /// An empty index whose entries should total at most `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Lru {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
            next_generation: 0,
            total: 0,
            capacity,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of all entries, pinned or not. Exceeds the capacity only while pinned entries (or
    /// one kept by [`Lru::evict`]) hold the space.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// The value of `key`, without counting as a use.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|e| &e.value)
    }

    /// The value of `key`, without counting as a use.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|e| &mut e.value)
    }

    /// The generation of the entry of `key`, if there is one.
    pub fn generation(&self, key: &K) -> Option<Generation> {
        self.entries.get(key).map(|e| e.generation)
    }

    /// All entries with their values, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, e)| (k, &e.value))
    }

    fn next_tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Marks `key` as just used. `None` when there is no such entry.
    pub fn touch(&mut self, key: &K) -> Option<&mut V> {
        let tick = self.next_tick();
        let entry = self.entries.get_mut(key)?;
        if entry.pins == 0 {
            self.order.remove(&entry.tick);
            self.order.insert(tick, key.clone());
        }
        entry.tick = tick;
        Some(&mut entry.value)
    }

    /// Adds an entry as the most recently used one. If `key` is there already, it is only
    /// touched (its value and size stay) and `false` is returned. Evicts nothing: call
    /// [`Lru::evict`] after.
    pub fn insert(&mut self, key: K, size: u64, value: V) -> bool {
        if self.touch(&key).is_some() {
            return false;
        }
        let tick = self.next_tick();
        let generation = Generation(self.next_generation);
        self.next_generation += 1;
        self.order.insert(tick, key.clone());
        self.entries.insert(
            key,
            Entry {
                size,
                pins: 0,
                tick,
                generation,
                value,
            },
        );
        self.total += size;
        true
    }

    /// Adds an entry as a new generation, the most recently used one, in place of any entry
    /// `key` had, whose value is returned: pins of the old entry no longer count, and nothing
    /// done in the name of the old generation reaches the new one.
    pub fn replace(&mut self, key: K, size: u64, value: V) -> Option<V> {
        let old = self.remove(&key);
        self.insert(key, size, value);
        old
    }

    /// Uses and pins an entry: it cannot be evicted until [`Lru::unpin`] is called with the
    /// returned generation (as many times as it was pinned).
    pub fn pin(&mut self, key: &K) -> Option<Pinned<'_, V>> {
        let tick = self.next_tick();
        let entry = self.entries.get_mut(key)?;
        if entry.pins == 0 {
            self.order.remove(&entry.tick);
        }
        entry.pins += 1;
        entry.tick = tick;
        Some(Pinned {
            size: entry.size,
            generation: entry.generation,
            value: &mut entry.value,
        })
    }

    /// Releases one pin taken by [`Lru::pin`] on generation `generation` of `key`; nothing if
    /// that generation is gone or not pinned. An entry whose last pin goes becomes evictable
    /// again, ranked by its last use.
    pub fn unpin(&mut self, key: &K, generation: Generation) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        if entry.generation != generation || entry.pins == 0 {
            return;
        }
        entry.pins -= 1;
        if entry.pins == 0 {
            self.order.insert(entry.tick, key.clone());
        }
    }

    /// Takes out the entry of `key`, pinned or not.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let entry = self.entries.remove(key)?;
        if entry.pins == 0 {
            self.order.remove(&entry.tick);
        }
        self.total -= entry.size;
        Some(entry.value)
    }

    /// Takes out the entry of `key` if it is still generation `generation`: for an owner that
    /// found what an entry stood for gone or damaged while it was not holding the index, and
    /// must not drop a newer entry stored meanwhile.
    pub fn remove_generation(&mut self, key: &K, generation: Generation) -> Option<V> {
        if self.generation(key)? != generation {
            return None;
        }
        self.remove(key)
    }

    /// Takes out least recently used, unpinned entries until the total fits the capacity, and
    /// returns them oldest first. `keep` (the entry just added) is never chosen: if only it and
    /// pinned entries are left, the total stays over capacity until pins are released.
    pub fn evict(&mut self, keep: Option<&K>) -> Vec<(K, V)> {
        let mut evicted = Vec::new();
        while self.total > self.capacity {
            let Some((_, oldest)) = self.order.first_key_value() else {
                break;
            };
            if Some(oldest) == keep {
                break;
            }
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&key) {
                self.total -= entry.size;
                evicted.push((key, entry.value));
            }
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<V>(evicted: Vec<(u8, V)>) -> Vec<u8> {
        evicted.into_iter().map(|(k, _)| k).collect()
    }

    /// What the index believes against what its entries add up to.
    fn assert_consistent<V>(lru: &Lru<u8, V>) {
        let sum: u64 = lru.entries.values().map(|e| e.size).sum();
        assert_eq!(sum, lru.total());
        let unpinned = lru.entries.values().filter(|e| e.pins == 0).count();
        assert_eq!(unpinned, lru.order.len());
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut lru = Lru::new(30);
        for k in 1..=3 {
            assert!(lru.insert(k, 10, ()));
        }
        assert!(lru.evict(None).is_empty(), "exactly at capacity");
        // Order of use becomes 2, 1, 3: touching and re-inserting both count as uses, `get`
        // does not.
        assert!(lru.touch(&1).is_some());
        assert!(!lru.insert(3, 10, ()));
        assert!(lru.get(&2).is_some());
        assert!(lru.insert(4, 10, ()));
        assert!(lru.insert(5, 10, ()));
        assert_eq!(keys(lru.evict(None)), [2, 1]);
        assert_eq!((lru.len(), lru.total()), (3, 30));
        assert!(lru.touch(&9).is_none());
        assert_consistent(&lru);
    }

    #[test]
    fn pinned_entries_are_never_evicted() {
        let mut lru = Lru::new(30);
        for k in 1..=3 {
            lru.insert(k, 10, ());
        }
        let first = lru.pin(&1).map(|p| p.generation);
        let second = lru.pin(&1).map(|p| p.generation);
        assert_eq!(first, second);
        lru.insert(4, 10, ());
        lru.insert(5, 10, ());
        assert_eq!(keys(lru.evict(None)), [2, 3]);
        // Only pinned entries are older than the kept one: the total stays over capacity.
        lru.insert(6, 25, ());
        assert_eq!(keys(lru.evict(Some(&6))), [4, 5]);
        assert_eq!(lru.total(), 35);
        assert_consistent(&lru);
        // One of two pins released: still protected.
        lru.unpin(&1, first.unwrap());
        assert!(lru.evict(Some(&6)).is_empty());
        // Released, 1 ranks by its last use (its second pin, before 6 was added), so it goes.
        lru.unpin(&1, second.unwrap());
        assert_eq!(keys(lru.evict(None)), [1]);
        assert_eq!((lru.len(), lru.total()), (1, 25));
        assert_consistent(&lru);
    }

    #[test]
    fn a_use_while_pinned_counts_once_released() {
        let mut lru = Lru::new(20);
        lru.insert(1, 10, ());
        lru.insert(2, 10, ());
        let pin = lru.pin(&1).map(|p| p.generation);
        lru.touch(&2);
        lru.touch(&1);
        lru.unpin(&1, pin.unwrap());
        lru.insert(3, 10, ());
        assert_eq!(keys(lru.evict(None)), [2]);
        assert_consistent(&lru);
    }

    #[test]
    fn reinserting_only_touches_and_replacing_starts_a_new_generation() {
        let mut lru = Lru::new(100);
        assert!(lru.insert(1, 10, 'a'));
        assert!(!lru.insert(1, 50, 'b'), "already there: only touched");
        assert_eq!((lru.get(&1), lru.total()), (Some(&'a'), 10));

        let old = lru.pin(&1).map(|p| p.generation).unwrap();
        assert_eq!(lru.replace(1, 20, 'c'), Some('a'));
        assert_eq!((lru.get(&1), lru.total(), lru.len()), (Some(&'c'), 20, 1));
        assert_ne!(lru.generation(&1), Some(old));
        // Work for the old generation does not reach the new one.
        assert_eq!(lru.remove_generation(&1, old), None);
        lru.unpin(&1, old);
        assert_consistent(&lru);
        // The new entry is not pinned by the old pin: capacity pressure takes it.
        lru.insert(2, 95, 'd');
        assert_eq!(keys(lru.evict(Some(&2))), [1]);
        assert_eq!(lru.replace(3, 1, 'e'), None);
        assert_consistent(&lru);
    }

    #[test]
    fn a_stale_pin_release_is_ignored() {
        let mut lru = Lru::new(100);
        lru.insert(1, 10, ());
        let old = lru.pin(&1).map(|p| p.generation).unwrap();
        assert!(lru.remove_generation(&1, old).is_some());
        lru.insert(1, 10, ());
        let new = lru.pin(&1).map(|p| p.generation).unwrap();
        lru.unpin(&1, old);
        lru.insert(2, 95, ());
        assert_eq!(keys(lru.evict(None)), [2], "1 is still pinned by `new`");
        lru.unpin(&1, new);
        lru.unpin(&1, new);
        assert!(lru.evict(None).is_empty());
        assert_consistent(&lru);
    }

    #[test]
    fn removing_keeps_the_accounting() {
        let mut lru = Lru::new(100);
        lru.insert(1, 10, "one");
        lru.insert(2, 20, "two");
        lru.pin(&2);
        assert_eq!(lru.remove(&2), Some("two"), "pinned entries can be removed");
        assert_eq!(lru.remove(&2), None);
        assert_eq!((lru.len(), lru.total()), (1, 10));
        *lru.get_mut(&1).unwrap() = "uno";
        assert_eq!(lru.iter().collect::<Vec<_>>(), [(&1, &"uno")]);
        assert_eq!(lru.remove(&1), Some("uno"));
        assert!(lru.is_empty() && !lru.contains(&1));
        assert_eq!(lru.total(), 0);
        assert_consistent(&lru);
    }

    #[test]
    fn an_entry_over_capacity_alone_is_kept_only_while_protected() {
        let mut lru = Lru::new(10);
        lru.insert(1, 4, ());
        lru.insert(2, 50, ());
        assert_eq!(keys(lru.evict(Some(&2))), [1]);
        assert_eq!((lru.len(), lru.total()), (1, 50));
        // Unprotected, it goes like any other.
        assert_eq!(keys(lru.evict(None)), [2]);
        assert_eq!(lru.total(), 0);
        // Zero-sized entries always fit.
        let mut empty = Lru::new(0);
        empty.insert(1, 0, ());
        assert!(empty.evict(None).is_empty());
        assert_consistent(&empty);
    }
}
