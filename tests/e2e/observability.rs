//! What operators point Prometheus and log pipelines at: `/metrics` and access logs.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use vane_suite::*;

/// One sample's value from a parsed scrape, by metric name and label pairs.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.samples.iter().find_map(|s| {
        let matches = s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v));
        if !matches {
            return None;
        }
        match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(*v),
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map(|b| b.count),
            _ => None,
        }
    })
}

#[tokio::test]
async fn metrics_after_known_traffic_count_by_route_status_and_method_and_parse() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    cp.apply(&config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")])).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();
    for _ in 0..3 {
        assert_eq!(client.get(web, "/api/ok").await.unwrap().status, 200);
    }
    assert_eq!(client.get(web, "/api/teapot?status=418").await.unwrap().status, 418);
    let post = Request::post(format!("http://{web}/api/in")).body(Full::new(Bytes::from_static(b"12345"))).unwrap();
    assert_eq!(client.send(post).await.unwrap().status, 200);
    assert_eq!(client.get(web, "/nowhere").await.unwrap().status, 404);

    let admin = node.admin_addr().unwrap();
    let text = eventually(Duration::from_secs(5), "all six requests recorded", || async {
        let body = client.get(admin, "/metrics").await.ok()?.body;
        body.contains("vane_http_requests_total{listener=\"web\",route=\"\",cluster=\"\",status=\"404\"} 1")
            .then_some(body)
    })
    .await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition");
    let api = [("listener", "web"), ("route", "api"), ("cluster", "echo")];
    let with = |extra: (&'static str, &'static str)| {
        let mut l = api.to_vec();
        l.push(extra);
        l
    };
    assert_eq!(sample(&scrape, "vane_http_requests_total", &with(("status", "200"))), Some(4.0));
    assert_eq!(sample(&scrape, "vane_http_requests_total", &with(("status", "418"))), Some(1.0));
    assert_eq!(sample(&scrape, "vane_http_requests_by_method_total", &with(("method", "GET"))), Some(4.0));
    assert_eq!(sample(&scrape, "vane_http_requests_by_method_total", &with(("method", "POST"))), Some(1.0));
    assert_eq!(sample(&scrape, "vane_http_request_duration_seconds", &api), Some(5.0), "histogram count");
    assert_eq!(sample(&scrape, "vane_http_upstream_duration_seconds", &api), Some(5.0));
    assert_eq!(sample(&scrape, "vane_http_request_bytes_total", &api), Some(5.0), "the POST body");
    assert!(sample(&scrape, "vane_http_response_bytes_total", &api).unwrap() > 500.0);
    assert_eq!(
        sample(&scrape, "vane_http_requests_total", &[("route", ""), ("status", "404")]),
        Some(1.0),
        "unrouted requests are counted"
    );
    assert_eq!(sample(&scrape, "vane_downstream_connections_total", &[("listener", "web")]), Some(1.0), "keep-alive");
    assert_eq!(sample(&scrape, "vane_downstream_connections_active", &[("listener", "web")]), Some(1.0));
    assert_eq!(sample(&scrape, "vane_config_version", &[]), Some(1.0));
    assert_eq!(sample(&scrape, "vane_config_swaps_total", &[]), Some(1.0));
    assert_eq!(sample(&scrape, "vane_control_plane_connected", &[]), Some(1.0));
    assert_eq!(sample(&scrape, "vane_upstream_connect_failures_total", &[("cluster", "echo")]), Some(0.0));
    // Histogram buckets are cumulative and end with +Inf = count.
    let buckets: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("vane_http_request_duration_seconds_bucket{listener=\"web\",route=\"api\""))
        .collect();
    assert_eq!(buckets.len(), 17);
    assert!(buckets.last().unwrap().ends_with("le=\"+Inf\"} 5"), "{buckets:?}");
}

