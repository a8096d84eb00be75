//! Knowing every process of a task, so that all of them end with it.
//!
//! A task's processes can leave its process group (`setsid`) and be orphaned, out of reach of
//! the leader's group and ancestry. Where cgroup v2 is usable, each run gets a cgroup (see
//! [`cgroup`](super::cgroup)) that no process can leave by itself, and a worker that starts kills
//! what a previous incarnation left. Elsewhere the worker becomes a child subreaper, so orphans
//! of its tasks become its own children and are found through /proc; what a killed worker left
//! running is then out of reach of its next incarnation.

use std::collections::BTreeSet;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{Pid, getpgrp};

use super::ExecError;
use super::cgroup::{RunCgroup, WorkerCgroup};
use super::memory::{adopted_zombies, task_members};

/// How long the processes of a task killed without a cgroup may take to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const KILL_POLL_PERIOD: Duration = Duration::from_millis(5);

/// How an engine finds the processes of its tasks; shared by all its runs.
#[derive(Debug)]
pub struct Containment {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Cgroup(WorkerCgroup),
    /// No usable cgroup v2: a task is its leader's group and descendants, plus orphans this
    /// process adopted as a subreaper (so this assumes one run at a time, as in a worker).
    Descendants {
        subreaper: bool,
    },
}

/// Leaders of this process's runs in progress, whatever their engine: children outside this
/// process's group that are no adopted orphans (and that their owners reap).
static LEADERS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn leaders() -> MutexGuard<'static, BTreeSet<i32>> {
    // Every insert or removal is whole, so a panicked holder left nothing half-done.
    LEADERS.lock().unwrap_or_else(|e| e.into_inner())
}

impl Containment {
    /// Sets up task tracking for the worker `name`: a cgroup of that name beside this
    /// process's own (so the name must be the same across restarts of one worker and differ
    /// between the workers of a host), emptied of what a previous worker left; without cgroup
    /// v2, this process becomes a child subreaper. Logs which mechanism is used.
    pub fn new(name: &str) -> Containment {
        let mode = match WorkerCgroup::open(name) {
            Ok(cgroup) => {
                tracing::info!(cgroup = %cgroup.dir().display(), "task processes are tracked in cgroups");
                Mode::Cgroup(cgroup)
            }
            Err(err) => {
                let subreaper = match nix::sys::prctl::set_child_subreaper(true) {
                    Ok(()) => true,
                    Err(errno) => {
                        tracing::warn!(error = %errno, "cannot become a child subreaper: orphaned task processes cannot be found");
                        false
                    }
                };
                tracing::info!(
                    reason = %err,
                    "cgroup v2 is not usable: task processes are tracked as descendants of the worker, and tasks a killed worker left running are not found by the next one"
                );
                Mode::Descendants { subreaper }
            }
        };
        Containment { mode }
    }

    /// Whether runs get a cgroup.
    pub fn uses_cgroups(&self) -> bool {
        matches!(self.mode, Mode::Cgroup(_))
    }

    /// Prepares tracking for a run about to start.
    pub(crate) fn prepare(self: &Arc<Self>) -> Result<PendingRun, ExecError> {
        let cgroup = match &self.mode {
            Mode::Cgroup(worker) => Some(
                worker
                    .new_run()
                    .map_err(|err| ExecError(format!("cannot create the task's cgroup: {err}")))?,
            ),
            Mode::Descendants { .. } => None,
        };
        Ok(PendingRun {
            containment: self.clone(),
            cgroup,
        })
    }
}

/// Tracking for a run whose process is not started yet.
pub(crate) struct PendingRun {
    containment: Arc<Containment>,
    cgroup: Option<RunCgroup>,
}

impl PendingRun {
    /// The file the child writes `0` to before `exec` to join the run's cgroup, if any.
    pub(crate) fn join_fd(&self) -> Option<RawFd> {
        self.cgroup.as_ref().map(RunCgroup::join_fd)
    }

    /// Starts the run's leader (the leader of its own process group) with `spawn`, which
    /// returns it and its pid. No run looks for adopted orphans meanwhile, so none takes the
    /// new child, unregistered yet, for one.
    pub(crate) fn start<T>(
        self,
        spawn: impl FnOnce() -> Result<(T, i32), ExecError>,
    ) -> Result<(T, RunScope), ExecError> {
        let mut leaders = leaders();
        let (started, leader) = spawn()?;
        leaders.insert(leader);
        Ok((
            started,
            RunScope {
                containment: self.containment,
                cgroup: self.cgroup,
                leader,
            },
        ))
    }
}

/// The processes of one run.
pub(crate) struct RunScope {
    containment: Arc<Containment>,
    cgroup: Option<RunCgroup>,
    leader: i32,
}

