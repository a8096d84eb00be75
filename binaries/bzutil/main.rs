//! `bzutil`: command-line client for a REAPI CAS. See `scoot_bzutil::cli`.

fn main() -> anyhow::Result<()> {
    let cli: scoot_bzutil::cli::Cli = scoot_bin_util::parse_args();
    scoot_bin_util::init_logging(&cli.log_level, cli.log_format).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(scoot_bzutil::cli::run(cli))
}
