//! Cluster supervision against stand-in binaries: small Python programs named `apiserver`,
//! `workerserver` and `scheduler` that record how they were started, listen on the ports they
//! were given and behave as `behaviour.json` in their directory says (exit early, ignore
//! SIGTERM, start a task that ignores SIGTERM in its own process group, ...). The real binaries
//! are exercised by the workspace's end-to-end tests.

// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use scoot_local_cluster::{ChildStatus, Cluster, ClusterError, ClusterSpec, Strategy};
use serde_json::{Value, json};

const FAKE: &str = r#"#!/usr/bin/env python3
import json, os, signal, socket, subprocess, sys, time

name = os.path.basename(sys.argv[0])
here = os.path.dirname(os.path.abspath(sys.argv[0]))
args = sys.argv[1:]
flags = dict(zip(args[::2], args[1::2]))
try:
    with open(os.path.join(here, "behaviour.json")) as f:
        cfg = json.load(f).get(name, {})
except FileNotFoundError:
    cfg = {}
ident = name + "-" + flags.get("-thrift_addr", flags.get("-http_addr", "")).rsplit(":", 1)[-1]
record = {"args": args, "pid": os.getpid(), "bundles": os.environ.get("BUNDLESTORE_STORE_DIR")}
with open(os.path.join(here, ident + ".json"), "w") as f:
    json.dump(record, f)
print(name, "starting", flush=True)
if "exit_at_start" in cfg:
    print("giving up", flush=True)
    sys.exit(cfg["exit_at_start"])
if cfg.get("ignore_term"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
socks = []
for key in ("-thrift_addr", "-http_addr", "-grpc_addr"):
    if key in flags and not (cfg.get("no_http") and key == "-http_addr"):
        port = int(flags[key].rsplit(":", 1)[1])
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        socks.append(s)
if cfg.get("task"):
    task = subprocess.Popen(["sh", "-c", "trap '' TERM; while :; do sleep 1; done"],
                            preexec_fn=os.setpgrp)
    with open(os.path.join(here, ident + ".task"), "w") as f:
        f.write(str(task.pid))
start = time.time()
while True:
    time.sleep(0.05)
    if "exit_after" in cfg and time.time() - start > cfg["exit_after"]:
        print("exiting on purpose", flush=True)
        sys.exit(cfg.get("exit_code", 3))
"#;

struct Fixture {
    bins: tempfile::TempDir,
    home: tempfile::TempDir,
}

/// The stand-in program, written once per test process before any test starts a process.
/// Tests link to it rather than writing executables of their own: an executable written while
/// another test thread forks can be held open for writing by the fork until it execs, and
/// running it then fails with ETXTBSY. `None` when python3 is not installed.
static FAKE_PROGRAM: LazyLock<Option<PathBuf>> = LazyLock::new(|| {
    let python = std::process::Command::new("python3")
        .arg("--version")
        .output();
    if !python.is_ok_and(|out| out.status.success()) {
        return None;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join("scoot-cluster-fake-server.py");
    // Renamed into place, so that another test run executing the old file is not disturbed.
    let fresh = dir.join(format!(
        "scoot-cluster-fake-server.py.{}",
        std::process::id()
    ));
    std::fs::write(&fresh, FAKE).unwrap();
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&fresh, &path).unwrap();
    Some(path)
});

impl Fixture {
    /// `None` (and the test does nothing) when python3 is not installed.
    fn new(binaries: &[&str], behaviour: Value) -> Option<Fixture> {
        let Some(program) = FAKE_PROGRAM.as_ref() else {
            eprintln!("python3 not found: skipping");
            return None;
        };
        let bins = tempfile::tempdir().unwrap();
        for name in binaries {
            std::os::unix::fs::symlink(program, bins.path().join(name)).unwrap();
        }
        std::fs::write(bins.path().join("behaviour.json"), behaviour.to_string()).unwrap();
        Some(Fixture {
            bins,
            home: tempfile::tempdir().unwrap(),
        })
    }

    /// A spec with ports of its own. Each test has a slot; the slots of one run are disjoint
    /// (slot 0, the only one with apiservers, spans 9090..=12102 plus its offset, the others
    /// 9090..=10103), a run's base offset depends on its process id so that concurrent runs
    /// rarely meet, and every port stays below Linux's ephemeral range (32768 and up), where
    /// other programs' outgoing connections could hold them.
    fn spec(&self, slot: usize, workers: usize, apiservers: usize) -> ClusterSpec {
        const SLOT_OFFSETS: [u16; 8] = [7700, 0, 1100, 2200, 3300, 4400, 5500, 6600];
        let base = 1000 + (std::process::id() % 12) as u16 * 1000;
        let mut spec = ClusterSpec::new(self.bins.path());
        spec.port_offset = base + SLOT_OFFSETS[slot];
        spec.workers = workers;
        spec.apiservers = apiservers;
        spec.log_level = "debug".into();
        spec.ready_timeout = Duration::from_secs(10);
        spec.stop_grace = Duration::from_secs(2);
        spec
    }

    fn record(&self, ident: &str) -> Value {
        let text = std::fs::read_to_string(self.bins.path().join(format!("{ident}.json")))
            .unwrap_or_else(|e| panic!("no record of {ident}: {e}"));
        serde_json::from_str(&text).unwrap()
    }

    fn flags(&self, ident: &str) -> HashMap<String, String> {
        let record = self.record(ident);
        let args: Vec<String> = serde_json::from_value(record["args"].clone()).unwrap();
        args.chunks(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect()
    }
}

/// Alive and not a zombie waiting for its parent.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !state.is_some_and(|s| s.starts_with('Z'))
        }
        Err(_) => false,
    }
}