impl RunScope {
    /// Pids of the run's running processes.
    pub(crate) fn members(&self) -> Vec<i32> {
        if let Some(cgroup) = &self.cgroup {
            return cgroup.pids();
        }
        let adopter = match &self.containment.mode {
            Mode::Descendants { subreaper: true } => {
                Some((nix::unistd::getpid().as_raw(), getpgrp().as_raw()))
            }
            _ => None,
        };
        // Held throughout, so that no child is started, and not yet registered, meanwhile.
        let leaders = leaders();
        // An orphan that another engine of this process moved to a cgroup is not this run's.
        let own_cgroup = cgroup_of("self");
        task_members(self.leader, adopter, |pid| {
            !leaders.contains(&pid) && cgroup_of(&pid.to_string()) == own_cgroup
        })
    }

    /// Sends `signal` to the leader's process group and to every process of the run.
    pub(crate) fn signal(&self, signal: Signal) {
        report(
            killpg(Pid::from_raw(self.leader), signal),
            signal,
            self.leader,
        );
        for pid in self.members() {
            report(kill(Pid::from_raw(pid), signal), signal, pid);
        }
    }

    /// SIGKILLs every process of the run and waits (bounded) until they are gone. Blocks.
    pub(crate) fn kill_all(&self) {
        let _ = killpg(Pid::from_raw(self.leader), Signal::SIGKILL);
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill_all();
            return;
        }
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            let members = self.members();
            if members.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    leader = self.leader,
                    left = ?members,
                    "processes of a killed task are still there"
                );
                break;
            }
            for pid in members {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(KILL_POLL_PERIOD);
        }
        self.reap_adopted();
    }

    /// Adopted orphans that ended are this process's zombies until it waits for them.
    fn reap_adopted(&self) {
        if !matches!(self.containment.mode, Mode::Descendants { subreaper: true }) {
            return;
        }
        // Leaders, this run's included, are reaped by their owners (tokio's Child); the lock
        // keeps a child being started, and not registered yet, out of the way.
        let leaders = leaders();
        let me = nix::unistd::getpid().as_raw();
        for pid in adopted_zombies(me, getpgrp().as_raw(), |pid| !leaders.contains(&pid)) {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

impl Drop for RunScope {
    fn drop(&mut self) {
        leaders().remove(&self.leader);
    }
}

/// The cgroups `/proc/<pid>/cgroup` lists for the process.
fn cgroup_of(pid: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
}

fn report(result: nix::Result<()>, signal: Signal, pid: i32) {
    if let Err(err) = result
        && err != nix::errno::Errno::ESRCH
    {
        tracing::warn!(pid, %signal, error = %err, "cannot signal a task process");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use scoot_core::{Command, RunId};

    use super::*;
    use crate::execer::os::OsExecer;
    use crate::execer::{ExecSpec, Execer, ProcessOutcome};
    use crate::output::OutputStore;

    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    }

    /// Runs a task that leaves a `setsid` sleeper behind and exits; returns the sleeper's pid
    /// once the run is over.
    async fn sleeper_left_by_a_task(containment: Containment) -> i32 {
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::new(dir.path().to_path_buf(), None, 4);
        let outputs = Arc::new(
            store
                .create(&RunId::from("0"), &Command::default())
                .unwrap(),
        );
        let execer = OsExecer {
            memory_cap: None,
            pids_max: None,
            kill_grace: Duration::from_secs(2),
            containment: Arc::new(containment),
        };
        let pid_file = dir.path().join("sleeper.pid");
        let spec = ExecSpec {
            argv: vec![
                "sh".into(),
                "-c".into(),
                format!("setsid sleep 300 & echo $! > {}", pid_file.display()),
            ],
            env: BTreeMap::new(),
            clear_env: false,
            dir: dir.path().to_path_buf(),
            outputs,
            user: None,
            sandbox: None,
            stdin: Vec::new(),
        };
        let mut process = execer.start(spec).await.unwrap();
        assert_eq!(process.wait().await, ProcessOutcome::Exited(0));
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn a_run_cgroup_ends_processes_that_left_the_group() {
        let containment = Containment::new(&format!("scoot-test-{}", std::process::id()));
        assert!(
            containment.uses_cgroups(),
            "this test needs a writable cgroup v2 hierarchy"
        );
        let sleeper = sleeper_left_by_a_task(containment).await;
        assert!(!alive(sleeper), "the setsid sleeper survived its task");
    }

    #[tokio::test]
    async fn without_cgroups_a_subreaper_ends_processes_that_left_the_group() {
        let containment = Containment {
            mode: Mode::Descendants {
                subreaper: nix::sys::prctl::set_child_subreaper(true).is_ok(),
            },
        };
        let sleeper = sleeper_left_by_a_task(containment).await;
        assert!(!alive(sleeper), "the setsid sleeper survived its task");
    }
}
