//! The Execution service: Execute turns an action into a one-task Scoot job (as Scoot did) and
//! streams its operation until it is done; WaitExecution streams an existing one.
//!
//! Before queueing, the action is checked against the CAS this scheduler serves, with the check
//! workers make ([`scoot_reapi::inputs`]): the Action, its Command and every Directory and file of
//! its input root must be present (else the operation ends at once with FAILED_PRECONDITION
//! listing each missing blob, which is what makes Bazel upload them and retry), and the Action
//! must name both, with names, output paths and platform properties well formed (else
//! INVALID_ARGUMENT). A worker therefore only meets a missing blob when one was evicted in
//! between.
//!
//! The action's platform (`Action.platform`, else `Command.platform`) goes with its task
//! (`Command::platform`), and the loop is asked whether any worker can run it: when workers are
//! ready and none of them (nor any being checked) offers what it asks for, the operation ends
//! at once with FAILED_PRECONDITION naming the property; otherwise the action is queued (and the
//! loop ends it the same way should that change while it waits).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use scoot_cas_services::{AcKey, CasError, CasServices};
use scoot_core::{Command, Digest, LogTags, PlatformProperty};
use scoot_proto::longrunning::Operation;
use scoot_proto::reapi::v2;
use scoot_proto::reapi::v2::execution_server::Execution;
use scoot_reapi::digest::{check_function, required};
use scoot_reapi::inputs::{self, BlobSource, CheckedInputs, InputsError, MAX_MESSAGE_BYTES};
use scoot_reapi::platform;
use scoot_reapi::status::{missing_blobs_response, rpc_status, status_response};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::operations::{Joined, OperationResult, STREAM_KEEPALIVE, Tracked, Tracker, api_status};
use crate::job::{Job, JobDefinition, REAPI_JOB_TYPE, TaskDefinition};
use crate::state::Placement;
use crate::stats;

pub type OperationStream = Pin<Box<dyn Stream<Item = Result<Operation, Status>> + Send>>;

/// The requestor of every action's job: Scoot's per-requestor job limit does not apply to
/// them (see [`REAPI_JOB_TYPE`]), and one requestor keeps them from using up the requestor limit.
pub const REAPI_REQUESTOR: &str = "bazel";
/// The argv of an action's task; workers run the action's own Command instead (Scoot's name).
pub const ARGV_PLACEHOLDER: &str = "BZ_PLACEHOLDER";
/// Longer action timeouts are cut to this (what the Worker API's i32 milliseconds can carry).
const MAX_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);

pub struct ExecutionService {
    tracker: Arc<Tracker>,
    cas: CasServices,
}

impl ExecutionService {
    pub fn new(tracker: Arc<Tracker>, cas: CasServices) -> ExecutionService {
        ExecutionService { tracker, cas }
    }
}

/// Why an action was not queued.
enum Refusal {
    /// Reported in the operation's ExecuteResponse (missing inputs).
    Response(Box<v2::ExecuteResponse>),
    /// Reported as the RPC's error (a malformed request).
    Status(Status),
}

impl From<InputsError<CasError>> for Refusal {
    fn from(err: InputsError<CasError>) -> Refusal {
        match err {
            InputsError::Invalid(invalid) => Refusal::Status(invalid.into()),
            InputsError::Missing(missing) => {
                Refusal::Response(Box::new(missing_blobs_response(&missing)))
            }
            InputsError::Source(err) => Refusal::Status(err.into()),
        }
    }
}

/// This scheduler's own CAS, read in-process.
struct LocalCas<'a>(&'a CasServices);

impl BlobSource for LocalCas<'_> {
    type Error = CasError;

    async fn read(&self, digests: &[Digest]) -> Result<Vec<(Digest, Bytes)>, CasError> {
        let mut found = Vec::with_capacity(digests.len());
        for digest in digests {
            match self.0.read_blob(digest, MAX_MESSAGE_BYTES).await {
                Ok(data) => found.push((digest.clone(), data)),
                Err(e) if e.code == tonic::Code::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found)
    }

    async fn find_missing(&self, files: &[Digest]) -> Result<Vec<Digest>, CasError> {
        self.0.find_missing(files).await
    }
}

