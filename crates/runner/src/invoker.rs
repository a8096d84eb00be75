//! The invoker runs one command from PENDING to a final status by driving the
//! [`lifecycle`](crate::lifecycle) state machine: it does each phase's work (checkout, output files,
//! process start, waiting, cleanup) while watching for abort and timeout, and feeds the result
//! back into the transition table.

use std::sync::Arc;
use std::time::Duration;

use scoot_core::{Command, RunId, RunStatus, exit_code};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::execer::{ExecSpec, Execer, Process};
use crate::filer::{Checkout, CheckoutError, EmptyCheckout, Filer};
use crate::lifecycle::{Action, Event, Outcome, Phase, transition};
use crate::output::{OutputStore, RunOutputs};
use crate::status::StatusManager;

pub struct Invoker {
    pub execer: Arc<dyn Execer>,
    /// Serves non-empty snapshot ids; without one, only the empty snapshot can be run.
    pub filer: Option<Arc<dyn Filer>>,
    pub outputs: Arc<OutputStore>,
    pub statuses: Arc<StatusManager>,
}

/// What a run holds while it is in progress; released in the cleanup phase.
#[derive(Default)]
struct Resources {
    checkout: Option<Box<dyn Checkout>>,
    outputs: Option<Arc<RunOutputs>>,
    process: Option<Box<dyn Process>>,
}

impl Invoker {
    /// Runs `cmd` as run `run_id` until it reaches a final state; cancelling `abort` aborts it.
    pub async fn run(&self, run_id: RunId, cmd: Command, abort: CancellationToken) -> RunStatus {
        let span = tracing::info_span!(
            "run",
            run_id = %run_id,
            job_id = %cmd.tags.job_id,
            task_id = %cmd.tags.task_id,
            tag = %cmd.tags.tag,
        );
        self.drive(run_id, cmd, abort).instrument(span).await
    }

    async fn drive(&self, run_id: RunId, cmd: Command, abort: CancellationToken) -> RunStatus {
        // The timeout counts from here, so checkout time is included (as in Scoot).
        let deadline = cmd.timeout.map(|t| Instant::now() + t);
        let mut held = Resources::default();
        let mut refs = (String::new(), String::new());
        let mut phase = Phase::Pending;
        let mut event = Event::Start;
        loop {
            let (next, action) = transition(phase, event);
            if let Action::StopProcess { trailer } = action {
                stop(&mut held, &trailer, cmd.timeout).await;
            }
            tracing::debug!(phase = %next, "run phase");
            phase = next;
            event = match &phase {
                Phase::Pending => Event::Start,
                Phase::Preparing => tokio::select! {
                    prepared = self.prepare(&run_id, &cmd, &mut held) => prepared,
                    _ = abort.cancelled() => Event::AbortRequested,
                    _ = expiry(deadline) => Event::TimeoutElapsed,
                },
                Phase::Running => match held.process.as_mut() {
                    Some(process) => tokio::select! {
                        outcome = process.wait() => Event::Exited(outcome),
                        _ = abort.cancelled() => Event::AbortRequested,
                        _ = expiry(deadline) => Event::TimeoutElapsed,
                    },
                    None => Event::PrepareFailed {
                        exit_code: exit_code::POST_EXEC_FAILURE,
                        error: "worker bug: running without a process".to_string(),
                    },
                },
                Phase::CleaningUp(_) => {
                    if let Some(outputs) = &held.outputs {
                        refs = (outputs.stdout_uri.clone(), outputs.stderr_uri.clone());
                    }
                    release(held).await;
                    held = Resources::default();
                    Event::CleanedUp
                }
                Phase::Done(outcome) => {
                    let status = final_status(run_id, &cmd, outcome, refs);
                    tracing::info!(state = %status.state, exit_code = status.exit_code, error = %status.error, "run ended");
                    return status;
                }
            };
        }
    }

    async fn prepare(&self, run_id: &RunId, cmd: &Command, held: &mut Resources) -> Event {
        let checkout = match self.checkout(&cmd.snapshot_id).await {
            Ok(checkout) => held.checkout.insert(checkout),
            Err(err) => {
                return Event::PrepareFailed {
                    exit_code: err.exit_code,
                    error: err.message,
                };
            }
        };
        let outputs = match self.outputs.create(run_id, cmd) {
            Ok(outputs) => held.outputs.insert(Arc::new(outputs)).clone(),
            Err(err) => {
                return Event::PrepareFailed {
                    exit_code: exit_code::LOG_REF_CREATION_FAILURE,
                    error: format!("cannot create output files: {err}"),
                };
            }
        };
        let spec = ExecSpec {
            argv: cmd.argv.clone(),
            env: cmd.env.clone(),
            dir: checkout.path().to_path_buf(),
            outputs: outputs.clone(),
        };
        match self.execer.start(spec).await {
            Ok(process) => held.process = Some(process),
            Err(err) => {
                return Event::PrepareFailed {
                    exit_code: exit_code::COULD_NOT_EXEC,
                    error: format!("could not exec: {err}"),
                };
            }
        }
        let running = RunStatus::running(
            run_id.clone(),
            outputs.stdout_uri.clone(),
            outputs.stderr_uri.clone(),
            cmd.tags.clone(),
        );
        if let Err(err) = self.statuses.update(running) {
            tracing::warn!(error = %err, "cannot record RUNNING status");
        }
        Event::Prepared
    }

    async fn checkout(&self, snapshot_id: &str) -> Result<Box<dyn Checkout>, CheckoutError> {
        if snapshot_id.is_empty() {
            return Ok(Box::new(EmptyCheckout::create()?));
        }
        match &self.filer {
            Some(filer) => filer.checkout(snapshot_id).await,
            None => Err(CheckoutError::new(
                exit_code::CHECKOUT_FAILURE,
                format!(
                    "cannot check out snapshot {snapshot_id}: this worker has no snapshot store"
                ),
            )),
        }
    }
}

async fn expiry(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn stop(held: &mut Resources, trailer: &str, timeout: Option<Duration>) {
    if let Some(outputs) = &held.outputs {
        let note = match timeout {
            Some(t) if trailer.contains("timeout") => {
                format!("{trailer} ({})", humantime::format_duration(t))
            }
            _ => trailer.to_string(),
        };
        outputs.append_trailer(&note);
    }
    if let Some(process) = held.process.as_mut() {
        process.kill().await;
    }
}

async fn release(held: Resources) {
    // Dropping the process handle kills anything still running (kill_on_drop), e.g. when the
    // run was aborted while the process was being started.
    drop(held.process);
    drop(held.outputs);
    if let Some(checkout) = held.checkout
        && let Err(err) = checkout.release().await
    {
        tracing::warn!(error = %err, "cannot release checkout");
    }
}

fn final_status(
    run_id: RunId,
    cmd: &Command,
    outcome: &Outcome,
    (stdout_ref, stderr_ref): (String, String),
) -> RunStatus {
    let tags = cmd.tags.clone();
    let status = match outcome {
        Outcome::Complete { exit_code, error } => RunStatus {
            error: error.clone(),
            ..RunStatus::complete(run_id, *exit_code, tags)
        },
        Outcome::Failed { exit_code, error } => {
            RunStatus::failed(run_id, *exit_code, error.clone(), tags)
        }
        Outcome::Aborted => RunStatus::aborted(run_id, tags),
        Outcome::TimedOut => RunStatus::timed_out(run_id, tags),
    };
    RunStatus {
        stdout_ref,
        stderr_ref,
        ..status
    }
}
