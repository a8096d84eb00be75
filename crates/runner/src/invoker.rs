//! The invoker runs one command from PENDING to a final status by driving the
//! [`lifecycle`](crate::lifecycle) state machine: it does each phase's work (checkout, output files,
//! process start, waiting, cleanup) while watching for abort and timeout, and feeds the result
//! back into the transition table.

use std::sync::Arc;
use std::time::Duration;

use scoot_core::{Command, RunId, RunState, RunStatus, exit_code};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::action::{ActionFailure, ActionRunner, PreparedAction};
use crate::execer::{ExecSpec, Execer, Process};
use crate::filer::{Checkout, CheckoutError, EmptyCheckout, Filer};
use crate::lifecycle::{Action, Event, Outcome, Phase, transition};
use crate::output::{OutputStore, RunOutputs};
use crate::status::StatusManager;

pub struct Invoker {
    pub execer: Arc<dyn Execer>,
    /// Serves non-empty snapshot ids; without one, only the empty snapshot can be run.
    pub filer: Option<Arc<dyn Filer>>,
    /// Runs REAPI actions; without one, commands carrying an ExecuteRequest fail.
    pub actions: Option<Arc<dyn ActionRunner>>,
    pub outputs: Arc<OutputStore>,
    pub statuses: Arc<StatusManager>,
}

/// What a run holds while it is in progress; released in the cleanup phase.
#[derive(Default)]
struct Resources {
    checkout: Option<Box<dyn Checkout>>,
    action: Option<Box<dyn PreparedAction>>,
    outputs: Option<Arc<RunOutputs>>,
    process: Option<Box<dyn Process>>,
}

/// What a run reports besides its outcome, gathered before its resources are released.
#[derive(Default)]
struct Reports {
    stdout_ref: String,
    stderr_ref: String,
    /// A REAPI action's ExecuteResponse, or why there is none.
    reapi: Option<Result<Vec<u8>, ActionFailure>>,
}

impl Invoker {
    /// Runs `cmd` as run `run_id` until it reaches a final state; cancelling `abort` aborts it.
    pub async fn run(&self, run_id: RunId, cmd: Command, abort: CancellationToken) -> RunStatus {
        let span = tracing::info_span!(
            "run",
            run_id = %run_id,
            job_id = %cmd.tags.job_id,
            task_id = %cmd.tags.task_id,
        );
        self.drive(run_id, cmd, abort).instrument(span).await
    }

