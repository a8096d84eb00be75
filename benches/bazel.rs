//! Bazel 2.1 building the sample workspace (tests/bazel/workspace) three ways on one machine in
//! one run, each timed from `bazel build` after a `bazel clean` (the Bazel server is already up
//! and the build has been analysed once, so only execution is compared):
//! * locally (linux-sandbox, Bazel's default `--jobs`);
//! * remotely cold: `--remote_executor` against a fresh `setup-cloud-scoot` cluster (empty CAS,
//!   action cache and worker caches), every action run by a worker;
//! * remotely warm: the same cluster again, every action an action-cache hit.
//!
//! Goals: the (cold within 1.5× of local, warm faster than local) and the stricter ones
//! of ../shared/DESIGN.md §6 (cold within 1.25×, warm at most a third of local). Medians of
//! three runs each. Under `cargo test` it builds one small target once each
//! way, to prove the benchmark still works.

// A benchmark reports an unexpected failure by panicking.
#![allow(clippy::unwrap_used)]

// The test module's own tests are not compiled here, so what only they use looks unused.
#[path = "../tests/e2e/bazel.rs"]
#[allow(dead_code, unused_imports, clippy::unwrap_used)]
mod bazel;
#[allow(dead_code)]
mod common;
#[path = "../tests/e2e/support.rs"]
#[allow(dead_code, clippy::unwrap_used)]
mod support;

use std::time::{Duration, Instant};

use bazel::{Bazel, Sample, assert_all_remote, assert_all_remote_cache_hits, bazel_binary};
use support::LocalCluster;

/// Well clear of the end-to-end tests' offsets (200–900).
const PORT_OFFSET: u16 = 1500;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Cleans, then times one build with `options`; returns the time and Bazel's output.
fn timed_build(bazel: &Bazel, step: &str, options: &[&str], target: &str) -> (Duration, String) {
    bazel.run("clean", &["clean"]);
    let mut args = vec!["build", "--color=no", "--curses=no"];
    args.extend(options);
    args.push(target);
    let started = Instant::now();
    let output = bazel.run(step, &args);
    (started.elapsed(), output)
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (runs, target) = if benchmarking {
        (3, "//...")
    } else {
        (1, "//gen:config_h")
    };
    let sample = Sample::new();
    let bazel = sample.bazel(bazel_binary());

    // Analysis and the Bazel server's start are paid here, outside every measurement.
    bazel.run("warm-up", &["build", "--color=no", "--curses=no", target]);
    let local: Vec<Duration> = (0..runs)
        .map(|_| timed_build(&bazel, "local", &[], target).0)
        .collect();

    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for run in 0..runs {
        let cluster = LocalCluster::start(PORT_OFFSET);
        let remote = format!("--remote_executor=grpc://{}", cluster.grpc_addr());
        let options = [remote.as_str(), "--jobs=8"];
        let (took, output) = timed_build(&bazel, "remote-cold", &options, target);
        assert_all_remote("remote-cold", &output);
        cold.push(took);
        if run == runs - 1 {
            for _ in 0..runs {
                let (took, output) = timed_build(&bazel, "remote-warm", &options, target);
                assert_all_remote_cache_hits("remote-warm", &output);
                warm.push(took);
            }
        }
    }

    let (local, cold, warm) = (median(local), median(cold), median(warm));
    let ratio = cold.as_secs_f64() / local.as_secs_f64();
    let warm_ratio = warm.as_secs_f64() / local.as_secs_f64();
    let met = |ok: bool| if ok { "met" } else { "not met" };
    let rows = [
        format!(
            "| local build (linux-sandbox) | {} | the reference | |",
            seconds(local)
        ),
        format!(
            "| remote, cold (fresh cluster: 5 workers, empty caches) | {} | {ratio:.2}× local | ≤ 1.5× (issue): {}; ≤ 1.25× (DESIGN.md): {} |",
            seconds(cold),
            met(ratio <= 1.5),
            met(ratio <= 1.25)
        ),
        format!(
            "| remote, warm (every action a cache hit) | {} | {warm_ratio:.2}× local | < 1× (issue): {}; ≤ 0.33× (DESIGN.md): {} |",
            seconds(warm),
            met(warm_ratio < 1.0),
            met(warm_ratio <= 1.0 / 3.0)
        ),
    ];
    for row in &rows {
        println!("{row}");
    }
    if benchmarking {
        let table = format!(
            "## Bazel: the sample workspace locally and remotely\n\n\
             Bazel 2.1.0 builds tests/bazel/workspace (`//...`: 19 actions: C++ compiles and links, \
             genrules, a tree artifact, a 10 MiB output) after `bazel clean`; the Bazel server is up \
             and the build analysed before timing. Remote builds use only \
             `--remote_executor=grpc://…` (plus `--jobs=8`) against a `setup-cloud-scoot \
             --strategy local.local` cluster on the same machine, so the workers' compilers, the \
             scheduler and Bazel share its 2 cores (a local build has them to itself). In a Bazel \
             profile of one cold remote build, uploading an action's missing inputs took 80–200 ms \
             and an Execute 135–830 ms, while an Execute of `true` through an idle cluster takes \
             ~10 ms end to end; we attribute the gap to the build's processes and ours contending \
             for the 2 cores (trial runs without fsyncs in the CAS, or without the apiserver \
             fallback, moved the ratio no more than run-to-run noise, 1.29–1.48×). Median of \
             {runs} runs each.\n\n\
             | build | time | compared with | goal |\n|---|---|---|---|\n{}\n",
            rows.join("\n")
        );
        common::write_benchmark_section("Bazel: the sample workspace locally and remotely", &table);
    }
}
