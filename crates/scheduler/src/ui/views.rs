//! What each page's template gets: rows of plain text built from the loop's snapshots
//! ([`crate::overview`]), filtered and paged here, in the HTTP handler, not in the loop.

use std::time::SystemTime;

use scoot_core::RunState;
use serde::Serialize;

use super::format::{self, encode};
use super::paging::{self, PAGE_SIZE, Pager};
use crate::overview::{
    JobDetail, JobPhase, JobSummary, Overview, TaskPhase, TaskView, WorkerHealth, WorkerView,
};

/// Which jobs the jobs page lists (`?status=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    All,
    Active,
    Finished,
    Phase(JobPhase),
}

/// Every `?status=` value, in the order the page offers them.
pub const STATUSES: [&str; 9] = [
    "",
    "active",
    "finished",
    "waiting",
    "running",
    "killing",
    "succeeded",
    "failed",
    "killed",
];

const PHASES: [JobPhase; 6] = [
    JobPhase::Waiting,
    JobPhase::Running,
    JobPhase::Killing,
    JobPhase::Succeeded,
    JobPhase::Failed,
    JobPhase::Killed,
];

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown status {0:?}: use one of active, finished, waiting, running, killing, succeeded, failed, killed"
)]
pub struct UnknownStatus(pub String);

