//! A CloudScoot client over one connection that is re-opened after any error, as Scoot's
//! clients did; plaintext as Scoot's scheduler speaks, or TLS (`-thrift_tls`).
//!
//! Given several schedulers (`host:port,host:port`, or a name with several addresses), it
//! follows the leader: a scheduler it cannot connect to is skipped for the next, and a standby's
//! refusal ([`NotLeading`]) sends the call to the leader it names, or, when none leads yet, again
//! after a pause, for at most [`FOLLOW_TIMEOUT`]. Both mean the call was not run, so it is never
//! sent twice; a call that failed after it was sent is reported, not retried.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use scoot_thrift::client::{InputProtocol, OutputProtocol, connect};
use scoot_thrift::not_leading::NotLeading;
use scoot_thrift::scoot::{self, CloudScootSyncClient, TCloudScootSyncClient};

type Connection = CloudScootSyncClient<InputProtocol, OutputProtocol>;

/// Scoot's client timeout for connecting and for each call.
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long a call looks for the leader among the schedulers: a standby takes over a dead
/// leader's lease within about 7 s (the default lease and a sixth of it).
pub const FOLLOW_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause before asking again when no scheduler leads, or none could be reached.
const FOLLOW_PAUSE: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the scheduler at {addr}: {}", scoot_thrift::describe(.source))]
    Connect { addr: String, source: thrift::Error },
    /// The scheduler answered with an error (e.g. an invalid job).
    #[error("{0}")]
    Refused(String),
    #[error("call to the scheduler at {addr} failed: {}", scoot_thrift::describe(.source))]
    Call { addr: String, source: thrift::Error },
    /// The first answer on a plaintext connection was no Thrift: a scheduler serving Thrift
    /// over TLS answers a plaintext request with a TLS alert, which reads as garbage.
    #[error(
        "the scheduler at {addr} does not answer plaintext Thrift ({}); if it serves Thrift \
         over TLS, give -thrift_tls and -tls_ca",
        scoot_thrift::describe(.source)
    )]
    NotPlaintext { addr: String, source: thrift::Error },
}

pub struct Client {
    /// The schedulers this client was given, in order.
    addrs: Vec<String>,
    /// The one it talks to: one of `addrs`, or a leader a standby named.
    addr: String,
    tls: Option<Arc<ClientConfig>>,
    conn: Option<Connection>,
}

impl Client {
    /// A plaintext client of the scheduler at `addrs` (one `host:port`, or several separated by
    /// commas); it connects at its first call.
    pub fn new(addrs: &str) -> Client {
        let mut list: Vec<String> = addrs
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect();
        if list.is_empty() {
            list.push(addrs.to_string());
        }
        Client {
            addr: list[0].clone(),
            addrs: list,
            tls: None,
            conn: None,
        }
    }

    /// This client, connecting over TLS when `tls` is given.
    pub fn with_tls(mut self, tls: Option<Arc<ClientConfig>>) -> Client {
        self.tls = tls;
        self
    }

