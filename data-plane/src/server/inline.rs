//! Downstream HTTP/1.1, served inline for requests without a body or with a small one;
//! everything else is handed to hyper on the same connection.
//!
//! Why not hyper's server for every request: its HTTP/1 dispatcher keeps a 16 KiB read
//! buffer and an 8 KiB write buffer per connection and stores the request future in the
//! connection, and its state machine (dispatch, message encoders, buffered writes) was
//! the largest user-space cost left per proxied request. Here a connection is its socket,
//! a 4 KiB read buffer and a small write buffer; a request's head is parsed with
//! `httparse` (as hyper does), its header values share the read buffer's bytes, and a
//! small response goes out in one write (head and body together, a `writev` for a large
//! body).
//!
//! What is served here: HTTP/1.1 requests without a body or with a `Content-Length` body
//! of up to 64 KiB (read whole before the request is served, as nginx buffers request
//! bodies), without upgrade or `Expect`. At the first request that is anything else (a
//! chunked or larger body, a repeated or invalid length, a WebSocket upgrade, HTTP/1.0),
//! and for HTTP/2 (the prior-knowledge preface, or `h2` negotiated by TLS), the connection
//! and the bytes read so far go to hyper's server for the rest of its life, so streamed
//! request bodies, their framing errors, `100 Continue`, upgrades and HTTP/1.0 keep-alive
//! rules stay hyper's. Every line of a head is looked at before that choice: a head that
//! breaks the framing rules of [`crate::server::admission`] (not exactly one `Host`, a transfer
//! coding other than one `chunked`, `Transfer-Encoding` with `Content-Length`) gets its
//! 400 here, whoever would have served it.
//!
//! Measured against hyper's server for the same requests (`benches/ab.sh`, BENCHMARKS.md):
//! 69.0k -> 73.7k req/s at 50 connections, 14.4 -> 13.4 us of CPU per request, and node
//! RSS under 256 connections 22.0 -> 16.4 MB.
//!
//! Limits: the head must arrive within the listener's header deadline (from the accept
//! for the first request, from its first byte for later ones), then a body read whole
//! may pause at most its route's `request_body_timeout` between reads, else it gets 408
//! ([`crate::server::body_wait`]); a connection idle between
//! requests is closed after the listener's idle timeout; heads over 64 KiB or 100 header
//! lines get 431, malformed ones 400 (counted in the metrics as requests no route took,
//! method `OTHER`). The connection is closed after those, after a
//! `Connection: close` and when the listener stops, with a lingering close. Response
//! trailers are not sent over HTTP/1.1 (hyper's server does not send them either). A
//! client that takes no bytes of an answer within the listener's `send_timeout` (60 s by
//! default, as nginx's) is cut off.

use std::io::{IoSlice, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Body;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::debug;

use crate::server::body_wait::BodyWait;
use crate::server::handoff::{self, stopped};
use crate::{observe::metrics, proxy, server::admission, support::spare};

/// Most header lines in one request.
const MAX_HEADERS: usize = 100;
/// Largest request head.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// What a read asks the socket for at least.
const READ_SIZE: usize = 4 * 1024;
/// Body chunks up to this size are copied behind the head; larger ones go out with it in
/// a `writev`.
const COPY_LIMIT: usize = 2 * 1024;
/// A request body up to this size (announced by `Content-Length`) is read whole before the
/// request is served, as nginx buffers request bodies; a larger one is streamed by hyper.
const MAX_INLINE_BODY: usize = 64 * 1024;
/// Ready body chunks are gathered into one write up to this much.
const MAX_QUEUED: usize = 256 * 1024;
/// What an HTTP/2 prior-knowledge connection starts with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How one connection is served.
#[derive(Debug)]
pub(crate) struct Serve<'a> {
    /// hyper's server, for what is not served inline.
    pub(crate) builder: &'a auto::Builder<TokioExecutor>,
    pub(crate) conn: proxy::Connection,
    pub(crate) header_timeout: Duration,
    /// Between requests.
    pub(crate) idle_timeout: Duration,
    /// For a client to take the part of an answer written at once (up to 256 KiB).
    pub(crate) send_timeout: Duration,
    /// Set when the listener stops: finish the request in progress, then close.
    pub(crate) stop: watch::Receiver<bool>,
    /// TLS negotiated `h2`: straight to hyper.
    pub(crate) h2: bool,
}

