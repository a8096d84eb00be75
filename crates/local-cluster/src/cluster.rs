//! Starting, supervising and tearing down a whole local cluster.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::child::{ChildExit, ChildStatus, Launch, Role, Supervised, port_open};
use crate::error::ClusterError;
use crate::postgres::{self, PrivateCluster};
use crate::procs::Tracker;
use crate::spec::{self, ClusterSpec, PortLayout, Strategy};

pub const APISERVER_BIN: &str = "apiserver";
pub const WORKERSERVER_BIN: &str = "workerserver";
pub const SCHEDULER_BIN: &str = "scheduler";

/// How often the process table is read to follow what the children start.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// After SIGKILL, how long to wait for the children to be reaped before giving up on them.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a `local.ha` cluster's first scheduler may take to lead once its ports are open.
const LEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Replicas of each blob in a `local.ha` cluster unless the spec says otherwise.
const HA_CAS_REPLICAS: usize = 2;

/// A process of the cluster, for callers that want to check on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub name: String,
    pub pid: u32,
    pub log: PathBuf,
}

struct Binaries {
    apiserver: Option<PathBuf>,
    workerserver: PathBuf,
    scheduler: PathBuf,
}

impl Binaries {
    fn locate(bin_dir: &Path) -> Result<Binaries, ClusterError> {
        let required = |name: &'static str| {
            let path = bin_dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(ClusterError::MissingBinary { name, path })
            }
        };
        let apiserver = bin_dir.join(APISERVER_BIN);
        Ok(Binaries {
            apiserver: apiserver.is_file().then_some(apiserver),
            workerserver: required(WORKERSERVER_BIN)?,
            scheduler: required(SCHEDULER_BIN)?,
        })
    }
}

/// A running local cluster: `apiserver`s (when that binary exists), `workerserver`s and a
/// `scheduler`, each in its own process group with its output in `<state dir>/logs/<name>.log`;
/// for `local.ha`, also a private PostgreSQL server in `<state dir>/postgres` and a second
/// scheduler (`scheduler-1`) standing by.
///
/// Call [`Cluster::shutdown`] to stop it. Dropping a cluster that was not shut down SIGKILLs
/// its processes without waiting for them.
pub struct Cluster {
    spec: ClusterSpec,
    layout: PortLayout,
    /// `None` once teardown has removed or kept it.
    state: Option<TempDir>,
    state_path: PathBuf,
    children: Vec<Supervised>,
    apiservers_started: usize,
    exits_tx: mpsc::UnboundedSender<usize>,
    exits_rx: mpsc::UnboundedReceiver<usize>,
    tracker: Arc<Tracker>,
    scanner: Option<JoinHandle<()>>,
    /// The saga log's database of a `local.ha` cluster, stopped after the schedulers.
    database: Option<PrivateCluster>,
    stopped: bool,
}

