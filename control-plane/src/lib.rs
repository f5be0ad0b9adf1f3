//! Vane's control plane: the only writer of configuration.
//!
//! Data flow: an admin call (`Apply`) is validated with the validator every node also
//! runs, stored by a [`Store`] as a new immutable version (durable before the call
//! returns), then published on a `tokio::sync::watch`. Every node's discovery session
//! watches it and pushes the newest snapshot, one unacknowledged snapshot at a time, never
//! resending a version that node refused. Node status is kept in the fleet table and read
//! by `ListNodes`.

mod admin;
mod auth;
mod diff;
mod discovery;
mod fleet;
mod store;

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
pub use store::{NewVersion, SledStore, Store, StoreError};

/// Largest gRPC message either service accepts or sends: a config of ~100k routes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

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
        let latest = tokio::task::spawn_blocking(move || reader.latest())
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
                write: tokio::sync::Mutex::new(()),
                fleet: fleet::Fleet::default(),
                shutdown: watch::Sender::new(false),
                counter: AtomicU64::new(1),
                tokens: config.tokens,
                retain_versions: config.retain_versions.max(1),
                node_purge_after: config.node_purge_after,
                debounce: config.debounce,
            }),
        })
    }

    /// The latest stored version (0 before the first apply).
    pub fn latest_version(&self) -> u64 {
        self.shared.published.borrow().as_ref().map_or(0, |p| p.version)
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
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vane_proto::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let admin = ConfigServiceServer::new(admin::AdminService::new(self.shared.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let discovery = DiscoveryServiceServer::new(discovery::DiscoveryServer::new(self.shared.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
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
            .add_service(health)
            .add_service(reflection)
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
