//! What every scoot binary shares.
//!
//! Scoot's binaries take Go-style flags (`-thrift_addr localhost:9092`); scripts written for
//! Scoot must keep working, so [`parse_args`] turns them into the `--long` form clap parses.
//! [`init_logging`] maps Scoot's logrus levels onto tracing; [`shutdown_signal`] resolves on
//! SIGINT or SIGTERM; [`listen`] binds the address a flag gave, naming the flag if it cannot.

use std::ffi::{OsStr, OsString};

/// Parses this process's command line as `P`, accepting Go-style flags (see [`go_style_args`]).
/// Bad input exits with clap's message, as `P::parse` does.
pub fn parse_args<P: clap::Parser>() -> P {
    P::parse_from(go_style_args(&P::command(), std::env::args_os()))
}

/// Rewrites the Go-style flags of a command line (program name first) for `command`:
/// `-name` and `-name=value` (a single dash and two or more characters) become `--name…`.
///
/// Like Go's `flag` package, flags end at `--` or at the first positional argument that is not
/// one of the current command's subcommands; from there on every argument is passed through
/// untouched, so a task's own argv (`run_job printf -n -la`) reaches it exactly as typed. A
/// flag's value is never rewritten, which is why `command` is needed: it tells which flags take
/// the next argument as their value.
pub fn go_style_args(
    command: &clap::Command,
    args: impl IntoIterator<Item = OsString>,
) -> Vec<OsString> {
    let mut root = command.clone();
    // Building copies global flags into every subcommand, so each level knows all its flags.
    root.build();
    let mut current = &root;
    let mut args = args.into_iter();
    let mut out: Vec<OsString> = args.next().into_iter().collect();
    while let Some(arg) = args.next() {
        let Some(flag) = arg.to_str().filter(|s| is_flag(s)) else {
            match current.find_subcommand(&arg) {
                Some(sub) => {
                    current = sub;
                    out.push(arg);
                    continue;
                }
                None => {
                    out.push(arg);
                    break;
                }
            }
        };
        if flag == "--" {
            out.push(arg);
            break;
        }
        let value_follows = !flag.contains('=') && takes_value(current, flag);
        out.push(if is_go_long_flag(flag) {
            OsString::from(format!("-{flag}"))
        } else {
            arg
        });
        if value_follows && let Some(value) = args.next() {
            out.push(value);
        }
    }
    out.extend(args);
    out
}

/// Whether `s` is written as a flag: a dash and something that is not a number (`-5`, `-.5`
/// and a lone `-` are positional).
fn is_flag(s: &str) -> bool {
    s.strip_prefix('-').is_some_and(|rest| {
        !rest.is_empty() && !rest.starts_with(|c: char| c.is_ascii_digit() || c == '.')
    })
}

/// `-name` or `-name=value` with a name of two or more characters, the form Go's flag package
/// reads as one long flag.
fn is_go_long_flag(s: &str) -> bool {
    let Some(name) = s.strip_prefix('-') else {
        return false;
    };
    let name = name.split('=').next().unwrap_or_default();
    !name.starts_with('-')
        && name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether `flag` (`-name`, `--name` or `-x`, without `=value`) names an option of `command`
/// that consumes the next argument. Unknown flags take none; clap reports them.
fn takes_value(command: &clap::Command, flag: &str) -> bool {
    let long = flag.strip_prefix("--").or_else(|| {
        let name = flag.strip_prefix('-')?;
        (name.chars().count() > 1).then_some(name)
    });
    command.get_arguments().any(|arg| {
        let named = match long {
            Some(name) => {
                arg.get_long() == Some(name)
                    || arg
                        .get_all_aliases()
                        .is_some_and(|aliases| aliases.contains(&name))
            }
            None => arg
                .get_short()
                .is_some_and(|c| OsStr::new(flag) == OsStr::new(&format!("-{c}"))),
        };
        named && arg.get_action().takes_values()
    })
}

/// Installs a stderr logger at Scoot's `-log_level` (trace, debug, info, warn/warning, error,
/// fatal, panic). `RUST_LOG`, when set, takes precedence for finer control.
/// `-log_format`: how log lines are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, with the fields of the event and of every enclosing span
    /// (job_id, task_id, tag, run_id, node, operation, action), for log pipelines.
    Json,
}

pub fn init_logging(level: &str, format: LogFormat) -> Result<(), String> {
    let directive = match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "fatal" | "panic" => "error",
        other => {
            return Err(format!(
                "unknown log level {other:?} (use trace, debug, info, warn, error)"
            ));
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directive));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    }
    .map_err(|err| err.to_string())
}

/// Runs a server's main future on a multi-threaded runtime and returns its result without
/// waiting more than a second for blocking calls still in flight (a worker long-poll can block
/// a thread for 25 s; the process must still exit promptly once the server has stopped).
pub fn run_server<T>(server: impl std::future::Future<Output = T>) -> std::io::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(server);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(result)
}

/// An address given by a flag could not be listened on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on -{flag} {addr}")]
pub struct ListenError {
    pub flag: &'static str,
    pub addr: String,
    #[source]
    pub source: std::io::Error,
}

/// Listens on `addr`, the value of the flag `-<flag>`; the error names both.
pub async fn listen(
    flag: &'static str,
    addr: &str,
) -> Result<tokio::net::TcpListener, ListenError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError {
            flag,
            addr: addr.to_string(),
            source,
        })
}

