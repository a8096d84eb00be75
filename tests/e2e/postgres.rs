//! The scheduler with its saga log in PostgreSQL: a private server per test
//! (`scoot_local_cluster::postgres`), stopped when the test ends, however it ends.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use scoot_local_cluster::postgres::{Options, PrivateCluster};
use scoot_proto::reapi::v2::GetCapabilitiesRequest;
use scoot_proto::reapi::v2::capabilities_client::CapabilitiesClient;
use scoot_thrift::scoot::{self, TCloudScootSyncClient};
use serde_json::json;

use crate::scheduler::{every_accepted_job_finishes_after_a_kill, running_worker_port, task_data};
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
        let mut sched = Scheduler::start_on_postgres(workers, &url, json!({}));
        // A scheduler on PostgreSQL starts as a standby until it takes the lease.
        sched.wait_leading();
        sched
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

/// Two schedulers on one database and the same workers; the first leads.
fn leader_and_standby(url: &str, workers: &[&Worker]) -> (Scheduler, Scheduler) {
    let config = json!({"MaxJobsPerRequestor": 1000});
    let mut leader = Scheduler::start_on_postgres(workers, url, config.clone());
    leader.wait_leading();
    let standby = Scheduler::start_on_postgres(workers, url, config);
    (leader, standby)
}

/// One-task jobs of the sim execer, each sleeping `sleep_ms` and exiting with its index mod 50.
fn submit(client: &mut CloudScoot, jobs: usize, sleep_ms: u32) -> Vec<String> {
    (0..jobs)
        .map(|j| {
            let sleep = format!("sleep {sleep_ms}");
            let complete = format!("complete {}", j % 50);
            client
                .0
                .run_job(job(vec![task("t", &["#! sim execer", &sleep, &complete])]))
                .unwrap()
                .id
        })
        .collect()
}

/// Every job completed once, with its own exit code, and says so again when asked again.
fn all_complete_with_their_results(client: &mut CloudScoot, ids: &[String]) {
    for _ in 0..2 {
        for (j, id) in ids.iter().enumerate() {
            let status = wait_job(client, id);
            let data = task_data(&status, "t");
            assert_eq!(
                (data.status, data.exit_code),
                (scoot::RunStatusState::COMPLETE, Some((j % 50) as i32)),
                "{id}"
            );
        }
    }
}

#[test]
fn a_standby_refuses_naming_the_leader_and_takes_over_within_10s_of_its_death() {
    let (_db, url) = database();
    let workers: Vec<Worker> = (0..4).map(|_| Worker::start(&[])).collect();
    let refs: Vec<&Worker> = workers.iter().collect();
    let (leader, mut standby) = leader_and_standby(&url, &refs);

    // The standby answers, but refuses, naming where the leader is.
    let leader_thrift = format!("127.0.0.1:{}", leader.thrift_port);
    let health = poll("the standby's health", || {
        let health = http_get(standby.http_port, "/health", &[]);
        health.text().contains(&leader_thrift).then_some(health)
    });
    assert_eq!(health.status, 503, "{}", health.text());
    let err = standby
        .client()
        .0
        .run_job(job(vec![task("t", &["true"])]))
        .unwrap_err();
    let thrift::Error::Application(err) = err else {
        panic!("expected an application error, got {err:?}");
    };
    assert!(err.message.contains("is a standby"), "{}", err.message);
    assert!(err.message.contains(&leader_thrift), "{}", err.message);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refused = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "http://127.0.0.1:{}",
            standby.grpc_port
        ))
        .unwrap()
        .connect()
        .await
        .unwrap();
        CapabilitiesClient::new(channel)
            .get_capabilities(GetCapabilitiesRequest::default())
            .await
            .unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("127.0.0.1:{}", leader.grpc_port)),
        "{refused:?}"
    );

    // 100 jobs in flight, then the leader dies.
    let mut client = leader.client();
    let ids = submit(&mut client, 100, 500);
    // A fifth of the way through.
    running_worker_port(&mut client, &ids[20], "t");
    drop(client);
    let Scheduler { mut proc, .. } = leader;
    killpg(proc.pid(), Signal::SIGKILL).unwrap();
    let died = Instant::now();
    let _ = proc.child.wait();
    standby.wait_leading();
    let took_over = died.elapsed();
    assert!(
        took_over < Duration::from_secs(10),
        "the standby led {took_over:?} after the leader died"
    );
    all_complete_with_their_results(&mut standby.client(), &ids);
}

#[test]
fn a_leader_stopped_past_its_lease_is_fenced_and_steps_down() {
    let (_db, url) = database();
    let workers: Vec<Worker> = (0..2).map(|_| Worker::start(&[])).collect();
    let refs: Vec<&Worker> = workers.iter().collect();
    let (mut leader, mut standby) = leader_and_standby(&url, &refs);
    let mut client = leader.client();
    let ids = submit(&mut client, 10, 1500);
    running_worker_port(&mut client, &ids[0], "t");
    drop(client);

    kill(leader.proc.pid(), Signal::SIGSTOP).unwrap();
    standby.wait_leading();
    kill(leader.proc.pid(), Signal::SIGCONT).unwrap();
    let status = poll("the old leader to step down", || {
        leader.proc.child.try_wait().unwrap()
    });
    assert!(!status.success(), "{status}");
    let log = std::fs::read_to_string(leader.log_path()).unwrap();
    assert!(log.contains("stepped down"), "{log}");
    assert!(
        log.contains("another scheduler took the lease")
            || log.contains("a saga write was refused"),
        "{log}"
    );
    all_complete_with_their_results(&mut standby.client(), &ids);
}

