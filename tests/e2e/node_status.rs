//! What a node reports about itself, through the real binaries: a last-known-good cache
//! it cannot write.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use vane_suite::*;

const WITHIN: Duration = Duration::from_secs(10);

/// A `vane proxy` process for `control_plane`; returns it with its admin address.
async fn proxy(control_plane: &str, id: &str, extra: &[&str]) -> (VaneProcess, SocketAddr) {
    let mut args = vec!["proxy", "--control-plane", control_plane, "--node-id", id, "--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let proxy = VaneProcess::start(&args).await.expect("vane proxy starts");
    let admin = proxy.banner.rsplit(' ').next().and_then(|a| a.parse().ok()).expect("admin address in the banner");
    (proxy, admin)
}

/// The node's `/config`.
async fn node_config(admin: SocketAddr) -> Option<Value> {
    serde_json::from_str(&HttpClient::default().get(admin, "/config").await.ok()?.body).ok()
}

/// The node's `/metrics`.
async fn node_metrics(admin: SocketAddr) -> String {
    HttpClient::default().get(admin, "/metrics").await.expect("node metrics").body
}

/// Waits until the node serves `version`; returns its `/config`.
async fn serves(admin: SocketAddr, version: u64) -> Value {
    eventually(WITHIN, &format!("the node serves version {version}"), || async move {
        node_config(admin).await.filter(|c| c["version"] == version)
    })
    .await
}

/// `node_id`'s entry of `vane nodes -o json`.
async fn node_status(url: &str, node_id: &str) -> Option<Value> {
    let out = vane(url, &["nodes", "-o", "json"]).await;
    let json: Value = serde_json::from_str(&out.stdout).ok()?;
    json["nodes"].as_array()?.iter().find(|n| n["node_id"] == node_id).cloned()
}

#[tokio::test]
async fn a_cache_that_cannot_be_written_is_a_reported_problem_and_the_version_is_still_acked() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let echo = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    // The cache dir's parent is a regular file: no one, root included, can create it.
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "a file, not a dir").unwrap();
    let cache = blocker.join("cache");
    let cache_arg = cache.to_str().unwrap().to_owned();
    let (_node, admin) = proxy(&cp.url(), "n1", &["--cache-dir", &cache_arg]).await;

    let good = config_yaml(&[("echo", &[echo.addr()])], &[("all", "/", "echo")]);
    cp.apply(&good).await.unwrap();
    cp.wait_acked("n1", 1).await;
    let config = serves(admin, 1).await;
    let web: SocketAddr = config["listeners"]["web"].as_str().unwrap().parse().unwrap();
    assert_eq!(HttpClient::default().get(web, "/x").await.unwrap().backend(), "echo-1", "the version serves");

    let status = eventually(WITHIN, "the cache problem is reported", || async {
        node_status(&cp.url(), "n1").await.filter(|n| n["problems"].as_array().is_some_and(|p| !p.is_empty()))
    })
    .await;
    let problem = &status["problems"][0];
    assert_eq!(problem["kind"], "cache_write", "{status}");
    assert_eq!(problem["subject"], cache_arg.as_str(), "{status}");
    assert!(problem["message"].as_str().unwrap().contains("snapshot cache"), "{status}");
    assert!(status.get("nack_version").is_none_or(|v| v == "0"), "no NACK: {status}");
    assert_eq!(status["acked_version"], "1", "{status}");
    assert_eq!(metric(&node_metrics(admin).await, "vane_node_problems{kind=\"cache_write\"}"), 1.0);
    assert_eq!(metric(&node_metrics(admin).await, "vane_config_nacks_total"), 0.0);
    let cp_metrics = cp.plane.render_metrics();
    assert!(cp_metrics.contains("vane_cp_node_problems{node=\"n1\",kind=\"cache_write\"} 1"), "{cp_metrics}");
    let table = vane(&cp.url(), &["nodes"]).await.stdout;
    assert!(table.contains("cache_write"), "{table}");
    assert!(table.contains(&format!("problem: n1 cache_write {cache_arg}: snapshot cache")), "{table}");

    // The cause removed, the next write succeeds and the problem is gone.
    std::fs::remove_file(&blocker).unwrap();
    cp.apply(&config_yaml(&[("echo", &[echo.addr()])], &[("all", "/v2", "echo")])).await.unwrap();
    cp.wait_acked("n1", 2).await;
    eventually(WITHIN, "the cache problem clears", || async {
        node_status(&cp.url(), "n1").await.filter(|n| n["problems"].as_array().is_none_or(Vec::is_empty))
    })
    .await;
    assert_eq!(metric(&node_metrics(admin).await, "vane_node_problems{kind=\"cache_write\"}"), 0.0);
    assert!(cache.join("snapshot.pb").is_file(), "the last good snapshot is written");
}