/// What reading the next request head came to.
// Built once per request and taken apart at once: boxing the request would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
enum Next {
    Request(Request<crate::http::body::InnerBody>, bool),
    /// Not for this server: hyper takes the connection, with what was read.
    Handoff,
    /// Send this answer (to a HEAD request or not), then close: a body stopped arriving.
    Answer(Response<proxy::ProxyBody>, bool),
    /// Answer with this status, then close.
    Refuse(StatusCode),
    /// End of stream, timeout or stop between requests: close without a word.
    Close,
}

impl Serve<'_> {
    /// Serves a connection until it closes, it fails, or the listener stops.
    pub(crate) async fn run<I>(mut self, mut io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut buf = BytesMut::new();
        if !self.h2 {
            let mut out = Vec::new();
            let mut spans = Vec::new();
            let mut first = true;
            // One timer per connection, moved only when a deadline comes earlier than it:
            // arming a timer per request costs more than an early wake-up now and then.
            let mut timer = Box::pin(tokio::time::sleep(self.header_timeout));
            loop {
                let next = self.next_request(&mut io, &mut buf, &mut spans, &mut timer, first).await;
                first = false;
                let (req, client_close) = match next {
                    Next::Request(req, close) => (req, close),
                    Next::Handoff => break,
                    Next::Refuse(status) => {
                        // The head may not say which method: counted as `OTHER`.
                        self.conn.count_refusal(status, metrics::METHOD_OTHER);
                        if bounded(self.send_timeout, refuse(&mut io, &mut out, status)).await.is_ok() {
                            linger(&mut io).await;
                        }
                        return;
                    }
                    Next::Close => return,
                    Next::Answer(response, head_request) => {
                        let answer = Answer { head_request, close: true, send_timeout: self.send_timeout };
                        if write_response(&mut io, &mut out, response, answer).await.is_ok()
                            && bounded(self.send_timeout, io.shutdown()).await.is_ok()
                        {
                            linger(&mut io).await;
                        }
                        return;
                    }
                };
                let head_request = req.method() == Method::HEAD;
                // Boxed: the request future is a few KB, and it would otherwise live in
                // every connection's task, idle ones included.
                let response = match Box::pin(self.conn.clone().handle(req)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                let close = client_close || *self.stop.borrow();
                let answer = Answer { head_request, close, send_timeout: self.send_timeout };
                match write_response(&mut io, &mut out, response, answer).await {
                    Ok(true) if !*self.stop.borrow() => {}
                    Ok(_) => {
                        if bounded(self.send_timeout, io.shutdown()).await.is_ok() {
                            linger(&mut io).await;
                        }
                        return;
                    }
                    Err(error) => {
                        debug!(%error, "response not sent whole");
                        return;
                    }
                }
                if out.capacity() > 8 * READ_SIZE {
                    out = Vec::new();
                }
            }
        }
        handoff::serve(self.builder, self.conn, self.idle_timeout, self.stop, io, buf.freeze()).await;
    }

    /// Reads until a whole request head is buffered, and decides who serves it.
    async fn next_request<I>(
        &mut self,
        io: &mut I,
        buf: &mut BytesMut,
        spans: &mut Vec<Span>,
        timer: &mut Pin<Box<tokio::time::Sleep>>,
        first: bool,
    ) -> Next
    where
        I: AsyncRead + Unpin,
    {
        let now = tokio::time::Instant::now();
        // The first head has the header deadline from the accept; later ones are idle
        // until their first byte.
        let mut deadline = if first || !buf.is_empty() { now + self.header_timeout } else { now + self.idle_timeout };
        let mut idle = !first && buf.is_empty();
        // How much of `buf` the last incomplete parse saw: a head is parsed again only
        // once a new line has arrived, so a client trickling a large head byte by byte
        // costs one parse per line, not one per byte.
        let mut parsed_up_to = 0;
        // A whole head whose body is still arriving: the bytes that head and body need,
        // and the wait for them.
        let mut wanted = 0;
        let mut body: Option<Box<BodyWait>> = None;
        loop {
            let new_line = buf.get(parsed_up_to..).is_some_and(|fresh| fresh.contains(&b'\n'));
            let ready = if wanted > 0 { buf.len() >= wanted } else { parsed_up_to == 0 || new_line };
            if !buf.is_empty() && ready {
                if first && buf.starts_with(H2_PREFACE) {
                    return Next::Handoff;
                }
                if !(first && H2_PREFACE.starts_with(buf)) {
                    parsed_up_to = buf.len();
                    match parse_request(buf, spans) {
                        Parsed::Complete(req, close) => return Next::Request(req, close),
                        Parsed::Handoff => return Next::Handoff,
                        Parsed::Partial => {}
                        Parsed::Body(bytes) => {
                            wanted = bytes;
                            let wait = body.get_or_insert_with(|| BodyWait::start(&self.conn, buf));
                            deadline = tokio::time::Instant::now() + wait.timeout();
                        }
                        Parsed::Invalid(status) => return Next::Refuse(status),
                    }
                }
            }
            if wanted == 0 && buf.len() >= MAX_HEAD_BYTES {
                return Next::Refuse(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            }
            // Room for the rest of a body being waited for, else for a read of a head.
            let room = wanted.saturating_sub(buf.len()).max(READ_SIZE / 2);
            if buf.capacity() - buf.len() < room {
                buf.reserve(room.max(READ_SIZE));
            }
            // Between requests a stopping listener closes at once; a head already begun
            // is read and answered.
            let between = buf.is_empty();
            if timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
            }
            let read = tokio::select! {
                biased;
                read = tokio_util::io::read_buf(io, buf) => read,
                () = timer.as_mut() => {
                    if tokio::time::Instant::now() >= deadline {
                        return match body {
                            Some(wait) => {
                                let (response, head_request) = wait.answer(&self.conn, buf.len());
                                Next::Answer(response, head_request)
                            }
                            None => Next::Close,
                        };
                    }
                    timer.as_mut().reset(deadline);
                    continue;
                }
                () = stopped(&mut self.stop), if between => return Next::Close,
            };
            match read {
                Ok(0) | Err(_) => return Next::Close,
                Ok(_) if idle => {
                    idle = false;
                    deadline = tokio::time::Instant::now() + self.header_timeout;
                }
                Ok(_) => {
                    if let Some(wait) = &body {
                        deadline = tokio::time::Instant::now() + wait.timeout();
                    }
                }
            }
        }
    }
}

