//! One client's session on a UDP listener: an upstream socket connected to the endpoint
//! the cluster's balancer picked for that client, and a task that returns what the
//! endpoint sends back to the client from the listener's socket.
//!
//! The listener's task owns the session (its table entry) and writes the client's
//! datagrams to the upstream socket itself; the reply task only reads. Dropping the
//! session aborts the reply task and closes the socket. The endpoint is shared with the
//! reply task through an `ArcSwap` so that a swap can re-point a session at the new
//! cluster object (same endpoint address) without leaving the old cluster, and its health
//! checker, alive.
//!
//! Datagrams are written with plain non-blocking `send` calls on the sockets (a full
//! buffer drops the datagram and counts it, as the network would drop it), never awaited:
//! the listener's task serves every client and must not wait on one.
//!
//! Replies are read into one 64 KiB buffer per worker thread (a datagram is at most 65,507
//! bytes over IPv4: nothing is ever truncated), borrowed only between two awaits, so a
//! session costs no buffer of its own while it waits.

use std::cell::RefCell;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span};

use crate::observe::datagrams::Dropped;
use crate::observe::metrics::ListenerStats;
use crate::observe::streams::StreamLine;
use crate::upstream::balancer::{PickContext, Picked};
use crate::upstream::cluster::{Cluster, Tried};
use crate::upstream::health::Outcome;

/// Bytes read per datagram: more than the largest UDP payload.
pub(super) const BUFFER: usize = 64 * 1024;
/// Replies forwarded per wake of a reply task before it yields (bounded work per turn).
const REPLY_BATCH: usize = 64;

thread_local! {
    static REPLY_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; BUFFER].into_boxed_slice());
}

/// What a session and its reply task share.
#[derive(Debug)]
struct Shared {
    /// The cluster and endpoint index now (a swap may re-point both).
    cluster: ArcSwap<Cluster>,
    index: AtomicUsize,
    /// Last datagram either way, in ms after the listener's clock base.
    last_ms: AtomicU64,
    bytes_out: AtomicU64,
    datagrams_out: AtomicU64,
}

/// The listener's clock: activity stamps are ms after it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock(pub(super) Instant);

