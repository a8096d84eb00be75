//! Hosts a generated Thrift processor on a tokio listener.
//!
//! Every connection is a cheap async task, so idle or slow clients cost a socket and a few
//! kilobytes, never a thread. Scoot's wire is unframed: the task reads until
//! `framing::MessageScanner` says a whole request is buffered, runs the synchronous processor on
//! exactly those bytes on the blocking pool, and writes the reply. Requests on one connection
//! are handled in order, as Scoot's Go server did.
//!
//! Only reading a request is timed (a reply, such as WaitRun's long poll, may legitimately take a
//! while): a request must arrive whole within `message_timeout` of its first byte, and a
//! connection may wait `idle_timeout` for its next request. Past `max_connections`, new
//! connections are closed at once instead of waiting in the accept backlog behind idle ones.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::server::TProcessor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::framing::{MessageScanner, ScanError, ScanLimits};

/// Room made in a connection's buffer before each read; the buffer grows geometrically from
/// there for large requests and is freed between requests.
const READ_CHUNK: usize = 4096;

/// Limits for one Thrift listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// Connections held at once; past this, new connections are closed at once.
    pub max_connections: usize,
    /// Time from the first byte of a request to its last, and to write a reply.
    pub message_timeout: Duration,
    /// A connection that starts no request for this long is closed (clients reconnect).
    pub idle_timeout: Duration,
    /// How long shutdown waits for in-flight requests before giving up on them.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            max_connections: 10_000,
            message_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(15 * 60),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ServeOptionsError {
    #[error("the connection limit must be at least 1")]
    NoConnections,
    #[error("the {0} must be longer than zero")]
    ZeroTimeout(&'static str),
}

impl ServeOptions {
    /// Options with the given limits (as from flags), refusing ones that would make the port
    /// unusable.
    pub fn with_limits(
        max_connections: usize,
        message_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<ServeOptions, ServeOptionsError> {
        if max_connections == 0 {
            return Err(ServeOptionsError::NoConnections);
        }
        if message_timeout.is_zero() {
            return Err(ServeOptionsError::ZeroTimeout("message timeout"));
        }
        if idle_timeout.is_zero() {
            return Err(ServeOptionsError::ZeroTimeout("idle timeout"));
        }
        Ok(ServeOptions {
            max_connections,
            message_timeout,
            idle_timeout,
            ..ServeOptions::default()
        })
    }
}

/// Raises this process's soft limit on open files to its hard limit (every connection is a
/// descriptor; soft limits are often 1024) and returns the limit now in force.
pub fn raise_open_files_limit() -> nix::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
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
    static RAISE_LIMIT: Once = Once::new();
    RAISE_LIMIT.call_once(|| match raise_open_files_limit() {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(err) => tracing::warn!(error = %err, "cannot raise the open files limit"),
    });
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut at_limit = false;
    tokio::pin!(shutdown);
    loop {
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Closing rather than queueing: a client learns at once, and idle connections
            // cannot hold newer ones in the backlog.
            if !at_limit {
                tracing::warn!(
                    max_connections = options.max_connections,
                    "thrift connection limit reached; closing new connections until some end"
                );
                at_limit = true;
            }
            drop(socket);
            continue;
        };
        at_limit = false;
        let _ = socket.set_nodelay(true);
        connections.spawn(serve_connection(
            socket,
            peer,
            processor.clone(),
            options,
            stop.clone(),
            slot,
        ));
    }
    stop.cancel();
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

/// Why a connection stopped before a whole request arrived.
enum ReadEnd {
    Closed,
    Idle,
    /// The request did not arrive whole within the message timeout.
    Slow(usize),
    Bad(ScanError),
    Io(io::Error),
}

async fn serve_connection<P>(
    mut socket: TcpStream,
    peer: SocketAddr,
    processor: Arc<P>,
    options: ServeOptions,
    stop: CancellationToken,
    _slot: OwnedSemaphorePermit,
) where
    P: TProcessor + Send + Sync + 'static,
{
    let mut scanner = MessageScanner::new(ScanLimits::of(&crate::wire_limits()));
    let mut buf = Vec::new();
    loop {
        let read = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            read = read_request(&mut socket, &mut buf, &mut scanner, &options) => read,
        };
        let len = match read {
            Ok(len) => len,
            Err(end) => return log_end(peer, end, &options),
        };
        // Bytes past the request belong to the next one (a pipelining client).
        let next = buf.split_off(len);
        let request = std::mem::replace(&mut buf, next);
        let processor = processor.clone();
        let handled = tokio::task::spawn_blocking(move || handle(processor.as_ref(), &request));
        let (reply, result) = match handled.await {
            Ok(handled) => handled,
            Err(err) => {
                tracing::error!(%peer, error = %err, "thrift request handler failed");
                return;
            }
        };
        if !reply.is_empty() {
            match tokio::time::timeout(options.message_timeout, socket.write_all(&reply)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "cannot write a thrift reply");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "closing thrift connection: the client does not take its reply");
                    return;
                }
            }
        }
        if let Err(err) = result {
            tracing::info!(%peer, error = %err, "closing thrift connection after a bad request");
            return;
        }
    }
}

