//! Scheduling latency of a real cluster (release build): one-task jobs of `true`, submitted one
//! at a time to an idle scheduler with one worker, timed from RunJob to the first RUNNING status
//! and to COMPLETED. Run by `make bench` (`cargo bench --bench scheduling`); under `cargo test`
//! it only proves it still compiles and starts.
//!
//! The goal is ≤ 2.5 ms p50 from RunJob to COMPLETE (issue #13; ../shared/DESIGN.md §6 asked
//! < 10 ms); Scoot's 250 ms loop tick and 250 ms worker polling put it at 250 ms or more. With
//! the saga log in PostgreSQL (a private server on this machine, default settings: every
//! commit waits for its WAL flush) the goal is < 10 ms p50 (issue #14).

// A benchmark reports an unexpected failure by panicking.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod common;
#[path = "../tests/e2e/support.rs"]
#[allow(dead_code, clippy::unwrap_used)]
mod support;

use std::time::{Duration, Instant};

use scoot_thrift::scoot::{self, TCloudScootSyncClient};
use support::*;

const JOBS: usize = 200;
const WARMUP: usize = 10;

struct Latencies {
    running: Vec<Duration>,
    complete: Vec<Duration>,
}

/// Idle connections held open on the scheduler's and the worker's Thrift ports in the loaded
/// variant: what a fleet of forgotten clients costs everyone else.
const IDLE_CONNECTIONS: usize = 1000;

fn measure(saga_log: &str, jobs: usize, idle_connections: usize) -> Latencies {
    let worker = Worker::start(&["-log_level", "warn"]);
    let mut database = None;
    let sched = match saga_log {
        "postgres" => {
            let db =
                scoot_local_cluster::postgres::PrivateCluster::start(Default::default()).unwrap();
            db.create_database("scoot").unwrap();
            let mut sched =
                Scheduler::start_on_postgres(&[&worker], &db.url("scoot"), serde_json::json!({}));
            sched.wait_leading();
            database = Some(db);
            sched
        }
        kind => start_scheduler(&[&worker], kind),
    };
    let _idle: Vec<std::net::TcpStream> = (0..idle_connections)
        .flat_map(|_| {
            [sched.thrift_port, worker.thrift_port]
                .map(|port| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        })
        .collect();
    let mut client = sched.client();
    let mut lat = Latencies {
        running: Vec::new(),
        complete: Vec::new(),
    };
    for n in 0..WARMUP + jobs {
        let started = Instant::now();
        let id = client
            .0
            .run_job(job(vec![task("t", &["true"])]))
            .unwrap()
            .id;
        let mut running = None;
        loop {
            let status = client.0.get_status(id.clone()).unwrap();
            let task_state = status
                .task_data
                .as_ref()
                .and_then(|d| d.get("t"))
                .map(|d| d.status);
            if running.is_none() && task_state.is_some() {
                running = Some(started.elapsed());
            }
            if status.status == scoot::Status::COMPLETED {
                if n >= WARMUP {
                    lat.complete.push(started.elapsed());
                    lat.running
                        .push(running.unwrap_or_else(|| started.elapsed()));
                }
                break;
            }
            assert!(started.elapsed() < DEADLINE, "job {id} did not complete");
        }
    }
    drop(sched);
    drop(database);
    lat
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let jobs = if benchmarking { JOBS } else { 1 };
    let idle = if benchmarking { IDLE_CONNECTIONS } else { 10 };
    let mut rows = Vec::new();
    for (saga_log, idle_connections) in
        [("memory", 0), ("file", 0), ("file", idle), ("postgres", 0)]
    {
        let mut lat = measure(saga_log, jobs, idle_connections);
        let p50 = percentile(&mut lat.complete, 0.5);
        let held = if idle_connections > 0 {
            format!(", {idle_connections} idle connections held on each Thrift port")
        } else {
            String::new()
        };
        let (goal, limit) = match saga_log {
            "postgres" => ("< 10 ms p50", Duration::from_millis(10)),
            _ => ("≤ 2.5 ms p50", Duration::from_micros(2500)),
        };
        let row = format!(
            "| RunJob → COMPLETE, `true`, {saga_log} saga log{held} | {} | {} | {} | {goal} | {} |",
            ms(p50),
            ms(percentile(&mut lat.complete, 0.99)),
            ms(percentile(&mut lat.running, 0.5)),
            if p50 <= limit { "met" } else { "not met" },
        );
        println!("{row}");
        rows.push(row);
    }
    if benchmarking {
        let table = format!(
            "## Scheduling latency\n\n{} one-task jobs of `true`, one at a time, on an idle cluster \
             (1 worker, release build); GetStatus polled in a loop.\n\n\
             | measurement | p50 | p99 | RunJob → first task status, p50 | goal | |\n\
             |---|---|---|---|---|---|\n{}\n",
            JOBS,
            rows.join("\n")
        );
        common::write_benchmark_section("Scheduling latency", &table);
    }
}

/// Starts a scheduler for `workers` with a `memory` or `file` saga log and Scoot's defaults.
fn start_scheduler(workers: &[&Worker], kind: &str) -> Scheduler {
    let dir = tempfile::tempdir().unwrap();
    let workers_file = dir.path().join("workers");
    let saga_dir = dir.path().join("sagas");
    write_workers(&workers_file, workers);
    let config = serde_json::json!({
        "Cluster": {"Type": "static", "File": workers_file},
        "SagaLog": {"Type": kind, "Directory": saga_dir},
    });
    Scheduler::start_with(dir, workers_file, saga_dir, config, &[])
}
