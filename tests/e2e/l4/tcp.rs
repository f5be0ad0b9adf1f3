//! TCP listeners: a real Redis behind one with `redis-cli` through Vane, half-close,
//! an endpoint killed under a connection loop, metrics and access-log lines.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use vane_suite::*;

use super::{Banner, LineClient, Vane, tcp_yaml};

/// A `redis-server` on a free port, without persistence; killed when dropped.
struct Redis {
    port: u16,
    _child: Child,
}

impl Redis {
    async fn start() -> Redis {
        // Missing redis-server fails the test: `.ci/run` installs it.
        let found = std::process::Command::new("redis-server").arg("--version").output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "redis-server is not installed (apt-get install -y redis-server redis-tools)"
        );
        let port = {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            free.local_addr().unwrap().port()
        };
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        eventually(Duration::from_secs(10), "redis-server answers PING", || async {
            (redis_cli(port, &["PING"]).await == "PONG").then_some(())
        })
        .await;
        Redis { port, _child: child }
    }
}

/// `redis-cli -p PORT ARGS`, its output trimmed.
async fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("redis-cli runs (apt-get install -y redis-tools)");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn l4_redis_cli_sets_and_gets_through_a_tcp_listener() {
    let redis = Redis::start().await;
    let upstream: SocketAddr = ([127, 0, 0, 1], redis.port).into();
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("tcp.log");
    let vane = Vane::start(&tcp_yaml(
        &format!("    access_log: {{path: '{}', format: JSON}}\n", log.display()),
        &[upstream],
        "",
    ))
    .await;
    let port = vane.listener("tcp").await.port();
    assert_eq!(redis_cli(port, &["SET", "greeting", "hello from vane"]).await, "OK");
    assert_eq!(redis_cli(port, &["GET", "greeting"]).await, "hello from vane");
    // What went through Vane is in Redis itself.
    assert_eq!(redis_cli(redis.port, &["GET", "greeting"]).await, "hello from vane");

    let metrics = vane.metrics().await;
    assert_eq!(metric(&metrics, "vane_downstream_connections_total{listener=\"tcp\"}"), 2.0, "{metrics}");
    assert!(metric(&metrics, "vane_l4_bytes_total{listener=\"tcp\",direction=\"in\"}") > 40.0, "{metrics}");
    assert!(metric(&metrics, "vane_l4_bytes_total{listener=\"tcp\",direction=\"out\"}") >= 20.0, "{metrics}");
    assert_eq!(metric(&metrics, "vane_l4_upstream_connect_failures_total{listener=\"tcp\"}"), 0.0);
    let lines = eventually(Duration::from_secs(10), "two access-log lines", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (lines.len() == 2).then_some(lines)
    })
    .await;
    for line in &lines {
        assert_eq!(line["protocol"], "TCP");
        assert_eq!(line["listener"], "tcp");
        assert_eq!(line["cluster"], "backend");
        assert_eq!(line["upstream"], upstream.to_string());
        assert_eq!(line["end"], "closed");
        assert!(line["bytes_in"].as_u64().unwrap() > 0 && line["bytes_out"].as_u64().unwrap() > 0, "{line}");
    }
}

#[tokio::test]
async fn l4_a_client_that_shuts_its_write_side_still_reads_the_answer() {
    let backend = Banner::start("b1").await;
    let vane = Vane::start(&tcp_yaml("", &[backend.addr], "")).await;
    let addr = vane.listener("tcp").await;
    let (mut client, banner) = LineClient::connect(addr).await.unwrap();
    assert_eq!(banner, "b1");
    assert_eq!(client.ask("ping").await.unwrap(), "b1: ping");
    // FIN from the client reaches the upstream, which answers after it, then closes.
    assert_eq!(client.finish().await.unwrap(), "b1 got 5 bytes\n");
}

#[tokio::test]
async fn l4_an_endpoint_killed_under_a_connection_loop_is_ejected() {
    let (first, second) = (Banner::start("b1").await, Banner::start("b2").await);
    let vane = Vane::start(&tcp_yaml("", &[first.addr, second.addr], "")).await;
    let addr = vane.listener("tcp").await;
    let mut answered = Vec::new();
    let mut first = Some(first);
    for i in 0..30 {
        if i == 6 {
            first.take().unwrap().kill().await;
        }
        // Every connection reaches a live endpoint: a refused connect is retried on the
        // other one before the client sees anything.
        let (mut client, banner) = LineClient::connect(addr).await.unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(client.ask("hi").await.unwrap(), format!("{banner}: hi"));
        answered.push(banner);
    }
    assert_eq!(answered[..6].iter().filter(|b| *b == "b1").count(), 3, "round robin before: {answered:?}");
    assert!(answered[6..].iter().all(|b| b == "b2"), "{answered:?}");
    // Three refusals eject it (the default passive health); later connections do not try it.
    let metrics = vane.metrics().await;
    assert_eq!(metric(&metrics, "vane_l4_upstream_connect_failures_total{listener=\"tcp\"}"), 3.0, "{metrics}");
    assert_eq!(second.accepted(), 27);
    let clusters = HttpClient::default().get(vane.admin, "/clusters").await.unwrap().body;
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    let dead = clusters["backend"].as_array().and_then(|eps| eps.first()).cloned().unwrap_or_default();
    assert_eq!(dead["available"], false, "{clusters}");
}

#[tokio::test]
async fn l4_a_cluster_with_no_live_endpoint_closes_the_client_and_counts_it() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let vane = Vane::start(&tcp_yaml("", &[dead], "")).await;
    let addr = vane.listener("tcp").await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read =
        tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read(&mut stream, &mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "closed without a byte: {read:?}");
    let metrics = vane.metrics().await;
    assert_eq!(metric(&metrics, "vane_l4_refused_total{listener=\"tcp\",reason=\"connect_failed\"}"), 1.0, "{metrics}");
}
