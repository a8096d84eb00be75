//! The scheduling loop.
//!
//! One task owns all scheduling state ([`crate::state`]) and reacts to events: requests from the
//! API, worker membership changes, readiness results and finished task attempts. After each batch
//! of events it runs a scheduling step, so a task starts as soon as it and a worker are both
//! available; a one-second tick only does housekeeping (forgetting lost workers, retrying EndSaga,
//! rebalancing timers, ending tasks no worker can run). Slow work (saga writes, worker RPCs) runs
//! in spawned tasks that report back.
//!
//! Platforms: a task only starts on a worker that offers what its platform asks for
//! ([`pick_node`]). A waiting task that no worker can run ([`placement`]) is ended without a run,
//! FAILED with a REAPI FAILED_PRECONDITION response naming the property none offers: at once
//! when workers are ready and none of them, nor any being checked or offlined, can run it;
//! after `unmatched_platform_timeout` when no ready worker can but one might later (or no worker
//! is ready at all), so that no task waits forever.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prost::Message;
use scoot_core::{LogTags, PlatformProperty, RunId, RunState, RunStatus};
use scoot_reapi::platform::Requirements;
use scoot_reapi::status::{rpc_status, status_response};
use scoot_saga::{Saga, SagaMessage};
use scoot_sched_alg::{ClassConfig, JobView, LoadBasedAlg, RunningTask};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::SchedulerConfig;
use crate::discovery::Membership;
use crate::job::{InvalidJob, Job, REAPI_JOB_TYPE};
use crate::overview::{self, FinishedJobs, JobDetail, JobQuery, Overview};
use crate::state::{
    Durations, JobState, Node, NodeHealth, Placement, TaskStatus, offered, pick_node, placement,
};
use crate::stats;
use crate::task_runner::{
    self, AttemptFinished, AttemptResult, DEAD_LETTER_SUFFIX, StopSignal, TaskAttempt,
};
use crate::wire;
use crate::worker_client::{Connect, thrift_workers};

const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(1);
/// Tags remembered per (requestor, basis) for expired-tag checks.
const TAG_HISTORY: usize = 100;

type Reply<T> = oneshot::Sender<T>;

/// Requests from the API to the loop.
pub enum Request {
    /// Admission checks that need the loop's state; on success the job's requestor slot is held.
    Admit(Job, Reply<Result<(), InvalidJob>>),
    /// The job's StartSaga is durable: schedule it.
    Add(Job, Saga),
    /// Admission succeeded but the saga could not be started.
    Release(Job),
    Kill(String, Reply<Result<(), String>>),
    IsActive(String, Reply<bool>),
    Offline(String, Reply<Result<(), String>>),
    Reinstate(String, Reply<Result<(), String>>),
    /// (current tasks, throttle)
    Status(Reply<(i32, i32)>),
    SetThrottle(i32, Reply<Result<(), String>>),
    AlgConfig(Reply<ClassConfig>),
    SetLoadPercents(BTreeMap<String, i32>, Reply<Result<(), String>>),
    SetRequestorMap(BTreeMap<String, String>, Reply<Result<(), String>>),
    SetRebalanceMinimum(Duration),
    SetRebalanceThreshold(i32),
    /// Whether the cluster's workers can run a task asking for these requirements.
    Placement(Box<Requirements>, Reply<Placement>),
    /// Jobs (active and recently finished) and workers, for the web pages.
    Overview(Reply<Overview>),
    /// One job (active or recently finished) with the tasks asked for; `None` if unknown.
    Job(JobQuery, Reply<Option<JobDetail>>),
}

/// What the loop tells the REAPI operation tracker about jobs, so Execute streams move on as soon
/// as a task starts or ends instead of polling the saga log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobEvent {
    /// A task of the job was handed to a worker.
    TaskStarted(String),
    /// A task of the job ended with this status, already durable in the saga log.
    TaskEnded {
        job_id: String,
        status: Box<RunStatus>,
    },
    /// The job's saga has ended: its final statuses are in the log (the only word on tasks
    /// that ended without an attempt, such as waiting tasks of a killed job).
    Ended(String),
}

/// Results of work the loop spawned.
enum Event {
    /// The worker passed its readiness check, offering this platform.
    NodeReady(String, Vec<PlatformProperty>),
    /// The worker's readiness check has not passed, for this reason (sent when it changes).
    NodeNotReady(String, String),
    /// The worker is initialised but reports itself unhealthy, for this reason: its own health
    /// rules (memory, repeated checkout failures) hold for the rest of its life.
    NodeUnhealthy(String, String),
    /// A task's run is RUNNING on its worker, with these output URIs.
    TaskRunning {
        job_id: String,
        task_id: String,
        node: String,
        status: Box<RunStatus>,
    },
    /// The worker is done with the task's run; the attempt is still being recorded.
    WorkerFree {
        node: String,
        job_id: String,
        task_id: String,
    },
    Attempt(Box<AttemptFinished>),
    /// The loop ended a task no worker can run (see [`Loop::end_unrunnable`]).
    Unrunnable {
        job_id: String,
        task_id: String,
        result: AttemptResult,
    },
    SagaEnded(String, Result<(), String>),
}

pub struct Loop {
    config: SchedulerConfig,
    alg: LoadBasedAlg,
    throttle: i32,
    jobs: HashMap<String, JobState>,
    /// Job ids in arrival order (the algorithm favours older jobs on ties).
    order: Vec<String>,
    /// Admitted jobs whose saga is being started, per requestor.
    reserved: HashMap<String, usize>,
    tags: HashMap<(String, String), VecDeque<String>>,
    nodes: BTreeMap<String, Node>,
    connect: Connect,
    durations: Durations,
    epoch: Instant,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    job_events: Option<mpsc::UnboundedSender<JobEvent>>,
    /// Requestors whose per-requestor gauges were set last time, so that those with nothing
    /// left go back to zero instead of keeping their last value.
    gauged_requestors: BTreeSet<String>,
    /// Recently finished jobs, for the web pages only.
    finished: FinishedJobs,
}

impl Loop {
    pub fn new(config: SchedulerConfig) -> Loop {
        let (events_tx, events) = mpsc::unbounded_channel();
        Loop {
            config,
            alg: LoadBasedAlg::default(),
            throttle: -1,
            jobs: HashMap::new(),
            order: Vec::new(),
            reserved: HashMap::new(),
            tags: HashMap::new(),
            nodes: BTreeMap::new(),
            connect: thrift_workers(None),
            durations: Durations::new(1_000_000),
            epoch: Instant::now(),
            events_tx,
            events,
            job_events: None,
            gauged_requestors: BTreeSet::new(),
            finished: FinishedJobs::default(),
        }
    }

    /// Reaches workers through `connect` instead of the plaintext Worker Thrift API (scripted
    /// workers in tests, or the Thrift API over TLS).
    pub fn with_workers(mut self, connect: Connect) -> Loop {
        self.connect = connect;
        self
    }

    /// Reports task starts and job ends to `events`.
    pub fn with_job_events(mut self, events: mpsc::UnboundedSender<JobEvent>) -> Loop {
        self.job_events = Some(events);
        self
    }

