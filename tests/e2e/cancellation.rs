//! Requests their client cancels (review of issue 15, item 5): HTTP/2 streams reset
//! before they were answered open no upstream connection when they had not started, and
//! are counted in `vane_http_requests_cancelled_total`. The client writes raw h2c frames,
//! so that a burst of HEADERS and RST_STREAM arrives as an attacker sends it: together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vane_suite::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An upstream that counts the TCP connections it accepts and answers `200 ok` on them.
struct CountingUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingUpstream {
    async fn start() -> CountingUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            let mut served = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                while served.try_join_next().is_some() {}
                served.spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        CountingUpstream { addr, connections, task }
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap();
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HEADERS (END_STREAM, END_HEADERS) for `GET path` on `stream`, HPACK without Huffman
/// or indexing: `:method GET`, `:scheme http` from the static table, `:path` and
/// `:authority` as literals.
fn get(out: &mut Vec<u8>, stream: u32, path: &str) {
    let mut block = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 0x01, b'a']);
    frame(out, 0x1, 0x5, stream, &block);
}

/// RST_STREAM(CANCEL).
fn cancel(out: &mut Vec<u8>, stream: u32) {
    frame(out, 0x3, 0, stream, &8u32.to_be_bytes());
}

/// A new h2c connection, preface and empty SETTINGS written.
async fn h2c(web: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(web).await.unwrap();
    let mut hello = PREFACE.to_vec();
    frame(&mut hello, 0x4, 0, 0, &[]);
    stream.write_all(&hello).await.unwrap();
    stream
}

/// Reads frames until the response HEADERS of `stream_id`; returns whether it came
/// (`false`: GOAWAY or the connection closed first). Acknowledges the server's SETTINGS.
async fn await_response(stream: &mut TcpStream, stream_id: u32) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            buf.drain(..9 + len);
            match kind {
                0x1 if id == stream_id => return true,
                0x7 => return false,
                0x4 if flags & 1 == 0 => {
                    let mut ack = Vec::new();
                    frame(&mut ack, 0x4, 1, 0, &[]);
                    let _ = stream.write_all(&ack).await;
                }
                _ => {}
            }
        }
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
            Err(_) => panic!("no answer for stream {stream_id} in time"),
        };
        if n == 0 {
            return false;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn cancelled_count(node: &vane_data_plane::Node) -> f64 {
    let metrics = HttpClient::default().get(node.admin_addr().unwrap(), "/metrics").await.unwrap().body;
    metric(&metrics, r#"vane_http_requests_cancelled_total{listener="web"}"#)
}

async fn serving(upstream: SocketAddr) -> (TestControlPlane, vane_data_plane::Node, SocketAddr) {
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    cp.apply(&config_yaml(&[("counted", &[upstream])], &[("all", "/", "counted")])).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    (cp, node, web)
}

#[tokio::test]
async fn streams_reset_before_they_started_open_no_upstream_connection_and_are_counted() {
    init_logs();
    let upstream = CountingUpstream::start().await;
    let (_cp, node, web) = serving(upstream.addr).await;
    let mut client = h2c(web).await;
    // 50 streams opened and cancelled in one write (the server allows 100 such resets
    // pending), then one request that is waited for.
    const CANCELLED: u32 = 50;
    let mut burst = Vec::new();
    for i in 0..CANCELLED {
        get(&mut burst, 2 * i + 1, "/cancelled");
        cancel(&mut burst, 2 * i + 1);
    }
    let last = 2 * CANCELLED + 1;
    get(&mut burst, last, "/answered");
    client.write_all(&burst).await.unwrap();
    assert!(await_response(&mut client, last).await, "the request after the burst is answered");

    eventually(Duration::from_secs(5), "every reset stream counted as cancelled", || async {
        (cancelled_count(&node).await == f64::from(CANCELLED)).then_some(())
    })
    .await;
    let connections = upstream.connections();
    assert_eq!(connections, 1, "one upstream connection, for the answered request; not one per reset stream");
}

#[tokio::test]
async fn a_rapid_reset_flood_opens_no_more_upstream_connections_than_answered_requests() {
    // Bounded, on loopback: 8 connections at once, each 20 bursts of 99 HEADERS +
    // RST_STREAM then one request waited for, so that the server accepts every burst
    // (past 100 resets pending it would send GOAWAY, and the streams never start).
    const CONNECTIONS: u64 = 8;
    const BURSTS: u64 = 20;
    const RESETS: u32 = 99;
    init_logs();
    let upstream = CountingUpstream::start().await;
    let (_cp, node, web) = serving(upstream.addr).await;
    let started = std::time::Instant::now();
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        flood.spawn(async move {
            let mut client = h2c(web).await;
            let mut id = 1u32;
            for _ in 0..BURSTS {
                let mut burst = Vec::new();
                for _ in 0..RESETS {
                    get(&mut burst, id, "/flood");
                    cancel(&mut burst, id);
                    id += 2;
                }
                get(&mut burst, id, "/answered");
                client.write_all(&burst).await.unwrap();
                assert!(await_response(&mut client, id).await, "no GOAWAY while every burst is accepted");
                id += 2;
            }
        });
    }
    while let Some(done) = flood.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed();
    let reset = CONNECTIONS * BURSTS * u64::from(RESETS);
    eventually(Duration::from_secs(10), "every reset stream counted as cancelled", || async {
        (cancelled_count(&node).await == reset as f64).then_some(())
    })
    .await;
    let connections = upstream.connections();
    eprintln!(
        "rapid reset: {reset} streams reset and {} answered in {elapsed:?}: {connections} upstream connections",
        CONNECTIONS * BURSTS
    );
    assert!(connections <= CONNECTIONS, "{connections} upstream connections for {reset} reset streams");
}
