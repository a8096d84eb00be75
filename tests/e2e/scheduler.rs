//! The scheduler driven over CloudScoot, with real workerservers.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use scoot_thrift::scoot::{self, TCloudScootSyncClient};
use serde_json::{Value, json};

use crate::support::*;

fn app_error(err: thrift::Error) -> String {
    match err {
        thrift::Error::Application(e) => {
            assert_eq!(e.kind, thrift::ApplicationErrorKind::InternalError, "{e:?}");
            e.message
        }
        other => panic!("expected an application error, got {other:?}"),
    }
}

pub(crate) fn task_data(status: &scoot::JobStatus, task: &str) -> scoot::RunStatus {
    status
        .task_data
        .as_ref()
        .and_then(|d| d.get(task))
        .cloned()
        .unwrap_or_else(|| panic!("no taskData for {task}: {status:?}"))
}

#[test]
fn a_job_of_several_tasks_completes_with_task_data() {
    let (w1, w2) = (Worker::start(&[]), Worker::start(&[]));
    let sched = Scheduler::start(&[&w1, &w2], json!({}));
    let mut client = sched.client();
    let id = client
        .0
        .run_job(job(vec![
            task("echo", &["echo", "hello"]),
            task("fails", &["sh", "-c", "exit 3"]),
            task("sim", &["#! sim execer", "sleep 50", "complete 0"]),
        ]))
        .unwrap()
        .id;
    let status = wait_job(&mut client, &id);
    let states = status.task_status.clone().unwrap();
    assert!(
        states.values().all(|s| *s == scoot::Status::COMPLETED),
        "{states:?}"
    );
    let echo = task_data(&status, "echo");
    assert_eq!(
        (echo.status, echo.exit_code),
        (scoot::RunStatusState::COMPLETE, Some(0))
    );
    assert_eq!(
        command_output(&file_of_uri(echo.out_uri.as_deref().unwrap())),
        "hello\n"
    );
    let fails = task_data(&status, "fails");
    // A non-zero exit is still a COMPLETE run; the job is COMPLETED regardless.
    assert_eq!(
        (fails.status, fails.exit_code),
        (scoot::RunStatusState::COMPLETE, Some(3))
    );
    assert!(fails.job_id.is_none(), "taskData drops job/task/tag");
    assert_eq!(
        task_data(&status, "sim").status,
        scoot::RunStatusState::COMPLETE
    );
    let sched_status = client.0.get_scheduler_status().unwrap();
    assert_eq!(
        (sched_status.current_tasks, sched_status.max_tasks),
        (0, -1)
    );
    let health = http_get(sched.http_port, "/health", &[]);
    assert_eq!((health.status, health.text().as_str()), (200, "ok"));
}

#[test]
fn invalid_requests_are_refused_with_clear_messages() {
    let w = Worker::start(&[]);
    let sched = Scheduler::start(&[&w], json!({"MaxJobsPerRequestor": 1}));
    let mut client = sched.client();
    let with_priority = |p| scoot::JobDefinition {
        priority: Some(p),
        ..job(vec![task("a", &["true"])])
    };
    let cases: Vec<(scoot::JobDefinition, &str)> = vec![
        (job(vec![]), "must have at least 1 task"),
        (job(vec![task("", &["true"])]), "empty taskId"),
        (job(vec![task("a", &[])]), "task a has an empty argv"),
        (
            job(vec![task("a", &["true"]), task("a", &["true"])]),
            "invalid dup taskID a",
        ),
        (
            with_priority(3),
            "invalid priority 3, must be between 0-2 inclusive",
        ),
        (
            scoot::JobDefinition {
                tag: Some("t".repeat(1 << 20)),
                ..job(vec![task("a", &["true"])])
            },
            "tag is 1048576 bytes, over the limit of 1024",
        ),
    ];
    for (def, message) in cases {
        let err = app_error(client.0.run_job(def).unwrap_err());
        assert!(
            err.starts_with("Internal error processing RunJob: "),
            "{err}"
        );
        assert!(err.contains(message), "{err} lacks {message}");
    }
    // Requestor limits: one job in progress per requestor here.
    let busy = scoot::JobDefinition {
        requestor: Some("alice".into()),
        ..job(vec![task("s", &["sleep", "30"])])
    };
    let first = client.0.run_job(busy.clone()).unwrap().id;
    let err = app_error(client.0.run_job(busy).unwrap_err());
    assert!(err.contains("exceeds max jobs per requestor"), "{err}");
    client.0.kill_job(first).unwrap();

    let unknown = client.0.get_status("no-such-job".into()).unwrap();
    assert_eq!(unknown.status, scoot::Status::NOT_STARTED);
    assert!(app_error(client.0.kill_job("no-such-job".into()).unwrap_err()).contains("not found"));
    assert!(app_error(client.0.set_scheduler_status(-2).unwrap_err()).contains("Must be >= -1"));
    client.0.set_scheduler_status(7).unwrap();
    assert_eq!(client.0.get_scheduler_status().unwrap().max_tasks, 7);
    let req = scoot::OfflineWorkerReq::new("nowhere:1".to_string(), "me".to_string());
    assert!(app_error(client.0.offline_worker(req).unwrap_err()).contains("can't be offlined"));
    let err = app_error(
        client
            .0
            .set_class_load_percents(Default::default())
            .unwrap_err(),
    );
    assert!(
        err.starts_with("Internal error processing SetClassLoadPercents"),
        "{err}"
    );
}

