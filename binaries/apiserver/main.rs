//! `apiserver`: serves the bundlestore, the snapshot viewer and the Bazel remote cache. See
//! `scoot_apiserver::cli` for its flags and `scoot_apiserver` for what it serves.

fn main() -> anyhow::Result<()> {
    let cli: scoot_apiserver::cli::Cli = scoot_bin_util::parse_args();
    scoot_bin_util::init_logging(&cli.log_level, cli.log_format).map_err(anyhow::Error::msg)?;
    let shutdown = scoot_bin_util::shutdown_signal();
    Ok(scoot_bin_util::run_server(scoot_apiserver::cli::run(
        cli, shutdown,
    ))??)
}
