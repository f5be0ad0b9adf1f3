//! One cache resource's memory tier: entries in a `moka` cache bounded in bytes (each
//! weighs its body, headers and key), the stored response with its freshness, and the
//! misses in flight that later misses of the same key wait on (request coalescing).
//!
//! A varying response is stored in two slots: its key holds the names it varies on, and
//! `key NUL secondary` holds the response (see [`crate::cache::key`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName};
use moka::notification::RemovalCause;
use tokio::sync::watch;

use crate::support::duration_or;

use super::disk::Disk;
use super::entry::Entry;
use super::key::{self, KeySpec, VARIANT};
use super::policy::Defaults;

/// What a store slot holds.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    /// The response at this key varies on these headers (sorted, lowercase).
    Vary(Arc<[HeaderName]>),
    Response(Arc<Entry>),
}

/// Counters of one store, rendered on `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct StoreStats {
    pub(crate) evictions: Arc<AtomicU64>,
}

/// The settings of one cache resource, compiled.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) max_bytes: u64,
    pub(crate) max_entry_bytes: u64,
    pub(crate) key: KeySpec,
    pub(crate) defaults: Defaults,
    pub(crate) lock_timeout: Duration,
    /// `x-cache` unless configured otherwise; `None`: not sent.
    pub(crate) status_header: Option<HeaderName>,
}

/// Default memory bound (64 MiB) and largest entry (8 MiB).
pub(crate) const DEFAULT_MAX_BYTES: u64 = 64 << 20;
pub(crate) const DEFAULT_MAX_ENTRY_BYTES: u64 = 8 << 20;
/// How long misses wait on the first one's answer (nginx's `proxy_cache_lock_timeout`).
pub(crate) const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

impl Settings {
    pub(crate) fn compile(c: &vane_proto::config::Cache) -> Settings {
        let d = |v: &Option<vane_proto::pbjson_types::Duration>| duration_or(v.as_ref(), Duration::ZERO);
        let status_header = match c.status_header.as_str() {
            "" => Some(HeaderName::from_static("x-cache")),
            "-" => None,
            name => HeaderName::try_from(name.to_ascii_lowercase()).ok(),
        };
        Settings {
            max_bytes: if c.max_bytes == 0 { DEFAULT_MAX_BYTES } else { c.max_bytes },
            max_entry_bytes: if c.max_entry_bytes == 0 { DEFAULT_MAX_ENTRY_BYTES } else { c.max_entry_bytes },
            key: KeySpec::compile(c.key.as_ref()),
            defaults: Defaults {
                ttl: Some(d(&c.default_ttl)).filter(|t| !t.is_zero()),
                stale_while_revalidate: d(&c.stale_while_revalidate),
                stale_if_error: d(&c.stale_if_error),
            },
            lock_timeout: duration_or(c.lock_timeout.as_ref(), DEFAULT_LOCK_TIMEOUT),
            status_header,
        }
    }
}

/// One cache resource's entries and misses in flight.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) settings: Settings,
    mem: moka::sync::Cache<Arc<str>, Slot>,
    /// Keys some request is fetching now, with what its waiters watch.
    flights: Mutex<HashMap<Arc<str>, watch::Receiver<()>>>,
    pub(crate) stats: StoreStats,
    /// The disk tier, when the cache has one.
    pub(crate) disk: Option<Arc<Disk>>,
}

/// A miss that fetches for every request of its key: when dropped (stored or not), its
/// waiters look again.
#[derive(Debug)]
pub(crate) struct Flight {
    store: Arc<Store>,
    key: Arc<str>,
    _done: watch::Sender<()>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut flights = self.store.flights.lock().unwrap_or_else(|p| p.into_inner());
        flights.remove(&self.key);
    }
}

/// The first miss of a key fetches; the next ones wait for it.
#[derive(Debug)]
pub(crate) enum Turn {
    Lead(Flight),
    Wait(watch::Receiver<()>),
}

