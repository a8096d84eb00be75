//! Where a build's CPU time goes, from /proc: each process's own time and that of the children
//! it has waited for (`utime + stime`, `cutime + cstime`). An action's processes are children
//! of whoever runs them (Bazel's server for a local build, a worker for a remote one), so
//! their time lands in that process's children's time once they end.

use std::collections::BTreeMap;
use std::fs;

/// CPU seconds: the process's own and its ended children's.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cpu {
    pub own: f64,
    pub children: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            own: self.own - earlier.own,
            children: self.children - earlier.children,
        }
    }
}

impl std::ops::AddAssign for Cpu {
    fn add_assign(&mut self, other: Cpu) {
        self.own += other.own;
        self.children += other.children;
    }
}

/// One line of /proc/<pid>/stat.
struct Stat {
    name: String,
    parent: i32,
    cpu: Cpu,
}

fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

/// `None` when the process is gone (or its stat cannot be read).
fn stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: split around the last ')'.
    let (head, rest) = text.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): ppid is field 4, utime..cstime fields 14–17.
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let hz = ticks_per_second();
    Some(Stat {
        name,
        parent: fields.get(1)?.parse().ok()?,
        cpu: Cpu {
            own: (field(14)? + field(15)?) / hz,
            children: (field(16)? + field(17)?) / hz,
        },
    })
}

/// The CPU time of process `pid`.
pub fn of(pid: i32) -> Cpu {
    stat(pid).map(|s| s.cpu).unwrap_or_default()
}

/// The CPU time of every live descendant of `root`, summed by command name.
pub fn of_descendants(root: i32) -> BTreeMap<String, Cpu> {
    let mut all = BTreeMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            && let Some(stat) = stat(pid)
        {
            all.insert(pid, stat);
        }
    }
    let descends = |mut pid: i32| {
        while let Some(stat) = all.get(&pid) {
            if stat.parent == root {
                return true;
            }
            pid = stat.parent;
        }
        false
    };
    let mut by_name: BTreeMap<String, Cpu> = BTreeMap::new();
    for (pid, stat) in &all {
        if descends(*pid) {
            *by_name.entry(stat.name.clone()).or_default() += stat.cpu;
        }
    }
    by_name
}
