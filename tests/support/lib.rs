//! The shared end-to-end harness: a control plane on a temp dir, nodes, echo upstreams
//! that say who answered, the real `vane` binary, an HTTP client, and `eventually`.
//!
//! Every server binds `127.0.0.1:0` and reports its port; nothing sleeps to synchronise:
//! waits poll a condition until a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
pub use vane::demo::EchoServer;
use vane_control_plane::{ControlPlane, ControlPlaneConfig};
use vane_data_plane::{Node, NodeConfig};
use vane_proto::admin::config_service_client::ConfigServiceClient;
use vane_proto::admin::{ApplyRequest, ApplyResponse, ListNodesRequest};
use vane_proto::{Format, load};

pub mod tls;

/// Logs to the test's captured output when `RUST_LOG` is set.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Polls `check` until it yields `Some`, or fails after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An in-process control plane on a temp dir (or a given dir).
#[derive(Debug)]
pub struct TestControlPlane {
    pub addr: SocketAddr,
    pub plane: ControlPlane,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl TestControlPlane {
    pub async fn start() -> TestControlPlane {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cp = TestControlPlane::start_in(dir.path().to_owned()).await;
        cp._dir = Some(dir);
        cp
    }

    pub async fn start_in(data_dir: PathBuf) -> TestControlPlane {
        TestControlPlane::start_with(ControlPlaneConfig::new(data_dir), "127.0.0.1:0".parse().expect("addr")).await
    }

    /// Starts with a full config on `addr` (port 0 for any; a fixed one to come back on
    /// the address nodes already know).
    pub async fn start_with(config: ControlPlaneConfig, addr: SocketAddr) -> TestControlPlane {
        let plane = ControlPlane::open(config).await.expect("control plane opens");
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = plane.clone();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await
                .expect("control plane serves");
        });
        TestControlPlane { addr, plane, stop: Some(stop), task, _dir: None }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts a node of this control plane.
    pub async fn node(&self, id: &str) -> Node {
        start_node(id, &self.url(), None).await
    }

    /// Applies YAML through the admin API (as any gRPC client would).
    pub async fn apply(&self, yaml: &str) -> Result<ApplyResponse, tonic::Status> {
        let config = load(yaml, Format::Yaml).expect("test yaml loads");
        let mut client = ConfigServiceClient::connect(self.url()).await.expect("admin client connects");
        client
            .apply(ApplyRequest { config: Some(config), dry_run: false, expected_version: 0, allow_empty: false })
            .await
            .map(tonic::Response::into_inner)
    }

    /// Waits until the control plane has `node_id`'s ACK of `version` (the node has then
    /// also written the snapshot to its cache).
    pub async fn wait_acked(&self, node_id: &str, version: u64) {
        let client = ConfigServiceClient::connect(self.url()).await.expect("admin client connects");
        eventually(Duration::from_secs(10), &format!("{node_id} acked version {version}"), || {
            let mut client = client.clone();
            async move {
                let nodes = client.list_nodes(ListNodesRequest {}).await.ok()?.into_inner().nodes;
                nodes.iter().any(|n| n.node_id == node_id && n.acked_version == version).then_some(())
            }
        })
        .await;
    }

    /// Stops serving and waits until the server is gone.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for TestControlPlane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a node with an admin endpoint on an ephemeral port.
pub async fn start_node(id: &str, control_plane: &str, cache_dir: Option<PathBuf>) -> Node {
    start_node_with_token(id, control_plane, cache_dir, None).await
}

/// Starts a node that authenticates with `token`.
pub async fn start_node_with_token(
    id: &str,
    control_plane: &str,
    cache_dir: Option<PathBuf>,
    token: Option<String>,
) -> Node {
    Node::start(NodeConfig {
        node_id: id.into(),
        control_plane: control_plane.into(),
        cache_dir,
        admin: Some("127.0.0.1:0".parse().expect("addr")),
        labels: [("test".to_owned(), id.to_owned())].into(),
        token,
        tls: None,
        otlp_endpoint: None,
        replay_budget_bytes: None,
        file_poll_interval: NodeConfig::DEFAULT_FILE_POLL_INTERVAL,
    })
    .await
    .expect("node starts")
}

/// Waits until `node` serves `version`.
pub async fn wait_version(node: &Node, version: u64) {
    eventually(Duration::from_secs(10), &format!("node at version {version}"), || async {
        (node.version() == version).then_some(())
    })
    .await;
}

/// Waits until `node` has a listener named `name` and returns its address.
pub async fn listener(node: &Node, name: &str) -> SocketAddr {
    eventually(Duration::from_secs(10), &format!("listener {name}"), || async { node.listener_addr(name) }).await
}

/// A response, body read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The `x-backend` header the echo servers set, or "" for a local answer.
    pub fn backend(&self) -> &str {
        self.headers.get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// An HTTP/1.1 keep-alive client (or h2c prior knowledge).
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient { client: Client::builder(TokioExecutor::new()).build_http() }
    }
}

