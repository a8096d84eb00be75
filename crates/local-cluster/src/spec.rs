//! What a cluster is made of: its strategy and size, Scoot's port layout, the scheduler's
//! `-config` and the `~/.cloudscootaddr` file. Everything here is pure.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde_json::json;

use crate::error::ClusterError;

/// Which scheduler configuration the cluster runs, as Scoot's `--strategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Jobs in a file saga log under `.scootdata/filesagalog` (relative to the current
    /// directory), recovered when a cluster is started again from the same directory.
    LocalLocal,
    /// Jobs in an in-memory saga log; nothing survives the cluster. Scoot's default.
    #[default]
    LocalMemory,
    /// Highly available: a private PostgreSQL server in the state directory holds the saga log,
    /// two schedulers share it (one leads, the other stands by), and the CAS is sharded over
    /// the apiservers (two replicas unless `--cas_replicas` says otherwise).
    LocalHa,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::LocalLocal => "local.local",
            Strategy::LocalMemory => "local.memory",
            Strategy::LocalHa => "local.ha",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = ClusterError;

    fn from_str(s: &str) -> Result<Strategy, ClusterError> {
        match s {
            "local.local" => Ok(Strategy::LocalLocal),
            "local.memory" => Ok(Strategy::LocalMemory),
            "local.ha" => Ok(Strategy::LocalHa),
            other => Err(ClusterError::UnknownStrategy(other.to_string())),
        }
    }
}

/// Everything [`crate::Cluster::start`] needs.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub strategy: Strategy,
    pub workers: usize,
    /// How many apiservers to start if the `apiserver` binary exists (none otherwise).
    pub apiservers: usize,
    /// Passed as `-log_level` to every child.
    pub log_level: String,
    /// Added to every port of Scoot's layout so that several clusters can run side by side.
    pub port_offset: u16,
    /// Where `apiserver`, `workerserver` and `scheduler` are.
    pub bin_dir: PathBuf,
    /// Leave the state directory (logs, worker list, bundles) in place at teardown.
    pub keep_logs: bool,
    /// How long a child may take to open its ports.
    pub ready_timeout: Duration,
    /// How long children may take to stop after SIGTERM before they are killed.
    pub stop_grace: Duration,
    /// Passed to workers as `-drain_grace`: how long a running task may go on after SIGTERM
    /// before the worker aborts it. Keep it well under `stop_grace`.
    pub worker_drain_grace: Duration,
    /// Passed to workers as `-sandbox` (the modes their actions run in, or `off`); `None`
    /// leaves the workers' default (host-tools and rootfs).
    pub worker_sandbox: Option<String>,
    /// TLS on every gRPC and HTTP port, and tokens on the REAPI ports; `None`: plaintext and
    /// open, as Scoot ran.
    pub security: Option<ClusterSecurity>,
    /// `Some(R)`: the CAS and action cache are sharded over the apiservers, each blob on R of
    /// them (the scheduler and workers get `-cas_shards` and `-cas_replicas`); `None`: the
    /// scheduler keeps its own CAS with the first apiserver's behind it.
    pub cas_replicas: Option<usize>,
}

/// The files of a cluster that runs with TLS and tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSecurity {
    /// Every server's certificate and key (valid for `localhost`), also its client certificate.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signed `cert`, trusted by every child.
    pub ca: PathBuf,
    /// The token file of the scheduler and apiservers (`-auth_tokens`).
    pub tokens: PathBuf,
    /// The token the workers (and the scheduler, for the apiserver's CAS) send.
    pub member_token: PathBuf,
}

impl ClusterSecurity {
    /// The flags every child gets: serve with the certificate, trust the CA.
    pub(crate) fn tls_flags(&self) -> Vec<String> {
        vec![
            "-tls_cert".into(),
            self.cert.display().to_string(),
            "-tls_key".into(),
            self.key.display().to_string(),
            "-tls_ca".into(),
            self.ca.display().to_string(),
        ]
    }

