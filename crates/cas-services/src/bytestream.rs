//! The ByteStream service over the CAS: Read, Write (streamed into the store, resumable) and
//! QueryWriteStatus.
//!
//! * Read: `[instance/]blobs/<hash>/<size>`, from `read_offset` (OUT_OF_RANGE when negative or
//!   past the end) for at most `read_limit` bytes (0 = to the end), in chunks of at most
//!   `read_chunk_bytes`.
//! * Write: `[instance/]uploads/<uuid>/blobs/<hash>/<size>`, named in the first message (later
//!   ones may repeat it or leave it empty). Data goes straight into a
//!   [`scoot_blobstore::BlobWriter`], never buffered whole. Offsets must continue
//!   exactly where the previous message ended. A blob already stored intact (its bytes are
//!   checked; a corrupt copy is dropped and the upload goes on to replace it) ends the call at
//!   once with `committed_size` = its size. Any mismatch (offset, data past the size, a short
//!   finish, a wrong hash) is INVALID_ARGUMENT and stores nothing.
//! * Resuming: an upload whose stream ends without `finish_write` (or breaks) is kept, by
//!   resource name, for `upload_idle_timeout` (at most `max_idle_uploads` of them). A new Write
//!   of the same name at offset = what QueryWriteStatus reports carries on; offset 0 starts
//!   over. QueryWriteStatus reports a stored blob as complete, a kept upload by its committed
//!   size, and anything else as 0 bytes, not complete.
//! * Stored bytes found corrupt on a Read (see [`scoot_blobstore::BlobStore::read`]) are
//!   DATA_LOSS: before any data for a small blob or a range, as the stream's final status for a
//!   large blob read whole. The blob is dropped, so the client's next upload stores it again.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use scoot_blobstore::BlobWriter;
use scoot_proto::bytestream::byte_stream_server::ByteStream;
use scoot_proto::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest,
    WriteResponse,
};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::digest::size;
use crate::error::CasError;
use crate::resource::{parse_read, parse_write};
use crate::stats;
use crate::{CasConfig, Core};

#[derive(Clone)]
pub struct ByteStreamService {
    core: Arc<Core>,
}

impl ByteStreamService {
    pub(crate) fn new(core: Arc<Core>) -> ByteStreamService {
        ByteStreamService { core }
    }
}

/// Uploads in progress or waiting to be resumed, by [`UploadResource::key`](crate::resource::UploadResource::key).
#[derive(Default)]
pub(crate) struct Uploads {
    table: Mutex<HashMap<String, Upload>>,
    generations: AtomicU64,
}

struct Upload {
    /// Which Write call owns the upload; a call that was superseded leaves it alone.
    generation: u64,
    committed: Arc<AtomicU64>,
    /// Set while no call is writing to it.
    parked: Option<(Box<dyn BlobWriter>, Instant)>,
}

type Table = HashMap<String, Upload>;

/// A Write call's hold on an upload it resumes.
struct Claim {
    writer: Box<dyn BlobWriter>,
    generation: u64,
    committed: Arc<AtomicU64>,
}

