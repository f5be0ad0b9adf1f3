//! Node metrics in the Prometheus text format, served on the admin endpoint.
//!
//! Written here rather than with `prometheus-client`: that crate resolves a label set
//! through a lock and a hash map each time a sample is recorded (or needs one handle per
//! label combination held up front), while the request path here only does atomic adds on
//! counters it already holds. Handles are resolved once per (listener, route, cluster)
//! when a runtime is compiled; the per-request storage (statuses, methods, histograms,
//! bytes) is allocated on a route's first request, so a config of 100k idle routes costs
//! a pointer each. The registry carries a handle across swaps while its key is still in
//! use, so counters keep counting through config changes. Every label value comes from
//! config or from a fixed set (status codes 100-599, ten method names), never from
//! request data.

use std::collections::HashMap;
use std::fmt::Write as _;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
pub(crate) use vane_proto::prom::{Histogram, escape, header, single};

/// Status codes 100..=599 each get a slot.
const STATUS_SLOTS: usize = 500;
/// Methods counted by name; anything else is `OTHER`.
const METHODS: [&str; 10] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER"];
/// Index of `OTHER` in [`METHODS`].
pub(crate) const METHOD_OTHER: usize = METHODS.len() - 1;
/// Index of a method in [`METHODS`].
pub(crate) fn method_index(method: &http::Method) -> usize {
    METHODS[..METHODS.len() - 1].iter().position(|m| *m == method.as_str()).unwrap_or(METHODS.len() - 1)
}

/// What one finished request adds to its route's metrics.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) status: u16,
    pub(crate) method: usize,
    pub(crate) total: Duration,
    pub(crate) upstream: Option<Duration>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
}

#[derive(Debug)]
struct Live {
    by_status: Box<[AtomicU64]>,
    by_method: [AtomicU64; METHODS.len()],
    duration: Histogram,
    upstream: Histogram,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    /// Request bodies that stopped arriving (the client's fault, whatever was answered).
    body_timeouts: AtomicU64,
}

/// The metrics of one (listener, route, cluster).
#[derive(Debug, Default)]
pub(crate) struct RouteStats {
    live: OnceLock<Box<Live>>,
}

impl RouteStats {
    fn live(&self) -> &Live {
        self.live.get_or_init(|| {
            Box::new(Live {
                by_status: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
                by_method: Default::default(),
                duration: Histogram::default(),
                upstream: Histogram::default(),
                bytes_in: AtomicU64::new(0),
                bytes_out: AtomicU64::new(0),
                body_timeouts: AtomicU64::new(0),
            })
        })
    }

    /// Counts a request body that stopped arriving (the route's `request_body_timeout`).
    pub(crate) fn count_body_timeout(&self) {
        self.live().body_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record(&self, o: &Outcome) {
        let live = self.live();
        let index = usize::from(o.status.saturating_sub(100)).min(STATUS_SLOTS - 1);
        if let Some(slot) = live.by_status.get(index) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(slot) = live.by_method.get(o.method) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        live.duration.record(o.total);
        if let Some(u) = o.upstream {
            live.upstream.record(u);
        }
        live.bytes_in.fetch_add(o.bytes_in, Ordering::Relaxed);
        live.bytes_out.fetch_add(o.bytes_out, Ordering::Relaxed);
    }
}

/// Upstream failures of one cluster.
#[derive(Debug, Default)]
pub(crate) struct ClusterStats {
    pub(crate) connect_failures: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) retry_budget_exhausted: AtomicU64,
    /// Requests the circuit breaker refused.
    pub(crate) overloaded: AtomicU64,
    /// Requests waiting for a connection slot now (a gauge).
    pub(crate) pending: AtomicU64,
    /// Answers refused or cut at their route's `max_response_bytes`.
    pub(crate) response_too_large: AtomicU64,
}

