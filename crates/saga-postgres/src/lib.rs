//! Scoot's saga log in PostgreSQL ([`PostgresSagaLog`]): the scheduler's record of jobs kept
//! off the scheduler's machine, so that another scheduler can carry on from it.
//!
//! - Durability: every [`SagaLog`] call that writes is one transaction, and returns `Ok` only
//!   once its COMMIT returned (with the server's `synchronous_commit`, the default `on`, the
//!   commit is flushed to the server's WAL by then). A batch from the coordinator's group commit
//!   is one transaction whatever its size.
//! - Schema: created and migrated at open ([`schema`]); a database migrated by a newer build is
//!   refused.
//! - Connections: a pool of [`PostgresOptions::pool_size`], TLS as the URL's `sslmode` asks
//!   (see the `url` module), every call bounded by [`CALL_TIMEOUT`].
//! - Garbage collection: `gc` deletes sagas that ended more than the retention ago, a thousand
//!   per transaction.
//! - Leadership: schedulers sharing the log take turns by a lease ([`lease`](mod@lease)); once
//!   [`PostgresSagaLog::fence`] gave it the lease's fencing token, every write checks in its
//!   own transaction that the token is still the lease's, and is refused
//!   ([`SagaLogError::Fenced`]) once another scheduler took the lease.
//!
//! The trait is blocking and its callers run it on tokio's blocking pool; the driver is async.
//! The log owns a small runtime of its own (one worker thread, which drives the connections)
//! and each call blocks its calling thread on that runtime. So calls never wait for the
//! caller's runtime, and the log can be used from any thread that is not itself running async
//! tasks (calling it from inside a runtime's worker would panic; use `spawn_blocking`).

mod lease;
pub mod schema;
mod url;

pub use lease::{Candidate, Holder};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use scoot_core::error_chain;
use scoot_saga::{MessageKind, SagaLog, SagaLogError, SagaMessage};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The longest any call may take, waiting for a connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Sagas deleted per gc transaction, so that one gc never holds locks on a whole backlog.
const GC_BATCH: i64 = 1000;

/// What [`PostgresSagaLog::open`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresOptions {
    /// `postgresql://user[:password]@host[:port]/database[?sslmode=…&sslrootcert=…]`.
    pub url: String,
    /// How long ended sagas are kept; `None` keeps them forever.
    pub retention: Option<Duration>,
    /// At most this many connections.
    pub pool_size: usize,
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid PostgreSQL URL: {0}")]
    Url(String),
    #[error("PostgreSQL TLS set-up: {0}")]
    Tls(#[source] scoot_security::SecurityError),
    #[error("cannot start the saga log's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("cannot create or migrate the saga log's tables: {0}")]
    Schema(String),
    #[error(
        "the database's saga log schema is version {found}, newer than this scheduler knows ({supported}); run a scheduler at least as new as the one that migrated it"
    )]
    SchemaTooNew { found: i32, supported: i32 },
}

/// A driver error with its causes (the server's message included).
pub(crate) fn describe(err: &tokio_postgres::Error) -> String {
    error_chain(err)
}

fn db_failed(what: &str) -> impl Fn(tokio_postgres::Error) -> SagaLogError + '_ {
    move |err| SagaLogError::Internal(format!("{what}: {}", describe(&err)))
}

fn corrupt(what: impl std::fmt::Display) -> SagaLogError {
    SagaLogError::Corrupt(what.to_string())
}

/// Sagas in PostgreSQL tables; see the crate documentation.
pub struct PostgresSagaLog {
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    retention: Option<Duration>,
    /// Where the database is, without the password.
    target: String,
    /// The fencing token every write checks; 0: none (a log no lease guards).
    fence: AtomicI64,
    /// Set once a write was refused for its fencing token.
    fenced: tokio::sync::watch::Sender<bool>,
}

