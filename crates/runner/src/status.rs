//! The status manager: the single record of every retained run's latest status and of the
//! runner's own service status, with blocking queries.
//!
//! Invariants: run ids are decimal counters from "0" per process; a final status never changes;
//! an update with empty stdout/stderr refs keeps the refs already known; at most `history` runs
//! are retained, the oldest finished ones evicted first.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use scoot_core::{LogTags, Query, RunId, RunStatus, ServiceStatus, Wait};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("unknown run id {0}")]
    UnknownRun(RunId),
    #[error("query aborted")]
    QueryAborted,
}

pub struct StatusManager {
    inner: Mutex<Inner>,
    /// Bumped on every change; blocking queries wait on it.
    changed: watch::Sender<u64>,
}

struct Inner {
    next_id: u64,
    history: usize,
    runs: VecDeque<RunStatus>,
    service: ServiceStatus,
}

impl StatusManager {
    /// A manager retaining at most `history` runs (at least one), starting uninitialised.
    pub fn new(history: usize) -> StatusManager {
        StatusManager {
            inner: Mutex::new(Inner {
                next_id: 0,
                history: history.max(1),
                runs: VecDeque::new(),
                service: ServiceStatus::default(),
            }),
            changed: watch::Sender::new(0),
        }
    }

    /// Allocates the next run id and records it as PENDING.
    pub fn new_run(&self, tags: LogTags) -> RunStatus {
        let status = {
            let mut inner = self.lock();
            let id = RunId(inner.next_id.to_string());
            inner.next_id += 1;
            let status = RunStatus::pending(id, tags);
            inner.runs.push_back(status.clone());
            inner.evict();
            status
        };
        self.notify();
        status
    }

    /// Records a new status for a known run. Updates to a run that already ended are ignored.
    pub fn update(&self, mut status: RunStatus) -> Result<(), StatusError> {
        {
            let mut inner = self.lock();
            let Some(old) = inner.runs.iter_mut().find(|r| r.run_id == status.run_id) else {
                return Err(StatusError::UnknownRun(status.run_id));
            };
            if old.state.is_done() {
                tracing::debug!(run_id = %status.run_id, state = %status.state, "ignoring update of a finished run");
                return Ok(());
            }
            if status.stdout_ref.is_empty() {
                status.stdout_ref = std::mem::take(&mut old.stdout_ref);
            }
            if status.stderr_ref.is_empty() {
                status.stderr_ref = std::mem::take(&mut old.stderr_ref);
            }
            *old = status;
            inner.evict();
        }
        self.notify();
        Ok(())
    }

    pub fn update_service(&self, service: ServiceStatus) {
        self.lock().service = service;
        self.notify();
    }

    pub fn service(&self) -> ServiceStatus {
        self.lock().service.clone()
    }

    /// The statuses matching `query` right now, oldest run first, and the service status.
    pub fn query_now(&self, query: &Query) -> (Vec<RunStatus>, ServiceStatus) {
        let inner = self.lock();
        let runs = inner
            .runs
            .iter()
            .filter(|r| query.matches(r))
            .cloned()
            .collect();
        (runs, inner.service.clone())
    }

    /// Like [`query_now`](Self::query_now), but waits up to `wait.timeout` for at least one match.
    /// A wait that times out returns no runs; one cancelled through `wait.abort` is an error.
    pub async fn query(
        &self,
        query: &Query,
        wait: Wait,
    ) -> Result<(Vec<RunStatus>, ServiceStatus), StatusError> {
        let mut changes = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + wait.timeout;
        let abort = wait.abort.unwrap_or_default();
        loop {
            changes.borrow_and_update();
            let (runs, service) = self.query_now(query);
            if !runs.is_empty() {
                return Ok((runs, service));
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok((Vec::new(), service)),
                _ = abort.cancelled() => return Err(StatusError::QueryAborted),
            }
        }
    }

