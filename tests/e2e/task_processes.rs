//! A task's processes end with it, even those that left its process group, and even when the
//! worker itself was killed; a task inherits none of the worker's file descriptors.

use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::support::*;

const RUNNING: i64 = 2;
const COMPLETE: i64 = 3;
const TIMEDOUT: i64 = 6;

/// A shell that starts `sleep 300` in a session of its own (out of the task's process group),
/// writes that sleeper's pid to `pid_file`, then runs `sleep 300` itself.
fn escaping_task(pid_file: &Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "setsid sleep 300 & echo $! > {}; sleep 300",
            pid_file.display()
        ),
    ]
}

pub fn read_pid(pid_file: &Path) -> i32 {
    poll("the sleeper's pid", || {
        std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
    })
}

/// Kills a leftover sleeper if the test failed, so that it does not outlive the test.
pub struct Reaper(pub Option<i32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(pid) = self.0
            && process_alive(pid)
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

#[test]
fn a_timed_out_task_leaves_no_setsid_process_behind() {
    let worker = Worker::start(&[]);
    let mut client = PyWorkerClient::connect(worker.thrift_port);
    let scratch = tempfile::tempdir().unwrap();
    let pid_file = scratch.path().join("sleeper.pid");
    let argv = escaping_task(&pid_file);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    client.run(&argv, Some(1000));
    let sleeper = read_pid(&pid_file);
    let _reaper = Reaper(Some(sleeper));

    let done = client.wait_done("0");
    assert_eq!(done["status"].as_i64(), Some(TIMEDOUT), "{done}");
    poll("the setsid sleeper to be gone", || {
        (!process_alive(sleeper)).then_some(())
    });
}

#[test]
fn a_restarted_worker_kills_what_its_killed_predecessor_left_running() {
    let mut worker = Worker::start(&[]);
    let (thrift_port, http_port) = (worker.thrift_port, worker.http_port);
    let mut client = PyWorkerClient::connect(thrift_port);
    let scratch = tempfile::tempdir().unwrap();
    let pid_file = scratch.path().join("sleeper.pid");
    let argv = escaping_task(&pid_file);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    client.run(&argv, None);
    let sleeper = read_pid(&pid_file);
    let mut reaper = Reaper(Some(sleeper));
    poll("RUNNING status", || {
        let run = client.call(json!({"call": "QueryWorker"}))["runs"][0].clone();
        (run["status"] == RUNNING).then_some(())
    });
    drop(client);

    kill(worker.proc.pid(), Signal::SIGKILL).unwrap();
    worker.proc.child.wait().unwrap();
    assert!(
        process_alive(sleeper),
        "the task went with the worker: nothing to test"
    );

    let _restarted = Worker::start_on(
        thrift_port,
        http_port,
        &format!("workerserver-{thrift_port}-restarted"),
    );
    assert!(
        !process_alive(sleeper),
        "the task's sleeper survived the worker's restart"
    );
    reaper.0 = None;
}

#[test]
fn a_task_inherits_no_descriptor_of_the_worker() {
    let worker = Worker::start(&[]);
    let mut client = PyWorkerClient::connect(worker.thrift_port);
    client.run(&["ls", "/proc/self/fd"], None);
    let done = client.wait_done("0");
    assert_eq!(done["status"].as_i64(), Some(COMPLETE), "{done}");
    // 3 is the directory ls itself opened to list.
    assert_eq!(
        command_output(&file_of_uri(done["outUri"].as_str().unwrap())),
        "0\n1\n2\n3\n"
    );
}
