//! Vane's control plane: the only writer of configuration.
//!
//! Data flow: an admin call (`Apply`) is validated with the validator every node also
//! runs, stored by a [`Store`] as a new immutable version (durable before the call
//! returns), then published on a `tokio::sync::watch`. Every node's discovery session
//! watches it and pushes the newest snapshot, one unacknowledged snapshot at a time, never
//! resending a version that node refused. Node status is kept in the fleet table and read
//! by `ListNodes`.

mod admin;
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

pub use store::{NewVersion, SledStore, Store, StoreError};

/// Largest gRPC message either service accepts or sends: a config of ~100k routes.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How a control plane is set up.
#[derive(Clone, Debug)]
pub struct ControlPlaneConfig {
    /// Directory of the sled store; created when missing.
    pub data_dir: PathBuf,
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
}

/// A control plane over one store, ready to serve.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    shared: Arc<Shared>,
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
        let store = tokio::task::spawn_blocking(move || SledStore::open(&dir))
            .await
            .map_err(|e| StoreError::Io(sled::Error::Io(std::io::Error::other(e))))??;
        ControlPlane::with_store(Arc::new(store)).await
    }

    /// A control plane over any store.
    pub async fn with_store(store: Arc<dyn Store>) -> Result<ControlPlane, StoreError> {
        let reader = store.clone();
        let latest = tokio::task::spawn_blocking(move || reader.latest())
            .await
            .map_err(|e| StoreError::Io(sled::Error::Io(std::io::Error::other(e))))??;
        let published = latest.map(|v| {
            Arc::new(Published { version: v.version, sha256: v.sha256, config: v.config.unwrap_or_default() })
        });
        Ok(ControlPlane {
            shared: Arc::new(Shared {
                store,
                published: watch::Sender::new(published),
                write: tokio::sync::Mutex::new(()),
                fleet: fleet::Fleet::default(),
                shutdown: watch::Sender::new(false),
                counter: AtomicU64::new(1),
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
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(health)
            .add_service(reflection)
            .add_service(admin)
            .add_service(discovery)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await?;
        Ok(())
    }
}
