//! Scoot's load-based scheduling algorithm, as a pure function of its inputs.
//!
//! Every job belongs to a *class* (picked from the job's requestor by a table of regular
//! expressions) and every class is given a share of the workers in percent. Each scheduling step
//! the algorithm decides which waiting tasks to start on the idle workers so that the number of
//! running tasks per class approaches those shares:
//!
//! 1. **Entitlement**: classes below their target (share × workers) and with waiting tasks get the
//!    idle workers first, in proportion to how far below target they are.
//! 2. **Loans**: workers a class cannot use (it has nothing waiting) are lent to the classes that
//!    still have waiting tasks, in proportion to their configured shares, taking into account how
//!    many workers each class already borrows.
//! 3. **Fill**: rounding leftovers go to any class that still has work, so a worker is never left
//!    idle while a schedulable task waits.
//!
//! Within a class, tasks are taken round-robin across its jobs, starting with the jobs that have
//! the fewest running tasks.
//!
//! Optionally (off by default), when the running tasks drift far from the shares for long enough,
//! the most recently started tasks of over-target classes are stopped and their workers handed to
//! under-target classes ("rebalancing").
//!
//! The crate does no I/O, reads no clock and starts no threads: the caller passes the current
//! (monotonic) time and a snapshot of workers and jobs, and gets back a [`Decision`].
//!
//! ```
//! use std::time::Duration;
//! use scoot_sched_alg::{JobView, LoadBasedAlg};
//!
//! let mut alg = LoadBasedAlg::default();
//! let jobs = vec![JobView {
//!     job_id: "job1".into(),
//!     requestor: "diff-bot".into(),
//!     waiting_count: 3,
//!     waiting: vec!["t1".into(), "t2".into(), "t3".into()],
//!     running_count: 0,
//!     running: vec![],
//! }];
//! // 4 workers, 2 of them idle.
//! let decision = alg.schedule(Duration::from_secs(10), 4, 2, &jobs);
//! assert_eq!(decision.start.len(), 2);
//! assert_eq!(alg.class_of("diff-bot").as_deref(), Some("diff"));
//! ```

mod alg;
mod config;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

pub use config::{
    ClassConfig, ConfigError, DEFAULT_LOAD_PERCENTS, DEFAULT_REBALANCE_MIN_DURATION,
    DEFAULT_REBALANCE_THRESHOLD, DEFAULT_REQUESTOR_TO_CLASS,
};

use config::{RequestorMatcher, normalise_percents, order_by_desc_percent};

/// Identifies a job.
pub type JobId = String;
/// Identifies a task within its job.
pub type TaskId = String;

/// A task that is currently running, with the time it was started on the caller's monotonic clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningTask {
    pub task_id: TaskId,
    pub started_at: Duration,
}

/// What the algorithm needs to know about one unfinished job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobView {
    pub job_id: JobId,
    pub requestor: String,
    /// How many of the job's tasks have not started.
    pub waiting_count: usize,
    /// The first of those tasks in the order they should be started (the caller sorts them,
    /// e.g. longest average duration first). No step starts more tasks than there are idle
    /// workers, so the caller need not list more than that: a job of 100,000 waiting tasks
    /// costs a step no more than one of a few.
    pub waiting: Vec<TaskId>,
    /// How many of the job's tasks are running.
    pub running_count: usize,
    /// Those tasks; needed only when rebalancing is enabled (it picks which ones to stop), so a
    /// caller may leave it empty otherwise.
    pub running: Vec<RunningTask>,
}

/// The outcome of one scheduling step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Tasks to start, grouped by class (descending percent), in pick order within a class.
    pub start: Vec<(JobId, TaskId)>,
    /// Running tasks to stop (only when rebalancing), most recently started first per class.
    pub stop: Vec<(JobId, TaskId)>,
}

/// Per-class figures from the most recent [`LoadBasedAlg::schedule`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassStats {
    pub class: String,
    /// Number of workers the class is entitled to (its share of all workers).
    pub target: usize,
    /// Tasks of the class that were running when the step began.
    pub running: usize,
    /// Tasks of the class still waiting after this step's starts.
    pub waiting: usize,
    /// Tasks of the class this step starts.
    pub starting: usize,
    /// Tasks of the class this step stops.
    pub stopping: usize,
    /// The class's configured (normalised) percent.
    pub target_pct: i32,
    /// Percent of all workers the class will occupy once this step's starts and stops are done,
    /// rounded to the nearest integer (0 when there are no workers).
    pub actual_pct: i32,
}

/// The load-based scheduling algorithm together with its configuration and the little state it
/// carries between steps (when the rebalance threshold was first exceeded, and the last stats).
#[derive(Debug, Clone)]
pub struct LoadBasedAlg {
    config: ClassConfig,
    /// Class names by descending percent (ties by name); index 0 is the "largest" class.
    order: Vec<String>,
    matcher: RequestorMatcher,
    /// Caller time at which the spread was first seen above the threshold (None: not exceeded).
    exceeded_since: Option<Duration>,
    last_stats: Vec<ClassStats>,
}

impl Default for LoadBasedAlg {
    fn default() -> Self {
        Self::new(ClassConfig::default()).expect("the built-in default configuration is valid")
    }
}

