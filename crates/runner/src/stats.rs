//! The worker's metrics: Scoot's names (scopes `workerserver/` and `workerserver/handler/`)
//! and Prometheus names. See `scoot_metrics`.

use std::sync::LazyLock;

use scoot_metrics::{Counter, Gauge, Latency, counter, gauge, latency};

pub static RUNS: LazyLock<Counter> = LazyLock::new(|| {
    counter(
        Some("workerserver/handler/runs"),
        Some(("scoot_worker_runs", "Runs accepted.")),
    )
});
pub static ABORTS: LazyLock<Counter> = LazyLock::new(|| {
    counter(
        Some("workerserver/handler/aborts"),
        Some(("scoot_worker_aborts", "Runs aborted.")),
    )
});
pub static QUERIES: LazyLock<Counter> =
    LazyLock::new(|| counter(Some("workerserver/handler/workerQueries"), None));
pub static TIMEOUTS: LazyLock<Counter> =
    LazyLock::new(|| counter(Some("workerserver/workerTimeouts"), None));
pub static RUNNING: LazyLock<Gauge> = LazyLock::new(|| {
    gauge(
        Some("workerserver/runningTask"),
        Some((
            "scoot_worker_running_task",
            "1 while the worker runs a task (its one slot is in use).",
        )),
    )
});
pub static ACTIVE_RUNS: LazyLock<Gauge> =
    LazyLock::new(|| gauge(Some("workerserver/handler/activeRunsGauge"), None));
pub static UNHEALTHY: LazyLock<Gauge> = LazyLock::new(|| {
    gauge(
        Some("workerserver/workerUnhealthy"),
        Some((
            "scoot_worker_unhealthy",
            "1 once the worker takes no more runs.",
        )),
    )
});
pub static UPTIME: LazyLock<Gauge> =
    LazyLock::new(|| gauge(Some("workerserver/handler/workerUptimeGauge_ms"), None));
pub static START: LazyLock<Gauge> =
    LazyLock::new(|| gauge(Some("workerserver/handler/workerStartGauge"), None));
pub static TASK_LATENCY: LazyLock<Latency> = LazyLock::new(|| {
    latency(
        Some("workerserver/workerTaskLatency_ms"),
        Some(("scoot_worker_task_duration_seconds", "How long runs took.")),
    )
});

/// Lists every metric (with zero values) before anything happens.
pub fn register() {
    for c in [&*RUNS, &*ABORTS, &*QUERIES, &*TIMEOUTS] {
        c.add(0);
    }
    for g in [&*RUNNING, &*ACTIVE_RUNS, &*UNHEALTHY, &*UPTIME, &*START] {
        g.add(0);
    }
    LazyLock::force(&TASK_LATENCY);
}
