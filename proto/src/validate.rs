//! The one validator both planes link: what the control plane accepts, a node accepts.
//!
//! Every problem is collected (not just the first), each naming the resource kind, its
//! name, the field path inside it and the reason.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;

use crate::config::{self, Config, cluster::LbPolicy, listener::Protocol, route, route_match};

/// The longest name a resource may have.
const MAX_NAME_LEN: usize = 128;
/// The largest endpoint or cluster weight: keeps the round-robin schedule small.
pub(crate) const MAX_WEIGHT: u32 = 1000;
/// Longest allowed timeout of any kind.
const MAX_TIMEOUT_SECS: i64 = 3600;

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
            Ok(Protocol::Http) => {}
            Ok(p) => v.err("listener", &name, "protocol", format!("{} is not supported yet", p.as_str_name())),
            Err(_) => v.err("listener", &name, "protocol", format!("unknown protocol {}", l.protocol)),
        }
    }

    for (i, c) in config.clusters.iter().enumerate() {
        let name = display_name(&c.name, i);
        match LbPolicy::try_from(c.lb_policy) {
            Ok(LbPolicy::RoundRobin | LbPolicy::Random) => {}
            Ok(p) => v.err("cluster", &name, "lb_policy", format!("{} is not supported yet", p.as_str_name())),
            Err(_) => v.err("cluster", &name, "lb_policy", format!("unknown policy {}", c.lb_policy)),
        }
        if c.endpoints.is_empty() {
            v.err("cluster", &name, "endpoints", "at least one endpoint is required".into());
        }
        let mut seen = HashSet::new();
        for (j, e) in c.endpoints.iter().enumerate() {
            let field = format!("endpoints[{j}].address");
            match e.address.parse::<SocketAddr>() {
                Err(_) => v.err("cluster", &name, &field, format!("'{}' is not an ip:port address", e.address)),
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

    for (i, r) in config.routes.iter().enumerate() {
        let name = display_name(&r.name, i);
        match r.r#match.as_ref().and_then(|m| m.path.as_ref()) {
            None => v.err("route", &name, "match", "a path match (prefix or exact) is required".into()),
            Some(route_match::Path::Prefix(p)) => v.path("route", &name, "match.prefix", p),
            Some(route_match::Path::Exact(p)) => v.path("route", &name, "match.exact", p),
        }
        match &r.action {
            None => v.err("route", &name, "forward", "an action is required".into()),
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
            }
        }
        for (j, l) in r.listeners.iter().enumerate() {
            if !listeners.contains(l.as_str()) {
                v.err("route", &name, &format!("listeners[{j}]"), format!("unknown listener '{l}'"));
            }
        }
    }
    v.finish()
}

fn display_name(name: &str, index: usize) -> String {
    if name.is_empty() { format!("#{index}") } else { name.to_owned() }
}

#[derive(Default)]
struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
    fn err(&mut self, kind: &'static str, name: &str, field: &str, message: String) {
        self.errors.push(ConfigError { kind, name: name.to_owned(), field: field.to_owned(), message });
    }

    /// Checks the names of one kind; returns the set of valid ones for reference checks.
    fn names<'a>(&mut self, kind: &'static str, names: impl Iterator<Item = &'a str>) -> HashSet<&'a str> {
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

    fn duration(&mut self, kind: &'static str, name: &str, field: &str, d: Option<&pbjson_types::Duration>) {
        let Some(d) = d else { return };
        if d.seconds < 0 || d.nanos < 0 || (d.seconds == 0 && d.nanos == 0) {
            self.err(kind, name, field, "must be positive".into());
        } else if d.seconds >= MAX_TIMEOUT_SECS {
            self.err(kind, name, field, format!("must be under {MAX_TIMEOUT_SECS}s"));
        }
    }

    fn finish(self) -> Result<(), ValidationErrors> {
        if self.errors.is_empty() { Ok(()) } else { Err(ValidationErrors(self.errors)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, load};

    fn errors(yaml: &str) -> Vec<String> {
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
    fn duplicate_names_are_refused() {
        let errs = errors(&format!("{BASE}  - name: c\n    endpoints: [{{address: '127.0.0.1:9002'}}]\n"));
        assert_eq!(errs, vec!["cluster 'c': name: duplicate cluster name"]);
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
            errs.contains(&"cluster 'c': endpoints[0].address: '127.0.0.1' is not an ip:port address".to_string()),
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
                "route 'r': match: a path match (prefix or exact) is required",
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
    fn unsupported_protocols_say_so() {
        let errs = errors("listeners:\n  - {name: a, address: '127.0.0.1:8443', protocol: HTTPS}\n");
        assert_eq!(errs, vec!["listener 'a': protocol: HTTPS is not supported yet"]);
    }
}
