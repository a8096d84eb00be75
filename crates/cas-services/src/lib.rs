//! REAPI v2 cache services over a [`BlobStore`]: Capabilities, ContentAddressableStorage,
//! ByteStream and ActionCache.
//!
//! * [`server`] builds [`CasServices`] from the CAS store, the action-cache store and a
//!   [`CasConfig`]; [`CasServices::routes`] mounts all four services (what the apiserver
//!   serves), and the per-service getters let another server (the scheduler) mount them next to
//!   its own Execution service. [`serve`] runs routes on a listener until shutdown.
//! * [`capabilities`]: what is advertised (API 2.0–2.3, SHA-256, batch limit, no compressors,
//!   execution only when [`CasConfig::exec_enabled`]).
//! * [`cas`]: FindMissingBlobs, BatchUpdateBlobs, BatchReadBlobs, GetTree.
//! * [`bytestream`]: Read, Write (streamed, verified, resumable), QueryWriteStatus.
//! * [`action_cache`]: GetActionResult (hits only when every referenced blob is still stored
//!   intact) and UpdateActionResult, over an [`ActionCacheStore`] ([`MemoryActionCache`],
//!   [`FileActionCache`]).
//! * [`stores`]: opening the file-backed CAS and action cache in a directory.
//! * [`resource`]: ByteStream resource names; [`digest`]: wire digests; [`error`]: [`CasError`],
//!   the one error type, carrying the gRPC code it is reported with.
//!
//! The CAS is shared by every instance name (blobs are verified, so sharing is safe); action
//! results are kept per instance name. Client-supplied protos are never re-encoded: action
//! results and GetTree directories go out as the bytes that came in (see [`scoot_proto::raw`]).

pub mod ac_store;
pub mod action_cache;
pub mod bytestream;
pub mod capabilities;
pub mod cas;
pub mod error;
pub mod limits;
pub mod resource;
pub mod stats;
pub mod stores;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use scoot_blobstore::BlobStore;
use scoot_core::Digest;
use scoot_proto::bytestream::byte_stream_server::ByteStreamServer;
use scoot_proto::raw::action_cache_server::ActionCacheServer;
use scoot_proto::raw::content_addressable_storage_server::ContentAddressableStorageServer;
use scoot_proto::reapi::v2;
use scoot_proto::reapi::v2::capabilities_server::CapabilitiesServer;
// The services' `crate::digest`: wire digests, shared with the scheduler and workers.
use scoot_reapi::digest;
use scoot_security::grpc::AuthLayer;

use crate::limits::{CallLimitLayer, GrpcLimits, LimitedIncoming};
use scoot_security::session::TrackedIncoming;
use scoot_security::{ServerTls, TlsIncoming, Tokens};
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;

pub use ac_store::{AcKey, ActionCacheStore, FileActionCache, MemoryActionCache};
pub use action_cache::ActionCacheService;
pub use bytestream::ByteStreamService;
pub use capabilities::{CapabilitiesService, server_capabilities};
pub use cas::CasService;
pub use error::CasError;

/// The batch limit advertised and enforced by default: 4 MiB.
pub const DEFAULT_MAX_BATCH_TOTAL_SIZE_BYTES: u64 = 4 << 20;

/// How the services behave.
#[derive(Clone, Debug)]
pub struct CasConfig {
    /// Largest total of blob bytes in one BatchUpdateBlobs or BatchReadBlobs (advertised in the
    /// capabilities; larger requests are INVALID_ARGUMENT).
    pub max_batch_total_size_bytes: u64,
    /// Whether Capabilities advertises execution (the scheduler's endpoint does; the
    /// apiserver's does not).
    pub exec_enabled: bool,
    /// Largest ByteStream Read message.
    pub read_chunk_bytes: usize,
    /// How long an interrupted upload is kept for a resumption.
    pub upload_idle_timeout: Duration,
    /// At most this many interrupted uploads are kept (oldest dropped first).
    pub max_idle_uploads: usize,
    /// Largest gRPC message accepted or sent by the services.
    pub max_message_bytes: usize,
    /// Default and largest number of directories in one GetTree page.
    pub tree_page_size: usize,
    /// How many bytes of output-directory Trees an action-cache hit may read to check that the
    /// files in them still exist (Trees beyond it are only checked to exist themselves).
    pub completeness_tree_bytes: u64,
}

impl Default for CasConfig {
    fn default() -> CasConfig {
        CasConfig {
            max_batch_total_size_bytes: DEFAULT_MAX_BATCH_TOTAL_SIZE_BYTES,
            exec_enabled: false,
            read_chunk_bytes: 64 << 10,
            upload_idle_timeout: Duration::from_secs(600),
            max_idle_uploads: 1000,
            max_message_bytes: 16 << 20,
            tree_page_size: 1000,
            completeness_tree_bytes: 16 << 20,
        }
    }
}

/// State shared by the services.
pub(crate) struct Core {
    pub(crate) cas: Arc<dyn BlobStore>,
    pub(crate) ac: Arc<dyn ActionCacheStore>,
    pub(crate) config: CasConfig,
    pub(crate) uploads: bytestream::Uploads,
}

impl Core {
    /// Whether the CAS holds `digest` (the empty blob always exists).
    pub(crate) async fn blob_exists(&self, digest: &Digest) -> Result<bool, CasError> {
        if digest.is_empty_blob() {
            return Ok(true);
        }
        let missing = self.cas.find_missing(std::slice::from_ref(digest)).await?;
        Ok(missing.is_empty())
    }