/// Whether the Command and every Directory and file of the input root are in `cas` and well
/// formed.
async fn check_inputs(cas: &CasServices, action: &v2::Action) -> Result<CheckedInputs, Refusal> {
    Ok(inputs::check_inputs(&LocalCas(cas), action).await?)
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = OperationStream;
    type WaitExecutionStream = OperationStream;

    /// Logged in a span naming the action and, once it has one, the operation: the same
    /// name is the job id of the task that runs it, on the scheduler and on the worker.
    #[tracing::instrument(skip_all, fields(action, operation))]
    async fn execute(
        &self,
        request: Request<v2::ExecuteRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let request = request.into_inner();
        check_function(request.digest_function)?;
        let action = required(&request.action_digest, "action_digest")?;
        let key = AcKey::new(request.instance_name.clone(), action);
        let span = tracing::Span::current();
        span.record("action", tracing::field::display(&key.action_digest));
        if !request.skip_cache_lookup
            && let Some(result) = self.cas.cached_result(&key).await?
        {
            tracing::debug!(action = %key.action_digest, "action cache hit");
            stats::EXECUTE_REQUESTS.inc("cached");
            let response = v2::ExecuteResponse {
                result: Some(result),
                cached_result: true,
                status: Some(rpc_status(tonic::Code::Ok, "")),
                ..Default::default()
            };
            return Ok(self.finished(key, response));
        }
        let action = match self.read_action(&key.action_digest).await {
            Ok(action) => action,
            Err(Refusal::Response(response)) => {
                stats::EXECUTE_REQUESTS
                    .inc(outcome_of(response.status.as_ref().map_or(0, |s| s.code)));
                return Ok(self.finished(key, *response));
            }
            Err(Refusal::Status(status)) => {
                stats::EXECUTE_REQUESTS.inc(outcome_of(status.code() as i32));
                return Err(status);
            }
        };
        let name = uuid::Uuid::new_v4().to_string();
        span.record("operation", name.as_str());
        // The API forbids merging executions of actions that must not be cached (flaky-test
        // reruns, say): each runs by itself.
        let tracked = if action.do_not_cache {
            self.tracker.start_unmerged(key, name)
        } else {
            match self.tracker.join_or_start(key, name) {
                Joined::Existing(tracked) => {
                    tracing::debug!(operation = %tracked.name, "joining an identical execution");
                    stats::EXECUTE_REQUESTS.inc("merged");
                    return Ok(Response::new(stream(&self.tracker, tracked)));
                }
                Joined::New(tracked) => tracked,
            }
        };
        let unqueued = FinishIfDropped {
            tracker: &self.tracker,
            tracked: Some(tracked.clone()),
        };
        let started = self.start(&tracked, &request, &action).await;
        unqueued.disarm();
        match started {
            Ok(()) => {
                stats::EXECUTE_REQUESTS.inc("queued");
                Ok(Response::new(stream(&self.tracker, tracked)))
            }
            Err(Refusal::Response(response)) => {
                stats::EXECUTE_REQUESTS
                    .inc(outcome_of(response.status.as_ref().map_or(0, |s| s.code)));
                self.tracker
                    .finish(&tracked, OperationResult::Response(response));
                Ok(Response::new(stream(&self.tracker, tracked)))
            }
            Err(Refusal::Status(status)) => {
                stats::EXECUTE_REQUESTS.inc(outcome_of(status.code() as i32));
                let rpc = rpc_status(status.code(), status.message());
                self.tracker.finish(&tracked, OperationResult::Error(rpc));
                Err(status)
            }
        }
    }

    async fn wait_execution(
        &self,
        request: Request<v2::WaitExecutionRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let tracked = self.tracker.lookup(&request.into_inner().name).await?;
        Ok(Response::new(stream(&self.tracker, tracked)))
    }
}

/// The `outcome` label of an Execute refused with `code`.
fn outcome_of(code: i32) -> &'static str {
    match tonic::Code::from_i32(code) {
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::InvalidArgument => "invalid_argument",
        _ => "error",
    }
}

