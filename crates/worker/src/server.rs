//! Wires a worker together and runs it until shutdown.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use scoot_action_runner::{ActionConfig, ReapiActions, ShardSpec};
use scoot_core::PlatformProperty;
use scoot_reapi::platform::{Mode, SANDBOX, UNSANDBOXED, host_facts};
use scoot_runner::action::ActionRunner;
use scoot_runner::execer::contain::Containment;
use scoot_runner::execer::identity::{Identity, IdentityError};
use scoot_runner::execer::os::OsExecer;
use scoot_runner::execer::sim::SimExecer;
use scoot_runner::execer::{Dispatch, Execer};
use scoot_runner::invoker::Invoker;
use scoot_runner::output::OutputStore;
use scoot_runner::queue::QueueRunner;
use scoot_runner::status::StatusManager;
use scoot_sandbox::{SandboxConfig, SandboxExecer};
use scoot_security::{ClientSecurity, ServerTls};
use scoot_thrift::server::ServeOptions;
use scoot_thrift::worker::WorkerSyncProcessor;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::handler::WorkerHandler;
use crate::http::{HttpState, router};
use crate::snapshots::{BundlestoreChoice, GitFiler};
use scoot_runner::filer::Filer;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot create the output directory: {0}")]
    OutputDir(std::io::Error),
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("thrift server: {0}")]
    Thrift(std::io::Error),
    #[error("http server: {0}")]
    Http(std::io::Error),
    #[error("{0}")]
    Bundlestore(String),
    #[error("cannot create the action directory: {0}")]
    ActionDir(std::io::Error),
    #[error("cannot set up REAPI actions: {0}")]
    Actions(#[from] scoot_action_runner::ActionError),
    #[error("-action_user: {0}")]
    ActionUser(#[from] IdentityError),
    #[error("-sandbox_tasks asks for a sandbox this machine cannot make: {0}")]
    Sandbox(String),
}

/// Most processes of one sandboxed run by default: far above what builds use, far below
/// what a fork bomb reaches.
pub const DEFAULT_PIDS_MAX: u64 = 4096;

/// Everything about a worker that is not a listener.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Kill a task whose processes' resident memory reaches this many bytes.
    pub memory_cap: Option<u64>,
    /// `-bundlestore`: where snapshot bundles come from (see [`BundlestoreChoice`]).
    pub bundlestore: Option<String>,
    /// The `host:port` put in output URIs; defaults to the HTTP listener's address.
    pub advertised_http_addr: Option<String>,
    /// TLS on the HTTP port (output URIs are then `https://`).
    pub http_tls: Option<ServerTls>,
    /// TLS on the Thrift port (`-thrift_tls`); plaintext, as Scoot's schedulers speak, when
    /// `None`.
    pub thrift_tls: Option<ServerTls>,
    /// TLS and token for what the worker connects to: the CAS, the bundlestore.
    pub client: ClientSecurity,
    /// Where output files go; a fresh temporary directory (removed at exit) by default.
    pub output_dir: Option<PathBuf>,
    /// Outputs of this many most recent runs are kept on disk.
    pub retained_outputs: usize,
    /// ... and only as many of those as fit in this many bytes (the current run's are kept
    /// whatever their size).
    pub retained_output_bytes: u64,
    /// Time between SIGTERM and SIGKILL when a task is stopped.
    pub kill_grace: Duration,
    /// On shutdown, how long the current run may go on before it is aborted.
    pub drain_grace: Duration,
    /// Where REAPI actions fetch their inputs from and upload their outputs to: `-cas_addr`
    /// (the scheduler's gRPC address, a single CAS) or `-cas_shards` (the apiservers of a
    /// sharded CAS); without it, actions are refused.
    pub cas: Option<ShardSpec>,
    /// Where actions' input roots and the local CAS cache go (one filesystem, so inputs are
    /// hard links); a fresh temporary directory (removed at exit) by default.
    pub action_dir: Option<PathBuf>,
    /// Bound of the local CAS cache in bytes.
    pub cas_cache_bytes: u64,
    /// `-action_user`: who actions run as; by default someone unprivileged when the worker is
    /// root (so they cannot write the cache), else the worker itself. See [`Identity`].
    pub action_user: Option<Identity>,
    /// Limits of the Thrift port (connections, time to read a request, idle time).
    pub thrift: ServeOptions,
    /// `-sandbox`: the modes REAPI actions run in, each sandboxed; empty (`-sandbox off`) runs
    /// them on the host, unsandboxed. Modes this machine cannot sandbox are dropped at start.
    pub sandbox_modes: Vec<Mode>,
    /// `-sandbox_tasks`: run CloudScoot tasks in a host-tools sandbox too (Scoot ran them on
    /// the host).
    pub sandbox_tasks: bool,
    /// `-sandbox_pids_max`: most processes a sandboxed run may have.
    pub sandbox_pids_max: Option<u64>,
    /// `-platform`: properties the operator gives this worker besides its own facts.
    pub platform_extra: Vec<PlatformProperty>,
}

