//! Authentication: API keys, HTTP Basic, JWT, OAuth2 token introspection (RFC 7662) and
//! external authorization by HTTP call, against the config's consumers.
//!
//! Mechanisms are tried in a fixed order; one whose credential is absent is skipped and the
//! first whose credential is present decides. Slow work stays off the request path where
//! it can: bcrypt/argon2 verifications run on the blocking pool and successful ones are
//! remembered (by a SHA-256 of the credential), introspection answers are cached until the
//! token expires (bounded), JWKS keys are fetched in the background (see `jwt`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use sha2::{Digest, Sha256};
use vane_proto::config::{self, api_key};

use super::jwt::JwksRegistry;
use super::jwt::Jwt;
use super::stats::PolicyStats;
use crate::http::body::InnerBody;
use crate::http::body::local;
use crate::upstream::sidecall::{self, SideClient};

/// Most remembered basic-auth verifications and introspection answers (each).
const CACHE_MAX: usize = 10_000;

/// Who a request authenticated as.
#[derive(Debug)]
pub(crate) struct ConsumerInfo {
    pub(crate) name: Arc<str>,
    /// `x-consumer` and `x-consumer-<key>` headers sent upstream.
    pub(crate) headers: Box<[(HeaderName, HeaderValue)]>,
}

impl ConsumerInfo {
    fn new(name: &str, metadata: &BTreeMap<String, String>) -> ConsumerInfo {
        let mut headers = Vec::new();
        if let Ok(v) = HeaderValue::from_str(name) {
            headers.push((HeaderName::from_static("x-consumer"), v));
        }
        for (k, v) in metadata {
            let name = HeaderName::from_bytes(format!("x-consumer-{}", k.to_ascii_lowercase()).as_bytes());
            if let (Ok(name), Ok(value)) = (name, HeaderValue::from_str(v)) {
                headers.push((name, value));
            }
        }
        ConsumerInfo { name: name.into(), headers: headers.into() }
    }
}

/// The consumers of a snapshot, indexed by credential.
#[derive(Debug, Default)]
pub(crate) struct Consumers {
    by_key: HashMap<[u8; 32], Arc<ConsumerInfo>>,
    by_username: HashMap<String, (Arc<ConsumerInfo>, String)>,
    by_subject: HashMap<String, Arc<ConsumerInfo>>,
    /// Subjects seen that are no configured consumer, built once (bounded).
    strangers: Mutex<HashMap<String, Arc<ConsumerInfo>>>,
}

impl Consumers {
    pub(crate) fn compile(consumers: &[config::Consumer]) -> Consumers {
        let mut out = Consumers::default();
        for c in consumers {
            let info = Arc::new(ConsumerInfo::new(&c.name, &c.metadata));
            for k in &c.api_keys {
                let digest: Option<[u8; 32]> = match &k.value {
                    Some(api_key::Value::Key(plain)) => Some(Sha256::digest(plain.as_bytes()).into()),
                    Some(api_key::Value::Sha256(h)) => hex::decode(h).ok().and_then(|d| d.try_into().ok()),
                    None => None,
                };
                if let Some(d) = digest {
                    out.by_key.insert(d, info.clone());
                }
            }
            if let Some(b) = &c.basic_auth {
                out.by_username.insert(b.username.clone(), (info.clone(), b.password_hash.clone()));
            }
            for s in &c.subjects {
                out.by_subject.insert(s.clone(), info.clone());
            }
        }
        out
    }

    /// The consumer a token subject names; unknown subjects are consumers of that name
    /// without metadata (so limits keyed by consumer still separate them).
    fn for_subject(&self, subject: &str) -> Arc<ConsumerInfo> {
        if let Some(known) = self.by_subject.get(subject) {
            return known.clone();
        }
        let mut strangers = self.strangers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(seen) = strangers.get(subject) {
            return seen.clone();
        }
        if strangers.len() >= CACHE_MAX {
            strangers.clear();
        }
        let info = Arc::new(ConsumerInfo::new(subject, &BTreeMap::new()));
        strangers.insert(subject.to_owned(), info.clone());
        info
    }
}

