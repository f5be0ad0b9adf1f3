//! The discovery stream, node side: say Hello with the version held and the node's
//! problems, apply each snapshot, answer ACK (after swap and cache write) or NACK (with
//! every error), and send a `ProblemReport` whenever the problems change. A snapshot that
//! would take the node to a lower version number is refused. A cache write that fails
//! after the swap is a `cache_write` problem, not a NACK: the node serves the version.
//!
//! A lost stream is retried with exponential backoff and full jitter, 100 ms doubling to
//! 30 s, reset once a stream is established; HTTP/2 keepalive detects a dead peer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tracing::{debug, info, warn};
use vane_proto::config::ValidationError;
use vane_proto::discovery::{
    Ack, Hello, Nack, NodeMessage, ProblemReport, Snapshot, control_message,
    discovery_service_client::DiscoveryServiceClient, node_message,
};

use super::NodeConfig;
use super::problems::Kind;
use super::purges;
use super::shared::NodeShared;
use super::snapshot_store;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Same bound as the control plane's.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

pub(crate) async fn run(shared: Arc<NodeShared>, endpoint: Endpoint, config: NodeConfig) {
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let mut attempt: u32 = 0;
    loop {
        match session(&shared, &endpoint, &config, &mut attempt).await {
            Ok(()) => info!("control plane closed the stream"),
            Err(error) => warn!(%error, control_plane = %config.control_plane, "discovery stream failed"),
        }
        if shared.connected.swap(false, Ordering::Relaxed) {
            let now_ms = u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            shared.lost_at_ms.store(now_ms, Ordering::Relaxed);
        }
        let ceiling = BACKOFF_MIN.saturating_mul(1 << attempt.min(16)).min(BACKOFF_MAX);
        let delay = ceiling.mul_f64(rand::random::<f64>());
        attempt = attempt.saturating_add(1);
        debug!(?delay, attempt, "reconnecting");
        tokio::time::sleep(delay).await;
    }
}

async fn session(
    shared: &Arc<NodeShared>,
    endpoint: &Endpoint,
    config: &NodeConfig,
    attempt: &mut u32,
) -> Result<(), tonic::Status> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {}", vane_proto::text::error_chain(&e))))?;
    let mut client = DiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<NodeMessage>(4);
    let (version_held, hash_held) = shared.held();
    // Watched before they are read: a change after the Hello is reported.
    let mut problems = shared.problems.subscribe();
    problems.mark_unchanged();
    let hello = Hello {
        node_id: config.node_id.clone(),
        labels: config.labels.clone(),
        version_held,
        hash_held,
        problems: shared.problems.report(),
        purge_seq_held: shared.purge_seq.load(Ordering::Relaxed),
    };
    let _ = tx.send(NodeMessage { message: Some(node_message::Message::Hello(hello)) }).await;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &config.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("the node token holds characters a header cannot"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = client.stream(request).await?.into_inner();
    shared.connected.store(true, Ordering::Relaxed);
    shared.stale.store(false, Ordering::Relaxed);
    *attempt = 0;
    info!(version_held, "connected to control plane");
    loop {
        tokio::select! {
            message = inbound.message() => {
                let Some(message) = message? else { break };
                let snapshot = match message.message {
                    Some(control_message::Message::Snapshot(snapshot)) => snapshot,
                    Some(control_message::Message::Purge(purge)) => {
                        if tx.send(purges::apply(shared, config, purge).await).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    None => continue,
                };
                shared.snapshots.fetch_add(1, Ordering::Relaxed);
                let reply = apply(shared, config, snapshot).await;
                // Problems met while applying go first: the ACK then comes with them known.
                if problems.has_changed().unwrap_or(false) {
                    problems.mark_unchanged();
                    if tx.send(report(shared)).await.is_err() {
                        break;
                    }
                }
                if tx.send(reply).await.is_err() {
                    break;
                }
            }
            changed = problems.changed() => {
                if changed.is_err() || tx.send(report(shared)).await.is_err() {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn report(shared: &NodeShared) -> NodeMessage {
    let problems = shared.problems.report();
    NodeMessage { message: Some(node_message::Message::Problems(ProblemReport { problems })) }
}

async fn apply(shared: &Arc<NodeShared>, config: &NodeConfig, snapshot: Snapshot) -> NodeMessage {
    let (version, nonce) = (snapshot.version, snapshot.nonce.clone());
    if let Some(error) = backwards(shared, &snapshot) {
        warn!(version, error = %error.message, "snapshot rejected");
        shared.metrics.nacks.fetch_add(1, Ordering::Relaxed);
        return NodeMessage {
            message: Some(node_message::Message::Nack(Nack { version, nonce, errors: vec![error] })),
        };
    }
    let applied = match shared.resolve(&snapshot).await {
        Ok(()) => shared.apply_snapshot(&snapshot),
        Err(errors) => Err(errors),
    };
    let result = applied.map_err(|errors| errors.into_iter().map(ValidationError::from).collect::<Vec<_>>());
    if let (Ok(()), Some(dir)) = (&result, config.cache_dir.clone()) {
        let subject = dir.display().to_string();
        let written = tokio::task::spawn_blocking(move || snapshot_store::write(&dir, &snapshot)).await;
        // The runtime is already serving this version: a cache that cannot be written is
        // the node's problem, reported beside the ACK. A NACK would have the control plane
        // believe the node runs its previous version and never offer it this one again.
        let failure = match written {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(error) => Some(format!("the cache write stopped: {error}")),
        };
        match failure {
            None => shared.problems.clear(Kind::CacheWrite, |_| true),
            Some(error) => {
                warn!(version, cache_dir = %subject, %error, "last-known-good snapshot not written; serving it all the same");
                shared.problems.set(Kind::CacheWrite, &subject, error);
            }
        }
    }
    let message = match result {
        Ok(()) => node_message::Message::Ack(Ack { version, nonce }),
        Err(errors) => {
            shared.metrics.nacks.fetch_add(1, Ordering::Relaxed);
            let text = errors.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("; ");
            warn!(version, errors = %text, "snapshot rejected");
            node_message::Message::Nack(Nack { version, nonce, errors })
        }
    };
    NodeMessage { message: Some(message) }
}

/// A node never moves to a lower version number than the one it runs, nor to other
/// content under the same number: either means the control plane's store went back in
/// time (a control plane numbers above what its nodes hold, so this is the last guard).
fn backwards(shared: &NodeShared, snapshot: &Snapshot) -> Option<ValidationError> {
    let (held, held_sha) = shared.held();
    let message = if held > 0 && snapshot.version < held {
        format!("version {} is older than version {held}, which this node runs; refused", snapshot.version)
    } else if held > 0 && snapshot.version == held && snapshot.sha256 != held_sha {
        format!("version {held} arrived with other content than the version {held} this node runs; refused")
    } else {
        return None;
    };
    Some(ValidationError { kind: "node".into(), name: String::new(), field: "version".into(), message })
}
