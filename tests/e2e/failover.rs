//! Failing over with nothing configured: a dead endpoint costs no request (a connect
//! failure is retried on another endpoint, bodies included), is taken out of rotation,
//! and comes back once it answers again.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vane_suite::*;

/// A `vane control-plane` and a `vane proxy` process, the config applied with `vane apply`.
struct Binaries {
    _cp: VaneProcess,
    _proxy: VaneProcess,
    admin: SocketAddr,
    web: SocketAddr,
}

impl Binaries {
    async fn start(dir: &std::path::Path, yaml: &str) -> Binaries {
        let cp = VaneProcess::control_plane(&dir.join("store"), &[]).await.unwrap();
        let url = cp.control_plane_url().unwrap();
        let file = write_yaml(dir, "config.yaml", yaml);
        let applied = vane(&url, &["apply", "-f", &file]).await;
        assert!(applied.success, "{}", applied.stderr);
        let proxy =
            VaneProcess::start(&["proxy", "--control-plane", &url, "--node-id", "n1", "--admin", "127.0.0.1:0"])
                .await
                .unwrap();
        let admin: SocketAddr = proxy.banner.rsplit(' ').next().unwrap().parse().unwrap();
        let client = HttpClient::default();
        let config = eventually(Duration::from_secs(10), "the node serves version 1", || async {
            let json: serde_json::Value = serde_json::from_str(&client.get(admin, "/config").await.ok()?.body).ok()?;
            (json["version"] == 1).then_some(json)
        })
        .await;
        let web = config["listeners"]["web"].as_str().unwrap().parse().unwrap();
        Binaries { _cp: cp, _proxy: proxy, admin, web }
    }
}

fn post(web: SocketAddr, path: &str, body: &'static [u8]) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("http://{web}{path}")).body(Full::new(Bytes::from_static(body))).unwrap()
}

#[tokio::test]
async fn a_killed_endpoint_costs_no_request_and_returns_to_rotation_once_it_answers() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let e2 = EchoServer::start("echo-2", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let e2_addr = e2.addr();
    // The quickstart's shape: no retry, no outlier detection, no health check.
    let yaml = config_yaml(&[("echo", &[e1.addr(), e2_addr])], &[("all", "/", "echo")]);
    let vane = Binaries::start(dir.path(), &yaml).await;
    let client = HttpClient::default();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let reply = client.get(vane.web, "/warm").await.unwrap();
        assert_eq!(reply.status, 200);
        seen.insert(reply.backend().to_owned());
    }
    assert_eq!(seen.len(), 2, "both endpoints serve, with pooled connections to each: {seen:?}");

    // Killed, its open connections with it.
    drop(e2);
    // POSTs first, while the dead endpoint still has its turn: nothing reached it, so
    // they are retried on the live one, body and all.
    for i in 0..4 {
        let reply = client.send(post(vane.web, "/order", b"{\"item\":42}")).await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.backend()), (200, "echo-1"), "POST {i}: {}", reply.body);
        assert!(reply.body.contains("body-bytes: 11\n"), "the body went along: {}", reply.body);
    }
    let mut failures = Vec::new();
    for i in 0..200 {
        let reply = client.get(vane.web, &format!("/loop/{i}")).await.unwrap();
        if reply.status != 200 {
            failures.push((i, reply.status.as_u16()));
        }
    }
    assert!(failures.is_empty(), "requests failed after the kill: {failures:?}");
    let clusters: serde_json::Value =
        serde_json::from_str(&client.get(vane.admin, "/clusters").await.unwrap().body).unwrap();
    let dead = clusters["echo"].as_array().unwrap().iter().find(|e| e["address"] == e2_addr.to_string()).unwrap();
    assert_eq!(dead["available"], false, "the dead endpoint was taken out: {clusters}");
    let metrics = client.get(vane.admin, "/metrics").await.unwrap().body;
    let retries = metric(&metrics, "vane_upstream_retries_total{cluster=\"echo\"}");
    assert!((2.0..=6.0).contains(&retries), "a few retries before the ejection, not one per request: {retries}");

    // Restarted on the same address: back in rotation within its ejection time.
    let e2 = EchoServer::start("echo-2", e2_addr).await.unwrap();
    eventually(Duration::from_secs(30), "echo-2 serves again", || async {
        let reply = client.get(vane.web, "/back").await.ok()?;
        (reply.backend() == "echo-2").then_some(())
    })
    .await;
    let before = e2.received();
    for _ in 0..20 {
        assert_eq!(client.get(vane.web, "/even").await.unwrap().status, 200);
    }
    let share = e2.received() - before;
    assert!((8..=12).contains(&share), "round robin again: echo-2 took {share} of 20");
}

