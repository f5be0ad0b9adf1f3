//! TLS material of a snapshot, loaded before the swap so that a bad certificate file, key
//! or CA bundle is a NACK and the previous runtime keeps serving.
//!
//! Termination: one rustls `ServerConfig` per HTTPS or TLS listener, choosing the certificate by
//! SNI (exact name, then `*.` wildcard, then the default). Each handshake takes the config
//! of the runtime current at accept time, so a rotated certificate is served to the next
//! handshake while established connections keep theirs. Session caches and ticket keys
//! belong to the listener, not the snapshot, so resumption survives swaps.
//!
//! Origination: per TLS cluster, rustls `ClientConfig`s (ALPN `http/1.1` and `h2`) behind
//! hyper-rustls connectors, verifying against the cluster's CA bundle or the system roots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use hyper_rustls::{DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector, ResolveServerName};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use vane_proto::ConfigError;
use vane_proto::config::{self, Config, client_auth, listener::Protocol};
use vane_proto::tls::{CertInfo, certified_key, inspect, name_matches, provider, read_source};

/// TLS sessions kept per listener for resumption.
const SESSION_CACHE_SIZE: usize = 4096;

/// A certificate resource, loaded and checked.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    info: CertInfo,
    /// PEM texts, for a client certificate and for change detection.
    chain_pem: String,
    key_pem: String,
}

/// Session state of one listener, shared by every snapshot's config for it.
#[derive(Debug, Clone)]
pub(crate) struct Resumption {
    cache: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn ProducesTickets>,
}

/// Resumption state by listener name; kept across snapshots.
#[derive(Debug, Default)]
pub(crate) struct Sessions(Mutex<HashMap<String, Resumption>>);

/// What an HTTPS listener terminates with.
#[derive(Debug)]
pub(crate) struct ServerTls {
    pub(crate) config: Arc<ServerConfig>,
    /// Header carrying the verified client identity upstream (client values removed).
    pub(crate) forward_header: Option<http::HeaderName>,
}

/// Upstream TLS of a cluster: connectors for HTTP/1.1 and HTTP/2 (by ALPN).
#[derive(Clone, Debug)]
pub(crate) struct UpstreamTls {
    pub(crate) h1: Arc<ClientConfig>,
    pub(crate) h2: Arc<ClientConfig>,
    /// For TCP and TLS listeners: no ALPN (the bytes are the client's own protocol).
    stream: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    /// Digest of everything the configs were built from: a cluster is only reused by the
    /// next snapshot when this is unchanged.
    pub(crate) fingerprint: String,
}

/// The TLS material of one snapshot.
#[derive(Debug, Default)]
pub(crate) struct Material {
    /// By listener name.
    pub(crate) servers: HashMap<String, Arc<ServerTls>>,
    /// By cluster name.
    pub(crate) upstreams: HashMap<String, UpstreamTls>,
}

impl Material {
    /// Loads and checks every certificate, CA bundle and file the config uses.
    pub(crate) fn load(config: &Config, sessions: &Sessions) -> Result<Material, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut certs: HashMap<&str, Loaded> = HashMap::new();
        for c in &config.certificates {
            let err = |field: &str, message: String| ConfigError {
                kind: "certificate",
                name: c.name.clone(),
                field: field.to_owned(),
                message,
            };
            let chain_pem = read_source(c.certificate_chain.as_ref()).map_err(|e| err("certificate_chain", e));
            let key_pem = read_source(c.private_key.as_ref()).map_err(|e| err("private_key", e));
            match (chain_pem, key_pem) {
                (Ok(chain_pem), Ok(key_pem)) => match certified_key(&chain_pem, &key_pem) {
                    Ok((key, info)) => {
                        certs.insert(&c.name, Loaded { key: Arc::new(key), info, chain_pem, key_pem });
                    }
                    Err((field, message)) => errors.push(err(field, message)),
                },
                (a, b) => errors.extend(a.err().into_iter().chain(b.err())),
            }
        }

