//! The life of one run as an explicit state machine: every event is handled in every phase, so
//! an abort, a timeout or a failure always lands somewhere defined. The invoker performs the
//! work of each phase and feeds what happened back in as an [`Event`]; this table alone decides
//! where the run goes next and what must be stopped.
//!
//! ```text
//! Pending ─Start─▶ Preparing ─Prepared─▶ Running ─Exited─▶ CleaningUp(outcome) ─CleanedUp─▶ Done
//!                     │ PrepareFailed/Abort/Timeout │ Abort/Timeout (stop the process)
//!                     └─────────────────────────────┴──────────────▶ CleaningUp(outcome)
//! ```

use std::fmt;

use scoot_core::exit_code;

use crate::execer::ProcessOutcome;

/// How a run ended, before it is turned into a RunStatus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command ran to an exit code (possibly with a note, e.g. a memory-cap kill).
    Complete {
        exit_code: i32,
        error: String,
    },
    /// The run mechanism failed.
    Failed {
        exit_code: i32,
        error: String,
    },
    Aborted,
    TimedOut,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    /// Checking out the snapshot, creating output files, starting the process.
    Preparing,
    Running,
    /// Releasing the checkout; the outcome is already fixed.
    CleaningUp(Outcome),
    Done(Outcome),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Start,
    Prepared,
    PrepareFailed { exit_code: i32, error: String },
    Exited(ProcessOutcome),
    AbortRequested,
    TimeoutElapsed,
    CleanedUp,
}

/// A side effect the invoker must carry out on the way to the next phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Note `trailer` in the run's output, then stop its processes.
    StopProcess {
        trailer: String,
    },
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Pending => f.write_str("pending"),
            Phase::Preparing => f.write_str("preparing"),
            Phase::Running => f.write_str("running"),
            Phase::CleaningUp(_) => f.write_str("cleaning up"),
            Phase::Done(_) => f.write_str("done"),
        }
    }
}

fn outcome_of(process: ProcessOutcome) -> Outcome {
    match process {
        ProcessOutcome::Exited(code) => Outcome::Complete {
            exit_code: code,
            error: String::new(),
        },
        // Scoot reports a memory-cap kill as a completed command that exited 1.
        ProcessOutcome::LimitExceeded { message } => Outcome::Complete {
            exit_code: 1,
            error: message,
        },
        ProcessOutcome::HighInitialMemory { message } => Outcome::Failed {
            exit_code: exit_code::HIGH_INITIAL_MEMORY_UTILIZATION,
            error: message,
        },
        ProcessOutcome::Killed => Outcome::Failed {
            exit_code: exit_code::POST_EXEC_FAILURE,
            error: "the task was killed by the worker".to_string(),
        },
        ProcessOutcome::Failed { message } => Outcome::Failed {
            exit_code: exit_code::POST_EXEC_FAILURE,
            error: message,
        },
    }
}

fn unexpected(phase: &Phase, event: &Event) -> Outcome {
    Outcome::Failed {
        exit_code: exit_code::POST_EXEC_FAILURE,
        error: format!("worker bug: event {event:?} while {phase}"),
    }
}

