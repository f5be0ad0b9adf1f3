//! UDP listeners: datagrams to a cluster, one session per client address.
//!
//! One task per listener reads its socket (`recv_from` into a 64 KiB buffer: no datagram
//! is truncated) and owns the session table: no lock, no other writer. A client's first
//! datagram opens a session (`session.rs`): an endpoint picked by the cluster's balancer
//! (hash policies hash on the client's address; round robin and the others pick once per
//! session, so a client stays on one endpoint for its session), an upstream socket
//! connected to it, and a task returning the endpoint's datagrams to that client from the
//! listener's socket. Later datagrams of that client go to the same socket.
//!
//! - **Idle timeout**: a session with no datagram either way for the listener's
//!   `idle_timeout` (default 60 s, Envoy's UDP proxy; nginx `stream` waits 10 min,
//!   `proxy_timeout`) ends; the table is swept a few times per timeout, so it ends at most
//!   a quarter of it (1 s at most) late. The client's next datagram opens a new session.
//! - **Bounded table**: at `max_udp_sessions` (default 10,000) a new client's datagram is
//!   dropped and counted; open sessions carry on.
//! - **Health**: unhealthy endpoints (active checks, passive ejection) are not picked for
//!   new sessions. A session whose endpoint stops being available moves on its client's
//!   next datagram when another endpoint is (Envoy's UDP proxy does the same); with none,
//!   it stays where it is. A port that answers with ICMP "port unreachable" counts as a
//!   refused connect for passive health.
//! - **Hot swap**: the compiled listener arrives on a watch channel. Sessions whose
//!   cluster did not change are untouched; when the cluster changed, a session whose
//!   endpoint is still in it carries on (re-pointed at the new cluster), the others end
//!   (`cluster_changed`). A removed listener closes its socket and every session at once:
//!   without the socket no reply could reach a client.

mod session;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};
use vane_proto::config;

use crate::observe::accesslog::Sink;
use crate::observe::datagrams::Dropped;
use crate::observe::metrics::ListenerStats;
use crate::support::duration_or;
use crate::upstream::cluster::Cluster;

use session::{BUFFER, Clock, Session, sweep_period};

/// Idle timeout of a UDP listener that sets none (Envoy's UDP proxy default).
const DEFAULT_IDLE: Duration = Duration::from_secs(60);
/// Sessions of a UDP listener that sets no `max_udp_sessions`.
const DEFAULT_MAX_SESSIONS: usize = 10_000;

/// A compiled UDP listener.
#[derive(Debug)]
pub(crate) struct UdpListener {
    name: Arc<str>,
    cluster: Option<Arc<Cluster>>,
    idle: Duration,
    max_sessions: usize,
    access_log: Option<Arc<Sink>>,
}

impl UdpListener {
    /// Compiles a validated UDP listener against the snapshot's clusters.
    pub(crate) fn compile(
        spec: &config::Listener,
        clusters: &HashMap<Arc<str>, Arc<Cluster>>,
        access_log: Option<Arc<Sink>>,
    ) -> UdpListener {
        let max = usize::try_from(spec.max_udp_sessions).unwrap_or(DEFAULT_MAX_SESSIONS);
        UdpListener {
            name: spec.name.as_str().into(),
            cluster: clusters.get(spec.cluster.as_str()).cloned(),
            idle: duration_or(spec.idle_timeout.as_ref(), DEFAULT_IDLE),
            max_sessions: if max == 0 { DEFAULT_MAX_SESSIONS } else { max },
            access_log,
        }
    }

    fn finish(&self, session: &Session, end: &'static str) {
        debug!(upstream = %session.endpoint(), end, "udp session ended");
        if let Some(log) = &self.access_log {
            log.send_stream(session.line(self.name.clone(), end));
        }
    }
}

/// Datagrams read from the listener's socket per wake before the loop looks at its other
/// events (stop, swap, sweep): bounded work per turn, fewer polls per datagram.
const RECV_BATCH: usize = 64;

/// The session table of one listener, and what its sessions need. Keys are client
/// addresses, which clients choose: foldhash with a per-table random seed.
struct Sessions {
    table: HashMap<SocketAddr, Session, foldhash::fast::RandomState>,
    socket: Arc<UdpSocket>,
    clock: Clock,
    stats: Arc<ListenerStats>,
}