impl Default for WorkerConfig {
    fn default() -> WorkerConfig {
        WorkerConfig {
            memory_cap: None,
            bundlestore: None,
            advertised_http_addr: None,
            http_tls: None,
            thrift_tls: None,
            client: ClientSecurity::default(),
            output_dir: None,
            retained_outputs: 1000,
            retained_output_bytes: scoot_runner::output::DEFAULT_RETAINED_BYTES,
            kill_grace: Duration::from_secs(10),
            drain_grace: Duration::from_secs(10),
            cas: None,
            action_dir: None,
            cas_cache_bytes: 4 << 30,
            action_user: None,
            thrift: ServeOptions::default(),
            sandbox_modes: Mode::ALL.to_vec(),
            sandbox_tasks: false,
            sandbox_pids_max: Some(DEFAULT_PIDS_MAX),
            platform_extra: Vec::new(),
        }
    }
}

/// `given` (created if need be), or a fresh temporary directory named with `prefix`, returned
/// too: keep it for as long as the worker runs, it is removed when dropped.
fn dir_or_temp(
    given: Option<&Path>,
    prefix: &str,
) -> std::io::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match given {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Ok((dir.to_path_buf(), None))
        }
        None => {
            let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
            Ok((dir.path().to_path_buf(), Some(dir)))
        }
    }
}

/// The name of the worker's task tracking (a cgroup directory): only letters, digits and `-`.
fn containment_name(thrift_addr: std::net::SocketAddr) -> String {
    let addr: String = thrift_addr
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("scoot-worker-{addr}")
}

/// Scoot's uptime gauges, every 500 ms as Scoot's handler set them: `workerStartGauge` is 1
/// for the first minute after a start (a restart shows as a spike).
async fn publish_uptime() {
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let up = started.elapsed();
        scoot_runner::stats::UPTIME.set(i64::try_from(up.as_millis()).unwrap_or(i64::MAX));
        scoot_runner::stats::START.set(i64::from(up < Duration::from_secs(60)));
    }
}

