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

/// Checks shared by the tests of every [`SagaLog`] implementation.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::message::MessageKind;

    pub fn check_round_trip(log: &dyn SagaLog) {
        log.start_saga("s1", b"job1").unwrap();
        log.start_saga("s2", b"").unwrap();
        let msgs = vec![
            SagaMessage::start_task("s1", "t1", Vec::new()),
            SagaMessage::start_task("s2", "u", b"x".to_vec()),
            SagaMessage::start_task("s1", "t1", b"running".to_vec()),
            SagaMessage::end_task("s1", "t1", vec![0, 1, 2, 255]),
        ];
        log.log_messages(&msgs).unwrap();
        log.log_messages(&[SagaMessage::end_saga("s1")]).unwrap();
        log.log_messages(&[]).unwrap();
        assert_eq!(
            log.get_messages("s1").unwrap().unwrap(),
            vec![
                SagaMessage::start_saga("s1", b"job1".to_vec()),
                msgs[0].clone(),
                msgs[2].clone(),
                msgs[3].clone(),
                SagaMessage::end_saga("s1"),
            ]
        );
        assert_eq!(
            log.get_messages("s2").unwrap().unwrap(),
            vec![SagaMessage::start_saga("s2", Vec::new()), msgs[1].clone()]
        );
        assert_eq!(log.get_messages("nope").unwrap(), None);
    }

    pub fn check_unknown_saga_refused(log: &dyn SagaLog) {
        log.start_saga("known", b"j").unwrap();
        let err = log
            .log_messages(&[
                SagaMessage::start_task("known", "t", Vec::new()),
                SagaMessage::start_task("unknown", "t", Vec::new()),
            ])
            .unwrap_err();
        assert!(matches!(err, SagaLogError::InvalidRequest(_)), "{err:?}");
        assert!(!err.is_retryable());
        assert_eq!(log.get_messages("known").unwrap().unwrap().len(), 1);
        assert_eq!(log.get_messages("unknown").unwrap(), None);
        assert!(matches!(
            log.start_saga("", b""),
            Err(SagaLogError::InvalidRequest(_))
        ));

        // A saga started earlier in the same batch is known.
        let batch = [
            SagaMessage::start_saga("fresh", b"j".to_vec()),
            SagaMessage::start_task("fresh", "t", Vec::new()),
        ];
        log.log_messages(&batch).unwrap();
        assert_eq!(log.get_messages("fresh").unwrap().unwrap(), batch);
    }

    pub fn check_start_saga_replaces(log: &dyn SagaLog) {
        log.start_saga("s", b"old").unwrap();
        log.log_messages(&[
            SagaMessage::start_task("s", "t", Vec::new()),
            SagaMessage::end_task("s", "t", Vec::new()),
            SagaMessage::end_saga("s"),
        ])
        .unwrap();
        assert!(log.active_sagas().unwrap().is_empty());
        log.start_saga("s", b"new").unwrap();
        assert_eq!(
            log.get_messages("s").unwrap().unwrap(),
            [SagaMessage::start_saga("s", b"new".to_vec())]
        );
        assert_eq!(log.active_sagas().unwrap(), ["s"]);

        // A Start Saga inside a batch replaces too; messages before it are superseded.
        log.log_messages(&[
            SagaMessage::start_task("s", "gone", Vec::new()),
            SagaMessage::start_saga("s", b"newer".to_vec()),
            SagaMessage::start_task("s", "kept", Vec::new()),
        ])
        .unwrap();
        assert_eq!(
            log.get_messages("s").unwrap().unwrap(),
            [
                SagaMessage::start_saga("s", b"newer".to_vec()),
                SagaMessage::start_task("s", "kept", Vec::new()),
            ]
        );
    }

    pub const ODD_IDS: [&str; 9] = [
        "a/b",
        "..",
        "../../etc/passwd",
        ".",
        "with space",
        "new\nline",
        "ünïcødé ✓ 日本",
        "nul\0byte",
        "UPPER-lower_1234567890",
    ];

    pub fn check_odd_saga_ids(log: &dyn SagaLog) {
        for id in ODD_IDS {
            log.start_saga(id, id.as_bytes()).unwrap();
            log.log_messages(&[SagaMessage::start_task(id, id, id.as_bytes().to_vec())])
                .unwrap();
        }
        for id in ODD_IDS {
            let msgs = log.get_messages(id).unwrap().unwrap();
            assert_eq!(msgs.len(), 2, "{id:?}");
            assert!(msgs.iter().all(|m| m.saga_id == id));
            assert_eq!(msgs[1].task_id, id);
        }
        let mut expected: Vec<String> = ODD_IDS.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(log.active_sagas().unwrap(), expected);
    }

    pub fn check_active_sagas(log: &dyn SagaLog) {
        for id in ["s1", "s2", "s3"] {
            log.start_saga(id, b"").unwrap();
        }
        log.log_messages(&[SagaMessage::end_saga("s2"), SagaMessage::abort_saga("s3")])
            .unwrap();
        assert_eq!(log.active_sagas().unwrap(), ["s1", "s3"]);
        log.log_messages(&[SagaMessage::end_saga("s1")]).unwrap();
        assert_eq!(log.active_sagas().unwrap(), ["s3"]);
    }

    pub fn check_gc(log: &dyn SagaLog, retention: Duration) {
        log.start_saga("ended", b"").unwrap();
        log.start_saga("running", b"").unwrap();
        log.start_saga("aborted", b"").unwrap();
        log.log_messages(&[
            SagaMessage::end_saga("ended"),
            SagaMessage::abort_saga("aborted"),
        ])
        .unwrap();
        let now = SystemTime::now();
        assert_eq!(log.gc(now).unwrap(), 0, "within retention");
        assert!(log.get_messages("ended").unwrap().is_some());

        let later = now + retention + Duration::from_secs(1);
        assert_eq!(log.gc(later).unwrap(), 1);
        assert_eq!(log.get_messages("ended").unwrap(), None);
        assert!(log.get_messages("running").unwrap().is_some());
        assert!(log.get_messages("aborted").unwrap().is_some());
        assert_eq!(log.active_sagas().unwrap(), ["aborted", "running"]);
        assert_eq!(log.gc(later).unwrap(), 0);

        // A collected id can be started again.
        log.start_saga("ended", b"again").unwrap();
        assert_eq!(
            log.get_messages("ended").unwrap().unwrap()[0].kind,
            MessageKind::StartSaga
        );
    }

    pub fn check_gc_without_retention(log: &dyn SagaLog) {
        log.start_saga("kept", b"").unwrap();
        log.log_messages(&[SagaMessage::end_saga("kept")]).unwrap();
        let far = SystemTime::now() + Duration::from_secs(100 * 365 * 86400);
        assert_eq!(log.gc(far).unwrap(), 0);
        assert!(log.get_messages("kept").unwrap().is_some());
    }
}
