//! A connection handed to hyper's server: HTTP/2, and HTTP/1.1 from the first request
//! the inline server ([`crate::server::inline`]) does not serve on. What that server read is
//! replayed in front of the socket; requests in progress are tracked, so that a
//! connection with none for the listener's idle timeout is shut down gracefully (hyper
//! has no such limit for HTTP/2), and a request hyper drops before its answer (a reset
//! stream, a closed connection) is counted as cancelled.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tracing::debug;

use crate::proxy;

/// Gives the connection to hyper's server, replaying what was read but not served.
/// A connection with no request in progress for the idle timeout (HTTP/2 included,
/// where hyper has no such limit) is shut down gracefully.
pub(crate) async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    conn: proxy::Connection,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
    io: I,
    read: Bytes,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(conn.clone()));
    let tracker = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        // Boxed: the request future is a few KB, and hyper moves the service future
        // (per request into the connection, per stream into a spawned task).
        let answer = Box::pin(conn.clone().handle_incoming(req));
        Guarded { answer, guard: Some(InFlight::new(tracker.clone())) }
    });
    let served = builder.serve_connection_with_upgrades(TokioIo::new(Rewind { read, io }), service);
    tokio::pin!(served);
    let mut check = tokio::time::Instant::now() + idle;
    let result = loop {
        tokio::select! {
            biased;
            result = served.as_mut() => break result,
            () = stopped(&mut stop) => {
                served.as_mut().graceful_shutdown();
                break served.await;
            }
            () = tokio::time::sleep_until(check) => {
                let quiet = activity.quiet();
                match quiet {
                    Some(quiet) if quiet >= idle => {
                        served.as_mut().graceful_shutdown();
                        break served.await;
                    }
                    Some(quiet) => check = tokio::time::Instant::now() + (idle - quiet),
                    None => check = tokio::time::Instant::now() + idle,
                }
            }
        }
    };
    if let Err(error) = result {
        debug!(%error, "connection ended with an error");
    }
}

/// Completes once the stop flag is set (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Requests in progress on a connection served by hyper, and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds from `base` to the end of the last request (or the hand-off).
    last_end_ms: AtomicU64,
    base: tokio::time::Instant,
    /// Where a request cancelled before its answer is counted.
    conn: proxy::Connection,
}

impl Activity {
    fn new(conn: proxy::Connection) -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            base: tokio::time::Instant::now(),
            conn,
        }
    }

    /// How long the connection has had no request in progress; `None` while one is.
    fn quiet(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let last = self.base + Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed));
        Some(tokio::time::Instant::now().saturating_duration_since(last))
    }
}

/// One request in progress, until its response body is done (or dropped).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let since = self.0.base.elapsed().as_millis();
        self.0.last_end_ms.store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request's answer, whose body keeps the request counted as in progress.
struct Guarded<F> {
    answer: Pin<Box<F>>,
    /// Handed to the answer's body; still here when hyper drops the request unanswered.
    guard: Option<InFlight>,
}

impl<F> Drop for Guarded<F> {
    fn drop(&mut self) {
        // hyper drops a request's future before its answer when the client reset its
        // HTTP/2 stream, or closed the connection.
        if let Some(guard) = &self.guard {
            guard.0.conn.count_cancelled();
        }
    }
}

impl<F, B> std::future::Future for Guarded<F>
where
    F: std::future::Future<Output = Result<Response<B>, std::convert::Infallible>>,
{
    type Output = Result<Response<Tracked<B>>, std::convert::Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match this.answer.as_mut().poll(cx) {
            Poll::Ready(Ok(response)) => match this.guard.take() {
                Some(guard) => Poll::Ready(Ok(response.map(|inner| Tracked { inner, _guard: guard }))),
                // Polled again after its answer: a contract breach; never answer twice.
                None => Poll::Pending,
            },
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A response body that keeps its request counted as in progress.
struct Tracked<B> {
    inner: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection with bytes already read from it in front: what hyper reads first.
struct Rewind<I> {
    read: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            let taken = self.read.split_to(n);
            buf.put_slice(&taken);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn rewind_replays_what_was_read_before_the_socket() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut rewound = Rewind { read: Bytes::from_static(b"hello"), io: server };
        let mut all = String::new();
        rewound.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
