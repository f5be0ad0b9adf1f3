//! API gateway policies: compiled once per snapshot, run on every request of the routes and
//! listeners they are attached to.
//!
//! A request meets its chain (the listener's policies, then the route's) stage by stage, in
//! the documented order: every IP filter, then CORS, then auth, then rate limits, then
//! request transforms; a stage that refuses ends the request with its answer. What a
//! request leaves for its response (CORS and `RateLimit-*` headers, response transforms)
//! is carried in [`Applied`] and added when the response is back.
//!
//! State that must outlive a snapshot lives in [`PolicyState`], owned by the node: rate
//! limiter buckets (kept while a policy's rate limit is unchanged), JWKS key sets, the
//! caches of basic-auth verifications and token introspections.

mod auth;
mod cors;
pub(crate) mod jwt;
pub(crate) mod ratelimit;
mod stats;
mod transform;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use vane_proto::ConfigError;
use vane_proto::config::{self, Config};

pub(crate) use auth::Consumers;
use auth::{Auth, ConsumerInfo};
use cors::{Cors, CorsOutcome};
use ratelimit::Limiter;
use transform::Transform;

use crate::http::body::local;
pub(crate) use stats::{Ctx, PolicyStats};

use crate::http::body::InnerBody;

/// Node-wide state the policies of every snapshot share.
#[derive(Debug, Default)]
pub(crate) struct PolicyState {
    /// Rate limiters by (policy name, its rate_limit spec): unchanged limits keep their buckets.
    limiters: Mutex<HashMap<LimiterKey, Arc<Limiter>>>,
    pub(crate) jwks: jwt::JwksRegistry,
    pub(crate) caches: Arc<auth::Caches>,
}

/// A policy's name and its encoded rate_limit spec.
type LimiterKey = (String, Vec<u8>);

/// One compiled policy.
#[derive(Debug)]
pub(crate) struct Policy {
    ip: Option<IpFilter>,
    cors: Option<Cors>,
    auth: Option<Auth>,
    rate: Option<RateStage>,
    transform: Option<Transform>,
    pub(crate) stats: Arc<PolicyStats>,
}

/// The policies of one snapshot, by name.
#[derive(Debug, Default, Clone)]
pub(crate) struct Policies {
    pub(crate) by_name: HashMap<String, Arc<Policy>>,
}

impl Policies {
    /// Compiles every policy (validated beforehand); errors are node-local (a JWKS document
    /// that does not parse, say) and fail the snapshot.
    pub(crate) fn compile(
        config: &Config,
        state: &PolicyState,
        previous: Option<&Policies>,
    ) -> Result<Policies, Vec<ConfigError>> {
        let consumers = Arc::new(Consumers::compile(&config.consumers));
        let mut by_name = HashMap::new();
        let mut errors = Vec::new();
        let mut limiters = state.limiters.lock().unwrap_or_else(|p| p.into_inner());
        let mut kept = HashMap::new();
        for p in &config.policies {
            let err = |field: &str, message: String| ConfigError {
                kind: "policy",
                name: p.name.clone(),
                field: field.to_owned(),
                message,
            };
            let auth = match p.auth.as_ref().map(|a| Auth::compile(a, consumers.clone(), &state.jwks, &state.caches)) {
                None => None,
                Some(Ok(a)) => Some(a),
                Some(Err((field, message))) => {
                    errors.push(err(field, message));
                    continue;
                }
            };
            let rate = p.rate_limit.as_ref().map(|spec| {
                let key = (p.name.clone(), prost::Message::encode_to_vec(spec));
                let limiter = limiters.get(&key).cloned().unwrap_or_else(|| {
                    let per = crate::support::duration_or(spec.per.as_ref(), std::time::Duration::from_secs(1));
                    let burst = if spec.burst == 0 { spec.requests } else { spec.burst };
                    let max_keys = if spec.max_keys == 0 { 100_000 } else { spec.max_keys as usize };
                    Arc::new(Limiter::new(spec.requests, per, burst, max_keys))
                });
                kept.insert(key, limiter.clone());
                RateStage::compile(spec, limiter)
            });
            let stats =
                previous.and_then(|prev| prev.by_name.get(&p.name)).map(|old| old.stats.clone()).unwrap_or_default();
            by_name.insert(
                p.name.clone(),
                Arc::new(Policy {
                    ip: p.ip_filter.as_ref().map(IpFilter::compile),
                    cors: p.cors.as_ref().map(Cors::compile),
                    auth,
                    rate,
                    transform: p.transform.as_ref().map(Transform::compile),
                    stats,
                }),
            );
        }
        if errors.is_empty() {
            // Limiters of removed or changed policies go; the rest keep their buckets.
            *limiters = kept;
            Ok(Policies { by_name })
        } else {
            Err(errors)
        }
    }

