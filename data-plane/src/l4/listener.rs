//! A TCP (or TLS) listener as one snapshot compiled it, and the life of one connection on
//! it: choose the cluster (the listener's, or by the SNI of the ClientHello, read for
//! passthrough or from the handshake a TLS listener terminated), connect upstream, relay,
//! then count and log.
//!
//! A connection takes the [`L4Listener`] current when it was accepted and keeps it, with
//! the `Arc<Cluster>`s it holds, to its end: a snapshot swap never moves or cuts it, and a
//! changed cluster only serves new connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;
use vane_proto::config;

use crate::observe::accesslog::Sink;
use crate::observe::metrics::ListenerStats;
use crate::observe::streams::{Refusal, StreamLine};
use crate::support::duration_or;
use crate::upstream::cluster::Cluster;

use super::connect::connect;
use super::relay::{self, Limits, relay};
use super::sni::{self, Hello, Rules};

/// Idle timeout of a TCP listener that sets none (Envoy's tcp_proxy default).
const DEFAULT_IDLE: Duration = Duration::from_secs(3600);
/// How long a removed listener's connections keep flowing by default.
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// Time a passthrough client has to send its whole ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the accept loop knows of a connection it hands over.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The client: as a trusted PROXY header gave it, else the socket's peer.
    pub(crate) peer: SocketAddr,
    /// The listener's address the connection came to.
    pub(crate) local: Option<SocketAddr>,
    /// A TLS listener terminated the connection (then `sni` is the handshake's).
    pub(crate) terminated: bool,
    pub(crate) sni: Option<String>,
}

/// A compiled TCP or TLS listener.
#[derive(Debug)]
pub(crate) struct L4Listener {
    name: Arc<str>,
    /// Where connections go when no SNI rule takes them.
    default: Option<Arc<Cluster>>,
    sni: Rules,
    limits: Limits,
    access_log: Option<Arc<Sink>>,
}

impl L4Listener {
    /// Compiles a validated TCP listener against the snapshot's clusters.
    pub(crate) fn compile(
        spec: &config::Listener,
        clusters: &HashMap<Arc<str>, Arc<Cluster>>,
        access_log: Option<Arc<Sink>>,
    ) -> L4Listener {
        let mut sni = Rules::default();
        for rule in &spec.sni_routes {
            let Some(cluster) = clusters.get(rule.cluster.as_str()) else { continue };
            for name in &rule.server_names {
                sni.add(name, cluster.clone());
            }
        }
        L4Listener {
            name: spec.name.as_str().into(),
            default: clusters.get(spec.cluster.as_str()).cloned(),
            sni,
            limits: Limits {
                idle: duration_or(spec.idle_timeout.as_ref(), DEFAULT_IDLE),
                max_duration: spec.max_connection_duration.as_ref().map(|d| duration_or(Some(d), DEFAULT_IDLE)),
                drain: duration_or(spec.drain_timeout.as_ref(), DEFAULT_DRAIN),
            },
            access_log,
        }
    }

    /// Serves one accepted connection to its end: the socket, or the TLS stream over it
    /// on a TLS listener. `stop` turns true when the listener is removed (its connections
    /// then drain).
    pub(crate) async fn serve<C>(
        self: Arc<Self>,
        mut client: C,
        accepted: Accepted,
        stats: Arc<ListenerStats>,
        stop: watch::Receiver<bool>,
    ) where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let peer = accepted.peer;
        let started = Instant::now();
        let mut line = StreamLine {
            time: SystemTime::now(),
            client: peer,
            listener: self.name.clone(),
            sni: accepted.sni.map(String::into_boxed_str),
            cluster: None,
            upstream: None,
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::ZERO,
            connect: None,
            end: "closed",
            datagrams: None,
        };
        let (cluster, hello) = match self.route(&mut client, accepted.terminated, &mut line).await {
            Ok(chosen) => chosen,
            Err(refusal) => return self.refuse(&stats, line, refusal, started),
        };
        line.cluster = Some(cluster.name.clone());
        let mut connected = match connect(&cluster, peer, accepted.local, &stats.streams).await {
            Ok(c) => c,
            Err(refusal) => return self.refuse(&stats, line, refusal, started),
        };
        line.upstream = Some(connected.addr);
        line.connect = Some(connected.took);
        if !hello.is_empty() {
            if let Err(error) = relay::forward_prefix(&mut connected.stream, &hello, &stats.streams).await {
                debug!(%error, "upstream closed before the ClientHello was written");
                line.end = "error";
                return self.finish(line, started);
            }
            line.bytes_in = hello.len() as u64;
        }
        let relayed = relay(client, &mut connected.stream, self.limits, &stats.streams, stop).await;
        line.bytes_in += relayed.bytes_in;
        line.bytes_out = relayed.bytes_out;
        line.end = relayed.end.as_str();
        debug!(upstream = %connected.addr, end = line.end, "tcp connection ended");
        self.finish(line, started);
    }

    /// The cluster for a connection, and the bytes read to choose it (the ClientHello,
    /// for SNI rules; they go upstream first). `terminated`: a TLS listener's handshake
    /// is done, and its SNI (if any) is in `line`.
    async fn route<C: AsyncRead + Unpin>(
        &self,
        client: &mut C,
        terminated: bool,
        line: &mut StreamLine,
    ) -> Result<(Arc<Cluster>, Vec<u8>), Refusal> {
        if terminated {
            let cluster = line.sni.as_deref().and_then(|n| self.sni.find(n)).or(self.default.as_ref());
            return cluster.cloned().map(|c| (c, Vec::new())).ok_or(Refusal::NoRoute);
        }
        if self.sni.is_empty() {
            return self.default.clone().map(|c| (c, Vec::new())).ok_or(Refusal::NoRoute);
        }
        let (name, hello) =
            tokio::time::timeout(HELLO_TIMEOUT, read_hello(client)).await.map_err(|_| Refusal::BadHello)??;
        line.sni = name.as_deref().map(Into::into);
        let cluster = name.as_deref().and_then(|n| self.sni.find(n)).or(self.default.as_ref());
        cluster.cloned().map(|c| (c, hello)).ok_or(Refusal::NoRoute)
    }

    fn refuse(&self, stats: &ListenerStats, mut line: StreamLine, refusal: Refusal, started: Instant) {
        stats.streams.refuse(refusal);
        debug!(reason = refusal.as_str(), sni = ?line.sni, "tcp connection refused");
        line.end = refusal.as_str();
        self.finish(line, started);
    }

    fn finish(&self, mut line: StreamLine, started: Instant) {
        if let Some(log) = &self.access_log {
            line.duration = started.elapsed();
            log.send_stream(line);
        }
    }
}

/// Reads a whole ClientHello: its server name, and every byte read.
async fn read_hello<C: AsyncRead + Unpin>(client: &mut C) -> Result<(Option<String>, Vec<u8>), Refusal> {
    let mut buf = Vec::with_capacity(1024);
    // Each read adds at least one byte and the buffer is bounded: at most MAX_HELLO turns.
    loop {
        match sni::parse(&buf) {
            Hello::Complete(name) => return Ok((name, buf)),
            Hello::Invalid => return Err(Refusal::BadHello),
            Hello::Partial if buf.len() >= sni::MAX_HELLO => return Err(Refusal::BadHello),
            Hello::Partial => {}
        }
        let mut chunk = [0u8; 2048];
        let want = chunk.len().min(sni::MAX_HELLO - buf.len());
        match client.read(&mut chunk[..want]).await {
            Ok(0) | Err(_) => return Err(Refusal::BadHello),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