impl Sessions {
    /// Forwards one client datagram, opening (or moving) its session as needed.
    fn forward(&mut self, listener: &UdpListener, client: SocketAddr, datagram: &[u8]) {
        let stats = &self.stats;
        stats.datagrams.datagrams_in.fetch_add(1, Ordering::Relaxed);
        stats.streams.bytes_in.fetch_add(datagram.len() as u64, Ordering::Relaxed);
        let Some(cluster) = &listener.cluster else {
            stats.datagrams.drop_one(Dropped::NoEndpoint);
            return;
        };
        if let Some(session) = self.table.get_mut(&client) {
            // Only when another endpoint is up: no socket churn while every one is down.
            if let Some(down) = session.endpoint_down()
                && (0..cluster.endpoint_count()).any(|i| i != down && cluster.endpoint_available(i))
                && let Ok(moved) = Session::open(cluster, client, Some(down), &self.socket, self.clock, stats)
                && moved.endpoint() != session.endpoint()
                && moved.endpoint_down().is_none()
            {
                stats.datagrams.sessions_total.fetch_add(1, Ordering::Relaxed);
                let old = std::mem::replace(session, moved);
                listener.finish(&old, "endpoint_unhealthy");
            }
            session.send(datagram, self.clock);
            return;
        }
        if self.table.len() >= listener.max_sessions {
            stats.datagrams.drop_one(Dropped::SessionTableFull);
            return;
        }
        match Session::open(cluster, client, None, &self.socket, self.clock, stats) {
            Ok(mut session) => {
                stats.datagrams.sessions_total.fetch_add(1, Ordering::Relaxed);
                session.send(datagram, self.clock);
                self.table.insert(client, session);
            }
            Err(why) => stats.datagrams.drop_one(why),
        }
    }

    /// Ends the sessions idle for the listener's idle timeout.
    fn expire(&mut self, listener: &UdpListener) {
        let idle_ms = u64::try_from(listener.idle.as_millis()).unwrap_or(u64::MAX);
        let now = self.clock.now_ms();
        self.table.retain(|_, session| {
            let live = now.saturating_sub(session.last_ms()) < idle_ms;
            if !live {
                listener.finish(session, "idle_timeout");
            }
            live
        });
    }

    /// A new compiled listener: sessions follow its cluster or end.
    fn swap(&mut self, listener: &UdpListener) {
        self.table.retain(|_, session| {
            let kept = session.follow(listener.cluster.as_ref());
            if !kept {
                listener.finish(session, "cluster_changed");
            }
            kept
        });
    }

    /// The listener is gone: every session ends.
    fn close(&mut self, listener: &UdpListener) {
        for (_, session) in self.table.drain() {
            listener.finish(&session, "listener_removed");
        }
    }
}

/// Serves a UDP listener's socket until `stop` turns true (or its sender is dropped); the
/// compiled listener current is on `config`.
pub(crate) async fn serve(
    socket: UdpSocket,
    mut config: watch::Receiver<Arc<UdpListener>>,
    stats: Arc<ListenerStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut listener = config.borrow_and_update().clone();
    let mut sessions =
        Sessions { table: HashMap::default(), socket: Arc::new(socket), clock: Clock(Instant::now()), stats };
    let mut buf = vec![0u8; BUFFER].into_boxed_slice();
    let mut sweep = sweeper(listener.idle);
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            changed = config.changed() => {
                if changed.is_err() {
                    break;
                }
                let idle = listener.idle;
                listener = config.borrow_and_update().clone();
                sessions.swap(&listener);
                if listener.idle != idle {
                    sweep = sweeper(listener.idle);
                }
            }
            _ = sweep.tick() => sessions.expire(&listener),
            received = sessions.socket.recv_from(&mut buf) => match received {
                Ok((n, client)) => {
                    sessions.forward(&listener, client, buf.get(..n).unwrap_or_default());
                    // What else is waiting, without going back through the select.
                    for _ in 1..RECV_BATCH {
                        let Ok((n, client)) = sessions.socket.try_recv_from(&mut buf) else { break };
                        sessions.forward(&listener, client, buf.get(..n).unwrap_or_default());
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                    // An ICMP error for a reply sent to a client that went away.
                    debug!(%error, "udp listener socket");
                }
                Err(error) => {
                    // Out of memory and the like: back off instead of spinning.
                    warn!(%error, "udp receive failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    sessions.close(&listener);
    debug!("udp listener stopped");
}

/// Resolves once `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn sweeper(idle: Duration) -> tokio::time::Interval {
    let period = sweep_period(idle);
    let mut sweep = tokio::time::interval_at(Instant::now() + period, period);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    sweep
}
