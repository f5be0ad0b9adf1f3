//! Route selection for one listener, compiled once per snapshot.
//!
//! Lookup never scans the route list: the request's host picks one path table (exact
//! host, else the longest matching `*.` wildcard, else the routes without hosts: no fall
//! through between them, as with Envoy's virtual hosts and Gateway API hostnames). In the
//! table, the path is tried as an exact key (hash map), then against templates (a
//! `matchit` radix tree), then walked once through a byte trie of prefixes (longest match
//! first), then against regexes in config order. Every path key holds its routes ordered
//! by specificity (a method match, then more header matches, then more query matches,
//! then config order); the first whose method, header and query conditions hold wins.

use std::collections::HashMap;

/// Maps looked up on every request: foldhash instead of SipHash (seeded per process, a
/// fraction of the cost on short keys). Keys come from the config, never from requests,
/// so hash flooding cannot grow them.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Request};
use regex::Regex;
use tracing::warn;
use vane_proto::config::{self, route_match};

use crate::observe::accesslog::Sink;
use crate::observe::metrics::RouteStats;
use crate::policy::Chain;
use crate::routing::actions::{Direct, HeaderRules, PathRewrite, Redirect};
use crate::tls::TlsInfo;
use crate::upstream::cluster::Cluster;

/// A compiled route.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) name: Arc<str>,
    pub(crate) timeout: Duration,
    /// Empty unless the action is a forward.
    pub(crate) forward: WeightedClusters,
    pub(crate) conditions: Conditions,
    pub(crate) action: RouteAction,
    /// Retries of forwards (None: one try).
    pub(crate) retry: Option<crate::routing::actions::RetryPolicy>,
    /// Largest request body forwarded (0: any).
    pub(crate) max_request_bytes: u64,
    /// Largest request body kept for a retry or a mirror (0: none).
    pub(crate) replay_body_bytes: u64,
    /// Longest wait for the next bytes of a request body.
    pub(crate) request_body_timeout: Duration,
    /// Largest response body passed to the client (0: any).
    pub(crate) max_response_bytes: u64,
    /// Shadow cluster and the share of requests (percent) copied to it.
    pub(crate) mirror: Option<(Arc<Cluster>, u32)>,
    pub(crate) request_headers: HeaderRules,
    pub(crate) response_headers: HeaderRules,
    /// The cache resource this route's responses go through (forwards only).
    pub(crate) cache: Option<Arc<crate::cache::RouteCache>>,
}

/// What a route does with a request it takes.
#[derive(Debug)]
pub(crate) enum RouteAction {
    Forward { rewrite: PathRewrite, host: Option<http::HeaderValue> },
    Redirect(Redirect),
    Direct(Direct),
}

/// A route a request takes, with what a template path captured.
#[derive(Debug)]
pub(crate) struct Found<'a> {
    pub(crate) entry: &'a Arc<RouteEntry>,
    pub(crate) params: Vec<(Box<str>, Box<str>)>,
}

/// One or more clusters with cumulative weights.
#[derive(Debug)]
pub(crate) struct WeightedClusters {
    /// `(cumulative weight, cluster)`, ascending.
    clusters: Box<[(u32, Arc<Cluster>)]>,
}

impl WeightedClusters {
    pub(crate) fn new(clusters: Vec<(u32, Arc<Cluster>)>) -> WeightedClusters {
        let mut total = 0u32;
        let clusters = clusters
            .into_iter()
            .map(|(w, c)| {
                total = total.saturating_add(w.max(1));
                (total, c)
            })
            .collect();
        WeightedClusters { clusters }
    }

    /// The cluster for the next request and its index in the route's list.
    pub(crate) fn pick(&self) -> Option<(usize, &Arc<Cluster>)> {
        match &*self.clusters {
            [] => None,
            [(_, only)] => Some((0, only)),
            many => {
                let total = many.last().map_or(1, |(t, _)| *t);
                let roll = rand::random_range(0..total);
                many.iter().position(|(cumulative, _)| roll < *cumulative).and_then(|i| Some((i, &many.get(i)?.1)))
            }
        }
    }

