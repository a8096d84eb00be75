//! The bookkeeping both stores share: which blobs are stored, how big they are, how recently each
//! was used and which are pinned by open read streams.
//!
//! Recency is a logical clock (`tick`), bumped on every use. Unpinned entries sit in `order`
//! keyed by their last tick, so the least recently used one is the first key and eviction costs
//! O(log n) per evicted blob. A pinned entry is taken out of `order` while pinned, which is what
//! keeps it from being evicted; when its last pin goes it goes back under the tick of its last
//! use (the start of its most recent read).
//!
//! Every entry carries a generation number (`id`) handed out when it is inserted. Pins are
//! released against that number, so a pin taken on a blob that was since removed and stored
//! again cannot release a pin of the newer entry.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::Digest;

pub(crate) struct Entry<V> {
    size: u64,
    pins: u32,
    tick: u64,
    id: u64,
    pub(crate) value: V,
}

pub(crate) struct LruIndex<V> {
    entries: HashMap<Digest, Entry<V>>,
    order: BTreeMap<u64, Digest>,
    clock: u64,
    next_id: u64,
    total: u64,
    capacity: u64,
}

/// What `pin` hands back: enough to read the blob and to release the pin later.
pub(crate) struct Pinned<'a, V> {
    pub(crate) size: u64,
    pub(crate) id: u64,
    pub(crate) value: &'a mut V,
}

impl<V> LruIndex<V> {
    pub(crate) fn new(capacity: u64) -> Self {
        LruIndex {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            clock: 0,
            next_id: 0,
            total: 0,
            capacity,
        }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes of all stored blobs, pinned or not.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn next_tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Marks `digest` as just used. `None` when it is not stored.
    pub(crate) fn touch(&mut self, digest: &Digest) -> Option<&mut V> {
        let tick = self.next_tick();
        let entry = self.entries.get_mut(digest)?;
        if entry.pins == 0 {
            self.order.remove(&entry.tick);
            self.order.insert(tick, digest.clone());
        }
        entry.tick = tick;
        Some(&mut entry.value)
    }

    /// Adds a blob as the most recently used one. If it is already stored, it is only touched
    /// and `false` is returned.
    pub(crate) fn insert(&mut self, digest: Digest, size: u64, value: V) -> bool {
        if self.touch(&digest).is_some() {
            return false;
        }
        let tick = self.next_tick();
        let id = self.next_id;
        self.next_id += 1;
        self.order.insert(tick, digest.clone());
        self.entries.insert(
            digest,
            Entry {
                size,
                pins: 0,
                tick,
                id,
                value,
            },
        );
        self.total += size;
        true
    }

    /// Stores a blob as a new generation, as the most recently used one, in place of any entry
    /// it had: pins of the old entry no longer count, and nothing done on behalf of the old
    /// entry (by its id) touches the new one.
    pub(crate) fn replace(&mut self, digest: Digest, size: u64, value: V) {
        if let Some(old) = self.entries.get(&digest).map(|e| e.id) {
            self.remove(&digest, old);
        }
        self.insert(digest, size, value);
    }

    /// The value of the entry of `digest` with generation `id`, without using it.
    pub(crate) fn value_mut(&mut self, digest: &Digest, id: u64) -> Option<&mut V> {
        self.entries
            .get_mut(digest)
            .filter(|e| e.id == id)
            .map(|e| &mut e.value)
    }

    /// Uses and pins a blob: it cannot be evicted until `unpin` is called with the returned id.
    pub(crate) fn pin(&mut self, digest: &Digest) -> Option<Pinned<'_, V>> {
        let tick = self.next_tick();
        let entry = self.entries.get_mut(digest)?;
        if entry.pins == 0 {
            self.order.remove(&entry.tick);
        }
        entry.pins += 1;
        entry.tick = tick;
        Some(Pinned {
            size: entry.size,
            id: entry.id,
            value: &mut entry.value,
        })
    }

    /// Releases one pin taken by `pin`. A blob whose last pin goes becomes evictable again, ranked
    /// by its last use.
    pub(crate) fn unpin(&mut self, digest: &Digest, id: u64) {
        let Some(entry) = self.entries.get_mut(digest) else {
            return;
        };
        if entry.id != id || entry.pins == 0 {
            return;
        }
        entry.pins -= 1;
        if entry.pins == 0 {
            self.order.insert(entry.tick, digest.clone());
        }
    }

    /// Forgets a blob (pinned or not); for blobs found to be gone or damaged behind the store's
    /// back.
    pub(crate) fn remove(&mut self, digest: &Digest, id: u64) -> Option<V> {
        if self.entries.get(digest)?.id != id {
            return None;
        }
        let entry = self.entries.remove(digest)?;
        if entry.pins == 0 {
            self.order.remove(&entry.tick);
        }
        self.total -= entry.size;
        Some(entry.value)
    }

