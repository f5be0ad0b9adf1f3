//! Which downstream requests are served, before any routing: the HTTP/1 framing rules
//! both HTTP/1.1 servers hold a request to (the inline one in [`crate::server::inline`], and
//! hyper's for connections handed to it), chunked request bodies read whole before they
//! go upstream, and HTTP/2 streams their client reset before they started.
//!
//! Why: a proxy that forwards what its peers refuse lets an upstream that reads the same
//! bytes differently be told something Vane never checked (request smuggling), and the
//! review of issue 15 sent the same bytes to Vane, nginx and HAProxy. The rules, from
//! RFC 9112, as nginx (1.22) applies them:
//! - One `Host` line: HTTP/1.1 without one, or any request with two, is a 400 (§3.2, a
//!   MUST; nginx does the same). HTTP/1.0 may go without.
//! - `Transfer-Encoding` is one line, `chunked` alone. Two lines, `chunked` twice, or
//!   another coding before it (`gzip, chunked`) are a 400. nginx answers 501 for a value
//!   other than `chunked` (HAProxy 2.6: 400, or 422 for `gzip, chunked`): 400 here,
//!   because a 5xx would put a client's malformed request in the node's error rate
//!   (`vane top`'s 5xx share, alerts on 5xx).
//! - `Transfer-Encoding` with `Content-Length` is a 400 (§6.3 lets a server refuse it;
//!   nginx does). The inline server sees every line of the requests it parses, the
//!   first request of every connection included. hyper drops the `Content-Length` of
//!   such a request before Vane sees it, so on a connection already handed to hyper
//!   (after a large or chunked body, an upgrade or HTTP/1.0) it is framed by its chunks
//!   alone and the connection closed after it: §6.3's other choice; the upstream never
//!   sees both framings.
//! - A chunked body is read ahead up to [`READ_AHEAD`] (64 KiB, the bound of
//!   `Content-Length` bodies the inline server reads whole, as nginx buffers request
//!   bodies), waiting at most the route's `request_body_timeout` between two frames (as
//!   the inline server between two reads): one that ends there goes upstream whole with
//!   its length, a malformed one is a 400 with nothing forwarded, one that stops arriving
//!   a 408 under its route ([`crate::proxy`]'s limits). A larger one is forwarded as it arrives,
//!   after the part read ahead; should it turn out malformed later, the answer is a 400
//!   when the upstream has not answered yet (the body records its failure in a
//!   [`crate::http::body::BodyFault`]): the client's fault, never a 502 nor a passive-health
//!   failure of the upstream.
//!
//! Refusals count in `vane_http_requests_total` under their listener with empty `route`
//! and `cluster`, as requests no route took do, and close the connection.
//!
//! HTTP/2 rapid reset: hyper polls a stream's request future before it looks whether the
//! client has reset the stream, and a burst of HEADERS + RST_STREAM arrives in one read,
//! so every stream is already reset when it is accepted. A request future that went on
//! at once routed and opened an upstream connection for each (measured on loopback: 50
//! streams reset in one burst opened 51 upstream connections; 15,840 reset in bursts of
//! 99 over 8 connections, 13,935). One pending poll first lets hyper see the reset and
//! drop the request before it started: 1 and 8 connections, one per answered request at
//! once (`tests/e2e/cancellation.rs`); the cost is one more poll per HTTP/2 request.
//! Requests dropped unanswered are counted in `vane_http_requests_cancelled_total`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Frame, Incoming};
use tracing::debug;

use crate::http::body::InnerBody;
use crate::http::body::Streamed;
use crate::observe::metrics::{self, Outcome};
use crate::proxy::{self, Connection, ProxyBody};

/// Most of a chunked request body read before its request goes upstream.
pub(crate) const READ_AHEAD: usize = 64 * 1024;

/// Why a request is refused before routing (what the answer's body says, see `text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    DuplicateHost,
    MissingHost,
    TransferCoding,
    FramedTwice,
    MalformedBody,
}

impl Refusal {
    pub(crate) fn status(self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    /// The answer's body.
    fn text(self) -> &'static str {
        match self {
            Refusal::DuplicateHost => "more than one Host header\n",
            Refusal::MissingHost => "a Host header is required\n",
            Refusal::TransferCoding => "only Transfer-Encoding: chunked is accepted\n",
            Refusal::FramedTwice => "both Transfer-Encoding and Content-Length\n",
            Refusal::MalformedBody => "malformed chunked body\n",
        }
    }
}

/// Whether a `Transfer-Encoding` line is the `chunked` coding alone.
pub(crate) fn chunked_alone(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// The rule an HTTP/1 request that hyper parsed breaks, if any. hyper has already
/// refused `Transfer-Encoding` on HTTP/1.0 and codings that do not end in `chunked`.
fn head_refusal<B>(req: &Request<B>) -> Option<Refusal> {
    let headers = req.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => return Some(Refusal::DuplicateHost),
        (None, _) if req.version() == Version::HTTP_11 => return Some(Refusal::MissingHost),
        _ => {}
    }
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (Some(_), Some(_)) => Some(Refusal::TransferCoding),
        (Some(coding), None) if !chunked_alone(coding.as_bytes()) => Some(Refusal::TransferCoding),
        // hyper removes the length; should a version keep it, it is refused all the same.
        (Some(_), None) if headers.contains_key(header::CONTENT_LENGTH) => Some(Refusal::FramedTwice),
        _ => None,
    }
}

/// Why a chunked body read ahead was not: malformed, or it stopped arriving (with the
/// bytes read until then).
enum Ahead {
    Malformed(hyper::Error),
    Idle(usize),
}