/// Connections of one listener.
#[derive(Debug, Default)]
pub(crate) struct ListenerStats {
    pub(crate) active: AtomicU64,
    pub(crate) total: AtomicU64,
    /// TLS handshakes completed, and failed or timed out (HTTPS listeners).
    pub(crate) tls_handshakes: AtomicU64,
    pub(crate) tls_handshake_failures: AtomicU64,
    /// Bytes, connect failures and refusals of TCP listeners (bytes of UDP ones too).
    pub(crate) streams: super::streams::StreamStats,
    /// Datagrams, sessions and drops of UDP listeners.
    pub(crate) datagrams: super::datagrams::DatagramStats,
}

/// `(listener, route, cluster)`; route and cluster are empty for requests no route took.
pub(crate) type Key = (Arc<str>, Arc<str>, Arc<str>);

/// The handles one runtime uses.
#[derive(Debug, Default)]
struct Handles {
    routes: HashMap<Key, Arc<RouteStats>>,
    clusters: HashMap<Arc<str>, Arc<ClusterStats>>,
    /// Requests cancelled by their client, per listener.
    cancelled: HashMap<Arc<str>, Arc<AtomicU64>>,
}

/// All live metrics handles of a node, plus node-wide counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    live: Mutex<Handles>,
    pub(crate) nacks: AtomicU64,
}

/// Resolves handles for one runtime being compiled.
#[derive(Debug)]
pub(crate) struct MetricsBuilder<'a> {
    previous: &'a Handles,
    next: Handles,
}

impl MetricsBuilder<'_> {
    pub(crate) fn route(&mut self, listener: &str, route: &str, cluster: &str) -> Arc<RouteStats> {
        let key: Key = (listener.into(), route.into(), cluster.into());
        if let Some(c) = self.next.routes.get(&key) {
            return c.clone();
        }
        let c = self.previous.routes.get(&key).cloned().unwrap_or_default();
        self.next.routes.insert(key, c.clone());
        c
    }

    /// The counter of requests their client cancelled before an answer, on `listener`.
    pub(crate) fn cancelled(&mut self, listener: &str) -> Arc<AtomicU64> {
        if let Some(c) = self.next.cancelled.get(listener) {
            return c.clone();
        }
        let c = self.previous.cancelled.get(listener).cloned().unwrap_or_default();
        self.next.cancelled.insert(listener.into(), c.clone());
        c
    }

    pub(crate) fn cluster(&mut self, name: &str) -> Arc<ClusterStats> {
        if let Some(c) = self.next.clusters.get(name) {
            return c.clone();
        }
        let c = self.previous.clusters.get(name).cloned().unwrap_or_default();
        self.next.clusters.insert(name.into(), c.clone());
        c
    }
}

