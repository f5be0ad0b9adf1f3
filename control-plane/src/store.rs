//! Where versions live. Every version is an immutable record; the version number is bumped
//! in the same sled transaction that writes it, and a commit returns only once sled has
//! flushed it to disk, so an acknowledged version survives a SIGKILL.
//!
//! Layout (sled trees): `versions`: big-endian u64 → `StoredVersion` with its config;
//! `history`: the same record without the config (cheap listing); `meta`: `format` marker,
//! `latest` version and `floor` (numbers up to it are used: the next version is above
//! both); `nacks`: what each node refused (`nack_history.rs`, outside the integrity check
//! and backups); `purges`: cache purges in order (`purge_log.rs`, likewise). Beside sled's files, the seal (`seal.rs`) names the newest acknowledged version:
//! a store that cannot show that version, with that content, refuses to open instead of
//! serving an older truth.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Mutex;

use prost::Message;
use sled::Transactional;
use tracing::warn;
use vane_proto::config::Config;
use vane_proto::discovery::CachePurge;
use vane_proto::store::{StoredNack, StoredVersion};

use crate::nack_history;
use crate::purge_log;
pub use crate::purge_log::MissedPurges;
use crate::seal::Seal;

const FORMAT_KEY: &[u8] = b"format";
const FORMAT: &[u8] = b"vane-store-v1";
const LATEST_KEY: &[u8] = b"latest";
const FLOOR_KEY: &[u8] = b"floor";

/// How a damaged store is recovered on purpose, said with every refusal.
const RECOVER: &str = "restore a backup with `vane store restore --data-dir DIR --from FILE --replace` \
(the damaged dir is kept beside it), or move the dir away to start an empty store";

/// Failures of the config store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open data dir {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("data dir {path} is in use by another process (is another control plane running on it?)")]
    Locked { path: PathBuf },
    #[error("data dir {path} is not a vane data dir (it holds other data); pick an empty or vane-owned dir")]
    Foreign { path: PathBuf },
    #[error("data dir {path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("store i/o: {0}")]
    Io(#[from] sled::Error),
    #[error("version numbers are exhausted")]
    Exhausted,
    #[error("store record for version {version} is damaged: {source}")]
    Corrupt {
        version: u64,
        #[source]
        source: prost::DecodeError,
    },
}

/// What a new version carries; the store assigns its number.
#[derive(Clone, Debug)]
pub struct NewVersion {
    pub config: Config,
    pub author: String,
    pub summary: String,
    pub sha256: String,
    pub created_at_unix_ms: i64,
}

/// Persistence of config versions. Implementations are synchronous; callers run them on
/// a blocking thread.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// The newest version with its config.
    fn latest(&self) -> Result<Option<StoredVersion>, StoreError>;
    /// One version with its config.
    fn get(&self, version: u64) -> Result<Option<StoredVersion>, StoreError>;
    /// Stores `new` as the next version (above the latest and the floor); returns once it
    /// is durable.
    fn commit(&self, new: NewVersion) -> Result<StoredVersion, StoreError>;
    /// Marks every number up to `version` as used, durably: the next commit takes a larger
    /// one. Called when a node reports holding a version this store does not have.
    fn raise_floor(&self, version: u64) -> Result<(), StoreError>;
    /// Versions newest first, without their configs; `limit` 0 means all.
    fn history(&self, limit: usize) -> Result<Vec<StoredVersion>, StoreError>;
    /// Removes the oldest versions so that at most `keep` (at least 1) remain, with the
    /// NACK records of those versions; returns how many versions were removed.
    fn prune(&self, keep: usize) -> Result<usize, StoreError>;
    /// Every number up to this one is used: the next version is above it (and above the
    /// latest).
    fn floor(&self) -> Result<u64, StoreError>;
    /// Records, durably, that `node_id` refused `nack.version` (replacing an older record of
    /// that version). At most the 64 newest versions are kept per node.
    fn record_nack(&self, node_id: &str, nack: &StoredNack) -> Result<(), StoreError>;
    /// The versions `node_id` refused that are still retained, oldest first.
    fn nacks(&self, node_id: &str) -> Result<Vec<StoredNack>, StoreError>;
    /// Numbers `purge` after the newest one and stores it durably; returns it numbered.
    /// The newest 10,000 are kept.
    fn record_purge(&self, purge: CachePurge) -> Result<CachePurge, StoreError>;
    /// The purges a node that applied every purge up to `held` has missed (one purge of
    /// everything when they are no longer kept, or `held` is ahead of the store).
    fn purges_after(&self, held: u64) -> Result<MissedPurges, StoreError>;
    /// The newest purge's number (0: none yet).
    fn latest_purge(&self) -> Result<u64, StoreError>;
    /// Bytes the store takes on disk (0 when unknown).
    fn size_on_disk(&self) -> u64 {
        0
    }
}

