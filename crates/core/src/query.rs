use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{RunId, RunStatus, StateMask};

/// Selects run statuses: a status matches when its id is listed (or `all_runs` is set) and its
/// state is in `states`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub runs: Vec<RunId>,
    pub all_runs: bool,
    pub states: StateMask,
}

impl Query {
    /// One run, in any of `states`.
    pub fn run(id: RunId, states: StateMask) -> Query {
        Query {
            runs: vec![id],
            all_runs: false,
            states,
        }
    }

    /// Every run, in any state.
    pub fn all() -> Query {
        Query {
            runs: Vec::new(),
            all_runs: true,
            states: StateMask::ALL,
        }
    }

    pub fn matches(&self, status: &RunStatus) -> bool {
        self.states.matches(status.state) && (self.all_runs || self.runs.contains(&status.run_id))
    }
}

/// How long a query may block waiting for a match.
#[derive(Clone, Debug, Default)]
pub struct Wait {
    /// Zero returns at once with whatever matches now.
    pub timeout: Duration,
    /// Cancelling this ends the wait early.
    pub abort: Option<CancellationToken>,
}

impl Wait {
    pub fn now() -> Wait {
        Wait::default()
    }

    pub fn up_to(timeout: Duration) -> Wait {
        Wait {
            timeout,
            abort: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LogTags, RunState};

    #[test]
    fn ids_and_states_are_anded() {
        let pending = RunStatus::pending(RunId::from("3"), LogTags::default());
        assert!(Query::run(RunId::from("3"), StateMask::ALL).matches(&pending));
        assert!(!Query::run(RunId::from("4"), StateMask::ALL).matches(&pending));
        assert!(!Query::run(RunId::from("3"), StateMask::DONE).matches(&pending));
        assert!(Query::all().matches(&pending));
        let all_done = Query {
            states: StateMask::DONE,
            ..Query::all()
        };
        assert!(!all_done.matches(&pending));
        let done = RunStatus {
            state: RunState::Complete,
            ..pending
        };
        assert!(all_done.matches(&done));
    }
}
