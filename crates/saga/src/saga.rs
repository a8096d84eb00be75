//! Live sagas: validated, ordered, group-committed writes on top of a [`SagaLog`].

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::error::{SagaError, SagaLogError};
use crate::log::SagaLog;
use crate::message::SagaMessage;
use crate::state::SagaState;

/// Runs a blocking log call on the blocking pool.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, SagaLogError> + Send + 'static,
) -> Result<T, SagaLogError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|err| SagaLogError::Internal(format!("saga log call failed: {err}")))?
}

/// Creates and recovers [`Saga`]s over one [`SagaLog`].
#[derive(Clone)]
pub struct SagaCoordinator {
    log: Arc<dyn SagaLog>,
}

impl SagaCoordinator {
    pub fn new(log: Arc<dyn SagaLog>) -> Self {
        SagaCoordinator { log }
    }

    pub fn log(&self) -> &Arc<dyn SagaLog> {
        &self.log
    }

    /// Starts a saga (replacing any saga with that id); Start Saga is durable on return.
    pub async fn make_saga(
        &self,
        saga_id: impl Into<String>,
        job: impl Into<Vec<u8>>,
    ) -> Result<Saga, SagaError> {
        let state = SagaState::new(saga_id, job)?;
        let log = Arc::clone(&self.log);
        let (id, job) = (state.saga_id().to_owned(), state.shared_job());
        blocking(move || log.start_saga(&id, &job)).await?;
        Ok(Saga::new(Arc::clone(&self.log), state))
    }

    /// The saga as logged, ready to continue (after a restart, say); `None` if unknown.
    pub async fn recover(&self, saga_id: &str) -> Result<Option<Saga>, SagaError> {
        Ok(self
            .get_state(saga_id)
            .await?
            .map(|state| Saga::new(Arc::clone(&self.log), state)))
    }

    /// Ids of the sagas that have not ended.
    pub async fn active_sagas(&self) -> Result<Vec<String>, SagaError> {
        let log = Arc::clone(&self.log);
        Ok(blocking(move || log.active_sagas()).await?)
    }

    /// The state rebuilt from the log; `None` if the saga is unknown.
    pub async fn get_state(&self, saga_id: &str) -> Result<Option<SagaState>, SagaError> {
        let log = Arc::clone(&self.log);
        let id = saga_id.to_owned();
        match blocking(move || log.get_messages(&id)).await? {
            None => Ok(None),
            Some(messages) => SagaState::from_messages(&messages).map(Some),
        }
    }
}

/// A caller whose messages are queued or being written.
struct Waiter {
    messages: Vec<SagaMessage>,
    done: oneshot::Sender<Result<(), SagaError>>,
}

struct Shared {
    /// What the log holds.
    durable: SagaState,
    /// `durable` plus the batch being written plus `queue`: what new messages are checked
    /// against.
    pending: SagaState,
    /// Accepted callers waiting for the next write, in order.
    queue: Vec<Waiter>,
    /// Whether a writer task is running; it drains `queue` before stopping.
    writing: bool,
}

struct Inner {
    id: String,
    log: Arc<dyn SagaLog>,
    shared: Mutex<Shared>,
}