impl Store {
    pub(crate) fn new(settings: Settings, disk: Option<Arc<Disk>>) -> Arc<Store> {
        let stats = StoreStats::default();
        let evictions = stats.evictions.clone();
        let mem = moka::sync::Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(|k: &Arc<str>, v: &Slot| match v {
                Slot::Vary(names) => u32::try_from(k.len() + names.len() * 24 + 64).unwrap_or(u32::MAX),
                Slot::Response(e) => e.weight(k),
            })
            .eviction_listener(move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    evictions.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Arc::new(Store { settings, mem, flights: Mutex::default(), stats, disk })
    }

    /// The stored response for a request with key `key` and `headers`, and the storage
    /// key it was found at.
    pub(crate) fn find(&self, key: &str, headers: &HeaderMap) -> Option<Arc<Entry>> {
        match self.mem.get(key)? {
            Slot::Response(e) => Some(e),
            Slot::Vary(names) => match self.mem.get(&*variant_key(key, &names, headers))? {
                Slot::Response(e) => Some(e),
                Slot::Vary(_) => None,
            },
        }
    }

    /// Stores `entry` as the answer to requests with `key` and `headers` (on disk too
    /// when the cache has a disk tier).
    pub(crate) fn insert(&self, key: &str, headers: &HeaderMap, entry: Arc<Entry>) {
        let at = self.insert_memory(key, headers, entry.clone());
        if let Some(disk) = &self.disk {
            disk.write(at.as_deref().unwrap_or(key), &entry);
        }
    }

    /// Stores `entry` in memory; the variant's storage key when it varies.
    fn insert_memory(&self, key: &str, headers: &HeaderMap, entry: Arc<Entry>) -> Option<String> {
        if entry.vary.is_empty() {
            self.mem.insert(key.into(), Slot::Response(entry));
            return None;
        }
        let names = entry.vary.clone();
        let at = variant_key(key, &names, headers);
        let same = matches!(self.mem.get(key), Some(Slot::Vary(old)) if old == names);
        if !same {
            self.mem.insert(key.into(), Slot::Vary(names));
        }
        self.mem.insert(at.as_str().into(), Slot::Response(entry));
        Some(at)
    }

    /// [`Store::find`], then the disk tier (read off the request thread); what the disk
    /// gives back is kept in memory again.
    pub(crate) async fn find_or_load(&self, key: &str, headers: &HeaderMap) -> Option<Arc<Entry>> {
        if let Some(found) = self.find(key, headers) {
            return Some(found);
        }
        let disk = self.disk.as_ref()?;
        let at = match disk.varies(key) {
            Some(names) => variant_key(key, &names, headers),
            None => key.to_owned(),
        };
        if !disk.holds(&at) {
            return None;
        }
        let reader = disk.clone();
        let entry = tokio::task::spawn_blocking(move || reader.read(&at)).await.ok()??;
        let entry = Arc::new(entry);
        self.insert_memory(key, headers, entry.clone());
        Some(entry)
    }

    /// The request's turn for a missing `key`.
    pub(crate) fn turn(self: &Arc<Self>, key: &str) -> Turn {
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = flights.get(key) {
            return Turn::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        let key: Arc<str> = key.into();
        flights.insert(key.clone(), rx);
        Turn::Lead(Flight { store: self.clone(), key, _done: tx })
    }

    /// Removes the entries whose key is `key` (`prefix`: starts with `key`), every
    /// variant included; how many responses went.
    pub(crate) fn purge(&self, key: &str, prefix: bool) -> u64 {
        let mut removed = 0;
        let doomed: Vec<(Arc<str>, bool)> = self
            .mem
            .iter()
            .filter(|(k, _)| {
                let base = k.split(VARIANT).next().unwrap_or(k);
                if prefix { base.starts_with(key) } else { base == key }
            })
            .map(|(k, v)| (Arc::clone(&*k), matches!(v, Slot::Response(_))))
            .collect();
        let mut gone: std::collections::HashSet<Arc<str>> = std::collections::HashSet::new();
        for (k, response) in doomed {
            if self.mem.remove(&k).is_some() && response {
                gone.insert(k);
            }
        }
        if let Some(disk) = &self.disk {
            let matching = |k: &str| {
                let base = k.split(VARIANT).next().unwrap_or(k);
                if prefix { base.starts_with(key) } else { base == key }
            };
            gone.extend(disk.remove_if(matching));
        }
        removed += gone.len() as u64;
        removed
    }

    /// Removes every response stored for the request target whose key without header
    /// parts is `base` (an unsafe method's invalidation, RFC 9111 §4.4).
    pub(crate) fn invalidate(&self, base: &str) {
        let doomed: Vec<Arc<str>> = self
            .mem
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with(['|', VARIANT]))
            })
            .map(|(k, _)| Arc::clone(&*k))
            .collect();
        for k in doomed {
            self.mem.invalidate(&k);
        }
        if let Some(disk) = &self.disk {
            let matching =
                |k: &str| k.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with(['|', VARIANT]));
            disk.remove_if(matching);
        }
    }

    /// Bytes held and entries (varying responses' markers included).
    pub(crate) fn usage(&self) -> (u64, u64) {
        self.mem.run_pending_tasks();
        (self.mem.weighted_size(), self.mem.entry_count())
    }

    /// Drops every entry, on disk too.
    pub(crate) fn clear(&self) {
        self.mem.invalidate_all();
        if let Some(disk) = &self.disk {
            disk.remove_if(|_| true);
        }
    }
}

