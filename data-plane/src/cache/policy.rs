//! RFC 9111 as a shared cache reads it: `Cache-Control` of requests and responses,
//! whether a response may be stored, how long it is fresh, and its age.
//!
//! Written here rather than taken from `http-cache-semantics`: that crate keeps a copy of
//! the request and response heads per entry and rebuilds its answer on every lookup,
//! where a hit here reads a few numbers computed once at store time; and the
//! `stale-while-revalidate`/`stale-if-error` windows with a config default (as nginx's
//! `proxy_cache_use_stale`) are this cache's own.
//!
//! Precedence of freshness: `s-maxage`, then `max-age`, then `Expires` minus `Date`, then
//! the cache's `default_ttl`, then the heuristic (10% of the time since `Last-Modified`,
//! at most a day) for the statuses RFC 9110 calls heuristically cacheable.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

/// Longest heuristic freshness.
const MAX_HEURISTIC: Duration = Duration::from_secs(24 * 3600);

/// The `Cache-Control` directives this cache acts on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Directives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
}

impl Directives {
    /// Reads every `Cache-Control` field; `Pragma: no-cache` counts as `no-cache` when
    /// there is none (RFC 9111 §5.4). Unknown directives are ignored; a directive given
    /// twice keeps its first value.
    pub(crate) fn of(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        let mut any = false;
        for v in headers.get_all(header::CACHE_CONTROL) {
            let Ok(v) = v.to_str() else { continue };
            for item in v.split(',') {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                any = true;
                let (name, value) = match item.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (item, None),
                };
                let secs = || value.and_then(delta_seconds);
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    // The qualified forms (`no-cache="set-cookie"`) are taken whole: safe.
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "public" => d.public = true,
                    "must-revalidate" => d.must_revalidate = true,
                    "proxy-revalidate" => d.proxy_revalidate = true,
                    "max-age" => d.max_age = d.max_age.or_else(secs),
                    "s-maxage" => d.s_maxage = d.s_maxage.or_else(secs),
                    "stale-while-revalidate" => d.stale_while_revalidate = d.stale_while_revalidate.or_else(secs),
                    "stale-if-error" => d.stale_if_error = d.stale_if_error.or_else(secs),
                    _ => {}
                }
            }
        }
        if !any
            && headers
                .get_all(header::PRAGMA)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.to_ascii_lowercase().contains("no-cache")))
        {
            d.no_cache = true;
        }
        d
    }
}

/// What a request asks of the cache.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Asks {
    /// Do not store the answer.
    pub(crate) no_store: bool,
    /// Do not answer from the cache without asking the origin (`no-cache`, `max-age=0`).
    pub(crate) revalidate: bool,
}

impl Asks {
    pub(crate) fn of(headers: &HeaderMap) -> Asks {
        if !headers.contains_key(header::CACHE_CONTROL) && !headers.contains_key(header::PRAGMA) {
            return Asks::default();
        }
        let d = Directives::of(headers);
        Asks { no_store: d.no_store, revalidate: d.no_cache || d.max_age == Some(0) }
    }
}

/// The cache's defaults for what a response does not say.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Defaults {
    pub(crate) ttl: Option<Duration>,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
}

/// How long a stored response is fresh and may be served stale, fixed when stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Freshness {
    pub(crate) lifetime: Duration,
    /// Age when received (RFC 9111 §4.2.3 `corrected_initial_age`).
    pub(crate) initial_age: Duration,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    /// Never served stale (`must-revalidate`, `proxy-revalidate`, `s-maxage`).
    pub(crate) must_revalidate: bool,
    /// Revalidated before every use (`no-cache`).
    pub(crate) no_cache: bool,
    /// May answer requests with `Authorization` (`public`, `s-maxage`, `must-revalidate`:
    /// RFC 9111 §3.5).
    pub(crate) shared_with_authorization: bool,
}

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501)
}

/// Why a response is not stored (for `Cache-Status`'s `detail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotStored {
    Method,
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    NoFreshness,
}

impl NotStored {
    pub(crate) fn detail(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Status => "status",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::SetCookie => "set-cookie",
            NotStored::VaryStar => "vary",
            NotStored::NoFreshness => "no-freshness",
        }
    }
}

