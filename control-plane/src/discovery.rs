//! The discovery stream, control-plane side: one session per connected node.
//!
//! Rules (DESIGN.md §3): the first message is `Hello`; a node already holding the latest
//! version and hash gets nothing; at most one snapshot is unacknowledged per node and the
//! newest published version supersedes older ones; pushes after a write are debounced
//! (see `Debounce`), so a burst of writes costs a node a few swaps; a version a node
//! NACKed is never sent to it again, whichever control-plane process it NACKed it to: each
//! NACK is stored before the session goes on, and read back when the node connects (see
//! `fleet.rs` for the node restarted empty). Cache purges go to each node in order
//! (`purges.rs`): the ones it missed when it connects, then each new one. The node's problem reports (a cache it cannot
//! write, a certificate file it cannot load) go to the fleet table as they come. The
//! stream needs a `node` token when tokens are on.
//!
//! A node may hold a version this store never had, or had with other content: the store
//! was restored from a backup or replaced, or the node was fed by another control plane.
//! Version numbers are never given to two contents and a node never goes back to a lower
//! number: the held number is marked used (`Store::raise_floor`) and the store's newest
//! config is published again under a higher one, said in the log and in `vane history`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};
use vane_proto::config::ValidationError;
use vane_proto::discovery::{
    ControlMessage, NodeMessage, Snapshot, control_message, discovery_service_server::DiscoveryService, node_message,
};
use vane_proto::store::StoredNack;

use crate::auth::Role;
use crate::purges;
use crate::store::NewVersion;
use crate::{Published, Shared};

/// How far ahead of the store a node's version may be and still be numbered above: far
/// more than any retention keeps, far less than the 64-bit numbers run to.
const MAX_AHEAD: u64 = 1 << 32;

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct DiscoveryServer {
    shared: Arc<Shared>,
}

impl DiscoveryServer {
    pub(crate) fn new(shared: Arc<Shared>) -> DiscoveryServer {
        DiscoveryServer { shared }
    }
}

type Outbound = mpsc::Sender<Result<ControlMessage, Status>>;

#[tonic::async_trait]
impl DiscoveryService for DiscoveryServer {
    type StreamStream = ReceiverStream<Result<ControlMessage, Status>>;

