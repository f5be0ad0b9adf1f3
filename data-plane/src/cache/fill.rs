//! Storing a response as it streams to its client: the response body's frames are
//! copied into a [`Fill`] (references to the same `Bytes`, no copy of the data) until the
//! body ends, then the entry is stored. A body that passes the cache's `max_entry_bytes`
//! stops being kept (it goes on streaming to its client), and one that fails or whose
//! client leaves is never stored. Waiters on the key (see [`super::store::Turn`]) look
//! again once the fill is stored or abandoned.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http::header::{HeaderMap, HeaderName};

use super::entry::Entry;
use super::policy::Freshness;
use super::registry::RouteCacheStats;
use super::store::{Flight, Store};

/// A response on its way into the cache.
#[derive(Debug)]
pub(crate) struct Fill {
    pub(super) store: Arc<Store>,
    pub(super) key: String,
    /// The request's headers (a varying response is stored under their values).
    pub(super) request: HeaderMap,
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) freshness: Freshness,
    pub(super) vary: Arc<[HeaderName]>,
    pub(super) chunks: Vec<Bytes>,
    pub(super) size: u64,
    pub(super) stats: Arc<RouteCacheStats>,
    /// The miss later ones wait on; released when stored or abandoned.
    pub(super) flight: Option<Flight>,
}

impl Fill {
    /// Keeps a copy of a data frame; past the size cap, gives up (waiters go upstream).
    pub(crate) fn push(&mut self, data: &Bytes) -> bool {
        self.size += data.len() as u64;
        if self.size > self.store.settings.max_entry_bytes {
            self.chunks = Vec::new();
            self.flight = None;
            return false;
        }
        self.chunks.push(data.clone());
        true
    }

    /// The body ended: stores the entry, then lets the waiters look.
    pub(crate) fn complete(mut self) {
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.pop().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(self.size as usize);
                for c in &self.chunks {
                    all.extend_from_slice(c);
                }
                all.freeze()
            }
        };
        self.stats.stored(body.len() as u64);
        let headers = std::mem::take(&mut self.headers);
        let entry = Entry::new(self.status, headers, body, self.freshness, self.vary.clone());
        self.store.insert(&self.key, &self.request, Arc::new(entry));
        drop(self.flight.take());
    }
}
