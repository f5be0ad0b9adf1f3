//! JSON Web Token verification (RFC 7519) for the `jwt` auth mechanism.
//!
//! A [`Jwt`] is compiled per snapshot from a `JwtAuth` spec: HMAC secrets and an inline
//! JWKS are turned into keys once, at compile time, so a bad key is a NACK rather than a
//! request-time surprise. Keys published at a `jwks_uri` are held by a [`JwksRegistry`]
//! owned by the node: one background fetcher per URL, shared by every snapshot that names
//! it, so a config swap neither refetches nor loses the keys held.
//!
//! Requests never wait on the network: [`Jwt::verify`] is a plain function that checks a
//! token against the keys held at that instant. A token naming a `kid` the node does not
//! hold is refused and asks the fetcher for an early refresh (at most once per 10s per
//! URL), which is how a key rotation at the issuer reaches the node before the next
//! scheduled refresh.
//!
//! Security choices, each closing a known JWT pitfall:
//! - `alg: none` and algorithms outside the supported list are refused outright;
//! - HMAC algorithms are verified only with `hmac_secrets`, asymmetric ones only with JWKS
//!   keys of the matching type and curve, so a public key can never serve as an HMAC
//!   secret (algorithm confusion); a JWK's `alg`, when set, is the only algorithm it verifies;
//! - keys come only from the config: the token's `jku`, `x5u` and `jwk` headers are ignored;
//! - `exp` is required, and claim checks run only after a signature verified, so the
//!   reasons given never tell an unsigned token anything about the policy;
//! - refusal reasons are fixed ASCII texts (or name configured claims), never text taken
//!   from the token, as they end up in a `WWW-Authenticate` header.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, COOKIE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tracing::{debug, warn};
use vane_proto::config::JwtAuth;
use vane_proto::pbjson_types;

/// How often a JWKS URL is fetched when the spec does not say.
const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Shortest refresh interval accepted: anything faster would hammer the issuer.
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// Clock skew allowed on `exp` and `nbf` when the spec does not say, in seconds.
const DEFAULT_LEEWAY: u64 = 60;
/// Largest leeway accepted, in seconds: past a day `exp` means little, and the arithmetic
/// of the validation must stay far from overflowing.
const MAX_LEEWAY: u64 = 86_400;
/// Time allowed for one JWKS fetch (connect, answer and body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// First retry delay after a failed fetch; it doubles up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Early refreshes (unknown `kid`) of one URL are at most this frequent, so tokens with
/// made-up key ids cannot turn the node into a load generator against the issuer.
const EARLY_REFRESH_EVERY: Duration = Duration::from_secs(10);
/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Longest token looked at: real tokens are a few KiB, and a token is decoded once per
/// candidate key, so this bounds the work one request can cause.
const MAX_TOKEN_LEN: usize = 32 * 1024;
/// Every algorithm a token may use.
const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Which algorithms a public key can verify, from its type and curve: the guard against
/// algorithm confusion, since a token's `alg` only chooses among keys that fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn allows(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyKind::P256 => alg == Algorithm::ES256,
            KeyKind::P384 => alg == Algorithm::ES384,
            KeyKind::Ed25519 => alg == Algorithm::EdDSA,
        }
    }
}

/// One public key of a JWKS, checked and ready to verify.
struct Key {
    kid: Option<String>,
    /// The JWK's `alg`: when set, the only algorithm this key verifies.
    alg: Option<Algorithm>,
    kind: KeyKind,
    key: DecodingKey,
}

impl Key {
    fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.allows(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

// By hand: `DecodingKey` has no Debug, and key material has no place in logs anyway.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("alg", &self.alg).field("kind", &self.kind).finish()
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Default)]
struct KeySet {
    keys: Vec<Key>,
    /// Set when the document is stored: tells the token cache that the keys changed.
    generation: usize,
}

/// Numbers stored key sets (from 2: 0 and 1 mean "no fetched keys" to the token cache).
static KEY_SET_GENERATION: AtomicUsize = AtomicUsize::new(2);

/// Parses a JWKS document. It fails only when the text is not a JSON object with a `keys`
/// array: keys that cannot be used (encryption keys, unsupported types or curves, broken
/// material) are skipped, with why, so that an issuer publishing one exotic key does not
/// lock out the tokens signed with its other keys.
fn parse_jwks(text: &[u8]) -> Result<(KeySet, Vec<String>), String> {
    let doc: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
        return Err("not a JWKS: no 'keys' array".into());
    };
    let mut set = KeySet::default();
    let mut skipped = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match parse_key(entry) {
            Ok(key) => set.keys.push(key),
            Err(why) => {
                let kid = entry.get("kid").and_then(Value::as_str).map(|k| format!(" (kid '{k}')")).unwrap_or_default();
                skipped.push(format!("key {i}{kid}: {why}"));
            }
        }
    }
    Ok((set, skipped))
}

/// One JWK as a verification key, or why it cannot be one.
fn parse_key(entry: &Value) -> Result<Key, String> {
    // Looked at before the typed parse, whose errors on an unknown `alg` or `kty` are vague.
    if let Some(alg) = entry.get("alg").and_then(Value::as_str)
        && Algorithm::from_str(alg).is_err()
    {
        return Err(format!("algorithm '{alg}' not supported"));
    }
    if entry.get("kty").and_then(Value::as_str) == Some("oct") {
        return Err("symmetric key: HMAC secrets come from hmac_secrets only".into());
    }
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| format!("not a usable JWK: {e}"))?;
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err("an encryption key (use: enc)".into());
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("key_ops does not include verify".into());
    }
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(Algorithm::from_str(&a.to_string()).map_err(|_| format!("algorithm '{a}' not supported"))?),
        None => None,
    };
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            // ring verifies RSA signatures of 2048 to 8192 bits only: say so now.
            let n = URL_SAFE_NO_PAD.decode(&p.n).map_err(|_| "modulus is not base64url")?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if !(2048..=8192).contains(&bits) {
                return Err(format!("RSA modulus of about {bits} bits (2048 to 8192 supported)"));
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (kind, len) = match p.curve {
                EllipticCurve::P256 => (KeyKind::P256, 32),
                EllipticCurve::P384 => (KeyKind::P384, 48),
                ref other => return Err(format!("curve {other:?} not supported")),
            };
            for c in [&p.x, &p.y] {
                if URL_SAFE_NO_PAD.decode(c).map(|b| b.len()).ok() != Some(len) {
                    return Err("malformed curve point".into());
                }
            }
            kind
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err(format!("curve {:?} not supported", p.curve));
            }
            if URL_SAFE_NO_PAD.decode(&p.x).map(|b| b.len()).ok() != Some(32) {
                return Err("malformed Ed25519 key".into());
            }
            KeyKind::Ed25519
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric key: HMAC secrets come from hmac_secrets only".into());
        }
    };
    if let Some(a) = alg
        && !kind.allows(a)
    {
        return Err(format!("alg {a:?} does not fit a {kind:?} key"));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key material: {e}"))?;
    Ok(Key { kid: jwk.common.key_id, alg, kind, key })
}

/// The keys of one JWKS URL and the handle on its fetch task. Shared (`Arc`) by the [`Jwt`]s
/// naming the URL; the task holds only a `Weak`, so it ends once no snapshot uses the URL.
#[derive(Debug)]
struct Remote {
    uri: Uri,
    /// `None` until the first fetch succeeds; afterwards the last good document, kept
    /// through failed fetches.
    keys: ArcSwapOption<KeySet>,
    /// Wakes the task: an early refresh, a changed interval, or the last user gone.
    wake: Arc<Notify>,
    refresh_ms: AtomicU64,
    /// Milliseconds after `born` of the last early refresh asked for (`NEVER`: none yet).
    last_early: AtomicU64,
    born: Instant,
}

