//! Scheduler configuration: Scoot's JSON schema (`Cluster`, `Workers`, `SchedulerConfig`,
//! `SagaLog`) and its built-in configs `default`, `local.local` and `local.memory`.
//!
//! `-config` takes one of those names, a path to a JSON file, or JSON text. A section left out (or
//! with an empty `Type`) is taken whole from `default`, as in Scoot.

use std::path::PathBuf;
use std::time::Duration;

use scoot_thrift::server::ServeOptions;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config {0:?} is not a built-in name (default, local.local, local.memory), a JSON file or JSON text"
    )]
    Unknown(String),
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid duration {value:?} for {field}: {reason}")]
    Duration {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// How the scheduler finds its workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterSource {
    /// Local `workerserver … -thrift_addr X` processes (Scoot's `local` and, in effect, `memory`).
    LocalProcesses,
    /// A file with one `host:port` per line, re-read when it changes (spans machines).
    StaticFile(PathBuf),
    /// Every address a DNS name resolves to, re-resolved every `refresh` (a Kubernetes
    /// headless Service), each a worker on `port`.
    Dns {
        name: String,
        port: u16,
        refresh: Duration,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SagaLogKind {
    Memory {
        /// Ended sagas older than this are forgotten; `None` keeps them forever.
        retention: Option<Duration>,
        gc_interval: Duration,
    },
    File {
        directory: PathBuf,
        retention: Option<Duration>,
        gc_interval: Duration,
    },
    /// Our addition: a PostgreSQL database (`scoot_saga_postgres`).
    Postgres {
        url: String,
        retention: Option<Duration>,
        gc_interval: Duration,
        pool_size: usize,
        /// The leader lease's length (`LeaseSec`): a standby takes over within about this
        /// and a sixth of it after the leader's last renewal.
        lease: Duration,
    },
}

/// The leader lease unless `SagaLog.LeaseSec` says otherwise: a standby takes over within
/// 7 s of the leader's death, under the 10 s promised, while a leader survives a stall of
/// 4 s between renewals.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(6);

/// Connections a PostgreSQL saga log keeps at most unless `SagaLog.PoolSize` says otherwise.
pub const DEFAULT_POSTGRES_POOL_SIZE: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub cluster: ClusterSource,
    /// How often a worker without the WaitRun long-poll is polled at first (doubling to 10 s).
    pub polling_period: Duration,
    /// Extra attempts for a task whose run failed for infrastructure reasons.
    pub max_retries_per_task: u32,
    pub max_requestors: usize,
    pub max_jobs_per_requestor: usize,
    /// Resume every unfinished saga at startup.
    pub recover_jobs_on_startup: bool,
    /// Used for tasks without a timeout of their own.
    pub default_task_timeout: Duration,
    pub saga_log: SagaLogKind,
    /// Limits of the CloudScoot Thrift port; not part of Scoot's JSON (the binary's
    /// `-thrift_*` flags set them).
    pub thrift: ServeOptions,
    /// How long a task may wait while no ready worker can run it before it is ended
    /// (FAILED_PRECONDITION); not part of Scoot's JSON (`-unmatched_platform_timeout`).
    pub unmatched_platform_timeout: Duration,
    /// How long a worker that is no longer listed, or that reports itself unhealthy (marked
    /// flaky), is kept before it is forgotten; Scoot's minute by default (`-lost_worker_timeout`).
    pub lost_worker_timeout: Duration,
    /// The host name other machines reach this scheduler at, for the addresses a leader
    /// publishes in its lease; not part of Scoot's JSON (`-advertise_host`).
    pub advertise_host: Option<String>,
}

/// The default of [`SchedulerConfig::unmatched_platform_timeout`]: long enough for a worker to
/// restart, short enough that a build asking for a platform the cluster lacks fails clearly.
pub const DEFAULT_UNMATCHED_PLATFORM_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The default of [`SchedulerConfig::lost_worker_timeout`], Scoot's `maxLostDuration`.
pub const DEFAULT_LOST_WORKER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "PascalCase", default)]
struct JsonConfig {
    cluster: Option<JsonCluster>,
    workers: Option<JsonWorkers>,
    scheduler_config: Option<JsonScheduler>,
    saga_log: Option<JsonSagaLog>,
}

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct JsonCluster {
    #[serde(rename = "Type")]
    kind: String,
    count: i64,
    file: Option<PathBuf>,
    name: Option<String>,
    port: Option<u16>,
    refresh_sec: Option<u64>,
}

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct JsonWorkers {
    #[serde(rename = "Type")]
    kind: String,
    polling_period: Option<String>,
}

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct JsonScheduler {
    #[serde(rename = "Type")]
    kind: String,
    max_retries_per_task: i64,
    max_requestors: i64,
    max_jobs_per_requestor: i64,
    debug_mode: bool,
    recover_jobs_on_startup: bool,
    default_task_timeout: Option<String>,
}

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(rename_all = "PascalCase", default)]
struct JsonSagaLog {
    #[serde(rename = "Type")]
    kind: String,
    directory: Option<PathBuf>,
    url: Option<String>,
    pool_size: i64,
    lease_sec: Option<f64>,
    expiration_sec: i64,
    #[serde(rename = "GCIntervalSec")]
    gc_interval_sec: i64,
}

