//! What a sandboxed process cannot do: the sandbox engine, driven directly with the real
//! launcher (the workerserver binary), as a worker running as root drives it for an action
//! run as nobody.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scoot_core::{Command, RunId};
use scoot_runner::execer::identity::NOBODY;
use scoot_runner::execer::os::OsExecer;
use scoot_runner::execer::{ExecSpec, Execer, ProcessOutcome, SandboxLayout, SandboxRequest};
use scoot_runner::output::OutputStore;
use scoot_sandbox::{SandboxConfig, SandboxExecer};

/// A worker's directories: `work` holds the runs' directories (hidden from host-tools runs).
struct Host {
    dir: tempfile::TempDir,
    store: OutputStore,
}

impl Host {
    fn new() -> Host {
        // Not in the system's temp dir: a sandbox's /tmp is its own, which would hide these for
        // free (the assertions also hold when the repository itself is under /tmp).
        let base = crate::support::repo_root().join("target");
        let dir = tempfile::Builder::new()
            .prefix("sandbox-test-")
            .tempdir_in(base)
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        for sub in ["work", "outputs", "reports"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        let store = OutputStore::new(dir.path().join("outputs"), None, 100);
        Host { dir, store }
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// A run directory under `work`, owned by the run's user.
    fn run_dir(&self, name: &str) -> PathBuf {
        let dir = self.path("work").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(NOBODY.uid), Some(NOBODY.gid)).unwrap();
        dir
    }

    fn engine(&self, os: OsExecer, pids_max: Option<u64>) -> SandboxExecer {
        SandboxExecer::new(
            SandboxConfig {
                launcher: PathBuf::from(env!("CARGO_BIN_EXE_workerserver")),
                hidden: vec![self.path("work"), self.path("outputs")],
                pids_max,
                report_dir: self.path("reports"),
            },
            os,
        )
    }

    /// Runs `script` with `sh -c` in `request`'s sandbox; returns how it ended and its
    /// stdout and stderr.
    async fn run(
        &self,
        engine: &SandboxExecer,
        request: SandboxRequest,
        dir: &Path,
        script: &str,
    ) -> (ProcessOutcome, String, String) {
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outputs = Arc::new(
            self.store
                .create(
                    &RunId::from(run.to_string().as_str()),
                    &Command {
                        reapi_request: Some(Vec::new()),
                        ..Command::default()
                    },
                )
                .unwrap(),
        );
        let spec = ExecSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            env: BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]),
            clear_env: true,
            dir: dir.to_path_buf(),
            outputs: outputs.clone(),
            user: Some(NOBODY),
            sandbox: Some(request),
            stdin: Vec::new(),
        };
        let mut process = engine.start(spec).await.unwrap();
        let outcome = tokio::time::timeout(crate::support::DEADLINE, process.wait())
            .await
            .expect("the sandboxed run did not end");
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        (
            outcome,
            read(&outputs.stdout_path),
            read(&outputs.stderr_path),
        )
    }
}

fn host_tools(root: &Path) -> SandboxRequest {
    SandboxRequest {
        layout: SandboxLayout::HostTools,
        root: root.to_path_buf(),
        network: false,
        uid: None,
        gid: None,
    }
}

fn os() -> OsExecer {
    OsExecer {
        kill_grace: Duration::from_secs(2),
        ..OsExecer::default()
    }
}

