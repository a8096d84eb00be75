//! Workers in memory for the unit tests of the loop, the task runner, the API and the REAPI
//! operations: each Run follows a script, a worker can go down and come back, and tests wait
//! for what the scheduler did to them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use scoot_core::{Command, PlatformProperty, RunId, RunState, RunStatus, ServiceStatus, StateMask};
use scoot_saga::{MemorySagaLog, SagaCoordinator};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::api::SchedulerApi;
use crate::config::SchedulerConfig;
use crate::discovery::Membership;
use crate::event_loop::{JobEvent, Loop};
use crate::worker_client::{Connect, RpcError, WorkerApi};

/// Longest a test waits for the scheduler (virtual time when the test pauses the clock).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// What a worker does with the next Run.
#[derive(Clone, Debug)]
pub enum Script {
    /// The run completes at once with this exit code.
    Complete(i32),
    /// The run stays RUNNING until [`FakeWorker::finish`] or an abort.
    Hang,
}

#[derive(Default)]
pub struct Record {
    /// Every accepted run: its command and current status. Run ids are indexes here.
    pub runs: Vec<(Command, RunStatus)>,
    pub aborted: Vec<RunId>,
    scripts: VecDeque<Script>,
    down: bool,
    platform: Vec<PlatformProperty>,
}

pub struct FakeWorker {
    node: String,
    record: Mutex<Record>,
    /// Bumped on every change, so waiters look again.
    changes: watch::Sender<u64>,
}

