//! The one validator both planes link: what the control plane accepts, a node accepts.
//!
//! Every problem is collected (not just the first), each naming the resource kind, its
//! name, the field path inside it and the reason.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use crate::config::{self, Config, cluster::LbPolicy, listener::Protocol, route, route_match};
use crate::text::{escape_controls, truncate};

/// The longest name a resource may have.
const MAX_NAME_LEN: usize = 128;
/// The largest endpoint or cluster weight: keeps the round-robin schedule small.
pub(crate) const MAX_WEIGHT: u32 = 1000;
/// Longest allowed timeout of any kind.
const MAX_TIMEOUT_SECS: i64 = 3600;
/// How much of a field path and of a reason an error shows (they may quote config text).
const MAX_SHOWN_FIELD: usize = 256;
const MAX_SHOWN_MESSAGE: usize = 512;

/// One problem in a config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// `listener`, `route`, `cluster`.
    pub kind: &'static str,
    /// The resource's name, or `#index` when it has none.
    pub name: String,
    /// Field path inside the resource.
    pub field: String,
    /// Why it is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} '{}': {}: {}", self.kind, self.name, self.field, self.message)
    }
}

impl From<ConfigError> for config::ValidationError {
    fn from(e: ConfigError) -> Self {
        config::ValidationError { kind: e.kind.to_owned(), name: e.name, field: e.field, message: e.message }
    }
}

/// Every problem found in a config; never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<ConfigError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    /// The errors as wire messages (admin API details, NACKs).
    pub fn to_proto(&self) -> Vec<config::ValidationError> {
        self.0.iter().cloned().map(Into::into).collect()
    }
}

