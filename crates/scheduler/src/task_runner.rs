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
use scoot_thrift::{codec, convert};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::worker_client::WorkerClient;

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
    pub client: WorkerClient,
    pub saga: Saga,
    pub stop: StopSignal,
    /// False when this is the last allowed attempt.
    pub may_retry: bool,
    pub polling_period: Duration,
    /// Called once the worker has finished with the run (unless the worker is suspect), before
    /// the end is recorded: the worker can take its next task while the EndTask write is made
    /// durable.
    pub worker_free: Option<Box<dyn FnOnce() + Send + Sync>>,
}

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

fn status_bytes(status: &RunStatus) -> Vec<u8> {
    codec::to_bytes(&convert::status_to_wire(status)).unwrap_or_default()
}

async fn record_end(attempt: &TaskAttempt, status: &RunStatus) -> Result<(), String> {
    let data = status_bytes(status);
    let mut last_error = String::new();
    for _ in 0..10 {
        match attempt.saga.end_task(&attempt.task_id, data.clone()).await {
            Ok(()) => return Ok(()),
            Err(err) => {
                last_error = err.to_string();
                tracing::warn!(error = %last_error, "cannot log EndTask, retrying");
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
            saga.start_task(&task_id, Vec::new())
                .await
                .map_err(|e| e.to_string())
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
            if let Err(err) = attempt
                .saga
                .start_task(&attempt.task_id, status_bytes(&status))
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
