//! Route selection for one listener, compiled once per snapshot.
//!
//! Precedence: an exact path match wins; otherwise the longest matching prefix; among
//! prefixes of equal length, the route listed first in the config.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::accesslog::Sink;
use crate::cluster::Cluster;
use crate::metrics::RouteStats;

/// A compiled route.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) name: Arc<str>,
    pub(crate) timeout: Duration,
    pub(crate) forward: WeightedClusters,
}

/// One or more clusters with cumulative weights.
#[derive(Debug)]
pub(crate) struct WeightedClusters {
    /// `(cumulative weight, cluster)`, ascending.
    clusters: Box<[(u32, Arc<Cluster>)]>,
}

impl WeightedClusters {
    pub(crate) fn new(clusters: Vec<(u32, Arc<Cluster>)>) -> WeightedClusters {
        let mut total = 0u32;
        let clusters = clusters
            .into_iter()
            .map(|(w, c)| {
                total = total.saturating_add(w.max(1));
                (total, c)
            })
            .collect();
        WeightedClusters { clusters }
    }

    /// The cluster for the next request and its index in the route's list.
    pub(crate) fn pick(&self) -> Option<(usize, &Arc<Cluster>)> {
        match &*self.clusters {
            [] => None,
            [(_, only)] => Some((0, only)),
            many => {
                let total = many.last().map_or(1, |(t, _)| *t);
                let roll = rand::random_range(0..total);
                many.iter().position(|(cumulative, _)| roll < *cumulative).and_then(|i| Some((i, &many.get(i)?.1)))
            }
        }
    }

    /// The clusters, in config order.
    pub(crate) fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.iter().map(|(_, c)| c)
    }
}

/// A route as one listener holds it: with that listener's metrics, one per cluster of
/// the route (same order as `forward`).
#[derive(Debug)]
pub(crate) struct RouteEntry {
    pub(crate) route: Arc<Route>,
    pub(crate) stats: Box<[Arc<RouteStats>]>,
}

/// The routes of one listener.
#[derive(Debug)]
pub(crate) struct Router {
    exact: HashMap<Box<str>, Arc<RouteEntry>>,
    /// Longest first; equal lengths in config order.
    prefixes: Vec<(Box<str>, Arc<RouteEntry>)>,
    /// Metrics of requests no route took (and requests refused before routing).
    pub(crate) unrouted: Arc<RouteStats>,
    /// The listener's name, for logs and metrics.
    pub(crate) listener: Arc<str>,
    /// Where the listener's access log goes, when it has one.
    pub(crate) access_log: Option<Arc<Sink>>,
}

impl Router {
    pub(crate) fn new(listener: Arc<str>, unrouted: Arc<RouteStats>, access_log: Option<Arc<Sink>>) -> Router {
        Router { exact: HashMap::new(), prefixes: Vec::new(), unrouted, listener, access_log }
    }

    /// Adds a route; call in config order.
    pub(crate) fn add_exact(&mut self, path: &str, route: Arc<RouteEntry>) {
        self.exact.entry(path.into()).or_insert(route);
    }

    pub(crate) fn add_prefix(&mut self, prefix: &str, route: Arc<RouteEntry>) {
        self.prefixes.push((prefix.into(), route));
    }

    /// Orders prefixes for lookup; call once after the last `add_*`.
    pub(crate) fn finish(&mut self) {
        // Stable: equal lengths keep config order.
        self.prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    }

    pub(crate) fn find(&self, path: &str) -> Option<&Arc<RouteEntry>> {
        if let Some(route) = self.exact.get(path) {
            return Some(route);
        }
        self.prefixes.iter().find(|(p, _)| path.starts_with(&**p)).map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str) -> Arc<RouteEntry> {
        let route = Arc::new(Route {
            name: name.into(),
            timeout: Duration::from_secs(1),
            forward: WeightedClusters::new(vec![]),
        });
        Arc::new(RouteEntry { route, stats: Box::new([]) })
    }

    #[test]
    fn exact_beats_longest_prefix_beats_order() {
        let mut r = Router::new("web".into(), Arc::default(), None);
        r.add_prefix("/", route("root"));
        r.add_prefix("/api", route("api"));
        r.add_prefix("/api", route("api-shadowed"));
        r.add_exact("/api/health", route("health"));
        r.finish();
        let name = |p: &str| r.find(p).map(|r| r.route.name.to_string());
        assert_eq!(name("/api/health").as_deref(), Some("health"));
        assert_eq!(name("/api/health/x").as_deref(), Some("api"));
        assert_eq!(name("/apix").as_deref(), Some("api"));
        assert_eq!(name("/other").as_deref(), Some("root"));
        r.prefixes.retain(|(p, _)| &**p != "/");
        assert!(r.find("/other").is_none());
    }
}