impl Metrics {
    /// Runs `build` with a builder lending the current handles, then keeps only the
    /// handles the new runtime uses.
    pub(crate) fn rebuild<R>(&self, build: impl FnOnce(&mut MetricsBuilder<'_>) -> R) -> R {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut builder = MetricsBuilder { previous: &live, next: Handles::default() };
        let result = build(&mut builder);
        let next = builder.next;
        *live = next;
        result
    }

    /// Request, route and cluster families.
    pub(crate) fn render(&self, out: &mut String) {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<&Key> = live.routes.keys().collect();
        keys.sort();
        let active: Vec<(String, &Live)> = keys
            .iter()
            .filter_map(|key| {
                let stats = live.routes.get(*key)?.live.get()?;
                let (l, r, c) = key;
                Some((
                    format!("listener=\"{}\",route=\"{}\",cluster=\"{}\"", escape(l), escape(r), escape(c)),
                    &**stats,
                ))
            })
            .collect();

        header(
            out,
            "vane_http_requests_total",
            "counter",
            "HTTP requests answered, by listener, route, cluster and status.",
        );
        for (labels, s) in &active {
            for (i, n) in s.by_status.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(out, "vane_http_requests_total{{{labels},status=\"{}\"}} {n}", i + 100);
                }
            }
        }
        header(out, "vane_http_requests_by_method_total", "counter", "HTTP requests answered, by method.");
        for (labels, s) in &active {
            for (m, n) in METHODS.iter().zip(&s.by_method) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(out, "vane_http_requests_by_method_total{{{labels},method=\"{m}\"}} {n}");
                }
            }
        }
        header(out, "vane_http_request_duration_seconds", "histogram", "Time from request received to response end.");
        for (labels, s) in &active {
            s.duration.render(out, "vane_http_request_duration_seconds", labels);
        }
        header(
            out,
            "vane_http_upstream_duration_seconds",
            "histogram",
            "Time from sending upstream to response headers.",
        );
        for (labels, s) in &active {
            s.upstream.render(out, "vane_http_upstream_duration_seconds", labels);
        }
        header(out, "vane_http_request_bytes_total", "counter", "Request body bytes received from clients.");
        for (labels, s) in &active {
            let _ = writeln!(out, "vane_http_request_bytes_total{{{labels}}} {}", s.bytes_in.load(Ordering::Relaxed));
        }
        header(out, "vane_http_response_bytes_total", "counter", "Response body bytes sent to clients.");
        for (labels, s) in &active {
            let _ = writeln!(out, "vane_http_response_bytes_total{{{labels}}} {}", s.bytes_out.load(Ordering::Relaxed));
        }
        // Apart from the status (a 408 when no answer had started): a body that stalls
        // after the upstream began answering ends with the upstream's status.
        header(
            out,
            "vane_http_request_body_timeouts_total",
            "counter",
            "Request bodies that stopped arriving for the route's request_body_timeout (the client's fault).",
        );
        for (labels, s) in &active {
            let n = s.body_timeouts.load(Ordering::Relaxed);
            let _ = writeln!(out, "vane_http_request_body_timeouts_total{{{labels}}} {n}");
        }

        // A separate family rather than a status (nginx logs 499): a cancelled request was
        // sent no answer, and `vane_http_requests_total` counts answers; a client's burst
        // of resets then moves neither the 4xx share nor `vane top`'s rates.
        header(
            out,
            "vane_http_requests_cancelled_total",
            "counter",
            "HTTP requests their client cancelled before an answer (HTTP/2 stream reset, connection closed).",
        );
        let mut cancelled: Vec<(&Arc<str>, &Arc<AtomicU64>)> = live.cancelled.iter().collect();
        cancelled.sort_by(|a, b| a.0.cmp(b.0));
        for (listener, n) in cancelled {
            let _ = writeln!(
                out,
                "vane_http_requests_cancelled_total{{listener=\"{}\"}} {}",
                escape(listener),
                n.load(Ordering::Relaxed)
            );
        }

        let mut clusters: Vec<(&Arc<str>, &Arc<ClusterStats>)> = live.clusters.iter().collect();
        clusters.sort_by(|a, b| a.0.cmp(b.0));
        for (name, help, get) in [
            ("vane_upstream_connect_failures_total", "Failed connections to upstream endpoints.", 0),
            ("vane_upstream_timeouts_total", "Requests whose upstream did not answer in time.", 1),
            ("vane_upstream_errors_total", "Requests failed by the upstream (reset, protocol error).", 2),
            ("vane_upstream_retries_total", "Retries sent.", 3),
            ("vane_upstream_retry_budget_exhausted_total", "Retries the budget refused.", 4),
            ("vane_upstream_overloaded_total", "Requests the circuit breaker refused with 503.", 5),
            ("vane_upstream_pending_requests", "Requests waiting for a connection slot.", 6),
            (
                "vane_upstream_response_too_large_total",
                "Answers over their route's max_response_bytes: refused (502) or cut as they streamed.",
                7,
            ),
        ] {
            header(out, name, if get == 6 { "gauge" } else { "counter" }, help);
            for (cluster, stats) in &clusters {
                let counter = match get {
                    0 => &stats.connect_failures,
                    1 => &stats.timeouts,
                    2 => &stats.errors,
                    3 => &stats.retries,
                    4 => &stats.retry_budget_exhausted,
                    5 => &stats.overloaded,
                    6 => &stats.pending,
                    _ => &stats.response_too_large,
                };
                let _ = writeln!(out, "{name}{{cluster=\"{}\"}} {}", escape(cluster), counter.load(Ordering::Relaxed));
            }
        }
    }
}

