//! `apiserver`: serves the bundlestore and the snapshot viewer. See `scoot_apiserver`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use scoot_apiserver::setup::{StoreDir, check_config_json, file_backed_store};
use scoot_apiserver::{ApiServerConfig, SnapshotFiles};
use scoot_snapshot::store::Store;

/// Scoot apiserver: stores snapshot bundles (/bundle/) and shows snapshot files (/view/).
#[derive(Parser, Debug)]
#[command(name = "apiserver", version)]
struct Args {
    /// Address for HTTP (/bundle/, /view/, /health).
    #[arg(long = "http_addr", default_value = "localhost:9094")]
    http_addr: String,
    /// Address for gRPC (the Bazel CAS); accepted but not served by this build.
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
    let args = Args::parse_from(scoot_bin_util::go_style_args(std::env::args_os()));
    scoot_bin_util::init_logging(&args.log_level).map_err(anyhow::Error::msg)?;
    check_config_json(&args.config).map_err(anyhow::Error::msg)?;
    tracing::debug!(grpc_addr = %args.grpc_addr, "gRPC is not served by this build; -grpc_addr ignored");

    // Kept until the server stops: a temporary directory is removed when this is dropped.
    let store_dir = StoreDir::resolve(args.store_dir).context("cannot create a store directory")?;
    let store = file_backed_store(store_dir.path().to_path_buf(), args.cache_size)
        .context("cannot open the bundle store")?;
    tracing::info!(dir = %store_dir.path().display(), cache_bytes = args.cache_size, "bundle store");
    let view = snapshot_viewer(&store).await?;

    let http = tokio::net::TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("cannot listen on -http_addr {}", args.http_addr))?;
    let config = ApiServerConfig {
        view,
        ..ApiServerConfig::new(store)
    };
    scoot_apiserver::run(http, config, scoot_bin_util::shutdown_signal())
        .await
        .context("apiserver failed")?;
    drop(store_dir);
    Ok(())
}
