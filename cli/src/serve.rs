//! Long-running commands: `dev`, `control-plane`, `proxy`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use vane_control_plane::{ControlPlane, ControlPlaneConfig, Tokens};
use vane_data_plane::{Node, NodeConfig, NodeError};
use vane_proto::admin::config_service_client::ConfigServiceClient;
use vane_proto::admin::{ApplyRequest, ListNodesRequest};

use crate::demo::EchoServer;
use crate::quickstart;

#[derive(Debug, clap::Args)]
pub(crate) struct ControlPlaneArgs {
    /// Where versions are stored (sled); created when missing.
    #[arg(long, default_value = ".vane/store")]
    data_dir: PathBuf,
    /// gRPC address for the admin API and the discovery stream. Without a token file
    /// only loopback addresses are allowed.
    #[arg(long, default_value = "127.0.0.1:18000")]
    listen: SocketAddr,
    /// Token file: one `NAME ROLE SHA256HEX` per line (see `vane token new`).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// How many versions to keep; older ones are pruned.
    #[arg(long, default_value_t = 1000)]
    retain_versions: usize,
    /// How long a disconnected node stays listed by `vane nodes`, e.g. `10m`.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    node_purge_after: Duration,
    #[command(flatten)]
    tls: crate::tls::ServerTlsArgs,
    /// Serve Prometheus metrics over plain HTTP at ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProxyArgs {
    /// Control-plane URL.
    #[arg(long, default_value = "http://127.0.0.1:18000")]
    control_plane: String,
    /// This node's unique id.
    #[arg(long)]
    node_id: String,
    /// The node's own state: its last good snapshot (served when the control plane is
    /// down) and the last cache purge it applied. Not the response caches' disk tier (a
    /// cache resource names its own directory). `--cache-dir` is the old name.
    #[arg(long = "state-dir", visible_alias = "cache-dir", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Admin endpoint (/ready, /config).
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// A label reported to the control plane, `key=value`; repeatable.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Export a span per request to this OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`
    /// (builds with the `otlp` feature).
    #[arg(long)]
    otlp_endpoint: Option<String>,
    /// How often certificate, key and CA files named by the config are checked for
    /// changes; a changed file is loaded (and served at the next handshake) without a new
    /// version. `0s`: never.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    file_poll_interval: Duration,
    /// On SIGTERM/Ctrl-C: how long requests in flight may take to finish.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Memory, in bytes, for streamed request bodies kept for a retry or a mirror (each
    /// up to its route's `replay_body_bytes`); a body announced larger than what is left
    /// gets 503 with `x-vane-overloaded: replay_budget`.
    #[arg(long, default_value_t = vane_data_plane::DEFAULT_REPLAY_BUDGET)]
    replay_budget_bytes: u64,
    /// Worker threads. Default: the CPUs this process may run on. With one, the node runs
    /// on a single-threaded runtime, which costs less per request than a work-stealing
    /// runtime with one worker (see BENCHMARKS.md).
    #[arg(long, env = "VANE_THREADS")]
    pub(crate) threads: Option<usize>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    /// Root of dev state: the store in DIR/store, the node cache in DIR/node.
    #[arg(long, default_value = ".vane")]
    data_dir: PathBuf,
    /// Control-plane gRPC address.
    #[arg(long, default_value = "127.0.0.1:18000")]
    listen: SocketAddr,
    /// Node admin endpoint.
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: SocketAddr,
    /// Addresses of the two demo echo backends (the quickstart routes to these).
    #[arg(long, num_args = 2, default_values = ["127.0.0.1:9001", "127.0.0.1:9002"])]
    backends: Vec<SocketAddr>,
    /// Address of the quickstart's `web` listener, the proxy (default: as the quickstart
    /// says, 127.0.0.1:8080). Only when the quickstart is applied (an empty store).
    #[arg(long)]
    web: Option<SocketAddr>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DemoBackendArgs {
    /// Where to listen, one backend per address (port 0 for any).
    #[arg(required = true, value_name = "ADDR")]
    addresses: Vec<SocketAddr>,
    /// Names, in the order of the addresses (default echo-1, echo-2, ...).
    #[arg(long = "name")]
    names: Vec<String>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("'{s}' is not key=value"))?;
    Ok((k.to_owned(), v.to_owned()))
}

/// Completes on Ctrl-C or SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

