//! The files a config names on the node (`DataSource.filename` of certificates, keys and
//! CAs: what `tls::Material::load` reads), and what a look at them sees: length,
//! modification time and, up to 1 MiB, the sha256 of the content. The hash catches a
//! rewrite of the same size within the file system's timestamp granularity. A leaf:
//! `shared.rs` takes the baseline with it, `file_watch.rs` polls with it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use vane_proto::config::{Config, DataSource, client_auth, data_source::Specifier, listener::Protocol};

/// Files up to this size are hashed at every poll; larger ones are compared by length
/// and modification time only.
const HASH_UP_TO: u64 = 1024 * 1024;

/// What a poll sees of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    File {
        len: u64,
        modified: Option<SystemTime>,
        sha256: Option<[u8; 32]>,
    },
    /// It cannot be read; the text says why.
    Unreadable(String),
}

/// Every watched file, by path.
pub(crate) type Files = BTreeMap<String, Seen>;

/// The files `tls::Material::load` reads for `config`.
pub(crate) fn referenced(config: &Config) -> BTreeSet<String> {
    fn file(source: Option<&DataSource>) -> Option<String> {
        match source?.specifier.as_ref()? {
            Specifier::Filename(path) => Some(path.clone()),
            Specifier::InlineString(_) => None,
        }
    }
    let certificates =
        config.certificates.iter().flat_map(|c| [file(c.certificate_chain.as_ref()), file(c.private_key.as_ref())]);
    let client_cas = config
        .listeners
        .iter()
        .filter(|l| l.protocol == Protocol::Https as i32)
        .filter_map(|l| l.tls.as_ref()?.client_auth.as_ref())
        .filter(|a| a.mode != client_auth::Mode::None as i32)
        .map(|a| file(a.ca.as_ref()));
    let upstream_cas = config.clusters.iter().filter_map(|c| c.tls.as_ref()).map(|t| file(t.ca.as_ref()));
    certificates.chain(client_cas).chain(upstream_cas).flatten().collect()
}

/// Looks at each file (blocking: a `stat` and, for small files, a read).
pub(crate) fn look(paths: impl IntoIterator<Item = String>) -> Files {
    paths
        .into_iter()
        .map(|path| {
            let seen = look_one(&path);
            (path, seen)
        })
        .collect()
}

fn look_one(path: &str) -> Seen {
    let metadata = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return Seen::Unreadable(e.to_string()),
    };
    let sha256 = if metadata.len() <= HASH_UP_TO {
        let mut content = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
        // Bounded: a file that grew since the stat is read up to the limit only.
        let read = std::fs::File::open(path).and_then(|f| f.take(HASH_UP_TO + 1).read_to_end(&mut content));
        if let Err(e) = read {
            return Seen::Unreadable(e.to_string());
        }
        Some(Sha256::digest(&content).into())
    } else {
        None
    };
    Seen::File { len: metadata.len(), modified: metadata.modified().ok(), sha256 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_tls_material_reads_are_watched_and_inline_material_is_not() {
        let config: Config = vane_proto::load(
            r#"
certificates:
  - name: a
    certificate_chain: { filename: /etc/a.pem }
    private_key: { filename: /etc/a.key }
  - name: b
    certificate_chain: { inline_string: "-----BEGIN CERTIFICATE-----" }
    private_key: { filename: /etc/b.key }
listeners:
  - name: web
    address: 127.0.0.1:0
    protocol: HTTPS
    tls:
      certificates: [a]
      client_auth: { mode: REQUIRE, ca: { filename: /etc/clients.pem } }
clusters:
  - name: up
    tls: { ca: { filename: /etc/up-ca.pem } }
"#,
            vane_proto::Format::Yaml,
        )
        .unwrap();
        let files: Vec<String> = referenced(&config).into_iter().collect();
        assert_eq!(files, ["/etc/a.key", "/etc/a.pem", "/etc/b.key", "/etc/clients.pem", "/etc/up-ca.pem"]);
        assert!(referenced(&Config::default()).is_empty());
    }

    #[test]
    fn a_rewrite_of_the_same_size_is_a_change_and_a_missing_file_is_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.pem").to_string_lossy().into_owned();
        std::fs::write(&path, "aaaa").unwrap();
        let before = look([path.clone()]);
        assert_eq!(look([path.clone()]), before, "nothing changed");
        std::fs::write(&path, "bbbb").unwrap();
        assert_ne!(look([path.clone()]), before, "same length, maybe the same mtime: the hash tells");
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(look([path.clone()])[&path], Seen::Unreadable(_)));
    }
}
