//! The `scootcl` command line (Scoot's subcommands and flags).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use scoot_security::{SecurityError, TransportFlags};
use scoot_thrift::scoot;

use crate::cloudscoot::{Client, ClientError};
use crate::smoketest::{SmokeError, SmokeTest};
use crate::{addr, goformat, jobdef};

#[derive(Parser, Debug)]
#[command(
    name = "scootcl",
    version,
    about = "Client for the Scoot scheduler's CloudScoot API"
)]
pub struct Cli {
    /// Scheduler address (default: first line of ~/.cloudscootaddr$SCOOT_ID, else localhost:9090);
    /// several, separated by commas, for schedulers on one PostgreSQL saga log: the call goes
    /// to whichever leads.
    #[arg(long, global = true)]
    pub addr: Option<String>,
    /// trace, debug, info, warn or error.
    #[arg(long = "log_level", global = true, default_value = "info")]
    pub log_level: String,
    /// text (one line per event) or json (one object per line, with its spans' fields).
    #[arg(long = "log_format", value_enum, default_value_t = scoot_bin_util::LogFormat::Text, global = true)]
    pub log_format: scoot_bin_util::LogFormat,
    /// TLS, given before the command: with -thrift_tls and -tls_ca, scootcl reaches a
    /// scheduler that serves Thrift over TLS (-tls_cert/-tls_key when it wants a client
    /// certificate).
    #[command(flatten)]
    pub transport: TransportFlags,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Submit a job: one task running ARGV, or the tasks of a --job_def file. Prints the job id.
    #[command(name = "run_job")]
    RunJob(RunJobArgs),
    /// Show a job's status.
    #[command(name = "get_job_status")]
    GetJobStatus(JobArgs),
    /// Follow a job until it completes, then show its status.
    #[command(name = "watch_job")]
    WatchJob {
        job_id: String,
        /// Give up after this long.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Kill a job: waiting tasks end ABORTED, running ones are aborted on their workers.
    #[command(name = "kill_job")]
    KillJob(JobArgs),
    /// Stop giving work to a worker (by its thrift address, e.g. localhost:10101).
    #[command(name = "offline_worker")]
    OfflineWorker { node_id: String },
    /// Give work to an offlined worker again.
    #[command(name = "reinstate_worker")]
    ReinstateWorker { node_id: String },
    #[command(name = "get_scheduler_status")]
    GetSchedulerStatus {
        #[arg(long)]
        json: bool,
    },
    /// Set the advisory task throttle: -1 unlimited, 0 accept nothing, N a limit.
    #[command(name = "set_scheduler_status")]
    SetSchedulerStatus {
        #[arg(long = "task-throttle", default_value_t = -1, allow_negative_numbers = true)]
        task_throttle: i32,
        /// Accepted, as Scoot's scootcl accepted it; the command prints nothing either way.
        #[arg(long)]
        json: bool,
    },
    #[command(name = "get_scheduling_alg_params")]
    GetSchedulingAlgParams {
        #[arg(long)]
        json: bool,
    },
    #[command(name = "set_scheduling_alg_params")]
    SetSchedulingAlgParams(AlgParamsArgs),
    /// Run generated jobs against the cluster and check they all succeed.
    #[command(name = "smoketest", alias = "smoke_test")]
    Smoketest(SmokeArgs),
}

#[derive(Args, Debug)]
pub struct RunJobArgs {
    /// The command of a one-task job (task id `task1`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub argv: Vec<String>,
    /// JSON job definition (Scoot's format); excludes ARGV.
    #[arg(long = "job_def", conflicts_with = "argv")]
    pub job_def: Option<PathBuf>,
    /// Snapshot to run in; a bare git sha becomes stream-gc-<stream_name>-<sha>.
    #[arg(long = "snapshot_id", default_value = "")]
    pub snapshot_id: String,
    #[arg(long = "stream_name", default_value = "sm")]
    pub stream_name: String,
    #[arg(long)]
    pub tag: Option<String>,
}

#[derive(Args, Debug)]
pub struct JobArgs {
    pub job_id: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AlgParamsArgs {
    /// JSON file {class: percent}.
    #[arg(long = "class_pcts_file")]
    pub class_pcts_file: Option<PathBuf>,
    /// JSON file {requestor regex: class}.
    #[arg(long = "requestor_map_file")]
    pub requestor_map_file: Option<PathBuf>,
    /// Minutes; -1 leaves it unchanged.
    #[arg(long = "rebalance_min", default_value_t = -1, allow_negative_numbers = true)]
    pub rebalance_min: i32,
    /// Percentage points; -1 leaves it unchanged.
    #[arg(long = "rebalance_threshold", default_value_t = -1, allow_negative_numbers = true)]
    pub rebalance_threshold: i32,
}

#[derive(Args, Debug)]
pub struct SmokeArgs {
    #[arg(long = "num_jobs", default_value_t = 100)]
    pub num_jobs: usize,
    /// Tasks per job; -1 picks 1 to 10 at random for each job.
    #[arg(long = "num_tasks", default_value_t = -1, allow_negative_numbers = true)]
    pub num_tasks: i64,
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Accepted, as Scoot's smoke test accepted it (and did not use): snapshots go to the
    /// cluster's apiserver.
    #[arg(long)]
    pub bundlestore: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("{0}")]
    Smoke(#[from] SmokeError),
    #[error("{0}")]
    Usage(String),
    #[error("TLS set-up: {0}")]
    Security(#[from] SecurityError),
}

/// The TLS of scootcl's connection to the scheduler, `None` for plaintext.
fn thrift_tls(flags: &TransportFlags) -> Result<Option<Arc<rustls::ClientConfig>>, CliError> {
    if flags.auth_token_file.is_some() {
        // Refused rather than ignored: nobody should believe their calls carry a token.
        return Err(CliError::Usage(
            "-auth_token_file: the CloudScoot API takes no tokens; only REAPI ports do".into(),
        ));
    }
    Ok(flags.client()?.thrift()?)
}

/// Runs one scootcl command; output goes to stdout.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let tls = thrift_tls(&cli.transport)?;
    let mut client = Client::new(&addr::scheduler_addr(cli.addr)).with_tls(tls);
    match cli.command {
        Cmd::RunJob(args) => {
            let def = job_definition(args)?;
            println!("{}", client.run_job(def)?);
        }
        Cmd::GetJobStatus(args) => print_status(&client.get_status(&args.job_id)?, args.json),
        Cmd::WatchJob { job_id, timeout } => watch(&mut client, &job_id, timeout)?,
        Cmd::KillJob(args) => print_status(&client.kill_job(&args.job_id)?, args.json),
        Cmd::OfflineWorker { node_id } => client.offline_worker(&node_id, &requestor())?,
        Cmd::ReinstateWorker { node_id } => client.reinstate_worker(&node_id, &requestor())?,
        Cmd::GetSchedulerStatus { json } => {
            let status = client.get_scheduler_status()?;
            println!("{}", goformat::scheduler_status(&status, json));
        }
        Cmd::SetSchedulerStatus { task_throttle, .. } => {
            if task_throttle < -1 {
                return Err(CliError::Usage(format!(
                    "--task-throttle {task_throttle}: must be -1 (unlimited), 0 or more"
                )));
            }
            client.set_scheduler_status(task_throttle)?;
        }
        Cmd::GetSchedulingAlgParams { json } => {
            let params = goformat::AlgParams {
                class_load_percents: client.get_class_load_percents()?,
                requestor_map: client.get_requestor_to_class_map()?,
                rebalance_minimum_duration: client.get_rebalance_minimum_duration()?,
                rebalance_threshold: client.get_rebalance_threshold()?,
            };
            if json {
                println!("{}", params.json());
            } else {
                print!("{}", params.text());
            }
        }
        Cmd::SetSchedulingAlgParams(args) => set_alg_params(&mut client, args)?,
        Cmd::Smoketest(args) => {
            let test = SmokeTest {
                num_jobs: args.num_jobs,
                num_tasks: usize::try_from(args.num_tasks).ok().filter(|n| *n > 0),
                timeout: args.timeout,
            };
            let summary = test.run(&mut client, &mut std::io::stderr())?;
            let secs = summary.elapsed.as_secs_f64();
            println!(
                "smoketest passed: {} jobs, {} tasks in {:.1} s ({:.1} tasks/s)",
                summary.jobs,
                summary.tasks,
                secs,
                summary.tasks as f64 / secs.max(1e-9)
            );
        }
    }
    Ok(())
}

fn requestor() -> String {
    std::env::var("USER").unwrap_or_else(|_| "unknown".to_string())
}

fn job_definition(args: RunJobArgs) -> Result<scoot::JobDefinition, CliError> {
    let mut def = match &args.job_def {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                CliError::Usage(format!("cannot read --job_def {}: {e}", path.display()))
            })?;
            jobdef::parse(&text).map_err(|e| CliError::Usage(e.to_string()))?
        }
        None if args.argv.is_empty() => {
            return Err(CliError::Usage(
                "run_job needs a command or --job_def FILE".into(),
            ));
        }
        None => {
            let snapshot = if !args.snapshot_id.is_empty() && !args.snapshot_id.contains('-') {
                format!("stream-gc-{}-{}", args.stream_name, args.snapshot_id)
            } else {
                args.snapshot_id.clone()
            };
            let task = scoot::TaskDefinition::new(
                scoot::Command::new(args.argv.clone(), None),
                Some(snapshot),
                Some("task1".to_string()),
                None,
            );
            scoot::JobDefinition::new(vec![task], None, None, None, None, None, None, None)
        }
    };
    if args.tag.is_some() {
        def.tag = args.tag;
    }
    Ok(def)
}

