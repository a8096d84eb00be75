//! The part of setup-cloud-scoot's command line that is not flags.
//!
//! `setup-cloud-scoot [FLAGS] [run CMD [ARGS...]]`: like Go's `flag` package, flags end at the
//! first argument that is not a flag (or at `--`), and everything from there on is positional,
//! so `run ls -la --workers 2` runs `ls -la --workers 2`. [`split_args`] makes that cut before
//! the flags are rewritten and parsed, so that CMD's own arguments are never touched.

use std::ffi::OsString;

/// What to do once the cluster is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Keep the cluster up until SIGINT or SIGTERM.
    Serve,
    /// Run `program args…`, then tear the cluster down and exit with its exit code.
    Run {
        program: OsString,
        args: Vec<OsString>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("`run` needs a command: run CMD [ARGS...]")]
    MissingCommand,
    #[error(
        "unexpected argument {0:?}: give no arguments (run until interrupted) or `run CMD [ARGS...]`"
    )]
    Unexpected(String),
}

/// Splits a whole command line (program name first) into the flags, with the program name
/// and any flag values, and the positional arguments. `takes_value` tells whether a flag,
/// named without its dashes (`workers`, `h`), consumes the next argument when it is not
/// written `name=value`. A `--` ending the flags is dropped.
pub fn split_args(
    args: impl IntoIterator<Item = OsString>,
    takes_value: impl Fn(&str) -> bool,
) -> (Vec<OsString>, Vec<OsString>) {
    let mut args = args.into_iter();
    let mut flags: Vec<OsString> = args.next().into_iter().collect();
    while let Some(arg) = args.next() {
        let bytes = arg.as_encoded_bytes();
        if bytes == b"--" {
            break;
        }
        if bytes.len() < 2 || bytes[0] != b'-' {
            // The first positional argument: it and everything after it are positional.
            let mut positional = vec![arg];
            positional.extend(args);
            return (flags, positional);
        }
        let value_follows = arg.to_str().is_some_and(|flag| {
            let name = flag.trim_start_matches('-');
            !name.contains('=') && takes_value(name)
        });
        flags.push(arg);
        if value_follows && let Some(value) = args.next() {
            flags.push(value);
        }
    }
    (flags, args.collect())
}

impl Invocation {
    /// Interprets the positional arguments from [`split_args`]: none, or `run CMD [ARGS…]`
    /// (a `--` right after `run` is skipped).
    pub fn from_positional(positional: Vec<OsString>) -> Result<Invocation, UsageError> {
        let mut rest = positional.into_iter();
        let Some(verb) = rest.next() else {
            return Ok(Invocation::Serve);
        };
        if verb != "run" {
            return Err(UsageError::Unexpected(verb.to_string_lossy().into_owned()));
        }
        let mut program = rest.next().ok_or(UsageError::MissingCommand)?;
        if program == "--" {
            program = rest.next().ok_or(UsageError::MissingCommand)?;
        }
        Ok(Invocation::Run {
            program,
            args: rest.collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn split(args: &[&str]) -> (Vec<OsString>, Vec<OsString>) {
        split_args(os(args), |name| {
            matches!(name, "workers" | "strategy" | "log_level" | "w")
        })
    }

    #[test]
    fn flags_only() {
        let (flags, rest) = split(&["setup", "--workers", "3", "-strategy=local.local", "-h"]);
        assert_eq!(
            flags,
            os(&["setup", "--workers", "3", "-strategy=local.local", "-h"])
        );
        assert!(rest.is_empty());
        assert_eq!(Invocation::from_positional(rest), Ok(Invocation::Serve));
    }

    #[test]
    fn go_style_flag_values_are_not_positional() {
        let (flags, rest) = split(&["setup", "-workers", "run", "-keep_logs", "run", "true"]);
        assert_eq!(flags, os(&["setup", "-workers", "run", "-keep_logs"]));
        assert_eq!(rest, os(&["run", "true"]));
    }

    #[test]
    fn flags_after_the_command_belong_to_it() {
        let (flags, rest) = split(&[
            "setup",
            "-log_level",
            "debug",
            "run",
            "ls",
            "-la",
            "--workers",
            "2",
            "--",
            "x",
        ]);
        assert_eq!(flags, os(&["setup", "-log_level", "debug"]));
        assert_eq!(
            Invocation::from_positional(rest),
            Ok(Invocation::Run {
                program: "ls".into(),
                args: os(&["-la", "--workers", "2", "--", "x"]),
            })
        );
    }

    #[test]
    fn double_dash_ends_the_flags() {
        let (flags, rest) = split(&["setup", "--workers", "1", "--", "run", "-x", "y"]);
        assert_eq!(flags, os(&["setup", "--workers", "1"]));
        assert_eq!(
            Invocation::from_positional(rest),
            Ok(Invocation::Run {
                program: "-x".into(),
                args: os(&["y"]),
            })
        );
    }

    #[test]
    fn double_dash_after_run() {
        let (_, rest) = split(&["setup", "run", "--", "--weird-cmd", "--", "a"]);
        assert_eq!(
            Invocation::from_positional(rest),
            Ok(Invocation::Run {
                program: "--weird-cmd".into(),
                args: os(&["--", "a"]),
            })
        );
    }

    #[test]
    fn lone_dash_is_positional() {
        let (flags, rest) = split(&["setup", "-", "run"]);
        assert_eq!(flags, os(&["setup"]));
        assert_eq!(rest, os(&["-", "run"]));
        assert!(matches!(
            Invocation::from_positional(rest),
            Err(UsageError::Unexpected(_))
        ));
    }

    #[test]
    fn usage_errors() {
        assert_eq!(
            Invocation::from_positional(os(&["run"])),
            Err(UsageError::MissingCommand)
        );
        assert_eq!(
            Invocation::from_positional(os(&["run", "--"])),
            Err(UsageError::MissingCommand)
        );
        assert_eq!(
            Invocation::from_positional(os(&["start"])),
            Err(UsageError::Unexpected("start".into()))
        );
    }

    #[test]
    fn a_missing_flag_value_is_left_to_the_flag_parser() {
        let (flags, rest) = split(&["setup", "--workers"]);
        assert_eq!(flags, os(&["setup", "--workers"]));
        assert!(rest.is_empty());
    }
}
