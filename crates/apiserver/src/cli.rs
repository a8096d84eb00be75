//! The `apiserver` binary: its flags, and [`run`], which assembles the bundle store, the snapshot
//! viewer and the CAS they describe and serves them until shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use scoot_bin_util::{ListenError, listen};
use scoot_bundlestore::store::peered::peer_options;
use scoot_bundlestore::store::{HttpStoreOptions, PeeredStore, Store, StoreError};
use scoot_cas_services::limits::GrpcLimits;

use crate::setup::{
    DEFAULT_AC_BYTES, DEFAULT_CAS_BYTES, StoreDir, cas_services, check_config_json,
    file_backed_store, open_cas_stores, open_cas_stores_under,
};
use crate::{ApiServerConfig, ApiServerError, GrpcSide, SnapshotFiles};

/// Scoot apiserver: stores snapshot bundles (/bundle/), shows snapshot files (/view/) and serves
/// the Bazel remote cache (REAPI CAS, ByteStream, ActionCache, Capabilities) over gRPC.
#[derive(Parser, Debug)]
#[command(name = "apiserver", version)]
pub struct Cli {
    /// Address for HTTP (/bundle/, /view/, /health).
    #[arg(long = "http_addr", default_value = "localhost:9094")]
    pub http_addr: String,
    /// Address for gRPC: the Bazel remote cache (`--remote_cache=grpc://<addr>`); empty: no
    /// gRPC port.
    #[arg(long = "grpc_addr", default_value = "localhost:9098")]
    pub grpc_addr: String,
    /// Configuration as JSON text; Scoot's apiserver used `{}`.
    #[arg(long = "config", default_value = "{}")]
    pub config: String,
    /// trace, debug, info, warn or error.
    #[arg(long = "log_level", default_value = "info")]
    pub log_level: String,
    /// text (one line per event) or json (one object per line, with its spans' fields).
    #[arg(long = "log_format", value_enum, default_value_t = scoot_bin_util::LogFormat::Text)]
    pub log_format: scoot_bin_util::LogFormat,
    /// Bytes of bundles kept in memory in front of the store directory (0 = no cache).
    #[arg(long = "cache_size", default_value_t = 2 << 30)]
    pub cache_size: u64,
    /// The HTTP addresses (`host:port`, comma-separated) of the cluster's other apiservers,
    /// asked for a bundle this one lacks, as Scoot's groupcache peers were.
    #[arg(long = "peers", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Directory of the bundle files; else $BUNDLESTORE_STORE_DIR; else a temporary directory
    /// removed at exit.
    #[arg(long = "store_dir")]
    pub store_dir: Option<PathBuf>,
    /// Bytes of CAS blobs kept on disk (least recently used evicted first).
    #[arg(long = "cas_size", default_value_t = DEFAULT_CAS_BYTES)]
    pub cas_size: u64,
    /// Bytes of action-cache entries kept on disk.
    #[arg(long = "ac_size", default_value_t = DEFAULT_AC_BYTES)]
    pub ac_size: u64,
    /// Directory of the CAS (and its action cache); else `cas` in the store directory, or
    /// `cas-1`, `cas-2`, ... there when other apiservers hold it.
    #[arg(long = "cas_dir")]
    pub cas_dir: Option<PathBuf>,
    #[command(flatten)]
    pub grpc_limits: scoot_cas_services::limits::GrpcLimitFlags,
    /// Bytes of CAS request data held in memory at once (0: no bound); a call finding no room
    /// for 10 s is refused with UNAVAILABLE.
    #[arg(long = "cas_buffer_size", default_value_t = 0)]
    pub cas_buffer_size: u64,
    #[command(flatten)]
    pub transport: scoot_security::TransportFlags,
    #[command(flatten)]
    pub access: scoot_security::AccessFlags,
}

