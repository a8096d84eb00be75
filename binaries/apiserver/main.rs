//! `apiserver`: serves the bundlestore, the snapshot viewer and the Bazel remote cache. See
//! `scoot_apiserver`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use scoot_apiserver::setup::{
    DEFAULT_AC_BYTES, DEFAULT_CAS_BYTES, StoreDir, cas_services, check_config_json,
    file_backed_store, open_cas_stores, open_cas_stores_under,
};
use scoot_apiserver::{ApiServerConfig, GrpcSide, SnapshotFiles};
use scoot_snapshot::store::Store;

/// Scoot apiserver: stores snapshot bundles (/bundle/), shows snapshot files (/view/) and serves
/// the Bazel remote cache (REAPI CAS, ByteStream, ActionCache, Capabilities) over gRPC.
#[derive(Parser, Debug)]
#[command(name = "apiserver", version)]
struct Args {
    /// Address for HTTP (/bundle/, /view/, /health).
    #[arg(long = "http_addr", default_value = "localhost:9094")]
    http_addr: String,
    /// Address for gRPC: the Bazel remote cache (`--remote_cache=grpc://<addr>`).
    #[arg(long = "grpc_addr", default_value = "localhost:9098")]
    grpc_addr: String,
    /// Configuration as JSON text; Scoot's apiserver used `{}`.
    #[arg(long = "config", default_value = "{}")]
    config: String,
    /// trace, debug, info, warn or error.
    #[arg(long = "log_level", default_value = "info")]
    log_level: String,
    /// Bytes of bundles kept in memory in front of the store directory (0 = no cache).
    #[arg(long = "cache_size", default_value_t = 2 << 30)]
    cache_size: u64,
    /// Directory of the bundle files; else $BUNDLESTORE_STORE_DIR; else a temporary directory
    /// removed at exit.
    #[arg(long = "store_dir")]
    store_dir: Option<PathBuf>,
    /// Bytes of CAS blobs kept on disk (least recently used evicted first).
    #[arg(long = "cas_size", default_value_t = DEFAULT_CAS_BYTES)]
    cas_size: u64,
    /// Bytes of action-cache entries kept on disk.
    #[arg(long = "ac_size", default_value_t = DEFAULT_AC_BYTES)]
    ac_size: u64,
    /// Directory of the CAS (and its action cache); else `cas` in the store directory, or
    /// `cas-1`, `cas-2`, ... there when other apiservers hold it.
    #[arg(long = "cas_dir")]
    cas_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    scoot_bin_util::run_server(serve())?
}

/// The reader behind `/view/`: a git snapshot database over the same bundle store.
async fn snapshot_viewer(store: &Arc<dyn Store>) -> anyhow::Result<Option<Arc<dyn SnapshotFiles>>> {
    let files = scoot_apiserver::view::GitSnapshotFiles::new(store.clone())
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(Some(Arc::new(files)))
}

async fn serve() -> anyhow::Result<()> {
    let args: Args = scoot_bin_util::parse_args();
    scoot_bin_util::init_logging(&args.log_level).map_err(anyhow::Error::msg)?;
    check_config_json(&args.config).map_err(anyhow::Error::msg)?;

    // Kept until the server stops: a temporary directory is removed when this is dropped.
    let store_dir = StoreDir::resolve(args.store_dir).context("cannot create a store directory")?;
    let store = file_backed_store(store_dir.path().to_path_buf(), args.cache_size)
        .context("cannot open the bundle store")?;
    tracing::info!(dir = %store_dir.path().display(), cache_bytes = args.cache_size, "bundle store");
    let view = snapshot_viewer(&store).await?;

    let (cas_dir, store_root) = (args.cas_dir, store_dir.path().to_path_buf());
    let (cas_size, ac_size) = (args.cas_size, args.ac_size);
    let cas = tokio::task::spawn_blocking(move || match cas_dir {
        Some(dir) => open_cas_stores(dir, cas_size, ac_size),
        None => open_cas_stores_under(&store_root, cas_size, ac_size),
    })
    .await
    .context("opening the CAS")?
    .map_err(anyhow::Error::msg)?;
    tracing::info!(dir = %cas.dir.display(), cas_bytes = cas_size, ac_bytes = ac_size, "CAS");
    let services = cas_services(cas);

    let http = tokio::net::TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("cannot listen on -http_addr {}", args.http_addr))?;
    let grpc = tokio::net::TcpListener::bind(&args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on -grpc_addr {}", args.grpc_addr))?;
    let config = ApiServerConfig {
        view,
        ..ApiServerConfig::new(store)
    };
    let grpc = GrpcSide {
        listener: grpc,
        services,
    };
    scoot_apiserver::run_with_grpc(http, Some(grpc), config, scoot_bin_util::shutdown_signal())
        .await
        .context("apiserver failed")?;
    drop(store_dir);
    Ok(())
}
