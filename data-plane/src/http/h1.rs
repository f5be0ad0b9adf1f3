//! HTTP/1.1 exchanges with an upstream, run inline by the task of the request they serve,
//! for requests without a body (most GET, HEAD and DELETE requests).
//!
//! Why not hyper's client for these: a hyper client connection is a task of its own, fed
//! through a channel. Every exchange then crosses tasks twice (the request to the
//! connection task, the response head and each body chunk back through a oneshot and a
//! body channel), and every connection carries the channel's blocks, a task, and 8 KiB
//! read and write buffers: about 35 KiB per idle upstream connection, measured with
//! massif. Here the request's task writes the head and reads the response itself, and the
//! response body reads straight from the socket; a connection is a socket and one read
//! buffer. Requests with a body, upgrades and HTTP/2 still go through hyper, which
//! overlaps sending a body with reading an early response.
//!
//! Parsing uses `httparse` (as hyper does); framing follows RFC 9112 section 6: no body
//! for HEAD, 1xx, 204 and 304; `Transfer-Encoding` over `Content-Length` (and then the
//! connection is not reused); differing `Content-Length` values refused; a body without
//! either ends with the connection. The chunked decoder below is strict and bounded.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Response, StatusCode, Version, header};
use hyper::body::{Body, Frame, SizeHint};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::BoxError;

/// A response head may take this many bytes, and this many header lines.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// What a read asks the socket for at least.
const READ_SIZE: usize = 8 * 1024;
/// A request body up to this size is copied behind the head (one write); a larger one
/// goes with it in a vectored write.
const COPY_LIMIT: usize = 4 * 1024;
/// A head read goes into what is left of the buffer when at least this much is left.
const MIN_READ: usize = 1024;
/// The most a body read asks for at once.
const MAX_BODY_READ: usize = 64 * 1024;
/// A chunk-size line (extensions included) and the trailer section are bounded too.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

/// The socket of an upstream connection (TLS or not), as the connector returns it.
pub(crate) type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// An HTTP/1.1 connection to an upstream, between exchanges.
pub(crate) struct Conn {
    io: Io,
    /// Received and not yet consumed.
    buf: BytesMut,
    /// The request head is written here; kept to reuse its allocation.
    head: Vec<u8>,
}

impl Conn {
    /// Boxed: a TLS session makes a connection about 1 KiB, and connections move between
    /// the pool, the exchange and the response body.
    pub(crate) fn new(io: Io) -> Box<Conn> {
        Box::new(Conn { io, buf: BytesMut::with_capacity(READ_SIZE), head: Vec::with_capacity(512) })
    }

    /// Whether an idle connection can take a request: the upstream has not closed it and
    /// sent nothing unasked. Costs no system call while the socket has nothing to read
    /// (tokio remembers that it was drained).
    pub(crate) fn is_usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut read = tokio::io::ReadBuf::new(&mut probe);
        matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut read), Poll::Pending)
    }
}

/// Why an exchange failed; `nothing_received` tells a retry on a new connection apart.
#[derive(Debug)]
pub(crate) struct ExchangeError {
    pub(crate) error: BoxError,
    /// The upstream sent no byte of a response (it may have closed an idle connection).
    pub(crate) nothing_received: bool,
}

impl ExchangeError {
    fn new(error: impl Into<BoxError>, nothing_received: bool) -> ExchangeError {
        ExchangeError { error: error.into(), nothing_received }
    }
}

/// How the body of a response is delimited, and how much of it is left.
#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk: bytes left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines, bytes seen so far.
    Trailers(usize),
}