impl HttpClient {
    pub fn h2c() -> HttpClient {
        HttpClient { client: Client::builder(TokioExecutor::new()).http2_only(true).build_http() }
    }

    pub async fn get(&self, addr: SocketAddr, path: &str) -> anyhow::Result<Reply> {
        self.send(Request::get(format!("http://{addr}{path}")).body(Full::default())?).await
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .context("request timed out")??;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply { status: parts.status, headers: parts.headers, body: String::from_utf8_lossy(&body).into_owned() })
    }
}

/// Path of the real `vane` binary, beside the test binaries.
pub fn vane_bin() -> PathBuf {
    built_artifact("vane")
}

/// Path of an example program of this package.
pub fn example_bin(name: &str) -> PathBuf {
    built_artifact(&format!("examples/{name}"))
}

/// `cargo test` builds only the binaries of the package under test, so the first call in
/// a test process runs `cargo build --workspace --all-targets` (a no-op when fresh). It
/// selects what `cargo test --workspace` selects, so features unify the same way and
/// nothing is rebuilt back and forth; and no test ever runs a stale binary.
pub fn built_artifact(artifact: &str) -> PathBuf {
    static TARGET_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = TARGET_DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe.parent().and_then(Path::parent).expect("target dir").to_owned();
        let profile = dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--quiet", "--workspace", "--all-targets"]);
        // The test runner's own variables (package metadata, library paths) would make the
        // nested cargo see a different environment and rebuild crates whose build scripts
        // watch it.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let runner_only = ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_", "CARGO_CRATE_", "NEXTEST", "__NEXTEST"]
                .iter()
                .any(|p| key.starts_with(p))
                || matches!(&*key, "LD_LIBRARY_PATH" | "DYLD_FALLBACK_LIBRARY_PATH" | "CARGO_TARGET_TMPDIR");
            if runner_only {
                build.env_remove(&*key);
            }
        }
        if profile == "release" {
            build.arg("--release");
        }
        let status = build.current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("cargo runs");
        assert!(status.success(), "cargo build --workspace --all-targets failed");
        dir
    });
    let path = dir.join(format!("{artifact}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} is missing after cargo build", path.display());
    path
}

/// What a finished `vane` command printed.
#[derive(Debug)]
pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `vane ARGS` against `server` and waits for it.
pub async fn vane(server: &str, args: &[&str]) -> CliOutput {
    vane_with_token(server, None, args).await
}

/// Runs `vane ARGS` against `server`, with `VANE_TOKEN` set when `token` is given.
pub async fn vane_with_token(server: &str, token: Option<&str>, args: &[&str]) -> CliOutput {
    let mut command = tokio::process::Command::new(vane_bin());
    match token {
        Some(t) => command.env("VANE_TOKEN", t),
        None => command.env_remove("VANE_TOKEN"),
    };
    let output = command.args(args).env("VANE_SERVER", server).stdin(Stdio::null()).output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .expect("vane command finished in time")
        .expect("vane command runs");
    CliOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Writes `yaml` to a file in `dir` and returns its path as a string.
pub fn write_yaml(dir: &Path, name: &str, yaml: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, yaml).expect("write yaml");
    path.to_string_lossy().into_owned()
}

/// A `vane` server process (control plane or proxy), killed when dropped.
#[derive(Debug)]
pub struct VaneProcess {
    child: tokio::process::Child,
    /// The first line it printed on stdout (its readiness line).
    pub banner: String,
}

