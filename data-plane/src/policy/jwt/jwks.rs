//! Keys published at a `jwks_uri`: one background fetcher per URL, shared by every
//! snapshot that names it, refreshed on a timer and early (rate-limited) on an unknown `kid`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::Uri;
use http::header::{ACCEPT, USER_AGENT};
use http_body_util::{BodyExt, Empty, Limited};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::upstream::sidecall::{self, SideClient};

use super::keys::{KEY_SET_GENERATION, KeySet, parse_jwks};

/// Early refreshes (unknown `kid`) of one URL are at most this frequent, so tokens with
/// made-up key ids cannot turn the node into a load generator against the issuer.
const EARLY_REFRESH_EVERY: Duration = Duration::from_secs(10);
/// Time allowed for one JWKS fetch (connect, answer and body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// First retry delay after a failed fetch; it doubles up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// The keys of one JWKS URL and the handle on its fetch task. Shared (`Arc`) by the [`Jwt`]s
/// naming the URL; the task holds only a `Weak`, so it ends once no snapshot uses the URL.
#[derive(Debug)]
pub(super) struct Remote {
    uri: Uri,
    /// `None` until the first fetch succeeds; afterwards the last good document, kept
    /// through failed fetches.
    pub(super) keys: ArcSwapOption<KeySet>,
    /// Wakes the task: an early refresh, a changed interval, or the last user gone.
    pub(super) wake: Arc<Notify>,
    refresh_ms: AtomicU64,
    /// Milliseconds after `born` of the last early refresh asked for (`NEVER`: none yet).
    last_early: AtomicU64,
    born: Instant,
}

pub(super) const NEVER: u64 = u64::MAX;

impl Remote {
    fn refresh(&self) -> Duration {
        Duration::from_millis(self.refresh_ms.load(Ordering::Relaxed))
    }

    /// Asks the task for a fetch now, unless one was asked for less than 10s ago. Never blocks.
    pub(super) fn refresh_early(&self) {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(NEVER - 1);
        let last = self.last_early.load(Ordering::Relaxed);
        let every = u64::try_from(EARLY_REFRESH_EVERY.as_millis()).unwrap_or(NEVER);
        if last != NEVER && now.saturating_sub(last) < every {
            return;
        }
        // Of threads racing past the check, one asks.
        if self.last_early.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.wake.notify_one();
        }
    }
}

