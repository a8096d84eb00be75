//! `scheduler`: runs the Scoot scheduler. See `scoot_scheduler` for what it serves.

use anyhow::Context;
use clap::Parser;

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
    /// Address for the Bazel Remote Execution API (not served by this build yet).
    #[arg(long = "grpc_addr", default_value = "localhost:9099")]
    grpc_addr: String,
    /// default, local.local, local.memory, a JSON file or JSON text.
    #[arg(long = "config", default_value = "local.memory")]
    config: String,
    /// trace, debug, info, warn or error.
    #[arg(long = "log_level", default_value = "info")]
    log_level: String,
}

fn main() -> anyhow::Result<()> {
    scoot_bin_util::run_server(serve())?
}

async fn serve() -> anyhow::Result<()> {
    let args = Args::parse_from(scoot_bin_util::go_style_args(std::env::args_os()));
    scoot_bin_util::init_logging(&args.log_level).map_err(anyhow::Error::msg)?;
    let config = scoot_scheduler::SchedulerConfig::from_flag(&args.config)
        .with_context(|| format!("bad -config {:?}", args.config))?;
    tracing::debug!(grpc_addr = %args.grpc_addr, "remote execution is not served by this build");
    let thrift = tokio::net::TcpListener::bind(&args.thrift_addr)
        .await
        .with_context(|| format!("cannot listen on -thrift_addr {}", args.thrift_addr))?;
    let http = tokio::net::TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("cannot listen on -http_addr {}", args.http_addr))?;
    scoot_scheduler::run(thrift, http, config, scoot_bin_util::shutdown_signal())
        .await
        .context("scheduler failed")
}