const NEVER: u64 = u64::MAX;

impl Remote {
    fn refresh(&self) -> Duration {
        Duration::from_millis(self.refresh_ms.load(Ordering::Relaxed))
    }

    /// Asks the task for a fetch now, unless one was asked for less than 10s ago. Never blocks.
    fn refresh_early(&self) {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(NEVER - 1);
        let last = self.last_early.load(Ordering::Relaxed);
        let every = u64::try_from(EARLY_REFRESH_EVERY.as_millis()).unwrap_or(NEVER);
        if last != NEVER && now.saturating_sub(last) < every {
            return;
        }
        // Of threads racing past the check, one asks.
        if self.last_early.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.wake.notify_one();
        }
    }
}

impl Drop for Remote {
    /// The last `Jwt` using the URL is gone: let the task see it now rather than at its
    /// next scheduled fetch.
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// Keys fetched from JWKS URLs, shared by every snapshot of a node: one fetcher per URL,
/// kept while some compiled [`Jwt`] uses it (the registry holds only `Weak`s), so a config
/// swap that keeps a URL neither refetches it nor goes through a moment without keys.
///
/// Cheap to clone: clones share the same fetchers.
#[derive(Debug, Clone)]
pub(crate) struct JwksRegistry {
    remotes: Arc<Mutex<HashMap<String, Weak<Remote>>>>,
}

impl Default for JwksRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl JwksRegistry {
    pub(crate) fn new() -> Self {
        JwksRegistry { remotes: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// The fetcher of `uri`, started if no live one exists. Joining a live fetcher sets its
    /// interval to `refresh`: the newest config wins, and a changed interval triggers a
    /// fetch so that the new schedule starts now.
    fn join(&self, uri: &str, refresh: Duration) -> Result<Arc<Remote>, String> {
        let refresh_ms = u64::try_from(refresh.as_millis()).unwrap_or(u64::MAX);
        let mut remotes = self.remotes.lock().unwrap_or_else(PoisonError::into_inner);
        remotes.retain(|_, r| r.strong_count() > 0);
        if let Some(remote) = remotes.get(uri).and_then(Weak::upgrade) {
            if remote.refresh_ms.swap(refresh_ms, Ordering::Relaxed) != refresh_ms {
                remote.wake.notify_one();
            }
            return Ok(remote);
        }
        let parsed = parse_uri(uri)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "jwks_uri: no tokio runtime to fetch the keys in".to_owned())?;
        let remote = Arc::new(Remote {
            uri: parsed,
            keys: ArcSwapOption::empty(),
            wake: Arc::new(Notify::new()),
            refresh_ms: AtomicU64::new(refresh_ms),
            last_early: AtomicU64::new(NEVER),
            born: Instant::now(),
        });
        runtime.spawn(fetch_loop(Arc::downgrade(&remote), remote.wake.clone()));
        remotes.insert(uri.to_owned(), Arc::downgrade(&remote));
        Ok(remote)
    }

    /// URLs with a live fetcher.
    #[cfg(test)]
    fn live(&self) -> usize {
        self.remotes.lock().unwrap_or_else(PoisonError::into_inner).values().filter(|r| r.strong_count() > 0).count()
    }
}

fn parse_uri(uri: &str) -> Result<Uri, String> {
    let parsed: Uri = uri.parse().map_err(|e| format!("jwks_uri: '{uri}' is not a URL: {e}"))?;
    if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.authority().is_none() {
        return Err(format!("jwks_uri: '{uri}' is not an http:// or https:// URL"));
    }
    Ok(parsed)
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The fetch task of one URL: fetch, store, sleep until the refresh interval passes (or
/// the backoff after a failure) or someone wakes it; end when the `Remote` is gone. It
/// holds the `Remote` only between awaits, never while waiting on the network or a timer.
async fn fetch_loop(remote: Weak<Remote>, wake: Arc<Notify>) {
    let mut client: Option<HttpClient> = None;
    let mut backoff = FIRST_RETRY;
    loop {
        let Some(uri) = remote.upgrade().map(|r| r.uri.clone()) else { return };
        let outcome = match &client {
            Some(c) => fetch(c, &uri).await,
            None => match http_client(uri.scheme_str() == Some("https")).await {
                Ok(c) => fetch(client.insert(c), &uri).await,
                Err(e) => Err(e),
            },
        };
        let Some(r) = remote.upgrade() else { return };
        // Early refreshes asked for during this fetch were answered by it: take their permit
        // (a changed interval is read just below). Done while `r` is held, so that if
        // dropping `r` drops the `Remote`, that wake-up is not lost; and in a block, as an
        // enabled `Notified` would take later wake-ups.
        {
            let stale = wake.notified();
            tokio::pin!(stale);
            let _ = stale.as_mut().enable();
        }
        let refresh = r.refresh();
        let delay = match outcome {
            Ok((set, skipped)) => {
                for why in &skipped {
                    debug!(jwks_uri = %uri, "JWKS key skipped: {why}");
                }
                if set.keys.is_empty() {
                    warn!(jwks_uri = %uri, skipped = skipped.len(), "JWKS document has no usable key");
                }
                let generation = KEY_SET_GENERATION.fetch_add(1, Ordering::Relaxed);
                r.keys.store(Some(Arc::new(KeySet { generation, ..set })));
                backoff = FIRST_RETRY;
                refresh
            }
            Err(e) => {
                let delay = backoff.min(refresh);
                warn!(jwks_uri = %uri, error = %e, retry_in = ?delay, "JWKS fetch failed; keeping the keys held");
                backoff = backoff.saturating_mul(2).min(refresh);
                delay
            }
        };
        drop(r);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = wake.notified() => {}
        }
    }
}

/// A client for one URL. TLS verifies against the system roots, with the ring provider
/// named explicitly so that nothing depends on a process-wide default provider.
async fn http_client(https: bool) -> Result<HttpClient, String> {
    let roots = if https {
        // Reading the system store touches the disk: not on a runtime worker.
        tokio::task::spawn_blocking(system_roots).await.map_err(|e| format!("loading the system roots: {e}"))?
    } else {
        Arc::new(RootCertStore::empty())
    };
    let tls = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(FETCH_TIMEOUT));
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The system's trusted roots, read once per process.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut store = RootCertStore::empty();
            let _ = store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if store.is_empty() {
                warn!("no system root certificates found: https JWKS URLs will fail");
            }
            Arc::new(store)
        })
        .clone()
}

/// One GET of the document, bounded in time and size.
async fn fetch(client: &HttpClient, uri: &Uri) -> Result<(KeySet, Vec<String>), String> {
    let request = http::Request::get(uri.clone())
        .header(ACCEPT, "application/jwk-set+json, application/json")
        .header(USER_AGENT, "vane")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let work = async {
        let response = client.request(request).await.map_err(|e| error_chain(&e))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the document: {e}"))?
            .to_bytes();
        parse_jwks(&body)
    };
    tokio::time::timeout(FETCH_TIMEOUT, work).await.map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
}

/// An error with its causes: hyper's own display ("client error (Connect)") says little.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A compiled `JwtAuth`.
pub(crate) struct Jwt {
    /// One validation per algorithm (jsonwebtoken checks the token's `alg` against it).
    validations: Vec<(Algorithm, Validation)>,
    secrets: Vec<DecodingKey>,
    inline: KeySet,
    remote: Option<Arc<Remote>>,
    required: Vec<String>,
    headers: Vec<(String, HeaderName)>,
    cookie: Option<String>,
    consumer_claim: String,
    leeway: u64,
    /// Tokens verified lately, so that a client repeating its token costs a lookup, not a
    /// signature check: byte-identical token -> claims, valid until `exp` + leeway (at most
    /// `CACHE_TTL`), and only while the key set it was checked against is still held.
    verified: Mutex<HashMap<Box<str>, Verified>>,
}