impl Uploads {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a fresh upload of `key`, replacing (and dropping) any earlier state.
    fn start(&self, key: &str) -> (u64, Arc<AtomicU64>) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let committed = Arc::new(AtomicU64::new(0));
        let old = self.lock().insert(
            key.to_string(),
            Upload {
                generation,
                committed: committed.clone(),
                parked: None,
            },
        );
        drop(old);
        (generation, committed)
    }

    /// Takes over a parked upload of `key` whose committed size is `offset`.
    fn resume(&self, key: &str, offset: i64) -> Result<Claim, CasError> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let mut table = self.lock();
        let Some(upload) = table.get_mut(key) else {
            return Err(CasError::invalid_argument(format!(
                "write_offset {offset} for an upload this server does not hold (committed size 0)"
            )));
        };
        let Some((writer, _)) = upload.parked.take() else {
            return Err(CasError::new(
                Code::Aborted,
                "the upload is being written by another call",
            ));
        };
        if i64::try_from(writer.written()) != Ok(offset) {
            let written = writer.written();
            upload.parked = Some((writer, Instant::now()));
            return Err(CasError::invalid_argument(format!(
                "write_offset {offset} does not match the committed size {written}"
            )));
        }
        upload.generation = generation;
        Ok(Claim {
            writer,
            generation,
            committed: upload.committed.clone(),
        })
    }

    /// Keeps `writer` for a later call, unless another call took the upload over meanwhile.
    fn park(&self, key: &str, generation: u64, writer: Box<dyn BlobWriter>, config: &CasConfig) {
        let mut dropped = Vec::new();
        {
            let mut table = self.lock();
            match table.get_mut(key) {
                Some(upload) if upload.generation == generation => {
                    upload.parked = Some((writer, Instant::now()));
                }
                _ => dropped.push(writer),
            }
            sweep(&mut table, config, &mut dropped);
        }
        // Dropping a writer may do I/O (removing its temporary file): outside the lock.
        drop(dropped);
    }

    /// Forgets the upload, if `generation` still owns it.
    fn end(&self, key: &str, generation: u64) {
        let removed = {
            let mut table = self.lock();
            match table.get(key) {
                Some(upload) if upload.generation == generation => table.remove(key),
                _ => None,
            }
        };
        drop(removed);
    }

    fn committed(&self, key: &str, config: &CasConfig) -> Option<u64> {
        let mut dropped = Vec::new();
        let committed = {
            let mut table = self.lock();
            sweep(&mut table, config, &mut dropped);
            table.get(key).map(|u| u.committed.load(Ordering::Relaxed))
        };
        drop(dropped);
        committed
    }

    /// Number of uploads known (in progress or parked).
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Drops parked uploads idle for longer than the timeout, then the oldest parked ones beyond
/// the limit.
fn sweep(table: &mut Table, config: &CasConfig, dropped: &mut Vec<Box<dyn BlobWriter>>) {
    let now = Instant::now();
    let expired: Vec<String> = table
        .iter()
        .filter(|(_, u)| {
            u.parked
                .as_ref()
                .is_some_and(|(_, since)| now.duration_since(*since) > config.upload_idle_timeout)
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in expired {
        if let Some(Upload {
            parked: Some((w, _)),
            ..
        }) = table.remove(&key)
        {
            dropped.push(w);
        }
    }
    let mut parked: Vec<(Instant, String)> = table
        .iter()
        .filter_map(|(k, u)| u.parked.as_ref().map(|(_, since)| (*since, k.clone())))
        .collect();
    if parked.len() > config.max_idle_uploads {
        parked.sort();
        let excess = parked.len() - config.max_idle_uploads;
        for (_, key) in parked.into_iter().take(excess) {
            if let Some(Upload {
                parked: Some((w, _)),
                ..
            }) = table.remove(&key)
            {
                dropped.push(w);
            }
        }
    }
}

/// One Write call's hold on an upload. Dropped without [`finish`](Self::finish) or
/// [`discard`](Self::discard) (the stream broke, or the call was cancelled), it parks the
/// writer for resumption.
struct ActiveUpload {
    core: Arc<Core>,
    key: String,
    generation: u64,
    committed: Arc<AtomicU64>,
    writer: Option<Box<dyn BlobWriter>>,
}

impl ActiveUpload {
    fn written(&self) -> u64 {
        self.writer.as_ref().map_or(0, |w| w.written())
    }

    async fn write(&mut self, data: Bytes) -> Result<(), CasError> {
        let Some(writer) = self.writer.as_mut() else {
            return Err(CasError::internal("upload already ended"));
        };
        writer.write(data).await?;
        self.committed.store(writer.written(), Ordering::Relaxed);
        Ok(())
    }

    async fn finish(mut self) -> Result<(), CasError> {
        let result = match self.writer.take() {
            Some(writer) => writer.finish().await.map_err(CasError::from),
            None => Err(CasError::internal("upload already ended")),
        };
        self.core.uploads.end(&self.key, self.generation);
        result
    }

    /// Abandons the upload: nothing is stored and it cannot be resumed.
    fn discard(mut self) {
        self.writer = None;
        self.core.uploads.end(&self.key, self.generation);
    }
}

impl Drop for ActiveUpload {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            self.core
                .uploads
                .park(&self.key, self.generation, writer, &self.core.config);
        }
    }
}