async fn gone_soon(pid: u32) -> bool {
    for _ in 0..100 {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn starts_in_order_writes_config_and_leaves_nothing_behind() {
    let Some(fx) = Fixture::new(
        &["apiserver", "workerserver", "scheduler"],
        json!({"workerserver": {"task": true}}),
    ) else {
        return;
    };
    let mut spec = fx.spec(0, 2, 2);
    spec.strategy = Strategy::LocalLocal;
    let cluster = Cluster::start(spec.clone()).await.unwrap();
    let layout = cluster.ports().clone();
    let off = spec.port_offset;

    assert_eq!(
        cluster.scheduler_addr(),
        format!("localhost:{}", 9090 + off)
    );
    assert_eq!(
        cluster.worker_addrs(),
        vec![
            format!("localhost:{}", 10101 + off),
            format!("localhost:{}", 10103 + off)
        ]
    );
    assert_eq!(
        cluster.apiserver_addrs(),
        vec![
            format!("localhost:{}", 11100 + off),
            format!("localhost:{}", 11101 + off)
        ]
    );
    let names: Vec<String> = cluster.processes().into_iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        vec![
            "apiserver-0",
            "apiserver-1",
            "workerserver-0",
            "workerserver-1",
            "scheduler"
        ]
    );

    // Apiservers share one bundle directory.
    let api0 = fx.record(&format!("apiserver-{}", layout.apiservers[0].http));
    let api1 = fx.record(&format!("apiserver-{}", layout.apiservers[1].http));
    assert_eq!(api0["bundles"], api1["bundles"]);
    assert!(
        Path::new(api0["bundles"].as_str().unwrap()).starts_with(cluster.state_dir()),
        "{api0}"
    );
    let api_flags = fx.flags(&format!("apiserver-{}", layout.apiservers[1].http));
    assert_eq!(
        api_flags["-grpc_addr"],
        format!("localhost:{}", 12101 + off)
    );
    assert_eq!(api_flags["-log_level"], "debug");

    let worker = fx.flags(&format!("workerserver-{}", layout.workers[1].thrift));
    assert_eq!(worker["-http_addr"], format!("localhost:{}", 10102 + off));
    assert_eq!(worker["-drain_grace"], "2000ms");
    assert_eq!(worker["-log_level"], "debug");

    let scheduler = fx.flags(&format!("scheduler-{}", layout.scheduler.thrift));
    assert_eq!(scheduler["-http_addr"], format!("localhost:{}", 9091 + off));
    assert_eq!(scheduler["-grpc_addr"], format!("localhost:{}", 9099 + off));
    let config: Value = serde_json::from_str(&scheduler["-config"]).unwrap();
    assert_eq!(config["Cluster"]["Type"], "static");
    assert_eq!(config["SagaLog"]["Type"], "file");
    let workers_file = PathBuf::from(config["Cluster"]["File"].as_str().unwrap());
    assert_eq!(workers_file, cluster.workers_file());
    assert_eq!(
        std::fs::read_to_string(&workers_file).unwrap(),
        format!("localhost:{}\nlocalhost:{}\n", 10101 + off, 10103 + off)
    );

    let addr_file = cluster.write_cloudscootaddr(fx.home.path(), "-t1").unwrap();
    assert_eq!(addr_file, fx.home.path().join(".cloudscootaddr-t1"));
    assert_eq!(
        std::fs::read_to_string(&addr_file).unwrap(),
        format!("localhost:{}\nlocalhost:{}\n", 9090 + off, 11100 + off)
    );

    let log = std::fs::read_to_string(cluster.log_path("workerserver-0")).unwrap();
    assert!(log.contains("workerserver starting"), "{log}");

    // Tasks that ignore SIGTERM, in process groups of their own, as a worker's are.
    let mut tasks = Vec::new();
    for w in &layout.workers {
        let path = fx
            .bins
            .path()
            .join(format!("workerserver-{}.task", w.thrift));
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid: u32 = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        assert!(alive(pid));
        tasks.push(pid);
    }
    let pids: Vec<u32> = cluster.processes().iter().map(|p| p.pid).collect();
    let state = cluster.state_dir().to_path_buf();

    cluster.shutdown().await;
    for pid in pids.iter().chain(&tasks) {
        assert!(gone_soon(*pid).await, "pid {pid} survived teardown");
    }
    assert!(!state.exists(), "state dir kept without keep_logs");
    // The address file stays, as in Scoot.
    assert!(addr_file.exists());
}

#[tokio::test]
async fn a_child_that_dies_is_reported_with_its_log() {
    let Some(fx) = Fixture::new(
        &["workerserver", "scheduler"],
        json!({"workerserver": {"exit_after": 1.0, "exit_code": 7}}),
    ) else {
        return;
    };
    let spec = fx.spec(1, 1, 3);
    let mut cluster = Cluster::start(spec).await.unwrap();
    // No apiserver binary: none started, and the address file has only the scheduler.
    assert!(cluster.apiserver_addrs().is_empty());
    assert_eq!(cluster.cloudscootaddr_contents().lines().count(), 1);

    let exit = tokio::time::timeout(Duration::from_secs(10), cluster.wait_for_failure())
        .await
        .expect("the worker's exit is reported");
    assert_eq!(exit.name, "workerserver-0");
    assert_eq!(exit.status, ChildStatus::Exited(7));
    assert!(exit.log_tail.ends_with("exiting on purpose"), "{exit}");
    let scheduler = cluster.processes()[1].pid;
    cluster.shutdown().await;
    assert!(gone_soon(scheduler).await);
}

#[tokio::test]
async fn a_failed_start_names_the_child_and_stops_the_others() {
    let Some(fx) = Fixture::new(
        &["workerserver", "scheduler"],
        json!({"scheduler": {"exit_at_start": 2}}),
    ) else {
        return;
    };
    let spec = fx.spec(2, 2, 0);
    let err = Cluster::start(spec.clone())
        .await
        .err()
        .expect("start fails");
    let ClusterError::ExitedDuringStartup(exit) = &err else {
        panic!("unexpected error: {err}");
    };
    assert_eq!(exit.name, "scheduler");
    assert_eq!(exit.status, ChildStatus::Exited(2));
    assert!(err.to_string().contains("giving up"), "{err}");
    for w in PortLayoutOf(&spec).workers() {
        let pid = fx.record(&format!("workerserver-{w}"))["pid"]
            .as_u64()
            .unwrap();
        assert!(gone_soon(pid as u32).await, "worker {w} survived");
    }
}

#[tokio::test]
async fn a_child_that_never_listens_times_out() {
    let Some(fx) = Fixture::new(
        &["workerserver", "scheduler"],
        json!({"workerserver": {"no_http": true}}),
    ) else {
        return;
    };
    let mut spec = fx.spec(3, 1, 0);
    spec.ready_timeout = Duration::from_millis(800);
    let err = Cluster::start(spec.clone())
        .await
        .err()
        .expect("start fails");
    match &err {
        ClusterError::NotReady {
            name,
            port,
            log_tail,
            ..
        } => {
            assert_eq!(name, "workerserver-0");
            assert_eq!(*port, 10100 + spec.port_offset);
            assert!(log_tail.contains("starting"));
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn a_cancelled_start_stops_what_it_started() {
    let Some(fx) = Fixture::new(
        &["workerserver", "scheduler"],
        json!({"workerserver": {"no_http": true}}),
    ) else {
        return;
    };
    let spec = fx.spec(7, 1, 0);
    let cancel = tokio::time::sleep(Duration::from_millis(700));
    let err = Cluster::start_or_cancel(spec.clone(), cancel)
        .await
        .err()
        .expect("start is cancelled");
    assert!(matches!(err, ClusterError::Cancelled), "{err}");
    let worker = PortLayoutOf(&spec).workers()[0];
    let pid = fx.record(&format!("workerserver-{worker}"))["pid"]
        .as_u64()
        .unwrap();
    assert!(gone_soon(pid as u32).await, "the worker survived");
}

#[tokio::test]
async fn children_that_ignore_sigterm_are_killed() {
    let Some(fx) = Fixture::new(
        &["workerserver", "scheduler"],
        json!({"workerserver": {"ignore_term": true}, "scheduler": {"ignore_term": true}}),
    ) else {
        return;
    };
    let mut spec = fx.spec(4, 1, 0);
    spec.stop_grace = Duration::from_millis(300);
    spec.keep_logs = true;
    let cluster = Cluster::start(spec).await.unwrap();
    let pids: Vec<u32> = cluster.processes().iter().map(|p| p.pid).collect();
    let state = cluster.state_dir().to_path_buf();
    let started = std::time::Instant::now();
    cluster.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    for pid in pids {
        assert!(gone_soon(pid).await, "pid {pid} survived");
    }
    assert!(
        state.join("logs/scheduler.log").exists(),
        "keep_logs keeps the logs"
    );
    std::fs::remove_dir_all(state).unwrap();
}

#[tokio::test]
async fn missing_binaries_and_busy_ports_are_errors() {
    let Some(fx) = Fixture::new(&["scheduler"], json!({})) else {
        return;
    };
    let spec = fx.spec(5, 1, 0);
    let err = Cluster::start(spec.clone())
        .await
        .err()
        .expect("no workerserver");
    assert!(
        matches!(&err, ClusterError::MissingBinary { name: "workerserver", path } if path.ends_with("workerserver")),
        "{err}"
    );

    let Some(fx) = Fixture::new(&["workerserver", "scheduler"], json!({})) else {
        return;
    };
    let spec = fx.spec(6, 1, 0);
    let busy = std::net::TcpListener::bind(("127.0.0.1", 9090 + spec.port_offset)).unwrap();
    let err = Cluster::start(spec.clone())
        .await
        .err()
        .expect("port in use");
    assert!(
        matches!(&err, ClusterError::PortInUse { port, user } if *port == 9090 + spec.port_offset && user == "scheduler thrift"),
        "{err}"
    );
    drop(busy);
}

/// Worker Thrift ports of a spec, computed like the cluster does.
struct PortLayoutOf<'a>(&'a ClusterSpec);

impl PortLayoutOf<'_> {
    fn workers(&self) -> Vec<u16> {
        scoot_local_cluster::PortLayout::new(self.0.port_offset, self.0.workers, 0)
            .unwrap()
            .workers
            .iter()
            .map(|w| w.thrift)
            .collect()
    }
}
