//! The part of setup-cloud-scoot's command line that is not flags.
//!
//! `setup-cloud-scoot [FLAGS] [run CMD [ARGS...]]`: like Go's `flag` package, flags end at the
//! first argument that is not a flag (or at `--`), and everything from there on is positional,
//! so `run ls -la --workers 2` runs `ls -la --workers 2` (`scoot_bin_util::go_style_args`
//! makes that cut, for every binary).

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

impl Invocation {
    /// Interprets the positional arguments: none, or `run CMD [ARGS…]`
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

    #[test]
    fn nothing_or_run() {
        assert_eq!(Invocation::from_positional(vec![]), Ok(Invocation::Serve));
        assert_eq!(
            Invocation::from_positional(os(&["run", "--", "ls", "--", "-la"])),
            Ok(Invocation::Run {
                program: "ls".into(),
                args: os(&["--", "-la"]),
            })
        );
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
}