    /// The clusters, in config order.
    pub(crate) fn clusters(&self) -> impl Iterator<Item = &Arc<Cluster>> {
        self.clusters.iter().map(|(_, c)| c)
    }
}

/// A value condition of a header or query match.
#[derive(Debug)]
enum ValueMatch {
    Exact(Box<str>),
    Regex(Regex),
    Present(bool),
}

/// What a request must also satisfy besides its path.
#[derive(Debug, Default)]
pub(crate) struct Conditions {
    methods: Box<[Method]>,
    headers: Box<[(http::HeaderName, ValueMatch)]>,
    query: Box<[(Box<str>, ValueMatch)]>,
    /// SNI patterns and client certificate names (HTTPS listeners).
    sni: Box<[String]>,
    client_names: Box<[String]>,
}

impl Conditions {
    /// Compiles validated matchers; anything that still fails to compile is dropped with
    /// a warning rather than failing the snapshot (the validator refuses it first).
    pub(crate) fn compile(m: &config::RouteMatch) -> Conditions {
        let value = |exact: Option<&String>, regex: Option<&String>, present: Option<bool>| -> Option<ValueMatch> {
            if let Some(e) = exact {
                return Some(ValueMatch::Exact(e.as_str().into()));
            }
            if let Some(r) = regex {
                return vane_proto::full_match_regex(r)
                    .inspect_err(|error| warn!(%error, "regex dropped"))
                    .ok()
                    .map(ValueMatch::Regex);
            }
            present.map(ValueMatch::Present)
        };
        let headers = m
            .headers
            .iter()
            .filter_map(|h| {
                use config::header_match::Match;
                let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).ok()?;
                let v = match &h.r#match {
                    Some(Match::Exact(e)) => value(Some(e), None, None),
                    Some(Match::Regex(r)) => value(None, Some(r), None),
                    Some(Match::Present(p)) => value(None, None, Some(*p)),
                    None => None,
                }?;
                Some((name, v))
            })
            .collect();
        let query = m
            .query
            .iter()
            .filter_map(|q| {
                use config::query_match::Match;
                let v = match &q.r#match {
                    Some(Match::Exact(e)) => value(Some(e), None, None),
                    Some(Match::Regex(r)) => value(None, Some(r), None),
                    Some(Match::Present(p)) => value(None, None, Some(*p)),
                    None => None,
                }?;
                Some((q.name.as_str().into(), v))
            })
            .collect();
        let methods = m.methods.iter().filter_map(|s| Method::from_bytes(s.as_bytes()).ok()).collect();
        Conditions { methods, headers, query, sni: m.sni.clone().into(), client_names: m.client_names.clone().into() }
    }

    /// Sort key: routes with a method match first, then more header, then more query matches.
    fn specificity(&self) -> (bool, usize, usize) {
        let tls = usize::from(!self.sni.is_empty()) + usize::from(!self.client_names.is_empty());
        (!self.methods.is_empty(), self.headers.len() + tls, self.query.len())
    }

    fn matches(&self, method: &Method, headers: &HeaderMap, query: Option<&str>, tls: Option<&TlsInfo>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(method) {
            return false;
        }
        if !self.sni.is_empty() && !tls.is_some_and(|t| t.sni_matches(&self.sni)) {
            return false;
        }
        if !self.client_names.is_empty() && !tls.is_some_and(|t| t.client_named(&self.client_names)) {
            return false;
        }
        let headers_ok = self.headers.iter().all(|(name, want)| {
            let mut values = headers.get_all(name).iter();
            match want {
                ValueMatch::Present(present) => values.next().is_some() == *present,
                ValueMatch::Exact(e) => values.any(|v| v.as_bytes() == e.as_bytes()),
                ValueMatch::Regex(re) => values.any(|v| v.to_str().is_ok_and(|v| re.is_match(v))),
            }
        });
        headers_ok
            && self.query.iter().all(|(name, want)| {
                // Raw (not percent-decoded) names and values, as the request sent them.
                let mut values = query
                    .unwrap_or("")
                    .split('&')
                    .filter_map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        (k == &**name).then_some(v)
                    })
                    .peekable();
                match want {
                    ValueMatch::Present(present) => values.peek().is_some() == *present,
                    ValueMatch::Exact(e) => values.any(|v| v == &**e),
                    ValueMatch::Regex(re) => values.any(|v| re.is_match(v)),
                }
            })
    }
}

