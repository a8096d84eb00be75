//! `setup-cloud-scoot`: starts a whole local Scoot cluster (see `scoot_cluster`) and keeps it up
//! until interrupted, or runs one command against it and exits with that command's status.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use scoot_cluster::cli::Invocation;
use scoot_cluster::{Cluster, ClusterError, ClusterSpec, Strategy};

/// How long `run`'s command has to stop after SIGTERM when the cluster goes down under it.
const COMMAND_STOP_GRACE: Duration = Duration::from_secs(5);

/// Starts a local Scoot cluster: apiservers, workers and a scheduler, from the binaries next to
/// this one.
#[derive(Parser, Debug)]
#[command(
    name = "setup-cloud-scoot",
    version,
    override_usage = "setup-cloud-scoot [FLAGS] [run CMD [ARGS...]]",
    after_help = "Without arguments the cluster runs until SIGINT or SIGTERM. With `run CMD \
                  [ARGS...]`, CMD runs once the cluster is up (everything after CMD is its own), \
                  then the cluster is torn down and CMD's exit code is returned.\n\nPorts: \
                  scheduler thrift 9090, http 9091; worker i http 10100+2i, thrift 10101+2i; \
                  apiserver i http 11100+i, grpc 12100+i; all shifted by --port_offset."
)]
struct Args {
    /// Scheduler configuration: local.memory (jobs in memory) or local.local (jobs in
    /// .scootdata/filesagalog under the current directory, recovered on the next start).
    #[arg(long, default_value = "local.memory", value_parser = parse_strategy)]
    strategy: Strategy,
    /// How the apiservers are run (only `local`).
    #[arg(long = "api_strategy", default_value = "local", value_parser = ["local"])]
    api_strategy: String,
    /// Accepted for compatibility with Scoot; unused.
    #[arg(long = "repo_dir", default_value = "")]
    repo_dir: String,
    /// Number of workerservers.
    #[arg(long, default_value_t = 5)]
    workers: usize,
    /// Number of apiservers (none if the apiserver binary is missing).
    #[arg(long, default_value_t = 3)]
    apiservers: usize,
    /// trace, debug, info, warn or error; also given to every process of the cluster.
    #[arg(long = "log_level", default_value = "info")]
    log_level: String,
    /// Added to every port, so that several clusters can run on one machine.
    #[arg(long = "port_offset", default_value_t = 0)]
    port_offset: u16,
    /// Keep the logs (and the rest of the state directory) after teardown.
    #[arg(long = "keep_logs")]
    keep_logs: bool,
    /// Nothing, or `run CMD [ARGS...]`; the flags end here, so CMD's own arguments are its own.
    #[arg(
        value_name = "run CMD [ARGS...]",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    positional: Vec<OsString>,
}

fn parse_strategy(value: &str) -> Result<Strategy, String> {
    value.parse().map_err(|e: ClusterError| e.to_string())
}

fn parse_command_line() -> (Args, Invocation) {
    let mut args: Args = scoot_bin_util::parse_args();
    let invocation = Invocation::from_positional(std::mem::take(&mut args.positional))
        .unwrap_or_else(|err| {
            Args::command()
                .error(clap::error::ErrorKind::InvalidValue, err)
                .exit()
        });
    (args, invocation)
}

#[tokio::main]
async fn main() -> ExitCode {
    let (args, invocation) = parse_command_line();
    if let Err(err) = scoot_bin_util::init_logging(&args.log_level) {
        eprintln!("setup-cloud-scoot: {err}");
        return ExitCode::from(2);
    }
    match run(args, invocation).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("setup-cloud-scoot: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, invocation: Invocation) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let bin_dir = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    tracing::debug!(repo_dir = %args.repo_dir, api_strategy = %args.api_strategy, "ignored flags");
    let spec = ClusterSpec {
        strategy: args.strategy,
        workers: args.workers,
        apiservers: args.apiservers,
        log_level: args.log_level.clone(),
        port_offset: args.port_offset,
        keep_logs: args.keep_logs,
        ..ClusterSpec::new(bin_dir)
    };

    // The signal future is polled first by `start_or_cancel`, so it listens before the first
    // child exists; a signal during startup stops what was started.
    let signal = scoot_bin_util::shutdown_signal();
    tokio::pin!(signal);
    let mut cluster = match Cluster::start_or_cancel(spec, &mut signal).await {
        Ok(cluster) => cluster,
        Err(ClusterError::Cancelled) => return Ok(ExitCode::FAILURE),
        Err(err) => return Err(anyhow::Error::new(err).context("cannot start the cluster")),
    };

    if let Err(err) = write_addr_file(&cluster) {
        cluster.shutdown().await;
        return Err(err);
    }

    match invocation {
        Invocation::Serve => {
            tracing::info!("cluster running; stop it with Ctrl-C or SIGTERM");
            let failure = tokio::select! {
                exit = cluster.wait_for_failure() => Some(exit),
                () = &mut signal => None,
            };
            cluster.shutdown().await;
            match failure {
                Some(exit) => Err(anyhow::Error::new(exit).context("a cluster process ended")),
                None => Ok(ExitCode::FAILURE),
            }
        }
        Invocation::Run { program, args } => {
            run_command(cluster, program, args, signal.as_mut()).await
        }
    }
}

/// Writes `~/.cloudscootaddr$SCOOT_ID` so that Scoot's clients find the cluster.
fn write_addr_file(cluster: &Cluster) -> anyhow::Result<()> {
    let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) else {
        tracing::warn!("HOME is not set: not writing ~/.cloudscootaddr");
        return Ok(());
    };
    let scoot_id = std::env::var("SCOOT_ID").unwrap_or_default();
    let path = cluster
        .write_cloudscootaddr(home.as_ref(), &scoot_id)
        .context("cannot write the cluster address file")?;
    tracing::info!("cluster address in {}", path.display());
    Ok(())
}

