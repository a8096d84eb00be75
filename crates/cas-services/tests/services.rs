//! The cache services through real gRPC clients against a server on 127.0.0.1:0.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use scoot_blobstore::{BlobError, BlobStore, BlobStream, BlobWriter, FsBlobStore, MemoryBlobStore};
use scoot_cas_services::{CasConfig, CasServices, MemoryActionCache};
use scoot_core::{Digest, EMPTY_SHA256};
use scoot_proto::bytestream::byte_stream_client::ByteStreamClient;
use scoot_proto::bytestream::{QueryWriteStatusRequest, ReadRequest, WriteRequest};
use scoot_proto::raw::{RawMessage, UpdateActionResultRequestRaw};
use scoot_proto::reapi::v2;
use scoot_proto::reapi::v2::action_cache_client::ActionCacheClient;
use scoot_proto::reapi::v2::capabilities_client::CapabilitiesClient;
use scoot_proto::reapi::v2::content_addressable_storage_client::ContentAddressableStorageClient;
use sha2::{Digest as _, Sha256};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A store whose blobs can be made to vanish, to test action-cache completeness.
#[derive(Clone)]
struct ForgetfulStore {
    inner: Arc<dyn BlobStore>,
    forgotten: Arc<Mutex<HashSet<Digest>>>,
}

impl ForgetfulStore {
    fn new(inner: Arc<dyn BlobStore>) -> ForgetfulStore {
        ForgetfulStore {
            inner,
            forgotten: Arc::default(),
        }
    }

    fn with_forgotten(&self, mut missing: Vec<Digest>, digests: &[Digest]) -> Vec<Digest> {
        for d in digests {
            if self.is_forgotten(d) && !missing.contains(d) {
                missing.push(d.clone());
            }
        }
        missing
    }

    fn forget(&self, digest: &Digest) {
        self.forgotten.lock().unwrap().insert(digest.clone());
    }

    fn is_forgotten(&self, digest: &Digest) -> bool {
        self.forgotten.lock().unwrap().contains(digest)
    }
}

#[async_trait]
impl BlobStore for ForgetfulStore {
    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, BlobError> {
        let missing = self.inner.find_missing(digests).await?;
        Ok(self.with_forgotten(missing, digests))
    }

    async fn find_missing_or_corrupt(&self, digests: &[Digest]) -> Result<Vec<Digest>, BlobError> {
        let unusable = self.inner.find_missing_or_corrupt(digests).await?;
        Ok(self.with_forgotten(unusable, digests))
    }

    async fn read(
        &self,
        digest: &Digest,
        offset: u64,
        limit: u64,
    ) -> Result<BlobStream, BlobError> {
        if self.is_forgotten(digest) {
            return Err(BlobError::NotFound(digest.clone()));
        }
        self.inner.read(digest, offset, limit).await
    }

    async fn begin_write(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>, BlobError> {
        self.forgotten.lock().unwrap().remove(digest);
        self.inner.begin_write(digest).await
    }
}

struct Server {
    addr: SocketAddr,
    store: ForgetfulStore,
    services: CasServices,
    stop: Option<oneshot::Sender<()>>,
    /// The directory of a file blob store.
    dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(config: CasConfig) -> Server {
    start_over(Arc::new(MemoryBlobStore::new(1 << 30)), None, config).await
}

/// A server over a file blob store, whose files a test can damage.
async fn start_on_disk() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = FsBlobStore::open(dir.path().to_path_buf(), 1 << 30).unwrap();
    start_over(Arc::new(store), Some(dir), CasConfig::default()).await
}

async fn start_over(
    blobs: Arc<dyn BlobStore>,
    dir: Option<tempfile::TempDir>,
    config: CasConfig,
) -> Server {
    let store = ForgetfulStore::new(blobs);
    let services = scoot_cas_services::server(
        Arc::new(store.clone()),
        Arc::new(MemoryActionCache::new(1 << 20)),
        config,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(scoot_cas_services::serve(
        listener,
        services.routes(),
        None,
        None,
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        store,
        services,
        stop: Some(stop),
        dir,
    }
}

impl Server {
    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    async fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel().await)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    async fn ac(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.channel().await)
    }

    async fn put(&self, data: &[u8]) -> Digest {
        let digest = digest_of(data);
        scoot_blobstore::put(&self.store, &digest, Bytes::copy_from_slice(data))
            .await
            .unwrap();
        digest
    }

    /// Flips one bit of the byte at `at` of a stored blob's file, in place.
    fn damage(&self, digest: &Digest, at: u64) {
        use std::os::unix::fs::FileExt;
        let dir = self.dir.as_ref().expect("a server on disk").path();
        let path = dir
            .join(&digest.hash[..2])
            .join(format!("{}-{}", digest.hash, digest.size_bytes));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, at).unwrap();
        file.write_all_at(&[byte[0] ^ 1], at).unwrap();
    }

