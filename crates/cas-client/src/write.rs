//! Writing: BatchUpdateBlobs for small blobs, ByteStream Write for large ones, from memory or
//! streamed from files.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use scoot_core::Digest;
use scoot_proto::bytestream::WriteRequest;
use scoot_proto::reapi::v2;
use scoot_reapi::digest::size;
use tokio::io::AsyncReadExt;
use tonic::Code;

use crate::{
    CONCURRENCY, CasClient, ClientError, MAX_BATCH_BLOB_BYTES, WRITE_CHUNK_BYTES, batch_groups,
    stream_deadline, timed, to_proto, unary, within,
};

/// Where an upload's bytes come from.
#[derive(Clone)]
pub(crate) enum Payload {
    Memory(Bytes),
    File(PathBuf),
}

impl CasClient {
    /// Uploads the blobs the CAS lacks (per FindMissingBlobs).
    pub async fn upload_blobs(&self, blobs: Vec<(Digest, Bytes)>) -> Result<(), ClientError> {
        self.upload(
            blobs
                .into_iter()
                .map(|(d, data)| (d, Payload::Memory(data)))
                .collect(),
        )
        .await
    }

    /// Uploads the files whose digests the CAS lacks; large files are streamed from disk chunk
    /// by chunk. A file that no longer matches its digest fails the upload (the server verifies).
    pub async fn upload_files(&self, files: Vec<(Digest, PathBuf)>) -> Result<(), ClientError> {
        self.upload(
            files
                .into_iter()
                .map(|(d, path)| (d, Payload::File(path)))
                .collect(),
        )
        .await
    }

    pub(crate) async fn upload(&self, items: Vec<(Digest, Payload)>) -> Result<(), ClientError> {
        let mut payloads = HashMap::new();
        let mut order = Vec::new();
        for (digest, payload) in items {
            if !digest.is_empty_blob() && !payloads.contains_key(&digest) {
                order.push(digest.clone());
                payloads.insert(digest, payload);
            }
        }
        let missing: HashSet<Digest> = self.find_missing(&order).await?.into_iter().collect();
        let (small, large): (Vec<&Digest>, Vec<&Digest>) = order
            .iter()
            .filter(|d| missing.contains(*d))
            .partition(|d| size(d) <= MAX_BATCH_BLOB_BYTES);
        let mut calls: Vec<BoxFuture<'_, Result<(), ClientError>>> = Vec::new();
        for group in batch_groups(small) {
            let items: Vec<(Digest, Payload)> = group
                .into_iter()
                .filter_map(|d| payloads.remove(&d).map(|p| (d, p)))
                .collect();
            calls.push(self.batch_update(items).boxed());
        }
        for digest in large {
            if let Some(payload) = payloads.remove(digest) {
                calls.push(self.stream_write(digest.clone(), payload).boxed());
            }
        }
        futures::stream::iter(calls)
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn batch_update(&self, items: Vec<(Digest, Payload)>) -> Result<(), ClientError> {
        let mut requests = Vec::with_capacity(items.len());
        for (digest, payload) in items {
            let data = match payload {
                Payload::Memory(data) => data,
                Payload::File(path) => {
                    let data = tokio::fs::read(&path).await.map_err(|e| {
                        ClientError::local(&e, format!("reading {}", path.display()))
                    })?;
                    if data.len() as u64 != size(&digest) {
                        return Err(changed_file(&path, &digest));
                    }
                    Bytes::from(data)
                }
            };
            requests.push(v2::batch_update_blobs_request::Request {
                digest: Some(to_proto(&digest)),
                data,
                ..Default::default()
            });
        }
        let request = v2::BatchUpdateBlobsRequest {
            instance_name: self.instance.clone(),
            requests,
            ..Default::default()
        };
        let reply = unary(
            "BatchUpdateBlobs",
            self.cas().batch_update_blobs(timed(request)),
        )
        .await?;
        for response in reply.responses {
            let status = response.status.unwrap_or_default();
            if status.code != 0 {
                let digest = response
                    .digest
                    .map(|d| format!("blobs/{}/{}", d.hash, d.size_bytes))
                    .unwrap_or_default();
                return Err(ClientError::new(
                    Code::from(status.code),
                    format!("uploading {digest}: {}", status.message),
                ));
            }
        }
        Ok(())
    }

    async fn stream_write(&self, digest: Digest, payload: Payload) -> Result<(), ClientError> {
        let what = format!("uploading blobs/{digest}");
        let source = match payload {
            // Slicing past the end would panic: the data must be as long as its digest says.
            Payload::Memory(data) if data.len() as u64 != size(&digest) => {
                return Err(ClientError::new(
                    Code::InvalidArgument,
                    format!("{what}: the data has {} bytes", data.len()),
                ));
            }
            Payload::Memory(data) => Source::Memory(data),
            Payload::File(path) => Source::File(
                tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| ClientError::local(&e, format!("opening {}", path.display())))?,
                path,
            ),
        };
        let failure = Arc::new(Mutex::new(None));
        let requests = write_requests(
            self.resource(format!(
                "uploads/{}/blobs/{}/{}",
                uuid::Uuid::new_v4(),
                digest.hash,
                digest.size_bytes
            )),
            digest.clone(),
            source,
            failure.clone(),
        );
        let deadline = stream_deadline(size(&digest));
        let mut request = tonic::Request::new(requests);
        request.set_timeout(deadline);
        let reply = within(deadline, &what, async {
            self.bytestream()
                .write(request)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| ClientError::from_status(&status, &what))
        })
        .await;
        // A local read error ends the request stream early, which the server reports as an
        // incomplete write; the read error is the one worth reporting.
        if let Some(error) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(error);
        }
        let reply = reply?;
        if reply.committed_size != digest.size_bytes {
            return Err(ClientError::new(
                Code::DataLoss,
                format!(
                    "{what}: the server committed {} of {} bytes",
                    reply.committed_size, digest.size_bytes
                ),
            ));
        }
        Ok(())
    }
}

