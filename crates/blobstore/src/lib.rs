//! Content-addressed blob storage for the REAPI CAS and action cache.
//!
//! [`BlobStore`] is the contract the gRPC services are written against: reads and writes are
//! streams of chunks, so large blobs are never held whole in memory; a write only becomes visible
//! once its size and SHA-256 match the digest it was started for, and a store whose bytes can
//! change after that (files on disk) checks them again when they are read: bytes that no longer
//! match are never passed off as the blob ([`BlobError::Corrupt`]).
//!
//! Implementations: [`MemoryBlobStore`] and [`FsBlobStore`] (the default, kept across restarts;
//! its module documents the on-disk layout), and [`TieredBlobStore`] puts one in front of another. Both are bounded by total size and evict least
//! recently used blobs first, never a blob with an open read stream. [`put`], [`get`] and
//! [`sha256_digest`] are whole-blob helpers for small blobs.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;
pub use scoot_core::Digest;

mod chunks;
mod filecheck;
pub mod fs;
mod index;
pub mod memory;
pub mod tiered;
pub mod util;
mod verify;

pub use fs::FsBlobStore;
pub use memory::MemoryBlobStore;
pub use tiered::{BlobSource, TieredBlobStore};
pub use util::{get, next_chunk, put, sha256_digest};
pub use verify::CheckedStream;

#[cfg(test)]
mod tests;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {0} not found")]
    NotFound(Digest),
    /// What was written does not hash (or size) to the digest it was written for.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: String },
    /// The stored bytes no longer hash (or size) to their digest: damaged after they were
    /// written. The store drops the blob when it finds this, so it reads as missing afterwards
    /// and the next upload stores it again.
    #[error("the stored bytes of {digest} are corrupt ({actual})")]
    Corrupt { digest: Digest, actual: String },
    #[error("read offset {offset} is past the end of {digest}")]
    OffsetOutOfRange { digest: Digest, offset: u64 },
    /// The blob cannot fit in the store at all.
    #[error("blob {0} is larger than the store")]
    TooLarge(Digest),
    /// The directory of a file store is held by another store.
    #[error(transparent)]
    Lock(#[from] scoot_local_storage::LockError),
    #[error("{0}")]
    Io(String),
}

pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes, BlobError>> + Send>>;

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Those of `digests` that are not stored. The empty blob is always present. Present blobs
    /// count as used (they are the last to be evicted).
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, BlobError>;

    /// Those of `digests` that are missing or whose stored bytes are corrupt (which are then
    /// dropped). Unlike `find_missing`, which answers from what the store believes it holds, this
    /// checks the bytes, so it costs up to a hash of each blob; it is for callers about to promise
    /// that blobs are usable (an action-cache hit, skipping an upload). The default suits stores
    /// whose bytes cannot change once a verified write stored them (in memory).
    async fn find_missing_or_corrupt(&self, digests: &[Digest]) -> Result<Vec<Digest>, BlobError> {
        self.find_missing(digests).await
    }

    /// The bytes `[offset, offset + limit)` of a blob (`limit` 0 = to the end) as a stream of
    /// chunks. A blob being read is never evicted until the stream is dropped. A store that can
    /// find its bytes damaged fails with [`BlobError::Corrupt`] before yielding anything, or, for
    /// a large blob read whole, as the last item of the stream.
    async fn read(&self, digest: &Digest, offset: u64, limit: u64)
    -> Result<BlobStream, BlobError>;

    /// Starts writing the blob `digest`. Several writers of the same digest may run at once; each
    /// that finishes leaves the blob stored intact (the file store replaces what it held with the
    /// verified new bytes, which also repairs a damaged copy).
    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>, BlobError>;
}

#[async_trait]
pub trait BlobWriter: Send {
    /// Appends the next chunk.
    async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError>;
    /// Bytes accepted so far.
    fn written(&self) -> u64;
    /// Checks size and SHA-256 and makes the blob visible; on mismatch nothing is stored.
    async fn finish(self: Box<Self>) -> Result<(), BlobError>;
}
