//! What a node reports about itself, through the real binaries: NACKs the control plane
//! keeps across its own restart, a last-known-good cache it cannot write, certificate
//! files that change on disk.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use vane_suite::tls::{Issued, TestCa, TlsClient};
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
async fn a_nacked_version_is_not_offered_again_to_its_node_after_a_control_plane_restart() {
    init_logs();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("store");
    let dir = data_dir.to_str().unwrap().to_owned();
    let cp = VaneProcess::control_plane(&data_dir, &[]).await.unwrap();
    let url = cp.control_plane_url().unwrap();
    let echo = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let (_node, admin) = proxy(&url, "n1", &[]).await;

    let good = config_yaml(&[("echo", &[echo.addr()])], &[("api", "/api", "echo")]);
    assert!(vane(&url, &["apply", "-f", &write_yaml(data.path(), "v1.yaml", &good)]).await.success);
    serves(admin, 1).await;
    // Version 2 names a certificate file this node does not have: the node NACKs it.
    let missing = "/nonexistent/vane-e2e/site.pem";
    let bad = format!(
        "{good}certificates:\n  - name: site\n    certificate_chain: {{ filename: {missing} }}\n    \
         private_key: {{ filename: /nonexistent/vane-e2e/site.key }}\n"
    );
    let out = vane(&url, &["apply", "-f", &write_yaml(data.path(), "v2.yaml", &bad)]).await;
    assert!(out.stdout.starts_with("applied version 2"), "{}{}", out.stdout, out.stderr);
    eventually(WITHIN, "the NACK of version 2 is known", || async {
        node_status(&url, "n1").await.filter(|n| n["nack_version"] == "2")
    })
    .await;
    assert_eq!(metric(&node_metrics(admin).await, "vane_config_nacks_total"), 1.0);

    // SIGKILL, then a new control plane on the same data dir and port. The node, still
    // running version 1, reconnects.
    let addr = url.strip_prefix("http://").unwrap().to_owned();
    cp.kill().await.unwrap();
    let cp = eventually(WITHIN, "the control plane restarts on its port", || async {
        VaneProcess::start(&["control-plane", "--data-dir", &dir, "--listen", &addr]).await.ok()
    })
    .await;
    assert!(cp.banner.ends_with("(version 2)"), "{}", cp.banner);
    let status = eventually(WITHIN, "the node reconnects", || async {
        node_status(&url, "n1").await.filter(|n| n["connected"] == true)
    })
    .await;
    // The restarted control plane shows the NACK it stored...
    assert_eq!(status["nack_version"], "2", "{status}");
    let errors = status["nack_errors"].to_string();
    assert!(errors.contains(&format!("{missing}: No such file")), "{errors}");
    let table = vane(&url, &["nodes"]).await.stdout;
    assert!(table.contains(&format!("v2: certificate 'site': {missing}: No such file")), "{table}");

    // ... and did not send version 2 again: a session pushes at once when a node
    // connects, so had it been sent, it would be NACKed before version 3 is handled.
    let next = good.replace("/api", "/v3");
    let out = vane(&url, &["apply", "-f", &write_yaml(data.path(), "v3.yaml", &next)]).await;
    assert!(out.stdout.starts_with("applied version 3"), "{}{}", out.stdout, out.stderr);
    let config = serves(admin, 3).await;
    assert_eq!(config["snapshots_received"], 3, "versions 1, 2 and 3, each once: {config}");
    assert_eq!(metric(&node_metrics(admin).await, "vane_config_nacks_total"), 1.0, "version 2 was refused once");
    let status = eventually(WITHIN, "version 3 is acked", || async {
        node_status(&url, "n1").await.filter(|n| n["acked_version"] == "3")
    })
    .await;
    assert_eq!(status["nack_version"], "2", "{status}");
    let web: SocketAddr = config["listeners"]["web"].as_str().unwrap().parse().unwrap();
    assert_eq!(HttpClient::default().get(web, "/v3/x").await.unwrap().backend(), "echo-1");
}

/// `node`'s row of the `vane nodes` table, split into its columns.
fn table_row(table: &str, node: &str) -> Vec<String> {
    let line = table.lines().find(|l| l.starts_with(&format!("{node} "))).unwrap_or_else(|| panic!("{table}"));
    line.split_whitespace().map(str::to_owned).collect()
}

