//! Long-running commands: `dev`, `control-plane`, `proxy`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use vane_control_plane::{ControlPlane, ControlPlaneConfig, Tokens};
use vane_data_plane::{Node, NodeConfig, NodeError};

use crate::demo::EchoServer;

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
    /// Root of dev state: the store in DIR/store, node dev-I's cache in DIR/dev-I.
    #[arg(long, default_value = ".vane")]
    pub(crate) data_dir: PathBuf,
    /// Control-plane gRPC address.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub(crate) listen: SocketAddr,
    /// Admin endpoint of node dev-1; node dev-I takes this port + I - 1 (port 0: any, each).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub(crate) admin: SocketAddr,
    /// Addresses of the two demo echo backends (the quickstart routes to these).
    #[arg(long, num_args = 2, default_values = ["127.0.0.1:9001", "127.0.0.1:9002"])]
    pub(crate) backends: Vec<SocketAddr>,
    /// Address of the quickstart's `web` listener, the proxy (default: as the quickstart
    /// says, 127.0.0.1:8080). Only when the quickstart is applied (an empty store).
    #[arg(long)]
    pub(crate) web: Option<SocketAddr>,
    /// Nodes to run, dev-1 to dev-N, sharing the listeners' ports (enable_reuse_port). At
    /// most 16: one process on one machine, more would only share the same cores.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub(crate) nodes: u16,
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

pub(crate) async fn start_control_plane(
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
