//! `workerserver`: runs one Scoot worker. See `scoot_worker` for what it serves.

use anyhow::Context;
use clap::Parser;
use scoot_reapi::platform::Mode;

/// Scoot worker: runs one command at a time for a scheduler.
#[derive(Parser, Debug)]
#[command(name = "workerserver", version)]
struct Args {
    /// Address for the Worker Thrift API.
    #[arg(long = "thrift_addr", default_value = "localhost:9092")]
    thrift_addr: String,
    /// Address for HTTP (/health, /output/).
    #[arg(long = "http_addr", default_value = "localhost:9093")]
    http_addr: String,
    /// The host name or address other machines reach this worker at, put in output URIs;
    /// needed when -http_addr listens on every interface.
    #[arg(long = "advertise_host")]
    advertise_host: Option<String>,
    #[command(flatten)]
    transport: scoot_security::TransportFlags,
    #[command(flatten)]
    access: scoot_security::AccessFlags,
    /// Kill a task whose processes use this many bytes of resident memory (0 = no cap).
    #[arg(long = "mem_cap", default_value_t = 0)]
    mem_cap: u64,
    /// Bundlestore for snapshot checkouts: `host:port` or an absolute directory.
    #[arg(long = "bundlestore", value_parser = parse_bundlestore)]
    bundlestore: Option<String>,
    /// When a task is stopped, how long after SIGTERM its process group gets SIGKILL.
    #[arg(long = "kill_grace", default_value = "10s", value_parser = humantime::parse_duration)]
    kill_grace: std::time::Duration,
    /// On SIGTERM/SIGINT, how long the running task may continue before it is aborted.
    #[arg(long = "drain_grace", default_value = "10s", value_parser = humantime::parse_duration)]
    drain_grace: std::time::Duration,
    /// REAPI endpoint (a scheduler's -grpc_addr) for running Bazel actions: inputs come from and
    /// outputs go to its CAS.
    #[arg(long = "cas_addr")]
    cas_addr: Option<String>,
    /// Instead of -cas_addr, the shards of a sharded CAS (the apiservers' gRPC addresses,
    /// `host:port,host:port,...`), read and written directly; give the scheduler the same list
    /// and -cas_replicas.
    #[arg(long = "cas_shards", conflicts_with = "cas_addr")]
    cas_shards: Option<String>,
    /// With -cas_shards: how many shards hold each blob (at most the number of shards).
    #[arg(long = "cas_replicas", default_value_t = scoot_worker::DEFAULT_REPLICAS, requires = "cas_shards")]
    cas_replicas: usize,
    /// Directory for actions' input roots and the local CAS cache (a temporary directory when
    /// not given).
    #[arg(long = "action_dir")]
    action_dir: Option<std::path::PathBuf>,
    /// Bound of the local CAS cache in bytes.
    #[arg(long = "cas_cache_size", default_value_t = 4 << 30)]
    cas_cache_size: u64,
    /// Bound in bytes of the kept stdout/stderr of past runs (the oldest are removed first).
    #[arg(long = "output_retention_bytes", default_value_t = 4 << 30)]
    output_retention_bytes: u64,
    /// Who REAPI actions run as, UID[:GID] (the group defaults to the UID's number). A root
    /// worker runs them as 65534:65534 (nobody) unless told otherwise, so that they cannot
    /// write its cache; a worker that is not root runs them as itself.
    #[arg(long = "action_user")]
    action_user: Option<scoot_worker::Identity>,
    /// Connections the Thrift port holds at once; past this, new ones are closed at once.
    #[arg(long = "thrift_max_conns", default_value_t = 10_000)]
    thrift_max_conns: usize,
    /// Longest time a Thrift request may take to arrive, from its first byte.
    #[arg(long = "thrift_message_timeout", default_value = "30s", value_parser = humantime::parse_duration)]
    thrift_message_timeout: std::time::Duration,
    /// A Thrift connection that starts no request for this long is closed.
    #[arg(long = "thrift_idle_timeout", default_value = "15m", value_parser = humantime::parse_duration)]
    thrift_idle_timeout: std::time::Duration,
    /// Modes REAPI actions run in, sandboxed (comma-separated: host-tools, rootfs), or `off`
    /// to run them on the host unsandboxed. See README: Platforms and sandboxes.
    #[arg(long = "sandbox", default_value = "host-tools,rootfs", value_parser = parse_sandbox_modes)]
    sandbox: SandboxModes,
    /// Run CloudScoot tasks in a host-tools sandbox too (no network, host read-only but for
    /// their snapshot checkout); by default they run on the host, as in Scoot.
    #[arg(long = "sandbox_tasks")]
    sandbox_tasks: bool,
    /// Most processes one sandboxed run may have; reaching it stops the run (0 = no limit).
    #[arg(long = "sandbox_pids_max", default_value_t = scoot_worker::server::DEFAULT_PIDS_MAX)]
    sandbox_pids_max: u64,
    /// Platform properties this worker offers besides its own OSFamily, ISA and sandbox
    /// modes, as name=value[,name=value...] (actions naming them run only on such workers).
    #[arg(long = "platform", default_value = "", value_parser = parse_platform)]
    platform: Platform,
    /// trace, debug, info, warn or error.
    #[arg(long = "log_level", default_value = "info")]
    log_level: String,
    /// text (one line per event) or json (one object per line, with its spans' fields).
    #[arg(long = "log_format", value_enum, default_value_t = scoot_bin_util::LogFormat::Text)]
    log_format: scoot_bin_util::LogFormat,
}