/// Splits `data` into pieces of at most `max` bytes, without copying.
fn split(mut data: Bytes, max: usize) -> Vec<Bytes> {
    let mut pieces = Vec::with_capacity(data.len() / max.max(1) + 1);
    while data.len() > max {
        pieces.push(data.split_to(max));
    }
    pieces.push(data);
    pieces
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

fn write_response(committed_size: u64) -> Response<WriteResponse> {
    Response::new(WriteResponse {
        committed_size: i64::try_from(committed_size).unwrap_or(i64::MAX),
    })
}

impl ByteStreamService {
    async fn do_write(&self, mut stream: Streaming<WriteRequest>) -> Result<u64, CasError> {
        let first = stream
            .message()
            .await
            .map_err(|s| CasError::new(s.code(), s.message()))?
            .ok_or_else(|| CasError::invalid_argument("empty Write stream"))?;
        let name = first.resource_name.clone();
        let upload = parse_write(&name)?;
        let total = size(&upload.digest);
        if self.core.blob_intact(&upload.digest).await? {
            return Ok(total);
        }
        let key = upload.key();
        let claim = if first.write_offset == 0 {
            let writer = self.core.cas.begin_write(&upload.digest).await?;
            let (generation, committed) = self.core.uploads.start(&key);
            Claim {
                writer,
                generation,
                committed,
            }
        } else {
            self.core.uploads.resume(&key, first.write_offset)?
        };
        let mut active = ActiveUpload {
            core: self.core.clone(),
            key,
            generation: claim.generation,
            committed: claim.committed,
            writer: Some(claim.writer),
        };
        let mut message = first;
        loop {
            let written = active.written();
            let refusal = if !message.resource_name.is_empty() && message.resource_name != name {
                Some(format!(
                    "resource name changed mid-stream from {name:?} to {:?}",
                    message.resource_name
                ))
            } else if i64::try_from(written) != Ok(message.write_offset) {
                Some(format!(
                    "write_offset {} does not continue the {written} bytes written",
                    message.write_offset
                ))
            } else if written + message.data.len() as u64 > total {
                Some(format!("more than the {total} bytes of {}", upload.digest))
            } else if message.finish_write && written + message.data.len() as u64 != total {
                Some(format!(
                    "finished after {} of the {total} bytes of {}",
                    written + message.data.len() as u64,
                    upload.digest
                ))
            } else {
                None
            };
            if let Some(refusal) = refusal {
                active.discard();
                return Err(CasError::invalid_argument(refusal));
            }
            if !message.data.is_empty()
                && let Err(e) = active.write(message.data).await
            {
                active.discard();
                return Err(e.context(format!("writing {}", upload.digest)));
            }
            if message.finish_write {
                active
                    .finish()
                    .await
                    .map_err(|e| e.context(format!("uploading {}", upload.digest)))?;
                return Ok(total);
            }
            match stream.message().await {
                Ok(Some(next)) => message = next,
                // Closed with every byte but no finish_write: taken as finished.
                Ok(None) if active.written() == total => {
                    active
                        .finish()
                        .await
                        .map_err(|e| e.context(format!("uploading {}", upload.digest)))?;
                    return Ok(total);
                }
                // Closed early: kept (by the drop) for a resumption.
                Ok(None) => return Ok(active.written()),
                Err(status) => return Err(CasError::new(status.code(), status.message())),
            }
        }
    }
}

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let request = request.into_inner();
        let blob = parse_read(&request.resource_name)?;
        let total = size(&blob.digest);
        let offset = u64::try_from(request.read_offset)
            .ok()
            .filter(|o| *o <= total)
            .ok_or_else(|| {
                CasError::out_of_range(format!(
                    "read_offset {} is outside {}",
                    request.read_offset, blob.digest
                ))
            })?;
        let limit = u64::try_from(request.read_limit).map_err(|_| {
            CasError::invalid_argument(format!("negative read_limit {}", request.read_limit))
        })?;
        if offset == total {
            if !self.core.blob_exists(&blob.digest).await? {
                return Err(CasError::not_found(format!("blob {} not found", blob.digest)).into());
            }
            return Ok(Response::new(Box::pin(futures::stream::empty())));
        }
        let chunk = self.core.config.read_chunk_bytes.max(1);
        let data = self
            .core
            .cas
            .read(&blob.digest, offset, limit)
            .await
            .map_err(CasError::from)?;
        let responses = data.flat_map(move |item| {
            let items: Vec<Result<ReadResponse, Status>> = match item {
                Ok(bytes) => {
                    stats::CAS_BYTES.add("out", bytes.len() as u64);
                    split(bytes, chunk)
                }
                .into_iter()
                .filter(|b| !b.is_empty())
                .map(|data| Ok(ReadResponse { data }))
                .collect(),
                Err(e) => vec![Err(CasError::from(e).into())],
            };
            futures::stream::iter(items)
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn write(
        &self,
        request: Request<Streaming<WriteRequest>>,
    ) -> Result<Response<WriteResponse>, Status> {
        let committed = self.do_write(request.into_inner()).await?;
        stats::CAS_BYTES.add("in", committed);
        Ok(write_response(committed))
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let upload = parse_write(&request.into_inner().resource_name)?;
        let (committed, complete) = if self.core.blob_intact(&upload.digest).await? {
            (size(&upload.digest), true)
        } else {
            let committed = self
                .core
                .uploads
                .committed(&upload.key(), &self.core.config)
                .unwrap_or(0);
            (committed, false)
        };
        Ok(Response::new(QueryWriteStatusResponse {
            committed_size: i64::try_from(committed).unwrap_or(i64::MAX),
            complete,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_never_copies_and_bounds_pieces() {
        let data = Bytes::from(vec![7u8; 10]);
        let pieces = split(data.clone(), 4);
        assert_eq!(
            pieces.iter().map(Bytes::len).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
        assert_eq!(pieces[0].as_ptr(), data.as_ptr());
        assert_eq!(split(Bytes::new(), 4), vec![Bytes::new()]);
    }
}