async fn start_control_plane(
    config: ControlPlaneConfig,
    listen: SocketAddr,
) -> anyhow::Result<(ControlPlane, SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    if config.tokens.is_open() {
        if !listen.ip().is_loopback() {
            bail!(
                "refusing to serve the admin API on {listen} without authentication: \
                 give --admin-token-file, or listen on a loopback address"
            );
        }
        tracing::warn!(%listen, "no --admin-token-file: the admin API is open to every local process");
    }
    let cp = ControlPlane::open(config).await?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let server = cp.clone();
    let task = tokio::spawn(async move { server.serve(listener, stop_signal()).await.map_err(anyhow::Error::from) });
    Ok((cp, addr, task))
}

pub(crate) async fn control_plane(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let mut config = ControlPlaneConfig::new(args.data_dir);
    config.retain_versions = args.retain_versions;
    config.node_purge_after = args.node_purge_after;
    config.tls = args.tls.config()?;
    if let Some(path) = &args.admin_token_file {
        config.tokens = Tokens::load(path)?;
        if config.tokens.is_open() {
            bail!("token file {} lists no tokens", path.display());
        }
    }
    let tls = config.tls.is_some();
    let (cp, addr, task) = start_control_plane(config, args.listen).await?;
    if let Some(metrics) = args.metrics_listen {
        let listener =
            tokio::net::TcpListener::bind(metrics).await.with_context(|| format!("cannot listen on {metrics}"))?;
        tracing::info!(addr = %listener.local_addr()?, "control-plane metrics at /metrics");
        tokio::spawn(serve_metrics(listener, cp.clone()));
    }
    println!(
        "vane control-plane listening on {addr} (version {}){}",
        cp.latest_version(),
        if tls { " tls" } else { "" }
    );
    task.await.map_err(|e| anyhow!("control plane task: {e}"))?
}

/// A minimal HTTP endpoint: `/metrics` of the control plane, 404 elsewhere.
async fn serve_metrics(listener: tokio::net::TcpListener, cp: ControlPlane) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let cp = cp.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (status, body) = if req.uri().path() == "/metrics" {
                    (http::StatusCode::OK, cp.render_metrics())
                } else {
                    (http::StatusCode::NOT_FOUND, "not found: try /metrics\n".to_owned())
                };
                let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                *response.status_mut() = status;
                std::future::ready(Ok::<_, std::convert::Infallible>(response))
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

pub(crate) async fn proxy(
    args: ProxyArgs,
    token: Option<String>,
    tls: &crate::tls::ClientTlsArgs,
) -> anyhow::Result<()> {
    let tls = tls.config(&args.control_plane)?;
    let node = Node::start(NodeConfig {
        node_id: args.node_id.clone(),
        control_plane: args.control_plane,
        cache_dir: args.cache_dir,
        admin: Some(args.admin),
        labels: args.labels.into_iter().collect(),
        token,
        tls,
        otlp_endpoint: args.otlp_endpoint,
        replay_budget_bytes: Some(args.replay_budget_bytes),
        file_poll_interval: args.file_poll_interval,
    })
    .await
    .map_err(|e| match &e {
        // The second node on a host, started with the first one's flags.
        NodeError::Admin { addr, source } if source.kind() == std::io::ErrorKind::AddrInUse => anyhow!(
            "admin endpoint {addr} is in use by another process (another node on this host? \
             give each node its own --admin ADDR, and its own --state-dir)"
        ),
        _ => anyhow::Error::from(e),
    })?;
    let admin = node.admin_addr().map_or_else(|| "-".into(), |a| a.to_string());
    println!("vane proxy {} admin on {admin}", args.node_id);
    stop_signal().await;
    let left = node.drain(args.drain_timeout).await;
    if left > 0 {
        tracing::warn!(left, "connections still open at the drain deadline");
    }
    drop(node);
    Ok(())
}

/// `vane demo-backend`: the echo servers of `vane dev`, for a fleet run by hand. Prints
/// one line once every backend listens, then serves until Ctrl-C or SIGTERM.
pub(crate) async fn demo_backend(args: DemoBackendArgs) -> anyhow::Result<()> {
    if args.names.len() > args.addresses.len() {
        bail!("{} names for {} addresses", args.names.len(), args.addresses.len());
    }
    let mut servers = Vec::with_capacity(args.addresses.len());
    for (i, addr) in args.addresses.iter().enumerate() {
        let name = args.names.get(i).cloned().unwrap_or_else(|| format!("echo-{}", i + 1));
        let server = EchoServer::start(&name, *addr).await.with_context(|| format!("demo backend on {addr}"))?;
        servers.push((name, server));
    }
    let listening: Vec<String> = servers.iter().map(|(name, s)| format!("{name} on {}", s.addr())).collect();
    println!("vane demo-backend {}", listening.join(", "));
    stop_signal().await;
    Ok(())
}

/// The node id of `vane dev`'s node.
const DEV_NODE: &str = "dev-node";

