//! The inline server's parsing, framing and writing, without sockets.

use std::collections::VecDeque;

use hyper::body::{Frame, SizeHint};

use super::*;

const SEND: Duration = Duration::from_secs(60);

fn parse(bytes: &[u8]) -> (Parsed, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let parsed = parse_request(&mut buf, &mut Vec::new());
    (parsed, buf)
}

#[test]
fn a_bodiless_request_is_parsed_and_a_pipelined_one_left_in_the_buffer() {
    let (parsed, rest) =
        parse(b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nX-Two: 1\r\nX-Two: 2\r\n\r\nGET /next HTTP/1.1\r\n");
    let Parsed::Complete(req, close) = parsed else { panic!("not complete") };
    assert!(!close);
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri(), "/a?b=c");
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.headers()["host"], "example.com");
    assert_eq!(req.headers().get_all("x-two").iter().collect::<Vec<_>>(), ["1", "2"]);
    assert!(req.body().is_end_stream());
    assert_eq!(&rest[..], b"GET /next HTTP/1.1\r\n");
}

#[test]
fn a_small_body_is_read_whole_before_the_request_is_served() {
    let (parsed, rest) = parse(b"POST /orders HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello");
    let Parsed::Body(wanted) = parsed else { panic!("the body is awaited") };
    assert_eq!(wanted, 54 + 11, "head and body");
    assert_eq!(rest.len(), 54 + 5, "nothing consumed while the body is incomplete");

    let (parsed, rest) =
        parse(b"POST /orders HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello worldGET /next HTTP/1.1\r\n");
    let Parsed::Complete(req, _) = parsed else { panic!("not complete") };
    assert_eq!(req.headers()["content-length"], "11");
    let mut body = req.into_body();
    let frame = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx)));
    let Poll::Ready(Some(Ok(frame))) = futures_lite_poll(frame) else { panic!("the body is buffered") };
    assert_eq!(frame.into_data().unwrap(), "hello world");
    assert_eq!(&rest[..], b"GET /next HTTP/1.1\r\n", "the next request stays");

    let (parsed, rest) = parse(b"DELETE /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert!(matches!(parsed, Parsed::Complete(ref req, _) if req.body().is_end_stream()));
    assert!(rest.is_empty());
}

