//! The admin API (`vane.admin.v1.ConfigService`): what the CLI and automation call.
//!
//! Writes are serialised by one async mutex: validate, compare with the latest version,
//! commit durably, then publish to the discovery sessions. Reads come from the published
//! version (no store access) unless an older version is asked for.

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};
use tracing::info;
use vane_proto::admin::{
    ApplyRequest, ApplyResponse, GetRequest, GetResponse, HistoryEntry, HistoryRequest, HistoryResponse, Kind,
    ListNodesRequest, ListNodesResponse, ListRequest, ListResponse, ValidateRequest, ValidateResponse,
    config_service_server::ConfigService,
};
use vane_proto::config::Config;
use vane_proto::{ValidationErrors, config_sha256, validate};

use crate::store::{NewVersion, StoreError};
use crate::{Published, Shared, diff};

/// Failures of admin calls, each mapped to its gRPC code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error("invalid config: {0}")]
    Invalid(ValidationErrors),
    #[error("expected version {expected} but the latest is {latest}")]
    Stale { expected: u64, latest: u64 },
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },
    #[error("version {0} not found")]
    NoVersion(u64),
    #[error("{0}")]
    BadRequest(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        let message = e.to_string();
        match e {
            AdminError::Invalid(errors) => {
                let details = ValidateResponse { valid: false, errors: errors.to_proto() }.encode_to_vec();
                Status::with_details(tonic::Code::InvalidArgument, message, details.into())
            }
            AdminError::Stale { .. } => Status::failed_precondition(message),
            AdminError::NotFound { .. } | AdminError::NoVersion(_) => Status::not_found(message),
            AdminError::BadRequest(_) => Status::invalid_argument(message),
            AdminError::Store(_) | AdminError::Internal(_) => Status::internal(message),
        }
    }
}

#[derive(Debug)]
pub(crate) struct AdminService {
    shared: Arc<Shared>,
}

impl AdminService {
    pub(crate) fn new(shared: Arc<Shared>) -> AdminService {
        AdminService { shared }
    }

    fn latest(&self) -> Option<Arc<Published>> {
        self.shared.published.borrow().clone()
    }

    async fn apply(&self, req: ApplyRequest) -> Result<ApplyResponse, AdminError> {
        let config = req.config.unwrap_or_default();
        validate(&config).map_err(AdminError::Invalid)?;
        let _writer = self.shared.write.lock().await;
        let latest = self.latest();
        let latest_version = latest.as_ref().map_or(0, |p| p.version);
        if req.expected_version != 0 && req.expected_version != latest_version {
            return Err(AdminError::Stale { expected: req.expected_version, latest: latest_version });
        }
        let empty = Config::default();
        let old = latest.as_ref().map_or(&empty, |p| &p.config);
        let summary = diff::summary(&diff::changes(old, &config));
        let sha256 = config_sha256(&config);
        if latest.as_ref().is_some_and(|p| p.sha256 == sha256) {
            return Ok(ApplyResponse { version: latest_version, unchanged: true, summary });
        }
        if req.dry_run {
            return Ok(ApplyResponse { version: 0, unchanged: false, summary });
        }
        let new = NewVersion {
            config,
            author: "anonymous".into(),
            summary: summary.clone(),
            sha256,
            created_at_unix_ms: vane_proto::unix_ms_now(),
        };
        let store = self.shared.store.clone();
        let record = tokio::task::spawn_blocking(move || store.commit(new))
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))??;
        let version = record.version;
        info!(version, %summary, "version stored");
        self.shared.published.send_replace(Some(Arc::new(Published {
            version,
            sha256: record.sha256,
            config: record.config.unwrap_or_default(),
        })));
        Ok(ApplyResponse { version, unchanged: false, summary })
    }

    async fn config_at(&self, version: u64) -> Result<(u64, Config), AdminError> {
        let latest = self.latest();
        match latest {
            Some(p) if version == 0 || version == p.version => Ok((p.version, p.config.clone())),
            None if version == 0 => Ok((0, Config::default())),
            _ => {
                let store = self.shared.store.clone();
                let record = tokio::task::spawn_blocking(move || store.get(version))
                    .await
                    .map_err(|e| AdminError::Internal(e.to_string()))??;
                let record = record.ok_or(AdminError::NoVersion(version))?;
                Ok((record.version, record.config.unwrap_or_default()))
            }
        }
    }
}

/// Keeps only the resources of `kind` (all for `KIND_UNSPECIFIED`), and only the one
/// named `name` when given.
fn select(config: Config, kind: Kind, name: Option<&str>) -> Config {
    let keep = |k: Kind| kind == Kind::Unspecified || kind == k;
    let named = |n: &String| name.is_none_or(|want| want == n);
    Config {
        listeners: if keep(Kind::Listener) {
            config.listeners.into_iter().filter(|r| named(&r.name)).collect()
        } else {
            vec![]
        },
        routes: if keep(Kind::Route) { config.routes.into_iter().filter(|r| named(&r.name)).collect() } else { vec![] },
        clusters: if keep(Kind::Cluster) {
            config.clusters.into_iter().filter(|r| named(&r.name)).collect()
        } else {
            vec![]
        },
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Unspecified => "resource",
        Kind::Listener => "listener",
        Kind::Route => "route",
        Kind::Cluster => "cluster",
    }
}

#[tonic::async_trait]
impl ConfigService for AdminService {
    async fn apply(&self, request: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        Ok(Response::new(AdminService::apply(self, request.into_inner()).await?))
    }

    async fn validate(&self, request: Request<ValidateRequest>) -> Result<Response<ValidateResponse>, Status> {
        let config = request.into_inner().config.unwrap_or_default();
        let response = match validate(&config) {
            Ok(()) => ValidateResponse { valid: true, errors: vec![] },
            Err(errors) => ValidateResponse { valid: false, errors: errors.to_proto() },
        };
        Ok(Response::new(response))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let req = request.into_inner();
        let kind = Kind::try_from(req.kind).unwrap_or(Kind::Unspecified);
        if kind == Kind::Unspecified || req.name.is_empty() {
            return Err(AdminError::BadRequest("get needs a kind and a name").into());
        }
        let (version, config) = self.config_at(0).await?;
        let config = select(config, kind, Some(&req.name));
        if config == Config::default() {
            return Err(AdminError::NotFound { kind: kind_name(kind), name: req.name }.into());
        }
        Ok(Response::new(GetResponse { version, config: Some(config) }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let req = request.into_inner();
        let kind = Kind::try_from(req.kind).unwrap_or(Kind::Unspecified);
        let (version, config) = self.config_at(req.version).await?;
        Ok(Response::new(ListResponse { version, config: Some(select(config, kind, None)) }))
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Result<Response<HistoryResponse>, Status> {
        let limit = request.into_inner().limit as usize;
        let store = self.shared.store.clone();
        let records = tokio::task::spawn_blocking(move || store.history(limit))
            .await
            .map_err(|e| AdminError::Internal(e.to_string()))?
            .map_err(AdminError::from)?;
        let entries = records
            .into_iter()
            .map(|r| HistoryEntry {
                version: r.version,
                created_at: Some(vane_proto::timestamp_from_unix_ms(r.created_at_unix_ms)),
                author: r.author,
                summary: r.summary,
                sha256: r.sha256,
            })
            .collect();
        Ok(Response::new(HistoryResponse { entries }))
    }

    async fn list_nodes(&self, _request: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        Ok(Response::new(ListNodesResponse { nodes: self.shared.fleet.list() }))
    }
}