/// Whether a shared cache may store `status`/`headers`, the answer to a `method` request
/// with `request` headers, received at `now`; its freshness if so.
pub(crate) fn storable(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    headers: &HeaderMap,
    defaults: &Defaults,
    now: SystemTime,
) -> Result<Freshness, NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    // Partial answers, 304s and informational ones are not stored (ranges are cut from
    // stored full answers instead).
    if status.is_informational() || status == StatusCode::PARTIAL_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Err(NotStored::Status);
    }
    let d = Directives::of(headers);
    if d.no_store || Asks::of(request).no_store {
        return Err(NotStored::NoStore);
    }
    if d.private {
        return Err(NotStored::Private);
    }
    // RFC 9111 §3.5: a shared cache stores the answer to an authorised request only when
    // the response says it may.
    if request.contains_key(header::AUTHORIZATION) && !(d.public || d.s_maxage.is_some() || d.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    // As nginx and Varnish: a cookie set for one client is never handed to another.
    if headers.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    if crate::cache::key::vary_names(headers).is_none() {
        return Err(NotStored::VaryStar);
    }
    let date = http_date(headers, header::DATE);
    let explicit = d.s_maxage.or(d.max_age).map(Duration::from_secs).or_else(|| {
        let expires = headers.get(header::EXPIRES)?;
        // An invalid `Expires` (`0`) means already expired.
        let Some(at) = expires.to_str().ok().and_then(|v| httpdate::parse_http_date(v).ok()) else {
            return Some(Duration::ZERO);
        };
        Some(at.duration_since(date.unwrap_or(now)).unwrap_or_default())
    });
    let lifetime = match explicit {
        Some(l) => l,
        None if !(heuristically_cacheable(status) || d.public) => return Err(NotStored::Status),
        None => match defaults.ttl {
            Some(ttl) => ttl,
            None => {
                let Some(modified) = http_date(headers, header::LAST_MODIFIED) else {
                    return Err(NotStored::NoFreshness);
                };
                (date.unwrap_or(now).duration_since(modified).unwrap_or_default() / 10).min(MAX_HEURISTIC)
            }
        },
    };
    let must_revalidate = d.must_revalidate || d.proxy_revalidate || d.s_maxage.is_some();
    let stale = |own: Option<u64>, default: Duration| own.map_or(default, Duration::from_secs);
    let freshness = Freshness {
        lifetime,
        initial_age: initial_age(headers, date, now),
        stale_while_revalidate: stale(d.stale_while_revalidate, defaults.stale_while_revalidate),
        stale_if_error: stale(d.stale_if_error, defaults.stale_if_error),
        must_revalidate,
        no_cache: d.no_cache,
        shared_with_authorization: d.public || d.s_maxage.is_some() || d.must_revalidate,
    };
    let validators = headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED);
    let useful = freshness.lifetime > freshness.initial_age
        || validators
        || (!must_revalidate && !freshness.stale_if_error.is_zero());
    if !useful {
        return Err(NotStored::NoFreshness);
    }
    Ok(freshness)
}

/// RFC 9111 §4.2.3: the larger of the apparent age (received minus `Date`) and `Age`.
pub(crate) fn initial_age(headers: &HeaderMap, date: Option<SystemTime>, now: SystemTime) -> Duration {
    let apparent = date.and_then(|d| now.duration_since(d).ok()).unwrap_or_default();
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| delta_seconds(v.trim()))
        .map_or(Duration::ZERO, Duration::from_secs);
    // Whole seconds: `Date` has no finer grain, and an apparent age of 0.9 s is clock noise.
    Duration::from_secs(apparent.max(age).as_secs())
}

/// Largest delta-seconds value taken (RFC 9111 §1.2.2): larger ones count as this, so no
/// sum of ages and lifetimes can overflow.
const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// A delta-seconds value (digits only), capped at [`MAX_DELTA_SECONDS`].
fn delta_seconds(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(v.parse::<u64>().unwrap_or(MAX_DELTA_SECONDS).min(MAX_DELTA_SECONDS))
}

