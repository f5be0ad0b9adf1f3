//! Backups of the store and restores from them: the documented way back from a damaged
//! data dir, which the store refuses to open (see `seal.rs`).
//!
//! Data flow: `Backup` (admin API, `write` token) streams every retained version oldest
//! first and then an end marker with the count and the version floor; the CLI writes them
//! to a file as `vane-backup-v1\n` followed by length-delimited `BackupEntry` messages.
//! `restore` runs offline (the control plane stopped): it reads the whole file once to
//! prove it complete, keeps any existing data dir aside, rebuilds a store with the same
//! version numbers, hashes and authors, and raises the floor to what the backup and the
//! old dir's seal say was used. When versions newer than the backup were acknowledged
//! (nodes may hold them), the backup's newest config is published again under a new,
//! higher number, so no number is ever given to two contents and no node is asked to go
//! back to a number older than the one it holds.
//!
//! What a backup leaves out: the nodes' NACK history (`nack_history.rs`). It is what nodes
//! said of versions, not configuration; a restore typically serves other nodes, or the
//! same ones after a while, and the backup format stays `vane-backup-v1`. The cost: after
//! a restore whose newest version a running node had refused, that node is offered it
//! once more, NACKs it once more (recorded again), and is never offered it after that.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use tokio::sync::mpsc;
use vane_proto::store::{BackupEnd, BackupEntry, StoredVersion, backup_entry};

use crate::seal::Seal;
use crate::store::{NewVersion, SledStore, Store, StoreError};

/// The first line of every backup file.
pub const BACKUP_MAGIC: &[u8] = b"vane-backup-v1\n";
/// Largest entry a backup file may hold (one version with its config).
const MAX_ENTRY_BYTES: usize = 512 * 1024 * 1024;

/// Failures of reading a backup or restoring from one.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("backup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backup {path} is not a vane backup (it does not start with `vane-backup-v1`)")]
    NotABackup { path: PathBuf },
    #[error("backup {path} is damaged or truncated: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("data dir {path} is not empty; add --replace to keep it aside as {aside} and restore into a new one")]
    NotEmpty { path: PathBuf, aside: PathBuf },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// Versions put back.
    pub versions: u64,
    /// The newest version of the backup.
    pub latest: u64,
    /// The new version under which the backup's newest config was published again, when
    /// newer versions had been acknowledged (see the module header).
    pub republished: Option<u64>,
    /// Where the data dir that was there before now is.
    pub kept_aside: Option<PathBuf>,
}

/// Streams a backup of `store` into `tx`: every retained version oldest first, then the
/// end marker. Runs on a blocking thread; stops when the receiver goes away.
pub(crate) fn produce(store: &Arc<dyn Store>, tx: &mpsc::Sender<Result<BackupEntry, tonic::Status>>) {
    let send = |entry: Result<BackupEntry, tonic::Status>| tx.blocking_send(entry).is_ok();
    let listed = match store.history(0) {
        Ok(listed) => listed,
        Err(e) => {
            send(Err(tonic::Status::internal(e.to_string())));
            return;
        }
    };
    let mut count = 0u64;
    for entry in listed.iter().rev() {
        match store.get(entry.version) {
            Ok(Some(record)) => {
                count += 1;
                if !send(Ok(BackupEntry { entry: Some(backup_entry::Entry::Version(record)) })) {
                    return;
                }
            }
            // Pruned while the backup ran: it is no longer a retained version.
            Ok(None) => {}
            Err(e) => {
                send(Err(tonic::Status::internal(e.to_string())));
                return;
            }
        }
    }
    let floor = match store.floor() {
        Ok(floor) => floor,
        Err(e) => {
            send(Err(tonic::Status::internal(e.to_string())));
            return;
        }
    };
    send(Ok(BackupEntry { entry: Some(backup_entry::Entry::End(BackupEnd { versions: count, floor })) }));
}

/// Writes the file header of a backup.
pub fn write_backup_header(out: &mut impl Write) -> std::io::Result<()> {
    out.write_all(BACKUP_MAGIC)
}

/// Writes one entry of a backup file.
pub fn write_backup_entry(out: &mut impl Write, entry: &BackupEntry) -> std::io::Result<()> {
    out.write_all(&entry.encode_length_delimited_to_vec())
}

/// Reads a backup file entry by entry.
struct BackupReader {
    path: PathBuf,
    input: BufReader<std::fs::File>,
}

impl BackupReader {
    fn open(path: &Path) -> Result<BackupReader, RestoreError> {
        let io = |source| RestoreError::Io { path: path.to_owned(), source };
        let mut input = BufReader::new(std::fs::File::open(path).map_err(io)?);
        let mut magic = [0u8; BACKUP_MAGIC.len()];
        if input.read_exact(&mut magic).is_err() || magic != BACKUP_MAGIC {
            return Err(RestoreError::NotABackup { path: path.to_owned() });
        }
        Ok(BackupReader { path: path.to_owned(), input })
    }

