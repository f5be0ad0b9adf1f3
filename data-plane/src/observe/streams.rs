//! What layer-4 (TCP) listeners report: counters per listener for `/metrics`, and one
//! access-log line per connection (per session for UDP listeners, whose other counters
//! are in `datagrams.rs`).
//!
//! The counters are bumped by the copy loop as bytes move (relaxed atomics on the
//! listener's own stats, which already live as long as its socket), so `/metrics` shows
//! a long connection's traffic while it flows, not only when it ends.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::json::push_str as json_str;

/// Why a connection was closed without reaching an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// TLS passthrough: no rule matched the SNI (or there was none) and no default cluster.
    NoRoute,
    /// The ClientHello did not arrive, or was not one, within the hello timeout.
    BadHello,
    /// The cluster had no endpoint to offer.
    NoEndpoint,
    /// The cluster's circuit breaker (`max_connections`) was full.
    Overloaded,
    /// Every endpoint tried refused or timed out.
    ConnectFailed,
}

impl Refusal {
    pub(crate) const ALL: [Refusal; 5] =
        [Refusal::NoRoute, Refusal::BadHello, Refusal::NoEndpoint, Refusal::Overloaded, Refusal::ConnectFailed];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::NoRoute => "no_route",
            Refusal::BadHello => "bad_client_hello",
            Refusal::NoEndpoint => "no_endpoint",
            Refusal::Overloaded => "overloaded",
            Refusal::ConnectFailed => "connect_failed",
        }
    }
}

