//! Vane's data plane: a stateless proxy node driven by the control plane.
//!
//! Data flow: the discovery client receives a `Snapshot`, [`NodeShared::apply_snapshot`]
//! validates it with the shared validator, binds any new listener sockets, compiles a
//! [`runtime::Runtime`] (routers, clusters) off the request path and swaps it in with one
//! `ArcSwap::store`; then new listeners start, removed ones drain, the snapshot is
//! cached on disk, and the node ACKs. Any failure before the swap NACKs and leaves the
//! previous runtime serving. Requests (`proxy`) load the runtime once and keep it.

mod accesslog;
mod actions;
mod admin;
mod admission;
mod balancer;
mod body;
mod cache;
mod cluster;
mod discovery;
mod dns;
mod h1;
mod handoff;
mod health;
mod listeners;
mod metrics;
#[cfg(feature = "otlp")]
mod otel;
mod policy;
mod pool;
mod proxy;
mod router;
mod runtime;
mod server;
mod spare;
mod sticky;
mod tls;
mod trim;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::task::JoinHandle;
use tracing::{info, warn};
use vane_proto::discovery::Snapshot;
use vane_proto::{ConfigError, config_sha256, validate};

pub use cache::CacheError;

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

/// State shared by the discovery client, the listeners and the admin endpoint.
#[derive(Debug)]
pub(crate) struct NodeShared {
    pub(crate) node_id: String,
    pub(crate) runtime: ArcSwapOption<runtime::Runtime>,
    /// Taken by snapshot application and admin reads, never by the request path.
    listeners: Mutex<listeners::Listeners>,
    /// Serving a cached snapshot the control plane has not confirmed.
    pub(crate) stale: AtomicBool,
    pub(crate) connected: AtomicBool,
    pub(crate) metrics: metrics::Metrics,
    /// Snapshots received from the control plane, and those swapped in.
    pub(crate) snapshots: AtomicU64,
    pub(crate) swaps: AtomicU64,
    pub(crate) access_logs: accesslog::Sinks,
    /// When the node started, and when (ms after that) the control plane was last lost.
    pub(crate) started: Instant,
    pub(crate) lost_at_ms: AtomicU64,
    /// Addresses of hostname endpoints, and the snapshot last applied (recompiled when
    /// an address changes).
    dns: Mutex<dns::Resolved>,
    held_snapshot: Mutex<Option<Snapshot>>,
    /// TLS session caches and ticket keys of HTTPS listeners, kept across snapshots.
    tls_sessions: tls::Sessions,
    /// Rate-limit buckets, JWKS keys and auth caches, kept across snapshots.
    policy_state: policy::PolicyState,
    #[cfg(feature = "otlp")]
    pub(crate) tracing: Option<otel::Tracing>,
}