impl VaneProcess {
    /// Starts `vane ARGS` and waits for its readiness line on stdout.
    pub async fn start(args: &[&str]) -> anyhow::Result<VaneProcess> {
        VaneProcess::start_binary(&vane_bin(), args).await
    }

    /// As `start`, with a given `vane` binary (benchmarks use a release build).
    pub async fn start_binary(vane: &Path, args: &[&str]) -> anyhow::Result<VaneProcess> {
        let mut command = tokio::process::Command::new(vane);
        command.args(args).env_remove("VANE_TOKEN").stderr(Stdio::null());
        VaneProcess::spawn(command).await
    }

    /// Starts `command` as prepared (arguments, environment, working dir, stderr) and
    /// waits for its readiness line on stdout.
    pub async fn spawn(mut command: tokio::process::Command) -> anyhow::Result<VaneProcess> {
        let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).kill_on_drop(true).spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let banner = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .context("no readiness line in time")??
            .ok_or_else(|| anyhow!("vane exited before it was ready"))?;
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(VaneProcess { child, banner })
    }

    /// Starts `vane control-plane` on `data_dir`, an ephemeral loopback port, and `extra` flags.
    pub async fn control_plane(data_dir: &Path, extra: &[&str]) -> anyhow::Result<VaneProcess> {
        let dir = data_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 data dir"))?;
        let mut args = vec!["control-plane", "--data-dir", dir, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        VaneProcess::start(&args).await
    }

    /// Starts `vane ARGS` with `dir` as its current directory (`vane dev` reads
    /// `examples/quickstart.yaml` from there) and waits until it prints a stdout line that
    /// starts with `until`; `banner` is every non-blank line up to that one, joined by `\n`.
    pub async fn start_in(dir: &Path, args: &[&str], until: &str) -> anyhow::Result<VaneProcess> {
        let mut child = tokio::process::Command::new(vane_bin())
            .args(args)
            .current_dir(dir)
            .env_remove("VANE_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = Vec::new();
        let read = async {
            while let Some(line) = lines.next_line().await? {
                let done = line.starts_with(until);
                if !line.trim().is_empty() {
                    banner.push(line);
                }
                if done {
                    return Ok(());
                }
            }
            bail!("vane exited before printing '{until}': {banner:?}")
        };
        tokio::time::timeout(Duration::from_secs(20), read).await.context("no readiness line in time")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(VaneProcess { child, banner: banner.join("\n") })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The control plane's URL, read from `vane control-plane listening on ADDR ...`.
    pub fn control_plane_url(&self) -> anyhow::Result<String> {
        let addr = self
            .banner
            .strip_prefix("vane control-plane listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .ok_or_else(|| anyhow!("unexpected banner: {}", self.banner))?;
        let scheme = if self.banner.ends_with(" tls") { "https" } else { "http" };
        Ok(format!("{scheme}://{addr}"))
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn terminate(&self) -> anyhow::Result<()> {
        let pid = self.child.id().ok_or_else(|| anyhow!("already exited"))?;
        let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
        ensure(status.success(), "kill -TERM failed")
    }

    /// Waits for the process to exit, up to `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        Ok(tokio::time::timeout(within, self.child.wait()).await.context("did not exit in time")??)
    }

    /// SIGKILL, then reap.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// A YAML config with one HTTP listener on an ephemeral port, the given clusters
/// (name → endpoints) and routes (name, prefix, cluster).
pub fn config_yaml(clusters: &[(&str, &[SocketAddr])], routes: &[(&str, &str, &str)]) -> String {
    let mut yaml = String::from("listeners:\n  - name: web\n    address: 127.0.0.1:0\nclusters:\n");
    for (name, endpoints) in clusters {
        yaml.push_str(&format!("  - name: {name}\n    endpoints:\n"));
        for e in *endpoints {
            yaml.push_str(&format!("      - address: \"{e}\"\n"));
        }
    }
    yaml.push_str("routes:\n");
    for (name, prefix, cluster) in routes {
        yaml.push_str(&format!(
            "  - name: {name}\n    match: {{ prefix: \"{prefix}\" }}\n    forward: {{ clusters: [{{ name: {cluster} }}] }}\n"
        ));
    }
    yaml
}

/// Sends raw bytes on a fresh connection and returns the status code of the answer.
pub async fn raw_status(addr: SocketAddr, bytes: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    read_response(&mut stream).await.0
}

/// Reads one HTTP/1.1 answer off `stream`: its status and body (framed by its
/// `Content-Length`, or read until the connection closes). Bounded by a 5 s deadline.
pub async fn read_response(stream: &mut tokio::net::TcpStream) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = Vec::new();
    // Appends what one read gives; 0 at the end of the stream (or on a reset).
    async fn read(buf: &mut Vec<u8>, stream: &mut tokio::net::TcpStream, deadline: tokio::time::Instant) -> usize {
        let mut chunk = [0u8; 4096];
        let n =
            tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await.expect("an answer in time").unwrap_or(0);
        buf.extend_from_slice(&chunk[..n]);
        n
    }
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        assert!(
            read(&mut buf, stream, deadline).await > 0,
            "closed before a whole head: {:?}",
            String::from_utf8_lossy(&buf)
        );
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{head:?}"));
    let length = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok()).flatten()
    });
    match length {
        Some(n) => {
            while buf.len() < head_end + n {
                assert!(read(&mut buf, stream, deadline).await > 0, "closed before the whole body");
            }
        }
        None => while read(&mut buf, stream, deadline).await > 0 {},
    }
    let end = length.map_or(buf.len(), |n| head_end + n);
    (status, String::from_utf8_lossy(&buf[head_end..end]).into_owned())
}

