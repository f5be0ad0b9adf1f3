//! A route's cache around its forward: look up, answer a hit locally, revalidate a stale
//! entry, coalesce misses, and attach a [`Fill`](crate::cache::Fill) to a storable answer
//! so that its body is stored as it streams to the client (the finishing body feeds it).
//!
//! Order for a `GET` or `HEAD`: fresh entry → HIT; stale within `stale-while-revalidate`
//! → STALE, and one background request refreshes it; otherwise stale (or the client
//! asked for revalidation) → a conditional request with the entry's validators: a `304`
//! refreshes it (REVALIDATED), a `5xx` or no answer within `stale-if-error` serves it
//! (STALE), anything else replaces it (MISS). No entry: the first request of a key goes
//! upstream, the others wait for what it stores (MISS). Other methods go upstream
//! (BYPASS); unsafe ones that succeed invalidate the stored answers for their target
//! and for the `Location`/`Content-Location` they name on the same host.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full};
use tracing::Instrument as _;

use crate::cache::answer::{self, mark, ttl};
use crate::cache::policy::Asks;
use crate::cache::{Entry, Flight, Outcome, RouteCache, Standing, Turn};
use crate::http::body::InnerBody;
use crate::http::headers::Downstream;
use crate::routing::router::Found;

use super::connection::Connection;
use super::handle::{Taken, host_of};

/// Request fields a conditional request to the origin replaces.
const CONDITIONALS: [header::HeaderName; 5] =
    [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE, header::IF_MATCH, header::IF_UNMODIFIED_SINCE, header::IF_RANGE];