/// Where a header's name and value lie in the head.
type Span = (HeaderName, usize, usize);

#[allow(clippy::large_enum_variant)] // as for `Next`
enum Parsed {
    Complete(Request<crate::http::body::InnerBody>, bool),
    Partial,
    /// The head is whole; its body is not: wait until this many bytes are buffered.
    Body(usize),
    Handoff,
    Invalid(StatusCode),
}

/// A `Content-Length` value: one plain decimal number (RFC 9110 section 8.6); `None` for
/// anything else (a sign, a list, inner spaces, more than 64 bits).
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        let digit = d.is_ascii_digit().then(|| u64::from(d - b'0'))?;
        n.checked_mul(10)?.checked_add(digit)
    })
}

/// Parses the head at the front of `buf`; a request served here is taken off it whole
/// (head and body).
fn parse_request(buf: &mut BytesMut, spans: &mut Vec<Span>) -> Parsed {
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => {
            return Parsed::Invalid(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Invalid(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(_) => return Parsed::Invalid(StatusCode::BAD_REQUEST),
    };
    if parsed.version != Some(1) {
        // HTTP/1.0 keep-alive rules and close-delimited answers: hyper's.
        return Parsed::Handoff;
    }
    let Some(method) = parsed.method.and_then(|m| Method::from_bytes(m.as_bytes()).ok()) else {
        return Parsed::Invalid(StatusCode::BAD_REQUEST);
    };
    let base = buf.as_ptr() as usize;
    let Some(path) = parsed.path else { return Parsed::Invalid(StatusCode::BAD_REQUEST) };
    let path_at = path.as_ptr() as usize - base;
    let path_len = path.len();
    let mut close = false;
    let mut body_len: Option<u64> = None;
    // Every line is looked at before deciding who serves the request, so that the framing
    // rules (`admission`) hold whoever does.
    let mut handoff = false;
    let (mut hosts, mut lengths, mut codings, mut chunked) = (0u32, 0u32, 0u32, true);
    spans.clear();
    for h in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::Invalid(StatusCode::BAD_REQUEST);
        };
        if name == header::HOST {
            hosts += 1;
        } else if name == header::CONTENT_LENGTH {
            lengths += 1;
            // RFC 9112 section 6.3: an invalid length, or two that differ, is a 400. One
            // plain length small enough to buffer is served here; the same one repeated,
            // or a large one, is hyper's to stream.
            let Some(n) = content_length(h.value) else { return Parsed::Invalid(StatusCode::BAD_REQUEST) };
            match body_len {
                Some(first) if first != n => return Parsed::Invalid(StatusCode::BAD_REQUEST),
                Some(_) => handoff = true,
                None => handoff |= n > MAX_INLINE_BODY as u64,
            }
            body_len = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            codings += 1;
            chunked &= admission::chunked_alone(h.value);
        } else if name == header::UPGRADE || name == header::EXPECT {
            handoff = true;
        } else if name == header::CONNECTION {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    handoff = true;
                }
            }
        }
        spans.push((name, h.value.as_ptr() as usize - base, h.value.len()));
    }
    // RFC 9112 section 3.2: exactly one Host on HTTP/1.1 (the only version parsed here).
    if hosts != 1 {
        return Parsed::Invalid(StatusCode::BAD_REQUEST);
    }
    if codings > 0 {
        // One line, `chunked` alone, and no length beside it; the body is hyper's to read
        // (ahead, see `admission`).
        if codings > 1 || !chunked || lengths > 0 {
            return Parsed::Invalid(StatusCode::BAD_REQUEST);
        }
        return Parsed::Handoff;
    }
    if handoff {
        return Parsed::Handoff;
    }
    // At most `MAX_INLINE_BODY` here.
    let body_len = body_len.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX));
    if buf.len() - len < body_len {
        return Parsed::Body(len + body_len);
    }
    let head = buf.split_to(len).freeze();
    let body = if body_len == 0 { Full::default() } else { Full::new(buf.split_to(body_len).freeze()) };
    let Some(target) = head.get(path_at..path_at + path_len) else { return Parsed::Invalid(StatusCode::BAD_REQUEST) };
    let Ok(uri) = Uri::from_maybe_shared(head.slice_ref(target)) else {
        return Parsed::Invalid(StatusCode::BAD_REQUEST);
    };
    let mut req = Request::new(Either::Right(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = spare::take(spans.len() + crate::http::headers::FORWARDING_HEADROOM);
    let headers = req.headers_mut();
    for (name, at, len) in spans.drain(..) {
        let Some(value) = head.get(at..at + len) else { return Parsed::Invalid(StatusCode::BAD_REQUEST) };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice_ref(value)) else {
            return Parsed::Invalid(StatusCode::BAD_REQUEST);
        };
        headers.append(name, value);
    }
    Parsed::Complete(req, close)
}

