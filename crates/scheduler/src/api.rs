//! The scheduler's API as async methods, independent of the wire: the Thrift handler (and tests)
//! call these. RunJob makes the job's StartSaga durable before it returns.

use std::collections::BTreeMap;
use std::time::Duration;

use scoot_core::{LogTags, RunId, RunStatus};
use scoot_reapi::platform::Requirements;
use scoot_saga::{SagaCoordinator, SagaError, SagaLogError, SagaState};
use scoot_sched_alg::ClassConfig;
use tokio::sync::{mpsc, oneshot};

use crate::event_loop::Request;
use crate::job::{InvalidJob, Job, JobDefinition};
use crate::overview::{JobDetail, JobQuery, Overview};
use crate::state::Placement;
use crate::stats;
use crate::wire;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(String),
    /// The saga log could not be read or written; worth retrying.
    #[error("saga log: {0}")]
    SagaLog(String),
    #[error("the scheduler is shutting down")]
    ShuttingDown,
}

impl From<InvalidJob> for ApiError {
    fn from(err: InvalidJob) -> ApiError {
        ApiError::Invalid(err.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    NotStarted,
    InProgress,
    Completed,
    RollingBack,
    RolledBack,
}

/// A job's status as rebuilt from its saga.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobStatus {
    pub id: String,
    pub state: JobState,
    pub tasks: BTreeMap<String, (JobState, Option<RunStatus>)>,
}

/// The task id under which GetStatus reports why a job whose definition the saga log lost
/// failed: its own task ids are lost with it, so this one never meets a real one.
pub const UNREADABLE_JOB_TASK: &str = "(job definition)";

/// What the saga log holds of a job.
enum Recorded {
    Unknown,
    /// The job cannot be read back, so it can never run; why.
    Unreadable(String),
    Job(SagaState, Box<Job>),
}

/// A job whose definition is unreadable is over: finished, with one pseudo-task whose FAILED
/// run carries the reason.
fn unreadable_status(job_id: &str, reason: String) -> JobStatus {
    let tags = LogTags {
        job_id: job_id.to_string(),
        task_id: UNREADABLE_JOB_TASK.to_string(),
        tag: String::new(),
    };
    let run = RunStatus::failed(RunId::default(), 0, reason, tags);
    JobStatus {
        id: job_id.to_string(),
        state: JobState::Completed,
        tasks: BTreeMap::from([(
            UNREADABLE_JOB_TASK.to_string(),
            (JobState::Completed, Some(run)),
        )]),
    }
}

#[derive(Clone)]
pub struct SchedulerApi {
    requests: mpsc::Sender<Request>,
    sagas: SagaCoordinator,
}

impl SchedulerApi {
    pub fn new(requests: mpsc::Sender<Request>, sagas: SagaCoordinator) -> SchedulerApi {
        SchedulerApi { requests, sagas }
    }

    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(request(tx))
            .await
            .map_err(|_| ApiError::ShuttingDown)?;
        rx.await.map_err(|_| ApiError::ShuttingDown)
    }

    async fn tell(&self, request: Request) -> Result<(), ApiError> {
        self.requests
            .send(request)
            .await
            .map_err(|_| ApiError::ShuttingDown)
    }

    pub async fn run_job(&self, def: JobDefinition) -> Result<String, ApiError> {
        self.run(Job::new(def)).await
    }

    /// Runs a job whose id the caller chose (a fresh UUID, as [`Job::new`] makes).
    pub async fn run(&self, job: Job) -> Result<String, ApiError> {
        let started = std::time::Instant::now();
        stats::JOB_REQUESTS.inc();
        stats::RUN_JOB_RPM.inc();
        let accepted = self.admit_and_add(job).await;
        if accepted.is_ok() {
            stats::JOBS.inc();
        }
        stats::RUN_JOB_LATENCY.record(started.elapsed());
        accepted
    }

    async fn admit_and_add(&self, job: Job) -> Result<String, ApiError> {
        self.ask(|tx| Request::Admit(job.clone(), tx)).await??;
        match self.sagas.make_saga(&job.id, wire::job_to_saga(&job)).await {
            Ok(saga) => {
                let id = job.id.clone();
                self.tell(Request::Add(job, saga)).await?;
                Ok(id)
            }
            Err(err) => {
                self.tell(Request::Release(job)).await?;
                Err(ApiError::SagaLog(err.to_string()))
            }
        }
    }

    async fn recorded(&self, job_id: &str) -> Result<Recorded, ApiError> {
        match self.sagas.get_state(job_id).await {
            Ok(None) => Ok(Recorded::Unknown),
            Ok(Some(state)) => match wire::job_from_saga(state.job()) {
                Ok(job) => Ok(Recorded::Job(state, Box::new(job))),
                Err(err) => Ok(Recorded::Unreadable(format!(
                    "saga log damaged: job definition unreadable ({err})"
                ))),
            },
            Err(SagaError::Log(err @ SagaLogError::Unreadable(_))) => {
                Ok(Recorded::Unreadable(err.to_string()))
            }
            Err(err) => Err(ApiError::SagaLog(err.to_string())),
        }
    }