    /// Whether the CAS holds `digest` with its bytes intact, checking them (a corrupt copy is
    /// dropped): for telling a client that it need not upload a blob.
    pub(crate) async fn blob_intact(&self, digest: &Digest) -> Result<bool, CasError> {
        if digest.is_empty_blob() {
            return Ok(true);
        }
        let unusable = self
            .cas
            .find_missing_or_corrupt(std::slice::from_ref(digest))
            .await?;
        Ok(unusable.is_empty())
    }
}

/// The four cache services over one CAS and one action cache.
#[derive(Clone)]
pub struct CasServices {
    core: Arc<Core>,
    capabilities: v2::ServerCapabilities,
}

/// Builds the services: `cas` holds blobs, `ac` action results.
pub fn server(
    cas: Arc<dyn BlobStore>,
    ac: Arc<dyn ActionCacheStore>,
    config: CasConfig,
) -> CasServices {
    let capabilities = server_capabilities(&config);
    CasServices {
        core: Arc::new(Core {
            cas,
            ac,
            config,
            uploads: Default::default(),
        }),
        capabilities,
    }
}

impl CasServices {
    pub fn config(&self) -> &CasConfig {
        &self.core.config
    }

    /// What GetCapabilities answers.
    pub fn capabilities(&self) -> &v2::ServerCapabilities {
        &self.capabilities
    }

    /// The action cache's usable result for `key` (see [`action_cache`]): `Ok(None)` on a miss.
    pub async fn cached_result(&self, key: &AcKey) -> Result<Option<v2::ActionResult>, CasError> {
        match self.core.complete_result(key).await {
            Ok(bytes) => {
                stats::AC_LOOKUPS.inc("hit");
                v2::ActionResult::decode(bytes)
                    .map(Some)
                    .map_err(|e| CasError::internal(format!("undecodable action result: {e}")))
            }
            Err(e) if e.code == tonic::Code::NotFound => {
                stats::AC_LOOKUPS.inc("miss");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A whole blob of at most `max` bytes from the CAS (NOT_FOUND when absent).
    pub async fn read_blob(&self, digest: &Digest, max: u64) -> Result<bytes::Bytes, CasError> {
        cas::read_small_blob(&self.core, digest, max).await
    }

    /// Which of `digests` the CAS lacks (the empty blob is never missing).
    pub async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>, CasError> {
        self.core.missing_of(digests.to_vec()).await
    }

    /// Number of ByteStream uploads in progress or kept for resumption.
    pub fn uploads_in_progress(&self) -> usize {
        self.core.uploads.len()
    }

    pub fn capabilities_service(&self) -> CapabilitiesServer<CapabilitiesService> {
        let limit = self.core.config.max_message_bytes;
        CapabilitiesServer::new(CapabilitiesService::new(self.capabilities.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    pub fn cas_service(&self) -> ContentAddressableStorageServer<CasService> {
        let limit = self.core.config.max_message_bytes;
        ContentAddressableStorageServer::new(CasService::new(self.core.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    pub fn bytestream_service(&self) -> ByteStreamServer<ByteStreamService> {
        let limit = self.core.config.max_message_bytes;
        ByteStreamServer::new(ByteStreamService::new(self.core.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    pub fn action_cache_service(&self) -> ActionCacheServer<ActionCacheService> {
        let limit = self.core.config.max_message_bytes;
        ActionCacheServer::new(ActionCacheService::new(self.core.clone()))
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    /// CAS, ByteStream and ActionCache, for a server that answers Capabilities itself.
    pub fn routes_without_capabilities(&self) -> Routes {
        Routes::new(self.cas_service())
            .add_service(self.bytestream_service())
            .add_service(self.action_cache_service())
    }

    /// All four services.
    pub fn routes(&self) -> Routes {
        self.routes_without_capabilities()
            .add_service(self.capabilities_service())
    }
}

/// HTTP/2 flow-control windows of [`server_builder`]: hyper's 1 MiB default makes a client
/// streaming an upload wait for a window update every MiB, which made ByteStream uploads
/// markedly slower in a loopback test.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
/// Largest HTTP/2 frame a client may send us (fewer frames per upload chunk).
pub const MAX_FRAME_BYTES: u32 = 64 << 10;

/// A tonic server builder tuned for blob traffic (flow-control windows, frame size, no Nagle),
/// for any server that mounts these services.
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .tcp_nodelay(true)
}

/// Serves `routes` over gRPC (HTTP/2) on `listener` with [`server_builder`] until `shutdown`
/// completes, then stops accepting and lets calls in flight finish. With `tls`, connections are
/// TLS; with `tokens`, every call must carry a token with the scope its method needs
/// ([`scoot_security::grpc::method_scope`]).
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    tls: Option<ServerTls>,
    tokens: Option<Tokens>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with_limits(
        listener,
        routes,
        tls,
        tokens,
        &GrpcLimits::default(),
        shutdown,
    )
    .await
}

/// [`serve`] under `limits` (connections, call rate, streams, idle time, buffered calls; see
/// [`limits`]).
pub async fn serve_with_limits(
    listener: TcpListener,
    routes: Routes,
    tls: Option<ServerTls>,
    tokens: Option<Tokens>,
    limits: &GrpcLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let mut server = server_builder()
        .max_concurrent_streams(limits.max_streams)
        .layer(AuthLayer::new(tokens))
        .layer(CallLimitLayer::new(limits));
    match tls {
        Some(tls) => {
            let incoming = TrackedIncoming::new(LimitedIncoming::new(
                TlsIncoming::new(listener, tls).map_err(ServeError::Listener)?,
                limits,
            ));
            server
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?
        }
        None => {
            let incoming = TrackedIncoming::new(LimitedIncoming::new(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                limits,
            ));
            server
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await?
        }
    }
    Ok(())
}

/// Why a gRPC port stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC listener: {0}")]
    Listener(#[source] std::io::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}
