//! Reading: FindMissingBlobs, BatchReadBlobs and ByteStream Read, into memory or into a file.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use scoot_core::Digest;
use scoot_proto::bytestream::{ReadRequest, ReadResponse};
use scoot_proto::reapi::v2;
use scoot_reapi::digest::{from_proto, size};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tonic::Code;

use crate::digest::check_blob;
use crate::{
    CONCURRENCY, CasClient, ClientError, FIND_MISSING_CHUNK, MAX_BATCH_BLOB_BYTES, batch_groups,
    stream_deadline, timed, to_proto, unary, within,
};

/// Largest buffer reserved up front for a streamed read into memory: the size comes from a
/// digest someone else wrote, so it is not trusted for an allocation.
const MAX_PREALLOCATION: u64 = 64 << 20;

/// What [`CasClient::try_read_blobs`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobsRead {
    /// One entry per requested digest the CAS has, in request order (repeats included).
    pub blobs: Vec<(Digest, Bytes)>,
    /// Each requested digest the CAS lacks, once, in request order.
    pub missing: Vec<Digest>,
}

/// The answer for one blob: its verified data, or `None` when the server lacks it.
type Answer = (Digest, Option<Bytes>);

impl CasClient {
    /// The digests the CAS lacks, in request order; asks in chunks of [`FIND_MISSING_CHUNK`].
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, ClientError> {
        let wanted: Vec<&Digest> = digests.iter().filter(|d| !d.is_empty_blob()).collect();
        let mut missing = Vec::new();
        for chunk in wanted.chunks(FIND_MISSING_CHUNK) {
            let request = v2::FindMissingBlobsRequest {
                instance_name: self.instance.clone(),
                blob_digests: chunk.iter().map(|d| to_proto(d)).collect(),
                ..Default::default()
            };
            let reply = unary(
                "FindMissingBlobs",
                self.cas().find_missing_blobs(timed(request)),
            )
            .await?;
            for digest in &reply.missing_blob_digests {
                missing.push(
                    from_proto(Some(digest), "FindMissingBlobs reply")
                        .map_err(ClientError::invalid_digest)?,
                );
            }
        }
        Ok(missing)
    }

    /// Reads blobs into memory; any blob the CAS lacks makes the whole call NOT_FOUND, naming
    /// each missing `blobs/<hash>/<size>`. Results are in request order, repeats included.
    pub async fn read_blobs(
        &self,
        digests: &[Digest],
    ) -> Result<Vec<(Digest, Bytes)>, ClientError> {
        let read = self.try_read_blobs(digests).await?;
        if !read.missing.is_empty() {
            return Err(ClientError::not_found(&read.missing));
        }
        Ok(read.blobs)
    }

    /// Reads blobs into memory, reporting the ones the CAS lacks instead of failing. Each
    /// distinct digest is asked for once: small ones in batches, large ones through ByteStream.
    pub async fn try_read_blobs(&self, digests: &[Digest]) -> Result<BlobsRead, ClientError> {
        let mut seen = HashSet::new();
        let unique: Vec<&Digest> = digests
            .iter()
            .filter(|d| !d.is_empty_blob() && seen.insert(*d))
            .collect();
        let (small, large): (Vec<&Digest>, Vec<&Digest>) = unique
            .into_iter()
            .partition(|d| size(d) <= MAX_BATCH_BLOB_BYTES);
        let mut calls: Vec<BoxFuture<'_, Result<Vec<Answer>, ClientError>>> = batch_groups(small)
            .into_iter()
            .map(|group| self.batch_read(group).boxed())
            .collect();
        for digest in large {
            calls.push(
                async move { Ok(vec![(digest.clone(), self.stream_read(digest).await?)]) }.boxed(),
            );
        }
        let answers: Vec<Vec<Answer>> = futures::stream::iter(calls)
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let answers: HashMap<Digest, Option<Bytes>> = answers.into_iter().flatten().collect();
        let mut read = BlobsRead::default();
        let mut reported = HashSet::new();
        for digest in digests {
            match answers.get(digest) {
                _ if digest.is_empty_blob() => read.blobs.push((digest.clone(), Bytes::new())),
                Some(Some(data)) => read.blobs.push((digest.clone(), data.clone())),
                _ => {
                    if reported.insert(digest) {
                        read.missing.push(digest.clone());
                    }
                }
            }
        }
        Ok(read)
    }

    async fn batch_read(&self, group: Vec<Digest>) -> Result<Vec<Answer>, ClientError> {
        let request = v2::BatchReadBlobsRequest {
            instance_name: self.instance.clone(),
            digests: group.iter().map(to_proto).collect(),
            ..Default::default()
        };
        let reply = unary(
            "BatchReadBlobs",
            self.cas().batch_read_blobs(timed(request)),
        )
        .await?;
        let mut answers = HashMap::new();
        for response in reply.responses {
            let Some(digest) = response.digest.as_ref() else {
                continue;
            };
            let digest = from_proto(Some(digest), "BatchReadBlobs reply")
                .map_err(ClientError::invalid_digest)?;
            let status = response.status.unwrap_or_default();
            match Code::from(status.code) {
                Code::Ok => {
                    check_blob(&digest, &response.data)?;
                    answers.insert(digest, Some(response.data));
                }
                Code::NotFound => {
                    answers.insert(digest, None);
                }
                code => {
                    return Err(ClientError::new(
                        code,
                        format!("reading blobs/{digest}: {}", status.message),
                    ));
                }
            }
        }
        group
            .into_iter()
            .map(|digest| match answers.remove(&digest) {
                Some(answer) => Ok((digest, answer)),
                None => Err(ClientError::new(
                    Code::Internal,
                    format!("BatchReadBlobs did not answer for blobs/{digest}"),
                )),
            })
            .collect()
    }

