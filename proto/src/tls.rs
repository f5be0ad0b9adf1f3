//! Certificates as both planes read them: PEM parsing, the key-matches-leaf and validity
//! checks, the names a leaf covers, and the redaction of private keys in admin output.
//!
//! The control plane checks inline PEM when a config is written; a node checks everything
//! again (files included) when it compiles a snapshot, so a bad file is a NACK naming it.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

use crate::config::{Config, DataSource, data_source::Specifier};

/// The one crypto provider Vane uses, for servers, clients and checks alike.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The text of a data source: inline, or read from the file (node side).
pub fn read_source(source: Option<&DataSource>) -> Result<String, String> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(Specifier::InlineString(s)) => Ok(s.clone()),
        Some(Specifier::Filename(path)) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}")),
        None => Err("is required".into()),
    }
}

/// Every certificate in a PEM bundle, in order; at least one.
pub fn parse_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// What Vane reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject distinguished name, RFC 4514 style (`CN=a.test, O=Example`).
    pub subject: String,
    /// Subject common name, if any.
    pub common_name: Option<String>,
    /// DNS subject alternative names (`*.example.com` kept as written).
    pub dns_names: Vec<String>,
    /// URI subject alternative names (SPIFFE ids and the like).
    pub uris: Vec<String>,
    /// Validity, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

/// Reads the fields Vane uses from a DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut info = CertInfo {
        subject: cert.subject().to_string(),
        common_name: cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_owned),
        dns_names: vec![],
        uris: vec![],
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => info.dns_names.push(d.to_ascii_lowercase()),
                GeneralName::URI(u) => info.uris.push((*u).to_owned()),
                _ => {}
            }
        }
    }
    Ok(info)
}

/// A chain and its key, checked: both parse, the key matches the leaf, the leaf is valid now.
/// Errors are `(field, reason)`.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<(CertifiedKey, CertInfo), (&'static str, String)> {
    let chain = parse_certificates(chain_pem).map_err(|e| ("certificate_chain", e))?;
    let info = inspect(&chain[0]).map_err(|e| ("certificate_chain", e))?;
    let now = crate::unix_ms_now() / 1000;
    if info.not_after < now {
        return Err((
            "certificate_chain",
            format!("expired: the leaf '{}' is valid until {}", info.subject, info.not_after),
        ));
    }
    if info.not_before > now {
        return Err((
            "certificate_chain",
            format!("not yet valid: the leaf '{}' starts at {}", info.subject, info.not_before),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| ("private_key", "not a PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| ("private_key", format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok((certified, info)),
        Err(_) => Err(("private_key", "does not match the leaf certificate's public key".into())),
    }
}

/// Prefix of the placeholder that stands for a stored private key in admin output.
const REDACTED: &str = "<redacted sha256:";

fn key_hash(pem: &str) -> String {
    hex::encode(Sha256::digest(pem.as_bytes()))
}

/// Replaces every inline private key with `<redacted sha256:HEX>`.
pub fn redact(config: &mut Config) {
    for c in &mut config.certificates {
        if let Some(Specifier::InlineString(pem)) = c.private_key.as_mut().and_then(|k| k.specifier.as_mut())
            && !pem.starts_with(REDACTED)
        {
            *pem = format!("{REDACTED}{}>", key_hash(pem));
        }
    }
}

/// Puts back the stored keys that `redacted` placeholders in `config` stand for, taken
/// from `stored`. Returns `(certificate name, reason)` for a placeholder matching no key.
pub fn restore_redacted(config: &mut Config, stored: &Config) -> Result<(), Vec<(String, String)>> {
    let mut missing = Vec::new();
    for c in &mut config.certificates {
        let Some(Specifier::InlineString(pem)) = c.private_key.as_mut().and_then(|k| k.specifier.as_mut()) else {
            continue;
        };
        let Some(hash) = pem.strip_prefix(REDACTED).and_then(|h| h.strip_suffix('>')) else { continue };
        let original = stored.certificates.iter().find_map(|s| match s.private_key.as_ref()?.specifier.as_ref()? {
            Specifier::InlineString(p) if key_hash(p) == hash => Some(p.clone()),
            _ => None,
        });
        match original {
            Some(p) => *pem = p,
            None => missing.push((
                c.name.clone(),
                "is a redacted placeholder that matches no stored key; give the PEM key".to_owned(),
            )),
        }
    }
    if missing.is_empty() { Ok(()) } else { Err(missing) }
}

/// True when `name` (lowercase) is covered by `pattern`: exact, or `*.suffix` covering
/// exactly one more label (RFC 6125), as certificates and SNI routes use it.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix))
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_passes_and_names_are_read() {
        let (cert, key) = pair(&["a.test", "*.b.test"]);
        let (_, info) = certified_key(&cert, &key).unwrap();
        assert_eq!(info.dns_names, vec!["a.test", "*.b.test"]);
    }

    #[test]
    fn mismatched_garbled_and_expired_are_refused() {
        let (cert, _) = pair(&["a.test"]);
        let (_, other_key) = pair(&["b.test"]);
        assert_eq!(certified_key(&cert, &other_key).unwrap_err().0, "private_key");
        assert_eq!(certified_key("nonsense", &other_key).unwrap_err().0, "certificate_chain");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["old.test".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2001, 1, 1);
        params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        let old = params.self_signed(&key).unwrap().pem();
        let (field, reason) = certified_key(&old, &key.serialize_pem()).unwrap_err();
        assert_eq!(field, "certificate_chain");
        assert!(reason.starts_with("expired"), "{reason}");
    }

    #[test]
    fn redaction_round_trips_and_refuses_unknown_placeholders() {
        let (cert, key) = pair(&["a.test"]);
        let source = |s: &str| Some(DataSource { specifier: Some(Specifier::InlineString(s.to_owned())) });
        let stored = Config {
            certificates: vec![crate::config::Certificate {
                name: "a".into(),
                certificate_chain: source(&cert),
                private_key: source(&key),
            }],
            ..Config::default()
        };
        let mut shown = stored.clone();
        redact(&mut shown);
        let text = format!("{shown:?}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        let mut back = shown.clone();
        restore_redacted(&mut back, &stored).unwrap();
        assert_eq!(back, stored);
        assert_eq!(restore_redacted(&mut shown, &Config::default()).unwrap_err()[0].0, "a");
    }

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(name_matches("A.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
    }
}