    /// A server of REAPI calls: checks tokens (a call without one uses its connection's, for
    /// Bazel 2.1) and sends the members' token to the CAS it reads from.
    pub(crate) fn token_server_flags(&self) -> Vec<String> {
        vec![
            "-auth_tokens".into(),
            self.tokens.display().to_string(),
            "-auth_connection_tokens".into(),
        ]
    }

    pub(crate) fn member_flags(&self) -> Vec<String> {
        vec![
            "-auth_token_file".into(),
            self.member_token.display().to_string(),
        ]
    }
}

impl ClusterSpec {
    /// Scoot's defaults: `local.memory`, 5 workers, 3 apiservers, log level `info`.
    pub fn new(bin_dir: impl Into<PathBuf>) -> ClusterSpec {
        ClusterSpec {
            strategy: Strategy::default(),
            workers: 5,
            apiservers: 3,
            log_level: "info".to_string(),
            port_offset: 0,
            bin_dir: bin_dir.into(),
            keep_logs: false,
            ready_timeout: Duration::from_secs(20),
            stop_grace: Duration::from_secs(5),
            worker_drain_grace: Duration::from_secs(2),
            worker_sandbox: None,
            security: None,
            cas_replicas: None,
        }
    }
}

pub const SCHEDULER_THRIFT_PORT: u16 = 9090;
pub const SCHEDULER_HTTP_PORT: u16 = 9091;
pub const SCHEDULER_GRPC_PORT: u16 = 9099;
/// The second scheduler of a `local.ha` cluster: thrift, http and grpc on these three.
pub const STANDBY_SCHEDULER_BASE_PORT: u16 = 9095;
/// Worker `i` serves HTTP on `WORKER_BASE_PORT + 2i` and Thrift on the port after it.
pub const WORKER_BASE_PORT: u16 = 10100;
pub const APISERVER_HTTP_BASE_PORT: u16 = 11100;
pub const APISERVER_GRPC_BASE_PORT: u16 = 12100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerPorts {
    pub thrift: u16,
    pub http: u16,
    pub grpc: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerPorts {
    pub http: u16,
    pub thrift: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiServerPorts {
    pub http: u16,
    pub grpc: u16,
}

/// The ports of every process of a cluster (Scoot's `scheduler/setup` layout, shifted by an
/// offset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortLayout {
    pub scheduler: SchedulerPorts,
    /// The second scheduler's, in a `local.ha` cluster.
    pub standby: Option<SchedulerPorts>,
    pub workers: Vec<WorkerPorts>,
    pub apiservers: Vec<ApiServerPorts>,
}

impl PortLayout {
    /// More workers would run into the apiservers' HTTP ports.
    pub const MAX_WORKERS: usize = ((APISERVER_HTTP_BASE_PORT - WORKER_BASE_PORT) / 2) as usize;
    /// More apiservers would run into their own gRPC ports.
    pub const MAX_APISERVERS: usize =
        (APISERVER_GRPC_BASE_PORT - APISERVER_HTTP_BASE_PORT) as usize;

    pub fn new(offset: u16, workers: usize, apiservers: usize) -> Result<PortLayout, ClusterError> {
        if workers > Self::MAX_WORKERS {
            return Err(ClusterError::TooMany {
                what: "workers",
                count: workers,
                max: Self::MAX_WORKERS,
            });
        }
        if apiservers > Self::MAX_APISERVERS {
            return Err(ClusterError::TooMany {
                what: "apiservers",
                count: apiservers,
                max: Self::MAX_APISERVERS,
            });
        }
        // Counts are bounded above, so these casts and sums cannot overflow u32.
        let port = |base: u16, step: usize| -> Result<u16, ClusterError> {
            let value = u32::from(base) + step as u32 + u32::from(offset);
            u16::try_from(value).map_err(|_| ClusterError::PortOutOfRange {
                offset,
                port: value,
            })
        };
        let scheduler = SchedulerPorts {
            thrift: port(SCHEDULER_THRIFT_PORT, 0)?,
            http: port(SCHEDULER_HTTP_PORT, 0)?,
            grpc: port(SCHEDULER_GRPC_PORT, 0)?,
        };
        let workers = (0..workers)
            .map(|i| {
                Ok(WorkerPorts {
                    http: port(WORKER_BASE_PORT, 2 * i)?,
                    thrift: port(WORKER_BASE_PORT, 2 * i + 1)?,
                })
            })
            .collect::<Result<Vec<_>, ClusterError>>()?;
        let apiservers = (0..apiservers)
            .map(|i| {
                Ok(ApiServerPorts {
                    http: port(APISERVER_HTTP_BASE_PORT, i)?,
                    grpc: port(APISERVER_GRPC_BASE_PORT, i)?,
                })
            })
            .collect::<Result<Vec<_>, ClusterError>>()?;
        Ok(PortLayout {
            scheduler,
            standby: None,
            workers,
            apiservers,
        })
    }

    /// This layout with a second scheduler's ports.
    pub fn with_standby(mut self, offset: u16) -> Result<PortLayout, ClusterError> {
        let port = |step: u16| {
            let value =
                u32::from(STANDBY_SCHEDULER_BASE_PORT) + u32::from(step) + u32::from(offset);
            u16::try_from(value).map_err(|_| ClusterError::PortOutOfRange {
                offset,
                port: value,
            })
        };
        self.standby = Some(SchedulerPorts {
            thrift: port(0)?,
            http: port(1)?,
            grpc: port(2)?,
        });
        Ok(self)
    }

    /// Every scheduler's ports, the first (which leads at the start) first.
    pub fn schedulers(&self) -> impl Iterator<Item = SchedulerPorts> + '_ {
        std::iter::once(self.scheduler).chain(self.standby)
    }
}

