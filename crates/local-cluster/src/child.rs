//! One supervised child process: started in its own process group with its output in a log
//! file, reaped by a task of its own that publishes how it ended.

use std::ffi::OsString;
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::{ClusterError, tail_suffix};
use crate::procs::{Tracker, ignore_gone};

/// Lines of a child's log quoted when it fails.
const TAIL_LINES: usize = 20;
/// At most this much of the end of a log is read for the quote.
const TAIL_BYTES: u64 = 16 * 1024;

/// The kind of process, which decides the order of teardown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    ApiServer,
    Worker,
    Scheduler,
}

/// How a child ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildStatus {
    Exited(i32),
    Signaled(i32),
    /// Waiting for the process failed; it is not known how it ended.
    Unknown(String),
}

impl From<ExitStatus> for ChildStatus {
    fn from(status: ExitStatus) -> ChildStatus {
        match (status.code(), status.signal()) {
            (Some(code), _) => ChildStatus::Exited(code),
            (None, Some(signal)) => ChildStatus::Signaled(signal),
            (None, None) => ChildStatus::Unknown(status.to_string()),
        }
    }
}

impl fmt::Display for ChildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildStatus::Exited(code) => write!(f, "exited with code {code}"),
            ChildStatus::Signaled(number) => match Signal::try_from(*number) {
                Ok(signal) => write!(f, "was killed by signal {number} ({})", signal.as_str()),
                Err(_) => write!(f, "was killed by signal {number}"),
            },
            ChildStatus::Unknown(reason) => write!(f, "ended in an unknown way ({reason})"),
        }
    }
}

/// A child that ended while the cluster should have been up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildExit {
    /// `scheduler`, `workerserver-<i>` or `apiserver-<i>`.
    pub name: String,
    pub status: ChildStatus,
    /// The last lines of its log.
    pub log_tail: String,
}

impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}{}",
            self.name,
            self.status,
            tail_suffix(&self.log_tail)
        )
    }
}

impl std::error::Error for ChildExit {}

/// How to start one child.
pub(crate) struct Launch {
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<(&'static str, OsString)>,
    pub(crate) log: PathBuf,
}

/// A started child. Its [`tokio::process::Child`] belongs to the reaper task, which sets
/// `status` and sends the child's index on the cluster's exit channel when it ends.
pub(crate) struct Supervised {
    pub(crate) name: String,
    pub(crate) role: Role,
    pub(crate) pid: i32,
    pub(crate) log: PathBuf,
    status: watch::Receiver<Option<ChildStatus>>,
}

impl Supervised {
    /// Starts `launch` as a process-group leader with stdin from /dev/null and stdout and
    /// stderr appended to its log.
    pub(crate) fn spawn(
        launch: Launch,
        index: usize,
        exits: mpsc::UnboundedSender<usize>,
        tracker: Arc<Tracker>,
    ) -> Result<Supervised, ClusterError> {
        let write_error = |source| ClusterError::Write {
            path: launch.log.clone(),
            source,
        };
        let stdout = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .map_err(write_error)?;
        let stderr = stdout.try_clone().map_err(write_error)?;
        let spawn_error = |source| ClusterError::Spawn {
            name: launch.name.clone(),
            program: launch.program.clone(),
            source,
        };
        let mut child = tokio::process::Command::new(&launch.program)
            .args(&launch.args)
            // Logs go to files: no colour escapes in them (tracing honours NO_COLOR).
            .env("NO_COLOR", "1")
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .process_group(0)
            // Last resort if the cluster is dropped with the runtime: SIGKILL the leader.
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| spawn_error(std::io::Error::other("the child has no pid")))?;
        tracker.add_root(pid);
        tracing::debug!(name = %launch.name, pid, args = ?launch.args, "started");