/// The embedded default store.
#[derive(Debug)]
pub struct SledStore {
    dir: PathBuf,
    db: sled::Db,
    versions: sled::Tree,
    history: sled::Tree,
    meta: sled::Tree,
    nacks: sled::Tree,
    purges: sled::Tree,
    /// The seal as last written; writers hold the lock while they commit and reseal.
    seal: Mutex<Seal>,
}

impl SledStore {
    /// Opens (creating when missing) the store in `dir`.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        // Only a missing or empty dir may become a new store: anything else must already be
        // a Vane store, so a damaged one is reported instead of silently started afresh.
        let fresh = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(StoreError::Open { path: dir.to_owned(), source: sled::Error::Io(e) }),
        };
        let seal = Seal::read(dir).map_err(|e| damaged(dir, &e.to_string()))?;
        if !fresh && !dir.join("db").is_file() {
            if seal.is_some() {
                return Err(damaged(dir, "its sled database file `db` is missing"));
            }
            return Err(StoreError::Foreign { path: dir.to_owned() });
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Open { path: dir.to_owned(), source: sled::Error::Io(e) })?;
        let db = open_waiting_for_lock(dir)?;
        let versions = db.open_tree("versions")?;
        let history = db.open_tree("history")?;
        let meta = db.open_tree("meta")?;
        let nacks = db.open_tree(nack_history::TREE)?;
        let purges = db.open_tree(purge_log::TREE)?;
        match meta.get(FORMAT_KEY)? {
            Some(f) if f.as_ref() == FORMAT => {}
            Some(_) => return Err(StoreError::Foreign { path: dir.to_owned() }),
            None => {
                let foreign_trees = db.tree_names().iter().any(|t| {
                    !matches!(
                        t.as_ref(),
                        b"versions" | b"history" | b"meta" | b"nacks" | b"purges" | b"__sled__default"
                    )
                });
                if !db.is_empty() || !versions.is_empty() || foreign_trees {
                    return Err(StoreError::Foreign { path: dir.to_owned() });
                }
                if !fresh {
                    return Err(StoreError::Damaged {
                        path: dir.to_owned(),
                        reason: "it holds a database without Vane's format marker (damaged, or not Vane's)".into(),
                    });
                }
                meta.insert(FORMAT_KEY, FORMAT)?;
                db.flush()?;
            }
        }
        let store =
            SledStore { dir: dir.to_owned(), db, versions, history, meta, nacks, purges, seal: Mutex::default() };
        let checked = store.check(seal)?;
        checked.write(dir).map_err(|e| StoreError::Open { path: dir.to_owned(), source: sled::Error::Io(e) })?;
        *store.seal.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = checked;
        Ok(store)
    }

    /// Proves the store holds what its seal says was acknowledged, and that every
    /// retained record reads back; returns the seal to keep.
    fn check(&self, seal: Option<Seal>) -> Result<Seal, StoreError> {
        let dir = &self.dir;
        let latest = self.meta.get(LATEST_KEY)?.map_or(0, |v| u64_from(&v));
        let floor = self.meta.get(FLOOR_KEY)?.map_or(0, |v| u64_from(&v));
        // Every retained record must read back whole: sled checks each one's CRC as it
        // reads it (a damaged blob fails here). The configs are decoded only for the
        // newest version below: decoding 1,000 retained copies of a 100k-route config
        // would make a restart take minutes for what the CRC already proves.
        let mut newest_listed = 0;
        for item in self.history.iter() {
            let (key, value) = item?;
            let version = u64_from(&key);
            Self::decode(version, &value).map_err(|e| damaged(dir, &e.to_string()))?;
            match self.versions.get(&key) {
                Ok(Some(bytes)) if !bytes.is_empty() => {}
                Ok(Some(_)) => return Err(damaged(dir, &format!("version {version}'s record is empty"))),
                Ok(None) => return Err(damaged(dir, &format!("version {version} is listed but its record is gone"))),
                Err(e) => return Err(damaged(dir, &format!("version {version} cannot be read: {e}"))),
            }
            newest_listed = version;
        }
        if newest_listed != latest {
            return Err(damaged(
                dir,
                &format!("its newest record is version {newest_listed}, its index says {latest}"),
            ));
        }
        let latest_sha = match latest {
            0 => String::new(),
            v => self.get(v).map_err(|e| damaged(dir, &e.to_string()))?.map(|r| r.sha256).unwrap_or_default(),
        };
        let Some(seal) = seal else {
            if latest > 0 {
                // A store written before seals existed: seal what it holds now.
                warn!(path = %dir.display(), latest, "store has no seal yet; sealing its newest version");
            }
            return Ok(Seal { version: latest, sha256: latest_sha, floor: floor.max(latest) });
        };
        if latest < seal.version {
            return Err(damaged(
                dir,
                &format!(
                    "its newest version is {latest}, but version {} was acknowledged (see {}): \
                     versions {}..={} are lost",
                    seal.version,
                    crate::seal::SEAL_FILE,
                    latest + 1,
                    seal.version
                ),
            ));
        }
        if seal.version > 0 {
            let sealed = self.get(seal.version).map_err(|e| damaged(dir, &e.to_string()))?;
            if sealed.is_none_or(|r| r.sha256 != seal.sha256) {
                return Err(damaged(
                    dir,
                    &format!("version {} no longer has the content that was acknowledged", seal.version),
                ));
            }
        }
        // A version above the seal was durable in sled but not yet sealed when the process
        // stopped: it was never acknowledged, and keeping it loses nothing.
        Ok(Seal { version: latest, sha256: latest_sha, floor: floor.max(seal.floor).max(latest) })
    }

    /// Writes `record` as it is (its own number, hash and authorship): how a restore puts
    /// a backup's versions back. Only on a store being rebuilt, before it serves.
    pub(crate) fn import(&self, record: &StoredVersion) -> Result<(), StoreError> {
        let key = record.version.to_be_bytes();
        let mut listed = record.clone();
        listed.config = None;
        let mut seal = self.seal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let latest = self.meta.get(LATEST_KEY)?.map_or(0, |v| u64_from(&v)).max(record.version);
        (&self.versions, &self.history, &self.meta)
            .transaction(|(versions, history, meta)| {
                versions.insert(&key, record.encode_to_vec())?;
                history.insert(&key, listed.encode_to_vec())?;
                meta.insert(LATEST_KEY, &latest.to_be_bytes())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<std::convert::Infallible>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Abort(never) => match never {},
                sled::transaction::TransactionError::Storage(e) => StoreError::Io(e),
            })?;
        self.db.flush()?;
        if record.version >= seal.version {
            *seal =
                Seal { version: record.version, sha256: record.sha256.clone(), floor: seal.floor.max(record.version) };
        }
        seal.write(&self.dir).map_err(|e| StoreError::Io(sled::Error::Io(e)))
    }

    fn decode(version: u64, bytes: &[u8]) -> Result<StoredVersion, StoreError> {
        StoredVersion::decode(bytes).map_err(|source| StoreError::Corrupt { version, source })
    }
}

