//! What changed between two configs, by resource name: the one-line summary kept with
//! every version, and the per-resource changes `Diff` returns.

use std::collections::HashMap;

use vane_proto::admin::{Kind, Resource, ResourceChange, resource, resource_change::Op};
use vane_proto::config::Config;

/// Changes from `old` to `new`: kinds in a fixed order (listeners, clusters, routes),
/// names sorted within a kind.
pub(crate) fn changes(old: &Config, new: &Config) -> Vec<ResourceChange> {
    let mut out = Vec::new();
    diff_kind(&mut out, Kind::Listener, &old.listeners, &new.listeners, |l| &l.name, resource::Resource::Listener);
    diff_kind(&mut out, Kind::Cluster, &old.clusters, &new.clusters, |c| &c.name, resource::Resource::Cluster);
    diff_kind(&mut out, Kind::Route, &old.routes, &new.routes, |r| &r.name, resource::Resource::Route);
    diff_kind(
        &mut out,
        Kind::Certificate,
        &old.certificates,
        &new.certificates,
        |c| &c.name,
        resource::Resource::Certificate,
    );
    diff_kind(&mut out, Kind::Policy, &old.policies, &new.policies, |p| &p.name, resource::Resource::Policy);
    diff_kind(&mut out, Kind::Consumer, &old.consumers, &new.consumers, |c| &c.name, resource::Resource::Consumer);
    diff_kind(&mut out, Kind::Cache, &old.caches, &new.caches, |c| &c.name, resource::Resource::Cache);
    diff_kind(
        &mut out,
        Kind::Compression,
        &old.compressions,
        &new.compressions,
        |c| &c.name,
        resource::Resource::Compression,
    );
    out
}

fn diff_kind<T: PartialEq + Clone>(
    out: &mut Vec<ResourceChange>,
    kind: Kind,
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
    wrap: impl Fn(T) -> resource::Resource,
) {
    let before: HashMap<&str, &T> = old.iter().map(|r| (name(r).as_str(), r)).collect();
    let after: HashMap<&str, &T> = new.iter().map(|r| (name(r).as_str(), r)).collect();
    let as_resource = |r: &T| Some(Resource { resource: Some(wrap(r.clone())) });
    let mut changed = Vec::new();
    for (n, r) in &after {
        let op = match before.get(n) {
            None => Op::Added,
            Some(b) if b != r => Op::Changed,
            Some(_) => continue,
        };
        changed.push(ResourceChange {
            op: op as i32,
            kind: kind as i32,
            name: (*n).to_owned(),
            before: before.get(n).and_then(|b| as_resource(b)),
            after: as_resource(r),
        });
    }
    for (n, b) in &before {
        if !after.contains_key(n) {
            changed.push(ResourceChange {
                op: Op::Removed as i32,
                kind: kind as i32,
                name: (*n).to_owned(),
                before: as_resource(b),
                after: None,
            });
        }
    }
    changed.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(changed);
}

/// The name users read for a kind.
pub(crate) fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Unspecified => "resource",
        Kind::Listener => "listener",
        Kind::Route => "route",
        Kind::Cluster => "cluster",
        Kind::Certificate => "certificate",
        Kind::Policy => "policy",
        Kind::Consumer => "consumer",
        Kind::Cache => "cache",
        Kind::Compression => "compression",
    }
}

/// The plural users read for a kind.
fn kind_plural(kind: Kind) -> &'static str {
    match kind {
        Kind::Unspecified => "resources",
        Kind::Listener => "listeners",
        Kind::Route => "routes",
        Kind::Cluster => "clusters",
        Kind::Certificate => "certificates",
        Kind::Policy => "policies",
        Kind::Consumer => "consumers",
        Kind::Cache => "caches",
        Kind::Compression => "compressions",
    }
}

/// How many changes of one kind a summary names one by one; past that, it counts them
/// per operation and names the first few (`+100000 routes (r0, r1, r10, ...)`).
const NAMED_PER_KIND: usize = 5;
/// How many names a counted group shows.
const NAMED_PER_GROUP: usize = 3;

/// `+route api, ~cluster echo, -listener old`, or `no resource changes`. Bounded: a
/// 100k-route apply says `+100000 routes (r0, r1, r10, ...)`, not 1.4 MB of names (the
/// summary is printed, logged and kept with the version for `vane history`).
pub(crate) fn summary(changes: &[ResourceChange]) -> String {
    if changes.is_empty() {
        return "no resource changes".into();
    }
    let op_of = |c: &ResourceChange| Op::try_from(c.op).unwrap_or(Op::Changed);
    let sign = |op: Op| match op {
        Op::Added => '+',
        Op::Removed => '-',
        _ => '~',
    };
    let mut parts = Vec::new();
    // `changes` comes grouped by kind (see `changes`).
    for group in changes.chunk_by(|a, b| a.kind == b.kind) {
        let kind = Kind::try_from(group[0].kind).unwrap_or(Kind::Unspecified);
        if group.len() <= NAMED_PER_KIND {
            parts.extend(group.iter().map(|c| format!("{}{} {}", sign(op_of(c)), kind_name(kind), c.name)));
            continue;
        }
        for op in [Op::Added, Op::Changed, Op::Removed] {
            let names: Vec<&str> = group.iter().filter(|c| op_of(c) == op).map(|c| c.name.as_str()).collect();
            match names.len() {
                0 => {}
                n if n <= NAMED_PER_GROUP => {
                    parts.extend(names.iter().map(|name| format!("{}{} {name}", sign(op), kind_name(kind))));
                }
                n => {
                    let first = names[..NAMED_PER_GROUP].join(", ");
                    parts.push(format!("{}{n} {} ({first}, ...)", sign(op), kind_plural(kind)));
                }
            }
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vane_proto::config::{Cluster, Listener, Route};

    #[test]
    fn summary_lists_added_changed_removed() {
        let old = Config {
            listeners: vec![Listener { name: "web".into(), address: "127.0.0.1:1".into(), ..Default::default() }],
            clusters: vec![Cluster { name: "a".into(), ..Default::default() }],
            ..Default::default()
        };
        let mut new = old.clone();
        new.listeners[0].address = "127.0.0.1:2".into();
        new.clusters = vec![Cluster { name: "b".into(), ..Default::default() }];
        let changes = changes(&old, &new);
        assert_eq!(summary(&changes), "~listener web, -cluster a, +cluster b");
        assert!(changes[0].before.is_some() && changes[0].after.is_some());
        assert!(changes[1].after.is_none());
        assert_eq!(summary(&super::changes(&old, &old)), "no resource changes");
    }

    #[test]
    fn summary_of_a_big_change_counts_per_kind_and_names_a_few() {
        let route = |i: usize| Route { name: format!("api-{i:06}"), ..Default::default() };
        let old = Config { routes: (0..10).map(route).collect(), ..Default::default() };
        let mut new = Config { routes: (5..100_005).map(route).collect(), ..Default::default() };
        new.routes[0].listeners = vec!["web".into()];
        new.listeners = vec![Listener { name: "web".into(), ..Default::default() }];
        let text = summary(&changes(&old, &new));
        assert_eq!(
            text,
            "+listener web, +99995 routes (api-000010, api-000011, api-000012, ...), ~route api-000005, \
             -5 routes (api-000000, api-000001, api-000002, ...)"
        );
    }
}
