//! The OS engine: runs argv directly (no shell) as the leader of a new process group, tracked
//! with all the processes it starts (see [`contain`](super::contain)).
//!
//! Stopping a task means all its processes: SIGTERM first, SIGKILL after a grace period. When
//! the leader exits, whatever is left of the task is SIGKILLed too, so no task leaves processes
//! behind (Scoot did this only with a memory cap set; we always do). With a memory cap, the
//! task's resident memory is sampled every 500 ms. A task inherits no file descriptor of the
//! worker's but its standard input, output and error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::child;
use super::contain::{Containment, RunScope};
use super::memory::{listing, rss_bytes};
use super::{ExecError, ExecSpec, Execer, Process, ProcessOutcome};
use crate::output::RunOutputs;

/// How often task memory is sampled when a cap is set.
const MEMORY_SAMPLE_PERIOD: Duration = Duration::from_millis(500);
/// How long output still flowing from stragglers is copied after the group was killed.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct OsExecer {
    /// Kill a task whose processes use more than this many bytes of resident memory.
    pub memory_cap: Option<u64>,
    /// Stop a task once it has this many processes (sampled with the memory).
    pub pids_max: Option<u64>,
    /// Time between SIGTERM and SIGKILL when a task is stopped.
    pub kill_grace: Duration,
    /// How every process of a task is found.
    pub containment: Arc<Containment>,
}

impl Default for OsExecer {
    /// An engine with tracking of its own, named after this process and engine.
    fn default() -> OsExecer {
        static ENGINES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let engine = ENGINES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OsExecer {
            memory_cap: None,
            pids_max: None,
            kill_grace: Duration::from_secs(10),
            containment: Arc::new(Containment::new(&format!(
                "scoot-runner-{}-{engine}",
                std::process::id()
            ))),
        }
    }
}

#[async_trait]
impl Execer for OsExecer {
    async fn start(&self, spec: ExecSpec) -> Result<Box<dyn Process>, ExecError> {
        let Some(program) = spec.argv.first() else {
            return Err(ExecError("empty argv".to_string()));
        };
        // A relative program path with a slash names a file under the run's directory (as in Go's
        // os/exec, which Scoot used); argv[0] stays as given.
        let mut command = if program.contains('/') && !program.starts_with('/') {
            let mut command = Command::new(spec.dir.join(program));
            command.arg0(program);
            command
        } else {
            Command::new(program)
        };
        if spec.clear_env {
            command.env_clear();
        }
        // In the child, std drops the supplementary groups and sets the group, then the user,
        // before any pre_exec hook runs.
        if let Some(user) = spec.user {
            command.uid(user.uid).gid(user.gid);
        }
        let pending = self.containment.prepare()?;
        child::set_up(&mut command, pending.join_fd());
        command
            .args(&spec.argv[1..])
            .envs(&spec.env)
            .current_dir(&spec.dir)
            .stdin(if spec.stdin.is_empty() {
                std::process::Stdio::null()
            } else {
                std::process::Stdio::piped()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let (mut child, scope) = pending.start(|| {
            let child = command
                .spawn()
                .map_err(|err| ExecError(format!("{program}: {err}")))?;
            match child.id().and_then(|id| i32::try_from(id).ok()) {
                Some(pid) => Ok((child, pid)),
                None => Err(ExecError(format!(
                    "{program}: exited before it could be watched"
                ))),
            }
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            let input = spec.stdin;
            // Dropping the pipe at the end closes it: the process reads to the end, then EOF.
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                if let Err(err) = stdin.write_all(&input).await {
                    tracing::debug!(error = %err, "the task did not read all its standard input");
                }
            });
        }
        let pumps = vec![
            pump(
                child.stdout.take(),
                spec.outputs.clone(),
                RunOutputs::write_stdout,
            ),
            pump(
                child.stderr.take(),
                spec.outputs.clone(),
                RunOutputs::write_stderr,
            ),
        ];
        let mut process = OsProcess {
            child,
            scope: Arc::new(scope),
            pumps,
            outputs: spec.outputs,
            memory: LimitWatch::new(self.memory_cap, self.pids_max),
            kill_grace: self.kill_grace,
            early_outcome: None,
        };
        process.check_initial_memory().await;
        Ok(Box::new(process))
    }
}

fn pump<R>(
    source: Option<R>,
    outputs: std::sync::Arc<RunOutputs>,
    write: fn(&RunOutputs, &[u8]),
) -> JoinHandle<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let Some(mut source) = source else { return };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match source.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => write(&outputs, &buf[..n]),
            }
        }
    })
}

struct LimitWatch {
    /// The memory cap (`u64::MAX` for none).
    cap: u64,
    pids_max: Option<u64>,
    ticker: tokio::time::Interval,
    /// Highest fraction of the cap already reported, in percent.
    reported_percent: u64,
}

