//! Bazel 2.1 building a generated workspace of about a thousand actions (benches/bazel_scale/
//! workspace.rs: a deep chain and a wide fan of genrules, ~100 C++ files, one 100 MiB output)
//! locally, remotely cold and remotely warm, at two sizes so that the table shows how the
//! remote/local ratio grows with the build; and once with `--jobs=200` against the cluster,
//! counting from the scheduler's metrics every Execute it refused and every call made again.
//! Beside the times: where the remote actions' time went (the scheduler's metrics), the CPU
//! time of Bazel, the actions and each cluster process (/proc), and Bazel's critical path (its
//! `--profile`, kept in target/e2e-logs/bazel-scale-*.profile).
//!
//! Goals (issue 17): remote cold ≤ 1.2× local, warm ≤ 0.2× local; `--jobs=200` succeeds with
//! no refusal. Under `cargo test` (no `--bench`) it builds a workspace of ~20 actions with a
//! 1 MiB output once each way, to prove the benchmark still works, and writes nothing.

// A benchmark reports an unexpected failure by panicking.
#![allow(clippy::unwrap_used)]

// The test module's own tests are not compiled here, so what only they use looks unused.
#[path = "../tests/e2e/bazel.rs"]
#[allow(dead_code, unused_imports, clippy::unwrap_used)]
mod bazel;
#[allow(dead_code)]
mod common;
#[path = "bazel_scale/cpu.rs"]
mod cpu;
#[path = "../tests/e2e/support.rs"]
#[allow(dead_code, clippy::unwrap_used)]
mod support;
#[path = "bazel_scale/workspace.rs"]
mod workspace;

use std::collections::BTreeMap;
use std::time::Instant;

use bazel::{
    Bazel, Sample, assert_all_remote, assert_all_remote_cache_hits, bazel_binary, process_summary,
};
use cpu::Cpu;
use support::{LocalCluster, repo_root};
use workspace::Shape;

/// Clear of the end-to-end tests' offsets (200–900) and of benches/bazel.rs (1500).
const PORT_OFFSET: u16 = 1600;

const MIB: u64 = 1 << 20;

/// What a profile of the whole benchmark showed, written by hand (the figures in the section
/// are measured anew on every run; these are not).
const PROFILE_NOTES: &str = "Profile (by hand on 2026-12-05: `perf record -a -F 299 -g` over \
one whole `cargo bench --bench bazel_scale`, samples given to our processes by their binary): \
most of our processes' CPU is the kernel's, 80 % of the workers' samples and 69 % of the \
scheduler's. Scheduler: creating files 27 % (`openat`: a saga log file per action's job, a \
temporary file per CAS blob), `fsync` 11 % (saga log and CAS commits), futex wake-ups 9 %, \
socket writes 7 %. Workers: `openat` 15 % and `mkdir` 11 % (mostly \
`scoot_action_runner::inputs::lay_out` making each action's input tree, and its output \
directories), fork, clone and exec of the sandbox launcher and the action 9 %, reading \
`/proc/<pid>/stat` of every process on the machine 9 % (the memory check at a run's start and \
every 500 ms: `rss_bytes` lists all of /proc to find a task's few pids), page faults 8 %. Half \
to three quarters of the `openat` and `mkdir` time is ext4 choosing an inode for the new file \
(`find_inode_bit`, `recently_deleted`, `ext4_get_group_desc`), which grows with the files \
created and deleted on the disk. So the cluster adds 20–30 ms of CPU per action to what \
Bazel and the action use, on cores a local build already keeps ~90 % busy, and each link of \
the chain costs 2–3 times its local time. Candidates, none tried here: fewer files and \
directories created per action (saga records appended to a shared log rather than a file per \
job, small blobs stored together), reading only the task's own pids' stat files, and starting \
actions on the critical path first (Bazel 2.1 sends no priority and the scheduler queues in \
arrival order, so with `--jobs=200` the chain's next link waits behind hundreds of fan \
actions: the longest link of that critical path).";

/// Remote builds' `--jobs`, as in benches/bazel.rs: a few more than the cluster's 5 workers.
const REMOTE_JOBS: &str = "--jobs=8";

