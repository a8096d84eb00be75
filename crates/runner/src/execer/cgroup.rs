//! A cgroup v2 directory per run, under one directory per worker.
//!
//! A process cannot leave its cgroup by forking, `setsid` or being orphaned, so a run's cgroup
//! holds every process the run started, and `cgroup.kill` ends them all at once. The workers'
//! directories are under `scoot-workers` beside the worker's own cgroup, each named after its
//! worker, so a restarted worker finds (and kills) the runs its previous incarnation left behind.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Holds the workers' directories, beside the cgroup of the process that created them.
const WORKERS_DIR: &str = "scoot-workers";
/// How long the processes of a killed cgroup may take to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const KILL_POLL_PERIOD: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system is mounted")]
    NotMounted,
    #[error("this process's cgroup v2 path is unknown: {0}")]
    OwnPath(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first cgroup2 mount in `/proc/self/mountinfo`: the cgroup it shows as its root (not `/`
/// for a bind mount of a subtree) and where it is mounted.
fn cgroup2_mount(mountinfo: &str) -> Option<(String, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        if filesystem.split(' ').next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = mount.split(' ').collect();
        Some((
            unescape(fields.get(3)?),
            PathBuf::from(unescape(fields.get(4)?)),
        ))
    })
}

/// The directory of this process's cgroup, from `/proc/self/mountinfo` and `/proc/self/cgroup`
/// (whose v2 line is `0::/path`).
fn own_cgroup_dir(mountinfo: &str, proc_cgroup: &str) -> Result<PathBuf, CgroupError> {
    let (root, mount) = cgroup2_mount(mountinfo).ok_or(CgroupError::NotMounted)?;
    let own = proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or_else(|| CgroupError::OwnPath("no cgroup v2 line in /proc/self/cgroup".into()))?;
    let relative = if root == "/" {
        own
    } else {
        own.strip_prefix(root.as_str())
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .ok_or_else(|| {
                CgroupError::OwnPath(format!("{own} is outside the mounted cgroup tree {root}"))
            })?
    };
    Ok(mount.join(relative.trim_start_matches('/')))
}

/// A worker's cgroup directory: one child cgroup per run.
#[derive(Debug)]
pub(crate) struct WorkerCgroup {
    dir: PathBuf,
    next_run: AtomicU64,
}

impl WorkerCgroup {
    /// Creates (or takes over) the cgroup `name` among the workers' directories, killing and
    /// removing any run a previous owner left in it. Empty directories of other workers (a
    /// SIGKILLed worker cannot remove its own) are removed too: a live one recreates its own.
    pub(crate) fn open(name: &str) -> Result<WorkerCgroup, CgroupError> {
        let read = |path: &str| std::fs::read_to_string(path).map_err(io_error(Path::new(path)));
        let workers = own_cgroup_dir(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?)?
            .join(WORKERS_DIR);
        let dir = workers.join(name);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        // Moving a process in needs cgroup.procs writable: a read-only delegation fails here.
        // (The parent's is tried, as another worker starting may remove an empty `dir`.)
        OpenOptions::new()
            .write(true)
            .open(workers.join("cgroup.procs"))
            .map_err(io_error(&workers))?;
        for leftover in subdirectories(&dir) {
            tracing::info!(cgroup = %leftover.display(), "killing what a previous worker left running");
            kill_tree(&leftover);
        }
        for other in subdirectories(&workers) {
            if other != dir {
                // Fails, as it should, for a directory with runs in it.
                let _ = std::fs::remove_dir(&other);
            }
        }
        Ok(WorkerCgroup {
            dir,
            next_run: AtomicU64::new(0),
        })
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh, empty cgroup for one run.
    pub(crate) fn new_run(&self) -> Result<RunCgroup, CgroupError> {
        // Another worker starting may remove this worker's directory while it has no run; the
        // second attempt follows such a removal between the two mkdirs.
        let mut attempts = 0;
        let dir = loop {
            let n = self.next_run.fetch_add(1, Ordering::Relaxed);
            let dir = self.dir.join(format!("run-{n}"));
            match std::fs::create_dir_all(&self.dir).and_then(|()| std::fs::create_dir(&dir)) {
                Ok(()) => break dir,
                // Left by a run that could not be cleaned up; it is tried again at next start.
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound && attempts == 0 => {
                    attempts += 1;
                }
                Err(err) => return Err(io_error(&dir)(err)),
            }
        };
        let procs = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(io_error(&dir));
        match procs {
            Ok(procs) => Ok(RunCgroup { dir, procs }),
            Err(err) => {
                let _ = std::fs::remove_dir(&dir);
                Err(err)
            }
        }
    }
}

impl Drop for WorkerCgroup {
    fn drop(&mut self) {
        // Succeeds once every run is gone; otherwise the next worker of this name cleans up.
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// One run's cgroup. Dropping it without [`RunCgroup::kill_all`] still kills its processes.
#[derive(Debug)]
pub(crate) struct RunCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened by the worker so that the child can join before `exec` whatever
    /// identity it runs under by then (the kernel checks the opener's credentials).
    procs: File,
}

impl RunCgroup {
    /// The open `cgroup.procs`: a child writing `0` to it moves itself into the run.
    pub(crate) fn join_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Every process in the run.
    pub(crate) fn pids(&self) -> Vec<i32> {
        tree_pids(&self.dir)
    }

