//! Slow and oversized traffic (issue 17): a request body that stops arriving is the
//! client's `408` (never an upstream timeout), on the inline HTTP/1.1 server, hyper's
//! HTTP/1.1 and HTTP/2; an answer over the route's `max_response_bytes` is a `502` when
//! announced and cut when it crosses the limit as it streams. Metrics and access log
//! lines say whose fault each was.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use vane_suite::*;

/// An upstream speaking raw HTTP/1.1, one answer per connection, chosen by path:
/// `/capped/announced` (a `Content-Length: 1000` body of `Z`s), `/capped/chunked` (256
/// bytes of `Z` in four chunks), `/capped/small` (50 bytes), `/early` (a chunked answer
/// begun at once, before the request body, and never finished).
struct RawUpstream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                connections.spawn(answer(stream));
            }
        });
        RawUpstream { addr, task }
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut stream: TcpStream) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    }
    let path = String::from_utf8_lossy(&head).split_whitespace().nth(1).unwrap_or("").to_owned();
    let z = |n| "Z".repeat(n);
    let reply = match path.as_str() {
        "/capped/announced" => {
            format!("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n{}", z(1000))
        }
        "/capped/chunked" => format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{}0\r\n\r\n",
            format!("40\r\n{}\r\n", z(64)).repeat(4)
        ),
        "/capped/small" => format!("HTTP/1.1 200 OK\r\nContent-Length: 50\r\nConnection: close\r\n\r\n{}", z(50)),
        "/early" => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_owned(),
        _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
    };
    if stream.write_all(reply.as_bytes()).await.is_err() {
        return;
    }
    // Read (and drop) what the proxy still sends until it closes, bounded.
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
    }
}

/// A control plane, a node, the echo upstream and the raw one, with `routes` (YAML list
/// items) and a JSON access log.
struct Fixture {
    serving: Serving,
    _raw: RawUpstream,
    log: tempfile::TempDir,
}

impl Fixture {
    async fn start(routes: &str) -> Fixture {
        init_logs();
        let raw = RawUpstream::start().await;
        let log = tempfile::tempdir().unwrap();
        let log_path = log.path().join("access.log");
        let raw_addr = raw.addr;
        let serving = Serving::start(|e| {
            format!(
                "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    access_log: {{ path: '{}' }}\n\
                 clusters:\n  - name: echo\n    endpoints: [{{ address: '{e}' }}]\n\
                 \x20 - name: raw\n    endpoints: [{{ address: '{raw_addr}' }}]\nroutes:\n{routes}",
                log_path.display()
            )
        })
        .await;
        Fixture { serving, _raw: raw, log }
    }

    async fn metrics(&self) -> String {
        let admin = self.serving.node.admin_addr().expect("admin endpoint");
        HttpClient::default().get(admin, "/metrics").await.expect("metrics").body
    }

    /// Waits for an access log line holding `needle`.
    async fn log_line(&self, needle: &str) -> serde_json::Value {
        let path = self.log.path().join("access.log");
        eventually(Duration::from_secs(5), &format!("an access log line with {needle}"), || {
            let path: &Path = &path;
            async move {
                let text = std::fs::read_to_string(path).ok()?;
                let line = text.lines().find(|l| l.contains(needle))?;
                serde_json::from_str(line).ok()
            }
        })
        .await
    }
}

/// Sends `bytes` and reads everything until the proxy closes (bounded by `within`).
async fn send_and_read_to_close(addr: SocketAddr, bytes: &[u8], within: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the proxy did not close in {within:?}; so far: {}", String::from_utf8_lossy(&answer));
    String::from_utf8_lossy(&answer).into_owned()
}

const SLOW_ROUTES: &str = "  - name: slow\n    match: { prefix: /slow }\n    \
    forward: { clusters: [{ name: echo }], request_body_timeout: 0.3s }\n\
    \x20 - name: late\n    match: { prefix: /late }\n    \
    forward: { clusters: [{ name: echo }], timeout: 0.3s }\n\
    \x20 - name: early\n    match: { prefix: /early }\n    \
    forward: { clusters: [{ name: raw }], request_body_timeout: 0.3s }\n";

