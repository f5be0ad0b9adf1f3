//! Several nodes on one control plane: ACKs, NACKs, `vane nodes`, `vane history`.

use std::time::Duration;

use vane_suite::*;

#[tokio::test]
async fn two_nodes_ack_the_same_version_and_the_cli_shows_both() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let a = cp.node("node-a").await;
    let b = cp.node("node-b").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let v1 = write_yaml(dir.path(), "v1.yaml", &config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")]));
    let v2 = write_yaml(dir.path(), "v2.yaml", &config_yaml(&[("echo", &[e1.addr()])], &[("api", "/v2", "echo")]));
    assert!(vane(&cp.url(), &["apply", "-f", &v1]).await.success);
    assert!(vane(&cp.url(), &["apply", "-f", &v2]).await.success);
    let again = vane(&cp.url(), &["apply", "-f", &v2]).await;
    assert!(again.success && again.stdout.starts_with("unchanged"), "{}", again.stdout);
    wait_version(&a, 2).await;
    wait_version(&b, 2).await;

    // Both answer on their own listener.
    for node in [&a, &b] {
        let reply = HttpClient::default().get(listener(node, "web").await, "/v2/x").await.unwrap();
        assert_eq!(reply.backend(), "echo-1");
    }

    let nodes = eventually(Duration::from_secs(5), "both nodes acked version 2", || async {
        let out = vane(&cp.url(), &["nodes", "-o", "json"]).await;
        let json: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        let nodes = json["nodes"].as_array()?.clone();
        let acked = nodes.iter().filter(|n| n["acked_version"] == "2" && n["connected"] == true).count();
        (acked == 2).then_some(nodes)
    })
    .await;
    let ids: Vec<&str> = nodes.iter().filter_map(|n| n["node_id"].as_str()).collect();
    assert_eq!(ids, ["node-a", "node-b"]);

    let table = vane(&cp.url(), &["nodes"]).await.stdout;
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    for (row, id) in rows.iter().zip(["node-a", "node-b"]) {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cols[..3], [id, "yes", "2"], "{table}");
    }

    let history = vane(&cp.url(), &["history"]).await.stdout;
    let versions: Vec<&str> = history.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(versions, ["2", "1"], "every applied version, newest first:\n{history}");
    assert!(history.contains("~route api"), "{history}");
    assert!(history.contains("+listener web, +cluster echo, +route api"), "{history}");
}

#[tokio::test]
async fn snapshot_with_a_taken_port_is_nacked_and_the_node_keeps_its_listeners() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("node-a").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let v1 = config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")]);
    cp.apply(&v1).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;

    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    let v2 = v1.replacen("listeners:\n", &format!("listeners:\n  - name: admin-api\n    address: \"{taken}\"\n"), 1);
    assert_eq!(cp.apply(&v2).await.unwrap().version, 2, "the control plane accepts it: the port is node-local");

    let expected = format!(
        "{taken}: address in use by another process (nodes on one host share a port with enable_reuse_port: true)"
    );
    let table = eventually(Duration::from_secs(5), "the NACK shows in vane nodes", || async {
        let out = vane(&cp.url(), &["nodes"]).await;
        out.stdout.contains(&expected).then_some(out.stdout)
    })
    .await;
    assert!(table.contains("v2: listener 'admin-api'"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&vane(&cp.url(), &["nodes", "-o", "json"]).await.stdout).unwrap();
    let n = &json["nodes"][0];
    assert_eq!((n["acked_version"].as_str(), n["nack_version"].as_str()), (Some("1"), Some("2")));
    assert_eq!(n["nack_errors"][0]["field"], "address");

    assert_eq!(node.version(), 1, "the node keeps its previous runtime");
    assert_eq!(node.listener_addr("web"), Some(web));
    assert_eq!(node.listener_addr("admin-api"), None);
    let reply = HttpClient::default().get(web, "/api/x").await.unwrap();
    assert_eq!(reply.status, 200, "previous listeners keep serving");

    // Freed port, newer version: the node catches up (no NACK loop on version 2 either).
    drop(squatter);
    let v3 = v2.replace("/api", "/v3");
    assert_eq!(cp.apply(&v3).await.unwrap().version, 3);
    wait_version(&node, 3).await;
    let admin_api = listener(&node, "admin-api").await;
    assert_eq!(admin_api, taken);
    assert_eq!(HttpClient::default().get(admin_api, "/v3/x").await.unwrap().backend(), "echo-1");
}
