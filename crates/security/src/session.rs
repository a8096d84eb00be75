//! Per-connection state for the gRPC authorisation layer: which token a connection last
//! presented, so that (when a server opts in) calls on the same connection that carry no token
//! act with it. Bazel before 3.0 sends its `--remote_header`s on every call but its ByteStream
//! uploads; those share the connection of the calls that carried the token.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What tonic attaches to every request of a connection (see [`Tracked`]).
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// The `Authorization` header of the last authorised call on this connection.
    remembered: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Connection {
    pub(crate) fn remember(&self, header: &[u8]) {
        let mut remembered = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if remembered.as_deref() != Some(header) {
            *remembered = Some(header.to_vec());
        }
    }

    pub(crate) fn remembered(&self) -> Option<Vec<u8>> {
        self.remembered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A served connection with a [`Connection`] of its own.
pub struct Tracked<IO> {
    io: IO,
    connection: Connection,
}

impl<IO> Tracked<IO> {
    pub fn new(io: IO) -> Tracked<IO> {
        Tracked {
            io,
            connection: Connection::default(),
        }
    }
}

impl<IO> Connected for Tracked<IO> {
    type ConnectInfo = Connection;

    fn connect_info(&self) -> Connection {
        self.connection.clone()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Wraps every connection of `incoming` in a [`Tracked`].
pub struct TrackedIncoming<S> {
    inner: Pin<Box<S>>,
}

impl<S> TrackedIncoming<S> {
    pub fn new(incoming: S) -> TrackedIncoming<S> {
        TrackedIncoming {
            inner: Box::pin(incoming),
        }
    }
}

impl<S, IO> futures_core::Stream for TrackedIncoming<S>
where
    S: futures_core::Stream<Item = std::io::Result<IO>>,
{
    type Item = std::io::Result<Tracked<IO>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner
            .as_mut()
            .poll_next(cx)
            .map(|next| next.map(|io| io.map(Tracked::new)))
    }
}
