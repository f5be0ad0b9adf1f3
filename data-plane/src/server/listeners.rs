//! Listener lifecycle: a snapshot's listeners are reconciled with the bound sockets.
//!
//! Two steps so that a bad snapshot changes nothing: [`Listeners::prepare`] binds every
//! new socket (a failure drops those fresh sockets and becomes a NACK), then after the
//! runtime swap [`Listeners::commit`] starts their accept loops and stops the listeners
//! the snapshot no longer has. A stopped listener closes its socket at once; its open
//! connections finish the requests in flight, then close (graceful shutdown).
//!
//! A TCP listener's slot also holds its compiled [`L4Listener`] (swapped in place like the
//! runtime); the accept loop hands each connection to it while it is set, and the
//! connection keeps that one to its end. A removed TCP listener's connections keep
//! flowing up to its `drain_timeout`.
//!
//! A UDP listener's slot holds a UDP socket (`bind.rs`) served by `l4::udp::serve`, and
//! a watch channel that carries each snapshot's compiled [`UdpListener`] to it. UDP and
//! TCP slots never stand in for each other: a UDP listener and a TCP one may share an
//! address, and a listener that changes between UDP and another protocol is bound anew.
//!
//! A listener whose address is unchanged keeps its socket and its slot id
//! even when renamed; the runtime maps slot ids to routers, so connections always route
//! with the newest runtime.
//!
//! `enable_reuse_port` binds with SO_REUSEPORT so that nodes on one host can share a port.
//! It is read when a socket is bound: a running listener keeps its socket when only this
//! flag changes (re-binding would mean closing first, which a snapshot that then fails
//! could not undo), and says so in the log. Linux lets a SO_REUSEPORT socket join a port
//! only when every socket already on it set the flag too, so an address held without it
//! is still refused.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};
use vane_proto::ConfigError;
use vane_proto::config;
use vane_proto::config::listener::Protocol;

use crate::l4::udp::{self, UdpListener};
use crate::l4::{Accepted, L4Listener, proxy_protocol};
use crate::observe::accesslog::Sink;
use crate::observe::metrics::ListenerStats;
use crate::proxy;
use crate::proxy::Serving;
use crate::server::bind::{Bound, bind_any, ephemeral};
use crate::server::handoff::stopped;
use crate::server::inline::Serve;
use crate::support::duration_or;
use crate::tls::TlsInfo;
use crate::upstream::cluster::Cluster;

/// Time a client has to send a request's headers (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection with no request in progress is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// An HTTP/1.1 client has this long to take what is written to it at once.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Most header lines in one request.
const MAX_HEADERS: usize = 100;
/// Largest request head (HTTP/1 buffer, HTTP/2 header list).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Concurrent streams per HTTP/2 connection.
const MAX_H2_STREAMS: u32 = 256;
/// Streams a client may open and reset before being accepted (rapid reset guard).
const MAX_H2_PENDING_RESETS: usize = 100;
/// Streams the server may reset for protocol errors before closing the connection.
const MAX_H2_ERROR_RESETS: usize = 1024;

#[derive(Debug)]
struct Slot {
    id: u64,
    name: String,
    address: String,
    /// Whether its socket was bound with SO_REUSEPORT.
    reuse_port: bool,
    local: SocketAddr,
    stop: watch::Sender<bool>,
    stats: Arc<ListenerStats>,
    /// The listener's deadlines; a snapshot may change them in place.
    timeouts: Arc<Timeouts>,
    /// Set while the listener is TCP: what its next connection is served with.
    l4: Arc<ArcSwapOption<L4Listener>>,
    /// A UDP listener's: where each snapshot's compiled listener goes.
    udp: Option<watch::Sender<Arc<UdpListener>>>,
}

/// A listener's connection deadlines, in milliseconds, and the peers trusted to send a
/// PROXY protocol header.
#[derive(Debug, Default)]
struct Timeouts {
    header_ms: AtomicU64,
    idle_ms: AtomicU64,
    send_ms: AtomicU64,
    proxy_from: ArcSwap<Vec<IpNet>>,
}

