//! The operations behind Execute: one per execution, named by its job id.
//!
//! The [`Tracker`] keeps each operation's latest `google.longrunning.Operation` in a watch
//! channel, so any number of Execute, WaitExecution and GetOperation callers see the same state.
//! The scheduling loop's [`JobEvent`]s move operations on (QUEUED → EXECUTING → done, the last
//! with the task's final status, durable by then); the saga log is the truth for results, so an
//! operation the tracker has forgotten (or never saw, after a restart) is rebuilt from its job,
//! and a job's end is checked against it too.
//!
//! Invariant: while an execution of an action is unfinished, `in_flight` maps the action (with
//! its instance name) to that execution's operation, so an identical Execute joins it instead of
//! running the action again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prost::Message;
use scoot_cas_services::AcKey;
use scoot_core::{Digest, RunState, RunStatus};
use scoot_proto::longrunning::{Operation, operation};
use scoot_proto::prost_types::{Any, Timestamp};
use scoot_proto::reapi::v2;
use scoot_proto::rpc;
use scoot_reapi::status::{rpc_status, status_response};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::api::{ApiError, JobState, SchedulerApi};
use crate::event_loop::JobEvent;
use crate::stats;

const TYPE_PREFIX: &str = "type.googleapis.com/";
/// Finished operations remembered in memory; older ones are rebuilt from the saga log.
const FINISHED_KEPT: usize = 10_000;
/// How often an open stream repeats the current state when nothing changes, so that idle
/// connections are not dropped by intermediaries while a long action runs.
pub const STREAM_KEEPALIVE: Duration = Duration::from_secs(30);

/// One execution.
pub struct Tracked {
    pub name: String,
    pub key: AcKey,
    /// When Execute accepted it; unknown for executions rebuilt from the saga log.
    queued_at: Option<SystemTime>,
    state: watch::Sender<Operation>,
    /// Counted in the queued-actions gauge until it starts or ends.
    counted_queued: AtomicBool,
    /// Execute calls sharing it (the first included); counted in the merged-executions gauge
    /// from the second until it ends.
    callers: AtomicUsize,
}

impl Tracked {
    pub fn subscribe(&self) -> watch::Receiver<Operation> {
        self.state.subscribe()
    }

    pub fn current(&self) -> Operation {
        self.state.borrow().clone()
    }

    fn is_done(&self) -> bool {
        self.state.borrow().done
    }
}

#[derive(Default)]
struct Registry {
    by_name: HashMap<String, Arc<Tracked>>,
    in_flight: HashMap<AcKey, Arc<Tracked>>,
    finished: VecDeque<String>,
}

/// What became of an Execute that looked for an execution to join.
pub enum Joined {
    /// An identical action is already being executed.
    Existing(Arc<Tracked>),
    /// This caller starts the execution (and must finish or fail it).
    New(Arc<Tracked>),
}

pub struct Tracker {
    api: SchedulerApi,
    registry: Mutex<Registry>,
    /// Cancelled when the scheduler stops: open streams end with UNAVAILABLE, so that clients
    /// come back with WaitExecution instead of holding the server's shutdown up.
    closing: CancellationToken,
}

