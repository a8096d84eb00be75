//! Connects generated Thrift clients the way Scoot's clients did: one plain TCP connection,
//! buffered (unframed) binary protocol, strict writes and lenient reads, bounded I/O waits.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{
    ReadHalf, TBufferedReadTransport, TBufferedWriteTransport, TIoChannel, TTcpChannel, WriteHalf,
};

pub type InputProtocol = TBinaryInputProtocol<TBufferedReadTransport<ReadHalf<TTcpChannel>>>;
pub type OutputProtocol = TBinaryOutputProtocol<TBufferedWriteTransport<WriteHalf<TTcpChannel>>>;

/// Scoot's client timeout for connecting and for each read or write.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Opens a connection to `addr` and returns the protocol pair a generated client is built from,
/// e.g. `WorkerSyncClient::new(input, output)`.
pub fn connect(addr: &str, timeout: Duration) -> thrift::Result<(InputProtocol, OutputProtocol)> {
    let mut last_err = None;
    let mut stream = None;
    for sock_addr in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sock_addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(err) => last_err = Some(err),
        }
    }
    let stream = match (stream, last_err) {
        (Some(stream), _) => stream,
        (None, Some(err)) => return Err(err.into()),
        (None, None) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("{addr} resolves to no address"),
            )
            .into());
        }
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let _ = stream.set_nodelay(true);
    let (reader, writer) = TTcpChannel::with_stream(stream).split()?;
    Ok((
        TBinaryInputProtocol::with_config(
            TBufferedReadTransport::new(reader),
            false,
            crate::wire_limits(),
        ),
        TBinaryOutputProtocol::new(TBufferedWriteTransport::new(writer), true),
    ))
}
