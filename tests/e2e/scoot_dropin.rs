//! Taking over a Go Scoot cluster in place: its saga log, its flags, its CLI's output and its
//! cluster rules.

use std::path::Path;

use scoot_thrift::scoot::{self, TCloudScootSyncClient};
use scoot_thrift::{codec, sched};
use serde_json::json;

use crate::support::*;

/// A job as Go Scoot's scheduler stored it in a Start Saga (`sched.thrift`, binary).
fn scoot_job(id: &str, tasks: &[(&str, &[&str])]) -> Vec<u8> {
    let tasks = tasks
        .iter()
        .map(|(task_id, argv)| {
            sched::TaskDefinition::new(
                sched::Command::new(
                    argv.iter().map(|s| s.to_string()).collect(),
                    Some(Default::default()),
                    Some(0),
                    String::new(),
                    None,
                    None,
                ),
                Some(task_id.to_string()),
            )
        })
        .collect::<Vec<_>>();
    codec::to_bytes(&sched::Job::new(
        id.to_string(),
        sched::JobDefinition::new(
            Some(String::new()),
            Some(tasks),
            Some(0),
            Some(id.to_string()),
            Some(String::new()),
            Some(String::new()),
        ),
    ))
    .unwrap()
}

/// A worker RunStatus as Go Scoot stored it in its saga log: Thrift JSON, every field present.
fn scoot_status(state: i32, run_id: &str, exit_code: i32) -> String {
    format!(
        r#"{{"1":{{"i32":{state}}},"2":{{"str":"{run_id}"}},"3":{{"str":"http://localhost:10100/output/stdout_{run_id}"}},"4":{{"str":"http://localhost:10100/output/stderr_{run_id}"}},"5":{{"str":""}},"6":{{"i32":{exit_code}}},"7":{{"str":""}},"8":{{"str":""}},"9":{{"str":""}},"10":{{"str":""}}}}"#
    )
}

/// Writes saga `id` under `root` in the layout of Go Scoot's file saga log: a directory per
/// saga, a line-oriented `log` and a data file per message, the paths recorded relative to
/// Scoot's working directory (`.scootdata/filesagalog`, as its `local.local` config had it).
fn write_scoot_saga(root: &Path, id: &str, records: &[(&str, &str, &[u8])], torn: &str) {
    let dir = root.join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let mut log = String::new();
    for (n, (kind, task_id, data)) in records.iter().enumerate() {
        log.push_str(kind);
        log.push('\n');
        let file = match *kind {
            "Start Saga" => format!("StartSagaData_Dec  5 12:00:00.{n:09}"),
            "End Saga" | "Abort Saga" => continue,
            _ => format!("{kind}_{task_id}_data_Dec  5 12:00:00.{n:03}"),
        };
        std::fs::write(dir.join(&file), data).unwrap();
        if *kind != "Start Saga" {
            log.push_str(task_id);
            log.push('\n');
        }
        log.push_str(&format!(".scootdata/filesagalog/{id}/{file}\n"));
    }
    log.push_str(torn);
    std::fs::write(dir.join("log"), log).unwrap();
}