/// What one RunJob attempt came to.
enum Submitted {
    Accepted(String),
    /// CanNotScheduleNow: nothing recorded, send again later.
    Paused,
}

fn submit_one(client: &mut CloudScoot, index: usize) -> Submitted {
    let complete = format!("complete {}", index % 50);
    let def = job(vec![task("t", &["#! sim execer", "sleep 50", &complete])]);
    match client.0.run_job(def) {
        Ok(id) => Submitted::Accepted(id.id),
        Err(thrift::Error::User(e)) if e.downcast_ref::<scoot::CanNotScheduleNow>().is_some() => {
            Submitted::Paused
        }
        Err(err) => panic!("RunJob {index} failed with an error that is not retryable: {err:?}"),
    }
}

#[test]
fn a_database_restart_under_load_pauses_admissions_and_loses_nothing() {
    let (mut db, url) = database();
    let workers: Vec<Worker> = (0..2).map(|_| Worker::start(&[])).collect();
    let refs: Vec<&Worker> = workers.iter().collect();
    let mut sched =
        Scheduler::start_on_postgres(&refs, &url, json!({"MaxJobsPerRequestor": 10000}));
    sched.wait_leading();

    // Jobs go in one after another while the database stops and starts again; the indexes of
    // the accepted ones say which exit code each must report.
    let restarted = AtomicBool::new(false);
    let accepted_before = AtomicUsize::new(0);
    let (accepted, paused) = std::thread::scope(|scope| {
        let submitter = scope.spawn(|| {
            let mut client = sched.client();
            let (mut accepted, mut paused) = (Vec::new(), 0);
            let mut accepted_after_restart = 0;
            let deadline = Instant::now() + Duration::from_secs(120);
            for index in 0..5000 {
                assert!(Instant::now() < deadline, "admissions did not resume");
                match submit_one(&mut client, index) {
                    Submitted::Accepted(id) => {
                        accepted.push((index, id));
                        if restarted.load(Ordering::SeqCst) {
                            accepted_after_restart += 1;
                        } else {
                            accepted_before.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Submitted::Paused => {
                        paused += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                if accepted_after_restart == 20 {
                    return (accepted, paused);
                }
            }
            panic!("5000 submissions without 20 accepted after the restart");
        });
        poll("20 jobs accepted before the restart", || {
            assert!(!submitter.is_finished(), "the submitter ended early");
            (accepted_before.load(Ordering::SeqCst) >= 20).then_some(())
        });
        db.restart().unwrap();
        restarted.store(true, Ordering::SeqCst);
        submitter.join().unwrap()
    });

    assert!(
        paused > 0,
        "no RunJob was refused while the database was down"
    );
    sched.proc.assert_running();
    let mut client = sched.client();
    for (index, id) in &accepted {
        let status = wait_job(&mut client, id);
        let data = task_data(&status, "t");
        assert_eq!(
            (data.status, data.exit_code),
            (scoot::RunStatusState::COMPLETE, Some((index % 50) as i32)),
            "{id}"
        );
    }
}

/// `scootcl --addr A,B ...`: its output when it succeeded, else a failure naming its stderr.
fn scootcl_on(addrs: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_scootcl"))
        .arg("--addr")
        .arg(addrs)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "scootcl --addr {addrs} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[test]
fn scootcl_given_several_schedulers_follows_the_leader_across_a_failover() {
    let (_db, url) = database();
    let worker = Worker::start(&[]);
    let (leader, mut standby) = leader_and_standby(&url, &[&worker]);
    let leader_addr = format!("127.0.0.1:{}", leader.thrift_port);
    let standby_addr = format!("127.0.0.1:{}", standby.thrift_port);
    poll("the standby to know the leader", || {
        let health = http_get(standby.http_port, "/health", &[]);
        health.text().contains(&leader_addr).then_some(())
    });

    // The standby first: it refuses, naming the leader, and the job goes there. Given the
    // standby alone, scootcl follows the leader it names.
    let first = scootcl_on(
        &format!("{standby_addr},{leader_addr}"),
        &["run_job", "true"],
    );
    let status = scootcl_on(&standby_addr, &["get_job_status", &first]);
    assert!(status.contains(&first), "{status}");

    // The leader dies; the next call waits out the takeover, skipping the dead address.
    let Scheduler { mut proc, .. } = leader;
    killpg(proc.pid(), Signal::SIGKILL).unwrap();
    let _ = proc.child.wait();
    let both = format!("{leader_addr},{standby_addr}");
    let second = scootcl_on(&both, &["run_job", "true"]);
    standby.wait_leading();
    for id in [&first, &second] {
        let watched = scootcl_on(&both, &["watch_job", id, "--timeout", "60s"]);
        assert!(watched.contains("COMPLETED"), "{watched}");
    }
}
