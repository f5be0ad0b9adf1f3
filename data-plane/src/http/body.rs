//! A body read by hyper (a streamed request body, or an upstream's answer), with the
//! frames already taken off it, if any, in front; what a request body that failed
//! on its way upstream says of its failure ([`BodyFault`]); and the request body sent
//! upstream ([`Counting`]: counted, held to `max_request_bytes`, and for a streamed one
//! to the idle timeout of [`crate::http::idle`]).
//!
//! Why: a chunked request body is read ahead before its request goes upstream
//! ([`crate::server::admission`]), so that a malformed one is refused before anything is sent.
//! A body that turns out larger than what is read ahead is forwarded as it streams, and
//! hyper's `Incoming` cannot be given back what was read off it: this type replays those
//! frames first. The frames live behind one pointer that is `None` for every other body,
//! so the common case pays a branch per frame and nothing else.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::http::idle::{BodyTimeout, Idle};

/// hyper's body, after the frames read ahead of it.
#[derive(Debug)]
pub(crate) struct Streamed {
    // Boxed: a pointer in every body, rather than an empty queue's 32 bytes.
    #[allow(clippy::box_collection)]
    ahead: Option<Box<VecDeque<Frame<Bytes>>>>,
    body: Incoming,
}

impl Streamed {
    /// A body with nothing read ahead.
    pub(crate) fn new(body: Incoming) -> Streamed {
        Streamed { ahead: None, body }
    }

    /// `body`, after `ahead` (frames read off it, in order).
    pub(crate) fn after(ahead: VecDeque<Frame<Bytes>>, body: Incoming) -> Streamed {
        Streamed { ahead: (!ahead.is_empty()).then(|| Box::new(ahead)), body }
    }
}

impl Streamed {
    /// Puts `frames` (read off this body, in order) back in front of what is left.
    fn unread(&mut self, frames: Vec<Frame<Bytes>>) {
        let ahead = self.ahead.get_or_insert_with(Box::default);
        for frame in frames.into_iter().rev() {
            ahead.push_front(frame);
        }
    }
}

impl From<Incoming> for Streamed {
    fn from(body: Incoming) -> Streamed {
        Streamed::new(body)
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(ahead) = &mut this.ahead {
            if let Some(frame) = ahead.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            this.ahead = None;
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.body.size_hint();
        let Some(ahead) = &self.ahead else { return hint };
        let buffered: u64 = ahead.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
        let mut sum = SizeHint::new();
        sum.set_lower(hint.lower().saturating_add(buffered));
        if let Some(upper) = hint.upper() {
            sum.set_upper(upper.saturating_add(buffered));
        }
        sum
    }
}

/// What went wrong with a request body on its way upstream, shared by the body (which
/// sees it) and the request (which answers for it); and whether the body is waiting on
/// its client, for a route timeout to tell whose wait it ended.
#[derive(Debug, Default)]
pub(crate) struct BodyFault {
    state: AtomicU8,
    waiting: AtomicBool,
}

impl BodyFault {
    const TOO_LARGE: u8 = 1;
    const BROKEN: u8 = 2;
    const TIMED_OUT: u8 = 3;

    /// The body went past the route's `max_request_bytes`.
    pub(crate) fn set_too_large(&self) {
        self.state.store(Self::TOO_LARGE, Ordering::Relaxed);
    }

