//! The control plane you can trust: durability under SIGKILL, last-known-good nodes, the
//! NACK and push rules, tokens, and the change workflow from the CLI.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vane_control_plane::{ControlPlaneConfig, Tokens, hash_token};
use vane_proto::admin::config_service_client::ConfigServiceClient;
use vane_proto::admin::{ApplyRequest, HistoryRequest, ListRequest};
use vane_proto::{Format, config_sha256, load};
use vane_suite::*;

fn versioned_config(echo: std::net::SocketAddr, i: usize) -> vane_proto::config::Config {
    let yaml = config_yaml(&[("echo", &[echo])], &[("api", &format!("/v{i}"), "echo")]);
    load(&yaml, Format::Yaml).unwrap()
}

#[tokio::test]
async fn sigkill_during_a_loop_of_applies_loses_no_acknowledged_version() {
    init_logs();
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("store");
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let cp = VaneProcess::control_plane(&dir, &[]).await.unwrap();
    let url = cp.control_plane_url().unwrap();

    // Applies run in their own task; the test kills the control plane mid-loop.
    let acked = Arc::new(AtomicU64::new(0));
    let applier = tokio::spawn({
        let (url, acked) = (url.clone(), acked.clone());
        async move {
            let mut client = ConfigServiceClient::connect(url).await.unwrap();
            let mut seen = Vec::new();
            for i in 0..200 {
                let config = versioned_config(e1.addr(), i);
                let sha = config_sha256(&config);
                let request =
                    ApplyRequest { config: Some(config), dry_run: false, expected_version: 0, allow_empty: false };
                match client.apply(request).await {
                    Ok(r) => {
                        seen.push((r.into_inner().version, sha));
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => return (i, seen, e1),
                }
            }
            (200, seen, e1)
        }
    });
    eventually(Duration::from_secs(30), "50 applies acknowledged", || async {
        (acked.load(Ordering::SeqCst) >= 50).then_some(())
    })
    .await;
    cp.kill().await.unwrap();
    let (stopped_at, seen, e1) = applier.await.unwrap();
    assert!(stopped_at < 200, "the kill interrupted the loop");
    let last_acked = seen.last().unwrap().0;

    let cp = VaneProcess::control_plane(&dir, &[]).await.unwrap();
    let url = cp.control_plane_url().unwrap();
    let mut client = ConfigServiceClient::connect(url.clone()).await.unwrap();
    let history = client.history(HistoryRequest { limit: 0 }).await.unwrap().into_inner().entries;
    let latest = history[0].version;
    assert!(latest >= last_acked, "latest {latest} < acknowledged {last_acked}");
    let versions: Vec<u64> = history.iter().map(|h| h.version).rev().collect();
    assert_eq!(versions, (1..=latest).collect::<Vec<_>>(), "history is contiguous");
    for (version, sha) in &seen {
        let entry = history.iter().find(|h| h.version == *version).expect("acknowledged version present");
        assert_eq!(&entry.sha256, sha, "version {version} holds what was acknowledged");
        let stored = client.list(ListRequest { kind: 0, version: *version }).await.unwrap().into_inner();
        assert_eq!(config_sha256(&stored.config.unwrap()), *sha, "version {version} reads back whole");
    }

    // The loop finishes against the restarted plane; a node converges to the latest.
    for i in stopped_at..200 {
        let config = versioned_config(e1.addr(), i);
        client
            .apply(ApplyRequest { config: Some(config), dry_run: false, expected_version: 0, allow_empty: false })
            .await
            .unwrap();
    }
    let node = start_node("after-kill", &url, None).await;
    let latest = client.history(HistoryRequest { limit: 1 }).await.unwrap().into_inner().entries[0].version;
    wait_version(&node, latest).await;
    let reply = HttpClient::default().get(listener(&node, "web").await, "/v199/x").await.unwrap();
    assert_eq!(reply.backend(), "echo-1");
}

#[tokio::test]
async fn node_restarted_while_the_control_plane_is_down_catches_up_when_it_returns() {
    init_logs();
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let cp = TestControlPlane::start_in(data.path().join("store")).await;
    let (addr, url) = (cp.addr, cp.url());
    {
        let node = start_node("n1", &url, Some(cache.path().to_owned())).await;
        cp.apply(&config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")])).await.unwrap();
        wait_version(&node, 1).await;
        cp.wait_acked("n1", 1).await;
    }
    cp.stop().await;

    let node = start_node("n1", &url, Some(cache.path().to_owned())).await;
    let client = HttpClient::default();
    let web = listener(&node, "web").await;
    assert_eq!(client.get(web, "/api/x").await.unwrap().backend(), "echo-1", "last applied routes serve");
    assert_eq!(client.get(node.admin_addr().unwrap(), "/ready").await.unwrap().body, "stale\n");

    // The control plane returns on the same address with a newer version.
    let cp = TestControlPlane::start_with(ControlPlaneConfig::new(data.path().join("store")), addr).await;
    cp.apply(&config_yaml(&[("echo", &[e1.addr()])], &[("api", "/v2", "echo")])).await.unwrap();
    wait_version(&node, 2).await;
    assert_eq!(client.get(node.admin_addr().unwrap(), "/ready").await.unwrap().body, "ready\n");
    assert_eq!(client.get(web, "/v2/x").await.unwrap().backend(), "echo-1");
    let nodes = vane(&cp.url(), &["nodes", "-o", "json"]).await.stdout;
    let json: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    assert_eq!(json["nodes"][0]["acked_version"], "2", "{nodes}");
}

#[tokio::test]
async fn a_nacked_version_is_sent_once_and_the_next_good_one_is_acked() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let v1 = config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")]);
    cp.apply(&v1).await.unwrap();
    wait_version(&node, 1).await;

    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    let v2 = v1.replacen("listeners:\n", &format!("listeners:\n  - name: blocked\n    address: \"{taken}\"\n"), 1);
    cp.apply(&v2).await.unwrap();
    eventually(Duration::from_secs(5), "the NACK is recorded", || async {
        vane(&cp.url(), &["nodes"]).await.stdout.contains("address in use").then_some(())
    })
    .await;
    assert_eq!(node.version(), 1, "the node keeps serving version 1");
    let web = listener(&node, "web").await;
    assert_eq!(HttpClient::default().get(web, "/api/x").await.unwrap().status, 200);

    // The next good version (the squatter is still there; v3 drops that listener).
    cp.apply(&v1.replace("/api", "/v3")).await.unwrap();
    wait_version(&node, 3).await;
    assert_eq!(node.snapshots_received(), 3, "v1, v2 once, v3: no resend of the refused version");
    assert_eq!(node.swaps(), 2, "v1 and v3 swapped in");
    drop(squatter);
}

#[tokio::test]
async fn a_burst_of_100_applies_costs_each_node_far_fewer_swaps() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let a = cp.node("a").await;
    let b = cp.node("b").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    cp.apply(&config_yaml(&[("echo", &[e1.addr()])], &[("api", "/v0", "echo")])).await.unwrap();
    wait_version(&a, 1).await;
    wait_version(&b, 1).await;
    let mut client = ConfigServiceClient::connect(cp.url()).await.unwrap();
    for i in 1..=100 {
        let config = versioned_config(e1.addr(), i);
        client
            .apply(ApplyRequest { config: Some(config), dry_run: false, expected_version: 0, allow_empty: false })
            .await
            .unwrap();
    }
    for node in [&a, &b] {
        wait_version(node, 101).await;
        let swaps = node.swaps();
        eprintln!("swaps for 100 applies: {}", swaps - 1);
        assert!(swaps - 1 <= 20, "{} swaps for 100 applies", swaps - 1);
        let reply = HttpClient::default().get(listener(node, "web").await, "/v100/x").await.unwrap();
        assert_eq!(reply.status, 200, "the node ends on the last version");
    }
}

