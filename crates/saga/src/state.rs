//! The saga state machine: what a saga's messages mean and which ones may follow.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::error::SagaError;
use crate::message::{MessageKind, SagaMessage};

/// What is known about one started task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TaskState {
    /// Data of the latest Start Task.
    start_data: Vec<u8>,
    /// Data of End Task, once the task completed.
    end_data: Option<Vec<u8>>,
    /// Data of the latest Start Comp Task, once compensation started.
    start_comp_data: Option<Vec<u8>>,
    /// Data of End Comp Task, once compensation completed.
    end_comp_data: Option<Vec<u8>>,
}

/// The state of one saga, rebuilt by applying its messages in order.
///
/// Every change goes through [`apply`](Self::apply) (or [`apply_all`](Self::apply_all)), which
/// refuses a message that is not allowed in the current state and then leaves the state as it
/// was. Tasks appear once started; a task's record keeps the latest data of each message kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaState {
    saga_id: String,
    /// Shared, not copied, by the clones a saga keeps (what is durable and what is pending):
    /// it is the whole serialized job, the bulk of a queued job's memory.
    job: Arc<[u8]>,
    /// Started tasks by id (sorted, so [`task_ids`](Self::task_ids) is deterministic).
    tasks: BTreeMap<String, TaskState>,
    completed: bool,
    aborted: bool,
}

impl SagaState {
    /// The state right after Start Saga.
    pub fn new(saga_id: impl Into<String>, job: impl Into<Vec<u8>>) -> Result<Self, SagaError> {
        let saga_id = saga_id.into();
        if saga_id.is_empty() {
            return Err(SagaError::EmptySagaId);
        }
        Ok(SagaState {
            saga_id,
            job: Arc::from(job.into()),
            tasks: BTreeMap::new(),
            completed: false,
            aborted: false,
        })
    }

    /// Replays a saga's log; the first message must be Start Saga.
    pub fn from_messages(messages: &[SagaMessage]) -> Result<Self, SagaError> {
        let (first, rest) = messages.split_first().ok_or(SagaError::NoMessages)?;
        if first.kind != MessageKind::StartSaga {
            return Err(SagaError::MissingStartSaga(first.kind));
        }
        let mut state = SagaState::new(first.saga_id.clone(), first.data.clone())?;
        for message in rest {
            state.apply(message)?;
        }
        Ok(state)
    }

    /// Applies one message, or refuses it and leaves the state unchanged.
    pub fn apply(&mut self, message: &SagaMessage) -> Result<(), SagaError> {
        self.check(message)?;
        self.update(message);
        Ok(())
    }

    /// Applies `messages` in order, all or nothing: if one is refused, the state is left as it
    /// was before the first.
    pub fn apply_all(&mut self, messages: &[SagaMessage]) -> Result<(), SagaError> {
        // Undo log: the saga flags plus the prior record of every task touched, so that a
        // refused batch costs only what it touched rather than a clone of the whole state.
        let flags = (self.completed, self.aborted);
        let mut saved: HashMap<&str, Option<TaskState>> = HashMap::new();
        for message in messages {
            if let Err(err) = self.check(message) {
                self.completed = flags.0;
                self.aborted = flags.1;
                for (task_id, prior) in saved {
                    match prior {
                        Some(task) => self.tasks.insert(task_id.to_owned(), task),
                        None => self.tasks.remove(task_id),
                    };
                }
                return Err(err);
            }
            if message.kind.is_task_message() && !saved.contains_key(message.task_id.as_str()) {
                saved.insert(&message.task_id, self.tasks.get(&message.task_id).cloned());
            }
            self.update(message);
        }
        Ok(())
    }

