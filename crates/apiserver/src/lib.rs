//! The apiserver: Scoot's bundlestore over HTTP, the snapshot file viewer and `/health`, and
//! the Bazel remote cache over gRPC.
//!
//! * [`server::run_with_grpc`]: serves the HTTP routes on one listener and, optionally, the
//!   REAPI cache services of [`scoot_cas_services`] (Capabilities, ContentAddressableStorage, ByteStream,
//!   ActionCache) on another, until shutdown; [`server::run`] is the HTTP side alone.
//! * [`http`]: the routes: `/bundle/<name>` (store and fetch git bundles), `/view/<snapshot>/<path>`
//!   (one file of a snapshot, through [`SnapshotFiles`]) and `/health`.
//! * [`setup`]: what the binary needs to build a server from its flags (the store directory,
//!   the bundle store stack, the CAS and action-cache stores, the `-config` check).
//! * [`cli`]: the `apiserver` binary: its flags, and [`cli::run`], which builds the stores with
//!   [`setup`] and serves them.

pub mod cli;
pub mod http;
pub mod server;
pub mod setup;
pub mod stats;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use scoot_bundlestore::store::Store;

pub use server::{ApiServerError, GrpcSide, run, run_with_grpc};

/// Reads one file of a snapshot, for `/view/`. Implemented by the snapshot database.
#[async_trait]
pub trait SnapshotFiles: Send + Sync {
    /// The bytes of `path` (relative, `/`-separated) in snapshot `snapshot_id`; `Ok(None)` when
    /// the snapshot or the file does not exist; `Err` with a message for anything else.
    async fn read_file(&self, snapshot_id: &str, path: &str) -> Result<Option<Bytes>, String>;
}

/// Largest accepted bundle upload unless configured otherwise: 2 GiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 2 << 30;

/// Everything an apiserver serves from.
#[derive(Clone)]
pub struct ApiServerConfig {
    /// Where bundles are kept (and, with peers, found on the cluster's other apiservers).
    pub store: Arc<dyn Store>,
    /// This apiserver's own bundles, served to its peers at `/groupcacheapiserver/`; the same
    /// as `store` without peers.
    pub own_store: Arc<dyn Store>,
    /// The reader behind `/view/`; without one `/view/` answers 404.
    pub view: Option<Arc<dyn SnapshotFiles>>,
    /// How long an uploaded bundle is kept when the upload names no expiry (180 days).
    pub default_ttl: Duration,
    /// Larger bundle uploads are refused with 413.
    pub max_upload_bytes: u64,
    /// TLS on the HTTP port.
    pub http_tls: Option<scoot_security::ServerTls>,
}

impl ApiServerConfig {
    /// A configuration over `store` with no viewer and the default limits.
    pub fn new(store: Arc<dyn Store>) -> ApiServerConfig {
        ApiServerConfig {
            own_store: Arc::clone(&store),
            store,
            view: None,
            default_ttl: scoot_bundlestore::store::http::DEFAULT_TTL,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            http_tls: None,
        }
    }
}