impl Timeouts {
    fn set(&self, (header_ms, idle_ms, send_ms): (u64, u64, u64)) {
        self.header_ms.store(header_ms, Ordering::Relaxed);
        self.idle_ms.store(idle_ms, Ordering::Relaxed);
        self.send_ms.store(send_ms, Ordering::Relaxed);
    }
}

/// The bound listeners of a node.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    slots: Vec<Slot>,
    next_id: u64,
}

/// Sockets bound for a snapshot, not yet serving.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Slot id for each listener of the snapshot, by name.
    pub(crate) ids: HashMap<String, u64>,
    /// Header-read, idle and send deadlines (ms) of each listener, by slot id.
    timeouts: HashMap<u64, (u64, u64, u64)>,
    /// Peers trusted to send a PROXY header, by slot id.
    proxy_from: HashMap<u64, Vec<IpNet>>,
    fresh: Vec<(u64, config::Listener, Bound, SocketAddr)>,
    /// TCP listeners compiled against the new runtime's clusters, by slot id.
    l4: HashMap<u64, Arc<L4Listener>>,
    /// UDP listeners compiled likewise, by slot id.
    udp: HashMap<u64, Arc<UdpListener>>,
}

impl Prepared {
    /// Compiles the snapshot's TCP and UDP listeners against the clusters of the runtime
    /// about to be swapped in.
    pub(crate) fn compile_l4(
        &mut self,
        wanted: &[config::Listener],
        clusters: &HashMap<Arc<str>, Arc<Cluster>>,
        access_logs: &HashMap<String, Arc<Sink>>,
    ) {
        for l in wanted.iter().filter(|l| l.protocol == Protocol::Tcp as i32 || l.protocol == Protocol::Tls as i32) {
            let Some(id) = self.ids.get(&l.name) else { continue };
            let compiled = L4Listener::compile(l, clusters, access_logs.get(&l.name).cloned());
            self.l4.insert(*id, Arc::new(compiled));
        }
        for l in wanted.iter().filter(|l| is_udp(l)) {
            let Some(id) = self.ids.get(&l.name) else { continue };
            let compiled = UdpListener::compile(l, clusters, access_logs.get(&l.name).cloned());
            self.udp.insert(*id, Arc::new(compiled));
        }
    }
}

