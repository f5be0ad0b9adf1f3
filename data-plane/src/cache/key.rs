//! Cache keys. A key's text form is `host/path?query` (the host lowercased, without a
//! default port; the query normalised), then `|name=value` for each request header the
//! cache's `key.headers` names. Purges match that text exactly or by prefix, so its start
//! is fixed. A response that varies (`Vary`) is stored under its key, a NUL, and the
//! values of the headers it varies on ([`secondary`]): a purge of the key takes every
//! variant with it.

use http::HeaderMap;
use http::header::{self, HeaderName};
use vane_proto::config;

/// Separates a key from the secondary part of a varying response's storage key.
pub(crate) const VARIANT: char = '\0';

/// How a cache builds keys (compiled from `Cache.key`).
#[derive(Debug, Default, Clone)]
pub(crate) struct KeySpec {
    ignore_host: bool,
    ignore_query: bool,
    include: Box<[Box<str>]>,
    exclude: Box<[Box<str>]>,
    headers: Box<[HeaderName]>,
}

impl KeySpec {
    pub(crate) fn compile(pb: Option<&config::CacheKey>) -> KeySpec {
        let Some(k) = pb else { return KeySpec::default() };
        let names = |v: &[String]| v.iter().map(|s| s.as_str().into()).collect();
        KeySpec {
            ignore_host: k.ignore_host,
            ignore_query: k.ignore_query,
            include: names(&k.query_include),
            exclude: names(&k.query_exclude),
            headers: k.headers.iter().filter_map(|h| HeaderName::try_from(h.to_ascii_lowercase()).ok()).collect(),
        }
    }

    /// The key without its header parts: what an unsafe method invalidates.
    pub(crate) fn base(&self, host: Option<&str>, path: &str, query: Option<&str>) -> String {
        let mut out = String::with_capacity(host.map_or(0, str::len) + path.len() + query.map_or(0, str::len) + 2);
        if !self.ignore_host
            && let Some(host) = host
        {
            let host = host.strip_suffix(":80").or_else(|| host.strip_suffix(":443")).unwrap_or(host);
            out.extend(host.chars().map(|c| c.to_ascii_lowercase()));
        }
        out.push_str(path);
        if let Some(q) = query.filter(|q| !q.is_empty() && !self.ignore_query) {
            self.push_query(&mut out, q);
        }
        out
    }

    /// The key of a request for `host` (as sent, port included), `path` and `query`.
    pub(crate) fn key(&self, host: Option<&str>, path: &str, query: Option<&str>, headers: &HeaderMap) -> String {
        let mut out = self.base(host, path, query);
        for name in &*self.headers {
            out.push('|');
            out.push_str(name.as_str());
            out.push('=');
            for (i, v) in headers.get_all(name).iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
        }
        out
    }

    /// `?` and the query's parameters, those the spec keeps, sorted (a query of one
    /// parameter is taken as it is).
    fn push_query(&self, out: &mut String, query: &str) {
        let filtered = !self.include.is_empty() || !self.exclude.is_empty();
        if !filtered && !query.contains('&') {
            out.push('?');
            out.push_str(query);
            return;
        }
        let keep = |pair: &&str| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !pair.is_empty()
                && (self.include.is_empty() || self.include.iter().any(|i| **i == *name))
                && !self.exclude.iter().any(|e| **e == *name)
        };
        let mut pairs: Vec<&str> = query.split('&').filter(keep).collect();
        if pairs.is_empty() {
            return;
        }
        pairs.sort_unstable();
        out.push('?');
        for (i, p) in pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(p);
        }
    }
}

/// The secondary part of a varying response's storage key: each header `vary` names,
/// with the request's value (`Accept-Encoding` normalised by [`accept_encoding`]).
pub(crate) fn secondary(vary: &[HeaderName], headers: &HeaderMap) -> String {
    let mut out = String::new();
    for name in vary {
        out.push_str(name.as_str());
        out.push('=');
        if *name == header::ACCEPT_ENCODING {
            out.push_str(&accept_encoding(headers));
        } else {
            for (i, v) in headers.get_all(name).iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
        }
        out.push('\n');
    }
    out
}

/// The codings a client accepts (q > 0), lowercased, sorted and deduplicated: `br,gzip`
/// for `gzip, br;q=0.5, deflate;q=0`. Clients that list the same codings share a variant;
/// the compressor only ever picks a coding the client accepts, so that is safe.
pub(crate) fn accept_encoding(headers: &HeaderMap) -> String {
    let mut codings: Vec<String> = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| {
            let mut parts = item.split(';');
            let coding = parts.next()?.trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")).and_then(|q| q.trim().parse::<f32>().ok())
                    == Some(0.0)
            });
            (!coding.is_empty() && !refused).then_some(coding)
        })
        .collect();
    codings.sort_unstable();
    codings.dedup();
    codings.join(",")
}

/// The header names of a `Vary` field, lowercased and sorted; `None` for `Vary: *` (a
/// response that no later request can be shown to match).
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for v in headers.get_all(header::VARY) {
        for item in v.to_str().ok()?.split(',') {
            let item = item.trim();
            if item == "*" {
                return None;
            }
            if let Ok(name) = HeaderName::try_from(item.to_ascii_lowercase()) {
                names.push(name);
            }
        }
    }
    names.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> KeySpec {
        let key: config::CacheKey = serde_json::from_str(yaml).unwrap();
        KeySpec::compile(Some(&key))
    }

    #[test]
    fn key_starts_with_lowercased_host_without_default_port_then_sorted_query() {
        let k = KeySpec::default();
        let h = HeaderMap::new();
        assert_eq!(k.key(Some("Example.COM:80"), "/a/B", Some("z=1&a=2"), &h), "example.com/a/B?a=2&z=1");
        assert_eq!(k.key(Some("example.com:8080"), "/", None, &h), "example.com:8080/");
        assert_eq!(k.key(Some("x"), "/p", Some(""), &h), "x/p");
    }

    #[test]
    fn query_params_are_included_or_excluded_and_headers_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "blue".parse().unwrap());
        let only = spec(r#"{"query_include": ["id"], "headers": ["X-Tenant"]}"#);
        assert_eq!(only.key(Some("h"), "/p", Some("utm=1&id=7"), &h), "h/p?id=7|x-tenant=blue");
        let but = spec(r#"{"query_exclude": ["utm"], "ignore_host": true}"#);
        assert_eq!(but.key(Some("h"), "/p", Some("utm=1"), &h), "/p");
        assert_eq!(but.key(Some("h"), "/p", Some("b=2&utm=1&a"), &h), "/p?a&b=2");
    }

    #[test]
    fn accept_encoding_is_the_sorted_set_of_accepted_codings() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, "gzip, BR;q=0.5, deflate;q=0, gzip".parse().unwrap());
        assert_eq!(accept_encoding(&h), "br,gzip");
        let vary = vary_names(&{
            let mut r = HeaderMap::new();
            r.insert(header::VARY, "Accept-Encoding".parse().unwrap());
            r
        })
        .unwrap();
        assert_eq!(secondary(&vary, &h), "accept-encoding=br,gzip\n");
    }

    #[test]
    fn vary_star_matches_nothing() {
        let mut r = HeaderMap::new();
        r.insert(header::VARY, "*".parse().unwrap());
        assert!(vary_names(&r).is_none());
    }
}