    /// Whether `message` may be applied now.
    fn check(&self, message: &SagaMessage) -> Result<(), SagaError> {
        if message.saga_id != self.saga_id {
            return Err(SagaError::SagaIdMismatch {
                saga_id: self.saga_id.clone(),
                message_saga_id: message.saga_id.clone(),
                kind: message.kind,
            });
        }
        if message.kind.is_task_message() && message.task_id.is_empty() {
            return Err(SagaError::EmptyTaskId {
                saga_id: self.saga_id.clone(),
                kind: message.kind,
            });
        }
        let refuse = |reason: String| {
            Err(SagaError::InvalidTransition {
                saga_id: self.saga_id.clone(),
                kind: message.kind,
                task_id: message.task_id.clone(),
                reason,
            })
        };
        let task = self.tasks.get(&message.task_id);
        match message.kind {
            MessageKind::StartSaga => refuse("the saga has already started".into()),
            MessageKind::EndSaga => {
                if self.completed {
                    return refuse("the saga has already ended".into());
                }
                let pending = if self.aborted {
                    self.tasks
                        .iter()
                        .find(|(_, t)| t.end_comp_data.is_none())
                        .map(|(id, _)| format!("task {id:?} has not been compensated"))
                } else {
                    self.tasks
                        .iter()
                        .find(|(_, t)| t.end_data.is_none())
                        .map(|(id, _)| format!("task {id:?} has not completed"))
                };
                match pending {
                    Some(reason) => refuse(reason),
                    None => Ok(()),
                }
            }
            MessageKind::AbortSaga => {
                if self.completed {
                    return refuse("the saga has already ended".into());
                }
                Ok(())
            }
            MessageKind::StartTask => {
                if self.completed {
                    refuse("the saga has ended".into())
                } else if self.aborted {
                    refuse("the saga was aborted".into())
                } else if task.is_some_and(|t| t.end_data.is_some()) {
                    refuse("the task has already completed".into())
                } else {
                    Ok(())
                }
            }
            MessageKind::EndTask => {
                if self.completed {
                    refuse("the saga has ended".into())
                } else if self.aborted {
                    refuse("the saga was aborted".into())
                } else {
                    match task {
                        None => refuse("the task has not started".into()),
                        Some(t) if t.end_data.is_some() => {
                            refuse("the task has already completed".into())
                        }
                        Some(_) => Ok(()),
                    }
                }
            }
            MessageKind::StartCompTask => {
                if self.completed {
                    refuse("the saga has ended".into())
                } else if !self.aborted {
                    refuse("the saga has not been aborted".into())
                } else {
                    match task {
                        None => refuse("the task has not started".into()),
                        Some(t) if t.end_comp_data.is_some() => {
                            refuse("the task has already been compensated".into())
                        }
                        Some(_) => Ok(()),
                    }
                }
            }
            MessageKind::EndCompTask => {
                if self.completed {
                    refuse("the saga has ended".into())
                } else {
                    match task {
                        Some(t) if t.end_comp_data.is_some() => {
                            refuse("the task has already been compensated".into())
                        }
                        Some(t) if t.start_comp_data.is_some() => Ok(()),
                        _ => refuse("the compensating task has not started".into()),
                    }
                }
            }
        }
    }

    /// Applies a message that [`check`](Self::check) accepted.
    fn update(&mut self, message: &SagaMessage) {
        let data = message.data.clone();
        match message.kind {
            MessageKind::StartSaga => {}
            MessageKind::EndSaga => self.completed = true,
            MessageKind::AbortSaga => self.aborted = true,
            MessageKind::StartTask => {
                self.tasks
                    .entry(message.task_id.clone())
                    .or_default()
                    .start_data = data;
            }
            kind => {
                // The remaining kinds need a started task, which check() made sure of.
                if let Some(task) = self.tasks.get_mut(&message.task_id) {
                    let slot = match kind {
                        MessageKind::EndTask => &mut task.end_data,
                        MessageKind::StartCompTask => &mut task.start_comp_data,
                        _ => &mut task.end_comp_data,
                    };
                    *slot = Some(data);
                }
            }
        }
    }

    pub fn saga_id(&self) -> &str {
        &self.saga_id
    }

    /// The data of Start Saga: the serialized job.
    pub fn job(&self) -> &[u8] {
        &self.job
    }

    /// The same data, shared rather than copied (for a write on another thread).
    pub(crate) fn shared_job(&self) -> Arc<[u8]> {
        Arc::clone(&self.job)
    }

    /// Whether End Saga was applied.
    pub fn is_saga_completed(&self) -> bool {
        self.completed
    }

    /// Whether Abort Saga was applied.
    pub fn is_saga_aborted(&self) -> bool {
        self.aborted
    }

    pub fn is_task_started(&self, task_id: &str) -> bool {
        self.tasks.contains_key(task_id)
    }

