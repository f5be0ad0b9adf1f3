//! A cache's disk tier: every stored response is also written to a file of its own in the
//! cache's directory (named by the SHA-256 of its storage key), read back when the memory
//! tier misses it, and so kept across node restarts.
//!
//! A file is `VANEC001`, the length of a JSON head (key, status, headers, freshness, when
//! stored, what it varies on), the head, the body, then the SHA-256 of all that: a file
//! that does not check out when read (cut short, a flipped byte, an old format) is
//! deleted and never served. Files are written to a temporary name and renamed, off the
//! request path (`spawn_blocking`). The directory holds a `SPEC` file, the SHA-256 of the
//! cache's settings: a node that starts with other settings for the cache empties it.
//! The files are bounded by `disk.max_bytes`, the oldest written going first.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::entry::Entry;
use super::key::VARIANT;
use super::policy::Freshness;

/// Default bound of a disk tier: 1 GiB.
pub(crate) const DEFAULT_DISK_BYTES: u64 = 1 << 30;
const MAGIC: &[u8; 8] = b"VANEC001";
const SPEC: &str = "SPEC";
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The files of one cache.
#[derive(Debug)]
pub(crate) struct Disk {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
}

#[derive(Debug, Default)]
struct Index {
    /// By storage key.
    files: HashMap<Arc<str>, Item>,
    /// What a key's stored responses vary on.
    varies: HashMap<Arc<str>, Arc<[HeaderName]>>,
    /// Storage keys by when written (oldest first).
    order: BTreeMap<u64, Arc<str>>,
    bytes: u64,
    next: u64,
}

#[derive(Debug, Clone)]
struct Item {
    size: u64,
    seq: u64,
}

/// The head of a file.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Head {
    key: String,
    status: u16,
    /// Names and base64 values.
    headers: Vec<(String, String)>,
    lifetime_ms: u64,
    initial_age_ms: u64,
    swr_ms: u64,
    sie_ms: u64,
    must_revalidate: bool,
    no_cache: bool,
    #[serde(default)]
    shared_with_authorization: bool,
    stored_unix_ms: u64,
    vary: Vec<String>,
}