/// What a run measures: the workspace sizes (about so many actions) with their rounds, and
/// the big output's size.
struct Plan {
    sizes: &'static [(usize, usize)],
    big_bytes: u64,
}

/// Three rounds at the full size, two at the smaller, keep a run near 5 minutes here.
const BENCH: Plan = Plan {
    sizes: &[(250, 2), (1000, 3)],
    big_bytes: 100 * MIB,
};

const SMOKE: Plan = Plan {
    sizes: &[(20, 1)],
    big_bytes: MIB,
};

/// Every `outcome` label of `scoot_reapi_execute_requests_total` (docs/metrics.md).
const OUTCOMES: [&str; 6] = [
    "queued",
    "cached",
    "merged",
    "failed_precondition",
    "invalid_argument",
    "error",
];

/// The outcomes that are refusals: the cluster has no configured limit that refuses an Execute.
const REFUSALS: [&str; 3] = ["failed_precondition", "invalid_argument", "error"];

/// The phases of `scoot_reapi_action_phase_seconds` that workers time. (Its `queued` phase is
/// left out: it stays empty, the queued time being added to the metadata after it is recorded;
/// `scoot_reapi_queue_wait_seconds` holds that wait.)
const PHASES: [&str; 3] = ["input_fetch", "execution", "output_upload"];

/// The scheduler's Prometheus metrics, read once.
struct Metrics(String);

impl Metrics {
    fn of(cluster: &LocalCluster) -> Metrics {
        // The scheduler's HTTP port is 9091 (docs/metrics.md), shifted like every other port.
        let response = support::http_get(9091 + cluster.offset, "/metrics", &[]);
        assert_eq!(response.status, 200, "GET /metrics: {}", response.text());
        Metrics(response.text())
    }

