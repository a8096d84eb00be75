//! The scootcl binary against a real scheduler and workers.

use std::process::{Command, Output};

use serde_json::{Value, json};

use crate::support::*;

fn scootcl(sched: &Scheduler, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scootcl"))
        .arg("--addr")
        .arg(format!("127.0.0.1:{}", sched.thrift_port))
        .args(args)
        .output()
        .unwrap()
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "scootcl failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn failed(output: Output) -> String {
    assert!(!output.status.success(), "scootcl unexpectedly succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn run_watch_status_and_kill_jobs() {
    let (w1, w2) = (Worker::start(&[]), Worker::start(&[]));
    let sched = Scheduler::start(&[&w1, &w2], json!({}));

    let id = ok(scootcl(
        &sched,
        &["run_job", "sh", "-c", "echo from-scootcl"],
    ))
    .trim()
    .to_string();
    let watched = ok(scootcl(&sched, &["watch_job", &id, "--timeout", "30s"]));
    assert!(
        watched.contains(&format!(
            "Job Status: JobStatus({{ID:{id} Status:COMPLETED "
        )),
        "{watched}"
    );
    let status: Value =
        serde_json::from_str(&ok(scootcl(&sched, &["get_job_status", &id, "--json"]))).unwrap();
    assert_eq!(status["status"], "COMPLETED");
    assert_eq!(status["taskStatus"]["task1"], "COMPLETED");
    let out = status["taskData"]["task1"]["outUri"].as_str().unwrap();
    assert_eq!(command_output(&file_of_uri(out)), "from-scootcl\n");

    let dir = tempfile::tempdir().unwrap();
    let def = dir.path().join("job.json");
    std::fs::write(
        &def,
        r#"{"Tasks": [{"Args": ["sleep", "30"], "TaskID": "long"}, {"Args": ["sleep", "30"], "TaskID": "long2"}],
            "Requestor": "scootcl-test", "SomethingNewer": {"ignored": true}}"#,
    )
    .unwrap();
    let id = ok(scootcl(
        &sched,
        &["run_job", "--job_def", def.to_str().unwrap()],
    ))
    .trim()
    .to_string();
    let killed = ok(scootcl(&sched, &["kill_job", &id]));
    assert!(
        killed.starts_with(&format!("Job Status: JobStatus({{ID:{id} ")),
        "{killed}"
    );
    ok(scootcl(&sched, &["watch_job", &id, "--timeout", "30s"]));
    let status: Value =
        serde_json::from_str(&ok(scootcl(&sched, &["get_job_status", &id, "--json"]))).unwrap();
    for task in ["long", "long2"] {
        assert_eq!(status["taskData"][task]["status"], "ABORTED", "{status}");
    }
    assert!(failed(scootcl(&sched, &["kill_job", &id])).contains("not found"));
}

#[test]
fn a_tasks_argv_reaches_it_as_typed() {
    let w = Worker::start(&[]);
    let sched = Scheduler::start(&[&w], json!({}));
    let id = ok(scootcl(
        &sched,
        &[
            "run_job", "-tag", "t", "printf", "%s|", "-hello", "-n", "-la",
        ],
    ))
    .trim()
    .to_string();
    ok(scootcl(&sched, &["watch_job", &id, "--timeout", "30s"]));
    let status: Value =
        serde_json::from_str(&ok(scootcl(&sched, &["get_job_status", &id, "--json"]))).unwrap();
    assert_eq!(status["taskStatus"]["task1"], "COMPLETED", "{status}");
    let out = status["taskData"]["task1"]["outUri"].as_str().unwrap();
    assert_eq!(command_output(&file_of_uri(out)), "-hello|-n|-la|");
}

