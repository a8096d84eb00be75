//! Scoot's scoot-integration flow, driving the `scootcl` and `scoot-snapshot-db` binaries: ingest
//! a directory as a snapshot, run a job on it and poll its JSON status until it completes, offline
//! a worker and run 10 jobs, reinstate it and run 10 more.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use scoot_local_cluster::{Cluster, Strategy};
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
    let bundlestore = cluster
        .apiserver_addrs()
        .first()
        .map(|a| format!("http://{a}/bundle/"))
        .ok_or_else(|| {
            HarnessError::Failed("the cluster has no apiserver to store snapshots".into())
        })?;
    let snapshot_db = options.bin_dir.join("scoot-snapshot-db");
    let timeout = options.timeout;
    let flow = blocking(move || {
        let cl = |args: &[&str]| scootcl_output(&scootcl, &addr, args);
        let snapshot = ingest_sample_dir(&snapshot_db, &bundlestore)?;
        let job = cl(&[
            "run_job",
            "--snapshot_id",
            &snapshot,
            "sh",
            "-c",
            "grep -q scoot sample.txt && sleep 1",
        ])?;
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

/// Ingests a small directory (`sample.txt`) with scoot-snapshot-db, from a scratch git repo.
fn ingest_sample_dir(snapshot_db: &Path, bundlestore: &str) -> Result<String, HarnessError> {
    let scratch = std::env::temp_dir().join(format!("scoot-integration-{}", std::process::id()));
    let (repo, data) = (scratch.join("repo"), scratch.join("data"));
    let prepare = || -> std::io::Result<()> {
        std::fs::create_dir_all(&repo)?;
        std::fs::create_dir_all(&data)?;
        std::fs::write(data.join("sample.txt"), "ingested by scoot-integration\n")
    };
    prepare()
        .map_err(|e| HarnessError::Failed(format!("cannot prepare {}: {e}", scratch.display())))?;
    let run = |cmd: &mut Command, what: &str| -> Result<String, HarnessError> {
        let output = cmd
            .output()
            .map_err(|e| HarnessError::Failed(format!("cannot run {what}: {e}")))?;
        if !output.status.success() {
            return Err(HarnessError::Failed(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    let result = run(
        Command::new("git").args(["init", "-q"]).current_dir(&repo),
        "git init",
    )
    .and_then(|_| {
        run(
            Command::new(snapshot_db)
                .args([
                    "--bundlestore_url",
                    bundlestore,
                    "create",
                    "ingest_dir",
                    "--dir",
                ])
                .arg(&data)
                .current_dir(&repo),
            "scoot-snapshot-db create ingest_dir",
        )
    });
    let _ = std::fs::remove_dir_all(&scratch);
    result
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
        // Enums by name, as Scoot's scootcl printed them.
        if status["status"] == "COMPLETED" {
            let data = status["taskData"].as_object().cloned().unwrap_or_default();
            if let Some((task, run)) = data
                .iter()
                .find(|(_, r)| r["status"] != "COMPLETE" || r["exitCode"] != 0)
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