/// How a response body is delimited on the wire.
#[derive(Clone, Copy)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// How an answer is written.
#[derive(Clone, Copy, Debug)]
struct Answer {
    /// It answers a HEAD request: no body.
    head_request: bool,
    /// The connection closes after it.
    close: bool,
    send_timeout: Duration,
}

/// Writes a response; `Ok(true)` when the connection can take another request.
async fn write_response<I, B>(
    io: &mut I,
    out: &mut Vec<u8>,
    response: Response<B>,
    answer: Answer,
) -> std::io::Result<bool>
where
    I: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::support::BoxError>,
{
    let Answer { head_request, close, send_timeout: limit } = answer;
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let headers = &parts.headers;
    let mut close = close
        || headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")));
    let bodiless_status = status.is_informational() || status == StatusCode::NO_CONTENT;
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let hint = body.size_hint().exact();
    let (framing, add_length) = if bodiless_status || status == StatusCode::NOT_MODIFIED {
        (Framing::None, None)
    } else if head_request {
        (Framing::None, if announced.is_none() { hint.filter(|n| *n > 0) } else { None })
    } else if let Some(n) = announced {
        (Framing::Length(n), None)
    } else if let Some(n) = hint {
        (Framing::Length(n), Some(n))
    } else {
        (Framing::Chunked, None)
    };

    status_line(out, status);
    for (name, value) in headers {
        // Framing is this connection's own: a length is written only when it frames
        // the body, and transfer codings never pass.
        if name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && (announced.is_none() || bodiless_status))
            || (name == header::CONNECTION && close)
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = add_length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if matches!(framing, Framing::Chunked) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    spare::give(parts.headers);

    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut queue = Queue { out, segments: Vec::new(), own_from: 0, data_len: 0 };
    if !matches!(framing, Framing::None) && !body.is_end_stream() {
        let mut body = Pin::new(&mut body);
        loop {
            // Frames that are ready go out together; one that is not ready yet must not
            // hold back what is queued (the head of a streamed answer, earlier chunks).
            let polled = std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
            let frame = match polled {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    bounded(limit, queue.write(io)).await?;
                    bounded(limit, io.flush()).await?;
                    std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(error)) => return Err(std::io::Error::other(error)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    // Trailers: not sent over HTTP/1.1.
                    Err(_) => continue,
                },
            };
            if data.is_empty() {
                continue;
            }
            match framing {
                Framing::Length(_) => {
                    let Some(rest) = left.checked_sub(data.len() as u64) else {
                        return Err(std::io::Error::other("response body longer than its Content-Length"));
                    };
                    left = rest;
                    queue.data(data);
                }
                Framing::Chunked => {
                    let _ = write!(queue.out, "{:x}\r\n", data.len());
                    queue.data(data);
                    queue.out.extend_from_slice(b"\r\n");
                }
                Framing::None => {}
            }
            if queue.len() >= MAX_QUEUED {
                bounded(limit, queue.write(io)).await?;
            }
            if body.is_end_stream() {
                break;
            }
        }
    }
    if matches!(framing, Framing::Chunked) {
        queue.out.extend_from_slice(b"0\r\n\r\n");
    }
    if left > 0 {
        // The client waits for bytes that will not come: only a close tells it.
        close = true;
        debug!(missing = left, "response body shorter than its Content-Length");
    }
    bounded(limit, queue.write(io)).await?;
    bounded(limit, io.flush()).await?;
    drop(body);
    Ok(!close)
}

