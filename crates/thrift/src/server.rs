//! Hosts a generated Thrift processor on a tokio listener.
//!
//! The Apache Thrift runtime is synchronous and Scoot's wire is unframed, so a message boundary is
//! only known by parsing it: each connection is therefore served start to end on a blocking-pool
//! thread, with requests on one connection handled in order (as Scoot's Go server did). A semaphore
//! bounds the number of connections (and so of threads) and an idle read timeout frees threads held
//! by silent clients. On shutdown every open socket is shut down, which unblocks its thread.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::server::TProcessor;
use thrift::transport::{TBufferedReadTransport, TBufferedWriteTransport, TIoChannel, TTcpChannel};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Limits for one Thrift listener.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Connections served at once; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed (clients reconnect on error).
    pub idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests before giving up on them.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            max_connections: 256,
            idle_timeout: Duration::from_secs(15 * 60),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Serves `processor` on every connection accepted from `listener` until `shutdown` completes.
pub async fn serve<P>(
    listener: TcpListener,
    processor: Arc<P>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    P: TProcessor + Send + Sync + 'static,
{
    let permits = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let open = OpenSockets::default();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => permit.map_err(io::Error::other)?,
        };
        let (socket, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Typically EMFILE: back off instead of spinning, keep serving the others.
                    tracing::warn!(error = %err, "thrift accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let socket = socket.into_std()?;
        socket.set_nonblocking(false)?;
        socket.set_read_timeout(Some(options.idle_timeout))?;
        let _ = socket.set_nodelay(true);
        let id = open.insert(&socket);
        let processor = processor.clone();
        let open = open.clone();
        connections.spawn_blocking(move || {
            let _permit = permit;
            serve_connection(socket, processor.as_ref(), &peer.to_string());
            open.remove(id);
        });
    }
    open.shut_down_all();
    let drained = tokio::time::timeout(options.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "thrift connections still busy at shutdown"
        );
    }
    Ok(())
}

fn serve_connection<P: TProcessor>(socket: TcpStream, processor: &P, peer: &str) {
    let (reader, writer) = match TTcpChannel::with_stream(socket).split() {
        Ok(halves) => halves,
        Err(err) => {
            tracing::warn!(%peer, error = %err, "cannot split thrift connection");
            return;
        }
    };
    let mut input = TBinaryInputProtocol::with_config(
        TBufferedReadTransport::new(reader),
        false,
        crate::wire_limits(),
    );
    let mut output = TBinaryOutputProtocol::new(TBufferedWriteTransport::new(writer), true);
    loop {
        if let Err(err) = processor.process(&mut input, &mut output) {
            if is_disconnect(&err) {
                tracing::debug!(%peer, "thrift client disconnected");
            } else {
                tracing::info!(%peer, error = %err, "closing thrift connection after a bad request");
            }
            return;
        }
    }
}

fn is_disconnect(err: &thrift::Error) -> bool {
    use thrift::TransportErrorKind::{EndOfFile, NotOpen, TimedOut};
    matches!(err, thrift::Error::Transport(t) if matches!(t.kind, EndOfFile | NotOpen | TimedOut))
}

/// Clones of the open sockets, so shutdown can unblock the threads reading from them.
#[derive(Clone, Default)]
struct OpenSockets {
    next_id: Arc<AtomicU64>,
    sockets: Arc<Mutex<HashMap<u64, TcpStream>>>,
}

impl OpenSockets {
    fn insert(&self, socket: &TcpStream) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(clone) = socket.try_clone() {
            self.lock().insert(id, clone);
        }
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn shut_down_all(&self) {
        for socket in self.lock().values() {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
