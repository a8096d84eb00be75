//! `scheduler`: runs the Scoot scheduler. See `scoot_scheduler` for what it serves.

use anyhow::Context;
use clap::Parser;
use scoot_cas::stores::{DEFAULT_AC_BYTES, DEFAULT_CAS_BYTES, open_cas_stores};

/// Scoot scheduler: accepts jobs over CloudScoot and runs their tasks on workers.
#[derive(Parser, Debug)]
#[command(name = "scheduler", version)]
struct Args {
    /// Address for the CloudScoot Thrift API.
    #[arg(long = "thrift_addr", default_value = "localhost:9090")]
    thrift_addr: String,
    /// Address for HTTP (/health).
    #[arg(long = "http_addr", default_value = "localhost:9091")]
    http_addr: String,
    /// Address for the Bazel Remote Execution API (Execution, Operations, CAS, ByteStream,
    /// ActionCache, Capabilities); empty to serve none.
    #[arg(long = "grpc_addr", default_value = "localhost:9099")]
    grpc_addr: String,
    /// Directory of the CAS served on -grpc_addr (the action cache goes in its action-cache/
    /// subdirectory); a temporary directory, removed at exit, when not given.
    #[arg(long = "cas_dir")]
    cas_dir: Option<std::path::PathBuf>,
    /// Another CAS (`host:port`, e.g. the cluster's apiserver) consulted for blobs this
    /// scheduler's CAS lacks, so inputs uploaded there can be executed here.
    #[arg(long = "cas_fallback")]
    cas_fallback: Option<String>,
    /// Bound of the CAS in bytes (least recently used blobs are evicted).
    #[arg(long = "cas_size", default_value_t = DEFAULT_CAS_BYTES)]
    cas_size: u64,
    /// Bound of the action cache in bytes.
    #[arg(long = "ac_size", default_value_t = DEFAULT_AC_BYTES)]
    ac_size: u64,
    /// default, local.local, local.memory, a JSON file or JSON text.
    #[arg(long = "config", default_value = "local.memory")]
    config: String,
    /// Connections the Thrift port holds at once; past this, new ones are closed at once.
    #[arg(long = "thrift_max_conns", default_value_t = 10_000)]
    thrift_max_conns: usize,
    /// Longest time a Thrift request may take to arrive, from its first byte.
    #[arg(long = "thrift_message_timeout", default_value = "30s", value_parser = humantime::parse_duration)]
    thrift_message_timeout: std::time::Duration,
    /// A Thrift connection that starts no request for this long is closed.
    #[arg(long = "thrift_idle_timeout", default_value = "15m", value_parser = humantime::parse_duration)]
    thrift_idle_timeout: std::time::Duration,
    /// trace, debug, info, warn or error.
    #[arg(long = "log_level", default_value = "info")]
    log_level: String,
}

fn main() -> anyhow::Result<()> {
    scoot_bin_util::run_server(serve())?
}

async fn serve() -> anyhow::Result<()> {
    let args: Args = scoot_bin_util::parse_args();
    scoot_bin_util::init_logging(&args.log_level).map_err(anyhow::Error::msg)?;
    let mut config = scoot_scheduler::SchedulerConfig::from_flag(&args.config)
        .with_context(|| format!("bad -config {:?}", args.config))?;
    config.thrift = scoot_thrift::server::ServeOptions::with_limits(
        args.thrift_max_conns,
        args.thrift_message_timeout,
        args.thrift_idle_timeout,
    )
    .context("bad -thrift_max_conns, -thrift_message_timeout or -thrift_idle_timeout")?;
    let thrift = tokio::net::TcpListener::bind(&args.thrift_addr)
        .await
        .with_context(|| format!("cannot listen on -thrift_addr {}", args.thrift_addr))?;
    let http = tokio::net::TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("cannot listen on -http_addr {}", args.http_addr))?;
    // Kept until exit: a temporary CAS directory is removed when this is dropped.
    let mut temporary_cas = None;
    let reapi = if args.grpc_addr.is_empty() {
        None
    } else {
        let listener = tokio::net::TcpListener::bind(&args.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on -grpc_addr {}", args.grpc_addr))?;
        let dir = match args.cas_dir {
            Some(dir) => dir,
            None => temporary_cas
                .insert(
                    tempfile::Builder::new()
                        .prefix("scoot-scheduler-cas")
                        .tempdir()
                        .context("cannot create a temporary CAS directory")?,
                )
                .path()
                .to_path_buf(),
        };
        let (cas_size, ac_size) = (args.cas_size, args.ac_size);
        let stores = tokio::task::spawn_blocking(move || open_cas_stores(dir, cas_size, ac_size))
            .await?
            .map_err(anyhow::Error::msg)?;
        Some(scoot_scheduler::server::ReapiEndpoint {
            listener,
            stores,
            fallback: args.cas_fallback.clone(),
        })
    };
    let served = scoot_scheduler::run(
        thrift,
        http,
        reapi,
        config,
        scoot_bin_util::shutdown_signal(),
    )
    .await
    .context("scheduler failed");
    drop(temporary_cas);
    served
}