impl Inner {
    fn shared(&self) -> MutexGuard<'_, Shared> {
        // Shared is only changed in short sections without panicking calls.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Checks `messages` against `pending` and applies them there, all or nothing.
fn admit(pending: &mut SagaState, messages: &[SagaMessage]) -> Result<(), SagaError> {
    if pending.is_saga_completed() {
        return Err(SagaError::SagaEnded(pending.saga_id().to_owned()));
    }
    pending.apply_all(messages)
}

/// A live saga. Cheap to clone; clones share the state and the write queue. Keep one per saga
/// id: separate handles for the same id (from two `make_saga` or `recover` calls) do not see
/// each other's messages.
///
/// Writes are ordered and batched (group commit): messages are checked against the state
/// including everything accepted before them, then queued; one writer task at a time sends
/// everything queued to the log in a single `log_messages` call and then wakes the callers of
/// that batch with the shared result. If a write fails, the state returns to what the log holds,
/// the batch's callers get the error, and callers queued behind it are checked again (those that
/// depended on the failed batch are refused, the others stay queued).
#[derive(Clone)]
pub struct Saga {
    inner: Arc<Inner>,
}

impl Saga {
    fn new(log: Arc<dyn SagaLog>, state: SagaState) -> Self {
        Saga {
            inner: Arc::new(Inner {
                id: state.saga_id().to_owned(),
                log,
                shared: Mutex::new(Shared {
                    pending: state.clone(),
                    durable: state,
                    queue: Vec::new(),
                    writing: false,
                }),
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// A copy of the durable state: every message whose `log` returned `Ok` is in it.
    pub fn state(&self) -> SagaState {
        self.inner.shared().durable.clone()
    }

    /// Reads the durable state without copying it.
    pub fn with_state<R>(&self, read: impl FnOnce(&SagaState) -> R) -> R {
        read(&self.inner.shared().durable)
    }

    /// Whether End Saga is durable.
    pub fn is_completed(&self) -> bool {
        self.inner.shared().durable.is_saga_completed()
    }

    /// Logs `messages` in order; resolves once they are durable.
    ///
    /// The messages are checked and queued when `log` is called, not when the future is first
    /// polled, so calls are ordered as made; dropping the future does not cancel the write. The
    /// whole batch is refused if any message is invalid (nothing is queued), and every call after
    /// End Saga fails with [`SagaError::SagaEnded`]. Must be called within a tokio runtime.
    pub fn log(
        &self,
        messages: Vec<SagaMessage>,
    ) -> impl Future<Output = Result<(), SagaError>> + Send + 'static + use<> {
        let accepted = self.enqueue(messages);
        async move {
            match accepted? {
                None => Ok(()),
                Some(done) => done.await.unwrap_or_else(|_| {
                    Err(SagaError::Log(SagaLogError::Internal(
                        "the saga writer stopped (runtime shutting down?)".into(),
                    )))
                }),
            }
        }
    }

    /// Checks and queues `messages`, starting a writer if none runs. `None`: nothing to write.
    fn enqueue(
        &self,
        messages: Vec<SagaMessage>,
    ) -> Result<Option<oneshot::Receiver<Result<(), SagaError>>>, SagaError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            SagaError::Log(SagaLogError::Internal(
                "Saga::log needs a tokio runtime".into(),
            ))
        })?;
        let mut shared = self.inner.shared();
        if messages.is_empty() {
            return if shared.pending.is_saga_completed() {
                Err(SagaError::SagaEnded(shared.pending.saga_id().to_owned()))
            } else {
                Ok(None)
            };
        }
        admit(&mut shared.pending, &messages)?;
        let (done, wait) = oneshot::channel();
        shared.queue.push(Waiter { messages, done });
        if !shared.writing {
            shared.writing = true;
            runtime.spawn(write_queued(Arc::clone(&self.inner)));
        }
        Ok(Some(wait))
    }

    pub async fn start_task(
        &self,
        task_id: impl Into<String>,
        data: impl Into<Vec<u8>>,
    ) -> Result<(), SagaError> {
        let msg = SagaMessage::start_task(self.id(), task_id, data);
        self.log(vec![msg]).await
    }

    pub async fn end_task(
        &self,
        task_id: impl Into<String>,
        data: impl Into<Vec<u8>>,
    ) -> Result<(), SagaError> {
        let msg = SagaMessage::end_task(self.id(), task_id, data);
        self.log(vec![msg]).await
    }

    pub async fn end_saga(&self) -> Result<(), SagaError> {
        let msg = SagaMessage::end_saga(self.id());
        self.log(vec![msg]).await
    }
}

/// Takes everything queued; when nothing is, the writer stops (in the same critical section, so
/// a caller queueing next starts a new writer).
fn next_batch(shared: &mut Shared) -> Vec<Waiter> {
    let batch = std::mem::take(&mut shared.queue);
    if batch.is_empty() {
        shared.writing = false;
    }
    batch
}

/// The writer: writes everything queued in one call, repeatedly, until the queue is empty.
/// One write of queued saga messages to the log (a batch, fsynced with the file log): Scoot's
/// `sagaUpdateStateLatency_ms`.
static SAGA_WRITE: std::sync::LazyLock<scoot_metrics::Latency> = std::sync::LazyLock::new(|| {
    scoot_metrics::latency(
        Some("scheduler/sagaUpdateStateLatency_ms"),
        Some((
            "scoot_saga_write_duration_seconds",
            "How long a write of saga messages to the log took.",
        )),
    )
});

/// Lists the saga metrics before anything is written.
pub fn register_metrics() {
    std::sync::LazyLock::force(&SAGA_WRITE);
}

async fn write_queued(inner: Arc<Inner>) {
    let mut batch = next_batch(&mut inner.shared());
    while !batch.is_empty() {
        let mut messages = Vec::with_capacity(batch.iter().map(|w| w.messages.len()).sum());
        let mut waiters = Vec::with_capacity(batch.len());
        for waiter in batch {
            messages.extend(waiter.messages);
            waiters.push(waiter.done);
        }
        let log = Arc::clone(&inner.log);
        let written = tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let result = log.log_messages(&messages);
            SAGA_WRITE.record(started.elapsed());
            (messages, result)
        })
        .await;