fn file_name(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Disk {
    /// Opens (creating it) the directory of a cache whose settings encode as `spec`,
    /// emptying it when they changed, and indexes the files that check out.
    pub(crate) fn open(dir: &Path, max_bytes: u64, spec: &[u8]) -> std::io::Result<Disk> {
        std::fs::create_dir_all(dir)?;
        let fingerprint = hex::encode(Sha256::digest(spec));
        let spec_path = dir.join(SPEC);
        let same = std::fs::read_to_string(&spec_path).is_ok_and(|s| s.trim() == fingerprint);
        let disk = Disk {
            dir: dir.to_owned(),
            max_bytes: if max_bytes == 0 { DEFAULT_DISK_BYTES } else { max_bytes },
            index: Mutex::default(),
        };
        let mut found: Vec<(u64, Arc<str>, u64, Vec<HeaderName>)> = Vec::new();
        for item in std::fs::read_dir(dir)? {
            let path = item?.path();
            if path.file_name().is_some_and(|n| n == SPEC) {
                continue;
            }
            if !same {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match std::fs::read(&path).ok().and_then(|bytes| decode(&bytes).map(|(head, _)| (head, bytes.len()))) {
                Some((head, size)) => {
                    let vary = head.vary.iter().filter_map(|v| HeaderName::try_from(v.as_str()).ok()).collect();
                    found.push((head.stored_unix_ms, head.key.into(), size as u64, vary));
                }
                None => {
                    warn!(file = %path.display(), "damaged cache file dropped");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        if !same {
            let mut f = std::fs::File::create(&spec_path)?;
            f.write_all(fingerprint.as_bytes())?;
            f.sync_all()?;
        }
        found.sort_by_key(|f| f.0);
        let doomed = {
            let mut index = disk.lock();
            for (_, key, size, vary) in found {
                index.add(key, size, vary);
            }
            index.over(disk.max_bytes)
        };
        disk.delete(&doomed);
        Ok(disk)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `entry` (stored at `key`) in the background.
    pub(crate) fn write(self: &Arc<Self>, key: &str, entry: &Entry) {
        let bytes = encode(key, entry);
        let size = bytes.len() as u64;
        let key: Arc<str> = key.into();
        let doomed = {
            let mut index = self.lock();
            index.add(key.clone(), size, entry.vary.to_vec());
            index.over(self.max_bytes)
        };
        let disk = self.clone();
        let write = move || {
            disk.delete(&doomed);
            let path = disk.dir.join(file_name(&key));
            // A name of its own: two writes of one key never mix their bytes.
            let tmp = path.with_extension(format!("tmp{}", TMP_SEQ.fetch_add(1, Ordering::Relaxed)));
            let written = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(error) = written {
                warn!(%error, dir = %disk.dir.display(), "cache file not written");
                let _ = std::fs::remove_file(&tmp);
                disk.lock().remove(&key);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(write)),
            Err(_) => write(),
        }
    }

    /// What the response stored at `key` varies on, when the disk holds it.
    pub(crate) fn varies(&self, key: &str) -> Option<Arc<[HeaderName]>> {
        self.lock().varies.get(key).cloned()
    }

    pub(crate) fn holds(&self, key: &str) -> bool {
        self.lock().files.contains_key(key)
    }

    /// Reads the entry stored at `key` (blocking). A file that does not check out is
    /// deleted.
    pub(crate) fn read(&self, key: &str) -> Option<Entry> {
        if !self.holds(key) {
            return None;
        }
        let path = self.dir.join(file_name(key));
        let bytes = std::fs::read(&path).ok()?;
        match decode(&bytes).filter(|(head, _)| head.key == key).and_then(|(head, at)| entry(head, &bytes, at)) {
            Some(e) => Some(e),
            None => {
                warn!(file = %path.display(), "damaged cache file dropped");
                self.delete(&[key.into()]);
                None
            }
        }
    }

    /// Deletes the files of the keys `matching` selects; the keys deleted.
    pub(crate) fn remove_if(&self, matching: impl Fn(&str) -> bool) -> Vec<Arc<str>> {
        let keys: Vec<Arc<str>> = self.lock().files.keys().filter(|k| matching(k)).cloned().collect();
        self.delete(&keys);
        keys
    }

    fn delete(&self, keys: &[Arc<str>]) {
        if keys.is_empty() {
            return;
        }
        {
            let mut index = self.lock();
            for k in keys {
                index.remove(k);
            }
        }
        for k in keys {
            let _ = std::fs::remove_file(self.dir.join(file_name(k)));
        }
        debug!(files = keys.len(), dir = %self.dir.display(), "cache files deleted");
    }

    /// Bytes the files take.
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

impl Index {
    fn add(&mut self, key: Arc<str>, size: u64, vary: Vec<HeaderName>) {
        self.remove(&key);
        let seq = self.next;
        self.next += 1;
        if !vary.is_empty() {
            let primary = key.split(VARIANT).next().unwrap_or(&key);
            self.varies.insert(primary.into(), vary.into());
        }
        self.order.insert(seq, key.clone());
        self.files.insert(key, Item { size, seq });
        self.bytes += size;
    }

    fn remove(&mut self, key: &str) {
        if let Some(item) = self.files.remove(key) {
            self.order.remove(&item.seq);
            self.bytes = self.bytes.saturating_sub(item.size);
        }
        if !key.contains(VARIANT) {
            self.varies.remove(key);
        }
    }

    /// The oldest keys to drop to come within `max` bytes (taken out of the index).
    fn over(&mut self, max: u64) -> Vec<Arc<str>> {
        let mut doomed = Vec::new();
        while self.bytes > max {
            let Some((_, key)) = self.order.pop_first() else { break };
            if let Some(item) = self.files.remove(&key) {
                self.bytes = self.bytes.saturating_sub(item.size);
            }
            doomed.push(key);
        }
        doomed
    }
}

fn encode(key: &str, e: &Entry) -> Vec<u8> {
    let stored =
        SystemTime::now().checked_sub(Instant::now().saturating_duration_since(e.stored)).unwrap_or(UNIX_EPOCH);
    let f = &e.freshness;
    let head = Head {
        key: key.to_owned(),
        status: e.status.as_u16(),
        headers: e.headers.iter().map(|(k, v)| (k.as_str().to_owned(), STANDARD.encode(v.as_bytes()))).collect(),
        lifetime_ms: ms(f.lifetime),
        initial_age_ms: ms(f.initial_age),
        swr_ms: ms(f.stale_while_revalidate),
        sie_ms: ms(f.stale_if_error),
        must_revalidate: f.must_revalidate,
        no_cache: f.no_cache,
        shared_with_authorization: f.shared_with_authorization,
        stored_unix_ms: ms(stored.duration_since(UNIX_EPOCH).unwrap_or_default()),
        vary: e.vary.iter().map(|n| n.as_str().to_owned()).collect(),
    };
    let head = serde_json::to_vec(&head).unwrap_or_default();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + head.len() + e.body.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u32::try_from(head.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&e.body);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

/// The head of a file that checks out, and where its body starts.
fn decode(bytes: &[u8]) -> Option<(Head, usize)> {
    let (content, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
    if Sha256::digest(content).as_slice() != sum {
        return None;
    }
    let rest = content.strip_prefix(MAGIC.as_slice())?;
    let (len, rest) = rest.split_at_checked(4)?;
    let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
    let head = serde_json::from_slice(rest.get(..len)?).ok()?;
    Some((head, MAGIC.len() + 4 + len))
}

fn entry(head: Head, bytes: &[u8], at: usize) -> Option<Entry> {
    let body = Bytes::copy_from_slice(bytes.get(at..bytes.len() - 32)?);
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for (k, v) in &head.headers {
        let name = HeaderName::try_from(k.as_str()).ok()?;
        let value = HeaderValue::from_bytes(&STANDARD.decode(v).ok()?).ok()?;
        headers.append(name, value);
    }
    let freshness = Freshness {
        lifetime: Duration::from_millis(head.lifetime_ms),
        initial_age: Duration::from_millis(head.initial_age_ms),
        stale_while_revalidate: Duration::from_millis(head.swr_ms),
        stale_if_error: Duration::from_millis(head.sie_ms),
        must_revalidate: head.must_revalidate,
        no_cache: head.no_cache,
        shared_with_authorization: head.shared_with_authorization,
    };
    let vary: Vec<HeaderName> = head.vary.iter().filter_map(|v| HeaderName::try_from(v.as_str()).ok()).collect();
    let mut e = Entry::new(StatusCode::from_u16(head.status).ok()?, headers, body, freshness, vary.into());
    // Its age goes on from when it was stored, restarts included.
    let stored = UNIX_EPOCH + Duration::from_millis(head.stored_unix_ms);
    let since = SystemTime::now().duration_since(stored).unwrap_or_default();
    match Instant::now().checked_sub(since) {
        Some(at) => e.stored = at,
        // An Instant cannot go that far back: count the time as age instead.
        None => e.freshness.initial_age = e.freshness.initial_age.saturating_add(since),
    }
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &'static str) -> Entry {
        let f = Freshness {
            lifetime: Duration::from_secs(60),
            initial_age: Duration::from_secs(2),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::from_secs(9),
            must_revalidate: false,
            no_cache: false,
            shared_with_authorization: false,
        };
        let mut h = HeaderMap::new();
        h.insert("etag", "\"e\"".parse().unwrap());
        Entry::new(StatusCode::OK, h, Bytes::from_static(body.as_bytes()), f, Arc::from([]))
    }

    #[test]
    fn entries_come_back_after_a_reopen_and_damaged_files_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::open(dir.path(), 0, b"spec").unwrap());
        disk.write("h/a", &entry("aaaa"));
        disk.write("h/b", &entry("bbbb"));
        let back = disk.read("h/a").unwrap();
        assert_eq!((back.body.as_ref(), back.freshness.stale_if_error), (&b"aaaa"[..], Duration::from_secs(9)));
        assert_eq!(back.headers["etag"], "\"e\"");
        // Flip a byte of b's body.
        let path = dir.path().join(file_name("h/b"));
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() - 34;
        bytes[at] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let reopened = Disk::open(dir.path(), 0, b"spec").unwrap();
        assert!(reopened.read("h/a").is_some());
        assert!(reopened.read("h/b").is_none());
        assert!(!path.exists(), "the damaged file is deleted");
        // Other settings: the directory is emptied.
        let other = Disk::open(dir.path(), 0, b"other").unwrap();
        assert!(other.read("h/a").is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only SPEC is left");
    }

    #[test]
    fn the_files_stay_within_their_bytes_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::open(dir.path(), 1200, b"spec").unwrap());
        for k in ["h/1", "h/2", "h/3", "h/4"] {
            disk.write(k, &entry("0123456789012345678901234567890123456789"));
        }
        assert!(disk.bytes() <= 1200, "{}", disk.bytes());
        assert!(disk.read("h/1").is_none());
        assert!(disk.read("h/4").is_some());
        assert!(!disk.remove_if(|k| k.starts_with("h/")).is_empty());
        assert_eq!(disk.bytes(), 0);
    }
}
