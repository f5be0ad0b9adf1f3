//! The response cache under concurrency and failure: misses coalesced into one upstream
//! request, stale-while-revalidate with exactly one background refresh, stale-if-error
//! with the origin gone, the disk tier across a node restart, and the real binaries.

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Full;
use vane_suite::{HttpClient, VaneProcess, eventually, init_logs, listener, vane, wait_version, write_yaml};

use super::cache::{Cached, Origin, cache_status, x_cache};

#[tokio::test]
async fn a_hundred_concurrent_misses_make_one_upstream_request() {
    init_logs();
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, "").await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (client, web) = (t.client.clone(), t.web);
        set.spawn(async move { client.get(web, "/slow").await.expect("answered") });
    }
    let mut outcomes = std::collections::BTreeMap::new();
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "slow 1"));
        *outcomes.entry(x_cache(&r).to_owned()).or_insert(0) += 1;
    }
    assert_eq!(origin.hits("/slow"), 1, "one upstream request for 100 misses: {outcomes:?}");
    assert_eq!(outcomes.get("MISS"), Some(&1), "{outcomes:?}");
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, "").await;
    assert_eq!(t.get("/swr", &[]).await.body, "swr 1");
    // max-age=2: poll until the entry is served stale (its refresh starts then).
    eventually(Duration::from_secs(5), "the entry is served stale", || async {
        let r = t.get("/swr", &[]).await;
        (x_cache(&r) == "STALE").then_some(())
    })
    .await;
    // The refresh takes 300 ms: everything meanwhile is the stale entry, and no second
    // refresh starts.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (client, web) = (t.client.clone(), t.web);
        set.spawn(async move { client.get(web, "/swr").await.expect("answered") });
    }
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        assert!(r.body == "swr 1" || r.body == "swr 2", "{}", r.body);
    }
    let refreshed = eventually(Duration::from_secs(5), "the refreshed entry is served", || async {
        let r = t.get("/swr", &[]).await;
        (r.body == "swr 2").then_some(r)
    })
    .await;
    assert_eq!(x_cache(&refreshed), "HIT");
    assert_eq!(origin.hits("/swr"), 2, "exactly one background refresh");
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_entry_while_the_origin_is_down() {
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, "").await;
    assert_eq!(t.get("/sie", &[]).await.body, "sie 1");
    drop(origin);
    // max-age=1, stale-if-error=60: once stale, the dead origin's 502 is replaced.
    let r = eventually(Duration::from_secs(5), "the stale entry is served", || async {
        let r = t.get("/sie", &[]).await;
        (x_cache(&r) == "STALE").then_some(r)
    })
    .await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "sie 1"));
    assert!(cache_status(&r).contains("fwd-status=502"), "{}", cache_status(&r));
    // Without stale-if-error the same failure reaches the client.
    let other = t.get("/other", &[]).await;
    assert_eq!(other.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn the_config_default_stale_if_error_window_applies_when_the_response_says_nothing() {
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, ", stale_if_error: 60s").await;
    assert_eq!(t.get("/short", &[]).await.body, "short 1");
    drop(origin);
    let r = eventually(Duration::from_secs(5), "the stale entry is served", || async {
        let r = t.get("/short", &[]).await;
        (x_cache(&r) == "STALE").then_some(r)
    })
    .await;
    assert_eq!(r.body, "short 1");
}

