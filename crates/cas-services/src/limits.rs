//! Limits of a gRPC port, as the flags of Scoot's Bazel-era scheduler and apiserver set them
//! (`-max_grpc_conn`, `-max_grpc_rps`, `-max_grpc_rps_burst`, `-max_grpc_streams`,
//! `-max_grpc_idle_mins`, and the apiserver's `-cas_buffer_size`).
//!
//! - Connections past the cap are closed at once rather than queued (Scoot's listener made them
//!   wait for a slot), as our Thrift ports do: a client learns at once and retries.
//! - Calls past the rate (a token bucket of `rps` a second holding `burst`) are refused with
//!   RESOURCE_EXHAUSTED, as Scoot's limiter refused them.
//! - Streams per connection are HTTP/2's `SETTINGS_MAX_CONCURRENT_STREAMS`.
//! - A connection that carries no bytes either way for the idle time is closed. Execute streams
//!   send an update every 30 s, so a waiting build is never idle.
//! - `-cas_buffer_size` bounds the request bytes held in memory: each call in flight may hold up
//!   to one HTTP/2 stream window of them, so the bound admits `size / window` calls at once; a
//!   call that finds none free for 10 s is refused with UNAVAILABLE (Scoot's wait and code).
//!
//! 0 means "no limit" for every flag.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::STREAM_WINDOW_BYTES;

/// How long a call waits for room under `-cas_buffer_size` before it is refused.
pub const BUFFER_WAIT: Duration = Duration::from_secs(10);

/// The gRPC limit flags, shared by the scheduler and the apiserver.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct GrpcLimitFlags {
    /// Connections the gRPC port holds at once (0: no limit); past it new ones are closed.
    #[arg(long = "max_grpc_conn", default_value_t = 0)]
    pub max_grpc_conn: usize,
    /// Calls accepted per second on the gRPC port (0: no limit); past it RESOURCE_EXHAUSTED.
    #[arg(long = "max_grpc_rps", default_value_t = 0)]
    pub max_grpc_rps: u32,
    /// Calls accepted in a burst above -max_grpc_rps (at least 1 when a rate is set).
    #[arg(long = "max_grpc_rps_burst", default_value_t = 0)]
    pub max_grpc_rps_burst: u32,
    /// Concurrent streams (calls) per gRPC connection (0: HTTP/2's default, no limit).
    #[arg(long = "max_grpc_streams", default_value_t = 0)]
    pub max_grpc_streams: u32,
    /// Minutes a gRPC connection may carry nothing before it is closed (0: never).
    #[arg(long = "max_grpc_idle_mins", default_value_t = 0)]
    pub max_grpc_idle_mins: u64,
}

/// What a gRPC port enforces; the default enforces nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcLimits {
    pub max_conns: Option<usize>,
    /// Calls a second and the burst.
    pub rate: Option<(u32, u32)>,
    pub max_streams: Option<u32>,
    pub idle: Option<Duration>,
    /// Bytes of request data held in memory at once (`-cas_buffer_size`).
    pub buffer_bytes: Option<u64>,
}

impl GrpcLimitFlags {
    pub fn limits(&self) -> GrpcLimits {
        let some = |n: u64| (n > 0).then_some(n);
        GrpcLimits {
            max_conns: (self.max_grpc_conn > 0).then_some(self.max_grpc_conn),
            rate: (self.max_grpc_rps > 0)
                .then(|| (self.max_grpc_rps, self.max_grpc_rps_burst.max(1))),
            max_streams: (self.max_grpc_streams > 0).then_some(self.max_grpc_streams),
            idle: some(self.max_grpc_idle_mins).map(|m| Duration::from_secs(m * 60)),
            buffer_bytes: None,
        }
    }
}

impl GrpcLimits {
    /// Calls admitted at once under [`buffer_bytes`](Self::buffer_bytes) (at least one).
    pub fn buffered_calls(&self) -> Option<usize> {
        self.buffer_bytes.map(|bytes| {
            usize::try_from(bytes / u64::from(STREAM_WINDOW_BYTES))
                .unwrap_or(usize::MAX)
                .clamp(1, Semaphore::MAX_PERMITS)
        })
    }
}

/// Caps the connections of an incoming stream and closes idle ones (see the module docs).
pub struct LimitedIncoming<S> {
    inner: Pin<Box<S>>,
    slots: Option<Arc<Semaphore>>,
    idle: Option<Duration>,
}

impl<S> LimitedIncoming<S> {
    pub fn new(incoming: S, limits: &GrpcLimits) -> LimitedIncoming<S> {
        LimitedIncoming {
            inner: Box::pin(incoming),
            slots: limits.max_conns.map(|n| Arc::new(Semaphore::new(n))),
            idle: limits.idle,
        }
    }
}

