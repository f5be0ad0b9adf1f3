//! From `vane apply` to proxied requests; hot changes; refused configs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vane_suite::*;

#[tokio::test]
async fn applied_config_serves_within_a_second_with_round_robin() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("node-a").await;
    let (e1, e2) = (
        EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap(),
        EchoServer::start("echo-2", ([127, 0, 0, 1], 0).into()).await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = write_yaml(
        dir.path(),
        "v1.yaml",
        &config_yaml(&[("echo", &[e1.addr(), e2.addr()])], &[("api", "/api", "echo")]),
    );

    let out = vane(&cp.url(), &["apply", "-f", &file]).await;
    assert!(out.success, "apply failed: {}", out.stderr);
    assert!(out.stdout.starts_with("applied version 1"), "{}", out.stdout);
    let applied = Instant::now();

    let client = HttpClient::default();
    let web = eventually(Duration::from_secs(1), "first proxied 200 within 1s of apply", || async {
        let addr = node.listener_addr("web")?;
        let reply = client.get(addr, "/api/hello").await.ok()?;
        (reply.status == 200).then_some(addr)
    })
    .await;
    eprintln!("apply to first proxied 200: {:?}", applied.elapsed());

    let mut answered = Vec::new();
    for _ in 0..4 {
        let reply = client.get(web, "/api/hello").await.unwrap();
        assert_eq!(reply.status, 200);
        assert!(reply.body.contains("GET /api/hello"), "{}", reply.body);
        answered.push(reply.backend().to_owned());
    }
    assert_ne!(answered[0], answered[1], "consecutive requests go to consecutive endpoints: {answered:?}");
    assert_eq!(answered[0], answered[2]);
    assert_eq!(answered[1], answered[3]);
    assert!(answered.contains(&"echo-1".to_owned()) && answered.contains(&"echo-2".to_owned()));

    let reply = client.get(web, "/elsewhere").await.unwrap();
    assert_eq!(reply.status, 404, "no route answers 404");
}

#[tokio::test]
async fn changed_cluster_and_prefix_apply_without_restart_or_failed_requests() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("node-a").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let e2 = EchoServer::start("echo-2", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let clusters: &[(&str, &[_])] = &[("one", &[e1.addr()]), ("two", &[e2.addr()])];
    let dir = tempfile::tempdir().unwrap();
    let v1 = write_yaml(dir.path(), "v1.yaml", &config_yaml(clusters, &[("api", "/api", "one")]));
    let v2 = write_yaml(dir.path(), "v2.yaml", &config_yaml(clusters, &[("api", "/api", "two")]));
    let v3 = write_yaml(dir.path(), "v3.yaml", &config_yaml(clusters, &[("api", "/v2", "two")]));

    assert!(vane(&cp.url(), &["apply", "-f", &v1]).await.success);
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;

    // A client loop runs through the change; every request must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        loops.push(tokio::spawn(async move {
            let client = HttpClient::default();
            let started = Instant::now();
            let mut seen = Vec::new();
            // Bounded in count and time.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                match client.get(web, "/api/x").await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        seen.push(r.backend().to_owned());
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("failed request: {other:?}");
                    }
                }
            }
            seen
        }));
    }
    eventually(Duration::from_secs(5), "the loop is running", || async {
        (ok.load(Ordering::Relaxed) > 20).then_some(())
    })
    .await;
    let out = vane(&cp.url(), &["apply", "-f", &v2]).await;
    assert!(out.success, "{}", out.stderr);
    wait_version(&node, 2).await;
    let before = ok.load(Ordering::Relaxed);
    eventually(Duration::from_secs(5), "more requests after the swap", || async {
        (ok.load(Ordering::Relaxed) > before + 50).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut backends = Vec::new();
    for l in loops {
        backends.extend(l.await.unwrap());
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed during the swap");
    assert_eq!(backends.first().map(String::as_str), Some("echo-1"));
    assert_eq!(backends.last().map(String::as_str), Some("echo-2"), "the new cluster answers after the swap");
    assert_eq!(node.listener_addr("web"), Some(web), "the listener socket was kept");

    // The prefix changes too.
    assert!(vane(&cp.url(), &["apply", "-f", &v3]).await.success);
    wait_version(&node, 3).await;
    let client = HttpClient::default();
    assert_eq!(client.get(web, "/v2/x").await.unwrap().backend(), "echo-2");
    assert_eq!(client.get(web, "/api/x").await.unwrap().status, 404);
}

#[tokio::test]
async fn invalid_configs_are_refused_with_the_field_and_the_previous_version_keeps_serving() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("node-a").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")]);
    assert_eq!(cp.apply(&good).await.unwrap().version, 1);
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;

    let dangling = config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "nope")]);
    let duplicate = config_yaml(&[("echo", &[e1.addr()]), ("echo", &[e1.addr()])], &[("api", "/api", "echo")]);
    let bad_address = good.replace(&e1.addr().to_string(), "not-an-address");
    let cases = [
        (dangling, "route 'api': forward.clusters[0].name: unknown cluster 'nope'"),
        (duplicate, "cluster 'echo': name: duplicate cluster name"),
        (
            bad_address,
            "cluster 'echo': endpoints[0].address: 'not-an-address' is not an ip:port or hostname:port address",
        ),
    ];
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        // Through gRPC: INVALID_ARGUMENT naming the field.
        let status = cp.apply(yaml).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(expected), "{}", status.message());
        // Through the CLI: non-zero exit, one line on stderr.
        let file = write_yaml(dir.path(), &format!("bad{i}.yaml"), yaml);
        let out = vane(&cp.url(), &["apply", "-f", &file]).await;
        assert!(!out.success, "a refused apply exits non-zero");
        assert_eq!(out.stderr.lines().count(), 1, "one line: {:?}", out.stderr);
        assert!(out.stderr.contains(expected), "{}", out.stderr);
        let out = vane(&cp.url(), &["validate", "-f", &file]).await;
        assert!(!out.success && out.stderr.contains(expected), "{}", out.stderr);
    }
    // A file that is not even valid YAML for the schema names its path.
    let file = write_yaml(dir.path(), "typo.yaml", "routes:\n  - name: r\n    prefix: /a\n");
    let out = vane(&cp.url(), &["apply", "-f", &file]).await;
    assert!(!out.success && out.stderr.contains("routes[0]") && out.stderr.contains("unknown field"), "{}", out.stderr);

    assert_eq!(cp.plane.latest_version(), 1, "refused applies take no version");
    assert_eq!(node.version(), 1);
    let reply = HttpClient::default().get(web, "/api/still").await.unwrap();
    assert_eq!((reply.status.as_u16(), reply.backend()), (200, "echo-1"), "the previous version keeps serving");
    let history = vane(&cp.url(), &["history"]).await;
    assert_eq!(history.stdout.lines().count(), 2, "header + one version: {}", history.stdout);
}
