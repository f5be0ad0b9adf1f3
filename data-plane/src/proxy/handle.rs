//! Request handling: the runtime loaded once, the route found, its policies run, then a
//! local answer or the forward.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Body;

use crate::http::body::BodyFault;
use crate::http::body::Counting;
use crate::http::body::InnerBody;
use crate::http::body::local;
use crate::http::headers::{Downstream, X_REQUEST_ID};
use crate::observe::metrics::{self, Outcome, RouteStats};
use crate::policy;
use crate::routing::actions::{PathRewrite, Vars};
use crate::routing::router::{Found, RouteAction};
use crate::routing::runtime::DEFAULT_REQUEST_BODY_TIMEOUT;

use super::connection::Connection;
use super::finish::{Finish, Finishing, ProxyBody, Upstream, draft_line};
use super::forward::{Edits, forward, take_upgrade, with_path};
use super::limits::hold;

impl Connection {
    /// Answers one request (its body as [`crate::http::body::streamed`] makes it, or held
    /// whole in memory).
    pub(crate) async fn handle(self, mut req: Request<InnerBody>) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let runtime = self.shared.runtime.load_full();
        let Some(router) = runtime.as_ref().and_then(|rt| rt.listeners.get(&self.slot)) else {
            // No config yet, or a request on a listener that is being removed.
            let response = match runtime {
                None => local(StatusCode::SERVICE_UNAVAILABLE, "no configuration yet\n"),
                Some(_) => local(StatusCode::NOT_FOUND, "no route\n"),
            };
            return Ok(response.map(|body| Finishing::new(body, None)));
        };
        if let Some(refusal) = refuse(&req) {
            router.unrouted.record(&Outcome {
                status: refusal.status().as_u16(),
                method: metrics::method_index(req.method()),
                total: start.elapsed(),
                upstream: None,
                bytes_in: 0,
                bytes_out: 0,
            });
            return Ok(refusal.map(|body| Finishing::new(body, None)));
        }
        let method = metrics::method_index(req.method());
        #[cfg(feature = "otlp")]
        let trace = self.shared.tracing.as_ref().map(|t| {
            let cx = t.start_request(req.headers(), req.method(), req.uri().path());
            t.inject(&cx, req.headers_mut());
            cx
        });
        #[cfg(not(feature = "otlp"))]
        let _ = &mut req;
        let draft = router.access_log.as_ref().map(|sink| Box::new((sink.clone(), draft_line(&req, self.peer))));
        // Bodiless requests (most GETs) need no shared byte counter.
        let bytes_in = (!req.body().is_end_stream()).then(|| Arc::new(AtomicU64::new(0)));
        if let Some(port) = router.https_redirect_port {
            return Ok(to_https(&req, port).map(|body| Finishing::new(body, None)));
        }
        if let Some(name) = &router.client_cert_header {
            // Only Vane vouches for a client certificate: a client's own value never passes.
            req.headers_mut().remove(name);
            if let Some(client) = self.tls.as_ref().and_then(|t| t.client.as_ref()) {
                req.headers_mut().insert(name.clone(), client.header.clone());
            }
        }
        let (stats, route, cluster, response, upstream) = match router.find_with(&req, self.tls.as_deref()) {
            None => {
                let refused = match router.policies.is_empty() {
                    true => None,
                    false => {
                        let client_ip = policy::client_ip(self.peer.ip(), req.headers(), &router.trusted_proxies);
                        let ctx = policy::Ctx { client_ip, route: "", body_timeout: DEFAULT_REQUEST_BODY_TIMEOUT };
                        Box::pin(router.policies.run(&mut req, &ctx)).await.err()
                    }
                };
                let response = refused.unwrap_or_else(|| local(StatusCode::NOT_FOUND, "no route\n"));
                (router.unrouted.clone(), None, None, response, None)
            }
            Some(found) => {
                let downstream = Downstream { trusted_proxy: router.trusts(self.peer.ip()), tls: self.tls.is_some() };
                if found.entry.chain.is_empty() {
                    self.serve(found, req, bytes_in.clone(), downstream).await
                } else {
                    // Boxed: policy futures (auth calls, body transforms) are large, and this
                    // future is moved on every request; routes without policies skip the box.
                    Box::pin(self.take_with_policies(router, found, req, bytes_in.clone(), downstream)).await
                }
            }
        };
        let finish = Finish {
            start,
            stats,
            method,
            status: response.status().as_u16(),
            upstream,
            bytes_in,
            draft,
            listener: router.listener.clone(),
            route,
            cluster,
            #[cfg(feature = "otlp")]
            trace,
        };
        Ok(response.map(|body| Finishing::new(body, Some(finish))))
    }
}

