//! A task's processes as seen in /proc: their resident memory, a listing of them, and (where no
//! cgroup tracks a task) which processes belong to it: every process in its leader's process
//! group plus every descendant of those (a child may have moved to a group of its own).

use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcStat {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    rss_pages: u64,
    /// Ended but not yet reaped by its parent.
    zombie: bool,
}

/// Parses `/proc/<pid>/stat`. The command name is in parentheses and may itself contain spaces
/// or parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_once(" (")?.0.trim().parse().ok()?;
    // After ")": state(3) ppid(4) pgrp(5) ... rss(24); index 0 here is field 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        pid,
        zombie: *fields.first()? == "Z",
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        rss_pages: fields.get(21)?.parse().ok()?,
    })
}

fn all_processes() -> Vec<ProcStat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|text| parse_stat(&text))
        .collect()
}

/// The processes of the task led by `leader`: its group, plus `extra_roots`, plus all their
/// descendants.
fn task_processes(procs: &[ProcStat], leader: i32, extra_roots: &[i32]) -> Vec<ProcStat> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut members = HashSet::new();
    let mut stack: Vec<i32> = procs
        .iter()
        .filter(|p| p.pgrp == leader)
        .map(|p| p.pid)
        .chain([leader])
        .chain(extra_roots.iter().copied())
        .collect();
    while let Some(pid) = stack.pop() {
        if members.insert(pid) {
            stack.extend(children.get(&pid).into_iter().flatten());
        }
    }
    procs
        .iter()
        .filter(|p| members.contains(&p.pid))
        .copied()
        .collect()
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(4096)
}

/// Pids of the running (not zombie) processes of the task led by `leader` (see the module documentation), also counting
/// as roots the children of `adopter` outside its process group that `is_adopted` accepts:
/// orphans a child subreaper took in.
pub(crate) fn task_members(
    leader: i32,
    adopter: Option<(i32, i32)>,
    is_adopted: impl Fn(i32) -> bool,
) -> Vec<i32> {
    let procs = all_processes();
    let adopted: Vec<i32> = match adopter {
        Some((pid, pgrp)) => procs
            .iter()
            .filter(|p| p.ppid == pid && p.pgrp != pgrp && is_adopted(p.pid))
            .map(|p| p.pid)
            .collect(),
        None => Vec::new(),
    };
    task_processes(&procs, leader, &adopted)
        .into_iter()
        .filter(|p| !p.zombie)
        .map(|p| p.pid)
        .collect()
}

/// Zombie children of `parent` outside its process group that `is_adopted` accepts.
pub(crate) fn adopted_zombies(
    parent: i32,
    parent_pgrp: i32,
    is_adopted: impl Fn(i32) -> bool,
) -> Vec<i32> {
    all_processes()
        .into_iter()
        .filter(|p| p.zombie && p.ppid == parent && p.pgrp != parent_pgrp && is_adopted(p.pid))
        .map(|p| p.pid)
        .collect()
}

/// Bytes resident for the processes `pids`.
pub fn rss_bytes(pids: &[i32]) -> u64 {
    let wanted: HashSet<i32> = pids.iter().copied().collect();
    let pages: u64 = all_processes()
        .iter()
        .filter(|p| wanted.contains(&p.pid))
        .map(|p| p.rss_pages)
        .sum();
    pages * page_size()
}

/// A `ps`-like listing of the processes `pids`, written to a task's stderr when memory runs out.
pub fn listing(pids: &[i32]) -> String {
    let wanted: HashSet<i32> = pids.iter().copied().collect();
    let page = page_size();
    let mut out = String::from("PID PPID PGID RSS_KB COMMAND\n");
    for p in all_processes().iter().filter(|p| wanted.contains(&p.pid)) {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid))
            .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
            .unwrap_or_default();
        out.push_str(&format!(
            "{} {} {} {} {}\n",
            p.pid,
            p.ppid,
            p.pgrp,
            p.rss_pages * page / 1024,
            cmdline.trim_end()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parens() {
        let line = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 \
                    100 1000000 77 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                pid: 4242,
                ppid: 1,
                pgrp: 4242,
                rss_pages: 77,
                zombie: false,
            })
        );
        assert!(parse_stat(&line.replace(") S ", ") Z ")).is_some_and(|p| p.zombie));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn group_members_and_descendants_count() {
        let p = |pid, ppid, pgrp| ProcStat {
            pid,
            ppid,
            pgrp,
            rss_pages: 1,
            zombie: false,
        };
        let procs = vec![
            p(10, 1, 10),  // leader
            p(11, 10, 10), // child in the group
            p(12, 11, 12), // grandchild that left the group
            p(13, 1, 10),  // reparented group member
            p(20, 1, 20),  // unrelated
            p(30, 1, 30),  // orphan that started its own session
            p(31, 30, 30), // its child
        ];
        let pids = |extra: &[i32]| {
            let mut pids: Vec<i32> = task_processes(&procs, 10, extra)
                .iter()
                .map(|p| p.pid)
                .collect();
            pids.sort();
            pids
        };
        assert_eq!(pids(&[]), vec![10, 11, 12, 13]);
        assert_eq!(pids(&[30]), vec![10, 11, 12, 13, 30, 31]);
    }

    #[test]
    fn this_process_uses_memory() {
        let me = std::process::id() as i32;
        let procs = all_processes();
        assert!(procs.iter().any(|p| p.pid == me && p.rss_pages > 0));
    }
}
