//! The seal: a one-line file beside sled's, written after every commit, that names the
//! newest version this store acknowledged (number and content hash) and the lowest number
//! the next version may take.
//!
//! Why it exists: sled recovers a damaged log by replaying it up to the first bad
//! segment, so a truncated `db` file or a few random bytes in it open as a healthy store
//! that has quietly lost its newest versions (the review saw a control plane come back at
//! version 1 after five applies, push the older config to a node holding version 5, and
//! then give version 2 to different content). sled cannot tell; a record kept outside it
//! can. A store whose newest version is older than its seal, or differs from it, refuses
//! to open.
//!
//! The file is written atomically (temp file, fsync, rename, fsync of the directory) and
//! carries a checksum of its own, so a damaged seal is reported as damage, never read as
//! a smaller number.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The seal's file name inside the data dir.
pub(crate) const SEAL_FILE: &str = "vane-seal";
const MAGIC: &str = "vane-seal-v1";

/// What a seal records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Seal {
    /// The newest acknowledged version (0: none yet).
    pub(crate) version: u64,
    /// Its content hash (hex sha256 of the config), empty for version 0.
    pub(crate) sha256: String,
    /// Every number up to this one has been used (by this store, or seen held by a node):
    /// the next version is above it.
    pub(crate) floor: u64,
}

/// Why a seal could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SealError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is damaged (its checksum or format does not hold)")]
    Damaged { path: PathBuf },
}

impl Seal {
    fn body(&self) -> String {
        format!("{MAGIC} version={} sha256={} floor={}", self.version, self.sha256, self.floor)
    }

    fn check(body: &str) -> String {
        hex::encode(&Sha256::digest(body.as_bytes())[..8])
    }

    /// Reads the seal of `dir`; `Ok(None)` when there is none.
    pub(crate) fn read(dir: &Path) -> Result<Option<Seal>, SealError> {
        let path = dir.join(SEAL_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(SealError::Damaged { path }),
            Err(source) => return Err(SealError::Io { path, source }),
        };
        Seal::parse(text.trim_end()).map(Some).ok_or(SealError::Damaged { path })
    }

    fn parse(line: &str) -> Option<Seal> {
        let (body, check) = line.rsplit_once(" check=")?;
        if Seal::check(body) != check {
            return None;
        }
        let mut fields = body.split(' ');
        if fields.next()? != MAGIC {
            return None;
        }
        let mut field = |name: &str| fields.next()?.strip_prefix(name)?.strip_prefix('=').map(str::to_owned);
        let version = field("version")?.parse().ok()?;
        let sha256 = field("sha256")?;
        let floor = field("floor")?.parse().ok()?;
        Some(Seal { version, sha256, floor })
    }

    /// Writes the seal into `dir` atomically and durably.
    pub(crate) fn write(&self, dir: &Path) -> std::io::Result<()> {
        let body = self.body();
        let line = format!("{body} check={}\n", Seal::check(&body));
        let tmp = dir.join(format!("{SEAL_FILE}.tmp"));
        {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(line.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, dir.join(SEAL_FILE))?;
        // The rename is durable once the directory is.
        std::fs::File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_reads_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Seal::read(dir.path()).unwrap(), None);
        let seal = Seal { version: 5, sha256: "ab".repeat(32), floor: 7 };
        seal.write(dir.path()).unwrap();
        assert_eq!(Seal::read(dir.path()).unwrap(), Some(seal));
    }

    #[test]
    fn a_changed_digit_makes_the_seal_damaged_not_smaller() {
        let dir = tempfile::tempdir().unwrap();
        Seal { version: 15, sha256: "cd".repeat(32), floor: 15 }.write(dir.path()).unwrap();
        let path = dir.path().join(SEAL_FILE);
        let text = std::fs::read_to_string(&path).unwrap().replace("version=15", "version=1");
        std::fs::write(&path, text).unwrap();
        assert!(matches!(Seal::read(dir.path()), Err(SealError::Damaged { .. })));
        std::fs::write(&path, [0xffu8, 0xfe, 0x00]).unwrap();
        assert!(matches!(Seal::read(dir.path()), Err(SealError::Damaged { .. })));
    }
}