/// The 308 of an HTTP listener that redirects to HTTPS: same host (new port), path and
/// query. A request without a host gets 400.
fn to_https<B>(req: &Request<B>, port: u16) -> Response<InnerBody> {
    let Some(host) = host_of(req) else {
        return local(StatusCode::BAD_REQUEST, "a host is required\n");
    };
    let name = if host.starts_with('[') {
        host.split_once(']').map_or(host, |(h, _)| &host[..h.len() + 1])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 { format!("https://{name}{path}") } else { format!("https://{name}:{port}{path}") };
    let mut response = local(StatusCode::PERMANENT_REDIRECT, "");
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            response.headers_mut().insert(header::LOCATION, v);
            response
        }
        Err(_) => local(StatusCode::BAD_REQUEST, "bad host\n"),
    }
}

/// Requests refused before routing. The HTTP/1 servers (`server`, or hyper's for what it
/// hands over) have already answered malformed heads (400), oversized ones (431), bad or
/// conflicting `Content-Length`, and [`crate::server::admission`] the framing rules (`Host`,
/// `Transfer-Encoding`, malformed chunked bodies). Left here: CONNECT, and targets that
/// are not paths. The connection is closed after the answer.
fn refuse<B>(req: &Request<B>) -> Option<Response<InnerBody>> {
    let (status, why) = if req.method() == http::Method::CONNECT {
        (StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not served here\n")
    } else if !(req.uri().path().starts_with('/') || req.method() == http::Method::OPTIONS && req.uri() == "*") {
        (StatusCode::BAD_REQUEST, "request target must be a path\n")
    } else {
        return None;
    };
    let mut response = local(status, why);
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    Some(response)
}

/// What a routed request produced: its metrics handle, route and cluster names, the
/// response, and upstream details when it was forwarded.
pub(super) type Taken = (Arc<RouteStats>, Option<Arc<str>>, Option<Arc<str>>, Response<InnerBody>, Option<Upstream>);

/// The request's host as sent (port included).
pub(super) fn host_of<B>(req: &Request<B>) -> Option<&str> {
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| req.uri().authority().map(|a| a.as_str()))
}

impl Connection {
    /// Runs a route's policies, then its action, then the policies' response side.
    async fn take_with_policies(
        &self,
        router: &crate::routing::router::Router,
        found: Found<'_>,
        mut req: Request<InnerBody>,
        bytes_in: Option<Arc<AtomicU64>>,
        downstream: Downstream,
    ) -> Taken {
        // `found` goes to `take`; the route stays reachable for the response side.
        let entry = found.entry.clone();
        let client_ip = policy::client_ip(self.peer.ip(), req.headers(), &router.trusted_proxies);
        let ctx = policy::Ctx { client_ip, route: &entry.route.name, body_timeout: entry.route.request_body_timeout };
        match entry.chain.run(&mut req, &ctx).await {
            Err(refusal) => {
                let stats = entry.stats.first().cloned().unwrap_or_else(|| router.unrouted.clone());
                (stats, Some(entry.route.name.clone()), None, refusal, None)
            }
            Ok(applied) => {
                let mut taken = self.serve(found, req, bytes_in, downstream).await;
                applied.respond(&mut taken.3, &ctx).await;
                // A transform that rewrote the body: the cache keeps upstream answers only
                // (a hit is transformed again on its way out).
                if !matches!(taken.3.body(), Either::Left(_))
                    && let Some(upstream) = taken.4.as_mut()
                {
                    upstream.fill = None;
                }
                taken
            }
        }
    }

    /// Runs the route's action, through its cache when it has one (one branch otherwise;
    /// boxed there, the cache's future being large).
    async fn serve(
        &self,
        found: Found<'_>,
        req: Request<InnerBody>,
        bytes_in: Option<Arc<AtomicU64>>,
        downstream: Downstream,
    ) -> Taken {
        match &found.entry.route.cache {
            Some(cache) if matches!(found.entry.route.action, RouteAction::Forward { .. }) => {
                // Fresh hits answer without the (boxed) future of the rest.
                if let Some(hit) = self.fresh_hit(cache, &found, &req) {
                    return hit;
                }
                let cache = cache.clone();
                Box::pin(self.take_cached(&cache, found, req, bytes_in, downstream)).await
            }
            _ => self.take(found, req, bytes_in, downstream).await,
        }
    }