pub(crate) async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let [b1, b2] = args.backends[..] else { bail!("--backends takes two addresses") };
    let echo1 = EchoServer::start("echo-1", b1).await.with_context(|| format!("demo backend on {b1}"))?;
    let echo2 = EchoServer::start("echo-2", b2).await.with_context(|| format!("demo backend on {b2}"))?;
    let store = args.data_dir.join("store");
    let (cp, addr, cp_task) = start_control_plane(ControlPlaneConfig::new(store.clone()), args.listen).await?;
    let server = format!("http://{addr}");
    let node = Node::start(NodeConfig {
        node_id: DEV_NODE.into(),
        control_plane: server.clone(),
        cache_dir: Some(args.data_dir.join("node")),
        admin: Some(args.admin),
        labels: BTreeMap::from([("mode".to_owned(), "dev".to_owned())]),
        token: None,
        tls: None,
        otlp_endpoint: None,
        replay_budget_bytes: None,
        file_poll_interval: NodeConfig::DEFAULT_FILE_POLL_INTERVAL,
    })
    .await?;

    let applied_from = if cp.latest_version() == 0 {
        let dir = std::env::current_dir().context("current directory")?;
        let (mut config, source) = quickstart::load_from(&dir)?;
        quickstart::adapt(&mut config, [echo1.addr(), echo2.addr()], args.web);
        let mut client = ConfigServiceClient::connect(server.clone()).await?;
        let applied = client
            .apply(ApplyRequest { config: Some(config), dry_run: false, expected_version: 0, allow_empty: false })
            .await
            .map_err(|s| anyhow!("applying {source}: {}", s.message()))?
            .into_inner();
        tracing::info!(version = applied.version, %source, "quickstart applied");
        Some(source)
    } else {
        None
    };
    let latest = cp.latest_version();
    // Until the node serves the latest version or refuses it (a port in use, most often).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = None;
    let mut next_check = Instant::now() + Duration::from_millis(200);
    while node.version() < latest && refused.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if Instant::now() >= next_check {
            refused = refusal(&server, latest).await;
            next_check = Instant::now() + Duration::from_millis(200);
        }
    }
    // The first line says whether it is ready, and which config it serves.
    let config = match &applied_from {
        Some(source) => format!("version {latest}, applied from {source}"),
        None => format!(
            "version {latest}, from the store in {} (the quickstart is applied to an empty store only)",
            store.display()
        ),
    };
    if node.version() >= latest {
        println!("\nvane dev is running: {config}");
    } else {
        let why = refused.unwrap_or_else(|| "no answer in 10 s: see `vane nodes`".into());
        println!("\nvane dev started, but its node does not serve {config}: {why}");
    }
    let web = node.listener_addr("web").map_or_else(|| "(no listener named web)".into(), |a| a.to_string());
    let next = match applied_from {
        Some(quickstart::Source::File(_)) => {
            format!("edit {path}, then: vane apply -f {path}", path = quickstart::PATH)
        }
        _ => "vane get all -o yaml > vane.yaml; edit it, then: vane apply -f vane.yaml".to_owned(),
    };
    println!(
        "\x20 proxy        http://{web}\n\
         \x20 control plane {server}  (vane --server {server} ...)\n\
         \x20 node admin   http://{admin}/ready  /config\n\
         \x20 backends     echo-1 {e1}, echo-2 {e2}\n\n\
         try:\n\
         \x20 curl -i http://{web}/api/hello      # twice: echo-1 then echo-2 answer\n\
         \x20 vane get routes\n\
         \x20 vane nodes\n\
         \x20 vane history\n\
         {next}\n",
        admin = node.admin_addr().map_or_else(|| "-".into(), |a| a.to_string()),
        e1 = echo1.addr(),
        e2 = echo2.addr(),
    );
    cp_task.await.map_err(|e| anyhow!("control plane task: {e}"))??;
    drop(node);
    Ok(())
}

/// Why the dev node refused `version`, as `vane nodes` shows it; `None` when it has not.
async fn refusal(server: &str, version: u64) -> Option<String> {
    let mut client = ConfigServiceClient::connect(server.to_owned()).await.ok()?;
    let nodes = client.list_nodes(ListNodesRequest::default()).await.ok()?.into_inner();
    let node = nodes.nodes.into_iter().find(|n| n.node_id == DEV_NODE)?;
    if node.nack_version != version {
        return None;
    }
    let errors: Vec<String> = node
        .nack_errors
        .iter()
        .map(|e| if e.name.is_empty() { e.message.clone() } else { format!("{} '{}': {}", e.kind, e.name, e.message) })
        .collect();
    Some(format!("it refused version {}: {}", node.nack_version, errors.join("; ")))
}
