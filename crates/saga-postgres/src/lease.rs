//! The leader lease: one row (`scoot_leader`) naming the scheduler that leads, until when, and
//! the fencing token. Times are the database's clock, so schedulers' clocks need not agree.
//!
//! A candidate takes the lease only once it has expired, and the token then grows by one; the
//! holder extends it while its token is still the row's. Saga writes of a fenced log
//! ([`PostgresSagaLog::fence`]) check the token in their own transaction, so a holder that
//! stalled past its lease and was replaced cannot write, whatever it believes.

use std::time::Duration;

use scoot_saga::SagaLogError;

use crate::{PostgresSagaLog, corrupt, db_failed};

/// A scheduler asking for the lease: its own id (fresh per process) and where its clients reach
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// CloudScoot (Thrift).
    pub thrift_addr: String,
    /// The Remote Execution API; empty if not served.
    pub grpc_addr: String,
}

/// The scheduler holding an unexpired lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub id: String,
    pub thrift_addr: String,
    pub grpc_addr: String,
    pub token: i64,
}

impl PostgresSagaLog {
    /// Takes the lease for `length` if it has expired (or was never held) and returns the new
    /// fencing token; `None` while another holds it. Gives up after `length`.
    pub fn try_lead(&self, me: &Candidate, length: Duration) -> Result<Option<i64>, SagaLogError> {
        let row = self.call_within(length, async |client| {
            client
                .query_opt(
                    "UPDATE scoot_leader SET holder = $1, thrift_addr = $2, grpc_addr = $3, \
                       token = token + 1, \
                       expires_at = clock_timestamp() + $4::float8 * interval '1 second' \
                     WHERE id = 1 AND expires_at < clock_timestamp() RETURNING token",
                    &[
                        &me.id,
                        &me.thrift_addr,
                        &me.grpc_addr,
                        &length.as_secs_f64(),
                    ],
                )
                .await
                .map_err(db_failed("taking the leader lease"))
        })?;
        row.map(|row| row.try_get(0).map_err(corrupt)).transpose()
    }

    /// Extends the lease `token` holds by `length` from now; `false` if another took it since.
    /// Gives up after `limit`.
    pub fn renew(
        &self,
        me: &Candidate,
        token: i64,
        length: Duration,
        limit: Duration,
    ) -> Result<bool, SagaLogError> {
        let row = self.call_within(limit, async |client| {
            client
                .query_opt(
                    "UPDATE scoot_leader \
                     SET expires_at = clock_timestamp() + $3::float8 * interval '1 second' \
                     WHERE id = 1 AND holder = $1 AND token = $2 RETURNING token",
                    &[&me.id, &token, &length.as_secs_f64()],
                )
                .await
                .map_err(db_failed("renewing the leader lease"))
        })?;
        Ok(row.is_some())
    }

    /// Who holds an unexpired lease, if anyone. Gives up after `limit`.
    pub fn leader(&self, limit: Duration) -> Result<Option<Holder>, SagaLogError> {
        let row = self.call_within(limit, async |client| {
            client
                .query_opt(
                    "SELECT holder, thrift_addr, grpc_addr, token FROM scoot_leader \
                     WHERE id = 1 AND expires_at >= clock_timestamp()",
                    &[],
                )
                .await
                .map_err(db_failed("reading the leader lease"))
        })?;
        row.map(|row| {
            Ok(Holder {
                id: row.try_get(0).map_err(corrupt)?,
                thrift_addr: row.try_get(1).map_err(corrupt)?,
                grpc_addr: row.try_get(2).map_err(corrupt)?,
                token: row.try_get(3).map_err(corrupt)?,
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{database, options};
    use scoot_local_cluster::postgres::{Options, PrivateCluster};
    use scoot_saga::{SagaLog, SagaMessage};

    fn candidate(name: &str) -> Candidate {
        Candidate {
            id: name.into(),
            thrift_addr: format!("{name}:9090"),
            grpc_addr: format!("{name}:9099"),
        }
    }

    #[test]
    fn one_leads_and_a_replaced_leader_cannot_write() {
        let cluster = PrivateCluster::start(Options::default()).unwrap();
        let url = database(&cluster);
        let (a, b) = (
            PostgresSagaLog::open(&options(url.clone())).unwrap(),
            PostgresSagaLog::open(&options(url)).unwrap(),
        );
        let (me_a, me_b) = (candidate("a"), candidate("b"));
        let short = Duration::from_millis(300);
        let limit = Duration::from_secs(5);
        let token_a = a
            .try_lead(&me_a, short)
            .unwrap()
            .expect("a free lease is taken");
        a.fence(token_a);
        assert_eq!(b.try_lead(&me_b, short).unwrap(), None, "held");
        assert_eq!(
            b.leader(limit).unwrap().map(|h| (h.thrift_addr, h.token)),
            Some(("a:9090".to_string(), token_a))
        );
        assert!(a.renew(&me_a, token_a, short, limit).unwrap());
        a.start_saga("job", b"by a").unwrap();

        // a stalls past its lease; b takes over with a greater token.
        let token_b =
            crate::tests::poll("the lease to expire", || b.try_lead(&me_b, short).unwrap());
        assert!(token_b > token_a);
        b.fence(token_b);
        let mut fenced = a.fenced();
        let err = a
            .log_messages(&[SagaMessage::start_task("job", "t", b"from a".to_vec())])
            .unwrap_err();
        assert!(matches!(err, SagaLogError::Fenced(_)), "{err:?}");
        assert!(!err.is_retryable());
        assert!(*fenced.borrow_and_update(), "the refusal is announced");
        assert!(
            !a.renew(&me_a, token_a, short, limit).unwrap(),
            "a's lease is gone"
        );
        b.log_messages(&[SagaMessage::start_task("job", "t", b"from b".to_vec())])
            .unwrap();
        let stored = b.get_messages("job").unwrap().unwrap();
        assert_eq!(stored.len(), 2);
        assert_eq!(stored[1].data, b"from b");
    }
}
