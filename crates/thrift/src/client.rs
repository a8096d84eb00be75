//! Connects generated Thrift clients the way Scoot's clients did: one TCP connection, buffered
//! (unframed) binary protocol, strict writes and lenient reads, bounded I/O waits; over TLS
//! when given a TLS configuration (`-thrift_tls`), plaintext otherwise, as Scoot spoke it.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{
    ReadHalf, TBufferedReadTransport, TBufferedWriteTransport, TIoChannel, WriteHalf,
};

pub type InputProtocol = TBinaryInputProtocol<TBufferedReadTransport<ReadHalf<Channel>>>;
pub type OutputProtocol = TBinaryOutputProtocol<TBufferedWriteTransport<WriteHalf<Channel>>>;

/// Scoot's client timeout for connecting and for each read or write.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// One client connection, plaintext or TLS, splittable into the read and write halves a
/// generated client is built from.
pub enum Channel {
    /// Each half holds its own handle of the socket (as thrift's `TTcpChannel` does).
    Plain(TcpStream),
    /// Both halves share the one TLS session: its state (sequence numbers, buffered records)
    /// cannot be split. A generated client is request/response, so it never reads and writes
    /// at once and the mutex is never contended; a half blocked in a read holds it, which is
    /// harmless because the other half has nothing to do until that read returns.
    Tls(Arc<Mutex<TlsStream>>),
}

impl Channel {
    fn with_tls<T>(stream: &Mutex<TlsStream>, f: impl FnOnce(&mut TlsStream) -> T) -> T {
        // A panic elsewhere while holding the lock leaves a session that the next I/O on it
        // reports as broken, if it is; nothing here needs protecting from it.
        f(&mut stream.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Read for Channel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Channel::Plain(tcp) => tcp.read(buf),
            Channel::Tls(tls) => Channel::with_tls(tls, |tls| tls.read(buf)),
        }
    }
}

impl Write for Channel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Channel::Plain(tcp) => tcp.write(buf),
            Channel::Tls(tls) => Channel::with_tls(tls, |tls| tls.write(buf)),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Channel::Plain(tcp) => tcp.flush(),
            Channel::Tls(tls) => Channel::with_tls(tls, |tls| tls.flush()),
        }
    }
}

impl TIoChannel for Channel {
    fn split(self) -> thrift::Result<(ReadHalf<Channel>, WriteHalf<Channel>)> {
        let (read, write) = match self {
            Channel::Plain(tcp) => {
                let other = tcp.try_clone()?;
                (Channel::Plain(tcp), Channel::Plain(other))
            }
            Channel::Tls(tls) => (Channel::Tls(tls.clone()), Channel::Tls(tls)),
        };
        Ok((ReadHalf::new(read), WriteHalf::new(write)))
    }
}

/// Opens a connection to `addr` (`host:port`) and returns the protocol pair a generated client
/// is built from, e.g. `WorkerSyncClient::new(input, output)`. With `tls`, the connection is
/// TLS, the server's certificate checked against `host` (a DNS name or an IP address), and the
/// handshake is done here, so a server that cannot be trusted is a connection error.
pub fn connect(
    addr: &str,
    timeout: Duration,
    tls: Option<Arc<ClientConfig>>,
) -> thrift::Result<(InputProtocol, OutputProtocol)> {
    // Checked first: a bad name is the caller's mistake, whatever the network says.
    let tls = tls
        .map(|config| server_name(addr).map(|name| (config, name)))
        .transpose()?;
    let stream = open(addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let _ = stream.set_nodelay(true);
    let channel = match tls {
        Some((config, name)) => {
            let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
            let mut stream = StreamOwned::new(conn, stream);
            // Bounded by the socket's timeouts, as every later read and write is.
            while stream.conn.is_handshaking() {
                stream
                    .conn
                    .complete_io(&mut stream.sock)
                    // Said, because a plaintext server's reset or close reads as no more.
                    .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
            }
            Channel::Tls(Arc::new(Mutex::new(stream)))
        }
        None => Channel::Plain(stream),
    };
    let (reader, writer) = channel.split()?;
    Ok((
        TBinaryInputProtocol::with_config(
            TBufferedReadTransport::new(reader),
            false,
            crate::wire_limits(),
        ),
        TBinaryOutputProtocol::new(TBufferedWriteTransport::new(writer), true),
    ))
}

/// The first address of `addr` that accepts a connection within `timeout`.
fn open(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let mut last_err = None;
    for sock_addr in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sock_addr, timeout) {
            Ok(stream) => return Ok(stream),
            Err(err) => last_err = Some(err),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// The name a TLS server at `addr` must have a certificate for: the host part of `host:port`
/// (`[v6]:port` for an IPv6 address).
fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr}: {host:?} is neither a DNS name nor an IP address for TLS: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_part() {
        let name = |addr: &str| server_name(addr).map(|n| n.to_str().into_owned());
        assert_eq!(name("localhost:9090").unwrap(), "localhost");
        assert_eq!(name("127.0.0.1:9090").unwrap(), "127.0.0.1");
        assert_eq!(name("[::1]:9090").unwrap(), "::1");
        assert_eq!(
            name("worker-3.example.com:10101").unwrap(),
            "worker-3.example.com"
        );
        assert!(name("bad_name!:9090").is_err());
        assert!(name(":9090").is_err());
    }
}