impl PostgresSagaLog {
    /// Connects, creates or migrates the schema, and returns the log. Blocks (call it from a
    /// blocking thread); fails within the URL's `connect_timeout` (10 s unless given) when the
    /// database cannot be reached.
    pub fn open(options: &PostgresOptions) -> Result<PostgresSagaLog, OpenError> {
        let target = url::parse(&options.url)?;
        let described = target.describe();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("saga-postgres")
            .enable_all()
            .build()
            .map_err(OpenError::Runtime)?;
        let connect_timeout = target
            .config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CALL_TIMEOUT);
        let manager = Manager::from_config(
            target.config,
            MakeRustlsConnect::new((*target.tls).clone()),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(connect_timeout))
            .recycle_timeout(Some(connect_timeout))
            .build()
            .map_err(|e| OpenError::Connect {
                target: described.clone(),
                reason: e.to_string(),
            })?;
        let migrated_from = runtime.block_on(async {
            let mut client = pool.get().await.map_err(|e| OpenError::Connect {
                target: described.clone(),
                reason: error_chain(&e),
            })?;
            schema::migrate(&mut client).await
        })?;
        if migrated_from != schema::VERSION {
            tracing::info!(target = %described, from = migrated_from, to = schema::VERSION,
                "saga log schema migrated");
        }
        tracing::info!(target = %described, "saga log in PostgreSQL");
        Ok(PostgresSagaLog {
            runtime: Some(runtime),
            pool,
            retention: options.retention,
            target: described,
            fence: AtomicI64::new(0),
            fenced: tokio::sync::watch::Sender::new(false),
        })
    }

    /// From now on every write checks, in its transaction, that `token` is still the leader
    /// lease's fencing token.
    pub fn fence(&self, token: i64) {
        self.fence.store(token, Ordering::SeqCst);
    }

    /// Becomes `true` when a write was refused because another scheduler took the lease.
    pub fn fenced(&self) -> tokio::sync::watch::Receiver<bool> {
        self.fenced.subscribe()
    }

    /// Runs `op` on a pooled connection, within [`CALL_TIMEOUT`].
    fn call<T>(
        &self,
        op: impl AsyncFnOnce(&mut Object) -> Result<T, SagaLogError>,
    ) -> Result<T, SagaLogError> {
        self.call_within(CALL_TIMEOUT, op)
    }

    /// Runs `op` on a pooled connection within `limit`. A connection whose call timed out is
    /// closed rather than reused, since it may be in the middle of a transaction.
    fn call_within<T>(
        &self,
        limit: Duration,
        op: impl AsyncFnOnce(&mut Object) -> Result<T, SagaLogError>,
    ) -> Result<T, SagaLogError> {
        let Some(runtime) = &self.runtime else {
            return Err(SagaLogError::Internal("the saga log is closed".into()));
        };
        let late = || {
            SagaLogError::Internal(format!(
                "PostgreSQL at {} did not answer within {limit:?}",
                self.target
            ))
        };
        runtime.handle().block_on(async {
            let started = tokio::time::Instant::now();
            let mut client = tokio::time::timeout(limit, self.pool.get())
                .await
                .map_err(|_| late())?
                .map_err(|e| {
                    SagaLogError::Internal(format!(
                        "no connection to PostgreSQL at {}: {}",
                        self.target,
                        error_chain(&e)
                    ))
                })?;
            match tokio::time::timeout_at(started + limit, op(&mut client)).await {
                Ok(result) => result,
                Err(_) => {
                    drop(Object::take(client));
                    Err(late())
                }
            }
        })
    }
}

