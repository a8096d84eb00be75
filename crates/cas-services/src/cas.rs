//! The ContentAddressableStorage service: FindMissingBlobs, BatchUpdateBlobs, BatchReadBlobs and
//! GetTree over the CAS [`BlobStore`](scoot_blobstore::BlobStore).
//!
//! The CAS is shared by all instance names: blobs are verified against their digests, so one
//! instance can never corrupt another's. Batch requests are bounded by
//! `max_batch_total_size_bytes` (over it, the whole request is INVALID_ARGUMENT); per-blob
//! problems are per-blob statuses (DATA_LOSS for a blob whose stored bytes are found corrupt: it
//! is dropped, and BatchUpdateBlobs, which checks the stored copies of what it is sent, stores it
//! again). GetTree is served from [`scoot_proto::raw`] so Directory blobs go out exactly as
//! stored.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use futures::future::join_all;
use prost::Message;
use scoot_core::Digest;
use scoot_proto::raw::GetTreeResponseRaw;
use scoot_proto::raw::content_addressable_storage_server::ContentAddressableStorage;
use scoot_proto::reapi::v2;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::Core;
use crate::digest::{check_function, from_proto, required, size, to_proto};
use crate::error::{CasError, ok_status};
use crate::stats;

/// GetTree pages stop growing past this many bytes of directories (clients commonly accept
/// messages of 4 MiB).
const TREE_PAGE_BYTES: usize = 2 << 20;
/// Larger Directory blobs are refused by GetTree, as by Execute.
const MAX_DIRECTORY_BYTES: u64 = scoot_reapi::MAX_MESSAGE_BYTES;

#[derive(Clone)]
pub struct CasService {
    core: Arc<Core>,
}

impl CasService {
    pub(crate) fn new(core: Arc<Core>) -> CasService {
        CasService { core }
    }
}

/// Reads a Directory blob whole (the empty blob is the empty Directory).
pub(crate) async fn read_small_blob(
    core: &Core,
    digest: &Digest,
    max: u64,
) -> Result<Bytes, CasError> {
    if digest.is_empty_blob() {
        return Ok(Bytes::new());
    }
    Ok(scoot_blobstore::get(&*core.cas, digest, max).await?)
}

impl Core {
    fn check_batch_size(&self, total: u64, what: &str) -> Result<(), CasError> {
        let max = self.config.max_batch_total_size_bytes;
        if total > max {
            return Err(CasError::invalid_argument(format!(
                "{what} of {total} bytes exceeds max_batch_total_size_bytes ({max}); use ByteStream"
            )));
        }
        Ok(())
    }

    async fn update_one(
        &self,
        request: v2::batch_update_blobs_request::Request,
        missing: &HashSet<Digest>,
    ) -> v2::batch_update_blobs_response::Response {
        let result = async {
            let digest = required(&request.digest, "digest")?;
            if request.compressor != v2::compressor::Value::Identity as i32 {
                return Err(CasError::invalid_argument(
                    "compressed blobs are not supported (no compressor is advertised)",
                ));
            }
            if request.data.len() as u64 != size(&digest) {
                return Err(CasError::invalid_argument(format!(
                    "blob {digest}: {} bytes of data given",
                    request.data.len()
                )));
            }
            if missing.contains(&digest) {
                scoot_blobstore::put(&*self.cas, &digest, request.data)
                    .await
                    .map_err(|e| CasError::from(e).context(format!("storing {digest}")))?;
            } else if scoot_blobstore::sha256_digest(&request.data) != digest {
                // Already stored, but the client's data is not that blob: still its mistake.
                return Err(CasError::invalid_argument(format!(
                    "the data given for {digest} does not match its hash"
                )));
            }
            Ok(())
        }
        .await;
        v2::batch_update_blobs_response::Response {
            digest: request.digest,
            status: Some(match result {
                Ok(()) => ok_status(),
                Err(e) => e.to_rpc_status(),
            }),
        }
    }

    async fn read_one(&self, wire: v2::Digest) -> v2::batch_read_blobs_response::Response {
        let result = async {
            let digest = from_proto(Some(&wire), "digest")?;
            read_small_blob(self, &digest, size(&digest)).await
        }
        .await;
        let (data, status) = match result {
            Ok(data) => (data, ok_status()),
            Err(e) => (Bytes::new(), e.to_rpc_status()),
        };
        v2::batch_read_blobs_response::Response {
            digest: Some(wire),
            data,
            compressor: v2::compressor::Value::Identity as i32,
            status: Some(status),
        }
    }
}

