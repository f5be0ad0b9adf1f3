//! How reading commands print: aligned tables for people, YAML/JSON for programs.

use vane_proto::admin::{DiffResponse, HistoryResponse, Kind, ListNodesResponse, Resource, resource, resource_change};
use vane_proto::config::{Config, cluster::LbPolicy, listener::Protocol, route, route_match};
use vane_proto::{Format, render};

use crate::Output;

/// Left-aligned columns separated by two spaces.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    // Cells show config text: control characters are escaped, never sent to the terminal.
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| row.into_iter().map(|cell| vane_proto::text::escape_controls(&cell).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}

fn timestamp(ts: Option<&pbjson_types::Timestamp>) -> String {
    ts.and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".into())
}

pub(crate) fn config(config: &Config, kind: Kind, version: u64, out: Output) -> String {
    match out {
        Output::Yaml => render(config, Format::Yaml),
        Output::Json => render(config, Format::Json),
        Output::Table => {
            let mut text = String::new();
            let all = kind == Kind::Unspecified;
            if all || kind == Kind::Listener {
                let rows = config
                    .listeners
                    .iter()
                    .map(|l| {
                        let mut protocol = Protocol::try_from(l.protocol).map_or("?", |p| p.as_str_name()).to_owned();
                        if let Some(t) = &l.tls {
                            protocol.push_str(&format!(" certs={}", t.certificates.join(",")));
                        }
                        if l.enable_reuse_port {
                            protocol.push_str(" reuse_port");
                        }
                        if l.https_redirect_port != 0 {
                            protocol.push_str(&format!(" ->https:{}", l.https_redirect_port));
                        }
                        vec![l.name.clone(), l.address.clone(), protocol]
                    })
                    .collect();
                text.push_str(&table(&["LISTENER", "ADDRESS", "PROTOCOL"], rows));
            }
            if all || kind == Kind::Route {
                let rows = config
                    .routes
                    .iter()
                    .map(|r| {
                        let m = r.r#match.clone().unwrap_or_default();
                        let mut matcher = match &m.path {
                            Some(route_match::Path::Prefix(p)) => format!("prefix {p}"),
                            Some(route_match::Path::Exact(p)) => format!("exact {p}"),
                            Some(route_match::Path::PathSeparatedPrefix(p)) => format!("path_separated_prefix {p}"),
                            Some(route_match::Path::Regex(p)) => format!("regex {p}"),
                            Some(route_match::Path::Template(p)) => format!("template {p}"),
                            None => "-".into(),
                        };
                        if !m.hosts.is_empty() {
                            matcher.push_str(&format!(" hosts={}", m.hosts.join(",")));
                        }
                        if !m.methods.is_empty() {
                            matcher.push_str(&format!(" methods={}", m.methods.join(",")));
                        }
                        let extra = m.headers.len() + m.query.len();
                        if extra > 0 {
                            matcher.push_str(&format!(" +{extra} header/query"));
                        }
                        let clusters = match &r.action {
                            Some(route::Action::Forward(f)) => f
                                .clusters
                                .iter()
                                .map(|c| if c.weight > 0 { format!("{}={}", c.name, c.weight) } else { c.name.clone() })
                                .collect::<Vec<_>>()
                                .join(","),
                            Some(route::Action::Redirect(rd)) => {
                                format!("(redirect {})", if rd.code == 0 { 302 } else { rd.code })
                            }
                            Some(route::Action::DirectResponse(d)) => format!("(direct {})", d.status),
                            None => "-".into(),
                        };
                        let listeners = if r.listeners.is_empty() { "*".into() } else { r.listeners.join(",") };
                        vec![r.name.clone(), matcher, clusters, listeners]
                    })
                    .collect();
                text.push_str(&table(&["ROUTE", "MATCH", "ACTION", "LISTENERS"], rows));
            }
            if all || kind == Kind::Cluster {
                let rows = config
                    .clusters
                    .iter()
                    .map(|c| {
                        let policy = LbPolicy::try_from(c.lb_policy).map_or("?", |p| p.as_str_name());
                        let endpoints = c
                            .endpoints
                            .iter()
                            .map(|e| {
                                let mut shown = if e.weight > 1 {
                                    format!("{}*{}", e.address, e.weight)
                                } else {
                                    e.address.clone()
                                };
                                if e.drain {
                                    shown.push_str("(drained)");
                                }
                                shown
                            })
                            .collect::<Vec<_>>()
                            .join(",");
                        vec![c.name.clone(), policy.to_owned(), endpoints]
                    })
                    .collect();
                text.push_str(&table(&["CLUSTER", "POLICY", "ENDPOINTS"], rows));
            }
            if all || kind == Kind::Policy {
                let rows = config.policies.iter().map(policy_row).collect();
                text.push_str(&table(&["POLICY", "STAGES"], rows));
            }
            if all || kind == Kind::Consumer {
                let rows = config
                    .consumers
                    .iter()
                    .map(|c| {
                        let basic = c.basic_auth.as_ref().map_or("-".to_owned(), |b| b.username.clone());
                        vec![c.name.clone(), c.api_keys.len().to_string(), basic, c.subjects.join(",")]
                    })
                    .collect();
                text.push_str(&table(&["CONSUMER", "API KEYS", "BASIC USER", "SUBJECTS"], rows));
            }
            if all || kind == Kind::Cache {
                let rows = config.caches.iter().map(|c| cache_row(c, &config.routes)).collect();
                text.push_str(&table(
                    &["CACHE", "MAX BYTES", "MAX ENTRY", "DEFAULT TTL", "STALE (SWR/SIE)", "ROUTES"],
                    rows,
                ));
            }
            if all || kind == Kind::Compression {
                let rows = config.compressions.iter().map(|c| vec![c.name.clone()]).collect();
                text.push_str(&table(&["COMPRESSION"], rows));
            }
            if all || kind == Kind::Certificate {
                let rows = config.certificates.iter().map(certificate_row).collect();
                text.push_str(&table(&["CERTIFICATE", "NAMES", "NOT AFTER", "SOURCE"], rows));
            }
            format!("# version {version}\n{text}")
        }
    }
}

