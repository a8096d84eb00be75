//! What the scheduler's web pages ([`crate::ui`]) show of jobs and workers, as the scheduling
//! loop hands it out ([`crate::event_loop::Request::Overview`] and `Request::Job`).
//!
//! The loop owns the live state, so it answers these requests itself; to keep each answer short
//! it does no formatting and clones little: a job's summary is a handful of counts, a finished
//! job is shared behind an `Arc`, and a job page asks only for the tasks it shows. Finished jobs
//! are remembered in memory, a bounded number of them ([`FinishedJobs`]), with their tasks' final
//! statuses: the pages never read the saga log (`scootcl get_job_status` does, for older jobs).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use scoot_core::{RunState, RunStatus};

/// Finished jobs kept for the pages; older ones are forgotten first.
pub const FINISHED_JOBS_KEPT: usize = 1000;
/// Tasks of finished jobs kept in all, so that a few huge jobs cannot hold unbounded memory
/// (the newest finished job is always kept whole).
pub const FINISHED_TASKS_KEPT: usize = 100_000;
/// Longest text (an error, a command line) kept for display; workers and clients choose these.
pub const MAX_TEXT_BYTES: usize = 1024;

/// Where a job is in its life, as the pages filter and colour it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobPhase {
    /// Accepted; none of its tasks has started.
    Waiting,
    /// Some task has started or ended; others are not done.
    Running,
    /// Killed; its running tasks are being stopped.
    Killing,
    /// Every task completed with exit code 0.
    Succeeded,
    /// Over, and some task did not complete with exit code 0.
    Failed,
    /// Over after a kill.
    Killed,
}

impl JobPhase {
    pub fn name(self) -> &'static str {
        match self {
            JobPhase::Waiting => "waiting",
            JobPhase::Running => "running",
            JobPhase::Killing => "killing",
            JobPhase::Succeeded => "succeeded",
            JobPhase::Failed => "failed",
            JobPhase::Killed => "killed",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobPhase::Waiting | JobPhase::Running | JobPhase::Killing
        )
    }
}

/// One job, without its tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSummary {
    pub id: String,
    pub tag: String,
    pub basis: String,
    pub requestor: String,
    pub job_type: String,
    pub priority: i32,
    pub phase: JobPhase,
    /// When this scheduler accepted it (or recovered it from the saga log after a restart).
    pub submitted: SystemTime,
    pub finished: Option<SystemTime>,
    pub tasks: usize,
    pub waiting: usize,
    pub running: usize,
    pub done: usize,
    /// Done tasks that did not complete with exit code 0.
    pub failed: usize,
}

/// How a task's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskOutcome {
    pub state: RunState,
    pub exit_code: i32,
    /// Bounded to [`MAX_TEXT_BYTES`].
    pub error: String,
}

impl TaskOutcome {
    pub fn succeeded(&self) -> bool {
        self.state == RunState::Complete && self.exit_code == 0
    }
}

/// What the loop remembers of a task's latest attempt, for the pages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunRecord {
    pub node: Option<String>,
    pub started: Option<SystemTime>,
    pub ended: Option<SystemTime>,
    pub outcome: Option<TaskOutcome>,
    /// Output URIs the worker reported (empty until it did).
    pub stdout: String,
    pub stderr: String,
    /// Why the latest attempt failed when the task was put back to wait for another.
    pub retried: Option<String>,
}

impl RunRecord {
    /// An attempt starts on `node`.
    pub fn start(&mut self, node: &str, at: SystemTime) {
        *self = RunRecord {
            node: Some(node.to_string()),
            started: Some(at),
            retried: self.retried.take(),
            ..RunRecord::default()
        };
    }

    /// The worker reported the run RUNNING with its output URIs.
    pub fn running(&mut self, status: &RunStatus) {
        self.outputs(status);
    }

    /// The task ended with `status` (an attempt's, or the scheduler's for a task it ended).
    pub fn end(&mut self, status: &RunStatus, at: SystemTime) {
        self.outputs(status);
        self.ended = Some(at);
        self.retried = None;
        self.outcome = Some(TaskOutcome {
            state: status.state,
            exit_code: status.exit_code,
            error: bounded(&status.error),
        });
    }