/// Layer-4 counters of one listener.
#[derive(Debug, Default)]
pub(crate) struct StreamStats {
    /// Bytes read from clients, and written to them.
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Upstream connection attempts that failed (each attempt counts).
    pub(crate) connect_failures: AtomicU64,
    /// Connections from trusted peers closed for a missing or bad PROXY header (any
    /// listener protocol).
    pub(crate) proxy_protocol_errors: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl StreamStats {
    pub(crate) fn refuse(&self, why: Refusal) {
        if let Some(n) = self.refused.get(why as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn refused(&self, why: Refusal) -> u64 {
        self.refused.get(why as usize).map_or(0, |n| n.load(Ordering::Relaxed))
    }
}

/// Renders the layer-4 families for `(listener name, stats)` pairs.
pub(crate) fn render(out: &mut String, listeners: &[(String, &StreamStats)]) {
    let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP vane_l4_bytes_total Bytes proxied by TCP listeners: in from clients, out to them.");
    let _ = writeln!(out, "# TYPE vane_l4_bytes_total counter");
    for (name, s) in listeners {
        for (direction, n) in [("in", &s.bytes_in), ("out", &s.bytes_out)] {
            let _ = writeln!(
                out,
                "vane_l4_bytes_total{{listener=\"{}\",direction=\"{direction}\"}} {}",
                escape(name),
                n.load(Ordering::Relaxed)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP vane_l4_upstream_connect_failures_total Upstream connection attempts of TCP listeners that failed."
    );
    let _ = writeln!(out, "# TYPE vane_l4_upstream_connect_failures_total counter");
    for (name, s) in listeners {
        let _ = writeln!(
            out,
            "vane_l4_upstream_connect_failures_total{{listener=\"{}\"}} {}",
            escape(name),
            s.connect_failures.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP vane_proxy_protocol_errors_total Connections from trusted peers closed for a missing or bad PROXY header."
    );
    let _ = writeln!(out, "# TYPE vane_proxy_protocol_errors_total counter");
    for (name, s) in listeners {
        let _ = writeln!(
            out,
            "vane_proxy_protocol_errors_total{{listener=\"{}\"}} {}",
            escape(name),
            s.proxy_protocol_errors.load(Ordering::Relaxed)
        );
    }
    let _ =
        writeln!(out, "# HELP vane_l4_refused_total Connections TCP listeners closed without an upstream, by reason.");
    let _ = writeln!(out, "# TYPE vane_l4_refused_total counter");
    for (name, s) in listeners {
        for why in Refusal::ALL {
            let _ = writeln!(
                out,
                "vane_l4_refused_total{{listener=\"{}\",reason=\"{}\"}} {}",
                escape(name),
                why.as_str(),
                s.refused(why)
            );
        }
    }
}

/// One TCP connection (or UDP session), as logged when it ends.
#[derive(Debug)]
pub(crate) struct StreamLine {
    /// When it was accepted.
    pub(crate) time: SystemTime,
    pub(crate) client: SocketAddr,
    pub(crate) listener: Arc<str>,
    /// The SNI read for passthrough routing.
    pub(crate) sni: Option<Box<str>>,
    pub(crate) cluster: Option<Arc<str>>,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) duration: Duration,
    /// Time to connect upstream (every attempt included).
    pub(crate) connect: Option<Duration>,
    /// How it ended: `closed` (both sides finished), `idle_timeout`,
    /// `max_connection_duration`, `drained`, `error`, or a [`Refusal`]'s name; for a UDP
    /// session `idle_timeout`, `endpoint_unhealthy`, `cluster_changed` or
    /// `listener_removed`.
    pub(crate) end: &'static str,
    /// A UDP session's datagrams `(in, out)`; `None` for a TCP connection.
    pub(crate) datagrams: Option<(u64, u64)>,
}

impl StreamLine {
    fn protocol(&self) -> &'static str {
        if self.datagrams.is_some() { "UDP" } else { "TCP" }
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// One JSON object; `protocol` is `TCP` or `UDP` so readers tell these from request lines.
pub(crate) fn json(l: &StreamLine, out: &mut String) {
    let _ = write!(
        out,
        "{{\"time\":\"{}\",\"client\":\"{}\",\"protocol\":\"{}\",\"listener\":",
        humantime::format_rfc3339_millis(l.time),
        l.client,
        l.protocol()
    );
    json_str(out, &l.listener);
    out.push_str(",\"sni\":");
    match &l.sni {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
    out.push_str(",\"cluster\":");
    json_str(out, l.cluster.as_deref().unwrap_or(""));
    match l.upstream {
        Some(u) => {
            let _ = write!(out, ",\"upstream\":\"{u}\"");
        }
        None => out.push_str(",\"upstream\":null"),
    }
    let _ = write!(
        out,
        ",\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{},\"connect_ms\":",
        l.bytes_in,
        l.bytes_out,
        millis(l.duration)
    );
    match l.connect {
        Some(c) => {
            let _ = write!(out, "{}", millis(c));
        }
        None => out.push_str("null"),
    }
    if let Some((d_in, d_out)) = l.datagrams {
        let _ = write!(out, ",\"datagrams_in\":{d_in},\"datagrams_out\":{d_out}");
    }
    let _ = writeln!(out, ",\"end\":\"{}\"}}", l.end);
}

/// `client - - [time] "TCP" listener=.. sni=.. cluster=.. upstream=.. in=.. out=.. rt=.. ct=.. end=..`
/// (`"UDP"` with `datagrams=IN/OUT` before `end` for a UDP session).
pub(crate) fn text(l: &StreamLine, out: &mut String) {
    let clean = |s: &str| s.chars().map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect::<String>();
    let datagrams = l.datagrams.map_or_else(String::new, |(i, o)| format!(" datagrams={i}/{o}"));
    let _ = writeln!(
        out,
        "{} - - [{}] \"{}\" listener={} sni={} cluster={} upstream={} in={} out={} rt={:.3} ct={}{datagrams} end={}",
        l.client.ip(),
        humantime::format_rfc3339_millis(l.time),
        l.protocol(),
        l.listener,
        l.sni.as_deref().map_or_else(|| "-".to_owned(), clean),
        l.cluster.as_deref().unwrap_or("-"),
        l.upstream.map_or_else(|| "-".to_owned(), |u| u.to_string()),
        l.bytes_in,
        l.bytes_out,
        l.duration.as_secs_f64(),
        l.connect.map_or_else(|| "-".to_owned(), |d| format!("{:.3}", d.as_secs_f64())),
        l.end,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> StreamLine {
        StreamLine {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client: "192.0.2.1:5000".parse().unwrap(),
            listener: "redis".into(),
            sni: Some("db\".example".into()),
            cluster: Some("cache".into()),
            upstream: Some("127.0.0.1:6379".parse().unwrap()),
            bytes_in: 12,
            bytes_out: 34,
            duration: Duration::from_micros(2_500),
            connect: Some(Duration::from_micros(300)),
            end: "closed",
            datagrams: None,
        }
    }

    #[test]
    fn a_connection_line_holds_its_fields_in_both_formats() {
        let mut out = String::new();
        json(&line(), &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!((v["protocol"].as_str(), v["sni"].as_str()), (Some("TCP"), Some("db\".example")));
        assert_eq!((v["bytes_in"].as_u64(), v["bytes_out"].as_u64()), (Some(12), Some(34)));
        assert_eq!((v["duration_ms"].as_f64(), v["connect_ms"].as_f64()), (Some(2.5), Some(0.3)));
        assert_eq!((v["upstream"].as_str(), v["end"].as_str()), (Some("127.0.0.1:6379"), Some("closed")));
        out.clear();
        text(&line(), &mut out);
        assert_eq!(
            out,
            "192.0.2.1 - - [2023-11-14T22:13:20.123Z] \"TCP\" listener=redis sni=db\".example cluster=cache \
             upstream=127.0.0.1:6379 in=12 out=34 rt=0.003 ct=0.000 end=closed\n"
        );
    }

    #[test]
    fn a_udp_session_line_says_udp_and_counts_its_datagrams() {
        let session = StreamLine { sni: None, connect: None, end: "idle_timeout", datagrams: Some((3, 2)), ..line() };
        let mut out = String::new();
        json(&session, &mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!((v["protocol"].as_str(), v["end"].as_str()), (Some("UDP"), Some("idle_timeout")));
        assert_eq!((v["datagrams_in"].as_u64(), v["datagrams_out"].as_u64()), (Some(3), Some(2)));
        assert!(v["connect_ms"].is_null() && v["sni"].is_null(), "{v}");
        out.clear();
        text(&session, &mut out);
        assert!(out.contains("\"UDP\" listener=redis sni=- "), "{out}");
        assert!(out.ends_with(" ct=- datagrams=3/2 end=idle_timeout\n"), "{out}");
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let s = StreamStats::default();
        s.refuse(Refusal::NoRoute);
        s.refuse(Refusal::NoRoute);
        let mut out = String::new();
        render(&mut out, &[("tls-in".into(), &s)]);
        assert!(out.contains("vane_l4_refused_total{listener=\"tls-in\",reason=\"no_route\"} 2\n"), "{out}");
        assert!(out.contains("vane_l4_refused_total{listener=\"tls-in\",reason=\"connect_failed\"} 0\n"), "{out}");
    }
}
