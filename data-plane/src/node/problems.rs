//! What is wrong on this node while it goes on serving: a last-known-good cache it cannot
//! write, a watched certificate file that changed into something it cannot load.
//!
//! Neither is a reason to refuse (NACK) the version the node serves: the version is fine,
//! the node's surroundings are not, and a NACK would make the control plane believe the
//! node still runs its previous version and never offer it this one again. So the node
//! ACKs, and reports the problem beside: in its `Hello`, then in a `ProblemReport`
//! whenever the set changes (`discovery.rs`), and in `/metrics` as
//! `vane_node_problems{kind}`. A problem is keyed by kind and subject (the cache dir, the
//! file), keeps the time it was first seen, and is cleared when the same operation next
//! succeeds.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt::Write as _;
use std::sync::Mutex;

use tokio::sync::watch;
use vane_proto::discovery::NodeProblem;

use crate::observe::metrics::{escape, header};

/// The kinds of problem a node reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// The last-known-good snapshot could not be written (`--cache-dir`).
    CacheWrite,
    /// A certificate, key or CA file named by the config changed and no longer loads.
    TlsFile,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::CacheWrite, Kind::TlsFile];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::CacheWrite => "cache_write",
            Kind::TlsFile => "tls_file",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Problem {
    message: String,
    since_unix_ms: i64,
}

/// The node's current problems; every change bumps a generation that the discovery
/// client watches.
#[derive(Debug)]
pub(crate) struct Problems {
    current: Mutex<BTreeMap<(Kind, String), Problem>>,
    changed: watch::Sender<u64>,
}

impl Default for Problems {
    fn default() -> Self {
        Problems { current: Mutex::default(), changed: watch::Sender::new(0) }
    }
}

impl Problems {
    /// Records a problem with `subject` (or updates its message; the time first seen stays).
    pub(crate) fn set(&self, kind: Kind, subject: &str, message: String) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match current.entry((kind, subject.to_owned())) {
            Entry::Vacant(v) => {
                v.insert(Problem { message, since_unix_ms: vane_proto::unix_ms_now() });
                true
            }
            Entry::Occupied(mut o) if o.get().message != message => {
                o.get_mut().message = message;
                true
            }
            Entry::Occupied(_) => false,
        };
        drop(current);
        if changed {
            self.changed.send_modify(|generation| *generation += 1);
        }
    }

    /// Clears the problems of `kind` whose subject `resolved` says is fine now.
    pub(crate) fn clear(&self, kind: Kind, mut resolved: impl FnMut(&str) -> bool) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let before = current.len();
        current.retain(|(k, subject), _| *k != kind || !resolved(subject));
        if current.len() != before {
            drop(current);
            self.changed.send_modify(|generation| *generation += 1);
        }
    }

    /// Every problem now, as the discovery stream reports them.
    pub(crate) fn report(&self) -> Vec<NodeProblem> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current
            .iter()
            .map(|((kind, subject), p)| NodeProblem {
                kind: kind.as_str().to_owned(),
                subject: subject.clone(),
                message: p.message.clone(),
                since: Some(vane_proto::timestamp_from_unix_ms(p.since_unix_ms)),
            })
            .collect()
    }

    /// Wakes on every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// `vane_node_problems{kind}`, every kind listed (0 when fine) so alerts need no absent().
    pub(crate) fn render(&self, out: &mut String) {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        header(out, "vane_node_problems", "gauge", "Problems the node has with itself while it serves, by kind.");
        for kind in Kind::ALL {
            let n = current.keys().filter(|(k, _)| *k == kind).count();
            let _ = writeln!(out, "vane_node_problems{{kind=\"{}\"}} {n}", escape(kind.as_str()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_is_reported_until_cleared_and_each_change_is_signalled_once() {
        let problems = Problems::default();
        let mut changes = problems.subscribe();
        problems.set(Kind::TlsFile, "/a.pem", "holds no PEM certificate".into());
        problems.set(Kind::TlsFile, "/b.pem", "holds no PEM certificate".into());
        problems.set(Kind::CacheWrite, "/cache", "not a directory".into());
        assert!(changes.has_changed().unwrap());
        changes.mark_unchanged();
        let since = problems.report()[1].since;
        problems.set(Kind::TlsFile, "/a.pem", "holds no PEM certificate".into());
        assert!(!changes.has_changed().unwrap(), "the same problem again is no change");
        assert_eq!(problems.report()[1].since, since);

        let mut text = String::new();
        problems.render(&mut text);
        assert!(text.contains("vane_node_problems{kind=\"cache_write\"} 1"), "{text}");
        assert!(text.contains("vane_node_problems{kind=\"tls_file\"} 2"), "{text}");

        problems.clear(Kind::TlsFile, |subject| subject == "/a.pem");
        assert!(changes.has_changed().unwrap());
        let left: Vec<String> = problems.report().into_iter().map(|p| format!("{}:{}", p.kind, p.subject)).collect();
        assert_eq!(left, ["cache_write:/cache", "tls_file:/b.pem"]);
        problems.clear(Kind::CacheWrite, |_| true);
        problems.clear(Kind::TlsFile, |_| true);
        assert!(problems.report().is_empty());
        let mut text = String::new();
        problems.render(&mut text);
        assert!(text.contains("vane_node_problems{kind=\"tls_file\"} 0"), "{text}");
    }
}