    /// The job as it was accepted, if the saga log has it.
    pub async fn job(&self, job_id: &str) -> Result<Option<Job>, ApiError> {
        match self.recorded(job_id).await? {
            Recorded::Unknown => Ok(None),
            Recorded::Unreadable(reason) => Err(ApiError::SagaLog(reason)),
            Recorded::Job(_, job) => Ok(Some(*job)),
        }
    }

    pub async fn job_status(&self, job_id: &str) -> Result<JobStatus, ApiError> {
        let started = std::time::Instant::now();
        stats::JOB_STATUS_RPM.inc();
        let status = self.recorded_status(job_id).await;
        stats::JOB_STATUS_LATENCY.record(started.elapsed());
        status
    }

    async fn recorded_status(&self, job_id: &str) -> Result<JobStatus, ApiError> {
        let (state, job) = match self.recorded(job_id).await? {
            Recorded::Unknown => {
                return Ok(JobStatus {
                    id: job_id.to_string(),
                    state: JobState::NotStarted,
                    tasks: BTreeMap::new(),
                });
            }
            Recorded::Unreadable(reason) => return Ok(unreadable_status(job_id, reason)),
            Recorded::Job(state, job) => (state, job),
        };
        let aborted = state.is_saga_aborted();
        let decode = |data: Option<&[u8]>| data.and_then(wire::run_status_from_saga);
        let tasks = job
            .def
            .tasks
            .iter()
            .map(|t| {
                let id = &t.task_id;
                let entry = if state.is_task_completed(id) {
                    let done = if aborted {
                        JobState::RolledBack
                    } else {
                        JobState::Completed
                    };
                    (done, decode(state.end_task_data(id)))
                } else if state.is_task_started(id) {
                    let started = if aborted {
                        JobState::RollingBack
                    } else {
                        JobState::InProgress
                    };
                    (started, decode(state.start_task_data(id)))
                } else {
                    (JobState::NotStarted, None)
                };
                (id.clone(), entry)
            })
            .collect();
        let job_state = match (state.is_saga_completed(), aborted) {
            (true, true) => JobState::RolledBack,
            (true, false) => JobState::Completed,
            (false, _) => JobState::InProgress,
        };
        Ok(JobStatus {
            id: job_id.to_string(),
            state: job_state,
            tasks,
        })
    }

    /// Whether the scheduling loop holds the job (it is queued, running or being ended).
    pub async fn is_active(&self, job_id: &str) -> Result<bool, ApiError> {
        let id = job_id.to_string();
        self.ask(|tx| Request::IsActive(id, tx)).await
    }

    pub async fn kill_job(&self, job_id: &str) -> Result<JobStatus, ApiError> {
        let started = std::time::Instant::now();
        stats::JOB_KILL_RPM.inc();
        let killed = self.kill(job_id).await;
        stats::JOB_KILL_LATENCY.record(started.elapsed());
        killed
    }

    async fn kill(&self, job_id: &str) -> Result<JobStatus, ApiError> {
        let id = job_id.to_string();
        if let Err(refused) = self.ask(|tx| Request::Kill(id, tx)).await? {
            // The loop never holds a job whose definition is unreadable, yet the job exists and
            // is over, which is all a kill could achieve.
            return match self.recorded(job_id).await? {
                Recorded::Unreadable(reason) => Ok(unreadable_status(job_id, reason)),
                Recorded::Unknown | Recorded::Job(..) => Err(ApiError::Invalid(refused)),
            };
        }
        self.job_status(job_id).await
    }

    /// Whether the cluster's workers can run a task asking for `requirements`.
    pub async fn placement(&self, requirements: Requirements) -> Result<Placement, ApiError> {
        self.ask(|tx| Request::Placement(Box::new(requirements), tx))
            .await
    }

    pub async fn offline_worker(&self, node: &str) -> Result<(), ApiError> {
        let node = node.to_string();
        self.ask(|tx| Request::Offline(node, tx))
            .await?
            .map_err(ApiError::Invalid)
    }

    pub async fn reinstate_worker(&self, node: &str) -> Result<(), ApiError> {
        let node = node.to_string();
        self.ask(|tx| Request::Reinstate(node, tx))
            .await?
            .map_err(ApiError::Invalid)
    }

    /// Active and recently finished jobs and every worker, for the web pages.
    pub async fn overview(&self) -> Result<Overview, ApiError> {
        self.ask(Request::Overview).await
    }

    /// An active or recently finished job with the tasks `query` asks for; `None` when the
    /// loop knows no such job (it may still be in the saga log: see [`Self::job_status`]).
    pub async fn job_detail(&self, query: JobQuery) -> Result<Option<JobDetail>, ApiError> {
        self.ask(|tx| Request::Job(query, tx)).await
    }

    /// (tasks not yet finished, throttle)
    pub async fn scheduler_status(&self) -> Result<(i32, i32), ApiError> {
        self.ask(Request::Status).await
    }

