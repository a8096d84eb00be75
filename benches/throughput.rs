//! Scheduler throughput and memory against real binaries (release build):
//! * smoke-test-style jobs of simulated 100 ms tasks over 5 workers: tasks/s and the fraction of
//!   worker time spent busy (goal ≥ 98 %, issue #13; DESIGN.md §6 asked ≥ 95 %);
//! * jobs of real `true` processes over 5 workers, against the machine's raw fork/exec rate of
//!   `true` on both cores measured in the same run (the physical limit; goal ≥ 60 % of it);
//! * scheduler RSS with 1,000,000 queued tasks and no workers (goal ≤ 1 GB).
//!
//! Run by `make bench`; under `cargo test` it runs tiny sizes to prove it still works.

// A benchmark reports an unexpected failure by panicking.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod common;
#[path = "../tests/e2e/support.rs"]
#[allow(dead_code, clippy::unwrap_used)]
mod support;

use std::time::{Duration, Instant};

use scoot_thrift::scoot::{self, TCloudScootSyncClient};
use serde_json::json;
use support::*;

/// Submits `jobs` jobs of `tasks` tasks running `argv` and returns the wall time until all are done.
fn run_jobs(client: &mut CloudScoot, jobs: usize, tasks: usize, argv: &[&str]) -> Duration {
    let started = Instant::now();
    let ids: Vec<String> = (0..jobs)
        .map(|j| {
            let defs = (0..tasks)
                .map(|t| task(&format!("j{j}t{t}"), argv))
                .collect();
            client.0.run_job(job(defs)).unwrap().id
        })
        .collect();
    for id in &ids {
        loop {
            let status = client.0.get_status(id.clone()).unwrap();
            if status.status == scoot::Status::COMPLETED {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "job {id} did not finish"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    started.elapsed()
}

/// The median of three timings of `run`.
fn median_of_runs(mut run: impl FnMut() -> Duration) -> Duration {
    let mut took: Vec<Duration> = (0..3).map(|_| run()).collect();
    took.sort();
    took[1]
}

fn rss_mb(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap();
    kb / 1024.0
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (jobs, tasks) = if benchmarking { (10, 50) } else { (1, 5) };
    let queued_jobs = if benchmarking { 1000 } else { 2 };
    let queued_tasks_per_job = if benchmarking { 1000 } else { 10 };
    let mut rows = Vec::new();

    let workers: Vec<Worker> = (0..5)
        .map(|_| Worker::start(&["-log_level", "warn"]))
        .collect();
    let sched = Scheduler::start(&workers.iter().collect::<Vec<_>>(), json!({}));
    let mut client = sched.client();
    // Warm up: every worker ready and used once.
    run_jobs(&mut client, 1, 5, &["true"]);

    let n = jobs * tasks;
    let took = median_of_runs(|| {
        run_jobs(
            &mut client,
            jobs,
            tasks,
            &["#! sim execer", "sleep 100", "complete 0"],
        )
    });
    let busy = (n as f64 * 0.1) / (5.0 * took.as_secs_f64()) * 100.0;
    rows.push(format!(
        "| {n} simulated 100 ms tasks, 5 workers | {:.1} tasks/s, workers {busy:.1} % busy | ideal 50 tasks/s; goal ≥ 98 % busy | {} |",
        n as f64 / took.as_secs_f64(),
        if busy >= 98.0 { "met" } else { "not met" }
    ));

    let took = median_of_runs(|| run_jobs(&mut client, jobs, tasks, &["true"]));
    let spawn_count = if benchmarking { 500 } else { 10 };
    // The machine's limit: `true` forked and executed on every core at once.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let spawning = median_of_runs(|| {
        let started = Instant::now();
        let spawners: Vec<_> = (0..cores)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..spawn_count {
                        std::process::Command::new("true").status().unwrap();
                    }
                })
            })
            .collect();
        for spawner in spawners {
            spawner.join().unwrap();
        }
        started.elapsed()
    });
    let fork_exec = (cores * spawn_count) as f64 / spawning.as_secs_f64();
    let rate = n as f64 / took.as_secs_f64();
    rows.push(format!(
        "| {n} tasks of `true`, 5 workers | {rate:.0} tasks/s ({:.0} % of the limit) | fork/exec of `true` on this machine's {cores} cores at once: {fork_exec:.0}/s; goal ≥ 60 % of it | {} |",
        rate / fork_exec * 100.0,
        if rate >= 0.6 * fork_exec { "met" } else { "not met" }
    ));
    drop(client);
    drop(sched);
    drop(workers);

    // Queue without workers: every task stays waiting in the scheduler.
    // Scoot's 100 jobs in progress per requestor would refuse the queue this fills.
    let idle = Scheduler::start(&[], json!({"MaxJobsPerRequestor": queued_jobs}));
    let mut client = idle.client();
    let before = rss_mb(idle.proc.pid().as_raw());
    for j in 0..queued_jobs {
        let defs = (0..queued_tasks_per_job)
            .map(|t| {
                task(
                    &format!("queued-{j}-{t}"),
                    &["sh", "-c", "echo a typical command line"],
                )
            })
            .collect();
        client.0.run_job(job(defs)).unwrap();
    }
    let queued = queued_jobs * queued_tasks_per_job;
    let status = client.0.get_scheduler_status().unwrap();
    assert_eq!(status.current_tasks as usize, queued);
    let after = rss_mb(idle.proc.pid().as_raw());
    rows.push(format!(
        "| scheduler RSS, {queued} queued tasks ({queued_jobs} jobs) | {after:.0} MB (idle: {before:.0} MB) | goal ≤ 1 GB | {} |",
        if after <= 1000.0 { "met" } else { "not met" }
    ));

    for row in &rows {
        println!("{row}");
    }
    if benchmarking {
        let table = format!(
            "## Throughput and scheduler memory\n\nReal scheduler and workers (release build), file saga log; rates are medians of three runs.\n\n\
             What the heap profile showed (heaptrack, 100,000 queued tasks, 2026-12-06): 1.28 KB of heap per queued task, 1,433 MB of RSS at 1,000,000. \
             Each waiting task carried the state of an attempt it had not made (a 160-byte run record, a cancellation token and a shared stop reason: a quarter of the heap), \
             its platform requirements parsed anew (96 bytes, the same for every task of a job), and the job's serialized saga payload was held twice, in the saga's durable and pending states (a fifth). \
             The attempt's state is now made when the task starts, a job's tasks share one parsed platform, and the saga states share one payload: 0.71 KB per task in the same profile. \
             What remains is the job definition itself (argv, task ids, log tags) and the task index.\n\n\
             | measurement | result | compared with | goal |\n|---|---|---|---|\n{}\n",
            rows.join("\n")
        );
        common::write_benchmark_section("Throughput and scheduler memory", &table);
    }
}