    fn notify(&self, event: JobEvent) {
        if let Some(events) = &self.job_events {
            let _ = events.send(event);
        }
    }

    /// Runs until `shutdown` is cancelled or every request sender is gone.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut membership: mpsc::Receiver<Vec<Membership>>,
        shutdown: CancellationToken,
    ) {
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING_PERIOD);
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(request) => self.handle_request(request).await,
                    None => break,
                },
                Some(changes) = membership.recv() => self.handle_membership(changes),
                Some(event) = self.events.recv() => self.handle_event(event),
                _ = housekeeping.tick() => self.housekeeping(),
                _ = shutdown.cancelled() => break,
            }
            // Take everything else that is already waiting before scheduling once.
            while let Ok(request) = requests.try_recv() {
                self.handle_request(request).await;
            }
            while let Ok(event) = self.events.try_recv() {
                self.handle_event(event);
            }
            self.schedule();
        }
        for node in self.nodes.values() {
            if let Some(check) = &node.check {
                check.cancel();
            }
        }
    }

    async fn handle_request(&mut self, request: Request) {
        match request {
            Request::Admit(job, reply) => {
                let verdict = self.admit(&job);
                if verdict.is_ok() {
                    *self.reserved.entry(job.def.requestor.clone()).or_default() += 1;
                }
                let _ = reply.send(verdict);
            }
            Request::Add(job, saga) => {
                self.unreserve(&job.def.requestor);
                self.add_job(job, saga).await;
            }
            Request::Release(job) => self.unreserve(&job.def.requestor),
            Request::Kill(job_id, reply) => {
                let _ = reply.send(self.kill(&job_id, "UserRequested").await);
            }
            Request::IsActive(job_id, reply) => {
                let _ = reply.send(self.jobs.contains_key(&job_id));
            }
            Request::Offline(node, reply) => {
                let _ = reply.send(self.offline(&node));
            }
            Request::Reinstate(node, reply) => {
                let _ = reply.send(self.reinstate(&node));
            }
            Request::Status(reply) => {
                let current: usize = self.jobs.values().map(|j| j.tasks.len() - j.done).sum();
                let _ = reply.send((i32::try_from(current).unwrap_or(i32::MAX), self.throttle));
            }
            Request::SetThrottle(limit, reply) => {
                let result = if limit < -1 {
                    Err(format!("invalid tasks limit {limit}. Must be >= -1."))
                } else {
                    self.throttle = limit;
                    Ok(())
                };
                let _ = reply.send(result);
            }
            Request::AlgConfig(reply) => {
                let _ = reply.send(self.alg.config().clone());
            }
            Request::SetLoadPercents(percents, reply) => {
                let _ = reply.send(
                    self.alg
                        .set_load_percents(percents)
                        .map_err(|e| e.to_string()),
                );
            }
            Request::SetRequestorMap(map, reply) => {
                let _ = reply.send(self.alg.set_requestor_map(map).map_err(|e| e.to_string()));
            }
            Request::SetRebalanceMinimum(duration) => self.alg.set_rebalance_min_duration(duration),
            Request::SetRebalanceThreshold(threshold) => {
                self.alg.set_rebalance_threshold(threshold)
            }
            Request::Placement(requirements, reply) => {
                let _ = reply.send(placement(&requirements, &self.nodes));
            }
            Request::Overview(reply) => {
                let _ = reply.send(self.overview());
            }
            Request::Job(query, reply) => {
                let _ = reply.send(self.job_detail(&query));
            }
        }
    }

    /// Summaries of every active and remembered job, and every worker: counts and ids, no
    /// task lists, so that answering costs the loop little however often pages refresh.
    fn overview(&self) -> Overview {
        let now = Instant::now();
        let active = self
            .order
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .map(|job| Arc::new(job.summary(None)));
        Overview {
            jobs: active.chain(self.finished.summaries().cloned()).collect(),
            workers: self
                .nodes
                .iter()
                .map(|(id, node)| node.view(id, now))
                .collect(),
            taken: SystemTime::now(),
        }
    }

    fn job_detail(&self, query: &JobQuery) -> Option<JobDetail> {
        if let Some(job) = self.jobs.get(&query.job_id) {
            return Some(JobDetail {
                summary: Arc::new(job.summary(None)),
                tasks: job.task_views(query.tasks.clone()),
                taken: SystemTime::now(),
            });
        }
        let job = self.finished.get(&query.job_id)?;
        Some(JobDetail {
            summary: job.summary.clone(),
            tasks: job.tasks[overview::clamp(&query.tasks, job.tasks.len())].to_vec(),
            taken: SystemTime::now(),
        })
    }

    fn unreserve(&mut self, requestor: &str) {
        if let Some(count) = self.reserved.get_mut(requestor) {
            *count -= 1;
            if *count == 0 {
                self.reserved.remove(requestor);
            }
        }
    }

    fn jobs_of(&self, requestor: &str) -> usize {
        let in_memory = self
            .jobs
            .values()
            .filter(|j| j.job.def.requestor == requestor)
            .count();
        in_memory + self.reserved.get(requestor).copied().unwrap_or(0)
    }

    fn admit(&mut self, job: &Job) -> Result<(), InvalidJob> {
        let requestor = &job.def.requestor;
        let known = self.jobs_of(requestor) > 0;
        if !known {
            let mut requestors: Vec<&str> = self
                .jobs
                .values()
                .map(|j| j.job.def.requestor.as_str())
                .collect();
            requestors.extend(self.reserved.keys().map(String::as_str));
            requestors.sort_unstable();
            requestors.dedup();
            if requestors.len() >= self.config.max_requestors {
                return Err(InvalidJob(format!(
                    "exceeds max number of requestors: {} (requestor {requestor:?} is new)",
                    self.config.max_requestors
                )));
            }
        }
        if job.def.job_type != REAPI_JOB_TYPE
            && self.jobs_of(requestor) >= self.config.max_jobs_per_requestor
        {
            return Err(InvalidJob(format!(
                "exceeds max jobs per requestor: {requestor:?} already has {} jobs in progress",
                self.config.max_jobs_per_requestor
            )));
        }
        if !job.def.basis.is_empty() {
            let history = self
                .tags
                .entry((requestor.clone(), job.def.basis.clone()))
                .or_default();
            let tag = &job.def.tag;
            if history.contains(tag) && history.back() != Some(tag) {
                return Err(InvalidJob(format!(
                    "expired tag {tag:?} for basis {:?}: a newer tag exists",
                    job.def.basis
                )));
            }
            if history.back() != Some(tag) {
                history.push_back(tag.clone());
                if history.len() > TAG_HISTORY {
                    history.pop_front();
                }
            }
        }
        Ok(())
    }

    async fn add_job(&mut self, mut job: Job, saga: Saga) {
        let job_id = job.id.clone();
        // Scoot's tag grouping: a job joining a tag its requestor already has in flight (under
        // another basis) takes that job's priority, so a tag's jobs share one priority.
        let inherited = self
            .order
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| {
                j.job.def.requestor == job.def.requestor
                    && j.job.def.tag == job.def.tag
                    && j.job.def.basis != job.def.basis
            })
            .map(|j| j.job.def.priority)
            .next();
        if let Some(priority) = inherited.filter(|p| *p != job.def.priority) {
            tracing::info!(job_id = %job_id, tag = %job.def.tag, asked = job.def.priority, priority,
                "job takes the priority of its tag's earlier job");
            job.def.priority = priority;
        }
        // The only line that names the job's tag, basis, requestor and type: task lines carry
        // the job id, so these (up to a KiB each) are not repeated for every task.
        tracing::info!(job_id = %job_id, tag = %job.def.tag, basis = %job.def.basis,
            requestor = %job.def.requestor, job_type = %job.def.job_type,
            priority = job.def.priority, tasks = job.def.tasks.len(), "job added");
        if !job.def.basis.is_empty() {
            // A newer job for the same basis replaces older jobs with other tags.
            let replaced: Vec<String> = self
                .jobs
                .values()
                .filter(|j| {
                    j.job.def.requestor == job.def.requestor
                        && j.job.def.basis == job.def.basis
                        && j.job.def.tag != job.def.tag
                        && !j.killed
                })
                .map(|j| j.job.id.clone())
                .collect();
            for old in replaced {
                tracing::info!(job_id = %old, replaced_by = %job_id, "killing job replaced by a newer basis");
                let _ = self.kill(&old, "UserRequested").await;
            }
        }
        let state = JobState::new(job, saga, &self.durations);
        self.order.push(job_id.clone());
        self.jobs.insert(job_id.clone(), state);
        self.end_if_finished(&job_id);
    }

    /// Adds a job recovered from the saga log; tasks with EndTask are already done.
    pub async fn add_recovered(&mut self, job: Job, saga: Saga, done: Vec<String>) {
        let job_id = job.id.clone();
        self.add_job(job, saga).await;
        if let Some(state) = self.jobs.get_mut(&job_id) {
            for task in done {
                state.mark_done(&task);
            }
        }
        self.end_if_finished(&job_id);
    }

    async fn kill(&mut self, job_id: &str, reason: &str) -> Result<(), String> {
        let Some(state) = self.jobs.get_mut(job_id) else {
            return Err(format!(
                "cannot kill Job Id {job_id}, not found. (This error can be ignored if the job has already completed.)"
            ));
        };
        if state.killed {
            return Err(format!(
                "job Id {job_id} was already killed, request ignored"
            ));
        }
        state.killed = true;
        tracing::info!(job_id, reason, "killing job");
        let tags = |task_id: &str| LogTags {
            job_id: job_id.to_string(),
            task_id: task_id.to_string(),
            tag: state.job.def.tag.clone(),
        };
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        for task in &state.tasks {
            let task_id = &state.job.def.tasks[task.index].task_id;
            match task.status {
                TaskStatus::Waiting => {
                    let mut aborted = RunStatus::aborted(RunId::default(), tags(task_id));
                    aborted.error = reason.to_string();
                    let data = wire::run_status_to_saga(&aborted);
                    batch.push(SagaMessage::start_task(job_id, task_id, Vec::new()));
                    batch.push(SagaMessage::end_task(job_id, task_id, data));
                    waiting.push((task_id.clone(), aborted));
                }
                TaskStatus::Running { .. } => {
                    if let Some(stop) = &task.stop {
                        stop.stop(reason);
                    }
                }
                // Already being ended, with its own reason.
                TaskStatus::Ending | TaskStatus::Done => {}
            }
        }
        if !batch.is_empty() {
            state
                .saga
                .log(batch)
                .await
                .map_err(|e| format!("cannot record the kill: {e}"))?;
            let now = SystemTime::now();
            for (task_id, aborted) in waiting {
                if let Some(task) = state.task_mut(&task_id) {
                    task.run_mut().end(&aborted, now);
                }
                state.mark_done(&task_id);
            }
        }
        self.end_if_finished(job_id);
        Ok(())
    }

    fn end_if_finished(&mut self, job_id: &str) {
        let Some(state) = self.jobs.get_mut(job_id) else {
            return;
        };
        if !state.is_finished() || state.ending {
            return;
        }
        state.ending = true;
        let saga = state.saga.clone();
        let events = self.events_tx.clone();
        let job_id = job_id.to_string();
        tokio::spawn(async move {
            let result = saga.end_saga().await.map_err(|e| e.to_string());
            let _ = events.send(Event::SagaEnded(job_id, result));
        });
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::NodeReady(id, reported) => {
                if let Some(node) = self.nodes.get_mut(&id)
                    && node.health == NodeHealth::Checking
                {
                    let platform = offered(reported);
                    let listed: Vec<String> = platform.iter().map(|p| p.to_string()).collect();
                    tracing::info!(node = %id, platform = %listed.join(","), "worker ready");
                    node.platform = Some(platform);
                    node.health = NodeHealth::Ready;
                    node.check = None;
                    node.problem = None;
                }
            }
            Event::NodeNotReady(id, reason) => {
                if let Some(node) = self.nodes.get_mut(&id)
                    && node.health == NodeHealth::Checking
                {
                    node.problem = Some(overview::bounded(&reason));
                }
            }
            Event::NodeUnhealthy(id, reason) => {
                if let Some(node) = self.nodes.get_mut(&id)
                    && node.health == NodeHealth::Checking
                {
                    // Scoot's rule: an unhealthy worker is suspended and dropped after the lost
                    // timeout rather than polled for ever; it comes back only when listed anew.
                    tracing::warn!(node = %id, %reason, timeout = ?self.config.lost_worker_timeout,
                        "worker unhealthy: marked flaky, to be forgotten after the lost-worker timeout");
                    node.health = NodeHealth::Lost(Instant::now());
                    node.check = None;
                    node.problem = Some(overview::bounded(&reason));
                }
            }
            Event::TaskRunning {
                job_id,
                task_id,
                node,
                status,
            } => {
                // Only for the attempt still running there: a late report of an earlier
                // attempt must not put its output links on the current one.
                if let Some(task) = self
                    .jobs
                    .get_mut(&job_id)
                    .and_then(|j| j.task_mut(&task_id))
                    && matches!(&task.status, TaskStatus::Running { node: n, .. } if *n == node)
                {
                    task.run_mut().running(&status);
                }
            }
            Event::WorkerFree {
                node,
                job_id,
                task_id,
            } => {
                if let Some(n) = self.nodes.get_mut(&node)
                    && n.busy == Some((job_id, task_id))
                {
                    n.busy = None;
                }
            }
            Event::Attempt(finished) => self.attempt_finished(*finished),
            Event::Unrunnable {
                job_id,
                task_id,
                result,
            } => self.task_finished(job_id, task_id, result, Duration::ZERO),
            Event::SagaEnded(job_id, Ok(())) => {
                tracing::info!(job_id = %job_id, "job completed");
                if let Some(job) = self.jobs.remove(&job_id) {
                    stats::JOB_LATENCY.record(job.submitted.elapsed().unwrap_or_default());
                    self.finished.push(job.finished(SystemTime::now()));
                }
                self.order.retain(|id| id != &job_id);
                self.notify(JobEvent::Ended(job_id));
            }
            Event::SagaEnded(job_id, Err(error)) => {
                tracing::warn!(job_id = %job_id, %error, "cannot end saga; will retry");
                if let Some(state) = self.jobs.get_mut(&job_id) {
                    state.ending = false;
                }
            }
        }
    }

    fn attempt_finished(&mut self, finished: AttemptFinished) {
        let AttemptFinished {
            job_id,
            task_id,
            node,
            result,
            elapsed,
            node_suspect,
        } = finished;
        if let Some(n) = self.nodes.get_mut(&node) {
            // It may already be free, and even running another task (see WorkerFree).
            if n.busy.as_ref() == Some(&(job_id.clone(), task_id.clone())) {
                n.busy = None;
            }
            if node_suspect && n.health == NodeHealth::Ready {
                // The worker may have become unhealthy: check it before giving it more work.
                n.health = NodeHealth::Checking;
            }
        }
        if node_suspect {
            self.start_readiness_check(&node);
        }
        self.task_finished(job_id, task_id, result, elapsed);
    }

    /// A task's attempt (or its end by the loop) is over: it is done, or waits again.
    fn task_finished(
        &mut self,
        job_id: String,
        task_id: String,
        result: AttemptResult,
        elapsed: Duration,
    ) {
        if let AttemptResult::Ended(status) = &result {
            self.notify(JobEvent::TaskEnded {
                job_id: job_id.clone(),
                status: Box::new(status.clone()),
            });
        }
        let Some(state) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let now = SystemTime::now();
        match result {
            AttemptResult::Ended(status) => {
                stats::TASKS_COMPLETED.inc();
                if status.state != RunState::Complete {
                    stats::TASKS_FAILED.inc();
                }
                if status.state == RunState::Complete || status.state == RunState::TimedOut {
                    self.durations.record(&task_id, elapsed);
                }
                if let Some(task) = state.task_mut(&task_id) {
                    task.run_mut().end(&status, now);
                }
                state.mark_done(&task_id);
            }
            AttemptResult::Retry(error) => {
                stats::TASK_RETRIES.inc();
                tracing::info!(job_id = %job_id, task_id = %task_id, %error, "task will be retried");
                if let Some(task) = state.task_mut(&task_id)
                    && matches!(task.status, TaskStatus::Running { .. } | TaskStatus::Ending)
                {
                    task.status = TaskStatus::Waiting;
                    task.run_mut().retry(&error, now);
                    state.running -= 1;
                }
            }
        }
        self.end_if_finished(&job_id);
    }

    fn handle_membership(&mut self, changes: Vec<Membership>) {
        for change in changes {
            match change {
                Membership::Added(id) => {
                    let node = self
                        .nodes
                        .entry(id.clone())
                        .or_insert_with(|| Node::new((self.connect)(&id)));
                    if matches!(node.health, NodeHealth::Lost(_)) || node.check.is_none() {
                        tracing::info!(node = %id, "worker listed");
                        node.health = NodeHealth::Checking;
                        self.start_readiness_check(&id);
                    }
                }
                Membership::Removed(id) => {
                    let Some(node) = self.nodes.get_mut(&id) else {
                        continue;
                    };
                    if node.offlined {
                        self.nodes.remove(&id);
                        continue;
                    }
                    tracing::warn!(node = %id, "worker no longer listed; suspending it");
                    if let Some(check) = node.check.take() {
                        check.cancel();
                    }
                    node.health = NodeHealth::Lost(Instant::now());
                }
            }
        }
    }

    /// Polls a worker until it is initialised and healthy, aborts whatever it still runs (left
    /// over from before a scheduler restart), then reports it ready.
    fn start_readiness_check(&mut self, id: &str) {
        let Some(node) = self.nodes.get_mut(id) else {
            return;
        };
        if let Some(old) = node.check.take() {
            old.cancel();
        }
        let cancel = CancellationToken::new();
        node.check = Some(cancel.clone());
        node.problem = None;
        let client = node.client.clone();
        let events = self.events_tx.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            // What the loop was last told, so that it hears of each change once.
            let mut told = String::new();
            let mut tell = |problem: String| {
                if problem != told {
                    told.clone_from(&problem);
                    let _ = events.send(Event::NodeNotReady(id.clone(), problem));
                }
            };
            loop {
                match client.query().await {
                    Ok((runs, service)) if service.initialized && service.is_healthy => {
                        for run in runs.iter().filter(|r| !r.state.is_done()) {
                            tracing::info!(node = %id, run_id = %run.run_id, "aborting a leftover run");
                            let _ = client.abort(&run.run_id).await;
                        }
                        let _ = events.send(Event::NodeReady(id, service.platform));
                        return;
                    }
                    Ok((_, service)) if service.initialized => {
                        let reason = match service.error.as_str() {
                            "" => "unhealthy".to_string(),
                            error => error.to_string(),
                        };
                        let _ = events.send(Event::NodeUnhealthy(id.clone(), reason));
                        return;
                    }
                    Ok((_, service)) => {
                        tracing::debug!(node = %id, error = %service.error, "worker not ready");
                        tell(match service.error.as_str() {
                            "" => "initialising".to_string(),
                            error => error.to_string(),
                        });
                    }
                    Err(err) => {
                        tracing::debug!(node = %id, error = %err, "worker not reachable");
                        tell(format!("not reachable: {err}"));
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = cancel.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }

    fn offline(&mut self, id: &str) -> Result<(), String> {
        match self.nodes.get_mut(id) {
            Some(node) if !node.offlined && !matches!(node.health, NodeHealth::Lost(_)) => {
                tracing::info!(node = %id, "worker offlined");
                node.offlined = true;
                Ok(())
            }
            _ => Err(format!(
                "node {id} was not present in nodes. It can't be offlined"
            )),
        }
    }

    fn reinstate(&mut self, id: &str) -> Result<(), String> {
        match self.nodes.get_mut(id) {
            Some(node) if node.offlined => {
                tracing::info!(node = %id, "worker reinstated");
                node.offlined = false;
                node.health = NodeHealth::Checking;
                self.start_readiness_check(id);
                Ok(())
            }
            _ => Err(format!(
                "node {id} was not offlined. It can't be reinstated"
            )),
        }
    }

    /// Sets the gauges (once a second, from housekeeping: counting every task on each step
    /// would cost the loop time at a hundred thousand queued tasks).
    fn publish_stats(&mut self) {
        let (mut running, mut waiting, mut waiting_jobs) = (0, 0, 0);
        let mut by_requestor: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
        for state in self.jobs.values() {
            let job_waiting = state
                .tasks
                .iter()
                .filter(|t| matches!(t.status, TaskStatus::Waiting))
                .count() as i64;
            let job_running = state.running as i64;
            running += job_running;
            waiting += job_waiting;
            if job_running == 0 && job_waiting > 0 {
                waiting_jobs += 1;
            }
            let entry = by_requestor.entry(&state.job.def.requestor).or_default();
            entry.0 += job_running;
            entry.1 += job_waiting;
            entry.2 += i64::from(job_running > 0);
        }
        stats::RUNNING_TASKS.set(running);
        stats::WAITING_TASKS.set(waiting);
        stats::IN_PROGRESS_TASKS.set(running + waiting);
        stats::ACCEPTED_JOBS.set(self.jobs.len() as i64);
        stats::WAITING_JOBS.set(waiting_jobs);
        let gauged: BTreeSet<String> = by_requestor.keys().map(|r| r.to_string()).collect();
        for gone in self.gauged_requestors.difference(&gauged) {
            by_requestor.insert(gone, (0, 0, 0));
        }
        for (requestor, (running, waiting, jobs)) in by_requestor {
            stats::requestor_gauge("schedNumRunningTasksGauge", requestor).set(running);
            stats::requestor_gauge("schedNumWaitingTasksGauge", requestor).set(waiting);
            stats::requestor_gauge("schedNumRunningJobsGauge", requestor).set(jobs);
        }
        self.gauged_requestors = gauged;
        let uptime = self.epoch.elapsed();
        stats::UPTIME.set(uptime.as_millis() as i64);
        stats::START.set(i64::from(uptime < Duration::from_secs(60)));
        let (mut ready, mut offline, mut lost, mut checking, mut busy) = (0, 0, 0, 0, 0);
        for node in self.nodes.values() {
            match node.health {
                _ if node.offlined => offline += 1,
                NodeHealth::Ready => ready += 1,
                NodeHealth::Lost(_) => lost += 1,
                _ => checking += 1,
            }
            busy += i64::from(node.busy.is_some());
        }
        stats::AVAILABLE_NODES.set(ready);
        stats::RUNNING_NODES.set(busy);
        stats::FREE_NODES.set((ready - busy).max(0));
        stats::LOST_NODES.set(lost);
        for (state, count) in [
            ("ready", ready),
            ("offline", offline),
            ("lost", lost),
            ("checking", checking),
        ] {
            stats::WORKERS.set(state, count);
        }
    }

    fn housekeeping(&mut self) {
        self.publish_stats();
        let now = Instant::now();
        self.nodes.retain(|id, node| match node.health {
            NodeHealth::Lost(since)
                if now.duration_since(since) > self.config.lost_worker_timeout
                    && node.busy.is_none() =>
            {
                tracing::info!(node = %id, "forgetting lost worker");
                false
            }
            _ => true,
        });
        let unfinished: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.is_finished() && !j.ending)
            .map(|(id, _)| id.clone())
            .collect();
        for job_id in unfinished {
            self.end_if_finished(&job_id);
        }
        self.end_unrunnable();
    }

    /// Ends the waiting tasks no worker can run (see the module documentation), and those whose
    /// platform does not parse (INVALID_ARGUMENT).
    fn end_unrunnable(&mut self) {
        let now = Instant::now();
        let timeout = self.config.unmatched_platform_timeout;
        // Tasks mostly share a few platforms: judge each once per pass.
        let mut judged: Vec<(Requirements, Placement)> = Vec::new();
        let mut ending = Vec::new();
        for (job_id, job) in &mut self.jobs {
            if job.killed {
                continue;
            }
            for (pos, task) in job.tasks.iter_mut().enumerate() {
                if task.status != TaskStatus::Waiting {
                    task.unplaced_since = None;
                    continue;
                }
                let requirements = match task.requirements.as_ref() {
                    Ok(requirements) => requirements,
                    Err(invalid) => {
                        let why = format!("the task's platform is invalid: {invalid}");
                        ending.push((job_id.clone(), pos, tonic::Code::InvalidArgument, why));
                        continue;
                    }
                };
                let known = judged.iter().position(|(r, _)| r == requirements);
                let index = known.unwrap_or_else(|| {
                    judged.push((requirements.clone(), placement(requirements, &self.nodes)));
                    judged.len() - 1
                });
                let why = match &judged[index].1 {
                    Placement::Ready => {
                        task.unplaced_since = None;
                        continue;
                    }
                    Placement::Never(why) => why.clone(),
                    Placement::Later(why) => {
                        let since = *task.unplaced_since.get_or_insert(now);
                        if now.duration_since(since) < timeout {
                            continue;
                        }
                        format!(
                            "{why} (the task waited {} for a worker that can run it)",
                            humantime::format_duration(timeout)
                        )
                    }
                };
                ending.push((job_id.clone(), pos, tonic::Code::FailedPrecondition, why));
            }
        }
        for (job_id, pos, code, why) in ending {
            self.end_unrunnable_task(&job_id, pos, code, why);
        }
    }

    /// Ends a waiting task without a run, as its worker would end an action it refused: FAILED,
    /// with an ExecuteResponse carrying `code` and `why` for a REAPI action. StartTask and
    /// EndTask are recorded in one saga write; the result comes back as [`Event::Unrunnable`].
    fn end_unrunnable_task(&mut self, job_id: &str, pos: usize, code: tonic::Code, why: String) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        let Some(task) = job.tasks.get_mut(pos) else {
            return;
        };
        if task.status != TaskStatus::Waiting {
            return;
        }
        task.status = TaskStatus::Ending;
        task.unplaced_since = None;
        job.running += 1;
        let def = &job.job.def.tasks[task.index];
        let task_id = def.task_id.clone();
        tracing::warn!(job_id, task_id = %task_id, reason = %why, "no worker can run the task; ending it");
        let tags = LogTags {
            job_id: job_id.to_string(),
            task_id: task_id.clone(),
            tag: job.job.def.tag.clone(),
        };
        let mut status = RunStatus::failed(
            RunId::default(),
            0,
            format!("{why}{DEAD_LETTER_SUFFIX}"),
            tags,
        );
        if def.command.reapi_request.is_some() {
            let response = status_response(rpc_status(code, why));
            status.reapi_response = Some(response.encode_to_vec());
        }
        let batch = vec![
            SagaMessage::start_task(job_id, &task_id, Vec::new()),
            SagaMessage::end_task(job_id, &task_id, wire::run_status_to_saga(&status)),
        ];
        let saga = job.saga.clone();
        let events = self.events_tx.clone();
        let job_id = job_id.to_string();
        tokio::spawn(async move {
            let result = match saga.log(batch).await {
                Ok(()) => AttemptResult::Ended(status),
                Err(err) => {
                    AttemptResult::Retry(format!("cannot record the end of the task: {err}"))
                }
            };
            let _ = events.send(Event::Unrunnable {
                job_id,
                task_id,
                result,
            });
        });
    }

    fn schedule(&mut self) {
        let mut idle: Vec<&str> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.is_idle())
            .map(|(id, _)| id.as_str())
            .collect();
        let any_waiting = self.jobs.values().any(|j| !j.killed && j.waiting() > 0);
        if !any_waiting || (idle.is_empty() && !self.alg.rebalancing_enabled()) {
            return;
        }
        let workers = self.nodes.values().filter(|n| n.counts_as_worker()).count();
        // The algorithm starts at most one task per idle worker, and looks at running tasks only
        // to rebalance: listing more would make each step cost as much as the whole queue.
        let listed = idle.len();
        let rebalancing = self.alg.rebalancing_enabled();
        let views: Vec<JobView> = self
            .order
            .iter()
            .filter_map(|id| self.jobs.get(id))
            .filter(|j| !j.killed && (j.waiting() > 0 || j.running > 0))
            .map(|j| JobView {
                job_id: j.job.id.clone(),
                requestor: j.job.def.requestor.clone(),
                waiting_count: j.waiting(),
                waiting: j
                    .tasks
                    .iter()
                    .filter(|t| matches!(t.status, TaskStatus::Waiting))
                    .take(listed)
                    .map(|t| j.job.def.tasks[t.index].task_id.clone())
                    .collect(),
                running_count: j.running,
                running: if rebalancing {
                    j.tasks
                        .iter()
                        .filter_map(|t| match &t.status {
                            TaskStatus::Running { started, .. } => Some(RunningTask {
                                task_id: j.job.def.tasks[t.index].task_id.clone(),
                                started_at: started.duration_since(self.epoch),
                            }),
                            _ => None,
                        })
                        .collect()
                } else {
                    Vec::new()
                },
            })
            .collect();
        let now = Instant::now().duration_since(self.epoch);
        let decision = self.alg.schedule(now, workers, idle.len(), &views);
        for (job_id, task_id) in &decision.stop {
            if let Some(stop) = self
                .jobs
                .get_mut(job_id)
                .and_then(|j| j.task_mut(task_id))
                .and_then(|task| task.stop.as_ref())
            {
                stop.stop("RebalanceRequested");
            }
        }
        let mut assignments = Vec::new();
        for (job_id, task_id) in decision.start {
            let Some(job) = self.jobs.get(&job_id) else {
                continue;
            };
            let Some(&pos) = job.by_id.get(&task_id) else {
                continue;
            };
            let task = &job.tasks[pos];
            let Ok(requirements) = task.requirements.as_ref() else {
                continue;
            };
            let snapshot = &job.job.def.tasks[task.index].command.snapshot_id;
            // A task no idle worker can run waits; the next one chosen may fit another.
            let Some(node) = pick_node(&mut idle, &self.nodes, snapshot, requirements) else {
                continue;
            };
            assignments.push((job_id, pos, node.to_string()));
        }
        for (job_id, pos, node) in assignments {
            self.start_task(&job_id, pos, &node);
        }
    }

    fn start_task(&mut self, job_id: &str, pos: usize, node_id: &str) {
        let (Some(job), Some(node)) = (self.jobs.get_mut(job_id), self.nodes.get_mut(node_id))
        else {
            return;
        };
        let task = &mut job.tasks[pos];
        let def = &job.job.def.tasks[task.index];
        task.status = TaskStatus::Running {
            node: node_id.to_string(),
            started: Instant::now(),
        };
        task.run_mut().start(node_id, SystemTime::now());
        let stop = StopSignal::default();
        task.stop = Some(stop.clone());
        let may_retry = task.attempts < self.config.max_retries_per_task;
        task.attempts += 1;
        job.running += 1;
        node.busy = Some((job_id.to_string(), def.task_id.clone()));
        node.snapshot = def.command.snapshot_id.clone();
        let mut cmd = def.command.clone();
        cmd.timeout = Some(cmd.timeout.unwrap_or(self.config.default_task_timeout));
        tracing::info!(job_id, task_id = %def.task_id, node = node_id, "starting task");
        stats::TASKS_SCHEDULED.inc();
        let attempt = TaskAttempt {
            job_id: job_id.to_string(),
            task_id: def.task_id.clone(),
            node: node_id.to_string(),
            cmd,
            client: node.client.clone(),
            saga: job.saga.clone(),
            stop,
            may_retry,
            polling_period: self.config.polling_period,
            worker_free: Some(Box::new({
                let events = self.events_tx.clone();
                let (node, job_id, task_id) =
                    (node_id.to_string(), job_id.to_string(), def.task_id.clone());
                move || {
                    let _ = events.send(Event::WorkerFree {
                        node,
                        job_id,
                        task_id,
                    });
                }
            })),
            on_running: Some(Box::new({
                let events = self.events_tx.clone();
                let (node, job_id, task_id) =
                    (node_id.to_string(), job_id.to_string(), def.task_id.clone());
                move |status: &RunStatus| {
                    let _ = events.send(Event::TaskRunning {
                        job_id: job_id.clone(),
                        task_id: task_id.clone(),
                        node: node.clone(),
                        status: Box::new(status.clone()),
                    });
                }
            })),
        };
        self.notify(JobEvent::TaskStarted(job_id.to_string()));
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let finished = task_runner::run(attempt).await;
            let _ = events.send(Event::Attempt(Box::new(finished)));
        });
    }
}