fn variant_key(key: &str, names: &[HeaderName], headers: &HeaderMap) -> String {
    let mut at = String::with_capacity(key.len() + 32);
    at.push_str(key);
    at.push(VARIANT);
    at.push_str(&key::secondary(names, headers));
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::Freshness;
    use bytes::Bytes;
    use http::StatusCode;
    use http::header;

    fn fresh(secs: u64) -> Freshness {
        Freshness {
            lifetime: Duration::from_secs(secs),
            initial_age: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
            no_cache: false,
            shared_with_authorization: false,
        }
    }

    fn settings(max_bytes: u64) -> Settings {
        Settings::compile(&vane_proto::config::Cache { name: "c".into(), max_bytes, ..Default::default() })
    }

    fn entry(body: &'static str, vary: &[HeaderName]) -> Entry {
        Entry::new(StatusCode::OK, HeaderMap::new(), Bytes::from_static(body.as_bytes()), fresh(60), vary.into())
    }

    #[test]
    fn varying_responses_are_kept_apart_and_purged_together() {
        let store = Store::new(settings(0), None);
        let (mut gzip, mut br) = (HeaderMap::new(), HeaderMap::new());
        gzip.insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        br.insert(header::ACCEPT_ENCODING, "br".parse().unwrap());
        store.insert("h/a", &gzip, Arc::new(entry("g", &[header::ACCEPT_ENCODING])));
        store.insert("h/a", &br, Arc::new(entry("b", &[header::ACCEPT_ENCODING])));
        assert_eq!(store.find("h/a", &gzip).unwrap().body, "g");
        assert_eq!(store.find("h/a", &br).unwrap().body, "b");
        assert!(store.find("h/a", &HeaderMap::new()).is_none());
        store.insert("h/ab", &gzip, Arc::new(entry("x", &[])));
        assert_eq!(store.purge("h/a", false), 2);
        assert!(store.find("h/ab", &gzip).is_some());
        assert_eq!(store.purge("h/", true), 1);
    }

    #[test]
    fn the_memory_tier_stays_within_its_bytes() {
        let store = Store::new(settings(64 * 1024), None);
        for i in 0..200 {
            let body = Bytes::from(vec![b'x'; 1024]);
            let e = Entry::new(StatusCode::OK, HeaderMap::new(), body, fresh(60), Arc::from([]));
            store.insert(&format!("h/{i}"), &HeaderMap::new(), Arc::new(e));
        }
        let (bytes, _) = store.usage();
        assert!(bytes <= 64 * 1024, "{bytes}");
        assert!(store.stats.evictions.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn a_second_miss_waits_for_the_first() {
        let store = Store::new(settings(0), None);
        let Turn::Lead(flight) = store.turn("k") else { panic!("first is not the lead") };
        let Turn::Wait(rx) = store.turn("k") else { panic!("second does not wait") };
        drop(flight);
        assert!(rx.has_changed().is_err(), "the lead's end is seen");
        assert!(matches!(store.turn("k"), Turn::Lead(_)));
    }
}
