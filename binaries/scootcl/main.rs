//! `scootcl`: command-line client for the Scoot scheduler. See `scoot_cloudscoot_client::scootcl`.

fn main() -> std::process::ExitCode {
    let cli: scoot_cloudscoot_client::scootcl::Cli = scoot_bin_util::parse_args();
    if let Err(err) = scoot_bin_util::init_logging(&cli.log_level, cli.log_format) {
        eprintln!("scootcl: {err}");
        return std::process::ExitCode::from(2);
    }
    match scoot_cloudscoot_client::scootcl::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("scootcl: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