/// Reads a chunked body until its end or past [`READ_AHEAD`] bytes, waiting at most
/// `idle` for each frame. One that ended comes back whole in memory (sent upstream with
/// its length, as an inline `Content-Length` body is), unless it had trailers; a larger
/// one as the frames read, then the rest.
async fn read_ahead(mut body: Incoming, idle: Duration) -> Result<InnerBody, Ahead> {
    let mut frames = VecDeque::new();
    let mut size = 0;
    let mut trailers = false;
    while size <= READ_AHEAD {
        // A frame already there arms no timer.
        let Ok(next) = tokio::time::timeout(idle, body.frame()).await else { return Err(Ahead::Idle(size)) };
        let Some(frame) = next else {
            if trailers {
                break;
            }
            return Ok(Either::Right(Full::new(concat(frames, size))));
        };
        let frame = frame.map_err(Ahead::Malformed)?;
        match frame.data_ref() {
            Some(data) => size += data.len(),
            None => trailers = true,
        }
        frames.push_back(frame);
    }
    Ok(Either::Left(Either::Left(Streamed::after(frames, body))))
}

/// The data of `frames` (`size` bytes in all) as one buffer.
fn concat(mut frames: VecDeque<Frame<Bytes>>, size: usize) -> Bytes {
    if frames.len() == 1 {
        return frames.pop_front().and_then(|f| f.into_data().ok()).unwrap_or_default();
    }
    let mut whole = BytesMut::with_capacity(size);
    for data in frames.iter().filter_map(Frame::data_ref) {
        whole.extend_from_slice(data);
    }
    whole.freeze()
}

impl Connection {
    /// Answers a request hyper's server read: HTTP/2, or HTTP/1 on a connection handed
    /// over.
    pub(crate) async fn handle_incoming(self, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        if req.version() == Version::HTTP_2 {
            // One pending poll, for hyper to look at the stream's reset before any work.
            tokio::task::yield_now().await;
            return self.handle(req.map(crate::http::body::streamed)).await;
        }
        if let Some(refusal) = head_refusal(&req) {
            return Ok(self.refuse(refusal, req.method()));
        }
        if !req.headers().contains_key(header::TRANSFER_ENCODING) {
            return self.handle(req.map(crate::http::body::streamed)).await;
        }
        let (parts, body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        let (since, idle) = (std::time::Instant::now(), self.request_body_timeout(&head));
        let body = match read_ahead(body, idle).await {
            Ok(body) => body,
            Err(Ahead::Malformed(error)) => {
                debug!(%error, "chunked request body refused");
                return Ok(self.refuse(Refusal::MalformedBody, head.method()));
            }
            Err(Ahead::Idle(read)) => return Ok(self.body_timed_out(&head, since, read as u64)),
        };
        let (parts, ()) = head.into_parts();
        self.handle(Request::from_parts(parts, body)).await
    }

    /// The answer to a request refused before routing, counted; the connection closes.
    pub(crate) fn refuse(&self, refusal: Refusal, method: &Method) -> Response<ProxyBody> {
        self.count_refusal(refusal.status(), metrics::method_index(method));
        let mut response = crate::http::body::local(refusal.status(), refusal.text());
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        response.map(proxy::unrecorded)
    }

    /// Counts a request refused before routing (`method` as [`metrics::method_index`]
    /// gives it) under its listener.
    pub(crate) fn count_refusal(&self, status: StatusCode, method: usize) {
        let runtime = self.shared.runtime.load();
        if let Some(router) = runtime.as_ref().and_then(|rt| rt.listeners.get(&self.slot)) {
            router.unrouted.record(&Outcome {
                status: status.as_u16(),
                method,
                total: Duration::ZERO,
                upstream: None,
                bytes_in: 0,
                bytes_out: 0,
            });
        }
    }

    /// Counts a request its client gave up before it was answered.
    pub(crate) fn count_cancelled(&self) {
        let runtime = self.shared.runtime.load();
        if let Some(router) = runtime.as_ref().and_then(|rt| rt.listeners.get(&self.slot)) {
            router.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &[(&str, &str)], version: Version) -> Request<()> {
        let mut req = Request::new(());
        *req.version_mut() = version;
        for (name, value) in head {
            req.headers_mut()
                .append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        req
    }

    /// Header lines, the request's version, and what it comes to.
    type Case<'a> = (&'a [(&'a str, &'a str)], Version, Option<Refusal>);

    #[test]
    fn one_host_and_at_most_one_plain_chunked_coding_pass() {
        let h11 = Version::HTTP_11;
        let cases: [Case<'_>; 10] = [
            (&[("host", "a")], h11, None),
            (&[("host", "a"), ("transfer-encoding", " Chunked ")], h11, None),
            (&[], Version::HTTP_10, None),
            (&[], h11, Some(Refusal::MissingHost)),
            (&[("host", "a"), ("host", "a")], h11, Some(Refusal::DuplicateHost)),
            (&[("host", "a"), ("host", "b")], Version::HTTP_10, Some(Refusal::DuplicateHost)),
            (
                &[("host", "a"), ("transfer-encoding", "chunked"), ("transfer-encoding", "chunked")],
                h11,
                Some(Refusal::TransferCoding),
            ),
            (&[("host", "a"), ("transfer-encoding", "chunked, chunked")], h11, Some(Refusal::TransferCoding)),
            (&[("host", "a"), ("transfer-encoding", "gzip, chunked")], h11, Some(Refusal::TransferCoding)),
            (
                &[("host", "a"), ("transfer-encoding", "chunked"), ("content-length", "5")],
                h11,
                Some(Refusal::FramedTwice),
            ),
        ];
        for (head, version, expected) in cases {
            assert_eq!(head_refusal(&request(head, version)), expected, "{head:?}");
        }
    }
}
