//! The node's caches, kept across snapshots: one [`Store`] per cache resource, keyed by
//! name and carried into the next runtime while its spec is unchanged (a removed or
//! changed cache's entries are dropped at the swap), and the counters of each
//! (route, cache) pair. Purges and `/metrics` read it; requests never do (they hold the
//! stores their runtime was compiled with).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vane_proto::config::Config;

use crate::observe::metrics::{escape, header};

use super::answer::Outcome;
use super::disk::Disk;
use super::store::{Settings, Store};

/// What one route's requests did with one cache.
#[derive(Debug, Default)]
pub(crate) struct RouteCacheStats {
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    revalidated: AtomicU64,
    bypass: AtomicU64,
    stored: AtomicU64,
    stored_bytes: AtomicU64,
}

impl RouteCacheStats {
    pub(crate) fn count(&self, outcome: Outcome) {
        let c = match outcome {
            Outcome::Hit => &self.hits,
            Outcome::Miss => &self.misses,
            Outcome::Stale => &self.stale,
            Outcome::Revalidated => &self.revalidated,
            Outcome::Bypass => &self.bypass,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stored(&self, bytes: u64) {
        self.stored.fetch_add(1, Ordering::Relaxed);
        self.stored_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// A route's cache, as its compiled route holds it.
#[derive(Debug)]
pub(crate) struct RouteCache {
    pub(crate) store: Arc<Store>,
    pub(crate) stats: Arc<RouteCacheStats>,
}

/// The caches one snapshot compiles against.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    stores: HashMap<String, Arc<Store>>,
    routes: HashMap<(String, String), Arc<RouteCacheStats>>,
}

impl Prepared {
    /// The cache `cache` as route `route` uses it; `None` for an unknown cache.
    pub(crate) fn route(&self, route: &str, cache: &str) -> Option<Arc<RouteCache>> {
        let store = self.stores.get(cache)?.clone();
        let stats = self.routes.get(&(route.to_owned(), cache.to_owned())).cloned().unwrap_or_default();
        Some(Arc::new(RouteCache { store, stats }))
    }
}

/// The disk tier of `c` (settings encoded as `spec`) in this node's subdirectory
/// `node_dir`, when it has one and its directory opens; a cache whose directory does not
/// open serves from memory alone.
fn open_disk(c: &vane_proto::config::Cache, spec: &[u8], node_dir: &str) -> Option<Arc<Disk>> {
    let d = c.disk.as_ref()?;
    match Disk::open(&std::path::Path::new(&d.path).join(node_dir), d.max_bytes, spec) {
        Ok(disk) => Some(Arc::new(disk)),
        Err(error) => {
            tracing::warn!(cache = %c.name, dir = %d.path, %error, "cache directory not usable; memory only");
            None
        }
    }
}

/// Stores by cache name, with the spec (encoded) each was built from.
type Stores = BTreeMap<String, (Vec<u8>, Arc<Store>)>;

/// Every cache of the node, across swaps.
#[derive(Debug, Default)]
pub(crate) struct Caches {
    /// The subdirectory of each disk tier's directory that holds this node's files: the
    /// config is the fleet's, and nodes that share a host (`vane dev --nodes 3`) or a
    /// network filesystem must never share files.
    node_dir: String,
    /// By name: the spec (encoded) the store was built from, and the store.
    stores: Mutex<Stores>,
    routes: Mutex<BTreeMap<(String, String), Arc<RouteCacheStats>>>,
}

impl Caches {
    /// The caches of node `node_id` (its disk files under a subdirectory named after it,
    /// any character outside `[A-Za-z0-9._-]` written `_`).
    pub(crate) fn for_node(node_id: &str) -> Caches {
        let mut node_dir: String =
            node_id.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
        if node_dir.is_empty() || node_dir.chars().all(|c| c == '.') {
            node_dir = format!("_{node_dir}");
        }
        Caches { node_dir, ..Caches::default() }
    }

    /// The stores for `config`: unchanged caches keep theirs; new and changed ones start
    /// empty; the entries of removed and changed ones are dropped now.
    pub(crate) fn prepare(&self, config: &Config) -> Prepared {
        let mut stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = BTreeMap::new();
        for c in &config.caches {
            let spec = prost::Message::encode_to_vec(c);
            let store = match stores.remove(&c.name) {
                Some((old, store)) if old == spec => store,
                Some((_, store)) => {
                    store.clear();
                    Store::new(Settings::compile(c), open_disk(c, &spec, &self.node_dir))
                }
                None => Store::new(Settings::compile(c), open_disk(c, &spec, &self.node_dir)),
            };
            next.insert(c.name.clone(), (spec, store));
        }
        for (_, (_, gone)) in std::mem::replace(&mut *stores, next) {
            gone.clear();
        }
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let used: BTreeMap<(String, String), Arc<RouteCacheStats>> = config
            .routes
            .iter()
            .filter(|r| !r.cache.is_empty() && stores.contains_key(&r.cache))
            .map(|r| {
                let key = (r.name.clone(), r.cache.clone());
                let stats = routes.get(&key).cloned().unwrap_or_default();
                (key, stats)
            })
            .collect();
        *routes = used.clone();
        Prepared {
            stores: stores.iter().map(|(name, (_, store))| (name.clone(), store.clone())).collect(),
            routes: used.into_iter().collect(),
        }
    }

    /// Removes the entries of cache `cache` (`""`: every cache) whose key is `key`, or
    /// starts with it when `prefix` (`""` with `prefix`: everything). The key's text form
    /// is `host/path?query` then `|name=value` per configured key header (see
    /// [`super::key`]). Returns how many stored responses went (memory and disk, each
    /// once).
    pub(crate) fn purge(&self, cache: &str, key: &str, prefix: bool) -> u64 {
        let stores: Vec<Arc<Store>> = {
            let stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
            stores.iter().filter(|(name, _)| cache.is_empty() || *name == cache).map(|(_, (_, s))| s.clone()).collect()
        };
        stores.iter().map(|s| s.purge(key, prefix)).sum()
    }

    /// The cache families of `/metrics`.
    pub(crate) fn render(&self, out: &mut String) {
        let stores: Vec<(String, Arc<Store>)> = {
            let stores = self.stores.lock().unwrap_or_else(|p| p.into_inner());
            stores.iter().map(|(n, (_, s))| (n.clone(), s.clone())).collect()
        };
        if stores.is_empty() {
            return;
        }
        let routes: Vec<((String, String), Arc<RouteCacheStats>)> = {
            let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            routes.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        header(out, "vane_cache_requests_total", "counter", "Requests through a route's cache, by what the cache did.");
        for ((route, cache), s) in &routes {
            for (result, n) in [
                ("hit", &s.hits),
                ("miss", &s.misses),
                ("stale", &s.stale),
                ("revalidated", &s.revalidated),
                ("bypass", &s.bypass),
            ] {
                let _ = writeln!(
                    out,
                    "vane_cache_requests_total{{route=\"{}\",cache=\"{}\",result=\"{result}\"}} {}",
                    escape(route),
                    escape(cache),
                    n.load(Ordering::Relaxed)
                );
            }
        }
        header(out, "vane_cache_stored_total", "counter", "Responses a route stored in its cache.");
        for ((route, cache), s) in &routes {
            let n = s.stored.load(Ordering::Relaxed);
            let _ =
                writeln!(out, "vane_cache_stored_total{{route=\"{}\",cache=\"{}\"}} {n}", escape(route), escape(cache));
        }
        header(out, "vane_cache_stored_bytes_total", "counter", "Body bytes a route stored in its cache.");
        for ((route, cache), s) in &routes {
            let n = s.stored_bytes.load(Ordering::Relaxed);
            let (r, c) = (escape(route), escape(cache));
            let _ = writeln!(out, "vane_cache_stored_bytes_total{{route=\"{r}\",cache=\"{c}\"}} {n}");
        }
        let usage: Vec<(&String, (u64, u64), u64)> =
            stores.iter().map(|(n, s)| (n, s.usage(), s.stats.evictions.load(Ordering::Relaxed))).collect();
        header(out, "vane_cache_bytes", "gauge", "Bytes a cache's memory tier holds (bodies, headers, keys).");
        for (name, (bytes, _), _) in &usage {
            let _ = writeln!(out, "vane_cache_bytes{{cache=\"{}\"}} {bytes}", escape(name));
        }
        header(out, "vane_cache_entries", "gauge", "Entries a cache holds (a varying response's marker included).");
        for (name, (_, entries), _) in &usage {
            let _ = writeln!(out, "vane_cache_entries{{cache=\"{}\"}} {entries}", escape(name));
        }
        header(out, "vane_cache_evictions_total", "counter", "Entries evicted to keep a cache within its bytes.");
        for (name, _, evictions) in &usage {
            let _ = writeln!(out, "vane_cache_evictions_total{{cache=\"{}\"}} {evictions}", escape(name));
        }
        header(out, "vane_cache_disk_bytes", "gauge", "Bytes a cache's disk tier holds.");
        for (name, store) in &stores {
            if let Some(disk) = &store.disk {
                let _ = writeln!(out, "vane_cache_disk_bytes{{cache=\"{}\"}} {}", escape(name), disk.bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::Entry;
    use crate::cache::policy::Freshness;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};
    use std::time::Duration;
    use vane_proto::{Format, load};

    fn entry() -> Entry {
        let f = Freshness {
            lifetime: Duration::from_secs(60),
            initial_age: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
            no_cache: false,
            shared_with_authorization: false,
        };
        Entry::new(StatusCode::OK, HeaderMap::new(), Bytes::from_static(b"x"), f, Arc::from([]))
    }

    fn config(yaml: &str) -> Config {
        load(yaml, Format::Yaml).unwrap()
    }

    #[test]
    fn unchanged_caches_keep_their_entries_and_changed_or_removed_ones_lose_them() {
        let caches = Caches::default();
        let a = caches.prepare(&config("caches: [{name: a}, {name: b}]\n"));
        let (sa, sb) = (a.route("r", "a").unwrap().store.clone(), a.route("r", "b").unwrap().store.clone());
        sa.insert("h/1", &HeaderMap::new(), Arc::new(entry()));
        sb.insert("h/1", &HeaderMap::new(), Arc::new(entry()));
        let next = caches.prepare(&config("caches: [{name: a}, {name: b, max_bytes: 1000000}]\n"));
        assert!(Arc::ptr_eq(&next.route("r", "a").unwrap().store, &sa));
        assert!(next.route("r", "b").unwrap().store.find("h/1", &HeaderMap::new()).is_none());
        assert!(sb.find("h/1", &HeaderMap::new()).is_none(), "the changed cache's entries are dropped");
        caches.prepare(&config("caches: [{name: b}]\n"));
        assert!(sa.find("h/1", &HeaderMap::new()).is_none(), "the removed cache's entries are dropped");
    }

    #[test]
    fn purges_match_a_cache_or_every_cache_by_key_or_prefix() {
        let caches = Caches::default();
        let p = caches.prepare(&config("caches: [{name: a}, {name: b}]\n"));
        let (sa, sb) = (p.route("r", "a").unwrap().store.clone(), p.route("r", "b").unwrap().store.clone());
        for k in ["h/x", "h/x/1", "g/x"] {
            sa.insert(k, &HeaderMap::new(), Arc::new(entry()));
            sb.insert(k, &HeaderMap::new(), Arc::new(entry()));
        }
        assert_eq!(caches.purge("a", "h/x", false), 1);
        assert_eq!(caches.purge("", "h/x", true), 3);
        assert_eq!(caches.purge("nope", "", true), 0);
        assert_eq!(caches.purge("", "", true), 2);
    }
}
