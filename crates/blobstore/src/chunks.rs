//! Pieces of `read` both stores share.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;

use crate::index::PinGuard;
use crate::{BlobError, BlobStream, Digest};

/// Largest chunk a read stream yields.
pub(crate) const READ_CHUNK: usize = 256 * 1024;

/// The byte range `[start, end)` a read of `size` bytes from `offset` with `limit` (0 = to the
/// end) covers. An offset equal to the size is allowed (an empty read); a larger one is not.
pub(crate) fn byte_range(
    digest: &Digest,
    size: u64,
    offset: u64,
    limit: u64,
) -> Result<(u64, u64), BlobError> {
    if offset > size {
        return Err(BlobError::OffsetOutOfRange {
            digest: digest.clone(),
            offset,
        });
    }
    let end = if limit == 0 {
        size
    } else {
        offset.saturating_add(limit).min(size)
    };
    Ok((offset, end))
}

/// A read of the empty blob, which every store has without storing it.
pub(crate) fn read_empty_blob(digest: &Digest, offset: u64) -> Result<BlobStream, BlobError> {
    byte_range(digest, 0, offset, 0)?;
    Ok(Box::pin(NoChunks))
}

/// A stream that ends at once.
pub(crate) struct NoChunks;

impl Stream for NoChunks {
    type Item = Result<Bytes, BlobError>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(None)
    }
}

/// A buffer handed out in chunks of at most [`READ_CHUNK`], pinning its blob meanwhile.
pub(crate) struct SliceChunks {
    rest: Bytes,
    _pin: PinGuard,
}

impl SliceChunks {
    pub(crate) fn new(rest: Bytes, pin: PinGuard) -> SliceChunks {
        SliceChunks { rest, _pin: pin }
    }
}

impl Stream for SliceChunks {
    type Item = Result<Bytes, BlobError>;

    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = this.rest.len().min(READ_CHUNK);
        Poll::Ready(Some(Ok(this.rest.split_to(n))))
    }
}
