//! The response cache (RFC 9111, as a shared cache), a layer of the request path.
//!
//! A route that names a cache resource gets a [`RouteCache`] on its compiled route: the
//! proxy asks it for a stored answer before forwarding, and attaches a [`Fill`] to a
//! storable response so that its body is stored as it streams to the client. What is
//! stored and for how long is [`policy`]'s; the key's text form is [`key`]'s; entries
//! live in a byte-bounded `moka` cache per resource ([`store`]), kept by the node's
//! [`Caches`] across snapshots. Misses of one key are coalesced: the first goes
//! upstream, the others wait (at most the cache's `lock_timeout`) and are answered from
//! what it stored once its body is complete (they do not stream along with it). A cache
//! may have a disk tier ([`disk`]) under its memory: written behind every store, read on
//! a memory miss, kept across restarts.

pub(crate) mod answer;
pub(crate) mod disk;
pub(crate) mod entry;
pub(crate) mod fill;
pub(crate) mod key;
pub(crate) mod policy;
pub(crate) mod registry;
pub(crate) mod store;

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderMap};
use http::{Method, Response};
use hyper::body::Body;

use crate::http::body::InnerBody;

pub(crate) use answer::Outcome;
pub(crate) use entry::{Entry, Standing};
pub(crate) use fill::Fill;
pub(crate) use registry::{Caches, Prepared, RouteCache};
pub(crate) use store::{Flight, Turn};

use policy::NotStored;

impl RouteCache {
    /// A fill for `response` (the answer to a `method` request with `request` headers at
    /// `key`), or why it is not stored.
    pub(crate) fn admit(
        &self,
        key: String,
        method: &Method,
        request: HeaderMap,
        response: &Response<InnerBody>,
        flight: Option<Flight>,
    ) -> Result<Box<Fill>, &'static str> {
        let settings = &self.store.settings;
        let freshness = policy::storable(
            method,
            &request,
            response.status(),
            response.headers(),
            &settings.defaults,
            SystemTime::now(),
        )
        .map_err(NotStored::detail)?;
        let announced = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| response.body().size_hint().lower());
        if announced > settings.max_entry_bytes {
            return Err("size");
        }
        let vary: Arc<[http::HeaderName]> = key::vary_names(response.headers()).unwrap_or_default().into();
        Ok(Box::new(Fill {
            store: self.store.clone(),
            key,
            request,
            status: response.status(),
            headers: response.headers().clone(),
            freshness,
            vary,
            chunks: Vec::new(),
            size: 0,
            stats: self.stats.clone(),
            flight,
        }))
    }

    /// The freshness of a `304` that revalidated `entry`, from the headers it has after
    /// the update; `None` when they no longer allow storing it.
    pub(crate) fn refresh(&self, entry: &Entry, update: &HeaderMap) -> Option<Entry> {
        let mut refreshed = entry.refreshed(update, entry.freshness);
        refreshed.freshness = policy::storable(
            &Method::GET,
            &HeaderMap::new(),
            entry.status,
            &refreshed.headers,
            &self.store.settings.defaults,
            SystemTime::now(),
        )
        .ok()?;
        Some(refreshed)
    }
}