impl Store for SledStore {
    fn latest(&self) -> Result<Option<StoredVersion>, StoreError> {
        match self.meta.get(LATEST_KEY)? {
            None => Ok(None),
            Some(v) => self.get(u64_from(&v)),
        }
    }

    fn get(&self, version: u64) -> Result<Option<StoredVersion>, StoreError> {
        match self.versions.get(version.to_be_bytes())? {
            None => Ok(None),
            Some(bytes) => Self::decode(version, &bytes).map(Some),
        }
    }

    fn commit(&self, new: NewVersion) -> Result<StoredVersion, StoreError> {
        let mut seal = self.seal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = (&self.versions, &self.history, &self.meta).transaction(|(versions, history, meta)| {
            let latest = meta.get(LATEST_KEY)?.map_or(0, |v| u64_from(&v));
            let floor = meta.get(FLOOR_KEY)?.map_or(0, |v| u64_from(&v));
            // Numbers run out only after 2^64 versions, or a floor raised that far (refused
            // by the discovery session): an error, never an overflow.
            let Some(version) = latest.max(floor).max(seal.floor).checked_add(1) else {
                return Err(sled::transaction::ConflictableTransactionError::Abort(StoreError::Exhausted));
            };
            let mut record = StoredVersion {
                version,
                config: None,
                created_at_unix_ms: new.created_at_unix_ms,
                author: new.author.clone(),
                summary: new.summary.clone(),
                sha256: new.sha256.clone(),
            };
            history.insert(&version.to_be_bytes(), record.encode_to_vec())?;
            record.config = Some(new.config.clone());
            versions.insert(&version.to_be_bytes(), record.encode_to_vec())?;
            meta.insert(LATEST_KEY, &version.to_be_bytes())?;
            Ok(record)
        });
        let record = result.map_err(|e| match e {
            sled::transaction::TransactionError::Abort(never) => never,
            sled::transaction::TransactionError::Storage(e) => StoreError::Io(e),
        })?;
        self.db.flush()?;
        *seal = Seal { version: record.version, sha256: record.sha256.clone(), floor: record.version };
        seal.write(&self.dir).map_err(|e| StoreError::Io(sled::Error::Io(e)))?;
        Ok(record)
    }

