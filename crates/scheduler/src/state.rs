//! In-memory state of the scheduling loop: jobs being run and the workers they run on. Owned by
//! the loop task alone, so it needs no locks.
//!
//! Platform matching: each task keeps what it asks of its worker ([`Requirements`], parsed
//! once from `Command::platform` when its job is added); each worker the platform it offered at
//! its last readiness check. [`pick_node`] only picks a worker that meets a task's requirements,
//! and [`placement`] says whether any worker of the cluster can run a task at all.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use scoot_core::PlatformProperty;
use scoot_reapi::Invalid;
use scoot_reapi::platform::{self, Requirements, SANDBOX, UNSANDBOXED};
use scoot_saga::Saga;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::job::Job;
use crate::overview::{
    self, FinishedJob, JobPhase, JobSummary, RunRecord, TaskPhase, TaskView, WorkerHealth,
    WorkerView,
};
use crate::task_runner::StopSignal;
use crate::worker_client::WorkerApi;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskStatus {
    Waiting,
    Running {
        node: String,
        started: Instant,
    },
    /// Ended by the scheduler without a run, since no worker can run it; the end is being
    /// recorded.
    Ending,
    Done,
}

pub struct TaskState {
    /// Index into the job definition's task list.
    pub index: usize,
    pub status: TaskStatus,
    pub attempts: u32,
    /// Stops its current attempt; `None` before the first. (This and `run` are made when the task
    /// starts: most tasks of a big queue are waiting, and each costs memory the queue multiplies.)
    pub stop: Option<StopSignal>,
    /// What the task asks of its worker; an error when its platform does not parse (only a
    /// job recovered from a damaged or foreign saga log can carry one, since Execute checks).
    /// Shared by the tasks of a job that ask for the same platform.
    pub requirements: Arc<Result<Requirements, Invalid>>,
    /// Since when it has waited with no ready worker able to run it.
    pub unplaced_since: Option<Instant>,
    /// Its latest attempt, for the web pages; `None` before the first.
    pub run: Option<Box<RunRecord>>,
}

impl TaskState {
    /// The record of its latest attempt, made empty if it has none yet.
    pub fn run_mut(&mut self) -> &mut RunRecord {
        self.run.get_or_insert_with(Box::default)
    }
}

pub struct JobState {
    pub job: Job,
    pub saga: Saga,
    /// Tasks in the order they should start: longest average duration first.
    pub tasks: Vec<TaskState>,
    pub by_id: HashMap<String, usize>,
    /// Tasks Running or Ending: neither waiting nor done.
    pub running: usize,
    pub done: usize,
    pub killed: bool,
    /// EndSaga has been sent and not yet confirmed.
    pub ending: bool,
    /// When the loop got it (accepted, or recovered after a restart).
    pub submitted: SystemTime,
}

impl JobState {
    pub fn new(job: Job, saga: Saga, durations: &Durations) -> JobState {
        let mut order: Vec<usize> = (0..job.def.tasks.len()).collect();
        // Stable sort: equal (e.g. unknown) durations keep the submitted order.
        order.sort_by_key(|i| std::cmp::Reverse(durations.get(&job.def.tasks[*i].task_id)));
        let mut parsed: HashMap<&[PlatformProperty], Arc<Result<Requirements, Invalid>>> =
            HashMap::new();
        let tasks: Vec<TaskState> = order
            .into_iter()
            .map(|index| {
                let platform = job.def.tasks[index].command.platform.as_slice();
                let requirements = parsed
                    .entry(platform)
                    .or_insert_with(|| Arc::new(platform::parse(platform)));
                TaskState {
                    index,
                    status: TaskStatus::Waiting,
                    attempts: 0,
                    stop: None,
                    requirements: Arc::clone(requirements),
                    unplaced_since: None,
                    run: None,
                }
            })
            .collect();
        let by_id = tasks
            .iter()
            .enumerate()
            .map(|(pos, t)| (job.def.tasks[t.index].task_id.clone(), pos))
            .collect();
        JobState {
            job,
            saga,
            tasks,
            by_id,
            running: 0,
            done: 0,
            killed: false,
            ending: false,
            submitted: SystemTime::now(),
        }
    }

    pub fn task_mut(&mut self, task_id: &str) -> Option<&mut TaskState> {
        let pos = *self.by_id.get(task_id)?;
        self.tasks.get_mut(pos)
    }

    pub fn waiting(&self) -> usize {
        self.tasks.len() - self.running - self.done
    }

    pub fn is_finished(&self) -> bool {
        self.done == self.tasks.len()
    }

    pub fn mark_done(&mut self, task_id: &str) {
        let Some(pos) = self.by_id.get(task_id).copied() else {
            return;
        };
        let task = &mut self.tasks[pos];
        match task.status {
            TaskStatus::Running { .. } | TaskStatus::Ending => self.running -= 1,
            TaskStatus::Done => return,
            TaskStatus::Waiting => {}
        }
        task.status = TaskStatus::Done;
        self.done += 1;
    }