impl Drop for PostgresSagaLog {
    fn drop(&mut self) {
        // Not a plain drop: that would wait for the runtime's threads, which is forbidden
        // inside the async code that may drop the last handle to the log.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What one `log_messages` call does to the tables.
struct Plan<'a> {
    /// Sagas that must already be stored: a message names them before any Start Saga of theirs
    /// in the batch. Sorted, so that writes lock rows in one order.
    must_exist: Vec<&'a [u8]>,
    /// Sagas (re)started by the batch. Sorted.
    started: Vec<&'a [u8]>,
    /// Sagas the batch ends.
    ended: Vec<&'a [u8]>,
    /// The messages to store, in order: those after the last Start Saga of their saga.
    kept: Vec<&'a SagaMessage>,
}

fn sorted(set: HashSet<&[u8]>) -> Vec<&[u8]> {
    let mut ids: Vec<&[u8]> = set.into_iter().collect();
    ids.sort();
    ids
}

fn plan(messages: &[SagaMessage]) -> Result<Plan<'_>, SagaLogError> {
    let mut started_here = HashSet::new();
    let mut must_exist = HashSet::new();
    let mut last_start = HashMap::new();
    for (index, msg) in messages.iter().enumerate() {
        if msg.saga_id.is_empty() {
            return Err(SagaLogError::InvalidRequest("empty saga id".into()));
        }
        if msg.kind == MessageKind::StartSaga {
            started_here.insert(msg.saga_id.as_bytes());
            last_start.insert(msg.saga_id.as_bytes(), index);
        } else if !started_here.contains(msg.saga_id.as_bytes()) {
            must_exist.insert(msg.saga_id.as_bytes());
        }
    }
    let kept: Vec<&SagaMessage> = messages
        .iter()
        .enumerate()
        .filter(|(index, msg)| {
            last_start
                .get(msg.saga_id.as_bytes())
                .is_none_or(|start| index >= start)
        })
        .map(|(_, msg)| msg)
        .collect();
    let ended = kept
        .iter()
        .filter(|m| m.kind == MessageKind::EndSaga)
        .map(|m| m.saga_id.as_bytes())
        .collect();
    Ok(Plan {
        must_exist: sorted(must_exist),
        started: sorted(started_here),
        ended: sorted(ended),
        kept,
    })
}

impl SagaLog for PostgresSagaLog {
    fn start_saga(&self, saga_id: &str, job: &[u8]) -> Result<(), SagaLogError> {
        self.log_messages(&[SagaMessage::start_saga(saga_id, job)])
    }

    fn log_messages(&self, messages: &[SagaMessage]) -> Result<(), SagaLogError> {
        let plan = plan(messages)?;
        if plan.kept.is_empty() {
            return Ok(());
        }
        let now = SystemTime::now();
        let saga_ids: Vec<&[u8]> = plan.kept.iter().map(|m| m.saga_id.as_bytes()).collect();
        let indexes: Vec<i32> = (0..plan.kept.len())
            .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
            .collect();
        let kinds: Vec<i16> = plan.kept.iter().map(|m| i16::from(m.kind.code())).collect();
        let task_ids: Vec<&[u8]> = plan.kept.iter().map(|m| m.task_id.as_bytes()).collect();
        let data: Vec<&[u8]> = plan.kept.iter().map(|m| m.data.as_slice()).collect();
        let fence = self.fence.load(Ordering::SeqCst);
        let written = self.call(async |client| {
            let failed = db_failed("saga log write");
            let tx = client.transaction().await.map_err(&failed)?;
            if fence != 0 {
                // A share lock: a takeover (which updates the row) waits for this write to
                // commit, and every write after the takeover sees the new token.
                let check = tx
                    .prepare_cached(
                        "SELECT 1 FROM scoot_leader WHERE id = 1 AND token = $1 FOR SHARE",
                    )
                    .await
                    .map_err(&failed)?;
                if tx.query_opt(&check, &[&fence]).await.map_err(&failed)?.is_none() {
                    return Err(SagaLogError::Fenced(format!(
                        "fencing token {fence} is no longer the leader lease's: another scheduler leads"
                    )));
                }
            }
            if !plan.must_exist.is_empty() {
                // Locks the rows too: gc cannot delete them, nor another write to the same saga
                // draw its write number, until this one commits.
                let found = tx
                    .query(
                        "SELECT saga_id FROM scoot_sagas WHERE saga_id = ANY($1) \
                         ORDER BY saga_id FOR UPDATE",
                        &[&plan.must_exist],
                    )
                    .await
                    .map_err(&failed)?;
                if found.len() != plan.must_exist.len() {
                    let found: HashSet<Vec<u8>> =
                        found.iter().filter_map(|row| row.try_get(0).ok()).collect();
                    let missing = plan
                        .must_exist
                        .iter()
                        .find(|id| !found.contains(**id))
                        .map(|id| String::from_utf8_lossy(id).into_owned())
                        .unwrap_or_default();
                    return Err(SagaLogError::InvalidRequest(format!(
                        "saga {missing:?}: unknown saga (no Start Saga)"
                    )));
                }
            }
            if !plan.started.is_empty() {
                tx.execute(
                    "INSERT INTO scoot_sagas (saga_id) SELECT unnest($1::bytea[]) \
                     ON CONFLICT (saga_id) DO UPDATE SET ended_at = NULL",
                    &[&plan.started],
                )
                .await
                .map_err(&failed)?;
                tx.execute(
                    "DELETE FROM scoot_saga_messages WHERE saga_id = ANY($1)",
                    &[&plan.started],
                )
                .await
                .map_err(&failed)?;
            }
            if !plan.ended.is_empty() {
                tx.execute(
                    "UPDATE scoot_sagas SET ended_at = $2 \
                     WHERE saga_id = ANY($1) AND ended_at IS NULL",
                    &[&plan.ended, &now],
                )
                .await
                .map_err(&failed)?;
            }
            let insert = tx
                .prepare_cached(
                    "WITH w AS MATERIALIZED (SELECT nextval('scoot_saga_writes') AS id) \
                     INSERT INTO scoot_saga_messages (saga_id, write_id, idx, kind, task_id, data) \
                     SELECT m.saga_id, w.id, m.idx, m.kind, m.task_id, m.data \
                     FROM w, unnest($1::bytea[], $2::int4[], $3::int2[], $4::bytea[], $5::bytea[]) \
                       AS m(saga_id, idx, kind, task_id, data)",
                )
                .await
                .map_err(&failed)?;
            tx.execute(&insert, &[&saga_ids, &indexes, &kinds, &task_ids, &data])
                .await
                .map_err(&failed)?;
            tx.commit().await.map_err(&failed)
        });
        if let Err(SagaLogError::Fenced(reason)) = &written {
            tracing::error!(%reason, "saga write refused");
            self.fenced.send_replace(true);
        }
        written
    }

