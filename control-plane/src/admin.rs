//! The admin API (`vane.admin.v1.ConfigService`): what the CLI and automation call.
//!
//! Every write (`Apply`, `Put`, `Delete`, `Rollback`, `SetEndpointDrain`) takes one path, [`AdminService::change`]:
//! under one async mutex it checks `expected_version`, derives the new config from the
//! latest, validates it with the validator every node runs, skips unchanged content,
//! commits durably (the version is on disk before the call returns), prunes old versions,
//! and publishes to the discovery sessions. Reads come from the published version unless
//! an older one is asked for. Every call is authorised first (see `auth`).

use std::sync::Arc;

use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::{info, warn};
use vane_proto::admin::{
    ApplyRequest, ApplyResponse, BackupRequest, DeleteRequest, DiffRequest, DiffResponse, GetRequest, GetResponse,
    HistoryEntry, HistoryRequest, HistoryResponse, Kind, ListNodesRequest, ListNodesResponse, ListRequest,
    ListResponse, PurgeCacheRequest, PurgeCacheResponse, PutRequest, Resource, RollbackRequest,
    SetEndpointDrainRequest, ValidateRequest, ValidateResponse, config_service_server::ConfigService, resource,
};
use vane_proto::config::Config;
use vane_proto::{ValidationErrors, config_sha256, validate};

use crate::auth::Role;
use crate::diff::{self, kind_name};
use crate::purges;
use crate::status;
use crate::store::{NewVersion, StoreError};
use crate::{Published, Shared, WriteOutcome};