    /// The job's summary for the web pages; `finished` once its saga has ended.
    pub fn summary(&self, finished: Option<SystemTime>) -> JobSummary {
        let failed = self
            .tasks
            .iter()
            .filter(|t| {
                t.run
                    .as_ref()
                    .and_then(|run| run.outcome.as_ref())
                    .is_some_and(|o| !o.succeeded())
            })
            .count();
        let phase = match (finished.is_some(), self.killed) {
            (false, true) => JobPhase::Killing,
            (false, false) if self.running + self.done == 0 => JobPhase::Waiting,
            (false, false) => JobPhase::Running,
            (true, true) => JobPhase::Killed,
            (true, false) if failed > 0 => JobPhase::Failed,
            (true, false) => JobPhase::Succeeded,
        };
        let def = &self.job.def;
        JobSummary {
            id: self.job.id.clone(),
            tag: def.tag.clone(),
            basis: def.basis.clone(),
            requestor: def.requestor.clone(),
            job_type: def.job_type.clone(),
            priority: def.priority,
            phase,
            submitted: self.submitted,
            finished,
            tasks: self.tasks.len(),
            waiting: self.waiting(),
            running: self.running,
            done: self.done,
            failed,
        }
    }

    /// The tasks at `positions` of the job's definition (not of the start order), for a page.
    pub fn task_views(&self, positions: std::ops::Range<usize>) -> Vec<TaskView> {
        let defs = &self.job.def.tasks;
        overview::clamp(&positions, defs.len())
            .filter_map(|index| {
                let def = &defs[index];
                let task = &self.tasks[*self.by_id.get(&def.task_id)?];
                let phase = match task.status {
                    TaskStatus::Waiting => TaskPhase::Waiting,
                    TaskStatus::Running { .. } => TaskPhase::Running,
                    TaskStatus::Ending => TaskPhase::Ending,
                    TaskStatus::Done => TaskPhase::Done,
                };
                Some(TaskView {
                    task_id: def.task_id.clone(),
                    argv: overview::bounded(&def.command.argv.join(" ")),
                    phase,
                    attempts: task.attempts,
                    run: task.run.as_deref().cloned().unwrap_or_default(),
                })
            })
            .collect()
    }

    /// What the pages keep of the job once its saga has ended.
    pub fn finished(&self, at: SystemTime) -> FinishedJob {
        FinishedJob {
            summary: Arc::new(self.summary(Some(at))),
            tasks: self.task_views(0..self.tasks.len()),
        }
    }
}