/// A policy's name and its stages, e.g. `auth(jwt), rate_limit(100/60s)`.
fn policy_row(p: &vane_proto::config::Policy) -> Vec<String> {
    let mut stages = Vec::new();
    if p.ip_filter.is_some() {
        stages.push("ip_filter".to_owned());
    }
    if p.cors.is_some() {
        stages.push("cors".to_owned());
    }
    if let Some(a) = &p.auth {
        let on = [
            (a.api_key.is_some(), "api_key"),
            (a.basic.is_some(), "basic"),
            (a.jwt.is_some(), "jwt"),
            (a.introspection.is_some(), "introspection"),
            (a.ext_authz.is_some(), "ext_authz"),
        ];
        let names: Vec<&str> = on.iter().filter(|(set, _)| *set).map(|(_, n)| *n).collect();
        stages.push(format!("auth({})", names.join("+")));
    }
    if let Some(r) = &p.rate_limit {
        let per = r.per.as_ref().map_or(1, |d| d.seconds.max(1));
        stages.push(format!("rate_limit({}/{per}s)", r.requests));
    }
    if p.transform.is_some() {
        stages.push("transform".to_owned());
    }
    vec![p.name.clone(), stages.join(", ")]
}

/// Name, the leaf's DNS names and expiry (inline chains; files live on the nodes), source.
fn certificate_row(c: &vane_proto::config::Certificate) -> Vec<String> {
    use vane_proto::config::data_source::Specifier;
    let (names, not_after, source) = match c.certificate_chain.as_ref().and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineString(pem)) => {
            let leaf = vane_proto::tls::parse_certificates(pem)
                .ok()
                .and_then(|certs| vane_proto::tls::inspect(&certs[0]).ok());
            match leaf {
                Some(info) => {
                    let expiry = vane_proto::timestamp_from_unix_ms(info.not_after.saturating_mul(1000));
                    (info.dns_names.join(","), timestamp(Some(&expiry)), "inline".to_owned())
                }
                None => ("?".into(), "?".into(), "inline".into()),
            }
        }
        Some(Specifier::Filename(path)) => ("-".into(), "-".into(), format!("file {path}")),
        None => ("-".into(), "-".into(), "-".into()),
    };
    vec![c.name.clone(), names, not_after, source]
}