impl Listeners {
    /// Binds what `wanted` needs and this node does not have yet.
    pub(crate) fn prepare(&mut self, wanted: &[config::Listener]) -> Result<Prepared, Vec<ConfigError>> {
        let mut ids = HashMap::new();
        let mut fresh = Vec::new();
        let mut errors = Vec::new();
        let mut taken: Vec<u64> = Vec::new();
        for l in wanted {
            let reusable = self.slots.iter().find(|s| {
                // The protocol may change in place: each connection is served by what the
                // runtime current at accept time says of the slot (TLS or not).
                !taken.contains(&s.id)
                    && s.address == l.address
                    && s.udp.is_some() == is_udp(l)
                    // A port-0 listener is only "the same" under the same name.
                    && (!ephemeral(&l.address) || s.name == l.name)
            });
            if let Some(slot) = reusable {
                if slot.reuse_port != l.enable_reuse_port {
                    warn!(
                        listener = %l.name,
                        address = %slot.local,
                        enable_reuse_port = l.enable_reuse_port,
                        "listener keeps its socket: enable_reuse_port takes effect when the node next binds this address"
                    );
                }
                taken.push(slot.id);
                ids.insert(l.name.clone(), slot.id);
                continue;
            }
            match bind_any(&l.address, l.enable_reuse_port, is_udp(l)) {
                Ok((socket, local)) => {
                    self.next_id += 1;
                    ids.insert(l.name.clone(), self.next_id);
                    fresh.push((self.next_id, l.clone(), socket, local));
                }
                Err(message) => errors.push(ConfigError {
                    kind: "listener",
                    name: l.name.clone(),
                    field: "address".into(),
                    message,
                }),
            }
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let timeouts = wanted
            .iter()
            .filter_map(|l| {
                let header = duration_or(l.request_headers_timeout.as_ref(), HEADER_READ_TIMEOUT);
                let idle = duration_or(l.idle_timeout.as_ref(), IDLE_TIMEOUT);
                let send = duration_or(l.send_timeout.as_ref(), SEND_TIMEOUT);
                Some((*ids.get(&l.name)?, (ms(header), ms(idle), ms(send))))
            })
            .collect();
        let proxy_from = wanted
            .iter()
            .filter_map(|l| {
                let nets = l
                    .accept_proxy_protocol_from
                    .iter()
                    .filter_map(|c| c.parse::<IpNet>().ok().or_else(|| c.parse::<IpAddr>().ok().map(Into::into)))
                    .collect();
                Some((*ids.get(&l.name)?, nets))
            })
            .collect();
        if errors.is_empty() {
            Ok(Prepared { ids, timeouts, proxy_from, fresh, l4: HashMap::new(), udp: HashMap::new() })
        } else {
            Err(errors)
        }
    }

    /// Starts the fresh listeners and stops those `prepared` did not keep.
    pub(crate) fn commit(&mut self, prepared: Prepared, shared: &Arc<Serving>) {
        let Prepared { ids, timeouts, mut proxy_from, fresh, mut l4, mut udp } = prepared;
        let kept: HashMap<u64, &String> = ids.iter().map(|(name, id)| (*id, name)).collect();
        let defaults =
            (HEADER_READ_TIMEOUT.as_secs() * 1000, IDLE_TIMEOUT.as_secs() * 1000, SEND_TIMEOUT.as_secs() * 1000);
        let timeouts_of = |id: u64| timeouts.get(&id).copied().unwrap_or(defaults);
        self.slots.retain_mut(|slot| match kept.get(&slot.id) {
            Some(name) => {
                slot.name = (*name).clone();
                slot.timeouts.set(timeouts_of(slot.id));
                slot.timeouts.proxy_from.store(Arc::new(proxy_from.remove(&slot.id).unwrap_or_default()));
                // Connections already open keep the listener they started with.
                slot.l4.store(l4.remove(&slot.id));
                // Sessions follow the new listener (`l4::udp`).
                if let (Some(tx), Some(compiled)) = (&slot.udp, udp.remove(&slot.id)) {
                    tx.send_replace(compiled);
                }
                true
            }
            None => {
                info!(listener = %slot.name, address = %slot.local, "listener removed");
                slot.stop.send_replace(true);
                false
            }
        });
        for (id, spec, socket, local) in fresh {
            let (stop, stopped) = watch::channel(false);
            let stats = Arc::new(ListenerStats::default());
            let timeouts = Arc::new(Timeouts::default());
            timeouts.set(timeouts_of(id));
            timeouts.proxy_from.store(Arc::new(proxy_from.remove(&id).unwrap_or_default()));
            let tcp = Arc::new(ArcSwapOption::new(l4.remove(&id)));
            let span = info_span!("listener", name = %spec.name, address = %local);
            let mut datagrams = None;
            let registered = match socket {
                Bound::Stream(socket) => TcpListener::from_std(socket).map(|listener| {
                    let task = accept_loop(
                        listener,
                        id,
                        shared.clone(),
                        stopped,
                        stats.clone(),
                        timeouts.clone(),
                        tcp.clone(),
                    );
                    tokio::spawn(task.instrument(span));
                }),
                Bound::Datagram(socket) => {
                    // Validated and compiled with the snapshot: a UDP listener always has one.
                    let compiled =
                        udp.remove(&id).unwrap_or_else(|| Arc::new(UdpListener::compile(&spec, &HashMap::new(), None)));
                    let (tx, rx) = watch::channel(compiled);
                    datagrams = Some(tx);
                    socket.set_nonblocking(true).and_then(|()| tokio::net::UdpSocket::from_std(socket)).map(|socket| {
                        tokio::spawn(udp::serve(socket, rx, stats.clone(), stopped).instrument(span));
                    })
                }
            };
            match registered {
                Ok(()) => info!(listener = %spec.name, address = %local, "listener started"),
                Err(error) => warn!(listener = %spec.name, %error, "listener could not be registered"),
            }
            let reuse_port = spec.enable_reuse_port;
            self.slots.push(Slot {
                id,
                name: spec.name,
                address: spec.address,
                reuse_port,
                local,
                stop,
                stats,
                timeouts,
                l4: tcp,
                udp: datagrams,
            });
        }
    }

    /// Bound address of a listener, by name.
    pub(crate) fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.slots.iter().find(|s| s.name == name).map(|s| s.local)
    }