    /// The attempt failed and the task waits to run again.
    pub fn retry(&mut self, why: &str, at: SystemTime) {
        self.ended = Some(at);
        self.retried = Some(bounded(why));
    }

    fn outputs(&mut self, status: &RunStatus) {
        // Empty refs never erase known ones (an abort's status may lack them).
        if !status.stdout_ref.is_empty() {
            self.stdout = bounded(&status.stdout_ref);
        }
        if !status.stderr_ref.is_empty() {
            self.stderr = bounded(&status.stderr_ref);
        }
    }
}

/// Cuts `text` to [`MAX_TEXT_BYTES`] at a character boundary, marking the cut.
pub fn bounded(text: &str) -> String {
    if text.len() <= MAX_TEXT_BYTES {
        return text.to_string();
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Where a task is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskPhase {
    Waiting,
    Running,
    /// Being ended by the scheduler, no worker being able to run it.
    Ending,
    /// Ended; the outcome says how (none for tasks that ended before a scheduler restart).
    Done,
}

/// One task of a job, as a job page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskView {
    pub task_id: String,
    /// The command line, bounded to [`MAX_TEXT_BYTES`].
    pub argv: String,
    pub phase: TaskPhase,
    pub attempts: u32,
    pub run: RunRecord,
}

/// A finished job with its tasks, in definition order.
#[derive(Debug)]
pub struct FinishedJob {
    pub summary: Arc<JobSummary>,
    pub tasks: Vec<TaskView>,
}

/// The recently finished jobs, oldest first, bounded by [`FINISHED_JOBS_KEPT`] jobs and
/// [`FINISHED_TASKS_KEPT`] tasks.
#[derive(Debug)]
pub struct FinishedJobs {
    jobs: VecDeque<Arc<FinishedJob>>,
    tasks: usize,
    max_jobs: usize,
    max_tasks: usize,
}

impl Default for FinishedJobs {
    fn default() -> FinishedJobs {
        FinishedJobs::new(FINISHED_JOBS_KEPT, FINISHED_TASKS_KEPT)
    }
}

impl FinishedJobs {
    pub fn new(max_jobs: usize, max_tasks: usize) -> FinishedJobs {
        FinishedJobs {
            jobs: VecDeque::new(),
            tasks: 0,
            max_jobs: max_jobs.max(1),
            max_tasks,
        }
    }

    pub fn push(&mut self, job: FinishedJob) {
        self.tasks += job.tasks.len();
        self.jobs.push_back(Arc::new(job));
        while self.jobs.len() > self.max_jobs
            || (self.tasks > self.max_tasks && self.jobs.len() > 1)
        {
            if let Some(old) = self.jobs.pop_front() {
                self.tasks -= old.tasks.len();
            }
        }
    }

    pub fn get(&self, job_id: &str) -> Option<&Arc<FinishedJob>> {
        // Newest first: a page is most often about a job that just ended.
        self.jobs.iter().rev().find(|j| j.summary.id == job_id)
    }

    pub fn summaries(&self) -> impl Iterator<Item = &Arc<JobSummary>> {
        self.jobs.iter().map(|j| &j.summary)
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

/// A worker's condition, as the loop sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerHealth {
    /// Being checked before it gets work (new, reinstated, or suspected unhealthy); the last
    /// reason it was not ready, if it gave one.
    Checking(Option<String>),
    Ready,
    /// No longer listed, for this long.
    Lost(Duration),
}

/// One worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerView {
    /// `host:port`, as the admin actions name it.
    pub id: String,
    pub health: WorkerHealth,
    /// Taken out of service (OfflineWorker); its running task may finish.
    pub offline: bool,
    /// (job id, task id) of the task it runs.
    pub running: Option<(String, String)>,
    /// What it offered at its last readiness check.
    pub platform: Vec<String>,
}

/// Everything the jobs and workers pages need, at one instant.
#[derive(Clone, Debug)]
pub struct Overview {
    /// Active jobs and recently finished ones, in no particular order.
    pub jobs: Vec<Arc<JobSummary>>,
    pub workers: Vec<WorkerView>,
    pub taken: SystemTime,
}

/// Which tasks of a job a page asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobQuery {
    pub job_id: String,
    /// Task positions in definition order; clamped to the job's tasks.
    pub tasks: Range<usize>,
}

