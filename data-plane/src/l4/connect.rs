//! Opening the upstream side of a TCP connection with the cluster's balancer, health and
//! circuit breaker, as requests do.
//!
//! The connection holds a `max_connections` slot of the cluster for its whole life (the
//! breaker counts connections here, not exchanges), and its endpoint's [`Picked`] guard,
//! so LEAST_REQUEST balances open connections. Hash policies hash on the client's IP
//! address (the validator refuses header, cookie and path keys on TCP listeners). A
//! connect that fails or times out is reported to passive health as unreachable and the
//! next endpoint is tried, at most [`MAX_ATTEMPTS`] in all, before the client sees
//! anything. On each endpoint the PROXY header goes first (when the cluster asks), then
//! the TLS handshake (when the cluster has `tls`): a handshake that fails counts as a failed
//! exchange for passive health and the next endpoint is tried.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;
use tracing::debug;

use crate::observe::streams::{Refusal, StreamStats};
use crate::upstream::balancer::{PickContext, Picked};
use crate::upstream::cluster::{Cluster, Tried};
use crate::upstream::health::Outcome;

use super::proxy_protocol;

/// Endpoints tried for one connection.
pub(crate) const MAX_ATTEMPTS: usize = 3;

/// The upstream side: plain, or TLS when the cluster has `tls`.
pub(crate) type Upstream = Either<TcpStream, TlsStream<TcpStream>>;

/// An open upstream connection and what it holds of its cluster.
#[derive(Debug)]
pub(crate) struct Connected {
    pub(crate) stream: Upstream,
    pub(crate) addr: SocketAddr,
    /// Time spent connecting, every attempt included.
    pub(crate) took: Duration,
    _endpoint: Picked,
    _slot: Option<OwnedSemaphorePermit>,
}

/// Connects to an endpoint of `cluster` for `client`, which came to `local`.
pub(crate) async fn connect(
    cluster: &Cluster,
    client: SocketAddr,
    local: Option<SocketAddr>,
    stats: &StreamStats,
) -> Result<Connected, Refusal> {
    let started = Instant::now();
    let timeout = cluster.connect_timeout();
    let slot = cluster.connection_slot(started + timeout).await.map_err(|_| Refusal::Overloaded)?;
    let headers = http::HeaderMap::new();
    let ctx = PickContext { client: client.ip(), path: "", headers: &headers };
    let mut tried = Tried::default();
    let mut refusal = Refusal::NoEndpoint;
    for _ in 0..cluster.endpoint_count().clamp(1, MAX_ATTEMPTS) {
        let Some((picked, _)) = cluster.pick_avoiding(Some(&ctx), &tried) else { break };
        let index = picked.index;
        if tried.has(index) {
            // Every endpoint was tried already.
            break;
        }
        tried.add(index);
        let Some(addr) = cluster.endpoint_addr(index) else { continue };
        match open(cluster, addr, client, local, timeout).await {
            Ok(stream) => {
                cluster.report(index, Outcome::Ok);
                return Ok(Connected { stream, addr, took: started.elapsed(), _endpoint: picked, _slot: slot });
            }
            Err(outcome) => {
                debug!(%addr, ?outcome, "upstream connect failed");
                cluster.report(index, outcome);
                cluster.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                refusal = Refusal::ConnectFailed;
            }
        }
    }
    Err(refusal)
}

/// One endpoint: TCP, the PROXY header, TLS. `Err` says what passive health hears.
async fn open(
    cluster: &Cluster,
    addr: SocketAddr,
    client: SocketAddr,
    local: Option<SocketAddr>,
    timeout: Duration,
) -> Result<Upstream, Outcome> {
    let mut tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        _ => return Err(Outcome::Unreachable),
    };
    let _ = tcp.set_nodelay(true);
    if let Some(v2) = cluster.proxy_protocol() {
        let header = proxy_protocol::header(v2, client, local.unwrap_or(client));
        tcp.write_all(&header).await.map_err(|_| Outcome::Unreachable)?;
    }
    let Some(tls) = cluster.stream_tls() else { return Ok(Either::Left(tcp)) };
    match tokio::time::timeout(timeout, tls.connect_stream(addr, tcp)).await {
        Ok(Ok(stream)) => Ok(Either::Right(stream)),
        _ => Err(Outcome::Failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use vane_proto::config;

    fn cluster(addresses: &[String]) -> std::sync::Arc<Cluster> {
        let spec = config::Cluster {
            name: "c".into(),
            endpoints: addresses
                .iter()
                .map(|a| config::Endpoint { address: a.clone(), ..Default::default() })
                .collect(),
            ..Default::default()
        };
        crate::upstream::cluster::ClusterRegistry::new(&HashMap::new()).build(&spec, Default::default(), None)
    }

    /// An address nothing listens on.
    fn closed_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_refused_endpoint_is_skipped_and_ejected_after_three_failures() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let dead = closed_port();
        let c = cluster(&[dead.clone(), live_addr.to_string()]);
        let stats = StreamStats::default();
        let client: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        for _ in 0..6 {
            let connected = connect(&c, client, None, &stats).await.expect("the live endpoint answers");
            assert_eq!(connected.addr, live_addr);
        }
        // Round robin sends every other connection to the dead one until three refusals
        // eject it; after that no connection tries it.
        assert_eq!(stats.connect_failures.load(Ordering::Relaxed), 3);
        assert!(!c.health()[0].1, "the dead endpoint is ejected");
    }

    #[tokio::test]
    async fn when_every_endpoint_refuses_the_client_is_told_connect_failed() {
        let c = cluster(&[closed_port(), closed_port()]);
        let stats = StreamStats::default();
        let client: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let refused = connect(&c, client, None, &stats).await.unwrap_err();
        assert_eq!(refused, Refusal::ConnectFailed);
        assert_eq!(stats.connect_failures.load(Ordering::Relaxed), 2, "each endpoint once");
        let empty = cluster(&[]);
        assert_eq!(connect(&empty, client, None, &stats).await.unwrap_err(), Refusal::NoEndpoint);
    }
}
