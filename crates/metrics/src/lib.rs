//! What a scoot server counts, in two forms from one recording:
//!
//! * **Scoot's stats** (`/admin/metrics.json`): one flat JSON object of `/`-joined names
//!   (`scheduler/schedJobsCounter`), as Scoot's servers rendered their go-metrics registry, so that
//!   dashboards and alerts built on those names keep working. Histograms and latencies expand to
//!   `.avg .count .max .min .sum .p50 .p90 .p95 .p99 .p999 .p9999` (latencies in milliseconds)
//!   over a uniform reservoir of 1000 samples, latched every 60 s (the first latch aligned to the
//!   minute): the JSON shows the last closed window, and a new window starts empty. Counters and
//!   gauges are shown live (Scoot showed them as of the last latch; a live value is never older).
//! * **Prometheus** (`/metrics`): the same facts, and more, as `prometheus-client` families in the
//!   OpenMetrics text format; histograms are cumulative, as Prometheus expects.
//!
//! Metrics live in one registry per process (each scoot binary is one server), created on first
//! use: a crate declares its metrics as `LazyLock` statics and forces them at start so that every
//! name is listed from the beginning, with zero values.

mod reservoir;
mod routes;

pub use routes::{routes, scoot_root};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter as PromCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge as PromGauge;
use prometheus_client::metrics::histogram::Histogram as PromHistogram;

use reservoir::Reservoir;

/// How often Scoot's histograms are latched.
pub const LATCH_INTERVAL: Duration = Duration::from_secs(60);

/// Bucket bounds (seconds) of every duration histogram: 1 ms to about 16 min, doubling.
fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 21)
}

type Labels = Vec<(String, String)>;
type HistogramMaker = fn() -> PromHistogram;

fn new_duration_histogram() -> PromHistogram {
    PromHistogram::new(duration_buckets())
}

/// A Scoot stat as the JSON shows it.
enum Stat {
    Counter(Arc<AtomicI64>),
    Gauge(Arc<AtomicI64>),
    Histogram(Arc<Reservoir>),
}

/// A Prometheus family, kept so that asking for a name again returns the same one.
#[derive(Clone)]
enum Prom {
    Counter(PromCounter),
    Gauge(PromGauge),
    Histogram(PromHistogram),
    CounterFamily(Family<Labels, PromCounter>),
    GaugeFamily(Family<Labels, PromGauge>),
    HistogramFamily(Family<Labels, PromHistogram, HistogramMaker>),
}

struct Registry {
    scoot: Mutex<BTreeMap<String, Stat>>,
    /// The last latched window of every histogram, already expanded (`name.p50` → value).
    latched: Mutex<BTreeMap<String, serde_json::Value>>,
    prometheus: Mutex<prometheus_client::registry::Registry>,
    families: Mutex<BTreeMap<String, Prom>>,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| Registry {
    scoot: Mutex::new(BTreeMap::new()),
    latched: Mutex::new(BTreeMap::new()),
    prometheus: Mutex::new(prometheus_client::registry::Registry::default()),
    families: Mutex::new(BTreeMap::new()),
});

/// Locks a mutex even if a panicking thread held it: metrics must never take a server down.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn scoot_cell(name: &str, make: impl FnOnce() -> Stat) -> Stat {
    let mut stats = lock(&REGISTRY.scoot);
    let stat = stats.entry(name.to_string()).or_insert_with(make);
    match stat {
        Stat::Counter(c) => Stat::Counter(c.clone()),
        Stat::Gauge(g) => Stat::Gauge(g.clone()),
        Stat::Histogram(h) => Stat::Histogram(h.clone()),
    }
}

fn prom_family(name: &str, help: &str, make: impl FnOnce() -> Prom) -> Prom {
    let mut families = lock(&REGISTRY.families);
    if let Some(existing) = families.get(name) {
        return existing.clone();
    }
    let family = make();
    let mut registry = lock(&REGISTRY.prometheus);
    match family.clone() {
        Prom::Counter(m) => registry.register(name, help, m),
        Prom::Gauge(m) => registry.register(name, help, m),
        Prom::Histogram(m) => registry.register(name, help, m),
        Prom::CounterFamily(m) => registry.register(name, help, m),
        Prom::GaugeFamily(m) => registry.register(name, help, m),
        Prom::HistogramFamily(m) => registry.register(name, help, m),
    }
    families.insert(name.to_string(), family.clone());
    family
}

