//! The `scheduler` binary: its flags, and [`run`], which binds the listeners, opens the CAS of
//! the Remote Execution API and serves until shutdown.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use scoot_bin_util::{ListenError, listen};
use scoot_cas_client::sharded::DEFAULT_REPLICAS;
use scoot_cas_client::{ShardSpec, ShardSpecError};
use scoot_cas_services::stores::{DEFAULT_AC_BYTES, DEFAULT_CAS_BYTES, open_cas_stores};
use scoot_security::{AccessFlags, SecurityError, TransportFlags};
use scoot_thrift::server::{ServeOptions, ServeOptionsError};

use crate::SchedulerConfig;
use crate::config::ConfigError;
use crate::server::{ReapiCas, ReapiEndpoint, SchedulerError, SchedulerTls};

/// Scoot scheduler: accepts jobs over CloudScoot and runs their tasks on workers.
#[derive(Parser, Debug)]
#[command(name = "scheduler", version)]
pub struct Cli {
    /// Address for the CloudScoot Thrift API.
    #[arg(long = "thrift_addr", default_value = "localhost:9090")]
    pub thrift_addr: String,
    /// Address for HTTP (/health).
    #[arg(long = "http_addr", default_value = "localhost:9091")]
    pub http_addr: String,
    /// Address for the Bazel Remote Execution API (Execution, Operations, CAS, ByteStream,
    /// ActionCache, Capabilities); empty to serve none.
    #[arg(long = "grpc_addr", default_value = "localhost:9099")]
    pub grpc_addr: String,
    /// Directory of the CAS served on -grpc_addr (the action cache goes in its action-cache/
    /// subdirectory); a temporary directory, removed at exit, when not given.
    #[arg(long = "cas_dir")]
    pub cas_dir: Option<PathBuf>,
    /// Another CAS (`host:port`, e.g. the cluster's apiserver) consulted for blobs this
    /// scheduler's CAS lacks, so inputs uploaded there can be executed here.
    #[arg(long = "cas_fallback")]
    pub cas_fallback: Option<String>,
    /// Keep the CAS and action cache on these shards instead (the apiservers' gRPC addresses,
    /// `host:port,host:port,...`), each blob and result on -cas_replicas of them by rendezvous
    /// hashing; give the workers the same list and number. Excludes -cas_dir and -cas_fallback.
    #[arg(long = "cas_shards")]
    pub cas_shards: Option<String>,
    /// With -cas_shards: how many shards hold each blob (at most the number of shards).
    #[arg(long = "cas_replicas", default_value_t = DEFAULT_REPLICAS, requires = "cas_shards")]
    pub cas_replicas: usize,
    /// Bound of the CAS in bytes (least recently used blobs are evicted).
    #[arg(long = "cas_size", default_value_t = DEFAULT_CAS_BYTES)]
    pub cas_size: u64,
    /// Bound of the action cache in bytes.
    #[arg(long = "ac_size", default_value_t = DEFAULT_AC_BYTES)]
    pub ac_size: u64,
    /// default, local.local, local.memory, a JSON file or JSON text.
    #[arg(long = "config", default_value = "local.memory")]
    pub config: String,
    /// Connections the Thrift port holds at once; past this, new ones are closed at once.
    #[arg(long = "thrift_max_conns", default_value_t = 10_000)]
    pub thrift_max_conns: usize,
    /// Longest time a Thrift request may take to arrive, from its first byte.
    #[arg(long = "thrift_message_timeout", default_value = "30s", value_parser = humantime::parse_duration)]
    pub thrift_message_timeout: Duration,
    /// A Thrift connection that starts no request for this long is closed.
    #[arg(long = "thrift_idle_timeout", default_value = "15m", value_parser = humantime::parse_duration)]
    pub thrift_idle_timeout: Duration,
    /// A task that has waited this long while no ready worker offers the platform it asks for
    /// is ended with FAILED_PRECONDITION (at once when workers are ready and none can ever run
    /// it).
    #[arg(long = "unmatched_platform_timeout", default_value = "5m", value_parser = humantime::parse_duration)]
    pub unmatched_platform_timeout: Duration,
    /// A worker no longer listed, or reporting itself unhealthy (marked flaky), is forgotten
    /// after this long (Scoot's minute); its task goes to another worker.
    #[arg(long = "lost_worker_timeout", default_value = "1m", value_parser = humantime::parse_duration)]
    pub lost_worker_timeout: Duration,
    #[command(flatten)]
    pub grpc_limits: scoot_cas_services::limits::GrpcLimitFlags,
    /// With a PostgreSQL saga log: the host name or address other machines reach this
    /// scheduler at; the leader publishes its ports under it, and standbys name them to
    /// clients. Needed when -thrift_addr listens on every interface.
    #[arg(long = "advertise_host")]
    pub advertise_host: Option<String>,
    #[command(flatten)]
    pub transport: TransportFlags,
    #[command(flatten)]
    pub access: AccessFlags,
    /// trace, debug, info, warn or error.
    #[arg(long = "log_level", default_value = "info")]
    pub log_level: String,
    /// text (one line per event) or json (one object per line, with its spans' fields).
    #[arg(long = "log_format", value_enum, default_value_t = scoot_bin_util::LogFormat::Text)]
    pub log_format: scoot_bin_util::LogFormat,
}

