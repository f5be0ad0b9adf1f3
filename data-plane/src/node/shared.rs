//! The node's state behind every task: the runtime serving, listeners, caches kept
//! across snapshots, counters, problems; and [`NodeShared::apply_snapshot`], the one place
//! a snapshot becomes the runtime. [`NodeShared::reapply`] compiles the held snapshot
//! again when what it names outside itself changed (a DNS answer, a certificate file);
//! both take one lock, so a recompile never swaps an older snapshot over a newer one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};
use vane_proto::discovery::Snapshot;
use vane_proto::{ConfigError, config_sha256, validate};

use crate::observe::{accesslog, metrics};
use crate::routing::runtime;
use crate::server::listeners;
use crate::upstream::dns;
use crate::{policy, tls};

use super::problems::Problems;
use super::tls_files;
use super::trim;

/// State shared by the discovery client, the listeners and the admin endpoint.
#[derive(Debug)]
pub(crate) struct NodeShared {
    pub(crate) node_id: String,
    /// What the request path reads: the runtime serving, span export.
    pub(crate) serving: Arc<crate::proxy::Serving>,
    /// Taken by snapshot application and admin reads, never by the request path.
    pub(super) listeners: Mutex<listeners::Listeners>,
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
    pub(super) dns: Mutex<dns::Resolved>,
    pub(super) held_snapshot: Mutex<Option<Snapshot>>,
    /// TLS session caches and ticket keys of HTTPS listeners, kept across snapshots.
    pub(super) tls_sessions: tls::Sessions,
    /// Rate-limit buckets, JWKS keys and auth caches, kept across snapshots.
    pub(super) policy_state: policy::PolicyState,
    /// Response caches by resource name, kept across snapshots (purges act on them).
    pub(crate) caches: crate::cache::Caches,
    /// What is wrong on this node while it serves (reported to the control plane).
    pub(crate) problems: Problems,
    /// The files the runtime serving was compiled from, as they were read (`file_watch.rs`).
    pub(super) watched: tokio::sync::watch::Sender<Arc<tls_files::Files>>,
    /// Held while a snapshot is compiled and swapped in.
    pub(super) applying: Mutex<()>,
    /// The last cache purge applied (`purges.rs`), and how many were applied since start.
    pub(crate) purge_seq: AtomicU64,
    pub(crate) purges: AtomicU64,
}

impl NodeShared {
    pub(super) fn listeners(&self) -> std::sync::MutexGuard<'_, listeners::Listeners> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates, compiles and swaps in a snapshot. On error nothing changed.
    pub(crate) fn apply_snapshot(self: &Arc<Self>, snapshot: &Snapshot) -> Result<(), Vec<ConfigError>> {
        let _applying = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        self.compile_and_swap(snapshot)
    }

    /// Compiles the held snapshot again, reading its files (and DNS answers) anew; its
    /// version and the outcome, or `None` when no snapshot is held.
    pub(super) fn reapply(self: &Arc<Self>) -> Option<(u64, Result<(), Vec<ConfigError>>)> {
        let _applying = self.applying.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = self.held_snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        Some((snapshot.version, self.compile_and_swap(&snapshot)))
    }

    fn compile_and_swap(self: &Arc<Self>, snapshot: &Snapshot) -> Result<(), Vec<ConfigError>> {
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
        // Seen before they are read: a change after this is caught by the next poll.
        let files = tls_files::look(tls_files::referenced(config));
        let tls = tls::Material::load(compiled_config, &self.tls_sessions)?;
        let previous = self.serving.runtime.load_full();
        let policies =
            policy::Policies::compile(compiled_config, &self.policy_state, previous.as_deref().map(|rt| &rt.policies))?;
        let mut listeners = self.listeners();
        let mut prepared = listeners.prepare(&config.listeners)?;
        // Last before the swap: a removed or changed cache's entries go here.
        let caches = self.caches.prepare(compiled_config);
        let runtime = self.metrics.rebuild(|metrics| {
            runtime::Runtime::compile(
                snapshot.version,
                snapshot.sha256.clone(),
                compiled_config,
                &prepared.ids,
                previous.as_deref(),
                metrics,
                &runtime::Loaded { access_logs: &access_logs, tls: &tls, policies: &policies, caches: &caches },
            )
        });
        prepared.compile_l4(&compiled_config.listeners, &runtime.clusters, &access_logs);
        self.serving.runtime.store(Some(Arc::new(runtime)));
        listeners.commit(prepared, &self.serving);
        self.swaps.fetch_add(1, Ordering::Relaxed);
        self.watched.send_replace(Arc::new(files));
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
    pub(super) async fn refresh_dns(self: Arc<Self>) {
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
                // The held snapshot, not this copy: a newer one may have arrived meanwhile.
                match self.reapply() {
                    Some((version, Ok(()))) => info!(version, "recompiled after a dns change"),
                    Some((_, Err(errors))) => warn!(?errors, "recompile after a dns change failed"),
                    None => {}
                }
            }
        }
    }

    /// `(version, sha256)` of the runtime held, `(0, "")` for none.
    pub(crate) fn held(&self) -> (u64, String) {
        self.serving.runtime.load().as_ref().map_or((0, String::new()), |r| (r.version, r.sha256.clone()))
    }
}

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