    /// `vane_policy_requests_total{policy,result}` (passed, or why refused) and
    /// `vane_ratelimit_keys{policy}`.
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        if self.by_name.is_empty() {
            return;
        }
        let mut names: Vec<&String> = self.by_name.keys().collect();
        names.sort();
        let _ =
            writeln!(out, "# HELP vane_policy_requests_total Requests through each policy: passed, or why refused.");
        let _ = writeln!(out, "# TYPE vane_policy_requests_total counter");
        for name in &names {
            let s = &self.by_name[*name].stats;
            let passed = ("passed", s.passed.load(Ordering::Relaxed));
            for (result, n) in std::iter::once(passed).chain(s.denials()) {
                let _ = writeln!(out, "vane_policy_requests_total{{policy=\"{name}\",result=\"{result}\"}} {n}");
            }
        }
        let _ = writeln!(out, "# HELP vane_ratelimit_keys Distinct keys a policy's rate limiter holds.");
        let _ = writeln!(out, "# TYPE vane_ratelimit_keys gauge");
        for name in &names {
            if let Some(rate) = &self.by_name[*name].rate {
                let _ = writeln!(out, "vane_ratelimit_keys{{policy=\"{name}\"}} {}", rate.limiter.keys());
            }
        }
    }

    /// The chain for listener policies `first` then route policies `then` (names validated).
    pub(crate) fn chain(&self, first: &[String], then: &[String]) -> Chain {
        let policies: Box<[Arc<Policy>]> =
            first.iter().chain(then).filter_map(|n| self.by_name.get(n).cloned()).collect();
        let has_auth = policies.iter().any(|p| p.auth.is_some());
        Chain { policies, has_auth }
    }
}

/// The policies a request meets, in order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Chain {
    policies: Box<[Arc<Policy>]>,
    /// Some policy authenticates: client-sent consumer headers are removed.
    has_auth: bool,
}

/// What the request side of a chain leaves for the response.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    cors: Option<Vec<(HeaderName, HeaderValue)>>,
    rate: Option<(u32, ratelimit::Decision)>,
    transforms: Vec<Arc<Policy>>,
    consumer: Option<Arc<ConsumerInfo>>,
}

