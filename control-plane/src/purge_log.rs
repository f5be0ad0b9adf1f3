//! Cache purges in the store (sled tree `purges`), numbered in the order they were asked
//! for, so that a node that was away applies the ones it missed when it reconnects.
//!
//! Key: the purge's number big-endian; value: the `CachePurge` it was sent as. The newest
//! [`KEEP`] are kept; a node further behind than that (or ahead of the store: restored
//! from an older backup, or fed by another control plane) is sent one purge of everything
//! instead, numbered as the newest. Like the NACK history, this is what was asked of the
//! nodes, not configuration: outside the integrity check and the backups. Losing it costs
//! the nodes their cached entries once (a purge of everything), never a stale answer.

use prost::Message;
use tracing::warn;
use vane_proto::discovery::CachePurge;

use crate::store::StoreError;

/// The sled tree's name.
pub(crate) const TREE: &[u8] = b"purges";
/// Purges kept.
pub(crate) const KEEP: usize = 10_000;

/// What a node holding purge `seq` must apply to catch up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MissedPurges {
    /// These, oldest first (none: it is up to date).
    These(Vec<CachePurge>),
    /// Too many, or unknown: one purge of everything, numbered as the newest.
    Everything(CachePurge),
}

fn seq_of(key: &[u8]) -> u64 {
    key.try_into().map_or(0, u64::from_be_bytes)
}

/// The newest purge's number (0: none yet).
pub(crate) fn latest(tree: &sled::Tree) -> Result<u64, StoreError> {
    Ok(tree.last()?.map_or(0, |(key, _)| seq_of(&key)))
}

/// Numbers `purge` after the newest one, stores it, drops the oldest past [`KEEP`] and
/// flushes. Callers serialise writers (the control plane's writer lock).
pub(crate) fn record(db: &sled::Db, tree: &sled::Tree, purge: CachePurge) -> Result<CachePurge, StoreError> {
    record_keeping(db, tree, purge, KEEP)
}

fn record_keeping(
    db: &sled::Db,
    tree: &sled::Tree,
    mut purge: CachePurge,
    keep: usize,
) -> Result<CachePurge, StoreError> {
    let seq = latest(tree)?.checked_add(1).ok_or(StoreError::Exhausted)?;
    purge.seq = seq;
    tree.insert(seq.to_be_bytes(), purge.encode_to_vec())?;
    // Numbers are consecutive: everything at or below `seq - keep` goes (at most one per
    // purge once the log is full; `Tree::len` would walk the whole tree).
    let cutoff = seq.saturating_sub(u64::try_from(keep).unwrap_or(u64::MAX));
    while let Some((key, _)) = tree.first()?
        && seq_of(&key) <= cutoff
    {
        tree.remove(key)?;
    }
    db.flush()?;
    Ok(purge)
}

/// What a node holding purge `held` has missed.
pub(crate) fn after(tree: &sled::Tree, held: u64) -> Result<MissedPurges, StoreError> {
    let newest = latest(tree)?;
    let oldest = tree.first()?.map_or(0, |(key, _)| seq_of(&key));
    let everything = || MissedPurges::Everything(CachePurge { seq: newest, prefix: true, ..Default::default() });
    if held == newest {
        return Ok(MissedPurges::These(vec![]));
    }
    // Ahead of the store, or behind what it kept.
    if held > newest || held + 1 < oldest {
        return Ok(everything());
    }
    let mut out = Vec::new();
    for item in tree.range((held + 1).to_be_bytes()..) {
        let (key, value) = item?;
        match CachePurge::decode(value.as_ref()) {
            Ok(purge) => out.push(purge),
            Err(error) => {
                warn!(seq = seq_of(&key), %error, "unreadable purge record: purging everything");
                return Ok(everything());
            }
        }
    }
    Ok(MissedPurges::These(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purge(key: &str) -> CachePurge {
        CachePurge { key: key.into(), ..Default::default() }
    }

    #[test]
    fn purges_are_numbered_in_order_and_a_node_gets_what_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree(TREE).unwrap();
        assert_eq!(latest(&tree).unwrap(), 0);
        assert_eq!(after(&tree, 0).unwrap(), MissedPurges::These(vec![]), "nothing purged: nothing to apply");
        for (i, key) in ["a.test/x", "a.test/y", "b.test/z"].into_iter().enumerate() {
            assert_eq!(record(&db, &tree, purge(key)).unwrap().seq, i as u64 + 1);
        }
        let MissedPurges::These(missed) = after(&tree, 1).unwrap() else { panic!("node at 1 is within what is kept") };
        assert_eq!(
            missed.iter().map(|p| (p.seq, p.key.as_str())).collect::<Vec<_>>(),
            [(2, "a.test/y"), (3, "b.test/z")]
        );
        assert_eq!(after(&tree, 3).unwrap(), MissedPurges::These(vec![]));
        let MissedPurges::These(all) = after(&tree, 0).unwrap() else { panic!("a node at 0 gets every purge kept") };
        assert_eq!(all.len(), 3);
        // A node holding more than the store has empties its caches.
        let everything = MissedPurges::Everything(CachePurge { seq: 3, prefix: true, ..Default::default() });
        assert_eq!(after(&tree, 9).unwrap(), everything);
    }

    #[test]
    fn only_the_newest_are_kept_and_a_node_behind_them_purges_everything() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree(TREE).unwrap();
        const KEEP: usize = 20;
        for i in 0..KEEP + 5 {
            record_keeping(&db, &tree, purge(&format!("h/{i}")), KEEP).unwrap();
        }
        assert_eq!(tree.len(), KEEP);
        let newest = (KEEP + 5) as u64;
        assert_eq!(latest(&tree).unwrap(), newest);
        assert!(
            matches!(after(&tree, 3).unwrap(), MissedPurges::Everything(p) if p.seq == newest && p.prefix && p.key.is_empty())
        );
        // The oldest kept is number 6: a node at 5 misses nothing that is gone.
        let MissedPurges::These(missed) = after(&tree, 5).unwrap() else { panic!("node at 5 can catch up") };
        assert_eq!(missed.len(), KEEP);
        assert_eq!(missed.first().map(|p| p.seq), Some(6));
    }
}
