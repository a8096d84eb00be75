//! Running the `git` command line.
//!
//! Every command is started directly (never through a shell) with a fixed environment:
//! `GIT_TERMINAL_PROMPT=0` so nothing ever waits for a password, `LC_ALL=C` so messages are
//! stable, and a fixed author/committer identity and date so that the commits we create have the
//! same ids wherever they are made. Variables inherited from the caller that would point git at
//! another repository or index (a `scoot-snapshot-db` run from a git hook, say) are removed.
//!
//! Every command has a deadline. Git runs as the leader of its own process group; when the
//! deadline passes the whole group is killed (git's helpers too, which could otherwise keep the
//! output pipes open) and [`GitError::Timeout`] is returned.

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a git command may run: Scoot's ten minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The identity of every commit this crate creates (`commit-tree`).
pub const COMMIT_NAME: &str = "Scoot";
pub const COMMIT_EMAIL: &str = "scoot@localhost";
/// The author and committer date of every commit this crate creates, so that the same tree (and
/// parent) always gives the same commit id.
pub const COMMIT_DATE: &str = "@0 +0000";

/// Inherited variables that would change which repository, index or identity git uses.
const SCRUBBED_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_AUTHOR_DATE",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
    "GIT_COMMITTER_DATE",
];

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run `{command}` (git executable {binary:?}): {source}")]
    Spawn {
        command: String,
        binary: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {path:?} as the input of `{command}`: {source}")]
    Stdin {
        command: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` did not finish within {} and was killed", humantime::format_duration(*.after))]
    Timeout { command: String, after: Duration },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

impl GitError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, GitError::Timeout { .. })
    }
}

/// What a finished git command produced.
#[derive(Debug)]
pub struct GitOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A git executable bound to one repository (or, for discovery, to none).
#[derive(Clone, Debug)]
pub struct Git {
    binary: PathBuf,
    timeout: Duration,
    /// `GIT_DIR` for every command; `None` lets git discover the repository from the directory.
    git_dir: Option<PathBuf>,
    /// The directory commands run in unless told otherwise.
    dir: PathBuf,
}

impl Git {
    /// Git commands that find their repository from `dir`, as `git` run there would.
    pub fn discovering(
        binary: impl Into<PathBuf>,
        timeout: Duration,
        dir: impl Into<PathBuf>,
    ) -> Git {
        Git {
            binary: binary.into(),
            timeout,
            git_dir: None,
            dir: dir.into(),
        }
    }

    /// Git commands on the repository whose git directory is `git_dir`, run in `dir` (its work
    /// tree, or the git directory itself for a bare repository).
    pub fn for_repo(
        binary: impl Into<PathBuf>,
        timeout: Duration,
        git_dir: impl Into<PathBuf>,
        dir: impl Into<PathBuf>,
    ) -> Git {
        Git {
            binary: binary.into(),
            timeout,
            git_dir: Some(git_dir.into()),
            dir: dir.into(),
        }
    }

    pub fn git_dir(&self) -> Option<&Path> {
        self.git_dir.as_deref()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A command `git <args…>`; add arguments and environment, then `run` or `output` it.
    pub fn cmd<I, S>(&self, args: I) -> GitCmd<'_>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        GitCmd {
            git: self,
            args: args
                .into_iter()
                .map(|a| a.as_ref().to_os_string())
                .collect(),
            env: Vec::new(),
            dir: None,
            stdin: None,
        }
    }
}

/// One git command being put together.
#[must_use = "a git command does nothing until it is run"]
pub struct GitCmd<'a> {
    git: &'a Git,
    args: Vec<OsString>,
    env: Vec<(&'static str, OsString)>,
    dir: Option<PathBuf>,
    /// A file to feed the command; it reads nothing otherwise.
    stdin: Option<PathBuf>,
}

impl GitCmd<'_> {
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    pub fn env(mut self, key: &'static str, value: impl AsRef<OsStr>) -> Self {
        self.env.push((key, value.as_ref().to_os_string()));
        self
    }

    /// Runs the command in `dir` rather than the repository's directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Feeds the file at `path` to the command's standard input.
    pub fn stdin_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.stdin = Some(path.into());
        self
    }

    /// `git arg arg…` for messages.
    fn describe(&self) -> String {
        let mut text = String::from("git");
        for arg in &self.args {
            text.push(' ');
            text.push_str(&arg.to_string_lossy());
        }
        text
    }

    /// Runs the command and returns its stdout; a non-zero exit is an error carrying stderr.
    pub async fn run(self) -> Result<Vec<u8>, GitError> {
        let command = self.describe();
        let output = self.output().await?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(GitError::Failed {
                command,
                status: describe_status(output.status),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }

    /// Runs the command and returns its stdout as text without surrounding whitespace.
    pub async fn run_text(self) -> Result<String, GitError> {
        let stdout = self.run().await?;
        Ok(String::from_utf8_lossy(&stdout).trim().to_string())
    }

    /// Runs the command whatever its exit status (errors are failures to run it or timeouts).
    pub async fn output(self) -> Result<GitOutput, GitError> {
        let command = self.describe();
        let git = self.git;
        let stdin = match &self.stdin {
            None => Stdio::null(),
            Some(path) => {
                Stdio::from(std::fs::File::open(path).map_err(|source| GitError::Stdin {
                    command: command.clone(),
                    path: path.clone(),
                    source,
                })?)
            }
        };
        let mut cmd = tokio::process::Command::new(&git.binary);
        cmd.args(&self.args)
            .current_dir(self.dir.as_deref().unwrap_or(&git.dir))
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for key in SCRUBBED_ENV {
            cmd.env_remove(key);
        }
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .env("GIT_AUTHOR_NAME", COMMIT_NAME)
            .env("GIT_AUTHOR_EMAIL", COMMIT_EMAIL)
            .env("GIT_AUTHOR_DATE", COMMIT_DATE)
            .env("GIT_COMMITTER_NAME", COMMIT_NAME)
            .env("GIT_COMMITTER_EMAIL", COMMIT_EMAIL)
            .env("GIT_COMMITTER_DATE", COMMIT_DATE);
        if let Some(git_dir) = &git.git_dir {
            cmd.env("GIT_DIR", git_dir);
        }
        for (key, value) in &self.env {
            cmd.env(key, value);
        }
        tracing::debug!(command = %command, "running git");

        let mut child = cmd.spawn().map_err(|source| GitError::Spawn {
            command: command.clone(),
            binary: git.binary.clone(),
            source,
        })?;
        let pid = child.id();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let finished = async {
            let (status, stdout, stderr) =
                tokio::join!(child.wait(), read_all(stdout), read_all(stderr));
            Ok::<_, io::Error>((status?, stdout?, stderr?))
        };
        match tokio::time::timeout(git.timeout, finished).await {
            Ok(Ok((status, stdout, stderr))) => Ok(GitOutput {
                status,
                stdout,
                stderr,
            }),
            Ok(Err(source)) => Err(GitError::Spawn {
                command,
                binary: git.binary.clone(),
                source,
            }),
            Err(_elapsed) => {
                tracing::warn!(command = %command, timeout = ?git.timeout, "git timed out; killing it");
                kill_group(pid);
                // The group is gone, so this returns at once; it reaps the leader.
                if let Err(err) = child.kill().await {
                    tracing::debug!(%err, "reaping a timed-out git");
                }
                Err(GitError::Timeout {
                    command,
                    after: git.timeout,
                })
            }
        }
    }
}

async fn read_all(pipe: Option<impl AsyncRead + Unpin>) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut bytes).await?;
    }
    Ok(bytes)
}

/// SIGKILLs the process group led by `pid` (git and every helper it started).
fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) else {
        return;
    };
    let group = nix::unistd::Pid::from_raw(pid);
    if let Err(err) = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL) {
        tracing::debug!(%err, pid, "killing a timed-out git's process group");
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}
