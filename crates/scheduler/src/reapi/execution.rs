//! The Execution service: Execute turns an action into a one-task Scoot job (as Scoot did) and
//! streams its operation until it is done; WaitExecution streams an existing one.
//!
//! Before queueing, the action is checked against the CAS this scheduler serves, with the check
//! workers make ([`scoot_reapi::inputs`]): the Action, its Command and every Directory and file of
//! its input root must be present (else the operation ends at once with FAILED_PRECONDITION
//! listing each missing blob, which is what makes Bazel upload them and retry), and the Action
//! must name both, with names and output paths well formed (else INVALID_ARGUMENT). A worker
//! therefore only meets a missing blob when one was evicted in between.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use scoot_cas_services::{AcKey, CasError, CasServices};
use scoot_core::{Command, Digest, LogTags};
use scoot_proto::longrunning::Operation;
use scoot_proto::reapi::v2;
use scoot_proto::reapi::v2::execution_server::Execution;
use scoot_reapi::digest::{check_function, required};
use scoot_reapi::inputs::{self, BlobSource, InputsError, MAX_MESSAGE_BYTES};
use scoot_reapi::status::{missing_blobs_response, rpc_status, status_response};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::operations::{Joined, OperationResult, STREAM_KEEPALIVE, Tracked, Tracker, api_status};
use crate::job::{Job, JobDefinition, REAPI_JOB_TYPE, TaskDefinition};

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
async fn check_inputs(cas: &CasServices, action: &v2::Action) -> Result<(), Refusal> {
    inputs::check_inputs(&LocalCas(cas), action).await?;
    Ok(())
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = OperationStream;
    type WaitExecutionStream = OperationStream;

    async fn execute(
        &self,
        request: Request<v2::ExecuteRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let request = request.into_inner();
        check_function(request.digest_function)?;
        let action = required(&request.action_digest, "action_digest")?;
        let key = AcKey::new(request.instance_name.clone(), action);
        if !request.skip_cache_lookup
            && let Some(result) = self.cas.cached_result(&key).await?
        {
            tracing::debug!(action = %key.action_digest, "action cache hit");
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
            Err(Refusal::Response(response)) => return Ok(self.finished(key, *response)),
            Err(Refusal::Status(status)) => return Err(status),
        };
        let name = uuid::Uuid::new_v4().to_string();
        // The API forbids merging executions of actions that must not be cached (flaky-test
        // reruns, say): each runs by itself.
        let tracked = if action.do_not_cache {
            self.tracker.start_unmerged(key, name)
        } else {
            match self.tracker.join_or_start(key, name) {
                Joined::Existing(tracked) => {
                    tracing::debug!(operation = %tracked.name, "joining an identical execution");
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
            Ok(()) => Ok(Response::new(stream(&self.tracker, tracked))),
            Err(Refusal::Response(response)) => {
                self.tracker
                    .finish(&tracked, OperationResult::Response(response));
                Ok(Response::new(stream(&self.tracker, tracked)))
            }
            Err(Refusal::Status(status)) => {
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

    /// Checks that everything `action` needs is in the CAS and well formed, then queues it.
    async fn start(
        &self,
        tracked: &Tracked,
        request: &v2::ExecuteRequest,
        action: &v2::Action,
    ) -> Result<(), Refusal> {
        // Only the execution that will run the action checks (joiners do not).
        check_inputs(&self.cas, action).await?;
        self.queue(tracked, request, action)
            .await
            .map_err(Refusal::Status)
    }

    /// Queues the checked `action` as a job under the operation's name.
    async fn queue(
        &self,
        tracked: &Tracked,
        request: &v2::ExecuteRequest,
        action: &v2::Action,
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
                Ok(()) => panic!("accepted, expected {expected:?}"),
            }
        }
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