/// The value of the first sample of `metrics` (Prometheus text) whose name and labels
/// start with `series` (e.g. `vane_x_total{listener="web"`), or 0 when there is none.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Fails unless `cond`, with a message (for use in `?` chains).
pub fn ensure(cond: bool, message: impl Into<String>) -> anyhow::Result<()> {
    if cond { Ok(()) } else { bail!(message.into()) }
}

/// PEM files of a test PKI: a CA, a server certificate for 127.0.0.1 and localhost, and
/// a client certificate, all signed by the CA; plus an unrelated CA.
#[derive(Debug)]
pub struct TestPki {
    pub dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, pem: String| std::fs::write(dir.path().join(name), pem).expect("write pem");
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate().expect("key");
            let cert = params.self_signed(&key).expect("ca cert");
            (cert, Issuer::new(params, key))
        };
        let (ca_cert, issuer) = ca("vane test ca");
        write("ca.pem", ca_cert.pem());
        let (other_ca, _) = ca("someone else");
        write("other-ca.pem", other_ca.pem());
        for (name, sans) in
            [("server", vec!["127.0.0.1".to_owned(), "localhost".to_owned()]), ("client", vec!["node-1".to_owned()])]
        {
            let mut params = CertificateParams::new(sans).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &issuer).expect("signed");
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        TestPki { dir }
    }

    /// Path of one of the files: ca.pem, other-ca.pem, server.pem/.key, client.pem/.key.
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).expect("read pem")
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}

/// The usual fixture: a control plane, one node, one echo upstream, and a config applied
/// and served (version 1).
#[derive(Debug)]
pub struct Serving {
    pub cp: TestControlPlane,
    pub node: Node,
    pub echo: EchoServer,
    /// The node's `web` listener.
    pub web: SocketAddr,
}

impl Serving {
    /// Applies `yaml(echo address)`, which must have a listener named `web`.
    pub async fn start(yaml: impl FnOnce(SocketAddr) -> String) -> Serving {
        let cp = TestControlPlane::start().await;
        let node = cp.node("n1").await;
        let echo = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.expect("echo starts");
        cp.apply(&yaml(echo.addr())).await.expect("config applies");
        wait_version(&node, 1).await;
        let web = listener(&node, "web").await;
        Serving { cp, node, echo, web }
    }

    /// Every path on `web` to the echo upstream.
    pub async fn echo_all() -> Serving {
        Serving::start(|e| config_yaml(&[("echo", &[e])], &[("all", "/", "echo")])).await
    }
}