#[tokio::test]
async fn tokens_gate_the_admin_api_and_the_discovery_stream() {
    init_logs();
    let data = tempfile::tempdir().unwrap();
    // Tokens made with the CLI: line 1 the token, line 2 the token-file entry.
    let mut file = String::new();
    let mut tokens = Vec::new();
    for (name, role) in [("alice", "write"), ("bot", "read"), ("edge", "node")] {
        let out = vane("http://127.0.0.1:1", &["token", "new", name, "--role", role]).await;
        assert!(out.success, "{}", out.stderr);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines[1], format!("{name} {role} {}", hash_token(lines[0])));
        file.push_str(lines[1]);
        file.push('\n');
        tokens.push(lines[0].to_owned());
    }
    let (write, read, node_token) = (&tokens[0], &tokens[1], &tokens[2]);
    let token_file = write_yaml(data.path(), "tokens", &file);
    assert!(!file.contains(write.as_str()), "only hashes are stored");
    let cp =
        VaneProcess::control_plane(&data.path().join("store"), &["--admin-token-file", &token_file]).await.unwrap();
    let url = cp.control_plane_url().unwrap();
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let config =
        write_yaml(data.path(), "v1.yaml", &config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")]));

    let out = vane_with_token(&url, None, &["apply", "-f", &config]).await;
    assert!(!out.success && out.stderr.contains("bearer token is required"), "{}", out.stderr);
    let out = vane_with_token(&url, Some("vane_wrong"), &["apply", "-f", &config]).await;
    assert!(!out.success && out.stderr.contains("unknown token"), "{}", out.stderr);
    let out = vane_with_token(&url, Some(read), &["apply", "-f", &config]).await;
    assert!(!out.success && out.stderr.contains("may not"), "{}", out.stderr);
    let out = vane_with_token(&url, Some(node_token), &["history"]).await;
    assert!(!out.success, "a node token cannot read the admin API");

    // The same refusals as gRPC codes.
    let mut client = ConfigServiceClient::connect(url.clone()).await.unwrap();
    let apply = |token: Option<&str>| {
        let mut request = tonic::Request::new(ApplyRequest {
            config: Some(load(&std::fs::read_to_string(&config).unwrap(), Format::Yaml).unwrap()),
            dry_run: false,
            expected_version: 0,
            allow_empty: false,
        });
        if let Some(t) = token {
            request.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        request
    };
    assert_eq!(client.apply(apply(None)).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert_eq!(client.apply(apply(Some("vane_wrong"))).await.unwrap_err().code(), tonic::Code::Unauthenticated);
    assert_eq!(client.apply(apply(Some(read))).await.unwrap_err().code(), tonic::Code::PermissionDenied);
    let history = vane_with_token(&url, Some(read), &["history"]).await;
    assert!(history.success, "{}", history.stderr);
    assert_eq!(history.stdout.lines().count(), 1, "nothing changed: header only\n{}", history.stdout);

    let out = vane_with_token(&url, Some(write), &["apply", "-f", &config]).await;
    assert!(out.success, "{}", out.stderr);
    let history = vane_with_token(&url, Some(read), &["history"]).await.stdout;
    assert!(history.lines().nth(1).unwrap().contains(" alice "), "the author is the token's name:\n{history}");
    let json = vane_with_token(&url, Some(read), &["history", "-o", "json"]).await.stdout;
    for t in &tokens {
        assert!(!json.contains(t.as_str()), "no secret in history");
    }

    // Nodes: without a token the stream is refused; with the node token it serves.
    let stranger = start_node_with_token("stranger", &url, None, None).await;
    let node = start_node_with_token("edge-1", &url, None, Some(node_token.clone())).await;
    wait_version(&node, 1).await;
    assert_eq!(stranger.version(), 0);
    assert!(!stranger.is_connected());
    let nodes = vane_with_token(&url, Some(read), &["nodes", "-o", "json"]).await.stdout;
    assert!(nodes.contains("edge-1") && !nodes.contains("stranger"), "{nodes}");
}

#[tokio::test]
async fn without_tokens_only_loopback_is_served_and_bad_data_dirs_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("store");
    let out =
        vane("http://127.0.0.1:1", &["control-plane", "--data-dir", store.to_str().unwrap(), "--listen", "0.0.0.0:0"])
            .await;
    assert!(!out.success);
    assert!(
        out.stderr.contains("refusing to serve the admin API on 0.0.0.0:0 without authentication"),
        "{}",
        out.stderr
    );

    let damaged = data.path().join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    std::fs::write(damaged.join("db"), vec![0x5au8; 64 * 1024]).unwrap();
    let out = vane(
        "http://127.0.0.1:1",
        &["control-plane", "--data-dir", damaged.to_str().unwrap(), "--listen", "127.0.0.1:0"],
    )
    .await;
    assert!(!out.success);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: data dir") && last.contains("is damaged"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    let foreign = data.path().join("home");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let out = vane(
        "http://127.0.0.1:1",
        &["control-plane", "--data-dir", foreign.to_str().unwrap(), "--listen", "127.0.0.1:0"],
    )
    .await;
    assert!(!out.success && out.stderr.contains("is not a vane data dir"), "{}", out.stderr);
    assert_eq!(std::fs::read_dir(&foreign).unwrap().count(), 1, "nothing was written into it");

    let bad_tokens = data.path().join("tokens");
    std::fs::write(&bad_tokens, "alice admin 00\n").unwrap();
    let out = vane(
        "http://127.0.0.1:1",
        &["control-plane", "--data-dir", store.to_str().unwrap(), "--admin-token-file", bad_tokens.to_str().unwrap()],
    )
    .await;
    assert!(!out.success && out.stderr.contains("token file line 1: unknown role 'admin'"), "{}", out.stderr);
    assert!(Tokens::parse("# none\n").unwrap().is_open());
}

