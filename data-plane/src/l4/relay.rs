//! The copy loop of one TCP connection: bytes both ways until both sides are done, under
//! the listener's idle timeout, its max connection duration, and a drain deadline once
//! the listener is stopped.
//!
//! The copy itself is tokio's `copy_bidirectional_with_sizes`, which handles half-close
//! both ways: when one side sends FIN, the other side's write half is shut down and the
//! reverse direction keeps flowing until it ends too. The client socket is wrapped in
//! [`Counted`], which adds each read and write to the listener's counters as it happens
//! (so `/metrics` shows a long connection's traffic while it flows) and stamps the last
//! activity; a deadline loop beside the copy reads that stamp instead of re-arming a timer
//! per read.
//!
//! Buffer size: 64 KiB per direction (tokio's default is 8 KiB; the two were not measured
//! against each other, only this one against the peers). Measured (2026-12-02, release build, iperf3 on loopback, the
//! node alone on one core): one `recvfrom` and one `sendto` per ~68 KB moved, no reads
//! ending in EAGAIN, 623 `epoll_wait`s in 3 s against 79,000 copies; `perf` puts over 80%
//! of the node's time in the kernel's loopback TCP path, so what is left to win is the
//! copy through user space itself. splice(2) would remove it, but needs unsafe code
//! (denied outside one audited file) or a crate wrapping it; not tried yet. Figures
//! against HAProxy and nginx: BENCHMARKS.md, "Issue 20: layer 4".

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::observe::streams::StreamStats;

/// Bytes buffered per direction: 16 KiB, as nginx's `proxy_buffer_size` for streams.
/// Measured against 64 KiB (BENCHMARKS.md, issue 20): a third less CPU per GB moved and
/// 1.2x the bulk throughput, the larger buffer costing more cache traffic per copy (and
/// 128 KiB allocated per connection instead of 32).
pub(crate) const BUFFER: usize = 16 * 1024;

/// The deadlines of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// No byte either way for this long closes the connection.
    pub(crate) idle: Duration,
    /// Closed this long after it was accepted, whatever it does.
    pub(crate) max_duration: Option<Duration>,
    /// Once the listener stops, the connection keeps flowing this long at most.
    pub(crate) drain: Duration,
}

/// How a relayed connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides finished (FIN both ways).
    Closed,
    IdleTimeout,
    MaxDuration,
    /// The listener was removed and the drain deadline passed.
    Drained,
    /// A read or write failed (a reset, mostly).
    Error,
}

impl End {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::IdleTimeout => "idle_timeout",
            End::MaxDuration => "max_connection_duration",
            End::Drained => "drained",
            End::Error => "error",
        }
    }
}

/// What a relay moved, client side: read from the client, written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Relayed {
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) end: End,
}

/// When the connection last moved a byte, in ms after `base`.
#[derive(Debug)]
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The client socket, counting what moves through it.
struct Counted<'a, S> {
    inner: S,
    activity: &'a Activity,
    stats: &'a StreamStats,
    read: u64,
    written: u64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before) as u64;
        if n > 0 {
            self.read += n;
            self.stats.bytes_in.fetch_add(n, Ordering::Relaxed);
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            self.written += n as u64;
            self.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies between `client` and `upstream` until both are done or a deadline passes;
/// `stop` turning true (or its sender going away) starts the drain deadline.
pub(crate) async fn relay<C, U>(
    client: C,
    mut upstream: U,
    limits: Limits,
    stats: &StreamStats,
    mut stop: watch::Receiver<bool>,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let activity = Activity { base: started, last_ms: AtomicU64::new(0) };
    let mut client = Counted { inner: client, activity: &activity, stats, read: 0, written: 0 };
    let max_at = limits.max_duration.map(|d| started + d);
    let mut drain_at: Option<Instant> = None;
    let end = {
        let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER);
        tokio::pin!(copy);
        // Each turn either ends the connection or waits for the next deadline, which
        // activity only moves forward: bounded by the connection's lifetime.
        loop {
            let idle_at = activity.last() + limits.idle;
            let deadline = [Some(idle_at), max_at, drain_at].into_iter().flatten().min().unwrap_or(idle_at);
            tokio::select! {
                copied = &mut copy => break if copied.is_ok() { End::Closed } else { End::Error },
                () = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    if max_at.is_some_and(|at| now >= at) {
                        break End::MaxDuration;
                    }
                    if drain_at.is_some_and(|at| now >= at) {
                        break End::Drained;
                    }
                    if now >= activity.last() + limits.idle {
                        break End::IdleTimeout;
                    }
                }
                _ = stop.wait_for(|s| *s), if drain_at.is_none() => {
                    drain_at = Some(Instant::now() + limits.drain);
                }
            }
        }
    };
    Relayed { bytes_in: client.read, bytes_out: client.written, end }
}