#[test]
fn class_and_rebalance_settings_round_trip() {
    let w = Worker::start(&[]);
    let sched = Scheduler::start(&[&w], json!({}));
    let mut client = sched.client();
    let percents = client.0.get_class_load_percents().unwrap();
    assert_eq!(percents.get("land"), Some(&40));
    client
        .0
        .set_class_load_percents([("a".to_string(), 30), ("b".to_string(), 30)].into())
        .unwrap();
    assert_eq!(
        client
            .0
            .get_class_load_percents()
            .unwrap()
            .values()
            .sum::<i32>(),
        100
    );
    assert_eq!(
        client.0.get_requestor_to_class_map().unwrap().get("CI.*"),
        Some(&"regression".to_string())
    );
    client.0.set_rebalance_minimum_duration(7).unwrap();
    assert_eq!(client.0.get_rebalance_minimum_duration().unwrap(), 7);
    client.0.set_rebalance_threshold(12).unwrap();
    assert_eq!(client.0.get_rebalance_threshold().unwrap(), 12);
}

#[test]
fn kill_job_aborts_running_and_waiting_tasks() {
    let w = Worker::start(&[]);
    let sched = Scheduler::start(&[&w], json!({}));
    let mut client = sched.client();
    let id = client
        .0
        .run_job(job(vec![
            task("t1", &["sleep", "30"]),
            task("t2", &["sleep", "30"]),
        ]))
        .unwrap()
        .id;
    poll("a task to run", || {
        let status = client.0.get_status(id.clone()).unwrap();
        let data = status.task_data.unwrap_or_default();
        data.values()
            .any(|d| d.status == scoot::RunStatusState::RUNNING)
            .then_some(())
    });
    client.0.kill_job(id.clone()).unwrap();
    let status = wait_job(&mut client, &id);
    for t in ["t1", "t2"] {
        let data = task_data(&status, t);
        assert_eq!(data.status, scoot::RunStatusState::ABORTED, "{t}: {data:?}");
        assert!(
            data.error
                .as_deref()
                .unwrap_or_default()
                .starts_with("UserRequested"),
            "{data:?}"
        );
    }
    let again = app_error(client.0.kill_job(id).unwrap_err());
    assert!(
        again.contains("not found") || again.contains("already killed"),
        "{again}"
    );
}

#[test]
fn offlined_workers_get_no_work_until_reinstated() {
    let w = Worker::start(&[]);
    let sched = Scheduler::start(&[&w], json!({}));
    let mut client = sched.client();
    let node = format!("127.0.0.1:{}", w.thrift_port);
    // The worker must be known (ready) before it can be offlined.
    poll("the worker to be known", || {
        let req = scoot::OfflineWorkerReq::new(node.clone(), "me".into());
        client.0.offline_worker(req).ok()
    });
    let id = client
        .0
        .run_job(job(vec![task("t", &["true"])]))
        .unwrap()
        .id;
    std::thread::sleep(Duration::from_millis(500)); // absence of scheduling cannot be polled for
    let status = client.0.get_status(id.clone()).unwrap();
    assert_eq!(status.task_status.unwrap()["t"], scoot::Status::NOT_STARTED);
    client
        .0
        .reinstate_worker(scoot::ReinstateWorkerReq::new(node.clone(), "me".into()))
        .unwrap();
    wait_job(&mut client, &id);
    let err = app_error(
        client
            .0
            .reinstate_worker(scoot::ReinstateWorkerReq::new(node, "me".into()))
            .unwrap_err(),
    );
    assert!(err.contains("can't be reinstated"), "{err}");
}

pub(crate) fn running_worker_port(client: &mut CloudScoot, id: &str, task: &str) -> u16 {
    poll("the task to run", || {
        let status = client.0.get_status(id.to_string()).unwrap();
        let data = status.task_data?.get(task)?.clone();
        let uri = data
            .out_uri
            .filter(|_| data.status == scoot::RunStatusState::RUNNING)?;
        // http://127.0.0.1:<http port>/output/...
        uri.strip_prefix("http://127.0.0.1:")?
            .split('/')
            .next()?
            .parse()
            .ok()
    })
}

