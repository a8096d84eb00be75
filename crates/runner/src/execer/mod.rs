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
}

/// How a process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessOutcome {
    /// It exited by itself with this code (-1 when killed by a signal).
    Exited(i32),
    /// It was stopped by [`Process::kill`].
    Killed,
    /// It was stopped because its processes used more memory than the cap.
    MemoryCapExceeded { message: String },
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

/// Sends `#! sim execer` commands to the simulator and everything else to the OS engine.
pub struct Dispatch {
    pub os: os::OsExecer,
    pub sim: sim::SimExecer,
}

#[async_trait]
impl Execer for Dispatch {
    async fn start(&self, spec: ExecSpec) -> Result<Box<dyn Process>, ExecError> {
        if sim::is_sim(&spec.argv) {
            self.sim.start(spec).await
        } else {
            self.os.start(spec).await
        }
    }
}