/// Sends a request (origin-form URI, `Host` set) with its body, if any, and reads the
/// response head. The response body is left on the connection, for [`ResponseBody`] to
/// read.
pub(crate) async fn exchange(
    conn: &mut Conn,
    parts: &http::request::Parts,
    body: Option<&[u8]>,
) -> Result<(Response<()>, BodyShape), ExchangeError> {
    encode_head(&mut conn.head, parts, body.map(<[u8]>::len));
    let written = match body {
        Some(body) if body.len() > COPY_LIMIT => write_two(&mut conn.io, &conn.head, body).await,
        Some(body) => {
            conn.head.extend_from_slice(body);
            conn.io.write_all(&conn.head).await
        }
        None => conn.io.write_all(&conn.head).await,
    };
    if let Err(e) = written {
        return Err(ExchangeError::new(e, true));
    }
    let head_request = parts.method == Method::HEAD;
    // Any byte of an answer (an interim response included) rules out sending it again.
    let mut received = false;
    loop {
        let parsed = loop {
            match parse_head(&mut conn.buf) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) if conn.buf.len() >= MAX_HEAD_BYTES => {
                    return Err(ExchangeError::new("response head too large", false));
                }
                Ok(None) => {}
                Err(e) => return Err(ExchangeError::new(e, false)),
            }
            // The whole buffer again when nothing else holds it (the usual case); when the
            // previous response still does (HTTP/2 clients' frames wait in the connection's
            // queue), what is left of it while a head fits, rather than a new 8 KiB block
            // per response.
            if !conn.buf.try_reclaim(READ_SIZE) && conn.buf.capacity() - conn.buf.len() < MIN_READ {
                conn.buf.reserve(READ_SIZE);
            }
            match tokio_util::io::read_buf(&mut conn.io, &mut conn.buf).await {
                Ok(0) => return Err(ExchangeError::new("upstream closed the connection", !received)),
                Ok(_) => received = true,
                Err(e) => return Err(ExchangeError::new(e, !received)),
            }
        };
        let (response, reusable_head) = parsed;
        let status = response.status();
        // Interim responses (100 Continue, 103 Early Hints) are not forwarded; 101 only
        // answers upgrade requests, which never come here.
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(ExchangeError::new("unexpected 101 Switching Protocols", false));
            }
            continue;
        }
        let shape = shape_of(&response, head_request, reusable_head).map_err(|e| ExchangeError::new(e, false))?;
        return Ok((response, shape));
    }
}

/// The framing of a response's body, and whether the connection can be reused after it.
#[derive(Debug)]
pub(crate) struct BodyShape {
    framing: Framing,
    reusable: bool,
}

/// Writes `head` then `body` with vectored writes (one system call when the socket takes
/// both).
async fn write_two(io: &mut Io, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    let mut slices = [std::io::IoSlice::new(head), std::io::IoSlice::new(body)];
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        let n = io.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// The request head; `body_len` is the length of a body sent with it, framed by a
/// `Content-Length` of this connection's own.
fn encode_head(out: &mut Vec<u8>, parts: &http::request::Parts, body_len: Option<usize>) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if body_len.is_some() && name == header::CONTENT_LENGTH {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let sends_content = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    match body_len {
        // No content on a method that does not expect any: no length either (RFC 9110
        // section 8.6), as a client would send it.
        Some(0) if !sends_content => {}
        Some(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        // Servers may refuse a POST, PUT or PATCH without a length (411).
        None if sends_content && !parts.headers.contains_key(header::CONTENT_LENGTH) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        None => {}
    }
    out.extend_from_slice(b"\r\n");
}

type Parsed = (Response<()>, bool);

/// A complete response head off the front of `buf`, or `None` when more bytes are needed.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Parsed>, BoxError> {
    // Uninitialised slots: an initialised array would be written whole on every parse.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response head: {e}").into()),
    };
    let code = parsed.code.ok_or("response without a status")?;
    let status = StatusCode::from_u16(code).map_err(|_| "invalid status code")?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // Offsets of names and values in the head, so that values can share its bytes.
    let base = buf.as_ptr() as usize;
    let mut spans: Vec<(usize, usize, usize, usize)> = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        spans.push((name, h.name.len(), value, h.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = crate::support::spare::take(spans.len());
    let mut close = version == Version::HTTP_10;
    for (name_at, name_len, value_at, value_len) in spans {
        let name = head.get(name_at..name_at + name_len).ok_or("invalid header name")?;
        let name = HeaderName::from_bytes(name).map_err(|_| "invalid header name")?;
        if value_at + value_len > head.len() {
            return Err("invalid header value".into());
        }
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
            .map_err(|_| "invalid header value")?;
        if name == header::CONNECTION {
            let tokens = value.to_str().unwrap_or("");
            for token in tokens.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && version == Version::HTTP_10 {
                    close = false;
                }
            }
        }
        headers.append(name, value);
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some((response, !close)))
}

/// RFC 9112 section 6.3.
fn shape_of(response: &Response<()>, head_request: bool, reusable: bool) -> Result<BodyShape, BoxError> {
    let status = response.status();
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(BodyShape { framing: Framing::Done, reusable });
    }
    let headers = response.headers();
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        // With a Content-Length too, the message may be an attempt at smuggling: use it,
        // then close.
        let reusable = reusable && chunked && !headers.contains_key(header::CONTENT_LENGTH);
        let framing = if chunked { Framing::Chunked(Chunked::Size) } else { Framing::Close };
        return Ok(BodyShape { framing, reusable: reusable && chunked });
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.to_str().map_err(|_| "invalid Content-Length")?.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err("invalid Content-Length".into());
            }
            let n: u64 = part.parse().map_err(|_| "invalid Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values".into());
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => BodyShape { framing: Framing::Done, reusable },
        Some(n) => BodyShape { framing: Framing::Length(n), reusable },
        None => BodyShape { framing: Framing::Close, reusable: false },
    })
}