#[tokio::test]
async fn a_request_body_that_stops_arriving_gets_408_and_is_counted_as_the_clients() {
    let fx = Fixture::start(SLOW_ROUTES).await;
    let web = fx.serving.web;
    let cases = [
        ("read whole by the inline server", "Content-Length: 1000\r\n\r\n0123456789"),
        ("streamed by hyper (over 64 KiB)", "Content-Length: 100000\r\n\r\n0123456789"),
        ("chunked, read ahead by hyper", "Transfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n"),
    ];
    for (case, rest) in cases {
        let started = Instant::now();
        let request = format!("POST /slow HTTP/1.1\r\nHost: a\r\n{rest}");
        let answer = send_and_read_to_close(web, request.as_bytes(), Duration::from_secs(10)).await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{case}: {answer}");
        assert!(answer.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{case}: {answer}");
        // The route timeout (15 s) had nothing to do with it.
        assert!(started.elapsed() < Duration::from_secs(10), "{case}: {:?}", started.elapsed());
    }
    assert_eq!(fx.serving.echo.received(), 1, "only the streamed body's head went upstream");

    let metrics = fx.metrics().await;
    let route = "{listener=\"web\",route=\"slow\",cluster=\"echo\"";
    assert_eq!(metric(&metrics, &format!("vane_http_request_body_timeouts_total{route}")), 3.0, "{metrics}");
    assert_eq!(metric(&metrics, &format!("vane_http_requests_total{route},status=\"408\"")), 3.0, "{metrics}");
    for upstream in ["timeouts", "errors", "connect_failures"] {
        let series = format!("vane_upstream_{upstream}_total{{cluster=\"echo\"");
        assert_eq!(metric(&metrics, &series), 0.0, "{series} {metrics}");
    }
    assert!(!metrics.contains("status=\"5"), "no 5xx: {metrics}");
    let line = fx.log_line("request_body_timeout").await;
    assert_eq!((line["status"].as_u64(), line["route"].as_str()), (Some(408), Some("slow")), "{line}");
}

#[tokio::test]
async fn a_route_timeout_that_ends_while_the_client_owes_its_body_is_the_clients_408_not_a_504() {
    let fx = Fixture::start(SLOW_ROUTES).await;
    // The route's 0.3 s timeout ends first (its body timeout is the default 30 s).
    let head = b"POST /late HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n0123456789";
    let answer = send_and_read_to_close(fx.serving.web, head, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    let metrics = fx.metrics().await;
    assert_eq!(metric(&metrics, "vane_upstream_timeouts_total{cluster=\"echo\""), 0.0, "{metrics}");
    assert_eq!(
        metric(&metrics, "vane_http_request_body_timeouts_total{listener=\"web\",route=\"late\",cluster=\"echo\""),
        1.0,
        "{metrics}"
    );
    // A client that sent its whole body to a slow upstream: that one is the upstream's 504.
    let whole = b"POST /late?delay_ms=1000 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(raw_status(fx.serving.web, whole).await, 504);
    let metrics = fx.metrics().await;
    assert_eq!(metric(&metrics, "vane_upstream_timeouts_total{cluster=\"echo\""), 1.0, "{metrics}");
}

#[tokio::test]
async fn an_http2_request_body_that_stops_arriving_gets_408_counted_as_the_clients() {
    let fx = Fixture::start(SLOW_ROUTES).await;
    let stream = TcpStream::connect(fx.serving.web).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    let driver = tokio::spawn(connection);
    // A body that never ends: ten bytes, then the sender is held open and silent.
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"0123456789")))).await.unwrap();
    let req = Request::post(format!("http://{}/slow", fx.serving.web))
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await;
    let response = answered.expect("an answer before the route timeout").expect("an answer, not a reset");
    // hyper's server then resets the stream whose body it will not read (NO_ERROR).
    assert_eq!(response.status(), 408);
    let series = "vane_http_request_body_timeouts_total{listener=\"web\",route=\"slow\",cluster=\"echo\"";
    eventually(Duration::from_secs(5), "the body timeout counted", || async {
        (metric(&fx.metrics().await, series) == 1.0).then_some(())
    })
    .await;
    let metrics = fx.metrics().await;
    assert_eq!(metric(&metrics, "vane_upstream_timeouts_total{cluster=\"echo\""), 0.0, "{metrics}");
    assert_eq!(metric(&metrics, "vane_upstream_errors_total{cluster=\"echo\""), 0.0, "{metrics}");
    drop(tx);
    driver.abort();
}

#[tokio::test]
async fn a_json_transform_waits_for_a_body_no_longer_than_the_routes_body_timeout() {
    // The transform reads the body whole (to edit it) before anything goes upstream: a
    // client that stops sending it must get the route's 408, not hold the request open.
    let routes = "  - name: edited\n    match: { prefix: /edited }\n    policies: [tag]\n    \
        forward: { clusters: [{ name: echo }], request_body_timeout: 0.3s }\n\
        policies:\n  - { name: tag, transform: { request_json: { set: [{ path: via, value: '\"vane\"' }] } } }\n";
    let fx = Fixture::start(routes).await;
    let stream = TcpStream::connect(fx.serving.web).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    let driver = tokio::spawn(connection);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"{\"a\":")))).await.unwrap();
    let req = Request::post(format!("http://{}/edited", fx.serving.web))
        .header("content-type", "application/json")
        .header("content-length", "40")
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .unwrap();
    let started = Instant::now();
    let answered = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await;
    let response = answered.expect("an answer before the route timeout").expect("an answer, not a reset");
    assert_eq!(response.status(), 408);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(fx.serving.echo.received(), 0, "nothing went upstream");
    drop(tx);
    driver.abort();

    // A body that arrives whole is edited and forwarded.
    let req = Request::post(format!("http://{}/edited", fx.serving.web))
        .header("content-type", "application/json")
        .header("content-length", "7")
        .body(http_body_util::Full::new(Bytes::from_static(b"{\"a\":1}")))
        .unwrap();
    let reply = HttpClient::h2c().send(req).await.expect("an answer");
    assert_eq!(reply.status, 200, "{}", reply.body);
    // `{"a":1,"via":"vane"}`: the echo server reports the size it received.
    assert!(reply.body.contains("body-bytes: 20"), "the body was edited on its way: {}", reply.body);
}