type TreeStream = Pin<Box<dyn Stream<Item = Result<GetTreeResponseRaw, Status>> + Send>>;

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<v2::FindMissingBlobsRequest>,
    ) -> Result<Response<v2::FindMissingBlobsResponse>, Status> {
        let request = request.into_inner();
        check_function(request.digest_function)?;
        let mut digests = Vec::with_capacity(request.blob_digests.len());
        for wire in &request.blob_digests {
            let digest = from_proto(Some(wire), "blob_digests")?;
            if !digest.is_empty_blob() {
                digests.push(digest);
            }
        }
        let missing = self
            .core
            .cas
            .find_missing(&digests)
            .await
            .map_err(CasError::from)?;
        stats::FIND_MISSING_REQUESTED.add(request.blob_digests.len() as u64);
        stats::FIND_MISSING_MISSING.add(missing.len() as u64);
        Ok(Response::new(v2::FindMissingBlobsResponse {
            missing_blob_digests: missing.iter().map(to_proto).collect(),
        }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<v2::BatchUpdateBlobsRequest>,
    ) -> Result<Response<v2::BatchUpdateBlobsResponse>, Status> {
        let request = request.into_inner();
        check_function(request.digest_function)?;
        let total = request.requests.iter().map(|r| r.data.len() as u64).sum();
        self.core.check_batch_size(total, "BatchUpdateBlobs")?;
        stats::CAS_BYTES.add("in", total);
        // Blobs already stored intact need no write.
        let candidates: Vec<Digest> = request
            .requests
            .iter()
            .filter_map(|r| from_proto(r.digest.as_ref(), "digest").ok())
            .filter(|d| !d.is_empty_blob())
            .collect();
        let missing: HashSet<Digest> = self
            .core
            .cas
            .find_missing_or_corrupt(&candidates)
            .await
            .map_err(CasError::from)?
            .into_iter()
            .collect();
        let responses = join_all(
            request
                .requests
                .into_iter()
                .map(|r| self.core.update_one(r, &missing)),
        )
        .await;
        Ok(Response::new(v2::BatchUpdateBlobsResponse { responses }))
    }

    async fn batch_read_blobs(
        &self,
        request: Request<v2::BatchReadBlobsRequest>,
    ) -> Result<Response<v2::BatchReadBlobsResponse>, Status> {
        let request = request.into_inner();
        check_function(request.digest_function)?;
        let total = request
            .digests
            .iter()
            .map(|d| u64::try_from(d.size_bytes).unwrap_or(0))
            .fold(0u64, u64::saturating_add);
        self.core.check_batch_size(total, "BatchReadBlobs")?;
        let responses = join_all(request.digests.into_iter().map(|d| self.core.read_one(d))).await;
        stats::CAS_BYTES.add("out", responses.iter().map(|r| r.data.len() as u64).sum());
        Ok(Response::new(v2::BatchReadBlobsResponse { responses }))
    }

    type GetTreeStream = TreeStream;

    async fn get_tree(
        &self,
        request: Request<v2::GetTreeRequest>,
    ) -> Result<Response<TreeStream>, Status> {
        let request = request.into_inner();
        check_function(request.digest_function)?;
        let root = required(&request.root_digest, "root_digest")?;
        let config = &self.core.config;
        let page_size = match usize::try_from(request.page_size) {
            Ok(0) | Err(_) => config.tree_page_size,
            Ok(n) => n.min(config.tree_page_size),
        };
        let skip = if request.page_token.is_empty() {
            0
        } else {
            request.page_token.parse::<usize>().map_err(|_| {
                CasError::invalid_argument(format!("invalid page_token {:?}", request.page_token))
            })?
        };
        // The root is read first, so that a missing root fails the call itself.
        let root_bytes = read_small_blob(&self.core, &root, MAX_DIRECTORY_BYTES)
            .await
            .map_err(|e| match e.code {
                Code::NotFound => CasError::not_found(format!("root directory {root} not found")),
                _ => e.context(format!("reading root directory {root}")),
            })?;
        let (tx, rx) = mpsc::channel(2);
        let walk = TreeWalk {
            core: self.core.clone(),
            page_size,
            skip,
            tx,
        };
        tokio::spawn(walk.run(root, root_bytes));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Streams the directories under a root breadth-first, each distinct Directory once, in pages of
/// at most `page_size` directories (and about [`TREE_PAGE_BYTES`]). A page token is the number
/// of directories (in that order) before the next page, so a later call can resume there.
/// Directories missing from the CAS (other than the root) are left out with their subtrees.
struct TreeWalk {
    core: Arc<Core>,
    page_size: usize,
    skip: usize,
    tx: mpsc::Sender<Result<GetTreeResponseRaw, Status>>,
}

impl TreeWalk {
    async fn run(self, root: Digest, root_bytes: Bytes) {
        if let Err(e) = self.walk(root, root_bytes).await {
            let _ = self.tx.send(Err(e.into())).await;
        }
    }

    async fn walk(&self, root: Digest, root_bytes: Bytes) -> Result<(), CasError> {
        let mut seen = HashSet::from([root.clone()]);
        let mut queue = VecDeque::from([(root, Some(root_bytes))]);
        let mut position = 0usize;
        let mut page = Vec::new();
        let mut page_bytes = 0usize;
        let mut more_promised = true;
        while let Some((digest, bytes)) = queue.pop_front() {
            let bytes = match bytes {
                Some(bytes) => bytes,
                None => match read_small_blob(&self.core, &digest, MAX_DIRECTORY_BYTES).await {
                    Ok(bytes) => bytes,
                    Err(e) if e.code == Code::NotFound => continue,
                    Err(e) => return Err(e.context(format!("reading directory {digest}"))),
                },
            };
            let directory = v2::Directory::decode(bytes.clone()).map_err(|e| {
                CasError::invalid_argument(format!("blob {digest} is not a Directory: {e}"))
            })?;
            for child in &directory.directories {
                let child = from_proto(child.digest.as_ref(), "directory node")
                    .map_err(|e| CasError::from(e).context(format!("in directory {digest}")))?;
                if seen.insert(child.clone()) {
                    queue.push_back((child, None));
                }
            }
            if position >= self.skip {
                page_bytes += bytes.len();
                page.push(bytes);
            }
            position += 1;
            if page.len() >= self.page_size || page_bytes >= TREE_PAGE_BYTES {
                more_promised = !queue.is_empty();
                let next_page_token = if more_promised {
                    position.to_string()
                } else {
                    String::new()
                };
                page_bytes = 0;
                let response = GetTreeResponseRaw {
                    directories: std::mem::take(&mut page),
                    next_page_token,
                };
                if self.tx.send(Ok(response)).await.is_err() {
                    return Ok(());
                }
            }
        }
        if !page.is_empty() || more_promised {
            let _ = self
                .tx
                .send(Ok(GetTreeResponseRaw {
                    directories: page,
                    next_page_token: String::new(),
                }))
                .await;
        }
        Ok(())
    }
}
