//! `vane dev`: a control plane, `--nodes N` data-plane nodes (default 1) and two demo echo
//! backends in one process, the quickstart applied to an empty store.
//!
//! Node `i` (1-based) is `dev-i`: its own admin endpoint (`--admin`'s port + i - 1, or a
//! port of its own for each when `--admin` says port 0), its own last-good-snapshot dir
//! (`DIR/dev-i`), labels `mode=dev` and `instance=i`. All of them serve the one config, so
//! they bind the same listener addresses, as the nodes of a fleet on one host do: each
//! binds with SO_REUSEPORT (the listener option `enable_reuse_port: true`) and the kernel
//! spreads new connections over them by a hash of the connection's addresses.
//!
//! The quickstart file sets `enable_reuse_port: true` itself, rather than `dev` setting it
//! on the config it applies for `--nodes > 1`: the tour edits `examples/quickstart.yaml`
//! and applies it with `vane apply`, and a stored config that differed from the file
//! would lose the option at the tour's first apply, every node but one then refusing that
//! version. With the option in the file, what is stored is what the file says. The
//! option's cost (another process of the same user that also sets SO_REUSEPORT on
//! 127.0.0.1:8080 gets a share of its connections) is acceptable on a loopback demo; a
//! program that binds the port without it is still refused, as before. A config without
//! it (an edited quickstart, or a store that holds another config) is refused for
//! `--nodes > 1` before any node starts, with a message naming the option and the
//! listener, rather than left for nodes 2..N to NACK.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use vane_control_plane::ControlPlaneConfig;
use vane_data_plane::{Node, NodeConfig, NodeError};
use vane_proto::admin::config_service_client::ConfigServiceClient;
use vane_proto::admin::{ApplyRequest, ListNodesRequest, ListRequest};
use vane_proto::config::Config;

use crate::demo::EchoServer;
use crate::quickstart;
use crate::serve::{DevArgs, start_control_plane};

/// The id of node `i` (1-based).
fn node_id(i: u16) -> String {
    format!("dev-{i}")
}

/// Node `i`'s admin address: `base`'s port + i - 1, or port 0 for each when `base` says 0.
fn admin_addr(base: SocketAddr, i: u16) -> anyhow::Result<SocketAddr> {
    if base.port() == 0 {
        return Ok(base);
    }
    let port = base.port().checked_add(i - 1).ok_or_else(|| anyhow!("--admin {base}: no port for node {i}"))?;
    Ok(SocketAddr::new(base.ip(), port))
}

/// Why `config` cannot be served by `nodes` nodes on one host: a listener that every node
/// would bind without `enable_reuse_port` (all but one would refuse the version), or with
/// port 0 (each node would get a port of its own, not a shared one).
fn shareable(config: &Config, nodes: u16, from: &str) -> anyhow::Result<()> {
    if nodes < 2 {
        return Ok(());
    }
    for listener in &config.listeners {
        if !listener.enable_reuse_port {
            bail!(
                "--nodes {nodes}: the nodes share each listener's address, which needs `enable_reuse_port: true` \
                 on every listener; listener '{}' ({}) in {from} does not set it (the quickstart shipped with \
                 vane does; `vane dev` without --nodes runs one node)",
                listener.name,
                listener.address
            );
        }
        if listener.address.parse::<SocketAddr>().is_ok_and(|a| a.port() == 0) {
            bail!(
                "--nodes {nodes}: listener '{}' in {from} listens on port 0, so each node would bind a port of \
                 its own: give it a port",
                listener.name
            );
        }
    }
    Ok(())
}

/// For `--nodes > 1`: each listener of the quickstart written with port 0 (`--web
/// 127.0.0.1:0`) gets one free port, the same for every node, so that they share it.
fn pick_shared_ports(config: &mut Config) -> anyhow::Result<()> {
    for listener in &mut config.listeners {
        if let Ok(addr) = listener.address.parse::<SocketAddr>()
            && addr.port() == 0
        {
            // Bound and released: another program may take it before the nodes do, as
            // with any port chosen ahead; the nodes then refuse the version and say so.
            let free = std::net::TcpListener::bind(addr)
                .and_then(|l| l.local_addr())
                .with_context(|| format!("cannot pick a port for listener '{}' on {addr}", listener.name))?;
            listener.address = free.to_string();
        }
    }
    Ok(())
}