pub fn transition(phase: Phase, event: Event) -> (Phase, Action) {
    use Action::{Nothing, StopProcess};
    match (phase, event) {
        (Phase::Pending, Event::Start) => (Phase::Preparing, Nothing),
        (Phase::Pending | Phase::Preparing, Event::AbortRequested) => {
            (Phase::CleaningUp(Outcome::Aborted), Nothing)
        }
        (Phase::Pending | Phase::Preparing, Event::TimeoutElapsed) => {
            (Phase::CleaningUp(Outcome::TimedOut), Nothing)
        }
        (Phase::Preparing, Event::Prepared) => (Phase::Running, Nothing),
        (Phase::Preparing, Event::PrepareFailed { exit_code, error }) => (
            Phase::CleaningUp(Outcome::Failed { exit_code, error }),
            Nothing,
        ),
        (Phase::Running, Event::Exited(process)) => {
            (Phase::CleaningUp(outcome_of(process)), Nothing)
        }
        (Phase::Running, Event::AbortRequested) => (
            Phase::CleaningUp(Outcome::Aborted),
            StopProcess {
                trailer: "Task aborted".to_string(),
            },
        ),
        (Phase::Running, Event::TimeoutElapsed) => (
            Phase::CleaningUp(Outcome::TimedOut),
            StopProcess {
                trailer: "Task exceeded timeout".to_string(),
            },
        ),
        (Phase::CleaningUp(outcome), Event::CleanedUp) => (Phase::Done(outcome), Nothing),
        // Once the outcome is fixed, late aborts and timeouts change nothing.
        (phase @ (Phase::CleaningUp(_) | Phase::Done(_)), _) => (phase, Nothing),
        (phase @ Phase::Running, event) => {
            let outcome = unexpected(&phase, &event);
            (
                Phase::CleaningUp(outcome),
                StopProcess {
                    trailer: "Task stopped by a worker error".to_string(),
                },
            )
        }
        (phase @ (Phase::Pending | Phase::Preparing), event) => {
            (Phase::CleaningUp(unexpected(&phase, &event)), Nothing)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_events() -> Vec<Event> {
        vec![
            Event::Start,
            Event::Prepared,
            Event::PrepareFailed {
                exit_code: 210,
                error: "no".into(),
            },
            Event::Exited(ProcessOutcome::Exited(0)),
            Event::AbortRequested,
            Event::TimeoutElapsed,
            Event::CleanedUp,
        ]
    }

    fn all_phases() -> Vec<Phase> {
        vec![
            Phase::Pending,
            Phase::Preparing,
            Phase::Running,
            Phase::CleaningUp(Outcome::Aborted),
            Phase::Done(Outcome::TimedOut),
        ]
    }

    #[test]
    fn happy_path() {
        let mut phase = Phase::Pending;
        for event in [
            Event::Start,
            Event::Prepared,
            Event::Exited(ProcessOutcome::Exited(3)),
            Event::CleanedUp,
        ] {
            phase = transition(phase, event).0;
        }
        assert_eq!(
            phase,
            Phase::Done(Outcome::Complete {
                exit_code: 3,
                error: String::new()
            })
        );
    }

    #[test]
    fn abort_and_timeout_while_running_stop_the_process() {
        let (phase, action) = transition(Phase::Running, Event::AbortRequested);
        assert_eq!(phase, Phase::CleaningUp(Outcome::Aborted));
        assert!(matches!(action, Action::StopProcess { .. }));
        let (phase, action) = transition(Phase::Running, Event::TimeoutElapsed);
        assert_eq!(phase, Phase::CleaningUp(Outcome::TimedOut));
        assert!(matches!(action, Action::StopProcess { .. }));
    }

    #[test]
    fn abort_or_timeout_during_checkout() {
        assert_eq!(
            transition(Phase::Preparing, Event::AbortRequested).0,
            Phase::CleaningUp(Outcome::Aborted)
        );
        assert_eq!(
            transition(Phase::Preparing, Event::TimeoutElapsed).0,
            Phase::CleaningUp(Outcome::TimedOut)
        );
    }

    #[test]
    fn process_outcomes_map_to_scoot_results() {
        let cases = [
            (
                ProcessOutcome::LimitExceeded {
                    message: "m".into(),
                },
                Outcome::Complete {
                    exit_code: 1,
                    error: "m".into(),
                },
            ),
            (
                ProcessOutcome::HighInitialMemory {
                    message: "h".into(),
                },
                Outcome::Failed {
                    exit_code: 241,
                    error: "h".into(),
                },
            ),
            (
                ProcessOutcome::Failed {
                    message: "f".into(),
                },
                Outcome::Failed {
                    exit_code: 250,
                    error: "f".into(),
                },
            ),
        ];
        for (process, outcome) in cases {
            assert_eq!(
                transition(Phase::Running, Event::Exited(process)).0,
                Phase::CleaningUp(outcome)
            );
        }
    }

    #[test]
    fn finished_outcomes_never_change() {
        for event in all_events() {
            let (phase, action) = transition(Phase::CleaningUp(Outcome::Aborted), event.clone());
            let expected = if event == Event::CleanedUp {
                Phase::Done(Outcome::Aborted)
            } else {
                Phase::CleaningUp(Outcome::Aborted)
            };
            assert_eq!((phase, action), (expected, Action::Nothing));
            assert_eq!(
                transition(Phase::Done(Outcome::TimedOut), event).0,
                Phase::Done(Outcome::TimedOut)
            );
        }
    }

    #[test]
    fn every_phase_handles_every_event_and_always_progresses_towards_done() {
        for phase in all_phases() {
            for event in all_events() {
                let (next, _) = transition(phase.clone(), event.clone());
                let rank = |p: &Phase| match p {
                    Phase::Pending => 0,
                    Phase::Preparing => 1,
                    Phase::Running => 2,
                    Phase::CleaningUp(_) => 3,
                    Phase::Done(_) => 4,
                };
                assert!(
                    rank(&next) >= rank(&phase),
                    "{phase} + {event:?} went back to {next}"
                );
                if rank(&next) == rank(&phase) {
                    assert!(rank(&phase) >= 3, "{phase} + {event:?} made no progress");
                }
            }
        }
    }

    #[test]
    fn unexpected_events_fail_the_run_instead_of_hanging() {
        let (phase, action) = transition(Phase::Running, Event::Start);
        assert!(matches!(
            phase,
            Phase::CleaningUp(Outcome::Failed { exit_code: 250, .. })
        ));
        assert!(matches!(action, Action::StopProcess { .. }));
        let (phase, _) = transition(Phase::Pending, Event::CleanedUp);
        assert!(matches!(phase, Phase::CleaningUp(Outcome::Failed { .. })));
    }
}
