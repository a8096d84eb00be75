use std::fmt;

use crate::{LogTags, PlatformProperty, RunState};

/// A worker-local run id. Each worker process counts from "0"; ids mean nothing across workers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RunId(pub String);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for RunId {
    fn from(s: &str) -> RunId {
        RunId(s.to_string())
    }
}

/// What a worker reports about one run.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RunStatus {
    pub run_id: RunId,
    pub state: RunState,
    pub tags: LogTags,
    /// URIs of the captured output, not its text; empty until the outputs exist.
    pub stdout_ref: String,
    pub stderr_ref: String,
    /// Only meaningful when COMPLETE.
    pub snapshot_id: String,
    /// Meaningful when COMPLETE or FAILED.
    pub exit_code: i32,
    /// Meaningful when COMPLETE, FAILED or ABORTED.
    pub error: String,
    /// For a REAPI action: the encoded `ExecuteResponse` (with the ActionResult) the worker
    /// produced, when it got far enough to produce one.
    pub reapi_response: Option<Vec<u8>>,
}

impl RunStatus {
    fn new(run_id: RunId, state: RunState, tags: LogTags) -> RunStatus {
        RunStatus {
            run_id,
            state,
            tags,
            ..RunStatus::default()
        }
    }

    pub fn pending(run_id: RunId, tags: LogTags) -> RunStatus {
        RunStatus::new(run_id, RunState::Pending, tags)
    }

    pub fn running(
        run_id: RunId,
        stdout_ref: String,
        stderr_ref: String,
        tags: LogTags,
    ) -> RunStatus {
        RunStatus {
            stdout_ref,
            stderr_ref,
            ..RunStatus::new(run_id, RunState::Running, tags)
        }
    }

    pub fn complete(run_id: RunId, exit_code: i32, tags: LogTags) -> RunStatus {
        RunStatus {
            exit_code,
            ..RunStatus::new(run_id, RunState::Complete, tags)
        }
    }

    pub fn failed(
        run_id: RunId,
        exit_code: i32,
        error: impl Into<String>,
        tags: LogTags,
    ) -> RunStatus {
        RunStatus {
            exit_code,
            error: error.into(),
            ..RunStatus::new(run_id, RunState::Failed, tags)
        }
    }

    pub fn aborted(run_id: RunId, tags: LogTags) -> RunStatus {
        RunStatus::new(run_id, RunState::Aborted, tags)
    }

    pub fn timed_out(run_id: RunId, tags: LogTags) -> RunStatus {
        RunStatus::new(run_id, RunState::TimedOut, tags)
    }

    /// The status of a run id the worker has never heard of.
    pub fn unknown(run_id: RunId) -> RunStatus {
        let error = format!("unknown run id {run_id}");
        RunStatus {
            error,
            ..RunStatus::new(run_id, RunState::Unknown, LogTags::default())
        }
    }
}

/// The health of a whole runner, as opposed to one run.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ServiceStatus {
    /// False until the runner's snapshot stores are ready (or forever, if they failed to start).
    pub initialized: bool,
    /// False once the runner has decided it cannot run tasks reliably; permanent for the process.
    pub is_healthy: bool,
    /// Why it is uninitialised or unhealthy; empty otherwise.
    pub error: String,
    /// The platform properties the worker offers: its machine's facts, the operator's, and one
    /// `sandbox` property per way it can run actions. Empty from a worker that does not report
    /// them (a Scoot worker), which the scheduler takes as an unsandboxed one.
    pub platform: Vec<PlatformProperty>,
}

impl ServiceStatus {
    pub fn ready() -> ServiceStatus {
        ServiceStatus {
            initialized: true,
            is_healthy: true,
            ..ServiceStatus::default()
        }
    }
}
