//! `setup-cloud-scoot`: starts a whole local Scoot cluster and keeps it up until interrupted, or
//! runs one command against it and exits with that command's status. See `scoot_local_cluster::cli`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let mut cli: scoot_local_cluster::cli::Cli = scoot_bin_util::parse_args();
    let invocation = cli.take_invocation().unwrap_or_else(|err| err.exit());
    if let Err(err) = scoot_bin_util::init_logging(&cli.log_level, cli.log_format) {
        eprintln!("setup-cloud-scoot: {err}");
        return ExitCode::from(2);
    }
    match scoot_local_cluster::cli::run(cli, invocation, scoot_bin_util::shutdown_signal()).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("setup-cloud-scoot: {:#}", anyhow::Error::new(err));
            ExitCode::FAILURE
        }
    }
}
