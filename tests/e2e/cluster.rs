//! Whole local clusters started by setup-cloud-scoot, and Scoot's integration flows. Each test
//! uses its own port offset (Scoot's fixed layout shifted), working directory and HOME.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::*;

fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_setup-cloud-scoot"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A command run in a fresh directory that is also its HOME. PATH is left alone: setup-cloud-scoot
/// must find scootcl beside itself.
fn in_sandbox(program: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(bin_dir().join(program));
    cmd.current_dir(dir).env("HOME", dir).env_remove("SCOOT_ID");
    cmd
}

fn run_to_end(mut cmd: Command, what: &str) -> std::process::Output {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn setup_cloud_scoot_runs_the_smoke_test_with_both_strategies() {
    for (strategy, offset) in [("local.local", "200"), ("local.memory", "300")] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = in_sandbox("setup-cloud-scoot", dir.path());
        cmd.args([
            "--strategy",
            strategy,
            "--port_offset",
            offset,
            "--log_level",
            "info",
        ])
        .args([
            "run",
            "scootcl",
            "smoketest",
            "--num_jobs",
            "20",
            "--timeout",
            "120s",
        ]);
        run_to_end(
            cmd,
            &format!("setup-cloud-scoot --strategy {strategy} run scootcl smoketest"),
        );
    }
}

/// `local.ha`: the smoke test through two schedulers on a private PostgreSQL server (scootcl
/// finds the leader among both addresses in ~/.cloudscootaddr); afterwards nothing of the
/// cluster, the database server included, is left running.
#[test]
fn setup_cloud_scoot_runs_the_smoke_test_on_a_highly_available_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = in_sandbox("setup-cloud-scoot", dir.path());
    cmd.args([
        "--strategy",
        "local.ha",
        "--port_offset",
        "1300",
        "--keep_logs",
    ])
    .args([
        "run",
        "scootcl",
        "smoketest",
        "--num_jobs",
        "10",
        "--timeout",
        "120s",
    ]);
    let output = run_to_end(
        cmd,
        "setup-cloud-scoot --strategy local.ha run scootcl smoketest",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let addrs = std::fs::read_to_string(dir.path().join(".cloudscootaddr")).unwrap();
    assert_eq!(
        addrs.lines().next(),
        Some("localhost:10390,localhost:10395")
    );
    let logs = stderr
        .lines()
        .find_map(|l| {
            l.split_once("logs in ")
                .map(|(_, path)| path.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no state directory in the output:\n{stderr}"));
    let state = Path::new(&logs).parent().unwrap().to_path_buf();
    let schedulers = ["scheduler", "scheduler-1"].map(|name| {
        std::fs::read_to_string(state.join("logs").join(format!("{name}.log"))).unwrap()
    });
    assert!(schedulers[0].contains("leading"), "{}", schedulers[0]);
    assert!(schedulers[1].contains("standby"), "{}", schedulers[1]);
    let database = state.join("postgres");
    assert!(database.join("data/PG_VERSION").is_file());
    let still_running: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&*state.to_string_lossy()))
        .collect();
    assert!(still_running.is_empty(), "left running: {still_running:?}");
    std::fs::remove_dir_all(&state).unwrap();
}

#[test]
fn run_exits_with_the_commands_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = in_sandbox("setup-cloud-scoot", dir.path());
    cmd.args([
        "--workers",
        "1",
        "--port_offset",
        "400",
        "run",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(cmd.output().unwrap().status.code(), Some(7));
}

/// Every process descended from `root`, found through /proc.
fn descendants(root: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok())
        else {
            continue;
        };
        parent_of.push((pid, ppid));
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

#[test]
fn sigterm_to_setup_cloud_scoot_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = in_sandbox("setup-cloud-scoot", dir.path());
    cmd.args([
        "--strategy",
        "local.memory",
        "--workers",
        "2",
        "--port_offset",
        "500",
    ])
    .stdout(Stdio::null())
    .stderr(log_file("setup-cloud-scoot-sigterm"));
    let mut setup = Proc::spawn("setup-cloud-scoot", cmd);
    setup.wait_for_port(9090 + 500);
    // A long task, so a task process is running when the cluster is stopped.
    let mut client = CloudScoot::connect(9090 + 500);
    let id = {
        use scoot_thrift::scoot::TCloudScootSyncClient;
        client
            .0
            .run_job(job(vec![task("long", &["sleep", "120"])]))
            .unwrap()
            .id
    };
    poll("the task to run", || {
        use scoot_thrift::scoot::TCloudScootSyncClient;
        let status = client.0.get_status(id.clone()).unwrap();
        let data = status.task_data?;
        (data.get("long")?.status == scoot_thrift::scoot::RunStatusState::RUNNING).then_some(())
    });
    let family = descendants(setup.child.id() as i32);
    assert!(
        family.len() >= 4,
        "scheduler, 2 workers and a task expected, found {family:?}"
    );
    kill(Pid::from_raw(setup.child.id() as i32), Signal::SIGTERM).unwrap();
    let status = poll("setup-cloud-scoot to exit", || {
        setup.child.try_wait().ok().flatten()
    });
    assert!(!status.success(), "Scoot exits 1 after a signal");
    poll("every cluster process to be gone", || {
        family.iter().all(|p| !process_alive(*p)).then_some(())
    });
}

#[test]
fn recoverytest_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = in_sandbox("recoverytest", dir.path());
    cmd.args(["--port_offset", "600", "--log_level", "info"]);
    let output = run_to_end(cmd, "recoverytest");
    // The first cluster is killed as a crash would kill it, not stopped.
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        log.contains("scheduler was killed by signal 9 (SIGKILL)"),
        "{log}"
    );
}

#[test]
fn scoot_integration_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = in_sandbox("scoot-integration", dir.path());
    cmd.args(["--port_offset", "700", "--log_level", "info"]);
    run_to_end(cmd, "scoot-integration");
}