/// A root filesystem of busybox (Debian's busybox-static) and its applets.
fn busybox_root(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is needed (Debian's busybox-static; make test-deps installs it)");
    std::fs::copy(busybox, bin.join("busybox")).unwrap();
    for applet in [
        "sh", "id", "ls", "cat", "echo", "mkdir", "sleep", "ps", "hostname",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    for entry in walk(dir) {
        std::os::unix::fs::lchown(&entry, Some(NOBODY.uid), Some(NOBODY.gid)).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    if dir.is_dir() && !dir.is_symlink() {
        for entry in std::fs::read_dir(dir).unwrap() {
            all.extend(walk(&entry.unwrap().path()));
        }
    }
    all
}

#[tokio::test]
async fn a_host_tools_process_writes_only_its_exec_root_and_sees_no_other_run() {
    let host = Host::new();
    let mine = host.run_dir("action-mine");
    let theirs = host.run_dir("action-theirs");
    std::fs::write(theirs.join("secret"), "theirs").unwrap();
    // A directory the run's user could write on the host.
    let open = host.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let engine = host.engine(os(), None);
    // The host's /var/tmp is writable by anyone, so only the read-only view stops the write
    // (`open` may be hidden instead, when the test directory is under the host's /tmp).
    let probe = format!("/var/tmp/scoot-sandbox-probe-{}", std::process::id());
    let script = format!(
        "id -u; echo out > result; echo escaped > {open}/file; echo escaped > {probe}; \
         ls {work}; cat {theirs}/secret; ls {outputs}; echo tmp > /tmp/t && cat /tmp/t",
        open = open.display(),
        work = host.path("work").display(),
        theirs = theirs.display(),
        outputs = host.path("outputs").display(),
    );
    let (outcome, stdout, stderr) = host.run(&engine, host_tools(&mine), &mine, &script).await;
    assert_eq!(outcome, ProcessOutcome::Exited(0), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(mine.join("result")).unwrap(),
        "out\n"
    );
    assert!(!open.join("file").exists(), "wrote outside its exec root");
    assert!(
        stderr.contains(&format!("{}/file", open.display())),
        "{stderr}"
    );
    assert!(!Path::new(&probe).exists(), "wrote outside its exec root");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    // Only its own directory is there, and the others' files cannot be read.
    assert_eq!(
        stdout,
        format!("{}\naction-mine\ntmp\n", NOBODY.uid),
        "{stderr}"
    );
    assert!(stderr.contains("secret: No such file"), "{stderr}");
}

#[tokio::test]
async fn a_rootfs_process_has_its_root_as_slash_and_nothing_of_the_host() {
    let host = Host::new();
    let root = host.run_dir("action-rootfs");
    busybox_root(&root);
    let marker = host.path("host-marker");
    std::fs::write(&marker, "host").unwrap();
    let engine = host.engine(os(), None);
    let request = SandboxRequest {
        layout: SandboxLayout::Rootfs,
        root: root.clone(),
        network: false,
        uid: Some(0),
        gid: Some(0),
    };
    let script = format!(
        "id -u; hostname; mkdir -p /out && echo hello > /out/hello.txt; ls /; \
         cat {marker}; ls /dev/null /dev/urandom",
        marker = marker.display()
    );
    let (outcome, stdout, stderr) = host.run(&engine, request, &root, &script).await;
    assert_eq!(outcome, ProcessOutcome::Exited(0), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(root.join("out/hello.txt")).unwrap(),
        "hello\n"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(&lines[..2], ["0", "scoot-sandbox"], "{stdout}");
    assert!(stderr.contains("host-marker': No such file"), "{stderr}");
    assert!(stdout.contains("bin\ndev\nout\nproc\ntmp\n"), "{stdout}");
    assert!(stdout.contains("/dev/null\n/dev/urandom"), "{stdout}");
}

#[tokio::test]
async fn without_network_a_process_cannot_reach_the_hosts_ports() {
    let host = Host::new();
    let dir = host.run_dir("action-net");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let engine = host.engine(os(), None);
    let script = format!("echo hi > /dev/tcp/127.0.0.1/{port} && echo connected");
    let bash = |script: String| format!("exec bash -c '{script}'");
    let (outcome, stdout, _) = host
        .run(&engine, host_tools(&dir), &dir, &bash(script.clone()))
        .await;
    assert_ne!(outcome, ProcessOutcome::Exited(0));
    assert_eq!(stdout, "");
    // The same process with the network on does connect, so the refusal above is the sandbox.
    let with_network = SandboxRequest {
        network: true,
        ..host_tools(&dir)
    };
    let (outcome, stdout, stderr) = host.run(&engine, with_network, &dir, &bash(script)).await;
    assert_eq!(
        (outcome, stdout.as_str()),
        (ProcessOutcome::Exited(0), "connected\n"),
        "{stderr}"
    );
    listener.set_nonblocking(true).unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    let mut got = String::new();
    conn.read_to_string(&mut got).unwrap();
    assert_eq!(got, "hi\n");
}

#[tokio::test]
async fn no_process_of_a_sandboxed_run_outlives_it() {
    let host = Host::new();
    let dir = host.run_dir("action-bg");
    let engine = host.engine(os(), None);
    // A daemon in a session of its own, with a marker to find it by.
    let marker = "317.5";
    let (outcome, _, stderr) = host
        .run(
            &engine,
            host_tools(&dir),
            &dir,
            &format!("setsid sleep {marker} & echo started"),
        )
        .await;
    assert_eq!(outcome, ProcessOutcome::Exited(0), "{stderr}");
    crate::support::poll("the sandbox's processes to be gone", || {
        (!sleeper_left(marker)).then_some(())
    });
}

#[tokio::test]
async fn a_run_reaching_its_process_limit_is_stopped_and_says_why() {
    let host = Host::new();
    let dir = host.run_dir("action-pids");
    let engine = host.engine(os(), Some(20));
    let started = Instant::now();
    let (outcome, _, stderr) = host
        .run(
            &engine,
            host_tools(&dir),
            &dir,
            // bash retries a fork that fails at the limit, so the run sits there until stopped.
            "exec bash -c 'for i in $(seq 100); do sleep 60 & done; wait'",
        )
        .await;
    match outcome {
        ProcessOutcome::LimitExceeded { message } => {
            assert!(message.contains("limit of 21 processes"), "{message}")
        }
        other => panic!("{other:?}: {stderr}"),
    }
    assert!(stderr.contains("limit of 21 processes"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(50), "not stopped");
}

#[tokio::test]
async fn a_run_over_the_memory_cap_is_stopped_and_says_why() {
    let host = Host::new();
    let dir = host.run_dir("action-mem");
    let engine = host.engine(
        OsExecer {
            memory_cap: Some(100 << 20),
            ..os()
        },
        None,
    );
    // tail keeps a line without an end in memory: 1 GB of zeros.
    let (outcome, _, stderr) = host
        .run(
            &engine,
            host_tools(&dir),
            &dir,
            "head -c 1000000000 /dev/zero | tail > /dev/null",
        )
        .await;
    match outcome {
        ProcessOutcome::LimitExceeded { message } => {
            assert!(message.contains("MemoryCap"), "{message}")
        }
        other => panic!("{other:?}: {stderr}"),
    }
}

#[tokio::test]
async fn a_sandbox_that_cannot_be_built_fails_the_run_with_the_reason() {
    let host = Host::new();
    let root = host.run_dir("action-bad-root");
    busybox_root(&root);
    // /proc must be a directory for the sandbox's own.
    std::fs::write(root.join("proc"), "not a directory").unwrap();
    let engine = host.engine(os(), None);
    let request = SandboxRequest {
        layout: SandboxLayout::Rootfs,
        root: root.clone(),
        network: false,
        uid: None,
        gid: None,
    };
    let (outcome, stdout, _) = host.run(&engine, request, &root, "echo ran").await;
    match outcome {
        ProcessOutcome::Failed { message } => {
            assert!(message.contains("/proc"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(stdout, "", "the program ran");
}

/// Whether a process whose command line has `sleep <marker>` exists on the host.
fn sleeper_left(marker: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| String::from_utf8_lossy(&c).contains(&format!("sleep\0{marker}")))
}

#[tokio::test]
async fn an_aborted_sandboxed_run_takes_all_its_processes_with_it() {
    let host = Host::new();
    let dir = host.run_dir("action-abort");
    let engine = host.engine(os(), None);
    let marker = "318.5";
    let outputs = Arc::new(
        host.store
            .create(
                &RunId::from("abort"),
                &Command {
                    reapi_request: Some(Vec::new()),
                    ..Command::default()
                },
            )
            .unwrap(),
    );
    let spec = ExecSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            format!("setsid sleep {marker} & echo started; sleep {marker}"),
        ],
        env: BTreeMap::from([("PATH".to_string(), "/usr/bin:/bin".to_string())]),
        clear_env: true,
        dir: dir.clone(),
        outputs: outputs.clone(),
        user: Some(NOBODY),
        sandbox: Some(host_tools(&dir)),
        stdin: Vec::new(),
    };
    let mut process = engine.start(spec).await.unwrap();
    // Polled without blocking the runtime, which feeds the launcher its spec and copies output.
    let deadline = Instant::now() + crate::support::DEADLINE;
    loop {
        let stdout = std::fs::read_to_string(&outputs.stdout_path).unwrap_or_default();
        if stdout.contains("started") && sleeper_left(marker) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not start its sleepers"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(process.kill().await, ProcessOutcome::Killed);
    crate::support::poll("the sandbox's processes to be gone", || {
        (!sleeper_left(marker)).then_some(())
    });
}

#[tokio::test]
async fn the_ids_an_action_asks_for_are_its_ids_inside() {
    let host = Host::new();
    let dir = host.run_dir("action-ids");
    let engine = host.engine(os(), None);
    let request = SandboxRequest {
        uid: Some(1234),
        gid: Some(4321),
        ..host_tools(&dir)
    };
    let (outcome, stdout, stderr) = host
        .run(&engine, request, &dir, "echo $(id -u):$(id -g); touch mine")
        .await;
    assert_eq!(outcome, ProcessOutcome::Exited(0), "{stderr}");
    assert_eq!(stdout, "1234:4321\n");
    // Outside, what it wrote belongs to the run's user.
    let meta = std::fs::metadata(dir.join("mine")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.gid()), (NOBODY.uid, NOBODY.gid));
}
