//! Bazel 2.1.0, the real client, against the apiserver's Remote Execution API cache over gRPC.
//!
//! The sample workspace in tests/bazel/ (C++ library, binary and test; genrules; a tree
//! artifact; a 10 MiB blob) is built and tested with `--remote_cache`, cleaned, and built and
//! tested again: every action of the second round must be a remote cache hit and every output
//! must come back byte for byte. Bazel comes from `scripts/ensure-bazel.sh` (`make test-deps`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::{ApiServer, DEADLINE, LocalCluster, Proc, http_get, poll, repo_root};

/// How long one Bazel command may take before it is killed and the test fails.
pub(crate) const BAZEL_TIMEOUT: Duration = Duration::from_secs(300);

/// The test targets of tests/bazel/workspace.
const TEST_TARGETS: usize = 3;

/// Runs `scripts/ensure-bazel.sh` (idempotent: it installs Bazel 2.1.0 from the npm registry
/// into target/bazel-2.1.0/ once) and returns the path of the binary it prints.
pub(crate) fn bazel_binary() -> PathBuf {
    let script = repo_root().join("scripts/ensure-bazel.sh");
    let output = Command::new(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "scripts/ensure-bazel.sh failed ({}): Bazel 2.1.0 is needed; run `make test-deps` \
         (it installs @bazel/bazel-linux_x64@2.1.0 from the npm registry)",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        path.is_file(),
        "scripts/ensure-bazel.sh printed {stdout:?}, not the path of the Bazel binary"
    );
    path
}

/// Makes the command that runs the Bazel binary it is given.
type Launcher = Box<dyn Fn(&Path) -> Command>;

/// One Bazel server for one copy of the workspace. Dropping it shuts the server down.
pub(crate) struct Bazel {
    bin: PathBuf,
    /// Makes the command that runs `bin` (another network namespace, say); `None` runs it here.
    launcher: Option<Launcher>,
    workspace: PathBuf,
    output_user_root: PathBuf,
    startup: Vec<String>,
    log_prefix: String,
}

impl Bazel {
    fn new(bin: PathBuf, workspace: PathBuf, output_user_root: PathBuf) -> Bazel {
        // Extracting the install base takes seconds: it is kept under target/ across runs, while
        // everything else Bazel writes stays in this run's temp dir. No rc file is read.
        let install_base = bin.with_file_name("install_base");
        let startup = vec![
            format!("--output_user_root={}", output_user_root.display()),
            format!("--install_base={}", install_base.display()),
            "--bazelrc=/dev/null".to_string(),
            "--nohome_rc".to_string(),
            "--nosystem_rc".to_string(),
            "--noworkspace_rc".to_string(),
            // The server exits by itself even if this test is killed before it can shut it down.
            "--max_idle_secs=300".to_string(),
        ];
        Bazel {
            bin,
            launcher: None,
            workspace,
            output_user_root,
            startup,
            log_prefix: format!("bazel-{}", std::process::id()),
        }
    }

    /// Every command of this Bazel (the server it starts included) is run through `launcher`.
    pub(crate) fn launched_by(mut self, launcher: impl Fn(&Path) -> Command + 'static) -> Bazel {
        self.launcher = Some(Box::new(launcher));
        self
    }

    /// Runs one Bazel command in the workspace and returns its output (stdout then stderr, in
    /// one file under target/e2e-logs); fails the test if it fails or outlives [`BAZEL_TIMEOUT`].
    pub(crate) fn run(&self, step: &str, args: &[&str]) -> String {
        let (status, output, log, elapsed) = self.run_unchecked(step, args, BAZEL_TIMEOUT);
        match status {
            None => panic!(
                "bazel {step} did not finish within {BAZEL_TIMEOUT:?} and was killed; \
                 its output ({}):\n{}",
                log.display(),
                tail(&output)
            ),
            Some(status) if !status.success() => panic!(
                "bazel {step} failed ({status}); its output ({}):\n{}",
                log.display(),
                tail(&output)
            ),
            Some(_) => {}
        }
        eprintln!("bazel {step}: {:.1}s", elapsed.as_secs_f64());
        assert_no_remote_warnings(step, &output);
        output
    }

