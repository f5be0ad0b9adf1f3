//! Cache purges on the node: applied in the control plane's order, the last one applied
//! kept in the state dir (`purge-seq`, beside the last good snapshot) so that a restarted
//! node says where it stands in its `Hello` and is sent only what it missed. A node
//! without a state dir says 0 after a restart and is sent one purge of everything when
//! any purge was ever made (its memory tier is empty anyway; a disk tier loses its
//! entries rather than serve one that was purged while the node was away).

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{info, warn};
use vane_proto::discovery::{CachePurge, NodeMessage, PurgeDone, node_message};

use super::NodeConfig;
use super::problems::Kind;
use super::shared::NodeShared;

const FILE: &str = "purge-seq";

/// The last purge a previous run applied (0: none, or not readable).
pub(crate) fn read_seq(dir: &Path) -> u64 {
    match std::fs::read_to_string(dir.join(FILE)) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            warn!(dir = %dir.display(), "unreadable {FILE}: the control plane will have every cache emptied");
            0
        }),
        Err(_) => 0,
    }
}

/// Writes `seq` atomically (temp file, fsync, rename).
fn write_seq(dir: &Path, seq: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{FILE}.{}.tmp", std::process::id()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(format!("{seq}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(FILE))
}

/// Applies one purge to every cache it names and answers with what it removed.
pub(crate) async fn apply(shared: &Arc<NodeShared>, config: &NodeConfig, purge: CachePurge) -> NodeMessage {
    let seq = purge.seq;
    let target = shared.clone();
    let removed = tokio::task::spawn_blocking(move || target.caches.purge(&purge.cache, &purge.key, purge.prefix))
        .await
        .unwrap_or_else(|error| {
            warn!(seq, %error, "cache purge stopped");
            0
        });
    shared.purge_seq.store(seq, Ordering::Relaxed);
    shared.purges.fetch_add(1, Ordering::Relaxed);
    info!(seq, removed, "cache purge applied");
    if let Some(dir) = config.cache_dir.clone() {
        let subject = dir.display().to_string();
        match tokio::task::spawn_blocking(move || write_seq(&dir, seq)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                warn!(seq, dir = %subject, %error, "purge number not written: after a restart every cache is emptied");
                shared.problems.set(Kind::CacheWrite, &subject, error.to_string());
            }
            Err(error) => warn!(seq, %error, "purge number not written"),
        }
    }
    NodeMessage { message: Some(node_message::Message::PurgeDone(PurgeDone { seq, removed })) }
}