/// Reads until `buf` starts with a whole request and returns its length.
async fn read_request(
    socket: &mut TcpStream,
    buf: &mut Vec<u8>,
    scanner: &mut MessageScanner,
    options: &ServeOptions,
) -> Result<usize, ReadEnd> {
    if buf.is_empty() {
        // No buffer is held while idle: wait for the first byte before making room for it.
        let first = tokio::time::timeout(options.idle_timeout, async {
            loop {
                socket.readable().await?;
                buf.reserve(READ_CHUNK);
                match socket.try_read_buf(buf) {
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                    read => return read,
                }
            }
        });
        match first.await {
            Err(_) => return Err(ReadEnd::Idle),
            Ok(Ok(0)) => return Err(ReadEnd::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(ReadEnd::Io(err)),
        }
    }
    let deadline = Instant::now() + options.message_timeout;
    loop {
        if let Some(len) = scanner.scan(buf).map_err(ReadEnd::Bad)? {
            return Ok(len);
        }
        buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, socket.read_buf(buf)).await {
            Err(_) => return Err(ReadEnd::Slow(buf.len())),
            Ok(Ok(0)) => return Err(ReadEnd::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => return Err(ReadEnd::Io(err)),
        }
    }
}

fn log_end(peer: SocketAddr, end: ReadEnd, options: &ServeOptions) {
    match end {
        ReadEnd::Closed => tracing::debug!(%peer, "thrift client disconnected"),
        ReadEnd::Idle => tracing::debug!(%peer, "closing idle thrift connection"),
        ReadEnd::Slow(received) => tracing::info!(
            %peer,
            received,
            timeout = ?options.message_timeout,
            "closing thrift connection: request not received in time"
        ),
        ReadEnd::Bad(err) => {
            tracing::info!(%peer, error = %err, "closing thrift connection after a bad request")
        }
        ReadEnd::Io(err) => tracing::debug!(%peer, error = %err, "thrift connection failed"),
    }
}

/// Runs the processor on one whole request; returns what it wrote (a reply, an exception, or
/// nothing for a oneway call) and whether the request could be processed at all.
fn handle<P: TProcessor>(processor: &P, request: &[u8]) -> (Vec<u8>, thrift::Result<()>) {
    let mut reply = Vec::new();
    let mut input = TBinaryInputProtocol::with_config(request, false, crate::wire_limits());
    let result = processor.process(
        &mut input,
        &mut TBinaryOutputProtocol::new(&mut reply, true),
    );
    (reply, result)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream as StdTcpStream;

    use thrift::protocol::{
        TInputProtocol, TMessageIdentifier, TMessageType, TOutputProtocol, TStructIdentifier, TType,
    };
    use thrift::{ApplicationError, ApplicationErrorKind};

    use super::*;
    use crate::worker::{
        RunCommand, RunStatus, TWorkerSyncClient, WorkerStatus, WorkerSyncClient,
        WorkerSyncHandler, WorkerSyncProcessor,
    };

    const DEADLINE: Duration = Duration::from_secs(20);

    /// Answers QueryWorker at once and WaitRun after the wait asked for; nothing else.
    struct Answers;

    impl WorkerSyncHandler for Answers {
        fn handle_query_worker(&self) -> thrift::Result<WorkerStatus> {
            Ok(WorkerStatus::new(
                Vec::new(),
                true,
                true,
                String::new(),
                None,
            ))
        }
        fn handle_run(&self, _: RunCommand) -> thrift::Result<RunStatus> {
            Err(refused())
        }
        fn handle_abort(&self, _: String) -> thrift::Result<RunStatus> {
            Err(refused())
        }
        fn handle_wait_run(&self, _: String, _: i64, timeout_ms: i32) -> thrift::Result<RunStatus> {
            std::thread::sleep(Duration::from_millis(timeout_ms as u64));
            Err(thrift::Error::Application(ApplicationError::new(
                ApplicationErrorKind::InternalError,
                "waited",
            )))
        }
    }

    fn refused() -> thrift::Error {
        thrift::Error::Application(ApplicationError::new(
            ApplicationErrorKind::InternalError,
            "not served here",
        ))
    }

    /// Serves [`Answers`] until the test's runtime ends; returns the address.
    async fn start(options: ServeOptions) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve(
            listener,
            Arc::new(WorkerSyncProcessor::new(Answers)),
            options,
            std::future::pending(),
        ));
        addr
    }

    fn quick(message_timeout: Duration) -> ServeOptions {
        ServeOptions {
            message_timeout,
            ..ServeOptions::default()
        }
    }

    /// Runs blocking client code off the runtime the server runs on.
    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f).await.unwrap()
    }

    fn request(name: &str, seq: i32) -> Vec<u8> {
        let mut bytes = Vec::new();
        let out = &mut TBinaryOutputProtocol::new(&mut bytes, true);
        out.write_message_begin(&TMessageIdentifier::new(name, TMessageType::Call, seq))
            .unwrap();
        out.write_struct_begin(&TStructIdentifier::new("args"))
            .unwrap();
        out.write_field_stop().unwrap();
        out.write_struct_end().unwrap();
        bytes
    }

    fn raw(addr: &str) -> StdTcpStream {
        let stream = StdTcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        stream
    }

    /// The name, type and sequence id of the next reply on `stream`.
    fn reply(stream: &StdTcpStream) -> (String, TMessageType, i32) {
        let mut input = TBinaryInputProtocol::new(stream, true);
        let ident = input.read_message_begin().unwrap();
        input.skip(TType::Struct).unwrap();
        (ident.name, ident.message_type, ident.sequence_number)
    }

    fn query(stream: &mut StdTcpStream, seq: i32) {
        stream.write_all(&request("QueryWorker", seq)).unwrap();
        assert_eq!(
            reply(stream),
            ("QueryWorker".to_string(), TMessageType::Reply, seq)
        );
    }

    /// True once the server has closed `stream` (within the deadline).
    fn closed(stream: &mut StdTcpStream) -> bool {
        match stream.read(&mut [0; 1]) {
            Ok(n) => n == 0,
            Err(err) => err.kind() == io::ErrorKind::ConnectionReset,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn only_reading_a_request_is_timed() {
        let timeout = Duration::from_millis(300);
        let addr = start(quick(timeout)).await;
        let waited = blocking(move || {
            let idle = raw(&addr);
            let mut slow = raw(&addr);
            let started = std::time::Instant::now();
            slow.write_all(&request("QueryWorker", 1)[..5]).unwrap();
            assert!(closed(&mut slow), "a partial request is not cut off");
            assert!(started.elapsed() >= timeout);
            // Idle for longer than a request may take, yet served; and a reply (WaitRun's long
            // poll) may take longer than that too.
            let mut client = WorkerSyncClient::new(
                TBinaryInputProtocol::new(idle.try_clone().unwrap(), true),
                TBinaryOutputProtocol::new(idle, true),
            );
            assert!(client.query_worker().unwrap().is_healthy);
            client.wait_run("r".into(), 0, 3 * timeout.as_millis() as i32)
        })
        .await;
        assert!(
            matches!(waited, Err(thrift::Error::Application(ref e)) if e.message == "waited"),
            "{waited:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn idle_connections_do_not_delay_a_new_client() {
        let addr = start(ServeOptions::default()).await;
        blocking(move || {
            // More than the 256 threads the server once had, held while another client is served.
            let _idle: Vec<StdTcpStream> = (0..300).map(|_| raw(&addr)).collect();
            let (input, output) = crate::client::connect(&addr, DEADLINE).unwrap();
            let status = WorkerSyncClient::new(input, output).query_worker().unwrap();
            assert!(status.is_healthy);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn connections_past_the_limit_are_closed_not_queued() {
        let addr = start(ServeOptions {
            max_connections: 2,
            ..ServeOptions::default()
        })
        .await;
        blocking(move || {
            let mut held: Vec<StdTcpStream> = (0..2).map(|_| raw(&addr)).collect();
            for (seq, stream) in held.iter_mut().enumerate() {
                query(stream, seq as i32);
            }
            assert!(closed(&mut raw(&addr)), "a third connection is kept");
            drop(held.pop());
            // The slot frees once the server sees the close.
            let deadline = std::time::Instant::now() + DEADLINE;
            loop {
                let mut stream = raw(&addr);
                if stream.write_all(&request("QueryWorker", 9)).is_ok()
                    && let Ok(ident) = TBinaryInputProtocol::new(&stream, true).read_message_begin()
                {
                    assert_eq!(ident.sequence_number, 9);
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "no slot freed");
                std::thread::sleep(Duration::from_millis(10));
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pipelined_requests_are_answered_in_order_unknown_methods_included() {
        let addr = start(ServeOptions::default()).await;
        blocking(move || {
            let mut stream = raw(&addr);
            let burst = [
                request("QueryWorker", 1),
                request("NoSuchMethod", 2),
                request("QueryWorker", 3),
            ]
            .concat();
            stream.write_all(&burst).unwrap();
            assert_eq!(reply(&stream).2, 1);
            let (name, kind, seq) = reply(&stream);
            assert_eq!(
                (name.as_str(), kind, seq),
                ("NoSuchMethod", TMessageType::Exception, 2)
            );
            assert_eq!(reply(&stream).2, 3);
            query(&mut stream, 4);
        })
        .await;
    }

    #[test]
    fn limits_from_flags_are_checked() {
        let (m, i) = (Duration::from_secs(30), Duration::from_secs(900));
        assert_eq!(
            ServeOptions::with_limits(0, m, i),
            Err(ServeOptionsError::NoConnections)
        );
        assert!(ServeOptions::with_limits(1, Duration::ZERO, i).is_err());
        assert!(ServeOptions::with_limits(1, m, Duration::ZERO).is_err());
        let options = ServeOptions::with_limits(5, m, i).unwrap();
        assert_eq!(
            (
                options.max_connections,
                options.message_timeout,
                options.idle_timeout
            ),
            (5, m, i)
        );
    }
}