    pub(crate) fn run_unchecked(
        &self,
        step: &str,
        args: &[&str],
        timeout: Duration,
    ) -> (Option<ExitStatus>, String, PathBuf, Duration) {
        let dir = repo_root().join("target/e2e-logs");
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{}-{step}.log", self.log_prefix));
        let file = fs::File::create(&log).unwrap();
        let mut cmd = match &self.launcher {
            Some(launch) => launch(&self.bin),
            None => Command::new(&self.bin),
        };
        cmd.args(&self.startup)
            .args(args)
            // The Bazel server, started by the first command, outlives it: it keeps ours.
            .env("TMPDIR", std::env::temp_dir())
            .current_dir(&self.workspace)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let start = Instant::now();
        // The client only: Bazel's server daemonizes into a session of its own.
        let mut client = Proc::spawn(&format!("bazel {step}"), cmd);
        let status = loop {
            if let Some(status) = client.child.try_wait().unwrap() {
                break Some(status);
            }
            if start.elapsed() > timeout {
                break None; // dropping `client` kills its process group
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(client);
        let output = String::from_utf8_lossy(&fs::read(&log).unwrap_or_default()).into_owned();
        (status, output, log, start.elapsed())
    }
}

impl Drop for Bazel {
    fn drop(&mut self) {
        let (status, _, _, _) = self.run_unchecked("shutdown", &["shutdown"], DEADLINE);
        if status.is_some_and(|s| s.success()) {
            return;
        }
        // The server did not stop: kill it by the pid it recorded (ours: it runs in our root).
        for entry in fs::read_dir(&self.output_user_root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let pid_file = entry.path().join("server/server.pid.txt");
            if let Some(pid) = fs::read_to_string(pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The last lines of a long output, enough to see why Bazel failed.
pub(crate) fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(150)..].join("\n")
}

/// Bazel 2.1 does not fail a build when the remote cache misbehaves: it warns and goes on
/// locally. Such a warning is a failure here.
fn assert_no_remote_warnings(step: &str, output: &str) {
    let warnings: Vec<&str> = output
        .lines()
        .filter(|l| l.starts_with("WARNING:") || l.starts_with("ERROR:"))
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("remote") || l.contains("cache") || l.contains("grpc")
        })
        .collect();
    assert!(
        warnings.is_empty(),
        "bazel {step} warned about the remote cache:\n{}\n\nfull output:\n{}",
        warnings.join("\n"),
        tail(output)
    );
}

/// Bazel's summary of the spawns it ran, from a line such as
/// `INFO: 19 processes: 19 remote cache hit.` (Bazel 2.1), `INFO: 1 process: 1 linux-sandbox.`,
/// `INFO: 0 processes.` or, from Bazel 4 on, `INFO: 21 processes: 2 internal, 19 remote cache hit.`
#[derive(Debug, PartialEq)]
pub(crate) struct ProcessSummary {
    pub(crate) total: u64,
    by_kind: Vec<(String, u64)>,
}

impl ProcessSummary {
    /// The last such line of an output (Bazel prints one per command).
    fn last_in(output: &str) -> Option<ProcessSummary> {
        output.lines().rev().find_map(ProcessSummary::parse_line)
    }

    fn parse_line(line: &str) -> Option<ProcessSummary> {
        let rest = line.trim().strip_prefix("INFO: ")?.strip_suffix('.')?;
        let (head, kinds) = match rest.split_once(": ") {
            Some((head, kinds)) => (head, Some(kinds)),
            None => (rest, None),
        };
        let (total, word) = head.split_once(' ')?;
        if word != "process" && word != "processes" {
            return None;
        }
        let mut by_kind = Vec::new();
        for part in kinds.into_iter().flat_map(|k| k.split(", ")) {
            let (count, kind) = part.trim().split_once(' ')?;
            by_kind.push((kind.to_string(), count.parse().ok()?));
        }
        Some(ProcessSummary {
            total: total.parse().ok()?,
            by_kind,
        })
    }

    pub(crate) fn count(&self, kind: &str) -> u64 {
        self.by_kind
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, n)| n)
            .sum()
    }

    /// Processes that did work: all but Bazel's `internal` ones (Bazel 4 and later).
    pub(crate) fn real(&self) -> u64 {
        self.total - self.count("internal")
    }
}

/// The summary line of a Bazel command's output, checked for consistency.
pub(crate) fn process_summary(step: &str, output: &str) -> ProcessSummary {
    let summary = ProcessSummary::last_in(output).unwrap_or_else(|| {
        panic!(
            "bazel {step}: no `INFO: N processes: …` line in its output:\n{}",
            tail(output)
        )
    });
    let listed: u64 = summary.by_kind.iter().map(|(_, n)| n).sum();
    assert_eq!(
        listed, summary.total,
        "bazel {step}: the kinds in {summary:?} do not add up"
    );
    summary
}

