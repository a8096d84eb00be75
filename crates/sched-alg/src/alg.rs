//! One scheduling step: count, decide how many tasks each class starts (and stops), then pick them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::Duration;

use crate::{ClassStats, Decision, JobView, LoadBasedAlg};

/// Working numbers for one class during a step. Counts are `i64` so differences can go negative
/// without ceremony.
#[derive(Debug, Default)]
struct ClassWork {
    pct: i64,
    target: i64,
    /// False for 0 % classes: their jobs are never started, stopped, or counted by the algorithm.
    schedulable: bool,
    /// Indices into the step's `jobs`, in the order given.
    jobs: Vec<usize>,
    /// Running tasks at the start of the step (0 for non-schedulable classes).
    running: i64,
    /// Waiting tasks at the start of the step (0 for non-schedulable classes).
    waiting: i64,
    /// Waiting tasks not yet allocated a worker.
    remaining: i64,
    to_start: i64,
    to_stop: i64,
    /// Counts seen for the class whether or not it is schedulable (for stats only).
    seen_running: i64,
    seen_waiting: i64,
}

impl ClassWork {
    /// Workers the class will occupy after the starts and stops decided so far.
    fn busy(&self) -> i64 {
        self.running - self.to_stop + self.to_start
    }

    /// How many workers beyond its target the class occupies (0 when at or below target).
    fn borrowed(&self) -> i64 {
        (self.busy() - self.target).max(0)
    }
}

/// The per-class working state of a step, indexed like `LoadBasedAlg::order`.
struct Plan {
    classes: Vec<ClassWork>,
}

pub(crate) fn schedule(
    alg: &mut LoadBasedAlg,
    now: Duration,
    num_workers: usize,
    num_idle: usize,
    jobs: &[JobView],
) -> Decision {
    let workers = to_i64(num_workers);
    let idle = to_i64(num_idle.min(num_workers));

    let mut plan = Plan::new(alg, workers, jobs);

    let rebalance = decide_rebalance(alg, &plan, now, workers);

    let mut idle_left = idle;
    if rebalance {
        idle_left += plan.stop_over_target();
    }
    idle_left = plan.entitlement_phase(idle_left);
    if idle_left > 0 && plan.any_remaining() {
        idle_left = plan.loan_phase(idle_left);
    }
    plan.fill_phase(idle_left);
    if rebalance {
        plan.cancel_restarts();
    }

    let decision = plan.pick_tasks(jobs);
    alg.last_stats = plan.stats(&alg.order, workers);
    decision
}

/// Updates the "spread exceeded since" timer and says whether this step rebalances.
fn decide_rebalance(alg: &mut LoadBasedAlg, plan: &Plan, now: Duration, workers: i64) -> bool {
    if !alg.config.rebalancing_enabled() || workers == 0 || !plan.any_remaining() {
        alg.exceeded_since = None;
        return false;
    }
    let spread = plan.percent_spread(workers);
    if spread <= i64::from(alg.config.rebalance_threshold) {
        alg.exceeded_since = None;
        return false;
    }
    match alg.exceeded_since {
        None => {
            alg.exceeded_since = Some(now);
            false
        }
        Some(since) if now.saturating_sub(since) > alg.config.rebalance_min_duration => {
            // Start timing afresh so the next rebalance needs another full period of imbalance.
            alg.exceeded_since = None;
            true
        }
        Some(_) => false,
    }
}

