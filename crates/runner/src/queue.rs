//! The single-slot queue runner: a worker runs one command at a time.
//!
//! `run` accepts a command (PENDING) only while the worker is initialised, healthy, idle and not
//! draining; otherwise it says why, in Scoot's words. Re-sending the command that is already
//! running returns that run's status instead of a "busy" refusal, because the scheduler retries
//! `Run` when a reply is lost. Health follows Scoot's rules: a run failing with exit code 241
//! (memory already over the cap at start), or two checkout failures (211/212) in a row, make the
//! worker unhealthy for the rest of its life.
//!
//! The worker's own lifecycle is Booting → Ready ⇄ Running → Draining → Stopped ([`WorkerPhase`]).

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use scoot_core::{
    Command, Query, RunId, RunState, RunStatus, ServiceStatus, StateMask, Wait, exit_code,
};
use tokio_util::sync::CancellationToken;

use crate::invoker::Invoker;
use crate::stats;
use crate::status::StatusManager;

pub const QUEUE_INITIALIZING_MSG: &str = "Queue is still initializing. Please try later.";
pub const QUEUE_FULL_MSG: &str = "No resources available. Please try later.";
pub const WORKER_UNHEALTHY_MSG: &str = "Worker is unhealthy.";
pub const WORKER_DRAINING_MSG: &str = "Worker is shutting down. Please try later.";

/// How long `abort` waits for the run to end: longer than the engine's SIGTERM→SIGKILL grace.
const ABORT_WAIT: Duration = Duration::from_secs(30);
/// Checkout failures of these kinds, twice in a row, mean the machine's git state is broken.
const CHECKOUT_HEALTH_CODES: [i32; 2] = [exit_code::CLEAN_FAILURE, exit_code::GIT_CHECKOUT_FAILURE];

/// Why `run` refused a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunRefused {
    #[error("{0}")]
    NotInitialized(String),
    #[error("{WORKER_UNHEALTHY_MSG}")]
    Unhealthy,
    #[error("{QUEUE_FULL_MSG}")]
    Busy,
    #[error("{WORKER_DRAINING_MSG}")]
    Draining,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerPhase {
    /// Snapshot stores are still initialising (or failed to).
    Booting,
    Ready,
    Running,
    /// Shutting down: no new runs; the current one is finished or aborted.
    Draining,
    Stopped,
}

#[derive(Clone)]
pub struct QueueRunner {
    shared: Arc<Shared>,
}

struct Shared {
    invoker: Invoker,
    statuses: Arc<StatusManager>,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    current: Option<Current>,
    draining: bool,
    stopped: bool,
    checkout_failures_in_a_row: u32,
}

struct Current {
    run_id: RunId,
    cmd: Command,
    abort: CancellationToken,
    started: std::time::Instant,
}

impl QueueRunner {
    /// Starts a runner that becomes initialised when `ready` completes successfully.
    pub fn new(
        invoker: Invoker,
        ready: impl Future<Output = Result<(), String>> + Send + 'static,
    ) -> QueueRunner {
        let statuses = invoker.statuses.clone();
        statuses.update_service(ServiceStatus::default());
        let runner = QueueRunner {
            shared: Arc::new(Shared {
                invoker,
                statuses: statuses.clone(),
                slot: Mutex::new(Slot::default()),
            }),
        };
        tokio::spawn(async move {
            match ready.await {
                Ok(()) => {
                    statuses.update_service(ServiceStatus::ready());
                    tracing::info!("worker initialised");
                }
                Err(error) => {
                    tracing::error!(%error, "worker failed to initialise");
                    statuses.update_service(ServiceStatus {
                        initialized: false,
                        is_healthy: true,
                        error,
                        ..ServiceStatus::default()
                    });
                }
            }
        });
        runner
    }

    pub fn statuses(&self) -> &StatusManager {
        &self.shared.statuses
    }

    pub fn phase(&self) -> WorkerPhase {
        let slot = self.shared.lock_slot();
        if slot.stopped {
            WorkerPhase::Stopped
        } else if slot.draining {
            WorkerPhase::Draining
        } else if !self.shared.statuses.service().initialized {
            WorkerPhase::Booting
        } else if slot.current.is_some() {
            WorkerPhase::Running
        } else {
            WorkerPhase::Ready
        }
    }