impl Drop for Remote {
    /// The last `Jwt` using the URL is gone: let the task see it now rather than at its
    /// next scheduled fetch.
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// Keys fetched from JWKS URLs, shared by every snapshot of a node: one fetcher per URL,
/// kept while some compiled [`Jwt`] uses it (the registry holds only `Weak`s), so a config
/// swap that keeps a URL neither refetches it nor goes through a moment without keys.
///
/// Cheap to clone: clones share the same fetchers.
#[derive(Debug, Clone)]
pub(crate) struct JwksRegistry {
    remotes: Arc<Mutex<HashMap<String, Weak<Remote>>>>,
}

impl Default for JwksRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl JwksRegistry {
    pub(crate) fn new() -> Self {
        JwksRegistry { remotes: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// The fetcher of `uri`, started if no live one exists. Joining a live fetcher sets its
    /// interval to `refresh`: the newest config wins, and a changed interval triggers a
    /// fetch so that the new schedule starts now.
    pub(super) fn join(&self, uri: &str, refresh: Duration) -> Result<Arc<Remote>, String> {
        let refresh_ms = u64::try_from(refresh.as_millis()).unwrap_or(u64::MAX);
        let mut remotes = self.remotes.lock().unwrap_or_else(PoisonError::into_inner);
        remotes.retain(|_, r| r.strong_count() > 0);
        if let Some(remote) = remotes.get(uri).and_then(Weak::upgrade) {
            if remote.refresh_ms.swap(refresh_ms, Ordering::Relaxed) != refresh_ms {
                remote.wake.notify_one();
            }
            return Ok(remote);
        }
        let parsed = parse_uri(uri)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "jwks_uri: no tokio runtime to fetch the keys in".to_owned())?;
        let remote = Arc::new(Remote {
            uri: parsed,
            keys: ArcSwapOption::empty(),
            wake: Arc::new(Notify::new()),
            refresh_ms: AtomicU64::new(refresh_ms),
            last_early: AtomicU64::new(NEVER),
            born: Instant::now(),
        });
        runtime.spawn(fetch_loop(Arc::downgrade(&remote), remote.wake.clone()));
        remotes.insert(uri.to_owned(), Arc::downgrade(&remote));
        Ok(remote)
    }

    /// URLs with a live fetcher.
    #[cfg(test)]
    pub(super) fn live(&self) -> usize {
        self.remotes.lock().unwrap_or_else(PoisonError::into_inner).values().filter(|r| r.strong_count() > 0).count()
    }
}

pub(super) fn parse_uri(uri: &str) -> Result<Uri, String> {
    let parsed: Uri = uri.parse().map_err(|e| format!("jwks_uri: '{uri}' is not a URL: {e}"))?;
    if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.authority().is_none() {
        return Err(format!("jwks_uri: '{uri}' is not an http:// or https:// URL"));
    }
    Ok(parsed)
}

pub(super) type HttpClient = SideClient<Empty<Bytes>>;

/// The fetch task of one URL: fetch, store, sleep until the refresh interval passes (or
/// the backoff after a failure) or someone wakes it; end when the `Remote` is gone. It
/// holds the `Remote` only between awaits, never while waiting on the network or a timer.
async fn fetch_loop(remote: Weak<Remote>, wake: Arc<Notify>) {
    let mut client: Option<HttpClient> = None;
    let mut backoff = FIRST_RETRY;
    loop {
        let Some(uri) = remote.upgrade().map(|r| r.uri.clone()) else { return };
        let outcome = match &client {
            Some(c) => fetch(c, &uri).await,
            None => match http_client().await {
                Ok(c) => fetch(client.insert(c), &uri).await,
                Err(e) => Err(e),
            },
        };
        let Some(r) = remote.upgrade() else { return };
        // Early refreshes asked for during this fetch were answered by it: take their permit
        // (a changed interval is read just below). Done while `r` is held, so that if
        // dropping `r` drops the `Remote`, that wake-up is not lost; and in a block, as an
        // enabled `Notified` would take later wake-ups.
        {
            let stale = wake.notified();
            tokio::pin!(stale);
            let _ = stale.as_mut().enable();
        }
        let refresh = r.refresh();
        let delay = match outcome {
            Ok((set, skipped)) => {
                for why in &skipped {
                    debug!(jwks_uri = %uri, "JWKS key skipped: {why}");
                }
                if set.keys.is_empty() {
                    warn!(jwks_uri = %uri, skipped = skipped.len(), "JWKS document has no usable key");
                }
                let generation = KEY_SET_GENERATION.fetch_add(1, Ordering::Relaxed);
                r.keys.store(Some(Arc::new(KeySet { generation, ..set })));
                backoff = FIRST_RETRY;
                refresh
            }
            Err(e) => {
                let delay = backoff.min(refresh);
                warn!(jwks_uri = %uri, error = %e, retry_in = ?delay, "JWKS fetch failed; keeping the keys held");
                backoff = backoff.saturating_mul(2).min(refresh);
                delay
            }
        };
        drop(r);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = wake.notified() => {}
        }
    }
}

/// A client for one URL: the node's side-call client (system roots, the provider every
/// Vane connection uses), built off the runtime's workers since the first build reads the
/// system roots from disk.
async fn http_client() -> Result<HttpClient, String> {
    tokio::task::spawn_blocking(|| sidecall::client(None, FETCH_TIMEOUT, Duration::from_secs(90)))
        .await
        .map_err(|e| format!("loading the system roots: {e}"))
}

/// One GET of the document, bounded in time and size.
async fn fetch(client: &HttpClient, uri: &Uri) -> Result<(KeySet, Vec<String>), String> {
    let request = http::Request::get(uri.clone())
        .header(ACCEPT, "application/jwk-set+json, application/json")
        .header(USER_AGENT, "vane")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let work = async {
        let response = client.request(request).await.map_err(|e| vane_proto::text::error_chain(&e))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the document: {e}"))?
            .to_bytes();
        parse_jwks(&body)
    };
    tokio::time::timeout(FETCH_TIMEOUT, work).await.map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
}