/// An upstream that answers every request `503` and closes.
async fn always_503() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn bodies_are_replayed_on_retries_and_mirrors_and_defaults_can_be_turned_off() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let shadow = EchoServer::start("shadow", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let (failing, failing_task) = always_503().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut yaml = config_yaml(
        &[("flaky", &[failing, e1.addr()]), ("shadow", &[shadow.addr()]), ("bare", &[dead, e1.addr()])],
        &[],
    );
    yaml.push_str(
        "  - name: put\n    match: { prefix: /put }\n    forward: { clusters: [{ name: flaky }], retry: { retry_on: [5xx, reset], backoff: 0.001s }, mirror: { cluster: shadow } }\n\
         \x20 - name: off\n    match: { prefix: /off }\n    forward: { clusters: [{ name: bare }], retry: { num_retries: 0 } }\n",
    );
    yaml = yaml.replacen(
        "  - name: bare\n    endpoints:\n",
        "  - name: bare\n    outlier_detection: { disabled: true }\n    endpoints:\n",
        1,
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();

    // A PUT (idempotent) whose first try gets a 503 is sent again, body included; its
    // mirror carries the body too.
    for _ in 0..4 {
        let put = http::Request::put(format!("http://{web}/put/item"))
            .body(Full::new(Bytes::from_static(b"0123456789abcdef")))
            .unwrap();
        let reply = client.send(put).await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.backend()), (200, "echo-1"), "{}", reply.body);
        assert!(reply.body.contains("body-bytes: 16\n"), "{}", reply.body);
    }
    eventually(Duration::from_secs(5), "four mirrored PUTs", || async { (shadow.received() == 4).then_some(()) }).await;

    // Turned off: no retry, no ejection: the dead endpoint's turn fails, every time.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(client.send(post(web, "/off", b"x")).await.unwrap().status.as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 502).count(), 4, "{statuses:?}");
    failing_task.abort();
}

#[tokio::test]
async fn streamed_bodies_are_read_ahead_for_a_retry_within_the_node_budget() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = vane_data_plane::Node::start(vane_data_plane::NodeConfig {
        node_id: "budget".into(),
        control_plane: cp.url(),
        cache_dir: None,
        admin: Some("127.0.0.1:0".parse().unwrap()),
        labels: Default::default(),
        token: None,
        tls: None,
        otlp_endpoint: None,
        replay_budget_bytes: Some(4096),
        file_poll_interval: vane_data_plane::NodeConfig::DEFAULT_FILE_POLL_INTERVAL,
    })
    .await
    .unwrap();
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let (failing, failing_task) = always_503().await;
    let mut yaml = config_yaml(&[("flaky", &[failing, e1.addr()])], &[]);
    yaml.push_str(
        "  - name: kept\n    match: { prefix: /kept }\n    forward: { clusters: [{ name: flaky }], retry: { retry_on: [5xx, reset], backoff: 0.001s } }\n\
         \x20 - name: small\n    match: { prefix: /small }\n    forward: { clusters: [{ name: flaky }], retry: { retry_on: [5xx, reset], backoff: 0.001s }, replay_body_bytes: 100 }\n",
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    // HTTP/2 bodies stream (hyper reads them): they are read ahead to be kept.
    let client = HttpClient::h2c();
    let put = |path: &str, n: usize| {
        http::Request::put(format!("http://{web}{path}")).body(Full::new(Bytes::from(vec![b'x'; n]))).unwrap()
    };
    for _ in 0..4 {
        let reply = client.send(put("/kept/a", 1000)).await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.backend()), (200, "echo-1"), "{}", reply.body);
        assert!(reply.body.contains("body-bytes: 1000\n"), "{}", reply.body);
    }
    // Announced larger than the whole budget (4 KiB here): refused, not grown.
    let reply = client.send(put("/kept/b", 8000)).await.unwrap();
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.headers.get("x-vane-overloaded").unwrap(), "replay_budget");
    // Past the route's own limit the body streams once: the 503 endpoint's turn stands.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(client.send(put("/small/c", 1000)).await.unwrap().status.as_u16());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 2, "{statuses:?}");
    // The budget is whole again once the answers are in: a body of 4 KiB fits.
    let reply = client.send(put("/kept/d", 4096)).await.unwrap();
    assert_eq!((reply.status.as_u16(), reply.backend()), (200, "echo-1"), "{}", reply.body);
    let metrics = HttpClient::default().get(node.admin_addr().unwrap(), "/metrics").await.unwrap().body;
    assert_eq!(metric(&metrics, "vane_replay_budget_refused_total"), 1.0, "{metrics}");
    assert_eq!(metric(&metrics, "vane_replay_budget_bytes_in_use"), 0.0, "{metrics}");
    failing_task.abort();
}
