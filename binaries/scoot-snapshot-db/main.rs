//! `scoot-snapshot-db`: create, read and export snapshots. See `scoot_snapshot_db::cli`.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: scoot_snapshot_db::cli::Args = scoot_bin_util::parse_args();
    if let Err(err) = scoot_bin_util::init_logging(&args.log_level, args.log_format) {
        eprintln!("scoot-snapshot-db: {err}");
        return ExitCode::FAILURE;
    }
    let result = match scoot_bin_util::run_server(scoot_snapshot_db::cli::run(args)) {
        Ok(result) => result,
        Err(err) => Err(anyhow::Error::new(err).context("cannot start the runtime")),
    };
    let output = match result {
        Ok(output) => output,
        Err(err) => {
            eprintln!("scoot-snapshot-db: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(err) = stdout.write_all(&output).and_then(|()| stdout.flush()) {
        eprintln!("scoot-snapshot-db: cannot write the result: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