/// Ends an execution whose Execute call went away before its job was queued (the client
/// hung up and the handler was dropped), so that callers who joined it are not left waiting.
struct FinishIfDropped<'a> {
    tracker: &'a Tracker,
    tracked: Option<Arc<Tracked>>,
}

impl FinishIfDropped<'_> {
    fn disarm(mut self) {
        self.tracked = None;
    }
}

impl Drop for FinishIfDropped<'_> {
    fn drop(&mut self) {
        if let Some(tracked) = self.tracked.take() {
            let status = rpc_status(
                tonic::Code::Unavailable,
                "the Execute call that started this execution ended before the action was queued",
            );
            self.tracker.finish(
                &tracked,
                OperationResult::Response(Box::new(status_response(status))),
            );
        }
    }
}

impl ExecutionService {
    /// A new execution that is already over.
    fn finished(&self, key: AcKey, response: v2::ExecuteResponse) -> Response<OperationStream> {
        let name = uuid::Uuid::new_v4().to_string();
        let tracked =
            self.tracker
                .finished(name, key, OperationResult::Response(Box::new(response)));
        Response::new(stream(&self.tracker, tracked))
    }

    /// Checks that everything `action` needs is in the CAS and well formed, and that a worker
    /// can run it, then queues it.
    async fn start(
        &self,
        tracked: &Tracked,
        request: &v2::ExecuteRequest,
        action: &v2::Action,
    ) -> Result<(), Refusal> {
        // Only the execution that will run the action checks (joiners do not).
        let checked = check_inputs(&self.cas, action).await?;
        let placement = self
            .tracker
            .api()
            .placement(checked.platform)
            .await
            .map_err(|e| Refusal::Status(api_status(e)))?;
        if let Placement::Never(why) = placement {
            tracing::info!(operation = %tracked.name, action = %tracked.key.action_digest,
                reason = %why, "no worker can run the action");
            let status = rpc_status(tonic::Code::FailedPrecondition, why);
            return Err(Refusal::Response(Box::new(status_response(status))));
        }
        let platform = platform::action_properties(action, &checked.command);
        self.queue(tracked, request, action, platform)
            .await
            .map_err(Refusal::Status)
    }

    /// Queues the checked `action`, whose platform properties are `platform`, as a job under
    /// the operation's name.
    async fn queue(
        &self,
        tracked: &Tracked,
        request: &v2::ExecuteRequest,
        action: &v2::Action,
        platform: Vec<PlatformProperty>,
    ) -> Result<(), Status> {
        let timeout = match &action.timeout {
            Some(t) if t.seconds < 0 || t.nanos < 0 => {
                return Err(Status::invalid_argument(format!(
                    "invalid action timeout {t:?}"
                )));
            }
            Some(t) => Some(Duration::new(t.seconds as u64, t.nanos as u32).min(MAX_TIMEOUT))
                .filter(|d| !d.is_zero()),
            None => None,
        };
        let digest = &tracked.key.action_digest;
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let task_id = format!("Bazel_ExecuteRequest_{}_{unix}", digest.hash);
        let priority = request
            .execution_policy
            .as_ref()
            .map_or(0, |p| scoot_priority(p.priority));
        let def = JobDefinition {
            tasks: vec![TaskDefinition {
                task_id,
                command: Command {
                    argv: vec![ARGV_PLACEHOLDER.to_string()],
                    timeout,
                    snapshot_id: format!("bz-{}-{}", digest.hash, digest.size_bytes),
                    tags: LogTags::default(),
                    reapi_request: Some(request.encode_to_vec()),
                    platform,
                    ..Command::default()
                },
            }],
            priority,
            tag: tracked.name.clone(),
            requestor: REAPI_REQUESTOR.to_string(),
            job_type: REAPI_JOB_TYPE.to_string(),
            ..JobDefinition::default()
        };
        let job = Job::with_id(tracked.name.clone(), def);
        self.tracker.api().run(job).await.map_err(api_status)?;
        tracing::info!(operation = %tracked.name, action = %digest, priority, "action queued");
        Ok(())
    }