enum Outcome {
    Finished(std::io::Result<ExitStatus>),
    ClusterFailed(scoot_cluster::ChildExit),
    Interrupted,
}

/// PATH with this executable's directory in front.
fn path_with_our_binaries() -> Option<OsString> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.to_path_buf();
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&rest))).ok()
}

/// Runs `program args` with this process's stdio and environment, then tears the cluster down.
async fn run_command(
    mut cluster: Cluster,
    program: OsString,
    args: Vec<OsString>,
    signal: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<ExitCode> {
    let shown = program.to_string_lossy().into_owned();
    let mut command = tokio::process::Command::new(&program);
    if let Some(path) = path_with_our_binaries() {
        // So that `run scootcl …` finds the scootcl built beside us.
        command.env("PATH", path);
    }
    let mut child = match command.args(&args).kill_on_drop(true).spawn() {
        Ok(child) => child,
        Err(err) => {
            cluster.shutdown().await;
            return Err(anyhow::Error::new(err).context(format!("cannot run {shown:?}")));
        }
    };
    let outcome = tokio::select! {
        status = child.wait() => Outcome::Finished(status),
        exit = cluster.wait_for_failure() => Outcome::ClusterFailed(exit),
        () = signal => Outcome::Interrupted,
    };
    match outcome {
        Outcome::Finished(status) => {
            if let Ok(status) = &status {
                tracing::info!(command = %shown, %status, "command finished; stopping the cluster");
            }
            cluster.shutdown().await;
            let status = status.with_context(|| format!("cannot wait for {shown:?}"))?;
            Ok(exit_code(status))
        }
        Outcome::ClusterFailed(exit) => {
            tokio::join!(
                scoot_cluster::stop_child(&mut child, COMMAND_STOP_GRACE),
                cluster.shutdown()
            );
            Err(anyhow::Error::new(exit).context(format!(
                "a cluster process ended while {shown:?} was running"
            )))
        }
        Outcome::Interrupted => {
            tokio::join!(
                scoot_cluster::stop_child(&mut child, COMMAND_STOP_GRACE),
                cluster.shutdown()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The command's exit code, or 128 + the signal that killed it, as shells report it.
fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> (Args, Vec<OsString>) {
        let mut parsed = Args::try_parse_from(scoot_bin_util::go_style_args(
            &Args::command(),
            args.iter().map(OsString::from),
        ))
        .unwrap();
        let positional = std::mem::take(&mut parsed.positional);
        (parsed, positional)
    }

    #[test]
    fn scoot_defaults() {
        let (args, rest) = parse(&["setup-cloud-scoot"]);
        assert_eq!(args.strategy, Strategy::LocalMemory);
        assert_eq!((args.workers, args.apiservers, args.port_offset), (5, 3, 0));
        assert_eq!(args.log_level, "info");
        assert!(!args.keep_logs);
        assert!(rest.is_empty());
    }

    #[test]
    fn go_style_flags_then_a_command_with_its_own_flags() {
        let (args, rest) = parse(&[
            "setup-cloud-scoot",
            "-strategy",
            "local.local",
            "-workers=2",
            "-keep_logs",
            "--port_offset",
            "100",
            "run",
            "ls",
            "-la",
            "-workers",
            "9",
            "--help",
        ]);
        assert_eq!(args.strategy, Strategy::LocalLocal);
        assert_eq!(args.workers, 2);
        assert_eq!(args.port_offset, 100);
        assert!(args.keep_logs);
        assert_eq!(
            Invocation::from_positional(rest).unwrap(),
            Invocation::Run {
                program: "ls".into(),
                args: vec!["-la".into(), "-workers".into(), "9".into(), "--help".into()],
            }
        );
    }

    #[test]
    fn flag_values_are_not_positional() {
        let (args, rest) = parse(&["setup", "-log_level", "run", "-keep_logs", "run", "true"]);
        assert_eq!(args.log_level, "run");
        assert!(args.keep_logs);
        assert_eq!(rest, ["run", "true"]);
    }

    #[test]
    fn double_dash_ends_the_flags() {
        let (args, rest) = parse(&["setup", "--workers", "1", "--", "run", "-x", "--help"]);
        assert_eq!(args.workers, 1);
        assert_eq!(
            Invocation::from_positional(rest).unwrap(),
            Invocation::Run {
                program: "-x".into(),
                args: vec!["--help".into()],
            }
        );
        let (_, rest) = parse(&["setup", "run", "--", "--weird-cmd", "--", "a"]);
        assert_eq!(
            Invocation::from_positional(rest).unwrap(),
            Invocation::Run {
                program: "--weird-cmd".into(),
                args: vec!["--".into(), "a".into()],
            }
        );
    }

    #[test]
    fn lone_dash_is_positional() {
        let (_, rest) = parse(&["setup", "-", "run"]);
        assert_eq!(rest, ["-", "run"]);
        assert!(Invocation::from_positional(rest).is_err());
    }

    #[test]
    fn bad_values_are_rejected() {
        let command = || Args::command();
        assert!(
            command()
                .try_get_matches_from(["s", "--strategy", "local.disk"])
                .is_err()
        );
        assert!(
            command()
                .try_get_matches_from(["s", "--api_strategy", "remote"])
                .is_err()
        );
        assert!(command().try_get_matches_from(["s", "--workers"]).is_err());
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), ExitCode::SUCCESS);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), ExitCode::from(3));
        assert_eq!(exit_code(ExitStatus::from_raw(15)), ExitCode::from(143));
    }
}
