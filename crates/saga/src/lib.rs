//! Scoot's saga log: how the scheduler records each job so that nothing accepted is lost.
//!
//! A job is a saga: Start Saga (the job), per task Start Task / End Task (statuses), End Saga.
//!
//! - [`message`]: [`SagaMessage`] and [`MessageKind`].
//! - [`state`]: [`SagaState`], the state machine that replays and validates messages.
//! - [`log`]: the [`SagaLog`] storage trait (blocking) and [`spawn_gc`].
//! - [`memory`]: [`MemorySagaLog`], in memory.
//! - [`file`](mod@file): [`FileSagaLog`], crash-safe files (format and recovery documented there).
//! - [`scoot_dir`]: reading a saga Go Scoot's file log wrote (imported by [`FileSagaLog`]).
//! - [`saga`]: [`SagaCoordinator`] and [`Saga`], live sagas with validated, ordered,
//!   group-committed writes.
//! - [`error`]: [`SagaError`] and [`SagaLogError`].
//! - `contract` (tests, and the `testing` feature): checks every [`SagaLog`] must pass.

#[cfg(any(test, feature = "testing"))]
pub mod contract;
pub mod error;
pub mod file;
pub mod log;
pub mod memory;
pub mod message;
pub mod saga;
pub mod scoot_dir;
pub mod state;

pub use error::{SagaError, SagaLogError};
pub use file::FileSagaLog;
pub use log::{SagaLog, spawn_gc};
pub use memory::MemorySagaLog;
pub use message::{MessageKind, SagaMessage};
pub use saga::{Saga, SagaCoordinator, register_metrics};
pub use state::SagaState;