impl LoadBasedAlg {
    /// Builds the algorithm from `config`, normalising its percents to add up to 100.
    ///
    /// Fails on an empty percent map, a negative percent, all-zero percents, or a requestor key
    /// that is not a valid regular expression.
    pub fn new(config: ClassConfig) -> Result<Self, ConfigError> {
        let load_percents = normalise_percents(&config.load_percents)?;
        let matcher = RequestorMatcher::compile(&config.requestor_to_class)?;
        let order = order_by_desc_percent(&load_percents);
        Ok(LoadBasedAlg {
            config: ClassConfig {
                load_percents,
                ..config
            },
            order,
            matcher,
            exceeded_since: None,
            last_stats: Vec::new(),
        })
    }

    /// The configuration in force (percents already normalised).
    pub fn config(&self) -> &ClassConfig {
        &self.config
    }

    /// A copy of the (normalised) class percents.
    pub fn load_percents(&self) -> BTreeMap<String, i32> {
        self.config.load_percents.clone()
    }

    /// A copy of the requestor expression → class map.
    pub fn requestor_map(&self) -> BTreeMap<String, String> {
        self.config.requestor_to_class.clone()
    }

    /// Class names by descending percent (ties by name).
    pub fn classes_by_desc_percent(&self) -> &[String] {
        &self.order
    }

    /// Replaces the class percents. When they do not add up to 100 they are scaled: every class
    /// but the largest gets `floor(p * 100 / sum)` and the largest gets the rest. On error the old
    /// percents stay.
    pub fn set_load_percents(
        &mut self,
        percents: BTreeMap<String, i32>,
    ) -> Result<(), ConfigError> {
        let normalised = normalise_percents(&percents)?;
        self.order = order_by_desc_percent(&normalised);
        self.config.load_percents = normalised;
        Ok(())
    }

    /// Replaces the requestor expression → class map. Every key must compile as a regular
    /// expression; on error the old map stays.
    pub fn set_requestor_map(&mut self, map: BTreeMap<String, String>) -> Result<(), ConfigError> {
        self.matcher = RequestorMatcher::compile(&map)?;
        self.config.requestor_to_class = map;
        Ok(())
    }

    /// Sets how long the spread must stay above the threshold before rebalancing (0 disables).
    pub fn set_rebalance_min_duration(&mut self, d: Duration) {
        self.config.rebalance_min_duration = d;
    }

    /// Sets the spread threshold in percentage points (0 or less disables rebalancing).
    pub fn set_rebalance_threshold(&mut self, threshold: i32) {
        self.config.rebalance_threshold = threshold;
    }

    /// True when both rebalancing knobs are positive (rebalancing may stop tasks).
    pub fn rebalancing_enabled(&self) -> bool {
        self.config.rebalancing_enabled()
    }

    /// The caller time at which the spread was first seen above the threshold, if it still is.
    pub fn rebalance_exceeded_since(&self) -> Option<Duration> {
        self.exceeded_since
    }

    /// The class a requestor's jobs are scheduled under, or `None` when that class has 0 % (its
    /// jobs are ignored). Requestors that match no pattern, or match a class without a percent,
    /// fall into the class with the smallest percent.
    pub fn class_of(&self, requestor: &str) -> Option<String> {
        let idx = self.class_index(requestor);
        let name = &self.order[idx];
        (self.config.load_percents[name] > 0).then(|| name.clone())
    }

    /// Index (into `order`) of the class used for `requestor`.
    fn class_index(&self, requestor: &str) -> usize {
        self.matcher
            .class_for(requestor)
            .and_then(|class| self.order.iter().position(|c| c == class))
            .unwrap_or_else(|| self.smallest_class_index())
    }

    /// The class with the smallest percent; among equals, the first by name.
    fn smallest_class_index(&self) -> usize {
        let pct = |i: usize| self.config.load_percents[&self.order[i]];
        let last = self.order.len() - 1;
        let smallest = pct(last);
        // `order` is by descending percent then ascending name, so the equal-smallest classes
        // form a suffix and the first of that suffix has the smallest name.
        (0..=last).find(|&i| pct(i) == smallest).unwrap_or(last)
    }

    /// Per-class figures from the last [`schedule`](Self::schedule) call, in descending-percent
    /// order (empty before the first call).
    pub fn last_stats(&self) -> &[ClassStats] {
        &self.last_stats
    }

    /// Runs one scheduling step.
    ///
    /// * `now` — the caller's monotonic time; only used to time the rebalance threshold.
    /// * `num_workers` — healthy workers, busy ones included.
    /// * `num_idle` — healthy workers free to take a task (clamped to `num_workers`).
    /// * `jobs` — the unfinished jobs, oldest first.
    ///
    /// Never starts more tasks than idle workers plus tasks stopped in the same step, and never
    /// names a `(job, task)` pair twice.
    pub fn schedule(
        &mut self,
        now: Duration,
        num_workers: usize,
        num_idle: usize,
        jobs: &[JobView],
    ) -> Decision {
        alg::schedule(self, now, num_workers, num_idle, jobs)
    }
}