impl Connection {
    /// Takes a request on a route with a cache.
    pub(super) async fn take_cached(
        &self,
        cache: &Arc<RouteCache>,
        found: Found<'_>,
        req: Request<InnerBody>,
        bytes_in: Option<Arc<AtomicU64>>,
        downstream: Downstream,
    ) -> Taken {
        let store = &cache.store;
        let settings = &store.settings;
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            // RFC 9111 §4.4: unsafe methods invalidate what they may have changed.
            let safe = matches!(method, Method::OPTIONS | Method::TRACE);
            let target = (!safe).then(|| (host_of(&req).map(str::to_owned), req.uri().clone()));
            let mut taken = self.take(found, req, bytes_in, downstream).await;
            if let Some((host, uri)) = target
                && !taken.3.status().is_client_error()
                && !taken.3.status().is_server_error()
            {
                invalidate(cache, host.as_deref(), &uri, taken.3.headers());
            }
            cache.stats.count(Outcome::Bypass);
            mark(taken.3.headers_mut(), settings.status_header.as_ref(), Outcome::Bypass, "vane; fwd=method".into());
            return taken;
        }
        let key = settings.key.key(host_of(&req), req.uri().path(), req.uri().query(), req.headers());
        let asks = Asks::of(req.headers());
        // RFC 9111 §3.5: an authorised request is answered from the cache only by a
        // response that allows it, and shares no miss with other requests.
        let authorized = req.headers().contains_key(header::AUTHORIZATION);
        let stored = store.find_or_load(&key, req.headers()).await.filter(|e| e.serves(authorized));
        if let Some(entry) = stored {
            let now = Instant::now();
            match entry.standing(now) {
                Standing::Fresh(_) if !asks.revalidate && !entry.freshness.no_cache => {
                    let cs = format!("vane; hit; ttl={}", ttl(&entry, now));
                    return self.answer(cache, &found, &entry, &req, Outcome::Hit, cs);
                }
                Standing::Stale(by) if !asks.revalidate && entry.within_swr(by) => {
                    if !entry.refreshing.swap(true, Ordering::AcqRel) {
                        self.refresh_in_background(cache.clone(), entry.clone(), key, &found, &req, downstream);
                    }
                    let cs = format!("vane; hit; ttl={}", ttl(&entry, now));
                    return self.answer(cache, &found, &entry, &req, Outcome::Stale, cs);
                }
                _ => {}
            }
            return self.revalidate(cache, entry, key, found, req, bytes_in, downstream).await;
        }
        // Ranges and HEADs of a missing key go upstream as they are, and are not stored.
        let coalesce =
            method == Method::GET && !req.headers().contains_key(header::RANGE) && !asks.no_store && !authorized;
        let flight = match coalesce.then(|| store.turn(&key)) {
            None => None,
            Some(Turn::Lead(flight)) => Some(flight),
            Some(Turn::Wait(mut done)) => {
                // Ends when the lead's fill is stored or given up (the sender is dropped).
                let _ = tokio::time::timeout(settings.lock_timeout, done.changed()).await;
                if let Some(entry) = store.find(&key, req.headers()).filter(|e| e.serves(authorized)) {
                    let now = Instant::now();
                    if matches!(entry.standing(now), Standing::Fresh(_)) && !entry.freshness.no_cache {
                        let cs = format!("vane; hit; ttl={}; detail=collapsed", ttl(&entry, now));
                        return self.answer(cache, &found, &entry, &req, Outcome::Hit, cs);
                    }
                }
                None
            }
        };
        self.fetch(cache, key, found, req, bytes_in, downstream, flight, "uri-miss").await
    }

    /// The answer to a `GET` or `HEAD` whose stored response is fresh and usable as is.
    pub(super) fn fresh_hit(&self, cache: &RouteCache, found: &Found<'_>, req: &Request<InnerBody>) -> Option<Taken> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return None;
        }
        let key = cache.store.settings.key.key(host_of(req), req.uri().path(), req.uri().query(), req.headers());
        let entry = cache.store.find(&key, req.headers())?;
        if !entry.serves(req.headers().contains_key(header::AUTHORIZATION)) {
            return None;
        }
        let now = Instant::now();
        let Standing::Fresh(_) = entry.standing(now) else { return None };
        if entry.freshness.no_cache || Asks::of(req.headers()).revalidate {
            return None;
        }
        let cs = format!("vane; hit; ttl={}", ttl(&entry, now));
        Some(self.answer(cache, found, &entry, req, Outcome::Hit, cs))
    }

    /// A local answer from `entry`.
    fn answer(
        &self,
        cache: &RouteCache,
        found: &Found<'_>,
        entry: &Entry,
        req: &Request<InnerBody>,
        outcome: Outcome,
        cache_status: String,
    ) -> Taken {
        let mut response = answer::serve(entry, req.method(), req.headers(), Instant::now());
        mark(response.headers_mut(), cache.store.settings.status_header.as_ref(), outcome, cache_status);
        cache.stats.count(outcome);
        let stats = found.entry.stats.first().cloned().unwrap_or_default();
        (stats, Some(found.entry.route.name.clone()), None, response, None)
    }

    /// Forwards a miss; a storable answer gets a fill (stored as it streams).
    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &self,
        cache: &RouteCache,
        key: String,
        found: Found<'_>,
        req: Request<InnerBody>,
        bytes_in: Option<Arc<AtomicU64>>,
        downstream: Downstream,
        flight: Option<Flight>,
        fwd: &'static str,
    ) -> Taken {
        let method = req.method().clone();
        let request = req.headers().clone();
        let mut taken = self.take(found, req, bytes_in, downstream).await;
        // Only what the upstream said is stored, never the node's own answers (502, 504).
        let admitted = match (&taken.3.body(), &taken.4) {
            (Either::Left(_), Some(_)) => cache.admit(key, &method, request, &taken.3, flight),
            _ => Err("error"),
        };
        let cs = match &admitted {
            Ok(_) => format!("vane; fwd={fwd}; fwd-status={}; stored", taken.3.status().as_u16()),
            Err(detail) => format!("vane; fwd={fwd}; fwd-status={}; detail={detail}", taken.3.status().as_u16()),
        };
        if let (Ok(fill), Some(upstream)) = (admitted, taken.4.as_mut()) {
            upstream.fill = Some(fill);
        }
        mark(taken.3.headers_mut(), cache.store.settings.status_header.as_ref(), Outcome::Miss, cs);
        cache.stats.count(Outcome::Miss);
        taken
    }

    /// Asks the origin about a stale entry (conditionally when it has validators).
    #[allow(clippy::too_many_arguments)]
    async fn revalidate(
        &self,
        cache: &RouteCache,
        entry: Arc<Entry>,
        key: String,
        found: Found<'_>,
        mut req: Request<InnerBody>,
        bytes_in: Option<Arc<AtomicU64>>,
        downstream: Downstream,
    ) -> Taken {
        let settings = &cache.store.settings;
        let asked = Instant::now();
        let stale_by = match entry.standing(asked) {
            Standing::Stale(by) => by,
            Standing::Fresh(_) => Duration::ZERO,
        };
        let method = req.method().clone();
        let client = req.headers().clone();
        let conditional = entry.has_validators();
        if conditional {
            conditional_headers(req.headers_mut(), &entry);
        }
        let fwd = if stale_by.is_zero() { "request" } else { "stale" };
        let (route_entry, params) = (found.entry.clone(), found.params.clone());
        let mut taken = self.take(found, req, bytes_in, downstream).await;
        let status = taken.3.status();
        let found = Found { entry: &route_entry, params };
        if conditional && status == StatusCode::NOT_MODIFIED {
            let refreshed = match cache.refresh(&entry, taken.3.headers()) {
                Some(e) => {
                    let e = Arc::new(e);
                    cache.store.insert(&key, &client, e.clone());
                    e
                }
                None => Arc::new(entry.refreshed(taken.3.headers(), entry.freshness)),
            };
            let req = request_like(&method, &client);
            let cs = format!("vane; fwd={fwd}; fwd-status=304; ttl={}", ttl(&refreshed, Instant::now()));
            return self.replace(cache, &found, &refreshed, &req, Outcome::Revalidated, cs, taken);
        }
        if status.is_server_error() && entry.within_sie(stale_by) {
            let req = request_like(&method, &client);
            let cs = format!("vane; fwd={fwd}; fwd-status={}; ttl={}", status.as_u16(), ttl(&entry, Instant::now()));
            return self.replace(cache, &found, &entry, &req, Outcome::Stale, cs, taken);
        }
        // A new answer: stored in the entry's place when it may be.
        let admitted = match (&taken.3.body(), &taken.4) {
            (Either::Left(_), Some(_)) => cache.admit(key, &method, client, &taken.3, None),
            _ => Err("error"),
        };
        let cs = match &admitted {
            Ok(_) => format!("vane; fwd={fwd}; fwd-status={}; stored", status.as_u16()),
            Err(detail) => format!("vane; fwd={fwd}; fwd-status={}; detail={detail}", status.as_u16()),
        };
        if let (Ok(fill), Some(upstream)) = (admitted, taken.4.as_mut()) {
            upstream.fill = Some(fill);
        }
        mark(taken.3.headers_mut(), settings.status_header.as_ref(), Outcome::Miss, cs);
        cache.stats.count(Outcome::Miss);
        taken
    }

    /// Answers from `entry` in place of the upstream's answer in `taken` (whose
    /// connection is not reused: its body was not read).
    #[allow(clippy::too_many_arguments)]
    fn replace(
        &self,
        cache: &RouteCache,
        found: &Found<'_>,
        entry: &Entry,
        req: &Request<InnerBody>,
        outcome: Outcome,
        cache_status: String,
        mut taken: Taken,
    ) -> Taken {
        let answered = self.answer(cache, found, entry, req, outcome, cache_status);
        taken.3 = answered.3;
        if let Some(upstream) = taken.4.as_mut() {
            upstream.lease = None;
        }
        taken
    }

    /// One background request that refreshes a stale entry (`stale-while-revalidate`).
    fn refresh_in_background(
        &self,
        cache: Arc<RouteCache>,
        entry: Arc<Entry>,
        key: String,
        found: &Found<'_>,
        req: &Request<InnerBody>,
        downstream: Downstream,
    ) {
        let conn = self.clone();
        let (route_entry, params) = (found.entry.clone(), found.params.clone());
        let mut head = Request::new(Either::Right(Full::default()));
        *head.uri_mut() = req.uri().clone();
        *head.version_mut() = req.version();
        *head.headers_mut() = req.headers().clone();
        head.headers_mut().remove(header::RANGE);
        let client = head.headers().clone();
        conditional_headers(head.headers_mut(), &entry);
        let task = async move {
            let found = Found { entry: &route_entry, params };
            let (_, _, _, response, upstream) = conn.take(found, head, None, downstream).await;
            let refreshed = if response.status() == StatusCode::NOT_MODIFIED && entry.has_validators() {
                cache
                    .refresh(&entry, response.headers())
                    .map(|e| cache.store.insert(&key, &client, Arc::new(e)))
                    .is_some()
            } else {
                store_whole(&cache, key, client, response, upstream).await
            };
            if !refreshed {
                // Let a later request try again.
                entry.refreshing.store(false, Ordering::Release);
            }
        };
        tokio::spawn(task.in_current_span());
    }
}