impl LimitWatch {
    fn new(memory_cap: Option<u64>, pids_max: Option<u64>) -> Option<LimitWatch> {
        if memory_cap.is_none() && pids_max.is_none() {
            return None;
        }
        let mut ticker = tokio::time::interval(MEMORY_SAMPLE_PERIOD);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Some(LimitWatch {
            cap: memory_cap.unwrap_or(u64::MAX).max(1),
            pids_max,
            ticker,
            reported_percent: 0,
        })
    }
}

struct OsProcess {
    child: Child,
    scope: Arc<RunScope>,
    pumps: Vec<JoinHandle<()>>,
    outputs: std::sync::Arc<RunOutputs>,
    memory: Option<LimitWatch>,
    kill_grace: Duration,
    /// Set when the process was stopped before anyone waited on it.
    early_outcome: Option<ProcessOutcome>,
}

impl OsProcess {
    async fn check_initial_memory(&mut self) {
        let Some(memory) = &self.memory else { return };
        let members = self.scope.members();
        let used = rss_bytes(&members);
        if used < memory.cap {
            return;
        }
        let message = format!(
            "task memory {used} bytes is already at or above the worker's cap of {} bytes when it starts",
            memory.cap
        );
        self.outputs
            .write_stderr(format!("{message}\n{}", listing(&members)).as_bytes());
        self.kill_group_now().await;
        self.early_outcome = Some(ProcessOutcome::HighInitialMemory { message });
    }

    async fn kill_group_now(&mut self) {
        self.scope.signal(Signal::SIGKILL);
        let _ = self.child.wait().await;
        self.finish().await;
    }

    /// Kills stragglers of the task and waits for the output copies to end.
    async fn finish(&mut self) {
        let scope = self.scope.clone();
        if let Err(err) = tokio::task::spawn_blocking(move || scope.kill_all()).await {
            tracing::warn!(error = %err, "killing the rest of a task failed");
        }
        for pump in self.pumps.drain(..) {
            let abort = pump.abort_handle();
            if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, pump)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// Samples memory and processes once; returns an outcome if a limit was reached.
    async fn sample_memory(&mut self) -> Option<ProcessOutcome> {
        let memory = self.memory.as_mut()?;
        let members = self.scope.members();
        if let Some(max) = memory.pids_max
            && members.len() as u64 >= max
        {
            let message = format!("the task reached its limit of {max} processes and was stopped");
            self.outputs
                .write_stderr(format!("\n{message}\n{}", listing(&members)).as_bytes());
            self.kill_group_now().await;
            return Some(ProcessOutcome::LimitExceeded { message });
        }
        let used = rss_bytes(&members);
        let percent = used.saturating_mul(100) / memory.cap;
        if let Some(threshold) = [50u64, 75, 90]
            .into_iter()
            .rev()
            .find(|t| percent >= *t && memory.reported_percent < *t)
        {
            memory.reported_percent = threshold;
            tracing::info!(
                used,
                cap = memory.cap,
                "task memory passed {threshold}% of the cap"
            );
        }
        if used < memory.cap {
            return None;
        }
        let message = format!(
            "Cmd exceeded MemoryCap, aborting process: {used} bytes used, cap {} bytes",
            memory.cap
        );
        self.outputs
            .write_stderr(format!("\n{message}\n{}", listing(&members)).as_bytes());
        self.kill_group_now().await;
        Some(ProcessOutcome::LimitExceeded { message })
    }
}

#[async_trait]
impl Process for OsProcess {
    async fn wait(&mut self) -> ProcessOutcome {
        if let Some(outcome) = self.early_outcome.clone() {
            return outcome;
        }
        loop {
            let tick = async {
                match self.memory.as_mut() {
                    Some(memory) => {
                        memory.ticker.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                status = self.child.wait() => {
                    self.finish().await;
                    return match status {
                        Ok(status) => ProcessOutcome::Exited(status.code().unwrap_or(-1)),
                        Err(err) => ProcessOutcome::Failed { message: format!("waiting for the task: {err}") },
                    };
                }
                _ = tick => {
                    if let Some(outcome) = self.sample_memory().await {
                        self.early_outcome = Some(outcome.clone());
                        return outcome;
                    }
                }
            }
        }
    }

    async fn kill(&mut self) -> ProcessOutcome {
        if let Some(outcome) = self.early_outcome.clone() {
            return outcome;
        }
        self.scope.signal(Signal::SIGTERM);
        if tokio::time::timeout(self.kill_grace, self.child.wait())
            .await
            .is_err()
        {
            tracing::info!(
                pid = self.child.id(),
                "task ignored SIGTERM, sending SIGKILL"
            );
        }
        self.kill_group_now().await;
        self.early_outcome = Some(ProcessOutcome::Killed);
        ProcessOutcome::Killed
    }
}
