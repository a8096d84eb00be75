//! The storage interface behind sagas, and periodic garbage collection.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::error::SagaLogError;
use crate::message::SagaMessage;

/// Durable storage of saga messages.
///
/// Calls block (they may fsync); async callers go through `spawn_blocking`, as
/// [`SagaCoordinator`](crate::SagaCoordinator) does. Implementations must be safe to call from
/// many threads at once.
pub trait SagaLog: Send + Sync {
    /// Starts saga `saga_id` with `job` as its Start Saga data, replacing any saga with that id.
    /// Durable when this returns `Ok`.
    fn start_saga(&self, saga_id: &str, job: &[u8]) -> Result<(), SagaLogError>;

    /// Appends `messages`, in order; they may belong to several sagas. Every message is durable
    /// when this returns `Ok`. A Start Saga message starts (or replaces) its saga like
    /// [`start_saga`](Self::start_saga); any other message for a saga that is neither stored nor
    /// started earlier in `messages` fails the whole call with
    /// [`SagaLogError::InvalidRequest`] before anything is written. The log does not check the
    /// saga state machine; that is [`SagaState`](crate::SagaState)'s job.
    fn log_messages(&self, messages: &[SagaMessage]) -> Result<(), SagaLogError>;

    /// Every stored message of the saga, in order, or `None` if the saga is unknown.
    fn get_messages(&self, saga_id: &str) -> Result<Option<Vec<SagaMessage>>, SagaLogError>;

    /// Ids of the sagas that have no End Saga, i.e. that need resuming after a restart.
    fn active_sagas(&self) -> Result<Vec<String>, SagaLogError>;

    /// Deletes the sagas whose End Saga was logged more than the retention before `now`; returns
    /// how many were deleted. Sagas that have not ended are never deleted.
    fn gc(&self, now: SystemTime) -> Result<usize, SagaLogError>;
}

/// Whether a saga that ended at `ended_at` is past `retention` at `now`. No retention means keep
/// forever; an end time in the future (clock steps) is not expired.
pub(crate) fn expired(ended_at: SystemTime, now: SystemTime, retention: Option<Duration>) -> bool {
    match (retention, now.duration_since(ended_at)) {
        (Some(retention), Ok(age)) => age > retention,
        _ => false,
    }
}

/// Runs `log.gc(now)` every `interval` (first run at once) on the blocking pool until the
/// returned handle is aborted. Failures are logged and retried at the next tick.
pub fn spawn_gc(log: Arc<dyn SagaLog>, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let log = Arc::clone(&log);
            match tokio::task::spawn_blocking(move || log.gc(SystemTime::now())).await {
                Ok(Ok(0)) => {}
                Ok(Ok(deleted)) => tracing::info!(deleted, "saga log gc deleted ended sagas"),
                Ok(Err(err)) => tracing::warn!(%err, "saga log gc failed"),
                Err(err) => tracing::error!(%err, "saga log gc task failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let hour = Duration::from_secs(3600);
        assert!(!expired(t0, t0 + hour, None));
        assert!(!expired(t0, t0 + hour, Some(hour)));
        assert!(expired(
            t0,
            t0 + hour + Duration::from_millis(1),
            Some(hour)
        ));
        assert!(!expired(t0 + hour, t0, Some(Duration::ZERO)));
    }
}
