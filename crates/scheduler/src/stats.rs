//! The scheduler's metrics: Scoot's names (scope `scheduler/`) for `/admin/metrics.json`, and
//! Prometheus names for `/metrics`. See `scoot_metrics`.

use std::sync::LazyLock;

use scoot_metrics::{Counter, CounterFamily, Gauge, GaugeFamily, Latency, LatencyFamily};

macro_rules! metric {
    ($name:ident: $ty:ty = $make:expr) => {
        pub static $name: LazyLock<$ty> = LazyLock::new(|| $make);
    };
}

use scoot_metrics::{counter, counter_family, gauge, gauge_family, latency, latency_family};

metric!(JOBS: Counter = counter(
    Some("scheduler/schedJobsCounter"),
    Some(("scoot_scheduler_jobs", "Jobs accepted.")),
));
metric!(JOB_REQUESTS: Counter = counter(Some("scheduler/schedJobRequestsCounter"), None));
metric!(RUN_JOB_RPM: Counter = counter(Some("scheduler/runJobRpmCounter"), None));
metric!(RUN_JOB_LATENCY: Latency = latency(
    Some("scheduler/runJobLatency_ms"),
    Some(("scoot_scheduler_run_job_duration_seconds", "How long RunJob took to answer.")),
));
metric!(JOB_STATUS_RPM: Counter = counter(Some("scheduler/jobStatusRpmCounter"), None));
metric!(JOB_STATUS_LATENCY: Latency = latency(Some("scheduler/jobStatusLatency_ms"), None));
metric!(JOB_KILL_RPM: Counter = counter(Some("scheduler/jobKillRpmCounter"), None));
metric!(JOB_KILL_LATENCY: Latency = latency(Some("scheduler/jobKillLatency_ms"), None));
metric!(JOB_LATENCY: Latency = latency(
    Some("scheduler/schedJobLatency_ms"),
    Some(("scoot_scheduler_job_duration_seconds", "From a job's start to its end.")),
));
metric!(TASKS_SCHEDULED: Counter = counter(
    Some("scheduler/scheduledTasksCounter"),
    Some(("scoot_scheduler_tasks_scheduled", "Task attempts started on a worker.")),
));
metric!(TASKS_COMPLETED: Counter = counter(
    Some("scheduler/completedTaskCounter"),
    Some(("scoot_scheduler_tasks_completed", "Tasks ended (any result).")),
));
metric!(TASKS_FAILED: Counter = counter(
    Some("scheduler/failedTaskCounter"),
    Some(("scoot_scheduler_tasks_failed", "Tasks ended without running to completion.")),
));
metric!(TASK_RETRIES: Counter = counter(
    Some("scheduler/taskStartRetries"),
    Some(("scoot_scheduler_task_retries", "Task attempts to be made again.")),
));
metric!(RUNNING_TASKS: Gauge = gauge(
    Some("scheduler/schedNumRunningTasksGauge"),
    Some(("scoot_scheduler_running_tasks", "Tasks running now.")),
));
metric!(WAITING_TASKS: Gauge = gauge(
    Some("scheduler/schedNumWaitingTasksGauge"),
    Some(("scoot_scheduler_waiting_tasks", "Tasks waiting for a worker.")),
));
metric!(IN_PROGRESS_TASKS: Gauge = gauge(Some("scheduler/schedInProgressTasksGauge"), None));
metric!(ACCEPTED_JOBS: Gauge = gauge(
    Some("scheduler/schedAcceptedJobsGauge"),
    Some(("scoot_scheduler_in_progress_jobs", "Jobs accepted and not yet ended.")),
));
metric!(WAITING_JOBS: Gauge = gauge(Some("scheduler/schedWaitingJobsGauge"), None));
metric!(UPTIME: Gauge = gauge(Some("scheduler/schedUptimeGauge_ms"), None));
metric!(START: Gauge = gauge(Some("scheduler/schedStartGauge"), None));
metric!(AVAILABLE_NODES: Gauge = gauge(Some("scheduler/availableNodes"), None));
metric!(FREE_NODES: Gauge = gauge(Some("scheduler/freeNodes"), None));
metric!(RUNNING_NODES: Gauge = gauge(Some("scheduler/runningNodes"), None));
metric!(LOST_NODES: Gauge = gauge(Some("scheduler/lostNodes"), None));
metric!(WORKERS: GaugeFamily = gauge_family(
    "scoot_scheduler_workers",
    "Workers by state (ready, offline, lost, checking).",
    "state",
));
metric!(EXECUTE_REQUESTS: CounterFamily = counter_family(
    "scoot_reapi_execute_requests",
    "Execute requests by outcome.",
    "outcome",
));
metric!(QUEUED_ACTIONS: Gauge = gauge(
    None,
    Some(("scoot_reapi_queued_actions", "Actions waiting for a worker.")),
));
metric!(QUEUE_WAIT: Latency = latency(
    None,
    Some(("scoot_reapi_queue_wait_seconds", "How long actions waited for a worker.")),
));
metric!(ACTION_PHASES: LatencyFamily = latency_family(
    "scoot_reapi_action_phase_seconds",
    "Durations of the phases of executed actions (queued, input_fetch, execution, output_upload).",
    "phase",
));
metric!(MERGED_EXECUTIONS: Gauge = gauge(
    None,
    Some(("scoot_reapi_merged_executions", "Executions in flight shared by more than one Execute.")),
));

/// Lists every metric (with zero values) before anything happens, and starts the latch.
pub fn register() {
    for force in [
        &*JOBS,
        &*JOB_REQUESTS,
        &*RUN_JOB_RPM,
        &*JOB_STATUS_RPM,
        &*JOB_KILL_RPM,
        &*TASKS_SCHEDULED,
        &*TASKS_COMPLETED,
        &*TASKS_FAILED,
        &*TASK_RETRIES,
    ] {
        force.add(0);
    }
    for force in [
        &*RUNNING_TASKS,
        &*WAITING_TASKS,
        &*IN_PROGRESS_TASKS,
        &*ACCEPTED_JOBS,
        &*WAITING_JOBS,
        &*UPTIME,
        &*START,
        &*AVAILABLE_NODES,
        &*FREE_NODES,
        &*RUNNING_NODES,
        &*LOST_NODES,
        &*QUEUED_ACTIONS,
        &*MERGED_EXECUTIONS,
    ] {
        force.add(0);
    }
    LazyLock::force(&RUN_JOB_LATENCY);
    LazyLock::force(&JOB_STATUS_LATENCY);
    LazyLock::force(&JOB_KILL_LATENCY);
    LazyLock::force(&JOB_LATENCY);
    LazyLock::force(&QUEUE_WAIT);
    LazyLock::force(&WORKERS);
    LazyLock::force(&EXECUTE_REQUESTS);
    LazyLock::force(&ACTION_PHASES);
    scoot_metrics::start_latching();
}

/// A per-requestor gauge (`schedNumRunningTasksGauge_<requestor>`), as Scoot named them; a `/`
/// in the requestor becomes `_SLASH_`.
pub fn requestor_gauge(base: &str, requestor: &str) -> Gauge {
    let requestor = requestor.replace('/', "_SLASH_");
    gauge(Some(&format!("scheduler/{base}_{requestor}")), None)
}