    /// The client's body failed (malformed, cut short): the client's fault.
    pub(crate) fn set_broken(&self) {
        let _ = self.state.compare_exchange(0, Self::BROKEN, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The client stopped sending its body (the route's `request_body_timeout`).
    pub(crate) fn set_timed_out(&self) {
        let _ = self.state.compare_exchange(0, Self::TIMED_OUT, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether the body waits on its client now (set by a body with an idle timer).
    pub(crate) fn set_waiting(&self, waiting: bool) {
        self.waiting.store(waiting, Ordering::Relaxed);
    }

    /// The route timeout ended the exchange: when it found the body waiting on its
    /// client, the client is the one that was late.
    pub(crate) fn note_route_timeout(&self) {
        if self.waiting.load(Ordering::Relaxed) {
            self.set_timed_out();
        }
    }

    pub(crate) fn too_large(&self) -> bool {
        self.state.load(Ordering::Relaxed) == Self::TOO_LARGE
    }

    pub(crate) fn broken(&self) -> bool {
        self.state.load(Ordering::Relaxed) == Self::BROKEN
    }

    pub(crate) fn timed_out(&self) -> bool {
        self.state.load(Ordering::Relaxed) == Self::TIMED_OUT
    }

    /// Whether the body failed by its client's doing (too large, malformed, cut short or
    /// late): nothing the upstream is blamed for.
    pub(crate) fn clients(&self) -> bool {
        self.state.load(Ordering::Relaxed) != 0
    }
}

/// A response body a layer above re-encodes as it streams (compression): boxed, so only
/// such responses pay for the encoder's type, and no layer below names it. Its error is a
/// concrete `io::Error`: a boxed body whose error is itself a boxed `dyn Error` trips
/// rustc's proof that the futures holding it are `Send`.
pub(crate) struct Encoded(Pin<Box<dyn Body<Data = Bytes, Error = std::io::Error> + Send + Sync>>);

impl Encoded {
    pub(crate) fn new(body: impl Body<Data = Bytes, Error = std::io::Error> + Send + Sync + 'static) -> Encoded {
        Encoded(Box::pin(body))
    }
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoded")
    }
}

impl Body for Encoded {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

/// A response body from an upstream: through hyper, or read inline from an HTTP/1.1
/// socket, or either of them re-encoded on its way ([`Encoded`]).
pub(crate) type UpstreamResponseBody = Either<Streamed, Either<crate::http::h1::ResponseBody, Encoded>>;
/// What an upstream answer or a local answer streams as.
pub(crate) type InnerBody = Either<UpstreamResponseBody, Full<Bytes>>;
/// Request bodies sent upstream, counted.
pub(crate) type UpstreamBody = Counting<InnerBody>;

/// A local answer: `status` with a short plain-text body (refusals, errors, redirects'
/// bodies), the one shape every layer answers with.
pub(crate) fn local(status: http::StatusCode, body: &'static str) -> http::Response<InnerBody> {
    let mut response = http::Response::new(Either::Right(Full::new(Bytes::from_static(body.as_bytes()))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// A request body read by hyper, streamed upstream as received (unless a policy transform
/// replaces it).
pub(crate) fn streamed(body: Incoming) -> InnerBody {
    Either::Left(Either::Left(Streamed::new(body)))
}

/// Polls `inner` for a frame and hands the size of a data frame to `count`.
pub(crate) fn poll_counting<B: Body<Data = Bytes> + Unpin>(
    inner: &mut B,
    cx: &mut Context<'_>,
    count: impl FnOnce(u64),
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
    let polled = Pin::new(inner).poll_frame(cx);
    if let Poll::Ready(Some(Ok(frame))) = &polled
        && let Some(data) = frame.data_ref()
    {
        count(data.len() as u64);
    }
    polled
}

/// A request body that counts the bytes it passes upstream.
#[derive(Debug)]
pub(crate) struct Counting<B> {
    /// None: an empty body (a retry of a bodiless request).
    inner: Option<B>,
    /// None for a body known to be empty.
    counter: Option<Arc<AtomicU64>>,
    /// Most bytes allowed (0: any).
    limit: u64,
    /// Where the body says it went past the limit, or failed.
    fault: Option<Arc<BodyFault>>,
    /// The wait for the client between two frames, bounded (streamed bodies only).
    idle: Option<Box<Idle>>,
}

/// The error a request body gets when it passes the route's limit.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub(crate) struct TooLarge(u64);

impl<B> Counting<B> {
    /// `inner`, counted into `counter`, refused past `limit` bytes (0: any), its failure
    /// told to `fault`.
    pub(crate) fn new(
        inner: B,
        counter: Option<Arc<AtomicU64>>,
        limit: u64,
        fault: Option<Arc<BodyFault>>,
    ) -> Counting<B> {
        Counting { inner: Some(inner), counter, limit, fault, idle: None }
    }

    /// An empty body (a retry or mirror of a bodiless request).
    pub(crate) fn empty() -> Counting<B> {
        Counting { inner: None, counter: None, limit: 0, fault: None, idle: None }
    }

    /// The body fails with [`BodyTimeout`] when its client sends nothing for `timeout`
    /// while it is waited on; the failure is told to its fault, as is each wait.
    pub(crate) fn with_idle_timeout(mut self, timeout: Duration) -> Counting<B> {
        self.idle = Some(Box::new(Idle::new(timeout)));
        self
    }
}

impl Counting<InnerBody> {
    /// A body held whole in memory, counted nowhere: a request sent again.
    pub(crate) fn whole(data: Bytes) -> Counting<InnerBody> {
        Counting::new(Either::Right(Full::new(data)), None, 0, None)
    }

    /// The bytes of a body [`Self::is_buffered`] says is held whole, for a second send
    /// (a retry, a mirror), the body left as it was; `None` for any other body.
    pub(crate) fn copy_buffered(&mut self) -> Option<Bytes> {
        if !self.is_buffered() {
            return None;
        }
        let Some(Either::Right(full)) = self.inner.as_mut() else { return None };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let data = match Pin::new(&mut *full).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
            _ => Bytes::new(),
        };
        // `Bytes` clones share the buffer: the copy costs a reference count.
        *full = Full::new(data.clone());
        Some(data)
    }

    /// Makes this body `data`, held whole: what it was read into ahead of sending
    /// (already counted and within the limit).
    pub(crate) fn hold(&mut self, data: Bytes) {
        self.inner = Some(Either::Right(Full::new(data)));
        self.counter = None;
    }

    /// Puts `frames`, read off this streamed body, back in front of the rest, uncounted
    /// (they count when they are read again).
    pub(crate) fn unread(&mut self, frames: Vec<Frame<Bytes>>) {
        let n: u64 = frames.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
        if let Some(counter) = &self.counter {
            counter.fetch_sub(n, Ordering::Relaxed);
        }
        if let Some(Either::Left(Either::Left(streamed))) = &mut self.inner {
            streamed.unread(frames);
        }
    }

    /// Whether the body is held whole in memory (read whole by the inline server, or set
    /// by a policy transform) and within the route's limit: it can be sent with the head.
    pub(crate) fn is_buffered(&self) -> bool {
        match &self.inner {
            Some(Either::Right(full)) => full.size_hint().exact().is_some_and(|n| self.limit == 0 || n <= self.limit),
            _ => false,
        }
    }

    /// Takes the bytes of a body [`Self::is_buffered`] says is held whole, counted as
    /// sent; `None` (the body left as it was) for any other.
    pub(crate) fn take_buffered(&mut self) -> Option<Bytes> {
        if !self.is_buffered() {
            return None;
        }
        let Some(Either::Right(full)) = self.inner.as_mut() else { return None };
        // A whole body in memory is one frame, ready at once.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let data = match Pin::new(full).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
            _ => Bytes::new(),
        };
        if let Some(counter) = &self.counter {
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        self.inner = None;
        Some(data)
    }
}

impl<B> Body for Counting<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::support::BoxError>,
{
    type Data = Bytes;
    type Error = crate::support::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = &mut this.inner else { return Poll::Ready(None) };
        let mut total = 0;
        let polled = poll_counting(inner, cx, |n| {
            if let Some(counter) = &this.counter {
                total = counter.fetch_add(n, Ordering::Relaxed) + n;
            }
        });
        if this.limit > 0 && total > this.limit {
            if let Some(fault) = &this.fault {
                fault.set_too_large();
            }
            return Poll::Ready(Some(Err(Box::new(TooLarge(this.limit)))));
        }
        if let Some(idle) = &mut this.idle {
            let waiting = polled.is_pending();
            if let Some(fault) = &this.fault {
                fault.set_waiting(waiting);
            }
            if !waiting {
                idle.progress();
            } else if idle.poll_expired(cx) {
                if let Some(fault) = &this.fault {
                    fault.set_timed_out();
                }
                return Poll::Ready(Some(Err(Box::new(BodyTimeout(idle.timeout())))));
            }
        }
        if let (Poll::Ready(Some(Err(_))), Some(fault)) = (&polled, &this.fault) {
            fault.set_broken();
        }
        polled.map(|frame| frame.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// A client that sent its head and nothing of its body since.
    struct Silent;

    impl Body for Silent {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_streamed_body_silent_for_its_idle_timeout_fails_as_the_clients_fault() {
        let fault = Arc::new(BodyFault::default());
        let timeout = Duration::from_secs(30);
        let mut body = Counting::new(Silent, None, 0, Some(fault.clone())).with_idle_timeout(timeout);
        let started = tokio::time::Instant::now();
        let error = body.frame().await.expect("a frame or an error").expect_err("the body fails");
        assert!(error.is::<BodyTimeout>(), "{error}");
        assert_eq!(started.elapsed(), timeout);
        assert!(fault.timed_out() && fault.clients());
    }

    #[test]
    fn a_route_timeout_is_the_clients_only_while_its_body_waits_on_the_client() {
        let fault = BodyFault::default();
        fault.note_route_timeout();
        assert!(!fault.clients(), "the upstream's: the body was not waiting on its client");
        fault.set_waiting(true);
        fault.note_route_timeout();
        assert!(fault.timed_out() && fault.clients());
    }

    #[test]
    fn body_faults_keep_the_first_cause() {
        let fault = BodyFault::default();
        assert!(!fault.broken() && !fault.too_large());
        fault.set_too_large();
        fault.set_broken();
        assert!(fault.too_large() && !fault.broken(), "the limit's error is not the client's malformed body");
        let fault = BodyFault::default();
        fault.set_broken();
        assert!(fault.broken());
    }
}
