//! Routes: matches (paths, templates that cannot conflict on one host, hosts, methods,
//! headers, query), actions (forward with rewrites, mirror and retry; redirect; direct
//! response), header edits, and references to clusters and listeners.

use std::collections::{HashMap, HashSet};

use crate::config::{self, Config, route, route_match};

use super::check::{
    MAX_DIRECT_BODY, MAX_WEIGHT, REGEX_SIZE_LIMIT, Validator, display_name, host_pattern, template_params,
};

/// Largest `forward.replay_body_bytes`: bodies kept whole for a retry or a mirror.
const MAX_REPLAY_BODY_BYTES: u32 = 16 << 20;

pub(crate) fn check(config: &Config, v: &mut Validator, clusters: &HashSet<&str>, listeners: &HashSet<&str>) {
    // Templates that could take the same path on one host conflict; grouped by host.
    let mut templates: HashMap<String, matchit::Router<()>> = HashMap::new();
    let mut seen_templates: HashSet<(String, String)> = HashSet::new();
    for (i, r) in config.routes.iter().enumerate() {
        let name = display_name(&r.name, i);
        let m = r.r#match.clone().unwrap_or_default();
        match &m.path {
            None => v.err(
                "route",
                &name,
                "match",
                "a path match (prefix, exact, path_separated_prefix, regex or template) is required".into(),
            ),
            Some(route_match::Path::Prefix(p)) => v.path("route", &name, "match.prefix", p),
            Some(route_match::Path::Exact(p)) => v.path("route", &name, "match.exact", p),
            Some(route_match::Path::PathSeparatedPrefix(p)) => {
                v.path("route", &name, "match.path_separated_prefix", p);
                if p.len() > 1 && p.ends_with('/') {
                    v.err("route", &name, "match.path_separated_prefix", format!("'{p}' must not end with '/'"));
                }
            }
            Some(route_match::Path::Regex(re)) => v.regex("route", &name, "match.regex", re),
            Some(route_match::Path::Template(t)) => {
                v.path("route", &name, "match.template", t);
                let hosts: Vec<String> = if m.hosts.is_empty() { vec![String::new()] } else { m.hosts.clone() };
                for host in hosts {
                    if !seen_templates.insert((host.clone(), t.clone())) {
                        continue;
                    }
                    if let Err(e) = templates.entry(host).or_default().insert(t.as_str(), ()) {
                        v.err("route", &name, "match.template", format!("'{t}': {e}"));
                        break;
                    }
                }
            }
        }
        for (j, h) in m.hosts.iter().enumerate() {
            if let Err(reason) = host_pattern(h) {
                v.err("route", &name, &format!("match.hosts[{j}]"), format!("'{h}' {reason}"));
            }
        }
        for (j, method) in m.methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                v.err(
                    "route",
                    &name,
                    &format!("match.methods[{j}]"),
                    format!("'{method}' is not an upper-case method name"),
                );
            }
        }
        for (j, h) in m.headers.iter().enumerate() {
            let field = format!("match.headers[{j}]");
            if h.name.is_empty()
                || !h.name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                v.err("route", &name, &format!("{field}.name"), format!("'{}' is not a header name", h.name));
            }
            match &h.r#match {
                None => v.err("route", &name, &field, "one of exact, regex or present is required".into()),
                Some(config::header_match::Match::Regex(re)) => v.regex("route", &name, &format!("{field}.regex"), re),
                Some(_) => {}
            }
        }
        for (j, q) in m.query.iter().enumerate() {
            let field = format!("match.query[{j}]");
            if q.name.is_empty() {
                v.err("route", &name, &format!("{field}.name"), "is required".into());
            }
            match &q.r#match {
                None => v.err("route", &name, &field, "one of exact, regex or present is required".into()),
                Some(config::query_match::Match::Regex(re)) => v.regex("route", &name, &format!("{field}.regex"), re),
                Some(_) => {}
            }
        }
        match &r.action {
            None => {
                v.err("route", &name, "forward", "an action is required (forward, redirect or direct_response)".into())
            }
            Some(route::Action::Forward(f)) => {
                if f.clusters.is_empty() {
                    v.err("route", &name, "forward.clusters", "at least one cluster is required".into());
                }
                for (j, wc) in f.clusters.iter().enumerate() {
                    if !clusters.contains(wc.name.as_str()) {
                        v.err(
                            "route",
                            &name,
                            &format!("forward.clusters[{j}].name"),
                            format!("unknown cluster '{}'", wc.name),
                        );
                    }
                    if wc.weight > MAX_WEIGHT {
                        v.err(
                            "route",
                            &name,
                            &format!("forward.clusters[{j}].weight"),
                            format!("must be at most {MAX_WEIGHT}"),
                        );
                    }
                }
                v.duration("route", &name, "forward.timeout", f.timeout.as_ref());
                v.duration("route", &name, "forward.request_body_timeout", f.request_body_timeout.as_ref());
                let is_prefix =
                    matches!(m.path, Some(route_match::Path::Prefix(_) | route_match::Path::PathSeparatedPrefix(_)));
                let rewrites =
                    [!f.prefix_rewrite.is_empty(), f.regex_rewrite.is_some(), !f.template_rewrite.is_empty()];
                if rewrites.iter().filter(|r| **r).count() > 1 {
                    v.err(
                        "route",
                        &name,
                        "forward",
                        "give at most one of prefix_rewrite, regex_rewrite, template_rewrite".into(),
                    );
                }
                if !f.prefix_rewrite.is_empty() {
                    if !is_prefix {
                        v.err(
                            "route",
                            &name,
                            "forward.prefix_rewrite",
                            "needs a prefix or path_separated_prefix match".into(),
                        );
                    }
                    v.path("route", &name, "forward.prefix_rewrite", &f.prefix_rewrite);
                }
                if let Some(rr) = &f.regex_rewrite
                    && let Err(e) = regex::RegexBuilder::new(&rr.pattern).size_limit(REGEX_SIZE_LIMIT).build()
                {
                    let reason = e.to_string().lines().last().unwrap_or("invalid").trim().to_owned();
                    v.err(
                        "route",
                        &name,
                        "forward.regex_rewrite.pattern",
                        format!("invalid regex '{}': {reason}", rr.pattern),
                    );
                }
                if !f.template_rewrite.is_empty() {
                    match &m.path {
                        Some(route_match::Path::Template(t)) => {
                            v.path("route", &name, "forward.template_rewrite", &f.template_rewrite);
                            for param in template_params(&f.template_rewrite) {
                                if !template_params(t).contains(&param) {
                                    v.err(
                                        "route",
                                        &name,
                                        "forward.template_rewrite",
                                        format!("'{{{param}}}' is not captured by '{t}'"),
                                    );
                                }
                            }
                        }
                        _ => v.err("route", &name, "forward.template_rewrite", "needs a template match".into()),
                    }
                }
                if let Some(mirror) = &f.mirror {
                    if !clusters.contains(mirror.cluster.as_str()) {
                        v.err(
                            "route",
                            &name,
                            "forward.mirror.cluster",
                            format!("unknown cluster '{}'", mirror.cluster),
                        );
                    }
                    if mirror.percent.is_some_and(|p| p > 100) {
                        v.err("route", &name, "forward.mirror.percent", "must be at most 100".into());
                    }
                }
                if let Some(retry) = &f.retry {
                    for (j, cond) in retry.retry_on.iter().enumerate() {
                        if !matches!(
                            cond.as_str(),
                            "connect-failure" | "reset" | "5xx" | "retriable-status" | "timeout"
                        ) {
                            v.err(
                                "route",
                                &name,
                                &format!("forward.retry.retry_on[{j}]"),
                                format!(
                                    "'{cond}' is not one of connect-failure, reset, 5xx, retriable-status, timeout"
                                ),
                            );
                        }
                    }
                    if retry.num_retries.is_some_and(|n| n > 10) {
                        v.err("route", &name, "forward.retry.num_retries", "must be at most 10".into());
                    }
                    for (j, code) in retry.retriable_statuses.iter().enumerate() {
                        if !(100..=599).contains(code) {
                            v.err(
                                "route",
                                &name,
                                &format!("forward.retry.retriable_statuses[{j}]"),
                                format!("{code} is not an HTTP status"),
                            );
                        }
                    }
                    v.duration("route", &name, "forward.retry.per_try_timeout", retry.per_try_timeout.as_ref());
                    v.duration("route", &name, "forward.retry.backoff", retry.backoff.as_ref());
                }
                if f.replay_body_bytes.is_some_and(|n| n > MAX_REPLAY_BODY_BYTES) {
                    v.err(
                        "route",
                        &name,
                        "forward.replay_body_bytes",
                        format!("must be at most {MAX_REPLAY_BODY_BYTES} (16 MiB): larger bodies stream"),
                    );
                }
                if !f.host_rewrite.is_empty() && host_pattern(&f.host_rewrite.replace(':', "")).is_err() {
                    v.err("route", &name, "forward.host_rewrite", format!("'{}' is not a host", f.host_rewrite));
                }
            }
            Some(route::Action::Redirect(rd)) => {
                if !matches!(rd.code, 0 | 301 | 302 | 303 | 307 | 308) {
                    v.err(
                        "route",
                        &name,
                        "redirect.code",
                        format!("{} is not a redirect code (301, 302, 303, 307, 308)", rd.code),
                    );
                }
                if !matches!(rd.scheme.as_str(), "" | "http" | "https") {
                    v.err("route", &name, "redirect.scheme", format!("'{}' is not http or https", rd.scheme));
                }
                if !rd.host.is_empty() && host_pattern(&rd.host).is_err() {
                    v.err("route", &name, "redirect.host", format!("'{}' is not a host name", rd.host));
                }
                if rd.port > 65535 {
                    v.err("route", &name, "redirect.port", "must be at most 65535".into());
                }
                if !rd.path.is_empty() {
                    v.path("route", &name, "redirect.path", &rd.path);
                }
                if !rd.prefix_rewrite.is_empty() {
                    let is_prefix = matches!(
                        m.path,
                        Some(route_match::Path::Prefix(_) | route_match::Path::PathSeparatedPrefix(_))
                    );
                    if !is_prefix || !rd.path.is_empty() {
                        v.err(
                            "route",
                            &name,
                            "redirect.prefix_rewrite",
                            "needs a prefix match and no redirect.path".into(),
                        );
                    }
                }
            }
            Some(route::Action::DirectResponse(d)) => {
                if !(100..=599).contains(&d.status) {
                    v.err("route", &name, "direct_response.status", format!("{} is not an HTTP status", d.status));
                }
                if d.body.len() > MAX_DIRECT_BODY {
                    v.err("route", &name, "direct_response.body", format!("longer than {MAX_DIRECT_BODY} bytes"));
                }
            }
        }
        for (field, rules) in [("request_headers", &r.request_headers), ("response_headers", &r.response_headers)] {
            if let Some(rules) = rules {
                v.header_rules("route", &name, field, rules);
            }
        }
        for (j, l) in r.listeners.iter().enumerate() {
            if !listeners.contains(l.as_str()) {
                v.err("route", &name, &format!("listeners[{j}]"), format!("unknown listener '{l}'"));
            }
        }
    }
}
