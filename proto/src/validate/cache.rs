//! Response caches: their names, sizes, durations and key parts, and the routes that
//! refer to them.

use crate::config::Config;

use super::check::{Validator, display_name, is_header_name};

/// Longest `default_ttl`, `stale_*` window or lock wait: a year.
const MAX_CACHE_SECS: i64 = 365 * 24 * 3600;
/// Largest memory tier: 1 TiB (moka weighs entries in `u32`, the whole in `u64`).
const MAX_CACHE_BYTES: u64 = 1 << 40;
/// Largest entry: under 4 GiB, an entry's weight being a `u32`.
const MAX_ENTRY_BYTES: u64 = u32::MAX as u64 - 65_536;

pub(crate) fn check(config: &Config, v: &mut Validator) {
    let caches = v.names("cache", config.caches.iter().map(|c| c.name.as_str()));
    for (i, c) in config.caches.iter().enumerate() {
        let name = display_name(&c.name, i);
        if c.max_bytes > MAX_CACHE_BYTES {
            v.err("cache", &name, "max_bytes", format!("must be at most {MAX_CACHE_BYTES}"));
        }
        if c.max_entry_bytes > MAX_ENTRY_BYTES {
            v.err("cache", &name, "max_entry_bytes", format!("must be at most {MAX_ENTRY_BYTES}"));
        }
        for (field, d) in [
            ("default_ttl", &c.default_ttl),
            ("stale_while_revalidate", &c.stale_while_revalidate),
            ("stale_if_error", &c.stale_if_error),
            ("lock_timeout", &c.lock_timeout),
        ] {
            let Some(d) = d else { continue };
            if d.seconds < 0 || d.nanos < 0 {
                v.err("cache", &name, field, "must not be negative".into());
            } else if d.seconds > MAX_CACHE_SECS {
                v.err("cache", &name, field, format!("must be at most {MAX_CACHE_SECS}s"));
            }
        }
        let status = c.status_header.as_str();
        if !status.is_empty() && status != "-" && !is_header_name(status) {
            v.err("cache", &name, "status_header", format!("'{status}' is not a header name"));
        }
        if let Some(k) = &c.key {
            for (j, h) in k.headers.iter().enumerate() {
                if !is_header_name(h) {
                    v.err("cache", &name, &format!("key.headers[{j}]"), format!("'{h}' is not a header name"));
                }
            }
            if !k.query_include.is_empty() && !k.query_exclude.is_empty() {
                v.err("cache", &name, "key.query_include", "query_include and query_exclude exclude each other".into());
            }
        }
    }
    let mut dirs = std::collections::HashSet::new();
    for (i, c) in config.caches.iter().enumerate() {
        let Some(disk) = &c.disk else { continue };
        let name = display_name(&c.name, i);
        if !disk.path.starts_with('/') {
            v.err("cache", &name, "disk.path", format!("'{}' is not an absolute path", disk.path));
        } else if !dirs.insert(disk.path.trim_end_matches('/')) {
            v.err("cache", &name, "disk.path", format!("'{}' is another cache's directory", disk.path));
        }
    }
    for (i, r) in config.routes.iter().enumerate() {
        if !r.cache.is_empty() && !caches.contains(r.cache.as_str()) {
            v.err("route", &display_name(&r.name, i), "cache", format!("unknown cache '{}'", r.cache));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::validate::tests::errors;

    #[test]
    fn cache_fields_are_checked_and_routes_name_known_caches() {
        let errs = errors(
            "caches:\n  - name: c\n    stale_if_error: -1s\n    status_header: 'x cache'\n    \
             key: {headers: ['bad header'], query_include: [a], query_exclude: [b]}\n\
             routes:\n  - {name: r, match: {prefix: /}, direct_response: {status: 200}, cache: nope}\n",
        );
        assert_eq!(
            errs,
            vec![
                "cache 'c': stale_if_error: must not be negative",
                "cache 'c': status_header: 'x cache' is not a header name",
                "cache 'c': key.headers[0]: 'bad header' is not a header name",
                "cache 'c': key.query_include: query_include and query_exclude exclude each other",
                "route 'r': cache: unknown cache 'nope'",
            ]
        );
        assert!(
            errors("caches:\n  - {name: c, max_bytes: 1048576, default_ttl: 10s, status_header: '-'}\n").is_empty()
        );
    }
}
