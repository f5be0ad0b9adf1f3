//! Vane's control plane: the only writer of configuration.
//!
//! Data flow: an admin call (`Apply`) is validated with the validator every node also
//! runs, stored by a [`Store`] as a new immutable version (durable before the call
//! returns), then published on a `tokio::sync::watch`. Every node's discovery session
//! watches it and pushes the newest snapshot, one unacknowledged snapshot at a time, never
//! resending a version that node refused (NACKs are kept in the store, so a restart does
//! not forget them). Node status, with the problems nodes report about themselves, is
//! kept in the fleet table and read by `ListNodes`.

mod admin;
mod auth;
mod backup;
mod diff;
mod discovery;
mod fleet;
mod gate;
mod nack_history;
mod purge_log;
mod purges;
mod seal;
mod status;
mod store;

use std::fmt::Write as _;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use vane_proto::admin::config_service_server::ConfigServiceServer;
use vane_proto::config::Config;
use vane_proto::discovery::discovery_service_server::DiscoveryServiceServer;

pub use auth::{AuthError, Role, Tokens, generate_token, hash_token};
pub use backup::{BACKUP_MAGIC, RestoreError, Restored, restore, write_backup_entry, write_backup_header};
pub use store::{MissedPurges, NewVersion, SledStore, Store, StoreError};

/// Largest gRPC message either service sends.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Largest gRPC message either service accepts. A config of 100k routes encodes to 3.1 MB
/// (prefix and one cluster each) or 22.4 MB (hosts, methods, a header, two weighted
/// clusters, timeout and retry each): 64 MiB leaves room for more and bounds what a
/// token holder can make the control plane buffer (callers without a token are refused
/// before any of the body is read; see `gate`).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// How a control plane is set up. [`ControlPlaneConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct ControlPlaneConfig {
    /// Directory of the sled store; created when missing.
    pub data_dir: PathBuf,
    /// How many versions are kept (the oldest are pruned). Default 1000.
    pub retain_versions: usize,
    /// How long a disconnected node stays in `ListNodes`. Default 10 minutes.
    pub node_purge_after: Duration,
    /// Bearer tokens; empty (the default) means no authentication.
    pub tokens: Tokens,
    /// Push coalescing: see [`Debounce`].
    pub debounce: Debounce,
    /// TLS (and, with a client CA, mTLS) on the gRPC port; `None`: plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

impl ControlPlaneConfig {
    /// Defaults for everything but the data dir.
    pub fn new(data_dir: impl Into<PathBuf>) -> ControlPlaneConfig {
        ControlPlaneConfig {
            data_dir: data_dir.into(),
            retain_versions: 1000,
            node_purge_after: Duration::from_secs(600),
            tokens: Tokens::default(),
            debounce: Debounce::default(),
            tls: None,
        }
    }
}

/// How a node's pushes are coalesced: after a write, the session waits until no newer
/// version has appeared for `quiet`, but never longer than `max` after the first unsent
/// write. A burst of writes so costs a node a few swaps, and a single write is pushed
/// after `quiet`. The first snapshot of a new session is sent at once.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    pub quiet: Duration,
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce { quiet: Duration::from_millis(20), max: Duration::from_millis(250) }
    }
}

/// A published version: what every node should run.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) version: u64,
    pub(crate) sha256: String,
    pub(crate) config: Config,
}

/// State shared by the admin service and the discovery sessions.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) published: watch::Sender<Option<Arc<Published>>>,
    /// The newest cache purge's number: sessions send each node the ones it lacks.
    pub(crate) purges: watch::Sender<u64>,
    /// Serialises writers so version checks and commits do not interleave.
    pub(crate) write: tokio::sync::Mutex<()>,
    pub(crate) fleet: fleet::Fleet,
    /// Flips to true when the server stops, ending every discovery session.
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) counter: AtomicU64,
    pub(crate) tokens: Tokens,
    pub(crate) retain_versions: usize,
    pub(crate) node_purge_after: Duration,
    pub(crate) debounce: Debounce,
    pub(crate) stats: Stats,
}

/// Control-plane counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Writes by outcome: stored, unchanged, invalid, stale, dry run.
    pub(crate) writes: [AtomicU64; 5],
    pub(crate) write_duration: vane_proto::prom::Histogram,
    pub(crate) push_to_ack: vane_proto::prom::Histogram,
    pub(crate) snapshots_sent: AtomicU64,
}

/// Index into [`Stats::writes`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum WriteOutcome {
    Stored = 0,
    Unchanged = 1,
    Invalid = 2,
    Stale = 3,
    DryRun = 4,
}

impl Stats {
    pub(crate) fn write(&self, outcome: WriteOutcome, took: Duration) {
        if let Some(c) = self.writes.get(outcome as usize) {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.write_duration.record(took);
    }
}

/// A control plane over one store, ready to serve.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    shared: Arc<Shared>,
    tls: Option<tonic::transport::ServerTlsConfig>,
}