    fn get_messages(&self, saga_id: &str) -> Result<Option<Vec<SagaMessage>>, SagaLogError> {
        let rows = self.call(async |client| {
            let select = client
                .prepare_cached(
                    "SELECT kind, task_id, data FROM scoot_saga_messages \
                     WHERE saga_id = $1 ORDER BY write_id, idx",
                )
                .await
                .map_err(db_failed("saga log read"))?;
            client
                .query(&select, &[&saga_id.as_bytes()])
                .await
                .map_err(db_failed("saga log read"))
        })?;
        if rows.is_empty() {
            return Ok(None);
        }
        rows.iter()
            .map(|row| {
                let code: i16 = row.try_get(0).map_err(corrupt)?;
                let kind = u8::try_from(code)
                    .ok()
                    .and_then(MessageKind::from_code)
                    .ok_or_else(|| corrupt(format!("saga {saga_id:?}: unknown kind {code}")))?;
                let task_id: Vec<u8> = row.try_get(1).map_err(corrupt)?;
                let task_id = String::from_utf8(task_id)
                    .map_err(|_| corrupt(format!("saga {saga_id:?}: task id not UTF-8")))?;
                Ok(SagaMessage {
                    saga_id: saga_id.to_owned(),
                    kind,
                    task_id,
                    data: row.try_get(2).map_err(corrupt)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn active_sagas(&self) -> Result<Vec<String>, SagaLogError> {
        let rows = self.call(async |client| {
            client
                .query(
                    "SELECT saga_id FROM scoot_sagas WHERE ended_at IS NULL ORDER BY saga_id",
                    &[],
                )
                .await
                .map_err(db_failed("listing active sagas"))
        })?;
        rows.iter()
            .map(|row| {
                let id: Vec<u8> = row.try_get(0).map_err(corrupt)?;
                String::from_utf8(id).map_err(|_| corrupt("a saga id is not UTF-8"))
            })
            .collect()
    }

    fn gc(&self, now: SystemTime) -> Result<usize, SagaLogError> {
        let Some(cutoff) = self.retention.and_then(|r| now.checked_sub(r)) else {
            return Ok(0);
        };
        let mut deleted = 0;
        loop {
            let batch = self.call(async |client| {
                client
                    .execute(
                        "DELETE FROM scoot_sagas WHERE saga_id IN \
                         (SELECT saga_id FROM scoot_sagas WHERE ended_at < $1 LIMIT $2)",
                        &[&cutoff, &GC_BATCH],
                    )
                    .await
                    .map_err(db_failed("saga log gc"))
            })?;
            deleted += usize::try_from(batch).unwrap_or(usize::MAX);
            if batch < GC_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }
}

#[cfg(test)]
mod tests;