#[tokio::test]
async fn access_log_lines_hold_every_field_in_json_and_text() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let json_log = dir.path().join("access.json");
    let text_log = dir.path().join("access.log");
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")]).replacen(
        "    address: 127.0.0.1:0\n",
        &format!(
            "    address: 127.0.0.1:0\n    access_log: {{ path: \"{}\" }}\n  - name: plain\n    address: 127.0.0.1:0\n    access_log: {{ format: TEXT, path: \"{}\" }}\n",
            json_log.display(),
            text_log.display()
        ),
        1,
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();
    let req = Request::post(format!("http://{web}/api/cart?id=7"))
        .header("host", "shop.example")
        .header("user-agent", "test-agent/1")
        .header("referer", "https://ref.example/")
        .header("x-request-id", "req-123")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let reply = client.send(req).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(client.get(web, "/missing").await.unwrap().status, 404);

    let lines = eventually(Duration::from_secs(5), "two JSON lines", || async {
        let text = std::fs::read_to_string(&json_log).ok()?;
        (text.lines().count() == 2).then_some(text)
    })
    .await;
    let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert!(first["time"].as_str().unwrap().ends_with('Z'), "{first}");
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{first}");
    assert_eq!(first["method"], "POST");
    assert_eq!(first["host"], "shop.example");
    assert_eq!(first["path"], "/api/cart?id=7");
    assert_eq!(first["protocol"], "HTTP/1.1");
    assert_eq!(first["status"], 200);
    assert_eq!(first["bytes_in"], 5);
    assert_eq!(first["bytes_out"].as_u64().unwrap() as usize, reply.body.len());
    assert!(first["duration_ms"].as_f64().unwrap() >= first["upstream_ms"].as_f64().unwrap());
    assert_eq!(first["upstream"], e1.addr().to_string());
    assert_eq!(
        (first["listener"].as_str(), first["route"].as_str(), first["cluster"].as_str()),
        (Some("web"), Some("api"), Some("echo"))
    );
    assert_eq!(first["request_id"], "req-123");
    assert_eq!(first["user_agent"], "test-agent/1");
    assert_eq!(first["referer"], "https://ref.example/");
    let second: serde_json::Value = serde_json::from_str(lines.lines().nth(1).unwrap()).unwrap();
    assert_eq!((second["status"].as_u64(), second["route"].as_str()), (Some(404), Some("")));
    assert_eq!(second["upstream"], serde_json::Value::Null);

    // The text listener: a generated request id shows in the line and reached the upstream.
    let plain = listener(&node, "plain").await;
    let reply = client.get(plain, "/api/t").await.unwrap();
    let sent_id = reply.body.lines().find_map(|l| l.strip_prefix("x-request-id: ")).unwrap().to_owned();
    let line = eventually(Duration::from_secs(5), "one text line", || async {
        std::fs::read_to_string(&text_log).ok().filter(|t| t.lines().count() == 1)
    })
    .await;
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("] \"GET /api/t HTTP/1.1\" 200 "), "{line}");
    assert!(
        line.contains(&format!(" upstream={} listener=plain route=api cluster=echo rid={sent_id} in=0\n", e1.addr())),
        "{line}"
    );
}

#[tokio::test]
async fn an_unwritable_access_log_path_is_nacked() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let good = config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")]);
    cp.apply(&good).await.unwrap();
    wait_version(&node, 1).await;
    let bad = good.replacen(
        "    address: 127.0.0.1:0\n",
        "    address: 127.0.0.1:0\n    access_log: { path: /nonexistent-dir/x/access.log }\n",
        1,
    );
    cp.apply(&bad).await.unwrap();
    eventually(Duration::from_secs(5), "the NACK names the path", || async {
        let out = vane(&cp.url(), &["nodes"]).await.stdout;
        out.contains("cannot open /nonexistent-dir/x/access.log").then_some(())
    })
    .await;
    assert_eq!(node.version(), 1);
}

