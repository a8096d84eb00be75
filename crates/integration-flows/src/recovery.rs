//! Scoot's recoverytest: start a `local.local` cluster, submit 20 generated jobs, kill the
//! cluster with SIGKILL while they run (as a crash would; a graceful stop tests less), start a
//! new cluster in the same directory and require every job to finish successfully (within
//! [`HarnessOptions::timeout`]).

use std::time::{Duration, Instant};

use scoot_cloudscoot_client::cloudscoot::Client;
use scoot_cloudscoot_client::smoketest::{generate_jobs, submit_jobs, wait_for_jobs};
use scoot_local_cluster::{Cluster, Strategy};

use crate::{HarnessError, HarnessOptions, blocking};

const JOBS: usize = 20;

pub async fn run(options: &HarnessOptions) -> Result<(), HarnessError> {
    let spec = options.cluster_spec(Strategy::LocalLocal);
    let cluster = Cluster::start(spec.clone()).await?;
    let addr = cluster.scheduler_addr();
    let timeout = options.timeout;
    let jobs = blocking(move || {
        let mut client = Client::new(&addr);
        let deadline = Instant::now() + timeout;
        // GetStatus of an unknown id answers NOT_STARTED: a cheap readiness ping.
        while let Err(err) = client.get_status("testJobId") {
            if Instant::now() >= deadline {
                return Err(err.into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(submit_jobs(
            &mut client,
            generate_jobs(JOBS, None),
            deadline,
        )?)
    })
    .await?;
    tracing::info!(
        jobs = jobs.len(),
        "jobs submitted; killing the cluster (SIGKILL) while they run"
    );
    // Part of the scenario, not synchronisation: let some tasks be in flight.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, status) in cluster.kill().await {
        tracing::info!("{name} {status}");
    }

    tracing::info!("starting a new cluster on the same saga log");
    let cluster = Cluster::start(spec).await?;
    let addr = cluster.scheduler_addr();
    let waited = blocking(move || {
        let mut client = Client::new(&addr);
        Ok(wait_for_jobs(
            &mut client,
            &jobs,
            Instant::now() + timeout,
            &mut std::io::stderr(),
        )?)
    })
    .await;
    cluster.shutdown().await;
    waited?;
    tracing::info!("recoverytest passed: all {JOBS} jobs finished after the restart");
    Ok(())
}
