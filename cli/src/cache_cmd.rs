//! `vane cache purge`: removes cached responses on every node, through the control plane
//! (which keeps the purge, so a node that is away applies it when it comes back).

use vane_proto::admin::PurgeCacheRequest;

use crate::client::{Admin, status_error};

/// Manage the nodes' response caches.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CacheCommand {
    /// Remove cached responses on every node: one key (`HOST/PATH?QUERY`, as a cache keys
    /// it), or with --prefix every key that starts with KEY (`--prefix ''`: everything).
    Purge {
        /// The key, or the prefix with --prefix.
        key: String,
        /// Remove every key that starts with KEY.
        #[arg(long)]
        prefix: bool,
        /// Only this cache resource (default: every cache).
        #[arg(long, value_name = "NAME", default_value = "")]
        cache: String,
        /// Return once the purge is kept, without waiting for the nodes to apply it.
        #[arg(long)]
        no_wait: bool,
    },
}

pub(crate) async fn run(admin: &Admin, command: CacheCommand) -> anyhow::Result<()> {
    let CacheCommand::Purge { key, prefix, cache, no_wait } = command;
    let wait = !no_wait;
    let request = admin.request(PurgeCacheRequest { cache, key, prefix, wait })?;
    let response = admin.client().await?.purge_cache(request).await.map_err(status_error)?.into_inner();
    let line = match (wait, response.nodes) {
        (false, n) => {
            format!("purge {} kept; {n} connected nodes apply it now, the others when they reconnect", response.seq)
        }
        (true, 0) => format!("purge {} kept; no node is connected (each applies it when it connects)", response.seq),
        (true, n) if response.applied >= n => {
            format!("purge {}: applied by {n} of {n} nodes, {} entries removed", response.seq, response.removed)
        }
        (true, n) => format!(
            "purge {}: applied by {} of {n} nodes so far ({} entries removed); the others apply it when they can",
            response.seq, response.applied, response.removed
        ),
    };
    outln!("{line}")?;
    Ok(())
}
