//! The sandbox execution engine: each process runs in new user, mount, pid, ipc and uts
//! namespaces, and a network namespace of its own unless it asks for the host's, seeing
//! either the host read-only with its exec root writable (host-tools, what Bazel needs) or its
//! input root as its whole filesystem (rootfs, what buildbox-based clients need).
//!
//! * [`spec`]: what the worker tells the launcher.
//! * [`launcher`]: the process that builds the sandbox (the worker's binary started with
//!   [`spec::LAUNCHER_ARG`]); the crate's only unsafe code besides the runner's child setup.
//! * [`execer`]: the [`Execer`](scoot_runner::execer::Execer) that runs the launcher through
//!   the OS engine, and the start-up probe that says whether this machine can make sandboxes.
//!
//! Invariants:
//! * A sandboxed process runs as one user and group inside, which are the run's user outside
//!   (an unprivileged one on a root worker); nothing else of the host's ids exists inside.
//! * It cannot write outside its exec root (host-tools) or root (rootfs), cannot see the
//!   worker's directories (other runs'), has no network unless it asked, and no process of it
//!   outlives it: init is pid 1 of its pid namespace, and the kernel kills the rest when init
//!   ends, which it does when the program ends.
//! * A sandbox that cannot be set up fails the run with the reason; nothing runs unconfined.

pub mod execer;
pub mod launcher;
pub mod spec;

pub use execer::{SandboxConfig, SandboxExecer, probe};
