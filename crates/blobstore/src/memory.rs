//! [`MemoryBlobStore`]: blobs in memory, bounded by total size.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use scoot_local_storage::Generation;

use crate::chunks::{SliceChunks, byte_range, read_empty_blob};
use crate::index::{Index, PinGuard, PinOwner, lock};
use crate::verify::Verifier;
use crate::{BlobError, BlobStore, BlobStream, BlobWriter, Digest};

/// Blobs held in memory, at most `capacity_bytes` of them in total (blobs pinned by open read
/// streams aside, see [`BlobStore::read`]); least recently used blobs are dropped first.
///
/// A write is buffered in its writer (as the chunks it was given) and hashed as it arrives; only
/// a blob whose size and SHA-256 match is added. Reads hand out slices of the stored buffer, so
/// they copy nothing; they are not hashed again, since a stored buffer is immutable (which is
/// also why `find_missing_or_corrupt` is `find_missing` here). Cheap to clone; clones share the
/// blobs.
#[derive(Clone)]
pub struct MemoryBlobStore {
    shared: Arc<Shared>,
}

struct Shared {
    index: Mutex<Index<Bytes>>,
}

impl MemoryBlobStore {
    pub fn new(capacity_bytes: u64) -> MemoryBlobStore {
        MemoryBlobStore {
            shared: Arc::new(Shared {
                index: Mutex::new(Index::new(capacity_bytes)),
            }),
        }
    }

    pub fn capacity(&self) -> u64 {
        lock(&self.shared.index).capacity()
    }

    /// Bytes of all stored blobs. Can exceed the capacity while pinned blobs hold space.
    pub fn used_bytes(&self) -> u64 {
        lock(&self.shared.index).total()
    }

    /// Number of stored blobs (the empty blob, never stored, is not counted).
    pub fn blob_count(&self) -> usize {
        lock(&self.shared.index).len()
    }
}

impl PinOwner for Shared {
    fn release(&self, digest: &Digest, id: Generation) {
        let evicted = {
            let mut index = lock(&self.index);
            index.unpin(digest, id);
            index.evict(None)
        };
        // The evicted buffers are freed here, outside the lock.
        drop(evicted);
    }
}

#[async_trait]
impl BlobStore for MemoryBlobStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, BlobError> {
        let mut index = lock(&self.shared.index);
        Ok(digests
            .iter()
            .filter(|d| !d.is_empty_blob() && index.touch(d).is_none())
            .cloned()
            .collect())
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: u64,
    ) -> Result<BlobStream, BlobError> {
        if digest.is_empty_blob() {
            return read_empty_blob(digest, offset);
        }
        let (data, id) = {
            let mut index = lock(&self.shared.index);
            let pinned = index
                .pin(digest)
                .ok_or_else(|| BlobError::NotFound(digest.clone()))?;
            (pinned.value.clone(), pinned.generation)
        };
        // Created after the lock is released: dropping it takes the lock.
        let pin = PinGuard::new(self.shared.clone(), digest.clone(), id);
        let (start, end) = byte_range(digest, data.len() as u64, offset, limit)?;
        // Both bounds are within `data.len()`, so they fit in usize.
        let rest = data.slice(start as usize..end as usize);
        Ok(Box::pin(SliceChunks::new(rest, pin)))
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>, BlobError> {
        let verifier = Verifier::new(digest)?;
        if verifier.expected_size() > self.capacity() {
            return Err(BlobError::TooLarge(digest.clone()));
        }
        Ok(Box::new(MemoryWriter {
            shared: self.shared.clone(),
            digest: digest.clone(),
            verifier,
            chunks: Vec::new(),
            accepted: 0,
            overflowed: false,
        }))
    }
}

struct MemoryWriter {
    shared: Arc<Shared>,
    digest: Digest,
    verifier: Verifier,
    chunks: Vec<Bytes>,
    accepted: u64,
    overflowed: bool,
}

#[async_trait]
impl BlobWriter for MemoryWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        if self.overflowed {
            return Err(self.verifier.overflow_error());
        }
        if let Err(e) = self.verifier.check_room(self.accepted, chunk.len()) {
            self.overflowed = true;
            self.chunks = Vec::new();
            return Err(e);
        }
        if chunk.is_empty() {
            return Ok(());
        }
        self.verifier.update(&chunk);
        self.accepted += chunk.len() as u64;
        self.chunks.push(chunk);
        Ok(())
    }

    fn written(&self) -> u64 {
        self.accepted
    }

    async fn finish(self: Box<Self>) -> Result<(), BlobError> {
        let MemoryWriter {
            shared,
            digest,
            verifier,
            mut chunks,
            overflowed,
            ..
        } = *self;
        if overflowed {
            return Err(verifier.overflow_error());
        }
        verifier.finish()?;
        if digest.is_empty_blob() {
            return Ok(());
        }
        let data = if chunks.len() == 1 {
            chunks.pop().unwrap_or_default()
        } else {
            let mut joined = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for chunk in &chunks {
                joined.extend_from_slice(chunk);
            }
            joined.freeze()
        };
        let size = data.len() as u64;
        let evicted = {
            let mut index = lock(&shared.index);
            // Already stored (another writer finished first): success, nothing to do.
            if !index.insert(digest.clone(), size, data) {
                return Ok(());
            }
            index.evict(Some(&digest))
        };
        drop(evicted);
        Ok(())
    }
}