    async fn drive(&self, run_id: RunId, cmd: Command, abort: CancellationToken) -> RunStatus {
        // The timeout counts from here, so checkout time is included (as in Scoot).
        let deadline = cmd.timeout.map(|t| Instant::now() + t);
        let mut held = Resources::default();
        let mut reports = Reports::default();
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
                    prepared = self.prepare(&run_id, &cmd, &mut held, &mut reports) => prepared,
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
                Phase::CleaningUp(outcome) => {
                    if let Some(outputs) = &held.outputs {
                        reports.stdout_ref = outputs.stdout_uri.clone();
                        reports.stderr_ref = outputs.stderr_uri.clone();
                        if let (Some(action), Outcome::Complete { exit_code, .. }) =
                            (held.action.as_mut(), outcome)
                        {
                            reports.reapi = Some(
                                action
                                    .finish(*exit_code, &outputs.stdout_path, &outputs.stderr_path)
                                    .await,
                            );
                        }
                    }
                    release(held).await;
                    held = Resources::default();
                    Event::CleanedUp
                }
                Phase::Done(outcome) => {
                    let status = final_status(run_id, &cmd, outcome, reports);
                    tracing::info!(state = %status.state, exit_code = status.exit_code, error = %status.error, "run ended");
                    return status;
                }
            };
        }
    }

    async fn prepare(
        &self,
        run_id: &RunId,
        cmd: &Command,
        held: &mut Resources,
        reports: &mut Reports,
    ) -> Event {
        let (argv, env, dir, clear_env, user, sandbox) = match &cmd.reapi_request {
            Some(request) => match self.prepare_action(request, cmd, held).await {
                Ok(spec) => (spec.argv, spec.env, spec.dir, true, spec.user, spec.sandbox),
                Err(failure) => {
                    let event = Event::PrepareFailed {
                        exit_code: failure.exit_code,
                        error: failure.message.clone(),
                    };
                    reports.reapi = Some(Err(failure));
                    return event;
                }
            },
            None => match self.checkout(&cmd.snapshot_id).await {
                Ok(checkout) => {
                    let dir = held.checkout.insert(checkout).path().to_path_buf();
                    (cmd.argv.clone(), cmd.env.clone(), dir, false, None, None)
                }
                Err(err) => {
                    return Event::PrepareFailed {
                        exit_code: err.exit_code,
                        error: err.message,
                    };
                }
            },
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
            argv,
            env,
            dir,
            clear_env,
            outputs: outputs.clone(),
            user,
            sandbox,
            stdin: Vec::new(),
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

    async fn prepare_action(
        &self,
        request: &[u8],
        cmd: &Command,
        held: &mut Resources,
    ) -> Result<crate::action::ActionSpec, ActionFailure> {
        let Some(actions) = &self.actions else {
            return Err(ActionFailure {
                exit_code: exit_code::CHECKOUT_FAILURE,
                message: "this worker cannot run REAPI actions: it has no CAS (-cas_addr)"
                    .to_string(),
                response: Vec::new(),
            });
        };
        let action = held
            .action
            .insert(actions.prepare(request, &cmd.tags).await?);
        Ok(action.spec().clone())
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
    if let Some(action) = held.action {
        action.release().await;
    }
    if let Some(checkout) = held.checkout
        && let Err(err) = checkout.release().await
    {
        tracing::warn!(error = %err, "cannot release checkout");
    }
}

fn final_status(run_id: RunId, cmd: &Command, outcome: &Outcome, reports: Reports) -> RunStatus {
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
    // A REAPI action whose outputs could not be collected did not complete.
    let (status, reapi_response) = match reports.reapi {
        Some(Ok(response)) => (status, Some(response)),
        Some(Err(failure)) => {
            let status = if status.state == RunState::Complete {
                RunStatus::failed(
                    status.run_id,
                    failure.exit_code,
                    failure.message,
                    status.tags,
                )
            } else {
                status
            };
            (status, Some(failure.response).filter(|r| !r.is_empty()))
        }
        None => (status, None),
    };
    RunStatus {
        stdout_ref: reports.stdout_ref,
        stderr_ref: reports.stderr_ref,
        reapi_response,
        ..status
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use async_trait::async_trait;
    use scoot_core::LogTags;

    use super::*;
    use crate::action::ActionSpec;
    use crate::execer::os::OsExecer;

    /// Runs `sh -c <request>` in a temporary directory; finish answers with the action's stdout,
    /// so a test sees exactly what the process wrote.
    struct ShellActions;

    struct ShellAction {
        spec: ActionSpec,
        _dir: tempfile::TempDir,
    }

    #[async_trait]
    impl ActionRunner for ShellActions {
        async fn prepare(
            &self,
            request: &[u8],
            _tags: &LogTags,
        ) -> Result<Box<dyn PreparedAction>, ActionFailure> {
            let script = String::from_utf8_lossy(request).into_owned();
            if script == "missing" {
                return Err(ActionFailure {
                    exit_code: exit_code::CHECKOUT_FAILURE,
                    message: "input missing".into(),
                    response: b"precondition".to_vec(),
                });
            }
            let dir = tempfile::tempdir().unwrap();
            let spec = ActionSpec {
                argv: vec!["/bin/sh".into(), "-c".into(), script],
                env: BTreeMap::from([("ONLY".to_string(), "this".to_string())]),
                dir: dir.path().to_path_buf(),
                user: None,
                sandbox: None,
            };
            Ok(Box::new(ShellAction { spec, _dir: dir }))
        }
    }

    #[async_trait]
    impl PreparedAction for ShellAction {
        fn spec(&self) -> &ActionSpec {
            &self.spec
        }

        async fn finish(
            &mut self,
            exit_code: i32,
            stdout: &Path,
            _stderr: &Path,
        ) -> Result<Vec<u8>, ActionFailure> {
            let mut response = std::fs::read(stdout).unwrap();
            response.extend_from_slice(format!("exit={exit_code}").as_bytes());
            Ok(response)
        }

        async fn release(self: Box<Self>) {}
    }

    fn invoker(outputs: &Path) -> Invoker {
        Invoker {
            execer: Arc::new(OsExecer::default()),
            filer: None,
            actions: Some(Arc::new(ShellActions)),
            outputs: Arc::new(OutputStore::new(PathBuf::from(outputs), None, 8)),
            statuses: Arc::new(StatusManager::new(1)),
        }
    }

    fn action(script: &str) -> Command {
        Command {
            argv: vec!["BZ_PLACEHOLDER".into()],
            env: BTreeMap::from([("SCOOT_ONLY".to_string(), "x".to_string())]),
            reapi_request: Some(script.as_bytes().to_vec()),
            ..Command::default()
        }
    }

    #[tokio::test]
    async fn actions_run_their_own_command_with_exactly_their_environment() {
        let outputs = tempfile::tempdir().unwrap();
        let status = invoker(outputs.path())
            .run(
                RunId::from("0"),
                action("env | sort; exit 3"),
                CancellationToken::new(),
            )
            .await;
        assert_eq!(status.state, RunState::Complete);
        assert_eq!(status.exit_code, 3);
        let response = String::from_utf8(status.reapi_response.unwrap()).unwrap();
        // The worker's environment (HOME, PATH, ...) and the Scoot env are not passed.
        assert!(response.starts_with("ONLY=this\n"), "{response}");
        assert!(!response.contains("SCOOT_ONLY") && !response.contains("HOME="));
        assert!(response.ends_with("exit=3"));
    }

    #[tokio::test]
    async fn a_failed_preparation_fails_the_run_with_the_action_response() {
        let outputs = tempfile::tempdir().unwrap();
        let status = invoker(outputs.path())
            .run(
                RunId::from("0"),
                action("missing"),
                CancellationToken::new(),
            )
            .await;
        assert_eq!(status.state, RunState::Failed);
        assert_eq!(status.exit_code, exit_code::CHECKOUT_FAILURE);
        assert_eq!(status.error, "input missing");
        assert_eq!(status.reapi_response.as_deref(), Some(&b"precondition"[..]));
    }

    #[tokio::test]
    async fn without_an_action_runner_actions_fail_clearly() {
        let outputs = tempfile::tempdir().unwrap();
        let status = Invoker {
            actions: None,
            ..invoker(outputs.path())
        }
        .run(RunId::from("0"), action("true"), CancellationToken::new())
        .await;
        assert_eq!(status.state, RunState::Failed);
        assert!(status.error.contains("-cas_addr"), "{}", status.error);
    }
}
