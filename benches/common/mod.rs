//! What every benchmark shares: recording results in docs/benchmarks.md.

use crate::support::repo_root;

/// What the file says before its sections.
const HEADER: &str = "Produced by `make bench`; each section is rewritten when its benchmark runs. \
The machine is a shared 2-core VM: on repeated runs the same code has varied by ±30 % (latencies \
and fsync-bound figures more), so a figure near its goal can land on either side of it.";

/// Replaces (or appends) the `## <title>` section of docs/benchmarks.md, recording the machine.
pub fn write_benchmark_section(title: &str, section: &str) {
    let path = repo_root().join("docs/benchmarks.md");
    let existing =
        std::fs::read_to_string(&path).unwrap_or_else(|_| format!("# Benchmarks\n\n{HEADER}\n\n"));
    let machine = machine_description();
    let section = format!("{}\n\nMachine: {machine}.\n\n", section.trim_end());
    let heading = format!("## {title}\n");
    let updated = match existing.find(&heading) {
        Some(start) => {
            let end = existing[start + heading.len()..]
                .find("\n## ")
                .map(|i| start + heading.len() + i + 1)
                .unwrap_or(existing.len());
            format!("{}{}{}", &existing[..start], section, &existing[end..])
        }
        None => format!("{existing}{section}"),
    };
    std::fs::write(&path, updated).unwrap();
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024 / 1024)
        .unwrap_or(0);
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem_gib} GiB, measured {date}")
}
