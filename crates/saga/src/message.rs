//! The messages a saga log records.

use std::fmt;

/// What a [`SagaMessage`] records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// The saga begins; the data is the job.
    StartSaga,
    /// The saga is finished; nothing may follow.
    EndSaga,
    /// The saga is aborted; started tasks are then compensated.
    AbortSaga,
    /// A task started, or reports progress while running; the data is the latest status.
    StartTask,
    /// A task finished; the data is its final status.
    EndTask,
    /// The compensating action of an aborted task started.
    StartCompTask,
    /// The compensating action of an aborted task finished.
    EndCompTask,
}

impl MessageKind {
    /// Every kind, in the order of their on-disk codes.
    pub const ALL: [MessageKind; 7] = [
        MessageKind::StartSaga,
        MessageKind::EndSaga,
        MessageKind::AbortSaga,
        MessageKind::StartTask,
        MessageKind::EndTask,
        MessageKind::StartCompTask,
        MessageKind::EndCompTask,
    ];

    /// The stable number logs store for this kind (1..=7): the file log's byte, the PostgreSQL
    /// log's `kind` column.
    pub fn code(self) -> u8 {
        match self {
            MessageKind::StartSaga => 1,
            MessageKind::EndSaga => 2,
            MessageKind::AbortSaga => 3,
            MessageKind::StartTask => 4,
            MessageKind::EndTask => 5,
            MessageKind::StartCompTask => 6,
            MessageKind::EndCompTask => 7,
        }
    }

    /// The kind stored as `code`, if any.
    pub fn from_code(code: u8) -> Option<MessageKind> {
        MessageKind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// Whether messages of this kind name a task.
    pub fn is_task_message(self) -> bool {
        matches!(
            self,
            MessageKind::StartTask
                | MessageKind::EndTask
                | MessageKind::StartCompTask
                | MessageKind::EndCompTask
        )
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MessageKind::StartSaga => "Start Saga",
            MessageKind::EndSaga => "End Saga",
            MessageKind::AbortSaga => "Abort Saga",
            MessageKind::StartTask => "Start Task",
            MessageKind::EndTask => "End Task",
            MessageKind::StartCompTask => "Start Comp Task",
            MessageKind::EndCompTask => "End Comp Task",
        })
    }
}

/// One entry of a saga's log.
///
/// Saga-level messages (start, end, abort) carry an empty `task_id`; only `StartSaga` (the job)
/// and the task messages (statuses) carry meaningful `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaMessage {
    pub saga_id: String,
    pub kind: MessageKind,
    pub task_id: String,
    pub data: Vec<u8>,
}

impl SagaMessage {
    fn saga_level(saga_id: impl Into<String>, kind: MessageKind, data: Vec<u8>) -> Self {
        SagaMessage {
            saga_id: saga_id.into(),
            kind,
            task_id: String::new(),
            data,
        }
    }

    fn task_level(
        saga_id: impl Into<String>,
        kind: MessageKind,
        task_id: impl Into<String>,
        data: impl Into<Vec<u8>>,
    ) -> Self {
        SagaMessage {
            saga_id: saga_id.into(),
            kind,
            task_id: task_id.into(),
            data: data.into(),
        }
    }

    /// `StartSaga` with the serialized job as data.
    pub fn start_saga(saga_id: impl Into<String>, job: impl Into<Vec<u8>>) -> Self {
        Self::saga_level(saga_id, MessageKind::StartSaga, job.into())
    }

    pub fn end_saga(saga_id: impl Into<String>) -> Self {
        Self::saga_level(saga_id, MessageKind::EndSaga, Vec::new())
    }

    pub fn abort_saga(saga_id: impl Into<String>) -> Self {
        Self::saga_level(saga_id, MessageKind::AbortSaga, Vec::new())
    }

    pub fn start_task(
        saga_id: impl Into<String>,
        task_id: impl Into<String>,
        data: impl Into<Vec<u8>>,
    ) -> Self {
        Self::task_level(saga_id, MessageKind::StartTask, task_id, data)
    }

    pub fn end_task(
        saga_id: impl Into<String>,
        task_id: impl Into<String>,
        data: impl Into<Vec<u8>>,
    ) -> Self {
        Self::task_level(saga_id, MessageKind::EndTask, task_id, data)
    }

    pub fn start_comp_task(
        saga_id: impl Into<String>,
        task_id: impl Into<String>,
        data: impl Into<Vec<u8>>,
    ) -> Self {
        Self::task_level(saga_id, MessageKind::StartCompTask, task_id, data)
    }

    pub fn end_comp_task(
        saga_id: impl Into<String>,
        task_id: impl Into<String>,
        data: impl Into<Vec<u8>>,
    ) -> Self {
        Self::task_level(saga_id, MessageKind::EndCompTask, task_id, data)
    }
}

impl fmt::Display for SagaMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} saga {:?}", self.kind, self.saga_id)?;
        if self.kind.is_task_message() {
            write!(f, " task {:?}", self.task_id)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_are_scoots() {
        let names: Vec<String> = MessageKind::ALL.iter().map(|k| k.to_string()).collect();
        assert_eq!(
            names,
            [
                "Start Saga",
                "End Saga",
                "Abort Saga",
                "Start Task",
                "End Task",
                "Start Comp Task",
                "End Comp Task"
            ]
        );
    }

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for kind in MessageKind::ALL {
            assert_eq!(MessageKind::from_code(kind.code()), Some(kind));
        }
        let mut codes: Vec<u8> = MessageKind::ALL.iter().map(|k| k.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), 7);
        assert_eq!(MessageKind::from_code(0), None);
        assert_eq!(MessageKind::from_code(8), None);
    }

    #[test]
    fn constructors_fill_fields() {
        let m = SagaMessage::start_saga("s", b"job".to_vec());
        assert_eq!(
            (m.saga_id.as_str(), m.kind, m.task_id.as_str(), &m.data[..]),
            ("s", MessageKind::StartSaga, "", &b"job"[..])
        );
        let m = SagaMessage::end_task("s", "t", b"st".to_vec());
        assert_eq!(
            (m.kind, m.task_id.as_str(), &m.data[..]),
            (MessageKind::EndTask, "t", &b"st"[..])
        );
        assert_eq!(SagaMessage::end_saga("s").kind, MessageKind::EndSaga);
        assert_eq!(SagaMessage::abort_saga("s").kind, MessageKind::AbortSaga);
        assert_eq!(
            SagaMessage::start_task("s", "t", Vec::new()).kind,
            MessageKind::StartTask
        );
        assert_eq!(
            SagaMessage::start_comp_task("s", "t", Vec::new()).kind,
            MessageKind::StartCompTask
        );
        assert_eq!(
            SagaMessage::end_comp_task("s", "t", Vec::new()).kind,
            MessageKind::EndCompTask
        );
        assert_eq!(
            SagaMessage::start_task("s", "t", Vec::new()).to_string(),
            "Start Task saga \"s\" task \"t\""
        );
    }
}