#[derive(Debug)]
struct Verified {
    claims: Arc<Map<String, Value>>,
    /// Unix seconds past which the token is expired.
    until_unix: u64,
    cached_at: Instant,
    /// Which fetched key set verified it (0: HMAC secrets or inline keys, fixed per compile).
    generation: usize,
}

/// Longest a verified token is trusted without a new check, and most tokens remembered.
const CACHE_TTL: Duration = Duration::from_secs(300);
const CACHE_MAX: usize = 10_000;

// By hand: secrets stay out of logs, and `DecodingKey` has no Debug.
impl fmt::Debug for Jwt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwt")
            .field("hmac_secrets", &self.secrets.len())
            .field("inline", &self.inline)
            .field("remote", &self.remote)
            .field("required", &self.required)
            .field("headers", &self.headers)
            .field("cookie", &self.cookie)
            .field("consumer_claim", &self.consumer_claim)
            .finish_non_exhaustive()
    }
}

impl Jwt {
    /// Compiles a spec: HMAC secrets and the inline JWKS are checked now, and an error names
    /// the field at fault. With a `jwks_uri`, starts that URL's background fetcher or joins
    /// the live one. Must be called inside a tokio runtime when `jwks_uri` is set (an error
    /// otherwise, never a panic).
    pub(crate) fn compile(spec: &JwtAuth, registry: &JwksRegistry) -> Result<Jwt, String> {
        let leeway = match &spec.leeway {
            None => DEFAULT_LEEWAY,
            Some(d) if d.seconds < 0 || d.nanos < 0 => return Err("leeway: must not be negative".into()),
            // Whole seconds: the claims it applies to are whole seconds.
            Some(d) => u64::try_from(d.seconds).unwrap_or(u64::MAX),
        };
        if leeway > MAX_LEEWAY {
            return Err(format!("leeway: at most {MAX_LEEWAY}s"));
        }
        let refresh = refresh_interval(spec.jwks_refresh.as_ref())?;
        let mut secrets = Vec::with_capacity(spec.hmac_secrets.len());
        for (i, secret) in spec.hmac_secrets.iter().enumerate() {
            if secret.is_empty() {
                return Err(format!("hmac_secrets[{i}]: empty"));
            }
            secrets.push(DecodingKey::from_secret(secret.as_bytes()));
        }
        let inline = if spec.jwks.trim().is_empty() {
            KeySet::default()
        } else {
            let (set, skipped) = parse_jwks(spec.jwks.as_bytes()).map_err(|e| format!("jwks: {e}"))?;
            if set.keys.is_empty() {
                return Err(format!("jwks: no usable key ({})", skipped.join("; ")));
            }
            for why in &skipped {
                debug!("inline JWKS key skipped: {why}");
            }
            set
        };
        if secrets.is_empty() && inline.keys.is_empty() && spec.jwks_uri.is_empty() {
            return Err("no keys: set jwks, jwks_uri or hmac_secrets".into());
        }
        let mut required = Vec::with_capacity(spec.required_claims.len());
        for (i, claim) in spec.required_claims.iter().enumerate() {
            if claim.is_empty() {
                return Err(format!("required_claims[{i}]: empty"));
            }
            required.push(claim.clone());
        }
        let mut headers = Vec::with_capacity(spec.claims_to_headers.len());
        for (i, c) in spec.claims_to_headers.iter().enumerate() {
            if c.claim.is_empty() {
                return Err(format!("claims_to_headers[{i}].claim: empty"));
            }
            let name = HeaderName::from_bytes(c.header.as_bytes())
                .map_err(|_| format!("claims_to_headers[{i}].header: '{}' is not a header name", c.header))?;
            headers.push((c.claim.clone(), name));
        }
        let validations = ALGORITHMS.iter().map(|&alg| (alg, validation(alg, leeway, spec))).collect();
        let remote = if spec.jwks_uri.is_empty() { None } else { Some(registry.join(&spec.jwks_uri, refresh)?) };
        Ok(Jwt {
            validations,
            secrets,
            inline,
            remote,
            required,
            headers,
            cookie: (!spec.cookie.is_empty()).then(|| spec.cookie.clone()),
            consumer_claim: if spec.consumer_claim.is_empty() { "sub".to_owned() } else { spec.consumer_claim.clone() },
            leeway,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies a token (see [`Jwt::verify_uncached`]), answering repeats of a token
    /// verified lately from the cache.
    pub(crate) fn verify(&self, token: &str) -> Result<Arc<Map<String, Value>>, String> {
        self.verify_at(token, unix_now())
    }

    fn verify_at(&self, token: &str, now_unix: u64) -> Result<Arc<Map<String, Value>>, String> {
        let generation = self.generation();
        {
            let cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = cache.get(token)
                && v.generation == generation
                && now_unix < v.until_unix
                && v.cached_at.elapsed() < CACHE_TTL
            {
                return Ok(v.claims.clone());
            }
        }
        let claims = Arc::new(self.verify_uncached(token)?);
        if let Some(exp) = claims.get("exp").and_then(Value::as_u64) {
            let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            let entry = Verified {
                claims: claims.clone(),
                until_unix: exp.saturating_add(self.leeway),
                cached_at: Instant::now(),
                generation,
            };
            cache.insert(token.into(), entry);
        }
        Ok(claims)
    }

    /// Identifies the fetched key set held now: a refetch (keys rotated or withdrawn)
    /// invalidates what the cache learnt with the old one. (A number, not the set's
    /// address: a new set can be allocated where the freed old one was.)
    fn generation(&self) -> usize {
        self.remote.as_ref().map_or(0, |r| r.keys.load().as_ref().map_or(1, |k| k.generation))
    }

    /// The token: `Authorization: Bearer <t>` (scheme case-insensitive), else the configured
    /// cookie. Other `Authorization` schemes are not tokens (Basic belongs to basic auth).
    pub(crate) fn token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        if let Some(token) = headers.get_all(AUTHORIZATION).iter().find_map(|v| bearer(v.to_str().ok()?)) {
            return Some(token);
        }
        let name = self.cookie.as_deref()?;
        headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
            let (n, value) = pair.split_once('=')?;
            if n.trim() != name {
                return None;
            }
            let value = value.trim();
            let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            (!value.is_empty()).then_some(value)
        })
    }