#[tokio::test]
async fn vane_nodes_after_a_control_plane_restart_shows_the_version_each_node_serves() {
    init_logs();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("store").to_str().unwrap().to_owned();
    let cp = VaneProcess::control_plane(Path::new(&dir), &[]).await.unwrap();
    let url = cp.control_plane_url().unwrap();
    let echo = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let (_node, admin) = proxy(&url, "n1", &[]).await;
    let v1 = config_yaml(&[("echo", &[echo.addr()])], &[("api", "/api", "echo")]);
    let v2 = v1.replace("/api", "/v2");
    for (name, yaml) in [("v1.yaml", &v1), ("v2.yaml", &v2)] {
        assert!(vane(&url, &["apply", "-f", &write_yaml(data.path(), name, yaml)]).await.success);
    }
    serves(admin, 2).await;
    eventually(WITHIN, "version 2 is acked", || async {
        node_status(&url, "n1").await.filter(|n| n["acked_version"] == "2")
    })
    .await;
    let received = node_config(admin).await.unwrap()["snapshots_received"].clone();
    let before = table_row(&vane(&url, &["nodes"]).await.stdout, "n1");
    assert_eq!(before[1..3], ["yes", "2"]);
    assert!(before[3].ends_with("ms"), "a push-to-ACK time: {before:?}");

    // SIGKILL, then a new control plane on the same data dir and port; the node, serving
    // version 2, reconnects and is sent nothing (it holds the latest).
    let addr = url.strip_prefix("http://").unwrap().to_owned();
    cp.kill().await.unwrap();
    let _cp = eventually(WITHIN, "the control plane restarts on its port", || async {
        VaneProcess::start(&["control-plane", "--data-dir", &dir, "--listen", &addr]).await.ok()
    })
    .await;
    let status = eventually(WITHIN, "the node reconnects", || async {
        node_status(&url, "n1").await.filter(|n| n["connected"] == true)
    })
    .await;
    assert_eq!(status["version_held"], "2", "{status}");
    assert!(status["acked_version"].is_null(), "nothing acknowledged to this process: {status}");
    let table = vane(&url, &["nodes"]).await.stdout;
    assert_eq!(table_row(&table, "n1")[1..4], ["yes", "2", "-"], "version 2, no push time:\n{table}");
    assert!(!table.contains("0ms"), "{table}");
    assert_eq!(node_config(admin).await.unwrap()["snapshots_received"], received, "nothing sent again");

    // The next version is pushed, and its push-to-ACK time shows.
    let v3 = v1.replace("/api", "/v3");
    assert!(vane(&url, &["apply", "-f", &write_yaml(data.path(), "v3.yaml", &v3)]).await.success);
    eventually(WITHIN, "version 3 is acked", || async {
        node_status(&url, "n1").await.filter(|n| n["acked_version"] == "3")
    })
    .await;
    let after = table_row(&vane(&url, &["nodes"]).await.stdout, "n1");
    assert_eq!(after[1..3], ["yes", "3"]);
    assert!(after[3].ends_with("ms"), "{after:?}");
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

/// A certificate resource read from `cert` and `key` files on the node, served on `web`.
fn files_config(cert: &str, key: &str, echo: SocketAddr) -> String {
    json!({
        "certificates": [{ "name": "site", "certificate_chain": { "filename": cert },
                           "private_key": { "filename": key } }],
        "listeners": [{ "name": "web", "address": "127.0.0.1:0", "protocol": "HTTPS",
                        "tls": { "certificates": ["site"] } }],
        "clusters": [{ "name": "echo", "endpoints": [{ "address": echo.to_string() }] }],
        "routes": [{ "name": "all", "match": { "prefix": "/" }, "forward": { "clusters": [{ "name": "echo" }] } }],
    })
    .to_string()
}

/// Replaces `path` by rename, as certificate tools do.
fn replace(path: &std::path::Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Waits until a full handshake (a new client, no session to resume) gets `issued`.
async fn served(web: SocketAddr, ca: &TestCa, issued: &Issued, what: &str) {
    eventually(WITHIN, what, || async {
        let conn = TlsClient::new(Some(&ca.pem), None, &["http/1.1"]).connect(web, "site.test").await.ok()?;
        (conn.peer == issued.der()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_certificate_file_changed_on_disk_is_served_at_the_next_handshake_and_a_bad_one_is_refused() {
    init_logs();
    let ca = TestCa::new("test ca");
    let first = ca.server(&["site.test"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("site.pem"), dir.path().join("site.key"));
    std::fs::write(&cert, &first.cert).unwrap();
    std::fs::write(&key, &first.key).unwrap();
    let (cert_arg, key_arg) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let cp = TestControlPlane::start().await;
    let echo = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let (_node, admin) = proxy(&cp.url(), "n1", &["--file-poll-interval", "100ms"]).await;
    cp.apply(&files_config(cert_arg, key_arg, echo.addr())).await.unwrap();
    let config = serves(admin, 1).await;
    let web: SocketAddr = config["listeners"]["web"].as_str().unwrap().parse().unwrap();
    let mut open = TlsClient::new(Some(&ca.pem), None, &["http/1.1"]).connect(web, "site.test").await.unwrap();
    assert_eq!(open.peer, first.der());
    assert_eq!(metric(&node_metrics(admin).await, "vane_node_watched_files"), 2.0);

    // New files, no new version: the next handshake gets the new certificate.
    let second = ca.server(&["site.test"]);
    replace(&key, &second.key);
    replace(&cert, &second.cert);
    served(web, &ca, &second, "the replaced certificate is served").await;
    assert_eq!(open.get("site.test", "/still-open", &[]).await.unwrap().status, 200, "open connections go on");
    assert_eq!(node_config(admin).await.unwrap()["version"], 1, "no new version was needed");
    eventually(WITHIN, "no problem is left from the two-file replacement", || async {
        node_status(&cp.url(), "n1").await.filter(|n| n["problems"].as_array().is_none_or(Vec::is_empty))
    })
    .await;

    // A file that does not load: the previous certificate keeps serving, the problem shows.
    replace(&cert, "not a certificate\n");
    let status = eventually(WITHIN, "the bad file is reported", || async {
        node_status(&cp.url(), "n1").await.filter(|n| n["problems"].as_array().is_some_and(|p| !p.is_empty()))
    })
    .await;
    let problem = &status["problems"][0];
    assert_eq!((problem["kind"].as_str(), problem["subject"].as_str()), (Some("tls_file"), Some(cert_arg)), "{status}");
    let message = problem["message"].as_str().unwrap();
    assert!(message.contains("certificate 'site': certificate_chain: holds no PEM certificate"), "{message}");
    assert_eq!(metric(&node_metrics(admin).await, "vane_node_problems{kind=\"tls_file\"}"), 1.0);
    served(web, &ca, &second, "the previous certificate still serves").await;
    let table = vane(&cp.url(), &["nodes"]).await.stdout;
    assert!(table.contains(&format!("problem: n1 tls_file {cert_arg}: certificate 'site'")), "{table}");

    // A good file again: served, and the problem clears.
    let third = ca.server(&["site.test"]);
    replace(&cert, &third.cert);
    replace(&key, &third.key);
    served(web, &ca, &third, "the next good certificate is served").await;
    eventually(WITHIN, "the problem clears", || async {
        node_status(&cp.url(), "n1").await.filter(|n| n["problems"].as_array().is_none_or(Vec::is_empty))
    })
    .await;
    assert_eq!(metric(&node_metrics(admin).await, "vane_node_problems{kind=\"tls_file\"}"), 0.0);

    // A config naming no file: nothing is watched any more.
    let inline = files_config(cert_arg, key_arg, echo.addr())
        .replace(&format!("{{\"filename\":\"{cert_arg}\"}}"), &json!({ "inline_string": third.cert }).to_string())
        .replace(&format!("{{\"filename\":\"{key_arg}\"}}"), &json!({ "inline_string": third.key }).to_string());
    assert!(!inline.contains("filename"), "{inline}");
    cp.apply(&inline).await.unwrap();
    serves(admin, 2).await;
    assert_eq!(metric(&node_metrics(admin).await, "vane_node_watched_files"), 0.0);
}