    pub fn is_task_completed(&self, task_id: &str) -> bool {
        self.tasks
            .get(task_id)
            .is_some_and(|t| t.end_data.is_some())
    }

    pub fn is_comp_task_started(&self, task_id: &str) -> bool {
        self.tasks
            .get(task_id)
            .is_some_and(|t| t.start_comp_data.is_some())
    }

    pub fn is_comp_task_completed(&self, task_id: &str) -> bool {
        self.tasks
            .get(task_id)
            .is_some_and(|t| t.end_comp_data.is_some())
    }

    /// Data of the task's latest Start Task (possibly empty), if it started.
    pub fn start_task_data(&self, task_id: &str) -> Option<&[u8]> {
        self.tasks.get(task_id).map(|t| t.start_data.as_slice())
    }

    /// Data of the task's End Task, if it completed.
    pub fn end_task_data(&self, task_id: &str) -> Option<&[u8]> {
        self.tasks.get(task_id)?.end_data.as_deref()
    }

    /// Data of the task's latest Start Comp Task, if compensation started.
    pub fn start_comp_task_data(&self, task_id: &str) -> Option<&[u8]> {
        self.tasks.get(task_id)?.start_comp_data.as_deref()
    }

    /// Data of the task's End Comp Task, if compensation completed.
    pub fn end_comp_task_data(&self, task_id: &str) -> Option<&[u8]> {
        self.tasks.get(task_id)?.end_comp_data.as_deref()
    }

