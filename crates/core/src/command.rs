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
    /// What the task asks of the worker that runs it: a REAPI action's platform properties as
    /// its client sent them; empty for CloudScoot tasks. The scheduler places the task on a
    /// worker that offers them ([`ServiceStatus::platform`](crate::ServiceStatus::platform)).
    pub platform: Vec<PlatformProperty>,
}

/// A platform property: one fact a worker offers or one thing an action asks of its worker
/// (REAPI's `Platform.Property`; names may repeat, one property per value).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PlatformProperty {
    pub name: String,
    pub value: String,
}

impl PlatformProperty {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> PlatformProperty {
        PlatformProperty {
            name: name.into(),
            value: value.into(),
        }
    }
}

impl std::fmt::Display for PlatformProperty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.value)
    }
}
