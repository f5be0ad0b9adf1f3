//! What the control plane knows of each node: connection, versions held, acked and
//! refused, push-to-ACK latency, the problems it reports. Written by discovery sessions,
//! read by `ListNodes`.
//!
//! A node that reconnects gets a new session id; only its newest session may mark it
//! disconnected, so a late-closing old stream never hides a live one.
//!
//! Refused versions: the store keeps each node's NACKs (`nack_history.rs`); a session
//! hands them over when its node connects, so a restarted control plane refuses to resend
//! them just as a running one does. A node that connects holding version 0 (restarted
//! empty: the local cause may be gone) may be offered them again; one holding a version
//! never is.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vane_proto::admin::NodeStatus;
use vane_proto::config::ValidationError;
use vane_proto::discovery::{Hello, NodeProblem};
use vane_proto::store::StoredNack;

#[derive(Debug, Default)]
pub(crate) struct Fleet {
    nodes: Mutex<HashMap<String, Entry>>,
    /// Ticks on every `PurgeDone`: what `PurgeCache` with `wait` waits on.
    purge_events: tokio::sync::watch::Sender<()>,
}

/// Purges whose removal counts a node keeps (for `PurgeCache` with `wait`).
const PURGES_COUNTED: usize = 64;

#[derive(Debug)]
struct Entry {
    status: NodeStatus,
    session: u64,
    /// Versions this node refused: never sent to it again (while it holds a version).
    nacked: HashSet<u64>,
    /// When its last session ended (None while connected).
    disconnected_at: Option<Instant>,
    /// Snapshots it refused, ever.
    nacks: u64,
    /// Entries removed by its newest purges: (purge number, entries).
    removed: VecDeque<(u64, u64)>,
}

fn now() -> Option<pbjson_types::Timestamp> {
    Some(vane_proto::timestamp_from_unix_ms(vane_proto::unix_ms_now()))
}

impl Fleet {
    fn with<R>(&self, node: &str, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.get_mut(node).map(f)
    }

    /// Records a new session for the node of `hello`, replacing any older one; `refused` is
    /// its NACK history as the store keeps it.
    pub(crate) fn connected(&self, session: u64, hello: Hello, address: String, refused: &[StoredNack]) {
        let Hello { node_id, labels, version_held, problems, purge_seq_held, .. } = hello;
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let entry = nodes.entry(node_id.clone()).or_insert_with(|| Entry {
            status: NodeStatus { node_id, ..Default::default() },
            session,
            nacked: HashSet::new(),
            disconnected_at: None,
            nacks: 0,
            removed: VecDeque::new(),
        });
        entry.disconnected_at = None;
        // A node that comes back holding nothing can only serve what it is sent: give its
        // refused versions another chance (once per connection, so never a loop).
        if version_held == 0 {
            entry.nacked.clear();
        } else {
            entry.nacked.extend(refused.iter().map(|n| n.version));
        }
        // A restarted control plane knows the last NACK from the store.
        if entry.status.nack_version == 0
            && let Some(last) = refused.iter().max_by_key(|n| (n.at_unix_ms, n.version))
        {
            entry.status.nack_version = last.version;
            entry.status.nack_errors = last.errors.clone();
        }
        entry.session = session;
        entry.status.labels = labels;
        entry.status.address = address;
        entry.status.connected = true;
        entry.status.version_held = version_held;
        entry.status.problems = problems;
        entry.status.purge_seq = purge_seq_held;
        entry.status.last_seen = now();
    }

    /// The node applied every purge up to `seq`, the last of them removing `removed` entries.
    pub(crate) fn purge_done(&self, node_id: &str, seq: u64, removed: u64) {
        self.with(node_id, |e| {
            e.status.purge_seq = e.status.purge_seq.max(seq);
            e.removed.push_back((seq, removed));
            if e.removed.len() > PURGES_COUNTED {
                e.removed.pop_front();
            }
            e.status.last_seen = now();
        });
        self.purge_events.send_replace(());
    }

    /// Ticks whenever a node reports a purge applied.
    pub(crate) fn purges_done(&self) -> tokio::sync::watch::Receiver<()> {
        self.purge_events.subscribe()
    }

    /// How many of `nodes` applied purge `seq`, and the entries that purge removed on them.
    pub(crate) fn purge_applied(&self, nodes: &[String], seq: u64) -> (u32, u64) {
        let all = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut applied = 0u32;
        let mut removed = 0u64;
        for e in nodes.iter().filter_map(|n| all.get(n)) {
            if e.status.purge_seq >= seq {
                applied += 1;
                removed += e.removed.iter().filter(|(s, _)| *s == seq).map(|(_, r)| r).sum::<u64>();
            }
        }
        (applied, removed)
    }

    /// The ids of the nodes connected now.
    pub(crate) fn connected_nodes(&self) -> Vec<String> {
        let all = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        all.values().filter(|e| e.status.connected).map(|e| e.status.node_id.clone()).collect()
    }

    /// The node's problems now (replacing what it reported before).
    pub(crate) fn problems(&self, node_id: &str, problems: Vec<NodeProblem>) {
        self.with(node_id, |e| {
            e.status.problems = problems;
            e.status.last_seen = now();
        });
    }