const DEFAULT: &str = r#"{
  "Cluster": {"Type": "memory"},
  "Workers": {"Type": "local"},
  "SchedulerConfig": {"Type": "stateful", "MaxRetriesPerTask": 0, "DefaultTaskTimeout": "30m"},
  "SagaLog": {"Type": "memory"}
}"#;

const LOCAL_LOCAL: &str = r#"{
  "Cluster": {"Type": "local"},
  "Workers": {"Type": "rpc", "PollingPeriod": "250ms"},
  "SchedulerConfig": {"Type": "stateful", "MaxRetriesPerTask": 0, "DebugMode": false,
                      "RecoverJobsOnStartup": true, "DefaultTaskTimeout": "30m"},
  "SagaLog": {"Type": "file", "Directory": ".scootdata/filesagalog"}
}"#;

const LOCAL_MEMORY: &str = r#"{
  "Cluster": {"Type": "memory", "Count": 10},
  "SchedulerConfig": {"Type": "stateful", "MaxRetriesPerTask": 0, "DebugMode": false,
                      "RecoverJobsOnStartup": false, "DefaultTaskTimeout": "30m"},
  "SagaLog": {"Type": "memory", "ExpirationSec": 0, "GCIntervalSec": 1}
}"#;

impl SchedulerConfig {
    /// Parses `-config`: a built-in name, a JSON file path or JSON text.
    pub fn from_flag(value: &str) -> Result<SchedulerConfig, ConfigError> {
        let text = match value {
            "default" => DEFAULT.to_string(),
            "local.local" => LOCAL_LOCAL.to_string(),
            "local.memory" => LOCAL_MEMORY.to_string(),
            v if v.trim_start().starts_with('{') => v.to_string(),
            v if std::path::Path::new(v).is_file() => {
                std::fs::read_to_string(v).map_err(|source| ConfigError::Read {
                    path: v.to_string(),
                    source,
                })?
            }
            v => return Err(ConfigError::Unknown(v.to_string())),
        };
        SchedulerConfig::from_json(&text)
    }