/// Reads a background answer whole and stores it when it may be; its connection goes
/// back to the pool once read to the end.
async fn store_whole(
    cache: &RouteCache,
    key: String,
    client: HeaderMap,
    response: http::Response<InnerBody>,
    upstream: Option<super::finish::Upstream>,
) -> bool {
    let (Either::Left(_), Some(mut upstream)) = (response.body(), upstream) else { return false };
    let Ok(mut fill) = cache.admit(key, &Method::GET, client, &response, None) else { return false };
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return false };
        if let Some(data) = frame.data_ref()
            && !fill.push(data)
        {
            return false;
        }
    }
    fill.complete();
    if let Some(lease) = upstream.lease.take() {
        lease.release();
    }
    true
}

/// The entry's validators in place of the client's conditionals (and no range: the
/// whole answer is what gets stored).
fn conditional_headers(headers: &mut HeaderMap, entry: &Entry) {
    for name in &CONDITIONALS {
        headers.remove(name);
    }
    headers.remove(header::RANGE);
    if let Some(etag) = entry.etag() {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = entry.last_modified() {
        headers.insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
}

/// A bodiless copy of the client's request head, to answer it from an entry.
fn request_like(method: &Method, client: &HeaderMap) -> Request<InnerBody> {
    let mut req = Request::new(Either::Right(Full::default()));
    *req.method_mut() = method.clone();
    *req.headers_mut() = client.clone();
    req
}

/// Drops what an unsafe request may have changed: its own target, and the
/// `Location`/`Content-Location` of its answer when on the same host.
fn invalidate(cache: &RouteCache, host: Option<&str>, uri: &Uri, response: &HeaderMap) {
    let spec = &cache.store.settings.key;
    cache.store.invalidate(&spec.base(host, uri.path(), uri.query()));
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(target) = response.get(&name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<Uri>().ok()) else {
            continue;
        };
        let same_host = match (target.authority(), host) {
            (None, _) => true,
            (Some(a), Some(h)) => a.as_str().eq_ignore_ascii_case(h),
            (Some(_), None) => false,
        };
        if same_host && target.path().starts_with('/') {
            cache.store.invalidate(&spec.base(host, target.path(), target.query()));
        }
    }
}