/// A count that only grows. `prom` names the Prometheus counter (without `_total`, which the
/// exposition adds); either side may be left out with `None`.
#[derive(Clone)]
pub struct Counter {
    scoot: Option<Arc<AtomicI64>>,
    prom: Option<PromCounter>,
}

pub fn counter(scoot: Option<&str>, prom: Option<(&str, &str)>) -> Counter {
    Counter {
        scoot: scoot.map(
            |name| match scoot_cell(name, || Stat::Counter(Arc::default())) {
                Stat::Counter(c) => c,
                _ => Arc::default(),
            },
        ),
        prom: prom.and_then(|(name, help)| {
            match prom_family(name, help, || Prom::Counter(PromCounter::default())) {
                Prom::Counter(c) => Some(c),
                _ => None,
            }
        }),
    }
}

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        if let Some(c) = &self.scoot {
            c.fetch_add(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
        }
        if let Some(c) = &self.prom {
            c.inc_by(n);
        }
    }
}

/// A value that goes up and down.
#[derive(Clone)]
pub struct Gauge {
    scoot: Option<Arc<AtomicI64>>,
    prom: Option<PromGauge>,
}

pub fn gauge(scoot: Option<&str>, prom: Option<(&str, &str)>) -> Gauge {
    Gauge {
        scoot: scoot.map(
            |name| match scoot_cell(name, || Stat::Gauge(Arc::default())) {
                Stat::Gauge(g) => g,
                _ => Arc::default(),
            },
        ),
        prom: prom.and_then(|(name, help)| {
            match prom_family(name, help, || Prom::Gauge(PromGauge::default())) {
                Prom::Gauge(g) => Some(g),
                _ => None,
            }
        }),
    }
}

impl Gauge {
    pub fn set(&self, value: i64) {
        if let Some(g) = &self.scoot {
            g.store(value, Ordering::Relaxed);
        }
        if let Some(g) = &self.prom {
            g.set(value);
        }
    }

    pub fn add(&self, delta: i64) {
        if let Some(g) = &self.scoot {
            g.fetch_add(delta, Ordering::Relaxed);
        }
        if let Some(g) = &self.prom {
            g.inc_by(delta);
        }
    }
}

/// A duration: Scoot's `…_ms` latency (milliseconds, latched reservoir) and a Prometheus
/// histogram in seconds.
#[derive(Clone)]
pub struct Latency {
    scoot: Option<Arc<Reservoir>>,
    prom: Option<PromHistogram>,
}

pub fn latency(scoot: Option<&str>, prom: Option<(&str, &str)>) -> Latency {
    Latency {
        scoot: scoot.map(
            |name| match scoot_cell(name, || Stat::Histogram(Arc::default())) {
                Stat::Histogram(h) => h,
                _ => Arc::default(),
            },
        ),
        prom: prom.and_then(|(name, help)| {
            match prom_family(name, help, || Prom::Histogram(new_duration_histogram())) {
                Prom::Histogram(h) => Some(h),
                _ => None,
            }
        }),
    }
}

impl Latency {
    pub fn record(&self, took: Duration) {
        if let Some(h) = &self.scoot {
            h.record(took.as_secs_f64() * 1000.0);
        }
        if let Some(h) = &self.prom {
            h.observe(took.as_secs_f64());
        }
    }
}

/// A Scoot histogram of plain numbers (not durations), JSON only.
#[derive(Clone)]
pub struct Histogram(Arc<Reservoir>);

pub fn histogram(scoot: &str) -> Histogram {
    match scoot_cell(scoot, || Stat::Histogram(Arc::default())) {
        Stat::Histogram(h) => Histogram(h),
        _ => Histogram(Arc::default()),
    }
}

impl Histogram {
    pub fn record(&self, value: f64) {
        self.0.record(value);
    }
}

