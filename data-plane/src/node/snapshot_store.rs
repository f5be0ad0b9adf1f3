//! The node's last-known-good snapshot on disk: written atomically (temp file, fsync,
//! rename, fsync of the directory) after a swap and before the ACK; read at boot when the
//! control plane cannot be reached.

use std::io::Write;
use std::path::{Path, PathBuf};

use prost::Message;
use vane_proto::discovery::Snapshot;

const FILE: &str = "snapshot.pb";

/// Failures reading or writing the snapshot cache.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotStoreError {
    #[error("snapshot cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot cache {path} is damaged: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: prost::DecodeError,
    },
}

pub(crate) fn write(dir: &Path, snapshot: &Snapshot) -> Result<(), SnapshotStoreError> {
    let io = |source| SnapshotStoreError::Io { path: dir.join(FILE), source };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut tmp = tempfile_in(dir).map_err(io)?;
    tmp.1.write_all(&snapshot.encode_to_vec()).map_err(io)?;
    tmp.1.sync_all().map_err(io)?;
    std::fs::rename(&tmp.0, dir.join(FILE)).map_err(io)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

/// The temp file is readable by the node's user only: snapshots may hold private keys.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let path = dir.join(format!(".{FILE}.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&path)?;
    Ok((path, file))
}

/// The cached snapshot, if any.
pub(crate) fn read(dir: &Path) -> Result<Option<Snapshot>, SnapshotStoreError> {
    let path = dir.join(FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            Snapshot::decode(bytes.as_slice()).map(Some).map_err(|source| SnapshotStoreError::Decode { path, source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SnapshotStoreError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_snapshot_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap().is_none());
        let snapshot = Snapshot { version: 7, nonce: "n".into(), sha256: "s".into(), config: Some(Default::default()) };
        write(&dir.path().join("sub"), &snapshot).unwrap();
        assert_eq!(read(&dir.path().join("sub")).unwrap(), Some(snapshot));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("sub").join(FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "snapshots may hold private keys");
        }
    }
}