impl Tracker {
    pub fn new(api: SchedulerApi, closing: CancellationToken) -> Arc<Tracker> {
        Arc::new(Tracker {
            api,
            registry: Mutex::new(Registry::default()),
            closing,
        })
    }

    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows the scheduling loop's events until it stops sending them.
    pub async fn follow(self: Arc<Tracker>, mut events: mpsc::UnboundedReceiver<JobEvent>) {
        while let Some(event) = events.recv().await {
            match event {
                JobEvent::TaskStarted(job_id) => {
                    if let Some(tracked) = self.tracked(&job_id)
                        && !tracked.is_done()
                    {
                        if uncount_queued(&tracked)
                            && let Some(waited) = tracked.queued_at.and_then(|at| at.elapsed().ok())
                        {
                            stats::QUEUE_WAIT.record(waited);
                        }
                        let op = executing(&tracked);
                        self.publish(&tracked, op);
                    }
                }
                JobEvent::TaskEnded { job_id, status } => {
                    if let Some(tracked) = self.tracked(&job_id) {
                        self.finish(&tracked, result_of_run(&status));
                    }
                }
                JobEvent::Ended(job_id) => {
                    if let Some(tracked) = self.tracked(&job_id)
                        && let Err(err) = self.refresh(&tracked).await
                    {
                        // The job has ended, so its result is durable: look again shortly.
                        tracing::warn!(operation = %job_id, error = %err, "cannot read an ended job; retrying");
                        let tracker = self.clone();
                        tokio::spawn(async move { tracker.refresh_until_done(tracked).await });
                    }
                }
            }
        }
    }

    fn tracked(&self, name: &str) -> Option<Arc<Tracked>> {
        self.registry().by_name.get(name).cloned()
    }

    /// The unfinished execution of `key`, or a new QUEUED one named `name` that the caller
    /// now owns.
    pub fn join_or_start(&self, key: AcKey, name: String) -> Joined {
        let mut registry = self.registry();
        if let Some(existing) = registry.in_flight.get(&key) {
            if existing.callers.fetch_add(1, Ordering::Relaxed) == 1 {
                stats::MERGED_EXECUTIONS.add(1);
            }
            return Joined::Existing(existing.clone());
        }
        let tracked = new_tracked(name, key, Some(SystemTime::now()));
        count_queued(&tracked);
        registry
            .by_name
            .insert(tracked.name.clone(), tracked.clone());
        registry
            .in_flight
            .insert(tracked.key.clone(), tracked.clone());
        Joined::New(tracked)
    }

    /// A new QUEUED execution named `name` that no other Execute may join.
    pub fn start_unmerged(&self, key: AcKey, name: String) -> Arc<Tracked> {
        let tracked = new_tracked(name, key, Some(SystemTime::now()));
        count_queued(&tracked);
        self.registry()
            .by_name
            .insert(tracked.name.clone(), tracked.clone());
        tracked
    }

    /// A new execution that is already over (a cache hit or a refused action).
    pub fn finished(&self, name: String, key: AcKey, result: OperationResult) -> Arc<Tracked> {
        let tracked = new_tracked(name, key, Some(SystemTime::now()));
        self.registry()
            .by_name
            .insert(tracked.name.clone(), tracked.clone());
        self.finish(&tracked, result);
        tracked
    }

    /// Ends an execution with `result`: its streams get the final operation and end.
    pub fn finish(&self, tracked: &Arc<Tracked>, mut result: OperationResult) {
        if let OperationResult::Response(response) = &mut result {
            // Before the phases are recorded, so that the time queued is one of them.
            stamp_queued(tracked, response);
        }
        if let OperationResult::Response(response) = &result
            && !response.cached_result
            && let Some(metadata) = response
                .result
                .as_ref()
                .and_then(|r| r.execution_metadata.as_ref())
        {
            record_phases(metadata);
        }
        let op = done_operation(tracked, result);
        self.publish(tracked, op);
    }

    /// Sets the operation's state; a finished operation never changes again (an event or a
    /// saga read that raced with its end must not take it back to EXECUTING).
    fn publish(&self, tracked: &Arc<Tracked>, op: Operation) {
        let done = op.done;
        let changed = tracked.state.send_if_modified(|current| {
            if current.done || *current == op {
                return false;
            }
            *current = op;
            true
        });
        if !(changed && done) {
            return;
        }
        uncount_queued(tracked);
        if tracked.callers.load(Ordering::Relaxed) > 1 {
            stats::MERGED_EXECUTIONS.add(-1);
        }
        let mut registry = self.registry();
        if registry
            .in_flight
            .get(&tracked.key)
            .is_some_and(|t| Arc::ptr_eq(t, tracked))
        {
            registry.in_flight.remove(&tracked.key);
        }
        registry.finished.push_back(tracked.name.clone());
        while registry.finished.len() > FINISHED_KEPT {
            if let Some(old) = registry.finished.pop_front() {
                registry.by_name.remove(&old);
            }
        }
    }