impl<S, IO> futures::Stream for LimitedIncoming<S>
where
    S: futures::Stream<Item = std::io::Result<IO>>,
{
    type Item = std::io::Result<Limited<IO>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let io = match std::task::ready!(self.inner.as_mut().poll_next(cx)) {
                Some(Ok(io)) => io,
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                None => return Poll::Ready(None),
            };
            let permit = match &self.slots {
                None => None,
                Some(slots) => match Arc::clone(slots).try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => {
                        tracing::warn!(
                            "gRPC connection limit (-max_grpc_conn) reached; closing a new connection"
                        );
                        drop(io);
                        continue;
                    }
                },
            };
            let idle = self.idle;
            return Poll::Ready(Some(Ok(Limited::new(io, permit, idle))));
        }
    }
}

/// A connection holding its slot, closed after its idle time without traffic.
pub struct Limited<IO> {
    io: IO,
    _slot: Option<OwnedSemaphorePermit>,
    idle: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
}

impl<IO> Limited<IO> {
    fn new(io: IO, slot: Option<OwnedSemaphorePermit>, idle: Option<Duration>) -> Limited<IO> {
        Limited {
            io,
            _slot: slot,
            idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
        }
    }

    fn active(&mut self) {
        if let Some((after, sleep)) = &mut self.idle {
            sleep.as_mut().reset(tokio::time::Instant::now() + *after);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let Some((after, sleep)) = &mut self.idle else {
                    return Poll::Pending;
                };
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                tracing::debug!(idle = ?after, "closing an idle gRPC connection");
                // End of stream: the connection closes as if the client had closed it.
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        written
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
        let written = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The per-call limits (rate, buffered calls) as a tower layer.
#[derive(Clone, Debug, Default)]
pub struct CallLimitLayer {
    bucket: Option<Arc<Mutex<Bucket>>>,
    buffer: Option<Arc<Semaphore>>,
}

impl CallLimitLayer {
    pub fn new(limits: &GrpcLimits) -> CallLimitLayer {
        CallLimitLayer {
            bucket: limits
                .rate
                .map(|(rate, burst)| Arc::new(Mutex::new(Bucket::new(rate, burst)))),
            buffer: limits.buffered_calls().map(|n| Arc::new(Semaphore::new(n))),
        }
    }
}

impl<S> tower::Layer<S> for CallLimitLayer {
    type Service = CallLimited<S>;

    fn layer(&self, inner: S) -> CallLimited<S> {
        CallLimited {
            inner,
            limits: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CallLimited<S> {
    inner: S,
    limits: CallLimitLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for CallLimited<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if let Some(bucket) = &self.limits.bucket {
            let allowed = bucket
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(Instant::now());
            if !allowed {
                tracing::debug!(
                    method = request.uri().path(),
                    "refused a call over -max_grpc_rps"
                );
                let refusal =
                    tonic::Status::resource_exhausted("rate limit exceeded (-max_grpc_rps)")
                        .into_http();
                return Box::pin(async move { Ok(refusal) });
            }
        }
        let Some(buffer) = self.limits.buffer.clone() else {
            return Box::pin(self.inner.call(request));
        };
        // The call is made now (tower's contract after poll_ready) but its future starts only
        // once there is room, so no request bytes are read before then.
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(BUFFER_WAIT, buffer.acquire_owned()).await {
                Ok(Ok(_room)) => call.await,
                _ => Ok(tonic::Status::unavailable(format!(
                    "the server's request buffer (-cas_buffer_size) stayed full for {BUFFER_WAIT:?}"
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_limits() {
        assert_eq!(GrpcLimitFlags::default().limits(), GrpcLimits::default());
        let flags = GrpcLimitFlags {
            max_grpc_conn: 3,
            max_grpc_rps: 10,
            max_grpc_rps_burst: 0,
            max_grpc_streams: 7,
            max_grpc_idle_mins: 2,
        };
        assert_eq!(
            flags.limits(),
            GrpcLimits {
                max_conns: Some(3),
                rate: Some((10, 1)),
                max_streams: Some(7),
                idle: Some(Duration::from_secs(120)),
                buffer_bytes: None,
            }
        );
        let buffered = GrpcLimits {
            buffer_bytes: Some(2 << 30),
            ..GrpcLimits::default()
        };
        assert_eq!(buffered.buffered_calls(), Some(256));
        let tiny = GrpcLimits {
            buffer_bytes: Some(1),
            ..GrpcLimits::default()
        };
        assert_eq!(tiny.buffered_calls(), Some(1));
    }

    #[test]
    fn the_bucket_refills_at_its_rate_up_to_its_burst() {
        let mut bucket = Bucket::new(2, 3);
        let t0 = Instant::now();
        assert!((0..3).all(|_| bucket.take(t0)));
        assert!(!bucket.take(t0));
        assert!(bucket.take(t0 + Duration::from_millis(500)));
        assert!(!bucket.take(t0 + Duration::from_millis(500)));
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.take(later)));
        assert!(!bucket.take(later));
    }
}
