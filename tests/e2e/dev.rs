//! `vane dev` as a new user runs it: the quickstart read from `examples/quickstart.yaml`
//! in the current directory (the tour edits it; nothing rebuilds), the built-in copy where
//! there is none; `vane dev --nodes 2`, two nodes on one shared port.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use http::StatusCode;
use vane_suite::*;

/// Starts `vane dev` in `dir` on ephemeral ports (its store in `dir/.vane`), the proxy's
/// `web` listener on `web`; waits for its startup output.
async fn start_dev(dir: &Path, web: &str) -> VaneProcess {
    let any = "127.0.0.1:0";
    let args = ["dev", "--listen", any, "--admin", any, "--backends", any, any, "--web", web];
    VaneProcess::start_in(dir, &args, "  backends").await.unwrap()
}

/// The proxy's address, from the startup output's `proxy  http://ADDR` line.
fn proxy_addr(dev: &VaneProcess) -> SocketAddr {
    dev.banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("proxy"))
        .and_then(|rest| rest.trim().strip_prefix("http://"))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no proxy address: {}", dev.banner))
}

#[tokio::test]
async fn dev_reads_the_quickstart_from_the_current_directory_else_its_built_in_copy() {
    init_logs();
    let client = HttpClient::default();

    // The tour's edit (`/api` becomes `/v2`) in a directory of its own: served as edited.
    let edited = tempfile::tempdir().unwrap();
    // From the built-in copy, so a tour edit left in this checkout changes nothing here.
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("cli/src/quickstart.yaml");
    let original = std::fs::read_to_string(&built_in).unwrap();
    assert!(original.contains("prefix: /api"), "{original}");
    std::fs::create_dir(edited.path().join("examples")).unwrap();
    let file = edited.path().join("examples/quickstart.yaml");
    std::fs::write(&file, original.replace("prefix: /api", "prefix: /v2")).unwrap();
    let dev = start_dev(edited.path(), "127.0.0.1:0").await;
    let web = proxy_addr(&dev);
    let first = dev.banner.lines().next().unwrap();
    assert_eq!(first, format!("vane dev is running: version 1, applied from {}", file.display()));
    let reply = client.get(web, "/v2/hello").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.backend(), "echo-1");
    assert_eq!(client.get(web, "/api/hello").await.unwrap().status, StatusCode::NOT_FOUND);
    assert!(edited.path().join(".vane/store").is_dir(), "the store is under the current directory");
    dev.kill().await.unwrap();

    // No examples/ here: the copy built into the binary, the route as shipped.
    let bare = tempfile::tempdir().unwrap();
    let dev = start_dev(bare.path(), "127.0.0.1:0").await;
    let web = proxy_addr(&dev);
    let first = dev.banner.lines().next().unwrap();
    assert_eq!(
        first,
        format!(
            "vane dev is running: version 1, applied from the quickstart built into vane \
             (no examples/quickstart.yaml in {})",
            bare.path().display()
        )
    );
    assert_eq!(client.get(web, "/api/hello").await.unwrap().backend(), "echo-1");
    assert_eq!(client.get(web, "/api/hello").await.unwrap().backend(), "echo-2");
    assert_eq!(client.get(web, "/v2/hello").await.unwrap().status, StatusCode::NOT_FOUND);
    dev.kill().await.unwrap();

    // Started again on its store, it says the store's version serves, not the file.
    let dev = start_dev(bare.path(), "127.0.0.1:0").await;
    let first = dev.banner.lines().next().unwrap();
    assert!(first.starts_with("vane dev is running: version 1, from the store in .vane/store"), "{first}");
    dev.kill().await.unwrap();
}

#[tokio::test]
async fn dev_says_at_once_when_its_node_cannot_serve_the_quickstart() {
    init_logs();
    // Someone else holds the proxy's port: the node refuses version 1, and the first line
    // says so with the reason (not `vane dev is running`), without waiting 10 s.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    vane_bin(); // built (or found fresh) before the clock starts
    let started = std::time::Instant::now();
    let dev = start_dev(dir.path(), &port).await;
    let first = dev.banner.lines().next().unwrap();
    assert!(first.starts_with("vane dev started, but its node does not serve version 1, "), "{first}");
    assert!(first.contains(&format!("it refused version 1: listener 'web': {port}: address in use")), "{first}");
    // It gives up waiting after 10 s; the refusal ends the wait well before.
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "{:?}", started.elapsed());
    dev.kill().await.unwrap();
}

/// The address after `label` on the banner line that starts with it (`  proxy  http://ADDR ...`).
fn banner_addr(dev: &VaneProcess, label: &str) -> SocketAddr {
    dev.banner
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|url| url.strip_prefix("http://"))
        .and_then(|addr| addr.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no {label} address: {}", dev.banner))
}

