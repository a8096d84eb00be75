//! Two stores seen as one: blobs are written to the near store and looked up there first, then
//! in the far one. The scheduler serves its CAS this way with the cluster's apiserver CAS behind
//! it, so blobs a client put in the apiserver (Scoot's bzutil walk-through) are found without
//! copying them.
//!
//! Bytes from the far store are checked too: a whole read of a far blob is hashed as it passes
//! and ends with [`BlobError::Corrupt`] if it was not the blob (nothing is dropped: the far store
//! is not ours to repair). A range of a far blob is passed as read, the far store checking its
//! own bytes. A near copy found damaged is dropped by the near store, and the read or check
//! falls through to the far one.

use std::sync::Arc;

use async_trait::async_trait;

use crate::verify::CheckedStream;
use crate::{BlobError, BlobStore, BlobStream, BlobWriter, Digest};

/// The read side of a store: what the far tier must offer (a remote CAS, say).
#[async_trait]
pub trait BlobSource: Send + Sync + 'static {
    /// As [`BlobStore::find_missing`].
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, BlobError>;
    /// As [`BlobStore::read`].
    async fn read(&self, digest: &Digest, offset: u64, limit: u64)
    -> Result<BlobStream, BlobError>;
}

#[async_trait]
impl<S: BlobStore> BlobSource for S {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, BlobError> {
        BlobStore::find_missing(self, digests).await
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: u64,
    ) -> Result<BlobStream, BlobError> {
        BlobStore::read(self, digest, offset, limit).await
    }
}

pub struct TieredBlobStore {
    near: Arc<dyn BlobStore>,
    far: Arc<dyn BlobSource>,
}

impl TieredBlobStore {
    pub fn new(near: Arc<dyn BlobStore>, far: Arc<dyn BlobSource>) -> TieredBlobStore {
        TieredBlobStore { near, far }
    }
}

#[async_trait]
impl BlobStore for TieredBlobStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, BlobError> {
        let missing_near = BlobStore::find_missing(&*self.near, digests).await?;
        if missing_near.is_empty() {
            return Ok(missing_near);
        }
        // The far store is a convenience: while it is down, blobs only it has count as missing
        // (the client uploads them again) rather than failing every lookup.
        match self.far.find_missing(&missing_near).await {
            Ok(missing) => Ok(missing),
            Err(err) => {
                tracing::warn!(error = %err, "far blob store unavailable; treating its blobs as missing");
                Ok(missing_near)
            }
        }
    }

    async fn find_missing_or_corrupt(&self, digests: &[Digest]) -> Result<Vec<Digest>, BlobError> {
        let unusable_near = self.near.find_missing_or_corrupt(digests).await?;
        if unusable_near.is_empty() {
            return Ok(unusable_near);
        }
        match self.far.find_missing(&unusable_near).await {
            Ok(missing) => Ok(missing),
            Err(err) => {
                tracing::warn!(error = %err, "far blob store unavailable; treating its blobs as missing");
                Ok(unusable_near)
            }
        }
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: u64,
    ) -> Result<BlobStream, BlobError> {
        match self.near.read(digest, offset, limit).await {
            Err(BlobError::NotFound(_) | BlobError::Corrupt { .. }) => {}
            other => return other,
        }
        let stream = self.far.read(digest, offset, limit).await?;
        let whole = offset == 0
            && (limit == 0 || u64::try_from(digest.size_bytes).is_ok_and(|size| limit >= size));
        if !whole {
            return Ok(stream);
        }
        Ok(Box::pin(CheckedStream::new(stream, digest)?))
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>, BlobError> {
        self.near.begin_write(digest).await
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{MemoryBlobStore, get, put, sha256_digest};

    #[tokio::test]
    async fn finds_and_reads_through_both_and_writes_near() {
        let near = Arc::new(MemoryBlobStore::new(1 << 20));
        let far = Arc::new(MemoryBlobStore::new(1 << 20));
        let tiered = TieredBlobStore::new(near.clone(), far.clone());
        let (in_far, in_near, nowhere) = (
            Bytes::from_static(b"far"),
            Bytes::from_static(b"near"),
            Bytes::from_static(b"nowhere"),
        );
        let digest = |b: &Bytes| sha256_digest(b);
        put(&*far, &digest(&in_far), in_far.clone()).await.unwrap();
        put(&tiered, &digest(&in_near), in_near.clone())
            .await
            .unwrap();

        let wanted = [digest(&in_far), digest(&in_near), digest(&nowhere)];
        let missing = BlobStore::find_missing(&tiered, &wanted).await.unwrap();
        assert_eq!(missing, vec![digest(&nowhere)]);
        assert_eq!(get(&tiered, &digest(&in_far), 100).await.unwrap(), in_far);
        assert_eq!(get(&tiered, &digest(&in_near), 100).await.unwrap(), in_near);
        // Writes land in the near store only.
        let far_missing = BlobStore::find_missing(&*far, &[digest(&in_near)]).await;
        assert_eq!(far_missing.unwrap().len(), 1);
        assert!(matches!(
            BlobStore::read(&tiered, &digest(&nowhere), 0, 0).await,
            Err(BlobError::NotFound(_))
        ));
    }

    /// A far source that serves whatever bytes it was given for a digest.
    struct Liar(Bytes);

    #[async_trait]
    impl BlobSource for Liar {
        async fn find_missing(&self, _: &[Digest]) -> Result<Vec<Digest>, BlobError> {
            Ok(Vec::new())
        }

        async fn read(&self, _: &Digest, offset: u64, _: u64) -> Result<BlobStream, BlobError> {
            let rest = self.0.slice(offset as usize..);
            let near = MemoryBlobStore::new(1 << 20);
            let digest = sha256_digest(&rest);
            put(&near, &digest, rest).await?;
            BlobStore::read(&near, &digest, 0, 0).await
        }
    }

    #[tokio::test]
    async fn far_bytes_that_are_not_the_blob_end_in_an_error() {
        let good = Bytes::from(vec![5u8; 1000]);
        let mut bad = good.to_vec();
        bad[500] ^= 1;
        let tiered = TieredBlobStore::new(
            Arc::new(MemoryBlobStore::new(1 << 20)),
            Arc::new(Liar(Bytes::from(bad))),
        );
        let d = sha256_digest(&good);
        assert!(matches!(
            get(&tiered, &d, 1000).await,
            Err(BlobError::Corrupt { .. })
        ));
        // A range is passed as the far store serves it.
        let mut range = BlobStore::read(&tiered, &d, 600, 0).await.unwrap();
        let chunk = crate::next_chunk(&mut range).await.unwrap().unwrap();
        assert_eq!(chunk.len(), 400);
    }
}
