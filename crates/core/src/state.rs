use std::fmt;

/// Where a run is in its life. The numeric values are Scoot's and go on the wire unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum RunState {
    /// Indeterminate; also counts as a final state (e.g. a run the worker does not know).
    #[default]
    Unknown = 0,
    Pending = 1,
    Running = 2,
    /// The command ran to an exit code, whichever code that was.
    Complete = 3,
    /// The run mechanism failed: checkout, exec or worker trouble.
    Failed = 4,
    Aborted = 5,
    TimedOut = 6,
}

impl RunState {
    pub const ALL: [RunState; 7] = [
        RunState::Unknown,
        RunState::Pending,
        RunState::Running,
        RunState::Complete,
        RunState::Failed,
        RunState::Aborted,
        RunState::TimedOut,
    ];

    /// Final states never change again.
    pub fn is_done(self) -> bool {
        StateMask::DONE.matches(self)
    }

    /// The state with Scoot's numeric value, or `None` for a value outside 0..=6.
    pub fn from_i32(value: i32) -> Option<RunState> {
        RunState::ALL.into_iter().find(|s| *s as i32 == value)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RunState::Unknown => "UNKNOWN",
            RunState::Pending => "PENDING",
            RunState::Running => "RUNNING",
            RunState::Complete => "COMPLETE",
            RunState::Failed => "FAILED",
            RunState::Aborted => "ABORTED",
            RunState::TimedOut => "TIMEDOUT",
        })
    }
}

/// A set of [`RunState`]s as a bit mask: state `s` is bit `1 << s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateMask(pub u64);

impl StateMask {
    pub const NONE: StateMask = StateMask(0);
    pub const ALL: StateMask = StateMask(u64::MAX);
    /// COMPLETE, FAILED, ABORTED, TIMEDOUT and UNKNOWN.
    pub const DONE: StateMask = StateMask(
        1 << RunState::Complete as u64
            | 1 << RunState::Failed as u64
            | 1 << RunState::Aborted as u64
            | 1 << RunState::TimedOut as u64
            | 1 << RunState::Unknown as u64,
    );

    pub const fn of(state: RunState) -> StateMask {
        StateMask(1 << state as u64)
    }

    pub const fn union(self, other: StateMask) -> StateMask {
        StateMask(self.0 | other.0)
    }

    pub const fn matches(self, state: RunState) -> bool {
        self.0 & (1 << state as u64) != 0
    }
}

impl From<RunState> for StateMask {
    fn from(state: RunState) -> StateMask {
        StateMask::of(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_values_are_scoots() {
        let values: Vec<i32> = RunState::ALL.iter().map(|s| *s as i32).collect();
        assert_eq!(values, vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(RunState::from_i32(6), Some(RunState::TimedOut));
        assert_eq!(RunState::from_i32(7), None);
        assert_eq!(RunState::from_i32(-1), None);
    }

    #[test]
    fn done_states() {
        let done: Vec<RunState> = RunState::ALL.into_iter().filter(|s| s.is_done()).collect();
        assert_eq!(
            done,
            vec![
                RunState::Unknown,
                RunState::Complete,
                RunState::Failed,
                RunState::Aborted,
                RunState::TimedOut
            ]
        );
        assert_eq!(StateMask::DONE.0, 0b111_1001);
    }

    #[test]
    fn masks() {
        let running_or_pending = StateMask::of(RunState::Running).union(RunState::Pending.into());
        assert_eq!(running_or_pending.0, 0b110);
        assert!(running_or_pending.matches(RunState::Pending));
        assert!(!running_or_pending.matches(RunState::Complete));
        assert!(RunState::ALL.iter().all(|s| StateMask::ALL.matches(*s)));
        assert!(RunState::ALL.iter().all(|s| !StateMask::NONE.matches(*s)));
    }
}