fn print_status(status: &scoot::JobStatus, as_json: bool) {
    if as_json {
        println!("{}", goformat::job_status_json(status));
    } else {
        println!("{}", goformat::job_status_text(status));
    }
}

fn watch(client: &mut Client, job_id: &str, timeout: Duration) -> Result<(), CliError> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last = String::new();
    loop {
        let status = client.get_status(job_id)?;
        let states: Vec<scoot::Status> = status
            .task_status
            .iter()
            .flatten()
            .map(|(_, s)| *s)
            .collect();
        let count = |s: scoot::Status| states.iter().filter(|x| **x == s).count();
        let line = format!(
            "{}: {} done, {} running, {} waiting of {} tasks",
            goformat::status_name(status.status),
            count(scoot::Status::COMPLETED),
            count(scoot::Status::IN_PROGRESS),
            count(scoot::Status::NOT_STARTED),
            states.len()
        );
        if line != last {
            if tty {
                eprint!("\r{line}   ");
            } else {
                eprintln!("{line}");
            }
            last = line;
        }
        if matches!(
            status.status,
            scoot::Status::COMPLETED | scoot::Status::ROLLED_BACK
        ) {
            if tty {
                eprintln!();
            }
            print_status(&status, false);
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(CliError::Usage(format!(
                "job {job_id} did not complete within {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn read_json_map<T: serde::de::DeserializeOwned>(
    path: &PathBuf,
    what: &str,
) -> Result<BTreeMap<String, T>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read {what} {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| CliError::Usage(format!("{what} {} is not a JSON map: {e}", path.display())))
}

fn set_alg_params(client: &mut Client, args: AlgParamsArgs) -> Result<(), CliError> {
    if let Some(path) = &args.class_pcts_file {
        client.set_class_load_percents(read_json_map(path, "--class_pcts_file")?)?;
    }
    if let Some(path) = &args.requestor_map_file {
        client.set_requestor_to_class_map(read_json_map(path, "--requestor_map_file")?)?;
    }
    if args.rebalance_min != -1 {
        client.set_rebalance_minimum_duration(args.rebalance_min)?;
    }
    if args.rebalance_threshold != -1 {
        client.set_rebalance_threshold(args.rebalance_threshold)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("scootcl").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn run_job_from_argv_rewrites_bare_shas() {
        let Cmd::RunJob(args) =
            parse(&["run_job", "--snapshot_id", "abc123", "echo", "-n", "hi"]).command
        else {
            panic!("not run_job");
        };
        let def = job_definition(args).unwrap();
        let task = &def.tasks[0];
        assert_eq!(
            task.command.argv.as_deref(),
            Some(&["echo".to_string(), "-n".into(), "hi".into()][..])
        );
        assert_eq!(task.snapshot_id.as_deref(), Some("stream-gc-sm-abc123"));
        assert_eq!(task.task_id.as_deref(), Some("task1"));
    }

    #[test]
    fn run_job_needs_a_command_and_argv_excludes_job_def() {
        let Cmd::RunJob(args) = parse(&["run_job"]).command else {
            panic!()
        };
        assert!(job_definition(args).is_err());
        assert!(
            Cli::try_parse_from(["scootcl", "run_job", "--job_def", "f.json", "echo"]).is_err()
        );
    }

    #[test]
    fn smoke_test_alias_and_negative_flags() {
        assert!(matches!(
            parse(&["smoke_test", "--num_jobs", "3"]).command,
            Cmd::Smoketest(SmokeArgs { num_jobs: 3, .. })
        ));
        assert!(matches!(
            parse(&["set_scheduler_status", "--task-throttle", "-1"]).command,
            Cmd::SetSchedulerStatus {
                task_throttle: -1,
                json: false
            }
        ));
    }

    #[test]
    fn tls_flags_come_before_the_command_and_are_checked() {
        let cli = parse(&["--thrift_tls", "--tls_ca", "ca.pem", "get_job_status", "j"]);
        assert!(cli.transport.thrift_tls);
        assert_eq!(cli.transport.tls_ca, Some(PathBuf::from("ca.pem")));
        assert!(matches!(cli.command, Cmd::GetJobStatus(_)));
        // Plaintext unless asked for, a CA or not.
        assert!(
            thrift_tls(&parse(&["get_job_status", "j"]).transport)
                .unwrap()
                .is_none()
        );
        let error = thrift_tls(&parse(&["--thrift_tls", "get_job_status", "j"]).transport)
            .unwrap_err()
            .to_string();
        assert!(error.contains("-tls_ca"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "secret").unwrap();
        let flags = parse(&[
            "--auth_token_file",
            token.to_str().unwrap(),
            "get_job_status",
            "j",
        ])
        .transport;
        let error = thrift_tls(&flags).unwrap_err().to_string();
        assert!(error.contains("takes no tokens"), "{error}");
    }

    #[test]
    fn scoots_extra_flags_are_accepted() {
        assert!(matches!(
            parse(&["set_scheduler_status", "--task-throttle", "5", "--json"]).command,
            Cmd::SetSchedulerStatus {
                task_throttle: 5,
                json: true
            }
        ));
        assert!(matches!(
            parse(&["smoketest", "--bundlestore", "localhost:9094"]).command,
            Cmd::Smoketest(SmokeArgs {
                bundlestore: Some(_),
                ..
            })
        ));
    }
}
