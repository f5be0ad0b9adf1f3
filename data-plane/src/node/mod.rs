//! The node: what `vane proxy` runs. [`Node::start`] serves the admin endpoint, boots
//! from the last-known-good snapshot when there is one, runs the discovery client and
//! watches the certificate files the config names; every snapshot goes through
//! [`shared::NodeShared::apply_snapshot`]. What goes wrong on the node while it serves
//! (a cache it cannot write, a certificate file it cannot load) is a problem it reports
//! (`problems.rs`), not a NACK.

pub(crate) mod admin;
pub(crate) mod discovery;
pub(crate) mod file_watch;
pub(crate) mod problems;
pub(crate) mod purges;
pub(crate) mod shared;
pub(crate) mod snapshot_store;
pub(crate) mod tls_files;
pub(crate) mod trim;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::observe::{accesslog, metrics};
use crate::{policy, tls};

use shared::NodeShared;

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's unique id in the fleet.
    pub node_id: String,
    /// Control-plane URL, e.g. `http://127.0.0.1:18000`.
    pub control_plane: String,
    /// Where the last good snapshot is kept; `None`: not kept.
    pub cache_dir: Option<PathBuf>,
    /// Admin endpoint (`/ready`, `/config`); `None`: not served.
    pub admin: Option<SocketAddr>,
    /// Free-form labels reported to the control plane.
    pub labels: BTreeMap<String, String>,
    /// Bearer token (role `node`) for the discovery stream, when the control plane wants one.
    pub token: Option<String>,
    /// TLS towards the control plane (trusted CA, client certificate for mTLS); required
    /// for an `https://` URL.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// OTLP/gRPC collector for request spans, e.g. `http://127.0.0.1:4317` (needs the
    /// `otlp` cargo feature).
    pub otlp_endpoint: Option<String>,
    /// Memory for request bodies kept for a retry or a mirror, in bytes; `None`: 64 MiB
    /// ([`crate::http::replay::DEFAULT_REPLAY_BUDGET`]).
    pub replay_budget_bytes: Option<u64>,
    /// How often the certificate, key and CA files the config names are checked for
    /// changes (a change is loaded without a new snapshot); zero: never.
    /// [`NodeConfig::DEFAULT_FILE_POLL_INTERVAL`] by default.
    pub file_poll_interval: Duration,
}

impl NodeConfig {
    /// The default of [`NodeConfig::file_poll_interval`].
    pub const DEFAULT_FILE_POLL_INTERVAL: Duration = Duration::from_secs(2);
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("admin endpoint {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid control-plane url '{0}'")]
    ControlPlaneUrl(String),
    #[error("control-plane tls: {0}")]
    Tls(String),
    #[error("tracing: {0}")]
    Otlp(String),
}