    /// Removes least recently used, unpinned blobs until the total fits the capacity. `keep` (the
    /// blob just stored) is never chosen: if only it and pinned blobs are left, the store stays
    /// over capacity until pins are released.
    pub(crate) fn evict(&mut self, keep: Option<&Digest>) -> Vec<(Digest, V)> {
        let mut evicted = Vec::new();
        while self.total > self.capacity {
            let Some((_, oldest)) = self.order.first_key_value() else {
                break;
            };
            if Some(oldest) == keep {
                break;
            }
            let Some((_, digest)) = self.order.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&digest) {
                self.total -= entry.size;
                evicted.push((digest, entry.value));
            }
        }
        evicted
    }
}

/// Locks a store's index. A panic while it was held cannot leave it half updated (every update
/// is a few map operations that do not panic), so a poisoned lock is simply taken over.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Something that can release a pin; implemented by each store's shared state.
pub(crate) trait PinOwner: Send + Sync + 'static {
    fn release(&self, digest: &Digest, id: u64);
}

/// Holds one pin on a blob for as long as it lives; read streams own one.
pub(crate) struct PinGuard {
    owner: Arc<dyn PinOwner>,
    digest: Digest,
    id: u64,
}

impl PinGuard {
    pub(crate) fn new(owner: Arc<dyn PinOwner>, digest: Digest, id: u64) -> PinGuard {
        PinGuard { owner, digest, id }
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.owner.release(&self.digest, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest {
            hash: format!("{n:064x}"),
            size_bytes: 10,
        }
    }

    fn keys(evicted: Vec<(Digest, ())>) -> Vec<Digest> {
        evicted.into_iter().map(|(d, ())| d).collect()
    }

    #[test]
    fn evicts_least_recently_used_first_and_skips_pins() {
        let mut idx = LruIndex::new(30);
        for n in 1..=3 {
            assert!(idx.insert(d(n), 10, ()));
        }
        assert!(!idx.insert(d(1), 10, ()), "second insert only touches");
        assert_eq!(idx.total(), 30);
        // Order of use is now 2, 3, 1. Pin 2, add 4: 3 must go.
        let pin2 = idx.pin(&d(2)).map(|p| p.id);
        assert!(idx.insert(d(4), 10, ()));
        assert_eq!(keys(idx.evict(Some(&d(4)))), vec![d(3)]);
        // Everything unpinned except the kept one is 1; pinned 2 stays.
        assert!(idx.insert(d(5), 10, ()));
        assert_eq!(keys(idx.evict(Some(&d(5)))), vec![d(1)]);
        // A new blob bigger than what unpinned blobs free: 4 and 5 go, the new one is kept and
        // the store stays over capacity while 2 is pinned.
        assert!(idx.insert(d(6), 25, ()));
        assert_eq!(keys(idx.evict(Some(&d(6)))), vec![d(4), d(5)]);
        assert_eq!(idx.total(), 35);
        idx.unpin(&d(2), pin2.unwrap());
        // Released, 2 ranks by its last use (before 6), so it goes first.
        assert_eq!(keys(idx.evict(None)), vec![d(2)]);
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.total(), 25);
    }

    #[test]
    fn replacing_starts_a_new_generation() {
        let mut idx = LruIndex::new(100);
        idx.insert(d(1), 10, 'a');
        let old = idx.pin(&d(1)).unwrap().id;
        idx.replace(d(1), 10, 'b');
        assert_eq!(idx.total(), 10);
        assert_eq!(idx.len(), 1);
        // Work for the old generation does not reach the new one.
        assert!(idx.value_mut(&d(1), old).is_none());
        assert!(idx.remove(&d(1), old).is_none());
        // The new one is not pinned by the old pin: capacity pressure may take it.
        idx.unpin(&d(1), old);
        idx.insert(d(2), 95, 'c');
        assert_eq!(idx.evict(Some(&d(2))).len(), 1);
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn stale_pin_release_is_ignored() {
        let mut idx = LruIndex::new(100);
        idx.insert(d(1), 10, ());
        let old = idx.pin(&d(1)).unwrap().id;
        assert!(idx.remove(&d(1), old).is_some());
        idx.insert(d(1), 10, ());
        let new = idx.pin(&d(1)).unwrap().id;
        idx.unpin(&d(1), old);
        // Still pinned by `new`: capacity pressure cannot remove it.
        idx.insert(d(2), 95, ());
        assert_eq!(keys(idx.evict(None)), vec![d(2)]);
        idx.unpin(&d(1), new);
        assert_eq!(keys(idx.evict(None)), Vec::<Digest>::new());
    }
}
