//! Malformed and smuggling-prone requests, sent as raw bytes: each gets its status and
//! none reaches the upstream (the echo server counts what it receives).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vane_suite::*;

/// Everything the proxy sends until it closes the connection (bounded), as text.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("closed in time")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// One echo route behind a listener whose idle connections close after 0.4 s.
async fn serving_with_idle_timeout() -> Serving {
    Serving::start(|e| {
        config_yaml(&[("echo", &[e])], &[("all", "/", "echo")]).replacen(
            "    address: 127.0.0.1:0\n",
            "    address: 127.0.0.1:0\n    idle_timeout: 0.4s\n",
            1,
        )
    })
    .await
}

#[tokio::test]
async fn malformed_and_ambiguous_requests_are_refused_and_never_forwarded() {
    init_logs();
    let Serving { cp: _cp, node: _node, echo: e1, web } = Serving::echo_all().await;
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
        ("an empty Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\nhello".to_vec(), 400),
        ("a negative Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n".to_vec(), 400),
        (
            "Transfer-Encoding on HTTP/1.0",
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            400,
        ),
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
async fn content_length_with_transfer_encoding_is_refused_and_the_connection_closed() {
    // RFC 9112 §6.3 lets a server refuse such a request, and requires closing the
    // connection after it; nginx and HAProxy refuse it: so does Vane, forwarding nothing
    // (and the client cannot smuggle a second request on that connection).
    init_logs();
    let Serving { cp: _cp, node: _node, echo: e1, web } = Serving::echo_all().await;
    let mut stream = tokio::net::TcpStream::connect(web).await.unwrap();
    stream
        .write_all(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "the pipelined request was not served:\n{answer}");
    assert_eq!(e1.received(), 0);
}

/// A TCP server that accepts and never answers; it holds connections until dropped.
async fn blackhole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn retries_move_to_another_endpoint_on_connect_failure_and_per_try_timeout() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (hole, hole_task) = blackhole().await;
    let mut yaml =
        config_yaml(&[("flaky", &[dead, e1.addr()]), ("slow", &[hole, e1.addr()])], &[("plain", "/plain", "flaky")]);
    yaml.push_str(
        "  - name: retried\n    match: { prefix: /retried }\n    forward: { clusters: [{ name: flaky }], retry: { num_retries: 2, retry_on: [connect-failure] } }\n\
         \x20 - name: patient\n    match: { prefix: /patient }\n    forward: { clusters: [{ name: slow }], timeout: 5s, retry: { retry_on: [timeout, 5xx], per_try_timeout: 0.3s } }\n",
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();

    // Without a retry policy the default retries the dead endpoint's turn elsewhere.
    let statuses: Vec<u16> = futures_statuses(&client, web, "/plain/x", 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // With one, the dead endpoint's turn is retried on the live one.
    let statuses = futures_statuses(&client, web, "/retried/x", 6).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    // The blackhole's turn times out per try and is retried on the echo server.
    for _ in 0..2 {
        let r = client.get(web, "/patient/x").await.unwrap();
        assert_eq!((r.status.as_u16(), r.backend()), (200, "echo-1"));
    }
    // A request with a body is not replayed: it gets the timeout.
    let post = http::Request::post(format!("http://{web}/patient/x"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"payload")))
        .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(client.send(post.clone()).await.unwrap().status.as_u16());
    }
    assert!(statuses.contains(&504), "one of two POSTs lands on the blackhole and is not retried: {statuses:?}");
    let metrics = client.get(node.admin_addr().unwrap(), "/metrics").await.unwrap().body;
    assert!(metrics.contains("vane_upstream_retries_total{cluster=\"slow\"} 2\n"), "{metrics}");
    hole_task.abort();
}