#[test]
fn bad_input_is_reported() {
    let w = Worker::start(&[]);
    let sched = Scheduler::start(&[&w], json!({}));
    assert!(failed(scootcl(&sched, &["run_job"])).contains("needs a command"));
    let dir = tempfile::tempdir().unwrap();
    let def = dir.path().join("bad.json");
    std::fs::write(
        &def,
        r#"{"Tasks": [{"Args": ["true"], "TaskID": "a"}, {"Args": ["true"], "TaskID": "a"}]}"#,
    )
    .unwrap();
    let err = failed(scootcl(
        &sched,
        &["run_job", "--job_def", def.to_str().unwrap()],
    ));
    assert!(err.contains("invalid dup taskID a"), "{err}");
    std::fs::write(&def, "{not json").unwrap();
    assert!(
        failed(scootcl(
            &sched,
            &["run_job", "--job_def", def.to_str().unwrap()]
        ))
        .contains("invalid job definition")
    );
    assert!(
        failed(scootcl(
            &sched,
            &["set_scheduler_status", "--task-throttle", "-3"]
        ))
        .contains("must be -1")
    );
    assert!(
        failed(scootcl(&sched, &["offline_worker", "nowhere:1"])).contains("can't be offlined")
    );
    let unreachable = Command::new(env!("CARGO_BIN_EXE_scootcl"))
        .args([
            "--addr",
            &format!("127.0.0.1:{}", free_port()),
            "get_scheduler_status",
        ])
        .output()
        .unwrap();
    assert!(failed(unreachable).contains("cannot reach the scheduler"));
}

#[test]
fn scheduler_settings_and_workers() {
    let w = Worker::start(&[]);
    let sched = Scheduler::start(&[&w], json!({}));
    ok(scootcl(
        &sched,
        &["set_scheduler_status", "--task-throttle", "50", "--json"],
    ));
    let status: Value =
        serde_json::from_str(&ok(scootcl(&sched, &["get_scheduler_status", "--json"]))).unwrap();
    assert_eq!(status["maxTasks"], 50);

    let dir = tempfile::tempdir().unwrap();
    let pcts = dir.path().join("pcts.json");
    std::fs::write(&pcts, r#"{"land": 60, "ci": 40}"#).unwrap();
    ok(scootcl(
        &sched,
        &[
            "set_scheduling_alg_params",
            "--class_pcts_file",
            pcts.to_str().unwrap(),
            "--rebalance_min",
            "9",
        ],
    ));
    // Scoot's exact output: Go's encoding of its params struct, keys sorted within maps.
    let params = ok(scootcl(&sched, &["get_scheduling_alg_params", "--json"]));
    let map: Value = serde_json::from_str(&params).unwrap();
    let requestors = serde_json::to_string(&map["RequestorMap"]).unwrap();
    assert_eq!(
        params,
        format!(
            "{{\"ClassLoadPercents\":{{\"ci\":40,\"land\":60}},\"RequestorMap\":{requestors},\
             \"RebalanceMinimumDuration\":9,\"RebalanceThreshold\":0}}\n"
        )
    );
    let text = ok(scootcl(&sched, &["get_scheduling_alg_params"]));
    assert!(
        text.starts_with(
            "Class Load Percents:\nci : 40\nland : 60\nRequestor (reg exp) to class map:\n"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("Rebalance Duration: 9  (minutes)\nRebalance Threshold: 0\n"),
        "{text}"
    );

    let node = format!("127.0.0.1:{}", w.thrift_port);
    poll("the worker to be offlined", || {
        scootcl(&sched, &["offline_worker", &node])
            .status
            .success()
            .then_some(())
    });
    ok(scootcl(&sched, &["reinstate_worker", &node]));
}

#[test]
fn smoketest_passes_and_reads_the_address_file() {
    let api = ApiServer::start();
    let bundlestore = format!("127.0.0.1:{}", api.http_port);
    let workers: Vec<Worker> = (0..3)
        .map(|_| Worker::start(&["-bundlestore", &bundlestore]))
        .collect();
    let sched = Scheduler::start(&workers.iter().collect::<Vec<_>>(), json!({}));
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join(".cloudscootaddrtest"),
        format!("127.0.0.1:{}\n{bundlestore}\n", sched.thrift_port),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_scootcl"))
        .env("HOME", home.path())
        .env("SCOOT_ID", "test")
        .args([
            "smoke_test",
            "--num_jobs",
            "10",
            "--num_tasks",
            "-1",
            "--timeout",
            "60s",
            // Scoot's smoke test took (and ignored) it; scripts pass it.
            "--bundlestore",
            &bundlestore,
        ])
        .output()
        .unwrap();
    let stdout = ok(output);
    assert!(stdout.starts_with("smoketest passed: 10 jobs"), "{stdout}");
}