/// Renders the listener families.
pub(crate) fn render_listeners(out: &mut String, listeners: &[(String, Arc<ListenerStats>)]) {
    header(out, "vane_downstream_connections_active", "gauge", "Open client connections.");
    for (name, s) in listeners {
        let _ = writeln!(
            out,
            "vane_downstream_connections_active{{listener=\"{}\"}} {}",
            escape(name),
            s.active.load(Ordering::Relaxed)
        );
    }
    header(out, "vane_downstream_connections_total", "counter", "Client connections accepted.");
    for (name, s) in listeners {
        let _ = writeln!(
            out,
            "vane_downstream_connections_total{{listener=\"{}\"}} {}",
            escape(name),
            s.total.load(Ordering::Relaxed)
        );
    }
    header(out, "vane_tls_handshakes_total", "counter", "TLS handshakes on HTTPS listeners, by result.");
    for (name, s) in listeners {
        for (result, n) in [("ok", &s.tls_handshakes), ("failed", &s.tls_handshake_failures)] {
            let _ = writeln!(
                out,
                "vane_tls_handshakes_total{{listener=\"{}\",result=\"{result}\"}} {}",
                escape(name),
                n.load(Ordering::Relaxed)
            );
        }
    }
    let streams: Vec<(String, &super::streams::StreamStats)> =
        listeners.iter().map(|(name, s)| (name.clone(), &s.streams)).collect();
    super::streams::render(out, &streams);
    let datagrams: Vec<(String, &super::datagrams::DatagramStats)> =
        listeners.iter().map(|(name, s)| (name.clone(), &s.datagrams)).collect();
    super::datagrams::render(out, &datagrams);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: u16) -> Outcome {
        Outcome {
            status,
            method: method_index(&http::Method::GET),
            total: Duration::from_millis(3),
            upstream: Some(Duration::from_millis(2)),
            bytes_in: 0,
            bytes_out: 10,
        }
    }

    #[test]
    fn counters_survive_a_rebuild_that_keeps_their_key_and_go_with_it_otherwise() {
        let metrics = Metrics::default();
        let old = metrics.rebuild(|b| {
            b.route("web", "api", "echo").record(&outcome(200));
            b.route("web", "old", "echo")
        });
        old.record(&outcome(404));
        let kept = metrics.rebuild(|b| b.route("web", "api", "echo"));
        kept.record(&outcome(200));
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(
            text.contains(
                "vane_http_requests_total{listener=\"web\",route=\"api\",cluster=\"echo\",status=\"200\"} 2\n"
            ),
            "{text}"
        );
        assert!(text.contains("vane_http_request_duration_seconds_bucket{listener=\"web\",route=\"api\",cluster=\"echo\",le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("vane_http_request_duration_seconds_bucket{listener=\"web\",route=\"api\",cluster=\"echo\",le=\"0.0025\"} 0\n"), "{text}");
        assert!(
            text.contains("vane_http_response_bytes_total{listener=\"web\",route=\"api\",cluster=\"echo\"} 20\n"),
            "{text}"
        );
        assert!(!text.contains("route=\"old\""), "{text}");
    }

    #[test]
    fn unknown_methods_count_as_other() {
        assert_eq!(METHODS[method_index(&http::Method::from_bytes(b"PURGE").unwrap())], "OTHER");
        assert_eq!(METHODS[method_index(&http::Method::DELETE)], "DELETE");
    }
}