#[cfg(test)]
mod tests {
    use scoot_core::Command;
    use scoot_proto::reapi::v2;

    use super::*;
    use crate::api::{JobState as Reported, JobStatus};
    use crate::fake_worker::{FakeWorker, PATIENCE, Script, TestScheduler, eventually};
    use crate::job::{JobDefinition, TaskDefinition};
    use crate::task_runner::DEAD_LETTER_SUFFIX;

    fn job(task_ids: &[&str]) -> JobDefinition {
        JobDefinition {
            tasks: task_ids
                .iter()
                .map(|id| TaskDefinition {
                    task_id: id.to_string(),
                    command: Command {
                        argv: vec!["true".into()],
                        ..Command::default()
                    },
                })
                .collect(),
            requestor: "tester".into(),
            ..JobDefinition::default()
        }
    }

    /// A job whose tasks ask for `platform`, made as Execute makes an action's.
    fn platform_job(task_ids: &[&str], platform: &[(&str, &str)]) -> JobDefinition {
        let mut def = job(task_ids);
        for task in &mut def.tasks {
            task.command.reapi_request = Some(Vec::new());
            task.command.platform = platform
                .iter()
                .map(|(name, value)| PlatformProperty::new(*name, *value))
                .collect();
        }
        def
    }

    /// What a worker that sandboxes actions in `modes` reports.
    fn sandboxed(modes: &[&'static str]) -> Vec<(&'static str, &'static str)> {
        let mut platform = vec![("OSFamily", "linux"), ("ISA", "x86-64")];
        platform.extend(modes.iter().map(|mode| ("sandbox", *mode)));
        platform
    }

    /// The status of the REAPI response on a run the loop ended.
    fn response_status(run: &RunStatus) -> scoot_proto::rpc::Status {
        let bytes = run.reapi_response.as_deref().expect("no REAPI response");
        let response = v2::ExecuteResponse::decode(bytes).unwrap();
        response.status.expect("no status")
    }

    fn run_of<'a>(status: &'a JobStatus, task_id: &str) -> (Reported, &'a RunStatus) {
        let (state, run) = &status.tasks[task_id];
        (*state, run.as_ref().expect("the task has no run status"))
    }

