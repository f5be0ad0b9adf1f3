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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{AUTHORIZATION, COOKIE};
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tracing::debug;
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

mod jwks;
mod keys;

pub(crate) use jwks::JwksRegistry;
use jwks::Remote;
use keys::{Key, KeySet, parse_jwks};

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

/// Seconds since the Unix epoch, now.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod tests;