#[tokio::test]
async fn control_plane_metrics_count_writes_pushes_nacks_and_nodes() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let good = config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")]);
    cp.apply(&good).await.unwrap();
    cp.apply(&good).await.unwrap(); // unchanged
    cp.apply(&good.replace("name: echo }", "name: nope }")).await.unwrap_err(); // invalid
    wait_version(&node, 1).await;
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    cp.apply(&good.replacen("listeners:\n", &format!("listeners:\n  - {{ name: b, address: \"{taken}\" }}\n"), 1))
        .await
        .unwrap();
    let text = eventually(Duration::from_secs(5), "the NACK is counted", || async {
        let text = cp.plane.render_metrics();
        text.contains("vane_cp_nacks_total{node=\"n1\"} 1").then_some(text)
    })
    .await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition");
    assert_eq!(sample(&scrape, "vane_cp_nodes_connected", &[]), Some(1.0));
    assert_eq!(sample(&scrape, "vane_cp_config_version", &[]), Some(2.0));
    assert_eq!(sample(&scrape, "vane_cp_nodes_behind", &[]), Some(1.0), "n1 refused version 2");
    assert_eq!(sample(&scrape, "vane_cp_writes_total", &[("outcome", "stored")]), Some(2.0));
    assert_eq!(sample(&scrape, "vane_cp_writes_total", &[("outcome", "unchanged")]), Some(1.0));
    assert_eq!(sample(&scrape, "vane_cp_writes_total", &[("outcome", "invalid")]), Some(1.0));
    assert_eq!(sample(&scrape, "vane_cp_write_duration_seconds", &[]), Some(4.0));
    assert_eq!(sample(&scrape, "vane_cp_push_to_ack_seconds", &[]), Some(1.0));
    assert_eq!(sample(&scrape, "vane_cp_snapshots_sent_total", &[]), Some(2.0));
    assert!(sample(&scrape, "vane_cp_store_bytes", &[]).unwrap() > 0.0);
    drop(squatter);
}

#[tokio::test]
async fn control_plane_process_serves_metrics_over_http() {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let cp =
        VaneProcess::control_plane(&data.path().join("store"), &["--metrics-listen", &metrics_addr]).await.unwrap();
    let url = cp.control_plane_url().unwrap();
    let file = write_yaml(data.path(), "c.yaml", "clusters:\n  - name: c\n    endpoints: [{address: '127.0.0.1:9'}]\n");
    assert!(vane(&url, &["apply", "-f", &file]).await.success);
    let body = eventually(Duration::from_secs(5), "metrics over http", || async {
        HttpClient::default().get(metrics_addr.parse().unwrap(), "/metrics").await.ok().map(|r| r.body)
    })
    .await;
    assert!(body.contains("vane_cp_config_version 1\n"), "{body}");
    assert!(body.contains("vane_cp_writes_total{outcome=\"stored\"} 1\n"), "{body}");
}

#[tokio::test]
async fn vane_top_shows_rate_errors_and_p99_per_route() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    cp.apply(&config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo"), ("err", "/err", "echo")]))
        .await
        .unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let stop = stop.clone();
        async move {
            let client = HttpClient::default();
            // Bounded: stops when told, or after 20 s / 100k requests.
            let started = std::time::Instant::now();
            for _ in 0..100_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) || started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                let _ = client.get(web, "/api/x").await;
                let _ = client.get(web, "/err/x?status=503").await;
            }
        }
    });
    let admin = format!("http://{}", node.admin_addr().unwrap());
    let out = vane("http://127.0.0.1:1", &["top", "--node", &admin, "--once", "--interval", "500ms"]).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.await.unwrap();
    assert!(out.success, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("LISTENER  ROUTE"), "{}", out.stdout);
    let row = |route: &str| {
        lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(route))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    let api = row("api").expect("api row");
    let err = row("err").expect("err row");
    assert!(api[3].parse::<f64>().unwrap() > 0.0, "{api:?}");
    assert_eq!(api[4], "0.0%");
    assert_eq!(err[4], "100.0%", "{err:?}");
    assert!(api[5].starts_with("<=") && api[5].ends_with("ms"), "{api:?}");
}