/// Serves the Worker Thrift API on `thrift` and the HTTP endpoints on `http` until `shutdown`
/// completes, then drains the current run and stops.
pub async fn run(
    thrift: TcpListener,
    http: TcpListener,
    config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    scoot_runner::stats::register();
    scoot_metrics::start_latching();
    let uptime = tokio::spawn(publish_uptime());
    let (output_dir, _owned_output_dir) =
        dir_or_temp(config.output_dir.as_deref(), "scoot-worker-output")
            .map_err(WorkerError::OutputDir)?;
    let http_addr = match &config.advertised_http_addr {
        Some(addr) => addr.clone(),
        None => http
            .local_addr()
            .map_err(WorkerError::Listener)?
            .to_string(),
    };
    let scheme = if config.http_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let outputs = Arc::new(
        OutputStore::new(
            output_dir,
            Some(&format!("{scheme}://{http_addr}")),
            config.retained_outputs,
        )
        .with_retained_bytes(config.retained_output_bytes),
    );
    let filer: Arc<GitFiler> = Arc::new(
        GitFiler::new(
            BundlestoreChoice::from_flag(config.bundlestore.as_deref()),
            config.client.tls.clone(),
        )
        .map_err(WorkerError::Bundlestore)?,
    );
    // Named after the Thrift address, which stays the same when a worker restarts, and differs
    // between the workers of a host; tasks a previous incarnation left are killed here.
    let containment = Arc::new(Containment::new(&containment_name(
        thrift.local_addr().map_err(WorkerError::Listener)?,
    )));
    let os = OsExecer {
        memory_cap: config.memory_cap,
        pids_max: None,
        kill_grace: config.kill_grace,
        containment,
    };
    let (action_dir, _owned_action_dir) =
        dir_or_temp(config.action_dir.as_deref(), "scoot-worker-actions")
            .map_err(WorkerError::ActionDir)?;
    if _owned_action_dir.is_some() {
        // A temporary directory is private to its owner; actions run as someone else must
        // pass through it to their input roots.
        std::fs::set_permissions(&action_dir, std::fs::Permissions::from_mode(0o711))
            .map_err(WorkerError::ActionDir)?;
    }
    let user = Identity::for_actions(config.action_user)?;
    let sandbox = Sandbox::start(&config, &os, &action_dir, outputs.dir(), user).await?;
    let mut platform = host_facts();
    match &sandbox.modes {
        None => platform.push(PlatformProperty::new(SANDBOX, UNSANDBOXED)),
        Some(modes) => platform.extend(
            modes
                .iter()
                .map(|mode| PlatformProperty::new(SANDBOX, mode.name())),
        ),
    }
    platform.extend(config.platform_extra.iter().cloned());
    tracing::info!(
        platform = %platform.iter().map(PlatformProperty::to_string).collect::<Vec<_>>().join(", "),
        "platform properties offered"
    );
    let actions: Option<Arc<dyn ActionRunner>> = match &config.cas {
        Some(cas) => {
            let dir = action_dir.clone();
            let actions = ReapiActions::open(ActionConfig {
                cas: cas.clone(),
                security: config.client.clone(),
                work_dir: dir.join("work"),
                cache_dir: dir.join("cache"),
                cache_max_bytes: config.cas_cache_bytes,
                worker_name: http_addr.clone(),
                user,
                platform: platform.clone(),
            })
            .await?;
            Some(Arc::new(actions))
        }
        None => None,
    };
    let invoker = Invoker {
        execer: Arc::new(Dispatch {
            os,
            sim: SimExecer,
            sandbox_tasks: config.sandbox_tasks && sandbox.execer.is_some(),
            sandbox: sandbox.execer.clone(),
        }),
        filer: Some(filer.clone()),
        actions,
        outputs: outputs.clone(),
        statuses: Arc::new(StatusManager::new(1)),
    };
    // The worker is initialised once its snapshot data repository exists.
    let runner = QueueRunner::new(invoker, async move { filer.ready().await });

    tracing::info!(
        thrift = %thrift.local_addr().map_err(WorkerError::Listener)?,
        http = %http.local_addr().map_err(WorkerError::Listener)?,
        outputs = %outputs.dir().display(),
        "workerserver serving"
    );

    let stop = CancellationToken::new();
    let processor = Arc::new(WorkerSyncProcessor::new(
        WorkerHandler::new(runner.clone(), tokio::runtime::Handle::current())
            .with_platform(platform.clone()),
    ));
    let thrift_server = tokio::spawn(scoot_thrift::server::serve(
        thrift,
        config.thrift_tls.clone(),
        processor,
        config.thrift,
        stop.clone().cancelled_owned(),
    ));
    let app = router(HttpState {
        runner: runner.clone(),
        outputs,
        sandbox: Arc::new(format!(
            "{}\nplatform: {}",
            sandbox.describe(),
            platform
                .iter()
                .map(PlatformProperty::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    });
    let http_server = tokio::spawn(scoot_security::http::serve(
        http,
        config.http_tls.clone(),
        app,
        stop.clone().cancelled_owned(),
    ));

    shutdown.await;
    runner.drain(config.drain_grace).await;
    stop.cancel();
    thrift_server
        .await
        .map_err(|e| WorkerError::Thrift(std::io::Error::other(e)))?
        .map_err(WorkerError::Thrift)?;
    http_server
        .await
        .map_err(|e| WorkerError::Http(std::io::Error::other(e)))?
        .map_err(WorkerError::Http)?;
    uptime.abort();
    tracing::info!("workerserver stopped");
    Ok(())
}

/// The worker's sandbox, as far as this machine allows.
struct Sandbox {
    /// The modes actions are sandboxed in; `None` when they run unsandboxed by choice.
    modes: Option<Vec<Mode>>,
    execer: Option<Arc<dyn Execer>>,
    /// Why the sandbox cannot be used here, when it was asked for.
    unavailable: Option<String>,
}

impl Sandbox {
    /// Sets up the sandbox engine unless the operator turned it off, and probes it: a machine
    /// that cannot make sandboxes (no user namespaces, an old kernel) says so and serves no
    /// sandboxed mode, rather than running actions unconfined.
    async fn start(
        config: &WorkerConfig,
        os: &OsExecer,
        action_dir: &Path,
        output_dir: &Path,
        user: Option<Identity>,
    ) -> Result<Sandbox, WorkerError> {
        if config.sandbox_modes.is_empty() && !config.sandbox_tasks {
            tracing::info!("sandbox off: actions run on the host, unsandboxed");
            return Ok(Sandbox {
                modes: None,
                execer: None,
                unavailable: None,
            });
        }
        let report_dir = action_dir.join("launch-reports");
        let probe_dir = action_dir.join("sandbox-probe");
        for dir in [&report_dir, &probe_dir] {
            std::fs::create_dir_all(dir).map_err(WorkerError::ActionDir)?;
        }
        let launcher = std::env::current_exe().map_err(WorkerError::ActionDir)?;
        let execer = SandboxExecer::new(
            SandboxConfig {
                launcher,
                hidden: vec![action_dir.to_path_buf(), output_dir.to_path_buf()],
                pids_max: config.sandbox_pids_max,
                report_dir,
            },
            os.clone(),
        );
        if let Some(user) = user {
            std::os::unix::fs::chown(&probe_dir, Some(user.uid), Some(user.gid))
                .map_err(WorkerError::ActionDir)?;
        }
        let probed = scoot_sandbox::probe(&execer, &probe_dir, user).await;
        let _ = std::fs::remove_dir_all(&probe_dir);
        match probed {
            Ok(()) => {
                tracing::info!(
                    modes = %config.sandbox_modes.iter().map(|m| m.name()).collect::<Vec<_>>().join(","),
                    tasks = config.sandbox_tasks,
                    "actions run sandboxed"
                );
                Ok(Sandbox {
                    modes: (!config.sandbox_modes.is_empty()).then(|| config.sandbox_modes.clone()),
                    execer: Some(Arc::new(execer)),
                    unavailable: None,
                })
            }
            Err(reason) => {
                tracing::warn!(
                    %reason,
                    "this machine cannot sandbox processes: sandboxed actions (and tasks, with \
                     -sandbox_tasks) are refused; -sandbox off runs actions unsandboxed"
                );
                if config.sandbox_tasks {
                    return Err(WorkerError::Sandbox(reason));
                }
                Ok(Sandbox {
                    modes: Some(Vec::new()),
                    execer: None,
                    unavailable: Some(reason),
                })
            }
        }
    }

    /// The line `/health` shows.
    fn describe(&self) -> String {
        match (&self.modes, &self.unavailable) {
            (_, Some(reason)) => format!("sandbox: unavailable: {reason}"),
            (None, None) => "sandbox: off".to_string(),
            (Some(modes), None) => format!(
                "sandbox: {}; limits: processes by RLIMIT_NPROC in the sandbox and sampling, \
                 memory by sampling RSS (cgroup v2 controllers are not used)",
                modes
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}
