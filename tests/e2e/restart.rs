//! The control plane and nodes as separate `vane` processes; restarts.

use std::time::Duration;

use vane_suite::*;

#[tokio::test]
async fn control_plane_restarted_on_the_same_data_dir_serves_the_same_latest_version() {
    init_logs();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("store");
    let cp = VaneProcess::control_plane(&data_dir, &[]).await.unwrap();
    let url = cp.control_plane_url().unwrap();
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let v1 = write_yaml(data.path(), "v1.yaml", &config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")]));
    let v2 = write_yaml(data.path(), "v2.yaml", &config_yaml(&[("echo", &[e1.addr()])], &[("api", "/v2", "echo")]));
    assert!(vane(&url, &["apply", "-f", &v1]).await.success);
    let out = vane(&url, &["apply", "-f", &v2]).await;
    assert!(out.stdout.starts_with("applied version 2"), "{}", out.stdout);
    let before = vane(&url, &["get", "routes", "-o", "yaml"]).await.stdout;

    // SIGKILL: acknowledged versions are durable.
    cp.kill().await.unwrap();
    let cp = VaneProcess::control_plane(&data_dir, &[]).await.unwrap();
    assert!(cp.banner.ends_with("(version 2)"), "{}", cp.banner);
    let url = cp.control_plane_url().unwrap();
    assert_eq!(vane(&url, &["get", "routes", "-o", "yaml"]).await.stdout, before);
    assert!(before.contains("prefix: /v2"), "{before}");
    let history = vane(&url, &["history"]).await.stdout;
    assert_eq!(history.lines().nth(1).and_then(|l| l.split_whitespace().next()), Some("2"), "{history}");

    // A node (a real `vane proxy` process) gets version 2 from the restarted plane.
    let proxy = VaneProcess::start(&["proxy", "--control-plane", &url, "--node-id", "n1", "--admin", "127.0.0.1:0"])
        .await
        .unwrap();
    assert!(proxy.banner.starts_with("vane proxy n1 admin on 127.0.0.1:"), "{}", proxy.banner);
    let admin = proxy.banner.rsplit(' ').next().unwrap().parse().unwrap();
    let client = HttpClient::default();
    let config = eventually(Duration::from_secs(10), "node serves version 2", || async {
        let reply = client.get(admin, "/config").await.ok()?;
        let json: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
        (json["version"] == 2).then_some(json)
    })
    .await;
    let web = config["listeners"]["web"].as_str().unwrap().parse().unwrap();
    assert_eq!(client.get(web, "/v2/x").await.unwrap().backend(), "echo-1");
    assert_eq!(client.get(admin, "/ready").await.unwrap().body, "ready\n");
}

#[tokio::test]
async fn sigterm_drains_requests_in_flight_then_exits() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    cp.apply(&config_yaml(&[("echo", &[e1.addr()])], &[("all", "/", "echo")])).await.unwrap();
    let mut proxy =
        VaneProcess::start(&["proxy", "--control-plane", &cp.url(), "--node-id", "drainer", "--admin", "127.0.0.1:0"])
            .await
            .unwrap();
    let admin = proxy.banner.rsplit(' ').next().unwrap().parse().unwrap();
    let client = HttpClient::default();
    let config = eventually(Duration::from_secs(10), "the node serves", || async {
        let json: serde_json::Value = serde_json::from_str(&client.get(admin, "/config").await.ok()?.body).ok()?;
        (json["version"] == 1).then_some(json)
    })
    .await;
    let web: std::net::SocketAddr = config["listeners"]["web"].as_str().unwrap().parse().unwrap();

    let before = e1.received();
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.get(web, "/slow?delay_ms=800").await }
    });
    eventually(Duration::from_secs(5), "the slow request is upstream", || async {
        (e1.received() > before).then_some(())
    })
    .await;
    proxy.terminate().unwrap();
    let reply = slow.await.unwrap().unwrap();
    assert_eq!(reply.status, 200, "the request in flight finished");
    let status = proxy.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status:?}");
    assert!(tokio::net::TcpStream::connect(web).await.is_err(), "nothing listens after the drain");
}

#[tokio::test]
async fn the_vane_node_binary_is_a_node_like_vane_proxy() {
    init_logs();
    let serving = Serving::echo_all().await;
    let node_bin = built_artifact("vane-node");
    let node = VaneProcess::start_binary(
        &node_bin,
        &["--control-plane", &serving.cp.url(), "--node-id", "slim", "--admin", "127.0.0.1:0"],
    )
    .await
    .unwrap();
    assert!(node.banner.starts_with("vane proxy slim admin on 127.0.0.1:"), "{}", node.banner);
    serving.cp.wait_acked("slim", 1).await;
    let admin: std::net::SocketAddr = node.banner.rsplit(' ').next().unwrap().parse().unwrap();
    let client = HttpClient::default();
    let config: serde_json::Value = serde_json::from_str(&client.get(admin, "/config").await.unwrap().body).unwrap();
    let web: std::net::SocketAddr = config["listeners"]["web"].as_str().unwrap().parse().unwrap();
    let reply = client.get(web, "/through-vane-node").await.unwrap();
    assert_eq!((reply.status.as_u16(), reply.backend()), (200, "echo-1"));
    node.kill().await.unwrap();
}
