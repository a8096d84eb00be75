//! setup-cloud-scoot's command line and what it does with it.
//!
//! `setup-cloud-scoot [FLAGS] [run CMD [ARGS...]]`: like Go's `flag` package, flags end at the
//! first argument that is not a flag (or at `--`), and everything from there on is positional,
//! so `run ls -la --workers 2` runs `ls -la --workers 2` (`scoot_bin_util::go_style_args`
//! makes that cut, for every binary). [`run`] starts the cluster and keeps it up until
//! interrupted, or runs one command against it and returns that command's exit code.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use clap::{CommandFactory, Parser};

use crate::{ChildExit, Cluster, ClusterError, ClusterSecurity, ClusterSpec, Strategy};

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
                  scheduler thrift 9090, http 9091, grpc 9099 (local.ha's second: 9095, 9096, \
                  9097); worker i http 10100+2i, thrift 10101+2i; \
                  apiserver i http 11100+i, grpc 12100+i; all shifted by --port_offset."
)]
pub struct Cli {
    /// Scheduler configuration: local.memory (jobs in memory), local.local (jobs in
    /// .scootdata/filesagalog under the current directory, recovered on the next start) or
    /// local.ha (jobs in a private PostgreSQL server, two schedulers of which one leads, the
    /// CAS sharded over the apiservers with two replicas unless --cas_replicas is given).
    #[arg(long, default_value = "local.memory", value_parser = parse_strategy)]
    pub strategy: Strategy,
    /// How the apiservers are run (only `local`).
    #[arg(long = "api_strategy", default_value = "local", value_parser = ["local"])]
    pub api_strategy: String,
    /// Accepted for compatibility with Scoot; unused.
    #[arg(long = "repo_dir", default_value = "")]
    pub repo_dir: String,
    /// Number of workerservers.
    #[arg(long, default_value_t = 5)]
    pub workers: usize,
    /// Number of apiservers (none if the apiserver binary is missing).
    #[arg(long, default_value_t = 3)]
    pub apiservers: usize,
    /// Shard the CAS and action cache over the apiservers, each blob on this many of them
    /// (the scheduler and workers get -cas_shards and -cas_replicas); by default the scheduler
    /// keeps its own CAS with the first apiserver's behind it.
    #[arg(long = "cas_replicas")]
    pub cas_replicas: Option<usize>,
    /// trace, debug, info, warn or error; also given to every process of the cluster.
    #[arg(long = "log_level", default_value = "info")]
    pub log_level: String,
    /// text (one line per event) or json (one object per line, with its spans' fields).
    #[arg(long = "log_format", value_enum, default_value_t = scoot_bin_util::LogFormat::Text)]
    pub log_format: scoot_bin_util::LogFormat,
    /// Added to every port, so that several clusters can run on one machine.
    #[arg(long = "port_offset", default_value_t = 0)]
    pub port_offset: u16,
    /// Passed to every workerserver as `-sandbox`: the modes REAPI actions run in
    /// (host-tools, rootfs, both) or `off`; the workers' default (both) when not given.
    #[arg(long = "worker_sandbox")]
    pub worker_sandbox: Option<String>,
    /// TLS and tokens on the whole cluster: DIR holds ca.pem, cert.pem and key.pem (a
    /// certificate for localhost that CA signed), tokens (the -auth_tokens file of the
    /// scheduler and apiservers) and member-token (the token workers and the scheduler send;
    /// it needs cache-read and cache-write).
    #[arg(long = "secure_dir")]
    pub secure_dir: Option<PathBuf>,
    /// Keep the logs (and the rest of the state directory) after teardown.
    #[arg(long = "keep_logs")]
    pub keep_logs: bool,
    /// Nothing, or `run CMD [ARGS...]`; the flags end here, so CMD's own arguments are its own.
    // Private: read through `take_invocation`, which checks its shape.
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

impl Cli {
    /// What to do once the cluster is up, from the positional arguments (which this takes).
    /// A bad shape is a usage error like clap's own, for the binary to `exit()` on.
    pub fn take_invocation(&mut self) -> Result<Invocation, clap::Error> {
        Invocation::from_positional(std::mem::take(&mut self.positional))
            .map_err(|err| Cli::command().error(clap::error::ErrorKind::InvalidValue, err))
    }
}

/// What to do once the cluster is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Keep the cluster up until SIGINT or SIGTERM.
    Serve,
    /// Run `program args…`, then tear the cluster down and exit with its exit code.
    Run {
        program: OsString,
        args: Vec<OsString>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("`run` needs a command: run CMD [ARGS...]")]
    MissingCommand,
    #[error(
        "unexpected argument {0:?}: give no arguments (run until interrupted) or `run CMD [ARGS...]`"
    )]
    Unexpected(String),
}

impl Invocation {
    /// Interprets the positional arguments: none, or `run CMD [ARGS…]`
    /// (a `--` right after `run` is skipped).
    pub fn from_positional(positional: Vec<OsString>) -> Result<Invocation, UsageError> {
        let mut rest = positional.into_iter();
        let Some(verb) = rest.next() else {
            return Ok(Invocation::Serve);
        };
        if verb != "run" {
            return Err(UsageError::Unexpected(verb.to_string_lossy().into_owned()));
        }
        let mut program = rest.next().ok_or(UsageError::MissingCommand)?;
        if program == "--" {
            program = rest.next().ok_or(UsageError::MissingCommand)?;
        }
        Ok(Invocation::Run {
            program,
            args: rest.collect(),
        })
    }
}