#[tokio::test]
async fn the_disk_tier_serves_after_a_node_restart_and_drops_a_damaged_entry() {
    // The key holds the host: one name for both nodes, whose listeners get other ports.
    const HOST: &[(&str, &str)] = &[("host", "www.example.test")];
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge");
    // Each node's files are in a subdirectory named after it (nodes on one host share the
    // config, never the files).
    let node_files = path.join("n1");
    let mut t = Cached::start(origin.addr, &format!(", disk: {{path: '{}'}}", path.display())).await;
    t.get("/fresh", HOST).await;
    t.get("/range", HOST).await;
    let files =
        || std::fs::read_dir(&node_files).map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>());
    // Written behind the answers: two entries and the SPEC file, no temporary file left.
    eventually(Duration::from_secs(5), "both entries on disk", || async {
        let names = files().ok()?;
        (names.len() == 3 && names.iter().all(|p| p.extension().is_none())).then_some(())
    })
    .await;
    // Damage /range's file (its head names the key in clear).
    let damaged = files()
        .unwrap()
        .into_iter()
        .find(|p| std::fs::read(p).unwrap().windows(6).any(|w| w == b"/range"))
        .expect("the /range file");
    let mut bytes = std::fs::read(&damaged).unwrap();
    let at = bytes.len() - 40;
    bytes[at] ^= 0x20;
    std::fs::write(&damaged, bytes).unwrap();

    // The node restarted: the memory tier is empty, the directory is not. Another node
    // on the same config starts with directories of its own.
    let other = t.cp.node("n2").await;
    wait_version(&other, 1).await;
    let other_web = listener(&other, "web").await;
    let req =
        Request::get(format!("http://{other_web}/fresh")).header("host", HOST[0].1).body(Full::default()).unwrap();
    let from_other = t.client.send(req).await.unwrap();
    assert_eq!(x_cache(&from_other), "MISS", "n2 does not read n1's files");
    assert_eq!(origin.hits("/fresh"), 2);
    assert!(path.join("n2").is_dir(), "n2 writes under its own subdirectory");
    // n1 stops (n2 stands in for it in `t`), then starts again; n2 stops.
    drop(std::mem::replace(&mut t.node, other));
    t.node = t.cp.node("n1").await;
    wait_version(&t.node, 1).await;
    t.web = listener(&t.node, "web").await;
    let fresh = t.get("/fresh", HOST).await;
    assert_eq!((x_cache(&fresh), fresh.body.as_str()), ("HIT", "0123456789"), "{}", cache_status(&fresh));
    assert_eq!(origin.hits("/fresh"), 2, "served from disk after the restart");
    let range = t.get("/range", HOST).await;
    assert_eq!((x_cache(&range), range.body.as_str()), ("MISS", "0123456789"), "the damaged entry is not served");
    assert_eq!(origin.hits("/range"), 2);
}

#[tokio::test]
async fn the_real_binaries_cache_answers_and_list_the_cache() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = VaneProcess::control_plane(&dir.path().join("store"), &[]).await.unwrap();
    let url = cp.control_plane_url().unwrap();
    let yaml = format!(
        "listeners:\n  - {{name: web, address: '127.0.0.1:0'}}\n\
         clusters:\n  - {{name: origin, endpoints: [{{address: '{}'}}]}}\n\
         caches:\n  - {{name: edge, max_bytes: 1048576, stale_if_error: 30s}}\n\
         routes:\n  - {{name: all, match: {{prefix: /}}, forward: {{clusters: [{{name: origin}}]}}, cache: edge}}\n",
        origin.addr
    );
    let file = write_yaml(dir.path(), "config.yaml", &yaml);
    let applied = vane(&url, &["apply", "-f", &file]).await;
    assert!(applied.success, "{}", applied.stderr);
    let listed = vane(&url, &["get", "caches"]).await;
    assert!(listed.stdout.contains("edge") && listed.stdout.contains("1048576"), "{}", listed.stdout);
    let proxy = VaneProcess::start(&["proxy", "--control-plane", &url, "--node-id", "n1", "--admin", "127.0.0.1:0"])
        .await
        .unwrap();
    let admin: std::net::SocketAddr = proxy.banner.rsplit(' ').next().unwrap().parse().unwrap();
    let client = HttpClient::default();
    let config = eventually(Duration::from_secs(10), "the node serves version 1", || async {
        let json: serde_json::Value = serde_json::from_str(&client.get(admin, "/config").await.ok()?.body).ok()?;
        (json["version"] == 1).then_some(json)
    })
    .await;
    let web: std::net::SocketAddr = config["listeners"]["web"].as_str().unwrap().parse().unwrap();
    let curl = |url: String| async move {
        let out = tokio::process::Command::new("curl").args(["-si", "--max-time", "5", &url]).output().await;
        String::from_utf8_lossy(&out.expect("curl runs").stdout).to_lowercase()
    };
    assert!(curl(format!("http://{web}/bin")).await.contains("x-cache: miss"));
    let hit = curl(format!("http://{web}/bin")).await;
    assert!(hit.contains("x-cache: hit") && hit.contains("cache-status: vane; hit"), "{hit}");
    assert_eq!(origin.hits("/bin"), 1);
    let metrics = client.get(admin, "/metrics").await.unwrap().body;
    assert!(metrics.contains("vane_cache_requests_total{route=\"all\",cache=\"edge\",result=\"hit\"} 1"), "{metrics}");
}
