//! The Scoot scheduler.
//!
//! * [`server::run`]: the whole scheduler given two bound listeners.
//! * [`cli`]: the `scheduler` binary: its flags, and [`cli::run`], which builds the listeners and
//!   the CAS they describe and calls [`server::run`].
//! * [`handler`]: the CloudScoot Thrift service; [`api`]: the same operations as async methods.
//! * [`event_loop::Loop`]: the event-driven scheduling loop; [`state`]: what it owns.
//! * [`task_runner`]: one attempt of one task on one worker.
//! * [`job`]: jobs and the rules they must meet; [`config`]: `-config` parsing.
//! * [`wire`]: the one Thrift boundary: CloudScoot requests and replies, saga payloads.
//! * [`reapi`]: the Bazel Remote Execution API (Execution, Operations and the CAS services).
//! * [`leader`]: which of several schedulers on one PostgreSQL saga log leads, and what the
//!   standbys answer.
//! * [`discovery`]: finding workers; [`worker_client`]: talking to them ([`worker_client::WorkerApi`]).
//! * [`admin`] and [`ui`]: the HTTP port: health, admin actions, and the web pages of the
//!   cluster, fed by the loop's [`overview`] snapshots.

pub mod admin;
pub mod api;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod event_loop;
#[cfg(test)]
mod fake_worker;
pub mod handler;
pub mod job;
pub mod leader;
pub mod overview;
pub mod reapi;
pub mod server;
pub mod state;
pub mod stats;
pub mod task_runner;
pub mod ui;
pub mod wire;
pub mod worker_client;

pub use config::SchedulerConfig;
pub use server::run;