    pub async fn set_throttle(&self, limit: i32) -> Result<(), ApiError> {
        self.ask(|tx| Request::SetThrottle(limit, tx))
            .await?
            .map_err(ApiError::Invalid)
    }

    pub async fn alg_config(&self) -> Result<ClassConfig, ApiError> {
        self.ask(Request::AlgConfig).await
    }

    pub async fn set_load_percents(&self, percents: BTreeMap<String, i32>) -> Result<(), ApiError> {
        self.ask(|tx| Request::SetLoadPercents(percents, tx))
            .await?
            .map_err(ApiError::Invalid)
    }

    pub async fn set_requestor_map(&self, map: BTreeMap<String, String>) -> Result<(), ApiError> {
        self.ask(|tx| Request::SetRequestorMap(map, tx))
            .await?
            .map_err(ApiError::Invalid)
    }

    pub async fn set_rebalance_minimum(&self, minutes: i32) -> Result<(), ApiError> {
        if minutes < 0 {
            return Err(ApiError::Invalid(format!(
                "invalid rebalance duration {minutes}: must be >= 0 minutes"
            )));
        }
        self.tell(Request::SetRebalanceMinimum(Duration::from_secs(
            minutes as u64 * 60,
        )))
        .await
    }

    pub async fn set_rebalance_threshold(&self, threshold: i32) -> Result<(), ApiError> {
        if threshold < 0 {
            return Err(ApiError::Invalid(format!(
                "invalid rebalance threshold {threshold}: must be >= 0"
            )));
        }
        self.tell(Request::SetRebalanceThreshold(threshold)).await
    }
}

#[cfg(test)]
mod tests {
    use scoot_core::{Command, RunState};

    use super::*;
    use crate::fake_worker::{FakeWorker, PATIENCE, Script, TestScheduler};
    use crate::job::TaskDefinition;

    fn one_task_job() -> JobDefinition {
        JobDefinition {
            tasks: vec![TaskDefinition {
                task_id: "t".into(),
                command: Command {
                    argv: vec!["sleep".into(), "1".into()],
                    ..Command::default()
                },
            }],
            tag: "tag".into(),
            requestor: "tester".into(),
            ..JobDefinition::default()
        }
    }

    #[tokio::test]
    async fn status_follows_a_job_through_its_saga() {
        let worker = FakeWorker::new("w");
        worker.script(Script::Hang);
        let mut sched = TestScheduler::start(std::slice::from_ref(&worker), 0).await;
        let api = sched.api.clone();
        let id = api.run_job(one_task_job()).await.unwrap();
        let recorded = api.job(&id).await.unwrap().expect("the job is recorded");
        assert_eq!(recorded, Job::with_id(id.clone(), one_task_job()));
        assert!(api.is_active(&id).await.unwrap());

        let status = tokio::time::timeout(PATIENCE, async {
            loop {
                let status = api.job_status(&id).await.unwrap();
                if status.tasks["t"].1.is_some() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the RUNNING status never reached the saga");
        assert_eq!(status.state, JobState::InProgress);
        let (state, run) = &status.tasks["t"];
        assert_eq!(*state, JobState::InProgress);
        let run = run.as_ref().unwrap();
        assert_eq!(run.state, RunState::Running);
        assert_eq!(run.stdout_ref, "fake://w/0/stdout");

        worker.finish(&RunId("0".into()), |s| {
            s.state = RunState::Complete;
            s.exit_code = 1;
        });
        sched.ended(&id).await;
        let status = api.job_status(&id).await.unwrap();
        assert_eq!(status.state, JobState::Completed);
        let (state, run) = &status.tasks["t"];
        assert_eq!(*state, JobState::Completed);
        assert_eq!(run.as_ref().map(|r| r.exit_code), Some(1));
    }

    #[tokio::test]
    async fn unknown_and_unreadable_jobs() {
        let sched = TestScheduler::start(&[], 0).await;
        let api = &sched.api;
        let unknown = api.job_status("nope").await.unwrap();
        assert_eq!(
            (unknown.state, unknown.tasks.len()),
            (JobState::NotStarted, 0)
        );
        match api.kill_job("nope").await {
            Err(ApiError::Invalid(message)) => assert!(message.contains("not found"), "{message}"),
            other => panic!("{other:?}"),
        }
        sched
            .sagas
            .make_saga("broken", b"not a job".to_vec())
            .await
            .unwrap();
        let broken = api.job_status("broken").await.unwrap();
        assert_eq!(broken.state, JobState::Completed);
        let (_, run) = &broken.tasks[UNREADABLE_JOB_TASK];
        let run = run.as_ref().unwrap();
        assert_eq!(run.state, RunState::Failed);
        assert!(run.error.contains("undecodable job"), "{}", run.error);
        assert_eq!(api.kill_job("broken").await.unwrap(), broken);
        assert!(matches!(api.job("broken").await, Err(ApiError::SagaLog(_))));
    }
}
