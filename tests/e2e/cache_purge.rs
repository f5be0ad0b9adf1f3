//! Cache purges through the real binaries: `vane cache purge` on the control plane
//! removes what two nodes cached (the origin sees the next requests again), each node
//! applies the purges in order, and a node that was away is sent the ones it missed.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use serde_json::Value;
use vane_suite::*;

use super::cache::Origin;

const WITHIN: Duration = Duration::from_secs(10);

/// A `vane proxy` process keeping its state in `state_dir`; its admin address.
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

/// The address of the node's `web` listener once it serves version 1.
async fn web(admin: SocketAddr) -> SocketAddr {
    eventually(WITHIN, "the node serves version 1", || async move {
        let body = HttpClient::default().get(admin, "/config").await.ok()?.body;
        let json: Value = serde_json::from_str(&body).ok()?;
        (json["version"] == 1).then(|| json["listeners"]["web"].as_str()?.parse().ok()).flatten()
    })
    .await
}

/// `GET path` with `Host: shop.example` through `web`; the `x-cache` it got.
async fn x_cache(web: SocketAddr, path: &str) -> String {
    let req = http::Request::get(format!("http://{web}{path}"))
        .header("host", "shop.example")
        .body(Full::<Bytes>::default())
        .unwrap();
    let reply = HttpClient::default().send(req).await.expect("an answer");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.headers.get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

async fn node_metric(admin: SocketAddr, series: &str) -> f64 {
    let metrics = HttpClient::default().get(admin, "/metrics").await.map(|r| r.body).unwrap_or_default();
    metric(&metrics, series)
}

/// Each node's `purge_seq` in `vane nodes -o json` (connected nodes), by node id.
async fn fleet_purge_seqs(url: &str) -> Vec<(String, String)> {
    let out = vane(url, &["nodes", "-o", "json"]).await;
    let json: Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    let mut seqs: Vec<(String, String)> = json["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["connected"] == true)
        .map(|n| (n["node_id"].as_str().unwrap_or("").to_owned(), n["purge_seq"].as_str().unwrap_or("0").to_owned()))
        .collect();
    seqs.sort();
    seqs
}

#[tokio::test]
async fn a_purge_empties_what_every_node_cached_and_a_node_that_was_away_catches_up() {
    init_logs();
    let origin = Origin::start().await;
    let data = tempfile::tempdir().unwrap();
    let cp = VaneProcess::control_plane(&data.path().join("store"), &[]).await.unwrap();
    let url = cp.control_plane_url().unwrap();
    let yaml = format!(
        "listeners:\n  - {{name: web, address: '127.0.0.1:0'}}\n\
         clusters:\n  - {{name: origin, endpoints: [{{address: '{}'}}]}}\n\
         caches:\n  - {{name: pages}}\n\
         routes:\n  - {{name: all, match: {{prefix: /}}, forward: {{clusters: [{{name: origin}}]}}, cache: pages}}\n",
        origin.addr
    );
    assert!(vane(&url, &["apply", "-f", &write_yaml(data.path(), "config.yaml", &yaml)]).await.success);
    let state = |n: &str| data.path().join(n).to_str().unwrap().to_owned();
    let (_n1, admin1) = proxy(&url, "n1", &state("n1")).await;
    let (n2, admin2) = proxy(&url, "n2", &state("n2")).await;
    let webs = [web(admin1).await, web(admin2).await];

    // Both nodes cache /fresh (max-age=60) and /range: one origin request each per node.
    for web in webs {
        for path in ["/fresh", "/range"] {
            assert_eq!(x_cache(web, path).await, "MISS");
            assert_eq!(x_cache(web, path).await, "HIT");
        }
    }
    assert_eq!((origin.hits("/fresh"), origin.hits("/range")), (2, 2));

    let out = vane(&url, &["cache", "purge", "shop.example/fresh"]).await;
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.trim(), "purge 1: applied by 2 of 2 nodes, 2 entries removed");
    for web in webs {
        assert_eq!(x_cache(web, "/fresh").await, "MISS", "the purged key is fetched again");
        assert_eq!(x_cache(web, "/range").await, "HIT", "other keys stay");
    }
    assert_eq!((origin.hits("/fresh"), origin.hits("/range")), (4, 2));
    assert_eq!(
        (node_metric(admin1, "vane_cache_purge_seq").await, node_metric(admin2, "vane_cache_purge_seq").await),
        (1.0, 1.0)
    );

    // n2 goes away; two purges are made without it; it comes back on its state dir and is
    // sent just those two.
    n2.kill().await.unwrap();
    eventually(WITHIN, "n2 is seen gone", || async {
        (fleet_purge_seqs(&url).await == [("n1".to_owned(), "1".to_owned())]).then_some(())
    })
    .await;
    let out = vane(&url, &["cache", "purge", "--prefix", "shop.example/", "--cache", "pages"]).await;
    assert_eq!(out.stdout.trim(), "purge 2: applied by 1 of 1 nodes, 2 entries removed", "{}", out.stderr);
    assert_eq!(x_cache(webs[0], "/range").await, "MISS", "the prefix took every shop.example key");
    let out = vane(&url, &["cache", "purge", "--no-wait", "shop.example/range"]).await;
    assert!(out.stdout.starts_with("purge 3 kept; 1 connected nodes apply it now"), "{}", out.stdout);
    eventually(WITHIN, "n1 applied purge 3", || async {
        (node_metric(admin1, "vane_cache_purge_seq").await == 3.0).then_some(())
    })
    .await;
    let (_n2, admin2) = proxy(&url, "n2", &state("n2")).await;
    eventually(WITHIN, "n2 caught up", || async {
        (node_metric(admin2, "vane_cache_purge_seq").await == 3.0).then_some(())
    })
    .await;
    assert_eq!(node_metric(admin2, "vane_cache_purges_total").await, 2.0, "n2 was sent only the two it missed");
    eventually(WITHIN, "vane nodes shows both at purge 3", || async {
        let seqs = fleet_purge_seqs(&url).await;
        (seqs == [("n1".to_owned(), "3".to_owned()), ("n2".to_owned(), "3".to_owned())]).then_some(())
    })
    .await;

    // Purges that name nothing, or a cache the config lacks, are refused with the reason.
    let out = vane(&url, &["cache", "purge", ""]).await;
    assert!(!out.success);
    assert!(out.stderr.contains("a purge needs a key, or a prefix"), "{}", out.stderr);
    let out = vane(&url, &["cache", "purge", "--cache", "nope", "shop.example/"]).await;
    assert!(!out.success);
    assert!(out.stderr.contains("no cache 'nope' in the latest version"), "{}", out.stderr);
}