    #[tokio::test]
    async fn a_job_runs_to_completion_and_its_end_is_durable() {
        let worker = FakeWorker::new("w");
        let mut sched = TestScheduler::start(std::slice::from_ref(&worker), 0).await;
        let id = sched.api.run_job(job(&["a", "b"])).await.unwrap();
        let mut started = 0;
        let mut ended = Vec::new();
        while let Some(event) = sched.job_events.recv().await {
            match event {
                JobEvent::TaskStarted(job_id) if job_id == id => started += 1,
                JobEvent::TaskEnded { job_id, status } if job_id == id => {
                    ended.push(status.tags.task_id.clone())
                }
                JobEvent::Ended(job_id) if job_id == id => break,
                _ => {}
            }
        }
        assert_eq!(started, 2);
        ended.sort();
        assert_eq!(ended, ["a", "b"]);
        let status = sched.api.job_status(&id).await.unwrap();
        assert_eq!(status.state, Reported::Completed);
        for task in ["a", "b"] {
            let (state, run) = run_of(&status, task);
            assert_eq!(
                (state, run.state),
                (Reported::Completed, RunState::Complete)
            );
        }
        assert!(
            sched
                .sagas
                .get_state(&id)
                .await
                .unwrap()
                .unwrap()
                .is_saga_completed()
        );
        let tags: Vec<LogTags> =
            worker.read(|r| r.runs.iter().map(|(c, _)| c.tags.clone()).collect());
        assert!(
            tags.iter().all(|t| t.job_id == id && t.tag == id),
            "{tags:?}"
        );
        assert!(!sched.api.is_active(&id).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn the_overview_follows_jobs_and_workers_and_remembers_finished_jobs() {
        use crate::overview::{JobPhase, JobQuery, TaskPhase, WorkerHealth};
        let (busy, down) = (FakeWorker::new("busy"), FakeWorker::new("down"));
        busy.script(Script::Hang);
        down.set_down(true);
        let mut sched = TestScheduler::start(&[busy.clone(), down.clone()], 0).await;
        let id = sched.api.run_job(job(&["a", "b"])).await.unwrap();
        busy.until("a run", |r| r.runs.len() == 1).await;
        let running_task = busy.read(|r| r.runs[0].0.tags.task_id.clone());
        let overview = tokio::time::timeout(PATIENCE, async {
            loop {
                let overview = sched.api.overview().await.unwrap();
                let problem = overview
                    .workers
                    .iter()
                    .any(|w| matches!(&w.health, WorkerHealth::Checking(Some(p)) if p.contains("not reachable")));
                if problem {
                    return overview;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the unreachable worker's problem never showed");
        let summary = &overview.jobs[0];
        assert_eq!(
            (summary.phase, summary.running, summary.waiting),
            (JobPhase::Running, 1, 1)
        );
        let busy_view = overview.workers.iter().find(|w| w.id == "busy").unwrap();
        assert_eq!(busy_view.running, Some((id.clone(), running_task.clone())));
        assert_eq!(busy_view.platform, ["sandbox=none"]);

        sched.api.offline_worker("busy").await.unwrap();
        let detail = sched
            .api
            .job_detail(JobQuery {
                job_id: id.clone(),
                tasks: 0..10,
            })
            .await
            .unwrap()
            .expect("an active job is unknown");
        let tasks: Vec<(&str, TaskPhase)> = detail
            .tasks
            .iter()
            .map(|t| (t.task_id.as_str(), t.phase))
            .collect();
        let expected = if running_task == "a" {
            [("a", TaskPhase::Running), ("b", TaskPhase::Waiting)]
        } else {
            [("a", TaskPhase::Waiting), ("b", TaskPhase::Running)]
        };
        assert_eq!(tasks, expected, "not in definition order");
        assert_eq!(
            detail
                .tasks
                .iter()
                .find(|t| t.phase == TaskPhase::Running)
                .unwrap()
                .run
                .node
                .as_deref(),
            Some("busy")
        );

        sched.api.kill_job(&id).await.unwrap();
        sched.ended(&id).await;
        let overview = sched.api.overview().await.unwrap();
        assert!(overview.workers.iter().any(|w| w.id == "busy" && w.offline));
        assert_eq!(overview.jobs.len(), 1);
        assert_eq!(overview.jobs[0].phase, JobPhase::Killed);
        assert!(overview.jobs[0].finished.is_some());
        let detail = sched
            .api
            .job_detail(JobQuery {
                job_id: id.clone(),
                tasks: 1..usize::MAX,
            })
            .await
            .unwrap()
            .expect("a finished job was forgotten");
        assert_eq!(detail.tasks.len(), 1, "the range was not applied");
        let outcome = detail.tasks[0].run.outcome.as_ref().expect("no outcome");
        assert_eq!(outcome.state, RunState::Aborted);
        assert!(
            outcome.error.starts_with("UserRequested"),
            "{}",
            outcome.error
        );
        assert!(
            sched
                .api
                .job_detail(JobQuery {
                    job_id: "nope".into(),
                    tasks: 0..1
                })
                .await
                .unwrap()
                .is_none()
        );
    }

    /// Scoot's tag grouping: a later job of a tag takes the priority of the tag's first job.
    #[tokio::test]
    async fn jobs_of_one_tag_share_the_first_jobs_priority() {
        let worker = FakeWorker::new("w");
        worker.script(Script::Hang);
        worker.script(Script::Hang);
        let sched = TestScheduler::start(std::slice::from_ref(&worker), 0).await;
        let with = |priority: i32, tag: &str, basis: &str| {
            let mut def = job(&["t"]);
            (def.priority, def.tag, def.basis) = (priority, tag.into(), basis.into());
            def
        };
        let first = sched.api.run_job(with(2, "build", "b1")).await.unwrap();
        let second = sched.api.run_job(with(0, "build", "b2")).await.unwrap();
        let other = sched.api.run_job(with(1, "other", "b3")).await.unwrap();
        let overview = sched.api.overview().await.unwrap();
        let priority = |id: &str| overview.jobs.iter().find(|j| j.id == id).unwrap().priority;
        assert_eq!(
            (priority(&first), priority(&second), priority(&other)),
            (2, 2, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_whose_worker_dies_runs_again_on_another() {
        let (a, b) = (FakeWorker::new("a"), FakeWorker::new("b"));
        a.script(Script::Hang);
        b.script(Script::Hang);
        let mut sched = TestScheduler::start(&[a.clone(), b.clone()], 1).await;
        let id = sched.api.run_job(job(&["t"])).await.unwrap();
        let runs = |w: &FakeWorker| w.read(|r| r.runs.len());
        eventually("a run", || runs(&a) + runs(&b) == 1).await;
        let (dead, other) = if runs(&a) == 1 { (&a, &b) } else { (&b, &a) };
        dead.set_down(true);
        other.until("the retried run", |r| r.runs.len() == 1).await;
        other.finish(&RunId("0".into()), |s| s.state = RunState::Complete);
        sched.ended(&id).await;
        let status = sched.api.job_status(&id).await.unwrap();
        let (state, run) = run_of(&status, "t");
        assert_eq!(
            (state, run.state),
            (Reported::Completed, RunState::Complete)
        );
        assert_eq!(run.stdout_ref, format!("fake://{}/0/stdout", other.node()));
        assert_eq!(runs(dead), 1, "the dead worker got the task again");
    }

    #[tokio::test]
    async fn kill_job_stops_running_tasks_and_ends_waiting_ones() {
        let worker = FakeWorker::new("w");
        worker.script(Script::Hang);
        let mut sched = TestScheduler::start(std::slice::from_ref(&worker), 3).await;
        let id = sched.api.run_job(job(&["a", "b"])).await.unwrap();
        worker.until("the first run", |r| r.runs.len() == 1).await;
        let running = worker.read(|r| r.runs[0].0.tags.task_id.clone());
        let waiting = if running == "a" { "b" } else { "a" };
        sched.api.kill_job(&id).await.unwrap();
        sched.ended(&id).await;
        assert_eq!(worker.read(|r| r.aborted.clone()), vec![RunId("0".into())]);
        assert_eq!(
            worker.read(|r| r.runs.len()),
            1,
            "a killed job's task started"
        );
        let status = sched.api.job_status(&id).await.unwrap();
        assert_eq!(status.state, Reported::Completed);
        let (state, run) = run_of(&status, &running);
        assert_eq!((state, run.state), (Reported::Completed, RunState::Aborted));
        assert_eq!(run.error, format!("UserRequested{DEAD_LETTER_SUFFIX}"));
        let (state, run) = run_of(&status, waiting);
        assert_eq!((state, run.state), (Reported::Completed, RunState::Aborted));
        assert_eq!(run.error, "UserRequested");
        assert!(
            sched.api.kill_job(&id).await.is_err(),
            "an ended job was killed again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rootfs_task_only_goes_to_a_worker_offering_rootfs() {
        let (plain, rootfs) = (FakeWorker::new("plain"), FakeWorker::new("rootfs"));
        rootfs.set_platform(&sandboxed(&["rootfs"]));
        rootfs.script(Script::Hang);
        let mut sched = TestScheduler::start(&[plain.clone(), rootfs.clone()], 0).await;
        let def = platform_job(&["a", "b"], &[("OSFamily", "linux")]);
        let id = sched.api.run_job(def).await.unwrap();
        rootfs.until("the first run", |r| r.runs.len() == 1).await;
        // The other task waits for the rootfs worker: the idle plain one cannot run it.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(sched.api.is_active(&id).await.unwrap());
        assert_eq!(plain.read(|r| r.runs.len()), 0);
        rootfs.finish(&RunId("0".into()), |s| s.state = RunState::Complete);
        sched.ended(&id).await;
        assert_eq!(plain.read(|r| r.runs.len()), 0);
        let platforms = rootfs.read(|r| {
            r.runs
                .iter()
                .map(|(cmd, _)| cmd.platform.clone())
                .collect::<Vec<_>>()
        });
        assert_eq!(
            platforms,
            vec![vec![PlatformProperty::new("OSFamily", "linux")]; 2],
            "the worker did not get both tasks with their platform"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_no_worker_can_run_ends_failed_precondition_without_a_run() {
        let worker = FakeWorker::new("w");
        worker.set_platform(&sandboxed(&["host-tools", "rootfs"]));
        let mut sched = TestScheduler::start(std::slice::from_ref(&worker), 0).await;
        let def = platform_job(&["t"], &[("OSFamily", "linux"), ("ISA", "sparc")]);
        let id = sched.api.run_job(def).await.unwrap();
        sched.ended(&id).await;
        assert_eq!(worker.read(|r| r.runs.len()), 0, "the task ran");
        let status = sched.api.job_status(&id).await.unwrap();
        let (state, run) = run_of(&status, "t");
        assert_eq!((state, run.state), (Reported::Completed, RunState::Failed));
        assert!(run.error.contains("ISA=sparc"), "{}", run.error);
        let response = response_status(run);
        assert_eq!(response.code, tonic::Code::FailedPrecondition as i32);
        assert!(response.message.contains("ISA=sparc"), "{response:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_task_ends_when_the_only_worker_that_can_run_it_goes_away() {
        let (plain, rootfs) = (FakeWorker::new("plain"), FakeWorker::new("rootfs"));
        rootfs.set_platform(&sandboxed(&["rootfs"]));
        rootfs.script(Script::Hang);
        let mut sched = TestScheduler::start(&[plain.clone(), rootfs.clone()], 0).await;
        let wants_rootfs = [("sandbox", "rootfs")];
        let first = sched
            .api
            .run_job(platform_job(&["first"], &wants_rootfs))
            .await
            .unwrap();
        rootfs.until("the first run", |r| r.runs.len() == 1).await;
        let waiting = sched
            .api
            .run_job(platform_job(&["waiting"], &wants_rootfs))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            sched.api.is_active(&waiting).await.unwrap(),
            "a task ended while a worker that can run it was busy"
        );
        sched.unlist("rootfs").await;
        sched.ended(&waiting).await;
        let status = sched.api.job_status(&waiting).await.unwrap();
        let (_, run) = run_of(&status, "waiting");
        assert_eq!(run.state, RunState::Failed);
        let response = response_status(run);
        assert_eq!(response.code, tonic::Code::FailedPrecondition as i32);
        assert!(response.message.contains("sandbox=rootfs"), "{response:?}");
        assert_eq!(plain.read(|r| r.runs.len()), 0);
        assert_eq!(rootfs.read(|r| r.runs.len()), 1);
        assert!(sched.api.is_active(&first).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn cloudscoot_tasks_run_on_every_worker_that_runs_tasks_on_its_host() {
        // Named so that the rootfs-only worker is the first candidate: it has no host for
        // CloudScoot tasks, as it serves rootfs actions only.
        let rootfs_only = FakeWorker::new("a-rootfs");
        let plain = FakeWorker::new("b-plain");
        let both = FakeWorker::new("c-both");
        both.set_platform(&sandboxed(&["host-tools", "rootfs"]));
        rootfs_only.set_platform(&sandboxed(&["rootfs"]));
        let workers = [plain.clone(), both.clone(), rootfs_only.clone()];
        for worker in &workers {
            worker.script(Script::Hang);
        }
        let sched = TestScheduler::start(&workers, 0).await;
        sched.api.run_job(job(&["a", "b"])).await.unwrap();
        plain.until("a run", |r| r.runs.len() == 1).await;
        both.until("a run", |r| r.runs.len() == 1).await;
        assert_eq!(rootfs_only.read(|r| r.runs.len()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_workers_a_task_waits_until_the_unmatched_platform_timeout() {
        let mut sched = TestScheduler::start(&[], 0).await;
        let id = sched.api.run_job(job(&["t"])).await.unwrap();
        tokio::time::sleep(Duration::from_secs(4 * 60 + 30)).await;
        assert!(
            sched.api.is_active(&id).await.unwrap(),
            "the task did not wait"
        );
        sched.ended(&id).await;
        let status = sched.api.job_status(&id).await.unwrap();
        let (_, run) = run_of(&status, "t");
        assert_eq!(run.state, RunState::Failed);
        assert!(run.error.contains("no worker is there"), "{}", run.error);
        assert!(run.error.contains("waited 5m"), "{}", run.error);
        assert_eq!(
            run.reapi_response, None,
            "a CloudScoot task got a REAPI response"
        );
    }
}