#[test]
fn a_worker_dying_mid_task_fails_the_task() {
    let mut w = Worker::start(&[]);
    let mut sched = Scheduler::start(&[&w], json!({"MaxRetriesPerTask": 0}));
    let mut client = sched.client();
    let id = client
        .0
        .run_job(job(vec![task("t", &["sleep", "60"])]))
        .unwrap()
        .id;
    assert_eq!(running_worker_port(&mut client, &id, "t"), w.http_port);
    let _ = killpg(w.proc.pid(), Signal::SIGKILL);
    let _ = w.proc.child.wait();
    let status = wait_job(&mut client, &id);
    let data = task_data(&status, "t");
    assert_eq!(data.status, scoot::RunStatusState::FAILED, "{data:?}");
    assert!(
        data.error
            .unwrap_or_default()
            .ends_with("-> Error(s) encountered, canceling task.")
    );
    sched.proc.assert_running();
}

#[test]
fn a_worker_dying_mid_task_is_retried_elsewhere_with_retries() {
    let mut workers = vec![Worker::start(&[]), Worker::start(&[])];
    let sched = Scheduler::start(&[&workers[0], &workers[1]], json!({"MaxRetriesPerTask": 1}));
    let mut client = sched.client();
    let id = client
        .0
        .run_job(job(vec![task(
            "t",
            &["sh", "-c", "sleep 1; echo survived"],
        )]))
        .unwrap()
        .id;
    let port = running_worker_port(&mut client, &id, "t");
    let victim = workers.iter().position(|w| w.http_port == port).unwrap();
    let mut dead = workers.remove(victim);
    let _ = killpg(dead.proc.pid(), Signal::SIGKILL);
    let _ = dead.proc.child.wait();
    let status = wait_job(&mut client, &id);
    let data = task_data(&status, "t");
    assert_eq!(
        (data.status, data.exit_code),
        (scoot::RunStatusState::COMPLETE, Some(0)),
        "{data:?}"
    );
    assert!(
        data.out_uri
            .unwrap()
            .contains(&format!(":{}/", workers[0].http_port))
    );
}

#[test]
fn a_restarted_scheduler_finishes_every_accepted_job() {
    every_accepted_job_finishes_after_a_kill(|workers| Scheduler::start(workers, json!({})));
}

/// Four jobs of three tasks on two workers; the scheduler `start` made is SIGKILLed while
/// tasks run and restarted on the same saga log: every task completes with its job's exit code.
pub(crate) fn every_accepted_job_finishes_after_a_kill(
    start: impl FnOnce(&[&Worker]) -> Scheduler,
) {
    let (w1, w2) = (Worker::start(&[]), Worker::start(&[]));
    let sched = start(&[&w1, &w2]);
    let mut client = sched.client();
    let ids: Vec<String> = (0..4)
        .map(|j| {
            let tasks = (0..3)
                .map(|t| {
                    task(
                        &format!("t{t}"),
                        &["#! sim execer", "sleep 300", &format!("complete {j}")],
                    )
                })
                .collect();
            client.0.run_job(job(tasks)).unwrap().id
        })
        .collect();
    // Let some tasks start, then kill the scheduler hard.
    running_worker_port(&mut client, &ids[0], "t0");
    drop(client);
    let mut sched = sched.kill_and_restart(json!({}));
    sched.wait_leading();
    let mut client = sched.client();
    for (j, id) in ids.iter().enumerate() {
        let status = wait_job(&mut client, id);
        for t in 0..3 {
            let data = task_data(&status, &format!("t{t}"));
            assert_eq!(
                (data.status, data.exit_code),
                (scoot::RunStatusState::COMPLETE, Some(j as i32)),
                "{id}"
            );
        }
    }
}

#[test]
fn garbage_on_the_thrift_port_does_not_stop_the_scheduler() {
    let w = Worker::start(&[]);
    let mut sched = Scheduler::start(&[&w], json!({}));
    for bytes in [
        &b"\x80\x01\x00\x01\x7f\xff\xff\xffRunJob"[..],
        &[0xde; 4096][..],
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", sched.thrift_port)) {
            use std::io::{Read, Write};
            let _ = s.write_all(bytes);
            let _ = s.shutdown(std::net::Shutdown::Write);
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.read_to_end(&mut Vec::new());
        }
    }
    sched.proc.assert_running();
    let mut client = sched.client();
    let id = client
        .0
        .run_job(job(vec![task("t", &["true"])]))
        .unwrap()
        .id;
    wait_job(&mut client, &id);
}