impl FakeWorker {
    /// A healthy worker whose runs complete with exit code 0 unless scripted otherwise.
    pub fn new(node: &str) -> Arc<FakeWorker> {
        Arc::new(FakeWorker {
            node: node.to_string(),
            record: Mutex::default(),
            changes: watch::Sender::new(0),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn change<T>(&self, edit: impl FnOnce(&mut Record) -> T) -> T {
        let result = edit(&mut self.record.lock().unwrap_or_else(PoisonError::into_inner));
        self.changes.send_modify(|n| *n += 1);
        result
    }

    pub fn read<T>(&self, look: impl FnOnce(&Record) -> T) -> T {
        look(&self.record.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn script(&self, script: Script) {
        self.change(|r| r.scripts.push_back(script));
    }

    /// Makes QueryWorker report `properties` (none by default, as a Scoot worker reports).
    pub fn set_platform(&self, properties: &[(&str, &str)]) {
        let platform = properties
            .iter()
            .map(|(name, value)| PlatformProperty::new(*name, *value))
            .collect();
        self.change(|r| r.platform = platform);
    }

    /// A worker that is down refuses every call, as a dead or unreachable one would.
    pub fn set_down(&self, down: bool) {
        self.change(|r| r.down = down);
    }

    /// Ends a hanging run: `end` sets its final status.
    pub fn finish(&self, run_id: &RunId, end: impl FnOnce(&mut RunStatus)) {
        self.change(|r| {
            if let Some((_, status)) = r.runs.iter_mut().find(|(_, s)| &s.run_id == run_id) {
                end(status);
            }
        });
    }

    /// Waits until `done` holds of the worker's record; panics after [`PATIENCE`].
    pub async fn until(&self, what: &str, done: impl Fn(&Record) -> bool) {
        let mut changes = self.changes.subscribe();
        let waited = tokio::time::timeout(PATIENCE, async {
            while !self.read(&done) {
                let _ = changes.changed().await;
            }
        })
        .await;
        assert!(waited.is_ok(), "worker {}: never saw {what}", self.node);
    }

    fn refuse<T>(&self) -> Result<T, RpcError> {
        Err(RpcError::Internal {
            node: self.node.clone(),
            message: "connection refused".into(),
        })
    }

    fn status(&self, run_id: &RunId) -> RunStatus {
        self.read(|r| {
            r.runs
                .iter()
                .find(|(_, s)| &s.run_id == run_id)
                .map_or_else(|| RunStatus::unknown(run_id.clone()), |(_, s)| s.clone())
        })
    }
}

impl WorkerApi for FakeWorker {
    fn query(&self) -> BoxFuture<'_, Result<(Vec<RunStatus>, ServiceStatus), RpcError>> {
        Box::pin(async move {
            if self.read(|r| r.down) {
                return self.refuse();
            }
            let (runs, platform) = self.read(|r| {
                let runs = r.runs.iter().map(|(_, s)| s.clone()).collect();
                (runs, r.platform.clone())
            });
            let service = ServiceStatus {
                platform,
                ..ServiceStatus::ready()
            };
            Ok((runs, service))
        })
    }

    fn run<'a>(&'a self, cmd: &'a Command) -> BoxFuture<'a, Result<RunStatus, RpcError>> {
        Box::pin(async move {
            if self.read(|r| r.down) {
                return self.refuse();
            }
            Ok(self.change(|r| {
                let run_id = RunId(r.runs.len().to_string());
                let stdout = format!("fake://{}/{run_id}/stdout", self.node);
                let accepted =
                    RunStatus::running(run_id.clone(), stdout, String::new(), cmd.tags.clone());
                let mut now = accepted.clone();
                match r.scripts.pop_front().unwrap_or(Script::Complete(0)) {
                    Script::Complete(code) => {
                        now.state = RunState::Complete;
                        now.exit_code = code;
                    }
                    Script::Hang => {}
                }
                r.runs.push((cmd.clone(), now));
                accepted
            }))
        })
    }

    fn abort<'a>(&'a self, run_id: &'a RunId) -> BoxFuture<'a, Result<RunStatus, RpcError>> {
        Box::pin(async move {
            if self.read(|r| r.down) {
                return self.refuse();
            }
            self.change(|r| {
                r.aborted.push(run_id.clone());
                if let Some((_, status)) = r.runs.iter_mut().find(|(_, s)| &s.run_id == run_id)
                    && !status.state.is_done()
                {
                    status.state = RunState::Aborted;
                }
            });
            Ok(self.status(run_id))
        })
    }

    fn wait_run<'a>(
        &'a self,
        run_id: &'a RunId,
        states: StateMask,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<RunStatus>, RpcError>> {
        Box::pin(async move {
            let mut changes = self.changes.subscribe();
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                if self.read(|r| r.down) {
                    return self.refuse();
                }
                let status = self.status(run_id);
                if states.matches(status.state) {
                    return Ok(Some(status));
                }
                if tokio::time::timeout_at(deadline, changes.changed())
                    .await
                    .is_err()
                {
                    return Ok(Some(status));
                }
            }
        })
    }
}

/// Polls `done` until it holds; panics after [`PATIENCE`]. For what no fake worker sees.
pub async fn eventually(what: &str, done: impl Fn() -> bool) {
    let polled = tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "never saw {what}");
}

/// Reaches the given workers by their node ids.
pub fn connect(workers: &[Arc<FakeWorker>]) -> Connect {
    let by_node: HashMap<String, Arc<FakeWorker>> = workers
        .iter()
        .map(|w| (w.node.clone(), w.clone()))
        .collect();
    Arc::new(move |node: &str| by_node[node].clone() as Arc<dyn WorkerApi>)
}

/// A scheduling loop over fake workers and an in-memory saga log.
pub struct TestScheduler {
    pub api: SchedulerApi,
    pub sagas: SagaCoordinator,
    pub job_events: mpsc::UnboundedReceiver<JobEvent>,
    /// Lists and unlists workers; kept so the loop does not see membership end.
    membership: mpsc::Sender<Vec<Membership>>,
    _stop: tokio_util::sync::DropGuard,
}

impl TestScheduler {
    /// A loop that lists `workers` and gives each task `max_retries` extra attempts.
    pub async fn start(workers: &[Arc<FakeWorker>], max_retries: u32) -> TestScheduler {
        let mut config = SchedulerConfig::from_flag("local.memory").expect("built-in config");
        config.max_retries_per_task = max_retries;
        let sagas = SagaCoordinator::new(Arc::new(MemorySagaLog::new(None)));
        let (events_tx, job_events) = mpsc::unbounded_channel();
        let scheduling = Loop::new(config)
            .with_workers(connect(workers))
            .with_job_events(events_tx);
        let (requests_tx, requests) = mpsc::channel(16);
        let (membership_tx, membership) = mpsc::channel(16);
        let added = workers
            .iter()
            .map(|w| Membership::Added(w.node.clone()))
            .collect();
        membership_tx.send(added).await.expect("loop not started");
        let stop = CancellationToken::new();
        tokio::spawn(scheduling.run(requests, membership, stop.clone()));
        TestScheduler {
            api: SchedulerApi::new(requests_tx, sagas.clone()),
            sagas,
            job_events,
            membership: membership_tx,
            _stop: stop.drop_guard(),
        }
    }

    /// Tells the loop the worker is no longer listed (as discovery would).
    pub async fn unlist(&self, node: &str) {
        let removed = vec![Membership::Removed(node.to_string())];
        self.membership.send(removed).await.expect("loop stopped");
    }

    /// Waits for the loop to report that the job's saga has ended.
    pub async fn ended(&mut self, job_id: &str) {
        let waited = tokio::time::timeout(PATIENCE, async {
            while let Some(event) = self.job_events.recv().await {
                if event == JobEvent::Ended(job_id.to_string()) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(waited, Ok(true), "job {job_id} never ended");
    }
}
