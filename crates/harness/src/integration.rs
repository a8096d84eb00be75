//! Scoot's scoot-integration flow, driving the `scootcl` binary: run a job and poll its JSON
//! status until it completes, offline a worker and run 10 jobs, reinstate it and run 10 more.
//!
//! Scoot's flow first ingests the repository as a snapshot with scoot-snapshot-db and runs the
//! job on it; snapshots are not supported by this build yet, so the jobs run without one.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use scoot_cluster::{Cluster, Strategy};
use serde_json::Value;

use crate::{HarnessError, HarnessOptions, blocking};

pub async fn run(options: &HarnessOptions) -> Result<(), HarnessError> {
    let cluster = Cluster::start(options.cluster_spec(Strategy::LocalMemory)).await?;
    let scootcl = options.bin_dir.join("scootcl");
    let addr = cluster.scheduler_addr();
    let first_worker = cluster
        .worker_addrs()
        .first()
        .cloned()
        .ok_or_else(|| HarnessError::Failed("the cluster has no workers".into()))?;
    let timeout = options.timeout;
    let flow = blocking(move || {
        let cl = |args: &[&str]| scootcl_output(&scootcl, &addr, args);
        let job = cl(&["run_job", "sleep", "1"])?;
        wait_completed(&cl, job.trim(), Duration::from_secs(10).max(timeout / 6))?;
        tracing::info!(node = %first_worker, "offlining a worker");
        cl(&["offline_worker", &first_worker])?;
        run_and_wait(&cl, 10, timeout)?;
        tracing::info!(node = %first_worker, "reinstating the worker");
        cl(&["reinstate_worker", &first_worker])?;
        run_and_wait(&cl, 10, timeout)
    })
    .await;
    cluster.shutdown().await;
    flow?;
    tracing::info!("scoot-integration passed");
    Ok(())
}

fn scootcl_output(scootcl: &Path, addr: &str, args: &[&str]) -> Result<String, HarnessError> {
    let output = Command::new(scootcl)
        .arg("--addr")
        .arg(addr)
        .args(args)
        .output()
        .map_err(|e| HarnessError::Failed(format!("cannot run {}: {e}", scootcl.display())))?;
    if !output.status.success() {
        return Err(HarnessError::Failed(format!(
            "scootcl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn run_and_wait(
    cl: &impl Fn(&[&str]) -> Result<String, HarnessError>,
    count: usize,
    timeout: Duration,
) -> Result<(), HarnessError> {
    let ids: Vec<String> = (0..count)
        .map(|_| cl(&["run_job", "sleep", "1"]).map(|id| id.trim().to_string()))
        .collect::<Result<_, _>>()?;
    for id in ids {
        wait_completed(cl, &id, timeout)?;
    }
    Ok(())
}

/// Polls `get_job_status --json` every second until COMPLETED with every task exiting 0.
fn wait_completed(
    cl: &impl Fn(&[&str]) -> Result<String, HarnessError>,
    job_id: &str,
    timeout: Duration,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = cl(&["get_job_status", job_id, "--json"])?;
        let status: Value = serde_json::from_str(&text).map_err(|e| {
            HarnessError::Failed(format!("bad get_job_status output {text:?}: {e}"))
        })?;
        if status["status"] == 3 {
            let data = status["taskData"].as_object().cloned().unwrap_or_default();
            if let Some((task, run)) = data
                .iter()
                .find(|(_, r)| r["status"] != 3 || r["exitCode"] != 0)
            {
                return Err(HarnessError::Failed(format!(
                    "job {job_id} task {task} did not succeed: {run}"
                )));
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Failed(format!(
                "job {job_id} did not complete within {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