impl Chain {
    pub(crate) fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Runs the request side. `Err` is the answer to send instead of going on.
    pub(crate) async fn run(
        &self,
        req: &mut Request<InnerBody>,
        ctx: &Ctx<'_>,
    ) -> Result<Applied, Response<InnerBody>> {
        let mut applied = Applied::default();
        for p in self.policies.iter() {
            if let Some(ip) = &p.ip
                && !ip.allows(ctx.client_ip)
            {
                p.stats.ip_denied.fetch_add(1, Ordering::Relaxed);
                return Err(local(StatusCode::FORBIDDEN, "forbidden\n"));
            }
        }
        for p in self.policies.iter() {
            let Some(cors) = &p.cors else { continue };
            match cors.request(req) {
                CorsOutcome::NotCors => {}
                CorsOutcome::Preflight(response) => return Err(response),
                CorsOutcome::PreflightRefused(response) => {
                    p.stats.cors_refused.fetch_add(1, Ordering::Relaxed);
                    return Err(response);
                }
                CorsOutcome::Actual(headers) => {
                    applied.cors = Some(headers);
                    break;
                }
                CorsOutcome::OriginRefused => break,
            }
        }
        if self.has_auth {
            // Only Vane says who the consumer is.
            strip_consumer_headers(req.headers_mut());
        }
        for p in self.policies.iter() {
            let Some(auth) = &p.auth else { continue };
            match auth.authenticate(req, &p.stats).await {
                Ok(Some(consumer)) => applied.consumer = Some(consumer),
                Ok(None) => {}
                Err(response) => return Err(response),
            }
        }
        if let Some(consumer) = &applied.consumer {
            for (name, value) in consumer.headers.iter() {
                req.headers_mut().insert(name.clone(), value.clone());
            }
        }
        let now = Instant::now();
        for p in self.policies.iter() {
            let Some(rate) = &p.rate else { continue };
            let key = rate.key(req, ctx, applied.consumer.as_deref());
            let decision = rate.limiter.check(&key, now);
            if !decision.allowed {
                p.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                let mut response = local(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded\n");
                let secs = decision.retry_after.as_secs() + u64::from(decision.retry_after.subsec_nanos() > 0);
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                ratelimit_headers(response.headers_mut(), rate.limiter.limit, &decision);
                return Err(response);
            }
            // The tightest limit is the one worth telling.
            if applied.rate.is_none_or(|(_, d)| decision.remaining < d.remaining) {
                applied.rate = Some((rate.limiter.limit, decision));
            }
        }
        for p in self.policies.iter() {
            let Some(t) = &p.transform else { continue };
            t.request(req, ctx).await?;
            applied.transforms.push(p.clone());
        }
        for p in self.policies.iter() {
            p.stats.passed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(applied)
    }
}

impl Applied {
    /// Adds what the request side left to the response.
    pub(crate) async fn respond(self, response: &mut Response<InnerBody>, ctx: &Ctx<'_>) {
        if let Some(headers) = self.cors {
            for (name, value) in headers {
                response.headers_mut().append(name, value);
            }
        }
        if let Some((limit, decision)) = &self.rate {
            ratelimit_headers(response.headers_mut(), *limit, decision);
        }
        for p in &self.transforms {
            if let Some(t) = &p.transform {
                t.response(response, ctx).await;
            }
        }
    }
}

fn strip_consumer_headers(headers: &mut http::HeaderMap) {
    if !headers.keys().any(|k| k.as_str().starts_with("x-consumer")) {
        return;
    }
    let forged: Vec<HeaderName> = headers.keys().filter(|k| k.as_str().starts_with("x-consumer")).cloned().collect();
    for name in forged {
        headers.remove(name);
    }
}

/// `RateLimit-Limit`, `-Remaining`, `-Reset` (draft-ietf-httpapi-ratelimit-headers).
fn ratelimit_headers(headers: &mut http::HeaderMap, limit: u32, d: &ratelimit::Decision) {
    static LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
    static REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
    static RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
    headers.insert(LIMIT.clone(), HeaderValue::from(limit));
    headers.insert(REMAINING.clone(), HeaderValue::from(d.remaining));
    let reset = d.reset.as_secs() + u64::from(d.reset.subsec_nanos() > 0);
    headers.insert(RESET.clone(), HeaderValue::from(reset));
}

/// Allow and deny lists by CIDR.
#[derive(Debug)]
struct IpFilter {
    allow: Box<[ipnet::IpNet]>,
    deny: Box<[ipnet::IpNet]>,
}

impl IpFilter {
    fn compile(spec: &config::IpFilter) -> IpFilter {
        let nets = |list: &[String]| -> Box<[ipnet::IpNet]> { list.iter().filter_map(|c| parse_net(c)).collect() };
        IpFilter { allow: nets(&spec.allow), deny: nets(&spec.deny) }
    }

    fn allows(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

/// A CIDR, or one address as a /32 or /128.
pub(crate) fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    s.parse::<ipnet::IpNet>().ok().or_else(|| s.parse::<IpAddr>().ok().map(Into::into))
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A rate limit stage: its limiter and how the key is made.
#[derive(Debug)]
struct RateStage {
    limiter: Arc<Limiter>,
    parts: Box<[KeyPart]>,
}

#[derive(Debug)]
enum KeyPart {
    ClientIp,
    Header(HeaderName),
    Consumer,
    Route,
}

impl RateStage {
    fn compile(spec: &config::RateLimit, limiter: Arc<Limiter>) -> RateStage {
        use config::rate_limit_key::Part;
        let mut parts: Vec<KeyPart> = spec
            .key
            .iter()
            .filter_map(|k| match k.part.as_ref()? {
                Part::ClientIp(_) => Some(KeyPart::ClientIp),
                Part::Header(h) => HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok().map(KeyPart::Header),
                Part::Consumer(_) => Some(KeyPart::Consumer),
                Part::Route(_) => Some(KeyPart::Route),
            })
            .collect();
        if parts.is_empty() {
            parts.push(KeyPart::ClientIp);
        }
        RateStage { limiter, parts: parts.into() }
    }

    /// The bytes a request is counted under: its parts, each followed by a separator byte.
    fn key(&self, req: &Request<InnerBody>, ctx: &Ctx<'_>, consumer: Option<&ConsumerInfo>) -> Vec<u8> {
        let mut key = Vec::with_capacity(32);
        for part in self.parts.iter() {
            match part {
                KeyPart::ClientIp => match canonical(ctx.client_ip) {
                    IpAddr::V4(v4) => key.extend_from_slice(&v4.octets()),
                    IpAddr::V6(v6) => key.extend_from_slice(&v6.octets()),
                },
                KeyPart::Header(name) => {
                    key.extend_from_slice(req.headers().get(name).map_or(&b""[..], HeaderValue::as_bytes));
                }
                KeyPart::Consumer => key.extend_from_slice(consumer.map_or("", |c| &*c.name).as_bytes()),
                KeyPart::Route => key.extend_from_slice(ctx.route.as_bytes()),
            }
            key.push(0xff);
        }
        key
    }
}

/// The real client address: the peer, or, when the peer is a trusted proxy, the nearest
/// `X-Forwarded-For` hop (from the right) that is not itself trusted.
pub(crate) fn client_ip(peer: IpAddr, headers: &http::HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let trusts = |ip: &IpAddr| trusted.iter().any(|n| n.contains(&canonical(*ip)));
    if !trusts(&peer) {
        return peer;
    }
    let mut last = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(value) = value.to_str() else { return last };
        for hop in value.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else { return last };
            if !trusts(&ip) {
                return ip;
            }
            last = ip;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ip_walks_trusted_hops_from_the_right() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = http::HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1, 2.2.2.2".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.3".parse().unwrap());
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &trusted), "2.2.2.2".parse::<IpAddr>().unwrap());
        let outsider: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(client_ip(outsider, &h, &trusted), outsider, "an untrusted peer is the client");
    }

    #[test]
    fn deny_wins_and_allow_lists_restrict() {
        let f =
            IpFilter::compile(&config::IpFilter { allow: vec!["10.0.0.0/8".into()], deny: vec!["10.0.0.66".into()] });
        assert!(f.allows("10.1.2.3".parse().unwrap()));
        assert!(f.allows("::ffff:10.1.2.3".parse().unwrap()), "mapped addresses compare as IPv4");
        assert!(!f.allows("10.0.0.66".parse().unwrap()));
        assert!(!f.allows("192.168.1.1".parse().unwrap()));
    }
}
