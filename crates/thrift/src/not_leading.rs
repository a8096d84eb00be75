//! What a scheduler that does not lead answers instead of serving a call, worded once here so
//! that the scheduler writes it and clients recognise it: such a refusal means the call was not
//! run, so a client may send it to another scheduler (the leader it names, or the next address
//! it knows) without risking doing it twice.

/// Why a scheduler refuses to serve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotLeading<'a> {
    /// It is a standby; the leader's address when one leads.
    Standby(Option<&'a str>),
    /// It has just taken the lease and is recovering jobs.
    Starting,
}

const STANDBY: &str = "this scheduler is a standby";
const LEADER_AT: &str = "; the leader is at ";
const RETRY_THERE: &str = "; retry there";
const NONE_LEADS: &str = " and no scheduler leads yet; retry shortly";
const STARTING: &str =
    "this scheduler has just become the leader and is recovering jobs; retry shortly";

impl NotLeading<'_> {
    /// The refusal's text (after Thrift's "Internal error processing <Method>: ").
    pub fn message(&self) -> String {
        match self {
            NotLeading::Standby(Some(leader)) => {
                format!("{STANDBY}{LEADER_AT}{leader}{RETRY_THERE}")
            }
            NotLeading::Standby(None) => format!("{STANDBY}{NONE_LEADS}"),
            NotLeading::Starting => STARTING.to_string(),
        }
    }

    /// The refusal a scheduler's error `message` carries, if it is one.
    pub fn parse(message: &str) -> Option<NotLeading<'_>> {
        if message.contains(STARTING) {
            return Some(NotLeading::Starting);
        }
        let (_, standby) = message.split_once(STANDBY)?;
        let leader = standby
            .strip_prefix(LEADER_AT)
            .and_then(|rest| rest.split_once(RETRY_THERE))
            .map(|(leader, _)| leader)
            .filter(|leader| !leader.is_empty());
        Some(NotLeading::Standby(leader))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_reads_back_from_a_thrift_error() {
        for refusal in [
            NotLeading::Standby(Some("10.0.0.7:9090")),
            NotLeading::Standby(None),
            NotLeading::Starting,
        ] {
            let wire = format!("Internal error processing RunJob: {}", refusal.message());
            assert_eq!(NotLeading::parse(&wire), Some(refusal));
        }
    }

    #[test]
    fn other_errors_are_not_refusals() {
        assert_eq!(
            NotLeading::parse("Internal error processing RunJob: invalid job: no tasks"),
            None
        );
    }
}
