//! A control plane's store never serves an older truth: a damaged data dir (truncated,
//! overwritten bytes in the database or in a blob) refuses to start with one line, a
//! backup brings it back under version numbers never used before, and a node holding a
//! version the store does not have is never sent a lower number.

use std::path::Path;
use std::time::Duration;

use vane_suite::*;

/// A config of `routes` routes whose prefixes carry `tag`: large enough that sled keeps
/// each version in a blob file of its own.
fn big_config(tag: &str, routes: usize) -> String {
    let mut yaml = String::from(
        "listeners:\n  - name: web\n    address: 127.0.0.1:0\nclusters:\n  - name: echo\n    endpoints:\n      - address: 127.0.0.1:9\nroutes:\n",
    );
    for i in 0..routes {
        yaml.push_str(&format!(
            "  - name: r{i}\n    match: {{ prefix: /{tag}/some/longer/path/{i} }}\n    forward: {{ clusters: [{{ name: echo }}] }}\n"
        ));
    }
    yaml
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The sled database file cut to half its size.
    TruncateDb,
    /// 64 bytes overwritten in the middle of the database file.
    OverwriteDb,
    /// 64 bytes overwritten in the middle of the largest blob file.
    OverwriteBlob,
}

fn damage(dir: &Path, how: Damage) {
    use std::io::{Seek, SeekFrom, Write};
    let garbage: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
    let overwrite = |file: &Path| {
        let len = std::fs::metadata(file).unwrap().len();
        let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
        f.seek(SeekFrom::Start(len / 2)).unwrap();
        f.write_all(&garbage).unwrap();
        f.sync_all().unwrap();
    };
    match how {
        Damage::TruncateDb => {
            let db = dir.join("db");
            let len = std::fs::metadata(&db).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(&db).unwrap().set_len(len / 2).unwrap();
        }
        Damage::OverwriteDb => overwrite(&dir.join("db")),
        Damage::OverwriteBlob => {
            let largest = std::fs::read_dir(dir.join("blobs"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .max_by_key(|p| std::fs::metadata(p).unwrap().len())
                .expect("the store keeps big versions in blobs");
            overwrite(&largest);
        }
    }
}

/// Five versions, a backup taken at version 3, the control plane stopped; the dir damaged
/// `how`. The control plane must refuse it; the backup then brings it back, publishing
/// version 3's config again as version 6 (versions 4 and 5 were acknowledged: their
/// numbers stay used).
async fn damaged_store_is_refused_then_restored(how: Damage) {
    init_logs();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let dir_arg = dir.to_str().unwrap();
    let mut cp = VaneProcess::control_plane(&dir, &[]).await.unwrap();
    let url = cp.control_plane_url().unwrap();
    let backup = tmp.path().join("backup.vane");
    let backup_arg = backup.to_str().unwrap();
    for v in 1..=5 {
        let file = write_yaml(tmp.path(), &format!("v{v}.yaml"), &big_config(&format!("v{v}"), 3000));
        let out = vane(&url, &["apply", "-f", &file]).await;
        assert!(out.stdout.starts_with(&format!("applied version {v}")), "{}{}", out.stdout, out.stderr);
        if v == 3 {
            let out = vane(&url, &["store", "backup", "-o", backup_arg]).await;
            assert!(out.success, "{}", out.stderr);
            assert!(out.stdout.contains("backed up 3 versions (newest 3)"), "{}", out.stdout);
        }
    }
    cp.terminate().unwrap();
    assert!(cp.wait_exit(Duration::from_secs(10)).await.unwrap().success());

    damage(&dir, how);
    let refused = vane(&url, &["control-plane", "--data-dir", dir_arg, "--listen", "127.0.0.1:0"]).await;
    assert!(!refused.success, "{how:?}: a damaged store must not start: {}", refused.stdout);
    let line = refused.stderr.lines().last().unwrap_or_default();
    assert!(line.starts_with(&format!("error: data dir {dir_arg} is damaged: ")), "{how:?}: {}", refused.stderr);
    assert!(line.contains("vane store restore"), "{how:?}: the way back is named: {line}");

    let not_replaced = vane(&url, &["store", "restore", "--data-dir", dir_arg, "--from", backup_arg]).await;
    assert!(!not_replaced.success && not_replaced.stderr.contains("add --replace"), "{}", not_replaced.stderr);
    let restored = vane(&url, &["store", "restore", "--data-dir", dir_arg, "--from", backup_arg, "--replace"]).await;
    assert!(restored.success, "{}", restored.stderr);
    assert!(
        restored.stdout.starts_with("restored 3 versions (newest 3); version 3 published again as version 6"),
        "{}",
        restored.stdout
    );
    assert!(restored.stdout.contains("the previous data dir is kept at"), "{}", restored.stdout);

    let cp = VaneProcess::control_plane(&dir, &[]).await.unwrap();
    assert!(cp.banner.ends_with("(version 6)"), "{}", cp.banner);
    let url = cp.control_plane_url().unwrap();
    let history = vane(&url, &["history"]).await.stdout;
    let versions: Vec<&str> = history.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(versions, ["6", "3", "2", "1"], "{history}");
    let routes = vane(&url, &["get", "route", "r7", "-o", "yaml"]).await.stdout;
    assert!(routes.contains("prefix: /v3/some/longer/path/7"), "version 6 is version 3's config: {routes}");
    let file = write_yaml(tmp.path(), "v7.yaml", &big_config("v7", 10));
    let out = vane(&url, &["apply", "-f", &file]).await;
    assert!(out.stdout.starts_with("applied version 7"), "numbers 4 and 5 are never reused: {}", out.stdout);
}

#[tokio::test]
async fn a_truncated_store_refuses_to_start_and_a_backup_restores_it() {
    damaged_store_is_refused_then_restored(Damage::TruncateDb).await;
}

#[tokio::test]
async fn a_store_with_overwritten_bytes_refuses_to_start_and_a_backup_restores_it() {
    damaged_store_is_refused_then_restored(Damage::OverwriteDb).await;
}

#[tokio::test]
async fn a_store_with_a_damaged_blob_refuses_to_start_and_a_backup_restores_it() {
    damaged_store_is_refused_then_restored(Damage::OverwriteBlob).await;
}

#[tokio::test]
async fn a_node_ahead_of_a_replaced_store_is_never_sent_back_a_lower_version() {
    init_logs();
    let echo = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let first = TestControlPlane::start().await;
    let addr = first.addr;
    let cache = tempfile::tempdir().unwrap();
    let node = start_node("ahead", &first.url(), Some(cache.path().to_owned())).await;
    for prefix in ["/a1", "/a2", "/a3"] {
        first.apply(&config_yaml(&[("echo", &[echo.addr()])], &[("api", prefix, "echo")])).await.unwrap();
    }
    first.wait_acked("ahead", 3).await;
    first.stop().await;

    // A new, empty store on the same address (a store replaced, or restored from an old
    // backup): its own version 1 differs from what the node runs.
    let fresh = tempfile::tempdir().unwrap();
    let second = TestControlPlane::start_with(vane_control_plane::ControlPlaneConfig::new(fresh.path()), addr).await;
    let v1 = second.apply(&config_yaml(&[("echo", &[echo.addr()])], &[("api", "/b1", "echo")])).await.unwrap();
    assert_eq!(v1.version, 1);
    // The node reconnects holding version 3: the store numbers above it.
    second.wait_acked("ahead", 4).await;
    assert_eq!(node.version(), 4);
    let web = listener(&node, "web").await;
    assert_eq!(HttpClient::default().get(web, "/b1/x").await.unwrap().backend(), "echo-1");
    let history = vane(&second.url(), &["history"]).await.stdout;
    let versions: Vec<&str> = history.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(versions, ["4", "1"], "{history}");
    assert!(history.contains("node ahead held version 3"), "{history}");
    let nodes = vane(&second.url(), &["nodes", "-o", "json"]).await.stdout;
    assert!(!nodes.contains("older than"), "the node was never sent a lower number: {nodes}");
    let next = second.apply(&config_yaml(&[("echo", &[echo.addr()])], &[("api", "/b2", "echo")])).await.unwrap();
    assert_eq!(next.version, 5, "numbers above what the node held");
}

/// A discovery server of the test's own: hands each node stream to the test, which plays
/// the control plane message by message.
mod fake_control_plane {
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{Request, Response, Status, Streaming};
    use vane_proto::discovery::discovery_service_server::DiscoveryService;
    use vane_proto::discovery::{ControlMessage, NodeMessage};

    pub(crate) type Session = (Streaming<NodeMessage>, mpsc::Sender<Result<ControlMessage, Status>>);

    pub(crate) struct Fake(pub(crate) mpsc::Sender<Session>);

    #[tonic::async_trait]
    impl DiscoveryService for Fake {
        type StreamStream = ReceiverStream<Result<ControlMessage, Status>>;

        async fn stream(
            &self,
            request: Request<Streaming<NodeMessage>>,
        ) -> Result<Response<Self::StreamStream>, Status> {
            let (tx, rx) = mpsc::channel(4);
            self.0.send((request.into_inner(), tx)).await.map_err(|_| Status::unavailable("test over"))?;
            Ok(Response::new(ReceiverStream::new(rx)))
        }
    }
}

#[tokio::test]
async fn a_node_refuses_a_lower_version_or_other_content_under_its_own_number() {
    use vane_proto::discovery::discovery_service_server::DiscoveryServiceServer;
    use vane_proto::discovery::{ControlMessage, Snapshot, control_message, node_message};

    init_logs();
    let (sessions_tx, mut sessions) = tokio::sync::mpsc::channel(1);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DiscoveryServiceServer::new(fake_control_plane::Fake(sessions_tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let node = start_node("guarded", &format!("http://{addr}"), None).await;
    let (mut inbound, outbound) =
        tokio::time::timeout(Duration::from_secs(10), sessions.recv()).await.unwrap().unwrap();
    assert!(matches!(inbound.message().await.unwrap().and_then(|m| m.message), Some(node_message::Message::Hello(_))));
    let echo: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let snapshot = |version: u64, prefix: &str| {
        let config =
            vane_proto::load(&config_yaml(&[("echo", &[echo])], &[("api", prefix, "echo")]), vane_proto::Format::Yaml)
                .unwrap();
        let sha256 = vane_proto::config_sha256(&config);
        let snapshot = Snapshot { version, nonce: format!("n{version}{prefix}"), sha256, config: Some(config) };
        Ok(ControlMessage { message: Some(control_message::Message::Snapshot(snapshot)) })
    };
    let mut answer = async || inbound.message().await.unwrap().and_then(|m| m.message);

    outbound.send(snapshot(5, "/five")).await.unwrap();
    assert!(matches!(answer().await, Some(node_message::Message::Ack(a)) if a.version == 5));
    outbound.send(snapshot(3, "/three")).await.unwrap();
    match answer().await {
        Some(node_message::Message::Nack(n)) => {
            assert_eq!(n.version, 3);
            assert!(n.errors[0].message.contains("older than version 5"), "{:?}", n.errors);
        }
        other => panic!("a lower version must be refused: {other:?}"),
    }
    outbound.send(snapshot(5, "/other")).await.unwrap();
    match answer().await {
        Some(node_message::Message::Nack(n)) => {
            assert!(n.errors[0].message.contains("other content"), "{:?}", n.errors);
        }
        other => panic!("other content under the same number must be refused: {other:?}"),
    }
    assert_eq!(node.version(), 5, "the node keeps serving what it held");
    outbound.send(snapshot(6, "/six")).await.unwrap();
    assert!(matches!(answer().await, Some(node_message::Message::Ack(a)) if a.version == 6));
    server.abort();
}