    fn floor(&self) -> Result<u64, StoreError> {
        Ok(self.seal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).floor)
    }

    fn raise_floor(&self, version: u64) -> Result<(), StoreError> {
        let mut seal = self.seal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if version <= seal.floor {
            return Ok(());
        }
        self.meta.insert(FLOOR_KEY, &version.to_be_bytes())?;
        self.db.flush()?;
        seal.floor = version;
        seal.write(&self.dir).map_err(|e| StoreError::Io(sled::Error::Io(e)))
    }

    fn prune(&self, keep: usize) -> Result<usize, StoreError> {
        let latest = self.meta.get(LATEST_KEY)?.map_or(0, |v| u64_from(&v));
        let keep = u64::try_from(keep.max(1)).unwrap_or(u64::MAX);
        match latest.checked_sub(keep) {
            Some(cutoff) if cutoff > 0 => self.prune_below(cutoff),
            _ => Ok(0),
        }
    }

    fn record_nack(&self, node_id: &str, nack: &StoredNack) -> Result<(), StoreError> {
        nack_history::record(&self.db, &self.nacks, node_id, nack)
    }

    fn nacks(&self, node_id: &str) -> Result<Vec<StoredNack>, StoreError> {
        nack_history::list(&self.nacks, node_id)
    }

    fn record_purge(&self, purge: CachePurge) -> Result<CachePurge, StoreError> {
        purge_log::record(&self.db, &self.purges, purge)
    }

    fn purges_after(&self, held: u64) -> Result<MissedPurges, StoreError> {
        purge_log::after(&self.purges, held)
    }

    fn latest_purge(&self) -> Result<u64, StoreError> {
        purge_log::latest(&self.purges)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    fn history(&self, limit: usize) -> Result<Vec<StoredVersion>, StoreError> {
        let limit = if limit == 0 { usize::MAX } else { limit };
        self.history
            .iter()
            .rev()
            .take(limit)
            .map(|item| {
                let (key, value) = item?;
                Self::decode(u64_from(&key), &value)
            })
            .collect()
    }
}

/// How long `open` waits for another holder of the data dir to let go.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Opens sled, waiting briefly while the dir is locked: a process that just exited (or a
/// dropped handle whose flusher thread has not stopped yet) releases it within moments.
fn open_waiting_for_lock(dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(dir).open() {
            Ok(db) => return Ok(db),
            // sled reports lock contention only as an io error with this text.
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if Instant::now() >= deadline {
                    return Err(StoreError::Locked { path: dir.to_owned() });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => return Err(StoreError::Open { path: dir.to_owned(), source }),
        }
    }
}

impl SledStore {
    fn prune_below(&self, cutoff: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        let old: Vec<sled::IVec> = self.history.range(..=cutoff.to_be_bytes()).keys().collect::<Result<_, _>>()?;
        for key in old {
            // Versions first, then history: a crash in between leaves a history line whose
            // config is gone, which the next prune removes; never the reverse.
            self.versions.remove(&key)?;
            self.history.remove(&key)?;
            removed += 1;
        }
        if removed > 0 {
            // A pruned number is never published again: what nodes said of it is moot.
            nack_history::prune_below(&self.nacks, cutoff)?;
            self.db.flush()?;
        }
        Ok(removed)
    }
}

fn damaged(path: &Path, reason: &str) -> StoreError {
    let recover = RECOVER.replace("DIR", &path.display().to_string());
    StoreError::Damaged { path: path.to_owned(), reason: format!("{reason}; {recover}") }
}