#[tokio::test]
async fn a_body_that_stops_after_the_upstream_began_answering_cuts_the_answer_and_is_the_clients() {
    let fx = Fixture::start(SLOW_ROUTES).await;
    let head = b"POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n0123456789";
    let answer = send_and_read_to_close(fx.serving.web, head, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "the upstream's answer had begun: {answer}");
    assert!(answer.ends_with("5\r\nhello\r\n"), "cut: no last chunk after what came: {answer:?}");
    let series = "vane_http_request_body_timeouts_total{listener=\"web\",route=\"early\",cluster=\"raw\"";
    eventually(Duration::from_secs(5), "the body timeout counted", || async {
        (metric(&fx.metrics().await, series) == 1.0).then_some(())
    })
    .await;
    let metrics = fx.metrics().await;
    assert_eq!(metric(&metrics, "vane_upstream_errors_total{cluster=\"raw\""), 0.0, "{metrics}");
    let line = fx.log_line("request_body_timeout").await;
    assert_eq!((line["status"].as_u64(), line["route"].as_str()), (Some(200), Some("early")), "{line}");
}

const CAPPED_ROUTES: &str = "  - name: capped\n    match: { prefix: /capped }\n    \
    forward: { clusters: [{ name: raw }], max_response_bytes: 100 }\n";

#[tokio::test]
async fn an_answer_announcing_more_than_max_response_bytes_is_a_502_with_none_of_its_body() {
    let fx = Fixture::start(CAPPED_ROUTES).await;
    let client = HttpClient::default();
    let reply = client.get(fx.serving.web, "/capped/announced").await.unwrap();
    assert_eq!(reply.status, 502);
    assert_eq!(reply.headers["x-vane-response-too-large"], "max_response_bytes");
    assert!(!reply.body.contains('Z'), "no upstream byte: {}", reply.body);
    let small = client.get(fx.serving.web, "/capped/small").await.unwrap();
    assert_eq!((small.status.as_u16(), small.body.len()), (200, 50), "within the limit");
    let metrics = fx.metrics().await;
    assert_eq!(metric(&metrics, "vane_upstream_response_too_large_total{cluster=\"raw\""), 1.0, "{metrics}");
    let line = fx.log_line("response_too_large").await;
    assert_eq!(line["status"], 502, "{line}");
}

#[tokio::test]
async fn a_streamed_answer_crossing_max_response_bytes_is_cut_and_counted() {
    let fx = Fixture::start(CAPPED_ROUTES).await;
    let url = format!("http://{}/capped/chunked", fx.serving.web);
    for (protocol, client) in [
        ("HTTP/1.1", hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()),
        ("HTTP/2", hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http2_only(true).build_http()),
    ] {
        let req = Request::get(&url).body(Empty::<Bytes>::new()).unwrap();
        // The limit is crossed as the answer streams: its head may have gone (then its body
        // fails), or the end come before the client took the head (HTTP/1.1: the head was
        // still queued with the first chunks when the connection closed; HTTP/2: the reset
        // came with it); never a short success.
        match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await.unwrap() {
            Ok(response) => {
                assert_eq!(response.status(), 200, "{protocol}");
                let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect()).await;
                assert!(body.unwrap().is_err(), "{protocol}: the client must see a failed body, not a short success");
            }
            Err(error) => assert!(!error.is_connect(), "{protocol}: {error:?}"),
        }
    }
    let series = "vane_upstream_response_too_large_total{cluster=\"raw\"";
    eventually(Duration::from_secs(5), "both cut answers counted", || async {
        (metric(&fx.metrics().await, series) == 2.0).then_some(())
    })
    .await;
    let line = fx.log_line("response_too_large").await;
    assert_eq!(line["status"], 200, "{line}");
    assert!(line["bytes_out"].as_u64().unwrap() <= 100, "{line}");
}

#[tokio::test]
async fn request_body_timeout_is_validated_with_its_field_path() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let yaml = |timeout: &str| {
        format!(
            "clusters:\n  - name: echo\n    endpoints: [{{ address: '127.0.0.1:9' }}]\nroutes:\n  - name: api\n    \
             match: {{ prefix: / }}\n    forward: {{ clusters: [{{ name: echo }}], request_body_timeout: {timeout} }}\n"
        )
    };
    cp.apply(&yaml("0.5s")).await.expect("an explicit body timeout is accepted");
    for bad in ["-1s", "0s", "7200s"] {
        let status = cp.apply(&yaml(bad)).await.expect_err(bad);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}: {status:?}");
        assert!(
            status.message().contains("route 'api': forward.request_body_timeout: must be"),
            "{bad}: {}",
            status.message()
        );
    }
}
