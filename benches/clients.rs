//! Many clients at once (issue #13): 50 CloudScoot clients, each on its own connection and
//! requestor, submit 10,000 one-task jobs between them as fast as RunJob returns, to a real
//! scheduler (release build, file saga log) with 5 real workers running simulated tasks. Reports
//! RunJob latency percentiles, the submission rate, every refusal by reason, and that every job
//! completed.
//!
//! Run by `make bench-scale`; under `cargo test` it runs 3 clients of 5 jobs.

// A benchmark reports an unexpected failure by panicking.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
mod common;
#[path = "../tests/e2e/support.rs"]
#[allow(dead_code, clippy::unwrap_used)]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use scoot_thrift::scoot::{self, TCloudScootSyncClient};
use support::*;

struct Submitted {
    latencies: Vec<Duration>,
    ids: Vec<String>,
    refusals: BTreeMap<String, usize>,
}

/// One client: `jobs` RunJobs in a row as `requestor`, each retried after a refusal (as a
/// well-behaved client does) until accepted or a minute has passed.
fn submit(port: u16, requestor: String, jobs: usize) -> Submitted {
    let mut client = CloudScoot::connect(port);
    let mut out = Submitted {
        latencies: Vec::with_capacity(jobs),
        ids: Vec::with_capacity(jobs),
        refusals: BTreeMap::new(),
    };
    for j in 0..jobs {
        let mut def = job(vec![task(
            &format!("{requestor}-{j}"),
            &["#! sim execer", "complete 0"],
        )]);
        def.requestor = Some(requestor.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let started = Instant::now();
            match client.0.run_job(def.clone()) {
                Ok(id) => {
                    out.latencies.push(started.elapsed());
                    out.ids.push(id.id);
                    break;
                }
                Err(err) => {
                    *out.refusals.entry(refusal_reason(&err)).or_default() += 1;
                    assert!(
                        Instant::now() < deadline,
                        "RunJob refused for a minute: {err}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
    out
}

/// A refusal's kind without the parts that differ per call (requestors, counts): Scoot's
/// "Internal error processing RunJob: <reason>: <details>" gives "<reason>".
fn refusal_reason(err: &thrift::Error) -> String {
    let text = match err {
        thrift::Error::Application(e) => e.message.clone(),
        other => other.to_string(),
    };
    let reason = text
        .split_once("RunJob: ")
        .map_or(text.as_str(), |(_, r)| r);
    reason
        .split(':')
        .next()
        .unwrap_or(reason)
        .trim()
        .to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (clients, jobs_per_client) = if benchmarking { (50, 200) } else { (3, 5) };
    let max_requestors = 2 * clients;
    let workers: Vec<Worker> = (0..5)
        .map(|_| Worker::start(&["-log_level", "warn"]))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let workers_file = dir.path().join("workers");
    let saga_dir = dir.path().join("sagas");
    write_workers(&workers_file, &workers.iter().collect::<Vec<_>>());
    let config = serde_json::json!({
        "Cluster": {"Type": "static", "File": workers_file},
        "SagaLog": {"Type": "file", "Directory": saga_dir},
        // Scoot's default of 10 requestors would refuse most of the clients by design.
        "SchedulerConfig": {"MaxRequestors": max_requestors},
    });
    let sched = Scheduler::start_with(dir, workers_file, saga_dir, config, &["-log_level", "warn"]);

    let started = Instant::now();
    let port = sched.thrift_port;
    let submitted: Vec<Submitted> = (0..clients)
        .map(|c| std::thread::spawn(move || submit(port, format!("client{c}"), jobs_per_client)))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let submitting = started.elapsed();

    let mut client = sched.client();
    let mut unfinished: Vec<&String> = submitted.iter().flat_map(|s| &s.ids).collect();
    while !unfinished.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{} jobs did not complete",
            unfinished.len()
        );
        unfinished.retain(|id| {
            client.0.get_status((*id).clone()).unwrap().status != scoot::Status::COMPLETED
        });
        if !unfinished.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let all_done = started.elapsed();

    let mut latencies: Vec<Duration> = submitted.iter().flat_map(|s| s.latencies.clone()).collect();
    latencies.sort();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for s in &submitted {
        for (reason, n) in &s.refusals {
            *refusals.entry(reason.clone()).or_default() += n;
        }
    }
    let jobs = latencies.len();
    let refused = if refusals.is_empty() {
        "none".to_string()
    } else {
        refusals
            .iter()
            .map(|(reason, n)| format!("{n} × {reason}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    // The scheduler's configured limits: Scoot's refusals a client is expected to retry.
    let configured_limits = [
        "exceeds max jobs per requestor",
        "exceeds max number of requestors",
    ];
    let only_limits = refusals
        .keys()
        .all(|reason| configured_limits.contains(&reason.as_str()));
    let row = format!(
        "| {clients} clients, {jobs} one-task jobs | {} | {} | {} | {:.0} jobs/s accepted; all complete after {:.1} s | {refused} | {} |",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap()),
        jobs as f64 / submitting.as_secs_f64(),
        all_done.as_secs_f64(),
        if only_limits { "met" } else { "not met" },
    );
    println!("{row}");
    assert_eq!(jobs, clients * jobs_per_client);
    if benchmarking {
        let table = format!(
            "## Many clients\n\n\
             {clients} CloudScoot clients, each on its own connection and requestor, submit \
             {jobs_per_client} one-task jobs each as fast as RunJob returns (a refused call is \
             retried after 100 ms) to a real scheduler (release build, file saga log, at most {max_requestors} requestors and Scoot's 100 jobs in progress per requestor) with 5 workers running simulated tasks that complete at once. RunJob \
             returns once the job is durable in the saga log. Goal: no refusal other than the \
             configured limits; latency reported. (Before 2026-12-06 a SchedulerConfig section without a Type was replaced by the default one, so this benchmark ran with 10 requestors, not 100.)\n\n\
             | load | RunJob p50 | p99 | max | throughput | refusals | goal |\n\
             |---|---|---|---|---|---|---|\n{row}\n"
        );
        common::write_benchmark_section("Many clients", &table);
    }
}