/// A response body read from the upstream connection as the client takes it. When the
/// body ends, the connection is handed to `release` (if it can be reused); a body dropped
/// before its end closes the connection.
pub(crate) struct ResponseBody {
    conn: Option<Box<Conn>>,
    framing: Framing,
    reusable: bool,
    home: Option<Home>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").field("framing", &self.framing).finish()
    }
}

impl ResponseBody {
    pub(crate) fn new(conn: Box<Conn>, shape: BodyShape, home: Option<Home>) -> ResponseBody {
        let mut body = ResponseBody { conn: Some(conn), framing: shape.framing, reusable: shape.reusable, home };
        if matches!(body.framing, Framing::Done) {
            body.finish();
        }
        body
    }

    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take())
            && self.reusable
        {
            home.put(conn);
        }
    }

    /// Reads more from the socket into the buffer; `Ok(false)` at end of stream. Room is
    /// made for what the framing says is left (a body of known length is read in as few
    /// calls as the socket allows, up to `MAX_BODY_READ`), else for 16 KiB.
    fn poll_fill(conn: &mut Conn, framing: &Framing, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let want = match framing {
            Framing::Length(left) => (*left).min(MAX_BODY_READ as u64) as usize,
            _ => 2 * READ_SIZE,
        };
        if conn.buf.capacity() - conn.buf.len() < want {
            conn.buf.reserve(want.max(READ_SIZE));
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf) {
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n > 0)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = (conn.buf.len() as u64).min(left) as usize;
                        let data = conn.buf.split_to(n).freeze();
                        this.framing = Framing::Length(left - n as u64);
                        if left == n as u64 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(state) => {
                    let before = conn.buf.len();
                    match decode_chunked(&mut conn.buf, state) {
                        Err(e) => {
                            this.conn = None;
                            return Poll::Ready(Some(Err(e)));
                        }
                        Ok((next, data)) => {
                            let consumed = conn.buf.len() != before;
                            this.framing = Framing::Chunked(next);
                            if let Some(data) = data {
                                return Poll::Ready(Some(Ok(Frame::data(data))));
                            }
                            if matches!(next, Chunked::Trailers(usize::MAX)) {
                                this.finish();
                                return Poll::Ready(None);
                            }
                            if consumed {
                                continue;
                            }
                        }
                    }
                }
            }
            // Nothing buffered for the current state: read more.
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match Self::poll_fill(conn, &this.framing, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => {
                    this.conn = None;
                    return match this.framing {
                        Framing::Close => {
                            this.framing = Framing::Done;
                            Poll::Ready(None)
                        }
                        _ => Poll::Ready(Some(Err("upstream closed the connection mid-body".into()))),
                    };
                }
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// One step of the chunked decoder over what `buf` holds: the next state and the data
/// decoded, if any. `Trailers(usize::MAX)` means the message is complete. Consumes only
/// whole syntactic units; a partial line waits for more bytes.
fn decode_chunked(buf: &mut BytesMut, state: Chunked) -> Result<(Chunked, Option<Bytes>), BoxError> {
    match state {
        Chunked::Size => {
            let Some(end) = find_crlf(buf) else {
                if buf.len() > MAX_CHUNK_LINE {
                    return Err("chunk size line too long".into());
                }
                return Ok((state, None));
            };
            if end > MAX_CHUNK_LINE {
                return Err("chunk size line too long".into());
            }
            let line = buf.get(..end).unwrap_or_default();
            // chunk-size [ chunk-ext ]: the size is hex digits up to `;` or whitespace.
            let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
            if digits == 0 || digits > 15 {
                return Err("invalid chunk size".into());
            }
            let (hex, rest) = line.split_at(digits);
            if rest.first().is_some_and(|b| !matches!(b, b';' | b' ' | b'\t')) {
                return Err("invalid chunk size".into());
            }
            let size =
                u64::from_str_radix(std::str::from_utf8(hex).unwrap_or("x"), 16).map_err(|_| "invalid chunk size")?;
            buf.advance(end + 2);
            Ok((if size == 0 { Chunked::Trailers(0) } else { Chunked::Data(size) }, None))
        }
        Chunked::Data(left) => {
            if buf.is_empty() {
                return Ok((state, None));
            }
            let n = (buf.len() as u64).min(left) as usize;
            let data = buf.split_to(n).freeze();
            let next = if left == n as u64 { Chunked::DataEnd } else { Chunked::Data(left - n as u64) };
            Ok((next, Some(data)))
        }
        Chunked::DataEnd => {
            if buf.len() < 2 {
                return Ok((state, None));
            }
            if !buf.starts_with(b"\r\n") {
                return Err("missing CRLF after chunk data".into());
            }
            buf.advance(2);
            Ok((Chunked::Size, None))
        }
        Chunked::Trailers(seen) => {
            // Trailer fields are read and dropped (as nginx does); an empty line ends them.
            let Some(end) = find_crlf(buf) else {
                if seen + buf.len() > MAX_TRAILERS {
                    return Err("trailers too large".into());
                }
                return Ok((state, None));
            };
            buf.advance(end + 2);
            if end == 0 {
                return Ok((Chunked::Trailers(usize::MAX), None));
            }
            let seen = seen + end + 2;
            if seen > MAX_TRAILERS {
                return Err("trailers too large".into());
            }
            Ok((Chunked::Trailers(seen), None))
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// The idle sockets of one upstream endpoint for inline exchanges, the most recently used
/// at the back. The connection pool keeps one per endpoint and takes from it; a response
/// body puts its socket back through its [`Home`] once read whole, so this codec never
/// knows the pool.
pub(crate) struct IdleSockets {
    sockets: std::sync::Mutex<std::collections::VecDeque<IdleSocket>>,
    idle_timeout: std::time::Duration,
}

struct IdleSocket {
    conn: Box<Conn>,
    since: std::time::Instant,
}

impl IdleSockets {
    pub(crate) fn new(idle_timeout: std::time::Duration) -> IdleSockets {
        IdleSockets { sockets: std::sync::Mutex::default(), idle_timeout }
    }

    /// Where a response that starts now puts its socket back.
    pub(crate) fn home(self: &std::sync::Arc<Self>, since: std::time::Instant) -> Home {
        Home { list: self.clone(), since }
    }

    /// The newest idle socket the upstream has not closed.
    pub(crate) fn take(&self, now: std::time::Instant) -> Option<Box<Conn>> {
        let mut idle = self.sockets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(mut entry) = idle.pop_back() {
            if now.saturating_duration_since(entry.since) <= self.idle_timeout && entry.conn.is_usable() {
                return Some(entry.conn);
            }
        }
        None
    }

    /// Drops sockets idle too long or closed by the upstream.
    pub(crate) fn sweep(&self, now: std::time::Instant) {
        let mut idle = self.sockets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain_mut(|i| now.saturating_duration_since(i.since) <= self.idle_timeout && i.conn.is_usable());
    }
}

/// Where a socket goes back once the response it carried has been read whole.
pub(crate) struct Home {
    list: std::sync::Arc<IdleSockets>,
    since: std::time::Instant,
}

impl Home {
    pub(crate) fn put(self, conn: Box<Conn>) {
        let mut idle = self.list.sockets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.front().is_some_and(|i| self.since.saturating_duration_since(i.since) > self.list.idle_timeout) {
            idle.pop_front();
        }
        idle.push_back(IdleSocket { conn, since: self.since });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split: usize) -> Result<Vec<u8>, BoxError> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut state = Chunked::Size;
        for piece in input.chunks(split.max(1)) {
            buf.extend_from_slice(piece);
            // As the body does: decode while the buffer shrinks, then wait for more.
            loop {
                let before = buf.len();
                let (next, data) = decode_chunked(&mut buf, state)?;
                state = next;
                if let Some(d) = data {
                    out.extend_from_slice(&d);
                }
                if matches!(state, Chunked::Trailers(usize::MAX)) {
                    return Ok(out);
                }
                if buf.len() == before {
                    break;
                }
            }
        }
        Err("incomplete".into())
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_boundaries() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in [1, 2, 3, 7, 64] {
            assert_eq!(decode_all(body, split).unwrap(), b"hello, world", "split {split}");
        }
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"x\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"5x\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(decode_all(bad, 64).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_all(&long, 64).is_err());
    }

    fn shape(head: &str, head_request: bool) -> Result<BodyShape, BoxError> {
        let mut buf = BytesMut::from(head);
        let (response, reusable) = parse_head(&mut buf)?.expect("complete head");
        shape_of(&response, head_request, reusable)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let s = shape("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", false).unwrap();
        assert!(matches!(s.framing, Framing::Length(12)) && s.reusable);
        let s = shape("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", true).unwrap();
        assert!(matches!(s.framing, Framing::Done) && s.reusable, "HEAD has no body");
        let s = shape("HTTP/1.1 304 Not Modified\r\ncontent-length: 12\r\n\r\n", false).unwrap();
        assert!(matches!(s.framing, Framing::Done));
        let s = shape("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n", false).unwrap();
        assert!(matches!(s.framing, Framing::Chunked(_)) && s.reusable);
        let s = shape("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n", false).unwrap();
        assert!(matches!(s.framing, Framing::Chunked(_)) && !s.reusable, "TE and CL: used once, closed");
        let s = shape("HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert!(matches!(s.framing, Framing::Close) && !s.reusable);
        let s = shape("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\n", false).unwrap();
        assert!(!s.reusable);
        let s = shape("HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\n", false).unwrap();
        assert!(!s.reusable, "HTTP/1.0 closes unless told otherwise");
        let s = shape("HTTP/1.0 200 OK\r\ncontent-length: 3\r\nconnection: keep-alive\r\n\r\n", false).unwrap();
        assert!(s.reusable);
        let s = shape("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n", false).unwrap();
        assert!(matches!(s.framing, Framing::Length(3)));
        assert!(shape("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n", false).is_err());
        assert!(shape("HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n", false).is_err());
        assert!(shape("HTTP/1.1 200 OK\r\nbad header\r\n\r\n", false).is_err());
    }

    #[test]
    fn a_partial_head_waits_and_header_values_share_the_buffer() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nx-a: 1\r\n");
        assert!(parse_head(&mut buf).unwrap().is_none());
        buf.extend_from_slice(b"x-b: two\r\n\r\nBODY");
        let (response, _) = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(response.headers()["x-b"], "two");
        assert_eq!(&buf[..], b"BODY", "the body stays in the buffer");
    }

    #[test]
    fn request_heads_are_origin_form_with_a_length_for_bodiless_posts() {
        let mut out = Vec::new();
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = Method::POST;
        parts.uri = "/a?b=1".parse().unwrap();
        parts.headers.insert(header::HOST, HeaderValue::from_static("up"));
        encode_head(&mut out, &parts, None);
        assert_eq!(out, b"POST /a?b=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 0\r\n\r\n");
        // A body sent with the head is framed by its own length, whatever the header said.
        parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        encode_head(&mut out, &parts, Some(5));
        assert_eq!(out, b"POST /a?b=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 5\r\n\r\n");
        // An empty body: a POST still says so, a GET says nothing of a length.
        encode_head(&mut out, &parts, Some(0));
        assert_eq!(out, b"POST /a?b=1 HTTP/1.1\r\nhost: up\r\ncontent-length: 0\r\n\r\n");
        parts.method = Method::GET;
        encode_head(&mut out, &parts, Some(0));
        assert_eq!(out, b"GET /a?b=1 HTTP/1.1\r\nhost: up\r\n\r\n");
    }
}
