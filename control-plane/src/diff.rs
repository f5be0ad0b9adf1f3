//! What changed between two configs, by resource name: the one-line summary kept with
//! every version and returned by `Apply`.

use std::collections::HashMap;

use prost::Message;
use vane_proto::config::Config;

/// One resource's change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    /// `+` added, `-` removed, `~` changed.
    pub(crate) op: char,
    pub(crate) kind: &'static str,
    pub(crate) name: String,
}

/// Changes from `old` to `new`, kinds in a fixed order, names sorted.
pub(crate) fn changes(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    diff_kind(&mut out, "listener", &old.listeners, &new.listeners, |l| &l.name);
    diff_kind(&mut out, "cluster", &old.clusters, &new.clusters, |c| &c.name);
    diff_kind(&mut out, "route", &old.routes, &new.routes, |r| &r.name);
    out
}

fn diff_kind<T: Message + PartialEq>(
    out: &mut Vec<Change>,
    kind: &'static str,
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
) {
    let before: HashMap<&str, &T> = old.iter().map(|r| (name(r).as_str(), r)).collect();
    let after: HashMap<&str, &T> = new.iter().map(|r| (name(r).as_str(), r)).collect();
    let mut changed: Vec<Change> = Vec::new();
    for (n, r) in &after {
        match before.get(n) {
            None => changed.push(Change { op: '+', kind, name: (*n).to_owned() }),
            Some(b) if b != r => changed.push(Change { op: '~', kind, name: (*n).to_owned() }),
            Some(_) => {}
        }
    }
    for n in before.keys() {
        if !after.contains_key(n) {
            changed.push(Change { op: '-', kind, name: (*n).to_owned() });
        }
    }
    changed.sort_by(|a, b| a.name.cmp(&b.name));
    out.extend(changed);
}

/// `+route api, ~cluster echo`, or `no resource changes` (e.g. only order changed).
pub(crate) fn summary(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "no resource changes".into();
    }
    changes.iter().map(|c| format!("{}{} {}", c.op, c.kind, c.name)).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vane_proto::config::{Cluster, Listener};

    #[test]
    fn summary_lists_added_changed_removed() {
        let old = Config {
            listeners: vec![Listener { name: "web".into(), address: "127.0.0.1:1".into(), protocol: 0 }],
            clusters: vec![Cluster { name: "a".into(), ..Default::default() }],
            ..Default::default()
        };
        let mut new = old.clone();
        new.listeners[0].address = "127.0.0.1:2".into();
        new.clusters = vec![Cluster { name: "b".into(), ..Default::default() }];
        assert_eq!(summary(&changes(&old, &new)), "~listener web, -cluster a, +cluster b");
        assert_eq!(summary(&changes(&old, &old)), "no resource changes");
    }
}
