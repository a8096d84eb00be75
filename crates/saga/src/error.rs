//! Errors of the state machine, the logs and live sagas.

use thiserror::Error;

use crate::message::MessageKind;

/// Why a [`SagaLog`](crate::SagaLog) call failed.
///
/// Clone so that one failed group commit can be reported to every caller in the batch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SagaLogError {
    /// The request can never succeed as sent: a non-`StartSaga` message for an unknown saga, an
    /// empty or over-long saga id, an oversized batch. Do not retry.
    #[error("invalid saga log request: {0}")]
    InvalidRequest(String),
    /// I/O or another internal failure; nothing of the failed call is reported as durable.
    /// Retrying may succeed.
    #[error("saga log internal error: {0}")]
    Internal(String),
    /// Stored data is damaged (not a torn tail from a crash). Needs an operator.
    #[error("saga log data corrupt: {0}")]
    Corrupt(String),
    /// The saga's Start Saga, the job itself, is damaged or missing: the saga can be neither
    /// replayed nor continued, whatever else of it survived.
    #[error("saga log damaged: job definition unreadable ({0})")]
    Unreadable(String),
    /// The writer is no longer the one the log takes writes from (another scheduler leads):
    /// nothing was written, and nothing this writer sends will be. It must stop.
    #[error("saga log write refused: {0}")]
    Fenced(String),
}

impl SagaLogError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SagaLogError::Internal(_))
    }
}

/// Why a saga message or operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SagaError {
    #[error("saga id must not be empty")]
    EmptySagaId,
    #[error("{kind} in saga {saga_id:?} needs a task id")]
    EmptyTaskId { saga_id: String, kind: MessageKind },
    #[error("{kind} for saga {message_saga_id:?} sent to saga {saga_id:?}")]
    SagaIdMismatch {
        saga_id: String,
        message_saga_id: String,
        kind: MessageKind,
    },
    #[error("a saga must begin with Start Saga, not {0}")]
    MissingStartSaga(MessageKind),
    #[error("a saga needs at least a Start Saga message")]
    NoMessages,
    /// The message is not allowed in the saga's current state; the state is unchanged.
    #[error("invalid {kind} (task {task_id:?}) in saga {saga_id:?}: {reason}")]
    InvalidTransition {
        saga_id: String,
        kind: MessageKind,
        task_id: String,
        reason: String,
    },
    /// The live saga already logged End Saga; it accepts nothing more.
    #[error("saga {0:?} has ended; no more messages can be logged")]
    SagaEnded(String),
    #[error(transparent)]
    Log(#[from] SagaLogError),
}