/// A running data-plane node. Dropping it stops its listeners and tasks.
#[derive(Debug)]
pub struct Node {
    shared: Arc<NodeShared>,
    admin_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Starts a node: serves its cached snapshot if it has one, opens the admin endpoint
    /// and connects to the control plane (retrying forever with backoff).
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(config.control_plane.clone())
            .map_err(|_| NodeError::ControlPlaneUrl(config.control_plane.clone()))?;
        if let Some(tls) = config.tls.clone() {
            endpoint = endpoint.tls_config(tls).map_err(|e| NodeError::Tls(e.to_string()))?;
        }
        #[cfg(feature = "otlp")]
        let tracing = match &config.otlp_endpoint {
            Some(endpoint) => {
                Some(crate::observe::otel::Tracing::start(endpoint, &config.node_id).map_err(NodeError::Otlp)?)
            }
            None => None,
        };
        #[cfg(not(feature = "otlp"))]
        if config.otlp_endpoint.is_some() {
            return Err(NodeError::Otlp("this build has no OTLP export (cargo feature `otlp`)".into()));
        }
        let shared = Arc::new(NodeShared {
            node_id: config.node_id.clone(),
            serving: Arc::new(crate::proxy::Serving {
                runtime: ArcSwapOption::empty(),
                replay_budget: config
                    .replay_budget_bytes
                    .map_or_else(crate::http::replay::ReplayBudget::default, crate::http::replay::ReplayBudget::new),
                #[cfg(feature = "otlp")]
                tracing,
            }),
            listeners: Mutex::default(),
            stale: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            metrics: metrics::Metrics::default(),
            snapshots: AtomicU64::new(0),
            swaps: AtomicU64::new(0),
            access_logs: accesslog::Sinks::default(),
            started: Instant::now(),
            lost_at_ms: AtomicU64::new(0),
            dns: Mutex::default(),
            held_snapshot: Mutex::default(),
            tls_sessions: tls::Sessions::default(),
            policy_state: policy::PolicyState::default(),
            caches: crate::cache::Caches::for_node(&config.node_id),
            problems: problems::Problems::default(),
            watched: tokio::sync::watch::Sender::new(Arc::default()),
            applying: Mutex::default(),
            purge_seq: AtomicU64::new(config.cache_dir.as_deref().map_or(0, purges::read_seq)),
            purges: AtomicU64::new(0),
        });
        if let Some(dir) = &config.cache_dir {
            match snapshot_store::read(dir) {
                Ok(Some(snapshot)) => match async {
                    shared.resolve(&snapshot).await?;
                    shared.apply_snapshot(&snapshot)
                }
                .await
                {
                    Ok(()) => {
                        shared.stale.store(true, Ordering::Relaxed);
                        info!(version = snapshot.version, "serving cached snapshot until the control plane answers");
                    }
                    Err(errors) => warn!(errors = ?errors, "cached snapshot refused"),
                },
                Ok(None) => {}
                Err(error) => warn!(%error, "cached snapshot unreadable"),
            }
        }
        let mut tasks = Vec::new();
        let mut admin_addr = None;
        if let Some(addr) = config.admin {
            let listener =
                tokio::net::TcpListener::bind(addr).await.map_err(|source| NodeError::Admin { addr, source })?;
            admin_addr = listener.local_addr().ok();
            tasks.push(tokio::spawn(admin::serve(listener, shared.clone())));
        }
        tasks.push(tokio::spawn(file_watch::run(shared.clone(), config.file_poll_interval)));
        tasks.push(tokio::spawn(discovery::run(shared.clone(), endpoint, config)));
        tasks.push(tokio::spawn(shared.clone().refresh_dns()));
        Ok(Node { shared, admin_addr, tasks })
    }

    /// Version of the runtime serving now (0: none).
    pub fn version(&self) -> u64 {
        self.shared.held().0
    }

    /// Bound address of a listener, by name.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.shared.listeners().local_addr(name)
    }

    /// Bound address of the admin endpoint.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// How many snapshots this node has swapped in (including one from its cache).
    pub fn swaps(&self) -> u64 {
        self.shared.swaps.load(Ordering::Relaxed)
    }

    /// How many snapshots the control plane has sent this node.
    pub fn snapshots_received(&self) -> u64 {
        self.shared.snapshots.load(Ordering::Relaxed)
    }

    /// Whether the discovery stream is up.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Graceful stop: every listener stops accepting at once, open connections finish the
    /// requests in flight (HTTP/2 clients get a GOAWAY) and close. Returns once they are
    /// all closed, or after `timeout` with the number still open.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let stats: Vec<_> = {
            let mut listeners = self.shared.listeners();
            let stats = listeners.stats();
            listeners.stop_all();
            stats
        };
        let open = || stats.iter().map(|(_, s)| s.active.load(Ordering::Relaxed) as usize).sum::<usize>();
        let deadline = Instant::now() + timeout;
        while open() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = open();
        info!(left, "drained");
        left
    }

    /// Runs until the process is asked to stop.
    pub async fn wait(&mut self) {
        for task in &mut self.tasks {
            let _ = task.await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.shared.listeners().stop_all();
    }
}