pub(crate) fn nodes(response: &ListNodesResponse, out: Output) -> String {
    match out {
        Output::Json => json(response),
        Output::Yaml => serde_norway::to_string(response).unwrap_or_default(),
        Output::Table => {
            let rows = response
                .nodes
                .iter()
                .map(|n| {
                    let nack = if n.nack_version == 0 {
                        "-".to_owned()
                    } else {
                        let errors: Vec<String> = n
                            .nack_errors
                            .iter()
                            .map(|e| {
                                if e.name.is_empty() {
                                    e.message.clone()
                                } else {
                                    format!("{} '{}': {}", e.kind, e.name, e.message)
                                }
                            })
                            .collect();
                        format!("v{}: {}", n.nack_version, errors.join("; "))
                    };
                    // What the node serves: the version it held when it connected, then each
                    // one it acknowledged (`-`: nothing yet). A push-to-ACK time exists only
                    // for a version this control-plane process pushed: none right after a
                    // restart, until the next version.
                    let version = if n.version_held == 0 { "-".to_owned() } else { n.version_held.to_string() };
                    let push_to_ack =
                        if n.acked_version == 0 { "-".to_owned() } else { format!("{}ms", n.push_to_ack_ms) };
                    vec![
                        n.node_id.clone(),
                        if n.connected { "yes".into() } else { "no".into() },
                        version,
                        push_to_ack,
                        n.address.clone(),
                        timestamp(n.last_seen.as_ref()),
                        problem_kinds(&n.problems),
                        nack,
                    ]
                })
                .collect();
            let mut text = table(
                &["NODE", "CONNECTED", "VERSION", "PUSH-TO-ACK", "ADDRESS", "LAST SEEN", "PROBLEMS", "LAST NACK"],
                rows,
            );
            // Each problem in full below the table: its text is too long for a column.
            for n in &response.nodes {
                for p in &n.problems {
                    let line = format!(
                        "{} {} {}: {} (since {})",
                        n.node_id,
                        p.kind,
                        p.subject,
                        p.message,
                        timestamp(p.since.as_ref())
                    );
                    text.push_str(&format!("problem: {}\n", vane_proto::text::escape_controls(&line)));
                }
            }
            text
        }
    }
}

/// `-`, or each kind with its count: `tls_file(2), cache_write`.
fn problem_kinds(problems: &[vane_proto::discovery::NodeProblem]) -> String {
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for p in problems {
        match kinds.iter_mut().find(|(k, _)| *k == p.kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((&p.kind, 1)),
        }
    }
    if kinds.is_empty() {
        return "-".into();
    }
    kinds.iter().map(|(k, n)| if *n == 1 { (*k).to_owned() } else { format!("{k}({n})") }).collect::<Vec<_>>().join(",")
}

pub(crate) fn history(response: &HistoryResponse, out: Output) -> String {
    match out {
        Output::Json => json(response),
        Output::Yaml => serde_norway::to_string(response).unwrap_or_default(),
        Output::Table => {
            let rows = response
                .entries
                .iter()
                .map(|e| {
                    vec![e.version.to_string(), timestamp(e.created_at.as_ref()), e.author.clone(), e.summary.clone()]
                })
                .collect();
            table(&["VERSION", "CREATED", "AUTHOR", "SUMMARY"], rows)
        }
    }
}

/// A resource as the YAML a user would write for it.
fn resource_yaml(resource: Option<&Resource>) -> String {
    let mut config = Config::default();
    match resource.and_then(|r| r.resource.clone()) {
        Some(resource::Resource::Listener(l)) => config.listeners.push(l),
        Some(resource::Resource::Route(r)) => config.routes.push(r),
        Some(resource::Resource::Cluster(c)) => config.clusters.push(c),
        Some(resource::Resource::Certificate(c)) => config.certificates.push(c),
        Some(resource::Resource::Policy(p)) => config.policies.push(p),
        Some(resource::Resource::Consumer(c)) => config.consumers.push(c),
        Some(resource::Resource::Cache(c)) => config.caches.push(c),
        Some(resource::Resource::Compression(c)) => config.compressions.push(c),
        None => return String::new(),
    }
    render(&config, Format::Yaml)
}

