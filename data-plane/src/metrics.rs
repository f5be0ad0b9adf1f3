//! Request counters, exposed in Prometheus text format on the admin endpoint as
//! `vane_http_requests_total{listener, route, cluster, status}`.
//!
//! Handles are resolved when a runtime is compiled, one per (listener, route, cluster),
//! so the request path only does an atomic add. The registry carries a handle across
//! swaps while its key is still in use, so counters keep counting through config
//! changes; keys no longer used are dropped with the runtime that used them.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Status codes 100..=599 each get a slot.
const STATUS_SLOTS: usize = 500;

/// The counters of one (listener, route, cluster); per status code, allocated on first use
/// so that many idle routes cost a few words each.
#[derive(Debug, Default)]
pub(crate) struct RequestCounters {
    by_status: OnceLock<Box<[AtomicU64]>>,
}

impl RequestCounters {
    pub(crate) fn record(&self, status: u16) {
        let slots = self.by_status.get_or_init(|| (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect());
        let index = usize::from(status.saturating_sub(100)).min(STATUS_SLOTS - 1);
        if let Some(slot) = slots.get(index) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn each(&self, mut f: impl FnMut(u16, u64)) {
        let Some(slots) = self.by_status.get() else { return };
        for (i, slot) in slots.iter().enumerate() {
            let n = slot.load(Ordering::Relaxed);
            if n > 0 {
                f(u16::try_from(i + 100).unwrap_or(599), n);
            }
        }
    }
}

/// `(listener, route, cluster)`; route and cluster are empty for requests no route took.
pub(crate) type Key = (Arc<str>, Arc<str>, Arc<str>);

/// All live counters of a node.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    live: Mutex<HashMap<Key, Arc<RequestCounters>>>,
}

/// Resolves handles for one runtime being compiled.
#[derive(Debug)]
pub(crate) struct MetricsBuilder<'a> {
    previous: &'a HashMap<Key, Arc<RequestCounters>>,
    next: HashMap<Key, Arc<RequestCounters>>,
}

impl MetricsBuilder<'_> {
    pub(crate) fn counters(&mut self, listener: &str, route: &str, cluster: &str) -> Arc<RequestCounters> {
        let key: Key = (listener.into(), route.into(), cluster.into());
        if let Some(c) = self.next.get(&key) {
            return c.clone();
        }
        let c = self.previous.get(&key).cloned().unwrap_or_default();
        self.next.insert(key, c.clone());
        c
    }
}

impl Metrics {
    /// Runs `build` with a builder lending the current handles, then keeps only the
    /// handles the new runtime uses.
    pub(crate) fn rebuild<R>(&self, build: impl FnOnce(&mut MetricsBuilder<'_>) -> R) -> R {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut builder = MetricsBuilder { previous: &live, next: HashMap::new() };
        let result = build(&mut builder);
        let next = builder.next;
        *live = next;
        result
    }

    /// Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let mut keys: Vec<&Key> = live.keys().collect();
        keys.sort();
        let mut out = String::from(
            "# HELP vane_http_requests_total HTTP requests answered, by listener, route, cluster and status.\n\
             # TYPE vane_http_requests_total counter\n",
        );
        for key in keys {
            let Some(counters) = live.get(key) else { continue };
            let (listener, route, cluster) = key;
            counters.each(|status, n| {
                let _ = writeln!(
                    out,
                    "vane_http_requests_total{{listener=\"{}\",route=\"{}\",cluster=\"{}\",status=\"{status}\"}} {n}",
                    escape(listener),
                    escape(route),
                    escape(cluster)
                );
            });
        }
        out
    }
}

/// Label values are validated names, but escape anyway: the format must stay parseable.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_survive_a_rebuild_that_keeps_their_key_and_go_with_it_otherwise() {
        let metrics = Metrics::default();
        let c = metrics.rebuild(|b| {
            b.counters("web", "api", "echo").record(200);
            b.counters("web", "old", "echo")
        });
        c.record(404);
        let kept = metrics.rebuild(|b| b.counters("web", "api", "echo"));
        kept.record(200);
        let text = metrics.render();
        assert!(
            text.contains(
                "vane_http_requests_total{listener=\"web\",route=\"api\",cluster=\"echo\",status=\"200\"} 2\n"
            ),
            "{text}"
        );
        assert!(!text.contains("route=\"old\""), "{text}");
    }
}
