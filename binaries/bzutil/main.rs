//! `bzutil`: command-line client for a REAPI CAS. See `scoot_bzutil::cli`.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli =
        scoot_bzutil::cli::Cli::parse_from(scoot_bin_util::go_style_args(std::env::args_os()));
    scoot_bin_util::init_logging(&cli.log_level).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(scoot_bzutil::cli::run(cli))
}