/// One job with some of its tasks.
#[derive(Clone, Debug)]
pub struct JobDetail {
    pub summary: Arc<JobSummary>,
    /// The tasks asked for, in definition order.
    pub tasks: Vec<TaskView>,
    pub taken: SystemTime,
}

/// `range` within `0..len`.
pub fn clamp(range: &Range<usize>, len: usize) -> Range<usize> {
    let start = range.start.min(len);
    start..range.end.clamp(start, len)
}

#[cfg(test)]
mod tests {
    use scoot_core::{LogTags, RunId};

    use super::*;

    fn finished(id: &str, tasks: usize) -> FinishedJob {
        let task = TaskView {
            task_id: "t".into(),
            argv: "true".into(),
            phase: TaskPhase::Done,
            attempts: 1,
            run: RunRecord::default(),
        };
        FinishedJob {
            summary: Arc::new(JobSummary {
                id: id.into(),
                tag: String::new(),
                basis: String::new(),
                requestor: String::new(),
                job_type: String::new(),
                priority: 0,
                phase: JobPhase::Succeeded,
                submitted: SystemTime::UNIX_EPOCH,
                finished: Some(SystemTime::UNIX_EPOCH),
                tasks,
                waiting: 0,
                running: 0,
                done: tasks,
                failed: 0,
            }),
            tasks: vec![task; tasks],
        }
    }

    #[test]
    fn finished_jobs_are_bounded_by_jobs_and_tasks() {
        let mut kept = FinishedJobs::new(3, 10);
        for id in ["a", "b", "c", "d"] {
            kept.push(finished(id, 2));
        }
        assert_eq!(kept.len(), 3);
        assert!(kept.get("a").is_none(), "the oldest job was kept");
        assert!(kept.get("d").is_some());
        // A job over the task bound pushes everything else out, but is kept itself.
        kept.push(finished("huge", 50));
        assert_eq!(kept.len(), 1);
        assert!(kept.get("huge").is_some());
        kept.push(finished("e", 1));
        let ids: Vec<&str> = kept.summaries().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["e"]);
    }

    #[test]
    fn a_run_record_follows_attempts_and_keeps_known_outputs() {
        let mut record = RunRecord::default();
        let at = SystemTime::UNIX_EPOCH;
        record.start("w1", at);
        let tags = LogTags::default();
        let running = RunStatus::running(
            RunId("0".into()),
            "http://w1/output/0-stdout".into(),
            "http://w1/output/0-stderr".into(),
            tags.clone(),
        );
        record.running(&running);
        record.retry("lost contact with the worker", at);
        assert_eq!(
            record.retried.as_deref(),
            Some("lost contact with the worker")
        );
        record.start("w2", at);
        assert_eq!(record.node.as_deref(), Some("w2"));
        assert_eq!(
            record.stdout, "",
            "outputs of the previous attempt were kept"
        );
        assert!(record.retried.is_some(), "why it was retried was forgotten");
        let mut aborted = RunStatus::aborted(RunId("1".into()), tags);
        aborted.error = "x".repeat(5000);
        record.running(&RunStatus {
            stdout_ref: "http://w2/output/1-stdout".into(),
            ..aborted.clone()
        });
        record.end(&aborted, at);
        let outcome = record.outcome.as_ref().unwrap();
        assert_eq!(outcome.state, RunState::Aborted);
        assert!(outcome.error.len() <= MAX_TEXT_BYTES + '…'.len_utf8());
        assert_eq!(record.stdout, "http://w2/output/1-stdout");
        assert_eq!(record.retried, None);
    }

    #[test]
    fn bounded_cuts_at_a_character_boundary() {
        let text = "é".repeat(MAX_TEXT_BYTES);
        let cut = bounded(&text);
        assert!(cut.ends_with('…'));
        assert!(cut.len() <= MAX_TEXT_BYTES + '…'.len_utf8());
        assert_eq!(bounded("short"), "short");
    }

    #[test]
    fn ranges_are_clamped() {
        assert_eq!(clamp(&(0..50), 3), 0..3);
        assert_eq!(clamp(&(100..150), 3), 3..3);
        assert_eq!(clamp(&(usize::MAX..usize::MAX), 0), 0..0);
    }
}