pub(crate) async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let nodes = args.nodes;
    let [b1, b2] = args.backends[..] else { bail!("--backends takes two addresses") };
    let echo1 = EchoServer::start("echo-1", b1).await.with_context(|| format!("demo backend on {b1}"))?;
    let echo2 = EchoServer::start("echo-2", b2).await.with_context(|| format!("demo backend on {b2}"))?;
    let store = args.data_dir.join("store");
    let (cp, addr, cp_task) = start_control_plane(ControlPlaneConfig::new(store.clone()), args.listen).await?;
    let server = format!("http://{addr}");
    let mut client = ConfigServiceClient::connect(server.clone()).await?;

    // What the nodes will serve, checked before any of them starts.
    let quickstart = if cp.latest_version() == 0 {
        let dir = std::env::current_dir().context("current directory")?;
        let (mut config, source) = quickstart::load_from(&dir)?;
        quickstart::adapt(&mut config, [echo1.addr(), echo2.addr()], args.web);
        if nodes > 1 {
            pick_shared_ports(&mut config)?;
        }
        shareable(&config, nodes, &source.to_string())?;
        Some((config, source))
    } else {
        if nodes > 1 {
            let stored = client
                .list(ListRequest::default())
                .await
                .map_err(|s| anyhow!("reading the stored config: {}", s.message()))?
                .into_inner();
            let from = format!("version {} of the store in {}", stored.version, store.display());
            shareable(&stored.config.unwrap_or_default(), nodes, &from)?;
        }
        None
    };

    let mut started = Vec::with_capacity(usize::from(nodes));
    for i in 1..=nodes {
        let id = node_id(i);
        let admin = admin_addr(args.admin, i)?;
        let node = Node::start(NodeConfig {
            node_id: id.clone(),
            control_plane: server.clone(),
            cache_dir: Some(cache_dir(&args.data_dir, i)),
            admin: Some(admin),
            labels: BTreeMap::from([("mode".to_owned(), "dev".to_owned()), ("instance".to_owned(), i.to_string())]),
            token: None,
            tls: None,
            otlp_endpoint: None,
            replay_budget_bytes: None,
            file_poll_interval: NodeConfig::DEFAULT_FILE_POLL_INTERVAL,
        })
        .await
        .map_err(|e| match &e {
            NodeError::Admin { addr, source } if source.kind() == std::io::ErrorKind::AddrInUse => anyhow!(
                "node {id}: admin endpoint {addr} is in use by another process (node i of `vane dev` takes \
                 --admin's port + i - 1; give another --admin, or port 0 for any)"
            ),
            _ => anyhow!("node {id}: {e}"),
        })?;
        started.push((id, node));
    }

    let applied_from = match quickstart {
        Some((config, source)) => {
            let applied = client
                .apply(ApplyRequest { config: Some(config), dry_run: false, expected_version: 0, allow_empty: false })
                .await
                .map_err(|s| anyhow!("applying {source}: {}", s.message()))?
                .into_inner();
            tracing::info!(version = applied.version, %source, "quickstart applied");
            Some(source)
        }
        None => None,
    };
    let latest = cp.latest_version();
    // Until every node serves the latest version, or one refuses it (a port in use, most often).
    let deadline = Instant::now() + Duration::from_secs(10);
    let behind = || started.iter().find(|(_, node)| node.version() < latest);
    let mut refused = None;
    let mut next_check = Instant::now() + Duration::from_millis(200);
    while behind().is_some() && refused.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if Instant::now() >= next_check {
            refused = refusal(&mut client, &started, latest).await;
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
    let subject = |id: &str| if nodes == 1 { "its node".to_owned() } else { format!("node {id}") };
    match (refused, behind()) {
        (None, None) => println!("\nvane dev is running: {config}"),
        (Some((id, why)), _) => println!("\nvane dev started, but {} does not serve {config}: {why}", subject(&id)),
        (None, Some((id, _))) => {
            println!(
                "\nvane dev started, but {} does not serve {config}: no answer in 10 s: see `vane nodes`",
                subject(id)
            )
        }
    }
    print_banner(&started, &server, [echo1.addr(), echo2.addr()], applied_from.as_ref());
    cp_task.await.map_err(|e| anyhow!("control plane task: {e}"))??;
    drop(started);
    Ok(())
}