/// The `host:port` other machines reach a listener at, for addresses this process hands out
/// (output URIs): `-advertise_host` with the bound port, or the flag's own host when it names
/// one. A listener on every interface (`0.0.0.0`, `[::]`) without `-advertise_host` is refused:
/// nothing says which of the machine's names or addresses the others can reach.
pub fn advertised_addr(
    flag: &'static str,
    addr: &str,
    bound: std::net::SocketAddr,
    advertise_host: Option<&str>,
) -> Result<String, String> {
    let with_port = |host: &str| {
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", bound.port())
        } else {
            format!("{host}:{}", bound.port())
        }
    };
    if let Some(host) = advertise_host {
        return Ok(with_port(host));
    }
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let unspecified = host.is_empty()
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
    if unspecified {
        return Err(format!(
            "-{flag} {addr} listens on every interface: say with -advertise_host which name or \
             address other machines reach this one at"
        ));
    }
    Ok(with_port(host))
}

/// Resolves when the process receives SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop this process with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_addresses_name_a_reachable_host() {
        let bound: std::net::SocketAddr = "0.0.0.0:4321".parse().unwrap();
        let adv = |addr, host| advertised_addr("http_addr", addr, bound, host);
        assert_eq!(adv("localhost:0", None).unwrap(), "localhost:4321");
        assert_eq!(
            adv("0.0.0.0:9093", Some("10.0.0.7")).unwrap(),
            "10.0.0.7:4321"
        );
        assert_eq!(adv("[::]:9093", Some("fd00::7")).unwrap(), "[fd00::7]:4321");
        assert_eq!(adv("w3.example:9093", None).unwrap(), "w3.example:4321");
        for everywhere in ["0.0.0.0:9093", "[::]:9093", ":9093"] {
            let error = adv(everywhere, None).unwrap_err();
            assert!(error.contains("-advertise_host"), "{error}");
        }
    }
    use clap::{Arg, ArgAction, Command};

    /// Shaped like scootcl and bzutil: global flags, a subcommand whose own flags precede a
    /// command's argv, nested subcommands like scoot-snapshot-db's.
    fn cli() -> Command {
        Command::new("bin")
            .arg(Arg::new("addr").long("addr").global(true))
            .arg(Arg::new("verbose").short('v').action(ArgAction::SetTrue))
            .arg(Arg::new("count").short('c').allow_negative_numbers(true))
            .subcommand(
                Command::new("run_job")
                    .arg(Arg::new("tag").long("tag").allow_hyphen_values(true))
                    .arg(Arg::new("json").long("json").action(ArgAction::SetTrue))
                    .arg(
                        Arg::new("argv")
                            .num_args(1..)
                            .trailing_var_arg(true)
                            .allow_hyphen_values(true),
                    ),
            )
            .subcommand(
                Command::new("create")
                    .subcommand(Command::new("ingest_dir").arg(Arg::new("dir").long("dir"))),
            )
    }

    fn convert(args: &[&str]) -> Vec<String> {
        go_style_args(&cli(), args.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn single_dash_long_flags_become_double_dash() {
        assert_eq!(
            convert(&["bin", "-addr", "-x:1", "-v", "-c", "-5", "run_job", "-json"]),
            [
                "bin", "--addr", "-x:1", "-v", "-c", "-5", "run_job", "--json"
            ]
        );
        assert_eq!(
            convert(&["bin", "-addr=h:1", "create", "ingest_dir", "-dir", "-d"]),
            ["bin", "--addr=h:1", "create", "ingest_dir", "--dir", "-d"]
        );
    }

    #[test]
    fn a_commands_argv_reaches_it_as_typed() {
        let args = [
            "bin", "run_job", "-addr", "h:1", "-tag", "-t", "printf", "%s|", "-hello", "-n", "-la",
            "--", "-x",
        ];
        let converted = convert(&args);
        assert_eq!(
            converted[..7],
            ["bin", "run_job", "--addr", "h:1", "--tag", "-t", "printf"]
        );
        assert_eq!(converted[7..], args[7..]);
        let matches = cli().try_get_matches_from(converted).unwrap();
        let (_, run) = matches.subcommand().unwrap();
        let argv: Vec<&String> = run.get_many("argv").unwrap().collect();
        assert_eq!(argv, ["printf", "%s|", "-hello", "-n", "-la", "--", "-x"]);
        assert_eq!(run.get_one::<String>("addr").unwrap(), "h:1");
    }

    #[test]
    fn flags_end_at_double_dash_or_the_first_positional() {
        for args in [
            &["bin", "run_job", "--", "-not_a_flag", "-json"][..],
            &["bin", "run_job", "ls", "-la", "-json"],
            &["bin", "-", "-addr"],
            &["bin", "-5", "-addr"],
            &["bin", "elsewhere", "-addr"],
        ] {
            assert_eq!(convert(args), args.to_vec());
        }
    }

    #[test]
    fn log_levels() {
        assert!(init_logging("loud", LogFormat::Text).is_err());
    }

    #[tokio::test]
    async fn a_listen_error_names_the_flag_and_the_address() {
        let taken = listen("http_addr", "127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = listen("grpc_addr", &addr).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot listen on -grpc_addr {addr}")
        );
        assert_eq!(err.source.kind(), std::io::ErrorKind::AddrInUse);
    }
}