/// A node's requests so far: the sum of its `vane_http_requests_total` samples.
async fn requests_served(admin: SocketAddr) -> Option<f64> {
    let body = HttpClient::default().get(admin, "/metrics").await.ok()?.body;
    let samples = body.lines().filter(|l| l.starts_with("vane_http_requests_total"));
    Some(samples.filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum())
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn dev_with_two_nodes_lists_both_and_spreads_connections_over_them() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let any = "127.0.0.1:0";
    let args = ["dev", "--nodes", "2", "--listen", any, "--admin", any, "--backends", any, any, "--web", any];
    let dev = VaneProcess::start_in(dir.path(), &args, "  backends").await.unwrap();
    let first = dev.banner.lines().next().unwrap();
    assert!(
        first.starts_with("vane dev is running: version 1, applied from the quickstart built into vane"),
        "{first}"
    );
    // `--web 127.0.0.1:0` became one port, which both nodes bind (enable_reuse_port).
    let web = banner_addr(&dev, "proxy");
    assert_ne!(web.port(), 0);
    let server = format!("http://{}", banner_addr(&dev, "control plane"));
    let admins = [banner_addr(&dev, "node dev-1"), banner_addr(&dev, "node dev-2")];
    assert_ne!(admins[0], admins[1], "each node its own admin endpoint: {}", dev.banner);

    // `vane nodes` lists both, each serving version 1.
    eventually(Duration::from_secs(10), "vane nodes shows dev-1 and dev-2 serving version 1", || async {
        let table = vane(&server, &["nodes"]).await.stdout;
        let rows: Vec<Vec<&str>> = table.lines().skip(1).map(|l| l.split_whitespace().take(3).collect()).collect();
        (rows == [["dev-1", "yes", "1"], ["dev-2", "yes", "1"]]).then_some(())
    })
    .await;
    let json: serde_json::Value = serde_json::from_str(&vane(&server, &["nodes", "-o", "json"]).await.stdout).unwrap();
    let held: Vec<(&str, &str)> = json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node_id"].as_str().unwrap(), n["version_held"].as_str().unwrap()))
        .collect();
    assert_eq!(held, [("dev-1", "1"), ("dev-2", "1")]);

    // Requests on fresh connections through the shared port until each node's own counter
    // has moved. The kernel picks a node by a hash of each connection's addresses: a new
    // source port each time, so both get some, but how many it takes is not fixed.
    let request = format!("GET /api/hello HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    let counts = loop {
        for _ in 0..10 {
            assert_eq!(raw_status(web, request.as_bytes()).await, 200);
        }
        sent += 10;
        let mut counts = Vec::new();
        for admin in admins {
            counts.push(requests_served(admin).await.unwrap_or(0.0));
        }
        if counts.iter().all(|c| *c > 0.0) || sent >= 400 || Instant::now() > deadline {
            break counts;
        }
    };
    assert!(counts.iter().all(|c| *c > 0.0), "after {sent} connections, requests per node: {counts:?}");
    assert!(counts.iter().sum::<f64>() <= f64::from(sent), "{counts:?} for {sent} requests");
    dev.kill().await.unwrap();
}

#[tokio::test]
async fn dev_with_several_nodes_refuses_listeners_without_enable_reuse_port_before_any_node_starts() {
    init_logs();
    // The tour's file edited to drop the option: two nodes could not share its port.
    let dir = tempfile::tempdir().unwrap();
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("cli/src/quickstart.yaml");
    let original = std::fs::read_to_string(&built_in).unwrap();
    assert!(original.contains("enable_reuse_port: true"), "{original}");
    let edited: String =
        original.lines().filter(|l| !l.contains("enable_reuse_port")).map(|l| format!("{l}\n")).collect();
    std::fs::create_dir(dir.path().join("examples")).unwrap();
    let file = dir.path().join("examples/quickstart.yaml");
    std::fs::write(&file, edited).unwrap();
    let any = "127.0.0.1:0";
    let args = ["dev", "--nodes", "2", "--listen", any, "--admin", any, "--backends", any, any];
    let run =
        tokio::process::Command::new(vane_bin()).args(args).current_dir(dir.path()).env_remove("VANE_TOKEN").output();
    let out = tokio::time::timeout(Duration::from_secs(20), run).await.expect("vane dev exits").unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        error,
        format!(
            "error: --nodes 2: the nodes share each listener's address, which needs `enable_reuse_port: true` on every \
             listener; listener 'web' (127.0.0.1:8080) in {} does not set it (the quickstart shipped with vane does; \
             `vane dev` without --nodes runs one node)",
            file.display()
        )
    );
    assert!(out.stdout.is_empty(), "nothing ran: {}", String::from_utf8_lossy(&out.stdout));
    assert!(!dir.path().join(".vane/dev-1").exists() && !dir.path().join(".vane/dev-2").exists(), "no node started");
}