        let mut shared = inner.shared();
        match written {
            Ok((messages, Ok(()))) => {
                if let Err(err) = shared.durable.apply_all(&messages) {
                    // Cannot happen: these messages were checked in this order on top of
                    // `durable`. Keep going with the log as the truth.
                    tracing::error!(%err, "saga state diverged from its log");
                }
                for done in waiters {
                    let _ = done.send(Ok(()));
                }
            }
            Ok((_, Err(err))) => fail_batch(&mut shared, waiters, SagaError::Log(err)),
            Err(join) => fail_batch(
                &mut shared,
                waiters,
                SagaError::Log(SagaLogError::Internal(format!(
                    "saga log call failed: {join}"
                ))),
            ),
        }
        batch = next_batch(&mut shared);
    }
}

/// Reports `err` to a failed batch, returns the state to the durable one and re-checks the
/// callers queued behind the batch.
fn fail_batch(
    shared: &mut Shared,
    waiters: Vec<oneshot::Sender<Result<(), SagaError>>>,
    err: SagaError,
) {
    tracing::warn!(%err, saga_id = shared.durable.saga_id(), "saga write failed");
    for done in waiters {
        let _ = done.send(Err(err.clone()));
    }
    let mut pending = shared.durable.clone();
    for waiter in std::mem::take(&mut shared.queue) {
        match admit(&mut pending, &waiter.messages) {
            Ok(()) => shared.queue.push(waiter),
            Err(refused) => {
                let _ = waiter.done.send(Err(refused));
            }
        }
    }
    shared.pending = pending;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::file::FileSagaLog;
    use crate::log::spawn_gc;
    use crate::memory::MemorySagaLog;
    use crate::message::MessageKind;

    /// Counts `log_messages` calls and messages; each call takes `delay`.
    struct CountingLog {
        inner: Arc<dyn SagaLog>,
        calls: AtomicUsize,
        messages: AtomicUsize,
        delay: Duration,
    }

    impl SagaLog for CountingLog {
        fn start_saga(&self, saga_id: &str, job: &[u8]) -> Result<(), SagaLogError> {
            self.inner.start_saga(saga_id, job)
        }
        fn log_messages(&self, messages: &[SagaMessage]) -> Result<(), SagaLogError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.messages.fetch_add(messages.len(), Ordering::SeqCst);
            std::thread::sleep(self.delay);
            self.inner.log_messages(messages)
        }
        fn get_messages(&self, saga_id: &str) -> Result<Option<Vec<SagaMessage>>, SagaLogError> {
            self.inner.get_messages(saga_id)
        }
        fn active_sagas(&self) -> Result<Vec<String>, SagaLogError> {
            self.inner.active_sagas()
        }
        fn gc(&self, now: SystemTime) -> Result<usize, SagaLogError> {
            self.inner.gc(now)
        }
    }

    /// Fails `log_messages` while `fail` is set.
    struct FailingLog {
        inner: MemorySagaLog,
        fail: AtomicBool,
    }

    impl SagaLog for FailingLog {
        fn start_saga(&self, saga_id: &str, job: &[u8]) -> Result<(), SagaLogError> {
            self.inner.start_saga(saga_id, job)
        }
        fn log_messages(&self, messages: &[SagaMessage]) -> Result<(), SagaLogError> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(SagaLogError::Internal("disk on fire".into()));
            }
            self.inner.log_messages(messages)
        }
        fn get_messages(&self, saga_id: &str) -> Result<Option<Vec<SagaMessage>>, SagaLogError> {
            self.inner.get_messages(saga_id)
        }
        fn active_sagas(&self) -> Result<Vec<String>, SagaLogError> {
            self.inner.active_sagas()
        }
        fn gc(&self, now: SystemTime) -> Result<usize, SagaLogError> {
            self.inner.gc(now)
        }
    }

    /// `log_messages` announces itself on `entered`, then waits for a verdict on `verdicts`
    /// (true: fail) before acting.
    struct GatedLog {
        inner: MemorySagaLog,
        entered: tokio::sync::mpsc::UnboundedSender<()>,
        verdicts: Mutex<std::sync::mpsc::Receiver<bool>>,
    }

    impl SagaLog for GatedLog {
        fn start_saga(&self, saga_id: &str, job: &[u8]) -> Result<(), SagaLogError> {
            self.inner.start_saga(saga_id, job)
        }
        fn log_messages(&self, messages: &[SagaMessage]) -> Result<(), SagaLogError> {
            let _ = self.entered.send(());
            let fail = self.verdicts.lock().unwrap().recv().unwrap();
            if fail {
                return Err(SagaLogError::Internal("refused by the test".into()));
            }
            self.inner.log_messages(messages)
        }
        fn get_messages(&self, saga_id: &str) -> Result<Option<Vec<SagaMessage>>, SagaLogError> {
            self.inner.get_messages(saga_id)
        }
        fn active_sagas(&self) -> Result<Vec<String>, SagaLogError> {
            self.inner.active_sagas()
        }
        fn gc(&self, now: SystemTime) -> Result<usize, SagaLogError> {
            self.inner.gc(now)
        }
    }

    /// Drops the last reference to `file` (and so its directory lock), waiting for writer tasks
    /// that are still winding down to let go of theirs.
    async fn close(file: Arc<FileSagaLog>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&file) > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the log is still in use"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn memory() -> Arc<MemorySagaLog> {
        Arc::new(MemorySagaLog::new(None))
    }

    #[tokio::test]
    async fn saga_lifecycle() {
        let log = memory();
        let coord = SagaCoordinator::new(log.clone());
        assert_eq!(
            coord.make_saga("", b"job".to_vec()).await.err(),
            Some(SagaError::EmptySagaId)
        );
        let saga = coord.make_saga("s", b"job".to_vec()).await.unwrap();
        assert_eq!(saga.id(), "s");
        assert_eq!(coord.active_sagas().await.unwrap(), ["s"]);
        saga.start_task("t", Vec::new()).await.unwrap();
        saga.start_task("t", b"running".to_vec()).await.unwrap();
        saga.end_task("t", b"ok".to_vec()).await.unwrap();
        assert_eq!(saga.state().end_task_data("t"), Some(&b"ok"[..]));
        assert!(!saga.is_completed());
        saga.end_saga().await.unwrap();
        assert!(saga.is_completed());
        assert!(saga.with_state(|s| s.is_saga_completed()));

        let rebuilt = coord.get_state("s").await.unwrap().unwrap();
        assert_eq!(rebuilt, saga.state());
        assert_eq!(rebuilt.job(), b"job");
        assert!(coord.active_sagas().await.unwrap().is_empty());
        assert_eq!(coord.get_state("unknown").await.unwrap(), None);

        for attempt in [
            saga.log(vec![SagaMessage::start_task("s", "u", Vec::new())]),
            saga.log(vec![SagaMessage::end_saga("s")]),
            saga.log(Vec::new()),
        ] {
            assert_eq!(attempt.await, Err(SagaError::SagaEnded("s".into())));
        }
        assert_eq!(log.get_messages("s").unwrap().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn invalid_batch_is_refused_whole() {
        let log = memory();
        let coord = SagaCoordinator::new(log.clone());
        let saga = coord.make_saga("s", Vec::new()).await.unwrap();
        let before = saga.state();
        let err = saga
            .log(vec![
                SagaMessage::start_task("s", "t", Vec::new()),
                SagaMessage::end_task("s", "u", Vec::new()),
            ])
            .await
            .unwrap_err();
        assert!(matches!(err, SagaError::InvalidTransition { .. }), "{err}");
        assert_eq!(saga.state(), before);
        assert_eq!(log.get_messages("s").unwrap().unwrap().len(), 1);
        // The refused batch left nothing behind: "t" can start and the saga can end empty.
        assert!(saga.end_task("t", Vec::new()).await.is_err());
        saga.end_saga().await.unwrap();
    }

    #[tokio::test]
    async fn recover_from_file_log_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(FileSagaLog::open(dir.path().into(), None).unwrap());
        let state = {
            let coord = SagaCoordinator::new(file.clone());
            let saga = coord.make_saga("job/1", b"job".to_vec()).await.unwrap();
            saga.start_task("a", Vec::new()).await.unwrap();
            saga.start_task("b", Vec::new()).await.unwrap();
            saga.end_task("a", b"done".to_vec()).await.unwrap();
            let done = coord.make_saga("job/2", Vec::new()).await.unwrap();
            done.end_saga().await.unwrap();
            saga.state()
        };
        close(file).await;
        let log = Arc::new(FileSagaLog::open(dir.path().into(), None).unwrap());
        let coord = SagaCoordinator::new(log);
        assert_eq!(coord.active_sagas().await.unwrap(), ["job/1"]);
        let saga = coord.recover("job/1").await.unwrap().unwrap();
        assert_eq!(saga.state(), state);
        assert_eq!(saga.state().task_ids(), ["a", "b"]);
        saga.end_task("b", Vec::new()).await.unwrap();
        saga.end_saga().await.unwrap();
        assert!(coord.recover("nope").await.unwrap().is_none());
        let ended = coord.recover("job/2").await.unwrap().unwrap();
        assert!(ended.is_completed());
        assert!(coord.active_sagas().await.unwrap().is_empty());
    }

    fn counting(inner: Arc<dyn SagaLog>, delay: Duration) -> Arc<CountingLog> {
        Arc::new(CountingLog {
            inner,
            calls: AtomicUsize::new(0),
            messages: AtomicUsize::new(0),
            delay,
        })
    }

    /// 50 concurrent tasks each log Start Task then End Task for their own task.
    async fn fifty_concurrent_tasks(saga: &Saga) {
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let saga = saga.clone();
                tokio::spawn(async move {
                    let task = format!("task{i:02}");
                    saga.start_task(&task, Vec::new()).await?;
                    saga.end_task(&task, vec![i]).await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    }

    /// The log holds Start Saga plus every task's Start Task before its End Task.
    fn check_fifty_logged(log: &dyn SagaLog, expected: &SagaState) {
        let logged = log.get_messages("s").unwrap().unwrap();
        assert_eq!(logged.len(), 101);
        let replayed = SagaState::from_messages(&logged).unwrap();
        assert_eq!(replayed, *expected);
        for i in 0..50u8 {
            assert_eq!(
                replayed.end_task_data(&format!("task{i:02}")),
                Some(&[i][..])
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_logs_are_batched_ordered_and_durable() {
        let log = counting(memory(), Duration::from_millis(5));
        let coord = SagaCoordinator::new(log.clone());
        let saga = coord.make_saga("s", Vec::new()).await.unwrap();
        fifty_concurrent_tasks(&saga).await;
        let calls = log.calls.load(Ordering::SeqCst);
        let messages = log.messages.load(Ordering::SeqCst);
        assert_eq!(messages, 100);
        assert!(
            calls < messages / 2,
            "{calls} calls for {messages} messages"
        );
        check_fifty_logged(log.as_ref(), &saga.state());
        saga.end_saga().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_logs_survive_reopening_the_file_log() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(FileSagaLog::open(dir.path().into(), None).unwrap());
        let state = {
            let log = counting(file.clone(), Duration::ZERO);
            let coord = SagaCoordinator::new(log.clone());
            let saga = coord.make_saga("s", Vec::new()).await.unwrap();
            fifty_concurrent_tasks(&saga).await;
            assert_eq!(log.messages.load(Ordering::SeqCst), 100);
            saga.state()
        };
        close(file).await;
        let reopened = FileSagaLog::open(dir.path().into(), None).unwrap();
        check_fifty_logged(&reopened, &state);
    }

    #[tokio::test]
    async fn failed_write_fails_the_call_and_rolls_back() {
        let log = Arc::new(FailingLog {
            inner: MemorySagaLog::new(None),
            fail: AtomicBool::new(false),
        });
        let coord = SagaCoordinator::new(log.clone());
        let saga = coord.make_saga("s", Vec::new()).await.unwrap();
        saga.start_task("t", Vec::new()).await.unwrap();
        let before = saga.state();

        log.fail.store(true, Ordering::SeqCst);
        let err = saga.end_task("t", b"x".to_vec()).await.unwrap_err();
        assert!(
            matches!(&err, SagaError::Log(e) if e.is_retryable()),
            "{err:?}"
        );
        assert_eq!(saga.state(), before);
        assert!(saga.end_saga().await.is_err(), "t is still running");

        // Retrying works, which it would not if the failed End Task had stayed in the state.
        log.fail.store(false, Ordering::SeqCst);
        saga.end_task("t", b"y".to_vec()).await.unwrap();
        saga.end_saga().await.unwrap();
        let replayed = coord.get_state("s").await.unwrap().unwrap();
        assert_eq!(replayed.end_task_data("t"), Some(&b"y"[..]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_queued_behind_a_failed_batch_are_rechecked() {
        let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
        let (verdict, verdicts) = std::sync::mpsc::channel();
        let log = Arc::new(GatedLog {
            inner: MemorySagaLog::new(None),
            entered: entered_tx,
            verdicts: Mutex::new(verdicts),
        });
        let coord = SagaCoordinator::new(log.clone());
        let saga = coord.make_saga("s", Vec::new()).await.unwrap();

        let first = saga.log(vec![SagaMessage::start_task("s", "t", Vec::new())]);
        entered.recv().await.unwrap();
        // Queued while the first batch is being written; valid only if it succeeds.
        let dependent = saga.log(vec![SagaMessage::end_task("s", "t", Vec::new())]);
        let independent = saga.log(vec![SagaMessage::start_task("s", "u", Vec::new())]);
        verdict.send(true).unwrap();
        entered.recv().await.unwrap();
        verdict.send(false).unwrap();

        assert!(matches!(first.await, Err(SagaError::Log(_))));
        assert!(matches!(
            dependent.await,
            Err(SagaError::InvalidTransition { .. })
        ));
        independent.await.unwrap();
        let logged = log.get_messages("s").unwrap().unwrap();
        assert_eq!(
            logged,
            [
                SagaMessage::start_saga("s", Vec::new()),
                SagaMessage::start_task("s", "u", Vec::new()),
            ]
        );
        assert_eq!(saga.state().task_ids(), ["u"]);
    }

    #[tokio::test]
    async fn dropping_the_future_does_not_cancel_the_write() {
        let log = memory();
        let coord = SagaCoordinator::new(log.clone());
        let saga = coord.make_saga("s", Vec::new()).await.unwrap();
        drop(saga.log(vec![SagaMessage::start_task("s", "t", Vec::new())]));
        // Ordered after the dropped call, so it sees "t" started.
        saga.end_task("t", Vec::new()).await.unwrap();
        let kinds: Vec<MessageKind> = log
            .get_messages("s")
            .unwrap()
            .unwrap()
            .iter()
            .map(|m| m.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                MessageKind::StartSaga,
                MessageKind::StartTask,
                MessageKind::EndTask
            ]
        );
    }

    #[tokio::test]
    async fn log_outside_a_runtime_is_an_error() {
        let saga = SagaCoordinator::new(memory())
            .make_saga("s", Vec::new())
            .await
            .unwrap();
        let result = std::thread::spawn(move || {
            let fut = saga.log(vec![SagaMessage::start_task("s", "t", Vec::new())]);
            let state = saga.state();
            (fut, state)
        })
        .join()
        .unwrap();
        assert!(matches!(result.0.await, Err(SagaError::Log(_))));
        assert!(!result.1.is_task_started("t"));
    }

    #[tokio::test]
    async fn periodic_gc_deletes_ended_sagas() {
        let log = Arc::new(MemorySagaLog::new(Some(Duration::ZERO)));
        let coord = SagaCoordinator::new(log.clone());
        let ended = coord.make_saga("ended", Vec::new()).await.unwrap();
        ended.end_saga().await.unwrap();
        coord.make_saga("running", Vec::new()).await.unwrap();
        let gc = spawn_gc(log.clone(), Duration::from_millis(10));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while log.get_messages("ended").unwrap().is_some() {
            assert!(tokio::time::Instant::now() < deadline, "gc never ran");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        gc.abort();
        assert!(log.get_messages("running").unwrap().is_some());
    }
}