    /// What FindMissingBlobs says of `digest`.
    async fn reported_missing(&self, digest: &Digest) -> bool {
        let missing = self
            .cas()
            .await
            .find_missing_blobs(v2::FindMissingBlobsRequest {
                blob_digests: vec![wire(digest)],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .missing_blob_digests;
        missing == vec![wire(digest)]
    }

    async fn stored(&self, digest: &Digest) -> bool {
        self.store
            .find_missing(std::slice::from_ref(digest))
            .await
            .unwrap()
            .is_empty()
    }
}

fn digest_of(data: &[u8]) -> Digest {
    Digest::new(hex::encode(Sha256::digest(data)), data.len() as i64).unwrap()
}

fn wire(d: &Digest) -> v2::Digest {
    v2::Digest {
        hash: d.hash.clone(),
        size_bytes: d.size_bytes,
    }
}

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn upload_name(instance: &str, uuid: &str, d: &Digest) -> String {
    let prefix = if instance.is_empty() {
        String::new()
    } else {
        format!("{instance}/")
    };
    format!("{prefix}uploads/{uuid}/blobs/{}/{}", d.hash, d.size_bytes)
}

/// The messages of an upload of `data` in `chunk`-byte pieces, naming the resource only first.
fn write_messages(name: &str, data: &[u8], chunk: usize) -> Vec<WriteRequest> {
    let mut messages = Vec::new();
    let mut offset = 0;
    loop {
        let end = (offset + chunk).min(data.len());
        messages.push(WriteRequest {
            resource_name: if offset == 0 {
                name.to_string()
            } else {
                String::new()
            },
            write_offset: offset as i64,
            finish_write: end == data.len(),
            data: Bytes::copy_from_slice(&data[offset..end]),
        });
        if end == data.len() {
            return messages;
        }
        offset = end;
    }
}

async fn read_all(
    client: &mut ByteStreamClient<Channel>,
    name: &str,
    offset: i64,
    limit: i64,
) -> Result<(Vec<u8>, usize), tonic::Status> {
    let mut stream = client
        .read(ReadRequest {
            resource_name: name.to_string(),
            read_offset: offset,
            read_limit: limit,
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    let mut largest = 0;
    while let Some(message) = stream.message().await? {
        largest = largest.max(message.data.len());
        data.extend_from_slice(&message.data);
    }
    Ok((data, largest))
}

// ---------------------------------------------------------------------------------------------
// Capabilities
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn capabilities_advertise_what_bazel_needs() {
    let server = start(CasConfig::default()).await;
    let mut client = CapabilitiesClient::new(server.channel().await);
    let caps = client
        .get_capabilities(v2::GetCapabilitiesRequest {
            instance_name: "any/instance".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let version = |v: Option<scoot_proto::semver::SemVer>| {
        let v = v.unwrap();
        (v.major, v.minor)
    };
    assert_eq!(version(caps.deprecated_api_version), (2, 0));
    assert_eq!(version(caps.low_api_version), (2, 0));
    assert_eq!(version(caps.high_api_version), (2, 3));
    let cache = caps.cache_capabilities.unwrap();
    assert_eq!(
        cache.digest_functions,
        vec![v2::digest_function::Value::Sha256 as i32]
    );
    assert!(
        cache
            .action_cache_update_capabilities
            .unwrap()
            .update_enabled
    );
    assert_eq!(cache.max_batch_total_size_bytes, 4 << 20);
    assert_eq!(
        cache.symlink_absolute_path_strategy,
        v2::symlink_absolute_path_strategy::Value::Disallowed as i32
    );
    assert!(cache.supported_compressors.is_empty());
    assert!(caps.execution_capabilities.is_none());

    let exec = start(CasConfig {
        exec_enabled: true,
        ..CasConfig::default()
    })
    .await;
    let caps = CapabilitiesClient::new(exec.channel().await)
        .get_capabilities(v2::GetCapabilitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let execution = caps.execution_capabilities.unwrap();
    assert!(execution.exec_enabled);
    assert_eq!(
        execution.digest_function,
        v2::digest_function::Value::Sha256 as i32
    );
    assert_eq!(
        execution.digest_functions,
        vec![v2::digest_function::Value::Sha256 as i32]
    );
}

// ---------------------------------------------------------------------------------------------
// ByteStream
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn chunked_upload_then_ranged_reads() {
    let server = start(CasConfig {
        read_chunk_bytes: 1000,
        ..CasConfig::default()
    })
    .await;
    let mut client = server.bytestream().await;
    let data = blob(100_000, 1);
    let digest = digest_of(&data);
    let name = upload_name("main/x", "0b6a9c1e-4b3e-4d7a-9f0e-1a2b3c4d5e6f", &digest);
    let response = client
        .write(futures::stream::iter(write_messages(
            &name,
            &data,
            16 << 10,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.committed_size, data.len() as i64);
    assert!(server.stored(&digest).await);

    let read_name = format!("main/x/blobs/{}/{}", digest.hash, digest.size_bytes);
    let (all, largest) = read_all(&mut client, &read_name, 0, 0).await.unwrap();
    assert_eq!(all, data);
    assert!(largest <= 1000, "{largest}");
    let (part, _) = read_all(&mut client, &read_name, 12_345, 6_789)
        .await
        .unwrap();
    assert_eq!(part, &data[12_345..12_345 + 6_789]);
    let (tail, _) = read_all(&mut client, &read_name, 99_990, 0).await.unwrap();
    assert_eq!(tail, &data[99_990..]);
    let (clipped, _) = read_all(&mut client, &read_name, 99_990, 100)
        .await
        .unwrap();
    assert_eq!(clipped, &data[99_990..]);
    let (nothing, _) = read_all(&mut client, &read_name, 100_000, 0).await.unwrap();
    assert!(nothing.is_empty());
    // The blob is shared by every instance name.
    let other = format!("blobs/{}/{}", digest.hash, digest.size_bytes);
    assert_eq!(
        read_all(&mut client, &other, 0, 10).await.unwrap().0,
        &data[..10]
    );
}

#[tokio::test]
async fn read_errors() {
    let server = start(CasConfig::default()).await;
    let mut client = server.bytestream().await;
    let digest = server.put(b"hello").await;
    let name = format!("blobs/{}/{}", digest.hash, digest.size_bytes);
    let code = |r: Result<(Vec<u8>, usize), tonic::Status>| r.unwrap_err().code();

    assert_eq!(
        code(read_all(&mut client, &name, 6, 0).await),
        Code::OutOfRange
    );
    assert_eq!(
        code(read_all(&mut client, &name, -1, 0).await),
        Code::OutOfRange
    );
    assert_eq!(
        code(read_all(&mut client, &name, 0, -1).await),
        Code::InvalidArgument
    );
    let absent = digest_of(b"absent");
    let absent_name = format!("blobs/{}/{}", absent.hash, absent.size_bytes);
    assert_eq!(
        code(read_all(&mut client, &absent_name, 0, 0).await),
        Code::NotFound
    );
    assert_eq!(
        code(read_all(&mut client, &absent_name, 6, 0).await),
        Code::NotFound
    );
    for bad in [
        "".to_string(),
        "blobs/xyz/5".into(),
        format!("a//blobs/{}/5", digest.hash),
        format!("../blobs/{}/5", digest.hash),
        format!("uploads/u/blobs/{}/5", digest.hash),
    ] {
        assert_eq!(
            code(read_all(&mut client, &bad, 0, 0).await),
            Code::InvalidArgument,
            "{bad}"
        );
    }
    assert_eq!(
        code(
            read_all(
                &mut client,
                &format!("compressed-blobs/zstd/{}/5", digest.hash),
                0,
                0
            )
            .await
        ),
        Code::Unimplemented
    );
    // The empty blob always exists.
    let empty = format!("blobs/{EMPTY_SHA256}/0");
    assert!(
        read_all(&mut client, &empty, 0, 0)
            .await
            .unwrap()
            .0
            .is_empty()
    );
}

#[tokio::test]
async fn mismatched_uploads_are_refused_and_not_stored() {
    let server = start(CasConfig::default()).await;
    let mut client = server.bytestream().await;
    let data = blob(50_000, 2);
    let digest = digest_of(&data);

    // Right size, wrong content.
    let mut wrong = data.clone();
    wrong[100] ^= 1;
    let name = upload_name("", "u1", &digest);
    let err = client
        .write(futures::stream::iter(write_messages(&name, &wrong, 8192)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // Too many bytes, too few bytes, a gap in the offsets, a changed name.
    let mut longer = data.clone();
    longer.push(0);
    let short = &data[..data.len() - 1];
    let mut gap = write_messages(&upload_name("", "u3", &digest), &data, 8192);
    gap[2].write_offset += 1;
    let mut renamed = write_messages(&upload_name("", "u4", &digest), &data, 8192);
    renamed[1].resource_name = upload_name("", "other", &digest);
    for messages in [
        write_messages(&upload_name("", "u2", &digest), &longer, 8192),
        write_messages(&upload_name("", "u2", &digest), short, 8192),
        gap,
        renamed,
    ] {
        let err = client
            .write(futures::stream::iter(messages))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    }
    assert!(!server.stored(&digest).await);
    assert_eq!(server.services.uploads_in_progress(), 0);

    // Bad names.
    for bad in [
        format!("blobs/{}/{}", digest.hash, digest.size_bytes),
        format!("uploads/u/blobs/{}/x", digest.hash),
    ] {
        let err = client
            .write(futures::stream::iter(write_messages(&bad, &data, 8192)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err}");
    }
    let err = client
        .write(futures::stream::iter(write_messages(
            &format!(
                "uploads/u/compressed-blobs/zstd/{}/{}",
                digest.hash, digest.size_bytes
            ),
            &data,
            8192,
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    // After all that, a correct upload works.
    let ok = client
        .write(futures::stream::iter(write_messages(
            &upload_name("", "u5", &digest),
            &data,
            8192,
        )))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().committed_size, data.len() as i64);
    assert!(server.stored(&digest).await);
}

#[tokio::test]
async fn uploading_an_existing_blob_ends_early() {
    let server = start(CasConfig::default()).await;
    let mut client = server.bytestream().await;
    let data = blob(300_000, 3);
    let digest = server.put(&data).await;
    // Only the first message is ever sent and the stream stays open: the server answers anyway.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let first = write_messages(&upload_name("inst", "early", &digest), &data, 1000)
        .into_iter()
        .next()
        .unwrap();
    tx.send(first).await.unwrap();
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client.write(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("the server answers without the rest of the stream")
    .unwrap();
    assert_eq!(response.into_inner().committed_size, data.len() as i64);
    drop(tx);

    // The empty blob needs no upload at all.
    let empty = Digest::empty();
    let response = client
        .write(futures::stream::iter(write_messages(
            &upload_name("", "e", &empty),
            b"",
            10,
        )))
        .await
        .unwrap();
    assert_eq!(response.into_inner().committed_size, 0);
}

#[tokio::test]
async fn concurrent_writers_of_one_blob() {
    let server = start(CasConfig::default()).await;
    let data = blob(1 << 20, 4);
    let digest = digest_of(&data);
    let mut writers = Vec::new();
    for i in 0..2 {
        let mut client = server.bytestream().await;
        let messages = write_messages(&upload_name("", &format!("w{i}"), &digest), &data, 16 << 10);
        writers.push(tokio::spawn(async move {
            // Interleave the two uploads.
            let stream = futures::stream::iter(messages).then(|m| async move {
                tokio::task::yield_now().await;
                m
            });
            client.write(stream).await
        }));
    }
    for writer in writers {
        let response = writer.await.unwrap().unwrap();
        assert_eq!(response.into_inner().committed_size, data.len() as i64);
    }
    let mut client = server.bytestream().await;
    let name = format!("blobs/{}/{}", digest.hash, digest.size_bytes);
    assert_eq!(read_all(&mut client, &name, 0, 0).await.unwrap().0, data);
}

#[tokio::test]
async fn interrupted_uploads_resume() {
    let server = start(CasConfig::default()).await;
    let mut client = server.bytestream().await;
    let data = blob(40_000, 5);
    let digest = digest_of(&data);
    let name = upload_name("i", "resume", &digest);
    let status = |committed, complete| scoot_proto::bytestream::QueryWriteStatusResponse {
        committed_size: committed,
        complete,
    };
    let query = |client: &mut ByteStreamClient<Channel>, name: String| {
        let mut client = client.clone();
        async move {
            client
                .query_write_status(QueryWriteStatusRequest {
                    resource_name: name,
                })
                .await
                .map(|r| r.into_inner())
        }
    };

    assert_eq!(
        query(&mut client, name.clone()).await.unwrap(),
        status(0, false)
    );
    assert_eq!(
        query(&mut client, "nonsense".into())
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // The first 3 of 5 messages, then the client stops without finishing.
    let messages = write_messages(&name, &data, 8000);
    let response = client
        .write(futures::stream::iter(messages[..3].to_vec()))
        .await
        .unwrap();
    assert_eq!(response.into_inner().committed_size, 24_000);
    assert_eq!(
        query(&mut client, name.clone()).await.unwrap(),
        status(24_000, false)
    );
    assert!(!server.stored(&digest).await);

    // Resuming at a wrong offset is refused and keeps the upload; the right one completes it.
    let mut wrong = messages[3].clone();
    wrong.resource_name = name.clone();
    wrong.write_offset = 8000;
    let err = client
        .write(futures::stream::iter(vec![wrong]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        query(&mut client, name.clone()).await.unwrap(),
        status(24_000, false)
    );
    let mut rest = messages[3..].to_vec();
    rest[0].resource_name = name.clone();
    let response = client.write(futures::stream::iter(rest)).await.unwrap();
    assert_eq!(response.into_inner().committed_size, 40_000);
    assert!(server.stored(&digest).await);
    assert_eq!(
        query(&mut client, name.clone()).await.unwrap(),
        status(40_000, true)
    );
    // Any upload name of a stored blob reports it complete.
    assert_eq!(
        query(&mut client, upload_name("", "never-used", &digest))
            .await
            .unwrap(),
        status(40_000, true)
    );
    assert_eq!(server.services.uploads_in_progress(), 0);
}

#[tokio::test]
async fn idle_uploads_expire() {
    let server = start(CasConfig {
        upload_idle_timeout: Duration::from_millis(1),
        ..CasConfig::default()
    })
    .await;
    let mut client = server.bytestream().await;
    let data = blob(10_000, 6);
    let digest = digest_of(&data);
    let name = upload_name("", "idle", &digest);
    let messages = write_messages(&name, &data, 4000);
    client
        .write(futures::stream::iter(messages[..1].to_vec()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let response = client
        .query_write_status(QueryWriteStatusRequest {
            resource_name: name,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.committed_size, 0);
    assert_eq!(server.services.uploads_in_progress(), 0);
}

// ---------------------------------------------------------------------------------------------
// ContentAddressableStorage
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn find_missing_blobs() {
    let server = start(CasConfig::default()).await;
    let mut client = server.cas().await;
    let present = server.put(b"present").await;
    let absent = digest_of(b"absent");
    let wrong_size = Digest::new(present.hash.clone(), present.size_bytes + 1).unwrap();
    let response = client
        .find_missing_blobs(v2::FindMissingBlobsRequest {
            instance_name: "x".into(),
            blob_digests: vec![
                wire(&present),
                wire(&absent),
                wire(&Digest::empty()),
                wire(&wrong_size),
            ],
            digest_function: v2::digest_function::Value::Sha256 as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let missing: HashSet<v2::Digest> = response.missing_blob_digests.into_iter().collect();
    assert_eq!(missing, HashSet::from([wire(&absent), wire(&wrong_size)]));

    for request in [
        v2::FindMissingBlobsRequest {
            blob_digests: vec![v2::Digest {
                hash: "nothex".into(),
                size_bytes: 1,
            }],
            ..Default::default()
        },
        v2::FindMissingBlobsRequest {
            blob_digests: vec![wire(&present)],
            digest_function: v2::digest_function::Value::Blake3 as i32,
            ..Default::default()
        },
    ] {
        let err = client.find_missing_blobs(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
}

fn update(d: &Digest, data: &[u8]) -> v2::batch_update_blobs_request::Request {
    v2::batch_update_blobs_request::Request {
        digest: Some(wire(d)),
        data: Bytes::copy_from_slice(data),
        compressor: 0,
    }
}

#[tokio::test]
async fn batch_update_and_read() {
    let server = start(CasConfig::default()).await;
    let mut client = server.cas().await;
    let a = b"alpha".to_vec();
    let b = blob(100_000, 7);
    let (da, db) = (digest_of(&a), digest_of(&b));
    let bogus = digest_of(b"bogus");
    let mut zstd = update(&da, &a);
    zstd.compressor = v2::compressor::Value::Zstd as i32;
    let response = client
        .batch_update_blobs(v2::BatchUpdateBlobsRequest {
            instance_name: String::new(),
            requests: vec![
                update(&da, &a),
                update(&db, &b),
                update(&bogus, b"not bogus"),
                update(&bogus, b"bogu5"),
                update(&Digest::empty(), b""),
                zstd,
            ],
            digest_function: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = response
        .responses
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(codes, vec![0, 0, 3, 3, 0, 3]);
    assert_eq!(response.responses[1].digest, Some(wire(&db)));
    assert!(server.stored(&da).await && server.stored(&db).await);
    assert!(!server.stored(&bogus).await);

    // Data that does not match an already stored blob is still refused.
    let response = client
        .batch_update_blobs(v2::BatchUpdateBlobsRequest {
            requests: vec![update(&da, b"ALPHA"), update(&da, &a)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let codes: Vec<i32> = response
        .responses
        .iter()
        .map(|r| r.status.as_ref().unwrap().code)
        .collect();
    assert_eq!(codes, vec![3, 0]);

    let response = client
        .batch_read_blobs(v2::BatchReadBlobsRequest {
            instance_name: "elsewhere".into(),
            digests: vec![wire(&db), wire(&bogus), wire(&da), wire(&Digest::empty())],
            acceptable_compressors: vec![],
            digest_function: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(i32, Bytes)> = response
        .responses
        .into_iter()
        .map(|r| (r.status.unwrap().code, r.data))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, Bytes::from(b.clone())),
            (Code::NotFound as i32, Bytes::new()),
            (0, Bytes::from(a.clone())),
            (0, Bytes::new()),
        ]
    );
}

#[tokio::test]
async fn batches_over_the_limit_are_refused_whole() {
    let server = start(CasConfig::default()).await;
    let mut client = server.cas().await;
    let half = blob(2 << 20, 8);
    let other = blob((2 << 20) + 1, 9);
    let (dh, d_other) = (digest_of(&half), digest_of(&other));
    let err = client
        .batch_update_blobs(v2::BatchUpdateBlobsRequest {
            requests: vec![update(&dh, &half), update(&d_other, &other)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(!server.stored(&dh).await);

    // Exactly at the limit is fine.
    let exact = blob(2 << 20, 10);
    let d_exact = digest_of(&exact);
    let response = client
        .batch_update_blobs(v2::BatchUpdateBlobsRequest {
            requests: vec![update(&dh, &half), update(&d_exact, &exact)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        response
            .responses
            .iter()
            .all(|r| r.status.as_ref().unwrap().code == 0)
    );

    let err = client
        .batch_read_blobs(v2::BatchReadBlobsRequest {
            digests: vec![wire(&dh), wire(&d_exact), wire(&digest_of(b"x"))],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let response = client
        .batch_read_blobs(v2::BatchReadBlobsRequest {
            digests: vec![wire(&dh), wire(&d_exact)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.responses[1].data.len(), 2 << 20);
}

/// Stores `directory` and returns its digest.
async fn put_directory(server: &Server, directory: &v2::Directory) -> Digest {
    server.put(&directory.encode_to_vec()).await
}

fn dir_node(name: &str, d: &Digest) -> v2::DirectoryNode {
    v2::DirectoryNode {
        name: name.into(),
        digest: Some(wire(d)),
    }
}

#[tokio::test]
async fn get_tree_pages_through_the_tree() {
    let server = start(CasConfig::default()).await;
    let mut client = server.cas().await;
    let file = server.put(b"file").await;
    // 25 leaves with distinct contents, plus one shared by two parents, plus a missing one.
    let mut leaves = Vec::new();
    for i in 0..25 {
        let leaf = v2::Directory {
            files: vec![v2::FileNode {
                name: format!("f{i}"),
                digest: Some(wire(&file)),
                is_executable: false,
                node_properties: None,
            }],
            ..Default::default()
        };
        leaves.push(put_directory(&server, &leaf).await);
    }
    let missing = digest_of(b"a directory nobody stored");
    let shared = leaves[0].clone();
    let mid = v2::Directory {
        directories: vec![dir_node("again", &shared), dir_node("gone", &missing)],
        ..Default::default()
    };
    let mid_digest = put_directory(&server, &mid).await;
    let mut root = v2::Directory {
        directories: leaves
            .iter()
            .enumerate()
            .map(|(i, d)| dir_node(&format!("d{i:02}"), d))
            .collect(),
        ..Default::default()
    };
    root.directories.push(dir_node("mid", &mid_digest));
    let root_digest = put_directory(&server, &root).await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut calls = 0;
    loop {
        calls += 1;
        let mut stream = client
            .get_tree(v2::GetTreeRequest {
                instance_name: String::new(),
                root_digest: Some(wire(&root_digest)),
                page_size: 10,
                page_token: token.clone(),
                digest_function: 0,
            })
            .await
            .unwrap()
            .into_inner();
        // Take only the first page of each call, as a cautious client would.
        let page = stream.message().await.unwrap().unwrap();
        assert!(page.directories.len() <= 10);
        seen.extend(page.directories);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(calls, 3);
    // Root, 25 leaves, mid: each once; the missing one left out.
    assert_eq!(seen.len(), 27);
    assert_eq!(seen[0], root);
    let digests: HashSet<Digest> = seen.iter().map(|d| digest_of(&d.encode_to_vec())).collect();
    assert_eq!(digests.len(), 27);
    assert!(digests.contains(&mid_digest) && !digests.contains(&missing));

    // One call streams every page.
    let pages: Vec<v2::GetTreeResponse> = client
        .get_tree(v2::GetTreeRequest {
            root_digest: Some(wire(&root_digest)),
            page_size: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(|p| p.unwrap())
        .collect()
        .await;
    assert_eq!(pages.len(), 3);
    assert_eq!(pages.iter().map(|p| p.directories.len()).sum::<usize>(), 27);
    assert!(pages.last().unwrap().next_page_token.is_empty());

    let err = client
        .get_tree(v2::GetTreeRequest {
            root_digest: Some(wire(&missing)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_tree(v2::GetTreeRequest {
            root_digest: Some(wire(&root_digest)),
            page_token: "not a token".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// ActionCache
// ---------------------------------------------------------------------------------------------

struct Outputs {
    result: v2::ActionResult,
    file: Digest,
    stdout: Digest,
    tree: Digest,
    tree_file: Digest,
}

/// An action result with an output file, stdout and an output directory, all stored.
async fn stored_outputs(server: &Server) -> Outputs {
    let file = server.put(b"object code").await;
    let stdout = server.put(b"compiling...").await;
    let tree_file = server.put(b"header").await;
    let tree = v2::Tree {
        root: Some(v2::Directory {
            files: vec![v2::FileNode {
                name: "h.h".into(),
                digest: Some(wire(&tree_file)),
                ..Default::default()
            }],
            ..Default::default()
        }),
        children: vec![],
    };
    let tree = server.put(&tree.encode_to_vec()).await;
    let result = v2::ActionResult {
        output_files: vec![v2::OutputFile {
            path: "out/a.o".into(),
            digest: Some(wire(&file)),
            ..Default::default()
        }],
        output_directories: vec![v2::OutputDirectory {
            path: "out/include".into(),
            tree_digest: Some(wire(&tree)),
            ..Default::default()
        }],
        exit_code: 0,
        stdout_digest: Some(wire(&stdout)),
        execution_metadata: Some(v2::ExecutedActionMetadata {
            worker: "w1".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    Outputs {
        result,
        file,
        stdout,
        tree,
        tree_file,
    }
}

fn get_request(instance: &str, action: &Digest) -> v2::GetActionResultRequest {
    v2::GetActionResultRequest {
        instance_name: instance.into(),
        action_digest: Some(wire(action)),
        ..Default::default()
    }
}

#[tokio::test]
async fn action_cache_miss_hit_and_incomplete_hit() {
    let server = start(CasConfig::default()).await;
    let mut client = server.ac().await;
    let action = digest_of(b"an action");
    let err = client
        .get_action_result(get_request("", &action))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let outputs = stored_outputs(&server).await;
    let echoed = client
        .update_action_result(v2::UpdateActionResultRequest {
            instance_name: String::new(),
            action_digest: Some(wire(&action)),
            action_result: Some(outputs.result.clone()),
            results_cache_policy: None,
            digest_function: v2::digest_function::Value::Sha256 as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(echoed, outputs.result);
    let hit = client
        .get_action_result(get_request("", &action))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hit, outputs.result);

    // Each referenced blob going missing turns the hit into a miss, until it is back.
    for gone in [
        &outputs.file,
        &outputs.stdout,
        &outputs.tree,
        &outputs.tree_file,
    ] {
        server.store.forget(gone);
        let err = client
            .get_action_result(get_request("", &action))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{gone}");
        server.store.forgotten.lock().unwrap().clear();
        assert!(
            client
                .get_action_result(get_request("", &action))
                .await
                .is_ok()
        );
    }
}

#[tokio::test]
async fn action_cache_keeps_instances_apart() {
    let server = start(CasConfig::default()).await;
    let mut client = server.ac().await;
    let action = digest_of(b"shared action");
    for (instance, exit_code) in [("a", 1), ("b/c", 2)] {
        client
            .update_action_result(v2::UpdateActionResultRequest {
                instance_name: instance.into(),
                action_digest: Some(wire(&action)),
                action_result: Some(v2::ActionResult {
                    exit_code,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    for (instance, exit_code) in [("a", 1), ("b/c", 2)] {
        let result = client
            .get_action_result(get_request(instance, &action))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(result.exit_code, exit_code);
    }
    let err = client
        .get_action_result(get_request("", &action))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn action_cache_refuses_bad_updates() {
    let server = start(CasConfig::default()).await;
    let mut client = server.ac().await;
    let action = digest_of(b"x");
    let bad_results = [
        v2::ActionResult {
            output_files: vec![v2::OutputFile {
                path: "a".into(),
                digest: Some(v2::Digest {
                    hash: "short".into(),
                    size_bytes: 1,
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
        v2::ActionResult {
            output_files: vec![v2::OutputFile {
                path: "../escape".into(),
                digest: Some(wire(&Digest::empty())),
                ..Default::default()
            }],
            ..Default::default()
        },
        v2::ActionResult {
            stdout_digest: Some(v2::Digest {
                hash: EMPTY_SHA256.into(),
                size_bytes: -4,
            }),
            ..Default::default()
        },
    ];
    for result in bad_results {
        let err = client
            .update_action_result(v2::UpdateActionResultRequest {
                action_digest: Some(wire(&action)),
                action_result: Some(result),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    }
    for request in [
        v2::UpdateActionResultRequest {
            action_digest: Some(wire(&action)),
            action_result: None,
            ..Default::default()
        },
        v2::UpdateActionResultRequest {
            action_digest: None,
            action_result: Some(v2::ActionResult::default()),
            ..Default::default()
        },
    ] {
        let err = client.update_action_result(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    }
}

/// Calls a unary method with raw request bytes and returns the raw response bytes.
async fn raw_call<Req: Message + Send + Sync + 'static>(
    server: &Server,
    path: &'static str,
    request: Req,
) -> Result<Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let codec: tonic_prost::ProstCodec<Req, RawMessage> = tonic_prost::ProstCodec::default();
    let response = grpc
        .unary(
            tonic::Request::new(request),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            codec,
        )
        .await?;
    Ok(response.into_inner().0)
}

#[tokio::test]
async fn action_results_are_kept_byte_for_byte() {
    let server = start(CasConfig::default()).await;
    let action = digest_of(b"future client");
    // An ActionResult with a field this server does not know (tag 99, varint 7).
    let mut result = v2::ActionResult {
        exit_code: 5,
        ..Default::default()
    }
    .encode_to_vec();
    result.extend_from_slice(&[0x98, 0x06, 0x07]);
    let result = Bytes::from(result);
    let echoed = raw_call(
        &server,
        "/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult",
        UpdateActionResultRequestRaw {
            instance_name: "i".into(),
            action_digest: Some(wire(&action)),
            action_result: Some(result.clone()),
            results_cache_policy: None,
            digest_function: 0,
        },
    )
    .await
    .unwrap();
    assert_eq!(echoed, result);
    let got = raw_call(
        &server,
        "/build.bazel.remote.execution.v2.ActionCache/GetActionResult",
        get_request("i", &action),
    )
    .await
    .unwrap();
    assert_eq!(got, result);
}

// ---------------------------------------------------------------------------------------------
// Damaged blobs
// ---------------------------------------------------------------------------------------------

/// The status and data BatchReadBlobs gives for one digest.
async fn batch_read_one(server: &Server, digest: &Digest) -> (Code, Bytes) {
    let response = server
        .cas()
        .await
        .batch_read_blobs(v2::BatchReadBlobsRequest {
            digests: vec![wire(digest)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let blob = response.responses.into_iter().next().unwrap();
    (Code::from(blob.status.unwrap().code), blob.data)
}

async fn upload(server: &Server, uuid: &str, digest: &Digest, data: &[u8]) -> i64 {
    server
        .bytestream()
        .await
        .write(futures::stream::iter(write_messages(
            &upload_name("", uuid, digest),
            data,
            64 << 10,
        )))
        .await
        .unwrap()
        .into_inner()
        .committed_size
}

#[tokio::test]
async fn corrupt_blobs_are_data_loss_then_missing_until_uploaded_again() {
    let server = start_on_disk().await;
    let data = blob(10_000, 40);
    let digest = server.put(&data).await;
    let name = format!("blobs/{}/{}", digest.hash, digest.size_bytes);

    // ByteStream Read.
    server.damage(&digest, 5000);
    let mut bytestream = server.bytestream().await;
    let err = read_all(&mut bytestream, &name, 0, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err}");
    assert!(server.reported_missing(&digest).await);
    let response = server
        .cas()
        .await
        .batch_update_blobs(v2::BatchUpdateBlobsRequest {
            requests: vec![update(&digest, &data)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.responses[0].status.as_ref().unwrap().code, 0);
    assert_eq!(
        batch_read_one(&server, &digest).await,
        (Code::Ok, data.clone().into())
    );

    // BatchReadBlobs, and a ranged ByteStream Read.
    server.damage(&digest, 0);
    let (code, bytes) = batch_read_one(&server, &digest).await;
    assert_eq!(code, Code::DataLoss);
    assert!(bytes.is_empty());
    assert!(server.reported_missing(&digest).await);
    assert_eq!(upload(&server, "again", &digest, &data).await, 10_000);
    server.damage(&digest, 9_999);
    let err = read_all(&mut bytestream, &name, 9_000, 10)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err}");
    assert!(server.reported_missing(&digest).await);

    // Damaged behind the server's back with no read since: FindMissingBlobs (which trusts the
    // store's index) still says present, but a re-upload is not answered as done without
    // looking, by ByteStream nor by BatchUpdateBlobs: it repairs the blob.
    assert_eq!(upload(&server, "third", &digest, &data).await, 10_000);
    server.damage(&digest, 1234);
    assert_eq!(upload(&server, "fourth", &digest, &data).await, 10_000);
    assert_eq!(
        read_all(&mut bytestream, &name, 0, 0).await.unwrap().0,
        data
    );
    server.damage(&digest, 4321);
    server
        .cas()
        .await
        .batch_update_blobs(v2::BatchUpdateBlobsRequest {
            requests: vec![update(&digest, &data)],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        batch_read_one(&server, &digest).await,
        (Code::Ok, data.into())
    );
}

#[tokio::test]
async fn a_large_corrupt_blob_read_whole_ends_in_data_loss() {
    let server = start_on_disk().await;
    // Several MiB: streamed in many messages, checked as it goes.
    let data = blob((5 << 20) + 17, 41);
    let digest = server.put(&data).await;
    let name = format!("blobs/{}/{}", digest.hash, digest.size_bytes);
    server.damage(&digest, (4 << 20) + 3);
    let mut stream = server
        .bytestream()
        .await
        .read(ReadRequest {
            resource_name: name.clone(),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(message)) => received += message.data.len(),
            Ok(None) => panic!("the stream ended OK after {received} bytes of a corrupt blob"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DataLoss, "{status}");
    assert!(server.reported_missing(&digest).await);

    // Stored again: served whole and in part.
    assert_eq!(
        upload(&server, "u", &digest, &data).await,
        data.len() as i64
    );
    let mut bytestream = server.bytestream().await;
    assert_eq!(
        read_all(&mut bytestream, &name, 0, 0).await.unwrap().0,
        data
    );
    let (tail, _) = read_all(&mut bytestream, &name, 5 << 20, 0).await.unwrap();
    assert_eq!(tail, data[5 << 20..]);
    // A range of a damaged large blob is refused before any of it is sent.
    server.damage(&digest, 7);
    let err = read_all(&mut bytestream, &name, 5 << 20, 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err}");
}

#[tokio::test]
async fn action_cache_hits_with_corrupt_outputs_are_misses() {
    let server = start_on_disk().await;
    let mut client = server.ac().await;
    let action = digest_of(b"an action with outputs on disk");
    let outputs = stored_outputs(&server).await;
    client
        .update_action_result(v2::UpdateActionResultRequest {
            action_digest: Some(wire(&action)),
            action_result: Some(outputs.result.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let key = scoot_cas_services::AcKey::new("", action.clone());
    let contents: [(&Digest, &[u8]); 3] = [
        (&outputs.stdout, b"compiling..."),
        (&outputs.file, b"object code"),
        (&outputs.tree_file, b"header"),
    ];
    for (damaged, bytes) in contents {
        assert!(
            client
                .get_action_result(get_request("", &action))
                .await
                .is_ok()
        );
        server.damage(damaged, 0);
        let err = client
            .get_action_result(get_request("", &action))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{damaged}: {err}");
        // The scheduler's Execute looks the cache up the same way.
        assert!(server.services.cached_result(&key).await.unwrap().is_none());
        // The damaged blob was dropped; storing it again makes the result whole.
        assert!(server.reported_missing(damaged).await);
        server.put(bytes).await;
    }
    let hit = client
        .get_action_result(get_request("", &action))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hit, outputs.result);
}