        let (tx, rx) = watch::channel(None);
        let name = launch.name.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => ChildStatus::from(status),
                Err(err) => ChildStatus::Unknown(err.to_string()),
            };
            tracing::debug!(%name, pid, %status, "child ended");
            tracker.remove_root(pid);
            tx.send_replace(Some(status));
            // The receiver goes away with the cluster; nobody to tell then.
            let _ = exits.send(index);
        });

        Ok(Supervised {
            name: launch.name,
            role: launch.role,
            pid,
            log: launch.log,
            status: rx,
        })
    }

    /// How the child ended, or `None` while it runs.
    pub(crate) fn status(&self) -> Option<ChildStatus> {
        self.status.borrow().clone()
    }

    pub(crate) fn is_running(&self) -> bool {
        self.status.borrow().is_none()
    }

    /// Resolves once the child has ended and been reaped.
    pub(crate) async fn ended(&self) {
        let mut status = self.status.clone();
        // An error means the reaper task is gone, which only happens once it has finished
        // (or the runtime is going away): either way there is nothing left to wait for.
        let _ = status.wait_for(Option::is_some).await;
    }

    /// Sends `signal` to the child's process group if the child is still running. (Once it has
    /// been reaped its pid, and so the group id, may be reused.)
    pub(crate) fn signal_group(&self, signal: Signal) {
        if self.is_running() {
            ignore_gone(
                killpg(Pid::from_raw(self.pid), signal),
                "process group",
                self.pid,
            );
        }
    }

    /// The report for an ended child (`Unknown` if it is in fact still running).
    pub(crate) fn exit_report(&self) -> ChildExit {
        ChildExit {
            name: self.name.clone(),
            status: self
                .status()
                .unwrap_or_else(|| ChildStatus::Unknown("still running".into())),
            log_tail: log_tail(&self.log),
        }
    }

    /// Waits until each of `ports` accepts TCP connections on localhost, failing if the child
    /// ends first or `timeout` passes.
    pub(crate) async fn wait_ready(
        &self,
        ports: &[u16],
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let started = Instant::now();
        let deadline = started + timeout;
        for &port in ports {
            loop {
                if !self.is_running() {
                    return Err(ClusterError::ExitedDuringStartup(self.exit_report()));
                }
                if port_open(port).await {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(ClusterError::NotReady {
                        name: self.name.clone(),
                        port,
                        waited: started.elapsed(),
                        log_tail: log_tail(&self.log),
                    });
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    () = self.ended() => {}
                }
            }
        }
        if !self.is_running() {
            return Err(ClusterError::ExitedDuringStartup(self.exit_report()));
        }
        tracing::debug!(name = %self.name, ?ports, "ready");
        Ok(())
    }
}

/// Stops a process that is not part of the cluster (such as `setup-cloud-scoot run`'s
/// command): SIGTERM, then SIGKILL if it has not ended within `grace`. Returns once it has been
/// reaped.
pub async fn stop_child(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        // It may be ending on its own; the wait below tells.
        ignore_gone(kill(Pid::from_raw(pid), Signal::SIGTERM), "process", pid);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!("process did not stop within {grace:?} of SIGTERM; killing it");
        if let Err(err) = child.kill().await {
            tracing::warn!(%err, "cannot kill process");
        }
    }
}

/// Whether something accepts connections on `localhost:port`.
pub(crate) async fn port_open(port: u16) -> bool {
    let connect = TcpStream::connect(("localhost", port));
    matches!(
        tokio::time::timeout(Duration::from_millis(500), connect).await,
        Ok(Ok(_))
    )
}

/// The last lines of the file at `path` (empty if it cannot be read).
pub(crate) fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let start = len.saturating_sub(TAIL_BYTES);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        // Starting mid-file, the first line is probably cut: leave it out.
        let text = match (start > 0, text.split_once('\n')) {
            (true, Some((_, rest))) => rest,
            _ => &text,
        };
        Ok(last_lines(text, TAIL_LINES))
    };
    read().unwrap_or_default()
}

/// The last `n` lines of `text`, without the final newline.
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let text = text.trim_end_matches(['\n', '\r']);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_of_text() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a\nb\nc", 5), "a\nb\nc");
        assert_eq!(last_lines("", 3), "");
        assert_eq!(last_lines("\n\n", 3), "");
        assert_eq!(last_lines("x\r\ny\r\n", 1), "y");
        assert_eq!(last_lines("a\n\nb\n", 2), "\nb");
    }

    #[test]
    fn log_tail_reads_the_end_of_big_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.log");
        let mut text = String::new();
        for i in 0..5000 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&path, &text).unwrap();
        let tail = log_tail(&path);
        assert_eq!(tail.lines().count(), TAIL_LINES);
        assert!(tail.starts_with("line 4980\n"));
        assert!(tail.ends_with("line 4999"));
        assert_eq!(log_tail(&dir.path().join("missing.log")), "");
    }

    #[test]
    fn statuses_read_well() {
        assert_eq!(
            ChildStatus::from(ExitStatus::from_raw(3 << 8)),
            ChildStatus::Exited(3)
        );
        assert_eq!(
            ChildStatus::from(ExitStatus::from_raw(9)),
            ChildStatus::Signaled(9)
        );
        assert_eq!(
            ChildStatus::Signaled(9).to_string(),
            "was killed by signal 9 (SIGKILL)"
        );
        assert_eq!(ChildStatus::Exited(1).to_string(), "exited with code 1");
        let exit = ChildExit {
            name: "workerserver-1".into(),
            status: ChildStatus::Exited(2),
            log_tail: "boom".into(),
        };
        assert_eq!(
            exit.to_string(),
            "workerserver-1 exited with code 2; last lines of its log:\nboom"
        );
    }
}
