//! Whole-blob conveniences over any [`BlobStore`], for small blobs (protos, action results).

use bytes::{Bytes, BytesMut};

use crate::{BlobError, BlobStore, BlobStream, Digest};

pub use crate::verify::sha256_digest;

/// Stores `data` as the blob `digest` (verified like any write).
pub async fn put(store: &dyn BlobStore, digest: &Digest, data: Bytes) -> Result<(), BlobError> {
    let mut writer = store.begin_write(digest).await?;
    writer.write(data).await?;
    writer.finish().await
}

/// Reads the whole blob `digest` into memory; refuses (as [`BlobError::TooLarge`]) a blob larger
/// than `max` bytes before reading any of it.
pub async fn get(store: &dyn BlobStore, digest: &Digest, max: u64) -> Result<Bytes, BlobError> {
    let size = u64::try_from(digest.size_bytes).map_err(|_| BlobError::NotFound(digest.clone()))?;
    if size > max {
        return Err(BlobError::TooLarge(digest.clone()));
    }
    let mut stream = store.read(digest, 0, 0).await?;
    let mut chunks = Vec::new();
    let mut total: u64 = 0;
    while let Some(chunk) = next_chunk(&mut stream).await {
        let chunk = chunk?;
        total += chunk.len() as u64;
        if total > size {
            return Err(BlobError::Io(format!(
                "{digest} yielded more than {size} bytes"
            )));
        }
        chunks.push(chunk);
    }
    if total != size {
        return Err(BlobError::Io(format!(
            "{digest} yielded {total} bytes, not {size}"
        )));
    }
    // A single chunk (the memory store's small blobs) is passed through without a copy.
    if chunks.len() == 1 {
        return Ok(chunks.pop().unwrap_or_default());
    }
    let mut joined = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in &chunks {
        joined.extend_from_slice(chunk);
    }
    Ok(joined.freeze())
}

/// The next item of a read stream (`None` at its end).
pub async fn next_chunk(stream: &mut BlobStream) -> Option<Result<Bytes, BlobError>> {
    std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)).await
}