/// Why the control plane could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl ControlPlane {
    /// Opens the sled store in `config.data_dir` and loads its latest version.
    pub async fn open(config: ControlPlaneConfig) -> Result<ControlPlane, StoreError> {
        let dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || SledStore::open(&dir)).await.map_err(|e| {
            // sled can panic on some damaged files; report it as what it is.
            StoreError::Damaged { path: config.data_dir.clone(), reason: panic_text(e) }
        })??;
        ControlPlane::with_store(Arc::new(store), config).await
    }

    /// A control plane over any store (`config.data_dir` is not used).
    pub async fn with_store(store: Arc<dyn Store>, config: ControlPlaneConfig) -> Result<ControlPlane, StoreError> {
        let reader = store.clone();
        let (latest, latest_purge) =
            tokio::task::spawn_blocking(move || Ok::<_, StoreError>((reader.latest()?, reader.latest_purge()?)))
                .await
                .map_err(|e| StoreError::Damaged { path: config.data_dir.clone(), reason: panic_text(e) })??;
        let published = latest.map(|v| {
            Arc::new(Published { version: v.version, sha256: v.sha256, config: v.config.unwrap_or_default() })
        });
        let tls = config.tls.clone();
        Ok(ControlPlane {
            tls,
            shared: Arc::new(Shared {
                store,
                published: watch::Sender::new(published),
                purges: watch::Sender::new(latest_purge),
                write: tokio::sync::Mutex::new(()),
                fleet: fleet::Fleet::default(),
                shutdown: watch::Sender::new(false),
                counter: AtomicU64::new(1),
                tokens: config.tokens,
                retain_versions: config.retain_versions.max(1),
                node_purge_after: config.node_purge_after,
                debounce: config.debounce,
                stats: Stats::default(),
            }),
        })
    }

    /// The latest stored version (0 before the first apply).
    pub fn latest_version(&self) -> u64 {
        self.shared.published.borrow().as_ref().map_or(0, |p| p.version)
    }

    /// Prometheus text: fleet, versions, writes and their latency, push-to-ACK latency,
    /// NACKs by node, problems nodes report, store size.
    pub fn render_metrics(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        use vane_proto::prom::{escape, header, single};
        let shared = &self.shared;
        let mut out = String::with_capacity(2048);
        let nodes = shared.fleet.list();
        let connected = nodes.iter().filter(|n| n.connected).count();
        single(&mut out, "vane_cp_nodes_connected", "gauge", "Nodes with a live discovery stream.", connected);
        single(&mut out, "vane_cp_nodes_known", "gauge", "Nodes listed by ListNodes.", nodes.len());
        single(&mut out, "vane_cp_config_version", "gauge", "Latest stored version.", self.latest_version());
        // What each node serves (held at connect, or acked since): a node that reconnects to
        // a restarted control plane holding the latest version is not behind.
        let behind = nodes.iter().filter(|n| n.connected && n.version_held < self.latest_version()).count();
        single(&mut out, "vane_cp_nodes_behind", "gauge", "Connected nodes not at the latest version.", behind);
        header(&mut out, "vane_cp_writes_total", "counter", "Config writes (apply, put, delete, rollback) by outcome.");
        for (i, outcome) in ["stored", "unchanged", "invalid", "stale", "dry_run"].iter().enumerate() {
            let n = shared.stats.writes.get(i).map_or(0, |c| c.load(Relaxed));
            let _ = writeln!(out, "vane_cp_writes_total{{outcome=\"{outcome}\"}} {n}");
        }
        header(
            &mut out,
            "vane_cp_write_duration_seconds",
            "histogram",
            "Time to validate, store durably and publish a write.",
        );
        shared.stats.write_duration.render(&mut out, "vane_cp_write_duration_seconds", "");
        header(&mut out, "vane_cp_push_to_ack_seconds", "histogram", "Time from sending a snapshot to its ACK.");
        shared.stats.push_to_ack.render(&mut out, "vane_cp_push_to_ack_seconds", "");
        let sent = shared.stats.snapshots_sent.load(Relaxed);
        single(&mut out, "vane_cp_snapshots_sent_total", "counter", "Snapshots pushed to nodes.", sent);
        header(&mut out, "vane_cp_nacks_total", "counter", "Snapshots refused, by node.");
        for (node, n) in shared.fleet.nack_counts() {
            let _ = writeln!(out, "vane_cp_nacks_total{{node=\"{}\"}} {n}", escape(&node));
        }
        header(&mut out, "vane_cp_node_problems", "gauge", "Problems nodes report about themselves, by node and kind.");
        for (node, kind, n) in shared.fleet.problem_counts() {
            let _ = writeln!(out, "vane_cp_node_problems{{node=\"{}\",kind=\"{}\"}} {n}", escape(&node), escape(&kind));
        }
        single(&mut out, "vane_cp_store_bytes", "gauge", "Size of the store on disk.", shared.store.size_on_disk());
        out
    }

    /// Serves the admin and discovery services (plus gRPC health and reflection) on
    /// `listener` until `shutdown` completes; discovery streams are closed then.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<ConfigServiceServer<admin::AdminService>>().await;
        reporter.set_serving::<DiscoveryServiceServer<discovery::DiscoveryServer>>().await;
        // Reflection in both versions: grpcurl and grpc-go speak v1, many client libraries
        // (and older tools) still ask for v1alpha only.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(vane_proto::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let reflection = reflection().build_v1()?;
        let admin = ConfigServiceServer::new(admin::AdminService::new(self.shared.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let discovery = DiscoveryServiceServer::new(discovery::DiscoveryServer::new(self.shared.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let shared = self.shared.clone();
        let shutdown = async move {
            shutdown.await;
            shared.shutdown.send_replace(true);
        };
        let purge = tokio::spawn(purge_nodes(self.shared.clone()));
        let _purge = AbortOnDrop(purge);
        let mut server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)));
        if let Some(tls) = self.tls.clone() {
            server = server.tls_config(tls)?;
        }
        server
            .layer(gate::Gate::new(self.shared.tokens.clone()))
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(admin)
            .add_service(discovery)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await?;
        Ok(())
    }
}

/// Aborts a background task when its owner is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Forgets nodes that stayed disconnected longer than `node_purge_after`.
async fn purge_nodes(shared: Arc<Shared>) {
    let every = (shared.node_purge_after / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        for node in shared.fleet.purge(shared.node_purge_after) {
            tracing::info!(%node, "disconnected node purged");
        }
    }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the store panicked".into()),
        Err(e) => e.to_string(),
    }
}