impl StatusFilter {
    pub fn parse(raw: Option<&str>) -> Result<StatusFilter, UnknownStatus> {
        match raw.unwrap_or("").trim() {
            "" | "all" => Ok(StatusFilter::All),
            "active" => Ok(StatusFilter::Active),
            "finished" => Ok(StatusFilter::Finished),
            other => PHASES
                .into_iter()
                .find(|p| p.name() == other)
                .map(StatusFilter::Phase)
                .ok_or_else(|| UnknownStatus(other.chars().take(40).collect())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            StatusFilter::All => "",
            StatusFilter::Active => "active",
            StatusFilter::Finished => "finished",
            StatusFilter::Phase(phase) => phase.name(),
        }
    }

    pub fn matches(self, phase: JobPhase) -> bool {
        match self {
            StatusFilter::All => true,
            StatusFilter::Active => phase.is_active(),
            StatusFilter::Finished => !phase.is_active(),
            StatusFilter::Phase(wanted) => phase == wanted,
        }
    }
}

/// The jobs page's filters: a status, and a requestor to match exactly (empty: any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFilter {
    pub status: StatusFilter,
    pub requestor: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobRow {
    pub id: String,
    pub url: String,
    pub tag: String,
    pub requestor: String,
    pub job_type: String,
    pub phase: &'static str,
    pub tasks: usize,
    pub done: usize,
    pub running: usize,
    pub waiting: usize,
    pub failed: usize,
    pub submitted: String,
    pub age: String,
    /// Since it was submitted, until it finished (or now).
    pub took: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct StatusChoice {
    pub value: &'static str,
    pub selected: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct JobsView {
    pub rows: Vec<JobRow>,
    pub pager: Pager,
    pub status: &'static str,
    pub requestor: String,
    pub statuses: Vec<StatusChoice>,
    pub active: usize,
    pub remembered: usize,
}

pub fn job_url(id: &str) -> String {
    format!("/ui/jobs/{}", encode(id))
}

fn job_row(job: &JobSummary, now: SystemTime) -> JobRow {
    JobRow {
        id: job.id.clone(),
        url: job_url(&job.id),
        tag: job.tag.clone(),
        requestor: job.requestor.clone(),
        job_type: job.job_type.clone(),
        phase: job.phase.name(),
        tasks: job.tasks,
        done: job.done,
        running: job.running,
        waiting: job.waiting,
        failed: job.failed,
        submitted: format::timestamp(job.submitted),
        age: format::duration(format::between(job.submitted, now)),
        took: format::duration(format::between(job.submitted, job.finished.unwrap_or(now))),
    }
}

/// Page `page` of the jobs that pass `filter`, newest first.
pub fn jobs(overview: &Overview, filter: &JobFilter, page: u64) -> JobsView {
    let mut matching: Vec<&JobSummary> = overview
        .jobs
        .iter()
        .map(|job| job.as_ref())
        .filter(|job| filter.status.matches(job.phase))
        .filter(|job| filter.requestor.is_empty() || job.requestor == filter.requestor)
        .collect();
    matching.sort_by(|a, b| b.submitted.cmp(&a.submitted).then_with(|| a.id.cmp(&b.id)));
    let total = matching.len();
    let range = paging::rows(page, PAGE_SIZE);
    let rows = matching
        .into_iter()
        .skip(range.start)
        .take(PAGE_SIZE)
        .map(|job| job_row(job, overview.taken))
        .collect();
    let status = filter.status.name();
    let keep = [("status", status), ("requestor", filter.requestor.as_str())];
    let active = overview.jobs.iter().filter(|j| j.phase.is_active()).count();
    JobsView {
        rows,
        pager: Pager::new("/ui/", &keep, page, total),
        status,
        requestor: filter.requestor.clone(),
        statuses: STATUSES
            .iter()
            .map(|value| StatusChoice {
                value,
                selected: *value == status,
            })
            .collect(),
        active,
        remembered: overview.jobs.len() - active,
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskRow {
    pub task_id: String,
    pub argv: String,
    pub state: String,
    /// `ok`, `bad`, `running` or `waiting`: how the state is coloured.
    pub class: &'static str,
    pub node: String,
    pub attempts: u32,
    pub exit_code: Option<i32>,
    pub started: String,
    pub took: String,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub error: String,
    /// Why the latest attempt is being retried.
    pub retried: String,
}

fn task_row(task: &TaskView, now: SystemTime) -> TaskRow {
    let run = &task.run;
    let outcome = run.outcome.as_ref();
    let (state, class) = match (task.phase, outcome) {
        (TaskPhase::Waiting, _) => ("waiting".to_string(), "waiting"),
        (TaskPhase::Running, _) => ("running".to_string(), "running"),
        (TaskPhase::Ending, _) => ("ending".to_string(), "bad"),
        (TaskPhase::Done, Some(o)) if o.succeeded() => ("complete".to_string(), "ok"),
        (TaskPhase::Done, Some(o)) => (o.state.to_string().to_ascii_lowercase(), "bad"),
        // Ended before this scheduler started: only the saga log knows how.
        (TaskPhase::Done, None) => ("done".to_string(), "ok"),
    };
    let exit_code = outcome.and_then(|o| match o.state {
        RunState::Complete => Some(o.exit_code),
        RunState::Failed if o.exit_code != 0 => Some(o.exit_code),
        _ => None,
    });
    let took = match (run.started, task.phase) {
        (Some(started), TaskPhase::Running) => format::between(started, now),
        (Some(started), _) => format::between(started, run.ended.unwrap_or(started)),
        (None, _) => Default::default(),
    };
    TaskRow {
        task_id: task.task_id.clone(),
        argv: task.argv.clone(),
        state,
        class,
        node: run.node.clone().unwrap_or_default(),
        attempts: task.attempts,
        exit_code,
        started: run.started.map(format::timestamp).unwrap_or_default(),
        took: run
            .started
            .map(|_| format::duration(took))
            .unwrap_or_default(),
        stdout: format::http_link(&run.stdout),
        stderr: format::http_link(&run.stderr),
        error: outcome.map(|o| o.error.clone()).unwrap_or_default(),
        retried: run.retried.clone().unwrap_or_default(),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct JobView {
    pub job: JobRow,
    pub basis: String,
    pub priority: i32,
    pub finished: String,
    pub tasks: Vec<TaskRow>,
    pub pager: Pager,
}

/// A job's page: its summary and page `page` of its tasks (which `detail` holds).
pub fn job(detail: &JobDetail, page: u64) -> JobView {
    let summary = &detail.summary;
    JobView {
        job: job_row(summary, detail.taken),
        basis: summary.basis.clone(),
        priority: summary.priority,
        finished: summary.finished.map(format::timestamp).unwrap_or_default(),
        tasks: detail
            .tasks
            .iter()
            .map(|t| task_row(t, detail.taken))
            .collect(),
        pager: Pager::new(&job_url(&summary.id), &[], page, summary.tasks),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunningTask {
    pub job_id: String,
    pub task_id: String,
    pub url: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkerRow {
    pub id: String,
    pub state: &'static str,
    pub class: &'static str,
    /// Why it is not ready, or how long it has been lost.
    pub detail: String,
    pub running: Option<RunningTask>,
    pub platform: String,
    /// Where its offline or reinstate button posts, when it has one.
    pub offline_url: Option<String>,
    pub reinstate_url: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkersView {
    pub rows: Vec<WorkerRow>,
    pub ready: usize,
    pub busy: usize,
}

fn worker_row(worker: &WorkerView) -> WorkerRow {
    let lost = matches!(worker.health, WorkerHealth::Lost(_));
    let (state, class, detail) = match (&worker.health, worker.offline, &worker.running) {
        (_, true, _) => ("offline", "waiting", String::new()),
        (WorkerHealth::Lost(since), _, _) => (
            "lost",
            "bad",
            format!("unlisted for {}", format::duration(*since)),
        ),
        (WorkerHealth::Checking(problem), _, _) => (
            "checking",
            "bad",
            problem.clone().unwrap_or_else(|| "being checked".into()),
        ),
        (WorkerHealth::Ready, _, Some(_)) => ("running", "running", String::new()),
        (WorkerHealth::Ready, _, None) => ("ready", "ok", String::new()),
    };
    let admin = |action: &str| format!("/admin/workers/{}/{action}", encode(&worker.id));
    WorkerRow {
        id: worker.id.clone(),
        state,
        class,
        detail,
        running: worker
            .running
            .as_ref()
            .map(|(job_id, task_id)| RunningTask {
                job_id: job_id.clone(),
                task_id: task_id.clone(),
                url: job_url(job_id),
            }),
        platform: worker.platform.join(", "),
        // The scheduler refuses to offline a lost worker: no button that can only fail.
        offline_url: (!worker.offline && !lost).then(|| admin("offline")),
        reinstate_url: worker.offline.then(|| admin("reinstate")),
    }
}

pub fn workers(overview: &Overview) -> WorkersView {
    let rows: Vec<WorkerRow> = overview.workers.iter().map(worker_row).collect();
    WorkersView {
        ready: rows
            .iter()
            .filter(|r| matches!(r.state, "ready" | "running"))
            .count(),
        busy: rows.iter().filter(|r| r.running.is_some()).count(),
        rows,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::overview::{RunRecord, TaskOutcome};

    fn summary(id: &str, requestor: &str, phase: JobPhase, age_secs: u64) -> Arc<JobSummary> {
        Arc::new(JobSummary {
            id: id.into(),
            tag: format!("tag-{id}"),
            basis: String::new(),
            requestor: requestor.into(),
            job_type: String::new(),
            priority: 0,
            phase,
            submitted: SystemTime::UNIX_EPOCH + Duration::from_secs(1000 - age_secs),
            finished: None,
            tasks: 1,
            waiting: 0,
            running: 1,
            done: 0,
            failed: 0,
        })
    }

    fn overview(jobs: Vec<Arc<JobSummary>>) -> Overview {
        Overview {
            jobs,
            workers: Vec::new(),
            taken: SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
        }
    }

    fn all() -> JobFilter {
        JobFilter {
            status: StatusFilter::All,
            requestor: String::new(),
        }
    }

    #[test]
    fn jobs_are_newest_first_filtered_and_paged() {
        let mut list: Vec<Arc<JobSummary>> = (0..120)
            .map(|i| summary(&format!("j{i:03}"), "alice", JobPhase::Succeeded, i))
            .collect();
        list.push(summary("bob-running", "bob", JobPhase::Running, 500));
        let overview = overview(list);
        let first = jobs(&overview, &all(), 1);
        assert_eq!(first.rows.len(), PAGE_SIZE);
        assert_eq!(first.rows[0].id, "j000", "not newest first");
        assert_eq!(first.pager.total, 121);
        assert_eq!(first.pager.last, 3);
        assert_eq!((first.active, first.remembered), (1, 120));
        let last = jobs(&overview, &all(), 3);
        assert_eq!(last.rows.len(), 21);
        assert_eq!(last.rows[20].id, "bob-running");
        // A page far past the end is empty, not an error.
        let beyond = jobs(&overview, &all(), u64::MAX);
        assert!(beyond.rows.is_empty());

        let running = JobFilter {
            status: StatusFilter::parse(Some("active")).unwrap(),
            requestor: String::new(),
        };
        let ids: Vec<String> = jobs(&overview, &running, 1)
            .rows
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["bob-running"]);
        let bobs = JobFilter {
            status: StatusFilter::All,
            requestor: "bob".into(),
        };
        let view = jobs(&overview, &bobs, 1);
        assert_eq!(view.rows.len(), 1);
        assert_eq!(view.pager.total, 1);
        assert_eq!(view.requestor, "bob");
        let alice_failed = JobFilter {
            status: StatusFilter::parse(Some("failed")).unwrap(),
            requestor: "alice".into(),
        };
        assert!(jobs(&overview, &alice_failed, 1).rows.is_empty());
    }

    #[test]
    fn status_filters_parse_every_offered_value_and_nothing_else() {
        for value in STATUSES {
            assert_eq!(StatusFilter::parse(Some(value)).unwrap().name(), value);
        }
        assert_eq!(StatusFilter::parse(None), Ok(StatusFilter::All));
        assert!(StatusFilter::parse(Some("<b>")).is_err());
        assert!(StatusFilter::Finished.matches(JobPhase::Killed));
        assert!(!StatusFilter::Finished.matches(JobPhase::Killing));
    }

    #[test]
    fn task_rows_say_how_each_task_ended() {
        let at = SystemTime::UNIX_EPOCH;
        let done = |state, exit_code| TaskView {
            task_id: "t".into(),
            argv: "sh -c x".into(),
            phase: TaskPhase::Done,
            attempts: 1,
            run: RunRecord {
                node: Some("w:1".into()),
                started: Some(at),
                ended: Some(at + Duration::from_millis(1500)),
                outcome: Some(TaskOutcome {
                    state,
                    exit_code,
                    error: String::new(),
                }),
                stdout: "http://w:2/output/0-stdout".into(),
                stderr: "javascript:alert(1)".into(),
                retried: None,
            },
        };
        let ok = task_row(&done(RunState::Complete, 0), at);
        assert_eq!(
            (ok.state.as_str(), ok.class, ok.exit_code),
            ("complete", "ok", Some(0))
        );
        assert_eq!(ok.took, "1.5s");
        assert_eq!(ok.stdout.as_deref(), Some("http://w:2/output/0-stdout"));
        assert_eq!(ok.stderr, None, "a non-http URI became a link");
        let exit_3 = task_row(&done(RunState::Complete, 3), at);
        assert_eq!(
            (exit_3.state.as_str(), exit_3.class, exit_3.exit_code),
            ("complete", "bad", Some(3))
        );
        let timed_out = task_row(&done(RunState::TimedOut, 0), at);
        assert_eq!(
            (timed_out.state.as_str(), timed_out.exit_code),
            ("timedout", None)
        );
    }

    #[test]
    fn workers_get_the_buttons_their_state_allows() {
        let worker = |health, offline, running: Option<(&str, &str)>| WorkerView {
            id: "127.0.0.1:10101".into(),
            health,
            offline,
            running: running.map(|(j, t)| (j.to_string(), t.to_string())),
            platform: vec!["sandbox=none".into()],
        };
        let ready = worker_row(&worker(WorkerHealth::Ready, false, None));
        assert_eq!(ready.state, "ready");
        assert_eq!(
            ready.offline_url.as_deref(),
            Some("/admin/workers/127.0.0.1%3A10101/offline")
        );
        assert_eq!(ready.reinstate_url, None);
        let busy = worker_row(&worker(WorkerHealth::Ready, false, Some(("j", "t"))));
        assert_eq!(busy.state, "running");
        assert_eq!(busy.running.map(|r| r.url), Some("/ui/jobs/j".to_string()));
        let offline = worker_row(&worker(WorkerHealth::Ready, true, None));
        assert_eq!((offline.state, offline.offline_url), ("offline", None));
        assert!(offline.reinstate_url.is_some());
        let lost = worker_row(&worker(
            WorkerHealth::Lost(Duration::from_secs(5)),
            false,
            None,
        ));
        assert_eq!((lost.state, lost.offline_url), ("lost", None));
        let sick = worker_row(&worker(
            WorkerHealth::Checking(Some("unhealthy: disk".into())),
            false,
            None,
        ));
        assert_eq!(
            (sick.state, sick.detail.as_str()),
            ("checking", "unhealthy: disk")
        );
    }
}
