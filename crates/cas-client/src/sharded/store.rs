//! A [`ShardedCas`] as a [`BlobStore`], so a server's CAS services can serve the shards as their
//! own (the scheduler's REAPI endpoint does).
//!
//! Reads take the first shard in the blob's order whose first answer is data, so a shard that
//! lacks the blob or fails at once is skipped; a failure after data was sent ends the stream with
//! the error (the client retries). Whole reads are verified as they pass
//! ([`CheckedStream`]); ranges are passed as the shard sent them, each shard checking its own
//! bytes. A write is spooled (in memory while small, else in a temporary file), verified, and
//! then uploaded to the blob's shards like any upload, so a failed shard can be replaced by the
//! next in the order without asking the client for the bytes again.

use std::collections::HashSet;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use scoot_blobstore::{BlobError, BlobStore, BlobStream, BlobWriter, CheckedStream};
use scoot_core::Digest;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tonic::Code;

use super::{ShardedCas, shard_failure};
use crate::source::blob_error;
use crate::{ClientError, MAX_BATCH_BLOB_BYTES};

/// The shards as one [`BlobStore`].
pub struct ShardedBlobStore {
    cas: ShardedCas,
}

impl ShardedBlobStore {
    /// Over `cas` for the empty instance name (the CAS is shared by every instance name).
    pub fn new(cas: &ShardedCas) -> ShardedBlobStore {
        ShardedBlobStore {
            cas: cas.with_instance(""),
        }
    }
}

fn io_error(error: ClientError) -> BlobError {
    BlobError::Io(error.to_string())
}

#[async_trait]
impl BlobStore for ShardedBlobStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, BlobError> {
        self.cas.find_missing(digests).await.map_err(io_error)
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: u64,
    ) -> Result<BlobStream, BlobError> {
        let whole = offset == 0
            && (limit == 0 || u64::try_from(digest.size_bytes).is_ok_and(|size| limit >= size));
        let stream = self.first_answer(digest, offset, limit).await?;
        if whole {
            Ok(Box::pin(CheckedStream::new(stream, digest)?))
        } else {
            Ok(stream)
        }
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>, BlobError> {
        let size = u64::try_from(digest.size_bytes).map_err(|_| BlobError::DigestMismatch {
            expected: digest.clone(),
            actual: "a negative size".into(),
        })?;
        Ok(Box::new(SpoolWriter {
            cas: self.cas.clone(),
            digest: digest.clone(),
            size,
            hasher: Sha256::new(),
            written: 0,
            spool: Spool::Memory(BytesMut::new()),
        }))
    }
}

impl ShardedBlobStore {
    /// A read stream from the first shard, in the blob's order, that starts sending the blob.
    async fn first_answer(
        &self,
        digest: &Digest,
        offset: u64,
        limit: u64,
    ) -> Result<BlobStream, BlobError> {
        if digest.is_empty_blob() && offset == 0 {
            return Ok(Box::pin(futures::stream::empty()));
        }
        let what = format!("reading blobs/{digest} from {offset}");
        let mut walk = self.cas.walk(digest);
        let mut told_missing = false;
        let mut last_error = None;
        while let Some(shard) = walk.next_shard(&HashSet::new()) {
            let client = &self.cas.clients[shard];
            let failure = match client.open_range(digest, offset, limit, &what).await {
                Ok(None) => {
                    told_missing = true;
                    continue;
                }
                Ok(Some(mut stream)) => match stream.message().await {
                    Ok(first) => {
                        self.cas.shard_answered(shard);
                        let first = first.map(|response| Ok(response.data));
                        let digest = digest.clone();
                        let rest = stream.map(move |item| {
                            item.map(|response| response.data).map_err(|status| {
                                blob_error(&digest, offset, status.code(), status.to_string())
                            })
                        });
                        return Ok(Box::pin(futures::stream::iter(first).chain(rest)));
                    }
                    Err(status) => ClientError::new(status.code(), format!("{what}: {status}")),
                },
                Err(e) => e,
            };
            match failure.code {
                Code::NotFound => told_missing = true,
                Code::OutOfRange => {
                    return Err(blob_error(digest, offset, failure.code, failure.message));
                }
                code if shard_failure(code) => {
                    self.cas.shard_failed(shard, &failure);
                    last_error = Some(failure);
                }
                _ => return Err(io_error(failure)),
            }
        }
        if told_missing {
            return Err(BlobError::NotFound(digest.clone()));
        }
        Err(io_error(super::no_shard_answered(&what, last_error)))
    }
}

/// Where a write's bytes wait until they verify.
enum Spool {
    Memory(BytesMut),
    /// Past [`MAX_BATCH_BLOB_BYTES`]: a temporary file, removed when dropped.
    File(tempfile::TempPath, tokio::fs::File),
}

struct SpoolWriter {
    cas: ShardedCas,
    digest: Digest,
    size: u64,
    hasher: Sha256,
    written: u64,
    spool: Spool,
}

fn spool_error(error: std::io::Error) -> BlobError {
    BlobError::Io(format!("spooling a write to the CAS shards: {error}"))
}

#[async_trait]
impl BlobWriter for SpoolWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), BlobError> {
        let written = self.written + chunk.len() as u64;
        if written > self.size {
            return Err(BlobError::DigestMismatch {
                expected: self.digest.clone(),
                actual: format!("more than {} bytes", self.size),
            });
        }
        self.hasher.update(&chunk);
        self.written = written;
        if let Spool::Memory(buffer) = &mut self.spool
            && buffer.len() as u64 + chunk.len() as u64 > MAX_BATCH_BLOB_BYTES
        {
            let (file, path) = tempfile::NamedTempFile::new()
                .map_err(spool_error)?
                .into_parts();
            let mut file = tokio::fs::File::from_std(file);
            file.write_all(buffer).await.map_err(spool_error)?;
            self.spool = Spool::File(path, file);
        }
        match &mut self.spool {
            Spool::Memory(buffer) => buffer.extend_from_slice(&chunk),
            Spool::File(_, file) => file.write_all(&chunk).await.map_err(spool_error)?,
        }
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn finish(self: Box<Self>) -> Result<(), BlobError> {
        let actual = Digest {
            hash: hex::encode(self.hasher.finalize()),
            size_bytes: self.written as i64,
        };
        if actual != self.digest {
            return Err(BlobError::DigestMismatch {
                expected: self.digest,
                actual: actual.to_string(),
            });
        }
        let uploaded = match self.spool {
            Spool::Memory(buffer) => {
                self.cas
                    .upload_blobs(vec![(self.digest.clone(), buffer.freeze())])
                    .await
            }
            Spool::File(path, mut file) => {
                file.flush().await.map_err(spool_error)?;
                drop(file);
                let uploaded = self
                    .cas
                    .upload_files(vec![(self.digest.clone(), path.to_path_buf())])
                    .await;
                drop(path);
                uploaded
            }
        };
        uploaded
            .map_err(|e| BlobError::Io(format!("storing {} on the CAS shards: {e}", self.digest)))
    }
}
