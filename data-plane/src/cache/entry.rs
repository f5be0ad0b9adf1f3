//! A stored response and how it stands (fresh or stale) at a moment: the leaf every part
//! of the cache reads (the memory and disk tiers, answers, fills).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::policy::Freshness;

/// A stored response.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    /// As received, less `Age` and hop-by-hop fields, with a `Content-Length`.
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) stored: Instant,
    pub(crate) freshness: Freshness,
    /// The headers this response varies on (empty: none).
    pub(crate) vary: Arc<[HeaderName]>,
    /// Set while one request refreshes it in the background (`stale-while-revalidate`).
    pub(crate) refreshing: AtomicBool,
}

/// How an entry stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Fresh for this much longer.
    Fresh(Duration),
    /// Stale by this much.
    Stale(Duration),
}

impl Entry {
    pub(crate) fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        freshness: Freshness,
        vary: Arc<[HeaderName]>,
    ) -> Entry {
        headers.remove(header::AGE);
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Entry { status, headers, body, stored: Instant::now(), freshness, vary, refreshing: AtomicBool::new(false) }
    }

    /// The response's current age (RFC 9111 §4.2.3).
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.freshness.initial_age.saturating_add(now.saturating_duration_since(self.stored))
    }

    pub(crate) fn standing(&self, now: Instant) -> Standing {
        let age = self.age(now);
        match self.freshness.lifetime.checked_sub(age) {
            Some(left) if !left.is_zero() => Standing::Fresh(left),
            _ => Standing::Stale(age.saturating_sub(self.freshness.lifetime)),
        }
    }

    pub(crate) fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    pub(crate) fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(header::LAST_MODIFIED)
    }

    /// May answer a request with (`authorized`) or without `Authorization`.
    pub(crate) fn serves(&self, authorized: bool) -> bool {
        !authorized || self.freshness.shared_with_authorization
    }

    pub(crate) fn has_validators(&self) -> bool {
        self.etag().is_some() || self.last_modified().is_some()
    }

    /// May be served `stale` past its freshness while one request refreshes it.
    pub(crate) fn within_swr(&self, stale: Duration) -> bool {
        !self.freshness.must_revalidate && !self.freshness.no_cache && stale < self.freshness.stale_while_revalidate
    }

    /// May be served `stale` past its freshness because the upstream failed.
    pub(crate) fn within_sie(&self, stale: Duration) -> bool {
        !self.freshness.must_revalidate && stale < self.freshness.stale_if_error
    }

    /// This entry updated by a `304` (RFC 9111 §4.3.4): its headers replaced by the 304's,
    /// its freshness computed anew.
    pub(crate) fn refreshed(&self, update: &HeaderMap, freshness: Freshness) -> Entry {
        let mut headers = self.headers.clone();
        for name in update.keys() {
            if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
                continue;
            }
            headers.remove(name);
            for v in update.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        Entry::new(self.status, headers, self.body.clone(), freshness, self.vary.clone())
    }

    pub(super) fn weight(&self, key: &str) -> u32 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum();
        u32::try_from(self.body.len() + headers + key.len() + 256).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_age_and_go_stale() {
        let f = Freshness {
            lifetime: Duration::from_secs(60),
            initial_age: Duration::from_secs(50),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
            no_cache: false,
            shared_with_authorization: false,
        };
        let e = Entry::new(StatusCode::OK, HeaderMap::new(), Bytes::from_static(b"x"), f, Arc::from([]));
        let now = e.stored;
        assert_eq!(e.standing(now), Standing::Fresh(Duration::from_secs(10)));
        assert_eq!(e.standing(now + Duration::from_secs(15)), Standing::Stale(Duration::from_secs(5)));
        assert_eq!(e.headers[header::CONTENT_LENGTH], "1");
    }
}