        let mut material = Material::default();
        let mut kept_sessions = HashMap::new();
        let terminates = |p: i32| p == Protocol::Https as i32 || p == Protocol::Tls as i32;
        for l in config.listeners.iter().filter(|l| terminates(l.protocol)) {
            let Some(spec) = &l.tls else { continue };
            let err = |field: &str, message: String| ConfigError {
                kind: "listener",
                name: l.name.clone(),
                field: field.to_owned(),
                message,
            };
            let resumption = sessions.for_listener(&l.name);
            kept_sessions.insert(l.name.clone(), resumption.clone());
            let alpn = l.protocol == Protocol::Https as i32;
            match server_config(spec, &certs, resumption, alpn) {
                Ok(config) => {
                    let forward_header =
                        spec.client_auth.as_ref().filter(|a| !a.forward_header.is_empty()).and_then(|a| {
                            http::HeaderName::from_bytes(a.forward_header.to_ascii_lowercase().as_bytes()).ok()
                        });
                    material.servers.insert(l.name.clone(), Arc::new(ServerTls { config, forward_header }));
                }
                Err((field, message)) => errors.push(err(field, message)),
            }
        }
        *sessions.0.lock().unwrap_or_else(|p| p.into_inner()) = kept_sessions;

        for c in &config.clusters {
            let Some(spec) = &c.tls else { continue };
            match upstream(spec, &certs) {
                Ok(u) => {
                    material.upstreams.insert(c.name.clone(), u);
                }
                Err((field, message)) => {
                    errors.push(ConfigError { kind: "cluster", name: c.name.clone(), field: field.into(), message });
                }
            }
        }
        if errors.is_empty() { Ok(material) } else { Err(errors) }
    }
}

impl Sessions {
    fn for_listener(&self, name: &str) -> Resumption {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        held.entry(name.to_owned())
            .or_insert_with(|| Resumption {
                cache: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
                // Ticket keys rotate every 6 hours; a failure (no randomness) means no tickets.
                ticketer: rustls::crypto::ring::Ticketer::new().unwrap_or_else(|_| Arc::new(NoTickets)),
            })
            .clone()
    }
}

/// Stands in for a ticketer when none can be made: never issues tickets.
#[derive(Debug)]
struct NoTickets;

impl ProducesTickets for NoTickets {
    fn enabled(&self) -> bool {
        false
    }
    fn lifetime(&self) -> u32 {
        0
    }
    fn encrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn decrypt(&self, _: &[u8]) -> Option<Vec<u8>> {
        None
    }
}

/// Picks the certificate for a handshake by SNI.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    reject_unknown: bool,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else { return self.default.clone() };
        // rustls hands the name over lower-cased and without a trailing dot.
        if let Some(key) = self.exact.get(sni) {
            return Some(key.clone());
        }
        if let Some(key) = sni.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)) {
            return Some(key.clone());
        }
        if self.reject_unknown { None } else { self.default.clone() }
    }
}