/// A scheduler started on Go Scoot's saga directory finishes the jobs Scoot left unfinished
/// (only their unfinished tasks run), and answers for the ones Scoot finished, from Scoot's own
/// records.
#[test]
fn jobs_in_go_scoots_saga_log_are_recovered_and_complete() {
    let w = Worker::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let saga_dir = dir.path().join("filesagalog");
    let done = scoot_status(3, "4", 7);
    let running = scoot_status(2, "5", 0);

    // Unfinished: t1 ended under Scoot, t2 was running, t3 never started; a torn last line.
    let job_a = scoot_job(
        "scoot-job-a",
        &[
            ("t1", &["sh", "-c", "exit 99"]),
            ("t2", &["echo", "two"]),
            ("t3", &["echo", "three"]),
        ],
    );
    write_scoot_saga(
        &saga_dir,
        "scoot-job-a",
        &[
            ("Start Saga", "", &job_a),
            ("Start Task", "t1", b""),
            ("Start Task", "t1", running.as_bytes()),
            ("End Task", "t1", done.as_bytes()),
            ("Start Task", "t2", b""),
            ("Start Task", "t2", running.as_bytes()),
        ],
        "End Task\nt2\n.scootdata/filesagalog/scoot-jo",
    );
    // Unfinished: nothing but the job, and a record cut before its data line.
    let job_b = scoot_job("scoot-job-b", &[("only", &["echo", "b"])]);
    write_scoot_saga(
        &saga_dir,
        "scoot-job-b",
        &[("Start Saga", "", &job_b)],
        "Start Task\nonly\n",
    );
    // Finished under Scoot: aborted and compensated.
    let job_c = scoot_job("scoot-job-c", &[("c1", &["false"])]);
    write_scoot_saga(
        &saga_dir,
        "scoot-job-c",
        &[
            ("Start Saga", "", &job_c),
            ("Start Task", "c1", b""),
            ("Abort Saga", "", b""),
            ("Start Comp Task", "c1", b""),
            ("End Comp Task", "c1", b""),
            ("End Saga", "", b""),
        ],
        "",
    );

    let workers_file = dir.path().join("workers");
    write_workers(&workers_file, &[&w]);
    let config = json!({
        "Cluster": {"Type": "static", "File": workers_file},
        "SchedulerConfig": {"Type": "stateful", "RecoverJobsOnStartup": true},
        "SagaLog": {"Type": "file", "Directory": saga_dir},
    });
    let sched = Scheduler::start_with(dir, workers_file, saga_dir.clone(), config, &[]);
    let mut client = sched.client();
    let data = |status: &scoot::JobStatus, task: &str| -> scoot::RunStatus {
        status
            .task_data
            .as_ref()
            .and_then(|d| d.get(task))
            .cloned()
            .unwrap_or_else(|| panic!("no taskData for {task}: {status:?}"))
    };

    let a = wait_job(&mut client, "scoot-job-a");
    // t1 is not run again: its result is the one Scoot recorded (Thrift JSON).
    let t1 = data(&a, "t1");
    assert_eq!(
        (t1.status, t1.run_id.as_str(), t1.exit_code),
        (scoot::RunStatusState::COMPLETE, "4", Some(7)),
        "{t1:?}"
    );
    assert_eq!(
        t1.out_uri.as_deref(),
        Some("http://localhost:10100/output/stdout_4")
    );
    for t in ["t2", "t3"] {
        let run = data(&a, t);
        assert_eq!(
            (run.status, run.exit_code),
            (scoot::RunStatusState::COMPLETE, Some(0)),
            "{t}: {run:?}"
        );
        assert_ne!(
            run.out_uri.as_deref(),
            t1.out_uri.as_deref(),
            "{t} ran here"
        );
    }
    let b = wait_job(&mut client, "scoot-job-b");
    assert_eq!(data(&b, "only").status, scoot::RunStatusState::COMPLETE);
    let c = client.0.get_status("scoot-job-c".to_string()).unwrap();
    assert_eq!(c.status, scoot::Status::ROLLED_BACK, "{c:?}");

    // Scoot's directories are moved aside once imported, out of reach of both schedulers.
    for id in ["scoot-job-a", "scoot-job-b", "scoot-job-c"] {
        assert!(!saga_dir.join(id).exists(), "{id}");
        assert!(
            saga_dir
                .join("scoot-imported")
                .join(id)
                .join("log")
                .exists(),
            "{id}"
        );
    }
}

