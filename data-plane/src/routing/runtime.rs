//! A snapshot compiled for the hot path: routers per listener slot and clusters, all
//! immutable. Built off the request path, swapped in whole with one `ArcSwap::store`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use vane_proto::config::{Config, listener::Protocol, route};

use crate::observe::accesslog::Sink;
use crate::observe::metrics::MetricsBuilder;
use crate::policy::Policies;
use crate::routing::actions::{Direct, HeaderRules, PathRewrite, Redirect, RetryPolicy};
use crate::routing::router::{Conditions, Route, RouteAction, RouteEntry, Router, WeightedClusters};
use crate::support::duration_or;
use crate::tls::{Material, ServerTls};
use crate::upstream::cluster::{Cluster, ClusterRegistry};

/// Route timeout when a route sets none (Envoy's default).
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait between two reads of a request body when a route sets none: a client
/// silent this long is cut off, in its head (the listener's `request_headers_timeout`,
/// 30 s by default) or in its body alike.
pub(crate) const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the node loaded for a snapshot besides the config: access log sinks by listener
/// name, and TLS material.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loaded<'a> {
    pub(crate) access_logs: &'a HashMap<String, Arc<Sink>>,
    pub(crate) tls: &'a Material,
    pub(crate) policies: &'a Policies,
    /// The node's cache stores for this snapshot.
    pub(crate) caches: &'a crate::cache::Prepared,
}

/// What requests run against.
#[derive(Debug)]
pub(crate) struct Runtime {
    pub(crate) version: u64,
    pub(crate) sha256: String,
    /// Router of each listener, by listener slot id.
    pub(crate) listeners: crate::routing::router::FastMap<u64, Router>,
    pub(crate) clusters: HashMap<Arc<str>, Arc<Cluster>>,
    /// TLS termination of each HTTPS listener, by slot id.
    pub(crate) tls: HashMap<u64, Arc<ServerTls>>,
    /// The compiled policies (their counters feed `/metrics`).
    pub(crate) policies: Policies,
}

impl Runtime {
    /// Compiles a validated config. `slots` maps listener names to their socket slots;
    /// `previous` lends state (pools, round-robin cursors) to unchanged clusters.
    pub(crate) fn compile(
        version: u64,
        sha256: String,
        config: &Config,
        slots: &HashMap<String, u64>,
        previous: Option<&Runtime>,
        metrics: &mut MetricsBuilder<'_>,
        loaded: &Loaded<'_>,
    ) -> Runtime {
        let Loaded { access_logs, tls, policies, caches } = *loaded;
        let listener_policies: HashMap<&str, &[String]> =
            config.listeners.iter().map(|l| (l.name.as_str(), l.policies.as_slice())).collect();
        let empty = HashMap::new();
        let registry = ClusterRegistry::new(previous.map_or(&empty, |p| &p.clusters));
        let clusters: HashMap<Arc<str>, Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|c| registry.build(c, metrics.cluster(&c.name), tls.upstreams.get(&c.name)))
            .map(|c| (c.name.clone(), c))
            .collect();