/// `localhost:<port>`, the form every address of a local cluster takes.
pub fn local_addr(port: u16) -> String {
    format!("localhost:{port}")
}

/// The scheduler's `-config` JSON for `strategy`. Workers are not discovered from the process
/// table (that would pick up other clusters on the machine) but read from `workers_file`.
/// The scheduler's `-config`; `database` is the saga log's PostgreSQL URL, which `local.ha`
/// needs (and the others ignore).
pub fn scheduler_config(
    strategy: Strategy,
    workers_file: &Path,
    database: Option<&str>,
) -> Result<String, ClusterError> {
    let file = workers_file
        .to_str()
        .ok_or_else(|| ClusterError::NonUtf8Path(workers_file.to_path_buf()))?;
    let cluster = json!({"Type": "static", "File": file});
    let config = match strategy {
        Strategy::LocalLocal => json!({
            "Cluster": cluster,
            "Workers": {"Type": "rpc", "PollingPeriod": "250ms"},
            "SchedulerConfig": {
                "Type": "stateful",
                "MaxRetriesPerTask": 0,
                "RecoverJobsOnStartup": true,
                "DefaultTaskTimeout": "30m"
            },
            "SagaLog": {"Type": "file", "Directory": ".scootdata/filesagalog"}
        }),
        // As Scoot's local.memory, no Workers section: the scheduler's default applies.
        Strategy::LocalMemory => json!({
            "Cluster": cluster,
            "SchedulerConfig": {
                "Type": "stateful",
                "MaxRetriesPerTask": 0,
                "RecoverJobsOnStartup": false,
                "DefaultTaskTimeout": "30m"
            },
            "SagaLog": {"Type": "memory", "ExpirationSec": 0, "GCIntervalSec": 1}
        }),
        Strategy::LocalHa => json!({
            "Cluster": cluster,
            "Workers": {"Type": "rpc", "PollingPeriod": "250ms"},
            "SchedulerConfig": {
                "Type": "stateful",
                "MaxRetriesPerTask": 0,
                "RecoverJobsOnStartup": true,
                "DefaultTaskTimeout": "30m"
            },
            "SagaLog": {
                "Type": "postgres",
                "Url": database.ok_or(ClusterError::NoDatabase)?
            }
        }),
    };
    Ok(config.to_string())
}

