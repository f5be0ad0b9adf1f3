//! PROXY protocol: the header as the upstream received it (v1 and v2), a trusted peer's
//! header passed on, and on an HTTP listener the address it carries reaching
//! X-Forwarded-For and IP policies.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vane_suite::*;

use super::Vane;

/// An upstream that keeps every byte each connection sent, until the client's FIN.
struct Recorder {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let kept = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                let kept = kept.clone();
                tokio::spawn(async move {
                    let mut bytes = Vec::new();
                    let _ = stream.read_to_end(&mut bytes).await;
                    kept.lock().unwrap().push(bytes);
                    let _ = stream.write_all(b"recorded").await;
                });
            }
        });
        Recorder { addr, received, task }
    }

    /// What the connections sent, once `n` of them ended.
    async fn received(&self, n: usize) -> Vec<Vec<u8>> {
        eventually(Duration::from_secs(10), &format!("{n} connections recorded"), || async {
            let all = self.received.lock().unwrap().clone();
            (all.len() >= n).then_some(all)
        })
        .await
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to `addr`, sends `bytes`, shuts the write side and reads the answer (empty
/// when the connection was closed or reset without one).
async fn send(addr: SocketAddr, bytes: &[u8]) -> (SocketAddr, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = Vec::new();
    // A connection closed with bytes unread ends in a reset: what came before it counts.
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.unwrap();
    (local, String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test]
async fn l4_upstreams_receive_the_proxy_header_their_cluster_asks_for_v1_and_v2() {
    let (v1, v2, chained) = (Recorder::start().await, Recorder::start().await, Recorder::start().await);
    let yaml = format!(
        "listeners:\n  - {{name: one, address: 127.0.0.1:0, protocol: TCP, cluster: v1}}\n  \
         - {{name: two, address: 127.0.0.1:0, protocol: TCP, cluster: v2}}\n  \
         - {{name: behind-lb, address: 127.0.0.1:0, protocol: TCP, cluster: chained, \
         accept_proxy_protocol_from: [127.0.0.1]}}\n\
         clusters:\n  - {{name: v1, proxy_protocol: V1, endpoints: [{{address: '{}'}}]}}\n  \
         - {{name: v2, proxy_protocol: V2, endpoints: [{{address: '{}'}}]}}\n  \
         - {{name: chained, proxy_protocol: V1, endpoints: [{{address: '{}'}}]}}\n",
        v1.addr, v2.addr, chained.addr
    );
    let vane = Vane::start(&yaml).await;
    let (one, two, behind) = (vane.listener("one").await, vane.listener("two").await, vane.listener("behind-lb").await);

    let (client, answer) = send(one, b"hello").await;
    assert_eq!(answer, "recorded");
    let expected = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\nhello", client.port(), one.port());
    assert_eq!(String::from_utf8_lossy(&v1.received(1).await[0]), expected);

    let (client, _) = send(two, b"hello").await;
    let mut expected = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    expected.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
    expected.extend_from_slice(&client.port().to_be_bytes());
    expected.extend_from_slice(&two.port().to_be_bytes());
    expected.extend_from_slice(b"hello");
    assert_eq!(v2.received(1).await[0], expected);

    // Behind a load balancer that speaks PROXY: its client is the one passed on.
    send(behind, b"PROXY TCP4 203.0.113.9 10.0.0.1 51234 443\r\nhello").await;
    let expected = format!("PROXY TCP4 203.0.113.9 127.0.0.1 51234 {}\r\nhello", behind.port());
    assert_eq!(String::from_utf8_lossy(&chained.received(1).await[0]), expected);
    // A trusted peer that sends no header is closed; nothing reaches the upstream.
    let (_, answer) = send(behind, b"hello without a header").await;
    assert_eq!(answer, "");
    let metrics = vane.metrics().await;
    assert_eq!(metric(&metrics, "vane_proxy_protocol_errors_total{listener=\"behind-lb\"}"), 1.0, "{metrics}");
    assert_eq!(chained.received(1).await.len(), 1);
}

#[tokio::test]
async fn l4_an_http_listener_takes_the_client_from_a_trusted_proxy_header() {
    let echo = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = format!(
        "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    accept_proxy_protocol_from: [127.0.0.0/8]\n    \
         policies: [office]\n\
         policies:\n  - {{name: office, ip_filter: {{allow: [203.0.113.0/24]}}}}\n\
         clusters:\n  - {{name: echo, endpoints: [{{address: '{}'}}]}}\n\
         routes:\n  - {{name: all, match: {{prefix: /}}, forward: {{clusters: [{{name: echo}}]}}}}\n",
        echo.addr()
    );
    let vane = Vane::start(&yaml).await;
    let web = vane.listener("web").await;
    let request = |header: &str| {
        format!("{header}GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n")
    };
    let (_, answer) = send(web, request("PROXY TCP4 203.0.113.9 10.0.0.1 51234 80\r\n").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("x-forwarded-for: 203.0.113.9\n"), "the PROXY header's client, not the claim:\n{answer}");
    // v2 too; and the IP policy judges the address the header carries.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 7, 10, 0, 0, 1, 0x12, 0x34, 0, 80]);
    v2.extend_from_slice(request("").as_bytes());
    let (_, answer) = send(web, &v2).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "198.51.100.7 is not in the office: {answer}");
}
