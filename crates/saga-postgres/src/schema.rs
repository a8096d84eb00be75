//! The tables, and how a database is brought to the version this build writes.
//!
//! `scoot_schema` holds one row, the version of the newest migration applied. At open, under a
//! transaction-scoped advisory lock (so schedulers starting together migrate once), every
//! migration past it is applied in order, in the same transaction: a failed migration changes
//! nothing. A database whose version is newer than this build knows is refused, since an older
//! scheduler could write what a newer one no longer reads.

use tokio_postgres::Client;

use crate::OpenError;
use crate::describe;

/// The advisory lock key that serialises migrations ("scootSGA" as a big-endian integer).
const MIGRATION_LOCK: i64 = 0x73636f6f_74534741;

/// Migration `n` (from 1) brings a database from version `n - 1` to `n`. Never edit one that
/// has shipped; add another.
const MIGRATIONS: &[&str] = &[
    // 1: sagas and their messages. Ids are bytes (a saga id may hold any character, NUL too).
    // A message's place is (`write_id`, `idx` in the write): `write_id` comes from a sequence drawn
    // after the write holds the row locks of its sagas, so writes to one saga sort in commit
    // order.
    "CREATE TABLE scoot_sagas (
        saga_id bytea PRIMARY KEY,
        ended_at timestamptz
    );
    CREATE INDEX scoot_sagas_ended ON scoot_sagas (ended_at) WHERE ended_at IS NOT NULL;
    CREATE SEQUENCE scoot_saga_writes;
    CREATE TABLE scoot_saga_messages (
        saga_id bytea NOT NULL REFERENCES scoot_sagas ON DELETE CASCADE,
        write_id bigint NOT NULL,
        idx integer NOT NULL,
        kind smallint NOT NULL,
        task_id bytea NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (saga_id, write_id, idx)
    );",
    // 2: the leader lease of schedulers sharing the log. One row; `token`, the fencing token,
    // grows by one at every change of holder, and every saga write of a leader checks it.
    "CREATE TABLE scoot_leader (
        id integer PRIMARY KEY CHECK (id = 1),
        holder text NOT NULL,
        thrift_addr text NOT NULL,
        grpc_addr text NOT NULL,
        token bigint NOT NULL,
        expires_at timestamptz NOT NULL
    );
    INSERT INTO scoot_leader VALUES (1, '', '', '', 0, '-infinity');",
];

/// The version this build writes.
pub const VERSION: i32 = MIGRATIONS.len() as i32;

/// Brings the database to [`VERSION`]; returns the version it was at.
pub(crate) async fn migrate(client: &mut Client) -> Result<i32, OpenError> {
    let failed = |e: tokio_postgres::Error| OpenError::Schema(describe(&e));
    let tx = client.transaction().await.map_err(failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(failed)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS scoot_schema (version integer NOT NULL)")
        .await
        .map_err(failed)?;
    let found: i32 = match tx
        .query_opt("SELECT version FROM scoot_schema", &[])
        .await
        .map_err(failed)?
    {
        Some(row) => row.try_get(0).map_err(failed)?,
        None => {
            tx.execute("INSERT INTO scoot_schema (version) VALUES (0)", &[])
                .await
                .map_err(failed)?;
            0
        }
    };
    if found > VERSION {
        return Err(OpenError::SchemaTooNew {
            found,
            supported: VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| OpenError::Schema(format!("migration {}: {}", index + 1, describe(&e))))?;
    }
    tx.execute("UPDATE scoot_schema SET version = $1", &[&VERSION])
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    Ok(found)
}
