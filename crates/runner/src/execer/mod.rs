//! Execution engines: how a command is started, watched and stopped.
//!
//! The invoker only sees the [`Execer`] and [`Process`] traits, so a new engine (a namespace
//! sandbox, say) plugs in without touching the run state machine. Two engines exist: [`os`] runs
//! real processes and [`sim`] plays Scoot's `#! sim execer` scripts; [`Dispatch`] routes a command
//! to the right one as Scoot's worker did.

mod cgroup;
mod child;
pub mod contain;
pub mod identity;
pub mod memory;
pub mod os;
pub mod sim;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use crate::output::RunOutputs;

/// Everything an engine needs to start one command.
pub struct ExecSpec {
    pub argv: Vec<String>,
    /// Set on top of the worker's own environment, or alone when `clear_env`.
    pub env: BTreeMap<String, String>,
    /// Start from an empty environment (REAPI actions get exactly the environment they name).
    pub clear_env: bool,
    pub dir: PathBuf,
    pub outputs: Arc<RunOutputs>,
    /// Run as this user and group instead of the worker's own (see [`identity`]).
    pub user: Option<identity::Identity>,
    /// Run confined in a sandbox, as asked; only an engine with a sandbox runs such a spec.
    pub sandbox: Option<SandboxRequest>,
    /// Written to the process's standard input, which is then closed (empty by default).
    pub stdin: Vec<u8>,
}

/// How a sandboxed process sees the filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxLayout {
    /// The host's filesystem read-only, `root` (the exec root) writable at its own path.
    HostTools,
    /// `root` is the process's `/`.
    Rootfs,
}

/// What a run asks of its sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxRequest {
    pub layout: SandboxLayout,
    /// The exec root (host-tools) or the directory that becomes `/` (rootfs); the spec's `dir`
    /// is inside it.
    pub root: PathBuf,
    /// Keep the host's network; otherwise only a loopback of its own.
    pub network: bool,
    /// The user and group the process has inside; by default the run's own (host-tools) or
    /// root (rootfs). Either way they are the run's user outside.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// How a process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// It exited by itself with this code (-1 when killed by a signal).
    Exited(i32),
    /// It was stopped by [`Process::kill`].
    Killed,
    /// It was stopped because its processes used more memory than the cap.
    LimitExceeded { message: String },
    /// It used more memory than the cap as soon as it started; the machine is suspect.
    HighInitialMemory { message: String },
    /// Watching it failed.
    Failed { message: String },
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ExecError(pub String);

#[async_trait]
pub trait Execer: Send + Sync {
    async fn start(&self, spec: ExecSpec) -> Result<Box<dyn Process>, ExecError>;
}

#[async_trait]
pub trait Process: Send {
    /// Waits for the process to end by itself. Cancel-safe: dropping the future and calling
    /// [`kill`](Process::kill) afterwards is how a run is stopped.
    async fn wait(&mut self) -> ProcessOutcome;
    /// Stops the process and everything it started; returns once they are gone.
    async fn kill(&mut self) -> ProcessOutcome;
}

/// Sends `#! sim execer` commands to the simulator, sandboxed runs to the sandbox engine and
/// everything else to the OS engine.
pub struct Dispatch {
    pub os: os::OsExecer,
    pub sim: sim::SimExecer,
    /// Runs specs that ask for a sandbox; without one they are refused.
    pub sandbox: Option<Arc<dyn Execer>>,
    /// Run Scoot tasks (which do not ask) in a host-tools sandbox too.
    pub sandbox_tasks: bool,
}

#[async_trait]
impl Execer for Dispatch {
    async fn start(&self, mut spec: ExecSpec) -> Result<Box<dyn Process>, ExecError> {
        if sim::is_sim(&spec.argv) {
            return self.sim.start(spec).await;
        }
        if self.sandbox_tasks && spec.sandbox.is_none() {
            spec.sandbox = Some(SandboxRequest {
                layout: SandboxLayout::HostTools,
                root: spec.dir.clone(),
                network: false,
                uid: None,
                gid: None,
            });
        }
        match (&spec.sandbox, &self.sandbox) {
            (None, _) => self.os.start(spec).await,
            (Some(_), Some(sandbox)) => sandbox.start(spec).await,
            (Some(request), None) => Err(ExecError(format!(
                "this worker has no sandbox, so it cannot run a {:?} sandboxed process",
                request.layout
            ))),
        }
    }
}
