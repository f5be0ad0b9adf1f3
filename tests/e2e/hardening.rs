//! Malformed and smuggling-prone requests, sent as raw bytes: each gets its status and
//! none reaches the upstream (the echo server counts what it receives).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vane_suite::*;

/// Sends raw bytes on a fresh connection and returns the status code of the answer.
async fn raw_status(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let mut read = 0;
    // Bounded: one answer's status line, or the deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !buf[..read].windows(2).any(|w| w == b"\r\n") {
        let n =
            tokio::time::timeout_at(deadline, stream.read(&mut buf[read..])).await.expect("an answer in time").unwrap();
        assert!(n > 0, "connection closed without an answer");
        read += n;
    }
    let line = String::from_utf8_lossy(&buf[..read]);
    line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {line:?}"))
}

#[tokio::test]
async fn malformed_and_ambiguous_requests_are_refused_and_never_forwarded() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    cp.apply(&config_yaml(&[("echo", &[e1.addr()])], &[("all", "/", "echo")])).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    assert_eq!(raw_status(web, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n").await, 200, "the control case is forwarded");
    let forwarded = e1.received();

    let big_header = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024));
    let many_headers =
        format!("GET / HTTP/1.1\r\nHost: a\r\n{}\r\n", (0..150).map(|i| format!("X-H{i}: v\r\n")).collect::<String>());
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec(),
            400,
        ),
        ("an invalid Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5x\r\n\r\nhello".to_vec(), 400),
        (
            "a transfer coding that is not a final chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec(),
            400,
        ),
        ("an invalid header name", b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n".to_vec(), 400),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n".to_vec(), 400),
        ("a bare CR", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: o\rne\r\n\r\n".to_vec(), 400),
        ("an authority-form target on GET", b"GET example.com:80 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec(), 405),
        ("a 70 KiB header", big_header.into_bytes(), 431),
        ("150 headers", many_headers.into_bytes(), 431),
    ];
    for (what, bytes, expected) in cases {
        assert_eq!(raw_status(web, &bytes).await, expected, "{what}");
    }
    assert_eq!(e1.received(), forwarded, "no refused request reached the upstream");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_framed_by_chunks_alone_and_the_connection_closed() {
    // RFC 9112 §6.3 lets a server process such a request by Transfer-Encoding alone, and
    // requires closing the connection after it: hyper does both, before Vane sees the
    // request, so the upstream never receives two framings (and the client cannot smuggle
    // a second request on that connection).
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    cp.apply(&config_yaml(&[("echo", &[e1.addr()])], &[("all", "/", "echo")])).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let mut stream = tokio::net::TcpStream::connect(web).await.unwrap();
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("closed in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("body-bytes: 5\n"), "chunked framing won:\n{answer}");
    assert!(!answer.to_ascii_lowercase().contains("content-length: 100"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "the pipelined request was not served:\n{answer}");
    assert_eq!(e1.received(), 1);
}