/// Running average wall time per task id, bounded in size.
pub struct Durations {
    averages: HashMap<String, (Duration, u32)>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Durations {
    pub fn new(capacity: usize) -> Durations {
        Durations {
            averages: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, task_id: &str) -> Duration {
        self.averages
            .get(task_id)
            .map(|(d, _)| *d)
            .unwrap_or_default()
    }

    pub fn record(&mut self, task_id: &str, took: Duration) {
        if let Some((avg, n)) = self.averages.get_mut(task_id) {
            *n = n.saturating_add(1);
            *avg = (*avg * (*n - 1) + took) / *n;
            return;
        }
        if self.averages.len() >= self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.averages.remove(&oldest);
        }
        self.averages.insert(task_id.to_string(), (took, 1));
        self.order.push_back(task_id.to_string());
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeHealth {
    /// Being checked: it must be initialised and healthy before it gets work.
    Checking,
    Ready,
    /// No longer listed (or failing its checks) since this instant; forgotten after a minute.
    Lost(Instant),
}

pub struct Node {
    pub client: Arc<dyn WorkerApi>,
    pub health: NodeHealth,
    /// Taken out of service by OfflineWorker; keeps any running task.
    pub offlined: bool,
    /// The job and task running on it.
    pub busy: Option<(String, String)>,
    /// Snapshot of the last task it ran: tasks of that snapshot prefer it.
    pub snapshot: String,
    /// Cancels its readiness check when it changes state.
    pub check: Option<CancellationToken>,
    /// What it offered at its last readiness check ([`offered`]); `None` before the first.
    pub platform: Option<Vec<PlatformProperty>>,
    /// Why its readiness check has not passed yet, as the worker (or the connection) said.
    pub problem: Option<String>,
}

impl Node {
    pub fn new(client: Arc<dyn WorkerApi>) -> Node {
        Node {
            client,
            health: NodeHealth::Checking,
            offlined: false,
            busy: None,
            snapshot: String::new(),
            check: None,
            platform: None,
            problem: None,
        }
    }

    /// The worker as the web pages show it (`now` ages a lost worker).
    pub fn view(&self, id: &str, now: Instant) -> WorkerView {
        let health = match self.health {
            NodeHealth::Checking => WorkerHealth::Checking(self.problem.clone()),
            NodeHealth::Ready => WorkerHealth::Ready,
            NodeHealth::Lost(since) => WorkerHealth::Lost(now.saturating_duration_since(since)),
        };
        WorkerView {
            id: id.to_string(),
            health,
            offline: self.offlined,
            running: self.busy.clone(),
            platform: self
                .platform
                .iter()
                .flatten()
                .map(|p| p.to_string())
                .collect(),
        }
    }

    /// Whether it is known to offer what `requirements` ask for.
    pub fn meets(&self, requirements: &Requirements) -> bool {
        self.platform
            .as_deref()
            .is_some_and(|offered| requirements.first_unmet(offered).is_none())
    }

    pub fn is_idle(&self) -> bool {
        self.health == NodeHealth::Ready && !self.offlined && self.busy.is_none()
    }

    pub fn counts_as_worker(&self) -> bool {
        self.health == NodeHealth::Ready && !self.offlined
    }
}

/// The platform a worker offers, given what it reported: a worker that reports none (a Scoot
/// worker, which knows nothing of platforms) runs tasks on its host, unsandboxed.
pub fn offered(reported: Vec<PlatformProperty>) -> Vec<PlatformProperty> {
    if reported.is_empty() {
        vec![PlatformProperty::new(SANDBOX, UNSANDBOXED)]
    } else {
        reported
    }
}

/// Picks an idle node that meets the task's requirements: one that last ran the same snapshot,
/// else a fresh one, else any.
pub fn pick_node<'a>(
    idle: &mut Vec<&'a str>,
    nodes: &BTreeMap<String, Node>,
    snapshot: &str,
    requirements: &Requirements,
) -> Option<&'a str> {
    let able: Vec<(usize, &str)> = idle
        .iter()
        .enumerate()
        .filter_map(|(pos, id)| {
            let node = nodes.get(*id)?;
            node.meets(requirements)
                .then_some((pos, node.snapshot.as_str()))
        })
        .collect();
    let (position, _) = able
        .iter()
        .find(|(_, last)| *last == snapshot)
        .or_else(|| able.iter().find(|(_, last)| last.is_empty()))
        .or(able.first())?;
    Some(idle.remove(*position))
}

/// Whether the cluster's workers can run a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A ready worker can.
    Ready,
    /// Workers are ready, and neither they nor any other worker known to the scheduler can;
    /// why, naming the property none offers.
    Never(String),
    /// No ready worker can, but one may later: a worker being checked (whose platform is
    /// unknown or meets the requirements), an offlined one that meets them, or any worker at
    /// all when none is ready. `why` is what to say if the task waits too long.
    Later(String),
}