        let http_listeners: Vec<&str> = config
            .listeners
            .iter()
            .filter(|l| l.protocol == Protocol::Http as i32 || l.protocol == Protocol::Https as i32)
            .map(|l| l.name.as_str())
            .collect();
        let mut routers: crate::routing::router::FastMap<u64, Router> = config
            .listeners
            .iter()
            .filter_map(|l| {
                let mut router = Router::new(
                    l.name.as_str().into(),
                    metrics.route(&l.name, "", ""),
                    access_logs.get(&l.name).cloned(),
                );
                router.trusted_proxies = l
                    .trusted_proxies
                    .iter()
                    .filter_map(|c| {
                        c.parse::<ipnet::IpNet>().ok().or_else(|| c.parse::<std::net::IpAddr>().ok().map(Into::into))
                    })
                    .collect();
                router.https_redirect_port = u16::try_from(l.https_redirect_port).ok().filter(|p| *p != 0);
                router.client_cert_header = tls.servers.get(&l.name).and_then(|t| t.forward_header.clone());
                router.policies = policies.chain(&l.policies, &[]);
                if http_listeners.contains(&l.name.as_str()) {
                    router.cancelled = metrics.cancelled(&l.name);
                }
                Some((*slots.get(&l.name)?, router))
            })
            .collect();
        for (order, r) in config.routes.iter().enumerate() {
            let Some(m) = r.r#match.as_ref() else { continue };
            let mirror = match &r.action {
                Some(route::Action::Forward(f)) => f
                    .mirror
                    .as_ref()
                    .and_then(|m| Some((clusters.get(m.cluster.as_str())?.clone(), m.percent.unwrap_or(100)))),
                _ => None,
            };
            let (max_request_bytes, replay_body_bytes) = match &r.action {
                Some(route::Action::Forward(f)) => (
                    f.max_request_bytes,
                    f.replay_body_bytes.map_or(crate::http::replay::DEFAULT_REPLAY_BODY_BYTES, u64::from),
                ),
                _ => (0, 0),
            };
            let (request_body_timeout, max_response_bytes) = match &r.action {
                Some(route::Action::Forward(f)) => {
                    (duration_or(f.request_body_timeout.as_ref(), DEFAULT_REQUEST_BODY_TIMEOUT), f.max_response_bytes)
                }
                _ => (DEFAULT_REQUEST_BODY_TIMEOUT, 0),
            };
            let retry = match &r.action {
                Some(route::Action::Forward(f)) => {
                    RetryPolicy::of(f.retry.as_ref(), duration_or(f.timeout.as_ref(), DEFAULT_ROUTE_TIMEOUT))
                }
                _ => None,
            };
            let (forward, timeout, action) = match &r.action {
                Some(route::Action::Forward(f)) => {
                    let weighted = f
                        .clusters
                        .iter()
                        .filter_map(|wc| clusters.get(wc.name.as_str()).map(|c| (wc.weight, c.clone())))
                        .collect();
                    let host = (!f.host_rewrite.is_empty())
                        .then(|| http::HeaderValue::from_str(&f.host_rewrite).ok())
                        .flatten();
                    let action = RouteAction::Forward { rewrite: PathRewrite::compile(m, f), host };
                    (WeightedClusters::new(weighted), duration_or(f.timeout.as_ref(), DEFAULT_ROUTE_TIMEOUT), action)
                }
                Some(route::Action::Redirect(rd)) => (
                    WeightedClusters::new(vec![]),
                    DEFAULT_ROUTE_TIMEOUT,
                    RouteAction::Redirect(Redirect::compile(m, rd)),
                ),
                Some(route::Action::DirectResponse(d)) => {
                    (WeightedClusters::new(vec![]), DEFAULT_ROUTE_TIMEOUT, RouteAction::Direct(Direct::compile(d)))
                }
                None => continue,
            };
            let compiled = Arc::new(Route {
                name: r.name.as_str().into(),
                timeout,
                forward,
                conditions: Conditions::compile(m),
                action,
                retry,
                max_request_bytes,
                replay_body_bytes,
                request_body_timeout,
                max_response_bytes,
                mirror,
                request_headers: HeaderRules::compile(r.request_headers.as_ref()),
                response_headers: HeaderRules::compile(r.response_headers.as_ref()),
                cache: (!r.cache.is_empty()).then(|| caches.route(&r.name, &r.cache)).flatten(),
            });
            let attached: Vec<&str> = if r.listeners.is_empty() {
                http_listeners.clone()
            } else {
                r.listeners.iter().map(String::as_str).collect()
            };
            for listener in attached {
                let Some(router) = slots.get(listener).and_then(|slot| routers.get_mut(slot)) else { continue };
                // Routes without clusters (redirects, direct responses) count under cluster "".
                let mut stats: Vec<_> =
                    compiled.forward.clusters().map(|c| metrics.route(listener, &r.name, &c.name)).collect();
                if stats.is_empty() {
                    stats.push(metrics.route(listener, &r.name, ""));
                }
                let chain = policies.chain(listener_policies.get(listener).copied().unwrap_or_default(), &r.policies);
                router.add(m, Arc::new(RouteEntry::new(compiled.clone(), stats.into(), order, chain)));
            }
        }
        for router in routers.values_mut() {
            router.finish();
        }
        let servers = config
            .listeners
            .iter()
            .filter_map(|l| Some((*slots.get(&l.name)?, tls.servers.get(&l.name)?.clone())))
            .collect();
        Runtime { version, sha256, listeners: routers, clusters, tls: servers, policies: policies.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::Metrics;
    use vane_proto::{Format, load};

    #[tokio::test]
    async fn routes_attach_to_their_listeners_or_to_every_http_listener() {
        let config = load(
            "listeners:\n  - {name: a, address: '127.0.0.1:0'}\n  - {name: b, address: '127.0.0.1:0'}\n\
             clusters:\n  - {name: c, endpoints: [{address: '127.0.0.1:1'}]}\n\
             routes:\n  - {name: only-b, listeners: [b], match: {prefix: /b}, forward: {clusters: [{name: c}]}}\n\
             \x20 - {name: everywhere, match: {prefix: /}, forward: {clusters: [{name: c}]}}\n",
            Format::Yaml,
        )
        .unwrap();
        let slots = HashMap::from([("a".to_owned(), 1), ("b".to_owned(), 2)]);
        let metrics = Metrics::default();
        let rt = metrics.rebuild(|m| {
            Runtime::compile(
                1,
                String::new(),
                &config,
                &slots,
                None,
                m,
                &Loaded {
                    access_logs: &HashMap::new(),
                    tls: &Material::default(),
                    policies: &Policies::default(),
                    caches: &Default::default(),
                },
            )
        });
        let route = |slot: u64, path: &str| {
            let req = http::Request::get(path).body(()).unwrap();
            rt.listeners[&slot].find(&req).map(|f| f.entry.route.name.to_string())
        };
        assert_eq!(route(1, "/b/x").as_deref(), Some("everywhere"));
        assert_eq!(route(2, "/b/x").as_deref(), Some("only-b"));
        assert_eq!(route(2, "/c").as_deref(), Some("everywhere"));
    }
}