    async fn stream(&self, request: Request<Streaming<NodeMessage>>) -> Result<Response<Self::StreamStream>, Status> {
        self.shared.tokens.authorize(&request, Role::Node).inspect_err(|status| {
            warn!(code = ?status.code(), reason = status.message(), "discovery stream refused");
        })?;
        let peer = request.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(2);
        let shared = self.shared.clone();
        let span = info_span!("node_session", %peer);
        tokio::spawn(session(shared, inbound, tx, peer).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A snapshot sent and not yet answered.
struct Pending {
    version: u64,
    nonce: String,
    sha256: String,
    sent_at: Instant,
}

async fn session(shared: Arc<Shared>, mut inbound: Streaming<NodeMessage>, tx: Outbound, peer: String) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(NodeMessage { message: Some(node_message::Message::Hello(h)) }))) if !h.node_id.is_empty() => h,
        _ => {
            let _ = tx.send(Err(Status::invalid_argument("the first message must be a Hello with a node_id"))).await;
            return;
        }
    };
    let (node_id, version_held, hash_held) = (hello.node_id.clone(), hello.version_held, hello.hash_held.clone());
    let purge_held = hello.purge_seq_held;
    let refused = stored_nacks(&shared, &node_id).await;
    let session_id = shared.counter.fetch_add(1, Ordering::Relaxed);
    let problems = hello.problems.len();
    shared.fleet.connected(session_id, hello, peer, &refused);
    info!(node = %node_id, version_held, refused = refused.len(), problems, "node connected");
    catch_up(&shared, &node_id, version_held, &hash_held).await;
    let mut purge_watch = shared.purges.subscribe();
    purge_watch.mark_unchanged();
    let Some(mut purge_sent) = purges::send_missed(&shared, &tx, &node_id, purge_held, true).await else {
        shared.fleet.disconnected(session_id, &node_id);
        return;
    };

    let mut held = (version_held, hash_held);
    let mut pending: Option<Pending> = None;
    let mut published = shared.published.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    // When to push next (debounced); the first push of a session goes at once.
    let mut send_at: Option<Instant> = Some(Instant::now());
    let mut first_unsent: Option<Instant> = None;
    loop {
        if pending.is_none() && send_at.is_some_and(|at| at <= Instant::now()) {
            send_at = None;
            first_unsent = None;
            let latest: Option<Arc<Published>> = published.borrow_and_update().clone();
            if let Some(p) = latest {
                let stale = (p.version, p.sha256.as_str()) != (held.0, held.1.as_str());
                if stale && !shared.fleet.has_nacked(&node_id, p.version) {
                    let nonce = shared.counter.fetch_add(1, Ordering::Relaxed).to_string();
                    let snapshot = Snapshot {
                        version: p.version,
                        nonce: nonce.clone(),
                        sha256: p.sha256.clone(),
                        config: Some(p.config.clone()),
                    };
                    let message = ControlMessage { message: Some(control_message::Message::Snapshot(snapshot)) };
                    if tx.send(Ok(message)).await.is_err() {
                        break;
                    }
                    debug!(node = %node_id, version = p.version, "snapshot sent");
                    shared.stats.snapshots_sent.fetch_add(1, Ordering::Relaxed);
                    pending =
                        Some(Pending { version: p.version, nonce, sha256: p.sha256.clone(), sent_at: Instant::now() });
                }
            }
        }
        let wake = send_at.filter(|_| pending.is_none()).map(tokio::time::Instant::from_std);
        // A NACK to store before the next push and before `ListNodes` shows it, so that what
        // it shows survives a crash (awaited after the select: its output holds a watch
        // guard that must not live across an await).
        let mut refused: Option<(u64, Vec<ValidationError>)> = None;
        let mut purge_due = false;
        tokio::select! {
            changed = published.changed() => {
                if changed.is_err() {
                    break;
                }
                published.borrow_and_update();
                let now = Instant::now();
                let first = *first_unsent.get_or_insert(now);
                send_at = Some((now + shared.debounce.quiet).min(first + shared.debounce.max));
            }
            changed = purge_watch.changed() => {
                if changed.is_err() {
                    break;
                }
                purge_watch.mark_unchanged();
                purge_due = true;
            }
            () = async { if let Some(at) = wake { tokio::time::sleep_until(at).await } }, if wake.is_some() => {}
            stop = shutdown.wait_for(|stop| *stop) => { drop(stop); break },
            message = inbound.message() => match message {
                Ok(Some(NodeMessage { message: Some(m) })) => match m {
                    node_message::Message::Ack(ack) => {
                        if let Some(p) = pending.take_if(|p| p.nonce == ack.nonce && p.version == ack.version) {
                            shared.fleet.acked(&node_id, p.version, p.sent_at.elapsed());
                            shared.stats.push_to_ack.record(p.sent_at.elapsed());
                            info!(node = %node_id, version = p.version, "snapshot acked");
                            held = (p.version, p.sha256);
                        }
                    }
                    node_message::Message::Nack(nack) => {
                        if let Some(p) = pending.take_if(|p| p.nonce == nack.nonce && p.version == nack.version) {
                            let errors = nack.errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; ");
                            warn!(node = %node_id, version = p.version, %errors, "snapshot rejected");
                            refused = Some((p.version, nack.errors));
                        }
                    }
                    node_message::Message::Problems(report) => {
                        for p in &report.problems {
                            warn!(node = %node_id, kind = %p.kind, subject = %p.subject, problem = %p.message, "node reports a problem");
                        }
                        if report.problems.is_empty() {
                            info!(node = %node_id, "node reports no problems");
                        }
                        shared.fleet.problems(&node_id, report.problems);
                    }
                    node_message::Message::Hello(_) => warn!(node = %node_id, "hello ignored mid-stream"),
                    node_message::Message::PurgeDone(done) => {
                        debug!(node = %node_id, seq = done.seq, removed = done.removed, "purge applied");
                        shared.fleet.purge_done(&node_id, done.seq, done.removed);
                    }
                },
                Ok(Some(NodeMessage { message: None })) => {}
                Ok(None) => break,
                Err(status) => {
                    debug!(node = %node_id, %status, "stream error");
                    break;
                }
            },
        }
        if let Some((version, errors)) = refused {
            store_nack(&shared, &node_id, version, errors.clone()).await;
            shared.fleet.nacked(&node_id, version, errors);
        }
        if purge_due {
            match purges::send_missed(&shared, &tx, &node_id, purge_sent, false).await {
                Some(now) => purge_sent = now,
                None => break,
            }
        }
    }
    shared.fleet.disconnected(session_id, &node_id);
    info!(node = %node_id, "node disconnected");
}