/// Checks a whole config: names, references, addresses, values.
pub fn validate(config: &Config) -> Result<(), ValidationErrors> {
    let mut v = Validator::default();
    let listeners = v.names("listener", config.listeners.iter().map(|l| l.name.as_str()));
    let clusters = v.names("cluster", config.clusters.iter().map(|c| c.name.as_str()));
    v.names("route", config.routes.iter().map(|r| r.name.as_str()));

    let mut bound: HashMap<SocketAddr, &str> = HashMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let name = display_name(&l.name, i);
        match l.address.parse::<SocketAddr>() {
            Err(_) => v.err("listener", &name, "address", format!("'{}' is not an ip:port address", l.address)),
            Ok(addr) if addr.port() != 0 => {
                if let Some(other) = bound.insert(addr, &l.name) {
                    v.err("listener", &name, "address", format!("{addr} is already used by listener '{other}'"));
                }
            }
            Ok(_) => {}
        }
        v.duration("listener", &name, "request_headers_timeout", l.request_headers_timeout.as_ref());
        v.duration("listener", &name, "idle_timeout", l.idle_timeout.as_ref());
        v.duration("listener", &name, "send_timeout", l.send_timeout.as_ref());
        for (j, cidr) in l.trusted_proxies.iter().enumerate() {
            if cidr.parse::<ipnet::IpNet>().is_err() && cidr.parse::<std::net::IpAddr>().is_err() {
                v.err(
                    "listener",
                    &name,
                    &format!("trusted_proxies[{j}]"),
                    format!("'{cidr}' is not an address or CIDR"),
                );
            }
        }
        if let Some(log) = &l.access_log {
            if config::access_log::Format::try_from(log.format).is_err() {
                v.err("listener", &name, "access_log.format", format!("unknown format {}", log.format));
            }
            if !log.path.is_empty() && !log.path.starts_with('/') {
                v.err(
                    "listener",
                    &name,
                    "access_log.path",
                    format!("'{}' must be an absolute path (or empty for stdout)", log.path),
                );
            }
        }
        match Protocol::try_from(l.protocol) {
            Ok(Protocol::Http | Protocol::Https) => {}
            Ok(p) => v.err("listener", &name, "protocol", format!("{} is not supported yet", p.as_str_name())),
            Err(_) => v.err("listener", &name, "protocol", format!("unknown protocol {}", l.protocol)),
        }
    }

    for (i, c) in config.clusters.iter().enumerate() {
        let name = display_name(&c.name, i);
        match LbPolicy::try_from(c.lb_policy) {
            Ok(_) => {}
            Err(_) => v.err("cluster", &name, "lb_policy", format!("unknown policy {}", c.lb_policy)),
        }
        if let Some(od) = &c.outlier_detection {
            v.duration("cluster", &name, "outlier_detection.base_ejection_time", od.base_ejection_time.as_ref());
            if od.max_ejection_percent > 100 {
                v.err("cluster", &name, "outlier_detection.max_ejection_percent", "must be at most 100".into());
            }
        }
        if let Some(hc) = &c.health_check {
            v.duration("cluster", &name, "health_check.interval", hc.interval.as_ref());
            v.duration("cluster", &name, "health_check.timeout", hc.timeout.as_ref());
            if !hc.http_path.is_empty() {
                v.path("cluster", &name, "health_check.http_path", &hc.http_path);
            }
        }
        if let Some(st) = &c.sticky_session {
            if st.secret.len() < 16 {
                v.err("cluster", &name, "sticky_session.secret", "at least 16 characters are required".into());
            }
            if !st.cookie.is_empty() && !st.cookie.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                v.err("cluster", &name, "sticky_session.cookie", format!("'{}' is not a cookie name", st.cookie));
            }
            if !st.path.is_empty() && (!st.path.starts_with('/') || st.path.contains([';', ' '])) {
                v.err("cluster", &name, "sticky_session.path", format!("'{}' is not a cookie path", st.path));
            }
            // Cookie lifetimes are long-lived by nature: up to 400 days (browsers cap there).
            if let Some(ttl) = &st.ttl
                && (ttl.seconds <= 0 || ttl.seconds > 400 * 86_400)
            {
                v.err("cluster", &name, "sticky_session.ttl", "must be between 1s and 400 days".into());
            }
        }
        if c.panic_threshold_percent.is_some_and(|p| p > 100) {
            v.err("cluster", &name, "panic_threshold_percent", "must be at most 100".into());
        }
        if let Some(b) = &c.retry_budget
            && !(0.0..=100.0).contains(&b.budget_percent)
        {
            v.err("cluster", &name, "retry_budget.budget_percent", "must be between 0 and 100".into());
        }
        if config::cluster::UpstreamProtocol::try_from(c.protocol).is_err() {
            v.err("cluster", &name, "protocol", format!("unknown protocol {}", c.protocol));
        }
        if let Some(config::hash_policy::Key::Header(h) | config::hash_policy::Key::Cookie(h)) =
            c.hash_policy.as_ref().and_then(|p| p.key.as_ref())
            && h.is_empty()
        {
            v.err("cluster", &name, "hash_policy", "the header or cookie name is required".into());
        }
        if c.endpoints.is_empty() {
            v.err("cluster", &name, "endpoints", "at least one endpoint is required".into());
        }
        let mut seen = HashSet::new();
        let mut seen_names = HashSet::new();
        for (j, e) in c.endpoints.iter().enumerate() {
            let field = format!("endpoints[{j}].address");
            match e.address.parse::<SocketAddr>() {
                Err(_) if hostname_port(&e.address) => {
                    if !seen_names.insert(e.address.as_str()) {
                        v.err("cluster", &name, &field, format!("{} is listed twice", e.address));
                    }
                }
                Err(_) => v.err(
                    "cluster",
                    &name,
                    &field,
                    format!("'{}' is not an ip:port or hostname:port address", e.address),
                ),
                Ok(addr) if addr.port() == 0 => {
                    v.err("cluster", &name, &field, "port 0 is not a valid upstream port".into())
                }
                Ok(addr) => {
                    if !seen.insert(addr) {
                        v.err("cluster", &name, &field, format!("{addr} is listed twice"));
                    }
                }
            }
            if e.weight > MAX_WEIGHT {
                v.err("cluster", &name, &format!("endpoints[{j}].weight"), format!("must be at most {MAX_WEIGHT}"));
            }
        }
        v.duration("cluster", &name, "connect_timeout", c.connect_timeout.as_ref());
    }

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
                    if retry.num_retries > 10 {
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
    crate::validate_tls::check(config, &mut v);
    crate::validate_policy::check(config, &mut v);
    v.finish()
}

/// Largest compiled size of one regular expression (bounds node memory and match time).
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Largest direct response body.
const MAX_DIRECT_BODY: usize = 64 * 1024;

/// The `{name}` and `{*name}` parameters of a template, names only.
pub fn template_params(template: &str) -> Vec<String> {
    template
        .split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.trim_start_matches('*').to_owned()))
        .collect()
}

/// Compiles a regular expression the whole input must match.
pub fn full_match_regex(re: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{re})$")).size_limit(REGEX_SIZE_LIMIT).build()
}

/// `hostname:port` with a valid DNS name and a non-zero port.
fn hostname_port(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else { return false };
    !host.starts_with('*') && host_pattern(host).is_ok() && port.parse::<u16>().is_ok_and(|p| p != 0)
}

/// An HTTP field name (RFC 9110 token).
pub(crate) fn is_header_name(h: &str) -> bool {
    !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks a route host: `name.example`, or `*.example` for any name under it.
pub(crate) fn host_pattern(h: &str) -> Result<(), &'static str> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.is_empty() || name.len() > 253 {
        return Err("is not a host name");
    }
    if h.contains(':') {
        return Err("must not hold a port (the request's port is ignored)");
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("must be lower case");
    }
    let labels_ok = name
        .split('.')
        .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !labels_ok {
        return Err("is not a host name (letters, digits, '-', dots; '*.' only as a prefix)");
    }
    Ok(())
}