    /// Verifies a token against the keys held now, never waiting on the network.
    ///
    /// Ok: the claims. Err: a short reason for `WWW-Authenticate: Bearer
    /// error="invalid_token", error_description="..."`: "expired", "not yet valid", "bad
    /// signature", "unknown key", "keys not yet fetched", "issuer not accepted", "audience
    /// not accepted", "missing claim 'x'", "alg none not accepted", "malformed token"...
    /// Reasons are ASCII and hold no text from the token.
    fn verify_uncached(&self, token: &str) -> Result<Map<String, Value>, String> {
        if token.len() > MAX_TOKEN_LEN {
            return Err("token too large".into());
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_problem(token))?;
        let alg = header.alg;
        let Some(validation) = self.validations.iter().find(|(a, _)| *a == alg).map(|(_, v)| v) else {
            return Err("algorithm not accepted".into());
        };
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            // Secrets have no key ids: a `kid` on an HMAC token is not looked at.
            if self.secrets.is_empty() {
                return Err("algorithm not accepted".into());
            }
            return self.try_keys(token, validation, self.secrets.iter());
        }
        let fetched = self.remote.as_ref().map(|r| r.keys.load());
        let not_fetched = fetched.as_ref().is_some_and(|g| g.is_none());
        let remote_keys: &[Key] = fetched.as_ref().and_then(|g| g.as_deref()).map_or(&[], |s| s.keys.as_slice());
        let held = || self.inline.keys.iter().chain(remote_keys);
        if let Some(kid) = header.kid.as_deref() {
            if !held().any(|k| k.kid.as_deref() == Some(kid)) {
                if not_fetched {
                    // The first fetch is under way (or retrying): nothing to ask for yet.
                    return Err("keys not yet fetched".into());
                }
                if let Some(remote) = &self.remote {
                    remote.refresh_early();
                }
                return Err("unknown key".into());
            }
            let named = || held().filter(move |k| k.kid.as_deref() == Some(kid) && k.accepts(alg));
            if named().next().is_none() {
                return Err("algorithm not accepted for this key".into());
            }
            return self.try_keys(token, validation, named().map(|k| &k.key));
        }
        let fitting = || held().filter(|k| k.accepts(alg));
        if fitting().next().is_none() {
            return Err(if not_fetched { "keys not yet fetched" } else { "no key for this algorithm" }.into());
        }
        self.try_keys(token, validation, fitting().map(|k| &k.key))
    }

    /// Tries the candidate keys in turn: a bad signature moves on to the next key, anything
    /// else (reached only once a signature verified) is the answer.
    fn try_keys<'k>(
        &self,
        token: &str,
        validation: &Validation,
        keys: impl Iterator<Item = &'k DecodingKey>,
    ) -> Result<Map<String, Value>, String> {
        for key in keys {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
                Ok(data) => return self.check_claims(data.claims),
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidKeyFormat
                    | ErrorKind::Crypto(_) => continue,
                    ErrorKind::ExpiredSignature => return Err("expired".into()),
                    ErrorKind::ImmatureSignature => return Err("not yet valid".into()),
                    ErrorKind::InvalidIssuer => return Err("issuer not accepted".into()),
                    ErrorKind::InvalidAudience => return Err("audience not accepted".into()),
                    ErrorKind::MissingRequiredClaim(c) if c == "exp" => {
                        return Err("missing claim 'exp' (tokens must expire)".into());
                    }
                    ErrorKind::MissingRequiredClaim(c) => return Err(format!("missing claim '{c}'")),
                    _ => return Err("malformed token".into()),
                },
            }
        }
        Err("bad signature".into())
    }

    /// What jsonwebtoken leaves to the caller: claims of the config's own list, and an
    /// `nbf` it could not read (it skips those rather than refusing them).
    fn check_claims(&self, claims: Map<String, Value>) -> Result<Map<String, Value>, String> {
        if let Some(nbf) = claims.get("nbf")
            && !nbf.as_f64().is_some_and(|n| n.is_finite() && n >= 0.0)
        {
            return Err("invalid claim 'nbf'".into());
        }
        if let Some(missing) = self.required.iter().find(|c| claims.get(c.as_str()).is_none_or(Value::is_null)) {
            return Err(format!("missing claim '{missing}'"));
        }
        Ok(claims)
    }

    /// The consumer claim's value (`sub` unless configured); string claims only.
    pub(crate) fn consumer(&self, claims: &Map<String, Value>) -> Option<String> {
        claims.get(&self.consumer_claim).and_then(Value::as_str).map(str::to_owned)
    }

    /// (header name, value) pairs for the `claims_to_headers` present in `claims`: strings
    /// as they are, other JSON values as JSON text. A null claim, or a value no header can
    /// carry (control characters), gives no header.
    ///
    /// The caller should first remove every [`Jwt::header_names`] from the request, or a
    /// client could send the header itself when its token lacks the claim.
    pub(crate) fn claim_headers(&self, claims: &Map<String, Value>) -> Vec<(HeaderName, HeaderValue)> {
        self.headers
            .iter()
            .filter_map(|(claim, name)| {
                let value = match claims.get(claim)? {
                    Value::Null => return None,
                    Value::String(s) => HeaderValue::from_bytes(s.as_bytes()),
                    other => HeaderValue::from_bytes(other.to_string().as_bytes()),
                };
                Some((name.clone(), value.ok()?))
            })
            .collect()
    }

    /// The names of every `claims_to_headers` header: to strip from requests before the
    /// claims are copied, so that only the token can set them.
    pub(crate) fn header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.headers.iter().map(|(_, name)| name)
    }
}

/// The `Validation` of one algorithm. Whatever the spec sets becomes required, because
/// jsonwebtoken checks `iss` and `aud` only when the token carries them.
fn validation(alg: Algorithm, leeway: u64, spec: &JwtAuth) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    let mut required = vec!["exp"];
    if !spec.issuer.is_empty() {
        v.set_issuer(&[&spec.issuer]);
        required.push("iss");
    }
    if spec.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&spec.audiences);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

fn refresh_interval(d: Option<&pbjson_types::Duration>) -> Result<Duration, String> {
    let Some(d) = d else { return Ok(DEFAULT_REFRESH) };
    if d.seconds < 0 || d.nanos < 0 {
        return Err("jwks_refresh: must not be negative".into());
    }
    let d = Duration::new(u64::try_from(d.seconds).unwrap_or(0), u32::try_from(d.nanos).unwrap_or(0));
    if d.is_zero() {
        return Ok(DEFAULT_REFRESH);
    }
    if d < MIN_REFRESH {
        return Err(format!("jwks_refresh: at least {MIN_REFRESH:?}"));
    }
    Ok(d)
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Why a header did not parse: jsonwebtoken cannot represent `alg: none` or unknown
/// algorithms, so the header is looked at again to say which it was.
fn header_problem(token: &str) -> String {
    let alg = token
        .split('.')
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h.trim_end_matches('=')).ok())
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|h| h.get("alg").and_then(Value::as_str).map(str::to_owned));
    match alg.as_deref() {
        Some(a) if a.eq_ignore_ascii_case("none") => "alg none not accepted".into(),
        Some(a) if Algorithm::from_str(a).is_err() => "algorithm not supported".into(),
        _ => "malformed token".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use ring::rand::SystemRandom;
    use ring::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, EcdsaSigningAlgorithm,
        Ed25519KeyPair, KeyPair,
    };
    use serde_json::json;
    use tokio::net::TcpListener;
    use vane_proto::config::ClaimToHeader;

    use super::*;

    /// A fixed 2048-bit RSA test key (`openssl genpkey -algorithm RSA`), used for nothing else.
    const RSA_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCZgvJGHZkQQpGq
