//! The workerserver: one machine's worker.
//!
//! [`server::run`] is the whole program given two bound listeners: it builds the runner
//! (`scoot-runner`), serves the Worker Thrift API on one listener ([`handler`]) and the HTTP
//! endpoints on the other ([`http`]), and on shutdown drains the current run before closing.
//! [`snapshots`] gives tasks their snapshot checkouts.

pub mod handler;
pub mod http;
pub mod server;
pub mod snapshots;

pub use scoot_action_runner::{DEFAULT_REPLICAS, ShardSpec, ShardSpecError};
pub use scoot_runner::execer::identity::Identity;
pub use server::{WorkerConfig, run};
