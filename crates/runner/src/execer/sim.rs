//! The simulated engine, for tests and load generation without real processes.
//!
//! A command whose argv\[0\] is `#! sim execer` is a script; each later argument is one step:
//! `complete N` (end with exit code N), `pause` (wait until stopped), `sleep MS` (wait that long),
//! `stdout TEXT` / `stderr TEXT` (write a line). Arguments starting with `#` are ignored. A script
//! that runs out of steps completes with exit code 0. An unknown step means the command cannot be
//! started, just as a missing binary would.

use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;

use super::{ExecError, ExecSpec, Execer, Process, ProcessOutcome};

pub const SIM_MARKER: &str = "#! sim execer";

pub fn is_sim(argv: &[String]) -> bool {
    argv.first().is_some_and(|a| a == SIM_MARKER)
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Complete(i32),
    Pause,
    Sleep(Duration),
    Stdout(String),
    Stderr(String),
}

fn parse(args: &[String]) -> Result<Vec<Step>, ExecError> {
    let mut steps = Vec::new();
    for arg in args {
        if arg.starts_with('#') {
            continue;
        }
        let (verb, rest) = arg.split_once(' ').unwrap_or((arg.as_str(), ""));
        let bad = || ExecError(format!("sim execer: cannot parse step {arg:?}"));
        steps.push(match verb {
            "complete" => Step::Complete(rest.trim().parse().map_err(|_| bad())?),
            "pause" if rest.is_empty() => Step::Pause,
            "sleep" => Step::Sleep(Duration::from_millis(
                rest.trim().parse().map_err(|_| bad())?,
            )),
            "stdout" => Step::Stdout(rest.to_string()),
            "stderr" => Step::Stderr(rest.to_string()),
            _ => return Err(bad()),
        });
    }
    Ok(steps)
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SimExecer;

#[async_trait]
impl Execer for SimExecer {
    async fn start(&self, spec: ExecSpec) -> Result<Box<dyn Process>, ExecError> {
        let steps = parse(spec.argv.get(1..).unwrap_or_default())?;
        let outputs = spec.outputs;
        let script = tokio::spawn(async move {
            for step in steps {
                match step {
                    Step::Complete(code) => return code,
                    Step::Pause => std::future::pending::<()>().await,
                    Step::Sleep(d) => tokio::time::sleep(d).await,
                    Step::Stdout(text) => outputs.write_stdout(format!("{text}\n").as_bytes()),
                    Step::Stderr(text) => outputs.write_stderr(format!("{text}\n").as_bytes()),
                }
            }
            0
        });
        Ok(Box::new(SimProcess { script }))
    }
}

struct SimProcess {
    script: JoinHandle<i32>,
}

#[async_trait]
impl Process for SimProcess {
    async fn wait(&mut self) -> ProcessOutcome {
        match (&mut self.script).await {
            Ok(code) => ProcessOutcome::Exited(code),
            Err(err) => ProcessOutcome::Failed {
                message: format!("sim execer: {err}"),
            },
        }
    }

    async fn kill(&mut self) -> ProcessOutcome {
        self.script.abort();
        let _ = (&mut self.script).await;
        ProcessOutcome::Killed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(steps: &[&str]) -> Vec<String> {
        steps.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_every_step() {
        let steps = parse(&args(&[
            "# a comment",
            "stdout hello world",
            "stderr oops",
            "sleep 25",
            "pause",
            "complete 3",
        ]))
        .unwrap();
        assert_eq!(
            steps,
            vec![
                Step::Stdout("hello world".into()),
                Step::Stderr("oops".into()),
                Step::Sleep(Duration::from_millis(25)),
                Step::Pause,
                Step::Complete(3),
            ]
        );
    }

    #[test]
    fn rejects_unknown_and_malformed_steps() {
        for bad in ["explode", "complete x", "sleep", "pause now", ""] {
            assert!(parse(&args(&[bad])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn recognises_the_marker() {
        assert!(is_sim(&args(&[SIM_MARKER, "complete 0"])));
        assert!(!is_sim(&args(&["echo", SIM_MARKER])));
        assert!(!is_sim(&[]));
    }
}
