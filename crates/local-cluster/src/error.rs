//! What can go wrong while starting a cluster.

use std::path::PathBuf;
use std::time::Duration;

use crate::child::ChildExit;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("unknown strategy {0:?} (expected local.memory, local.local or local.ha)")]
    UnknownStrategy(String),
    #[error("{count} {what} do not fit the port layout (at most {max})")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("port offset {offset} would put a port at {port}, past 65535")]
    PortOutOfRange { offset: u16, port: u32 },
    #[error("{name} not found at {}", path.display())]
    MissingBinary { name: &'static str, path: PathBuf },
    #[error(
        "port {port}, needed by {user}, is already in use (is another cluster running? choose another port offset)"
    )]
    PortInUse { port: u16, user: String },
    #[error("cannot create the cluster state directory: {0}")]
    StateDir(#[source] std::io::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("path {} is not valid UTF-8", .0.display())]
    NonUtf8Path(PathBuf),
    #[error("cannot start {name} ({}): {source}", program.display())]
    Spawn {
        name: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} did not open port {port} within {}{}", humanize(*waited), tail_suffix(log_tail))]
    NotReady {
        name: String,
        port: u16,
        waited: Duration,
        log_tail: String,
    },
    #[error(
        "a sharded CAS with {replicas} replicas of each blob needs at least {replicas} \
         apiservers; {apiservers} would start"
    )]
    TooFewShards { replicas: usize, apiservers: usize },
    #[error("local.ha needs a PostgreSQL URL for the saga log")]
    NoDatabase,
    #[error("cannot start the cluster's PostgreSQL server: {0}")]
    Database(#[source] crate::postgres::PostgresError),
    #[error("no scheduler led within {}; the first one's log: {}", humanize(*waited), log.display())]
    NoLeader { waited: Duration, log: PathBuf },
    #[error("cannot set up TLS to ask the scheduler whether it leads: {0}")]
    Tls(String),
    #[error("the cluster's startup was cancelled")]
    Cancelled,
    #[error("{} {} while the cluster was starting{}", .0.name, .0.status, tail_suffix(&.0.log_tail))]
    ExitedDuringStartup(ChildExit),
}

fn humanize(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// `"; last lines of its log:\n…"`, or nothing for an empty log.
pub(crate) fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        "; its log is empty".to_string()
    } else {
        format!("; last lines of its log:\n{tail}")
    }
}