/// Caches that outlive snapshots.
#[derive(Debug, Default)]
pub(crate) struct Caches {
    /// SHA-256 of `username:password:hash` verified good.
    basic: Mutex<HashMap<[u8; 32], ()>>,
    /// SHA-256 of (endpoint, token) -> (answer, valid until).
    introspection: Mutex<HashMap<[u8; 32], Introspected>>,
}

/// An introspection answer (the subject when active) and until when it holds.
type Introspected = (Option<String>, Instant);

type HttpClient = SideClient<Full<Bytes>>;

/// Introspection and external authorization calls: bounded connects, idle connections
/// kept a minute.
fn http_client() -> HttpClient {
    sidecall::client(None, Duration::from_secs(2), Duration::from_secs(60))
}

#[derive(Debug)]
struct Introspect {
    endpoint: http::Uri,
    /// Separates this endpoint's answers from other endpoints' in the shared cache.
    cache_prefix: Box<str>,
    authorization: Option<HeaderValue>,
    cache_ttl: Duration,
    timeout: Duration,
}

#[derive(Debug)]
struct ExtAuthz {
    url: http::Uri,
    send: Option<Box<[HeaderName]>>,
    to_upstream: Box<[HeaderName]>,
    timeout: Duration,
}

/// A compiled `Auth`.
#[derive(Debug)]
pub(super) struct Auth {
    consumers: Arc<Consumers>,
    api_key: Option<(HeaderName, Option<String>)>,
    basic_realm: Option<String>,
    jwt: Option<Jwt>,
    introspection: Option<Introspect>,
    ext_authz: Option<ExtAuthz>,
    anonymous: bool,
    client: HttpClient,
    caches: Arc<Caches>,
}

fn header_name(s: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes()).ok()
}

