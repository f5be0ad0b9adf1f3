//! Cache purges through the real binaries: `vane cache purge` on the control plane,
//! applied by every node in order, and by a node that was away when it comes back.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use vane_suite::*;

const WITHIN: Duration = Duration::from_secs(10);

/// A `vane proxy` process keeping its state in `state_dir`; with its admin address.
async fn proxy(control_plane: &str, id: &str, state_dir: &str) -> (VaneProcess, SocketAddr) {
    let args = [
        "proxy",
        "--control-plane",
        control_plane,
        "--node-id",
        id,
        "--admin",
        "127.0.0.1:0",
        "--state-dir",
        state_dir,
    ];
    let proxy = VaneProcess::start(&args).await.expect("vane proxy starts");
    let admin = proxy.banner.rsplit(' ').next().and_then(|a| a.parse().ok()).expect("admin address in the banner");
    (proxy, admin)
}

async fn purge_seq(admin: SocketAddr) -> f64 {
    let metrics = HttpClient::default().get(admin, "/metrics").await.map(|r| r.body).unwrap_or_default();
    metric(&metrics, "vane_cache_purge_seq")
}

/// Each node's `purge_seq` in `vane nodes -o json`, by node id.
async fn fleet_purge_seqs(url: &str) -> Vec<(String, String)> {
    let out = vane(url, &["nodes", "-o", "json"]).await;
    let json: Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    let mut seqs: Vec<(String, String)> = json["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| (n["node_id"].as_str().unwrap_or("").to_owned(), n["purge_seq"].as_str().unwrap_or("0").to_owned()))
        .collect();
    seqs.sort();
    seqs
}

#[tokio::test]
async fn purges_reach_every_node_in_order_and_a_node_that_was_away_catches_up() {
    init_logs();
    let data = tempfile::tempdir().unwrap();
    let cp = VaneProcess::control_plane(&data.path().join("store"), &[]).await.unwrap();
    let url = cp.control_plane_url().unwrap();
    let state = |n: &str| data.path().join(n).to_str().unwrap().to_owned();
    let (_n1, admin1) = proxy(&url, "n1", &state("n1")).await;
    let (n2, admin2) = proxy(&url, "n2", &state("n2")).await;
    eventually(WITHIN, "both nodes connected", || async { (fleet_purge_seqs(&url).await.len() == 2).then_some(()) })
        .await;

    let out = vane(&url, &["cache", "purge", "shop.example/cart?id=7"]).await;
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.trim(), "purge 1: applied by 2 of 2 nodes, 0 entries removed");
    assert_eq!((purge_seq(admin1).await, purge_seq(admin2).await), (1.0, 1.0));

    // n2 goes away; two purges are made without it; it comes back with its state dir and
    // is sent just those two.
    n2.kill().await.unwrap();
    eventually(WITHIN, "n2 is seen gone", || async {
        let out = vane(&url, &["nodes", "-o", "json"]).await;
        let json: Value = serde_json::from_str(&out.stdout).ok()?;
        json["nodes"].as_array()?.iter().any(|n| n["node_id"] == "n2" && n["connected"] != true).then_some(())
    })
    .await;
    let out = vane(&url, &["cache", "purge", "--prefix", "shop.example/static/"]).await;
    assert_eq!(out.stdout.trim(), "purge 2: applied by 1 of 1 nodes, 0 entries removed", "{}", out.stderr);
    let out = vane(&url, &["cache", "purge", "--no-wait", "shop.example/"]).await;
    assert!(out.stdout.starts_with("purge 3 kept; 1 connected nodes apply it now"), "{}", out.stdout);
    eventually(WITHIN, "n1 applied purge 3", || async { (purge_seq(admin1).await == 3.0).then_some(()) }).await;
    let (_n2, admin2) = proxy(&url, "n2", &state("n2")).await;
    eventually(WITHIN, "n2 caught up", || async { (purge_seq(admin2).await == 3.0).then_some(()) }).await;
    let applied = HttpClient::default().get(admin2, "/metrics").await.unwrap().body;
    assert_eq!(metric(&applied, "vane_cache_purges_total"), 2.0, "n2 was sent only the two it missed");
    eventually(WITHIN, "vane nodes shows both at purge 3", || async {
        let seqs = fleet_purge_seqs(&url).await;
        (seqs == [("n1".to_owned(), "3".to_owned()), ("n2".to_owned(), "3".to_owned())]).then_some(())
    })
    .await;

    // A purge that names nothing is refused with the reason.
    let out = vane(&url, &["cache", "purge", ""]).await;
    assert!(!out.success);
    assert!(out.stderr.contains("a purge needs a key, or a prefix"), "{}", out.stderr);
}