    /// `(name, bound address)` of every listener.
    pub(crate) fn bound(&self) -> Vec<(String, SocketAddr)> {
        self.slots.iter().map(|s| (s.name.clone(), s.local)).collect()
    }

    /// `(name, connection counters)` of every listener.
    pub(crate) fn stats(&self) -> Vec<(String, Arc<ListenerStats>)> {
        self.slots.iter().map(|s| (s.name.clone(), s.stats.clone())).collect()
    }

    /// Stops every listener (node shutdown).
    pub(crate) fn stop_all(&mut self) {
        for slot in self.slots.drain(..) {
            slot.stop.send_replace(true);
        }
    }
}

fn is_udp(l: &config::Listener) -> bool {
    l.protocol == Protocol::Udp as i32
}

/// How connections are served: HTTP/1.1 and h2c, with explicit limits.
fn connection_builder(header_timeout_ms: u64) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Request heads over these limits get 431 from hyper before any routing.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(header_timeout_ms))
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD_BYTES);
    // Explicit HTTP/2 bounds: streams per connection, header list size, and resets a
    // client may provoke (rapid reset, CONTINUATION floods end in a GOAWAY).
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_H2_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_pending_accept_reset_streams(MAX_H2_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_H2_ERROR_RESETS);
    builder
}

/// Counts a connection as active for as long as it lives.
struct OpenConnection(Arc<ListenerStats>);