/// The static worker list the scheduler reads: one `localhost:<thrift port>` a line.
pub fn workers_file_contents(layout: &PortLayout) -> String {
    layout
        .workers
        .iter()
        .map(|w| format!("{}\n", local_addr(w.thrift)))
        .collect()
}

/// `<home>/.cloudscootaddr<scoot_id>`, where Scoot's clients look for the cluster.
pub fn cloudscootaddr_path(home: &Path, scoot_id: &str) -> PathBuf {
    home.join(format!(".cloudscootaddr{scoot_id}"))
}

/// The scheduler's Thrift address, then the first apiserver's HTTP address when one runs.
pub fn cloudscootaddr_contents(scheduler_thrift: &str, apiserver_http: Option<&str>) -> String {
    let mut text = format!("{scheduler_thrift}\n");
    if let Some(api) = apiserver_http {
        text.push_str(api);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_parse_and_print() {
        assert_eq!(
            "local.memory".parse::<Strategy>().unwrap(),
            Strategy::LocalMemory
        );
        assert_eq!(
            "local.local".parse::<Strategy>().unwrap(),
            Strategy::LocalLocal
        );
        assert_eq!(Strategy::default(), Strategy::LocalMemory);
        assert_eq!(Strategy::LocalLocal.to_string(), "local.local");
        let err = "local.disk".parse::<Strategy>().unwrap_err();
        assert!(err.to_string().contains("local.disk"));
    }

    #[test]
    fn scoot_port_layout() {
        let layout = PortLayout::new(0, 5, 3).unwrap();
        assert_eq!(
            layout.scheduler,
            SchedulerPorts {
                thrift: 9090,
                http: 9091,
                grpc: 9099
            }
        );
        assert_eq!(
            layout.workers.first(),
            Some(&WorkerPorts {
                http: 10100,
                thrift: 10101
            })
        );
        assert_eq!(
            layout.workers.last(),
            Some(&WorkerPorts {
                http: 10108,
                thrift: 10109
            })
        );
        assert_eq!(
            layout.apiservers,
            vec![
                ApiServerPorts {
                    http: 11100,
                    grpc: 12100
                },
                ApiServerPorts {
                    http: 11101,
                    grpc: 12101
                },
                ApiServerPorts {
                    http: 11102,
                    grpc: 12102
                },
            ]
        );
    }

    #[test]
    fn offset_shifts_every_port() {
        let layout = PortLayout::new(1000, 2, 1).unwrap();
        assert_eq!(layout.scheduler.thrift, 10090);
        assert_eq!(layout.scheduler.grpc, 10099);
        assert_eq!(layout.workers[1].thrift, 11103);
        assert_eq!(layout.apiservers[0].grpc, 13100);
    }

    #[test]
    fn layout_limits() {
        assert!(PortLayout::new(0, PortLayout::MAX_WORKERS, PortLayout::MAX_APISERVERS).is_ok());
        let last = PortLayout::new(0, PortLayout::MAX_WORKERS, 1).unwrap();
        assert!(last.workers.last().unwrap().thrift < last.apiservers[0].http);
        assert!(matches!(
            PortLayout::new(0, PortLayout::MAX_WORKERS + 1, 0),
            Err(ClusterError::TooMany {
                what: "workers",
                ..
            })
        ));
        assert!(matches!(
            PortLayout::new(0, 0, PortLayout::MAX_APISERVERS + 1),
            Err(ClusterError::TooMany {
                what: "apiservers",
                ..
            })
        ));
        assert!(matches!(
            PortLayout::new(60000, 1, 0),
            Err(ClusterError::PortOutOfRange { .. })
        ));
        // No apiservers: only the worker ports have to fit.
        assert!(PortLayout::new(55000, 1, 0).is_ok());
        assert!(PortLayout::new(55000, 1, 1).is_err());
    }

    #[test]
    fn a_highly_available_layout_has_a_second_scheduler() {
        let layout = PortLayout::new(7, 1, 3).unwrap();
        assert_eq!(layout.schedulers().count(), 1);
        let layout = layout.with_standby(7).unwrap();
        assert_eq!(
            layout.standby,
            Some(SchedulerPorts {
                thrift: 9102,
                http: 9103,
                grpc: 9104
            })
        );
        let ports: Vec<u16> = layout.schedulers().map(|s| s.thrift).collect();
        assert_eq!(ports, [9097, 9102]);
    }

    #[test]
    fn local_ha_config_puts_the_saga_log_in_postgres() {
        let url = "postgresql://scoot@127.0.0.1:5433/scoot";
        let text = scheduler_config(Strategy::LocalHa, Path::new("/w"), Some(url)).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["SagaLog"], json!({"Type": "postgres", "Url": url}));
        assert_eq!(value["SchedulerConfig"]["RecoverJobsOnStartup"], true);
        assert!(matches!(
            scheduler_config(Strategy::LocalHa, Path::new("/w"), None),
            Err(ClusterError::NoDatabase)
        ));
        assert_eq!("local.ha".parse::<Strategy>().unwrap(), Strategy::LocalHa);
    }

    #[test]
    fn local_local_config() {
        let text =
            scheduler_config(Strategy::LocalLocal, Path::new("/tmp/c/workers"), None).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({
                "Cluster": {"Type": "static", "File": "/tmp/c/workers"},
                "Workers": {"Type": "rpc", "PollingPeriod": "250ms"},
                "SchedulerConfig": {"Type": "stateful", "MaxRetriesPerTask": 0,
                                    "RecoverJobsOnStartup": true, "DefaultTaskTimeout": "30m"},
                "SagaLog": {"Type": "file", "Directory": ".scootdata/filesagalog"}
            })
        );
        assert!(!text.contains('\n'), "one argv element, one line");
    }

    #[test]
    fn local_memory_config() {
        let text = scheduler_config(Strategy::LocalMemory, Path::new("/w \"q\""), None).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            json!({
                "Cluster": {"Type": "static", "File": "/w \"q\""},
                "SchedulerConfig": {"Type": "stateful", "MaxRetriesPerTask": 0,
                                    "RecoverJobsOnStartup": false, "DefaultTaskTimeout": "30m"},
                "SagaLog": {"Type": "memory", "ExpirationSec": 0, "GCIntervalSec": 1}
            })
        );
    }

    #[test]
    fn workers_file_lists_thrift_addresses() {
        let layout = PortLayout::new(3, 2, 0).unwrap();
        assert_eq!(
            workers_file_contents(&layout),
            "localhost:10104\nlocalhost:10106\n"
        );
        assert_eq!(
            workers_file_contents(&PortLayout::new(0, 0, 0).unwrap()),
            ""
        );
    }

    #[test]
    fn cloudscootaddr() {
        assert_eq!(
            cloudscootaddr_path(Path::new("/home/u"), ""),
            Path::new("/home/u/.cloudscootaddr")
        );
        assert_eq!(
            cloudscootaddr_path(Path::new("/home/u"), "7"),
            Path::new("/home/u/.cloudscootaddr7")
        );
        assert_eq!(
            cloudscootaddr_contents("localhost:9090", Some("localhost:11100")),
            "localhost:9090\nlocalhost:11100\n"
        );
        assert_eq!(
            cloudscootaddr_contents("localhost:9090", None),
            "localhost:9090\n"
        );
    }
}
