//! Runs one attempt of one task on one worker and records it in the job's saga.
//!
//! StartTask (no data, written while `Run` goes out) → `Run` (retried for 10 s while the worker is
//! unreachable; the run is aborted if StartTask could not be written) → wait for the
//! run: `WaitRun` long-polls, or `QueryWorker` polling with a doubling interval for workers that
//! lack it → a second StartTask carrying the RUNNING status (so clients see the output URIs) →
//! the final status. Past the task's timeout plus 15 s the run is declared TIMEDOUT and aborted;
//! a stop request (KillJob, rebalancing) aborts it too. Any non-COMPLETE run is aborted on the
//! worker to make sure it is gone. EndTask is written when the attempt succeeded (COMPLETE, any
//! exit code), was stopped, or has no retries left; then a failure's error ends with Scoot's
//! dead-letter suffix. Otherwise the task goes back to the queue.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use scoot_core::{Command, RunId, RunState, RunStatus, StateMask};
use scoot_saga::Saga;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::wire;
use crate::worker_client::WorkerApi;

/// How long Run and status calls are retried while a worker does not answer.
pub const RPC_RETRY_WINDOW: Duration = Duration::from_secs(10);
const RPC_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Added to a task's timeout before the scheduler gives up on the worker enforcing it.
pub const TASK_TIMEOUT_OVERHEAD: Duration = Duration::from_secs(15);
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// Appended to the error of a failed task that will not be retried.
pub const DEAD_LETTER_SUFFIX: &str = " -> Error(s) encountered, canceling task.";

/// Asks a running task to stop, saying why.
#[derive(Clone, Default)]
pub struct StopSignal {
    token: CancellationToken,
    reason: Arc<Mutex<String>>,
}

impl StopSignal {
    pub fn stop(&self, reason: &str) {
        let mut current = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        if current.is_empty() {
            *current = reason.to_string();
        }
        self.token.cancel();
    }

