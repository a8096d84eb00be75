//! The scheduler with its saga log in PostgreSQL: a private server per test
//! (`scoot_local_cluster::postgres`), stopped when the test ends, however it ends.

use std::process::Command;

use scoot_local_cluster::postgres::{Options, PrivateCluster};
use serde_json::json;

use crate::scheduler::every_accepted_job_finishes_after_a_kill;
use crate::support::*;

/// A private PostgreSQL server holding an empty database `scoot`.
pub fn database() -> (PrivateCluster, String) {
    let cluster = PrivateCluster::start(Options::default()).unwrap();
    cluster.create_database("scoot").unwrap();
    let url = cluster.url("scoot");
    (cluster, url)
}

#[test]
fn a_scheduler_on_postgres_finishes_every_accepted_job_after_a_kill() {
    let (_db, url) = database();
    every_accepted_job_finishes_after_a_kill(|workers| {
        Scheduler::start_on_postgres(workers, &url, json!({}))
    });
}

#[test]
fn a_scheduler_whose_database_is_unreachable_exits_saying_so() {
    let port = free_port();
    let url = format!("postgresql://scoot:secret@127.0.0.1:{port}/scoot?connect_timeout=5");
    let config = json!({"SagaLog": {"Type": "postgres", "Url": url}});
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scheduler"));
    cmd.args([
        "-thrift_addr",
        "127.0.0.1:0",
        "-http_addr",
        "127.0.0.1:0",
        "-grpc_addr",
        "127.0.0.1:0",
        "-config",
    ])
    .arg(config.to_string())
    .stderr(std::process::Stdio::piped());
    let mut proc = Proc::spawn("scheduler", cmd);
    let status = poll("the scheduler to exit", || proc.child.try_wait().unwrap());
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(proc.child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let expected = format!(
        "cannot open the saga log: cannot connect to PostgreSQL at scoot@127.0.0.1:{port}/scoot"
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
}