type Failure = (&'static str, String);

fn server_config(
    spec: &config::ListenerTls,
    certs: &HashMap<&str, Loaded>,
    resumption: Resumption,
    alpn: bool,
) -> Result<Arc<ServerConfig>, Failure> {
    let mut resolver = SniResolver {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default: None,
        reject_unknown: spec.reject_unknown_sni,
    };
    // The first certificate listed wins a name two certificates share.
    for name in &spec.certificates {
        // A certificate that failed to load is already reported (and fails the snapshot).
        let Some(loaded) = certs.get(name.as_str()) else { continue };
        let mut names = loaded.info.dns_names.clone();
        if names.is_empty() {
            names.extend(loaded.info.common_name.clone());
        }
        for n in names {
            match n.strip_prefix("*.") {
                Some(suffix) => resolver.wildcard.entry(suffix.to_owned()).or_insert_with(|| loaded.key.clone()),
                None => resolver.exact.entry(n).or_insert_with(|| loaded.key.clone()),
            };
        }
    }
    let default_name = if spec.default_certificate.is_empty() {
        spec.certificates.first().map(String::as_str)
    } else {
        Some(spec.default_certificate.as_str())
    };
    resolver.default = default_name.and_then(|n| certs.get(n)).map(|l| l.key.clone());

    let versions: &[&rustls::SupportedProtocolVersion] = if spec.min_version == config::TlsVersion::Tls13 as i32 {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| ("tls.min_version", e.to_string()))?;
    let mode = spec
        .client_auth
        .as_ref()
        .and_then(|a| client_auth::Mode::try_from(a.mode).ok())
        .unwrap_or(client_auth::Mode::None);
    let builder = match (mode, &spec.client_auth) {
        (client_auth::Mode::None, _) | (_, None) => builder.with_no_client_auth(),
        (mode, Some(auth)) => {
            let pem = read_source(auth.ca.as_ref()).map_err(|e| ("tls.client_auth.ca", e))?;
            let roots = roots(&pem).map_err(|e| ("tls.client_auth.ca", e))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier =
                if mode == client_auth::Mode::Optional { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| ("tls.client_auth.ca", e.to_string()))?)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    // HTTPS offers h2 and http/1.1; a TLS listener's bytes are the client's own protocol.
    if alpn {
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    }
    config.session_storage = resumption.cache;
    config.ticketer = resumption.ticketer;
    Ok(Arc::new(config))
}

/// A root store from a PEM bundle.
fn roots(pem: &str) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in vane_proto::tls::parse_certificates(pem)? {
        store.add(cert).map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    Ok(store)
}

/// The node's system roots, read once.
pub(crate) fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let _ = store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                tracing::warn!(
                    "no system root certificates found: https side calls, and upstreams that name no CA, will fail"
                );
            }
            Arc::new(store)
        })
        .clone()
}

fn upstream(spec: &config::UpstreamTls, certs: &HashMap<&str, Loaded>) -> Result<UpstreamTls, Failure> {
    let mut fingerprint = Sha256::new();
    let roots = match &spec.ca {
        Some(ca) => {
            let pem = read_source(Some(ca)).map_err(|e| ("tls.ca", e))?;
            fingerprint.update(pem.as_bytes());
            Arc::new(roots(&pem).map_err(|e| ("tls.ca", e))?)
        }
        None => system_roots(),
    };
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| ("tls.ca", e.to_string()))?;
    let client_cert = if spec.client_certificate.is_empty() {
        None
    } else {
        let loaded = certs
            .get(spec.client_certificate.as_str())
            .ok_or(("tls.client_certificate", format!("certificate '{}' did not load", spec.client_certificate)))?;
        fingerprint.update(loaded.chain_pem.as_bytes());
        fingerprint.update(loaded.key_pem.as_bytes());
        let chain: Vec<CertificateDer<'static>> = loaded.key.cert.clone();
        let key = PrivateKeyDer::from_pem_slice(loaded.key_pem.as_bytes())
            .map_err(|e| ("tls.client_certificate", e.to_string()))?;
        Some((chain, key))
    };
    let build = |alpn: Option<&[u8]>| -> Result<Arc<ClientConfig>, Failure> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("tls", e.to_string()))?
            .with_webpki_verifier(verifier.clone());
        let mut config = match &client_cert {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| ("tls.client_certificate", e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
        Ok(Arc::new(config))
    };
    let server_name = if spec.sni.is_empty() {
        None
    } else {
        Some(ServerName::try_from(spec.sni.clone()).map_err(|e| ("tls.sni", e.to_string()))?)
    };
    fingerprint.update(spec.sni.as_bytes());
    Ok(UpstreamTls {
        h1: build(Some(b"http/1.1"))?,
        h2: build(Some(b"h2"))?,
        stream: build(None)?,
        server_name,
        fingerprint: hex::encode(fingerprint.finalize()),
    })
}

impl UpstreamTls {
    /// TLS over `tcp` to the endpoint at `addr`, for a TCP or TLS listener: the cluster's
    /// `sni` is sent and verified, else the endpoint's IP address.
    pub(crate) async fn connect_stream(
        &self,
        addr: std::net::SocketAddr,
        tcp: tokio::net::TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let name = self.server_name.clone().unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        tokio_rustls::TlsConnector::from(self.stream.clone()).connect(name, tcp).await
    }
}

