//! TLS passthrough: the server name of a ClientHello, read without terminating TLS.
//!
//! The listener reads the client's first TLS records (not a peek: what was read is
//! written to the upstream first, so the upstream receives the bytes unchanged) until
//! they hold the whole ClientHello handshake message, then this parser finds its
//! `server_name` extension (RFC 6066 section 3). Everything is read with bounds-checked
//! accessors: the input is a stranger's, and a short or lying length is an error, never a
//! panic. A hello split over several records (allowed by RFC 8446 5.1) is joined.

use std::sync::Arc;

use vane_proto::tls::name_matches;

use crate::upstream::cluster::Cluster;

/// Most bytes read while waiting for a whole ClientHello (a record is at most 16 KiB;
/// post-quantum hellos are under 2 KiB).
pub(crate) const MAX_HELLO: usize = 16 * 1024 + 5;

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// More bytes are needed.
    Partial,
    /// A whole ClientHello, with its server name (lower case) if it sent one.
    Complete(Option<String>),
    /// Not a TLS ClientHello (or a malformed one).
    Invalid,
}

/// Reads what `buf` holds of the client's first bytes.
pub(crate) fn parse(buf: &[u8]) -> Hello {
    // Join the handshake bytes of consecutive handshake records.
    let mut handshake = Vec::new();
    let mut rest = buf;
    while let Some(header) = rest.get(..5) {
        if header.first() != Some(&22) || header.get(1) != Some(&3) {
            return Hello::Invalid;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16 * 1024 + 256 {
            return Hello::Invalid;
        }
        let Some(body) = rest.get(5..5 + len) else {
            // A partial record: what it holds so far still counts for the message length.
            handshake.extend_from_slice(rest.get(5..).unwrap_or_default());
            break;
        };
        handshake.extend_from_slice(body);
        rest = &rest[5 + len..];
        if message_len(&handshake).is_some_and(|need| handshake.len() >= need) {
            break;
        }
    }
    let Some(need) = message_len(&handshake) else { return Hello::Partial };
    if handshake.first() != Some(&1) {
        return Hello::Invalid;
    }
    if need > MAX_HELLO {
        return Hello::Invalid;
    }
    match handshake.get(4..need) {
        Some(body) => client_hello_sni(body).map_or(Hello::Invalid, Hello::Complete),
        None => Hello::Partial,
    }
}

/// Total length (header included) of the handshake message at the start of `hs`.
fn message_len(hs: &[u8]) -> Option<usize> {
    let h = hs.get(..4)?;
    Some(4 + ((usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3])))
}

/// A cursor over untrusted bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

/// The SNI of a ClientHello body; `None` when malformed, `Some(None)` without one.
fn client_hello_sni(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.0.is_empty() {
        return Some(None); // no extensions at all (TLS 1.2 allows it)
    }
    let mut extensions = Reader(r.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(Reader(data).vec16()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == 0 {
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.');
                return valid.then(|| Some(String::from_utf8_lossy(name).to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

/// SNI rules of a listener, compiled: exact names first, then wildcards, in rule order.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    exact: Vec<(Box<str>, Arc<Cluster>)>,
    wildcard: Vec<(Box<str>, Arc<Cluster>)>,
}

impl Rules {
    pub(crate) fn add(&mut self, pattern: &str, cluster: Arc<Cluster>) {
        let list = if pattern.starts_with("*.") { &mut self.wildcard } else { &mut self.exact };
        list.push((pattern.to_ascii_lowercase().into(), cluster));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    /// The cluster for `name` (lower case), if a rule covers it.
    pub(crate) fn find(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.exact
            .iter()
            .find(|(p, _)| **p == *name)
            .or_else(|| self.wildcard.iter().find(|(p, _)| name_matches(p, name)))
            .map(|(_, c)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, for `name` (or without SNI).
    fn rustls_hello(name: Option<&str>) -> Vec<u8> {
        use rustls::pki_types::ServerName;
        let mut config = rustls::ClientConfig::builder_with_provider(vane_proto::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.enable_sni = name.is_some();
        let server = ServerName::try_from(name.unwrap_or("ignored.example").to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn finds_the_server_name_of_a_real_client_hello() {
        let hello = rustls_hello(Some("Db.Example.com"));
        assert_eq!(parse(&hello), Hello::Complete(Some("db.example.com".into())));
        assert_eq!(parse(&rustls_hello(None)), Hello::Complete(None));
    }

    #[test]
    fn a_hello_cut_anywhere_is_partial_and_one_split_over_records_is_joined() {
        let hello = rustls_hello(Some("a.example.com"));
        for cut in 0..hello.len() {
            assert_eq!(parse(&hello[..cut]), Hello::Partial, "cut at {cut}");
        }
        // The same handshake message in two records.
        let body = &hello[5..];
        let (one, two) = body.split_at(40);
        let mut split = Vec::new();
        for part in [one, two] {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(parse(&split), Hello::Complete(Some("a.example.com".into())));
    }

    #[test]
    fn what_is_not_a_client_hello_is_invalid_never_a_panic() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Hello::Invalid);
        assert_eq!(parse(&[22, 3, 1, 0, 0]), Hello::Invalid, "an empty record");
        assert_eq!(parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]), Hello::Invalid, "a ServerHello");
        // Lying lengths inside the hello: every single byte changed must not panic.
        let hello = rustls_hello(Some("a.example.com"));
        for i in 5..hello.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut bad = hello.clone();
                bad[i] = v;
                let _ = parse(&bad);
            }
        }
    }

    #[test]
    fn exact_names_win_over_wildcards_which_cover_one_label() {
        let empty = std::collections::HashMap::new();
        let registry = crate::upstream::cluster::ClusterRegistry::new(&empty);
        let cluster = |name: &str| {
            registry.build(
                &vane_proto::config::Cluster { name: name.into(), ..Default::default() },
                Default::default(),
                None,
            )
        };
        let mut rules = Rules::default();
        rules.add("*.example.com", cluster("wild"));
        rules.add("db.example.com", cluster("db"));
        let found = |n: &str| rules.find(n).map(|c| c.name.to_string());
        assert_eq!(found("db.example.com").as_deref(), Some("db"));
        assert_eq!(found("web.example.com").as_deref(), Some("wild"));
        assert_eq!(found("example.com"), None);
        assert_eq!(found("a.b.example.com"), None);
    }
}