    /// A ByteStream Read into memory; `None` when the server lacks the blob.
    async fn stream_read(&self, digest: &Digest) -> Result<Option<Bytes>, ClientError> {
        let expected = size(digest);
        let what = format!("reading blobs/{digest}");
        let mut data = BytesMut::with_capacity(expected.min(MAX_PREALLOCATION) as usize);
        let outcome = within(stream_deadline(expected), &what, async {
            let mut stream = match self.open_read(digest, &what).await? {
                Some(stream) => stream,
                None => return Ok(false),
            };
            while let Some(chunk) = next_chunk(&mut stream, &what).await? {
                if data.len() as u64 + chunk.len() as u64 > expected {
                    return Err(too_long(digest));
                }
                data.extend_from_slice(&chunk);
            }
            Ok(true)
        })
        .await;
        match outcome {
            Ok(true) => {
                let data = data.freeze();
                check_blob(digest, &data)?;
                Ok(Some(data))
            }
            Ok(false) => Ok(None),
            Err(e) if e.code == Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Streams a blob into the file `path` through ByteStream, verifying it on the way. The data
    /// goes to a temporary name in the same directory, renamed to `path` once verified, so
    /// `path` never holds a partial or wrong blob. NOT_FOUND when the CAS lacks it.
    pub async fn download_to_file(&self, digest: &Digest, path: &Path) -> Result<(), ClientError> {
        let name = path.file_name().ok_or_else(|| {
            ClientError::new(
                Code::InvalidArgument,
                format!("{} is not a file path", path.display()),
            )
        })?;
        let temp = path.with_file_name(format!(
            ".{}.{}.part",
            name.to_string_lossy(),
            uuid::Uuid::new_v4()
        ));
        let written = self.download_into(digest, &temp).await;
        let renamed = match written {
            Ok(()) => tokio::fs::rename(&temp, path)
                .await
                .map_err(|e| ClientError::local(&e, format!("renaming to {}", path.display()))),
            Err(e) => Err(e),
        };
        if renamed.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        renamed
    }

    async fn download_into(&self, digest: &Digest, temp: &Path) -> Result<(), ClientError> {
        let what = format!("reading blobs/{digest}");
        let mut file = tokio::fs::File::create(temp)
            .await
            .map_err(|e| ClientError::local(&e, format!("creating {}", temp.display())))?;
        let write_error =
            |e: std::io::Error| ClientError::local(&e, format!("writing {}", temp.display()));
        if !digest.is_empty_blob() {
            let expected = size(digest);
            within(stream_deadline(expected), &what, async {
                let mut stream = self
                    .open_read(digest, &what)
                    .await?
                    .ok_or_else(|| ClientError::not_found([digest]))?;
                let mut hasher = Sha256::new();
                let mut received = 0u64;
                while let Some(chunk) = next_chunk(&mut stream, &what).await? {
                    received += chunk.len() as u64;
                    if received > expected {
                        return Err(too_long(digest));
                    }
                    hasher.update(&chunk);
                    file.write_all(&chunk).await.map_err(write_error)?;
                }
                let actual = Digest {
                    hash: hex::encode(hasher.finalize()),
                    size_bytes: received as i64,
                };
                if actual != *digest {
                    return Err(ClientError::new(
                        Code::DataLoss,
                        format!("blobs/{digest}: the server sent blobs/{actual} instead"),
                    ));
                }
                Ok(())
            })
            .await?;
        }
        // tokio's File finishes writes in the background; flushing waits for them, so the
        // rename that follows publishes the whole blob.
        file.flush().await.map_err(write_error)
    }

    /// Starts a ByteStream Read of a whole blob; `None` when the server says NOT_FOUND.
    async fn open_read(
        &self,
        digest: &Digest,
        what: &str,
    ) -> Result<Option<tonic::Streaming<ReadResponse>>, ClientError> {
        self.open_range(digest, 0, 0, what).await
    }

    /// Starts a ByteStream Read of `limit` bytes (0: all) from `offset`; `None` when the server
    /// says NOT_FOUND. The bytes are not verified: a range cannot be.
    pub(crate) async fn open_range(
        &self,
        digest: &Digest,
        offset: u64,
        limit: u64,
        what: &str,
    ) -> Result<Option<tonic::Streaming<ReadResponse>>, ClientError> {
        let request = ReadRequest {
            resource_name: self.resource(format!("blobs/{}/{}", digest.hash, digest.size_bytes)),
            read_offset: i64::try_from(offset).unwrap_or(i64::MAX),
            read_limit: i64::try_from(limit).unwrap_or(i64::MAX),
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(stream_deadline(size(digest)));
        match self.bytestream().read(request).await {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(ClientError::from_status(&status, what)),
        }
    }
}

/// The next chunk of a read; NOT_FOUND mid-stream is reported like any error, for the caller
/// to treat as a missing blob.
async fn next_chunk(
    stream: &mut tonic::Streaming<ReadResponse>,
    what: &str,
) -> Result<Option<Bytes>, ClientError> {
    match stream.message().await {
        Ok(Some(response)) => Ok(Some(response.data)),
        Ok(None) => Ok(None),
        Err(status) => Err(ClientError::from_status(&status, what)),
    }
}

fn too_long(digest: &Digest) -> ClientError {
    ClientError::new(
        Code::DataLoss,
        format!(
            "blobs/{digest}: the server sent more than {} bytes",
            digest.size_bytes
        ),
    )
}
