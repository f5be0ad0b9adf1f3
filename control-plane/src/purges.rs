//! Cache purges: kept in the store in order (`purge_log.rs`), sent to every node on its
//! discovery stream (the ones it missed when it connects, then each new one), and
//! acknowledged by the nodes (`PurgeDone`), which `PurgeCache` with `wait` waits for.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::Status;
use tracing::{info, warn};
use vane_proto::admin::{PurgeCacheRequest, PurgeCacheResponse};
use vane_proto::discovery::{CachePurge, ControlMessage, control_message};

use crate::Shared;
use crate::store::{MissedPurges, StoreError};

/// How long `PurgeCache` with `wait` waits for the connected nodes.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// Longest key (bytes) a purge may name: keys are host, path and query.
const MAX_KEY: usize = 16 * 1024;

/// Keeps a purge (numbered by the store), tells the sessions, and with `wait` waits until
/// every node connected at that moment applied it (or [`WAIT`] passed).
pub(crate) async fn purge(shared: &Arc<Shared>, req: PurgeCacheRequest) -> Result<PurgeCacheResponse, Status> {
    if req.key.is_empty() && !req.prefix {
        return Err(Status::invalid_argument("a purge needs a key, or a prefix (an empty prefix purges everything)"));
    }
    if req.key.len() > MAX_KEY {
        return Err(Status::invalid_argument(format!("a purge key has at most {MAX_KEY} bytes")));
    }
    if !req.cache.is_empty() {
        let known =
            shared.published.borrow().as_ref().is_some_and(|p| p.config.caches.iter().any(|c| c.name == req.cache));
        if !known {
            return Err(Status::not_found(format!(
                "no cache '{}' in the latest version (see `vane get caches`)",
                req.cache
            )));
        }
    }
    let asked = CachePurge { seq: 0, cache: req.cache, key: req.key, prefix: req.prefix };
    let purge = {
        // Numbers are taken in the order writers get the lock.
        let _writer = shared.write.lock().await;
        let store = shared.store.clone();
        let kept = tokio::task::spawn_blocking(move || store.record_purge(asked))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e: StoreError| Status::internal(format!("purge not stored: {e}")))?;
        shared.purges.send_replace(kept.seq);
        kept
    };
    info!(seq = purge.seq, cache = %purge.cache, key = %purge.key, prefix = purge.prefix, "cache purge kept");
    let nodes = shared.fleet.connected_nodes();
    let mut response = PurgeCacheResponse {
        seq: purge.seq,
        nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
        ..Default::default()
    };
    if req.wait {
        let mut changes = shared.fleet.purges_done();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (applied, removed) = shared.fleet.purge_applied(&nodes, purge.seq);
            response.applied = applied;
            response.removed = removed;
            if applied as usize >= nodes.len() {
                break;
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                break;
            }
        }
    }
    Ok(response)
}

/// Sends a node the purges after `held` it lacks; the number it then holds, or `None`
/// when the stream is gone. `hello`: `held` is what the node said when it connected,
/// where 0 means it does not know (restarted without a state dir: a disk tier may hold
/// entries purged while it was away), so it empties its caches if any purge was made.
pub(crate) async fn send_missed(
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<Result<ControlMessage, Status>>,
    node_id: &str,
    held: u64,
    hello: bool,
) -> Option<u64> {
    let latest = *shared.purges.borrow();
    if held == latest {
        return Some(held);
    }
    let store = shared.store.clone();
    let missed = match tokio::task::spawn_blocking(move || match held {
        0 if hello => Ok(MissedPurges::Everything(CachePurge { seq: latest, prefix: true, ..Default::default() })),
        _ => store.purges_after(held),
    })
    .await
    {
        Ok(Ok(missed)) => missed,
        Ok(Err(error)) => {
            warn!(node = %node_id, %error, "cannot read the purges; the node is sent them later");
            return Some(held);
        }
        Err(error) => {
            warn!(node = %node_id, %error, "cannot read the purges; the node is sent them later");
            return Some(held);
        }
    };
    let purges = match missed {
        MissedPurges::These(purges) => purges,
        MissedPurges::Everything(all) => {
            info!(node = %node_id, held, seq = all.seq, "node missed purges no longer kept: purging everything");
            vec![all]
        }
    };
    let mut now = held;
    for purge in purges {
        now = purge.seq;
        let message = ControlMessage { message: Some(control_message::Message::Purge(purge)) };
        tx.send(Ok(message)).await.ok()?;
    }
    Some(now)
}