/// Scoot's cluster rule: a worker that reports itself unhealthy is suspended and forgotten
/// after the lost-worker timeout (not polled for ever), and the task it failed runs elsewhere.
#[test]
fn an_unhealthy_worker_is_dropped_and_its_task_runs_elsewhere() {
    // Any task's memory is over a 1-byte cap when it starts: FAILED 241, the worker unhealthy.
    // (`-sandbox off`: the sandbox probe at start would itself fail under that cap.)
    let sick = Worker::start(&["-mem_cap", "1", "-sandbox", "off"]);
    let well = Worker::start(&[]);
    let sched = Scheduler::start_with_flags(
        &[&sick],
        json!({"MaxRetriesPerTask": 1}),
        &["-lost_worker_timeout", "2s"],
    );
    let sick_id = format!("127.0.0.1:{}", sick.thrift_port);
    let workers_page = || http_get(sched.http_port, "/ui/workers", &[]).text();
    poll("the worker to be listed", || {
        workers_page().contains(&sick_id).then_some(())
    });
    let mut client = sched.client();
    let id = client
        .0
        .run_job(job(vec![task("a", &["sleep", "1"])]))
        .unwrap()
        .id;
    poll("the unhealthy worker to be forgotten", || {
        (!workers_page().contains(&sick_id)).then_some(())
    });
    // Still listed, it does not come back; the task waits for, and runs on, the new worker.
    write_workers(&sched.workers_file, &[&sick, &well]);
    let status = wait_job(&mut client, &id);
    let run = status.task_data.as_ref().and_then(|d| d.get("a")).unwrap();
    assert_eq!(
        (run.status, run.exit_code),
        (scoot::RunStatusState::COMPLETE, Some(0)),
        "{run:?}"
    );
    let well_http = format!("127.0.0.1:{}", well.http_port);
    assert!(
        run.out_uri
            .as_deref()
            .is_some_and(|u| u.contains(&well_http)),
        "{run:?}"
    );
    let page = workers_page();
    assert!(!page.contains(&sick_id), "{page}");
}

/// The gRPC flags of Scoot's Bazel-era apiserver (every one given).
const APISERVER_GRPC_FLAGS: [&str; 12] = [
    "-max_grpc_conn",
    "1",
    "-max_grpc_rps",
    "500",
    "-max_grpc_rps_burst",
    "250",
    "-max_grpc_streams",
    "8",
    "-max_grpc_idle_mins",
    "1",
    "-cas_buffer_size",
    "2147483648",
];

/// An apiserver with `flags`, on a free HTTP port and, unless `grpc` is false, a free gRPC port.
fn apiserver(flags: &[&str], grpc: bool) -> (Proc, Vec<u16>, tempfile::TempDir) {
    let store = tempfile::tempdir().unwrap();
    let (proc, ports) = spawn_listening("apiserver", if grpc { 2 } else { 1 }, |ports| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_apiserver"));
        cmd.arg("-http_addr")
            .arg(format!("127.0.0.1:{}", ports[0]))
            .arg("-grpc_addr")
            .arg(
                ports
                    .get(1)
                    .map(|p| format!("127.0.0.1:{p}"))
                    .unwrap_or_default(),
            )
            .args(flags)
            .args(["-log_level", "debug"])
            .env("BUNDLESTORE_STORE_DIR", store.path())
            .stderr(log_file(&format!("apiserver-{}", ports[0])));
        cmd
    });
    (proc, ports, store)
}

