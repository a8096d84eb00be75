//! Finding every process a cluster child started, so that teardown leaves nothing behind.
//!
//! Workers run each task as the leader of its own process group, so signalling a worker's group
//! does not reach its tasks. A worker stops its task when it gets SIGTERM, but a task that
//! ignores SIGTERM outlives the worker's grace, and a worker that crashed or had to be SIGKILLed
//! leaves its task orphaned (re-parented away from the worker, out of reach by ancestry).
//!
//! The [`Tracker`] therefore reads `/proc` now and then (and right before anything is killed) and
//! remembers every descendant of the cluster's children, and every member of their process
//! groups, by pid *and* start time, so that a pid reused by an unrelated process is never
//! mistaken for one of ours. Teardown SIGKILLs what is still alive of that set, with the process
//! groups of its members. Without `/proc` the tracker sees nothing and teardown relies on the
//! workers alone.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgrp};

/// The fields of `/proc/<pid>/stat` the tracker uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub(crate) pid: i32,
    pub(crate) ppid: i32,
    pub(crate) pgrp: i32,
    /// Clock ticks after boot at which the process started: with the pid, its identity.
    pub(crate) start_time: u64,
    /// Ended but not yet reaped: nothing to kill, though still a link to its group.
    pub(crate) zombie: bool,
}

/// Parses one `/proc/<pid>/stat` line (see proc(5)). The command name, field 2, is in
/// parentheses and may itself contain spaces and parentheses, so fields are counted from the
/// last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let mut fields = text.get(close + 1..)?.split_ascii_whitespace();
    let zombie = fields.next()? == "Z"; // field 3
    let ppid = fields.next()?.parse().ok()?; // field 4
    let pgrp = fields.next()?.parse().ok()?; // field 5
    // Skip fields 6 to 21; field 22 is the start time.
    let start_time = fields.nth(16)?.parse().ok()?;
    Some(ProcStat {
        pid,
        ppid,
        pgrp,
        start_time,
        zombie,
    })
}

/// Every process now visible in `/proc` (empty without `/proc`). Processes that end while
/// the directory is being read are skipped.
pub(crate) fn snapshot() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.as_encoded_bytes();
            !name.is_empty() && name.iter().all(u8::is_ascii_digit)
        })
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter_map(|text| parse_stat(&text))
        .collect()
}

