//! What every scoot binary shares.
//!
//! Scoot's binaries take Go-style flags (`-thrift_addr localhost:9092`); scripts written for
//! Scoot must keep working, so [`go_style_args`] turns them into the `--long` form clap parses.
//! [`init_logging`] maps Scoot's logrus levels onto tracing; [`shutdown_signal`] resolves on
//! SIGINT or SIGTERM.

use std::ffi::OsString;

/// Rewrites `-name` and `-name=value` (a single dash followed by two or more characters) to
/// `--name…`. Single-letter flags, `--` flags, a lone `-`, negative numbers and everything after
/// `--` are left alone.
pub fn go_style_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut rest_positional = false;
    for arg in args {
        let converted = match arg.to_str() {
            Some("--") => {
                rest_positional = true;
                None
            }
            Some(s) if !rest_positional && is_go_long_flag(s) => {
                Some(OsString::from(format!("-{s}")))
            }
            _ => None,
        };
        out.push(converted.unwrap_or(arg));
    }
    out
}

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

/// Installs a stderr logger at Scoot's `-log_level` (trace, debug, info, warn/warning, error,
/// fatal, panic). `RUST_LOG`, when set, takes precedence for finer control.
pub fn init_logging(level: &str) -> Result<(), String> {
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
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

    fn convert(args: &[&str]) -> Vec<String> {
        go_style_args(args.iter().map(OsString::from))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn single_dash_long_flags_become_double_dash() {
        assert_eq!(
            convert(&[
                "bin",
                "-thrift_addr",
                "localhost:1",
                "-log_level=debug",
                "--http_addr",
                "x"
            ]),
            vec![
                "bin",
                "--thrift_addr",
                "localhost:1",
                "--log_level=debug",
                "--http_addr",
                "x"
            ]
        );
    }

    #[test]
    fn other_arguments_are_untouched() {
        let args = ["bin", "-v", "-", "-5", "-1.5", "run", "--", "-not_a_flag"];
        assert_eq!(convert(&args), args.to_vec());
    }

    #[test]
    fn log_levels() {
        assert!(init_logging("loud").is_err());
    }
}
