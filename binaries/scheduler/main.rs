//! `scheduler`: runs the Scoot scheduler. See `scoot_scheduler::cli` for its flags and
//! `scoot_scheduler` for what it serves.

fn main() -> anyhow::Result<()> {
    let cli: scoot_scheduler::cli::Cli = scoot_bin_util::parse_args();
    scoot_bin_util::init_logging(&cli.log_level, cli.log_format).map_err(anyhow::Error::msg)?;
    let shutdown = scoot_bin_util::shutdown_signal();
    Ok(scoot_bin_util::run_server(scoot_scheduler::cli::run(
        cli, shutdown,
    ))??)
}