    /// The scheduler it talks to now.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `rpc` on the leading scheduler, following standbys' refusals and skipping schedulers that
    /// cannot be reached (see the module's documentation).
    fn call<T>(
        &mut self,
        mut rpc: impl FnMut(&mut Connection) -> thrift::Result<T>,
    ) -> Result<T, ClientError> {
        let deadline = Instant::now() + FOLLOW_TIMEOUT;
        // Schedulers of `addrs` that could not be reached since one last answered.
        let mut unreachable = 0usize;
        loop {
            let error = match self.call_once(&mut rpc) {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let next = match &error {
                // Another scheduler may lead: one of the others given, or, after a leader that
                // a standby named, the first given.
                ClientError::Connect { .. }
                    if self.addrs.len() > 1 || !self.addrs.contains(&self.addr) =>
                {
                    unreachable += 1;
                    let at = self.addrs.iter().position(|a| *a == self.addr);
                    let next = at.map_or(0, |i| (i + 1) % self.addrs.len());
                    let pause = unreachable
                        .is_multiple_of(self.addrs.len())
                        .then_some(FOLLOW_PAUSE);
                    (self.addrs[next].clone(), pause)
                }
                ClientError::Refused(message) => match NotLeading::parse(message) {
                    Some(NotLeading::Standby(Some(leader))) if leader != self.addr => {
                        unreachable = 0;
                        (leader.to_string(), None)
                    }
                    Some(_) => {
                        unreachable = 0;
                        (self.addr.clone(), Some(FOLLOW_PAUSE))
                    }
                    None => return Err(error),
                },
                _ => return Err(error),
            };
            let (addr, pause) = next;
            if Instant::now() + pause.unwrap_or_default() >= deadline {
                return Err(error);
            }
            tracing::info!(from = %self.addr, to = %addr, reason = %error, "looking for the leading scheduler");
            if let Some(pause) = pause {
                std::thread::sleep(pause);
            }
            if addr != self.addr {
                self.conn = None;
                self.addr = addr;
            }
        }
    }

    fn call_once<T>(
        &mut self,
        rpc: &mut impl FnMut(&mut Connection) -> thrift::Result<T>,
    ) -> Result<T, ClientError> {
        let fresh_plaintext = self.conn.is_none() && self.tls.is_none();
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let (input, output) =
                    connect(&self.addr, TIMEOUT, self.tls.clone()).map_err(|source| {
                        ClientError::Connect {
                            addr: self.addr.clone(),
                            source,
                        }
                    })?;
                self.conn.insert(CloudScootSyncClient::new(input, output))
            }
        };
        match rpc(conn) {
            Ok(value) => Ok(value),
            Err(thrift::Error::Application(e)) => Err(ClientError::Refused(e.message)),
            Err(thrift::Error::User(e)) => {
                Err(ClientError::Refused(describe_exception(e.as_ref())))
            }
            Err(source @ thrift::Error::Protocol(_)) if fresh_plaintext => {
                self.conn = None;
                Err(ClientError::NotPlaintext {
                    addr: self.addr.clone(),
                    source,
                })
            }
            Err(source) => {
                self.conn = None;
                Err(ClientError::Call {
                    addr: self.addr.clone(),
                    source,
                })
            }
        }
    }

    pub fn run_job(&mut self, def: scoot::JobDefinition) -> Result<String, ClientError> {
        self.call(|c| c.run_job(def.clone())).map(|id| id.id)
    }

    pub fn get_status(&mut self, job_id: &str) -> Result<scoot::JobStatus, ClientError> {
        self.call(|c| c.get_status(job_id.to_string()))
    }

    pub fn kill_job(&mut self, job_id: &str) -> Result<scoot::JobStatus, ClientError> {
        self.call(|c| c.kill_job(job_id.to_string()))
    }

    pub fn offline_worker(&mut self, node: &str, requestor: &str) -> Result<(), ClientError> {
        let req = scoot::OfflineWorkerReq::new(node.to_string(), requestor.to_string());
        self.call(|c| c.offline_worker(req.clone()))
    }

    pub fn reinstate_worker(&mut self, node: &str, requestor: &str) -> Result<(), ClientError> {
        let req = scoot::ReinstateWorkerReq::new(node.to_string(), requestor.to_string());
        self.call(|c| c.reinstate_worker(req.clone()))
    }

    pub fn get_scheduler_status(&mut self) -> Result<scoot::SchedulerStatus, ClientError> {
        self.call(|c| c.get_scheduler_status())
    }

    pub fn set_scheduler_status(&mut self, max_tasks: i32) -> Result<(), ClientError> {
        self.call(|c| c.set_scheduler_status(max_tasks))
    }

    pub fn get_class_load_percents(&mut self) -> Result<BTreeMap<String, i32>, ClientError> {
        self.call(|c| c.get_class_load_percents())
    }

    pub fn set_class_load_percents(&mut self, p: BTreeMap<String, i32>) -> Result<(), ClientError> {
        self.call(|c| c.set_class_load_percents(p.clone()))
    }

    pub fn get_requestor_to_class_map(&mut self) -> Result<BTreeMap<String, String>, ClientError> {
        self.call(|c| c.get_requestor_to_class_map())
    }

    pub fn set_requestor_to_class_map(
        &mut self,
        m: BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        self.call(|c| c.set_requestor_to_class_map(m.clone()))
    }

    pub fn get_rebalance_minimum_duration(&mut self) -> Result<i32, ClientError> {
        self.call(|c| c.get_rebalance_minimum_duration())
    }

    pub fn set_rebalance_minimum_duration(&mut self, minutes: i32) -> Result<(), ClientError> {
        self.call(|c| c.set_rebalance_minimum_duration(minutes))
    }

    pub fn get_rebalance_threshold(&mut self) -> Result<i32, ClientError> {
        self.call(|c| c.get_rebalance_threshold())
    }

    pub fn set_rebalance_threshold(&mut self, threshold: i32) -> Result<(), ClientError> {
        self.call(|c| c.set_rebalance_threshold(threshold))
    }
}

fn describe_exception(e: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
    if let Some(ir) = e.downcast_ref::<scoot::InvalidRequest>() {
        return format!(
            "invalid request: {}",
            ir.message.clone().unwrap_or_default()
        );
    }
    if e.downcast_ref::<scoot::ScootServerError>().is_some() {
        return "the scheduler had an internal error; try again".to_string();
    }
    if e.downcast_ref::<scoot::CanNotScheduleNow>().is_some() {
        return "the scheduler cannot take the job now; try again later".to_string();
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn a_plaintext_call_answered_in_tls_says_so() {
        // Answers as a TLS server answers a plaintext client: an alert record, then closes.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let _ = stream.read(&mut [0; 1024]);
                let _ = stream.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]);
            }
        });
        let error = Client::new(&addr).get_scheduler_status().unwrap_err();
        assert!(matches!(error, ClientError::NotPlaintext { .. }), "{error}");
        assert!(error.to_string().contains("-thrift_tls"), "{error}");
    }
}