fn u64_from(bytes: &[u8]) -> u64 {
    bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_version(name: &str) -> NewVersion {
        let config = Config {
            clusters: vec![vane_proto::config::Cluster { name: name.into(), ..Default::default() }],
            ..Default::default()
        };
        NewVersion {
            sha256: vane_proto::config_sha256(&config),
            config,
            author: "test".into(),
            summary: format!("+cluster {name}"),
            created_at_unix_ms: 1,
        }
    }

    #[test]
    fn versions_count_from_one_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            assert!(store.latest().unwrap().is_none());
            assert_eq!(store.commit(new_version("a")).unwrap().version, 1);
            assert_eq!(store.commit(new_version("b")).unwrap().version, 2);
        }
        let store = SledStore::open(dir.path()).unwrap();
        let latest = store.latest().unwrap().unwrap();
        assert_eq!(latest.version, 2);
        assert_eq!(latest.config.unwrap().clusters[0].name, "b");
        assert_eq!(store.get(1).unwrap().unwrap().config.unwrap().clusters[0].name, "a");
        let history: Vec<u64> = store.history(0).unwrap().iter().map(|h| h.version).collect();
        assert_eq!(history, vec![2, 1]);
        assert!(store.history(1).unwrap()[0].config.is_none());
    }

    #[test]
    fn prune_keeps_the_newest_versions() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for i in 0..5 {
            store.commit(new_version(&format!("c{i}"))).unwrap();
        }
        assert_eq!(store.prune(3).unwrap(), 2);
        let versions: Vec<u64> = store.history(0).unwrap().iter().map(|h| h.version).collect();
        assert_eq!(versions, vec![5, 4, 3]);
        assert!(store.get(2).unwrap().is_none());
        assert_eq!(store.prune(3).unwrap(), 0);
        assert_eq!(store.commit(new_version("next")).unwrap().version, 6, "numbers never restart");
    }

    #[test]
    fn nack_history_survives_reopen_and_goes_with_the_versions_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let nack = |version| StoredNack { version, errors: vec![], at_unix_ms: 1 };
        {
            let store = SledStore::open(dir.path()).unwrap();
            for i in 0..3 {
                store.commit(new_version(&format!("c{i}"))).unwrap();
            }
            store.record_nack("edge-1", &nack(2)).unwrap();
            store.record_nack("edge-1", &nack(3)).unwrap();
            store.record_nack("edge-2", &nack(3)).unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        let versions = |node| store.nacks(node).unwrap().iter().map(|n| n.version).collect::<Vec<_>>();
        assert_eq!(versions("edge-1"), [2, 3]);
        assert_eq!(versions("edge-2"), [3]);
        assert!(versions("edge").is_empty());
        store.commit(new_version("c3")).unwrap();
        assert_eq!(store.prune(2).unwrap(), 2, "versions 1 and 2 go");
        assert_eq!(versions("edge-1"), [3], "and the NACK of version 2 with them");
    }

    #[test]
    fn a_dir_held_by_another_store_is_reported_as_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _held = SledStore::open(dir.path()).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("in use by another process"), "{err}");
    }

    #[test]
    fn damaged_or_unrelated_dirs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a vane data dir"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), vec![0xa5u8; 100_000]).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is damaged"), "{err}");
    }

    #[test]
    fn a_store_behind_its_seal_refuses_to_open_and_names_the_lost_versions() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            for i in 0..3 {
                store.commit(new_version(&format!("c{i}"))).unwrap();
            }
        }
        let sealed = Seal::read(dir.path()).unwrap().unwrap();
        assert_eq!(sealed.version, 3);
        // As if sled had come back without its last two versions.
        Seal { version: 5, ..sealed.clone() }.write(dir.path()).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("its newest version is 3, but version 5 was acknowledged"), "{err}");
        assert!(err.contains("versions 4..=5 are lost"), "{err}");
        // Same number, other content.
        Seal { sha256: "00".repeat(32), ..sealed }.write(dir.path()).unwrap();
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("version 3 no longer has the content that was acknowledged"), "{err}");
    }

    #[test]
    fn a_raised_floor_survives_reopen_and_the_next_version_numbers_above_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.commit(new_version("a")).unwrap();
            store.raise_floor(9).unwrap();
            store.raise_floor(4).unwrap();
            assert_eq!(store.floor().unwrap(), 9);
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.commit(new_version("b")).unwrap().version, 10);
        assert_eq!(store.history(0).unwrap().iter().map(|h| h.version).collect::<Vec<_>>(), vec![10, 1]);
    }

    #[test]
    fn numbers_that_would_overflow_are_an_error_not_a_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.raise_floor(u64::MAX).unwrap();
        assert!(matches!(store.commit(new_version("a")), Err(StoreError::Exhausted)));
        assert!(store.latest().unwrap().is_none(), "nothing was stored");
    }

    #[test]
    fn foreign_sled_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert(b"someone", b"else").unwrap();
            db.flush().unwrap();
        }
        let err = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a vane data dir"), "{err}");
    }
}
