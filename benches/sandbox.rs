//! What the sandbox costs per action: an empty command (`true` from the host) run one at a
//! time by the OS engine, and by the sandbox engine in host-tools mode with and without a
//! network namespace, and in rootfs mode (a busybox root). Both engines track each run in a
//! cgroup where cgroup v2 is usable, as a worker does. Goal (issue #10): under 5 ms per action.
//!
//! Run by `make bench` as root (the sandbox maps the run's user, nobody, from outside); under
//! `cargo test` it runs a few of each to prove it still works.

// A benchmark reports an unexpected failure by panicking.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod common;
#[path = "../tests/e2e/support.rs"]
#[allow(dead_code, clippy::unwrap_used)]
mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scoot_core::{Command, RunId};
use scoot_runner::execer::identity::NOBODY;
use scoot_runner::execer::os::OsExecer;
use scoot_runner::execer::{ExecSpec, Execer, ProcessOutcome, SandboxLayout, SandboxRequest};
use scoot_runner::output::OutputStore;
use scoot_sandbox::{SandboxConfig, SandboxExecer};

struct Bench {
    store: OutputStore,
    runs: u64,
}

impl Bench {
    /// Runs `argv` `count` times, one after another; returns the mean time per run.
    async fn per_run(
        &mut self,
        engine: &dyn Execer,
        argv: &[&str],
        dir: &Path,
        sandbox: Option<SandboxRequest>,
        count: u32,
    ) -> Duration {
        let started = Instant::now();
        for _ in 0..count {
            self.runs += 1;
            let outputs = Arc::new(
                self.store
                    .create(
                        &RunId::from(self.runs.to_string().as_str()),
                        &Command {
                            reapi_request: Some(Vec::new()),
                            ..Command::default()
                        },
                    )
                    .unwrap(),
            );
            let spec = ExecSpec {
                argv: argv.iter().map(|a| a.to_string()).collect(),
                env: BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]),
                clear_env: true,
                dir: dir.to_path_buf(),
                outputs,
                user: Some(NOBODY),
                sandbox: sandbox.clone(),
                stdin: Vec::new(),
            };
            let mut process = engine.start(spec).await.unwrap();
            assert_eq!(process.wait().await, ProcessOutcome::Exited(0));
        }
        started.elapsed() / count
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let count = if benchmarking { 200 } else { 3 };
    let base = tempfile::Builder::new()
        .prefix("sandbox-bench-")
        .tempdir_in(support::repo_root().join("target"))
        .unwrap();
    let dir = |name: &str| -> PathBuf {
        let path = base.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    };
    let (work, root, reports) = (dir("work"), dir("work/root"), dir("reports"));
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox is needed (Debian's busybox-static; make test-deps installs it)");
    std::os::unix::fs::symlink("busybox", root.join("bin/true")).unwrap();
    for path in [base.path(), &work, &root, &root.join("bin")] {
        std::os::unix::fs::chown(path, Some(NOBODY.uid), Some(NOBODY.gid)).unwrap();
    }
    let mut bench = Bench {
        store: OutputStore::new(dir("outputs"), None, 50),
        runs: 0,
    };
    let os = OsExecer::default();
    let sandbox = SandboxExecer::new(
        SandboxConfig {
            launcher: PathBuf::from(env!("CARGO_BIN_EXE_workerserver")),
            hidden: vec![work.clone()],
            pids_max: Some(4096),
            report_dir: reports,
        },
        os.clone(),
    );
    let host_tools = |network| SandboxRequest {
        layout: SandboxLayout::HostTools,
        root: root.clone(),
        network,
        uid: None,
        gid: None,
    };
    let rootfs = SandboxRequest {
        layout: SandboxLayout::Rootfs,
        root: root.clone(),
        network: false,
        uid: None,
        gid: None,
    };
    let mut rows = Vec::new();
    let measure = async |bench: &mut Bench,
                         label: &str,
                         engine: &dyn Execer,
                         argv: &[&str],
                         request: Option<SandboxRequest>| {
        let mut samples = Vec::new();
        for _ in 0..3 {
            samples.push(
                bench
                    .per_run(engine, argv, &root, request.clone(), count)
                    .await,
            );
        }
        let took = median(samples);
        (label.to_string(), took)
    };
    let plain = measure(&mut bench, "unsandboxed (OS engine)", &os, &["true"], None).await;
    let results = vec![
        measure(
            &mut bench,
            "host-tools, no network",
            &sandbox,
            &["true"],
            Some(host_tools(false)),
        )
        .await,
        measure(
            &mut bench,
            "host-tools, network on",
            &sandbox,
            &["true"],
            Some(host_tools(true)),
        )
        .await,
        measure(
            &mut bench,
            "rootfs (busybox root), no network",
            &sandbox,
            &["/bin/true"],
            Some(rootfs),
        )
        .await,
    ];
    rows.push(format!(
        "| `true`, {} | {} | the reference | |",
        plain.0,
        ms(plain.1)
    ));
    for (label, took) in results {
        let cost = took.saturating_sub(plain.1);
        rows.push(format!(
            "| `true`, sandboxed: {label} | {} | +{} per action over unsandboxed | < 5 ms: {} |",
            ms(took),
            ms(cost),
            if cost < Duration::from_millis(5) {
                "met"
            } else {
                "not met"
            }
        ));
    }
    for row in &rows {
        println!("{row}");
    }
    if benchmarking {
        let table = format!(
            "## Sandbox cost per action\n\nAn empty action (`true`) started, waited for and cleaned up {count} times in a row by each engine (release build), as the action user nobody; mean time per action, median of three rounds. The sandbox adds the launcher (the workerserver binary started again), the namespaces, the mounts and init.\n\n\
             | measurement | time per action | compared with | goal |\n|---|---|---|---|\n{}\n",
            rows.join("\n")
        );
        common::write_benchmark_section("Sandbox cost per action", &table);
    }
}