impl Clock {
    pub(super) fn now_ms(self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A client's session, owned by the listener's table.
#[derive(Debug)]
pub(super) struct Session {
    client: SocketAddr,
    upstream: Arc<UdpSocket>,
    addr: SocketAddr,
    shared: Arc<Shared>,
    _picked: Picked,
    replies: JoinHandle<()>,
    stats: Arc<ListenerStats>,
    time: SystemTime,
    opened: Instant,
    bytes_in: u64,
    datagrams_in: u64,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.replies.abort();
        self.stats.datagrams.sessions_active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Session {
    /// Opens a session for `client` with an endpoint of `cluster` (not `avoid`, when
    /// another is available), its replies sent from `listener`.
    pub(super) fn open(
        cluster: &Arc<Cluster>,
        client: SocketAddr,
        avoid: Option<usize>,
        listener: &Arc<UdpSocket>,
        clock: Clock,
        stats: &Arc<ListenerStats>,
    ) -> Result<Session, Dropped> {
        let headers = http::HeaderMap::new();
        let ctx = PickContext { client: client.ip(), path: "", headers: &headers };
        let mut tried = Tried::default();
        if let Some(index) = avoid {
            tried.add(index);
        }
        let (picked, _) = cluster.pick_avoiding(Some(&ctx), &tried).ok_or(Dropped::NoEndpoint)?;
        let addr = cluster.endpoint_addr(picked.index).ok_or(Dropped::NoEndpoint)?;
        let upstream = Arc::new(connect(addr).map_err(|error| {
            debug!(%addr, %error, "upstream udp socket did not open");
            Dropped::NoEndpoint
        })?);
        let shared = Arc::new(Shared {
            cluster: ArcSwap::new(cluster.clone()),
            index: AtomicUsize::new(picked.index),
            last_ms: AtomicU64::new(clock.now_ms()),
            bytes_out: AtomicU64::new(0),
            datagrams_out: AtomicU64::new(0),
        });
        let replies = tokio::spawn(
            replies(upstream.clone(), listener.clone(), client, shared.clone(), clock, stats.clone())
                .instrument(debug_span!("udp_session", %client, upstream = %addr)),
        );
        stats.datagrams.sessions_active.fetch_add(1, Ordering::Relaxed);
        Ok(Session {
            client,
            upstream,
            addr,
            shared,
            _picked: picked,
            replies,
            stats: stats.clone(),
            time: SystemTime::now(),
            opened: Instant::now(),
            bytes_in: 0,
            datagrams_in: 0,
        })
    }

    /// The endpoint this session sends to.
    pub(super) fn endpoint(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the session's endpoint may still take traffic (active and passive health);
    /// its index, for the pick that moves it when not.
    pub(super) fn endpoint_down(&self) -> Option<usize> {
        let index = self.shared.index.load(Ordering::Relaxed);
        (!self.shared.cluster.load().endpoint_available(index)).then_some(index)
    }

    /// Follows a swap: `true` while the listener's new cluster still has this session's
    /// endpoint (the session is re-pointed at it), `false` when the session must end.
    pub(super) fn follow(&self, cluster: Option<&Arc<Cluster>>) -> bool {
        let Some(cluster) = cluster else { return false };
        if Arc::ptr_eq(&self.shared.cluster.load(), cluster) {
            return true;
        }
        let Some(index) = cluster.endpoint_index(self.addr) else { return false };
        self.shared.cluster.store(cluster.clone());
        self.shared.index.store(index, Ordering::Relaxed);
        true
    }

    /// When the last datagram moved either way (ms on the listener's clock).
    pub(super) fn last_ms(&self) -> u64 {
        self.shared.last_ms.load(Ordering::Relaxed)
    }

    /// Sends a client's datagram to the endpoint. A send that fails is counted and the
    /// datagram is lost, as on the wire; a refused port tells passive health.
    pub(super) fn send(&mut self, datagram: &[u8], clock: Clock) {
        self.bytes_in += datagram.len() as u64;
        self.datagrams_in += 1;
        self.shared.last_ms.store(clock.now_ms(), Ordering::Relaxed);
        // Straight to the socket: tokio's `try_send` answers WouldBlock until the runtime
        // has seen the new socket writable, which would drop a session's first datagram.
        if let Err(error) = socket2::SockRef::from(&*self.upstream).send(datagram) {
            self.upstream_error(&error);
        }
    }

    fn upstream_error(&self, error: &io::Error) {
        upstream_error(&self.shared, &self.stats, error);
    }

    /// The access-log line of the session, ended for `end`.
    pub(super) fn line(&self, listener: Arc<str>, end: &'static str) -> StreamLine {
        let (bytes_out, datagrams_out) =
            (self.shared.bytes_out.load(Ordering::Relaxed), self.shared.datagrams_out.load(Ordering::Relaxed));
        StreamLine {
            time: self.time,
            client: self.client,
            listener,
            sni: None,
            cluster: Some(self.shared.cluster.load().name.clone()),
            upstream: Some(self.addr),
            bytes_in: self.bytes_in,
            bytes_out,
            duration: self.opened.elapsed(),
            connect: None,
            end,
            datagrams: Some((self.datagrams_in, datagrams_out)),
        }
    }
}

/// A socket of the endpoint's family on an ephemeral port, connected to it (the kernel
/// then drops datagrams from anyone else, and reports a refused port).
fn connect(addr: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr =
        if addr.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = std::net::UdpSocket::bind(local)?;
    socket.connect(addr)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Counts a failed upstream send; a refused port (ICMP port unreachable, reported on the
/// connected socket) counts for passive health like a refused TCP connect.
fn upstream_error(shared: &Shared, stats: &ListenerStats, error: &io::Error) {
    stats.datagrams.upstream_send_errors.fetch_add(1, Ordering::Relaxed);
    if error.kind() == io::ErrorKind::ConnectionRefused {
        shared.cluster.load().report(shared.index.load(Ordering::Relaxed), Outcome::Unreachable);
    }
    debug!(%error, "udp send to the upstream failed");
}

/// Returns the endpoint's datagrams to `client` until the session is dropped (which
/// aborts this task).
async fn replies(
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    shared: Arc<Shared>,
    clock: Clock,
    stats: Arc<ListenerStats>,
) {
    let mut answered = false;
    loop {
        if let Err(error) = upstream.readable().await {
            debug!(%error, "upstream udp socket failed");
            return;
        }
        let forwarded = forward_replies(&upstream, &listener, client, &shared, &stats);
        if forwarded > 0 {
            shared.last_ms.store(clock.now_ms(), Ordering::Relaxed);
            if !answered {
                // The endpoint answers: passive health hears it once per session.
                answered = true;
                shared.cluster.load().report(shared.index.load(Ordering::Relaxed), Outcome::Ok);
            }
        }
    }
}

/// Forwards the replies waiting on `upstream` (at most [`REPLY_BATCH`]); how many.
fn forward_replies(
    upstream: &UdpSocket,
    listener: &UdpSocket,
    client: SocketAddr,
    shared: &Shared,
    stats: &ListenerStats,
) -> usize {
    REPLY_BUFFER.with_borrow_mut(|buf| {
        let mut forwarded = 0;
        for _ in 0..REPLY_BATCH {
            let n = match upstream.try_recv(buf) {
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    upstream_error(shared, stats, &error);
                    continue;
                }
            };
            let datagram = buf.get(..n).unwrap_or_default();
            match socket2::SockRef::from(listener).send_to(datagram, &client.into()) {
                Ok(_) => {
                    forwarded += 1;
                    shared.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    shared.datagrams_out.fetch_add(1, Ordering::Relaxed);
                    stats.streams.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    stats.datagrams.datagrams_out.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    debug!(%client, %error, "udp reply to the client dropped");
                    stats.datagrams.drop_one(Dropped::ClientSendError);
                }
            }
        }
        forwarded
    })
}

/// How often the listener looks for sessions past their idle timeout: a quarter of it,
/// between 10 ms and 1 s (a session ends at most that late).
pub(super) fn sweep_period(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}