impl Plan {
    /// Sets up targets and sorts the jobs into their classes.
    fn new(alg: &LoadBasedAlg, workers: i64, jobs: &[JobView]) -> Plan {
        let mut classes: Vec<ClassWork> = alg
            .order
            .iter()
            .map(|name| {
                let pct = i64::from(alg.config.load_percents[name]);
                ClassWork {
                    pct,
                    schedulable: pct > 0,
                    ..ClassWork::default()
                }
            })
            .collect();

        // Every class but the largest gets floor(workers * pct / 100); the largest takes the rest.
        let mut others = 0;
        for class in classes.iter_mut().skip(1) {
            class.target = workers * class.pct / 100;
            others += class.target;
        }
        classes[0].target = workers - others;

        let mut class_of_requestor: HashMap<&str, usize> = HashMap::new();
        for (j, job) in jobs.iter().enumerate() {
            let idx = *class_of_requestor
                .entry(job.requestor.as_str())
                .or_insert_with(|| alg.class_index(&job.requestor));
            let class = &mut classes[idx];
            let running = to_i64(job.running_count);
            let waiting = to_i64(job.waiting_count);
            class.seen_running += running;
            class.seen_waiting += waiting;
            if class.schedulable {
                class.jobs.push(j);
                class.running += running;
                class.waiting += waiting;
            }
        }
        for class in &mut classes {
            class.remaining = class.waiting;
        }
        Plan { classes }
    }

    fn any_remaining(&self) -> bool {
        self.classes.iter().any(|c| c.remaining > 0)
    }

    /// Max minus min, over classes that are above their share or have waiting tasks, of
    /// `target percent - floor(running * 100 / workers)`.
    fn percent_spread(&self, workers: i64) -> i64 {
        let mut bounds: Option<(i64, i64)> = None;
        for c in self.classes.iter().filter(|c| c.schedulable) {
            let diff = c.pct - c.running * 100 / workers;
            if diff < 0 || c.waiting > 0 {
                bounds = Some(match bounds {
                    None => (diff, diff),
                    Some((lo, hi)) => (lo.min(diff), hi.max(diff)),
                });
            }
        }
        bounds.map_or(0, |(lo, hi)| hi - lo)
    }

    /// Marks every over-target class to stop its excess tasks; returns the workers so freed.
    fn stop_over_target(&mut self) -> i64 {
        let mut freed = 0;
        for class in self.classes.iter_mut().filter(|c| c.schedulable) {
            if class.running > class.target {
                class.to_stop = class.running - class.target;
                freed += class.to_stop;
            }
        }
        freed
    }

    /// After a rebalance, a class may have been given back some of the workers it is losing
    /// (loans, rounding). Stopping a running task only to start another of the same class gains
    /// nothing, so such pairs cancel out and the older task keeps its worker.
    fn cancel_restarts(&mut self) {
        for class in &mut self.classes {
            let k = class.to_stop.min(class.to_start);
            class.to_stop -= k;
            class.to_start -= k;
            class.remaining += k;
        }
    }

    /// Gives idle workers to classes below their target, in proportion to the shortfall. Repeats
    /// (at most once per class) while workers, waiting tasks and shortfalls remain. Returns the
    /// workers still unallocated.
    fn entitlement_phase(&mut self, mut idle: i64) -> i64 {
        for _ in 0..self.classes.len() {
            if idle <= 0 || !self.any_remaining() {
                break;
            }
            let shortfall: Vec<i64> = self
                .classes
                .iter()
                .map(|c| {
                    if c.schedulable && c.remaining > 0 && c.busy() < c.target {
                        c.target - c.busy()
                    } else {
                        0
                    }
                })
                .collect();
            let total: i64 = shortfall.iter().sum();
            if total == 0 {
                break;
            }
            idle -= self.allocate(&shortfall, idle.min(total));
        }
        idle
    }