/// Judges `requirements` against every worker in `nodes` (lost ones are gone and do not count).
pub fn placement(requirements: &Requirements, nodes: &BTreeMap<String, Node>) -> Placement {
    let mut ready = Vec::new();
    let mut maybe_later = false;
    for node in nodes.values() {
        match (&node.health, &node.platform) {
            (NodeHealth::Lost(_), _) => {}
            (NodeHealth::Ready, Some(offered)) if !node.offlined => {
                if requirements.first_unmet(offered).is_none() {
                    return Placement::Ready;
                }
                ready.push(offered.as_slice());
            }
            (_, Some(offered)) => {
                maybe_later |= requirements.first_unmet(offered).is_none();
            }
            (_, None) => maybe_later = true,
        }
    }
    // Every ready worker fails some requirement, so there is always something to name.
    let why = requirements.unmatched(&ready).unwrap_or_default();
    if maybe_later || ready.is_empty() {
        Placement::Later(why)
    } else {
        Placement::Never(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker_client::WorkerClient;

    #[test]
    fn durations_average_and_stay_bounded() {
        let mut d = Durations::new(2);
        d.record("a", Duration::from_secs(2));
        d.record("a", Duration::from_secs(4));
        assert_eq!(d.get("a"), Duration::from_secs(3));
        d.record("b", Duration::from_secs(1));
        d.record("c", Duration::from_secs(1));
        assert_eq!(d.get("a"), Duration::ZERO, "oldest entry evicted");
        assert_eq!(d.get("c"), Duration::from_secs(1));
    }

    fn node(id: &str, health: NodeHealth, platform: Option<&[(&str, &str)]>) -> Node {
        let mut node = Node::new(Arc::new(WorkerClient::new(id, None)));
        node.health = health;
        node.platform = platform.map(|p| {
            offered(
                p.iter()
                    .map(|(name, value)| PlatformProperty::new(*name, *value))
                    .collect(),
            )
        });
        node
    }

    fn requirements(properties: &[(&str, &str)]) -> Requirements {
        let properties: Vec<PlatformProperty> = properties
            .iter()
            .map(|(name, value)| PlatformProperty::new(*name, *value))
            .collect();
        platform::parse(&properties).unwrap()
    }

    #[test]
    fn snapshot_affinity_then_fresh_then_any() {
        let mut nodes = BTreeMap::new();
        for (id, snap) in [("a", "s1"), ("b", ""), ("c", "s2")] {
            let mut node = node(id, NodeHealth::Ready, Some(&[]));
            node.snapshot = snap.to_string();
            nodes.insert(id.to_string(), node);
        }
        let any = Requirements::default();
        let mut idle = vec!["a", "b", "c"];
        assert_eq!(pick_node(&mut idle, &nodes, "s2", &any), Some("c"));
        assert_eq!(pick_node(&mut idle, &nodes, "s9", &any), Some("b"));
        assert_eq!(pick_node(&mut idle, &nodes, "s9", &any), Some("a"));
        assert_eq!(pick_node(&mut idle, &nodes, "s9", &any), None);
    }

    #[test]
    fn only_nodes_that_meet_the_requirements_are_picked() {
        let rootfs = [("OSFamily", "linux"), ("sandbox", "rootfs")];
        let mut nodes = BTreeMap::new();
        nodes.insert(
            "plain".to_string(),
            node("plain", NodeHealth::Ready, Some(&[])),
        );
        nodes.insert(
            "rootfs-fresh".to_string(),
            node("rootfs-fresh", NodeHealth::Ready, Some(&rootfs)),
        );
        let mut warm = node("rootfs-warm", NodeHealth::Ready, Some(&rootfs));
        warm.snapshot = "s1".to_string();
        nodes.insert("rootfs-warm".to_string(), warm);
        let wants_rootfs = requirements(&[("OSFamily", "linux")]);
        let mut idle = vec!["plain", "rootfs-fresh", "rootfs-warm"];
        // Affinity among the nodes that can run it, never a node that cannot.
        assert_eq!(
            pick_node(&mut idle, &nodes, "s1", &wants_rootfs),
            Some("rootfs-warm")
        );
        assert_eq!(
            pick_node(&mut idle, &nodes, "s1", &wants_rootfs),
            Some("rootfs-fresh")
        );
        assert_eq!(pick_node(&mut idle, &nodes, "s1", &wants_rootfs), None);
        assert_eq!(idle, ["plain"]);
        // A worker that reports no platform runs what Scoot ran: tasks asking for nothing.
        assert_eq!(
            pick_node(&mut idle, &nodes, "", &Requirements::default()),
            Some("plain")
        );
    }

    #[test]
    fn placement_waits_only_while_a_worker_might_run_the_task() {
        let rootfs = [("OSFamily", "linux"), ("sandbox", "rootfs")];
        let wants_rootfs = requirements(&[("OSFamily", "linux")]);
        let nodes = |list: Vec<Node>| -> BTreeMap<String, Node> {
            list.into_iter()
                .enumerate()
                .map(|(i, n)| (i.to_string(), n))
                .collect()
        };
        let plain = || node("plain", NodeHealth::Ready, Some(&[]));
        assert_eq!(
            placement(
                &wants_rootfs,
                &nodes(vec![plain(), node("r", NodeHealth::Ready, Some(&rootfs))])
            ),
            Placement::Ready
        );
        let Placement::Never(why) = placement(&wants_rootfs, &nodes(vec![plain()])) else {
            panic!("a plain worker was thought able to run a rootfs task");
        };
        assert!(why.contains("sandbox=rootfs"), "{why}");
        // A lost worker does not count; one being checked, or offlined, may come back.
        let lost = node("r", NodeHealth::Lost(Instant::now()), Some(&rootfs));
        assert!(matches!(
            placement(&wants_rootfs, &nodes(vec![plain(), lost])),
            Placement::Never(_)
        ));
        for maybe in [
            node("new", NodeHealth::Checking, None),
            node("r", NodeHealth::Checking, Some(&rootfs)),
            {
                let mut offlined = node("r", NodeHealth::Ready, Some(&rootfs));
                offlined.offlined = true;
                offlined
            },
        ] {
            assert!(matches!(
                placement(&wants_rootfs, &nodes(vec![plain(), maybe])),
                Placement::Later(_)
            ));
        }
        // A worker being checked that is known not to meet them does not hold the task.
        let checked = node("p", NodeHealth::Checking, Some(&[]));
        assert!(matches!(
            placement(&wants_rootfs, &nodes(vec![plain(), checked])),
            Placement::Never(_)
        ));
        let Placement::Later(why) = placement(&wants_rootfs, &BTreeMap::new()) else {
            panic!("with no worker at all, a task should wait");
        };
        assert!(why.contains("no worker"), "{why}");
    }
}
