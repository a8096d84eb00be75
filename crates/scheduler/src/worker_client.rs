//! Talks to one worker: [`WorkerApi`] is what the scheduling loop and task runners ask of a
//! worker, in `scoot-core` types; [`WorkerClient`] answers it over the Worker Thrift API.
//!
//! The Thrift runtime is synchronous, so calls run on the blocking pool. Connections are pooled
//! per worker: a long `WaitRun` on one connection does not hold up an `Abort` on another. A
//! connection that saw a transport error is dropped; the next call reconnects. Connections are
//! plaintext, as Scoot's workers speak, or TLS under `-thrift_tls`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use rustls::ClientConfig;
use scoot_core::{Command, RunId, RunStatus, ServiceStatus, StateMask};
use scoot_thrift::client::{InputProtocol, OutputProtocol, connect};
use scoot_thrift::convert;
use scoot_thrift::worker::{TWorkerSyncClient, WorkerSyncClient};

type Connection = WorkerSyncClient<InputProtocol, OutputProtocol>;

/// Connect and per-call I/O timeout. Longer than the longest WaitRun we ask for.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest WaitRun we ask a worker for.
pub const MAX_WAIT: Duration = Duration::from_secs(25);

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("worker {node}: {}", scoot_thrift::describe(.source))]
    Thrift { node: String, source: thrift::Error },
    /// The first answer on a plaintext connection was no Thrift: a worker serving Thrift over
    /// TLS answers a plaintext request with a TLS alert, which reads as garbage.
    #[error(
        "worker {node} does not answer plaintext Thrift ({}); if it serves Thrift over TLS, \
         give the scheduler -thrift_tls and -tls_ca",
        scoot_thrift::describe(.source)
    )]
    NotPlaintext { node: String, source: thrift::Error },
    #[error("worker {node}: {message}")]
    Internal { node: String, message: String },
}

impl RpcError {
    fn is_unknown_method(&self) -> bool {
        matches!(self, RpcError::Thrift { source: thrift::Error::Application(e), .. }
            if e.kind == thrift::ApplicationErrorKind::UnknownMethod)
    }
}

/// A worker as the scheduler uses it. Boxed futures keep it usable as `dyn WorkerApi`, so the
/// loop can hold workers of any kind (Thrift clients, or scripted ones in tests).
pub trait WorkerApi: Send + Sync {
    /// The worker's retained runs and its service status (QueryWorker).
    fn query(&self) -> BoxFuture<'_, Result<(Vec<RunStatus>, ServiceStatus), RpcError>>;

    /// Starts a run of `cmd`; the status says whether it was accepted.
    fn run<'a>(&'a self, cmd: &'a Command) -> BoxFuture<'a, Result<RunStatus, RpcError>>;

    /// Ends a run; answers its final status.
    fn abort<'a>(&'a self, run_id: &'a RunId) -> BoxFuture<'a, Result<RunStatus, RpcError>>;

    /// Waits (up to `wait`, at most [`MAX_WAIT`]) for the run to reach a state in `states`,
    /// answering its status then or when the wait is over. `Ok(None)` means the worker does not
    /// offer WaitRun: poll it with [`query`](WorkerApi::query) instead.
    fn wait_run<'a>(
        &'a self,
        run_id: &'a RunId,
        states: StateMask,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<RunStatus>, RpcError>>;
}

/// Makes the client of the worker with a node id (its Thrift address).
pub type Connect = Arc<dyn Fn(&str) -> Arc<dyn WorkerApi> + Send + Sync>;

/// Workers reached over the Worker Thrift API, over TLS when `tls` is given.
pub fn thrift_workers(tls: Option<Arc<ClientConfig>>) -> Connect {
    Arc::new(move |node: &str| Arc::new(WorkerClient::new(node, tls.clone())) as Arc<dyn WorkerApi>)
}