    /// The Action, read and decoded (FAILED_PRECONDITION when the CAS lacks it).
    async fn read_action(&self, digest: &Digest) -> Result<v2::Action, Refusal> {
        Ok(inputs::read_action(&LocalCas(&self.cas), digest).await?)
    }
}

/// REAPI priorities are "lower runs sooner, 0 is the default"; Scoot's are 0 (default) to 2
/// (most urgent). Values past either end are clamped.
pub fn scoot_priority(reapi_priority: i32) -> i32 {
    match reapi_priority {
        i32::MIN..=-2 => 2,
        -1 => 1,
        _ => 0,
    }
}

/// The operation's states from now until it is done, repeating the current one every
/// [`STREAM_KEEPALIVE`] while nothing changes; UNAVAILABLE when the scheduler stops first.
pub fn stream(tracker: &Tracker, tracked: Arc<Tracked>) -> OperationStream {
    let receiver = tracked.subscribe();
    let closing = tracker.closing().clone();
    Box::pin(futures::stream::unfold(
        Some((tracked, receiver, true)),
        move |state| {
            let closing = closing.clone();
            async move {
                let (tracked, mut receiver, first) = state?;
                if !first {
                    tokio::select! {
                        changed = tokio::time::timeout(STREAM_KEEPALIVE, receiver.changed()) => {
                            if let Ok(Err(_)) = changed {
                                return None;
                            }
                        }
                        _ = closing.cancelled() => {
                            let status = Status::unavailable(format!(
                                "the scheduler is stopping; wait for operation {} again",
                                tracked.name
                            ));
                            return Some((Err(status), None));
                        }
                    }
                }
                let op = receiver.borrow_and_update().clone();
                let next = (!op.done).then_some((tracked, receiver, false));
                Some((Ok(op), next))
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use scoot_blobstore::{MemoryBlobStore, sha256_digest};
    use scoot_cas_services::{CasConfig, MemoryActionCache};
    use scoot_reapi::digest::to_proto;

    use super::*;

    /// The scheduler refuses what workers refuse (see scoot-action-runner's
    /// `actions_the_scheduler_refuses_are_refused_alike`): an Action without an input root, and
    /// messages above the one size limit, are INVALID_ARGUMENT.
    #[tokio::test]
    async fn actions_are_refused_as_workers_refuse_them() {
        let store = Arc::new(MemoryBlobStore::new(1 << 20));
        let cas = scoot_cas_services::server(
            store.clone(),
            Arc::new(MemoryActionCache::new(1 << 20)),
            CasConfig::default(),
        );
        let command = v2::Command {
            arguments: vec!["true".into()],
            ..Default::default()
        }
        .encode_to_vec();
        let command_digest = sha256_digest(&command);
        scoot_blobstore::put(&*store, &command_digest, command.into())
            .await
            .unwrap();
        let action = |root: Option<Digest>| v2::Action {
            command_digest: Some(to_proto(&command_digest)),
            input_root_digest: root.as_ref().map(to_proto),
            ..Default::default()
        };
        assert!(
            check_inputs(&cas, &action(Some(Digest::empty())))
                .await
                .is_ok()
        );
        let oversized = Digest {
            hash: sha256_digest(b"a Directory too large to read").hash,
            size_bytes: MAX_MESSAGE_BYTES as i64 + 1,
        };
        let cases = [
            (None, "Action.input_root_digest: no digest given"),
            (Some(oversized), "is larger than 16777216 bytes"),
        ];
        for (root, expected) in cases {
            match check_inputs(&cas, &action(root)).await {
                Err(Refusal::Status(status)) => {
                    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
                    assert!(status.message().contains(expected), "{status:?}");
                }
                Err(Refusal::Response(response)) => panic!("refused with {response:?}"),
                Ok(_) => panic!("accepted, expected {expected:?}"),
            }
        }
    }

    /// Execute asks the loop before it queues: an action no ready worker can run ends at once
    /// with FAILED_PRECONDITION naming the property, and one that can run goes to a worker
    /// with its platform.
    #[tokio::test(start_paused = true)]
    async fn actions_no_worker_can_run_are_refused_before_they_are_queued() {
        use scoot_reapi::platform::Requirements;
        use tokio_stream::StreamExt;

        use crate::fake_worker::{FakeWorker, TestScheduler};
        use crate::reapi::operations::Tracker;

        let worker = FakeWorker::new("w");
        worker.set_platform(&[
            ("OSFamily", "linux"),
            ("ISA", "x86-64"),
            ("sandbox", "rootfs"),
        ]);
        let mut sched = TestScheduler::start(std::slice::from_ref(&worker), 0).await;
        let tracker = Tracker::new(
            sched.api.clone(),
            tokio_util::sync::CancellationToken::new(),
        );
        let events = std::mem::replace(
            &mut sched.job_events,
            tokio::sync::mpsc::unbounded_channel().1,
        );
        tokio::spawn(tracker.clone().follow(events));
        let store = Arc::new(MemoryBlobStore::new(1 << 20));
        let cas = scoot_cas_services::server(
            store.clone(),
            Arc::new(MemoryActionCache::new(1 << 20)),
            CasConfig::default(),
        );
        let service = ExecutionService::new(tracker, cas);
        let put = |message: Vec<u8>| {
            let store = store.clone();
            async move {
                let digest = sha256_digest(&message);
                scoot_blobstore::put(&*store, &digest, message.into())
                    .await
                    .unwrap();
                digest
            }
        };
        let command = put(v2::Command {
            arguments: vec!["true".into()],
            ..Default::default()
        }
        .encode_to_vec())
        .await;
        let action_for = |isa: &str| v2::Action {
            command_digest: Some(to_proto(&command)),
            input_root_digest: Some(to_proto(&Digest::empty())),
            platform: Some(v2::Platform {
                properties: vec![
                    v2::platform::Property {
                        name: "OSFamily".into(),
                        value: "linux".into(),
                    },
                    v2::platform::Property {
                        name: "ISA".into(),
                        value: isa.into(),
                    },
                ],
            }),
            ..Default::default()
        };
        // Until the worker has been checked its platform is unknown, and actions are queued.
        // It offers rootfs only, so an action asking for nothing is refused once it is known.
        while matches!(
            sched.api.placement(Requirements::default()).await.unwrap(),
            Placement::Later(_)
        ) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let execute = |action: Digest| {
            service.execute(Request::new(v2::ExecuteRequest {
                action_digest: Some(to_proto(&action)),
                skip_cache_lookup: true,
                ..Default::default()
            }))
        };

        let sparc = put(action_for("sparc").encode_to_vec()).await;
        let mut ops = execute(sparc).await.unwrap().into_inner();
        let op = ops.next().await.unwrap().unwrap();
        assert!(op.done, "an action no worker can run was queued");
        let Some(scoot_proto::longrunning::operation::Result::Response(any)) = op.result else {
            panic!("no response: {op:?}");
        };
        let response = v2::ExecuteResponse::decode(any.value.as_slice()).unwrap();
        let status = response.status.unwrap();
        assert_eq!(status.code, tonic::Code::FailedPrecondition as i32);
        assert!(status.message.contains("ISA=sparc"), "{status:?}");
        assert_eq!(worker.read(|r| r.runs.len()), 0);

        let x86 = put(action_for("x86-64").encode_to_vec()).await;
        let mut ops = execute(x86).await.unwrap().into_inner();
        while let Some(op) = ops.next().await {
            if op.unwrap().done {
                break;
            }
        }
        let ran = worker.read(|r| {
            r.runs
                .iter()
                .map(|(c, _)| c.platform.clone())
                .collect::<Vec<_>>()
        });
        assert_eq!(
            ran,
            vec![vec![
                PlatformProperty::new("OSFamily", "linux"),
                PlatformProperty::new("ISA", "x86-64"),
            ]]
        );
    }

    #[test]
    fn priorities_map_lower_to_more_urgent() {
        assert_eq!(scoot_priority(0), 0);
        assert_eq!(scoot_priority(5), 0);
        assert_eq!(scoot_priority(-1), 1);
        assert_eq!(scoot_priority(-2), 2);
        assert_eq!(scoot_priority(i32::MIN), 2);
    }
}
