//! Each node's NACK history in the store (sled tree `nacks`), so that a version a node
//! refused is never offered to it again, even by a restarted control plane (DESIGN.md §3
//! rule 3), and `vane nodes` still shows the last NACK.
//!
//! Key: the node id, a `0xFF` byte (never part of UTF-8, so one node's keys are never a
//! prefix of another's), the version big-endian: a node's records in version order. Value:
//! a `StoredNack`. Bounded twice: at most [`MAX_PER_NODE`] records per node (the newest
//! versions), and the records of versions the store prunes go with them (a pruned number
//! is never published again: a rollback publishes a new one).
//!
//! Not part of the store's integrity check nor of backups: it is what nodes said, not
//! configuration. A record that does not read back is skipped (logged); losing the
//! history costs at most one more NACK per node, never a loop (the session records it
//! again).

use prost::Message;
use tracing::warn;
use vane_proto::store::StoredNack;
use vane_proto::text::truncate;

use crate::store::StoreError;

/// The sled tree's name.
pub(crate) const TREE: &[u8] = b"nacks";
/// Records kept per node.
pub(crate) const MAX_PER_NODE: usize = 64;
/// Errors kept per record, and bytes per error message: a NACK of a huge config can carry
/// thousands; the first ones say what went wrong.
const MAX_ERRORS: usize = 32;
const MAX_MESSAGE: usize = 1024;

fn prefix(node_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(node_id.len() + 9);
    key.extend_from_slice(node_id.as_bytes());
    key.push(0xff);
    key
}

fn key(node_id: &str, version: u64) -> Vec<u8> {
    let mut key = prefix(node_id);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// The version a key ends with.
fn version_of(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .and_then(|tail| tail.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Stores `nack` for `node_id` (replacing an older record of the same version), drops the
/// node's oldest records past the bound, and flushes.
pub(crate) fn record(db: &sled::Db, tree: &sled::Tree, node_id: &str, nack: &StoredNack) -> Result<(), StoreError> {
    let mut kept = nack.clone();
    kept.errors.truncate(MAX_ERRORS);
    for e in &mut kept.errors {
        e.message = truncate(&e.message, MAX_MESSAGE).into_owned();
    }
    tree.insert(key(node_id, nack.version), kept.encode_to_vec())?;
    let keys: Vec<sled::IVec> = tree.scan_prefix(prefix(node_id)).keys().collect::<Result<_, _>>()?;
    for old in keys.iter().take(keys.len().saturating_sub(MAX_PER_NODE)) {
        tree.remove(old)?;
    }
    db.flush()?;
    Ok(())
}

/// `node_id`'s records, oldest version first.
pub(crate) fn list(tree: &sled::Tree, node_id: &str) -> Result<Vec<StoredNack>, StoreError> {
    let mut out = Vec::new();
    for item in tree.scan_prefix(prefix(node_id)) {
        let (key, value) = item?;
        match StoredNack::decode(value.as_ref()) {
            Ok(nack) => out.push(nack),
            Err(error) => warn!(node = %node_id, version = version_of(&key), %error, "unreadable nack record skipped"),
        }
    }
    Ok(out)
}

/// Removes every node's records of versions up to `cutoff`; returns how many.
pub(crate) fn prune_below(tree: &sled::Tree, cutoff: u64) -> Result<usize, StoreError> {
    let old: Vec<sled::IVec> = tree
        .iter()
        .keys()
        .filter(|key| key.as_ref().map_or(true, |k| version_of(k) <= cutoff))
        .collect::<Result<_, _>>()?;
    for key in &old {
        tree.remove(key)?;
    }
    Ok(old.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vane_proto::config::ValidationError;

    fn nack(version: u64) -> StoredNack {
        let error =
            ValidationError { kind: "listener".into(), message: format!("v{version} refused"), ..Default::default() };
        StoredNack { version, errors: vec![error], at_unix_ms: 1 }
    }

    #[test]
    fn records_are_per_node_bounded_and_pruned_with_their_versions() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree(TREE).unwrap();
        // "a" is a prefix of "ab": the separator keeps their records apart.
        for v in 1..=(MAX_PER_NODE as u64 + 5) {
            record(&db, &tree, "a", &nack(v)).unwrap();
        }
        record(&db, &tree, "ab", &nack(3)).unwrap();
        let a: Vec<u64> = list(&tree, "a").unwrap().iter().map(|n| n.version).collect();
        assert_eq!(a.len(), MAX_PER_NODE);
        assert_eq!((a[0], a[a.len() - 1]), (6, MAX_PER_NODE as u64 + 5), "the newest versions are kept");
        assert_eq!(list(&tree, "ab").unwrap()[0].errors[0].message, "v3 refused");
        assert_eq!(prune_below(&tree, 10).unwrap(), 5 + 1);
        assert_eq!(list(&tree, "a").unwrap()[0].version, 11);
        assert!(list(&tree, "ab").unwrap().is_empty());
    }

    #[test]
    fn long_error_lists_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree(TREE).unwrap();
        let mut big = nack(1);
        big.errors = vec![ValidationError { message: "x".repeat(10_000), ..Default::default() }; 1000];
        record(&db, &tree, "n", &big).unwrap();
        let kept = &list(&tree, "n").unwrap()[0];
        assert_eq!(kept.errors.len(), MAX_ERRORS);
        assert!(kept.errors[0].message.len() <= MAX_MESSAGE);
    }
}
