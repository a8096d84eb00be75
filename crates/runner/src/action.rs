//! Runs whose command is a REAPI action rather than a Scoot argv.
//!
//! The scheduler hands such a run an encoded `ExecuteRequest` (see
//! [`Command::reapi_request`](scoot_core::Command::reapi_request)). An [`ActionRunner`] turns it
//! into something the invoker can run: it fetches the Action and Command, lays out the input root
//! and says which argv, environment and directory to use. After the process exits the
//! [`PreparedAction`] collects the outputs and produces the encoded `ExecuteResponse` that travels
//! back to the scheduler in [`RunStatus::reapi_response`](scoot_core::RunStatus::reapi_response).
//!
//! The runner crate stays free of protobuf: requests and responses are opaque bytes here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use scoot_core::LogTags;

use crate::execer::SandboxRequest;
use crate::execer::identity::Identity;

/// What the invoker runs for a prepared action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionSpec {
    pub argv: Vec<String>,
    /// The complete environment: nothing of the worker's own environment is added.
    pub env: BTreeMap<String, String>,
    /// The working directory (inside the input root).
    pub dir: PathBuf,
    /// Who the process runs as; `None` for the worker itself.
    pub user: Option<Identity>,
    /// The sandbox the action asked for (its platform), if it runs in one.
    pub sandbox: Option<SandboxRequest>,
}

/// Why an action could not be prepared or finished. The run ends FAILED with `exit_code` and
/// `message`; `response` (an encoded `ExecuteResponse` whose status says what went wrong, for
/// example FAILED_PRECONDITION with the missing blobs) goes back to the REAPI client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionFailure {
    pub exit_code: i32,
    pub message: String,
    pub response: Vec<u8>,
}

#[async_trait]
pub trait ActionRunner: Send + Sync {
    /// Fetches the action named by `request` (an encoded `ExecuteRequest`) and materialises its
    /// input root.
    async fn prepare(
        &self,
        request: &[u8],
        tags: &LogTags,
    ) -> Result<Box<dyn PreparedAction>, ActionFailure>;
}

#[async_trait]
pub trait PreparedAction: Send {
    fn spec(&self) -> &ActionSpec;

    /// The process exited by itself with `exit_code`, having written `stdout` and `stderr`:
    /// uploads the outputs, writes the action cache where allowed and returns the encoded
    /// `ExecuteResponse`.
    async fn finish(
        &mut self,
        exit_code: i32,
        stdout: &Path,
        stderr: &Path,
    ) -> Result<Vec<u8>, ActionFailure>;

    /// Removes the action's directory. Called exactly once, whether or not the action ran.
    async fn release(self: Box<Self>);
}