/// A write to the client that cannot finish at once gets `limit` (the listener's
/// `send_timeout`, as nginx's): a client that stops reading is cut off instead of holding
/// its connection, and the upstream's, forever. Writes that finish at once arm no timer.
async fn bounded<T>(
    limit: Duration,
    write: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    let mut write = std::pin::pin!(write);
    if let Poll::Ready(done) = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        return done;
    }
    match tokio::time::timeout(limit, write).await {
        Ok(done) => done,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client took no bytes of the answer in time")),
    }
}

/// What is ready for the client and not written yet: the bytes of `out` (heads, chunk
/// lines, small bodies copied) and large body chunks, in order, written with one `writev`.
struct Queue<'a> {
    out: &'a mut Vec<u8>,
    segments: Vec<Segment>,
    /// Where the part of `out` that no segment covers yet starts.
    own_from: usize,
    data_len: usize,
}

enum Segment {
    /// A range of `out`.
    Own(usize, usize),
    Data(Bytes),
}

impl Queue<'_> {
    /// Queues a body chunk: copied into `out` when small, else kept as it is.
    fn data(&mut self, data: Bytes) {
        if data.len() <= COPY_LIMIT {
            self.out.extend_from_slice(&data);
            return;
        }
        if self.out.len() > self.own_from {
            self.segments.push(Segment::Own(self.own_from, self.out.len()));
            self.own_from = self.out.len();
        }
        self.data_len += data.len();
        self.segments.push(Segment::Data(data));
    }

    fn len(&self) -> usize {
        self.out.len() + self.data_len
    }

    /// Writes everything queued.
    async fn write<I: AsyncWrite + Unpin>(&mut self, io: &mut I) -> std::io::Result<()> {
        if self.segments.is_empty() {
            if !self.out.is_empty() {
                io.write_all(self.out).await?;
            }
        } else {
            let mut slices: Vec<IoSlice<'_>> = self
                .segments
                .iter()
                .map(|s| match s {
                    Segment::Own(from, to) => IoSlice::new(self.out.get(*from..*to).unwrap_or_default()),
                    Segment::Data(data) => IoSlice::new(data),
                })
                .collect();
            slices.push(IoSlice::new(self.out.get(self.own_from..).unwrap_or_default()));
            let mut slices = &mut slices[..];
            while !slices.is_empty() {
                let n = io.write_vectored(slices).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                IoSlice::advance_slices(&mut slices, n);
            }
        }
        self.out.clear();
        self.segments.clear();
        self.own_from = 0;
        self.data_len = 0;
        Ok(())
    }
}

