//! Answers from a stored response: `Age`, `HEAD` (the stored `GET` without its body),
//! a single byte range cut from a stored `200` (`206`, or `416` out of range), and `304`
//! for a client whose validators match. Plus the two headers that say what the cache did:
//! `Cache-Status` (RFC 9211) and the configured status header (`x-cache` by default).

use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::http::body::InnerBody;

use super::entry::Entry;

/// The `Cache-Status` header (RFC 9211).
pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// What the cache did with a request, as the status header says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Bypass,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "HIT",
            Outcome::Miss => "MISS",
            Outcome::Stale => "STALE",
            Outcome::Revalidated => "REVALIDATED",
            Outcome::Bypass => "BYPASS",
        }
    }
}

/// Sets the status header (when configured) and `Cache-Status`.
pub(crate) fn mark(
    headers: &mut HeaderMap,
    status_header: Option<&HeaderName>,
    outcome: Outcome,
    cache_status: String,
) {
    if let Some(name) = status_header {
        headers.insert(name.clone(), HeaderValue::from_static(outcome.label()));
    }
    if let Ok(v) = HeaderValue::try_from(cache_status) {
        headers.insert(CACHE_STATUS.clone(), v);
    }
}

/// `ttl` of `Cache-Status`: seconds of freshness left, negative once stale.
pub(crate) fn ttl(entry: &Entry, now: Instant) -> i64 {
    let age = entry.age(now).as_secs_f64();
    (entry.freshness.lifetime.as_secs_f64() - age).floor() as i64
}

/// The answer to a `GET` or `HEAD` from `entry`.
pub(crate) fn serve(entry: &Entry, method: &Method, request: &HeaderMap, now: Instant) -> Response<InnerBody> {
    let mut headers = entry.headers.clone();
    headers.insert(header::AGE, HeaderValue::from(entry.age(now).as_secs()));
    let ok = entry.status == StatusCode::OK;
    if ok && not_modified(entry, request) {
        let mut r = Response::new(Either::Right(Full::default()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        for name in [header::CONTENT_LENGTH, header::CONTENT_TYPE, header::CONTENT_ENCODING] {
            headers.remove(name);
        }
        *r.headers_mut() = headers;
        return r;
    }
    let mut status = entry.status;
    let mut body = entry.body.clone();
    if ok && let Some(spec) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        let len = entry.body.len() as u64;
        match range(spec, len).filter(|_| if_range_holds(entry, request)) {
            None => {}
            Some(Some((first, last))) => {
                status = StatusCode::PARTIAL_CONTENT;
                body = entry.body.slice(first as usize..=last as usize);
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                if let Ok(v) = HeaderValue::try_from(format!("bytes {first}-{last}/{len}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            Some(None) => {
                status = StatusCode::RANGE_NOT_SATISFIABLE;
                body = Bytes::new();
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                if let Ok(v) = HeaderValue::try_from(format!("bytes */{len}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
        }
    }
    if method == Method::HEAD {
        body = Bytes::new();
    }
    let mut r = Response::new(Either::Right(Full::new(body)));
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

/// RFC 9110 §13.1.2/§13.1.3: `If-None-Match` (weak comparison) first, else
/// `If-Modified-Since` against `Last-Modified`.
fn not_modified(entry: &Entry, request: &HeaderMap) -> bool {
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = entry.etag().and_then(|e| e.to_str().ok()) else { return false };
        let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
        let ours = weak(etag);
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == "*" || weak(t) == ours);
    }
    let since = super::policy::http_date(request, header::IF_MODIFIED_SINCE);
    let modified = super::policy::http_date(&entry.headers, header::LAST_MODIFIED);
    matches!((since, modified), (Some(s), Some(m)) if m <= s)
}

/// `If-Range` (RFC 9110 §13.1.5): a strong `ETag` or the exact `Last-Modified`.
fn if_range_holds(entry: &Entry, request: &HeaderMap) -> bool {
    let Some(cond) = request.get(header::IF_RANGE) else { return true };
    let cond = cond.as_bytes();
    if cond.starts_with(b"\"") {
        entry.etag().is_some_and(|e| e.as_bytes() == cond)
    } else if cond.starts_with(b"W/") {
        false
    } else {
        entry.last_modified().is_some_and(|m| m.as_bytes() == cond)
    }
}

/// A single `bytes` range of a body of `len` bytes: `None` to ignore the header (not
/// bytes, several ranges, malformed: the whole body is sent), `Some(None)` when it is
/// unsatisfiable, else the first and last byte.
fn range(spec: &str, len: u64) -> Option<Option<(u64, u64)>> {
    let set = spec.trim().strip_prefix("bytes=")?;
    if set.contains(',') {
        return None;
    }
    let (first, last) = set.trim().split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let n: u64 = last.parse().ok()?;
        if n == 0 || len == 0 {
            return Some(None);
        }
        return Some(Some((len.saturating_sub(n), len - 1)));
    }
    let first: u64 = first.parse().ok()?;
    let last: u64 = if last.is_empty() { u64::MAX } else { last.parse().ok()? };
    if last < first {
        return None;
    }
    if first >= len {
        return Some(None);
    }
    Some(Some((first, last.min(len - 1))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::policy::Freshness;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::time::Duration;

    fn entry() -> Entry {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, "\"v1\"".parse().unwrap());
        h.insert(header::LAST_MODIFIED, "Tue, 01 Dec 2026 10:00:00 GMT".parse().unwrap());
        let f = Freshness {
            lifetime: Duration::from_secs(60),
            initial_age: Duration::from_secs(3),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
            no_cache: false,
            shared_with_authorization: false,
        };
        Entry::new(StatusCode::OK, h, Bytes::from_static(b"0123456789"), f, Arc::from([]))
    }

    fn req(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    async fn body(r: Response<InnerBody>) -> Bytes {
        r.into_body().collect().await.ok().unwrap().to_bytes()
    }

    #[tokio::test]
    async fn ranges_are_cut_from_the_stored_body() {
        let e = entry();
        let r = serve(&e, &Method::GET, &req(&[("range", "bytes=2-4")]), e.stored);
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 2-4/10");
        assert_eq!(r.headers()[header::AGE], "3");
        assert_eq!(body(r).await, "234");
        let r = serve(&e, &Method::GET, &req(&[("range", "bytes=-3")]), e.stored);
        assert_eq!(body(r).await, "789");
        let r = serve(&e, &Method::GET, &req(&[("range", "bytes=10-")]), e.stored);
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */10");
        let r = serve(&e, &Method::GET, &req(&[("range", "bytes=0-1,4-5")]), e.stored);
        assert_eq!(r.status(), StatusCode::OK);
        let r = serve(&e, &Method::GET, &req(&[("range", "bytes=0-1"), ("if-range", "\"v0\"")]), e.stored);
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn matching_validators_get_a_304_and_head_gets_no_body() {
        let e = entry();
        let r = serve(&e, &Method::GET, &req(&[("if-none-match", "W/\"v1\", \"x\"")]), e.stored);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let r = serve(&e, &Method::GET, &req(&[("if-modified-since", "Tue, 01 Dec 2026 10:00:00 GMT")]), e.stored);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        let r = serve(&e, &Method::GET, &req(&[("if-none-match", "\"x\"")]), e.stored);
        assert_eq!(r.status(), StatusCode::OK);
        let r = serve(&e, &Method::HEAD, &req(&[]), e.stored);
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "10");
        assert_eq!(body(r).await, "");
    }
}