impl Auth {
    pub(super) fn compile(
        spec: &config::Auth,
        consumers: Arc<Consumers>,
        jwks: &JwksRegistry,
        caches: &Arc<Caches>,
    ) -> Result<Auth, (&'static str, String)> {
        let jwt = spec.jwt.as_ref().map(|j| Jwt::compile(j, jwks)).transpose().map_err(|e| ("auth.jwt", e))?;
        let introspection = match &spec.introspection {
            Some(i) => Some(Introspect {
                endpoint: i.endpoint.parse().map_err(|_| ("auth.introspection.endpoint", "not a URL".to_owned()))?,
                cache_prefix: format!("{}\n", i.endpoint).into(),
                authorization: (!i.client_id.is_empty())
                    .then(|| {
                        let raw = format!("{}:{}", i.client_id, i.client_secret);
                        HeaderValue::from_str(&format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(raw)
                        ))
                        .ok()
                    })
                    .flatten(),
                cache_ttl: crate::support::duration_or(i.cache_ttl.as_ref(), Duration::from_secs(60)),
                timeout: crate::support::duration_or(i.timeout.as_ref(), Duration::from_secs(2)),
            }),
            None => None,
        };
        let ext_authz = match &spec.ext_authz {
            Some(e) => Some(ExtAuthz {
                url: e.url.parse().map_err(|_| ("auth.ext_authz.url", "not a URL".to_owned()))?,
                send: (!e.headers_to_send.is_empty())
                    .then(|| e.headers_to_send.iter().filter_map(|h| header_name(h)).collect()),
                to_upstream: e.headers_to_upstream.iter().filter_map(|h| header_name(h)).collect(),
                timeout: crate::support::duration_or(e.timeout.as_ref(), Duration::from_secs(2)),
            }),
            None => None,
        };
        Ok(Auth {
            consumers,
            api_key: spec.api_key.as_ref().map(|k| {
                let header = header_name(if k.header.is_empty() { "x-api-key" } else { &k.header })
                    .unwrap_or(HeaderName::from_static("x-api-key"));
                (header, (!k.query.is_empty()).then(|| k.query.clone()))
            }),
            basic_realm: spec
                .basic
                .as_ref()
                .map(|b| if b.realm.is_empty() { "vane".to_owned() } else { b.realm.replace('"', "") }),
            jwt,
            introspection,
            ext_authz,
            anonymous: spec.allow_anonymous,
            client: http_client(),
            caches: caches.clone(),
        })
    }

    /// Authenticates a request. `Ok(None)`: anonymous and allowed, or authorized by an
    /// external service without a consumer name.
    pub(super) async fn authenticate(
        &self,
        req: &mut Request<InnerBody>,
        stats: &PolicyStats,
    ) -> Result<Option<Arc<ConsumerInfo>>, Response<InnerBody>> {
        let counter = match self.decide(req).await {
            Some(Ok(consumer)) => return Ok(consumer),
            None if self.anonymous => return Ok(None),
            None => {
                stats.auth_missing.fetch_add(1, Ordering::Relaxed);
                return Err(self.unauthorized("credentials required\n"));
            }
            Some(Err(r)) if r.status() == StatusCode::SERVICE_UNAVAILABLE => (&stats.auth_unavailable, r),
            Some(Err(r)) => (&stats.auth_invalid, r),
        };
        counter.0.fetch_add(1, Ordering::Relaxed);
        Err(counter.1)
    }

    /// The first mechanism whose credential the request holds decides; `None`: the request
    /// holds no credential at all.
    async fn decide(
        &self,
        req: &mut Request<InnerBody>,
    ) -> Option<Result<Option<Arc<ConsumerInfo>>, Response<InnerBody>>> {
        if let Some((header, query)) = &self.api_key
            && let Some(key) = take_api_key(req, header, query.as_deref())
        {
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            return Some(match self.consumers.by_key.get(&digest) {
                Some(c) => Ok(Some(c.clone())),
                None => Err(self.unauthorized("invalid api key\n")),
            });
        }
        let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if self.basic_realm.is_some()
            && let Some(encoded) = authorization.as_deref().and_then(|a| strip_scheme(a, "basic"))
        {
            return Some(self.basic(encoded).await.map(Some).map_err(|()| self.unauthorized("invalid credentials\n")));
        }
        if let Some(jwt) = &self.jwt
            && let Some(token) = jwt.token(req.headers())
        {
            let verified = jwt.verify(token);
            return Some(match verified {
                Ok(claims) => {
                    // Claim headers carry only what the token says: a client's own go.
                    for name in jwt.header_names() {
                        req.headers_mut().remove(name);
                    }
                    for (name, value) in jwt.claim_headers(&claims) {
                        req.headers_mut().insert(name, value);
                    }
                    Ok(jwt.consumer(&claims).map(|s| self.consumers.for_subject(&s)))
                }
                Err(reason) => Err(self.bearer_error(&reason)),
            });
        }
        if let Some(i) = &self.introspection
            && let Some(token) = authorization.as_deref().and_then(|a| strip_scheme(a, "bearer"))
        {
            return Some(self.introspect(i, token).await.map(|s| s.map(|s| self.consumers.for_subject(&s))));
        }
        if let Some(e) = &self.ext_authz {
            return Some(self.ext_authz(e, req).await.map(|()| None));
        }
        None
    }

    /// 401 with a challenge per configured mechanism.
    fn unauthorized(&self, body: &'static str) -> Response<InnerBody> {
        let mut response = local(StatusCode::UNAUTHORIZED, body);
        let h = response.headers_mut();
        if let Some((header, _)) = &self.api_key
            && let Ok(v) = HeaderValue::from_str(&format!("ApiKey header=\"{header}\""))
        {
            h.append(header::WWW_AUTHENTICATE, v);
        }
        if let Some(realm) = &self.basic_realm
            && let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
        {
            h.append(header::WWW_AUTHENTICATE, v);
        }
        if self.jwt.is_some() || self.introspection.is_some() {
            h.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"vane\""));
        }
        response
    }

    /// 401 for a bearer token that failed (RFC 6750 §3).
    fn bearer_error(&self, reason: &str) -> Response<InnerBody> {
        let mut response = local(StatusCode::UNAUTHORIZED, "invalid token\n");
        let reason = reason.replace(['"', '\\'], "");
        if let Ok(v) = HeaderValue::from_str(&format!(
            "Bearer realm=\"vane\", error=\"invalid_token\", error_description=\"{reason}\""
        )) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        response
    }

    async fn basic(&self, encoded: &str) -> Result<Arc<ConsumerInfo>, ()> {
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| ())?;
        let decoded = String::from_utf8(decoded).map_err(|_| ())?;
        let (user, password) = decoded.split_once(':').ok_or(())?;
        let (consumer, hash) = self.consumers.by_username.get(user).ok_or(())?;
        let memo: [u8; 32] = Sha256::digest(format!("{user}:{password}:{hash}").as_bytes()).into();
        if self.caches.basic.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&memo) {
            return Ok(consumer.clone());
        }
        let (password, hash) = (password.to_owned(), hash.clone());
        // bcrypt and argon2 are slow on purpose: never on the async workers.
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash)).await.unwrap_or(false);
        if !ok {
            return Err(());
        }
        let mut memos = self.caches.basic.lock().unwrap_or_else(|p| p.into_inner());
        if memos.len() >= CACHE_MAX {
            memos.clear();
        }
        memos.insert(memo, ());
        Ok(consumer.clone())
    }

    /// The token's subject when active (`Ok(None)`: active without a subject); 401 when
    /// inactive; 503 when the endpoint cannot say.
    async fn introspect(&self, i: &Introspect, token: &str) -> Result<Option<String>, Response<InnerBody>> {
        let key: [u8; 32] = Sha256::new().chain_update(i.cache_prefix.as_bytes()).chain_update(token).finalize().into();
        let now = Instant::now();
        if let Some((answer, until)) = self.caches.introspection.lock().unwrap_or_else(|p| p.into_inner()).get(&key)
            && *until > now
        {
            return match answer {
                Some(subject) => Ok((!subject.is_empty()).then(|| subject.clone())),
                None => Err(self.bearer_error("token is not active")),
            };
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("token", token)
            .append_pair("token_type_hint", "access_token")
            .finish();
        let mut request = Request::post(i.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json");
        if let Some(auth) = &i.authorization {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        let Ok(request) = request.body(Full::new(Bytes::from(body))) else {
            return Err(local(StatusCode::SERVICE_UNAVAILABLE, "introspection unavailable\n"));
        };
        let call = async {
            let response = self.client.request(request).await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let bytes = response.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice::<serde_json::Value>(&bytes).ok()
        };
        let Ok(Some(answer)) = tokio::time::timeout(i.timeout, call).await else {
            return Err(local(StatusCode::SERVICE_UNAVAILABLE, "introspection unavailable\n"));
        };
        let active = answer.get("active").and_then(serde_json::Value::as_bool).unwrap_or(false);
        let subject = ["sub", "client_id", "username"]
            .iter()
            .find_map(|k| answer.get(*k).and_then(|v| v.as_str()))
            .unwrap_or("")
            .to_owned();
        // Cached until the token expires, at most cache_ttl.
        let unix_now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let until_exp = answer
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .map(|exp| Duration::from_secs(exp.saturating_sub(unix_now)));
        let ttl = until_exp.map_or(i.cache_ttl, |t| t.min(i.cache_ttl));
        {
            let mut cache = self.caches.introspection.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, (_, until)| *until > now);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            if !ttl.is_zero() {
                cache.insert(key, (active.then(|| subject.clone()), now + ttl));
            }
        }
        if !active || until_exp.is_some_and(|t| t.is_zero()) {
            return Err(self.bearer_error("token is not active"));
        }
        Ok((!subject.is_empty()).then_some(subject))
    }

    /// Asks the external service; a 2xx passes (copying chosen headers), anything else is
    /// the client's answer.
    async fn ext_authz(&self, e: &ExtAuthz, req: &mut Request<InnerBody>) -> Result<(), Response<InnerBody>> {
        let mut check = Request::get(e.url.clone());
        for (name, value) in req.headers() {
            let send = match &e.send {
                Some(list) => list.contains(name),
                // Hop-by-hop and framing headers belong to this connection, not the check.
                None => {
                    !matches!(
                        *name,
                        header::HOST
                            | header::CONTENT_LENGTH
                            | header::TRANSFER_ENCODING
                            | header::CONNECTION
                            | header::UPGRADE
                            | header::TE
                            | header::TRAILER
                            | header::PROXY_AUTHORIZATION
                    ) && name.as_str() != "keep-alive"
                }
            };
            if send {
                check = check.header(name, value);
            }
        }
        check = check
            .header("x-forwarded-method", req.method().as_str())
            .header("x-forwarded-uri", req.uri().path_and_query().map_or("/", |p| p.as_str()));
        let Ok(check) = check.body(Full::default()) else {
            return Err(local(StatusCode::SERVICE_UNAVAILABLE, "authorization unavailable\n"));
        };
        let call = async {
            let response = self.client.request(check).await.ok()?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.ok()?.to_bytes();
            Some((parts, body))
        };
        let Ok(Some((parts, body))) = tokio::time::timeout(e.timeout, call).await else {
            return Err(local(StatusCode::SERVICE_UNAVAILABLE, "authorization unavailable\n"));
        };
        if parts.status.is_success() {
            for name in e.to_upstream.iter() {
                req.headers_mut().remove(name);
                for value in parts.headers.get_all(name) {
                    req.headers_mut().append(name.clone(), value.clone());
                }
            }
            return Ok(());
        }
        let mut response = Response::new(Either::Right(Full::new(body)));
        *response.status_mut() = parts.status;
        for (name, value) in &parts.headers {
            if !matches!(*name, header::CONNECTION | header::TRANSFER_ENCODING | header::CONTENT_LENGTH) {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
        Err(response)
    }
}

/// `Scheme credentials` with the scheme matched case-insensitively.
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// The API key from the header, else the query parameter; removed from the request so the
/// upstream never sees it.
fn take_api_key(req: &mut Request<InnerBody>, header: &HeaderName, query: Option<&str>) -> Option<String> {
    if let Some(v) = req.headers_mut().remove(header) {
        return v.to_str().ok().map(str::to_owned);
    }
    let param = query?;
    let q = req.uri().query()?;
    let mut found = None;
    let kept: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
        .into_owned()
        .filter(|(k, v)| {
            if k == param && found.is_none() {
                found = Some(v.clone());
                false
            } else {
                k != param
            }
        })
        .collect();
    let key = found?;
    let path = req.uri().path().to_owned();
    let pq = if kept.is_empty() {
        path
    } else {
        format!("{path}?{}", form_urlencoded::Serializer::new(String::new()).extend_pairs(kept).finish())
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    Some(key)
}

/// A password against a bcrypt (`$2a$`, `$2b$`, `$2y$`) or argon2 (`$argon2...`) hash.
pub(crate) fn verify_password(password: &str, hash: &str) -> bool {
    if hash.starts_with("$argon2") {
        use argon2::PasswordVerifier as _;
        return argon2::PasswordHash::new(hash)
            .is_ok_and(|parsed| argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok());
    }
    bcrypt::verify(password, hash).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcrypt_and_argon2_hashes_verify() {
        let b = bcrypt::hash("s3cret", 4).unwrap();
        assert!(verify_password("s3cret", &b));
        assert!(!verify_password("wrong", &b));
        use argon2::PasswordHasher as _;
        let salt = argon2::password_hash::SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let a = argon2::Argon2::default().hash_password(b"s3cret", &salt).unwrap().to_string();
        assert!(verify_password("s3cret", &a));
        assert!(!verify_password("wrong", &a));
        assert!(!verify_password("s3cret", "plain"));
    }
}