/// Failures of admin calls, each mapped to its gRPC code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    /// `paths`: the field paths of the first errors (see `status::field_paths`).
    #[error("invalid config: {errors}")]
    Invalid { errors: ValidationErrors, paths: Vec<String> },
    #[error(
        "the config is empty: applying it would remove every resource and every node would close its listeners; \
         set allow_empty (vane apply --allow-empty) to do that on purpose"
    )]
    Empty,
    #[error("{kind} '{name}' is in use by {users}")]
    InUse { kind: &'static str, name: String, users: String },
    #[error("expected version {expected} but the latest is {latest}")]
    Stale { expected: u64, latest: u64 },
    #[error("{kind} '{name}' not found")]
    NotFound { kind: &'static str, name: String },
    #[error("version {0} not found (never applied, or pruned by retention)")]
    NoVersion(u64),
    #[error("{0}")]
    BadRequest(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

/// Every message is escaped and bounded, and a refused config carries a standard
/// `google.rpc.Status` in its details (see `status`).
impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        let code = match &e {
            AdminError::Invalid { errors, paths } => return status::invalid_config(&errors.0, paths),
            AdminError::Empty => {
                let details = ErrorDetails::with_bad_request_violation("config", e.to_string());
                return Status::with_error_details(
                    Code::InvalidArgument,
                    status::bounded_message(&e.to_string()),
                    details,
                );
            }
            AdminError::BadRequest(_) => Code::InvalidArgument,
            AdminError::Stale { .. } | AdminError::InUse { .. } => Code::FailedPrecondition,
            AdminError::NotFound { .. } | AdminError::NoVersion(_) => Code::NotFound,
            AdminError::Store(_) | AdminError::Internal(_) => Code::Internal,
        };
        status::bounded(code, &e.to_string())
    }
}

impl AdminError {
    /// A refused config; `prefix` is the request field that carries `config` (see
    /// `status::field_paths`).
    fn invalid(errors: ValidationErrors, config: &Config, prefix: &str) -> AdminError {
        let paths = status::field_paths(&errors.0, config, prefix);
        AdminError::Invalid { errors, paths }
    }
}

/// How a write derives its config from the latest one.
type Derive<'a> = Box<dyn FnOnce(&Config) -> Result<Config, AdminError> + Send + 'a>;

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

    fn authorize<T>(&self, request: &Request<T>, need: Role) -> Result<String, Status> {
        let result = self.shared.tokens.authorize(request, need);
        if let Err(status) = &result {
            warn!(code = ?status.code(), reason = status.message(), "admin call refused");
        }
        result
    }

    /// The one write path; see the module docs. Counts outcomes and latency.
    async fn change(
        &self,
        author: String,
        expected_version: u64,
        dry_run: bool,
        label: Option<String>,
        derive: Derive<'_>,
    ) -> Result<ApplyResponse, AdminError> {
        let started = std::time::Instant::now();
        let result = self.write(author, expected_version, dry_run, label, derive).await;
        let outcome = match &result {
            Ok(r) if r.unchanged => WriteOutcome::Unchanged,
            Ok(_) if dry_run => WriteOutcome::DryRun,
            Ok(_) => WriteOutcome::Stored,
            Err(AdminError::Stale { .. }) => WriteOutcome::Stale,
            Err(_) => WriteOutcome::Invalid,
        };
        self.shared.stats.write(outcome, started.elapsed());
        result
    }

    /// The write itself, under the writer lock.
    async fn write(
        &self,
        author: String,
        expected_version: u64,
        dry_run: bool,
        label: Option<String>,
        derive: Derive<'_>,
    ) -> Result<ApplyResponse, AdminError> {
        let _writer = self.shared.write.lock().await;
        let latest = self.latest();
        let latest_version = latest.as_ref().map_or(0, |p| p.version);
        if expected_version != 0 && expected_version != latest_version {
            return Err(AdminError::Stale { expected: expected_version, latest: latest_version });
        }
        let empty = Config::default();
        let old = latest.as_ref().map_or(&empty, |p| &p.config);
        let mut config = derive(old)?;
        restore_keys(&mut config, old)?;
        // Consumers' API keys are stored (and shown) as SHA-256 only.
        vane_proto::hash_api_keys(&mut config);
        validate(&config).map_err(|errors| AdminError::invalid(errors, &config, ""))?;
        let mut summary = diff::summary(&diff::changes(old, &config));
        if let Some(label) = label {
            summary = format!("{label}: {summary}");
        }
        let sha256 = config_sha256(&config);
        if latest.as_ref().is_some_and(|p| p.sha256 == sha256) {
            return Ok(ApplyResponse { version: latest_version, unchanged: true, summary });
        }
        if dry_run {
            return Ok(ApplyResponse { version: 0, unchanged: false, summary });
        }
        let new = NewVersion {
            config,
            author: author.clone(),
            summary: summary.clone(),
            sha256,
            created_at_unix_ms: vane_proto::unix_ms_now(),
        };
        let store = self.shared.store.clone();
        let retain = self.shared.retain_versions;
        let record = tokio::task::spawn_blocking(move || {
            let record = store.commit(new)?;
            // Retention is best effort: the version is already durable.
            if let Err(error) = store.prune(retain) {
                warn!(%error, "pruning old versions failed");
            }
            Ok::<_, StoreError>(record)
        })
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))??;
        let version = record.version;
        info!(version, %author, %summary, "version stored");
        self.shared.published.send_replace(Some(Arc::new(Published {
            version,
            sha256: record.sha256,
            config: record.config.unwrap_or_default(),
        })));
        Ok(ApplyResponse { version, unchanged: false, summary })
    }

    async fn config_at(&self, version: u64) -> Result<(u64, Config), AdminError> {
        match self.latest() {
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
    fn pick<T>(items: Vec<T>, of: Kind, kind: Kind, name: Option<&str>, name_of: impl Fn(&T) -> &str) -> Vec<T> {
        if kind != Kind::Unspecified && kind != of {
            return vec![];
        }
        items.into_iter().filter(|r| name.is_none_or(|want| want == name_of(r))).collect()
    }
    Config {
        listeners: pick(config.listeners, Kind::Listener, kind, name, |r| &r.name),
        routes: pick(config.routes, Kind::Route, kind, name, |r| &r.name),
        clusters: pick(config.clusters, Kind::Cluster, kind, name, |r| &r.name),
        certificates: pick(config.certificates, Kind::Certificate, kind, name, |r| &r.name),
        policies: pick(config.policies, Kind::Policy, kind, name, |r| &r.name),
        consumers: pick(config.consumers, Kind::Consumer, kind, name, |r| &r.name),
        caches: pick(config.caches, Kind::Cache, kind, name, |r| &r.name),
        compressions: pick(config.compressions, Kind::Compression, kind, name, |r| &r.name),
    }
}

/// A config as admin clients see it: inline private keys replaced by placeholders.
fn redacted(mut config: Config) -> Config {
    vane_proto::tls::redact(&mut config);
    config
}

/// Puts back the stored private keys that placeholders in `config` stand for.
fn restore_keys(config: &mut Config, stored: &Config) -> Result<(), AdminError> {
    vane_proto::tls::restore_redacted(config, stored).map_err(|missing| {
        let errors = missing
            .into_iter()
            .map(|(name, message)| vane_proto::ConfigError {
                kind: "certificate",
                name,
                field: "private_key".into(),
                message,
            })
            .collect::<Vec<_>>();
        AdminError::invalid(vane_proto::ValidationErrors(errors), config, "")
    })
}

/// The resources that refer to the `kind` named `name`, from the errors of a config it
/// was removed from (each reference check says `unknown KIND 'NAME'`), grouped by kind:
/// `routes a, b, c and 2997 more; listener web`. Empty when none refers to it.
fn users(errors: &ValidationErrors, kind: &str, name: &str) -> String {
    let dangling = format!("unknown {kind} '{name}'");
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for e in errors.0.iter().filter(|e| e.message == dangling) {
        match groups.iter_mut().find(|(k, _)| *k == e.kind) {
            Some((_, names)) if names.last() == Some(&e.name.as_str()) => {}
            Some((_, names)) => names.push(&e.name),
            None => groups.push((e.kind, vec![&e.name])),
        }
    }
    let shown = |(kind, mut names): (&str, Vec<&str>)| {
        names.dedup();
        let plural = match (names.len(), kind) {
            (1, _) => kind.to_owned(),
            (_, "policy") => "policies".to_owned(),
            _ => format!("{kind}s"),
        };
        let mut text = format!("{plural} {}", names.iter().take(3).copied().collect::<Vec<_>>().join(", "));
        if names.len() > 3 {
            text.push_str(&format!(" and {} more", names.len() - 3));
        }
        text
    };
    groups.into_iter().map(shown).collect::<Vec<_>>().join("; ")
}

/// Replaces the resource of the same name, or appends it.
fn upsert<T>(items: &mut Vec<T>, item: T, name: impl Fn(&T) -> &str) {
    match items.iter_mut().find(|i| name(i) == name(&item)) {
        Some(slot) => *slot = item,
        None => items.push(item),
    }
}

/// Removes the named resource; false when there was none.
fn remove<T>(items: &mut Vec<T>, name: &str, get: impl Fn(&T) -> &str) -> bool {
    let before = items.len();
    items.retain(|i| get(i) != name);
    items.len() != before
}

#[tonic::async_trait]
impl ConfigService for AdminService {
    async fn apply(&self, request: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let author = self.authorize(&request, Role::Write)?;
        let req = request.into_inner();
        let mut config = req.config.unwrap_or_default();
        // An empty or comment-only file would close every node's listeners: only on purpose.
        if config == Config::default() && !req.allow_empty {
            self.shared.stats.write(WriteOutcome::Invalid, std::time::Duration::ZERO);
            return Err(AdminError::Empty.into());
        }
        // Refuse before queueing behind other writers.
        if let Some(latest) = self.latest() {
            restore_keys(&mut config, &latest.config)?;
        }
        if let Err(errors) = validate(&config) {
            self.shared.stats.write(WriteOutcome::Invalid, std::time::Duration::ZERO);
            return Err(AdminError::invalid(errors, &config, "config").into());
        }
        let response =
            self.change(author, req.expected_version, req.dry_run, None, Box::new(move |_| Ok(config))).await?;
        Ok(Response::new(response))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<ApplyResponse>, Status> {
        let author = self.authorize(&request, Role::Write)?;
        let req = request.into_inner();
        let Some(Resource { resource: Some(resource) }) = req.resource else {
            return Err(AdminError::BadRequest("put needs one resource").into());
        };
        let derive: Derive<'_> = Box::new(move |old| {
            let mut config = old.clone();
            match resource {
                resource::Resource::Listener(l) => upsert(&mut config.listeners, l, |l| &l.name),
                resource::Resource::Route(r) => upsert(&mut config.routes, r, |r| &r.name),
                resource::Resource::Cluster(c) => upsert(&mut config.clusters, c, |c| &c.name),
                resource::Resource::Certificate(c) => upsert(&mut config.certificates, c, |c| &c.name),
                resource::Resource::Policy(p) => upsert(&mut config.policies, p, |p| &p.name),
                resource::Resource::Consumer(c) => upsert(&mut config.consumers, c, |c| &c.name),
                resource::Resource::Cache(c) => upsert(&mut config.caches, c, |c| &c.name),
                resource::Resource::Compression(c) => upsert(&mut config.compressions, c, |c| &c.name),
            }
            Ok(config)
        });
        Ok(Response::new(self.change(author, req.expected_version, req.dry_run, None, derive).await?))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<ApplyResponse>, Status> {
        let author = self.authorize(&request, Role::Write)?;
        let req = request.into_inner();
        let kind = Kind::try_from(req.kind).unwrap_or(Kind::Unspecified);
        if kind == Kind::Unspecified || req.name.is_empty() {
            return Err(AdminError::BadRequest("delete needs a kind and a name").into());
        }
        let name = req.name;
        let derive: Derive<'_> = Box::new(move |old| {
            let mut config = old.clone();
            let found = match kind {
                Kind::Listener => remove(&mut config.listeners, &name, |l| &l.name),
                Kind::Route => remove(&mut config.routes, &name, |r| &r.name),
                Kind::Cluster => remove(&mut config.clusters, &name, |c| &c.name),
                Kind::Certificate => remove(&mut config.certificates, &name, |c| &c.name),
                Kind::Policy => remove(&mut config.policies, &name, |p| &p.name),
                Kind::Consumer => remove(&mut config.consumers, &name, |c| &c.name),
                Kind::Cache => remove(&mut config.caches, &name, |c| &c.name),
                Kind::Compression => remove(&mut config.compressions, &name, |c| &c.name),
                Kind::Unspecified => false,
            };
            if !found {
                return Err(AdminError::NotFound { kind: kind_name(kind), name });
            }
            // Refused while something refers to it: say what, rather than every dangling
            // reference as an unknown name.
            if let Err(errors) = validate(&config) {
                let users = users(&errors, kind_name(kind), &name);
                if !users.is_empty() {
                    return Err(AdminError::InUse { kind: kind_name(kind), name, users });
                }
            }
            Ok(config)
        });
        Ok(Response::new(self.change(author, req.expected_version, req.dry_run, None, derive).await?))
    }

    async fn rollback(&self, request: Request<RollbackRequest>) -> Result<Response<ApplyResponse>, Status> {
        let author = self.authorize(&request, Role::Write)?;
        let req = request.into_inner();
        if req.version == 0 {
            return Err(AdminError::BadRequest("rollback needs a version").into());
        }
        // Versions are immutable: reading the target outside the writer lock is safe.
        let (version, target) = self.config_at(req.version).await?;
        let label = Some(format!("rollback to {version}"));
        let response =
            self.change(author, req.expected_version, req.dry_run, label, Box::new(move |_| Ok(target))).await?;
        Ok(Response::new(response))
    }

    async fn purge_cache(&self, request: Request<PurgeCacheRequest>) -> Result<Response<PurgeCacheResponse>, Status> {
        self.authorize(&request, Role::Write)?;
        Ok(Response::new(purges::purge(&self.shared, request.into_inner()).await?))
    }

    async fn set_endpoint_drain(
        &self,
        request: Request<SetEndpointDrainRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        let author = self.authorize(&request, Role::Write)?;
        let req = request.into_inner();
        if req.cluster.is_empty() || req.address.is_empty() {
            return Err(AdminError::BadRequest("set endpoint drain needs a cluster and an address").into());
        }
        let target = format!("{}/{}", req.cluster, req.address);
        let label = Some(format!("{} {target}", if req.drain { "drain" } else { "undrain" }));
        // Read, modify and write under the writer lock (inside `change`): a drain never
        // undoes a change that landed between a client's read and its write.
        let derive: Derive<'_> = Box::new(move |old| {
            let mut config = old.clone();
            let cluster = config
                .clusters
                .iter_mut()
                .find(|c| c.name == req.cluster)
                .ok_or_else(|| AdminError::NotFound { kind: "cluster", name: req.cluster.clone() })?;
            let endpoint = cluster
                .endpoints
                .iter_mut()
                .find(|e| e.address == req.address)
                .ok_or(AdminError::NotFound { kind: "endpoint", name: target })?;
            endpoint.drain = req.drain;
            Ok(config)
        });
        Ok(Response::new(self.change(author, req.expected_version, req.dry_run, label, derive).await?))
    }

    async fn validate(&self, request: Request<ValidateRequest>) -> Result<Response<ValidateResponse>, Status> {
        self.authorize(&request, Role::Read)?;
        let mut config = request.into_inner().config.unwrap_or_default();
        if let Some(latest) = self.latest() {
            restore_keys(&mut config, &latest.config)?;
        }
        let response = match validate(&config) {
            Ok(()) => ValidateResponse { valid: true, errors: vec![], more_errors: 0 },
            Err(errors) => ValidateResponse { valid: false, errors: errors.to_proto(), more_errors: 0 },
        };
        Ok(Response::new(response))
    }

    async fn diff(&self, request: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        self.authorize(&request, Role::Read)?;
        let mut config = request.into_inner().config.unwrap_or_default();
        let (base_version, old) = self.config_at(0).await?;
        restore_keys(&mut config, &old)?;
        vane_proto::hash_api_keys(&mut config);
        // As Apply validates (after the same two steps), so a diff never looks like a plan
        // that Apply would then refuse.
        let errors = validate(&config).err().map(|e| e.to_proto()).unwrap_or_default();
        let changes = diff::changes(&redacted(old), &redacted(config));
        let summary = diff::summary(&changes);
        Ok(Response::new(DiffResponse { base_version, changes, summary, errors }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.authorize(&request, Role::Read)?;
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
        Ok(Response::new(GetResponse { version, config: Some(redacted(config)) }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        self.authorize(&request, Role::Read)?;
        let req = request.into_inner();
        let kind = Kind::try_from(req.kind).unwrap_or(Kind::Unspecified);
        let (version, config) = self.config_at(req.version).await?;
        Ok(Response::new(ListResponse { version, config: Some(redacted(select(config, kind, None))) }))
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Result<Response<HistoryResponse>, Status> {
        self.authorize(&request, Role::Read)?;
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

    async fn list_nodes(&self, request: Request<ListNodesRequest>) -> Result<Response<ListNodesResponse>, Status> {
        self.authorize(&request, Role::Read)?;
        Ok(Response::new(ListNodesResponse { nodes: self.shared.fleet.list() }))
    }

    type BackupStream = tokio_stream::wrappers::ReceiverStream<Result<vane_proto::store::BackupEntry, Status>>;

    async fn backup(&self, request: Request<BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        // Configs carry private keys: a backup needs the right to write them.
        self.authorize(&request, Role::Write)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || crate::backup::produce(&store, &tx));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