pub(crate) fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, v.parse().unwrap());
        }
        m
    }

    fn store(req: &[(&'static str, &str)], status: u16, resp: &[(&'static str, &str)]) -> Result<Freshness, NotStored> {
        let now = SystemTime::now();
        let status = StatusCode::from_u16(status).unwrap();
        storable(&Method::GET, &h(req), status, &h(resp), &Defaults::default(), now)
    }

    #[test]
    fn s_maxage_wins_over_max_age_and_implies_must_revalidate() {
        let f = store(&[], 200, &[("cache-control", "max-age=5, s-maxage=60")]).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(60));
        assert!(f.must_revalidate);
    }

    #[test]
    fn no_store_private_set_cookie_and_vary_star_are_not_stored() {
        assert_eq!(store(&[], 200, &[("cache-control", "no-store, max-age=9")]), Err(NotStored::NoStore));
        assert_eq!(store(&[], 200, &[("cache-control", "private, max-age=9")]), Err(NotStored::Private));
        assert_eq!(
            store(&[("cache-control", "no-store")], 200, &[("cache-control", "max-age=9")]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            store(&[], 200, &[("cache-control", "max-age=9"), ("set-cookie", "a=b")]),
            Err(NotStored::SetCookie)
        );
        assert_eq!(store(&[], 200, &[("cache-control", "max-age=9"), ("vary", "*")]), Err(NotStored::VaryStar));
    }

    #[test]
    fn authorised_requests_are_stored_only_when_the_response_allows() {
        let auth = [("authorization", "Bearer x")];
        assert_eq!(store(&auth, 200, &[("cache-control", "max-age=9")]), Err(NotStored::Authorization));
        assert!(store(&auth, 200, &[("cache-control", "public, max-age=9")]).unwrap().shared_with_authorization);
        assert!(!store(&[], 200, &[("cache-control", "max-age=9")]).unwrap().shared_with_authorization);
        assert!(store(&auth, 200, &[("cache-control", "s-maxage=9")]).is_ok());
        assert!(store(&auth, 200, &[("cache-control", "max-age=9, must-revalidate")]).is_ok());
    }

    #[test]
    fn expires_counts_from_date_and_heuristics_need_last_modified() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let expires = httpdate::fmt_http_date(now + Duration::from_secs(100));
        let f = store(&[], 200, &[("date", &date), ("expires", &expires)]).unwrap();
        assert!(f.lifetime >= Duration::from_secs(99) && f.lifetime <= Duration::from_secs(100));
        assert_eq!(store(&[], 200, &[("expires", "0")]), Err(NotStored::NoFreshness));
        assert_eq!(store(&[], 200, &[]), Err(NotStored::NoFreshness));
        let modified = httpdate::fmt_http_date(now - Duration::from_secs(1000));
        let f = store(&[], 200, &[("date", &date), ("last-modified", &modified)]).unwrap();
        assert_eq!(f.lifetime.as_secs(), 100);
        // A 302 is not heuristically cacheable; with max-age it is stored.
        assert_eq!(store(&[], 302, &[("date", &date), ("last-modified", &modified)]), Err(NotStored::Status));
        assert!(store(&[], 302, &[("cache-control", "max-age=5")]).is_ok());
    }

    #[test]
    fn age_is_the_larger_of_apparent_age_and_the_age_header() {
        let now = SystemTime::now();
        let date = now - Duration::from_secs(30);
        assert_eq!(initial_age(&h(&[("age", "10")]), Some(date), now), Duration::from_secs(30));
        assert_eq!(initial_age(&h(&[("age", "50")]), Some(date), now), Duration::from_secs(50));
    }

    #[test]
    fn huge_ages_and_lifetimes_are_capped_and_never_overflow() {
        let f =
            store(&[], 200, &[("cache-control", "max-age=99999999999999999999999"), ("age", "18446744073709551615")])
                .unwrap_err();
        assert_eq!(f, NotStored::NoFreshness, "as old as it may live: useless");
        let f = store(&[], 200, &[("cache-control", "max-age=18446744073709551615")]).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(MAX_DELTA_SECONDS));
        assert_eq!(Directives::of(&h(&[("cache-control", "max-age=-1, s-maxage=1e3")])).max_age, None);
    }

    #[test]
    fn request_no_cache_and_max_age_zero_ask_for_revalidation() {
        assert!(Asks::of(&h(&[("cache-control", "no-cache")])).revalidate);
        assert!(Asks::of(&h(&[("cache-control", "max-age=0")])).revalidate);
        assert!(Asks::of(&h(&[("pragma", "no-cache")])).revalidate);
        assert!(!Asks::of(&h(&[("cache-control", "max-age=10")])).revalidate);
    }
}
