//! The bookkeeping both stores share: which blobs are stored, how big they are, how recently each
//! was used and which are pinned by open read streams ([`Index`], the shared byte-bounded LRU
//! keyed by digest), and the guard that holds a read stream's pin.
//!
//! Pins are released against the entry's generation, so a pin taken on a blob that was since
//! removed and stored again cannot release a pin of the newer entry.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use scoot_local_storage::{Generation, Lru};

use crate::Digest;

/// A store's index: what it keeps about each blob (`V`) besides its size.
pub(crate) type Index<V> = Lru<Digest, V>;

/// Locks a store's index. A panic while it was held cannot leave it half updated (every update
/// is a few map operations that do not panic), so a poisoned lock is simply taken over.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Something that can release a pin; implemented by each store's shared state.
pub(crate) trait PinOwner: Send + Sync + 'static {
    fn release(&self, digest: &Digest, generation: Generation);
}

/// Holds one pin on a blob for as long as it lives; read streams own one.
pub(crate) struct PinGuard {
    owner: Arc<dyn PinOwner>,
    digest: Digest,
    generation: Generation,
}

impl PinGuard {
    pub(crate) fn new(
        owner: Arc<dyn PinOwner>,
        digest: Digest,
        generation: Generation,
    ) -> PinGuard {
        PinGuard {
            owner,
            digest,
            generation,
        }
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.owner.release(&self.digest, self.generation);
    }
}