    fn reason(&self) -> String {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

pub struct TaskAttempt {
    pub job_id: String,
    pub task_id: String,
    pub node: String,
    /// With the timeout already resolved (the task's own or the scheduler default).
    pub cmd: Command,
    pub client: Arc<dyn WorkerApi>,
    pub saga: Saga,
    pub stop: StopSignal,
    /// False when this is the last allowed attempt.
    pub may_retry: bool,
    pub polling_period: Duration,
    /// Called once the worker has finished with the run (unless the worker is suspect), before
    /// the end is recorded: the worker can take its next task while the EndTask write is made
    /// durable.
    pub worker_free: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// Told the RUNNING status (with the output URIs) once the worker reports it, so the
    /// scheduler's pages can link to the output of running tasks.
    pub on_running: Option<OnRunning>,
}

/// See [`TaskAttempt::on_running`].
pub type OnRunning = Box<dyn Fn(&RunStatus) + Send + Sync>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// EndTask was written with this status.
    Ended(RunStatus),
    /// The attempt failed and the task should run again.
    Retry(String),
}

#[derive(Debug)]
pub struct AttemptFinished {
    pub job_id: String,
    pub task_id: String,
    pub node: String,
    pub result: AttemptResult,
    pub elapsed: Duration,
    /// The worker misbehaved (unreachable, lost the run, failed it): re-check its health.
    pub node_suspect: bool,
}

/// What one attempt produced before it is recorded.
struct Outcome {
    status: RunStatus,
    stopped: bool,
}

pub async fn run(mut attempt: TaskAttempt) -> AttemptFinished {
    let started = Instant::now();
    let span = tracing::info_span!("task", job_id = %attempt.job_id, task_id = %attempt.task_id,
        node = %attempt.node);
    let outcome = tracing::Instrument::instrument(execute(&attempt), span.clone()).await;
    let state = outcome.status.state;
    // A REAPI action that failed with a response was refused for a reason of its own (a missing
    // input, a malformed name): neither the worker's fault nor worth another attempt.
    let refused_action = outcome.status.reapi_response.is_some();
    let node_suspect = matches!(state, RunState::Failed | RunState::Unknown) && !refused_action;
    let success = state == RunState::Complete;
    if !node_suspect && let Some(worker_free) = attempt.worker_free.take() {
        worker_free();
    }
    let result = if success || outcome.stopped || !attempt.may_retry || refused_action {
        let mut status = outcome.status;
        if !success {
            status.error.push_str(DEAD_LETTER_SUFFIX);
        }
        match record_end(&attempt, &status).await {
            Ok(()) => AttemptResult::Ended(status),
            Err(error) => {
                AttemptResult::Retry(format!("cannot record the end of the task: {error}"))
            }
        }
    } else {
        AttemptResult::Retry(format!("{} {}", state, outcome.status.error))
    };
    tracing::info!(parent: &span, ?result, "task attempt finished");
    AttemptFinished {
        job_id: attempt.job_id,
        task_id: attempt.task_id,
        node: attempt.node,
        result,
        elapsed: started.elapsed(),
        node_suspect,
    }
}

fn failed(attempt: &TaskAttempt, error: String) -> RunStatus {
    RunStatus::failed(RunId::default(), 0, error, attempt.cmd.tags.clone())
}

async fn record_end(attempt: &TaskAttempt, status: &RunStatus) -> Result<(), String> {
    let data = wire::run_status_to_saga(status);
    write_with_retries("EndTask", || {
        attempt.saga.end_task(&attempt.task_id, data.clone())
    })
    .await
}

/// A saga write, tried for about [`RPC_RETRY_WINDOW`]: the log's database may be restarting, and
/// a task must not fail, nor its result be lost, for that.
async fn write_with_retries<F, Fut>(what: &str, mut write: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), scoot_saga::SagaError>>,
{
    let mut last_error = String::new();
    for _ in 0..10 {
        match write().await {
            Ok(()) => return Ok(()),
            Err(err) => {
                last_error = err.to_string();
                tracing::warn!(error = %last_error, "cannot log {what}, retrying");
                tokio::time::sleep(RPC_RETRY_INTERVAL).await;
            }
        }
    }
    Err(last_error)
}

async fn execute(attempt: &TaskAttempt) -> Outcome {
    // Scoot made StartTask durable before running the task. It only has to precede EndTask
    // (recovery reruns every unfinished task, and a restarted scheduler aborts leftover runs),
    // so it is written while the worker starts the run, keeping an fsync off every task's path.
    let start_logged = {
        let (saga, task_id) = (attempt.saga.clone(), attempt.task_id.clone());
        tokio::spawn(async move {
            write_with_retries("StartTask", || saga.start_task(task_id.clone(), Vec::new())).await
        })
    };
    let timeout = attempt.cmd.timeout.unwrap_or(Duration::from_secs(30 * 60));
    // Absurd timeouts mean "no practical limit", not an overflow.
    let far_future = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = Instant::now()
        .checked_add(timeout + TASK_TIMEOUT_OVERHEAD)
        .map_or(far_future, |d| d.min(far_future));

    let accepted = tokio::select! {
        accepted = start_run(attempt) => accepted,
        _ = attempt.stop.token.cancelled() => {
            let _ = start_logged.await;
            return stopped(attempt, None).await;
        }
    };
    let logged = start_logged
        .await
        .map_err(|e| e.to_string())
        .and_then(|logged| logged);
    if let Err(err) = logged {
        if let Ok(status) = &accepted
            && !status.state.is_done()
        {
            let _ =
                tokio::time::timeout(RPC_RETRY_WINDOW, attempt.client.abort(&status.run_id)).await;
        }
        return Outcome {
            status: failed(
                attempt,
                format!("cannot record the start of the task: {err}"),
            ),
            stopped: false,
        };
    }
    let run_id = match accepted {
        Ok(status) if status.state.is_done() => {
            return Outcome {
                status: as_failure(status),
                stopped: false,
            };
        }
        Ok(status) => status.run_id,
        Err(error) => {
            return Outcome {
                status: failed(attempt, error),
                stopped: false,
            };
        }
    };

    let finished = tokio::select! {
        finished = follow_run(attempt, &run_id, deadline) => finished,
        _ = attempt.stop.token.cancelled() => return stopped(attempt, Some(&run_id)).await,
    };
    let status = match finished {
        Ok(Some(status)) => status,
        Ok(None) => {
            tracing::info!(%run_id, "task exceeded its timeout on the worker; aborting it");
            RunStatus {
                error: format!(
                    "task exceeded its timeout of {}",
                    humantime::format_duration(timeout)
                ),
                ..RunStatus::timed_out(run_id.clone(), attempt.cmd.tags.clone())
            }
        }
        Err(error) => failed(attempt, error),
    };
    if status.state != RunState::Complete {
        // Make sure nothing of a failed, lost or timed-out run keeps running on the worker.
        let _ = tokio::time::timeout(RPC_RETRY_WINDOW, attempt.client.abort(&run_id)).await;
    }
    Outcome {
        status: as_failure(status),
        stopped: false,
    }
}

/// UNKNOWN means the worker lost track of the run: report it as a failure of the mechanism.
fn as_failure(status: RunStatus) -> RunStatus {
    if status.state == RunState::Unknown {
        let error = format!("worker lost the run: {}", status.error);
        RunStatus {
            state: RunState::Failed,
            error,
            ..status
        }
    } else {
        status
    }
}

async fn stopped(attempt: &TaskAttempt, run_id: Option<&RunId>) -> Outcome {
    let reason = attempt.stop.reason();
    let mut status = RunStatus::aborted(
        run_id.cloned().unwrap_or_default(),
        attempt.cmd.tags.clone(),
    );
    if let Some(run_id) = run_id {
        match tokio::time::timeout(Duration::from_secs(30), attempt.client.abort(run_id)).await {
            Ok(Ok(final_status)) => {
                status.stdout_ref = final_status.stdout_ref;
                status.stderr_ref = final_status.stderr_ref;
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "abort failed"),
            Err(_) => tracing::warn!("abort timed out"),
        }
    }
    status.error = reason;
    Outcome {
        status,
        stopped: true,
    }
}

/// Calls Run, retrying while the worker is unreachable.
async fn start_run(attempt: &TaskAttempt) -> Result<RunStatus, String> {
    let first_try = Instant::now();
    loop {
        match attempt.client.run(&attempt.cmd).await {
            Ok(status) => return Ok(status),
            Err(err) if first_try.elapsed() >= RPC_RETRY_WINDOW => {
                return Err(format!("cannot start the task: {err}"));
            }
            Err(err) => {
                tracing::debug!(error = %err, "Run failed, retrying");
                tokio::time::sleep(RPC_RETRY_INTERVAL).await;
            }
        }
    }
}

/// Follows a run to its final status; `Ok(None)` when the deadline passed first.
async fn follow_run(
    attempt: &TaskAttempt,
    run_id: &RunId,
    deadline: Instant,
) -> Result<Option<RunStatus>, String> {
    let mut reported_running = false;
    let mut long_poll = true;
    let mut poll_interval = attempt.polling_period;
    let mut failing_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let wanted = if reported_running {
            StateMask::DONE
        } else {
            StateMask::DONE.union(RunState::Running.into())
        };
        let answer = if long_poll {
            match attempt
                .client
                .wait_run(run_id, wanted, deadline - now)
                .await
            {
                Ok(None) => {
                    tracing::debug!("worker lacks WaitRun; polling it instead");
                    long_poll = false;
                    continue;
                }
                other => other,
            }
        } else {
            attempt.client.query().await.map(|(runs, _)| {
                Some(
                    runs.into_iter()
                        .find(|r| &r.run_id == run_id)
                        .unwrap_or_else(|| RunStatus::unknown(run_id.clone())),
                )
            })
        };
        let status = match answer {
            Ok(Some(status)) => {
                failing_since = None;
                status
            }
            Ok(None) => continue,
            Err(err) => {
                let since = *failing_since.get_or_insert(now);
                if since.elapsed() >= RPC_RETRY_WINDOW {
                    return Err(format!("lost contact with the worker: {err}"));
                }
                tokio::time::sleep(RPC_RETRY_INTERVAL).await;
                continue;
            }
        };
        if status.state.is_done() {
            return Ok(Some(status));
        }
        if status.state == RunState::Running && !reported_running {
            reported_running = true;
            if let Some(on_running) = &attempt.on_running {
                on_running(&status);
            }
            if let Err(err) = attempt
                .saga
                .start_task(&attempt.task_id, wire::run_status_to_saga(&status))
                .await
            {
                tracing::warn!(error = %err, "cannot log the RUNNING status");
            }
            poll_interval = attempt.polling_period;
            continue;
        }
        if !long_poll {
            let pause = poll_interval.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
            poll_interval = (poll_interval * 2).min(MAX_POLL_INTERVAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use scoot_core::LogTags;
    use scoot_saga::{MemorySagaLog, SagaCoordinator};

    use super::*;
    use crate::fake_worker::{FakeWorker, Script, eventually};

    struct Setup {
        attempt: TaskAttempt,
        saga: Saga,
        freed: Arc<AtomicBool>,
        /// What `on_running` was told.
        told_running: Arc<Mutex<Vec<RunStatus>>>,
    }

    async fn setup(worker: &Arc<FakeWorker>, timeout: Duration, may_retry: bool) -> Setup {
        let sagas = SagaCoordinator::new(Arc::new(MemorySagaLog::new(None)));
        let saga = sagas.make_saga("job", b"job".to_vec()).await.unwrap();
        let freed = Arc::new(AtomicBool::new(false));
        let told_running = Arc::new(Mutex::new(Vec::new()));
        let attempt = TaskAttempt {
            job_id: "job".into(),
            task_id: "task".into(),
            node: "w".into(),
            cmd: Command {
                argv: vec!["true".into()],
                timeout: Some(timeout),
                tags: LogTags {
                    job_id: "job".into(),
                    task_id: "task".into(),
                    tag: "tag".into(),
                },
                ..Command::default()
            },
            client: worker.clone(),
            saga: saga.clone(),
            stop: StopSignal::default(),
            may_retry,
            polling_period: Duration::from_millis(50),
            worker_free: Some(Box::new({
                let freed = freed.clone();
                move || freed.store(true, Ordering::SeqCst)
            })),
            on_running: Some(Box::new({
                let told = told_running.clone();
                move |status: &RunStatus| {
                    told.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(status.clone())
                }
            })),
        };
        Setup {
            attempt,
            saga,
            freed,
            told_running,
        }
    }

    fn recorded_end(saga: &Saga) -> Option<RunStatus> {
        saga.state()
            .end_task_data("task")
            .and_then(wire::run_status_from_saga)
    }

    fn ended(result: &AttemptResult) -> &RunStatus {
        match result {
            AttemptResult::Ended(status) => status,
            AttemptResult::Retry(error) => panic!("retry instead of an end: {error}"),
        }
    }

    #[tokio::test]
    async fn a_completed_run_is_recorded_with_end_task() {
        let worker = FakeWorker::new("w");
        worker.script(Script::Complete(3));
        let Setup {
            attempt,
            saga,
            freed,
            ..
        } = setup(&worker, Duration::from_secs(60), true).await;
        let finished = run(attempt).await;
        let status = ended(&finished.result);
        assert_eq!((status.state, status.exit_code), (RunState::Complete, 3));
        assert_eq!(
            status.error, "",
            "a completed run gets no dead-letter suffix"
        );
        assert_eq!(recorded_end(&saga).as_ref(), Some(status));
        assert_eq!(status.stdout_ref, "fake://w/0/stdout");
        assert!(!finished.node_suspect);
        assert!(freed.load(Ordering::SeqCst), "the worker was not freed");
        assert!(worker.read(|r| r.aborted.is_empty()));
        assert_eq!(worker.read(|r| r.runs[0].0.tags.tag.clone()), "tag");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_worker_fails_the_attempt_for_a_retry() {
        let worker = FakeWorker::new("w");
        worker.set_down(true);
        let Setup {
            attempt,
            saga,
            freed,
            ..
        } = setup(&worker, Duration::from_secs(60), true).await;
        let started = Instant::now();
        let finished = run(attempt).await;
        assert!(started.elapsed() >= RPC_RETRY_WINDOW, "Run was not retried");
        match &finished.result {
            AttemptResult::Retry(error) => assert!(
                error.starts_with("FAILED cannot start the task: worker w:"),
                "{error}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(finished.node_suspect);
        assert!(!freed.load(Ordering::SeqCst), "a suspect worker was freed");
        assert_eq!(recorded_end(&saga), None, "a retried attempt wrote EndTask");
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_attempt_on_an_unreachable_worker_ends_the_task() {
        let worker = FakeWorker::new("w");
        worker.set_down(true);
        let Setup { attempt, saga, .. } = setup(&worker, Duration::from_secs(60), false).await;
        let finished = run(attempt).await;
        let status = ended(&finished.result);
        assert_eq!(status.state, RunState::Failed);
        assert!(status.error.starts_with("cannot start the task"));
        assert!(
            status.error.ends_with(DEAD_LETTER_SUFFIX),
            "{}",
            status.error
        );
        assert_eq!(recorded_end(&saga).as_ref(), Some(status));
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_dies_mid_run_fails_the_attempt() {
        let worker = FakeWorker::new("w");
        worker.script(Script::Hang);
        let Setup {
            attempt,
            saga,
            told_running,
            ..
        } = setup(&worker, Duration::from_secs(600), true).await;
        let running = tokio::spawn(run(attempt));
        worker.until("the run", |r| r.runs.len() == 1).await;
        // The RUNNING status reaches the saga, so clients see the output URIs.
        eventually("RUNNING in the saga", || {
            saga.state()
                .start_task_data("task")
                .and_then(wire::run_status_from_saga)
                .is_some_and(|s| s.state == RunState::Running)
        })
        .await;
        // ... and the loop, for its pages.
        let told: Vec<String> = told_running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|s| s.stdout_ref.clone())
            .collect();
        assert_eq!(told, ["fake://w/0/stdout"]);
        worker.set_down(true);
        let finished = running.await.unwrap();
        match &finished.result {
            AttemptResult::Retry(error) => assert!(
                error.starts_with("FAILED lost contact with the worker"),
                "{error}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(finished.node_suspect);
        assert_eq!(recorded_end(&saga), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_past_its_timeout_is_timed_out_and_aborted() {
        let worker = FakeWorker::new("w");
        worker.script(Script::Hang);
        let Setup { attempt, saga, .. } = setup(&worker, Duration::from_secs(1), false).await;
        let started = Instant::now();
        let finished = run(attempt).await;
        assert!(started.elapsed() >= Duration::from_secs(1) + TASK_TIMEOUT_OVERHEAD);
        let status = ended(&finished.result);
        assert_eq!(status.state, RunState::TimedOut);
        assert_eq!(
            status.error,
            format!("task exceeded its timeout of 1s{DEAD_LETTER_SUFFIX}")
        );
        assert_eq!(worker.read(|r| r.aborted.clone()), vec![RunId("0".into())]);
        assert_eq!(recorded_end(&saga).as_ref(), Some(status));
        assert!(!finished.node_suspect);
    }

    #[tokio::test]
    async fn a_stopped_task_is_aborted_on_the_worker() {
        let worker = FakeWorker::new("w");
        worker.script(Script::Hang);
        let Setup { attempt, saga, .. } = setup(&worker, Duration::from_secs(600), true).await;
        let stop = attempt.stop.clone();
        let running = tokio::spawn(run(attempt));
        worker.until("the run", |r| r.runs.len() == 1).await;
        stop.stop("UserRequested");
        let finished = running.await.unwrap();
        let status = ended(&finished.result);
        assert_eq!(status.state, RunState::Aborted);
        assert_eq!(status.error, format!("UserRequested{DEAD_LETTER_SUFFIX}"));
        assert_eq!(status.stdout_ref, "fake://w/0/stdout");
        assert_eq!(worker.read(|r| r.aborted.clone()), vec![RunId("0".into())]);
        assert_eq!(recorded_end(&saga).as_ref(), Some(status));
    }
}