    /// Lends the remaining idle workers to classes that still have waiting tasks.
    ///
    /// Each round: the configured percents are re-normalised over the classes with waiting tasks;
    /// the pool of lent workers (workers already borrowed beyond targets plus the idle ones) is
    /// split by those percents; each class's claim is its split minus what it already borrows;
    /// the idle workers are then allocated in proportion to the claims.
    fn loan_phase(&mut self, mut idle: i64) -> i64 {
        for _ in 0..self.classes.len() {
            if idle <= 0 || !self.any_remaining() {
                break;
            }
            // Original percents, restricted to the classes that can still use a worker.
            let waiting_pcts: Vec<i64> = self
                .classes
                .iter()
                .map(|c| {
                    if c.schedulable && c.remaining > 0 {
                        c.pct
                    } else {
                        0
                    }
                })
                .collect();
            let pct_total: i64 = waiting_pcts.iter().sum();
            if pct_total == 0 {
                break;
            }
            let pool: i64 = idle + self.classes.iter().map(ClassWork::borrowed).sum::<i64>();
            // A class's fair part of the pool is pool * pct / pct_total (rounded down, computed
            // without an intermediate whole-percent step); its claim is that minus what it
            // already borrows.
            let claims: Vec<i64> = self
                .classes
                .iter()
                .zip(&waiting_pcts)
                .map(|(c, pct)| (pool * pct / pct_total - c.borrowed()).max(0))
                .collect();
            let total: i64 = claims.iter().sum();
            if total == 0 {
                break;
            }
            let given = self.allocate(&claims, idle.min(total));
            if given == 0 {
                break;
            }
            idle -= given;
        }
        idle
    }

    /// Hands any workers still idle to classes with waiting tasks, largest percent first.
    fn fill_phase(&mut self, mut idle: i64) {
        for class in self.classes.iter_mut().filter(|c| c.schedulable) {
            if idle <= 0 {
                break;
            }
            let n = class.remaining.min(idle);
            class.to_start += n;
            class.remaining -= n;
            idle -= n;
        }
    }

    /// Allocates up to `amount` workers in proportion to `weights`: the weights become whole
    /// percents (see [`percent_shares`]) and, in descending-percent class order, each class gets
    /// `ceil(amount * percent / 100)`, capped by its own weight (so rounding never pushes a class
    /// past its entitlement or claim; what is left over goes round again), by its waiting tasks and
    /// by what is left of `amount`. Returns the number allocated.
    fn allocate(&mut self, weights: &[i64], amount: i64) -> i64 {
        let pcts = percent_shares(weights);
        let mut given = 0;
        for ((class, pct), weight) in self.classes.iter_mut().zip(pcts).zip(weights) {
            if pct == 0 || !class.schedulable {
                continue;
            }
            let n = ceil_div(amount * pct, 100)
                .min(*weight)
                .min(class.remaining)
                .min(amount - given);
            class.to_start += n;
            class.remaining -= n;
            given += n;
        }
        given
    }

    /// Turns the per-class counts into concrete task ids.
    fn pick_tasks(&mut self, jobs: &[JobView]) -> Decision {
        let mut decision = Decision::default();
        let mut started: HashSet<(&str, &str)> = HashSet::new();
        let mut stopped: HashSet<(&str, &str)> = HashSet::new();
        for class in &mut self.classes {
            if class.to_start > 0 {
                class.to_start = pick_starts(
                    jobs,
                    &class.jobs,
                    class.to_start,
                    &mut started,
                    &mut decision,
                );
            }
            if class.to_stop > 0 {
                class.to_stop = pick_stops(
                    jobs,
                    &class.jobs,
                    class.to_stop,
                    &mut stopped,
                    &mut decision,
                );
            }
        }
        decision
    }

    fn stats(&self, names: &[String], workers: i64) -> Vec<ClassStats> {
        names
            .iter()
            .zip(&self.classes)
            .map(|(name, c)| {
                let after = c.seen_running - c.to_stop + c.to_start;
                let actual_pct = if workers > 0 {
                    (after * 100 + workers / 2) / workers
                } else {
                    0
                };
                ClassStats {
                    class: name.clone(),
                    target: to_usize(c.target),
                    running: to_usize(c.seen_running),
                    waiting: to_usize(c.seen_waiting - c.to_start),
                    starting: to_usize(c.to_start),
                    stopping: to_usize(c.to_stop),
                    target_pct: i32::try_from(c.pct).unwrap_or(i32::MAX),
                    actual_pct: i32::try_from(actual_pct).unwrap_or(i32::MAX),
                }
            })
            .collect()
    }
}