/// A route as one listener holds it: with that listener's metrics, one per cluster of
/// the route (same order as `forward`).
#[derive(Debug)]
pub(crate) struct RouteEntry {
    pub(crate) route: Arc<Route>,
    pub(crate) stats: Box<[Arc<RouteStats>]>,
    /// Position in the config, for ties.
    order: usize,
    /// The listener's policies, then the route's.
    pub(crate) chain: Chain,
}

impl RouteEntry {
    pub(crate) fn new(route: Arc<Route>, stats: Box<[Arc<RouteStats>]>, order: usize, chain: Chain) -> RouteEntry {
        RouteEntry { route, stats, order, chain }
    }
}

type Candidates = Vec<Arc<RouteEntry>>;

/// One node of the prefix trie: children by next byte (sorted), routes ending here.
#[derive(Debug, Default)]
struct TrieNode {
    children: Vec<(u8, u32)>,
    /// `(segment-aware, route)`.
    routes: Vec<(bool, Arc<RouteEntry>)>,
}

/// The routes for one host (or for any host).
#[derive(Debug, Default)]
struct PathTable {
    exact: FastMap<Box<str>, Candidates>,
    pending_templates: Vec<(Box<str>, Arc<RouteEntry>)>,
    templates: matchit::Router<Candidates>,
    has_templates: bool,
    trie: Vec<TrieNode>,
    regexes: Vec<(Regex, Arc<RouteEntry>)>,
}

fn by_specificity(a: &Arc<RouteEntry>, b: &Arc<RouteEntry>) -> std::cmp::Ordering {
    let (ka, kb) = (a.route.conditions.specificity(), b.route.conditions.specificity());
    kb.cmp(&ka).then(a.order.cmp(&b.order))
}

impl PathTable {
    fn add(&mut self, path: &route_match::Path, entry: Arc<RouteEntry>) {
        match path {
            route_match::Path::Exact(p) => self.exact.entry(p.as_str().into()).or_default().push(entry),
            route_match::Path::Template(t) => self.pending_templates.push((t.as_str().into(), entry)),
            route_match::Path::Prefix(p) => self.add_prefix(p, false, entry),
            route_match::Path::PathSeparatedPrefix(p) => self.add_prefix(p, true, entry),
            route_match::Path::Regex(r) => match vane_proto::full_match_regex(r) {
                Ok(re) => self.regexes.push((re, entry)),
                Err(error) => warn!(route = %entry.route.name, %error, "regex route dropped"),
            },
        }
    }

    fn add_prefix(&mut self, prefix: &str, segment_aware: bool, entry: Arc<RouteEntry>) {
        if self.trie.is_empty() {
            self.trie.push(TrieNode::default());
        }
        let mut node = 0usize;
        for b in prefix.bytes() {
            let next = match self.trie[node].children.binary_search_by_key(&b, |(c, _)| *c) {
                Ok(i) => self.trie[node].children[i].1 as usize,
                Err(i) => {
                    let id = self.trie.len();
                    self.trie.push(TrieNode::default());
                    self.trie[node].children.insert(i, (b, u32::try_from(id).unwrap_or(u32::MAX)));
                    id
                }
            };
            node = next;
        }
        self.trie[node].routes.push((segment_aware, entry));
    }

