//! `recoverytest`: Scoot's recovery flow against local clusters. See `scoot_harness::recovery`.

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "recoverytest", version)]
struct Args {
    /// trace, debug, info, warn or error.
    #[arg(long = "log_level", default_value = "info")]
    log_level: String,
    /// Shift every port of Scoot's local layout (so a run can coexist with another cluster).
    #[arg(long = "port_offset", default_value_t = 0)]
    port_offset: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse_from(scoot_bin_util::go_style_args(std::env::args_os()));
    scoot_bin_util::init_logging(&args.log_level).map_err(anyhow::Error::msg)?;
    let options =
        scoot_harness::HarnessOptions::next_to_current_exe(&args.log_level, args.port_offset)?;
    scoot_harness::recovery::run(&options)
        .await
        .context("recoverytest failed")
}