#[test]
fn a_client_generated_from_the_seed_idl_runs_a_job() {
    let w = Worker::start(&[]);
    let sched = Scheduler::start(&[&w], json!({}));
    let (python, gen_dir) = python_with_bindings("scoot.thrift");
    let output = Command::new(python)
        .arg(repo_root().join("tests/e2e/py/cloudscoot_driver.py"))
        .arg(gen_dir.path())
        .args(["127.0.0.1", &sched.thrift_port.to_string()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["status"], 3, "{result}");
    assert_eq!(result["taskData"]["py1"]["exitCode"], 0);
    assert_eq!(result["taskData"]["py2"]["exitCode"], 4);
    assert_eq!(result["refused"]["type"], 6, "INTERNAL_ERROR");
    assert!(
        result["refused"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Internal error processing RunJob")
    );
    let out = result["taskData"]["py1"]["outUri"].as_str().unwrap();
    assert_eq!(command_output(&file_of_uri(out)), "from python\n");
}

/// The saga file of job `id`: the hex of the id's bytes.
fn saga_file(saga_dir: &std::path::Path, id: &str) -> std::path::PathBuf {
    let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
    saga_dir.join(format!("{hex}.saga"))
}

/// Where each frame of a saga file begins (a frame is "SgF1", the payload length as u32 LE, a
/// checksum, the payload), and where the last one ends.
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = vec![0];
    let mut at = 0;
    while at < bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        at += 12 + len as usize;
        offsets.push(at);
    }
    offsets
}

#[test]
fn damaged_saga_files_are_salvaged_or_their_jobs_reported_failed() {
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("open");
    let (w1, w2) = (Worker::start(&[]), Worker::start(&[]));
    let sched = Scheduler::start(&[&w1, &w2], json!({}));
    let mut client = sched.client();
    // t2 runs until the gate opens, so its job is unfinished when the scheduler dies.
    let wait_for_gate = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; exit 2",
        gate.display()
    );
    let salvaged = client
        .0
        .run_job(job(vec![
            task("t0", &["sh", "-c", "exit 0"]),
            task("t1", &["sh", "-c", "exit 1"]),
            task("t2", &["sh", "-c", &wait_for_gate]),
        ]))
        .unwrap()
        .id;
    let unreadable = client
        .0
        .run_job(job(vec![task("only", &["true"])]))
        .unwrap()
        .id;
    poll("t0 and t1 to end while t2 runs", || {
        let status = client.0.get_status(salvaged.clone()).unwrap();
        let (states, data) = (status.task_status?, status.task_data?);
        let ended = |t: &str| states.get(t) == Some(&scoot::Status::COMPLETED);
        let running = data.get("t2")?.status == scoot::RunStatusState::RUNNING;
        (ended("t0") && ended("t1") && running).then_some(())
    });
    wait_job(&mut client, &unreadable);
    drop(client);

    let sched = sched.kill_and_restart_with(json!({}), |saga_dir| {
        // A flipped byte in the payload of a middle frame of the unfinished job.
        let path = saga_file(saga_dir, &salvaged);
        let mut bytes = std::fs::read(&path).unwrap();
        let offsets = frame_offsets(&bytes);
        assert!(offsets.len() > 4, "too few frames: {offsets:?}");
        bytes[offsets[1] + 14] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        // A cut inside the other job's first frame, its Start Saga (the job definition).
        let path = saga_file(saga_dir, &unreadable);
        let bytes = std::fs::read(&path).unwrap();
        let cut = frame_offsets(&bytes)[1] / 2;
        std::fs::write(&path, &bytes[..cut]).unwrap();
    });
    std::fs::write(&gate, b"").unwrap();
    let mut client = sched.client();
    // Whatever the damaged frame said is redone; the job completes with every task's result.
    let status = wait_job(&mut client, &salvaged);
    for (t, code) in [("t0", 0), ("t1", 1), ("t2", 2)] {
        let data = task_data(&status, t);
        assert_eq!(
            (data.status, data.exit_code),
            (scoot::RunStatusState::COMPLETE, Some(code)),
            "{t}: {data:?}"
        );
    }
    // The job whose definition is lost is over, and says why.
    let status = client.0.get_status(unreadable.clone()).unwrap();
    assert_eq!(status.status, scoot::Status::COMPLETED, "{status:?}");
    let failed = task_data(&status, "(job definition)");
    assert_eq!(failed.status, scoot::RunStatusState::FAILED, "{failed:?}");
    let reason = failed.error.unwrap_or_default();
    assert!(
        reason.contains("saga log damaged: job definition unreadable"),
        "{reason}"
    );
    let killed = client.0.kill_job(unreadable.clone()).unwrap();
    assert_eq!(killed, status);
}