    /// Accepts `cmd` and returns its PENDING status, or says why it cannot run now.
    pub fn run(&self, cmd: Command) -> Result<RunStatus, RunRefused> {
        let mut slot = self.shared.lock_slot();
        if slot.draining {
            return Err(RunRefused::Draining);
        }
        let service = self.shared.statuses.service();
        if !service.initialized {
            let why = if service.error.is_empty() {
                QUEUE_INITIALIZING_MSG.to_string()
            } else {
                service.error
            };
            return Err(RunRefused::NotInitialized(why));
        }
        if !service.is_healthy {
            return Err(RunRefused::Unhealthy);
        }
        if let Some(current) = &slot.current {
            if current.cmd == cmd {
                let query = Query::run(current.run_id.clone(), StateMask::ALL);
                if let Some(status) = self.shared.statuses.query_now(&query).0.pop() {
                    return Ok(status);
                }
            }
            return Err(RunRefused::Busy);
        }
        let pending = self.shared.statuses.new_run(cmd.tags.clone());
        let abort = CancellationToken::new();
        slot.current = Some(Current {
            run_id: pending.run_id.clone(),
            cmd: cmd.clone(),
            abort: abort.clone(),
            started: std::time::Instant::now(),
        });
        drop(slot);
        stats::RUNS.inc();
        stats::RUNNING.set(1);
        stats::ACTIVE_RUNS.set(1);
        tracing::info!(
            run_id = %pending.run_id,
            job_id = %cmd.tags.job_id,
            task_id = %cmd.tags.task_id,
            argv = ?cmd.argv,
            "run accepted"
        );
        self.spawn_invocation(pending.run_id.clone(), cmd, abort);
        Ok(pending)
    }

    fn spawn_invocation(&self, run_id: RunId, cmd: Command, abort: CancellationToken) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let tags = cmd.tags.clone();
            let invocation = {
                let shared = shared.clone();
                let run_id = run_id.clone();
                tokio::spawn(async move { shared.invoker.run(run_id, cmd, abort).await })
            };
            let status = invocation.await.unwrap_or_else(|err| {
                tracing::error!(error = %err, "run crashed");
                RunStatus::failed(
                    run_id,
                    exit_code::POST_EXEC_FAILURE,
                    format!("worker error while running the task: {err}"),
                    tags,
                )
            });
            shared.finish(status);
        });
    }

    /// Aborts a run and waits (boundedly) for its final status. Unknown ids get UNKNOWN.
    pub async fn abort(&self, run_id: &RunId) -> RunStatus {
        let token = {
            let slot = self.shared.lock_slot();
            slot.current
                .as_ref()
                .filter(|c| &c.run_id == run_id)
                .map(|c| c.abort.clone())
        };
        if let Some(token) = token {
            tracing::info!(%run_id, "aborting run");
            stats::ABORTS.inc();
            token.cancel();
        }
        let any = Query::run(run_id.clone(), StateMask::ALL);
        let Some(current) = self.shared.statuses.query_now(&any).0.pop() else {
            return RunStatus::unknown(run_id.clone());
        };
        let done = Query::run(run_id.clone(), StateMask::DONE);
        match self
            .shared
            .statuses
            .query(&done, Wait::up_to(ABORT_WAIT))
            .await
        {
            Ok((mut runs, _)) => runs.pop().unwrap_or(current),
            Err(_) => current,
        }
    }

    /// Stops accepting runs, lets the current one finish for up to `grace`, aborts it after
    /// that, and returns once nothing is running.
    pub async fn drain(&self, grace: Duration) {
        let current = {
            let mut slot = self.shared.lock_slot();
            slot.draining = true;
            slot.current.as_ref().map(|c| c.run_id.clone())
        };
        if let Some(run_id) = current {
            tracing::info!(%run_id, grace = ?grace, "draining: waiting for the current run");
            let done = Query::run(run_id.clone(), StateMask::DONE);
            let finished = matches!(
                self.shared.statuses.query(&done, Wait::up_to(grace)).await,
                Ok((runs, _)) if !runs.is_empty()
            );
            if !finished {
                self.abort(&run_id).await;
            }
        }
        self.shared.lock_slot().stopped = true;
    }
}

