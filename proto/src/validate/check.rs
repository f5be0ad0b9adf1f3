//! The validator's tools, shared by the checks of every resource kind: the error sink
//! ([`Validator`]) with its common checks (names, paths, regexes, durations, header
//! edits), the limits, and small parsers. A leaf: it knows no resource kind's rules.

use std::collections::HashSet;

use crate::config;
use crate::text::{escape_controls, truncate};

use super::error::{ConfigError, ValidationErrors};

/// The longest name a resource may have.
pub(crate) const MAX_NAME_LEN: usize = 128;
/// The largest endpoint or cluster weight: keeps the round-robin schedule small.
pub(crate) const MAX_WEIGHT: u32 = 1000;
/// Longest allowed timeout of any kind.
const MAX_TIMEOUT_SECS: i64 = 3600;
/// How much of a field path and of a reason an error shows (they may quote config text).
const MAX_SHOWN_FIELD: usize = 256;
const MAX_SHOWN_MESSAGE: usize = 512;

/// Largest compiled size of one regular expression (bounds node memory and match time).
pub(crate) const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Largest direct response body.
pub(crate) const MAX_DIRECT_BODY: usize = 64 * 1024;

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
pub(crate) fn hostname_port(address: &str) -> bool {
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

    pub(crate) fn path(&mut self, kind: &'static str, name: &str, field: &str, path: &str) {
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