/// `bzutil find_missing_blobs` against `port`: whether the call succeeded.
fn cas_answers(port: u16) -> bool {
    let absent = format!("{}/5", "0".repeat(64));
    std::process::Command::new(env!("CARGO_BIN_EXE_bzutil"))
        .args(["find_missing_blobs", "--cas_addr"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--digests", &absent])
        .output()
        .unwrap()
        .status
        .success()
}

/// Every BZ-era gRPC flag is accepted; with `-max_grpc_conn 1` a second connection is closed
/// while the first is open, and served once it has gone.
#[test]
fn scoots_grpc_flags_are_accepted_and_the_connection_limit_holds() {
    let (_api, ports, _store) = apiserver(&APISERVER_GRPC_FLAGS, true);
    let grpc = ports[1];
    assert!(cas_answers(grpc), "a lone client is served");
    let holder = std::net::TcpStream::connect(("127.0.0.1", grpc)).unwrap();
    // The server has accepted `holder` once a second connection is turned away.
    poll("a second connection to be refused", || {
        (!cas_answers(grpc)).then_some(())
    });
    drop(holder);
    poll("the slot to be free again", || {
        cas_answers(grpc).then_some(())
    });

    // The scheduler takes the same flags (but -cas_buffer_size, which was the apiserver's).
    let w = Worker::start(&[]);
    let sched = Scheduler::start_with_flags(&[&w], json!({}), &APISERVER_GRPC_FLAGS[..10]);
    let mut client = sched.client();
    let id = client
        .0
        .run_job(job(vec![task("t", &["true"])]))
        .unwrap()
        .id;
    wait_job(&mut client, &id);
    assert!(cas_answers(sched.grpc_port));
}

/// `-grpc_addr ''` runs the apiserver and the scheduler without a gRPC port.
#[test]
fn an_empty_grpc_addr_runs_without_grpc() {
    let (_api, ports, _store) = apiserver(&[], false);
    assert_eq!(http_get(ports[0], "/health", &[]).status, 200);

    let w = Worker::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let workers_file = dir.path().join("workers");
    write_workers(&workers_file, &[&w]);
    let config = json!({"Cluster": {"Type": "static", "File": workers_file}});
    let (_sched, ports) = spawn_listening("scheduler", 2, |ports| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_scheduler"));
        cmd.arg("-thrift_addr")
            .arg(format!("127.0.0.1:{}", ports[0]))
            .arg("-http_addr")
            .arg(format!("127.0.0.1:{}", ports[1]))
            .args(["-grpc_addr", "", "-config"])
            .arg(config.to_string())
            .stderr(log_file(&format!("scheduler-{}", ports[0])));
        cmd
    });
    let mut client = CloudScoot::connect(ports[0]);
    let id = client
        .0
        .run_job(job(vec![task("t", &["true"])]))
        .unwrap()
        .id;
    wait_job(&mut client, &id);
}

/// Bundlestore peering: a snapshot uploaded to apiserver 0 checks out on a worker that only
/// knows apiserver 1 (separate store directories), which asks its peers as Scoot's groupcache
/// peers did; a peer that is down (listed first) does not fail the read.
#[test]
fn a_snapshot_uploaded_to_one_apiserver_checks_out_through_another() {
    let (_api0, ports0, _store0) = apiserver(&[], true);
    let dead = format!("127.0.0.1:{}", free_port());
    let peers = format!("{dead},127.0.0.1:{}", ports0[0]);
    let (_api1, ports1, _store1) = apiserver(&["-peers", &peers], true);

    let dir = tempfile::tempdir().unwrap();
    let (repo, data) = (dir.path().join("repo"), dir.path().join("data"));
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    crate::snapshots::git(&repo, &["init", "-q"]);
    std::fs::write(data.join("file.txt"), "uploaded to apiserver 0\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_scoot-snapshot-db"))
        .arg("--bundlestore_url")
        .arg(format!("http://127.0.0.1:{}/bundle/", ports0[0]))
        .args(["create", "ingest_dir", "--dir"])
        .arg(&data)
        .current_dir(&repo)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let snapshot = String::from_utf8(output.stdout).unwrap().trim().to_string();

    let worker = Worker::start(&["-bundlestore", &format!("127.0.0.1:{}", ports1[0])]);
    let sched = Scheduler::start(&[&worker], json!({}));
    let mut client = sched.client();
    let def = job(vec![scoot::TaskDefinition::new(
        scoot::Command::new(vec!["cat".to_string(), "file.txt".to_string()], None),
        Some(snapshot),
        Some("cat".to_string()),
        None,
    )]);
    let id = client.0.run_job(def).unwrap().id;
    let status = wait_job(&mut client, &id);
    let run = status.task_data.unwrap()["cat"].clone();
    assert_eq!(
        (run.status, run.exit_code),
        (scoot::RunStatusState::COMPLETE, Some(0)),
        "{run:?}"
    );
    assert_eq!(
        command_output(&file_of_uri(run.out_uri.as_deref().unwrap())),
        "uploaded to apiserver 0\n"
    );
    // Apiserver 1 serves it at /bundle/ too, while its own store still lacks it.
    let bundles: Vec<_> = std::fs::read_dir(_store0.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bundle"))
        .collect();
    assert!(!bundles.is_empty());
    let peer = http_get(ports1[0], &format!("/bundle/{}", bundles[0]), &[]);
    assert_eq!(peer.status, 200);
    assert_eq!(
        http_get(
            ports1[0],
            &format!("/groupcacheapiserver/{}", bundles[0]),
            &[]
        )
        .status,
        404,
        "the peer route serves only the apiserver's own bundles"
    );
}
