//! In-memory state of the scheduling loop: jobs being run and the workers they run on. Owned by
//! the loop task alone, so it needs no locks.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use scoot_saga::Saga;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::job::Job;
use crate::task_runner::StopSignal;
use crate::worker_client::WorkerApi;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskStatus {
    Waiting,
    Running { node: String, started: Instant },
    Done,
}

pub struct TaskState {
    /// Index into the job definition's task list.
    pub index: usize,
    pub status: TaskStatus,
    pub attempts: u32,
    pub stop: StopSignal,
}

pub struct JobState {
    pub job: Job,
    pub saga: Saga,
    /// Tasks in the order they should start: longest average duration first.
    pub tasks: Vec<TaskState>,
    pub by_id: HashMap<String, usize>,
    pub running: usize,
    pub done: usize,
    pub killed: bool,
    /// EndSaga has been sent and not yet confirmed.
    pub ending: bool,
}

impl JobState {
    pub fn new(job: Job, saga: Saga, durations: &Durations) -> JobState {
        let mut order: Vec<usize> = (0..job.def.tasks.len()).collect();
        // Stable sort: equal (e.g. unknown) durations keep the submitted order.
        order.sort_by_key(|i| std::cmp::Reverse(durations.get(&job.def.tasks[*i].task_id)));
        let tasks: Vec<TaskState> = order
            .into_iter()
            .map(|index| TaskState {
                index,
                status: TaskStatus::Waiting,
                attempts: 0,
                stop: StopSignal::default(),
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
            TaskStatus::Running { .. } => self.running -= 1,
            TaskStatus::Done => return,
            TaskStatus::Waiting => {}
        }
        task.status = TaskStatus::Done;
        self.done += 1;
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
        }
    }

    pub fn is_idle(&self) -> bool {
        self.health == NodeHealth::Ready && !self.offlined && self.busy.is_none()
    }

    pub fn counts_as_worker(&self) -> bool {
        self.health == NodeHealth::Ready && !self.offlined
    }
}

/// Picks an idle node for a task: one that last ran the same snapshot, else a fresh one, else any.
pub fn pick_node<'a>(
    idle: &mut Vec<&'a str>,
    nodes: &BTreeMap<String, Node>,
    snapshot: &str,
) -> Option<&'a str> {
    let snapshot_of = |id: &str| {
        nodes
            .get(id)
            .map(|n| n.snapshot.as_str())
            .unwrap_or_default()
    };
    let position = idle
        .iter()
        .position(|id| snapshot_of(id) == snapshot)
        .or_else(|| idle.iter().position(|id| snapshot_of(id).is_empty()))
        .or(if idle.is_empty() { None } else { Some(0) })?;
    Some(idle.remove(position))
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

    #[test]
    fn snapshot_affinity_then_fresh_then_any() {
        let mut nodes = BTreeMap::new();
        for (id, snap) in [("a", "s1"), ("b", ""), ("c", "s2")] {
            let mut node = Node::new(Arc::new(WorkerClient::new(id)));
            node.snapshot = snap.to_string();
            nodes.insert(id.to_string(), node);
        }
        let mut idle = vec!["a", "b", "c"];
        assert_eq!(pick_node(&mut idle, &nodes, "s2"), Some("c"));
        assert_eq!(pick_node(&mut idle, &nodes, "s9"), Some("b"));
        assert_eq!(pick_node(&mut idle, &nodes, "s9"), Some("a"));
        assert_eq!(pick_node(&mut idle, &nodes, "s9"), None);
    }
}