    fn notify(&self) {
        self.changed.send_modify(|generation| *generation += 1);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn evict(&mut self) {
        while self.runs.len() > self.history {
            match self.runs.iter().position(|r| r.state.is_done()) {
                Some(oldest_done) => {
                    self.runs.remove(oldest_done);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use scoot_core::{RunState, StateMask};
    use tokio_util::sync::CancellationToken;

    use super::*;

    fn ready() -> StatusManager {
        let statuses = StatusManager::new(10);
        statuses.update_service(ServiceStatus::ready());
        statuses
    }

    #[test]
    fn run_ids_count_from_zero() {
        let statuses = ready();
        let ids: Vec<String> = (0..3)
            .map(|_| statuses.new_run(LogTags::default()).run_id.0)
            .collect();
        assert_eq!(ids, vec!["0", "1", "2"]);
    }

    #[test]
    fn finished_statuses_are_immutable() {
        let statuses = ready();
        let run = statuses.new_run(LogTags::default());
        let done = RunStatus::complete(run.run_id.clone(), 3, LogTags::default());
        statuses.update(done.clone()).unwrap();
        statuses
            .update(RunStatus::aborted(run.run_id.clone(), LogTags::default()))
            .unwrap();
        let (runs, _) = statuses.query_now(&Query::all());
        assert_eq!(runs, vec![done]);
    }

    #[test]
    fn empty_refs_keep_known_refs() {
        let statuses = ready();
        let id = statuses.new_run(LogTags::default()).run_id;
        let tags = LogTags::default();
        statuses
            .update(RunStatus::running(
                id.clone(),
                "out".into(),
                "err".into(),
                tags.clone(),
            ))
            .unwrap();
        statuses.update(RunStatus::complete(id, 0, tags)).unwrap();
        let (runs, _) = statuses.query_now(&Query::all());
        assert_eq!(
            (runs[0].stdout_ref.as_str(), runs[0].stderr_ref.as_str()),
            ("out", "err")
        );
    }

    #[test]
    fn unknown_runs_are_rejected() {
        let statuses = ready();
        let err = statuses.update(RunStatus::aborted(RunId::from("9"), LogTags::default()));
        assert_eq!(err, Err(StatusError::UnknownRun(RunId::from("9"))));
    }

    #[test]
    fn history_evicts_oldest_finished_runs_only() {
        let statuses = StatusManager::new(1);
        let first = statuses.new_run(LogTags::default()).run_id;
        let second = statuses.new_run(LogTags::default()).run_id;
        // Neither has finished, so both are kept.
        assert_eq!(statuses.query_now(&Query::all()).0.len(), 2);
        statuses
            .update(RunStatus::complete(first, 0, LogTags::default()))
            .unwrap();
        let (runs, _) = statuses.query_now(&Query::all());
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].run_id, second);
    }

    #[tokio::test(start_paused = true)]
    async fn query_waits_for_a_match() {
        let statuses = Arc::new(ready());
        let id = statuses.new_run(LogTags::default()).run_id;
        let waiter = {
            let statuses = statuses.clone();
            let id = id.clone();
            tokio::spawn(async move {
                statuses
                    .query(
                        &Query::run(id, StateMask::DONE),
                        Wait::up_to(Duration::from_secs(60)),
                    )
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        statuses
            .update(RunStatus::complete(id, 0, LogTags::default()))
            .unwrap();
        let (runs, _) = waiter.await.unwrap().unwrap();
        assert_eq!(runs[0].state, RunState::Complete);
    }

    #[tokio::test(start_paused = true)]
    async fn query_times_out_empty_and_can_be_aborted() {
        let statuses = ready();
        let id = statuses.new_run(LogTags::default()).run_id;
        let done = Query::run(id, StateMask::DONE);
        let (runs, _) = statuses
            .query(&done, Wait::up_to(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(runs.is_empty());

        let abort = CancellationToken::new();
        abort.cancel();
        let wait = Wait {
            timeout: Duration::from_secs(5),
            abort: Some(abort),
        };
        assert_eq!(
            statuses.query(&done, wait).await,
            Err(StatusError::QueryAborted)
        );
    }
}
