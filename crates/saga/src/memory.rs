//! A saga log held in memory: for tests and for schedulers that need no recovery.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crate::error::SagaLogError;
use crate::log::{SagaLog, expired};
use crate::message::{MessageKind, SagaMessage};

struct StoredSaga {
    messages: Vec<SagaMessage>,
    /// When the first End Saga was logged.
    ended_at: Option<SystemTime>,
}

impl StoredSaga {
    fn new(start: SagaMessage) -> Self {
        StoredSaga {
            messages: vec![start],
            ended_at: None,
        }
    }
}

/// Sagas in a `HashMap` behind a mutex. "Durable" means until the process exits.
///
/// Unlike Scoot's in-memory log, which expired whole sagas by age whatever their state, `gc`
/// deletes only sagas that ended more than `retention` ago.
pub struct MemorySagaLog {
    retention: Option<Duration>,
    sagas: Mutex<HashMap<String, StoredSaga>>,
}

impl MemorySagaLog {
    /// `retention`: how long ended sagas are kept; `None` keeps them forever.
    pub fn new(retention: Option<Duration>) -> Self {
        MemorySagaLog {
            retention,
            sagas: Mutex::new(HashMap::new()),
        }
    }

    fn sagas(&self) -> MutexGuard<'_, HashMap<String, StoredSaga>> {
        // Every update below is a single insert or push, so a panic elsewhere cannot leave the
        // map half-changed; the data stays usable after poisoning.
        self.sagas.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn check_saga_id(saga_id: &str) -> Result<(), SagaLogError> {
    if saga_id.is_empty() {
        Err(SagaLogError::InvalidRequest("empty saga id".into()))
    } else {
        Ok(())
    }
}

impl SagaLog for MemorySagaLog {
    fn start_saga(&self, saga_id: &str, job: &[u8]) -> Result<(), SagaLogError> {
        check_saga_id(saga_id)?;
        self.sagas().insert(
            saga_id.to_owned(),
            StoredSaga::new(SagaMessage::start_saga(saga_id, job)),
        );
        Ok(())
    }

    fn log_messages(&self, messages: &[SagaMessage]) -> Result<(), SagaLogError> {
        let mut sagas = self.sagas();
        // Check the whole batch first so that a refused batch writes nothing.
        let mut started_here = HashSet::new();
        for msg in messages {
            check_saga_id(&msg.saga_id)?;
            if msg.kind == MessageKind::StartSaga {
                started_here.insert(msg.saga_id.as_str());
            } else if !started_here.contains(msg.saga_id.as_str())
                && !sagas.contains_key(&msg.saga_id)
            {
                return Err(SagaLogError::InvalidRequest(format!(
                    "{msg}: unknown saga (no Start Saga)"
                )));
            }
        }
        let now = SystemTime::now();
        for msg in messages {
            if msg.kind == MessageKind::StartSaga {
                sagas.insert(msg.saga_id.clone(), StoredSaga::new(msg.clone()));
            } else if let Some(saga) = sagas.get_mut(&msg.saga_id) {
                if msg.kind == MessageKind::EndSaga && saga.ended_at.is_none() {
                    saga.ended_at = Some(now);
                }
                saga.messages.push(msg.clone());
            }
        }
        Ok(())
    }

    fn get_messages(&self, saga_id: &str) -> Result<Option<Vec<SagaMessage>>, SagaLogError> {
        Ok(self.sagas().get(saga_id).map(|s| s.messages.clone()))
    }

    fn active_sagas(&self) -> Result<Vec<String>, SagaLogError> {
        let mut ids: Vec<String> = self
            .sagas()
            .iter()
            .filter(|(_, s)| s.ended_at.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn gc(&self, now: SystemTime) -> Result<usize, SagaLogError> {
        let mut sagas = self.sagas();
        let before = sagas.len();
        sagas.retain(|_, s| !s.ended_at.is_some_and(|t| expired(t, now, self.retention)));
        Ok(before - sagas.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::*;

    #[test]
    fn round_trip() {
        check_round_trip(&MemorySagaLog::new(None));
    }

    #[test]
    fn unknown_saga_is_refused_without_writing() {
        check_unknown_saga_refused(&MemorySagaLog::new(None));
    }

    #[test]
    fn start_saga_replaces() {
        check_start_saga_replaces(&MemorySagaLog::new(None));
    }

    #[test]
    fn odd_saga_ids() {
        check_odd_saga_ids(&MemorySagaLog::new(None));
    }

    #[test]
    fn active_sagas_exclude_ended() {
        check_active_sagas(&MemorySagaLog::new(None));
    }

    #[test]
    fn gc_deletes_only_old_ended_sagas() {
        let hour = Duration::from_secs(3600);
        check_gc(&MemorySagaLog::new(Some(hour)), hour);
        check_gc_without_retention(&MemorySagaLog::new(None));
    }
}