bWi+E2ELuKiHgJRFckfabL7uUU5GQfXPxy75v6ISnkMmg/2CokOTXjN0JPYUsLHg
A32TgfkrJEgoJNjuHBRvFO3zbfNTcbGb5JL6aozzGVd+tTvn8D5EAGYZ2snS/u+d
2mw5Vpb1UWFoX6DRrMGhArOKsGWBPXQXI0Yz1aKsfOoEN/fFT9D+X92brunULBsY
lpwnaNygMwYRT+loA10/W1OauPgIxmhpT3EyOdrUFj/NPCsZy8MswliDKvkhgnDX
J2WyLnIAUS83wx7saMxo9V2W3I1boHNXx/MxJWtEGqJ2lI/GyVOQ69zGH67Ohp00
YUyyixEdAgMBAAECggEAOSekbY+ajA/E7UfD/jT35mXPtXedfMfCUeQ4KEH0Wzs2
urAF4O3E+ZqcFMyCyC8C6uzhSmZyipyI9YdHK3LyYuokxXGGpQymXP9VYtN2i4Ri
pNCzGnIuXVp7lY0Dq2TqweXGHe00RI8vhr2qmqSPGvI8SqCEH1zrULfRQhtQB5BW
puCQax+8SJzn+hgha3nt77D98wK4JWNUYoOc6ljDJHE/RWHSmaJ1HEPRA1Wn4jF9
uA/pL3HfQJOePgzw5qW2IX9MODsZHOt6nuA0a5sAEXKYVayAVK7ZoYL0sOmZ+YRs
lT8ARijUGroEHENNcp23FnuuatdeNTGCGbq+FcOA3wKBgQDMe9kwj83/XQFKhCD9
bCOrbjRMig/2o5kf9UtW+rE07xRyHGkFvef2+uM9KA+aWRzU5hMjeYmmRwRXlq2U
inFIlPnvxSiWGRZ+Z6MLAXEOOM41jL/ezleQkRoJisXLIs9fwqWa6ZiXHkc5gZkb
cCUepjjibLICJvFHucucl/g/fwKBgQDAL6YPqe9bKqp6P/2CavkXIB7q5yznncwN
aR2V2EzbJU3wo1LWY0hv8uiDO8ye40LoDaT8byLsaVOTab+vG/9LJyq5Omed1+L5
QbUS93WNUkLbs4M6D9a9Z797RCMbxDLSAMrvGCntTlZ7rSBTLj3qtSxomu39xQqc
bPvozjb9YwKBgQCA/G6YT13mA0jZNFeLBDfL34xl64D+V1wz6ItJpoE5nsYK5Rjq
Ykx8Yu4MmcSd3DBvq2HPMs89b/axOX7tABdNbYvrTza218R0n/Mc8h/alMKezNYL
OaXKr3z5H+x8osyk3yePfGKgkJzlDXcC8862cqvXSDFRYjc4w15IvSP/CQKBgQCg
dmhBhdJqnRoPzmPdQ3HMpC4MVY6BqJfZzp08IogxJVmJBOTCSc0OY5NNF13Gf9u6
IsJRXn2bRGnamB3KmCa02fPrCd+/w6QoF3uXZXQJ1dgq1hxIGzdhl0EiK4bgxRTl
kHHf5Z4EHDdLNgbaTK63zCNTB6CUFLPCXaCLBbqWHwKBgB7DAMl7GvBYcjC3s3Hk
wnkVmKErteuL96rSal4rEAaHr+6zqaeXdxsP+8bojjygDA8KUrDRRGgladmdWLzF
MmuZy8FsrS/I0ZNpT/8a3h3mqi0vM/i//WKzIg52Y7FUmn+eEF2S2GO3ImGPjhSj
QAkQpl5eWE2ik2Rjkc4nNr9M
-----END PRIVATE KEY-----
";
    /// Its public modulus and exponent, base64url.
    const RSA_N: &str = "mYLyRh2ZEEKRqm1ovhNhC7ioh4CURXJH2my-7lFORkH1z8cu-b-iEp5DJoP9gqJDk14zdCT2FLCx4AN9k4H5KyRIKCTY7hwUbxTt823zU3Gxm-SS-mqM8xlXfrU75_A-RABmGdrJ0v7vndpsOVaW9VFhaF-g0azBoQKzirBlgT10FyNGM9WirHzqBDf3xU_Q_l_dm67p1CwbGJacJ2jcoDMGEU_paANdP1tTmrj4CMZoaU9xMjna1BY_zTwrGcvDLMJYgyr5IYJw1ydlsi5yAFEvN8Me7GjMaPVdltyNW6BzV8fzMSVrRBqidpSPxslTkOvcxh-uzoadNGFMsosRHQ";
    const RSA_E: &str = "AQAB";
    const SECRET: &str = "a test secret that is long enough";
    const ISSUER: &str = "https://issuer.test";

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    /// A signing key and its public JWK.
    struct Signer {
        key: EncodingKey,
        jwk: Value,
    }

    fn rsa(kid: &str) -> Signer {
        Signer {
            key: EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap(),
            jwk: json!({"kty": "RSA", "kid": kid, "n": RSA_N, "e": RSA_E}),
        }
    }

    fn ec(alg: &'static EcdsaSigningAlgorithm, crv: &str, kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let half = (point.len() - 1) / 2;
        Signer {
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "crv": crv, "kid": kid, "x": b64(&point[1..=half]), "y": b64(&point[half + 1..])}),
        }
    }

    fn p256(kid: &str) -> Signer {
        ec(&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", kid)
    }

    fn ed25519(kid: &str) -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Signer {
            key: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key().as_ref())}),
        }
    }

    fn jwks(signers: &[&Signer]) -> String {
        json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, key).unwrap()
    }

    fn claims() -> Value {
        json!({"sub": "alice", "iss": ISSUER, "aud": "api", "exp": now() + 600, "scope": "read"})
    }

    fn spec() -> JwtAuth {
        JwtAuth {
            issuer: ISSUER.into(),
            audiences: vec!["api".into(), "other".into()],
            hmac_secrets: vec!["another secret".into(), SECRET.into()],
            ..Default::default()
        }
    }

    fn compile(spec: &JwtAuth) -> Jwt {
        Jwt::compile(spec, &JwksRegistry::new()).unwrap()
    }

    fn hs256(claims: &Value) -> String {
        sign(Algorithm::HS256, None, &EncodingKey::from_secret(SECRET.as_bytes()), claims)
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        if let Some(map) = claims.as_object_mut() {
            map.remove(key);
        }
        claims
    }

    #[test]
    fn valid_token_gives_its_claims() {
        let jwt = compile(&spec());
        let claims = jwt.verify(&hs256(&claims())).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["scope"], "read");
    }

    #[test]
    fn time_claims_are_checked_with_leeway() {
        let jwt = compile(&spec());
        let t = now();
        assert_eq!(jwt.verify(&hs256(&with(claims(), "exp", json!(t - 120)))).unwrap_err(), "expired");
        assert!(jwt.verify(&hs256(&with(claims(), "exp", json!(t - 30)))).is_ok(), "within the default 60s leeway");
        assert_eq!(jwt.verify(&hs256(&with(claims(), "nbf", json!(t + 600)))).unwrap_err(), "not yet valid");
        assert!(jwt.verify(&hs256(&with(claims(), "nbf", json!(t + 30)))).is_ok());
        assert!(jwt.verify(&hs256(&with(claims(), "nbf", json!(t - 30)))).is_ok());
        assert_eq!(jwt.verify(&hs256(&with(claims(), "nbf", json!("soon")))).unwrap_err(), "invalid claim 'nbf'");

        let strict = compile(&JwtAuth { leeway: Some(pbjson_types::Duration { seconds: 0, nanos: 0 }), ..spec() });
        assert_eq!(strict.verify(&hs256(&with(claims(), "exp", json!(t - 30)))).unwrap_err(), "expired");
    }

    #[test]
    fn exp_is_required() {
        let jwt = compile(&spec());
        let reason = jwt.verify(&hs256(&without(claims(), "exp"))).unwrap_err();
        assert!(reason.contains("'exp'") && reason.contains("must expire"), "{reason}");
        let reason = jwt.verify(&hs256(&with(claims(), "exp", json!("tomorrow")))).unwrap_err();
        assert!(reason.contains("'exp'"), "{reason}");
    }

    #[test]
    fn wrong_signature_is_refused() {
        let jwt = compile(&spec());
        let forged = sign(Algorithm::HS256, None, &EncodingKey::from_secret(b"not the secret"), &claims());
        assert_eq!(jwt.verify(&forged).unwrap_err(), "bad signature");
        // A valid signature over other claims does not carry over.
        let (good, other) = (hs256(&claims()), hs256(&with(claims(), "sub", json!("mallory"))));
        let good: Vec<&str> = good.split('.').collect();
        let other: Vec<&str> = other.split('.').collect();
        let spliced = format!("{}.{}.{}", good[0], other[1], good[2]);
        assert_eq!(jwt.verify(&spliced).unwrap_err(), "bad signature");
        // Claim problems of an unsigned token are not told.
        let forged = sign(Algorithm::HS256, None, &EncodingKey::from_secret(b"x"), &with(claims(), "exp", json!(1)));
        assert_eq!(jwt.verify(&forged).unwrap_err(), "bad signature");
    }

    #[test]
    fn issuer_and_audience_are_checked() {
        let jwt = compile(&spec());
        assert_eq!(
            jwt.verify(&hs256(&with(claims(), "iss", json!("https://evil.test")))).unwrap_err(),
            "issuer not accepted"
        );
        assert_eq!(jwt.verify(&hs256(&without(claims(), "iss"))).unwrap_err(), "missing claim 'iss'");
        assert_eq!(jwt.verify(&hs256(&with(claims(), "iss", json!(7)))).unwrap_err(), "missing claim 'iss'");
        assert_eq!(
            jwt.verify(&hs256(&with(claims(), "aud", json!("elsewhere")))).unwrap_err(),
            "audience not accepted"
        );
        assert_eq!(jwt.verify(&hs256(&with(claims(), "aud", json!(["a", "b"])))).unwrap_err(), "audience not accepted");
        assert_eq!(jwt.verify(&hs256(&without(claims(), "aud"))).unwrap_err(), "missing claim 'aud'");
        assert!(jwt.verify(&hs256(&with(claims(), "aud", json!(["elsewhere", "other"])))).is_ok());

        // Neither configured: neither checked, whatever the token says.
        let open = compile(&JwtAuth { issuer: String::new(), audiences: vec![], ..spec() });
        assert!(open.verify(&hs256(&with(claims(), "aud", json!("elsewhere")))).is_ok());
        assert!(open.verify(&hs256(&without(without(claims(), "aud"), "iss"))).is_ok());
    }

    #[test]
    fn required_claims_must_be_present() {
        let jwt = compile(&JwtAuth { required_claims: vec!["scope".into(), "tenant".into()], ..spec() });
        assert_eq!(jwt.verify(&hs256(&claims())).unwrap_err(), "missing claim 'tenant'");
        assert_eq!(jwt.verify(&hs256(&with(claims(), "tenant", Value::Null))).unwrap_err(), "missing claim 'tenant'");
        assert!(jwt.verify(&hs256(&with(claims(), "tenant", json!("acme")))).is_ok());
        assert!(jwt.verify(&hs256(&with(claims(), "tenant", json!({"id": 1})))).is_ok());
    }

    #[test]
    fn every_algorithm_is_accepted_with_a_fitting_key() {
        let (rsa, p256, p384, ed) =
            (rsa("rsa"), p256("p256"), ec(&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", "p384"), ed25519("ed"));
        let jwt = compile(&JwtAuth { jwks: jwks(&[&rsa, &p256, &p384, &ed]), ..spec() });
        let secret = EncodingKey::from_secret(SECRET.as_bytes());
        let cases = [
            (Algorithm::HS256, &secret),
            (Algorithm::HS384, &secret),
            (Algorithm::HS512, &secret),
            (Algorithm::RS256, &rsa.key),
            (Algorithm::RS384, &rsa.key),
            (Algorithm::RS512, &rsa.key),
            (Algorithm::PS256, &rsa.key),
            (Algorithm::PS384, &rsa.key),
            (Algorithm::PS512, &rsa.key),
            (Algorithm::ES256, &p256.key),
            (Algorithm::ES384, &p384.key),
            (Algorithm::EdDSA, &ed.key),
        ];
        for (alg, key) in cases {
            // With and without a kid: without one, every key of a fitting type is tried.
            let kid = match alg {
                Algorithm::ES256 => Some("p256"),
                Algorithm::ES384 => Some("p384"),
                Algorithm::EdDSA => Some("ed"),
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Some("ignored for hmac"),
                _ => Some("rsa"),
            };
            for kid in [kid, None] {
                let token = sign(alg, kid, key, &claims());
                assert_eq!(jwt.verify(&token).map(|c| c["sub"].clone()), Ok(json!("alice")), "{alg:?} kid {kid:?}");
            }
        }
    }

    #[test]
    fn kid_selects_the_key() {
        let (a, b) = (p256("a"), p256("b"));
        let jwt = compile(&JwtAuth { jwks: jwks(&[&a, &b]), ..spec() });
        assert!(jwt.verify(&sign(Algorithm::ES256, Some("b"), &b.key, &claims())).is_ok());
        assert!(jwt.verify(&sign(Algorithm::ES256, None, &b.key, &claims())).is_ok());
        // Key b's signature under kid a is checked against a only.
        assert_eq!(jwt.verify(&sign(Algorithm::ES256, Some("a"), &b.key, &claims())).unwrap_err(), "bad signature");
        assert_eq!(jwt.verify(&sign(Algorithm::ES256, Some("c"), &b.key, &claims())).unwrap_err(), "unknown key");
        let stranger = p256("x");
        assert_eq!(jwt.verify(&sign(Algorithm::ES256, None, &stranger.key, &claims())).unwrap_err(), "bad signature");
    }

    #[test]
    fn alg_none_and_algorithm_confusion_are_refused() {
        let rsa = rsa("rsa");
        let jwt = compile(&JwtAuth { jwks: jwks(&[&rsa]), hmac_secrets: vec![], ..spec() });
        let payload = b64(claims().to_string().as_bytes());
        for alg in ["none", "None", "NONE"] {
            let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
            assert_eq!(jwt.verify(&format!("{header}.{payload}.")).unwrap_err(), "alg none not accepted");
        }
        let header = b64(br#"{"alg":"ES512"}"#);
        assert_eq!(jwt.verify(&format!("{header}.{payload}.c2ln")).unwrap_err(), "algorithm not supported");
        // HS256 "signed" with the public key's material, as the classic confusion attack does.
        for material in [RSA_N.as_bytes(), rsa.jwk.to_string().as_bytes()] {
            let token = sign(Algorithm::HS256, Some("rsa"), &EncodingKey::from_secret(material), &claims());
            assert_eq!(jwt.verify(&token).unwrap_err(), "algorithm not accepted");
        }
        // An EC token cannot be checked with the RSA key.
        let ec = p256("rsa");
        assert_eq!(
            jwt.verify(&sign(Algorithm::ES256, Some("rsa"), &ec.key, &claims())).unwrap_err(),
            "algorithm not accepted for this key"
        );
        assert_eq!(
            jwt.verify(&sign(Algorithm::ES256, None, &ec.key, &claims())).unwrap_err(),
            "no key for this algorithm"
        );
    }

    #[test]
    fn a_jwk_alg_restricts_the_key() {
        let mut rsa = rsa("rsa");
        rsa.jwk["alg"] = json!("RS256");
        let jwt = compile(&JwtAuth { jwks: jwks(&[&rsa]), ..spec() });
        assert!(jwt.verify(&sign(Algorithm::RS256, Some("rsa"), &rsa.key, &claims())).is_ok());
        assert_eq!(
            jwt.verify(&sign(Algorithm::PS256, Some("rsa"), &rsa.key, &claims())).unwrap_err(),
            "algorithm not accepted for this key"
        );
        assert_eq!(
            jwt.verify(&sign(Algorithm::RS512, None, &rsa.key, &claims())).unwrap_err(),
            "no key for this algorithm"
        );
    }

    #[test]
    fn unusable_jwks_keys_are_skipped() {
        let good = p256("good");
        let doc = json!({"keys": [
            {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
            {"kty": "EC", "crv": "P-256", "kid": "es512", "alg": "ES512", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": RSA_E},
            {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": RSA_N, "e": RSA_E},
            {"kty": "RSA", "kid": "small", "n": b64(&[0xc5; 128]), "e": RSA_E},
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-256", "kid": "short", "x": "AAAA", "y": "AAAA"},
            {"kty": "RSA", "kid": "sign-only", "key_ops": ["sign"], "n": RSA_N, "e": RSA_E},
            {"kty": "RSA", "kid": "mismatch", "alg": "ES256", "n": RSA_N, "e": RSA_E},
            {"kty": "XYZ"},
            "not even an object",
            good.jwk,
        ]});
        let (set, skipped) = parse_jwks(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1, "{skipped:?}");
        assert_eq!(skipped.len(), 11, "{skipped:?}");
        let jwt = compile(&JwtAuth { jwks: doc.to_string(), ..spec() });
        assert!(jwt.verify(&sign(Algorithm::ES256, Some("good"), &good.key, &claims())).is_ok());
        assert!(parse_jwks(b"{\"keys\": 5}").is_err());
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[test]
    fn compile_errors_name_the_field() {
        let registry = JwksRegistry::new();
        let err = |spec: JwtAuth| Jwt::compile(&spec, &registry).unwrap_err();
        assert!(err(JwtAuth { jwks: "{".into(), ..spec() }).starts_with("jwks: not JSON"));
        assert!(
            err(JwtAuth { jwks: r#"{"keys":[{"kty":"oct","k":"AA"}]}"#.into(), ..spec() })
                .starts_with("jwks: no usable key")
        );
        assert!(err(JwtAuth::default()).starts_with("no keys"));
        assert!(err(JwtAuth { jwks_uri: "ftp://x/jwks".into(), ..spec() }).starts_with("jwks_uri:"));
        assert!(err(JwtAuth { jwks_uri: "/jwks.json".into(), ..spec() }).starts_with("jwks_uri:"));
        assert!(err(JwtAuth { hmac_secrets: vec![String::new()], ..spec() }).starts_with("hmac_secrets[0]"));
        assert!(err(JwtAuth { required_claims: vec![String::new()], ..spec() }).starts_with("required_claims[0]"));
        let bad_header = vec![ClaimToHeader { claim: "sub".into(), header: "x user".into() }];
        assert!(err(JwtAuth { claims_to_headers: bad_header, ..spec() }).starts_with("claims_to_headers[0].header"));
        let negative = Some(pbjson_types::Duration { seconds: -1, nanos: 0 });
        assert!(err(JwtAuth { leeway: negative, ..spec() }).starts_with("leeway"));
        assert!(err(JwtAuth { jwks_refresh: negative, ..spec() }).starts_with("jwks_refresh"));
        let long = Some(pbjson_types::Duration { seconds: i64::MAX, nanos: 0 });
        assert!(err(JwtAuth { leeway: long, ..spec() }).starts_with("leeway"));
        // Outside a runtime, a jwks_uri is an error rather than a panic.
        assert!(err(JwtAuth { jwks_uri: "http://127.0.0.1:9/jwks".into(), ..spec() }).contains("runtime"));
    }

    #[test]
    fn tokens_come_from_bearer_then_cookie() {
        let jwt = compile(&JwtAuth { cookie: "session".into(), ..spec() });
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            map
        };
        assert_eq!(jwt.token(&headers(&[("authorization", "Bearer abc.def.ghi")])), Some("abc.def.ghi"));
        assert_eq!(jwt.token(&headers(&[("authorization", "bEaReR   abc ")])), Some("abc"));
        assert_eq!(jwt.token(&headers(&[("authorization", "Bearer")])), None);
        assert_eq!(jwt.token(&headers(&[("authorization", "Basic dXNlcjpwdw==")])), None);
        let both = headers(&[("authorization", "Basic x"), ("authorization", "Bearer t1"), ("cookie", "session=t2")]);
        assert_eq!(jwt.token(&both), Some("t1"));
        let cookies = headers(&[("cookie", "a=1; sessionx=no"), ("cookie", "b=2; session=\"t2\"; c=3")]);
        assert_eq!(jwt.token(&cookies), Some("t2"));
        assert_eq!(jwt.token(&headers(&[("cookie", "session=")])), None);
        assert_eq!(compile(&spec()).token(&headers(&[("cookie", "session=t2")])), None);
    }

    #[test]
    fn claims_become_headers_and_the_consumer() {
        let jwt = compile(&JwtAuth {
            claims_to_headers: ["sub", "roles", "org", "missing", "nothing", "bad", "name"]
                .iter()
                .map(|c| ClaimToHeader { claim: (*c).into(), header: format!("X-Claim-{c}") })
                .collect(),
            consumer_claim: "client_id".into(),
            ..spec()
        });
        let token = hs256(
            &claims()
                .as_object()
                .cloned()
                .map(|mut m| {
                    m.insert("client_id".into(), json!("app-7"));
                    m.insert("roles".into(), json!(["admin", "dev"]));
                    m.insert("org".into(), json!({"id": 42}));
                    m.insert("nothing".into(), Value::Null);
                    m.insert("bad".into(), json!("line\r\nx-injected: 1"));
                    m.insert("name".into(), json!("Zoë"));
                    Value::Object(m)
                })
                .unwrap(),
        );
        let claims = jwt.verify(&token).unwrap();
        let headers: Vec<(String, Vec<u8>)> =
            jwt.claim_headers(&claims).into_iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
        assert_eq!(
            headers,
            vec![
                ("x-claim-sub".to_owned(), b"alice".to_vec()),
                ("x-claim-roles".to_owned(), br#"["admin","dev"]"#.to_vec()),
                ("x-claim-org".to_owned(), br#"{"id":42}"#.to_vec()),
                ("x-claim-name".to_owned(), "Zoë".as_bytes().to_vec()),
            ]
        );
        assert_eq!(jwt.header_names().count(), 7);
        assert_eq!(jwt.consumer(&claims).as_deref(), Some("app-7"));
        assert_eq!(compile(&spec()).consumer(&claims).as_deref(), Some("alice"));
        let numeric = with(Value::Object((*claims).clone()), "client_id", json!(7));
        assert_eq!(jwt.consumer(numeric.as_object().unwrap()), None);
    }

    #[test]
    fn garbage_never_panics() {
        let jwt = compile(&JwtAuth { jwks: jwks(&[&p256("a")]), ..spec() });
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        let inputs = [
            "",
            ".",
            "..",
            "...",
            "a.b.c",
            "a.b",
            "e30.e30.",
            "eyJhbGciOiJIUzI1NiJ9.!!!.sig",
            "eyJhbGciOiJIUzI1NiJ9.e30.",
            "eyJhbGciOiJFUzI1NiJ9.e30.AAAA",
            "eyJhbGciOiJSUzI1NiJ9.e30.AAAA",
            "eyJhbGci.e30.AAAA",
            "\u{0}\u{1}.é.ü",
            &long,
        ];
        for input in inputs {
            assert!(jwt.verify(input).is_err(), "{input}");
        }
        assert_eq!(jwt.verify(&long).unwrap_err(), "token too large");
        // A token whose claims are not an object, correctly signed.
        let token = sign(Algorithm::HS256, None, &EncodingKey::from_secret(SECRET.as_bytes()), &json!([1, 2]));
        assert_eq!(jwt.verify(&token).unwrap_err(), "malformed token");
    }

    /// A local JWKS server whose document and status can be changed, counting requests.
    struct JwksServer {
        addr: SocketAddr,
        doc: Arc<Mutex<(u16, String)>>,
        hits: Arc<AtomicUsize>,
    }

    impl JwksServer {
        async fn start(status: u16, doc: String) -> JwksServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let doc = Arc::new(Mutex::new((status, doc)));
            let hits = Arc::new(AtomicUsize::new(0));
            let (d, h) = (doc.clone(), hits.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else { return };
                    let (d, h) = (d.clone(), h.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |_req| {
                            h.fetch_add(1, Ordering::SeqCst);
                            let (status, body) = d.lock().unwrap().clone();
                            async move {
                                http::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                            }
                        });
                        let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                    });
                }
            });
            JwksServer { addr, doc, hits }
        }

        fn uri(&self) -> String {
            format!("http://{}/.well-known/jwks.json", self.addr)
        }

        fn serve(&self, status: u16, doc: String) {
            *self.doc.lock().unwrap() = (status, doc);
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    /// Polls `verify` until it accepts `token` or the deadline passes: the interval is a
    /// poll period, not a synchronisation.
    async fn until_accepted(jwt: &Jwt, token: &str, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            match jwt.verify(token) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn hour() -> Option<pbjson_types::Duration> {
        Some(pbjson_types::Duration { seconds: 3600, nanos: 0 })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jwks_rotation_is_picked_up_by_an_unknown_kid() {
        let (a, b) = (p256("key-a"), ed25519("key-b"));
        let server = JwksServer::start(200, jwks(&[&a])).await;
        let jwt = compile(&JwtAuth { jwks_uri: server.uri(), jwks_refresh: hour(), hmac_secrets: vec![], ..spec() });
        let token_a = sign(Algorithm::ES256, Some("key-a"), &a.key, &claims());
        until_accepted(&jwt, &token_a, Duration::from_secs(10)).await.unwrap();
        assert_eq!(server.hits(), 1);

        // The issuer rotates to key B. With an hourly refresh, only the unknown kid can
        // make the node fetch again.
        server.serve(200, jwks(&[&b]));
        let token_b = sign(Algorithm::EdDSA, Some("key-b"), &b.key, &claims());
        assert_eq!(jwt.verify(&token_b).unwrap_err(), "unknown key");
        until_accepted(&jwt, &token_b, Duration::from_secs(10)).await.unwrap();
        assert_eq!(server.hits(), 2);

        // Key A is gone now; asking again within 10s does not refetch.
        assert_eq!(jwt.verify(&token_a).unwrap_err(), "unknown key");
        let made_up = sign(Algorithm::EdDSA, Some("key-z"), &b.key, &claims());
        for _ in 0..100 {
            assert_eq!(jwt.verify(&made_up).unwrap_err(), "unknown key");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(server.hits(), 2, "early refreshes are rate limited");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_never_waits_for_a_dead_jwks_server() {
        // Accepts connections and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        let a = p256("a");
        let jwt =
            compile(&JwtAuth { jwks_uri: format!("http://{addr}/jwks"), jwks: jwks(&[&p256("inline")]), ..spec() });
        // Measured while the first fetch hangs on the server.
        let deadline = Instant::now() + Duration::from_secs(10);
        while accepted.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "the fetcher never connected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let token = sign(Algorithm::ES256, Some("a"), &a.key, &claims());
        let started = Instant::now();
        for _ in 0..1000 {
            assert_eq!(jwt.verify(&token).unwrap_err(), "keys not yet fetched");
        }
        // Inline keys and secrets work meanwhile.
        assert!(jwt.verify(&hs256(&claims())).is_ok());
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn https_urls_are_fetched_over_tls() {
        // A server that records the first byte a client sends: 0x16 opens a TLS handshake.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut first = [0u8; 1];
            let _ = tokio::io::AsyncReadExt::read_exact(&mut stream, &mut first).await;
            let _ = tx.send(first[0]);
        });
        let jwt = compile(&JwtAuth { jwks_uri: format!("https://localhost:{}/jwks", addr.port()), ..spec() });
        let first = tokio::time::timeout(Duration::from_secs(10), rx).await.unwrap().unwrap();
        assert_eq!(first, 0x16);
        // The handshake fails (no certificate): still no keys, and no waiting.
        let a = p256("a");
        assert_eq!(
            jwt.verify(&sign(Algorithm::ES256, Some("a"), &a.key, &claims())).unwrap_err(),
            "keys not yet fetched"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetchers_are_shared_and_end_when_unused() {
        let a = p256("a");
        let server = JwksServer::start(200, jwks(&[&a])).await;
        let registry = JwksRegistry::new();
        let spec = JwtAuth { jwks_uri: server.uri(), jwks_refresh: hour(), ..spec() };
        let first = Jwt::compile(&spec, &registry).unwrap();
        let token = sign(Algorithm::ES256, Some("a"), &a.key, &claims());
        until_accepted(&first, &token, Duration::from_secs(10)).await.unwrap();

        // A new snapshot with the same URL: same fetcher, keys there at once, no refetch.
        let second = Jwt::compile(&spec, &registry).unwrap();
        assert!(Arc::ptr_eq(first.remote.as_ref().unwrap(), second.remote.as_ref().unwrap()));
        drop(first);
        assert!(second.verify(&token).is_ok());
        assert_eq!(server.hits(), 1);
        assert_eq!(registry.live(), 1);

        // The last user gone, the task ends (it held the only other reference to `wake`).
        let wake = Arc::downgrade(&second.remote.as_ref().unwrap().wake);
        drop(second);
        assert_eq!(registry.live(), 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while wake.upgrade().is_some() {
            assert!(Instant::now() < deadline, "fetch task still running");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_fetches_are_retried_and_keep_the_keys_held() {
        let a = p256("a");
        let server = JwksServer::start(503, "down".into()).await;
        let spec = JwtAuth {
            jwks_uri: server.uri(),
            jwks_refresh: Some(pbjson_types::Duration { seconds: 1, nanos: 0 }),
            ..spec()
        };
        let jwt = compile(&spec);
        let token = sign(Algorithm::ES256, Some("a"), &a.key, &claims());
        assert_eq!(jwt.verify(&token).unwrap_err(), "keys not yet fetched");
        // The failure is retried after the backoff, and the keys arrive.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.hits() < 1 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.serve(200, jwks(&[&a]));
        until_accepted(&jwt, &token, Duration::from_secs(10)).await.unwrap();

        // A broken document or a failing server afterwards keeps the keys held.
        server.serve(200, "not json".into());
        let seen = server.hits();
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.hits() < seen + 2 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(jwt.verify(&token).is_ok());
    }
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn hs256_token(secret: &[u8], exp: u64) -> String {
        let claims = serde_json::json!({ "sub": "cached", "exp": exp });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn repeats_are_answered_from_the_cache_until_expiry() {
        let secret = "cache-test-secret-0123456789";
        let spec =
            JwtAuth { hmac_secrets: vec![secret.into()], leeway: Some(Default::default()), ..Default::default() };
        let jwt = Jwt::compile(&spec, &JwksRegistry::new()).unwrap();
        let now = unix_now();
        let token = hs256_token(secret.as_bytes(), now + 100);
        let first = jwt.verify_at(&token, now).unwrap();
        let again = jwt.verify_at(&token, now + 50).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "a repeat is a cache hit");
        // Past `exp` in the cache's eyes: checked again, not answered from the cache.
        let later = jwt.verify_at(&token, now + 101).unwrap();
        assert!(!Arc::ptr_eq(&first, &later));
        // A token that fails is never cached, and a different token is checked on its own.
        assert!(jwt.verify(&hs256_token(b"wrong-secret-0123456789", now + 100)).is_err());
        assert!(jwt.verify(&format!("{token}x")).is_err());
    }
}