    /// Brings an execution up to date with its job's saga (after a missed event, say).
    pub async fn refresh(&self, tracked: &Arc<Tracked>) -> Result<(), ApiError> {
        if tracked.is_done() {
            return Ok(());
        }
        let status = self.api.job_status(&tracked.name).await?;
        let Some((state, run)) = status.tasks.into_values().next() else {
            return Ok(());
        };
        let op = match (state, run) {
            (JobState::Completed | JobState::RolledBack, Some(run)) => {
                done_operation(tracked, result_of_run(&run))
            }
            (JobState::InProgress | JobState::RollingBack, _) => executing(tracked),
            _ => return Ok(()),
        };
        self.publish(tracked, op);
        Ok(())
    }

    /// Retries [`refresh`](Tracker::refresh) with backoff until the execution is done or the
    /// scheduler stops.
    async fn refresh_until_done(&self, tracked: Arc<Tracked>) {
        let mut delay = Duration::from_millis(100);
        while !tracked.is_done() && !self.closing.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.closing.cancelled() => return,
            }
            if let Err(err) = self.refresh(&tracked).await {
                tracing::warn!(operation = %tracked.name, error = %err, "cannot read an ended job");
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    /// The execution called `name`: remembered, or rebuilt from its job in the saga log.
    /// NOT_FOUND when there is no such job or it is not a REAPI execution.
    pub async fn lookup(&self, name: &str) -> Result<Arc<Tracked>, Status> {
        if let Some(tracked) = self.tracked(name) {
            return Ok(tracked);
        }
        let not_found = || Status::not_found(format!("operation {name:?} not found"));
        if uuid::Uuid::parse_str(name).is_err() {
            return Err(not_found());
        }
        let job = self
            .api
            .job(name)
            .await
            .map_err(api_status)?
            .ok_or_else(not_found)?;
        let request = job
            .def
            .tasks
            .first()
            .and_then(|task| task.command.reapi_request.as_deref())
            .and_then(|bytes| v2::ExecuteRequest::decode(bytes).ok())
            .ok_or_else(not_found)?;
        let digest = request
            .action_digest
            .as_ref()
            .and_then(|d| Digest::new(d.hash.clone(), d.size_bytes).ok())
            .ok_or_else(not_found)?;
        let key = AcKey::new(request.instance_name, digest);
        // Rebuilt executions are never joined by new Executes: whether they will finish is only
        // known from here on.
        let tracked = {
            let mut registry = self.registry();
            if let Some(tracked) = registry.by_name.get(name) {
                return Ok(tracked.clone());
            }
            let tracked = new_tracked(name.to_string(), key, None);
            registry.by_name.insert(name.to_string(), tracked.clone());
            tracked
        };
        self.refresh(&tracked).await.map_err(api_status)?;
        if !tracked.is_done() && !self.api.is_active(name).await.map_err(api_status)? {
            // Not in the loop (it ended in between, or it will never run again: a restart
            // without recovery). A second look at the saga tells which.
            self.refresh(&tracked).await.map_err(api_status)?;
            let lost = rpc_status(
                Code::Unavailable,
                "this execution's job is no longer scheduled (the scheduler restarted without \
                 recovering it); execute the action again",
            );
            self.finish(
                &tracked,
                OperationResult::Response(Box::new(status_response(lost))),
            );
        }
        Ok(tracked)
    }

    /// Remembered executions, unfinished first, in name order within each group.
    pub fn list(&self) -> Vec<Operation> {
        let registry = self.registry();
        let mut ops: Vec<Operation> = registry.by_name.values().map(|t| t.current()).collect();
        ops.sort_by(|a, b| a.done.cmp(&b.done).then_with(|| a.name.cmp(&b.name)));
        ops
    }

    /// Executions for the web pages: the unfinished ones (newest first), then the finished ones
    /// this tracker remembers (most recently finished first), `take` of them after `skip`;
    /// with the total of both. Only the page's operations are cloned.
    pub fn page(&self, skip: usize, take: usize) -> OperationsPage {
        let registry = self.registry();
        let mut active: Vec<&Arc<Tracked>> =
            registry.by_name.values().filter(|t| !t.is_done()).collect();
        // Rebuilt executions (no queue time) after the ones Execute accepted here.
        active.sort_by(|a, b| {
            b.queued_at
                .cmp(&a.queued_at)
                .then_with(|| a.name.cmp(&b.name))
        });
        let finished = registry
            .finished
            .iter()
            .rev()
            .filter_map(|name| registry.by_name.get(name));
        let total = active.len() + registry.finished.len();
        let entries = active
            .iter()
            .copied()
            .chain(finished)
            .skip(skip)
            .take(take)
            .map(|t| OperationEntry {
                operation: t.current(),
                queued_at: t.queued_at,
            })
            .collect();
        OperationsPage {
            total,
            active: active.len(),
            entries,
        }
    }

    /// Forgets a finished execution (its job stays in the saga log until collected).
    pub fn forget(&self, name: &str) -> Result<(), Status> {
        let mut registry = self.registry();
        match registry.by_name.get(name) {
            None => Err(Status::not_found(format!("operation {name:?} not found"))),
            Some(tracked) if !tracked.is_done() => Err(Status::failed_precondition(format!(
                "operation {name:?} is not done; cancel it first"
            ))),
            Some(_) => {
                registry.by_name.remove(name);
                registry.finished.retain(|n| n != name);
                Ok(())
            }
        }
    }

    pub fn api(&self) -> &SchedulerApi {
        &self.api
    }
}

fn count_queued(tracked: &Tracked) {
    tracked.counted_queued.store(true, Ordering::Relaxed);
    stats::QUEUED_ACTIONS.add(1);
}

/// Takes an execution out of the queued-actions gauge; true if it was in it.
fn uncount_queued(tracked: &Tracked) -> bool {
    let was = tracked.counted_queued.swap(false, Ordering::Relaxed);
    if was {
        stats::QUEUED_ACTIONS.add(-1);
    }
    was
}

/// The phases a worker timed (REAPI's ExecutedActionMetadata), as Prometheus histograms.
fn record_phases(metadata: &v2::ExecutedActionMetadata) {
    let between = |from: &Option<Timestamp>, to: &Option<Timestamp>| {
        let (from, to) = (from.as_ref()?, to.as_ref()?);
        let from = SystemTime::try_from(*from).ok()?;
        let to = SystemTime::try_from(*to).ok()?;
        to.duration_since(from).ok()
    };
    let m = metadata;
    for (phase, took) in [
        (
            "queued",
            between(&m.queued_timestamp, &m.worker_start_timestamp),
        ),
        (
            "input_fetch",
            between(
                &m.input_fetch_start_timestamp,
                &m.input_fetch_completed_timestamp,
            ),
        ),
        (
            "execution",
            between(
                &m.execution_start_timestamp,
                &m.execution_completed_timestamp,
            ),
        ),
        (
            "output_upload",
            between(
                &m.output_upload_start_timestamp,
                &m.output_upload_completed_timestamp,
            ),
        ),
    ] {
        if let Some(took) = took {
            stats::ACTION_PHASES.record(phase, took);
        }
    }
}

/// One execution as the web pages list it.
#[derive(Clone, Debug)]
pub struct OperationEntry {
    pub operation: Operation,
    /// When Execute accepted it; unknown for executions rebuilt from the saga log.
    pub queued_at: Option<SystemTime>,
}

/// A page of [`Tracker::page`].
#[derive(Clone, Debug)]
pub struct OperationsPage {
    /// Executions remembered in all.
    pub total: usize,
    /// Of which unfinished.
    pub active: usize,
    pub entries: Vec<OperationEntry>,
}

fn new_tracked(name: String, key: AcKey, queued_at: Option<SystemTime>) -> Arc<Tracked> {
    let initial = staged(&name, &key, v2::execution_stage::Value::Queued);
    Arc::new(Tracked {
        name,
        key,
        queued_at,
        state: watch::Sender::new(initial),
        counted_queued: AtomicBool::new(false),
        callers: AtomicUsize::new(1),
    })
}

/// How an execution ended.
pub enum OperationResult {
    Response(Box<v2::ExecuteResponse>),
    /// The operation itself failed (it was cancelled); no ExecuteResponse.
    Error(rpc::Status),
}

fn pack<M: Message>(type_name: &str, message: &M) -> Any {
    Any {
        type_url: format!("{TYPE_PREFIX}{type_name}"),
        value: message.encode_to_vec(),
    }
}

fn metadata(key: &AcKey, stage: v2::execution_stage::Value) -> Any {
    pack(
        "build.bazel.remote.execution.v2.ExecuteOperationMetadata",
        &v2::ExecuteOperationMetadata {
            stage: stage as i32,
            action_digest: Some(scoot_reapi::digest::to_proto(&key.action_digest)),
            ..Default::default()
        },
    )
}

fn staged(name: &str, key: &AcKey, stage: v2::execution_stage::Value) -> Operation {
    Operation {
        name: name.to_string(),
        metadata: Some(metadata(key, stage)),
        done: false,
        result: None,
    }
}

fn executing(tracked: &Tracked) -> Operation {
    staged(
        &tracked.name,
        &tracked.key,
        v2::execution_stage::Value::Executing,
    )
}

/// Records when the execution was queued in its result's metadata, unless the worker did.
fn stamp_queued(tracked: &Tracked, response: &mut v2::ExecuteResponse) {
    if let (Some(queued_at), Some(result)) = (tracked.queued_at, response.result.as_mut()) {
        result
            .execution_metadata
            .get_or_insert_with(Default::default)
            .queued_timestamp
            .get_or_insert(Timestamp::from(queued_at));
    }
}

fn done_operation(tracked: &Tracked, result: OperationResult) -> Operation {
    let result = match result {
        OperationResult::Response(mut response) => {
            stamp_queued(tracked, &mut response);
            operation::Result::Response(pack(
                "build.bazel.remote.execution.v2.ExecuteResponse",
                &*response,
            ))
        }
        OperationResult::Error(status) => operation::Result::Error(status),
    };
    Operation {
        name: tracked.name.clone(),
        metadata: Some(metadata(
            &tracked.key,
            v2::execution_stage::Value::Completed,
        )),
        done: true,
        result: Some(result),
    }
}

/// What a finished run of an action means to the REAPI client.
pub fn result_of_run(run: &RunStatus) -> OperationResult {
    let response = run
        .reapi_response
        .as_deref()
        .map(v2::ExecuteResponse::decode);
    let failed = |code, message: String| {
        OperationResult::Response(Box::new(status_response(rpc_status(code, message))))
    };
    match (run.state, response) {
        (RunState::Complete | RunState::Failed, Some(Ok(response))) => {
            OperationResult::Response(Box::new(response))
        }
        (_, Some(Err(err))) => failed(
            Code::Internal,
            format!("the worker's ExecuteResponse is undecodable: {err}"),
        ),
        (RunState::TimedOut, None) => failed(
            Code::DeadlineExceeded,
            non_empty_or(&run.error, "the action exceeded its timeout"),
        ),
        (RunState::Aborted, None) => OperationResult::Error(rpc_status(
            Code::Cancelled,
            non_empty_or(&run.error, "the execution was cancelled"),
        )),
        // The run mechanism failed (a worker died, say): worth retrying elsewhere.
        (RunState::Failed, None) => failed(
            Code::Unavailable,
            format!("the action could not be run: {}", run.error),
        ),
        (state, _) => failed(
            Code::Internal,
            format!(
                "the action's run ended {state} without a result: {}",
                run.error
            ),
        ),
    }
}

fn non_empty_or(text: &str, default: &str) -> String {
    if text.is_empty() {
        default.to_string()
    } else {
        text.to_string()
    }
}

/// The gRPC status for a scheduler API failure.
pub fn api_status(err: ApiError) -> Status {
    match err {
        // Admission refusals (requestor limits) clear up as jobs finish: worth a retry.
        ApiError::Invalid(message) => Status::resource_exhausted(message),
        ApiError::SagaLog(message) => Status::unavailable(format!("saga log: {message}")),
        ApiError::ShuttingDown => Status::unavailable("the scheduler is shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use scoot_core::{Command, RunId};

    use super::*;
    use crate::fake_worker::{FakeWorker, PATIENCE, Script, TestScheduler};
    use crate::job::{Job, JobDefinition, REAPI_JOB_TYPE, TaskDefinition};

    fn stage(op: &Operation) -> v2::execution_stage::Value {
        let metadata = op.metadata.as_ref().expect("no metadata");
        let metadata = v2::ExecuteOperationMetadata::decode(metadata.value.as_slice()).unwrap();
        v2::execution_stage::Value::try_from(metadata.stage).unwrap()
    }

    /// A tracker following a loop whose one worker runs its first task until told to finish.
    /// The scheduler stops when it is dropped.
    async fn tracking() -> (Arc<FakeWorker>, TestScheduler, Arc<Tracker>) {
        let worker = FakeWorker::new("w");
        worker.script(Script::Hang);
        let mut sched = TestScheduler::start(std::slice::from_ref(&worker), 0).await;
        let tracker = Tracker::new(sched.api.clone(), CancellationToken::new());
        let events = std::mem::replace(&mut sched.job_events, mpsc::unbounded_channel().1);
        tokio::spawn(tracker.clone().follow(events));
        (worker, sched, tracker)
    }

    async fn until(
        state: &mut watch::Receiver<Operation>,
        what: &str,
        reached: impl FnMut(&Operation) -> bool,
    ) -> Operation {
        match tokio::time::timeout(PATIENCE, state.wait_for(reached)).await {
            Ok(Ok(op)) => op.clone(),
            _ => panic!("the operation never got {what}"),
        }
    }

    /// A job like the ones Execute makes, for the action `key`.
    fn action_job(name: &str, key: &AcKey) -> Job {
        let request = v2::ExecuteRequest {
            instance_name: key.instance_name.clone(),
            action_digest: Some(scoot_reapi::digest::to_proto(&key.action_digest)),
            ..Default::default()
        };
        let def = JobDefinition {
            tasks: vec![TaskDefinition {
                task_id: "action".into(),
                command: Command {
                    argv: vec!["action".into()],
                    reapi_request: Some(request.encode_to_vec()),
                    ..Command::default()
                },
            }],
            requestor: "bazel".into(),
            job_type: REAPI_JOB_TYPE.into(),
            ..JobDefinition::default()
        };
        Job::with_id(name.to_string(), def)
    }

    #[tokio::test]
    async fn an_operation_moves_queued_executing_completed_from_loop_events() {
        let (worker, sched, tracker) = tracking().await;
        let key = AcKey::new("main", Digest::new("ab".repeat(32), 142).unwrap());
        let name = uuid::Uuid::new_v4().to_string();
        let Joined::New(tracked) = tracker.join_or_start(key.clone(), name.clone()) else {
            panic!("joined an execution that does not exist");
        };
        let mut state = tracked.subscribe();
        assert_eq!(stage(&state.borrow()), v2::execution_stage::Value::Queued);

        sched.api.run(action_job(&name, &key)).await.unwrap();
        let executing = until(&mut state, "EXECUTING", |op| {
            stage(op) == v2::execution_stage::Value::Executing
        })
        .await;
        assert!(!executing.done);
        assert!(
            matches!(tracker.join_or_start(key.clone(), "other".into()), Joined::Existing(t) if t.name == name),
            "an identical Execute did not join the running one"
        );

        let response = v2::ExecuteResponse {
            result: Some(v2::ActionResult {
                exit_code: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        worker.finish(&RunId("0".into()), |s| {
            s.state = RunState::Complete;
            s.reapi_response = Some(response.encode_to_vec());
        });
        let done = until(&mut state, "done", |op| op.done).await;
        assert_eq!(stage(&done), v2::execution_stage::Value::Completed);
        let Some(operation::Result::Response(any)) = done.result else {
            panic!("no response: {:?}", done.result);
        };
        let got = v2::ExecuteResponse::decode(any.value.as_slice()).unwrap();
        let result = got.result.expect("no action result");
        assert_eq!(result.exit_code, 7);
        assert!(
            result
                .execution_metadata
                .is_some_and(|m| m.queued_timestamp.is_some()),
            "no queued timestamp"
        );
        assert!(
            matches!(tracker.join_or_start(key, "again".into()), Joined::New(_)),
            "a finished execution was joined"
        );
    }

    #[tokio::test]
    async fn pages_list_unfinished_executions_then_the_latest_finished() {
        let sched = TestScheduler::start(&[], 0).await;
        let tracker = Tracker::new(sched.api.clone(), CancellationToken::new());
        let key = |n: u8| AcKey::new("", Digest::new(format!("{n:02x}").repeat(32), 1).unwrap());
        for (n, name) in ["done-1", "done-2", "done-3"].into_iter().enumerate() {
            let response = v2::ExecuteResponse::default();
            tracker.finished(
                name.into(),
                key(n as u8),
                OperationResult::Response(Box::new(response)),
            );
        }
        tracker.start_unmerged(key(10), "queued-1".into());
        tracker.start_unmerged(key(11), "queued-2".into());
        let names = |page: OperationsPage| -> Vec<String> {
            page.entries.into_iter().map(|e| e.operation.name).collect()
        };
        let all = tracker.page(0, 50);
        assert_eq!((all.total, all.active), (5, 2));
        let listed = names(all);
        // Unfinished first; queued at the same instant they are in name order.
        assert!(listed[..2].contains(&"queued-1".to_string()), "{listed:?}");
        assert_eq!(listed[2..], ["done-3", "done-2", "done-1"]);
        assert_eq!(names(tracker.page(3, 50)), ["done-2", "done-1"]);
        assert!(tracker.page(usize::MAX, 50).entries.is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_execution_ends_with_cancelled() {
        let (worker, sched, tracker) = tracking().await;
        let key = AcKey::new("", Digest::new("cd".repeat(32), 10).unwrap());
        let name = uuid::Uuid::new_v4().to_string();
        let tracked = tracker.start_unmerged(key.clone(), name.clone());
        let mut state = tracked.subscribe();
        sched.api.run(action_job(&name, &key)).await.unwrap();
        worker.until("the run", |r| r.runs.len() == 1).await;
        sched.api.kill_job(&name).await.unwrap();
        let done = until(&mut state, "done", |op| op.done).await;
        let Some(operation::Result::Error(status)) = done.result else {
            panic!("not an error: {:?}", done.result);
        };
        assert_eq!(status.code, Code::Cancelled as i32);
        assert!(
            status.message.starts_with("UserRequested"),
            "{}",
            status.message
        );
        assert_eq!(worker.read(|r| r.aborted.len()), 1);
    }
}
