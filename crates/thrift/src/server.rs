//! Hosts a generated Thrift processor on a tokio listener, over plain TCP (Scoot's wire) or TLS.
//!
//! Every connection is a cheap async task, so idle or slow clients cost a socket and a few
//! kilobytes, never a thread. Scoot's wire is unframed: the task reads until
//! `framing::MessageScanner` says a whole request is buffered, runs the synchronous processor on
//! exactly those bytes on the blocking pool, and writes the reply. Requests on one connection
//! are handled in order, as Scoot's Go server did. With TLS, the task first completes the
//! handshake (within the message timeout, and `ServerTls`'s own), then runs the same loop over
//! the TLS stream: a client that stalls its handshake holds one connection slot, never the
//! accept loop.
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

use scoot_security::ServerTls;
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::server::TProcessor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::framing::{MessageScanner, ScanError, ScanLimits};

/// Room made in a connection's buffer before each read; the buffer grows geometrically from
/// there for large requests and is freed between requests.
const READ_CHUNK: usize = 4096;

/// Room made for the first read of a request, which may wait for as long as the connection
/// idles: small, so that idle connections hold little (Scoot's short calls, QueryWorker,
/// WaitRun or GetStatus, fit in it whole), where `READ_CHUNK` is held only while a request
/// is arriving.
const FIRST_READ: usize = 256;

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

/// Serves `processor` on every connection accepted from `listener` until `shutdown` completes,
/// over TLS when `tls` is given.
pub async fn serve<P>(
    listener: TcpListener,
    tls: Option<ServerTls>,
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
            tls.clone(),
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
    /// The request began as a TLS handshake does: a client speaking TLS to a plaintext port.
    TlsClient,
    Io(io::Error),
}

/// Serves one accepted connection, holding its slot (`_slot`) until it ends, TLS handshake
/// included.
async fn serve_connection<P>(
    socket: TcpStream,
    peer: SocketAddr,
    tls: Option<ServerTls>,
    processor: Arc<P>,
    options: ServeOptions,
    stop: CancellationToken,
    _slot: OwnedSemaphorePermit,
) where
    P: TProcessor + Send + Sync + 'static,
{
    let Some(tls) = tls else {
        return serve_requests(socket, peer, processor, options, stop).await;
    };
    // `accept` has its own bound too (`HANDSHAKE_TIMEOUT`); the message timeout may be
    // shorter, and a handshake is no more than the first message of a connection.
    let handshake = tokio::select! {
        biased;
        _ = stop.cancelled() => return,
        handshake = tokio::time::timeout(options.message_timeout, tls.accept(socket)) => handshake,
    };
    match handshake {
        Ok(Ok(stream)) => serve_requests(stream, peer, processor, options, stop).await,
        // Connecting and closing (a port probe, a TCP health check) is no failure worth more
        // than a plaintext connection that closes without a request.
        Ok(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::debug!(%peer, "thrift client disconnected during the TLS handshake")
        }
        // A plaintext Scoot client on a TLS port ends here, as does one that does not trust
        // this server's certificate or has none of its own when one is required.
        Ok(Err(err)) => tracing::info!(%peer, error = %err, "thrift TLS handshake failed"),
        Err(_) => tracing::info!(
            %peer,
            timeout = ?options.message_timeout,
            "closing thrift connection: TLS handshake not finished in time"
        ),
    }
}