pub(crate) fn assert_all_remote_cache_hits(step: &str, output: &str) -> ProcessSummary {
    let summary = process_summary(step, output);
    assert!(
        summary.real() > 0 && summary.count("remote cache hit") == summary.real(),
        "bazel {step}: not every action was a remote cache hit: {summary:?}; its output:\n{}",
        tail(output)
    );
    summary
}

/// Copies a directory tree (files keep their permissions). Symlinks are left out: the sources
/// have none, and Bazel's convenience symlinks (bazel-bin, …) of an in-place build must not come.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let file_type = entry.file_type().unwrap();
        let target = to.join(entry.file_name());
        if file_type.is_dir() {
            copy_tree(&entry.path(), &target);
        } else if file_type.is_file() {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every output file under bazel-bin and bazel-testlogs, by path. Left out: runfiles trees and
/// symlinks (Bazel makes them locally, they are not action outputs) and test.cache_status (it
/// records whether the result came from the cache).
fn outputs(workspace: &Path) -> BTreeMap<String, Vec<u8>> {
    outputs_under(workspace, &["bazel-bin", "bazel-testlogs"])
}

pub(crate) fn outputs_under(workspace: &Path, roots: &[&str]) -> BTreeMap<String, Vec<u8>> {
    fn walk(dir: &Path, name: &str, out: &mut BTreeMap<String, Vec<u8>>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let path_name = format!("{name}/{file_name}");
            let file_type = entry.file_type().unwrap();
            if file_type.is_dir() && !file_name.ends_with(".runfiles") {
                walk(&entry.path(), &path_name, out);
            } else if file_type.is_file() && file_name != "test.cache_status" {
                out.insert(path_name, fs::read(entry.path()).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    for root in roots {
        // The convenience symlink itself is followed.
        walk(&workspace.join(root), root, &mut out);
    }
    out
}

pub(crate) fn assert_same_outputs(
    first: &BTreeMap<String, Vec<u8>>,
    again: &BTreeMap<String, Vec<u8>>,
) {
    assert!(!first.is_empty(), "no outputs to compare");
    let missing: Vec<&String> = first.keys().filter(|k| !again.contains_key(*k)).collect();
    let extra: Vec<&String> = again.keys().filter(|k| !first.contains_key(*k)).collect();
    let differ: Vec<&String> = first
        .iter()
        .filter(|(k, v)| again.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && differ.is_empty(),
        "the outputs differ from the first build's: missing {missing:?}, new {extra:?}, \
         different bytes {differ:?}"
    );
}

/// Makes every directory under `dir` writable so that the temp dir can be removed: Bazel leaves
/// some read-only.
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mut perms = meta.permissions();
    perms.set_mode(perms.mode() | 0o700);
    let _ = fs::set_permissions(dir, perms);
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        make_writable(&entry.path());
    }
}

/// A copy of tests/bazel (the sample workspace and the stand-ins it refers to as ../standins)
/// in a temp dir that is made writable again before it is removed.
pub(crate) struct Sample {
    pub(crate) workspace: PathBuf,
    tmp: tempfile::TempDir,
}

impl Sample {
    pub(crate) fn new() -> Sample {
        let sources = repo_root().join("tests/bazel/workspace");
        Sample::with_workspace(|workspace| copy_tree(&sources, workspace))
    }

    /// The stand-ins of tests/bazel beside a workspace directory that `fill` writes (its
    /// WORKSPACE file included: the sample's refers to the stand-ins).
    pub(crate) fn with_workspace(fill: impl FnOnce(&Path)) -> Sample {
        let tmp = tempfile::tempdir().unwrap();
        copy_tree(
            &repo_root().join("tests/bazel/standins"),
            &tmp.path().join("standins"),
        );
        let workspace = tmp.path().join("workspace");
        fs::create_dir_all(&workspace).unwrap();
        fill(&workspace);
        Sample { workspace, tmp }
    }

    pub(crate) fn bazel(&self, bin: PathBuf) -> Bazel {
        self.bazel_in(bin, "root")
    }

    /// A Bazel server of its own (output user root `root` in the temp dir) for the workspace.
    pub(crate) fn bazel_in(&self, bin: PathBuf, root: &str) -> Bazel {
        Bazel::new(bin, self.workspace.clone(), self.tmp.path().join(root))
    }
}

impl Drop for Sample {
    fn drop(&mut self) {
        make_writable(self.tmp.path());
    }
}

#[test]
fn bazel_2_1_builds_tests_and_rebuilds_from_the_remote_cache() {
    let started = Instant::now();
    let bin = bazel_binary();
    let mut server = ApiServer::start();

    let sample = Sample::new();
    let workspace = sample.workspace.clone();
    let bazel = sample.bazel(bin);

    let remote = format!("--remote_cache=grpc://127.0.0.1:{}", server.grpc_port);
    let common = [
        remote.as_str(),
        "--color=no",
        "--curses=no",
        "--show_progress_rate_limit=5",
        "--jobs=2",
    ];
    let with = |command: &str, extra: &[&'static str]| -> Vec<String> {
        let mut args = vec![command.to_string()];
        args.extend(common.iter().map(|s| s.to_string()));
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("//...".to_string());
        args
    };
    let run = |step: &str, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bazel.run(step, &args)
    };

    // A cold build: the cache is empty, every action runs locally and is uploaded.
    let output = run("build-1", with("build", &[]));
    let summary = process_summary("build-1", &output);
    assert!(
        summary.real() > 0 && summary.count("remote cache hit") == 0,
        "bazel build-1: a fresh cache cannot have hits: {summary:?}"
    );
    let output = run("test-1", with("test", &["--test_output=errors"]));
    assert!(
        output.contains(&format!("{TEST_TARGETS} tests pass")),
        "bazel test-1: expected {TEST_TARGETS} passing tests; its output:\n{}",
        tail(&output)
    );
    let first = outputs(&workspace);

    // After a clean, everything comes back from the cache.
    bazel.run("clean", &["clean"]);
    let output = run("build-2", with("build", &[]));
    let build_hits = assert_all_remote_cache_hits("build-2", &output);
    let output = run("test-2", with("test", &["--test_output=errors"]));
    let test_hits = assert_all_remote_cache_hits("test-2", &output);
    assert!(
        output.contains(&format!(
            "Executed 0 out of {TEST_TARGETS} tests: {TEST_TARGETS} tests pass"
        )),
        "bazel test-2: the test results should all have come from the cache; its output:\n{}",
        tail(&output)
    );
    assert_same_outputs(&first, &outputs(&workspace));

    server.proc.assert_running();
    eprintln!(
        "bazel: {} + {} remote cache hits after the clean, {} output files identical; {:.1}s in all",
        build_hits.total,
        test_hits.total,
        first.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Bazel's error lines for a failed build, without what only a local spawn adds after
/// `(Exit N)` (the command line it ran).
fn error_lines(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.starts_with("ERROR:"))
        .map(|l| match l.find(" failed (Exit ") {
            Some(at) => match l[at..].find(')') {
                Some(close) => l[..at + close + 1].to_string(),
                None => l.to_string(),
            },
            None => l.to_string(),
        })
        .collect()
}

pub(crate) fn assert_all_remote(step: &str, output: &str) -> ProcessSummary {
    let summary = process_summary(step, output);
    assert!(
        summary.real() > 0 && summary.count("remote") == summary.real(),
        "bazel {step}: not every action ran remotely: {summary:?}; its output:\n{}",
        tail(output)
    );
    summary
}

#[test]
fn bazel_2_1_runs_every_action_on_a_local_cluster() {
    let started = Instant::now();
    let bin = bazel_binary();
    let sample = Sample::new();
    let workspace = sample.workspace.clone();
    let bazel = sample.bazel(bin);
    let quiet = ["--color=no", "--curses=no", "--show_progress_rate_limit=5"];
    let args = |command: &str, extra: &[&str], target: &str| -> Vec<String> {
        let mut args = vec![command.to_string()];
        args.extend(quiet.iter().chain(extra).map(|s| s.to_string()));
        args.push(target.to_string());
        args
    };
    let run = |step: &str, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        bazel.run(step, &args)
    };
    let run_failing = |step: &str, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, output, log, _) = bazel.run_unchecked(step, &args, BAZEL_TIMEOUT);
        assert!(
            status.is_some_and(|s| !s.success()),
            "bazel {step} should have failed ({status:?}, see {})",
            log.display()
        );
        output
    };
    const FAILING: [&str; 2] = ["//fail:exits_nonzero", "//fail:misses_output"];

    // The reference: everything built locally, and the failures as Bazel reports them locally.
    run("local-build", args("build", &["--jobs=2"], "//..."));
    let local = outputs_under(&workspace, &["bazel-bin"]);
    let local_errors: Vec<Vec<String>> = FAILING
        .iter()
        .map(|t| error_lines(&run_failing("local-fail", args("build", &[], t))))
        .collect();
    bazel.run("clean", &["clean"]);

    // The same build with only --remote_executor, against a setup-cloud-scoot cluster.
    let cluster = LocalCluster::start(800);
    let remote = format!("--remote_executor=grpc://{}", cluster.grpc_addr());
    let remote_args = [remote.as_str(), "--jobs=8"];
    let output = run("remote-build", args("build", &remote_args, "//..."));
    let built = assert_all_remote("remote-build", &output);
    assert_same_outputs(&local, &outputs_under(&workspace, &["bazel-bin"]));
    let output = run(
        "remote-test",
        args("test", &[remote.as_str(), "--test_output=errors"], "//..."),
    );
    assert_all_remote("remote-test", &output);
    assert!(
        output.contains(&format!("{TEST_TARGETS} tests pass")),
        "bazel remote-test: expected {TEST_TARGETS} passing tests; its output:\n{}",
        tail(&output)
    );
    for (target, local_error) in FAILING.iter().zip(&local_errors) {
        let output = run_failing("remote-fail", args("build", &remote_args, target));
        assert!(
            !local_error.is_empty(),
            "{target} failed locally without an ERROR line"
        );
        assert_eq!(
            &error_lines(&output),
            local_error,
            "bazel reports {target} differently when it runs remotely; output:\n{}",
            tail(&output)
        );
    }

    // After a clean, every action comes back from the cluster's action cache.
    bazel.run("clean", &["clean"]);
    let output = run("remote-rebuild", args("build", &remote_args, "//..."));
    assert_all_remote_cache_hits("remote-rebuild", &output);
    assert_same_outputs(&local, &outputs_under(&workspace, &["bazel-bin"]));
    eprintln!(
        "bazel: {} actions run remotely, {} outputs identical to the local build; {:.1}s in all",
        built.total,
        local.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn error_lines_drop_what_only_local_spawns_add() {
    let local = "ERROR: /w/fail/BUILD:3:1: Executing genrule //fail:x failed (Exit 3) bash failed: \
                 error executing command /bin/bash -c 'exit 3'\nabout to fail\nINFO: done";
    assert_eq!(
        error_lines(local),
        vec!["ERROR: /w/fail/BUILD:3:1: Executing genrule //fail:x failed (Exit 3)"]
    );
}

#[test]
fn process_summaries_of_bazel_2_and_later() {
    let parse = ProcessSummary::parse_line;
    let hits = parse("INFO: 19 processes: 19 remote cache hit.").unwrap();
    assert_eq!(hits.total, 19);
    assert_eq!(hits.count("remote cache hit"), 19);
    assert_eq!(hits.real(), 19);
    let one = parse("INFO: 1 process: 1 linux-sandbox.").unwrap();
    assert_eq!((one.total, one.count("linux-sandbox")), (1, 1));
    let none = parse("INFO: 0 processes.").unwrap();
    assert_eq!((none.total, none.by_kind.len()), (0, 0));
    let mixed = parse("INFO: 23 processes: 4 remote cache hit, 19 linux-sandbox.").unwrap();
    assert_eq!(mixed.count("remote cache hit"), 4);
    assert_eq!(mixed.count("linux-sandbox"), 19);
    let newer = parse("INFO: 21 processes: 2 internal, 19 remote cache hit.").unwrap();
    assert_eq!((newer.real(), newer.count("remote cache hit")), (19, 19));
    assert_eq!(
        parse("INFO: Build completed successfully, 44 total actions"),
        None
    );
    assert_eq!(
        parse("INFO: Elapsed time: 0.681s, Critical Path: 0.06s"),
        None
    );
    let output = "INFO: 3 processes: 3 local.\nINFO: Build completed successfully\n\
                  INFO: 2 processes: 2 remote cache hit.\nINFO: Build completed successfully\n";
    assert_eq!(ProcessSummary::last_in(output).unwrap().total, 2);
}

/// The pid of the process whose command line has `flag` followed by `value` (a child of a
/// `setup-cloud-scoot` cluster, which the test did not start itself).
fn pid_with_flag(flag: &str, value: &str) -> Option<i32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        args.windows(2)
            .any(|w| w[0] == flag.as_bytes() && w[1] == value.as_bytes())
            .then_some(pid)
    })
}

