//! What UDP listeners report on `/metrics`: datagrams both ways, sessions open and
//! opened, datagrams dropped by reason, and upstream sends that failed. Bytes go to the
//! layer-4 byte counters of `streams.rs` (`vane_l4_bytes_total`), shared with TCP.
//!
//! Bumped with relaxed atomics as datagrams move (the listener's own stats live as long
//! as its socket); nothing is looked up per datagram.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a datagram was not forwarded (other than a failed upstream send, counted apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// A new client's datagram met a full session table (`max_udp_sessions`).
    SessionTableFull,
    /// The cluster had no endpoint to offer a new session (or its socket did not open).
    NoEndpoint,
    /// A reply could not be sent to the client from the listener's socket.
    ClientSendError,
}

impl Dropped {
    pub(crate) const ALL: [Dropped; 3] = [Dropped::SessionTableFull, Dropped::NoEndpoint, Dropped::ClientSendError];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dropped::SessionTableFull => "session_table_full",
            Dropped::NoEndpoint => "no_endpoint",
            Dropped::ClientSendError => "client_send_error",
        }
    }
}

/// UDP counters of one listener.
#[derive(Debug, Default)]
pub(crate) struct DatagramStats {
    /// Datagrams read from clients, and sent to them.
    pub(crate) datagrams_in: AtomicU64,
    pub(crate) datagrams_out: AtomicU64,
    /// Sessions open now (a gauge), and opened since the listener started.
    pub(crate) sessions_active: AtomicU64,
    pub(crate) sessions_total: AtomicU64,
    /// Datagrams to an upstream whose send failed (a refused port reported by ICMP, a
    /// full socket buffer).
    pub(crate) upstream_send_errors: AtomicU64,
    dropped: [AtomicU64; Dropped::ALL.len()],
}

impl DatagramStats {
    pub(crate) fn drop_one(&self, why: Dropped) {
        if let Some(n) = self.dropped.get(why as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn dropped(&self, why: Dropped) -> u64 {
        self.dropped.get(why as usize).map_or(0, |n| n.load(Ordering::Relaxed))
    }
}

/// Renders the UDP families for `(listener name, stats)` pairs.
pub(crate) fn render(out: &mut String, listeners: &[(String, &DatagramStats)]) {
    let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    head(
        out,
        "vane_l4_datagrams_total",
        "counter",
        "Datagrams proxied by UDP listeners: in from clients, out to them.",
    );
    for (name, s) in listeners {
        for (direction, n) in [("in", &s.datagrams_in), ("out", &s.datagrams_out)] {
            let _ = writeln!(
                out,
                "vane_l4_datagrams_total{{listener=\"{}\",direction=\"{direction}\"}} {}",
                escape(name),
                n.load(Ordering::Relaxed)
            );
        }
    }
    type Field = fn(&DatagramStats) -> &AtomicU64;
    let single: [(&str, &str, &str, Field); 3] = [
        ("vane_l4_udp_sessions_active", "gauge", "Client sessions open on UDP listeners.", |s| &s.sessions_active),
        ("vane_l4_udp_sessions_total", "counter", "Client sessions UDP listeners opened.", |s| &s.sessions_total),
        (
            "vane_l4_udp_upstream_send_errors_total",
            "counter",
            "Datagrams UDP listeners failed to send upstream.",
            |s| &s.upstream_send_errors,
        ),
    ];
    for (family, kind, help, field) in single {
        head(out, family, kind, help);
        for (name, s) in listeners {
            let _ = writeln!(out, "{family}{{listener=\"{}\"}} {}", escape(name), field(s).load(Ordering::Relaxed));
        }
    }
    head(
        out,
        "vane_l4_udp_datagrams_dropped_total",
        "counter",
        "Datagrams from clients or upstreams dropped, by reason.",
    );
    for (name, s) in listeners {
        for why in Dropped::ALL {
            let _ = writeln!(
                out,
                "vane_l4_udp_datagrams_dropped_total{{listener=\"{}\",reason=\"{}\"}} {}",
                escape(name),
                why.as_str(),
                s.dropped(why)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_rendered_per_listener_with_drops_by_reason() {
        let s = DatagramStats::default();
        s.datagrams_in.fetch_add(3, Ordering::Relaxed);
        s.sessions_active.fetch_add(2, Ordering::Relaxed);
        s.drop_one(Dropped::SessionTableFull);
        s.drop_one(Dropped::SessionTableFull);
        let mut out = String::new();
        render(&mut out, &[("dns".into(), &s)]);
        for line in [
            "vane_l4_datagrams_total{listener=\"dns\",direction=\"in\"} 3\n",
            "vane_l4_datagrams_total{listener=\"dns\",direction=\"out\"} 0\n",
            "# TYPE vane_l4_udp_sessions_active gauge\n",
            "vane_l4_udp_sessions_active{listener=\"dns\"} 2\n",
            "vane_l4_udp_sessions_total{listener=\"dns\"} 0\n",
            "vane_l4_udp_upstream_send_errors_total{listener=\"dns\"} 0\n",
            "vane_l4_udp_datagrams_dropped_total{listener=\"dns\",reason=\"session_table_full\"} 2\n",
            "vane_l4_udp_datagrams_dropped_total{listener=\"dns\",reason=\"client_send_error\"} 0\n",
        ] {
            assert!(out.contains(line), "{line} in\n{out}");
        }
    }
}
