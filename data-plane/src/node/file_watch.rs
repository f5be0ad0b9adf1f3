//! Certificate, key and CA files named by the config (`DataSource.filename`), watched: when
//! one changes on disk the node compiles the snapshot it holds again, which reads and
//! checks every file exactly as a new snapshot's TLS material is read and checked
//! (`tls::Material::load`). On success the new runtime is swapped in and the next
//! handshake gets the new certificate; connections already open keep theirs. On failure
//! nothing changes (the previous certificate keeps serving) and each changed file is a
//! `tls_file` problem (`problems.rs`), logged with the file and the reason, until a later
//! change loads, or a new snapshot does.
//!
//! How: a poll, every `--file-poll-interval` (default 2 s), of what `tls_files.rs` sees of
//! each file (length, modification time, content hash). Polling rather than
//! inotify/kqueue (the `notify` crate): it is portable, sees the symlink swaps of
//! Kubernetes secret volumes and files replaced by rename (which an inode watch loses),
//! needs no extra dependency, and costs a few `stat`s and small reads every 2 s: cheap
//! and bounded by the number of files the config names. The baseline is taken
//! by `NodeShared::apply_snapshot` just before it reads the files, so no change between
//! that read and the first poll is missed. With no file named (or an interval of 0) the
//! task only waits for the next snapshot: no timer, no file access.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::problems::Kind;
use super::shared::NodeShared;
use super::tls_files::{Files, look};

/// Polls the files the held snapshot names every `every`, until the node stops.
pub(super) async fn run(shared: Arc<NodeShared>, every: Duration) {
    let mut applied = shared.watched.subscribe();
    let mut last: Arc<Files> = applied.borrow_and_update().clone();
    loop {
        if last.is_empty() || every.is_zero() {
            if applied.changed().await.is_err() {
                return;
            }
        } else {
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(every) => {
                    last = poll(&shared, &last).await;
                    continue;
                }
            }
        }
        // A snapshot (or a recompile) was applied: it loaded every file it names, so none
        // is a problem now, and what it read is the new baseline.
        last = applied.borrow_and_update().clone();
        shared.problems.clear(Kind::TlsFile, |_| true);
    }
}

/// One poll: when a file changed, compiles the held snapshot again; returns what to
/// compare the next poll with.
async fn poll(shared: &Arc<NodeShared>, last: &Arc<Files>) -> Arc<Files> {
    let paths: Vec<String> = last.keys().cloned().collect();
    let Ok(now) = tokio::task::spawn_blocking(move || look(paths)).await else { return last.clone() };
    let changed: Vec<&String> =
        now.iter().filter(|(path, seen)| last.get(*path) != Some(*seen)).map(|(p, _)| p).collect();
    if changed.is_empty() {
        return last.clone();
    }
    info!(files = ?changed, "certificate files changed; reloading");
    match shared.reapply() {
        // Success is seen through `watched` (the new baseline, problems cleared).
        Some((version, Ok(()))) => info!(version, "certificate files reloaded"),
        Some((version, Err(errors))) => {
            let reason = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            for file in &changed {
                warn!(file = %file, %reason, version, "certificate file refused; the previous certificate keeps serving");
                shared.problems.set(Kind::TlsFile, file, reason.clone());
            }
        }
        None => {}
    }
    // Not retried until a file changes again: the same content would fail the same way.
    Arc::new(now)
}