/// Remote executions the scheduler has finished so far.
fn finished_operations(runtime: &tokio::runtime::Runtime, grpc: &str) -> Option<usize> {
    use scoot_proto::longrunning::ListOperationsRequest;
    use scoot_proto::longrunning::operations_client::OperationsClient;
    runtime.block_on(async {
        let mut client = OperationsClient::connect(format!("http://{grpc}"))
            .await
            .ok()?;
        let mut done = 0;
        let mut page_token = String::new();
        loop {
            let page = client
                .list_operations(ListOperationsRequest {
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner();
            done += page.operations.iter().filter(|op| op.done).count();
            if page.next_page_token.is_empty() {
                return Some(done);
            }
            page_token = page.next_page_token;
        }
    })
}

/// Bazel against a `local.ha` cluster (two schedulers on PostgreSQL, three apiservers holding
/// every blob and cached result twice): one apiserver SIGKILLed mid-build, then the leading
/// scheduler SIGKILLed; the rebuild after a clean, through the scheduler that took over, is
/// all cache hits.
#[test]
fn bazel_2_1_builds_on_a_highly_available_cluster_through_an_apiserver_and_a_scheduler_death() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let bin = bazel_binary();
    let sample = Sample::new();
    let workspace = sample.workspace.clone();
    let bazel = sample.bazel(bin);
    bazel.run(
        "local-build",
        &["build", "--color=no", "--curses=no", "//..."],
    );
    let local = outputs_under(&workspace, &["bazel-bin"]);
    bazel.run("clean", &["clean"]);

    let mut cluster = LocalCluster::start_ha(1100);
    let grpc = cluster.grpc_addr();
    let victim_grpc = format!("localhost:{}", 12100 + 1100 + 1);
    let remote = format!("--remote_executor=grpc://{grpc}");
    let args = [
        "build",
        "--color=no",
        "--curses=no",
        remote.as_str(),
        "--jobs=4",
        "//...",
    ];

    // Once a few actions have run remotely, SIGKILL one apiserver while the build goes on.
    let build_over = AtomicBool::new(false);
    let done_at_kill = AtomicUsize::new(0);
    let (status, output, log, _) = std::thread::scope(|scope| {
        scope.spawn(|| {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            while !build_over.load(Ordering::SeqCst) {
                let done = finished_operations(&runtime, &grpc).unwrap_or(0);
                if done >= 3 {
                    let pid = pid_with_flag("-grpc_addr", &victim_grpc)
                        .expect("the apiserver to kill is running");
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .unwrap();
                    done_at_kill.store(done, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let result = bazel.run_unchecked("sharded-build", &args, BAZEL_TIMEOUT);
        build_over.store(true, Ordering::SeqCst);
        result
    });
    assert!(
        status.is_some_and(|s| s.success()),
        "bazel sharded-build failed ({status:?}); its output ({}):\n{}",
        log.display(),
        tail(&output)
    );
    let killed_after = done_at_kill.load(Ordering::SeqCst);
    let built = assert_all_remote("sharded-build", &output);
    assert!(
        killed_after > 0 && (killed_after as u64) < built.total,
        "the apiserver was not killed mid-build ({killed_after} of {} actions done)",
        built.total
    );
    assert!(pid_with_flag("-grpc_addr", &victim_grpc).is_none());
    assert_same_outputs(&local, &outputs_under(&workspace, &["bazel-bin"]));

    // The leading scheduler dies too; the standby takes over, and with the apiserver still
    // dead a rebuild after a clean is all cache hits.
    let leader_thrift = format!("localhost:{}", 9090 + cluster.offset);
    let leader = pid_with_flag("-thrift_addr", &leader_thrift).expect("the leader is running");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let standby = cluster.standby_grpc_addr();
    poll("the standby to lead", || {
        let health = http_get(9096 + cluster.offset, "/health", &[]);
        (health.status == 200).then_some(())
    });
    bazel.run("clean", &["clean"]);
    let remote = format!("--remote_executor=grpc://{standby}");
    let args = [
        "build",
        "--color=no",
        "--curses=no",
        remote.as_str(),
        "--jobs=4",
        "//...",
    ];
    let output = bazel.run("failover-rebuild", &args);
    assert_all_remote_cache_hits("failover-rebuild", &output);
    assert_same_outputs(&local, &outputs_under(&workspace, &["bazel-bin"]));
    assert!(
        cluster.proc.child.try_wait().unwrap().is_none(),
        "setup-cloud-scoot ended"
    );
    eprintln!(
        "bazel: {} actions remote on a local.ha cluster, an apiserver killed after \
         {killed_after}, then the leading scheduler",
        built.total
    );
}