    /// Ids of the started tasks, sorted.
    pub fn task_ids(&self) -> Vec<&str> {
        self.tasks.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: &str = "saga";

    fn state() -> SagaState {
        SagaState::new(S, b"job".to_vec()).unwrap()
    }

    /// Applies `msg`, expects a refusal, and checks the state did not change.
    fn refused(state: &mut SagaState, msg: SagaMessage) -> SagaError {
        let before = state.clone();
        let err = state.apply(&msg).expect_err("message should be refused");
        assert_eq!(*state, before, "a refused {msg} changed the state");
        err
    }

    fn invalid_transition(state: &mut SagaState, msg: SagaMessage, reason_part: &str) {
        match refused(state, msg) {
            SagaError::InvalidTransition { reason, .. } => {
                assert!(reason.contains(reason_part), "reason {reason:?}")
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn new_keeps_id_and_job_and_refuses_empty_id() {
        let s = state();
        assert_eq!(s.saga_id(), S);
        assert_eq!(s.job(), b"job");
        assert!(!s.is_saga_completed() && !s.is_saga_aborted());
        assert!(s.task_ids().is_empty());
        assert_eq!(SagaState::new("", Vec::new()), Err(SagaError::EmptySagaId));
    }

    #[test]
    fn happy_path_tracks_tasks_and_latest_data() {
        let mut s = state();
        s.apply(&SagaMessage::start_task(S, "b", Vec::new()))
            .unwrap();
        s.apply(&SagaMessage::start_task(S, "a", b"one".to_vec()))
            .unwrap();
        assert!(s.is_task_started("a") && !s.is_task_completed("a"));
        assert_eq!(s.start_task_data("b"), Some(&b""[..]));
        // A second Start Task on a running task overwrites its data.
        s.apply(&SagaMessage::start_task(S, "a", b"two".to_vec()))
            .unwrap();
        assert_eq!(s.start_task_data("a"), Some(&b"two"[..]));
        assert_eq!(s.end_task_data("a"), None);
        s.apply(&SagaMessage::end_task(S, "a", b"done".to_vec()))
            .unwrap();
        assert!(s.is_task_completed("a"));
        assert_eq!(s.end_task_data("a"), Some(&b"done"[..]));
        assert_eq!(s.start_task_data("a"), Some(&b"two"[..]));
        assert_eq!(s.task_ids(), ["a", "b"]);
        assert!(!s.is_task_started("c"));
        assert_eq!(s.start_task_data("c"), None);
        s.apply(&SagaMessage::end_task(S, "b", Vec::new())).unwrap();
        s.apply(&SagaMessage::end_saga(S)).unwrap();
        assert!(s.is_saga_completed());
    }

    #[test]
    fn empty_saga_ends_at_once() {
        let mut s = state();
        s.apply(&SagaMessage::end_saga(S)).unwrap();
        assert!(s.is_saga_completed());
    }

    #[test]
    fn ids_are_checked() {
        let mut s = state();
        assert!(matches!(
            refused(&mut s, SagaMessage::start_task(S, "", Vec::new())),
            SagaError::EmptyTaskId { .. }
        ));
        assert!(matches!(
            refused(&mut s, SagaMessage::end_task(S, "", Vec::new())),
            SagaError::EmptyTaskId { .. }
        ));
        assert!(matches!(
            refused(&mut s, SagaMessage::start_task("other", "t", Vec::new())),
            SagaError::SagaIdMismatch { .. }
        ));
        assert!(matches!(
            refused(&mut s, SagaMessage::end_saga("other")),
            SagaError::SagaIdMismatch { .. }
        ));
    }

    #[test]
    fn start_saga_twice_is_refused() {
        let mut s = state();
        invalid_transition(&mut s, SagaMessage::start_saga(S, Vec::new()), "already");
    }

    #[test]
    fn start_task_rules() {
        let mut s = state();
        s.apply(&SagaMessage::start_task(S, "t", Vec::new()))
            .unwrap();
        s.apply(&SagaMessage::end_task(S, "t", Vec::new())).unwrap();
        invalid_transition(
            &mut s,
            SagaMessage::start_task(S, "t", Vec::new()),
            "already completed",
        );
        s.apply(&SagaMessage::end_saga(S)).unwrap();
        invalid_transition(&mut s, SagaMessage::start_task(S, "u", Vec::new()), "ended");

        let mut s = state();
        s.apply(&SagaMessage::abort_saga(S)).unwrap();
        invalid_transition(
            &mut s,
            SagaMessage::start_task(S, "u", Vec::new()),
            "aborted",
        );
    }

    #[test]
    fn end_task_rules() {
        let mut s = state();
        invalid_transition(
            &mut s,
            SagaMessage::end_task(S, "t", Vec::new()),
            "not started",
        );
        s.apply(&SagaMessage::start_task(S, "t", Vec::new()))
            .unwrap();
        s.apply(&SagaMessage::end_task(S, "t", b"1".to_vec()))
            .unwrap();
        invalid_transition(
            &mut s,
            SagaMessage::end_task(S, "t", b"2".to_vec()),
            "already completed",
        );
        assert_eq!(s.end_task_data("t"), Some(&b"1"[..]));
        s.apply(&SagaMessage::end_saga(S)).unwrap();
        invalid_transition(&mut s, SagaMessage::end_task(S, "t", Vec::new()), "ended");

        let mut s = state();
        s.apply(&SagaMessage::start_task(S, "t", Vec::new()))
            .unwrap();
        s.apply(&SagaMessage::abort_saga(S)).unwrap();
        invalid_transition(&mut s, SagaMessage::end_task(S, "t", Vec::new()), "aborted");
    }

    #[test]
    fn end_saga_rules() {
        let mut s = state();
        s.apply(&SagaMessage::start_task(S, "t", Vec::new()))
            .unwrap();
        invalid_transition(&mut s, SagaMessage::end_saga(S), "not completed");
        s.apply(&SagaMessage::end_task(S, "t", Vec::new())).unwrap();
        s.apply(&SagaMessage::end_saga(S)).unwrap();
        invalid_transition(&mut s, SagaMessage::end_saga(S), "already ended");
    }

    #[test]
    fn abort_saga_rules() {
        let mut s = state();
        s.apply(&SagaMessage::abort_saga(S)).unwrap();
        // Aborting again is harmless.
        s.apply(&SagaMessage::abort_saga(S)).unwrap();
        assert!(s.is_saga_aborted());
        s.apply(&SagaMessage::end_saga(S)).unwrap();
        invalid_transition(&mut s, SagaMessage::abort_saga(S), "already ended");
    }

    #[test]
    fn compensation_rules() {
        let mut s = state();
        s.apply(&SagaMessage::start_task(S, "t", Vec::new()))
            .unwrap();
        s.apply(&SagaMessage::start_task(S, "u", Vec::new()))
            .unwrap();
        s.apply(&SagaMessage::end_task(S, "u", Vec::new())).unwrap();
        invalid_transition(
            &mut s,
            SagaMessage::start_comp_task(S, "t", Vec::new()),
            "not been aborted",
        );
        invalid_transition(
            &mut s,
            SagaMessage::end_comp_task(S, "t", Vec::new()),
            "compensating task has not started",
        );
        s.apply(&SagaMessage::abort_saga(S)).unwrap();
        invalid_transition(
            &mut s,
            SagaMessage::start_comp_task(S, "x", Vec::new()),
            "not started",
        );
        invalid_transition(
            &mut s,
            SagaMessage::end_comp_task(S, "t", Vec::new()),
            "compensating task has not started",
        );
        s.apply(&SagaMessage::start_comp_task(S, "t", b"c1".to_vec()))
            .unwrap();
        assert!(s.is_comp_task_started("t") && !s.is_comp_task_completed("t"));
        s.apply(&SagaMessage::start_comp_task(S, "t", b"c2".to_vec()))
            .unwrap();
        assert_eq!(s.start_comp_task_data("t"), Some(&b"c2"[..]));
        s.apply(&SagaMessage::end_comp_task(S, "t", b"e".to_vec()))
            .unwrap();
        assert_eq!(s.end_comp_task_data("t"), Some(&b"e"[..]));
        invalid_transition(
            &mut s,
            SagaMessage::end_comp_task(S, "t", Vec::new()),
            "already been compensated",
        );
        invalid_transition(
            &mut s,
            SagaMessage::start_comp_task(S, "t", Vec::new()),
            "already been compensated",
        );
        // "u" completed normally but still needs compensating before the aborted saga ends.
        invalid_transition(
            &mut s,
            SagaMessage::end_saga(S),
            "\"u\" has not been compensated",
        );
        s.apply(&SagaMessage::start_comp_task(S, "u", Vec::new()))
            .unwrap();
        s.apply(&SagaMessage::end_comp_task(S, "u", Vec::new()))
            .unwrap();
        s.apply(&SagaMessage::end_saga(S)).unwrap();
        invalid_transition(
            &mut s,
            SagaMessage::start_comp_task(S, "t", Vec::new()),
            "ended",
        );
        invalid_transition(
            &mut s,
            SagaMessage::end_comp_task(S, "u", Vec::new()),
            "ended",
        );
    }

    #[test]
    fn from_messages_replays_and_needs_start_saga() {
        let msgs = vec![
            SagaMessage::start_saga(S, b"job".to_vec()),
            SagaMessage::start_task(S, "t", Vec::new()),
            SagaMessage::end_task(S, "t", b"ok".to_vec()),
            SagaMessage::end_saga(S),
        ];
        let s = SagaState::from_messages(&msgs).unwrap();
        assert_eq!(s.job(), b"job");
        assert_eq!(s.end_task_data("t"), Some(&b"ok"[..]));
        assert!(s.is_saga_completed());

        assert_eq!(SagaState::from_messages(&[]), Err(SagaError::NoMessages));
        assert_eq!(
            SagaState::from_messages(&msgs[1..]),
            Err(SagaError::MissingStartSaga(MessageKind::StartTask))
        );
        assert_eq!(
            SagaState::from_messages(&[SagaMessage::start_saga("", Vec::new())]),
            Err(SagaError::EmptySagaId)
        );
        // An invalid message in the middle fails the replay.
        let bad = [msgs[0].clone(), msgs[2].clone()];
        assert!(matches!(
            SagaState::from_messages(&bad),
            Err(SagaError::InvalidTransition { .. })
        ));
    }

    #[test]
    fn apply_all_is_all_or_nothing() {
        let mut s = state();
        s.apply(&SagaMessage::start_task(S, "a", b"a0".to_vec()))
            .unwrap();
        let before = s.clone();
        let batch = [
            SagaMessage::start_task(S, "a", b"a1".to_vec()),
            SagaMessage::start_task(S, "b", Vec::new()),
            SagaMessage::end_task(S, "a", Vec::new()),
            SagaMessage::abort_saga(S),
            // Refused: the saga is aborted by now.
            SagaMessage::end_task(S, "b", Vec::new()),
        ];
        assert!(s.apply_all(&batch).is_err());
        assert_eq!(s, before);

        s.apply_all(&batch[..4]).unwrap();
        assert!(s.is_saga_aborted() && s.is_task_completed("a") && s.is_task_started("b"));
        assert_eq!(s.start_task_data("a"), Some(&b"a1"[..]));
    }
}