/// Picks `n` waiting tasks from a class's jobs, round-robin starting with the jobs that have the
/// fewest running tasks (ties: the order the jobs were given). Each pick counts as one more running
/// task for its job, which then queues behind the jobs already at that count. Returns how many
/// were picked (fewer than `n` only if the input repeats a task).
fn pick_starts<'a>(
    jobs: &'a [JobView],
    class_jobs: &[usize],
    n: i64,
    started: &mut HashSet<(&'a str, &'a str)>,
    decision: &mut Decision,
) -> i64 {
    // Heap entries: (running count, arrival sequence, position in class_jobs). The sequence keeps
    // first-come order among jobs with equal counts, exactly like appending to per-count bins.
    let mut heap: BinaryHeap<Reverse<(usize, usize, usize)>> = class_jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| !jobs[**j].waiting.is_empty())
        .map(|(pos, j)| Reverse((jobs[*j].running_count, pos, pos)))
        .collect();
    let mut next_seq = class_jobs.len();
    let mut cursor = vec![0usize; class_jobs.len()];
    let mut picked = 0;
    while picked < n {
        let Some(Reverse((count, _, pos))) = heap.pop() else {
            break;
        };
        let job = &jobs[class_jobs[pos]];
        while let Some(task) = job.waiting.get(cursor[pos]) {
            cursor[pos] += 1;
            if started.insert((job.job_id.as_str(), task.as_str())) {
                decision.start.push((job.job_id.clone(), task.clone()));
                picked += 1;
                break;
            }
        }
        if cursor[pos] < job.waiting.len() {
            heap.push(Reverse((count + 1, next_seq, pos)));
            next_seq += 1;
        }
    }
    picked
}

/// Picks the `n` most recently started running tasks of a class (ties: later in the input first).
/// Returns how many were picked.
fn pick_stops<'a>(
    jobs: &'a [JobView],
    class_jobs: &[usize],
    n: i64,
    stopped: &mut HashSet<(&'a str, &'a str)>,
    decision: &mut Decision,
) -> i64 {
    let mut running: Vec<(Duration, usize, usize)> = class_jobs
        .iter()
        .flat_map(|&j| {
            jobs[j]
                .running
                .iter()
                .enumerate()
                .map(move |(t, task)| (task.started_at, j, t))
        })
        .collect();
    running.sort_unstable_by(|a, b| b.cmp(a));
    let mut picked = 0;
    for (_, j, t) in running {
        if picked >= n {
            break;
        }
        let job = &jobs[j];
        let task = &job.running[t].task_id;
        if stopped.insert((job.job_id.as_str(), task.as_str())) {
            decision.stop.push((job.job_id.clone(), task.clone()));
            picked += 1;
        }
    }
    picked
}

/// Converts weights into whole percents adding up to 100: every entry gets
/// `floor(weight * 100 / total)` except the largest weight (the first one on ties), which absorbs
/// the rounding. All zeros when the weights add up to 0.
fn percent_shares(weights: &[i64]) -> Vec<i64> {
    let total: i64 = weights.iter().sum();
    let mut pcts = vec![0; weights.len()];
    if total <= 0 {
        return pcts;
    }
    let mut largest = 0;
    for (i, w) in weights.iter().enumerate() {
        if *w > weights[largest] {
            largest = i;
        }
    }
    let mut others = 0;
    for (i, w) in weights.iter().enumerate() {
        if i != largest {
            pcts[i] = w * 100 / total;
            others += pcts[i];
        }
    }
    pcts[largest] = 100 - others;
    pcts
}

fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_usize(n: i64) -> usize {
    usize::try_from(n.max(0)).unwrap_or(usize::MAX)
}
