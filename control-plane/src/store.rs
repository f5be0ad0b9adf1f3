//! Where versions live. Every version is an immutable record; the version number is bumped
//! in the same sled transaction that writes it, and a commit returns only once sled has
//! flushed it to disk, so an acknowledged version survives a SIGKILL.
//!
//! Layout (sled trees): `versions`: big-endian u64 → `StoredVersion` with its config;
//! `history`: the same record without the config (cheap listing); `meta`: `format` marker
//! and `latest` version.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use sled::Transactional;
use vane_proto::config::Config;
use vane_proto::store::StoredVersion;

const FORMAT_KEY: &[u8] = b"format";
const FORMAT: &[u8] = b"vane-store-v1";
const LATEST_KEY: &[u8] = b"latest";

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
    /// Stores `new` as latest + 1; returns once it is durable.
    fn commit(&self, new: NewVersion) -> Result<StoredVersion, StoreError>;
    /// Versions newest first, without their configs; `limit` 0 means all.
    fn history(&self, limit: usize) -> Result<Vec<StoredVersion>, StoreError>;
    /// Removes the oldest versions so that at most `keep` (at least 1) remain; returns how
    /// many were removed.
    fn prune(&self, keep: usize) -> Result<usize, StoreError>;
    /// Bytes the store takes on disk (0 when unknown).
    fn size_on_disk(&self) -> u64 {
        0
    }
}

/// The embedded default store.
#[derive(Debug)]
pub struct SledStore {
    db: sled::Db,
    versions: sled::Tree,
    history: sled::Tree,
    meta: sled::Tree,
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
        if !fresh && !dir.join("db").is_file() {
            return Err(StoreError::Foreign { path: dir.to_owned() });
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Open { path: dir.to_owned(), source: sled::Error::Io(e) })?;
        let db = open_waiting_for_lock(dir)?;
        let versions = db.open_tree("versions")?;
        let history = db.open_tree("history")?;
        let meta = db.open_tree("meta")?;
        match meta.get(FORMAT_KEY)? {
            Some(f) if f.as_ref() == FORMAT => {}
            Some(_) => return Err(StoreError::Foreign { path: dir.to_owned() }),
            None => {
                let foreign_trees = db
                    .tree_names()
                    .iter()
                    .any(|t| !matches!(t.as_ref(), b"versions" | b"history" | b"meta" | b"__sled__default"));
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
        Ok(SledStore { db, versions, history, meta })
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
        let result = (&self.versions, &self.history, &self.meta).transaction(|(versions, history, meta)| {
            let version = meta.get(LATEST_KEY)?.map_or(0, |v| u64_from(&v)) + 1;
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
        Ok(record)
    }

    fn prune(&self, keep: usize) -> Result<usize, StoreError> {
        let latest = self.meta.get(LATEST_KEY)?.map_or(0, |v| u64_from(&v));
        let keep = u64::try_from(keep.max(1)).unwrap_or(u64::MAX);
        match latest.checked_sub(keep) {
            Some(cutoff) if cutoff > 0 => self.prune_below(cutoff),
            _ => Ok(0),
        }
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
            self.db.flush()?;
        }
        Ok(removed)
    }
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