enum Source {
    Memory(Bytes),
    File(tokio::fs::File, PathBuf),
}

impl Source {
    async fn read(
        &mut self,
        digest: &Digest,
        offset: u64,
        len: usize,
    ) -> Result<Bytes, ClientError> {
        match self {
            Source::Memory(data) => {
                let start = offset as usize;
                Ok(data.slice(start..start + len))
            }
            Source::File(file, path) => {
                let mut chunk = BytesMut::zeroed(len);
                file.read_exact(&mut chunk)
                    .await
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::UnexpectedEof => changed_file(path, digest),
                        _ => ClientError::local(&e, format!("reading {}", path.display())),
                    })?;
                Ok(chunk.freeze())
            }
        }
    }
}

/// The WriteRequests of one upload, read lazily so that a large file is never held whole. A
/// read failure is stored in `failure` and ends the stream.
fn write_requests(
    resource_name: String,
    digest: Digest,
    source: Source,
    failure: Arc<Mutex<Option<ClientError>>>,
) -> impl futures::Stream<Item = WriteRequest> + Send + 'static {
    struct State {
        name: Option<String>,
        digest: Digest,
        source: Source,
        offset: u64,
        done: bool,
        failure: Arc<Mutex<Option<ClientError>>>,
    }
    let state = State {
        name: Some(resource_name),
        digest,
        source,
        offset: 0,
        done: false,
        failure,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        let total = size(&state.digest);
        let len = (total - state.offset).min(WRITE_CHUNK_BYTES as u64) as usize;
        let data = match state.source.read(&state.digest, state.offset, len).await {
            Ok(data) => data,
            Err(error) => {
                *state.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                return None;
            }
        };
        let request = WriteRequest {
            resource_name: state.name.take().unwrap_or_default(),
            write_offset: state.offset as i64,
            finish_write: state.offset + len as u64 == total,
            data,
        };
        state.offset += len as u64;
        state.done = request.finish_write;
        Some((request, state))
    })
}

/// FAILED_PRECONDITION: the file is not the blob the caller said it was.
fn changed_file(path: &std::path::Path, digest: &Digest) -> ClientError {
    ClientError::new(
        Code::FailedPrecondition,
        format!(
            "{} does not have the size of its digest {digest} (changed while uploading?)",
            path.display()
        ),
    )
}
