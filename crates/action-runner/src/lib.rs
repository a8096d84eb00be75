//! Runs REAPI actions on a worker: the [`ActionRunner`] behind runs whose command is an encoded
//! `ExecuteRequest`.
//!
//! [`ReapiActions::prepare`](ActionRunner::prepare) fetches the Action, the Command and the whole
//! input tree (Directory messages level by level, in batches), validates them and checks that
//! every input blob exists with [`scoot_reapi::inputs::check_inputs`] (the scheduler's check),
//! lays the input root out in a fresh directory under [`ActionConfig::work_dir`] and creates
//! the parents of the outputs. The process is then run by the runner from the returned
//! [`ActionSpec`]: exactly the Command's arguments and environment, in its working directory.
//! [`PreparedAction::finish`] collects the declared outputs, uploads them with stdout and
//! stderr, writes the action cache and returns the `ExecuteResponse`;
//! [`PreparedAction::release`] removes the directory.
//!
//! Invariants:
//! * Input files come from a local, size-bounded CAS cache in [`ActionConfig::cache_dir`] (see
//!   `cache`): read-only, one entry per blob and mode, fetched once and verified before any
//!   action sees it. They are hard links when actions run as a user who cannot write the
//!   cache's files ([`ActionConfig::user`]), copies otherwise; an entry whose file changed
//!   anyway is dropped and fetched again. The cache is emptied at open. `open` refuses a cache
//!   on another filesystem than the work directory, where links are impossible.
//! * With a [`ActionConfig::user`], the action runs as that user and owns the directories of
//!   its input root, so it can write its outputs; `open` checks that it can reach the work
//!   directory.
//! * A failure reaches the client as an `ExecuteResponse` status: missing blobs are
//!   FAILED_PRECONDITION with one `MISSING` violation per blob (all of them, not the first),
//!   invalid actions INVALID_ARGUMENT, CAS trouble UNAVAILABLE or INTERNAL.
//! * A result goes into the action cache only when the action exited 0, did not ask for
//!   `do_not_cache`, and all its outputs were uploaded; failing to write the cache is logged,
//!   not fatal.
//! * Filesystem work runs on tokio's blocking pool. The CAS connection is made lazily, so a
//!   worker can start before its CAS server.
//! * `ExecutedActionMetadata` records every phase: worker start, input fetch, execution (end of
//!   prepare to start of finish), output upload, worker completion. The queued time is the
//!   scheduler's to fill.

mod cache;
mod failure;
mod inputs;
mod outputs;
#[cfg(test)]
mod tests;

use scoot_security::ClientSecurity;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use prost::Message;
pub use scoot_cas_client::sharded::DEFAULT_REPLICAS;
use scoot_cas_client::{ClientError, ShardedCas};
pub use scoot_cas_client::{ShardSpec, ShardSpecError};
use scoot_core::{Digest, LogTags, exit_code};
use scoot_proto::reapi::v2;
use scoot_proto::{prost_types, rpc};
use scoot_reapi::digest::{check_function, from_proto};
use scoot_reapi::platform::{self, Mode, Property};
use scoot_reapi::rules::CommandLayout;
use scoot_runner::action::{ActionFailure, ActionRunner, ActionSpec, PreparedAction};
use scoot_runner::execer::identity::Identity;
use scoot_runner::execer::{SandboxLayout, SandboxRequest};
use tracing::Instrument;

use crate::cache::{Cache, Staging};
use crate::failure::Failure;

/// Per-action directories in the work directory are named with this prefix; leftovers of an
/// earlier process are removed at open.
const ACTION_DIR_PREFIX: &str = "action-";