/// What runs where, and what to try: the lines after the first.
fn print_banner(
    nodes: &[(String, Node)],
    server: &str,
    [e1, e2]: [SocketAddr; 2],
    applied_from: Option<&quickstart::Source>,
) {
    let web = nodes
        .first()
        .and_then(|(_, node)| node.listener_addr("web"))
        .map_or_else(|| "(no listener named web)".into(), |a| a.to_string());
    let shared = if nodes.len() > 1 {
        format!("  (shared by the {} nodes: enable_reuse_port)", nodes.len())
    } else {
        String::new()
    };
    println!("\x20 proxy        http://{web}{shared}");
    println!("\x20 control plane {server}  (vane --server {server} ...)");
    for (id, node) in nodes {
        let admin = node.admin_addr().map_or_else(|| "-".into(), |a| a.to_string());
        println!("\x20 node {id:<8} http://{admin}/ready  /config  /metrics");
    }
    println!("\x20 backends     echo-1 {e1}, echo-2 {e2}\n\ntry:");
    if nodes.len() == 1 {
        println!("\x20 curl -i http://{web}/api/hello      # twice: echo-1 then echo-2 answer");
    } else {
        let first = nodes.first().and_then(|(_, n)| n.admin_addr()).map_or_else(|| "-".into(), |a| a.to_string());
        println!("\x20 curl -i http://{web}/api/hello      # each new connection goes to one of the nodes");
        println!("\x20 curl -s http://{first}/metrics | grep ^vane_http_requests_total   # that node's share");
    }
    println!("\x20 vane get routes\n\x20 vane nodes\n\x20 vane history");
    let next = match applied_from {
        Some(quickstart::Source::File(_)) => {
            format!("edit {path}, then: vane apply -f {path}", path = quickstart::PATH)
        }
        _ => "vane get all -o yaml > vane.yaml; edit it, then: vane apply -f vane.yaml".to_owned(),
    };
    println!("{next}\n");
}

/// The first of `nodes` that refused `version`, with why, as `vane nodes` shows it.
async fn refusal(
    client: &mut ConfigServiceClient<tonic::transport::Channel>,
    nodes: &[(String, Node)],
    version: u64,
) -> Option<(String, String)> {
    let listed = client.list_nodes(ListNodesRequest::default()).await.ok()?.into_inner();
    let node = listed
        .nodes
        .into_iter()
        .filter(|n| n.nack_version == version)
        .find(|n| nodes.iter().any(|(id, _)| *id == n.node_id))?;
    let errors: Vec<String> = node
        .nack_errors
        .iter()
        .map(|e| if e.name.is_empty() { e.message.clone() } else { format!("{} '{}': {}", e.kind, e.name, e.message) })
        .collect();
    Some((node.node_id, format!("it refused version {}: {}", node.nack_version, errors.join("; "))))
}

/// Where node `i` keeps its last good snapshot under `--data-dir`.
fn cache_dir(data_dir: &Path, i: u16) -> PathBuf {
    data_dir.join(node_id(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vane_proto::{Format, load};

    #[test]
    fn node_i_gets_the_admin_port_plus_i_minus_one_or_port_zero() {
        let base: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        assert_eq!(admin_addr(base, 1).unwrap(), base);
        assert_eq!(admin_addr(base, 3).unwrap().to_string(), "127.0.0.1:9903");
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(admin_addr(any, 5).unwrap(), any);
        assert!(admin_addr("127.0.0.1:65535".parse().unwrap(), 2).is_err());
        assert_eq!(node_id(2), "dev-2");
        assert_eq!(cache_dir(Path::new(".vane"), 2), Path::new(".vane/dev-2"));
    }

    #[test]
    fn several_nodes_need_every_listener_to_set_enable_reuse_port() {
        let mut config = load(include_str!("quickstart.yaml"), Format::Yaml).unwrap();
        assert!(config.listeners.iter().all(|l| l.enable_reuse_port), "the quickstart shares its ports");
        shareable(&config, 3, "q.yaml").expect("the quickstart runs on several nodes");

        config.listeners[0].enable_reuse_port = false;
        shareable(&config, 1, "q.yaml").expect("one node needs no shared port");
        let error = shareable(&config, 3, "q.yaml").unwrap_err().to_string();
        assert!(
            error.starts_with(
                "--nodes 3: the nodes share each listener's address, which needs `enable_reuse_port: true`"
            ),
            "{error}"
        );
        assert!(error.contains("listener 'web' (127.0.0.1:8080) in q.yaml does not set it"), "{error}");
    }

    #[test]
    fn a_port_zero_listener_gets_one_port_for_every_node() {
        let mut config = load(include_str!("quickstart.yaml"), Format::Yaml).unwrap();
        config.listeners[0].address = "127.0.0.1:0".into();
        let error = shareable(&config, 2, "q.yaml").unwrap_err().to_string();
        assert!(error.contains("listens on port 0"), "{error}");
        pick_shared_ports(&mut config).unwrap();
        let addr: SocketAddr = config.listeners[0].address.parse().unwrap();
        assert_ne!(addr.port(), 0);
        shareable(&config, 2, "q.yaml").expect("now shared");
    }
}