/// The connector of a cluster's pool: TLS with `tls` (for `https` URIs), else plain.
pub(crate) fn connector(http: HttpConnector, tls: Option<&UpstreamTls>, h2: bool) -> HttpsConnector<HttpConnector> {
    let Some(tls) = tls else {
        // Plain clusters never build `https` URIs; the config is never used.
        return HttpsConnector::new(http, plain_config(), false, Arc::new(DefaultServerNameResolver::default()));
    };
    let config = if h2 { tls.h2.clone() } else { tls.h1.clone() };
    let names: Arc<dyn ResolveServerName + Send + Sync> = match &tls.server_name {
        Some(name) => Arc::new(FixedServerNameResolver::new(name.clone())),
        None => Arc::new(DefaultServerNameResolver::default()),
    };
    HttpsConnector::new(http, config, true, names)
}

/// A connector for `http` and `https` URLs of public services (JWKS, introspection,
/// external authorization): TLS verified against the system roots, HTTP/1.1.
pub(crate) fn public_connector(http: HttpConnector) -> HttpsConnector<HttpConnector> {
    static PUBLIC: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let config = PUBLIC
        .get_or_init(|| {
            let config = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(system_roots()).with_no_client_auth());
            Arc::new(config.unwrap_or_else(|_| unreachable!("ring supports the default versions")))
        })
        .clone();
    HttpsConnector::new(http, config, false, Arc::new(DefaultServerNameResolver::default()))
}

fn plain_config() -> Arc<ClientConfig> {
    static PLAIN: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    PLAIN
        .get_or_init(|| {
            let config = ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(RootCertStore::empty()).with_no_client_auth());
            Arc::new(config.unwrap_or_else(|_| unreachable!("ring supports the default versions")))
        })
        .clone()
}

/// What a TLS connection tells the request path.
#[derive(Debug, Default)]
pub(crate) struct TlsInfo {
    /// The SNI the client sent (lower case).
    pub(crate) sni: Option<Box<str>>,
    /// The verified client certificate, if any.
    pub(crate) client: Option<ClientIdentity>,
}

#[derive(Debug)]
pub(crate) struct ClientIdentity {
    /// DNS and URI SANs and the subject CN, for route matching.
    pub(crate) names: Box<[String]>,
    /// The forwarded header value: `Hash=..;Subject="..";URI=..;DNS=..`.
    pub(crate) header: http::HeaderValue,
}

impl TlsInfo {
    pub(crate) fn of(conn: &rustls::ServerConnection) -> TlsInfo {
        let client = conn.peer_certificates().and_then(|certs| certs.first()).and_then(|der| {
            let info = inspect(der).ok()?;
            let mut value =
                format!("Hash={};Subject=\"{}\"", hex::encode(Sha256::digest(der)), info.subject.replace('"', "\\\""));
            for u in &info.uris {
                value.push_str(&format!(";URI={u}"));
            }
            for d in &info.dns_names {
                value.push_str(&format!(";DNS={d}"));
            }
            let names = info.dns_names.iter().chain(&info.uris).chain(&info.common_name).cloned().collect();
            Some(ClientIdentity { names, header: http::HeaderValue::from_str(&value).ok()? })
        });
        TlsInfo { sni: conn.server_name().map(Into::into), client }
    }

    /// True when the client certificate names one of `wanted` (`*`: any verified one).
    pub(crate) fn client_named(&self, wanted: &[String]) -> bool {
        self.client.as_ref().is_some_and(|c| wanted.iter().any(|w| w == "*" || c.names.iter().any(|n| n == w)))
    }

    /// True when the SNI is covered by one of `patterns`.
    pub(crate) fn sni_matches(&self, patterns: &[String]) -> bool {
        self.sni.as_deref().is_some_and(|sni| patterns.iter().any(|p| name_matches(p, sni)))
    }
}