/// Reads requests from `socket`, a plain or TLS stream, and answers them in order until the
/// client leaves, breaks the protocol or is too slow, or the server stops.
async fn serve_requests<S, P>(
    mut socket: S,
    peer: SocketAddr,
    processor: Arc<P>,
    options: ServeOptions,
    stop: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
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
            // Flushed, for TLS: a record may stay in the session's buffer after `write_all`.
            let write = async {
                socket.write_all(&reply).await?;
                socket.flush().await
            };
            match tokio::time::timeout(options.message_timeout, write).await {
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
async fn read_request<S: AsyncRead + Unpin>(
    socket: &mut S,
    buf: &mut Vec<u8>,
    scanner: &mut MessageScanner,
    options: &ServeOptions,
) -> Result<usize, ReadEnd> {
    if buf.is_empty() {
        // Only a little room is held while idle (a plain or TLS stream alike can only be
        // waited on by reading); the rest is made once a request has begun.
        buf.reserve_exact(FIRST_READ);
        let first = tokio::time::timeout(options.idle_timeout, socket.read_buf(buf));
        match first.await {
            Err(_) => return Err(ReadEnd::Idle),
            Ok(Ok(0)) => return Err(ReadEnd::Closed),
            Ok(Ok(_)) => {}
            // A TLS client that leaves without a close_notify, as most do: between requests
            // it cut nothing short, so it merely disconnected.
            Ok(Err(err)) if err.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(ReadEnd::Closed);
            }
            Ok(Err(err)) => return Err(ReadEnd::Io(err)),
        }
    }
    let deadline = Instant::now() + options.message_timeout;
    loop {
        // A TLS record header (handshake, TLS 1.x) reads as a name length over 300 MB, which no
        // request may have: the scanner refuses it, and the log says what it was.
        let scanned = scanner.scan(buf).map_err(|err| {
            if buf.starts_with(&[0x16, 0x03]) {
                ReadEnd::TlsClient
            } else {
                ReadEnd::Bad(err)
            }
        });
        if let Some(len) = scanned? {
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
        ReadEnd::TlsClient => tracing::info!(
            %peer,
            "closing thrift connection: the client speaks TLS to this plaintext port \
             (-thrift_tls is given to it and not to this server)"
        ),
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
        start_tls(options, None).await
    }

    /// Serves [`Answers`] over TLS when given until the test's runtime ends; returns the
    /// address.
    async fn start_tls(options: ServeOptions, tls: Option<ServerTls>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(serve(
            listener,
            tls,
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
            let (input, output) = crate::client::connect(&addr, DEADLINE, None).unwrap();
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

    /// TLS on the Thrift port: a CA, the server's certificate, and what clients trust.
    mod tls {
        use std::path::{Path, PathBuf};

        use scoot_security::client_tls::{ClientTls, Identity};
        use scoot_security::server_tls::ServerTlsFiles;
        use scoot_security::{Alpn, ServerTls};

        use super::*;

        /// PEM files of a CA and of a certificate it signed for 127.0.0.1 and localhost (the
        /// way scoot-security's tests make them; usable by a server or a client).
        struct Pki {
            ca: PathBuf,
            cert: PathBuf,
            key: PathBuf,
        }

        fn pki(dir: &Path, name: &str) -> Pki {
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca_params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("{name} CA"));
            let ca = ca_params.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::new(ca_params, ca_key);
            let key = rcgen::KeyPair::generate().unwrap();
            let params =
                rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                    .unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            let files = Pki {
                ca: dir.join(format!("{name}-ca.pem")),
                cert: dir.join(format!("{name}-cert.pem")),
                key: dir.join(format!("{name}-key.pem")),
            };
            std::fs::write(&files.ca, ca.pem()).unwrap();
            std::fs::write(&files.cert, cert.pem()).unwrap();
            std::fs::write(&files.key, key.serialize_pem()).unwrap();
            files
        }

        fn server_tls(server: &Pki, client_ca: Option<&Path>) -> ServerTls {
            let files = ServerTlsFiles {
                cert: server.cert.clone(),
                key: server.key.clone(),
                client_ca: client_ca.map(Path::to_path_buf),
            };
            ServerTls::new(&files, Alpn::None).unwrap()
        }

        /// What a client trusting `ca` (and presenting `identity`'s certificate) connects with.
        fn trusting(ca: &Pki, identity: Option<&Pki>) -> Arc<rustls::ClientConfig> {
            let identity = identity.map(|pki| Identity {
                cert: pki.cert.clone(),
                key: pki.key.clone(),
            });
            ClientTls::new(&ca.ca, identity.as_ref()).unwrap().rustls()
        }

        /// A QueryWorker call over a new connection.
        fn query_worker(
            addr: &str,
            tls: Option<Arc<rustls::ClientConfig>>,
        ) -> thrift::Result<WorkerStatus> {
            let (input, output) = crate::client::connect(addr, DEADLINE, tls)?;
            WorkerSyncClient::new(input, output).query_worker()
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_generated_client_is_served_over_tls() {
            let dir = tempfile::tempdir().unwrap();
            let server = pki(dir.path(), "server");
            let addr = start_tls(
                quick(Duration::from_millis(300)),
                Some(server_tls(&server, None)),
            )
            .await;
            let config = trusting(&server, None);
            let waited = blocking(move || {
                // By address and by name: the certificate is checked against either.
                let port = addr.rsplit_once(':').unwrap().1;
                assert!(
                    query_worker(&format!("localhost:{port}"), Some(config.clone()))
                        .unwrap()
                        .is_healthy
                );
                let (input, output) =
                    crate::client::connect(&addr, DEADLINE, Some(config)).unwrap();
                let mut client = WorkerSyncClient::new(input, output);
                for _ in 0..3 {
                    assert!(client.query_worker().unwrap().is_healthy);
                }
                // A reply that takes longer than a request may, on the same TLS session.
                let waited = client.wait_run("r".into(), 0, 600);
                assert!(client.query_worker().unwrap().is_healthy);
                waited
            })
            .await;
            assert!(
                matches!(waited, Err(thrift::Error::Application(ref e)) if e.message == "waited"),
                "{waited:?}"
            );
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_plaintext_client_fails_cleanly_and_the_port_keeps_serving() {
            let dir = tempfile::tempdir().unwrap();
            let server = pki(dir.path(), "server");
            let addr = start_tls(ServeOptions::default(), Some(server_tls(&server, None))).await;
            let config = trusting(&server, None);
            blocking(move || {
                let plain = query_worker(&addr, None);
                assert!(plain.is_err(), "{plain:?}");
                let mut raw = raw(&addr);
                raw.write_all(&request("QueryWorker", 1)).unwrap();
                let mut answer = Vec::new();
                // Whatever the server says (a TLS alert at most), it then closes.
                let _ = raw.read_to_end(&mut answer);
                assert!(
                    !answer.starts_with(&[0x80, 0x01]),
                    "a Thrift reply in plaintext"
                );
                assert!(query_worker(&addr, Some(config)).unwrap().is_healthy);
            })
            .await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_tls_client_to_a_plaintext_port_fails_at_connect() {
            let dir = tempfile::tempdir().unwrap();
            let server = pki(dir.path(), "server");
            let addr = start(ServeOptions::default()).await;
            let config = trusting(&server, None);
            blocking(move || {
                let error = crate::client::connect(&addr, DEADLINE, Some(config))
                    .map(|_| ())
                    .unwrap_err();
                let error = crate::describe(&error);
                assert!(error.contains("TLS handshake"), "{error}");
                assert!(query_worker(&addr, None).unwrap().is_healthy);
            })
            .await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_client_trusting_another_ca_is_refused() {
            let dir = tempfile::tempdir().unwrap();
            let server = pki(dir.path(), "server");
            let other = pki(dir.path(), "other");
            let addr = start_tls(ServeOptions::default(), Some(server_tls(&server, None))).await;
            let (wrong, right) = (trusting(&other, None), trusting(&server, None));
            blocking(move || {
                let error = crate::client::connect(&addr, DEADLINE, Some(wrong))
                    .map(|_| ())
                    .unwrap_err();
                let error = crate::describe(&error);
                assert!(error.contains("UnknownIssuer"), "{error}");
                assert!(query_worker(&addr, Some(right)).unwrap().is_healthy);
            })
            .await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn with_a_client_ca_a_client_without_its_certificate_is_refused() {
            let dir = tempfile::tempdir().unwrap();
            let server = pki(dir.path(), "server");
            let clients = pki(dir.path(), "clients");
            let strangers = pki(dir.path(), "strangers");
            let addr = start_tls(
                ServeOptions::default(),
                Some(server_tls(&server, Some(&clients.ca))),
            )
            .await;
            let anonymous = trusting(&server, None);
            let stranger = trusting(&server, Some(&strangers));
            let known = trusting(&server, Some(&clients));
            blocking(move || {
                // Under TLS 1.3 the client's side of the handshake may end before the server
                // has checked its certificate: the refusal can come with the first call.
                let refused = query_worker(&addr, Some(anonymous));
                assert!(refused.is_err(), "{refused:?}");
                let refused = query_worker(&addr, Some(stranger));
                assert!(refused.is_err(), "{refused:?}");
                assert!(query_worker(&addr, Some(known)).unwrap().is_healthy);
            })
            .await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn a_stalled_handshake_holds_a_slot_only_for_the_message_timeout() {
            let dir = tempfile::tempdir().unwrap();
            let server = pki(dir.path(), "server");
            let timeout = Duration::from_millis(300);
            let addr = start_tls(
                ServeOptions {
                    max_connections: 1,
                    ..quick(timeout)
                },
                Some(server_tls(&server, None)),
            )
            .await;
            let config = trusting(&server, None);
            blocking(move || {
                let started = std::time::Instant::now();
                // Connected, and never says hello: it holds the one slot.
                let mut stalled = raw(&addr);
                let deadline = started + DEADLINE;
                loop {
                    match query_worker(&addr, Some(config.clone())) {
                        Ok(status) => {
                            assert!(status.is_healthy);
                            break;
                        }
                        Err(_) => {
                            assert!(std::time::Instant::now() < deadline, "no slot freed");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                }
                assert!(
                    started.elapsed() >= timeout,
                    "the stalled handshake held no slot"
                );
                assert!(closed(&mut stalled), "the stalled handshake is not cut off");
            })
            .await;
        }
    }
}