    pub(crate) fn disconnected(&self, session: u64, node_id: &str) {
        self.with(node_id, |e| {
            if e.session == session {
                e.status.connected = false;
                e.disconnected_at = Some(Instant::now());
                e.status.last_seen = now();
            }
        });
    }

    pub(crate) fn acked(&self, node_id: &str, version: u64, latency: Duration) {
        self.with(node_id, |e| {
            e.status.acked_version = version;
            e.status.version_held = version;
            e.status.push_to_ack_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
            e.status.last_seen = now();
        });
    }

    pub(crate) fn nacked(&self, node_id: &str, version: u64, errors: Vec<ValidationError>) {
        self.with(node_id, |e| {
            e.nacked.insert(version);
            e.nacks += 1;
            e.status.nack_version = version;
            e.status.nack_errors = errors;
            e.status.last_seen = now();
        });
    }

    pub(crate) fn has_nacked(&self, node_id: &str, version: u64) -> bool {
        self.with(node_id, |e| e.nacked.contains(&version)).unwrap_or(false)
    }

    /// Forgets nodes disconnected for longer than `after`; returns their ids.
    pub(crate) fn purge(&self, after: Duration) -> Vec<String> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<String> = nodes
            .iter()
            .filter(|(_, e)| e.disconnected_at.is_some_and(|at| at.elapsed() >= after))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            nodes.remove(id);
        }
        gone
    }

    /// `(node, NACK count)` of every known node, sorted by id.
    pub(crate) fn nack_counts(&self) -> Vec<(String, u64)> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, u64)> = nodes.iter().map(|(id, e)| (id.clone(), e.nacks)).collect();
        out.sort();
        out
    }

    /// `(node, kind, count)` of every problem nodes report, sorted.
    pub(crate) fn problem_counts(&self) -> Vec<(String, String, u64)> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (id, e) in nodes.iter() {
            for p in &e.status.problems {
                *counts.entry((id.clone(), p.kind.clone())).or_default() += 1;
            }
        }
        counts.into_iter().map(|((node, kind), n)| (node, kind, n)).collect()
    }

    /// Every known node, sorted by id.
    pub(crate) fn list(&self) -> Vec<NodeStatus> {
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<NodeStatus> = nodes.values().map(|e| e.status.clone()).collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node_id: &str, version_held: u64) -> Hello {
        Hello { node_id: node_id.into(), version_held, ..Default::default() }
    }

    fn refused(version: u64, at_unix_ms: i64) -> StoredNack {
        let error = ValidationError { message: format!("v{version}: port taken"), ..Default::default() };
        StoredNack { version, errors: vec![error], at_unix_ms }
    }

    #[test]
    fn disconnected_nodes_are_purged_and_a_stale_session_cannot_disconnect_a_new_one() {
        let fleet = Fleet::default();
        fleet.connected(1, hello("a", 0), "x".into(), &[]);
        fleet.connected(2, hello("b", 0), "y".into(), &[]);
        fleet.connected(3, hello("b", 0), "y".into(), &[]);
        fleet.disconnected(2, "b");
        assert!(fleet.list()[1].connected, "the older session of b ending leaves b connected");
        fleet.disconnected(1, "a");
        assert!(!fleet.list()[0].connected);
        assert_eq!(fleet.purge(Duration::from_secs(60)), Vec::<String>::new());
        assert_eq!(fleet.purge(Duration::ZERO), vec!["a".to_owned()]);
        assert_eq!(fleet.list().len(), 1);
    }

    #[test]
    fn stored_nacks_block_a_node_holding_a_version_and_not_one_restarted_empty() {
        let history = [refused(4, 10), refused(6, 30), refused(5, 20)];
        // A restarted control plane: the node comes back holding version 3.
        let fleet = Fleet::default();
        fleet.connected(1, hello("n", 3), "x".into(), &history);
        assert!(fleet.has_nacked("n", 4) && fleet.has_nacked("n", 6));
        let status = &fleet.list()[0];
        assert_eq!(status.nack_version, 6, "the newest NACK is shown");
        assert_eq!(status.nack_errors[0].message, "v6: port taken");
        // The same node restarted empty: it may be offered them again.
        let fleet = Fleet::default();
        fleet.connected(1, hello("n", 0), "x".into(), &history);
        assert!(!fleet.has_nacked("n", 6));
        assert_eq!(fleet.list()[0].nack_version, 6, "still shown");
    }

    #[test]
    fn problems_are_replaced_by_each_report_and_counted_by_kind() {
        let fleet = Fleet::default();
        let problem = |kind: &str, subject: &str| NodeProblem {
            kind: kind.into(),
            subject: subject.into(),
            message: "bad".into(),
            since: None,
        };
        let mut first = hello("n", 1);
        first.problems = vec![problem("tls_file", "/a.pem"), problem("tls_file", "/b.pem")];
        fleet.connected(1, first, "x".into(), &[]);
        assert_eq!(fleet.problem_counts(), vec![("n".into(), "tls_file".into(), 2)]);
        fleet.problems("n", vec![problem("cache_write", "/cache")]);
        assert_eq!(fleet.problem_counts(), vec![("n".into(), "cache_write".into(), 1)]);
        fleet.problems("n", vec![]);
        assert!(fleet.problem_counts().is_empty());
        assert!(fleet.list()[0].problems.is_empty());
    }
}