fn parse_bundlestore(value: &str) -> Result<String, String> {
    let is_dir = value.starts_with('/');
    let is_host_port = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if is_dir || is_host_port {
        Ok(value.to_string())
    } else {
        Err("expected host:port or an absolute directory path".to_string())
    }
}

#[derive(Clone, Debug)]
struct SandboxModes(Vec<Mode>);

fn parse_sandbox_modes(value: &str) -> Result<SandboxModes, String> {
    if value == "off" {
        return Ok(SandboxModes(Vec::new()));
    }
    let mut modes = Vec::new();
    for name in value.split(',').map(str::trim) {
        let mode = Mode::parse(name).ok_or_else(|| {
            format!("{name:?} is no sandbox mode: give host-tools, rootfs or both, or off")
        })?;
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    Ok(SandboxModes(modes))
}

#[derive(Clone, Debug)]
struct Platform(Vec<scoot_core::PlatformProperty>);

fn parse_platform(value: &str) -> Result<Platform, String> {
    scoot_reapi::platform::parse_worker_properties(value)
        .map(Platform)
        .map_err(|e| e.0)
}

fn main() -> anyhow::Result<()> {
    // A sandboxed run starts this binary as its launcher; that must happen before any thread.
    scoot_sandbox::launcher::run_if_asked();
    scoot_bin_util::run_server(serve())?
}

async fn serve() -> anyhow::Result<()> {
    let args: Args = scoot_bin_util::parse_args();
    scoot_bin_util::init_logging(&args.log_level, args.log_format).map_err(anyhow::Error::msg)?;
    let thrift_limits = scoot_thrift::server::ServeOptions::with_limits(
        args.thrift_max_conns,
        args.thrift_message_timeout,
        args.thrift_idle_timeout,
    )
    .context("bad -thrift_max_conns, -thrift_message_timeout or -thrift_idle_timeout")?;
    let thrift = tokio::net::TcpListener::bind(&args.thrift_addr)
        .await
        .with_context(|| format!("cannot listen on -thrift_addr {}", args.thrift_addr))?;
    let http = tokio::net::TcpListener::bind(&args.http_addr)
        .await
        .with_context(|| format!("cannot listen on -http_addr {}", args.http_addr))?;
    if args.access.auth_tokens.is_some() {
        anyhow::bail!(
            "-auth_tokens: a workerserver serves no REAPI calls; give the tokens to the \
             scheduler and apiserver, and this worker its own with -auth_token_file"
        );
    }
    let advertised = scoot_bin_util::advertised_addr(
        "http_addr",
        &args.http_addr,
        http.local_addr().context("-http_addr")?,
        args.advertise_host.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    let cas = match (&args.cas_addr, &args.cas_shards) {
        (Some(addr), _) => Some(scoot_worker::ShardSpec::single(addr)),
        (None, Some(list)) => Some(
            scoot_worker::ShardSpec::parse(list, args.cas_replicas)
                .context("bad -cas_shards or -cas_replicas")?,
        ),
        (None, None) => None,
    };
    let server = args.transport.server(&args.access).context("TLS set-up")?;
    let client = args.transport.client().context("TLS set-up")?;
    let config = scoot_worker::WorkerConfig {
        memory_cap: (args.mem_cap > 0).then_some(args.mem_cap),
        bundlestore: args.bundlestore.clone(),
        advertised_http_addr: Some(advertised),
        http_tls: server.http_tls,
        thrift_tls: server.thrift_tls,
        client,
        drain_grace: args.drain_grace,
        kill_grace: args.kill_grace,
        cas,
        action_dir: args.action_dir.clone(),
        cas_cache_bytes: args.cas_cache_size,
        action_user: args.action_user,
        retained_output_bytes: args.output_retention_bytes,
        thrift: thrift_limits,
        sandbox_modes: args.sandbox.0.clone(),
        sandbox_tasks: args.sandbox_tasks,
        sandbox_pids_max: (args.sandbox_pids_max > 0).then_some(args.sandbox_pids_max),
        platform_extra: args.platform.0.clone(),
        ..scoot_worker::WorkerConfig::default()
    };
    scoot_worker::run(thrift, http, config, scoot_bin_util::shutdown_signal())
        .await
        .context("workerserver failed")
}