/// Why the apiserver did not start or stopped with an error; each message is what the binary
/// prints before its causes.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(String),
    #[error("cannot create a store directory")]
    StoreDir(#[source] std::io::Error),
    #[error("cannot open the bundle store")]
    BundleStore(#[source] StoreError),
    #[error("{0}")]
    Viewer(String),
    #[error("opening the CAS")]
    CasTask(#[source] tokio::task::JoinError),
    #[error("{0}")]
    Cas(crate::setup::OpenStoresError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("TLS or token set-up")]
    Security(#[source] scoot_security::SecurityError),
    #[error("apiserver failed")]
    Failed(#[source] ApiServerError),
}

/// The reader behind `/view/`: a git snapshot database over the same bundle store.
async fn snapshot_viewer(store: &Arc<dyn Store>) -> Result<Arc<dyn SnapshotFiles>, CliError> {
    let files = crate::view::GitSnapshotFiles::new(store.clone())
        .await
        .map_err(CliError::Viewer)?;
    Ok(Arc::new(files))
}

/// Serves the apiserver the flags describe until `shutdown`.
pub async fn run(
    cli: Cli,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    check_config_json(&cli.config).map_err(CliError::Config)?;

    // Kept until the server stops: a temporary directory is removed when this is dropped.
    let store_dir = StoreDir::resolve(cli.store_dir).map_err(CliError::StoreDir)?;
    let own_store = file_backed_store(store_dir.path().to_path_buf(), cli.cache_size)
        .map_err(CliError::BundleStore)?;
    let peers: Vec<String> = cli.peers.into_iter().filter(|p| !p.is_empty()).collect();
    let store: Arc<dyn Store> = if peers.is_empty() {
        Arc::clone(&own_store)
    } else {
        let options = HttpStoreOptions {
            tls: cli.transport.client().map_err(CliError::Security)?.tls,
            ..peer_options()
        };
        let peered = PeeredStore::new(Arc::clone(&own_store), &peers, options)
            .map_err(CliError::BundleStore)?;
        tracing::info!(peers = ?peered.peer_urls(), "bundles this apiserver lacks are asked of its peers");
        Arc::new(peered)
    };
    tracing::info!(dir = %store_dir.path().display(), cache_bytes = cli.cache_size, "bundle store");
    let view = snapshot_viewer(&store).await?;

    let (cas_dir, store_root) = (cli.cas_dir, store_dir.path().to_path_buf());
    let (cas_size, ac_size) = (cli.cas_size, cli.ac_size);
    let cas = tokio::task::spawn_blocking(move || match cas_dir {
        Some(dir) => open_cas_stores(dir, cas_size, ac_size),
        None => open_cas_stores_under(&store_root, cas_size, ac_size),
    })
    .await
    .map_err(CliError::CasTask)?
    .map_err(CliError::Cas)?;
    tracing::info!(dir = %cas.dir.display(), cas_bytes = cas_size, ac_bytes = ac_size, "CAS");
    let services = cas_services(cas);

    let security = cli
        .transport
        .server(&cli.access)
        .map_err(CliError::Security)?;
    let http = listen("http_addr", &cli.http_addr).await?;
    let grpc = if cli.grpc_addr.is_empty() {
        tracing::info!("no gRPC port (-grpc_addr is empty)");
        None
    } else {
        Some(GrpcSide {
            listener: listen("grpc_addr", &cli.grpc_addr).await?,
            services,
            tls: security.grpc_tls.clone(),
            tokens: security.tokens.clone(),
            limits: GrpcLimits {
                buffer_bytes: (cli.cas_buffer_size > 0).then_some(cli.cas_buffer_size),
                ..cli.grpc_limits.limits()
            },
        })
    };
    let mut ports = Vec::new();
    if let Ok(addr) = http.local_addr() {
        ports.push(("http", addr));
    }
    if let Some(Ok(addr)) = grpc.as_ref().map(|g| g.listener.local_addr()) {
        ports.push(("grpc", addr));
    }
    security.warn_if_exposed(&ports);
    let config = ApiServerConfig {
        view: Some(view),
        http_tls: security.http_tls.clone(),
        own_store,
        ..ApiServerConfig::new(store)
    };
    crate::run_with_grpc(http, grpc, config, shutdown)
        .await
        .map_err(CliError::Failed)?;
    drop(store_dir);
    Ok(())
}