/// Why `setup-cloud-scoot` failed; each message is what the binary prints before its causes.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot find this executable's path")]
    NoExecutable(#[source] std::io::Error),
    #[error("{} has no parent directory", .0.display())]
    NoBinDir(PathBuf),
    #[error("cannot start the cluster")]
    Start(#[source] ClusterError),
    #[error("cannot write the cluster address file")]
    AddrFile(#[source] ClusterError),
    #[error("a cluster process ended")]
    ProcessEnded(#[source] ChildExit),
    #[error("cannot run {0:?}")]
    Spawn(String, #[source] std::io::Error),
    #[error("cannot wait for {0:?}")]
    Wait(String, #[source] std::io::Error),
    #[error("a cluster process ended while {0:?} was running")]
    EndedDuringCommand(String, #[source] ChildExit),
}

/// Starts the cluster from the binaries beside this executable, then serves until `shutdown`
/// (or a child's death), or runs the invocation's command. Returns the exit code: the
/// command's, or failure when interrupted.
pub async fn run(
    cli: Cli,
    invocation: Invocation,
    shutdown: impl Future<Output = ()>,
) -> Result<ExitCode, CliError> {
    let exe = std::env::current_exe().map_err(CliError::NoExecutable)?;
    let bin_dir = exe
        .parent()
        .ok_or_else(|| CliError::NoBinDir(exe.clone()))?;
    tracing::debug!(repo_dir = %cli.repo_dir, api_strategy = %cli.api_strategy, "ignored flags");
    let spec = ClusterSpec {
        strategy: cli.strategy,
        workers: cli.workers,
        apiservers: cli.apiservers,
        cas_replicas: cli.cas_replicas,
        log_level: cli.log_level.clone(),
        port_offset: cli.port_offset,
        keep_logs: cli.keep_logs,
        worker_sandbox: cli.worker_sandbox.clone(),
        security: cli.secure_dir.as_deref().map(|dir| ClusterSecurity {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            ca: dir.join("ca.pem"),
            tokens: dir.join("tokens"),
            member_token: dir.join("member-token"),
        }),
        ..ClusterSpec::new(bin_dir)
    };

    // The signal future is polled first by `start_or_cancel`, so it listens before the first
    // child exists; a signal during startup stops what was started.
    tokio::pin!(shutdown);
    let mut cluster = match Cluster::start_or_cancel(spec, &mut shutdown).await {
        Ok(cluster) => cluster,
        Err(ClusterError::Cancelled) => return Ok(ExitCode::FAILURE),
        Err(err) => return Err(CliError::Start(err)),
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
                () = &mut shutdown => None,
            };
            cluster.shutdown().await;
            match failure {
                Some(exit) => Err(CliError::ProcessEnded(exit)),
                None => Ok(ExitCode::FAILURE),
            }
        }
        Invocation::Run { program, args } => {
            run_command(cluster, program, args, shutdown.as_mut()).await
        }
    }
}

/// Writes `~/.cloudscootaddr$SCOOT_ID` so that Scoot's clients find the cluster.
fn write_addr_file(cluster: &Cluster) -> Result<(), CliError> {
    let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) else {
        tracing::warn!("HOME is not set: not writing ~/.cloudscootaddr");
        return Ok(());
    };
    let scoot_id = std::env::var("SCOOT_ID").unwrap_or_default();
    let path = cluster
        .write_cloudscootaddr(home.as_ref(), &scoot_id)
        .map_err(CliError::AddrFile)?;
    tracing::info!("cluster address in {}", path.display());
    Ok(())
}

enum Outcome {
    Finished(std::io::Result<ExitStatus>),
    ClusterFailed(ChildExit),
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
) -> Result<ExitCode, CliError> {
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
            return Err(CliError::Spawn(shown, err));
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
            let status = status.map_err(|err| CliError::Wait(shown, err))?;
            Ok(exit_code(status))
        }
        Outcome::ClusterFailed(exit) => {
            tokio::join!(
                crate::stop_child(&mut child, COMMAND_STOP_GRACE),
                cluster.shutdown()
            );
            Err(CliError::EndedDuringCommand(shown, exit))
        }
        Outcome::Interrupted => {
            tokio::join!(
                crate::stop_child(&mut child, COMMAND_STOP_GRACE),
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

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn parse(args: &[&str]) -> (Cli, Vec<OsString>) {
        let mut parsed = Cli::try_parse_from(scoot_bin_util::go_style_args(
            &Cli::command(),
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
        let command = || Cli::command();
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

    #[test]
    fn a_bad_invocation_is_a_usage_error() {
        let mut cli = Cli::try_parse_from(["setup", "start"]).unwrap();
        let err = cli.take_invocation().unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue);
        assert!(err.to_string().contains("unexpected argument \"start\""));
        let mut cli = Cli::try_parse_from(["setup", "run", "ls", "-l"]).unwrap();
        assert_eq!(
            cli.take_invocation().unwrap(),
            Invocation::Run {
                program: "ls".into(),
                args: os(&["-l"]),
            }
        );
    }

    #[test]
    fn nothing_or_run() {
        assert_eq!(Invocation::from_positional(vec![]), Ok(Invocation::Serve));
        assert_eq!(
            Invocation::from_positional(os(&["run", "--", "ls", "--", "-la"])),
            Ok(Invocation::Run {
                program: "ls".into(),
                args: os(&["--", "-la"]),
            })
        );
    }

    #[test]
    fn usage_errors() {
        assert_eq!(
            Invocation::from_positional(os(&["run"])),
            Err(UsageError::MissingCommand)
        );
        assert_eq!(
            Invocation::from_positional(os(&["run", "--"])),
            Err(UsageError::MissingCommand)
        );
        assert_eq!(
            Invocation::from_positional(os(&["start"])),
            Err(UsageError::Unexpected("start".into()))
        );
    }
}