impl Cluster {
    /// Starts apiservers, then workers, then the scheduler, waiting for each one's ports. On
    /// failure everything started so far is torn down and the error names the process.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster, ClusterError> {
        Cluster::start_or_cancel(spec, std::future::pending()).await
    }

    /// [`Cluster::start`], unless `cancel` completes first: then whatever was started is
    /// stopped as by [`Cluster::shutdown`] and the result is [`ClusterError::Cancelled`].
    /// `cancel` is polled before anything else, so a signal future given here is listening
    /// before the first child exists.
    pub async fn start_or_cancel(
        mut spec: ClusterSpec,
        cancel: impl Future<Output = ()>,
    ) -> Result<Cluster, ClusterError> {
        if spec.strategy == Strategy::LocalHa && spec.cas_replicas.is_none() {
            spec.cas_replicas = Some(HA_CAS_REPLICAS);
        }
        let mut cancel = std::pin::pin!(cancel);
        let (binaries, layout) = tokio::select! {
            biased;
            () = &mut cancel => return Err(ClusterError::Cancelled),
            prepared = prepare(&spec) => prepared?,
        };

        // Passable (0711): root workers run actions as another user, whose input roots are in here.
        let state = tempfile::Builder::new()
            .prefix("scoot-cluster-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o711))
            .tempdir()
            .map_err(ClusterError::StateDir)?;
        let state_path = std::path::absolute(state.path()).map_err(ClusterError::StateDir)?;
        let logs = state_path.join("logs");
        std::fs::create_dir(&logs).map_err(|source| ClusterError::Write {
            path: logs.clone(),
            source,
        })?;
        tracing::info!("logs in {}", logs.display());

        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let tracker = Arc::new(Tracker::default());
        let scanner = tokio::spawn(scan_periodically(tracker.clone()));
        let mut cluster = Cluster {
            spec,
            layout,
            state: Some(state),
            state_path,
            children: Vec::new(),
            apiservers_started: 0,
            exits_tx,
            exits_rx,
            tracker,
            scanner: Some(scanner),
            database: None,
            stopped: false,
        };
        let outcome = tokio::select! {
            biased;
            () = &mut cancel => Err(ClusterError::Cancelled),
            up = cluster.bring_up(&binaries) => up,
        };
        match outcome {
            Ok(()) => {
                tracing::info!(
                    scheduler = %cluster.scheduler_addr(),
                    workers = cluster.layout.workers.len(),
                    apiservers = cluster.apiservers_started,
                    strategy = %cluster.spec.strategy,
                    "cluster up"
                );
                Ok(cluster)
            }
            Err(err) => {
                cluster.teardown(true).await;
                Err(err)
            }
        }
    }

    async fn bring_up(&mut self, binaries: &Binaries) -> Result<(), ClusterError> {
        let level = self.spec.log_level.clone();
        let timeout = self.spec.ready_timeout;

        if let Some(apiserver) = &binaries.apiserver
            && !self.layout.apiservers.is_empty()
        {
            let bundles = self.state_path.join("common-bundles");
            std::fs::create_dir(&bundles).map_err(|source| ClusterError::Write {
                path: bundles.clone(),
                source,
            })?;
            let first = self.children.len();
            for (i, ports) in self.layout.apiservers.clone().iter().enumerate() {
                self.spawn(Launch {
                    name: format!("apiserver-{i}"),
                    role: Role::ApiServer,
                    program: apiserver.clone(),
                    args: [
                        "-http_addr".into(),
                        spec::local_addr(ports.http),
                        "-grpc_addr".into(),
                        spec::local_addr(ports.grpc),
                        "-log_level".into(),
                        level.clone(),
                    ]
                    .into_iter()
                    .chain(self.spec.security.iter().flat_map(|s| {
                        let mut flags = s.tls_flags();
                        flags.extend(s.token_server_flags());
                        flags
                    }))
                    .collect(),
                    env: vec![("BUNDLESTORE_STORE_DIR", bundles.clone().into_os_string())],
                    log: PathBuf::new(),
                })?;
            }
            for (child, ports) in self.children[first..].iter().zip(&self.layout.apiservers) {
                child.wait_ready(&[ports.http, ports.grpc], timeout).await?;
            }
            self.apiservers_started = self.layout.apiservers.len();
        }

        // A sharded CAS: every apiserver is a shard, and the scheduler and workers all route
        // to them with the same list and replica count.
        let shards: Option<Vec<String>> = self.spec.cas_replicas.map(|replicas| {
            let list: Vec<String> = self.layout.apiservers[..self.apiservers_started]
                .iter()
                .map(|a| spec::local_addr(a.grpc))
                .collect();
            vec![
                "-cas_shards".into(),
                list.join(","),
                "-cas_replicas".into(),
                replicas.to_string(),
            ]
        });
        let drain_grace = format!("{}ms", self.spec.worker_drain_grace.as_millis());
        // Each worker is pointed at one of this cluster's apiservers (round robin), so it never
        // finds another cluster's by process discovery.
        let bundlestores: Vec<String> = self.layout.apiservers[..self.apiservers_started]
            .iter()
            .map(|a| spec::local_addr(a.http))
            .collect();
        let first = self.children.len();
        for (i, ports) in self.layout.workers.clone().iter().enumerate() {
            let mut args = vec![
                "-thrift_addr".into(),
                spec::local_addr(ports.thrift),
                "-http_addr".into(),
                spec::local_addr(ports.http),
                "-log_level".into(),
                level.clone(),
                "-drain_grace".into(),
                drain_grace.clone(),
                // Tasks that ignore SIGTERM are killed well within the cluster's stop grace.
                "-kill_grace".into(),
                "1s".into(),
            ];
            if let Some(sandbox) = &self.spec.worker_sandbox {
                args.extend(["-sandbox".into(), sandbox.clone()]);
            }
            if let Some(security) = &self.spec.security {
                args.extend(security.tls_flags());
                args.extend(security.member_flags());
            }
            if !bundlestores.is_empty() {
                args.push("-bundlestore".into());
                args.push(bundlestores[i % bundlestores.len()].clone());
            }
            // REAPI actions: inputs from and outputs to the scheduler's CAS (or the shards),
            // laid out under the cluster's own directory (the scheduler starts later; workers
            // connect when needed).
            match &shards {
                Some(flags) => args.extend(flags.iter().cloned()),
                None => args.extend([
                    "-cas_addr".into(),
                    spec::local_addr(self.layout.scheduler.grpc),
                ]),
            }
            args.extend([
                "-action_dir".into(),
                self.state_path
                    .join(format!("workerserver-{i}-actions"))
                    .display()
                    .to_string(),
            ]);
            self.spawn(Launch {
                name: format!("workerserver-{i}"),
                role: Role::Worker,
                program: binaries.workerserver.clone(),
                args,
                env: Vec::new(),
                log: PathBuf::new(),
            })?;
        }
        for (child, ports) in self.children[first..].iter().zip(&self.layout.workers) {
            child
                .wait_ready(&[ports.thrift, ports.http], timeout)
                .await?;
            // In the background: the start waits for no worker's answer.
            tokio::spawn(announce_platform(
                child.name.clone(),
                ports.http,
                self.spec.security.as_ref().map(|s| s.ca.clone()),
            ));
        }

        let workers_file = self.workers_file();
        std::fs::write(&workers_file, spec::workers_file_contents(&self.layout)).map_err(
            |source| ClusterError::Write {
                path: workers_file.clone(),
                source,
            },
        )?;
        let database = match self.spec.strategy {
            Strategy::LocalHa => Some(self.start_database().await?),
            Strategy::LocalLocal | Strategy::LocalMemory => None,
        };
        let config =
            spec::scheduler_config(self.spec.strategy, &workers_file, database.as_deref())?;
        let cas: Vec<String> = match shards {
            Some(flags) => flags,
            None => {
                let mut flags = vec![
                    "-cas_dir".into(),
                    self.state_path.join("scheduler-cas").display().to_string(),
                ];
                // Blobs put in the first apiserver's CAS (Scoot's bzutil walk-through) can be
                // executed.
                if let Some(first) = self.layout.apiservers[..self.apiservers_started].first() {
                    flags.extend(["-cas_fallback".into(), spec::local_addr(first.grpc)]);
                }
                flags
            }
        };
        let schedulers: Vec<_> = self.layout.schedulers().collect();
        for (i, ports) in schedulers.into_iter().enumerate() {
            let mut args: Vec<String> = vec![
                "-thrift_addr".into(),
                spec::local_addr(ports.thrift),
                "-http_addr".into(),
                spec::local_addr(ports.http),
                "-grpc_addr".into(),
                spec::local_addr(ports.grpc),
                "-log_level".into(),
                level.clone(),
                "-config".into(),
                config.clone(),
            ];
            if database.is_some() {
                // A standby names the leader as `localhost:<port>`, the name TLS certificates
                // of a local cluster are for.
                args.extend(["-advertise_host".into(), "localhost".into()]);
            }
            args.extend(cas.iter().cloned());
            args.extend(self.spec.security.iter().flat_map(|s| {
                let mut flags = s.tls_flags();
                flags.extend(s.token_server_flags());
                flags.extend(s.member_flags());
                flags
            }));
            let scheduler = self.spawn(Launch {
                name: scheduler_name(i),
                role: Role::Scheduler,
                program: binaries.scheduler.clone(),
                args,
                env: Vec::new(),
                log: PathBuf::new(),
            })?;
            self.children[scheduler]
                .wait_ready(&[ports.thrift, ports.http, ports.grpc], timeout)
                .await?;
            // The first scheduler on the database leads before the second starts, so that
            // which one leads is known.
            if i == 0 && database.is_some() {
                self.wait_leading(ports.http).await?;
            }
        }

        // A child that was ready but has died since is a failed start too.
        if let Some(dead) = self.children.iter().find(|c| !c.is_running()) {
            return Err(ClusterError::ExitedDuringStartup(dead.exit_report()));
        }
        Ok(())
    }

    /// Starts the private PostgreSQL server of a `local.ha` cluster in `<state dir>/postgres`
    /// with an empty database `scoot`; returns its URL.
    async fn start_database(&mut self) -> Result<String, ClusterError> {
        let dir = self.state_path.join("postgres");
        let started = tokio::task::spawn_blocking(move || {
            let server = PrivateCluster::start(postgres::Options {
                dir: Some(dir),
                ..postgres::Options::default()
            })?;
            server.create_database("scoot")?;
            Ok(server)
        })
        .await
        .map_err(|e| {
            ClusterError::Database(postgres::PostgresError::Io {
                what: "starting PostgreSQL".into(),
                source: std::io::Error::other(e),
            })
        })?
        .map_err(ClusterError::Database)?;
        let url = started.url("scoot");
        tracing::info!(%url, "saga log database up");
        self.database = Some(started);
        Ok(url)
    }

    /// Waits until the scheduler serving HTTP on `http_port` leads (its `/health` answers 200).
    async fn wait_leading(&self, http_port: u16) -> Result<(), ClusterError> {
        let tls = match &self.spec.security {
            Some(security) => Some(
                scoot_security::ClientTls::new(&security.ca, None)
                    .map_err(|e| ClusterError::Tls(e.to_string()))?,
            ),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/health", spec::local_addr(http_port));
        let client = scoot_security::http_client(tls.as_ref())
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ClusterError::Tls(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + LEAD_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ClusterError::NoLeader {
            waited: LEAD_TIMEOUT,
            log: self.log_path("scheduler"),
        })
    }

    /// Starts a child (its log path is derived from its name); returns its index.
    fn spawn(&mut self, mut launch: Launch) -> Result<usize, ClusterError> {
        launch.log = self.log_path(&launch.name);
        let index = self.children.len();
        let child = Supervised::spawn(launch, index, self.exits_tx.clone(), self.tracker.clone())?;
        self.children.push(child);
        Ok(index)
    }

    /// Resolves when a child of the cluster ends (which it never should while the cluster is
    /// up), with its name, exit status and the end of its log. Cancel-safe. With a sharded CAS
    /// of R replicas, apiservers may die while fewer than R are dead and at least R live (every
    /// blob still has a copy, and writes still find R shards): their deaths are logged.
    pub async fn wait_for_failure(&mut self) -> ChildExit {
        loop {
            match self.exits_rx.recv().await {
                Some(index) => {
                    let Some(child) = self.children.get(index) else {
                        continue;
                    };
                    if child.role == Role::Scheduler
                        && self
                            .children
                            .iter()
                            .any(|c| c.role == Role::Scheduler && c.is_running())
                    {
                        let exit = child.exit_report();
                        tracing::warn!(scheduler = %exit.name, status = %exit.status,
                            "a scheduler ended; another one leads once the lease runs out");
                        continue;
                    }
                    if child.role == Role::ApiServer
                        && let Some(replicas) = self.spec.cas_replicas
                    {
                        let dead = self
                            .children
                            .iter()
                            .filter(|c| c.role == Role::ApiServer && !c.is_running())
                            .count();
                        if dead < replicas && self.apiservers_started - dead >= replicas {
                            let exit = child.exit_report();
                            tracing::warn!(apiserver = %exit.name, status = %exit.status,
                                dead, replicas, "an apiserver ended; its shard's blobs are read from the other replicas");
                            continue;
                        }
                    }
                    return child.exit_report();
                }
                // Cannot happen: the cluster holds a sender.
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Stops the cluster: SIGTERM to every child's process group (scheduler, then workers, then
    /// apiservers), up to the spec's `stop_grace` for them to end, then SIGKILL to whatever is
    /// left, including processes the children started (workers' tasks). Removes the state
    /// directory unless the spec says to keep it.
    pub async fn shutdown(mut self) {
        self.teardown(true).await;
    }

    /// Kills the cluster as a crash would: SIGKILL to every child's process group at once, with
    /// no SIGTERM first, so nothing gets to finish what it was writing (Scoot's recoverytest
    /// kills its cluster this way). Leftovers and the state directory are handled as by
    /// [`Cluster::shutdown`]. Returns how each child ended, by name.
    pub async fn kill(mut self) -> Vec<(String, ChildStatus)> {
        self.teardown(false).await;
        self.children
            .iter()
            .map(|c| {
                let status = c
                    .status()
                    .unwrap_or_else(|| ChildStatus::Unknown("still running".into()));
                (c.name.clone(), status)
            })
            .collect()
    }

    async fn teardown(&mut self, graceful: bool) {
        if self.stopped {
            return;
        }
        // `stopped` is set only at the end: if this future is dropped half-way, `Drop` still
        // kills what is left.
        if let Some(scanner) = self.scanner.take() {
            scanner.abort();
        }
        // Note what runs now (e.g. workers' tasks) before anything starts dying.
        self.scan().await;

        if graceful {
            for role in [Role::Scheduler, Role::Worker, Role::ApiServer] {
                for child in self.children.iter().filter(|c| c.role == role) {
                    child.signal_group(Signal::SIGTERM);
                }
            }
            let deadline = tokio::time::Instant::now() + self.spec.stop_grace;
            for child in &self.children {
                if tokio::time::timeout_at(deadline, child.ended())
                    .await
                    .is_err()
                {
                    tracing::warn!(name = %child.name, pid = child.pid, "did not stop in time after SIGTERM; killing it");
                }
            }
            self.scan().await;
        }
        for child in &self.children {
            child.signal_group(Signal::SIGKILL);
        }
        self.kill_leftovers().await;
        for child in &self.children {
            if tokio::time::timeout(REAP_TIMEOUT, child.ended())
                .await
                .is_err()
            {
                tracing::error!(name = %child.name, pid = child.pid, "still running after SIGKILL");
            }
        }
        // Anything the children started between the last look and their end.
        self.kill_leftovers().await;
        if let Some(mut database) = self.database.take() {
            let _ = tokio::task::spawn_blocking(move || database.stop()).await;
        }
        self.stopped = true;

        if let Some(state) = self.state.take() {
            if self.spec.keep_logs {
                let path = state.keep();
                tracing::info!(
                    "cluster stopped; logs kept in {}",
                    path.join("logs").display()
                );
            } else {
                let path = state.path().to_path_buf();
                if let Err(err) = state.close() {
                    tracing::warn!(%err, "cannot remove {}", path.display());
                }
                tracing::info!("cluster stopped");
            }
        }
    }

    async fn scan(&self) {
        let tracker = self.tracker.clone();
        if let Err(err) = tokio::task::spawn_blocking(move || tracker.scan()).await {
            tracing::warn!(%err, "process table scan failed");
        }
    }

    async fn kill_leftovers(&self) {
        let tracker = self.tracker.clone();
        if let Err(err) = tokio::task::spawn_blocking(move || tracker.kill_all()).await {
            tracing::warn!(%err, "cannot kill leftover processes");
        }
    }

    /// The scheduler's CloudScoot Thrift address, `localhost:<port>`; in a `local.ha` cluster,
    /// both schedulers', separated by a comma (the first leads at the start), which Scoot's
    /// clients here follow to whichever leads.
    pub fn scheduler_addr(&self) -> String {
        self.layout
            .schedulers()
            .map(|s| spec::local_addr(s.thrift))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn scheduler_http_addr(&self) -> String {
        spec::local_addr(self.layout.scheduler.http)
    }

    /// The workers' Thrift addresses, which are their node ids in the scheduler.
    pub fn worker_addrs(&self) -> Vec<String> {
        self.layout
            .workers
            .iter()
            .map(|w| spec::local_addr(w.thrift))
            .collect()
    }

    pub fn worker_http_addrs(&self) -> Vec<String> {
        self.layout
            .workers
            .iter()
            .map(|w| spec::local_addr(w.http))
            .collect()
    }

    /// The HTTP addresses of the apiservers that were started (none without the binary).
    pub fn apiserver_addrs(&self) -> Vec<String> {
        self.layout.apiservers[..self.apiservers_started]
            .iter()
            .map(|a| spec::local_addr(a.http))
            .collect()
    }

    /// The ports in use (apiserver ports only for apiservers that were started).
    pub fn ports(&self) -> &PortLayout {
        &self.layout
    }

    /// The temporary directory with `logs/`, the worker list and the apiservers' bundles.
    pub fn state_dir(&self) -> &Path {
        &self.state_path
    }

    pub fn log_dir(&self) -> PathBuf {
        self.state_path.join("logs")
    }

    /// `<state dir>/logs/<name>.log`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir().join(format!("{name}.log"))
    }

    /// The static worker list given to the scheduler.
    pub fn workers_file(&self) -> PathBuf {
        self.state_path.join("workers")
    }

    /// The cluster's processes in start order.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        self.children
            .iter()
            .map(|c| ProcessInfo {
                name: c.name.clone(),
                pid: c.pid.unsigned_abs(),
                log: c.log.clone(),
            })
            .collect()
    }

    /// What `~/.cloudscootaddr` should hold for this cluster.
    pub fn cloudscootaddr_contents(&self) -> String {
        let api = self.apiserver_addrs().into_iter().next();
        spec::cloudscootaddr_contents(&self.scheduler_addr(), api.as_deref())
    }

    /// Writes `<home>/.cloudscootaddr<scoot_id>` so that Scoot's clients find this cluster;
    /// returns its path. The file is left in place at teardown, as Scoot did.
    pub fn write_cloudscootaddr(
        &self,
        home: &Path,
        scoot_id: &str,
    ) -> Result<PathBuf, ClusterError> {
        let path = spec::cloudscootaddr_path(home, scoot_id);
        std::fs::write(&path, self.cloudscootaddr_contents()).map_err(|source| {
            ClusterError::Write {
                path: path.clone(),
                source,
            }
        })?;
        Ok(path)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        if let Some(scanner) = self.scanner.take() {
            scanner.abort();
        }
        for child in &self.children {
            child.signal_group(Signal::SIGKILL);
        }
        self.tracker.kill_all();
        if self.spec.keep_logs
            && let Some(state) = self.state.take()
        {
            let _ = state.keep();
        }
    }
}

/// Finds the binaries and checks the ports.
async fn prepare(spec: &ClusterSpec) -> Result<(Binaries, PortLayout), ClusterError> {
    let binaries = Binaries::locate(&spec.bin_dir)?;
    let apiservers = if binaries.apiserver.is_some() {
        spec.apiservers
    } else {
        if spec.apiservers > 0 {
            tracing::warn!(
                bin_dir = %spec.bin_dir.display(),
                "apiserver not found next to setup-cloud-scoot: starting no apiservers; snapshot features will not work"
            );
        }
        0
    };
    if let Some(replicas) = spec.cas_replicas
        && replicas > apiservers
    {
        return Err(ClusterError::TooFewShards {
            replicas,
            apiservers,
        });
    }
    let mut layout = PortLayout::new(spec.port_offset, spec.workers, apiservers)?;
    if spec.strategy == Strategy::LocalHa {
        layout = layout.with_standby(spec.port_offset)?;
    }
    ensure_ports_free(&layout).await?;
    Ok((binaries, layout))
}

/// `scheduler`, then `scheduler-1` for a `local.ha` cluster's second.
fn scheduler_name(index: usize) -> String {
    match index {
        0 => "scheduler".into(),
        i => format!("scheduler-{i}"),
    }
}

async fn scan_periodically(tracker: Arc<Tracker>) {
    let mut tick = tokio::time::interval(SCAN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let tracker = tracker.clone();
        // A failed scan (a panic in the blocking pool) is retried at the next tick.
        let _ = tokio::task::spawn_blocking(move || tracker.scan()).await;
    }
}

/// Fails if anything already listens on a port of `layout`: a child could not bind it, and
/// the readiness check would mistake the other listener for the child.
async fn ensure_ports_free(layout: &PortLayout) -> Result<(), ClusterError> {
    let mut wanted: Vec<(u16, String)> = Vec::new();
    for (i, a) in layout.apiservers.iter().enumerate() {
        wanted.push((a.http, format!("apiserver-{i} http")));
        wanted.push((a.grpc, format!("apiserver-{i} grpc")));
    }
    for (i, w) in layout.workers.iter().enumerate() {
        wanted.push((w.thrift, format!("workerserver-{i} thrift")));
        wanted.push((w.http, format!("workerserver-{i} http")));
    }
    for (i, s) in layout.schedulers().enumerate() {
        let name = scheduler_name(i);
        wanted.push((s.thrift, format!("{name} thrift")));
        wanted.push((s.http, format!("{name} http")));
        wanted.push((s.grpc, format!("{name} grpc")));
    }
    for (port, user) in wanted {
        if port_open(port).await {
            return Err(ClusterError::PortInUse { port, user });
        }
    }
    Ok(())
}

/// Logs the platform a worker offers and what its sandbox can do, from its `/health`, so that
/// whoever starts a cluster sees which workers serve which actions.
async fn announce_platform(name: String, http_port: u16, ca: Option<PathBuf>) {
    let tls = match ca
        .as_deref()
        .map(|ca| scoot_security::ClientTls::new(ca, None))
    {
        Some(Ok(tls)) => Some(tls),
        Some(Err(err)) => {
            tracing::warn!(worker = %name, error = %err, "cannot read the worker's platform");
            return;
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}/health", spec::local_addr(http_port));
    let asked = async {
        scoot_security::http_client(tls.as_ref())
            .build()?
            .get(&url)
            .send()
            .await?
            .text()
            .await
    };
    let body = match tokio::time::timeout(Duration::from_secs(10), asked).await {
        Ok(Ok(body)) => body,
        Err(_) => {
            tracing::warn!(worker = %name, "the worker did not say its platform within 10 s");
            return;
        }
        Ok(Err(err)) => {
            tracing::warn!(worker = %name, error = %err, "cannot read the worker's platform");
            return;
        }
    };
    let line = |prefix: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or("unknown")
            .trim()
            .to_string()
    };
    tracing::info!(
        worker = %name,
        platform = %line("platform:"),
        sandbox = %line("sandbox:"),
        "worker serves"
    );
}