pub(crate) fn display_name(name: &str, index: usize) -> String {
    if name.is_empty() { format!("#{index}") } else { name.to_owned() }
}

#[derive(Default)]
pub(crate) struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
    /// Records a problem. Names, field paths and messages echo config text: control
    /// characters are escaped and lengths bounded, so an error is safe to print and the
    /// list of them stays small enough for a gRPC status.
    pub(crate) fn err(&mut self, kind: &'static str, name: &str, field: &str, message: String) {
        let shown = |text: &str, max: usize| truncate(&escape_controls(text), max).into_owned();
        self.errors.push(ConfigError {
            kind,
            name: shown(name, MAX_NAME_LEN + 3),
            field: shown(field, MAX_SHOWN_FIELD),
            message: shown(&message, MAX_SHOWN_MESSAGE),
        });
    }

    /// Checks the names of one kind; returns the set of valid ones for reference checks.
    pub(crate) fn names<'a>(&mut self, kind: &'static str, names: impl Iterator<Item = &'a str>) -> HashSet<&'a str> {
        let mut seen = HashSet::new();
        for (i, n) in names.enumerate() {
            let shown = display_name(n, i);
            if n.is_empty() {
                self.err(kind, &shown, "name", "is required".into());
            } else if n.len() > MAX_NAME_LEN {
                self.err(kind, &shown, "name", format!("longer than {MAX_NAME_LEN} characters"));
            } else if !n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                self.err(kind, &shown, "name", "may hold only letters, digits, '-', '_' and '.'".into());
            } else if !seen.insert(n) {
                self.err(kind, &shown, "name", format!("duplicate {kind} name"));
            }
        }
        seen
    }

    fn path(&mut self, kind: &'static str, name: &str, field: &str, path: &str) {
        if !path.starts_with('/') {
            self.err(kind, name, field, format!("'{path}' must start with '/'"));
        } else if path.contains(['?', '#']) || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            self.err(kind, name, field, format!("'{path}' may not hold '?', '#', spaces or control characters"));
        }
    }

    pub(crate) fn regex(&mut self, kind: &'static str, name: &str, field: &str, re: &str) {
        if let Err(e) = full_match_regex(re) {
            let reason = e.to_string().lines().last().unwrap_or("invalid").trim().to_owned();
            self.err(kind, name, field, format!("invalid regex '{re}': {reason}"));
        }
    }

    pub(crate) fn duration(&mut self, kind: &'static str, name: &str, field: &str, d: Option<&pbjson_types::Duration>) {
        let Some(d) = d else { return };
        if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) {
            self.err(kind, name, field, "must be positive".into());
        } else if d.seconds >= MAX_TIMEOUT_SECS {
            self.err(kind, name, field, format!("must be under {MAX_TIMEOUT_SECS}s"));
        }
    }

    /// Header edits: valid names, values without control characters.
    pub(crate) fn header_rules(&mut self, kind: &'static str, name: &str, field: &str, rules: &config::HeaderRules) {
        let names = rules
            .add
            .iter()
            .chain(&rules.set)
            .map(|h| (h.name.as_str(), Some(h.value.as_str())))
            .chain(rules.remove.iter().map(|n| (n.as_str(), None)));
        for (header, value) in names {
            if !is_header_name(header) {
                self.err(kind, name, field, format!("'{header}' is not a header name"));
            }
            if let Some(value) = value
                && value.bytes().any(|b| b.is_ascii_control() && b != b'\t')
            {
                self.err(kind, name, field, format!("the value of '{header}' holds control characters"));
            }
        }
    }

    pub(crate) fn finish(self) -> Result<(), ValidationErrors> {
        if self.errors.is_empty() { Ok(()) } else { Err(ValidationErrors(self.errors)) }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Format, load};

    /// Every error the validator finds in a YAML config, as users read them.
    pub(crate) fn errors(yaml: &str) -> Vec<String> {
        let config = load(yaml, Format::Yaml).unwrap();
        match validate(&config) {
            Ok(()) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const BASE: &str = "clusters:\n  - name: c\n    endpoints: [{address: '127.0.0.1:9001'}]\n";

    #[test]
    fn dangling_cluster_reference_names_the_field() {
        let errs = errors(&format!(
            "{BASE}routes:\n  - name: r\n    match: {{prefix: /}}\n    forward: {{clusters: [{{name: nope}}]}}\n"
        ));
        assert_eq!(errs, vec!["route 'r': forward.clusters[0].name: unknown cluster 'nope'"]);
    }

    #[test]
    fn listener_timeouts_must_be_positive() {
        let errs = errors(
            "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    idle_timeout: 0s\n    send_timeout: -1s\n    \
             request_headers_timeout: 5s\n",
        );
        assert_eq!(
            errs,
            vec!["listener 'web': idle_timeout: must be positive", "listener 'web': send_timeout: must be positive"]
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        let errs = errors(&format!("{BASE}  - name: c\n    endpoints: [{{address: '127.0.0.1:9002'}}]\n"));
        assert_eq!(errs, vec!["cluster 'c': name: duplicate cluster name"]);
    }

    #[test]
    fn control_characters_in_names_are_refused_and_shown_escaped() {
        let errs = errors(&format!("{BASE}  - name: \"x\\e[31my\"\n    endpoints: [{{address: '127.0.0.1:9002'}}]\n"));
        assert_eq!(errs, vec!["cluster 'x\\u{1b}[31my': name: may hold only letters, digits, '-', '_' and '.'"]);
    }

    #[test]
    fn bad_addresses_are_refused() {
        let errs = errors(
            "listeners:\n  - {name: l, address: 'localhost:80'}\nclusters:\n  - name: c\n    endpoints: [{address: '127.0.0.1'}]\n",
        );
        assert!(
            errs.contains(&"listener 'l': address: 'localhost:80' is not an ip:port address".to_string()),
            "{errs:?}"
        );
        assert!(
            errs.contains(
                &"cluster 'c': endpoints[0].address: '127.0.0.1' is not an ip:port or hostname:port address"
                    .to_string()
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn empty_endpoints_and_bad_prefix_are_refused() {
        let errs = errors(
            "clusters:\n  - name: c\nroutes:\n  - name: r\n    match: {prefix: api}\n    forward: {clusters: [{name: c}]}\n",
        );
        assert_eq!(
            errs,
            vec![
                "cluster 'c': endpoints: at least one endpoint is required",
                "route 'r': match.prefix: 'api' must start with '/'"
            ]
        );
    }

    #[test]
    fn unknown_listener_and_missing_match_are_refused() {
        let errs = errors(&format!(
            "{BASE}routes:\n  - name: r\n    listeners: [web]\n    forward: {{clusters: [{{name: c}}]}}\n"
        ));
        assert_eq!(
            errs,
            vec![
                "route 'r': match: a path match (prefix, exact, path_separated_prefix, regex or template) is required",
                "route 'r': listeners[0]: unknown listener 'web'"
            ]
        );
    }

    #[test]
    fn two_listeners_on_one_address_are_refused() {
        let errs =
            errors("listeners:\n  - {name: a, address: '127.0.0.1:8080'}\n  - {name: b, address: '127.0.0.1:8080'}\n");
        assert_eq!(errs, vec!["listener 'b': address: 127.0.0.1:8080 is already used by listener 'a'"]);
    }

    #[test]
    fn matchers_are_checked() {
        let errs = errors(&format!(
            "{BASE}routes:\n  - name: r\n    match:\n      regex: '/a(['\n      hosts: ['Shop.example', '*.ok.example', 'a:80']\n      methods: [get]\n      headers: [{{name: 'x bad', exact: v}}, {{name: x-ok}}]\n      query: [{{name: q, regex: '('}}]\n    forward: {{clusters: [{{name: c}}]}}\n"
        ));
        let fields: Vec<&str> = errs.iter().map(|e| e.split(": ").nth(1).unwrap()).collect();
        assert_eq!(
            fields,
            vec![
                "match.regex",
                "match.hosts[0]",
                "match.hosts[2]",
                "match.methods[0]",
                "match.headers[0].name",
                "match.headers[1]",
                "match.query[0].regex"
            ],
            "{errs:#?}"
        );
    }

    #[test]
    fn conflicting_templates_on_one_host_are_refused() {
        let route = |n: &str, t: &str| {
            format!("  - {{name: {n}, match: {{template: '{t}'}}, forward: {{clusters: [{{name: c}}]}}}}\n")
        };
        let ok = errors(&format!("{BASE}routes:\n{}{}", route("a", "/users/{id}"), route("b", "/users/{id}/posts")));
        assert!(ok.is_empty(), "{ok:?}");
        let errs = errors(&format!("{BASE}routes:\n{}{}", route("a", "/users/{id}"), route("b", "/users/{name}")));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("route 'b': match.template: '/users/{name}'"), "{errs:?}");
    }

    #[test]
    fn unsupported_protocols_say_so() {
        let errs = errors("listeners:\n  - {name: a, address: '127.0.0.1:8443', protocol: TCP}\n");
        assert_eq!(errs, vec!["listener 'a': protocol: TCP is not supported yet"]);
        let errs = errors("listeners:\n  - {name: a, address: '127.0.0.1:8443', protocol: HTTPS}\n");
        assert_eq!(errs, vec!["listener 'a': tls: an HTTPS listener needs tls.certificates"]);
    }
}