#[derive(Clone)]
pub struct WorkerClient {
    node: String,
    tls: Option<Arc<ClientConfig>>,
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl WorkerClient {
    /// The client of the worker whose Thrift address is `node`, over TLS when `tls` is given.
    pub fn new(node: &str, tls: Option<Arc<ClientConfig>>) -> WorkerClient {
        WorkerClient {
            node: node.to_string(),
            tls,
            idle: Arc::default(),
        }
    }

    async fn call<T: Send + 'static>(
        &self,
        rpc: impl FnOnce(&mut Connection) -> thrift::Result<T> + Send + 'static,
    ) -> Result<T, RpcError> {
        let node = self.node.clone();
        let tls = self.tls.clone();
        let idle = self.idle.clone();
        let err_node = node.clone();
        let (result, fresh_plaintext) = tokio::task::spawn_blocking(move || {
            let pooled = idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let fresh_plaintext = pooled.is_none() && tls.is_none();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => match connect(&node, RPC_TIMEOUT, tls) {
                    Ok((input, output)) => WorkerSyncClient::new(input, output),
                    Err(err) => return (Err(err), false),
                },
            };
            let result = rpc(&mut conn);
            // Application errors leave the connection in a clean state; anything else may not.
            if matches!(result, Ok(_) | Err(thrift::Error::Application(_))) {
                idle.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(conn);
            }
            (result, fresh_plaintext)
        })
        .await
        .map_err(|e| RpcError::Internal {
            node: err_node.clone(),
            message: e.to_string(),
        })?;
        result.map_err(|source| match source {
            thrift::Error::Protocol(_) if fresh_plaintext => RpcError::NotPlaintext {
                node: err_node,
                source,
            },
            source => RpcError::Thrift {
                node: err_node,
                source,
            },
        })
    }
}

impl WorkerApi for WorkerClient {
    fn query(&self) -> BoxFuture<'_, Result<(Vec<RunStatus>, ServiceStatus), RpcError>> {
        Box::pin(async move {
            let status = self.call(|c| c.query_worker()).await?;
            Ok(convert::worker_status_from_wire(status))
        })
    }

    fn run<'a>(&'a self, cmd: &'a Command) -> BoxFuture<'a, Result<RunStatus, RpcError>> {
        let wire = convert::command_to_wire(cmd);
        Box::pin(async move {
            let status = self.call(move |c| c.run(wire)).await?;
            Ok(convert::status_from_wire(status))
        })
    }

    fn abort<'a>(&'a self, run_id: &'a RunId) -> BoxFuture<'a, Result<RunStatus, RpcError>> {
        let id = run_id.0.clone();
        Box::pin(async move {
            let status = self.call(move |c| c.abort(id)).await?;
            Ok(convert::status_from_wire(status))
        })
    }

    fn wait_run<'a>(
        &'a self,
        run_id: &'a RunId,
        states: StateMask,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<RunStatus>, RpcError>> {
        let id = run_id.0.clone();
        let wait_ms = wait.min(MAX_WAIT).as_millis() as i32;
        Box::pin(async move {
            match self
                .call(move |c| c.wait_run(id, states.0 as i64, wait_ms))
                .await
            {
                Ok(status) => Ok(Some(convert::status_from_wire(status))),
                Err(err) if err.is_unknown_method() => Ok(None),
                Err(err) => Err(err),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// A port that answers whatever it is sent as a TLS server answers a plaintext client: with
    /// an alert record (fatal, protocol version), then closes.
    fn tls_only_port() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let _ = stream.read(&mut [0; 1024]);
                let _ = stream.write_all(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]);
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_plaintext_call_answered_in_tls_says_so() {
        let worker = WorkerClient::new(&tls_only_port(), None);
        let error = worker.query().await.unwrap_err();
        assert!(matches!(error, RpcError::NotPlaintext { .. }), "{error}");
        assert!(error.to_string().contains("-thrift_tls"), "{error}");
    }
}
