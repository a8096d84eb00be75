//! What the worker tells the launcher: one JSON document on the launcher's standard input.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The first argument that makes a binary act as the launcher (see [`crate::launcher`]).
pub const LAUNCHER_ARG: &str = "__scoot-sandbox-launch";

/// The host name inside every sandbox.
pub const SANDBOX_HOSTNAME: &str = "scoot-sandbox";

/// The filesystem a sandboxed process sees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Filesystem {
    /// The host's filesystem read-only, with `exec_root` writable at its own path, `hidden`
    /// directories replaced by empty read-only ones, and a private `/tmp`.
    HostTools {
        exec_root: PathBuf,
        hidden: Vec<PathBuf>,
    },
    /// `root` is `/`.
    Rootfs { root: PathBuf },
}

/// One sandboxed process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchSpec {
    pub argv: Vec<String>,
    /// The process's whole environment.
    pub env: Vec<(String, String)>,
    pub filesystem: Filesystem,
    /// The working directory as the process sees it (absolute).
    pub working_dir: PathBuf,
    /// Share the host's network; otherwise the process has a loopback of its own.
    pub network: bool,
    /// The process's ids inside the sandbox, and the ids they are outside.
    pub inside_uid: u32,
    pub inside_gid: u32,
    pub outside_uid: u32,
    pub outside_gid: u32,
    /// Most processes the sandbox's user may have at once (`RLIMIT_NPROC`, which the kernel
    /// counts per user namespace, so per sandbox).
    pub pids_max: Option<u64>,
    /// Where the launcher writes why the sandbox could not be set up, or why the program could
    /// not be started; the file stays empty when it ran.
    pub report: PathBuf,
}