    pub fn from_json(text: &str) -> Result<SchedulerConfig, ConfigError> {
        let given: JsonConfig = serde_json::from_str(text)?;
        let default: JsonConfig = serde_json::from_str(DEFAULT)?;
        let cluster = section("Cluster", given.cluster, default.cluster, |c| &c.kind)?;
        let workers = section("Workers", given.workers, default.workers, |w| &w.kind)?;
        // Scoot has one scheduler type, so a SchedulerConfig without one means it.
        let sched = match given.scheduler_config {
            Some(mut s) if s.kind.is_empty() => {
                s.kind = "stateful".into();
                s
            }
            given => given.or(default.scheduler_config).unwrap_or_default(),
        };
        if sched.kind != "stateful" {
            return Err(ConfigError::Invalid(format!(
                "unknown SchedulerConfig.Type {:?} (the one type is \"stateful\")",
                sched.kind
            )));
        }
        let saga = section("SagaLog", given.saga_log, default.saga_log, |s| &s.kind)?;

        if sched.debug_mode {
            return Err(ConfigError::Invalid(
                "SchedulerConfig.DebugMode (a stopped loop for Scoot's unit tests) is not supported".into(),
            ));
        }
        let cluster = match cluster.kind.as_str() {
            "local" | "memory" => ClusterSource::LocalProcesses,
            "static" => ClusterSource::StaticFile(cluster.file.ok_or_else(|| {
                ConfigError::Invalid("Cluster.Type \"static\" needs Cluster.File".into())
            })?),
            "dns" => ClusterSource::Dns {
                name: cluster.name.filter(|n| !n.is_empty()).ok_or_else(|| {
                    ConfigError::Invalid("Cluster.Type \"dns\" needs Cluster.Name".into())
                })?,
                port: cluster.port.filter(|p| *p != 0).ok_or_else(|| {
                    ConfigError::Invalid(
                        "Cluster.Type \"dns\" needs Cluster.Port (the workers' Thrift port)".into(),
                    )
                })?,
                refresh: Duration::from_secs(cluster.refresh_sec.unwrap_or(10).max(1)),
            },
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown Cluster.Type {other:?}"
                )));
            }
        };
        let polling_period = duration(
            "Workers.PollingPeriod",
            workers.polling_period,
            Duration::from_millis(250),
        )?;
        let default_task_timeout = duration(
            "SchedulerConfig.DefaultTaskTimeout",
            sched.default_task_timeout,
            Duration::from_secs(30 * 60),
        )?;
        let seconds = |s: i64| (s > 0).then(|| Duration::from_secs(s as u64));
        let gc_interval = seconds(saga.gc_interval_sec).unwrap_or(Duration::from_secs(60));
        let saga_log = match saga.kind.as_str() {
            "memory" => SagaLogKind::Memory {
                retention: seconds(saga.expiration_sec),
                gc_interval,
            },
            "file" => SagaLogKind::File {
                directory: saga.directory.ok_or_else(|| {
                    ConfigError::Invalid("SagaLog.Type \"file\" needs SagaLog.Directory".into())
                })?,
                // A file log keeps ended sagas a week unless told otherwise (Scoot kept them forever).
                retention: seconds(saga.expiration_sec)
                    .or(Some(Duration::from_secs(7 * 24 * 3600))),
                gc_interval,
            },
            "postgres" => SagaLogKind::Postgres {
                url: saga.url.filter(|u| !u.is_empty()).ok_or_else(|| {
                    ConfigError::Invalid(
                        "SagaLog.Type \"postgres\" needs SagaLog.Url (postgresql://user@host:port/database)"
                            .into(),
                    )
                })?,
                // As the file log: a week, since the database is shared and outlives schedulers.
                retention: seconds(saga.expiration_sec)
                    .or(Some(Duration::from_secs(7 * 24 * 3600))),
                gc_interval,
                pool_size: if saga.pool_size > 0 {
                    saga.pool_size as usize
                } else {
                    DEFAULT_POSTGRES_POOL_SIZE
                },
                lease: match saga.lease_sec {
                    None => DEFAULT_LEASE,
                    Some(s) if s.is_finite() && (0.3..=3600.0).contains(&s) => {
                        Duration::from_secs_f64(s)
                    }
                    Some(s) => {
                        return Err(ConfigError::Invalid(format!(
                            "SagaLog.LeaseSec {s} is out of range (0.3 to 3600 seconds)"
                        )));
                    }
                },
            },
            other => {
                return Err(ConfigError::Invalid(format!(
                    "unknown SagaLog.Type {other:?}"
                )));
            }
        };
        let positive_or = |v: i64, default: usize| if v > 0 { v as usize } else { default };
        Ok(SchedulerConfig {
            cluster,
            polling_period,
            max_retries_per_task: sched.max_retries_per_task.clamp(0, i64::from(u32::MAX)) as u32,
            max_requestors: positive_or(sched.max_requestors, 10),
            max_jobs_per_requestor: positive_or(sched.max_jobs_per_requestor, 100),
            recover_jobs_on_startup: sched.recover_jobs_on_startup,
            default_task_timeout,
            saga_log,
            thrift: ServeOptions::default(),
            unmatched_platform_timeout: DEFAULT_UNMATCHED_PLATFORM_TIMEOUT,
            lost_worker_timeout: DEFAULT_LOST_WORKER_TIMEOUT,
            advertise_host: None,
        })
    }
}

fn duration(
    field: &'static str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value.as_deref() {
        None | Some("") | Some("0") => Ok(default),
        Some(v) => humantime::parse_duration(v).map_err(|e| ConfigError::Duration {
            field,
            value: v.to_string(),
            reason: e.to_string(),
        }),
    }
}

