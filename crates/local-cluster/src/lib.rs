//! A whole local Scoot cluster as supervised child processes: what `setup-cloud-scoot` runs.
//!
//! [`Cluster::start`] starts, from the binaries in [`ClusterSpec::bin_dir`], `apiserver`s (if
//! that binary exists), `workerserver`s and a `scheduler` on Scoot's local port layout
//! ([`PortLayout`], optionally shifted by an offset), each in its own process group with its
//! output in `<state dir>/logs/<name>.log`, and waits for each one's ports. The scheduler is
//! given the workers in a static file rather than discovering `workerserver` processes, so
//! other clusters on the machine are never picked up.
//!
//! [`Cluster::wait_for_failure`] resolves when any child ends; [`Cluster::shutdown`] stops
//! everything (SIGTERM, a grace, SIGKILL) including the processes the children started, which
//! are followed through `/proc` (see `procs`). [`cli`] is the `setup-cloud-scoot` binary: its
//! flags, the `run CMD ARGS…` after them, and [`cli::run`], which starts a cluster and keeps it up
//! or runs one command against it.
//!
//! [`netns`] builds networks of hosts out of Linux network namespaces for multi-host
//! end-to-end tests, and [`postgres`] a private PostgreSQL server for tests and local
//! highly-available clusters.

mod child;
pub mod cli;
mod cluster;
mod error;
pub mod netns;
pub mod postgres;
mod procs;
pub mod spec;

pub use child::{ChildExit, ChildStatus, Role, stop_child};
pub use cluster::{APISERVER_BIN, Cluster, ProcessInfo, SCHEDULER_BIN, WORKERSERVER_BIN};
pub use error::ClusterError;
pub use spec::{ClusterSecurity, ClusterSpec, PortLayout, Strategy};
