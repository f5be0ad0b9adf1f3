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
    }
}

/// `+route api, ~cluster echo, -listener old`, or `no resource changes`.
pub(crate) fn summary(changes: &[ResourceChange]) -> String {
    if changes.is_empty() {
        return "no resource changes".into();
    }
    changes
        .iter()
        .map(|c| {
            let op = match Op::try_from(c.op) {
                Ok(Op::Added) => '+',
                Ok(Op::Removed) => '-',
                _ => '~',
            };
            format!("{op}{} {}", kind_name(Kind::try_from(c.kind).unwrap_or(Kind::Unspecified)), c.name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vane_proto::config::{Cluster, Listener};

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
}