/// The section as given, or the default's when the config has none. A section given without a
/// Type is refused: taking the default's Type would drop its other settings unseen.
fn section<T: Default>(
    name: &str,
    given: Option<T>,
    default: Option<T>,
    kind: impl Fn(&T) -> &String,
) -> Result<T, ConfigError> {
    match given {
        Some(s) if kind(&s).is_empty() => Err(ConfigError::Invalid(format!(
            "the {name} section has no Type"
        ))),
        Some(s) => Ok(s),
        None => Ok(default.unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_configs() {
        let local = SchedulerConfig::from_flag("local.local").unwrap();
        assert_eq!(local.cluster, ClusterSource::LocalProcesses);
        assert!(local.recover_jobs_on_startup);
        assert_eq!(local.polling_period, Duration::from_millis(250));
        assert!(
            matches!(local.saga_log, SagaLogKind::File { ref directory, .. } if directory.ends_with("filesagalog"))
        );

        let memory = SchedulerConfig::from_flag("local.memory").unwrap();
        assert!(!memory.recover_jobs_on_startup);
        assert!(matches!(
            memory.saga_log,
            SagaLogKind::Memory {
                retention: None,
                ..
            }
        ));

        let default = SchedulerConfig::from_flag("default").unwrap();
        assert_eq!(default.default_task_timeout, Duration::from_secs(1800));
        assert_eq!(
            (default.max_requestors, default.max_jobs_per_requestor),
            (10, 100)
        );
        assert_eq!(default.max_retries_per_task, 0);
    }

    #[test]
    fn a_scheduler_section_without_a_type_keeps_its_settings() {
        let cfg =
            SchedulerConfig::from_flag(r#"{"SchedulerConfig": {"MaxRequestors": 100}}"#).unwrap();
        assert_eq!(cfg.max_requestors, 100);
        let err = SchedulerConfig::from_flag(r#"{"SchedulerConfig": {"Type": "stateless"}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("stateless"), "{err}");
    }

    #[test]
    fn a_section_without_a_type_is_refused_not_replaced() {
        for text in [
            r#"{"SagaLog": {"Directory": "/var/lib/sagas"}}"#,
            r#"{"Cluster": {"File": "/etc/scoot/workers"}}"#,
            r#"{"Workers": {"PollingPeriod": "1s"}}"#,
        ] {
            let err = SchedulerConfig::from_flag(text).unwrap_err();
            assert!(err.to_string().contains("has no Type"), "{text}: {err}");
        }
    }

    #[test]
    fn json_text_with_missing_sections_falls_back_to_default() {
        let cfg = SchedulerConfig::from_flag(
            r#"{"Cluster": {"Type": "static", "File": "/tmp/workers"},
                "SchedulerConfig": {"Type": "stateful", "MaxRetriesPerTask": 2, "DefaultTaskTimeout": "90s"}}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.cluster,
            ClusterSource::StaticFile("/tmp/workers".into())
        );
        assert_eq!(cfg.max_retries_per_task, 2);
        assert_eq!(cfg.default_task_timeout, Duration::from_secs(90));
        assert!(matches!(cfg.saga_log, SagaLogKind::Memory { .. }));
    }

    #[test]
    fn json_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sched.json");
        std::fs::write(
            &path,
            r#"{"SagaLog": {"Type": "file", "Directory": "/x", "ExpirationSec": 60}}"#,
        )
        .unwrap();
        let cfg = SchedulerConfig::from_flag(path.to_str().unwrap()).unwrap();
        assert!(matches!(
            cfg.saga_log,
            SagaLogKind::File { retention: Some(r), .. } if r == Duration::from_secs(60)
        ));
    }

    #[test]
    fn postgres_saga_log() {
        let cfg = SchedulerConfig::from_json(
            r#"{"SagaLog": {"Type": "postgres", "Url": "postgresql://scoot@db:5432/scoot",
                "ExpirationSec": 3600, "GCIntervalSec": 30}}"#,
        )
        .unwrap();
        assert_eq!(
            cfg.saga_log,
            SagaLogKind::Postgres {
                url: "postgresql://scoot@db:5432/scoot".into(),
                retention: Some(Duration::from_secs(3600)),
                gc_interval: Duration::from_secs(30),
                pool_size: DEFAULT_POSTGRES_POOL_SIZE,
                lease: DEFAULT_LEASE,
            }
        );
    }

    #[test]
    fn dns_discovery() {
        let config = SchedulerConfig::from_json(
            r#"{"Cluster": {"Type": "dns", "Name": "scoot-workers.scoot.svc", "Port": 9092,
                "RefreshSec": 30}}"#,
        )
        .unwrap();
        assert_eq!(
            config.cluster,
            ClusterSource::Dns {
                name: "scoot-workers.scoot.svc".into(),
                port: 9092,
                refresh: Duration::from_secs(30)
            }
        );
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        for (value, needle) in [
            ("local.nope", "not a built-in name"),
            ("{not json", "invalid config JSON"),
            (
                r#"{"Cluster": {"Type": "zookeeper"}}"#,
                "unknown Cluster.Type",
            ),
            (r#"{"Cluster": {"Type": "static"}}"#, "needs Cluster.File"),
            (
                r#"{"Cluster": {"Type": "dns", "Port": 9092}}"#,
                "needs Cluster.Name",
            ),
            (
                r#"{"Cluster": {"Type": "dns", "Name": "w"}}"#,
                "needs Cluster.Port",
            ),
            (
                r#"{"SagaLog": {"Type": "file"}}"#,
                "needs SagaLog.Directory",
            ),
            (r#"{"SagaLog": {"Type": "postgres"}}"#, "needs SagaLog.Url"),
            (
                r#"{"SagaLog": {"Type": "postgres", "Url": "postgresql://h/d", "LeaseSec": 0}}"#,
                "LeaseSec 0 is out of range",
            ),
            (
                r#"{"SchedulerConfig": {"Type": "stateful", "DefaultTaskTimeout": "soon"}}"#,
                "invalid duration",
            ),
        ] {
            let err = SchedulerConfig::from_flag(value).unwrap_err().to_string();
            assert!(err.contains(needle), "{value}: {err}");
        }
    }
}