async fn futures_statuses(client: &HttpClient, web: SocketAddr, path: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(client.get(web, path).await.unwrap().status.as_u16());
    }
    out
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off_at_the_deadline() {
    init_logs();
    let Serving { cp: _cp, node: _node, echo: e1, web } = Serving::start(|e| {
        config_yaml(&[("echo", &[e])], &[("all", "/", "echo")]).replacen(
            "    address: 127.0.0.1:0\n",
            "    address: 127.0.0.1:0\n    request_headers_timeout: 1s\n",
            1,
        )
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(web).await.unwrap();
    // One byte every 300 ms, 40 bytes at most (12 s): the proxy must hang up long before.
    let head = b"GET / HTTP/1.1\r\nHost: slow.example\r\nX-Slow: aaaaaaaaaaaaaaaa\r\n";
    let mut cut_off = false;
    for b in head.iter().take(40) {
        if stream.write_all(&[*b]).await.is_err() {
            cut_off = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut_off = true;
                break;
            }
            Ok(Ok(_)) => {
                // An error answer (408) before the close also counts as cut off.
                cut_off = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(cut_off, "the connection was still open after 40 trickled bytes");
    assert_eq!(e1.received(), 0);
}

#[tokio::test]
async fn bodies_over_the_route_limit_get_413() {
    init_logs();
    let Serving { cp: _cp, node: _node, echo: e1, web } = Serving::start(|e| {
        let mut yaml = config_yaml(&[("echo", &[e])], &[]);
        yaml.push_str("  - name: small\n    match: { prefix: / }\n    forward: { clusters: [{ name: echo }], max_request_bytes: 10 }\n");
        yaml
    }).await;
    // Announced: refused before anything goes upstream.
    assert_eq!(raw_status(web, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world").await, 413);
    assert_eq!(e1.received(), 0);
    // Chunked: cut when it passes the limit.
    let chunked =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n6\r\nworld!\r\n0\r\n\r\n";
    assert_eq!(raw_status(web, chunked).await, 413);
    // Within the limit: forwarded.
    assert_eq!(raw_status(web, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello").await, 200);
}

#[tokio::test]
async fn an_unread_request_body_is_never_parsed_as_the_next_request() {
    init_logs();
    let Serving { cp: _cp, node: _node, echo: e1, web } = Serving::start(|e| {
        let mut yaml = config_yaml(&[("echo", &[e])], &[("all", "/", "echo")]);
        yaml.push_str(
            "  - name: local\n    match: { exact: /local }\n    direct_response: { status: 200, body: local }\n",
        );
        yaml
    })
    .await;
    // The direct response never reads the body; its bytes look like a request.
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut bytes =
        format!("POST /local HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", smuggled.len()).into_bytes();
    bytes.extend_from_slice(smuggled);
    bytes.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(web).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains("GET /smuggled"), "the body was taken for a request:\n{answer}");
    assert!(e1.received() <= 1, "at most the real follow-up request reached the upstream");
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_the_handoff_to_hyper() {
    // Bodiless requests are served inline; the first one with a body hands the connection
    // to hyper with the bytes already read, and hyper serves the rest of it.
    init_logs();
    let Serving { cp: _cp, node: _node, echo: e1, web } = Serving::echo_all().await;
    let mut stream = tokio::net::TcpStream::connect(web).await.unwrap();
    stream
        .write_all(
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nHEAD /two HTTP/1.1\r\nHost: a\r\n\r\nGET /three HTTP/1.1\r\nHost: a\r\n\r\n\
              POST /four HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
              GET /five HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    let answers: Vec<&str> = answer.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(answers.len(), 5, "{answer}");
    assert!(answers[0].contains("GET /one HTTP/1.1"), "{}", answers[0]);
    assert!(answers[1].ends_with("\r\n\r\n") && !answers[1].contains("HEAD /two"), "HEAD has no body: {}", answers[1]);
    assert!(answers[1].contains("content-length: "), "HEAD keeps the length: {}", answers[1]);
    assert!(answers[2].contains("GET /three HTTP/1.1"), "{}", answers[2]);
    assert!(answers[3].contains("POST /four HTTP/1.1") && answers[3].contains("body-bytes: 5\n"), "{}", answers[3]);
    assert!(answers[4].contains("GET /five HTTP/1.1"), "{}", answers[4]);
    for a in &answers {
        assert!(a.contains("\r\ndate: ") || a.starts_with("date: "), "every answer is dated: {a}");
    }
    assert_eq!(e1.received(), 5);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_listeners_idle_timeout() {
    init_logs();
    let Serving { cp: _cp, node: _node, echo: _e1, web } = serving_with_idle_timeout().await;
    let mut stream = tokio::net::TcpStream::connect(web).await.unwrap();
    stream.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&answer).contains("body-bytes: 0\n") {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await.expect("an answer in time").unwrap();
        assert!(n > 0, "closed before the answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let idle_since = tokio::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.expect("closed in time").unwrap();
    assert_eq!(n, 0, "nothing more is sent: the connection is closed");
    assert!(idle_since.elapsed() >= Duration::from_millis(300), "kept open while within the idle timeout");
}

#[tokio::test]
async fn small_request_bodies_are_buffered_whole_and_sent_upstream_with_their_length() {
    init_logs();
    let Serving { cp: _cp, node: _node, echo: e1, web } = Serving::echo_all().await;
    let mut stream = tokio::net::TcpStream::connect(web).await.unwrap();
    // The head, then the body in two more writes: the request waits for all of it.
    stream.write_all(b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhel").await.unwrap();
    stream.flush().await.unwrap();
    stream.write_all(b"lo ").await.unwrap();
    stream.flush().await.unwrap();
    let big = "b".repeat(20_000);
    let rest = format!(
        "world\
         PUT /two HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{big}\
         DELETE /three HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        big.len()
    );
    stream.write_all(rest.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    let answers: Vec<&str> = answer.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(answers.len(), 3, "{answer}");
    assert!(answers[0].contains("POST /one HTTP/1.1") && answers[0].contains("body-bytes: 11\n"), "{}", answers[0]);
    assert!(answers[0].contains("content-length: 11\n"), "the upstream got the length: {}", answers[0]);
    assert!(answers[1].contains("PUT /two HTTP/1.1") && answers[1].contains("body-bytes: 20000\n"), "{}", answers[1]);
    assert!(answers[2].contains("DELETE /three HTTP/1.1") && answers[2].contains("body-bytes: 0\n"), "{}", answers[2]);
    assert_eq!(e1.received(), 3);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_listeners_idle_timeout() {
    init_logs();
    let Serving { cp: _cp, node: _node, echo: _e1, web } = serving_with_idle_timeout().await;
    let stream = tokio::net::TcpStream::connect(web).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request =
        http::Request::get(format!("http://{web}/h2")).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    let idle_since = tokio::time::Instant::now();
    // The server says goodbye (GOAWAY, then close): the client's connection task ends.
    tokio::time::timeout(Duration::from_secs(5), connection).await.expect("closed in time").unwrap().unwrap();
    assert!(idle_since.elapsed() >= Duration::from_millis(300), "kept open while within the idle timeout");
}
