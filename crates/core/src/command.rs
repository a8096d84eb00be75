use std::collections::BTreeMap;
use std::time::Duration;

/// Identifies the job, task and tag a run belongs to, so logs can follow it across processes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct LogTags {
    pub job_id: String,
    pub task_id: String,
    pub tag: String,
}

/// A command to run on a worker.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Command {
    /// argv\[0\] is resolved against the worker's PATH; no shell is involved.
    pub argv: Vec<String>,
    /// Added to (and overriding) the worker's own environment.
    pub env: BTreeMap<String, String>,
    /// Kill the command after this long; `None` means never. Checkout time counts.
    pub timeout: Option<Duration>,
    /// The snapshot to run in; empty means a fresh empty directory.
    pub snapshot_id: String,
    pub tags: LogTags,
    /// Set when the command is a REAPI action: the encoded `ExecuteRequest`. The worker then runs
    /// the action's own Command in its materialised input root and ignores `argv` and `env`.
    pub reapi_request: Option<Vec<u8>>,
}