fn stat_of(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The processes of `procs` reachable from `seeds` through parenthood or process-group
/// membership (a process whose group leader is reached is reached too), seeds excluded.
pub(crate) fn reachable(procs: &[ProcStat], seeds: &HashSet<i32>) -> Vec<ProcStat> {
    let mut reached: HashSet<i32> = seeds.clone();
    let mut found = Vec::new();
    loop {
        let before = found.len();
        for p in procs {
            if !reached.contains(&p.pid) && (reached.contains(&p.ppid) || reached.contains(&p.pgrp))
            {
                reached.insert(p.pid);
                found.push(*p);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

#[derive(Default)]
struct TrackerState {
    /// The cluster's children: pid → start time.
    roots: HashMap<i32, u64>,
    /// Everything seen reachable from a root and still alive when last looked at.
    seen: HashMap<i32, u64>,
}

/// Remembers the processes that belong to a cluster; see the module documentation.
pub(crate) struct Tracker {
    state: Mutex<TrackerState>,
    own_pid: i32,
    own_pgrp: i32,
}

impl Default for Tracker {
    fn default() -> Tracker {
        Tracker {
            state: Mutex::default(),
            own_pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            own_pgrp: getpgrp().as_raw(),
        }
    }
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        // The state stays consistent even if a holder panicked: every update is one insert.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a just-started child of the cluster.
    pub(crate) fn add_root(&self, pid: i32) {
        if let Some(stat) = stat_of(pid) {
            self.lock().roots.insert(pid, stat.start_time);
        }
    }

    pub(crate) fn remove_root(&self, pid: i32) {
        self.lock().roots.remove(&pid);
    }

    /// Looks at `/proc` and remembers what the cluster's children started.
    pub(crate) fn scan(&self) {
        self.observe(&snapshot());
    }

    fn observe(&self, procs: &[ProcStat]) {
        let alive: HashMap<i32, u64> = procs.iter().map(|p| (p.pid, p.start_time)).collect();
        let is_alive = |pid: &i32, start: &mut u64| alive.get(pid) == Some(start);
        let mut state = self.lock();
        state.roots.retain(is_alive);
        state.seen.retain(is_alive);
        let seeds: HashSet<i32> = state
            .roots
            .keys()
            .chain(state.seen.keys())
            .copied()
            .collect();
        for p in reachable(procs, &seeds) {
            if p.pid != self.own_pid && p.pgrp != self.own_pgrp {
                state.seen.insert(p.pid, p.start_time);
            }
        }
    }

    /// SIGKILLs every remembered process that is still alive (zombies are left to their
    /// parents), and its process group; returns how many processes that was. The children themselves are left to their owner, although
    /// a child sharing a group with a descendant goes with that group.
    pub(crate) fn kill_all(&self) -> usize {
        let procs = snapshot();
        self.observe(&procs);
        let groups: HashMap<i32, i32> = procs
            .iter()
            .filter(|p| !p.zombie)
            .map(|p| (p.pid, p.pgrp))
            .collect();
        let targets: Vec<(i32, i32)> = {
            let state = self.lock();
            state
                .seen
                .keys()
                .filter_map(|pid| Some((*pid, *groups.get(pid)?)))
                .collect()
        };
        let mut killed_groups = HashSet::new();
        for &(pid, pgrp) in &targets {
            if pgrp > 1 && pgrp != self.own_pgrp && killed_groups.insert(pgrp) {
                ignore_gone(
                    killpg(Pid::from_raw(pgrp), Signal::SIGKILL),
                    "process group",
                    pgrp,
                );
            }
            ignore_gone(kill(Pid::from_raw(pid), Signal::SIGKILL), "process", pid);
        }
        if !targets.is_empty() {
            tracing::info!(
                count = targets.len(),
                "killed processes left behind by cluster children"
            );
        }
        targets.len()
    }
}

/// Logs a failed signal unless the target is already gone.
pub(crate) fn ignore_gone(result: nix::Result<()>, what: &str, id: i32) {
    match result {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(err) => tracing::warn!(%err, id, "cannot signal {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i32, ppid: i32, pgrp: i32) -> ProcStat {
        ProcStat {
            pid,
            ppid,
            pgrp,
            start_time: 100 + pid as u64,
            zombie: false,
        }
    }

    #[test]
    fn parses_stat_lines() {
        let line = "4242 (sleep) S 4200 4242 4100 34816 4242 4194304 97 0 0 0 0 0 0 0 20 0 1 0 \
                    123456 8527872 196 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                pid: 4242,
                ppid: 4200,
                pgrp: 4242,
                start_time: 123456,
                zombie: false,
            })
        );
        let tricky = "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0";
        assert_eq!(
            parse_stat(tricky).map(|s| (s.ppid, s.start_time)),
            Some((1, 99))
        );
        let zombie = "9 (z) Z 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 0 0";
        assert!(parse_stat(zombie).unwrap().zombie);
        assert_eq!(parse_stat("12 (x) S 1 12"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_visible() {
        let me = i32::try_from(std::process::id()).unwrap();
        let stat = stat_of(me).expect("this test needs /proc");
        assert_eq!(stat.pid, me);
        assert!(snapshot().iter().any(|s| s.pid == me));
    }

    #[test]
    fn reachable_follows_parents_and_groups() {
        let procs = [
            p(1, 0, 1),
            p(10, 1, 10),  // a worker (root)
            p(11, 10, 11), // its task, own group
            p(12, 11, 11), // the task's child
            p(13, 1, 11),  // a daemonised member of the task's group
            p(14, 13, 14), // its child in a new group
            p(20, 1, 20),  // unrelated
            p(21, 20, 20), // unrelated
        ];
        let seeds = HashSet::from([10]);
        let mut found: Vec<i32> = reachable(&procs, &seeds).iter().map(|s| s.pid).collect();
        found.sort_unstable();
        assert_eq!(found, vec![11, 12, 13, 14]);
        assert!(reachable(&procs, &HashSet::from([99])).is_empty());
    }

    #[test]
    fn tracker_remembers_orphans_and_forgets_reused_pids() {
        let tracker = Tracker {
            state: Mutex::default(),
            own_pid: 1000,
            own_pgrp: 1000,
        };
        tracker.lock().roots.insert(10, 110);
        tracker.observe(&[p(10, 1000, 10), p(11, 10, 11), p(12, 1000, 1000)]);
        assert_eq!(
            tracker.lock().seen.keys().copied().collect::<Vec<_>>(),
            vec![11]
        );
        // The worker died; its task was re-parented to init and has started a child.
        tracker.observe(&[p(11, 1, 11), p(15, 11, 11)]);
        let mut seen: Vec<i32> = tracker.lock().seen.keys().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![11, 15]);
        assert!(tracker.lock().roots.is_empty());
        // Pid 11 now belongs to another process: forgotten, and so is what it reached.
        let reused = ProcStat {
            start_time: 5,
            ..p(11, 1, 11)
        };
        tracker.observe(&[reused, p(16, 11, 16)]);
        assert!(tracker.lock().seen.is_empty());
    }
}