#[tokio::test]
async fn diff_dry_run_expected_version_and_rollback_behave_from_the_cli() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let e2 = EchoServer::start("echo-2", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let v1 = write_yaml(dir.path(), "v1.yaml", &config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")]));
    let v2 = write_yaml(dir.path(), "v2.yaml", &config_yaml(&[("echo", &[e1.addr()])], &[("api", "/v2", "echo")]));
    let url = cp.url();
    assert!(vane(&url, &["apply", "-f", &v1]).await.success);

    let diff = vane(&url, &["diff", "-f", &v2]).await;
    assert!(diff.success, "{}", diff.stderr);
    assert!(diff.stdout.starts_with("# against version 1: ~route api\n~ route api\n"), "{}", diff.stdout);
    assert!(
        diff.stdout.contains("    -     prefix: /api\n") && diff.stdout.contains("    +     prefix: /v2\n"),
        "{}",
        diff.stdout
    );
    let json: serde_json::Value =
        serde_json::from_str(&vane(&url, &["diff", "-f", &v2, "-o", "json"]).await.stdout).unwrap();
    assert_eq!(json["changes"][0]["op"], "CHANGED");
    assert_eq!(json["changes"][0]["after"]["route"]["match"]["prefix"], "/v2");
    let same = vane(&url, &["diff", "-f", &v1]).await;
    assert!(same.success && same.stdout.contains("no resource changes"), "diff exits 0 without changes");

    let dry = vane(&url, &["apply", "-f", &v2, "--dry-run"]).await;
    assert_eq!(dry.stdout, "dry run: valid; would change: ~route api\n");
    let stale = vane(&url, &["apply", "-f", &v2, "--expected-version", "5"]).await;
    assert!(!stale.success && stale.stderr.contains("expected version 5 but the latest is 1"), "{}", stale.stderr);
    assert_eq!(cp.plane.latest_version(), 1, "neither the dry run nor the stale apply stored anything");
    let ok = vane(&url, &["apply", "-f", &v2, "--expected-version", "1"]).await;
    assert_eq!(ok.stdout, "applied version 2: ~route api\n");
    wait_version(&node, 2).await;

    let rollback = vane(&url, &["rollback", "1"]).await;
    assert_eq!(rollback.stdout, "applied version 3: rollback to 1: ~route api\n", "{}", rollback.stderr);
    wait_version(&node, 3).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();
    assert_eq!(client.get(web, "/api/x").await.unwrap().status, 200, "version 1's routes serve again");
    assert_eq!(client.get(web, "/v2/x").await.unwrap().status, 404);
    let again = vane(&url, &["rollback", "3"]).await;
    assert!(again.stdout.starts_with("unchanged"), "{}", again.stdout);
    let missing = vane(&url, &["rollback", "99"]).await;
    assert!(!missing.success && missing.stderr.contains("version 99 not found"), "{}", missing.stderr);

    // One resource at a time.
    let e2s = e2.addr().to_string();
    let add = vane(&url, &["cluster", "add", "two", "--endpoint", &e2s, "--connect-timeout", "1s"]).await;
    assert_eq!(add.stdout, "applied version 4: +cluster two\n", "{}", add.stderr);
    let add = vane(&url, &["route", "add", "r2", "--prefix", "/two", "--cluster", "two", "--timeout", "2s"]).await;
    assert_eq!(add.stdout, "applied version 5: +route r2\n", "{}", add.stderr);
    wait_version(&node, 5).await;
    assert_eq!(client.get(web, "/two/x").await.unwrap().backend(), "echo-2");
    let refused = vane(&url, &["cluster", "delete", "two"]).await;
    assert!(!refused.success && refused.stderr.contains("cluster 'two' is in use by route r2"), "{}", refused.stderr);
    assert_eq!(vane(&url, &["route", "delete", "r2"]).await.stdout, "applied version 6: -route r2\n");
    assert_eq!(vane(&url, &["delete", "cluster", "two"]).await.stdout, "applied version 7: -cluster two\n");
    let gone = vane(&url, &["delete", "route", "nope"]).await;
    assert!(!gone.success && gone.stderr.contains("route 'nope' not found"), "{}", gone.stderr);
    let history = vane(&url, &["history"]).await.stdout;
    let versions: Vec<&str> = history.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(versions, ["7", "6", "5", "4", "3", "2", "1"]);
}

#[tokio::test]
async fn disconnected_nodes_show_as_such_then_are_purged() {
    init_logs();
    let data = tempfile::tempdir().unwrap();
    let mut config = ControlPlaneConfig::new(data.path().join("store"));
    config.node_purge_after = Duration::from_millis(300);
    let cp = TestControlPlane::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let node = cp.node("short-lived").await;
    eventually(Duration::from_secs(5), "the node is listed as connected", || async {
        let out = vane(&cp.url(), &["nodes"]).await.stdout;
        out.lines().any(|l| l.starts_with("short-lived") && l.split_whitespace().nth(1) == Some("yes")).then_some(())
    })
    .await;
    drop(node);
    eventually(Duration::from_secs(5), "the node is listed as disconnected", || async {
        let out = vane(&cp.url(), &["nodes"]).await.stdout;
        out.lines().any(|l| l.starts_with("short-lived") && l.split_whitespace().nth(1) == Some("no")).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "the node is purged", || async {
        let out = vane(&cp.url(), &["nodes", "-o", "json"]).await.stdout;
        (!out.contains("short-lived")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_automation_example_changes_config_and_waits_for_the_fleet() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    cp.apply(&config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")])).await.unwrap();
    wait_version(&node, 1).await;
    let out = tokio::process::Command::new(example_bin("automate"))
        .args(["shop", "/shop", &e1.addr().to_string()])
        .env("VANE_SERVER", cp.url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("against version 1: +cluster shop, +route shop"), "{stdout}");
    assert!(
        stdout.contains("version 2 (unchanged: false)") && stdout.contains("1 connected node(s) at version 2"),
        "{stdout}"
    );
    let reply = HttpClient::default().get(listener(&node, "web").await, "/shop/x").await.unwrap();
    assert_eq!(reply.backend(), "echo-1");
}

#[tokio::test]
async fn stock_grpc_health_and_reflection_answer_on_the_control_plane_port() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let cp = TestControlPlane::start().await;
    let channel = tonic::transport::Channel::from_shared(cp.url()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["vane.admin.v1.ConfigService", "vane.discovery.v1.DiscoveryService"] {
        let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(status.status, ServingStatus::Serving as i32, "{service}");
    }

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"vane.admin.v1.ConfigService".to_owned()), "{names:?}");
    assert!(names.contains(&"vane.discovery.v1.DiscoveryService".to_owned()), "{names:?}");
}

#[tokio::test]
async fn a_reader_that_stops_early_ends_the_cli_quietly() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let echo = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    for i in 0..3 {
        cp.apply(&config_yaml(&[("echo", &[echo.addr()])], &[("api", &format!("/v{i}"), "echo")])).await.unwrap();
    }
    for args in [&["history"][..], &["get", "all", "-o", "yaml"], &["nodes"]] {
        // `vane history | head -0`: the pipe's reader is gone before the first write.
        let mut child = tokio::process::Command::new(vane_bin())
            .args(args)
            .env("VANE_SERVER", cp.url())
            .env_remove("VANE_TOKEN")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(stderr.is_empty(), "{args:?}: nothing on stderr, no panic: {stderr}");
    }
}