/// Polls a future that is ready at once.
fn futures_lite_poll<F: std::future::Future>(future: F) -> F::Output {
    match std::pin::pin!(future).poll(&mut Context::from_waker(std::task::Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("not ready"),
    }
}

#[test]
fn connection_close_is_noted() {
    let (parsed, _) = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n");
    assert!(matches!(parsed, Parsed::Complete(_, true)));
}

#[test]
fn streamed_bodies_upgrades_expectations_and_http_1_0_go_to_hyper_with_nothing_consumed() {
    let large = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", MAX_INLINE_BODY + 1);
    for head in [
        large.as_bytes(),
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: CHUNKED \r\n\r\n0\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n",
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ] {
        let (parsed, rest) = parse(head);
        assert!(matches!(parsed, Parsed::Handoff), "{}", String::from_utf8_lossy(head));
        assert_eq!(&rest[..], head, "the head stays for hyper to read");
    }
}

#[test]
fn malformed_and_oversized_heads_are_refused() {
    let many = format!("GET / HTTP/1.1\r\n{}\r\n", (0..150).map(|i| format!("X-{i}: v\r\n")).collect::<String>());
    let cases: [(&[u8], StatusCode); 5] = [
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", StatusCode::BAD_REQUEST),
        (b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", StatusCode::BAD_REQUEST),
        (b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", StatusCode::BAD_REQUEST),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", StatusCode::BAD_REQUEST),
        (many.as_bytes(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
    ];
    let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
    let (parsed, _) = parse(big.as_bytes());
    assert!(matches!(parsed, Parsed::Invalid(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)), "a head over 64 KiB");
    for (head, status) in cases {
        let (parsed, _) = parse(head);
        assert!(matches!(parsed, Parsed::Invalid(s) if s == status), "{}", String::from_utf8_lossy(head));
    }
    assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost: a\r\n").0, Parsed::Partial));
}

#[test]
fn host_lines_framing_and_lengths_peers_refuse_are_refused_before_any_handoff() {
    for head in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 99999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    ] {
        let (parsed, _) = parse(head);
        assert!(matches!(parsed, Parsed::Invalid(StatusCode::BAD_REQUEST)), "{}", String::from_utf8_lossy(head));
    }
}

/// A body of the given chunks, of unknown length unless `exact`.
struct Chunks {
    chunks: VecDeque<Bytes>,
    exact: Option<u64>,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        self.exact.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

fn chunks(parts: &[&[u8]], exact: bool) -> Chunks {
    let chunks: VecDeque<Bytes> = parts.iter().map(|p| Bytes::copy_from_slice(p)).collect();
    let total = chunks.iter().map(|c| c.len() as u64).sum();
    Chunks { chunks, exact: exact.then_some(total) }
}

async fn written<B>(response: Response<B>, head: bool, close: bool) -> (String, bool)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::support::BoxError>,
{
    let mut wire = Vec::new();
    let answer = Answer { head_request: head, close, send_timeout: SEND };
    let keep = write_response(&mut wire, &mut Vec::new(), response, answer).await.unwrap();
    (String::from_utf8(wire).unwrap(), keep)
}

#[tokio::test]
async fn a_body_of_known_length_gets_a_content_length_and_a_date() {
    let (wire, keep) = written(Response::new(chunks(&[b"hello"], true)), false, false).await;
    assert!(keep);
    assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"), "{wire}");
    assert!(wire.contains("\r\ncontent-length: 5\r\n"), "{wire}");
    assert!(wire.contains("\r\ndate: ") && wire.contains(" GMT\r\n"), "{wire}");
    assert!(wire.ends_with("\r\n\r\nhello"), "{wire}");
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked() {
    let big = vec![b'x'; COPY_LIMIT + 10];
    let (wire, keep) = written(Response::new(chunks(&[b"hello", b"", &big, b"!"], false)), false, false).await;
    assert!(keep);
    assert!(wire.contains("\r\ntransfer-encoding: chunked\r\n"), "{wire}");
    let body = wire.split_once("\r\n\r\n").unwrap().1;
    let expected = format!("5\r\nhello\r\n{:x}\r\n{}\r\n1\r\n!\r\n0\r\n\r\n", big.len(), "x".repeat(big.len()));
    assert_eq!(body, expected);
}

#[tokio::test]
async fn head_204_and_304_answers_carry_no_body() {
    let (wire, _) = written(Response::new(chunks(&[b"hello"], true)), true, false).await;
    assert!(wire.contains("content-length: 5\r\n") && wire.ends_with("\r\n\r\n"), "HEAD: {wire}");
    let mut no_content = Response::new(chunks(&[], true));
    *no_content.status_mut() = StatusCode::NO_CONTENT;
    no_content.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    let (wire, keep) = written(no_content, false, false).await;
    assert!(keep && !wire.contains("content-length") && wire.ends_with("\r\n\r\n"), "204: {wire}");
    let mut not_modified = Response::new(chunks(&[], true));
    *not_modified.status_mut() = StatusCode::NOT_MODIFIED;
    not_modified.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
    let (wire, _) = written(not_modified, false, false).await;
    assert!(wire.contains("content-length: 42\r\n") && wire.ends_with("\r\n\r\n"), "304: {wire}");
}

#[tokio::test]
async fn a_short_body_or_a_close_ends_the_connection_and_a_long_one_is_an_error() {
    let mut short = Response::new(chunks(&[b"hello"], false));
    short.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
    let (wire, keep) = written(short, false, false).await;
    assert!(!keep && wire.contains("content-length: 10\r\n") && wire.ends_with("hello"), "{wire}");

    let (wire, keep) = written(Response::new(chunks(&[b"hi"], true)), false, true).await;
    assert!(!keep && wire.contains("\r\nconnection: close\r\n"), "{wire}");
    let mut refused = Response::new(chunks(&[b"no"], true));
    refused.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    assert!(!written(refused, false, false).await.1);

    let mut long = Response::new(chunks(&[b"hello", b"world"], false));
    long.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    let mut wire = Vec::new();
    let answer = Answer { head_request: false, close: false, send_timeout: SEND };
    assert!(write_response(&mut wire, &mut Vec::new(), long, answer).await.is_err());
}

/// A client that never takes a byte.
struct Stalled;

impl AsyncWrite for Stalled {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Pending
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_cut_off_after_the_send_timeout() {
    let started = tokio::time::Instant::now();
    let response = Response::new(chunks(&[b"hello"], true));
    let answer = Answer { head_request: false, close: false, send_timeout: SEND };
    let error = write_response(&mut Stalled, &mut Vec::new(), response, answer).await.unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(started.elapsed(), SEND);
}