/// Readable: one line per changed resource, then a unified diff of its YAML.
pub(crate) fn diff(response: &DiffResponse, out: Output) -> String {
    match out {
        Output::Json => json(response),
        Output::Yaml => serde_norway::to_string(response).unwrap_or_default(),
        Output::Table => {
            let mut text = format!("# against version {}: {}\n", response.base_version, response.summary);
            for change in &response.changes {
                let op = match resource_change::Op::try_from(change.op) {
                    Ok(resource_change::Op::Added) => "+",
                    Ok(resource_change::Op::Removed) => "-",
                    _ => "~",
                };
                let kind = Kind::try_from(change.kind).map_or("resource", |k| match k {
                    Kind::Listener => "listener",
                    Kind::Route => "route",
                    Kind::Cluster => "cluster",
                    Kind::Certificate => "certificate",
                    Kind::Policy => "policy",
                    Kind::Consumer => "consumer",
                    Kind::Cache => "cache",
                    Kind::Compression => "compression",
                    Kind::Unspecified => "resource",
                });
                text.push_str(&format!("{op} {kind} {}\n", change.name));
                let before = resource_yaml(change.before.as_ref());
                let after = resource_yaml(change.after.as_ref());
                let lines = similar::TextDiff::from_lines(&before, &after);
                for line in lines.iter_all_changes() {
                    let sign = match line.tag() {
                        similar::ChangeTag::Delete => "-",
                        similar::ChangeTag::Insert => "+",
                        similar::ChangeTag::Equal => " ",
                    };
                    text.push_str(&format!("    {sign} {}", line.value()));
                    if line.missing_newline() {
                        text.push('\n');
                    }
                }
            }
            text
        }
    }
}

/// A cache's row: its sizes and windows (defaults shown as the node applies them), and the
/// routes that use it.
fn cache_row(c: &vane_proto::config::Cache, routes: &[vane_proto::config::Route]) -> Vec<String> {
    let bytes = |n: u64, default: &str| if n == 0 { default.to_owned() } else { n.to_string() };
    let secs = |d: &Option<vane_proto::pbjson_types::Duration>, unset: &str| match d {
        Some(d) if d.seconds > 0 || d.nanos > 0 => format!("{}s", d.seconds as f64 + f64::from(d.nanos) / 1e9),
        _ => unset.to_owned(),
    };
    let users: Vec<&str> = routes.iter().filter(|r| r.cache == c.name).map(|r| r.name.as_str()).collect();
    vec![
        c.name.clone(),
        bytes(c.max_bytes, "64MiB"),
        bytes(c.max_entry_bytes, "8MiB"),
        secs(&c.default_ttl, "-"),
        format!("{}/{}", secs(&c.stale_while_revalidate, "0"), secs(&c.stale_if_error, "0")),
        if users.is_empty() { "-".to_owned() } else { users.join(",") },
    ]
}

#[cfg(test)]
mod tests {
    use vane_proto::admin::{ListNodesResponse, NodeStatus};

    use super::*;

    fn row(table: &str, node: &str) -> Vec<String> {
        let line = table.lines().find(|l| l.starts_with(node)).unwrap_or_else(|| panic!("{table}"));
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn nodes_show_the_version_they_serve_and_no_push_time_before_a_push() {
        let node = |id: &str, held: u64, acked: u64, ms: u64| NodeStatus {
            node_id: id.into(),
            connected: true,
            version_held: held,
            acked_version: acked,
            push_to_ack_ms: ms,
            ..Default::default()
        };
        let response = ListNodesResponse {
            nodes: vec![
                // Reconnected to a restarted control plane, serving version 2: nothing pushed.
                node("held", 2, 0, 0),
                // Pushed and acknowledged in this process's life, in under a millisecond.
                node("pushed", 3, 3, 0),
                // Connected holding nothing yet.
                node("empty", 0, 0, 0),
            ],
        };
        let table = nodes(&response, Output::Table);
        assert_eq!(row(&table, "held")[1..4], ["yes", "2", "-"], "{table}");
        assert_eq!(row(&table, "pushed")[1..4], ["yes", "3", "0ms"], "{table}");
        assert_eq!(row(&table, "empty")[1..4], ["yes", "-", "-"], "{table}");
    }

    #[test]
    fn caches_show_their_sizes_windows_and_routes() {
        let config = vane_proto::load(
            "caches:\n  - {name: edge, max_bytes: 1000, default_ttl: 60s, stale_if_error: 1.5s}\n  - {name: idle}\n\
             routes:\n  - {name: a, match: {prefix: /a}, direct_response: {status: 200}, cache: edge}\n\
             \x20 - {name: b, match: {prefix: /b}, direct_response: {status: 200}, cache: edge}\n",
            Format::Yaml,
        )
        .unwrap();
        let rows: Vec<Vec<String>> = config.caches.iter().map(|c| cache_row(c, &config.routes)).collect();
        assert_eq!(rows[0], ["edge", "1000", "8MiB", "60s", "0/1.5s", "a,b"]);
        assert_eq!(rows[1], ["idle", "64MiB", "8MiB", "-", "0/0", "-"]);
    }
}