    /// Runs the action of the route a request took.
    pub(super) async fn take(
        &self,
        found: Found<'_>,
        mut req: Request<InnerBody>,
        bytes_in: Option<Arc<AtomicU64>>,
        downstream: Downstream,
    ) -> Taken {
        let entry = found.entry;
        let route = &entry.route;
        let name = Some(route.name.clone());
        let stats = entry.stats.first().cloned().unwrap_or_default();
        let vars = |req: &Request<InnerBody>| -> (Option<String>, Option<HeaderValue>) {
            (host_of(req).map(str::to_owned), req.headers().get(&X_REQUEST_ID).cloned())
        };
        match &route.action {
            RouteAction::Direct(d) => {
                let mut response = Response::new(Either::Right(Full::new(d.body.clone())));
                *response.status_mut() = d.status;
                if let Some(ct) = &d.content_type {
                    response.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
                }
                let (host, id) = vars(&req);
                let v = Vars {
                    client_ip: self.peer.ip(),
                    request_id: id.as_ref(),
                    host: host.as_deref(),
                    params: &found.params,
                };
                route.response_headers.apply(response.headers_mut(), &v);
                (stats, name, None, response, None)
            }
            RouteAction::Redirect(rd) => {
                let (host, id) = vars(&req);
                let v = Vars {
                    client_ip: self.peer.ip(),
                    request_id: id.as_ref(),
                    host: host.as_deref(),
                    params: &found.params,
                };
                let Some(location) = rd.location(req.uri(), host.as_deref(), &v) else {
                    return (stats, name, None, local(StatusCode::BAD_REQUEST, "bad request\n"), None);
                };
                let mut response = Response::new(Either::Right(Full::default()));
                *response.status_mut() = rd.code;
                response.headers_mut().insert(header::LOCATION, location);
                route.response_headers.apply(response.headers_mut(), &v);
                (stats, name, None, response, None)
            }
            RouteAction::Forward { rewrite, host: host_rewrite } => {
                let Some((index, cluster)) = route.forward.pick() else {
                    return (stats, name, None, local(StatusCode::SERVICE_UNAVAILABLE, "no cluster\n"), None);
                };
                let stats = entry.stats.get(index).cloned().unwrap_or(stats);
                if !matches!(rewrite, PathRewrite::Keep) {
                    let (host, _) = vars(&req);
                    let v = Vars {
                        client_ip: self.peer.ip(),
                        request_id: None,
                        host: host.as_deref(),
                        params: &found.params,
                    };
                    if let Some(path) = rewrite.apply(req.uri().path(), &v) {
                        match with_path(req.uri(), &path) {
                            Some(uri) => *req.uri_mut() = uri,
                            None => return (stats, name, None, local(StatusCode::BAD_REQUEST, "bad request\n"), None),
                        }
                    }
                }
                let upgrade = take_upgrade(&mut req);
                let limit = route.max_request_bytes;
                let announced = || {
                    req.headers()
                        .get(header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                };
                if limit > 0 && announced().is_some_and(|n| n > limit) {
                    let mut response = local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
                    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return (stats, name, Some(cluster.name.clone()), response, None);
                }
                // A body streamed from the client can fail on its way (malformed, cut short); one
                // held in memory cannot. Bodiless requests and inline bodies allocate nothing.
                let streamed = matches!(req.body(), Either::Left(_)) && !req.body().is_end_stream();
                let fault = (limit > 0 || streamed).then(|| Arc::new(BodyFault::default()));
                let head_request = req.method() == http::Method::HEAD;
                // Read before the request goes: what its answer may be encoded with.
                let offer = route.compress.as_ref().map(|c| c.negotiate(req.method(), req.headers()));
                let req = req.map(|body| {
                    let body = Counting::new(body, bytes_in, limit, fault.clone());
                    if streamed { body.with_idle_timeout(route.request_body_timeout) } else { body }
                });
                let edits = Edits {
                    host: host_rewrite.as_ref(),
                    downstream,
                    route,
                    params: &found.params,
                    client_ip: self.peer.ip(),
                    body_fault: fault.as_deref(),
                };
                let (mut response, mut upstream) = forward(route, cluster, req, self, &edits, upgrade).await;
                let refused = match fault.as_deref() {
                    Some(f) if f.too_large() => Some((StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")),
                    // What the upstream said, if anything, answered a request it did not get whole.
                    Some(f) if f.broken() => Some((StatusCode::BAD_REQUEST, "malformed request body\n")),
                    Some(f) if f.timed_out() => {
                        Some((StatusCode::REQUEST_TIMEOUT, "request body not received in time\n"))
                    }
                    _ => None,
                };
                if let Some((status, why)) = refused {
                    response = local(status, why);
                    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                    // Its connection carried a request cut short: not for another one.
                    if let Some(upstream) = &mut upstream {
                        upstream.lease = None;
                    }
                }
                if let Some(upstream) = &mut upstream {
                    hold(route, cluster, head_request, fault, &mut response, upstream);
                }
                if let (Some(compressor), Some(offer)) = (&route.compress, offer) {
                    compressor.apply(offer, &mut response);
                }
                (stats, name, Some(cluster.name.clone()), response, upstream)
            }
        }
    }
}
