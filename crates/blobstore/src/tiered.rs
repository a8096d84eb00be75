//! Two stores seen as one: blobs are written to the near store and looked up there first, then
//! in the far one. The scheduler serves its CAS this way with the cluster's apiserver CAS behind
//! it, so blobs a client put in the apiserver (Scoot's bzutil walk-through) are found without
//! copying them.

use std::sync::Arc;

use async_trait::async_trait;

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

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: u64,
    ) -> Result<BlobStream, BlobError> {
        match self.near.read(digest, offset, limit).await {
            Err(BlobError::NotFound(_)) => self.far.read(digest, offset, limit).await,
            other => other,
        }
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
}