/// Starts `out` afresh with the status line of `status`.
fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The answer to a head that cannot be served; the connection closes after it.
async fn refuse<I: AsyncWrite + Unpin>(io: &mut I, out: &mut Vec<u8>, status: StatusCode) -> std::io::Result<()> {
    status_line(out, status);
    out.extend_from_slice(b"content-length: 0\r\nconnection: close\r\ndate: ");
    http_date(out);
    out.extend_from_slice(b"\r\n\r\n");
    io.write_all(out).await?;
    io.shutdown().await
}

/// After the last answer of a connection and the end of its write side: reads what the
/// client may still be sending (pipelined requests, the rest of an oversized head), a
/// bounded amount for a bounded time, so that closing with unread bytes does not reset
/// the connection before the client has read the answer (nginx's lingering close).
async fn linger<I: AsyncRead + Unpin>(io: &mut I) {
    const MAX_BYTES: usize = 256 * 1024;
    const MAX_TIME: Duration = Duration::from_secs(1);
    let drain = async {
        let mut sink = [0u8; 2048];
        let mut total = 0;
        while total < MAX_BYTES {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(MAX_TIME, drain).await;
}

/// Appends the current time as an HTTP date; formatted once a second per thread.
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let formatted = httpdate::fmt_http_date(now);
            if let Ok(bytes) = <[u8; 29]>::try_from(formatted.as_bytes()) {
                *cached = (secs, bytes);
            }
        }
        out.extend_from_slice(&cached.1);
    });
}

/// For the criterion benches: the number of headers of a head served inline.
pub(crate) fn bench_parse(head: &[u8]) -> Option<usize> {
    match parse_request(&mut BytesMut::from(head), &mut Vec::new()) {
        Parsed::Complete(req, _) => Some(req.headers().len()),
        _ => None,
    }
}

/// For the criterion benches: writes `response` into `wire` as a keep-alive answer.
pub(crate) fn bench_write(response: Response<Full<Bytes>>, wire: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
    let answer = Answer { head_request: false, close: false, send_timeout: Duration::from_secs(60) };
    let written = std::pin::pin!(write_response(wire, out, response, answer));
    // Writing into a Vec never waits: one poll finishes it.
    matches!(written.poll(&mut Context::from_waker(std::task::Waker::noop())), Poll::Ready(Ok(true)))
}

#[cfg(test)]
mod tests;