    /// The sum of the samples named `name` whose labels include `label` (`""`: every one).
    fn value(&self, name: &str, label: &str) -> f64 {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (key, value) = line.rsplit_once(' ')?;
                let (sample, labels) = key.split_once('{').unwrap_or((key, ""));
                (sample == name && labels.contains(label)).then(|| value.parse::<f64>().ok())?
            })
            .sum()
    }

    fn executes(&self, outcome: &str) -> u64 {
        self.value(
            "scoot_reapi_execute_requests_total",
            &format!("outcome=\"{outcome}\""),
        ) as u64
    }

    fn refused(&self) -> u64 {
        REFUSALS.iter().map(|o| self.executes(o)).sum()
    }

    fn execute_requests(&self) -> u64 {
        OUTCOMES.iter().map(|o| self.executes(o)).sum()
    }

    fn task_retries(&self) -> u64 {
        self.value("scoot_scheduler_task_retries_total", "") as u64
    }

    /// The mean of histogram `name`'s samples whose labels include `label`, in ms.
    fn mean_ms(&self, name: &str, label: &str) -> f64 {
        let sum = self.value(&format!("{name}_sum"), label);
        let count = self.value(&format!("{name}_count"), label);
        if count == 0.0 {
            0.0
        } else {
            sum / count * 1000.0
        }
    }

    fn phases(&self) -> String {
        let waited = self.mean_ms("scoot_reapi_queue_wait_seconds", "");
        let phases = PHASES.iter().map(|p| {
            let took = self.mean_ms(
                "scoot_reapi_action_phase_seconds",
                &format!("phase=\"{p}\""),
            );
            format!("{} {took:.0} ms", p.replace('_', " "))
        });
        std::iter::once(format!("waiting for a worker {waited:.0} ms"))
            .chain(phases)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn outcomes(&self) -> String {
        OUTCOMES
            .iter()
            .map(|o| (o, self.executes(o)))
            .filter(|(_, n)| *n > 0)
            .map(|(o, n)| format!("{n} {}", o.replace('_', " ")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The median; of an even number of values, the mean of the middle two.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// The median of each round's `a / b`.
fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    median(a.iter().zip(b).map(|(a, b)| a / b).collect())
}

/// The process id of a Bazel server (started, if it was not).
fn server_pid(bazel: &Bazel) -> i32 {
    let output = bazel.run("server-pid", &["info", "server_pid"]);
    output
        .lines()
        .rev()
        .find_map(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in `bazel info server_pid`:\n{output}"))
}

/// Where the CPU time of one build went, in CPU seconds.
#[derive(Default)]
struct CpuUse {
    /// Bazel's server itself.
    bazel: f64,
    /// The actions: Bazel's server's children locally, the workers' children remotely.
    actions: f64,
    /// The cluster's processes themselves, by command name, since the cluster started.
    cluster: BTreeMap<String, f64>,
}

impl CpuUse {
    fn local(bazel: Cpu) -> CpuUse {
        CpuUse {
            bazel: bazel.own,
            actions: bazel.children,
            cluster: BTreeMap::new(),
        }
    }

    fn remote(bazel: Cpu, cluster: &LocalCluster) -> CpuUse {
        let by_name = cpu::of_descendants(cluster.proc.pid().as_raw());
        CpuUse {
            bazel: bazel.own,
            actions: by_name.get("workerserver").map_or(0.0, |c| c.children),
            cluster: by_name.into_iter().map(|(n, c)| (n, c.own)).collect(),
        }
    }

    fn total(&self) -> f64 {
        self.bazel + self.actions + self.cluster.values().sum::<f64>()
    }

    /// e.g. "Bazel's server 20.1 s, actions 15.0 s, scheduler 3.2 s, …"
    fn parts(&self) -> String {
        let mut parts = vec![
            format!("Bazel's server {:.1} s", self.bazel),
            format!("the actions {:.1} s", self.actions),
        ];
        let mut cluster: Vec<_> = self.cluster.iter().filter(|(_, s)| **s >= 0.05).collect();
        cluster.sort_by(|a, b| b.1.total_cmp(a.1));
        parts.extend(cluster.iter().map(|(name, s)| format!("{name} {s:.1} s")));
        parts.join(", ")
    }
}

/// The critical path of a build, from Bazel's profile: its actions one after the other.
#[derive(Default)]
struct CriticalPath {
    seconds: f64,
    links: usize,
    median_ms: f64,
    longest_ms: f64,
}

impl CriticalPath {
    /// Reads Bazel's JSON trace profile (`--profile`): one `critical path component` event
    /// per action on the path, `dur` in µs.
    fn of_profile(path: &std::path::Path) -> CriticalPath {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("Bazel's profile {}: {e}", path.display()));
        let profile: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("Bazel's profile {}: {e}", path.display()));
        let links: Vec<f64> = profile["traceEvents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["cat"] == "critical path component")
            .filter_map(|e| e["dur"].as_f64())
            .map(|us| us / 1000.0)
            .collect();
        if links.is_empty() {
            return CriticalPath::default();
        }
        CriticalPath {
            seconds: links.iter().sum::<f64>() / 1000.0,
            links: links.len(),
            longest_ms: links.iter().copied().fold(0.0, f64::max),
            median_ms: median(links),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{:.1} s ({} actions, median {:.0} ms, longest {:.0} ms)",
            self.seconds, self.links, self.median_ms, self.longest_ms
        )
    }
}

/// One timed build: its seconds, Bazel's output and critical path.
struct Build {
    seconds: f64,
    output: String,
    critical_path: CriticalPath,
}

/// Cleans, then times `bazel build //...` with `options`, keeping Bazel's profile of it in
/// target/e2e-logs (the last round's of each kind stays).
fn timed_build(bazel: &Bazel, step: &str, options: &[&str]) -> Build {
    bazel.run("clean", &["clean"]);
    let profile_path = repo_root().join(format!("target/e2e-logs/bazel-scale-{step}.profile"));
    let profile = format!("--profile={}", profile_path.display());
    let mut args = vec![
        "build",
        "--color=no",
        "--curses=no",
        // No convenience symlinks: the local and the remote server share the workspace.
        "--symlink_prefix=/",
        &profile,
    ];
    args.extend(options);
    args.push("//...");
    let started = Instant::now();
    let output = bazel.run(step, &args);
    let seconds = started.elapsed().as_secs_f64();
    Build {
        seconds,
        output,
        critical_path: CriticalPath::of_profile(&profile_path),
    }
}

/// What the builds of one workspace size measured, in seconds per round.
struct SizeResult {
    shape: Shape,
    /// Bazel's count of the processes of a local build.
    actions: u64,
    local: Vec<f64>,
    cold: Vec<f64>,
    warm: Vec<f64>,
    /// The scheduler's metrics after the last cold build.
    cold_metrics: Metrics,
    /// The last round's local and cold builds, looked into.
    last_local: Examined,
    last_cold: Examined,
}

/// Where one build's time went.
#[derive(Default)]
struct Examined {
    seconds: f64,
    cpu: CpuUse,
    critical_path: CriticalPath,
}

impl Examined {
    fn of(build: Build, cpu: CpuUse) -> Examined {
        Examined {
            seconds: build.seconds,
            cpu,
            critical_path: build.critical_path,
        }
    }

    /// e.g. "45.8 CPU-s in 26.6 s (86 % of the 2 cores): Bazel's server 23.6 s, …"
    fn cpu_use(&self) -> String {
        let total = self.cpu.total();
        format!(
            "{total:.1} CPU-s in {:.1} s ({:.0} % of the 2 cores): {}",
            self.seconds,
            total / (2.0 * self.seconds) * 100.0,
            self.cpu.parts()
        )
    }
}

impl SizeResult {
    fn cold_ratio(&self) -> f64 {
        median_ratio(&self.cold, &self.local)
    }

    fn warm_ratio(&self) -> f64 {
        median_ratio(&self.warm, &self.local)
    }
}

/// The `--jobs=200` build: its time, critical path and the scheduler's metrics after it.
struct ManyJobs {
    seconds: f64,
    critical_path: CriticalPath,
    remote: u64,
    metrics: Metrics,
}

/// Builds one generated workspace locally, remotely cold and warm, `rounds` times (then, if
/// `many_jobs`, once with `--jobs=200` on a fresh cluster).
fn measure(
    bazel_bin: &std::path::Path,
    shape: Shape,
    rounds: usize,
    many_jobs: bool,
) -> (SizeResult, Option<ManyJobs>) {
    let sample = Sample::with_workspace(|dir| shape.write(dir));
    // One Bazel server per mode: switching a server between local and remote options would
    // throw its analysis away and time it with the build.
    let local_bazel = sample.bazel_in(bazel_bin.to_path_buf(), "root-local");
    let remote_bazel = sample.bazel_in(bazel_bin.to_path_buf(), "root-remote");
    // The servers start, load every package and warm up their JIT here, outside every
    // measurement (a `bazel clean` drops the analysis, so each timed build repeats it).
    let nobuild = ["build", "--color=no", "--curses=no", "--nobuild", "//..."];
    local_bazel.run("warm-up-local", &nobuild);

    let mut result = SizeResult {
        shape,
        actions: 0,
        local: Vec::new(),
        cold: Vec::new(),
        warm: Vec::new(),
        cold_metrics: Metrics(String::new()),
        last_local: Examined::default(),
        last_cold: Examined::default(),
    };
    let local_pid = server_pid(&local_bazel);
    let remote_pid = server_pid(&remote_bazel);
    // Rounds interleave the three builds, so that the machine's drift (it is shared and
    // noisy) affects them alike; the ratios are taken within each round.
    for round in 0..rounds {
        let before = cpu::of(local_pid);
        let build = timed_build(&local_bazel, "local", &[]);
        let used = CpuUse::local(cpu::of(local_pid) - before);
        result.actions = process_summary("local", &build.output).real();
        result.local.push(build.seconds);
        result.last_local = Examined::of(build, used);

        let cluster = LocalCluster::start(PORT_OFFSET);
        let remote = format!("--remote_executor=grpc://{}", cluster.grpc_addr());
        let options = [remote.as_str(), REMOTE_JOBS];
        if round == 0 {
            // --nobuild asks the cluster its capabilities only: its caches stay empty.
            let mut warm_up = nobuild.to_vec();
            warm_up.extend(options);
            remote_bazel.run("warm-up-remote", &warm_up);
        }
        let before = cpu::of(remote_pid);
        let build = timed_build(&remote_bazel, "remote-cold", &options);
        assert_all_remote("remote-cold", &build.output);
        let used = CpuUse::remote(cpu::of(remote_pid) - before, &cluster);
        result.cold.push(build.seconds);
        result.last_cold = Examined::of(build, used);
        result.cold_metrics = Metrics::of(&cluster);
        let build = timed_build(&remote_bazel, "remote-warm", &options);
        assert_all_remote_cache_hits("remote-warm", &build.output);
        result.warm.push(build.seconds);
    }
    let many = many_jobs.then(|| {
        let cluster = LocalCluster::start(PORT_OFFSET);
        let remote = format!("--remote_executor=grpc://{}", cluster.grpc_addr());
        let build = timed_build(
            &remote_bazel,
            "remote-cold-jobs-200",
            &[remote.as_str(), "--jobs=200"],
        );
        let remote = assert_all_remote("remote-cold-jobs-200", &build.output).count("remote");
        ManyJobs {
            seconds: build.seconds,
            critical_path: build.critical_path,
            remote,
            metrics: Metrics::of(&cluster),
        }
    });
    (result, many)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "not met" }
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let plan = if benchmarking { BENCH } else { SMOKE };
    let started = Instant::now();
    let bazel_bin = bazel_binary();
    let mut sizes = Vec::new();
    let mut many = None;
    for (i, &(actions, rounds)) in plan.sizes.iter().enumerate() {
        let largest = i + 1 == plan.sizes.len();
        let (result, jobs) = measure(
            &bazel_bin,
            Shape::of_about(actions, plan.big_bytes),
            rounds,
            largest,
        );
        sizes.push(result);
        many = many.or(jobs);
    }
    let many = many.unwrap();
    let full = sizes.last().unwrap();

    let (local, cold, warm) = (
        median(full.local.clone()),
        median(full.cold.clone()),
        median(full.warm.clone()),
    );
    let (cold_ratio, warm_ratio) = (full.cold_ratio(), full.warm_ratio());
    let refused = many.metrics.refused();
    // Bazel makes an Execute again after a transient error; an action is one Execute otherwise.
    let again = many.metrics.execute_requests().saturating_sub(many.remote);
    let rows = [
        format!(
            "| local (linux-sandbox, Bazel's default `--jobs`) | {local:.1} s | the reference | |"
        ),
        format!(
            "| remote, cold (`{REMOTE_JOBS}`; fresh cluster: 5 workers, empty caches) | {cold:.1} s | \
             {cold_ratio:.2}× local | ≤ 1.2×: {} |",
            met(cold_ratio <= 1.2)
        ),
        format!(
            "| remote, warm (every action a cache hit) | {warm:.1} s | {warm_ratio:.2}× local | \
             ≤ 0.2×: {} |",
            met(warm_ratio <= 0.2)
        ),
        format!(
            "| remote, cold, `--jobs=200` (one run) | {:.1} s | {:.2}× local, {:.2}× the \
             `{REMOTE_JOBS}` cold build; Execute calls: {}; made again by Bazel: {again}; task \
             attempts retried by the scheduler: {} | succeeds, no refusal: {} |",
            many.seconds,
            many.seconds / local,
            many.seconds / cold,
            many.metrics.outcomes(),
            many.metrics.task_retries(),
            met(refused == 0)
        ),
    ];
    let curve: Vec<String> = sizes
        .iter()
        .map(|s| {
            format!(
                "| {} | {} + {} | {} | {:.1} s | {:.1} s | {:.2}× | {:.1} s | {:.2}× |",
                s.actions,
                s.shape.chain,
                s.shape.fan + 2,
                s.shape.cc_files(),
                median(s.local.clone()),
                median(s.cold.clone()),
                s.cold_ratio(),
                median(s.warm.clone()),
                s.warm_ratio(),
            )
        })
        .collect();
    let phases = format!(
        "Per executed action, mean (the scheduler's `scoot_reapi_queue_wait_seconds` and the \
         phases workers time, `scoot_reapi_action_phase_seconds`): in the last `{REMOTE_JOBS}` \
         cold build {}; in the `--jobs=200` build {}.",
        full.cold_metrics.phases(),
        many.metrics.phases()
    );
    let cpu = format!(
        "CPU time (from /proc) in the last round at {} actions: local build {}; remote cold \
         build {} (the cluster's processes since it started).",
        full.actions,
        full.last_local.cpu_use(),
        full.last_cold.cpu_use(),
    );
    let critical = format!(
        "Bazel's critical path (from its `--profile`): \
         local build {}; remote cold build {}; `--jobs=200` build {}.",
        full.last_local.critical_path.describe(),
        full.last_cold.critical_path.describe(),
        many.critical_path.describe(),
    );
    for row in rows.iter().chain(&curve) {
        println!("{row}");
    }
    println!("{phases}");
    println!("{cpu}");
    println!("{critical}");
    println!(
        "bazel_scale: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    if !benchmarking {
        // The smoke run proves what the benchmark only reports.
        assert_eq!(refused, 0, "Execute refusals: {}", many.metrics.outcomes());
        return;
    }
    let shape = full.shape;
    let table = format!(
        "## A bigger Bazel build\n\n\
         Bazel 2.1.0 builds `//...` of a workspace the benchmark generates \
         (benches/bazel_scale/workspace.rs): a chain of {chain} genrules each reading the one \
         before (the deep graph); {fan} genrules reading one source genrule, all read by one \
         more (the wide graph); {cc} C++ files in {libs} `cc_library`s (each file including \
         and calling the matching file of the library below) and {bins} `cc_binary`s; a genrule \
         writing {big} MiB of random bytes and one hashing them: {actions} actions in Bazel's \
         count. Each build is timed from `bazel build //...` after `bazel clean` (which drops \
         Bazel's analysis too, so every build repeats it alike); the Bazel servers are up and \
         have loaded every package before. Local builds run in Bazel's linux-sandbox with its \
         default `--jobs` (one per core). Remote builds add only `--remote_executor=grpc://…` \
         and `{REMOTE_JOBS}`, against a `setup-cloud-scoot --strategy local.local` cluster (5 \
         workers running every action in their sandbox, 3 apiservers) on the same machine, so \
         its processes and Bazel share the 2 cores that a local build has to itself: cold on \
         a fresh cluster (empty CAS, action cache and worker caches), warm right after on the \
         same cluster (every action a remote cache hit). Rounds per size ({rounds}) each \
         build locally, cold and warm; times are medians (of two rounds: their mean), ratios \
         the medians of each round's ratios. The `--jobs=200` build is one cold build on a \
         fresh cluster; its Execute calls are the scheduler's \
         `scoot_reapi_execute_requests_total` by outcome, and the only limit configured is the \
         cluster's 5 workers (Execute queues what they cannot start yet).\n\n\
         | build | time | compared with | goal |\n|---|---|---|---|\n{rows}\n\n\
         {phases}\n\n{cpu}\n\n{critical}\n\n{PROFILE_NOTES}\n\n\
         How the times grow with the build (same builds, each size in its own rounds):\n\n\
         | actions | genrules: chain + fan | C++ files | local | remote cold | cold ÷ local | \
         remote warm | warm ÷ local |\n|---|---|---|---|---|---|---|---|\n{curve}\n",
        chain = shape.chain,
        fan = shape.fan,
        cc = shape.cc_files(),
        libs = shape.libraries,
        bins = shape.binaries,
        big = shape.big_bytes / MIB,
        actions = full.actions,
        rounds = sizes
            .iter()
            .map(|s| format!("{} at {} actions", s.local.len(), s.actions))
            .collect::<Vec<_>>()
            .join(", "),
        rows = rows.join("\n"),
        curve = curve.join("\n"),
    );
    common::write_benchmark_section("A bigger Bazel build", &table);
}