impl OpenConnection {
    fn new(stats: Arc<ListenerStats>) -> OpenConnection {
        stats.active.fetch_add(1, Ordering::Relaxed);
        OpenConnection(stats)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client of a connection: the address a trusted peer's PROXY header carries (its
/// peer's for a `LOCAL` one), or the peer for anyone else. `None`: a trusted peer sent no
/// valid header in time, and the connection is dropped.
async fn client_address(
    stream: &mut tokio::net::TcpStream,
    peer: SocketAddr,
    trusted: bool,
    timeout: Duration,
    stats: &ListenerStats,
) -> Option<SocketAddr> {
    if !trusted {
        return Some(peer);
    }
    let reason = match tokio::time::timeout(timeout, proxy_protocol::read_header(stream)).await {
        Ok(Ok(client)) => return Some(client.unwrap_or(peer)),
        Ok(Err(proxy_protocol::Invalid(reason))) => reason,
        Err(_) => "no PROXY header in time",
    };
    stats.streams.proxy_protocol_errors.fetch_add(1, Ordering::Relaxed);
    debug!(%peer, reason, "connection from a trusted peer refused");
    None
}

async fn accept_loop(
    listener: TcpListener,
    slot: u64,
    shared: Arc<Serving>,
    mut stop: watch::Receiver<bool>,
    stats: Arc<ListenerStats>,
    timeouts: Arc<Timeouts>,
    l4: Arc<ArcSwapOption<L4Listener>>,
) {
    let mut current_ms = timeouts.header_ms.load(Ordering::Relaxed);
    let mut builder = Arc::new(connection_builder(current_ms));
    loop {
        let accepted = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (mut stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let trusted = timeouts.proxy_from.load().iter().any(|net| net.contains(&peer.ip()));
        if let Some(tcp) = l4.load_full() {
            // A TCP listener: the connection is forwarded whole (layer 4).
            stats.total.fetch_add(1, Ordering::Relaxed);
            let open = OpenConnection::new(stats.clone());
            let span = info_span!("tcp", %peer);
            let (stats, stop) = (stats.clone(), stop.clone());
            let timeout = Duration::from_millis(timeouts.header_ms.load(Ordering::Relaxed));
            // A TLS listener: terminated with what the runtime current now has for it.
            let tls = shared.runtime.load().as_ref().and_then(|rt| rt.tls.get(&slot).cloned());
            tokio::spawn(
                async move {
                    let Some(client) = client_address(&mut stream, peer, trusted, timeout, &stats).await else {
                        return;
                    };
                    let accepted =
                        Accepted { peer: client, local: stream.local_addr().ok(), terminated: false, sni: None };
                    match tls {
                        None => tcp.serve(stream, accepted, stats, stop).await,
                        Some(tls) => {
                            let accept = tokio_rustls::TlsAcceptor::from(tls.config.clone()).accept(stream);
                            match tokio::time::timeout(timeout, accept).await {
                                Ok(Ok(stream)) => {
                                    stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
                                    let sni = stream.get_ref().1.server_name().map(str::to_owned);
                                    let accepted = Accepted { terminated: true, sni, ..accepted };
                                    tcp.serve(stream, accepted, stats, stop).await;
                                }
                                _ => {
                                    stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                                    debug!("tls handshake failed or timed out");
                                }
                            }
                        }
                    }
                    drop(open);
                }
                .instrument(span),
            );
            continue;
        }
        let ms = timeouts.header_ms.load(Ordering::Relaxed);
        let idle_timeout = Duration::from_millis(timeouts.idle_ms.load(Ordering::Relaxed));
        let send_timeout = Duration::from_millis(timeouts.send_ms.load(Ordering::Relaxed));
        if ms != current_ms {
            current_ms = ms;
            builder = Arc::new(connection_builder(ms));
        }
        stats.total.fetch_add(1, Ordering::Relaxed);
        let open = OpenConnection::new(stats.clone());
        let shared_conn = shared.clone();
        // TLS or not is what the runtime current now says of this slot.
        let tls = shared.runtime.load().as_ref().and_then(|rt| rt.tls.get(&slot).cloned());
        let builder = builder.clone();
        let stop = stop.clone();
        let stats = stats.clone();
        let span = info_span!("conn", %peer);
        tokio::spawn(
            async move {
                let timeout = Duration::from_millis(ms);
                let Some(client) = client_address(&mut stream, peer, trusted, timeout, &stats).await else { return };
                let conn = proxy::Connection::new(shared_conn, slot, client);
                let mut serve = Serve {
                    builder: &builder,
                    conn,
                    header_timeout: timeout,
                    idle_timeout,
                    send_timeout,
                    stop,
                    h2: false,
                };
                match tls {
                    None => serve.run(stream).await,
                    Some(tls) => {
                        let accept = tokio_rustls::TlsAcceptor::from(tls.config.clone()).accept(stream);
                        // The handshake shares the header-read deadline (slowloris guard).
                        match tokio::time::timeout(timeout, accept).await {
                            Ok(Ok(stream)) => {
                                stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
                                let session = stream.get_ref().1;
                                serve.conn.tls = Some(Arc::new(TlsInfo::of(session)));
                                serve.h2 = session.alpn_protocol() == Some(b"h2");
                                serve.run(stream).await;
                            }
                            Ok(Err(error)) => {
                                stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                                debug!(%error, "tls handshake failed");
                            }
                            Err(_) => {
                                stats.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
                                debug!("tls handshake timed out");
                            }
                        }
                    }
                }
                drop(open);
            }
            .instrument(span),
        );
    }
    debug!("accept loop stopped");
}