impl Shared {
    fn lock_slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a run's final status, applies the health rules and frees the slot.
    fn finish(&self, status: RunStatus) {
        let mut slot = self.lock_slot();
        if let Some(current) = &slot.current {
            stats::TASK_LATENCY.record(current.started.elapsed());
        }
        if status.state == RunState::TimedOut {
            stats::TIMEOUTS.inc();
        }
        stats::RUNNING.set(0);
        stats::ACTIVE_RUNS.set(0);
        self.apply_health_rules(&mut slot, &status);
        if let Err(err) = self.statuses.update(status) {
            tracing::warn!(error = %err, "cannot record final status");
        }
        slot.current = None;
    }

    fn apply_health_rules(&self, slot: &mut Slot, status: &RunStatus) {
        let failed_with = |code: i32| status.state == RunState::Failed && status.exit_code == code;
        let reason = if failed_with(exit_code::HIGH_INITIAL_MEMORY_UTILIZATION) {
            Some(format!(
                "worker memory is too high to run tasks: {}",
                status.error
            ))
        } else if CHECKOUT_HEALTH_CODES.into_iter().any(failed_with) {
            slot.checkout_failures_in_a_row += 1;
            (slot.checkout_failures_in_a_row >= 2)
                .then(|| format!("repeated snapshot checkout failures: {}", status.error))
        } else {
            slot.checkout_failures_in_a_row = 0;
            None
        };
        if let Some(error) = reason {
            tracing::error!(%error, "worker is now unhealthy");
            stats::UNHEALTHY.set(1);
            self.statuses.update_service(ServiceStatus {
                initialized: true,
                is_healthy: false,
                error,
                ..ServiceStatus::default()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::execer::os::OsExecer;
    use crate::execer::{Dispatch, sim::SimExecer};
    use crate::output::OutputStore;

    use super::*;

    struct Fixture {
        runner: QueueRunner,
        _outputs: tempfile::TempDir,
    }

    async fn fixture(memory_cap: Option<u64>) -> Fixture {
        let outputs = tempfile::tempdir().unwrap();
        let statuses = Arc::new(StatusManager::new(1));
        let invoker = Invoker {
            execer: Arc::new(Dispatch {
                os: OsExecer {
                    memory_cap,
                    kill_grace: Duration::from_secs(2),
                    ..OsExecer::default()
                },
                sandbox: None,
                sandbox_tasks: false,
                sim: SimExecer,
            }),
            filer: None,
            actions: None,
            outputs: Arc::new(OutputStore::new(outputs.path().to_path_buf(), None, 8)),
            statuses,
        };
        let runner = QueueRunner::new(invoker, async { Ok(()) });
        wait_until(|| runner.phase() == WorkerPhase::Ready).await;
        Fixture {
            runner,
            _outputs: outputs,
        }
    }

    async fn wait_until(mut condition: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not met in time"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn cmd(argv: &[&str]) -> Command {
        Command {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..Command::default()
        }
    }

    async fn final_status(runner: &QueueRunner, id: &RunId) -> RunStatus {
        let query = Query::run(id.clone(), StateMask::DONE);
        let (mut runs, _) = runner
            .statuses()
            .query(&query, Wait::up_to(Duration::from_secs(30)))
            .await
            .unwrap();
        runs.pop().expect("run did not finish in time")
    }

    fn output_of(uri: &str) -> String {
        let path = uri.trim_start_matches("file://");
        let path = &path[path.find('/').unwrap()..];
        let text = std::fs::read_to_string(Path::new(path)).unwrap();
        text.split_once("SCOOT_CMD_LOG\n").unwrap().1.to_string()
    }

    #[tokio::test]
    async fn runs_a_command_and_captures_output() {
        let f = fixture(None).await;
        let pending = f
            .runner
            .run(cmd(&["sh", "-c", "echo out; echo err >&2; exit 3"]))
            .unwrap();
        assert_eq!(
            (pending.state, pending.run_id.0.as_str()),
            (RunState::Pending, "0")
        );
        let done = final_status(&f.runner, &pending.run_id).await;
        assert_eq!((done.state, done.exit_code), (RunState::Complete, 3));
        assert_eq!(output_of(&done.stdout_ref), "out\n");
        assert_eq!(output_of(&done.stderr_ref), "err\n");
    }

    #[tokio::test]
    async fn task_env_overrides_worker_env() {
        let f = fixture(None).await;
        let mut command = cmd(&["sh", "-c", "echo $SCOOT_TEST_VAR:$HOME"]);
        command
            .env
            .insert("SCOOT_TEST_VAR".into(), "from-task".into());
        command.env.insert("HOME".into(), "/task-home".into());
        let id = f.runner.run(command).unwrap().run_id;
        let done = final_status(&f.runner, &id).await;
        assert_eq!(output_of(&done.stdout_ref), "from-task:/task-home\n");
    }

    #[tokio::test]
    async fn missing_binary_fails_with_could_not_exec() {
        let f = fixture(None).await;
        let id = f.runner.run(cmd(&["/nonexistent/binary"])).unwrap().run_id;
        let done = final_status(&f.runner, &id).await;
        assert_eq!((done.state, done.exit_code), (RunState::Failed, 240));
        assert!(done.error.starts_with("could not exec:"), "{}", done.error);
        let id = f.runner.run(cmd(&[])).unwrap().run_id;
        assert_eq!(final_status(&f.runner, &id).await.exit_code, 240);
    }

    #[tokio::test]
    async fn snapshot_without_a_store_fails_checkout() {
        let f = fixture(None).await;
        let mut command = cmd(&["true"]);
        command.snapshot_id = "bs-fs-abc".into();
        let id = f.runner.run(command).unwrap().run_id;
        let done = final_status(&f.runner, &id).await;
        assert_eq!((done.state, done.exit_code), (RunState::Failed, 210));
    }

    #[tokio::test]
    async fn busy_worker_refuses_and_resend_returns_the_running_status() {
        let f = fixture(None).await;
        let sleeper = cmd(&["sleep", "30"]);
        let first = f.runner.run(sleeper.clone()).unwrap();
        assert_eq!(f.runner.run(cmd(&["true"])), Err(RunRefused::Busy));
        let again = f.runner.run(sleeper).unwrap();
        assert_eq!(again.run_id, first.run_id);
        let aborted = f.runner.abort(&first.run_id).await;
        assert_eq!(aborted.state, RunState::Aborted);
        // The slot is free again.
        wait_until(|| f.runner.phase() == WorkerPhase::Ready).await;
        assert!(f.runner.run(cmd(&["true"])).is_ok());
    }

    #[tokio::test]
    async fn abort_kills_the_whole_process_group() {
        let f = fixture(None).await;
        let id = f
            .runner
            .run(cmd(&[
                "sh",
                "-c",
                "sleep 30 & sleep 30 & echo started; wait",
            ]))
            .unwrap()
            .run_id;
        let running = Query::run(id.clone(), StateMask::of(RunState::Running));
        let (runs, _) = f
            .runner
            .statuses()
            .query(&running, Wait::up_to(Duration::from_secs(10)))
            .await
            .unwrap();
        let path = runs[0].stdout_ref.trim_start_matches("file://");
        let path = path[path.find('/').unwrap()..].to_string();
        wait_until(|| {
            std::fs::read_to_string(&path)
                .unwrap()
                .ends_with("started\n")
        })
        .await;
        wait_until(|| sleepers_with_parent_group().len() == 2).await;
        let group = sleepers_with_parent_group();
        let aborted = f.runner.abort(&id).await;
        assert_eq!(aborted.state, RunState::Aborted);
        for pid in group {
            assert!(!is_alive(pid), "pid {pid} survived");
        }
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("Task aborted")
        );
    }

    /// Present and not a zombie (killed orphans may wait a moment for init to reap them).
    fn is_alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
            .unwrap_or(false)
    }

    /// Pids of `sleep 30` processes whose parent is a `sh -c ... wait` of this test process tree.
    fn sleepers_with_parent_group() -> Vec<i32> {
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if cmdline != b"sleep\x0030\x00" {
                continue;
            }
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid: i32 = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
                .unwrap_or(0);
            let parent = std::fs::read(format!("/proc/{ppid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&parent).contains("echo started; wait") {
                pids.push(pid);
            }
        }
        pids
    }

    #[tokio::test]
    async fn timeout_counts_and_kills() {
        let f = fixture(None).await;
        let mut sleeper = cmd(&["sleep", "30"]);
        sleeper.timeout = Some(Duration::from_millis(500));
        let started = std::time::Instant::now();
        let id = f.runner.run(sleeper).unwrap().run_id;
        let done = final_status(&f.runner, &id).await;
        assert_eq!(done.state, RunState::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(output_of(&done.stdout_ref).contains("Task exceeded timeout (500ms)"));
    }

    #[tokio::test]
    async fn sim_execer_scripts() {
        let f = fixture(None).await;
        let id = f
            .runner
            .run(cmd(&[
                "#! sim execer",
                "stdout hello",
                "sleep 10",
                "complete 7",
            ]))
            .unwrap()
            .run_id;
        let done = final_status(&f.runner, &id).await;
        assert_eq!((done.state, done.exit_code), (RunState::Complete, 7));
        assert_eq!(output_of(&done.stdout_ref), "hello\n");

        let id = f
            .runner
            .run(cmd(&["#! sim execer", "pause"]))
            .unwrap()
            .run_id;
        assert_eq!(f.runner.abort(&id).await.state, RunState::Aborted);

        let id = f
            .runner
            .run(cmd(&["#! sim execer", "explode"]))
            .unwrap()
            .run_id;
        assert_eq!(final_status(&f.runner, &id).await.exit_code, 240);
    }

    #[tokio::test]
    async fn unknown_run_ids_abort_as_unknown_at_once() {
        let f = fixture(None).await;
        let started = std::time::Instant::now();
        let status = f.runner.abort(&RunId::from("42")).await;
        assert!(started.elapsed() < ABORT_WAIT / 2);
        assert_eq!(status.state, RunState::Unknown);
        assert_eq!(status.error, "unknown run id 42");
    }

    #[tokio::test]
    async fn exceeding_the_memory_cap_ends_the_command_with_exit_1() {
        // 64 MiB cap; the task grows a 256 MiB resident buffer and then waits.
        let f = fixture(Some(64 * 1024 * 1024)).await;
        let script = "import time; b = bytearray(256 * 1024 * 1024); time.sleep(30)";
        let id = f
            .runner
            .run(cmd(&["python3", "-c", script]))
            .unwrap()
            .run_id;
        let done = final_status(&f.runner, &id).await;
        assert_eq!((done.state, done.exit_code), (RunState::Complete, 1));
        assert!(
            done.error.starts_with("Cmd exceeded MemoryCap"),
            "{}",
            done.error
        );
        assert!(f.runner.statuses().service().is_healthy);
    }

    #[tokio::test]
    async fn memory_over_the_cap_at_start_makes_the_worker_unhealthy() {
        let f = fixture(Some(1)).await;
        let id = f.runner.run(cmd(&["sleep", "5"])).unwrap().run_id;
        let done = final_status(&f.runner, &id).await;
        assert_eq!((done.state, done.exit_code), (RunState::Failed, 241));
        let service = f.runner.statuses().service();
        assert!(!service.is_healthy);
        assert!(!service.error.is_empty());
        assert_eq!(f.runner.run(cmd(&["true"])), Err(RunRefused::Unhealthy));
    }

    #[tokio::test]
    async fn refuses_while_initialising_and_reports_init_errors() {
        let outputs = tempfile::tempdir().unwrap();
        let make = |ready: Result<(), String>| {
            let invoker = Invoker {
                execer: Arc::new(SimExecer),
                filer: None,
                actions: None,
                outputs: Arc::new(OutputStore::new(outputs.path().to_path_buf(), None, 8)),
                statuses: Arc::new(StatusManager::new(1)),
            };
            QueueRunner::new(invoker, async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                ready
            })
        };
        let booting = make(Ok(()));
        assert_eq!(booting.phase(), WorkerPhase::Booting);
        assert_eq!(
            booting.run(cmd(&["true"])),
            Err(RunRefused::NotInitialized(QUEUE_INITIALIZING_MSG.into()))
        );
        let broken = make(Err("store is gone".into()));
        wait_until(|| !broken.statuses().service().error.is_empty()).await;
        assert_eq!(
            broken.run(cmd(&["true"])),
            Err(RunRefused::NotInitialized("store is gone".into()))
        );
    }

    #[tokio::test]
    async fn draining_refuses_new_runs_and_aborts_after_the_grace() {
        let f = fixture(None).await;
        let id = f.runner.run(cmd(&["sleep", "30"])).unwrap().run_id;
        f.runner.drain(Duration::from_millis(200)).await;
        assert_eq!(f.runner.phase(), WorkerPhase::Stopped);
        let query = Query::run(id, StateMask::ALL);
        assert_eq!(
            f.runner.statuses().query_now(&query).0[0].state,
            RunState::Aborted
        );
        assert_eq!(f.runner.run(cmd(&["true"])), Err(RunRefused::Draining));
    }
}