    fn finish(&mut self) {
        for candidates in self.exact.values_mut() {
            candidates.sort_by(by_specificity);
        }
        for node in &mut self.trie {
            node.routes.sort_by(|a, b| by_specificity(&a.1, &b.1));
        }
        self.regexes.sort_by_key(|(_, e)| e.order);
        let mut grouped: Vec<(Box<str>, Candidates)> = Vec::new();
        for (template, entry) in self.pending_templates.drain(..) {
            match grouped.iter_mut().find(|(t, _)| *t == template) {
                Some((_, c)) => c.push(entry),
                None => grouped.push((template, vec![entry])),
            }
        }
        for (template, mut candidates) in grouped {
            candidates.sort_by(by_specificity);
            match self.templates.insert(&*template, candidates) {
                Ok(()) => self.has_templates = true,
                Err(error) => warn!(%template, %error, "template route dropped"),
            }
        }
    }

    fn find(&self, path: &str, ok: impl Fn(&RouteEntry) -> bool) -> Option<Found<'_>> {
        let found = |entry| Found { entry, params: Vec::new() };
        if let Some(entry) = self.exact.get(path).and_then(|c| c.iter().find(|e| ok(e))) {
            return Some(found(entry));
        }
        if self.has_templates
            && let Ok(m) = self.templates.at(path)
            && let Some(entry) = m.value.iter().find(|e| ok(e))
        {
            let params = m.params.iter().map(|(k, v)| (k.into(), v.into())).collect();
            return Some(Found { entry, params });
        }
        if !self.trie.is_empty()
            && let Some(entry) = self.find_prefix(path, &ok)
        {
            return Some(found(entry));
        }
        self.regexes.iter().find(|(re, e)| re.is_match(path) && ok(e)).map(|(_, e)| found(e))
    }

    /// Walks the path through the trie once, then tries the deepest prefix first.
    fn find_prefix(&self, path: &str, ok: &impl Fn(&RouteEntry) -> bool) -> Option<&Arc<RouteEntry>> {
        let bytes = path.as_bytes();
        // (node, bytes matched) of every node on the walk that ends routes; small paths,
        // so a fixed inline stack avoids an allocation for all but very deep walks.
        let mut hits: smallvec_lite::Stack = smallvec_lite::Stack::default();
        let mut node = 0usize;
        let root = self.trie.first()?;
        if !root.routes.is_empty() {
            hits.push((0, 0));
        }
        for (depth, b) in bytes.iter().enumerate() {
            let Some(current) = self.trie.get(node) else { break };
            let Ok(i) = current.children.binary_search_by_key(b, |(c, _)| *c) else { break };
            node = current.children[i].1 as usize;
            if self.trie.get(node).is_some_and(|n| !n.routes.is_empty()) {
                hits.push((node, depth + 1));
            }
        }
        for &(node, matched) in hits.iter().rev() {
            let boundary = matched == bytes.len()
                || bytes.get(matched) == Some(&b'/')
                || bytes.get(matched.wrapping_sub(1)) == Some(&b'/');
            let routes = &self.trie.get(node)?.routes;
            if let Some((_, e)) = routes.iter().find(|(segment_aware, e)| (!segment_aware || boundary) && ok(e)) {
                return Some(e);
            }
        }
        None
    }
}

/// A tiny stack that stays inline for the usual handful of prefix hits.
mod smallvec_lite {
    const INLINE: usize = 16;

    #[derive(Debug, Default)]
    pub(super) struct Stack {
        inline: [(usize, usize); INLINE],
        len: usize,
        spill: Vec<(usize, usize)>,
    }

    impl Stack {
        pub(super) fn push(&mut self, v: (usize, usize)) {
            if self.len < INLINE {
                self.inline[self.len] = v;
                self.len += 1;
            } else {
                self.spill.push(v);
            }
        }

        pub(super) fn iter(&self) -> impl DoubleEndedIterator<Item = &(usize, usize)> {
            self.inline[..self.len].iter().chain(self.spill.iter())
        }
    }
}