    /// SIGKILLs every process in the run, waits (bounded) until they are gone and removes the
    /// cgroup. Blocks; nothing to do once done.
    pub(crate) fn kill_all(&self) {
        kill_tree(&self.dir);
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        // Removal fails while killed processes are still exiting; the next worker of this name
        // removes the cgroup then.
        let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .map(|entry| entry.path())
        .collect()
}

/// The processes of the cgroup at `dir` and of the cgroups a task may have made under it.
fn tree_pids(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    for sub in subdirectories(dir) {
        pids.extend(tree_pids(&sub));
    }
    pids
}

/// Whether any process is left in the cgroup tree at `dir` (false once it is removed).
fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map(|events| events.lines().any(|line| line == "populated 1"))
        .unwrap_or(false)
}

/// Kills everything in the cgroup tree at `dir` and removes it.
fn kill_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let deadline = Instant::now() + KILL_TIMEOUT;
    // cgroup.kill (Linux 5.14) also catches processes forked while it works.
    let kill_file = std::fs::write(dir.join("cgroup.kill"), "1").is_ok();
    while populated(dir) {
        if !kill_file {
            for pid in tree_pids(dir) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if Instant::now() >= deadline {
            tracing::warn!(cgroup = %dir.display(), "processes of a killed task are still there; the cgroup stays");
            return;
        }
        std::thread::sleep(KILL_POLL_PERIOD);
    }
    remove_tree(dir);
}

fn remove_tree(dir: &Path) {
    for sub in subdirectories(dir) {
        remove_tree(&sub);
    }
    if let Err(err) = std::fs::remove_dir(dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(cgroup = %dir.display(), error = %err, "cannot remove a task's cgroup");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_cgroup2_mount_among_v1_ones() {
        assert_eq!(
            cgroup2_mount(HYBRID),
            Some(("/".to_string(), PathBuf::from("/sys/fs/cgroup/unified")))
        );
        let pure =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount(pure),
            Some(("/".to_string(), PathBuf::from("/sys/fs/cgroup")))
        );
        assert_eq!(cgroup2_mount(&HYBRID.replace("cgroup2", "tmpfs")), None);
    }

    #[test]
    fn mount_points_are_unescaped() {
        let line = "41 31 0:38 / /mnt/my\\040cgroups rw - cgroup2 none rw\n";
        assert_eq!(
            cgroup2_mount(line).map(|(_, mount)| mount),
            Some(PathBuf::from("/mnt/my cgroups"))
        );
        assert_eq!(unescape("a\\134b\\04"), "a\\b\\04");
    }

    #[test]
    fn own_cgroup_is_joined_to_the_mount() {
        let proc_cgroup = "4:memory:/elsewhere\n0::/system.slice/scoot.service\n";
        assert_eq!(
            own_cgroup_dir(HYBRID, proc_cgroup).unwrap(),
            PathBuf::from("/sys/fs/cgroup/unified/system.slice/scoot.service")
        );
        assert_eq!(
            own_cgroup_dir(HYBRID, "0::/\n").unwrap(),
            PathBuf::from("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn a_mount_of_a_subtree_is_allowed_for() {
        let subtree = "50 23 0:38 /system.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_cgroup_dir(subtree, "0::/system.slice/scoot.service\n").unwrap(),
            PathBuf::from("/sys/fs/cgroup/scoot.service")
        );
        assert!(matches!(
            own_cgroup_dir(subtree, "0::/system.slicer/x\n"),
            Err(CgroupError::OwnPath(_))
        ));
    }

    #[test]
    fn missing_pieces_are_errors() {
        assert!(matches!(
            own_cgroup_dir("", "0::/\n"),
            Err(CgroupError::NotMounted)
        ));
        assert!(matches!(
            own_cgroup_dir(HYBRID, "4:memory:/\n"),
            Err(CgroupError::OwnPath(_))
        ));
    }
}
