//! Scoot's integration flows, runnable by hand (`recoverytest`, `scoot-integration`) and from the
//! test suite. Both start real local clusters from the binaries next to the running executable.
//!
//! * [`recovery`]: jobs accepted by a cluster that is then torn down are finished by the next
//!   cluster started from the same directory (file saga log, `local.local`).
//! * [`integration`]: drives the `scootcl` command line end to end, including offlining and
//!   reinstating a worker.

pub mod integration;
pub mod recovery;

use clap::Parser;

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("cluster: {0}")]
    Cluster(#[from] scoot_local_cluster::ClusterError),
    #[error("{0}")]
    Smoke(#[from] scoot_cloudscoot_client::smoketest::SmokeError),
    #[error("{0}")]
    Client(#[from] scoot_cloudscoot_client::cloudscoot::ClientError),
    #[error("{0}")]
    Failed(String),
}

/// What both flows need to start clusters.
#[derive(Clone, Debug)]
pub struct HarnessOptions {
    /// Where scheduler, workerserver, scootcl (and apiserver) are.
    pub bin_dir: PathBuf,
    pub log_level: String,
    /// Shifts every port of Scoot's layout, so a run can coexist with another cluster.
    pub port_offset: u16,
    /// Bound on each wait for jobs.
    pub timeout: Duration,
}

impl HarnessOptions {
    /// Options for the binaries next to the running executable.
    pub fn next_to_current_exe(
        log_level: &str,
        port_offset: u16,
    ) -> Result<HarnessOptions, HarnessError> {
        let exe = std::env::current_exe()
            .map_err(|e| HarnessError::Failed(format!("cannot locate this executable: {e}")))?;
        let bin_dir = exe
            .parent()
            .ok_or_else(|| HarnessError::Failed("this executable has no parent directory".into()))?
            .to_path_buf();
        Ok(HarnessOptions {
            bin_dir,
            log_level: log_level.to_string(),
            port_offset,
            timeout: Duration::from_secs(60),
        })
    }

    fn cluster_spec(
        &self,
        strategy: scoot_local_cluster::Strategy,
    ) -> scoot_local_cluster::ClusterSpec {
        scoot_local_cluster::ClusterSpec {
            strategy,
            log_level: self.log_level.clone(),
            port_offset: self.port_offset,
            ..scoot_local_cluster::ClusterSpec::new(&self.bin_dir)
        }
    }
}

/// Runs blocking client code (scootcl subprocesses, the sync CloudScoot client) off the runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, HarnessError> + Send + 'static,
) -> Result<T, HarnessError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| HarnessError::Failed(format!("client thread failed: {e}")))?
}

/// The flags both harness binaries take.
#[derive(Parser, Debug)]
pub struct HarnessArgs {
    /// trace, debug, info, warn or error.
    #[arg(long = "log_level", default_value = "info")]
    pub log_level: String,
    /// text (one line per event) or json (one object per line, with its spans' fields).
    #[arg(long = "log_format", value_enum, default_value_t = scoot_bin_util::LogFormat::Text)]
    pub log_format: scoot_bin_util::LogFormat,
    /// Shift every port of Scoot's local layout (so a run can coexist with another cluster).
    #[arg(long = "port_offset", default_value_t = 0)]
    pub port_offset: u16,
}

/// The whole of a harness binary: parse flags (Go style accepted), set up logging, run `flow`
/// against clusters started from the binaries beside this one.
pub fn main_of<F, Fut>(name: &str, flow: F) -> Result<(), HarnessError>
where
    F: FnOnce(HarnessOptions) -> Fut,
    Fut: std::future::Future<Output = Result<(), HarnessError>>,
{
    let args: HarnessArgs = scoot_bin_util::parse_args();
    scoot_bin_util::init_logging(&args.log_level, args.log_format).map_err(HarnessError::Failed)?;
    let options = HarnessOptions::next_to_current_exe(&args.log_level, args.port_offset)?;
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| HarnessError::Failed(format!("{name}: cannot start a runtime: {e}")))?;
    runtime.block_on(flow(options))
}