/// What `node_id` refused, as the store keeps it (empty, logged, when it cannot be read:
/// the node then NACKs once more at worst).
async fn stored_nacks(shared: &Arc<Shared>, node_id: &str) -> Vec<StoredNack> {
    let store = shared.store.clone();
    let node = node_id.to_owned();
    match tokio::task::spawn_blocking(move || store.nacks(&node)).await {
        Ok(Ok(nacks)) => nacks,
        Ok(Err(error)) => {
            warn!(node = %node_id, %error, "cannot read the node's nack history");
            Vec::new()
        }
        Err(error) => {
            warn!(node = %node_id, %error, "cannot read the node's nack history");
            Vec::new()
        }
    }
}

/// Stores a NACK durably, so that a restarted control plane does not offer the version again.
async fn store_nack(shared: &Arc<Shared>, node_id: &str, version: u64, errors: Vec<ValidationError>) {
    let store = shared.store.clone();
    let node = node_id.to_owned();
    let nack = StoredNack { version, errors, at_unix_ms: vane_proto::unix_ms_now() };
    let stored = tokio::task::spawn_blocking(move || store.record_nack(&node, &nack)).await;
    let error = match stored {
        Ok(Ok(())) => return,
        Ok(Err(error)) => error.to_string(),
        Err(error) => error.to_string(),
    };
    warn!(node = %node_id, version, %error, "nack not stored: a restarted control plane may offer this version again");
}

/// Handles a node that holds a version ahead of the store (see the module header).
async fn catch_up(shared: &Arc<Shared>, node_id: &str, held: u64, hash: &str) {
    let ahead = |latest: Option<&Published>| match latest {
        None => held > 0,
        Some(p) => held > p.version || (held == p.version && !hash.is_empty() && hash != p.sha256),
    };
    if !ahead(shared.published.borrow().as_deref()) {
        return;
    }
    let _writer = shared.write.lock().await;
    let latest = shared.published.borrow().clone();
    if !ahead(latest.as_deref()) {
        return;
    }
    let store_version = latest.as_ref().map_or(0, |p| p.version);
    if held > store_version.saturating_add(MAX_AHEAD) {
        // Not a store restored from an older backup: a node that says so would make every
        // later version number jump (or run out); it keeps what it has, and is told nothing.
        warn!(node = %node_id, held, store_version, "node claims an implausible version; ignored");
        return;
    }
    warn!(node = %node_id, held, store_version, "node holds a version the store does not have; numbering above it");
    let store = shared.store.clone();
    let node = node_id.to_owned();
    let committed = tokio::task::spawn_blocking(move || {
        store.raise_floor(held)?;
        let Some(p) = latest else { return Ok(None) };
        let summary = format!(
            "version {} published again: node {node} held version {held}, which this store does not have",
            p.version
        );
        let new = NewVersion {
            config: p.config.clone(),
            author: "control-plane".into(),
            summary,
            sha256: p.sha256.clone(),
            created_at_unix_ms: vane_proto::unix_ms_now(),
        };
        store.commit(new).map(Some)
    })
    .await;
    match committed {
        Ok(Ok(Some(record))) => {
            info!(version = record.version, summary = %record.summary, "version stored");
            shared.published.send_replace(Some(Arc::new(Published {
                version: record.version,
                sha256: record.sha256,
                config: record.config.unwrap_or_default(),
            })));
        }
        Ok(Ok(None)) => {}
        Ok(Err(error)) => warn!(node = %node_id, %error, "cannot number above the node's version"),
        Err(error) => warn!(node = %node_id, %error, "cannot number above the node's version"),
    }
}