/// Prometheus counters told apart by one label (`outcome="cached"`).
#[derive(Clone)]
pub struct CounterFamily {
    label: &'static str,
    family: Option<Family<Labels, PromCounter>>,
}

pub fn counter_family(name: &str, help: &str, label: &'static str) -> CounterFamily {
    CounterFamily {
        label,
        family: match prom_family(name, help, || Prom::CounterFamily(Family::default())) {
            Prom::CounterFamily(f) => Some(f),
            _ => None,
        },
    }
}

impl CounterFamily {
    pub fn add(&self, value: &str, n: u64) {
        if let Some(f) = &self.family {
            f.get_or_create(&vec![(self.label.to_string(), value.to_string())])
                .inc_by(n);
        }
    }

    pub fn inc(&self, value: &str) {
        self.add(value, 1);
    }
}

/// Prometheus gauges told apart by one label (`state="ready"`).
#[derive(Clone)]
pub struct GaugeFamily {
    label: &'static str,
    family: Option<Family<Labels, PromGauge>>,
}

pub fn gauge_family(name: &str, help: &str, label: &'static str) -> GaugeFamily {
    GaugeFamily {
        label,
        family: match prom_family(name, help, || Prom::GaugeFamily(Family::default())) {
            Prom::GaugeFamily(f) => Some(f),
            _ => None,
        },
    }
}

impl GaugeFamily {
    pub fn set(&self, value: &str, n: i64) {
        if let Some(f) = &self.family {
            f.get_or_create(&vec![(self.label.to_string(), value.to_string())])
                .set(n);
        }
    }
}

/// Prometheus duration histograms (seconds) told apart by one label (`phase="execution"`).
#[derive(Clone)]
pub struct LatencyFamily {
    label: &'static str,
    family: Option<Family<Labels, PromHistogram, HistogramMaker>>,
}

pub fn latency_family(name: &str, help: &str, label: &'static str) -> LatencyFamily {
    LatencyFamily {
        label,
        family: match prom_family(name, help, || {
            Prom::HistogramFamily(Family::new_with_constructor(
                new_duration_histogram as HistogramMaker,
            ))
        }) {
            Prom::HistogramFamily(f) => Some(f),
            _ => None,
        },
    }
}

impl LatencyFamily {
    pub fn record(&self, value: &str, took: Duration) {
        if let Some(f) = &self.family {
            f.get_or_create(&vec![(self.label.to_string(), value.to_string())])
                .observe(took.as_secs_f64());
        }
    }
}

/// Closes the current window of every Scoot histogram: its summary becomes what the JSON shows
/// and the next window starts empty.
pub fn latch() {
    let stats = lock(&REGISTRY.scoot);
    let mut latched = BTreeMap::new();
    for (name, stat) in stats.iter() {
        if let Stat::Histogram(h) = stat {
            for (suffix, value) in h.take_summary() {
                // A count is a whole number, as Scoot printed it.
                let value = if suffix == ".count" {
                    serde_json::Value::from(value as u64)
                } else {
                    serde_json::Number::from_f64(value).map_or(0.into(), serde_json::Value::Number)
                };
                latched.insert(format!("{name}{suffix}"), value);
            }
        }
    }
    *lock(&REGISTRY.latched) = latched;
}

/// Latches every [`LATCH_INTERVAL`] from the next full minute, on a thread of its own, for the
/// life of the process. Every server calls it at start; only the first call starts the thread,
/// so a process running several servers (tests) still has one window per minute.
pub fn start_latching() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(spawn_latch_thread);
}

