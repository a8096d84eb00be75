//! Which of the schedulers sharing one PostgreSQL saga log leads (`scoot_saga_postgres`'s
//! lease), and what the others answer meanwhile.
//!
//! A scheduler starts as a standby: its ports serve, but `/health` and every other HTTP path
//! answer 503, CloudScoot calls an application error naming the leader's Thrift address, REAPI
//! calls UNAVAILABLE naming its gRPC address ([`Leadership::refusal`]). [`campaign`] polls the
//! lease every [`poll_interval`] and takes it once it has expired; the scheduler then fences its
//! saga log with the token, recovers every unfinished job and opens its ports. [`hold`] renews
//! the lease every [`renew_interval`]; it returns when the lease is lost (another scheduler took
//! it, a saga write was refused by its token, or the lease could not be renewed before it ran
//! out), and the scheduler then stops and exits: a supervisor restarts it as a standby. A
//! scheduler never goes back to standby in place: its in-memory jobs and runs would be stale.

use std::sync::Arc;
use std::time::Duration;

use scoot_saga_postgres::{Candidate, Holder, PostgresSagaLog};
use scoot_thrift::not_leading::NotLeading;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a scheduler is doing about the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Another scheduler leads (the holder, when the lease is held), or none does yet.
    Standby(Option<Holder>),
    /// This one holds the lease and is recovering jobs.
    Starting,
    /// This one leads and serves.
    Leading,
}

/// The scheduler's role as the servers see it.
#[derive(Clone)]
pub struct Leadership(watch::Receiver<Role>);

/// Which address of the leader a refusal names.
#[derive(Clone, Copy, Debug)]
pub enum Api {
    CloudScoot,
    Reapi,
    Http,
}

impl Leadership {
    /// A scheduler that leads from the start (no lease: a file or memory saga log).
    pub fn always() -> Leadership {
        Leadership(watch::Sender::new(Role::Leading).subscribe())
    }

    pub fn new(role: &watch::Sender<Role>) -> Leadership {
        Leadership(role.subscribe())
    }

    /// Why this scheduler does not serve `api` now, naming where to go; `None` when it leads.
    pub fn refusal(&self, api: Api) -> Option<String> {
        let refusal = match &*self.0.borrow() {
            Role::Leading => return None,
            Role::Starting => NotLeading::Starting.message(),
            Role::Standby(None) => NotLeading::Standby(None).message(),
            Role::Standby(Some(holder)) => NotLeading::Standby(Some(match api {
                Api::CloudScoot | Api::Http => holder.thrift_addr.as_str(),
                Api::Reapi => holder.grpc_addr.as_str(),
            }))
            .message(),
        };
        Some(refusal)
    }
}

/// How often the holder renews a lease of `length`: three chances before it runs out.
pub fn renew_interval(length: Duration) -> Duration {
    length / 3
}

/// How often a standby looks at the lease: a dead leader's lease is taken within `length` and
/// this after its last renewal.
pub fn poll_interval(length: Duration) -> Duration {
    (length / 6).max(Duration::from_millis(100))
}

async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, scoot_saga::SagaLogError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Waits for the lease and takes it; returns the fencing token, or `None` if `stop` came
/// first. Publishes who leads meanwhile.
pub async fn campaign(
    log: Arc<PostgresSagaLog>,
    me: Candidate,
    length: Duration,
    role: &watch::Sender<Role>,
    stop: &CancellationToken,
) -> Option<i64> {
    let mut announced = None;
    loop {
        let (l, m) = (Arc::clone(&log), me.clone());
        match blocking(move || l.try_lead(&m, length)).await {
            Ok(Some(token)) => {
                tracing::info!(token, "took the leader lease");
                role.send_replace(Role::Starting);
                return Some(token);
            }
            Ok(None) => {
                let l = Arc::clone(&log);
                match blocking(move || l.leader(length)).await {
                    Ok(holder) => {
                        if announced.as_ref() != Some(&holder) {
                            tracing::info!(leader = ?holder, "standby: another scheduler leads");
                            announced = Some(holder.clone());
                        }
                        role.send_replace(Role::Standby(holder));
                    }
                    Err(err) => tracing::warn!(error = %err, "standby: cannot read the lease"),
                }
            }
            Err(err) => tracing::warn!(error = %err, "standby: cannot take the lease"),
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(poll_interval(length)) => {}
        }
    }
}

/// Keeps the lease `token` names (taken just now) until it is lost; returns why. Ends early
/// (with `None`) when `stop` is cancelled.
pub async fn hold(
    log: Arc<PostgresSagaLog>,
    me: Candidate,
    token: i64,
    length: Duration,
    stop: &CancellationToken,
) -> Option<String> {
    let mut fenced = log.fenced();
    let every = renew_interval(length);
    // Counted from before each renewal was sent: the database's expiry is later than this.
    let mut valid_until = Instant::now() + length;
    let mut next = Instant::now() + every;
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            changed = fenced.wait_for(|fenced| *fenced) => {
                return Some(match changed {
                    Ok(_) => "a saga write was refused: another scheduler holds the lease".into(),
                    Err(_) => "the saga log closed".into(),
                });
            }
            () = tokio::time::sleep_until(next) => {}
        }
        let (l, m) = (Arc::clone(&log), me.clone());
        let attempt = Instant::now();
        match blocking(move || l.renew(&m, token, length, every)).await {
            Ok(true) => {
                valid_until = attempt + length;
                next = attempt + every;
            }
            Ok(false) => return Some("another scheduler took the lease".into()),
            Err(err) => {
                let retry = poll_interval(length);
                if Instant::now() + retry >= valid_until {
                    return Some(format!(
                        "the lease could not be renewed before it ran out: {err}"
                    ));
                }
                tracing::warn!(error = %err, "cannot renew the leader lease; retrying");
                next = Instant::now() + retry;
            }
        }
    }
}