/// Why the scheduler did not start or stopped with an error; each message is what the binary
/// prints before its causes.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("bad -config {0:?}")]
    Config(String, #[source] ConfigError),
    #[error("bad -thrift_max_conns, -thrift_message_timeout or -thrift_idle_timeout")]
    ThriftLimits(#[source] ServeOptionsError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot create a temporary CAS directory")]
    TemporaryCas(#[source] std::io::Error),
    #[error(transparent)]
    CasTask(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Cas(scoot_cas_services::stores::OpenStoresError),
    #[error("bad -cas_shards or -cas_replicas")]
    Shards(#[source] ShardSpecError),
    #[error("-cas_shards keeps the CAS and action cache on the shards; drop {0}")]
    ShardsAndLocal(&'static str),
    #[error("TLS or token set-up")]
    Security(#[source] SecurityError),
    #[error("scheduler failed")]
    Failed(#[source] SchedulerError),
}

fn listener_error(flag: &'static str, addr: &str) -> impl FnOnce(std::io::Error) -> ListenError {
    let addr = addr.to_string();
    move |source| ListenError { flag, addr, source }
}

/// Serves the scheduler the flags describe until `shutdown`.
pub async fn run(cli: Cli, shutdown: impl Future<Output = ()>) -> Result<(), CliError> {
    let mut config =
        SchedulerConfig::from_flag(&cli.config).map_err(|e| CliError::Config(cli.config, e))?;
    config.thrift = ServeOptions::with_limits(
        cli.thrift_max_conns,
        cli.thrift_message_timeout,
        cli.thrift_idle_timeout,
    )
    .map_err(CliError::ThriftLimits)?;
    config.unmatched_platform_timeout = cli.unmatched_platform_timeout;
    config.lost_worker_timeout = cli.lost_worker_timeout;
    config.advertise_host = cli.advertise_host;
    let server = cli
        .transport
        .server(&cli.access)
        .map_err(CliError::Security)?;
    let client = cli.transport.client().map_err(CliError::Security)?;
    let tls = SchedulerTls {
        thrift: server.thrift_tls.clone(),
        http: server.http_tls.clone(),
        // Asked for now: -thrift_tls without -tls_ca is refused at start, not at the first
        // worker.
        workers: client.thrift().map_err(CliError::Security)?,
    };
    let shards = match &cli.cas_shards {
        Some(list) => {
            if cli.cas_dir.is_some() {
                return Err(CliError::ShardsAndLocal("-cas_dir"));
            }
            if cli.cas_fallback.is_some() {
                return Err(CliError::ShardsAndLocal("-cas_fallback"));
            }
            Some(ShardSpec::parse(list, cli.cas_replicas).map_err(CliError::Shards)?)
        }
        None => None,
    };
    let thrift = listen("thrift_addr", &cli.thrift_addr).await?;
    let http = listen("http_addr", &cli.http_addr).await?;
    // Kept until exit: a temporary CAS directory is removed when this is dropped.
    let mut temporary_cas = None;
    let reapi = if cli.grpc_addr.is_empty() {
        None
    } else {
        let listener = listen("grpc_addr", &cli.grpc_addr).await?;
        let cas = match shards {
            Some(spec) => ReapiCas::Sharded(spec),
            None => {
                let dir = match cli.cas_dir {
                    Some(dir) => dir,
                    None => temporary_cas
                        .insert(
                            tempfile::Builder::new()
                                .prefix("scoot-scheduler-cas")
                                .tempdir()
                                .map_err(CliError::TemporaryCas)?,
                        )
                        .path()
                        .to_path_buf(),
                };
                let (cas_size, ac_size) = (cli.cas_size, cli.ac_size);
                let stores =
                    tokio::task::spawn_blocking(move || open_cas_stores(dir, cas_size, ac_size))
                        .await?
                        .map_err(CliError::Cas)?;
                ReapiCas::Local {
                    stores,
                    fallback: cli.cas_fallback,
                }
            }
        };
        Some(ReapiEndpoint {
            listener,
            cas,
            tls: server.grpc_tls.clone(),
            tokens: server.tokens.clone(),
            client,
            limits: cli.grpc_limits.limits(),
        })
    };
    let mut ports = vec![
        (
            "thrift",
            thrift
                .local_addr()
                .map_err(listener_error("thrift_addr", &cli.thrift_addr))?,
        ),
        (
            "http",
            http.local_addr()
                .map_err(listener_error("http_addr", &cli.http_addr))?,
        ),
    ];
    if let Some(reapi) = &reapi {
        ports.push((
            "grpc",
            reapi
                .listener
                .local_addr()
                .map_err(listener_error("grpc_addr", &cli.grpc_addr))?,
        ));
    }
    server.warn_if_exposed(&ports);
    let served = crate::run(thrift, http, tls, server.tokens, reapi, config, shutdown)
        .await
        .map_err(CliError::Failed);
    drop(temporary_cas);
    served
}