impl NodeShared {
    fn listeners(&self) -> std::sync::MutexGuard<'_, listeners::Listeners> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates, compiles and swaps in a snapshot. On error nothing changed.
    pub(crate) fn apply_snapshot(self: &Arc<Self>, snapshot: &Snapshot) -> Result<(), Vec<ConfigError>> {
        let default = vane_proto::config::Config::default();
        let config = snapshot.config.as_ref().unwrap_or(&default);
        if config_sha256(config) != snapshot.sha256 {
            return Err(vec![ConfigError {
                kind: "snapshot",
                name: snapshot.version.to_string(),
                field: "sha256".into(),
                message: "does not match the config it came with".into(),
            }]);
        }
        validate(config).map_err(|e| e.0)?;
        // Hostname endpoints become their addresses (resolved beforehand by `resolve`).
        let expanded = dns::expand(config, &self.dns.lock().unwrap_or_else(|p| p.into_inner()));
        let compiled_config = expanded.as_ref().unwrap_or(config);
        if let Some(e) = compiled_config
            .clusters
            .iter()
            .flat_map(|c| c.endpoints.iter().map(move |e| (c, e)))
            .find(|(_, e)| e.address.parse::<SocketAddr>().is_err())
        {
            return Err(vec![ConfigError {
                kind: "cluster",
                name: e.0.name.clone(),
                field: "endpoints".into(),
                message: format!("'{}' is not resolved yet", e.1.address),
            }]);
        }
        let mut access_logs = HashMap::new();
        let mut errors = Vec::new();
        for l in &config.listeners {
            let Some(log) = &l.access_log else { continue };
            match self.access_logs.get(log) {
                Ok(sink) => {
                    access_logs.insert(l.name.clone(), sink);
                }
                Err(message) => errors.push(ConfigError {
                    kind: "listener",
                    name: l.name.clone(),
                    field: "access_log.path".into(),
                    message,
                }),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let tls = tls::Material::load(compiled_config, &self.tls_sessions)?;
        let previous = self.runtime.load_full();
        let policies =
            policy::Policies::compile(compiled_config, &self.policy_state, previous.as_deref().map(|rt| &rt.policies))?;
        let mut listeners = self.listeners();
        let prepared = listeners.prepare(&config.listeners)?;
        let runtime = self.metrics.rebuild(|metrics| {
            runtime::Runtime::compile(
                snapshot.version,
                snapshot.sha256.clone(),
                compiled_config,
                &prepared.ids,
                previous.as_deref(),
                metrics,
                &runtime::Loaded { access_logs: &access_logs, tls: &tls, policies: &policies },
            )
        });
        self.runtime.store(Some(Arc::new(runtime)));
        listeners.commit(prepared, self);
        self.swaps.fetch_add(1, Ordering::Relaxed);
        let replaced = self.held_snapshot.lock().unwrap_or_else(|p| p.into_inner()).replace(snapshot.clone());
        info!(version = snapshot.version, "snapshot applied");
        let was_large = replaced
            .as_ref()
            .and_then(|s| s.config.as_ref())
            .is_some_and(|c| resources(c) >= trim::TRIM_FROM_RESOURCES);
        if let (true, Some(previous)) = (was_large, &previous) {
            trim::when_dropped(Arc::downgrade(previous));
        }
        Ok(())
    }

    /// Resolves the snapshot's hostname endpoints into the DNS cache; a name that does not
    /// resolve is an error (the snapshot is NACKed).
    pub(crate) async fn resolve(&self, snapshot: &Snapshot) -> Result<(), Vec<ConfigError>> {
        let Some(config) = &snapshot.config else { return Ok(()) };
        let (names, _) = dns::hostnames(config);
        if names.is_empty() {
            return Ok(());
        }
        let resolved = dns::resolve(config, &names).await?;
        self.dns.lock().unwrap_or_else(|p| p.into_inner()).extend(resolved);
        Ok(())
    }

    /// Re-resolves the held snapshot's hostnames now and then; recompiles on a change.
    async fn refresh_dns(self: Arc<Self>) {
        loop {
            let held = self.held_snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let (names, rate) = held.as_ref().and_then(|s| s.config.as_ref()).map(dns::hostnames).unwrap_or_default();
            tokio::time::sleep(rate.unwrap_or(Duration::from_secs(30))).await;
            let (Some(snapshot), false) = (held, names.is_empty()) else { continue };
            let Some(config) = &snapshot.config else { continue };
            let Ok(resolved) = dns::resolve(config, &names).await else {
                // Keep the last good answers; the endpoints stay as they were.
                warn!("dns refresh failed; keeping the previous addresses");
                continue;
            };
            let changed = {
                let mut cache = self.dns.lock().unwrap_or_else(|p| p.into_inner());
                let changed = resolved.iter().any(|(k, v)| cache.get(k) != Some(v));
                cache.extend(resolved);
                changed
            };
            if changed {
                match self.apply_snapshot(&snapshot) {
                    Ok(()) => info!(version = snapshot.version, "recompiled after a dns change"),
                    Err(errors) => warn!(?errors, "recompile after a dns change failed"),
                }
            }
        }
    }

    /// `(version, sha256)` of the runtime held, `(0, "")` for none.
    pub(crate) fn held(&self) -> (u64, String) {
        self.runtime.load().as_ref().map_or((0, String::new()), |r| (r.version, r.sha256.clone()))
    }
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
            Some(endpoint) => Some(otel::Tracing::start(endpoint, &config.node_id).map_err(NodeError::Otlp)?),
            None => None,
        };
        #[cfg(not(feature = "otlp"))]
        if config.otlp_endpoint.is_some() {
            return Err(NodeError::Otlp("this build has no OTLP export (cargo feature `otlp`)".into()));
        }
        let shared = Arc::new(NodeShared {
            node_id: config.node_id.clone(),
            runtime: ArcSwapOption::empty(),
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
            #[cfg(feature = "otlp")]
            tracing,
        });
        if let Some(dir) = &config.cache_dir {
            match cache::read(dir) {
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

/// A protobuf duration as a std one, `default` when unset or out of range.
pub(crate) fn duration_or(d: Option<&pbjson_types::Duration>, default: Duration) -> Duration {
    d.and_then(|d| {
        let secs = u64::try_from(d.seconds).ok()?;
        let nanos = u32::try_from(d.nanos).ok()?;
        Some(Duration::new(secs, nanos))
    })
    .filter(|d| !d.is_zero())
    .unwrap_or(default)
}

/// Internals exposed for the criterion benches (`benches/hot_path.rs`) only: not an API.
#[doc(hidden)]
/// How many resources a config holds (what its compiled runtime's size follows).
fn resources(config: &vane_proto::config::Config) -> usize {
    config.listeners.len()
        + config.routes.len()
        + config.clusters.len()
        + config.clusters.iter().map(|c| c.endpoints.len()).sum::<usize>()
        + config.policies.len()
        + config.consumers.len()
        + config.certificates.len()
}

pub mod bench {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use crate::cluster::{Cluster, ClusterRegistry};
    use crate::metrics::Metrics;
    use crate::router::Router;
    use crate::runtime::Runtime;

    /// A compiled runtime with one listener (slot 1).
    #[derive(Debug)]
    pub struct CompiledRoutes {
        runtime: Runtime,
    }

    impl CompiledRoutes {
        /// Compiles `config` (listeners by name get slots 1, 2, ...).
        pub fn compile(config: &vane_proto::config::Config) -> CompiledRoutes {
            let slots: HashMap<String, u64> =
                config.listeners.iter().enumerate().map(|(i, l)| (l.name.clone(), i as u64 + 1)).collect();
            let metrics = Metrics::default();
            let runtime = metrics.rebuild(|m| {
                Runtime::compile(
                    1,
                    String::new(),
                    config,
                    &slots,
                    None,
                    m,
                    &crate::runtime::Loaded {
                        access_logs: &HashMap::new(),
                        tls: &Default::default(),
                        policies: &Default::default(),
                    },
                )
            });
            CompiledRoutes { runtime }
        }

        fn router(&self) -> Option<&Router> {
            self.runtime.listeners.get(&1)
        }

        /// The name of the route a request takes on the first listener.
        pub fn find<B>(&self, req: &http::Request<B>) -> Option<&str> {
            self.router()?.find(req).map(|f| &*f.entry.route.name)
        }
    }

    /// The policies of a config, and the chain of the named ones.
    #[derive(Debug)]
    pub struct CompiledPolicies {
        chain: crate::policy::Chain,
        _state: crate::policy::PolicyState,
    }

    impl CompiledPolicies {
        /// Compiles `config`'s policies; the chain runs `names` in order.
        pub fn compile(config: &vane_proto::config::Config, names: &[String]) -> Option<CompiledPolicies> {
            let state = crate::policy::PolicyState::default();
            let policies = crate::policy::Policies::compile(config, &state, None).ok()?;
            Some(CompiledPolicies { chain: policies.chain(names, &[]), _state: state })
        }

        /// Runs the request side of the chain; true when the request passes.
        pub async fn check(&self, req: &mut http::Request<()>, client: std::net::IpAddr) -> bool {
            let mut with_body = std::mem::take(req).map(|()| http_body_util::Either::Right(Default::default()));
            let ctx = crate::policy::Ctx { client_ip: client, route: "bench" };
            let passed = self.chain.run(&mut with_body, &ctx).await.is_ok();
            *req = with_body.map(|_| ());
            passed
        }
    }

    /// Parses a request head as the inline HTTP/1.1 server does (into a fresh buffer); the
    /// number of its headers, or `None` when it is not served inline.
    pub fn parse_request_head(head: &[u8]) -> Option<usize> {
        crate::server::bench_parse(head)
    }

    /// Encodes a response as the inline HTTP/1.1 server writes it, into `wire` (`out` is
    /// the connection's reusable head buffer); true when the connection stays open.
    pub fn write_response(
        response: http::Response<http_body_util::Full<bytes::Bytes>>,
        wire: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> bool {
        crate::server::bench_write(response, wire, out)
    }

    /// A compiled cluster, for endpoint picks and request rewrites.
    #[derive(Debug)]
    pub struct CompiledCluster(Arc<Cluster>);

    impl CompiledCluster {
        pub fn new(spec: &vane_proto::config::Cluster) -> CompiledCluster {
            CompiledCluster(ClusterRegistry::new(&HashMap::new()).build(spec, Default::default(), None))
        }

        /// The port of the next endpoint.
        pub fn pick(&self) -> Option<u16> {
            self.0.pick(None).and_then(|(_, e)| e.authority.port_u16())
        }

        /// Rewrites a downstream request as the proxy does before sending it upstream.
        pub fn rewrite<B>(&self, req: http::Request<B>, peer: &Peer) -> Option<http::Request<B>> {
            crate::proxy::upstream_request(req, &self.0, (peer.0, &peer.1), Default::default()).map(|(r, _, _, _)| r)
        }
    }

    /// A downstream peer as a connection holds it: the address rendered once.
    #[derive(Debug)]
    pub struct Peer(SocketAddr, http::HeaderValue);

    impl Peer {
        pub fn new(addr: SocketAddr) -> Peer {
            Peer(addr, crate::proxy::ip_value(addr))
        }
    }
}
