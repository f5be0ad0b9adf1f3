//! Finishing a response: the access-log line drafted before forwarding, completed and
//! written with the metrics when the response body ends (or is dropped).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use hyper::body::{Body, Frame, SizeHint};

use crate::http::body::InnerBody;
use crate::http::body::poll_counting;
use crate::http::headers::X_REQUEST_ID;
use crate::observe::accesslog::{Line, Sink};
use crate::observe::metrics::{Outcome, RouteStats};
use crate::upstream::pool::Lease;

use super::held::{BODY_TIMEOUT, Held, ResponseTooLarge};

/// The request side of an access log line, taken before the request is forwarded.
pub(super) fn draft_line<B>(req: &Request<B>, client: SocketAddr) -> Line {
    let headers = req.headers();
    Line {
        time: SystemTime::now(),
        client,
        method: req.method().clone(),
        host: headers
            .get(header::HOST)
            .cloned()
            .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())),
        uri: req.uri().clone(),
        version: req.version(),
        status: 0,
        bytes_in: 0,
        bytes_out: 0,
        duration: Duration::ZERO,
        upstream: None,
        upstream_time: None,
        listener: Arc::from(""),
        route: None,
        cluster: None,
        request_id: headers.get(&X_REQUEST_ID).cloned(),
        user_agent: headers.get(header::USER_AGENT).cloned(),
        referer: headers.get(header::REFERER).cloned(),
        error: None,
    }
}

/// Everything recorded once a response has been sent (or abandoned).
#[derive(Debug)]
pub(super) struct Finish {
    pub(super) start: Instant,
    pub(super) stats: Arc<RouteStats>,
    pub(super) method: usize,
    pub(super) status: u16,
    pub(super) upstream: Option<Upstream>,
    pub(super) bytes_in: Option<Arc<AtomicU64>>,
    pub(super) draft: Option<Box<(Arc<Sink>, Line)>>,
    pub(super) listener: Arc<str>,
    pub(super) route: Option<Arc<str>>,
    pub(super) cluster: Option<Arc<str>>,
    #[cfg(feature = "otlp")]
    pub(super) trace: Option<opentelemetry::Context>,
}

impl Finish {
    /// `whole`: the response body was sent to its end (its upstream connection is idle).
    fn complete(mut self, bytes_out: u64, whole: bool) {
        if let Some(lease) = self.upstream.as_mut().and_then(|u| u.lease.take())
            && whole
        {
            lease.release();
        }
        let total = self.start.elapsed();
        let bytes_in = self.bytes_in.as_ref().map_or(0, |b| b.load(Ordering::Relaxed));
        let held = self.upstream.as_ref().and_then(|u| u.held.as_deref());
        let error = held.and_then(Held::error);
        if error == Some(BODY_TIMEOUT) {
            self.stats.count_body_timeout();
        }
        let upstream_time = self.upstream.as_ref().map(|u| u.time);
        self.stats.record(&Outcome {
            status: self.status,
            method: self.method,
            total,
            upstream: upstream_time,
            bytes_in,
            bytes_out,
        });
        #[cfg(feature = "otlp")]
        if let Some(cx) = self.trace {
            let upstream = self.upstream.as_ref().map(|u| u.authority.as_str());
            let (route, cluster) = (self.route.as_deref().unwrap_or(""), self.cluster.as_deref().unwrap_or(""));
            crate::observe::otel::finish(cx, route, cluster, upstream, self.status, bytes_in, bytes_out);
        }
        if let Some(draft) = self.draft {
            let (sink, mut line) = *draft;
            line.status = self.status;
            line.bytes_in = bytes_in;
            line.bytes_out = bytes_out;
            line.duration = total;
            line.upstream_time = upstream_time;
            if let Some(upstream) = self.upstream {
                line.upstream = Some(upstream.authority);
                // The id the upstream saw, generated here when the client sent none.
                if line.request_id.is_none() {
                    line.request_id = upstream.request_id;
                }
            }
            line.listener = self.listener;
            line.route = self.route;
            line.cluster = self.cluster;
            line.error = line.error.or(error);
            sink.send(line);
        }
    }
}

/// A response body that counts what it sends and records the request when it is done
/// (fully sent, or dropped because the client went away). It ends with
/// [`ResponseTooLarge`] rather than pass its route's `max_response_bytes`.
#[derive(Debug)]
pub(crate) struct Finishing<B> {
    inner: B,
    sent: u64,
    /// Most bytes passed (0: any).
    cap: u64,
    /// The body was sent to its end.
    ended: bool,
    finish: Option<Finish>,
    /// Stored once the body ends (dropped unstored when it does not).
    fill: Option<Box<crate::cache::Fill>>,
}

impl<B: Body> Finishing<B> {
    pub(super) fn new(inner: B, mut finish: Option<Finish>) -> Finishing<B> {
        let upstream = finish.as_mut().and_then(|f| f.upstream.as_mut());
        let fill = upstream.and_then(|u| u.fill.take());
        let held = finish.as_ref().and_then(|f| f.upstream.as_ref()).and_then(|u| u.held.as_deref());
        let cap = held.map_or(0, |h| h.max_response_bytes);
        let ended = inner.is_end_stream();
        let mut body = Finishing { ended, inner, sent: 0, cap, finish, fill };
        if ended && let Some(fill) = body.fill.take() {
            fill.complete();
        }
        body
    }

    /// The body is about to pass its cap: counted against its cluster, its access log
    /// line says so.
    fn cut(&mut self) {
        let held = self.finish.as_mut().and_then(|f| f.upstream.as_mut()).and_then(|u| u.held.as_deref_mut());
        if let Some(held) = held {
            held.cut = true;
            held.cluster.response_too_large.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<B> Drop for Finishing<B> {
    fn drop(&mut self) {
        if let Some(finish) = self.finish.take() {
            finish.complete(self.sent, self.ended);
        }
    }
}

impl<B> Body for Finishing<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: From<ResponseTooLarge>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let before = this.sent;
        let polled = poll_counting(&mut this.inner, cx, |n| this.sent += n);
        if this.cap > 0 && this.sent > this.cap {
            // Not a byte of the frame that crosses it: the client gets at most the cap.
            this.sent = before;
            this.ended = false;
            this.cut();
            return Poll::Ready(Some(Err(ResponseTooLarge(this.cap).into())));
        }
        // hyper stops polling once `is_end_stream` says so: look after every frame.
        this.ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => this.ended,
        };
        if let Some(fill) = &mut this.fill {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref()
                        && !fill.push(data)
                    {
                        this.fill = None;
                    }
                }
                Poll::Ready(Some(Err(_))) => this.fill = None,
                _ => {}
            }
            if this.ended
                && let Some(fill) = this.fill.take()
            {
                fill.complete();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Response bodies, counted and finished (metrics, access log) when done.
pub(crate) type ProxyBody = Finishing<InnerBody>;

/// A response that no metrics or access log line follow (those of a request refused
/// before routing are recorded when refused).
pub(crate) fn unrecorded(body: InnerBody) -> ProxyBody {
    Finishing::new(body, None)
}

/// Where a forwarded request went (for metrics and logs), the upstream connection to
/// give back to its pool once the response has been sent whole, and the limits the
/// exchange is held to (when its route has any or its request body streams).
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(super) authority: Authority,
    pub(super) time: Duration,
    pub(super) request_id: Option<HeaderValue>,
    pub(super) lease: Option<Lease>,
    pub(super) held: Option<Box<Held>>,
    /// The response's way into its route's cache, fed as the body streams.
    pub(super) fill: Option<Box<crate::cache::Fill>>,
}