/// The routes of one listener.
#[derive(Debug)]
pub(crate) struct Router {
    hosts: FastMap<Box<str>, PathTable>,
    /// `*.example.com` kept as `.example.com`.
    wildcards: FastMap<Box<str>, PathTable>,
    any: PathTable,
    /// Metrics of requests no route took (and requests refused before routing).
    pub(crate) unrouted: Arc<RouteStats>,
    /// Requests whose client gave up before their answer (carried across swaps).
    pub(crate) cancelled: Arc<std::sync::atomic::AtomicU64>,
    /// The listener's name, for logs and metrics.
    pub(crate) listener: Arc<str>,
    /// Where the listener's access log goes, when it has one.
    pub(crate) access_log: Option<Arc<Sink>>,
    /// Peers whose forwarding headers are kept.
    pub(crate) trusted_proxies: Box<[ipnet::IpNet]>,
    /// HTTP listeners that only redirect to HTTPS: the port to redirect to.
    pub(crate) https_redirect_port: Option<u16>,
    /// Header carrying the verified client certificate upstream (HTTPS with client auth).
    pub(crate) client_cert_header: Option<http::HeaderName>,
    /// The listener's own policies (for requests no route takes).
    pub(crate) policies: Chain,
}

/// The request's host, without port, lower case (borrowed unless it had upper case).
fn request_host<B>(req: &Request<B>) -> Option<std::borrow::Cow<'_, str>> {
    let raw = match req.headers().get(http::header::HOST) {
        Some(h) => h.to_str().ok()?,
        None => req.uri().host()?,
    };
    let host = if raw.starts_with('[') {
        raw.split_once(']').map_or(raw, |(h, _)| &raw[..h.len() + 1])
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(std::borrow::Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(std::borrow::Cow::Borrowed(host))
    }
}

impl Router {
    pub(crate) fn new(listener: Arc<str>, unrouted: Arc<RouteStats>, access_log: Option<Arc<Sink>>) -> Router {
        Router {
            hosts: FastMap::default(),
            wildcards: FastMap::default(),
            any: PathTable::default(),
            unrouted,
            cancelled: Arc::default(),
            listener,
            access_log,
            trusted_proxies: Box::new([]),
            https_redirect_port: None,
            client_cert_header: None,
            policies: Chain::default(),
        }
    }

    /// Whether `ip` is one of the listener's trusted proxies.
    pub(crate) fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// Adds a route under each of its hosts (or any host); call in config order.
    pub(crate) fn add(&mut self, m: &config::RouteMatch, entry: Arc<RouteEntry>) {
        let Some(path) = &m.path else { return };
        if m.hosts.is_empty() {
            self.any.add(path, entry);
            return;
        }
        for host in &m.hosts {
            let table = match host.strip_prefix('*') {
                Some(suffix) => self.wildcards.entry(suffix.into()).or_default(),
                None => self.hosts.entry(host.as_str().into()).or_default(),
            };
            table.add(path, entry.clone());
        }
    }

    /// Orders candidates and builds the template trees; call once after the last `add`.
    pub(crate) fn finish(&mut self) {
        self.any.finish();
        for table in self.hosts.values_mut().chain(self.wildcards.values_mut()) {
            table.finish();
        }
    }

    fn table<B>(&self, req: &Request<B>) -> &PathTable {
        if self.hosts.is_empty() && self.wildcards.is_empty() {
            return &self.any;
        }
        let Some(host) = request_host(req) else { return &self.any };
        if let Some(t) = self.hosts.get(&*host) {
            return t;
        }
        // Longest wildcard suffix first: `.b.example.com` before `.example.com`.
        let mut rest = &*host;
        while let Some(dot) = rest.find('.') {
            let suffix = &rest[dot..];
            if let Some(t) = self.wildcards.get(suffix) {
                return t;
            }
            rest = &rest[dot + 1..];
        }
        &self.any
    }

    /// The route a request takes.
    pub(crate) fn find<B>(&self, req: &Request<B>) -> Option<Found<'_>> {
        self.find_with(req, None)
    }

    /// The route for a request on a connection with this TLS state.
    pub(crate) fn find_with<B>(&self, req: &Request<B>, tls: Option<&TlsInfo>) -> Option<Found<'_>> {
        let (method, headers, query) = (req.method(), req.headers(), req.uri().query());
        self.table(req).find(req.uri().path(), |e| e.route.conditions.matches(method, headers, query, tls))
    }
}

#[cfg(test)]
mod tests;