fn spawn_latch_thread() {
    let spawned = std::thread::Builder::new()
        .name("metrics-latch".into())
        .spawn(|| {
            latch();
            loop {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let into_minute = Duration::from_nanos(
                    u64::try_from(now.as_nanos() % LATCH_INTERVAL.as_nanos()).unwrap_or(0),
                );
                std::thread::sleep(LATCH_INTERVAL.saturating_sub(into_minute));
                latch();
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start latching metrics; /admin/metrics.json shows no histograms");
    }
}

/// Scoot's `/admin/metrics.json`: counters and gauges now, histograms as of the last latch.
pub fn scoot_json(pretty: bool) -> String {
    let mut out = serde_json::Map::new();
    for (name, stat) in lock(&REGISTRY.scoot).iter() {
        match stat {
            Stat::Counter(v) | Stat::Gauge(v) => {
                out.insert(name.clone(), v.load(Ordering::Relaxed).into());
            }
            Stat::Histogram(_) => {
                // Listed with zeros until its first window closes, so every name is there.
                for suffix in reservoir::SUFFIXES {
                    out.insert(format!("{name}{suffix}"), 0.into());
                }
            }
        }
    }
    for (name, value) in lock(&REGISTRY.latched).iter() {
        out.insert(name.clone(), value.clone());
    }
    let value = serde_json::Value::Object(out);
    let text = if pretty {
        serde_json::to_string_pretty(&value)
    } else {
        serde_json::to_string(&value)
    };
    text.unwrap_or_else(|_| "{}".to_string())
}

/// Prometheus's `/metrics` (OpenMetrics text).
pub fn prometheus_text() -> String {
    let mut text = String::new();
    if let Err(error) =
        prometheus_client::encoding::text::encode(&mut text, &lock(&REGISTRY.prometheus))
    {
        tracing::error!(%error, "cannot encode the Prometheus metrics");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_recording_shows_in_both_forms() {
        let runs = counter(
            Some("test/runsCounter"),
            Some(("scoot_test_runs", "Runs of the test.")),
        );
        runs.inc();
        runs.add(2);
        let running = gauge(
            Some("test/runningGauge"),
            Some(("scoot_test_running", "Running.")),
        );
        running.set(5);
        running.add(-1);
        let took = latency(
            Some("test/runLatency_ms"),
            Some(("scoot_test_run_duration_seconds", "How long runs took.")),
        );
        for ms in [10, 20, 30] {
            took.record(Duration::from_millis(ms));
        }
        let outcomes = counter_family("scoot_test_outcomes", "By outcome.", "outcome");
        outcomes.inc("cached");

        let before: serde_json::Value = serde_json::from_str(&scoot_json(false)).unwrap();
        assert_eq!(before["test/runsCounter"], 3);
        assert_eq!(before["test/runningGauge"], 4);
        assert_eq!(before["test/runLatency_ms.count"], 0, "not latched yet");
        latch();
        let after: serde_json::Value = serde_json::from_str(&scoot_json(true)).unwrap();
        assert_eq!(after["test/runLatency_ms.count"], 3);
        assert_eq!(after["test/runLatency_ms.max"], 30.0);
        assert_eq!(after["test/runLatency_ms.sum"], 60.0);
        assert_eq!(after["test/runLatency_ms.p50"], 20.0);
        latch();
        let next: serde_json::Value = serde_json::from_str(&scoot_json(false)).unwrap();
        assert_eq!(
            next["test/runLatency_ms.count"], 0,
            "a new window starts empty"
        );

        let prom = prometheus_text();
        assert!(prom.contains("scoot_test_runs_total 3"), "{prom}");
        assert!(prom.contains("scoot_test_running 4"), "{prom}");
        assert!(
            prom.contains("scoot_test_run_duration_seconds_count 3"),
            "{prom}"
        );
        assert!(
            prom.contains("scoot_test_outcomes_total{outcome=\"cached\"} 1"),
            "{prom}"
        );
        assert!(prom.ends_with("# EOF\n"), "{prom}");
    }

    #[test]
    fn asking_again_for_a_name_gives_the_same_metric() {
        let a = counter(Some("test/same"), Some(("scoot_test_same", "Same.")));
        let b = counter(Some("test/same"), Some(("scoot_test_same", "Same.")));
        a.inc();
        b.inc();
        let json: serde_json::Value = serde_json::from_str(&scoot_json(false)).unwrap();
        assert_eq!(json["test/same"], 2);
        assert_eq!(
            prometheus_text()
                .matches("# TYPE scoot_test_same counter")
                .count(),
            1
        );
    }
}