/// Writes what was read from the client before the upstream was chosen (a ClientHello)
/// to the upstream, counted as client bytes.
pub(crate) async fn forward_prefix<U: AsyncWrite + Unpin>(
    upstream: &mut U,
    prefix: &[u8],
    stats: &StreamStats,
) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    upstream.write_all(prefix).await?;
    stats.bytes_in.fetch_add(prefix.len() as u64, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn limits(idle: u64) -> Limits {
        Limits { idle: Duration::from_secs(idle), max_duration: None, drain: Duration::from_secs(5) }
    }

    #[tokio::test]
    async fn half_close_from_the_client_still_delivers_the_upstreams_answer() {
        let (client, mut client_end) = duplex(1024);
        let (upstream, mut upstream_end) = duplex(1024);
        let stats = StreamStats::default();
        let (_stop_tx, stop) = watch::channel(false);
        let server = async move {
            let mut asked = Vec::new();
            upstream_end.read_to_end(&mut asked).await.unwrap();
            upstream_end.write_all(&[b"answer to ", &asked[..]].concat()).await.unwrap();
            upstream_end.shutdown().await.unwrap();
        };
        let user = async move {
            client_end.write_all(b"question").await.unwrap();
            client_end.shutdown().await.unwrap();
            let mut answer = String::new();
            client_end.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let (relayed, (), answer) = tokio::join!(relay(client, upstream, limits(60), &stats, stop), server, user);
        assert_eq!(answer, "answer to question");
        assert_eq!(relayed, Relayed { bytes_in: 8, bytes_out: 18, end: End::Closed });
        assert_eq!((stats.bytes_in.load(Ordering::Relaxed), stats.bytes_out.load(Ordering::Relaxed)), (8, 18));
    }

    #[tokio::test]
    async fn half_close_from_the_upstream_lets_the_client_keep_sending() {
        let (client, mut client_end) = duplex(1024);
        let (upstream, mut upstream_end) = duplex(1024);
        let stats = StreamStats::default();
        let (_stop_tx, stop) = watch::channel(false);
        let server = async move {
            upstream_end.write_all(b"banner").await.unwrap();
            upstream_end.shutdown().await.unwrap();
            let mut rest = Vec::new();
            upstream_end.read_to_end(&mut rest).await.unwrap();
            rest
        };
        let user = async move {
            let mut banner = String::new();
            client_end.read_to_string(&mut banner).await.unwrap();
            client_end.write_all(b"still talking").await.unwrap();
            client_end.shutdown().await.unwrap();
            banner
        };
        let (relayed, rest, banner) = tokio::join!(relay(client, upstream, limits(60), &stats, stop), server, user);
        assert_eq!((banner.as_str(), rest.as_slice()), ("banner", &b"still talking"[..]));
        assert_eq!(relayed.end, End::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_ends_at_its_idle_timeout_and_traffic_defers_it() {
        let (client, mut client_end) = duplex(1024);
        let (upstream, mut upstream_end) = duplex(1024);
        let stats = StreamStats::default();
        let (_stop_tx, stop) = watch::channel(false);
        let start = Instant::now();
        let chatter = async move {
            tokio::time::sleep(Duration::from_secs(8)).await;
            client_end.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            upstream_end.read_exact(&mut got).await.unwrap();
            (client_end, upstream_end)
        };
        let (relayed, _ends) = tokio::join!(relay(client, upstream, limits(10), &stats, stop), chatter);
        assert_eq!(relayed.end, End::IdleTimeout);
        assert_eq!(start.elapsed().as_secs(), 18, "10 s after the last byte, at 8 s");
    }

    #[tokio::test(start_paused = true)]
    async fn max_duration_and_drain_deadlines_end_busy_connections() {
        let (client, _client_end) = duplex(1024);
        let (upstream, _upstream_end) = duplex(1024);
        let stats = StreamStats::default();
        let (_stop_tx, stop) = watch::channel(false);
        let start = Instant::now();
        let capped = Limits { max_duration: Some(Duration::from_secs(3)), ..limits(60) };
        assert_eq!(relay(client, upstream, capped, &stats, stop).await.end, End::MaxDuration);
        assert_eq!(start.elapsed().as_secs(), 3);

        let (client, _client_end) = duplex(1024);
        let (upstream, _upstream_end) = duplex(1024);
        let (stop_tx, stop) = watch::channel(false);
        let start = Instant::now();
        let stopper = async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop_tx.send_replace(true);
            stop_tx
        };
        let (relayed, _tx) = tokio::join!(relay(client, upstream, limits(60), &stats, stop), stopper);
        assert_eq!(relayed.end, End::Drained);
        assert_eq!(start.elapsed().as_secs(), 7, "stopped at 2 s, drained for 5 s");
    }
}