    fn damaged(&self, reason: impl Into<String>) -> RestoreError {
        RestoreError::Damaged { path: self.path.clone(), reason: reason.into() }
    }

    /// The next entry; `None` at a clean end of file.
    fn next(&mut self) -> Result<Option<BackupEntry>, RestoreError> {
        let mut length: u64 = 0;
        for i in 0..10 {
            let mut byte = [0u8; 1];
            match self.input.read(&mut byte) {
                Ok(0) if i == 0 => return Ok(None),
                Ok(0) => return Err(self.damaged("it ends inside an entry's length")),
                Ok(_) => {}
                Err(source) => return Err(RestoreError::Io { path: self.path.clone(), source }),
            }
            length |= u64::from(byte[0] & 0x7f) << (7 * i);
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        if length > MAX_ENTRY_BYTES {
            return Err(self.damaged(format!("an entry claims {length} bytes")));
        }
        let mut bytes = vec![0u8; length];
        self.input.read_exact(&mut bytes).map_err(|_| self.damaged("it ends inside an entry"))?;
        BackupEntry::decode(bytes.as_slice()).map(Some).map_err(|e| self.damaged(e.to_string()))
    }

    /// Reads every version, checking the order and the end marker; calls `each` on them.
    fn each(
        mut self,
        mut each: impl FnMut(StoredVersion) -> Result<(), RestoreError>,
    ) -> Result<BackupEnd, RestoreError> {
        let mut count = 0u64;
        let mut last = 0u64;
        while let Some(entry) = self.next()? {
            match entry.entry {
                Some(backup_entry::Entry::Version(record)) => {
                    if record.version <= last {
                        return Err(self.damaged(format!("version {} comes after {last}", record.version)));
                    }
                    if record.config.is_none() {
                        return Err(self.damaged(format!("version {} has no config", record.version)));
                    }
                    last = record.version;
                    count += 1;
                    each(record)?;
                }
                Some(backup_entry::Entry::End(end)) => {
                    if end.versions != count {
                        return Err(self.damaged(format!("it ends after {count} versions of {}", end.versions)));
                    }
                    if self.next()?.is_some() {
                        return Err(self.damaged("entries follow its end marker"));
                    }
                    return Ok(end);
                }
                None => return Err(self.damaged("an entry is empty")),
            }
        }
        Err(self.damaged(format!("it has no end marker after {count} versions (truncated?)")))
    }
}

/// Rebuilds the store in `data_dir` from the backup file `from` (see the module header).
/// The control plane must be stopped. An existing, non-empty `data_dir` is kept aside
/// (renamed `DIR.replaced-UNIXMS`) when `replace` is set, else refused.
pub fn restore(data_dir: &Path, from: &Path, replace: bool) -> Result<Restored, RestoreError> {
    // The whole file first: a truncated backup must not cost the old dir.
    let end = BackupReader::open(from)?.each(|_| Ok(()))?;
    let occupied = std::fs::read_dir(data_dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    let mut used = end.floor;
    let mut kept_aside = None;
    if occupied {
        let aside = PathBuf::from(format!("{}.replaced-{}", data_dir.display(), vane_proto::unix_ms_now()));
        if !replace {
            return Err(RestoreError::NotEmpty { path: data_dir.to_owned(), aside });
        }
        // What the old dir's seal says was used stays used, damaged store or not.
        if let Ok(Some(seal)) = Seal::read(data_dir) {
            used = used.max(seal.floor).max(seal.version);
        }
        std::fs::rename(data_dir, &aside).map_err(|source| RestoreError::Io { path: data_dir.to_owned(), source })?;
        kept_aside = Some(aside);
    }
    let store = SledStore::open(data_dir)?;
    let mut newest: Option<StoredVersion> = None;
    BackupReader::open(from)?.each(|record| {
        store.import(&record)?;
        newest = Some(record);
        Ok(())
    })?;
    let latest = newest.as_ref().map_or(0, |r| r.version);
    store.raise_floor(used)?;
    let republished = match newest {
        Some(record) if used > latest => {
            let summary = format!(
                "restored from a backup: version {latest} published again; versions {}..={used} were used \
                 before and are not in the backup",
                latest + 1
            );
            let new = NewVersion {
                config: record.config.unwrap_or_default(),
                author: "vane store restore".into(),
                summary,
                sha256: record.sha256,
                created_at_unix_ms: vane_proto::unix_ms_now(),
            };
            Some(store.commit(new)?.version)
        }
        _ => None,
    };
    Ok(Restored { versions: end.versions, latest, republished, kept_aside })
}
