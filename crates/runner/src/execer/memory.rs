//! Memory used by a task: the resident set of every process in its process group plus every
//! descendant of its leader (a child may have moved to a group of its own), read from /proc.

use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcStat {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    rss_pages: u64,
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

fn task_processes(procs: &[ProcStat], leader: i32) -> Vec<ProcStat> {
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

/// Bytes resident for the task led by `leader` (which leads its own process group).
pub fn task_rss_bytes(leader: i32) -> u64 {
    let pages: u64 = task_processes(&all_processes(), leader)
        .iter()
        .map(|p| p.rss_pages)
        .sum();
    pages * page_size()
}

/// A `ps`-like listing of the task's processes, written to its stderr when memory runs out.
pub fn task_listing(leader: i32) -> String {
    let page = page_size();
    let mut out = String::from("PID PPID PGID RSS_KB COMMAND\n");
    for p in task_processes(&all_processes(), leader) {
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
                rss_pages: 77
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn group_members_and_descendants_count() {
        let p = |pid, ppid, pgrp| ProcStat {
            pid,
            ppid,
            pgrp,
            rss_pages: 1,
        };
        let procs = vec![
            p(10, 1, 10),  // leader
            p(11, 10, 10), // child in the group
            p(12, 11, 12), // grandchild that left the group
            p(13, 1, 10),  // reparented group member
            p(20, 1, 20),  // unrelated
        ];
        let mut pids: Vec<i32> = task_processes(&procs, 10).iter().map(|p| p.pid).collect();
        pids.sort();
        assert_eq!(pids, vec![10, 11, 12, 13]);
    }

    #[test]
    fn this_process_uses_memory() {
        let me = std::process::id() as i32;
        let procs = all_processes();
        assert!(procs.iter().any(|p| p.pid == me && p.rss_pages > 0));
    }
}