#[derive(Clone, Debug)]
pub struct ActionConfig {
    /// The CAS and action cache: one server (`host:port`, `http://host:port` or
    /// `grpcs://host:port`, with [`ShardSpec::single`]) or the shards of a sharded CAS.
    pub cas: ShardSpec,
    /// TLS and token for the CAS.
    pub security: ClientSecurity,
    /// Per-action directories are created under here.
    pub work_dir: PathBuf,
    /// The local CAS cache; must be on the same filesystem as `work_dir`.
    pub cache_dir: PathBuf,
    /// Bound on the cached blobs' total size.
    pub cache_max_bytes: u64,
    /// Reported as `ExecutedActionMetadata.worker`.
    pub worker_name: String,
    /// Who actions run as; `None` for the worker itself (see
    /// [`Identity::for_actions`]). Inputs are hard links into the cache only when this is a
    /// user other than root and the worker, who cannot write the cache's read-only files.
    pub user: Option<Identity>,
    /// What this worker offers: its facts and one `sandbox` property per mode it runs actions
    /// in, or `sandbox=none` when it runs them unsandboxed (see [`scoot_reapi::platform`]).
    pub platform: Vec<Property>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the cache directory {cache_dir} and the work directory {work_dir} are on different \
         filesystems; inputs are hard-linked from the cache, so they must share one"
    )]
    DifferentFilesystems {
        cache_dir: PathBuf,
        work_dir: PathBuf,
    },
    #[error(
        "actions run as {user} cannot reach the work directory {work_dir}: {blocked} is not \
         searchable by them; choose a directory they can reach, or another user"
    )]
    Unreachable {
        user: Identity,
        work_dir: PathBuf,
        blocked: PathBuf,
    },
    #[error("CAS address: {0}")]
    Cas(#[from] ClientError),
    #[error("setting up the directories failed: {0}")]
    Setup(#[from] tokio::task::JoinError),
}

/// The worker's [`ActionRunner`]. Cloning is cheap; clones share the cache and connection.
#[derive(Clone)]
pub struct ReapiActions {
    inner: Arc<Shared>,
}

struct Shared {
    /// For the empty instance name; each action uses its request's.
    client: ShardedCas,
    cache: Arc<Cache>,
    work_dir: PathBuf,
    worker_name: String,
    user: Option<Identity>,
    platform: Vec<Property>,
}

impl ReapiActions {
    /// Creates the directories, empties the cache, removes action directories left by an
    /// earlier process and sets up a lazy connection to the CAS (which need not be up yet).
    pub async fn open(config: ActionConfig) -> Result<ReapiActions, ActionError> {
        let client = ShardedCas::connect_lazy(&config.cas, "", &config.security)?;
        let (work_dir, cache_dir) = (config.work_dir.clone(), config.cache_dir.clone());
        let (max_bytes, user) = (config.cache_max_bytes, config.user);
        let cache =
            tokio::task::spawn_blocking(move || set_up(&work_dir, &cache_dir, max_bytes, user))
                .await??;
        Ok(ReapiActions {
            inner: Arc::new(Shared {
                client,
                cache: Arc::new(cache),
                work_dir: config.work_dir,
                worker_name: config.worker_name,
                user: config.user,
                platform: config.platform,
            }),
        })
    }

    async fn prepare_action(
        &self,
        request: &[u8],
        span: tracing::Span,
    ) -> Result<PreparedReapiAction, Failure> {
        let shared = &self.inner;
        let mut metadata = v2::ExecutedActionMetadata {
            worker: shared.worker_name.clone(),
            worker_start_timestamp: now(),
            ..Default::default()
        };
        let request = v2::ExecuteRequest::decode(request)
            .map_err(|e| Failure::invalid(format!("the ExecuteRequest cannot be decoded: {e}")))?;
        check_function(request.digest_function)?;
        let action_digest = from_proto(
            request.action_digest.as_ref(),
            "ExecuteRequest.action_digest",
        )?;
        let client = shared.client.with_instance(&request.instance_name);
        metadata.input_fetch_start_timestamp = now();
        let inputs = inputs::fetch(&client, &action_digest, &shared.cache).await?;
        if let Some(unmet) = inputs.platform.first_unmet(&shared.platform) {
            return Err(Failure::new(
                tonic::Code::FailedPrecondition,
                format!(
                    "this worker cannot honour the platform property {unmet}; it offers {}",
                    shared
                        .platform
                        .iter()
                        .map(Property::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }

        let dir = shared
            .work_dir
            .join(format!("{ACTION_DIR_PREFIX}{}", uuid::Uuid::new_v4()));
        // Owned from before it exists: an abort or timeout can drop this future at any await,
        // and the half-laid-out input root must not stay behind.
        let unfinished = RemoveOnDrop(Some((shared.cache.clone(), dir.clone())));
        let created = dir.clone();
        tokio::task::spawn_blocking(move || std::fs::create_dir(&created))
            .await?
            .map_err(|e| Failure::io(&e, format!("creating {}", dir.display())))?;
        inputs::materialise(&client, &shared.cache, &inputs, &dir, shared.user).await?;
        let mode = inputs.platform.mode();
        if mode == Mode::Rootfs {
            let root = dir.clone();
            tokio::task::spawn_blocking(move || inputs::check_shell(&root)).await??;
        }
        unfinished.disarm();
        metadata.input_fetch_completed_timestamp = now();
        tracing::info!(
            action = %action_digest,
            instance = %request.instance_name,
            directories = inputs.directories.len(),
            files = inputs.file_count,
            cache_bytes = shared.cache.used_bytes(),
            "inputs ready"
        );
        let command = &inputs.command;
        let sandboxed = shared
            .platform
            .iter()
            .any(|p| p.name == platform::SANDBOX && p.value == mode.name());
        let sandbox = sandboxed.then(|| SandboxRequest {
            layout: match mode {
                Mode::HostTools => SandboxLayout::HostTools,
                Mode::Rootfs => SandboxLayout::Rootfs,
            },
            root: dir.clone(),
            network: inputs.platform.network,
            uid: inputs.platform.unix_uid,
            gid: inputs.platform.unix_gid,
        });
        let spec = ActionSpec {
            argv: command.arguments.clone(),
            env: command
                .environment_variables
                .iter()
                .map(|var| (var.name.clone(), var.value.clone()))
                .collect(),
            dir: under(&dir, &inputs.layout.working_directory),
            user: shared.user,
            sandbox,
        };
        metadata.execution_start_timestamp = now();
        Ok(PreparedReapiAction {
            spec,
            cache: shared.cache.clone(),
            client,
            action_digest,
            do_not_cache: inputs.action.do_not_cache,
            layout: inputs.layout,
            dir,
            metadata,
            span,
        })
    }
}

/// The blocking part of [`ReapiActions::open`].
fn set_up(
    work_dir: &Path,
    cache_dir: &Path,
    max_bytes: u64,
    user: Option<Identity>,
) -> Result<Cache, ActionError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ActionError::Io { path, source }
    };
    for dir in [work_dir, cache_dir] {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let device = |dir: &Path| std::fs::metadata(dir).map(|m| m.dev()).map_err(io(dir));
    if device(work_dir)? != device(cache_dir)? {
        return Err(ActionError::DifferentFilesystems {
            cache_dir: cache_dir.to_path_buf(),
            work_dir: work_dir.to_path_buf(),
        });
    }
    for entry in std::fs::read_dir(work_dir).map_err(io(work_dir))? {
        let path = entry.map_err(io(work_dir))?.path();
        let ours = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with(ACTION_DIR_PREFIX));
        if ours && let Err(e) = inputs::remove_tree(&path) {
            tracing::warn!(dir = %path.display(), error = %e, "cannot remove an old action directory");
        }
    }
    let staging = match user {
        Some(user) if user.uid != 0 && user.uid != Identity::current().uid => {
            if let Some(blocked) = user.unsearchable(work_dir).map_err(io(work_dir))? {
                return Err(ActionError::Unreachable {
                    user,
                    work_dir: work_dir.to_path_buf(),
                    blocked,
                });
            }
            Staging::Link
        }
        _ => Staging::Copy,
    };
    Cache::open(cache_dir, max_bytes, staging).map_err(io(cache_dir))
}

#[async_trait]
impl ActionRunner for ReapiActions {
    async fn prepare(
        &self,
        request: &[u8],
        tags: &LogTags,
    ) -> Result<Box<dyn PreparedAction>, ActionFailure> {
        let span = tracing::info_span!(
            "action",
            job_id = %tags.job_id,
            task_id = %tags.task_id,
            tag = %tags.tag
        );
        match self
            .prepare_action(request, span.clone())
            .instrument(span.clone())
            .await
        {
            Ok(prepared) => Ok(Box::new(prepared)),
            Err(failure) => {
                span.in_scope(|| {
                    tracing::warn!(code = ?failure.code, "cannot prepare the action: {}", failure.message)
                });
                Err(failure.into_action_failure(exit_code::CHECKOUT_FAILURE))
            }
        }
    }
}

struct PreparedReapiAction {
    spec: ActionSpec,
    /// Removes the input root (its files may be links to the cache's).
    cache: Arc<Cache>,
    /// For the request's instance name.
    client: ShardedCas,
    action_digest: Digest,
    do_not_cache: bool,
    layout: CommandLayout,
    /// The input root.
    dir: PathBuf,
    metadata: v2::ExecutedActionMetadata,
    span: tracing::Span,
}

impl PreparedReapiAction {
    async fn finish_action(
        &mut self,
        exit_code: i32,
        stdout: &Path,
        stderr: &Path,
    ) -> Result<Vec<u8>, Failure> {
        self.metadata.execution_completed_timestamp = now();
        self.metadata.output_upload_start_timestamp = now();
        let (dir, layout) = (self.dir.clone(), self.layout.clone());
        let (stdout, stderr) = (stdout.to_path_buf(), stderr.to_path_buf());
        let collected =
            tokio::task::spawn_blocking(move || outputs::collect(&dir, &layout, &stdout, &stderr))
                .await??;
        let (files, trees) = tokio::join!(
            self.client.upload_files(collected.files),
            self.client.upload_blobs(collected.trees),
        );
        files.map_err(|e| Failure::cas(e, "uploading the outputs"))?;
        trees.map_err(|e| Failure::cas(e, "uploading the output trees"))?;
        self.metadata.output_upload_completed_timestamp = now();

        let mut result = collected.result;
        result.exit_code = exit_code;
        self.metadata.worker_completed_timestamp = now();
        result.execution_metadata = Some(self.metadata.clone());
        if self.do_not_cache || exit_code != 0 {
            tracing::debug!(
                exit_code,
                do_not_cache = self.do_not_cache,
                "result not cached"
            );
        } else if let Err(e) = self
            .client
            .update_action_result(&self.action_digest, &result)
            .await
        {
            tracing::warn!(error = %e, "cannot write the action cache");
        }
        tracing::info!(
            action = %self.action_digest,
            exit_code,
            files = result.output_files.len(),
            directories = result.output_directories.len(),
            symlinks = result.output_symlinks.len(),
            "action finished"
        );
        let response = v2::ExecuteResponse {
            result: Some(result),
            cached_result: false,
            status: Some(rpc::Status::default()),
            ..Default::default()
        };
        Ok(response.encode_to_vec())
    }
}

#[async_trait]
impl PreparedAction for PreparedReapiAction {
    fn spec(&self) -> &ActionSpec {
        &self.spec
    }

    async fn finish(
        &mut self,
        exit_code: i32,
        stdout: &Path,
        stderr: &Path,
    ) -> Result<Vec<u8>, ActionFailure> {
        let span = self.span.clone();
        let finished = self
            .finish_action(exit_code, stdout, stderr)
            .instrument(span.clone())
            .await;
        finished.map_err(|failure| {
            span.in_scope(|| {
                tracing::warn!(code = ?failure.code, "cannot finish the action: {}", failure.message)
            });
            failure.into_action_failure(exit_code::POST_PROCESSING_FAILURE)
        })
    }

    async fn release(self: Box<Self>) {
        let span = self.span.clone();
        remove_action_dir(self.cache, self.dir)
            .instrument(span)
            .await;
    }
}

/// Removes an action directory whose preparation did not finish, in the background.
struct RemoveOnDrop(Option<(Arc<Cache>, PathBuf)>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some((cache, dir)) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(remove_action_dir(cache, dir));
                }
                Err(_) => {
                    if let Err(e) = cache.remove_input_root(&dir) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the action directory");
                    }
                }
            }
        }
    }
}

async fn remove_action_dir(cache: Arc<Cache>, dir: PathBuf) {
    let shown = dir.display().to_string();
    let removed = tokio::task::spawn_blocking(move || cache.remove_input_root(&dir)).await;
    let error = match removed {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::warn!(dir = %shown, %error, "cannot remove the action directory");
}

/// `relative` (a normal form from [`scoot_reapi::rules`]) under `root`; the empty path is
/// `root` itself (`Path::join("")` would add a trailing slash).
pub(crate) fn under(root: &Path, relative: &str) -> PathBuf {
    if relative.is_empty() {
        root.to_path_buf()
    } else {
        root.join(relative)
    }
}

fn now() -> Option<prost_types::Timestamp> {
    Some(SystemTime::now().into())
}
