//! The HTTP request path: route, pick an endpoint, forward, stream the answer back.
//!
//! A request loads the current runtime once and keeps it to the end, so a swap never
//! changes the rules under a request in flight. Local answers: `404` no route, `502`
//! upstream unreachable or broken, `503` no config yet, `504` upstream too slow.
//! The response body is wrapped so that when it is done (sent, or dropped because the
//! client left) the request's metrics are recorded and its access log line is queued.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::http::body::BodyFault;
use crate::http::body::Counting;
use crate::http::body::InnerBody;
use crate::http::body::UpstreamBody;
use crate::http::body::local;
use crate::http::body::poll_counting;
use crate::observe::accesslog::{Line, Sink};
use crate::observe::metrics::{self, Outcome, RouteStats};
use crate::policy;
use crate::routing::actions::RetryOn;
use crate::routing::actions::{PathRewrite, Vars};
use crate::routing::router::{Found, Route, RouteAction};
use crate::tls::TlsInfo;
use crate::upstream::balancer::{PickContext, Picked};
use crate::upstream::cluster::Cluster;
use crate::upstream::pool::{Lease, SendError};

/// A response that no metrics or access log line follow (those of a request refused
/// before routing are recorded when refused).
pub(crate) fn unrecorded(body: InnerBody) -> ProxyBody {
    Finishing::new(body, None)
}

/// Response bodies, counted and finished (metrics, access log) when done.
pub(crate) type ProxyBody = Finishing<InnerBody>;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_VANE_OVERLOADED: HeaderName = HeaderName::from_static("x-vane-overloaded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1 and long-standing practice), never forwarded.
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// What a request reads of its node, and nothing more: the runtime serving now (one
/// `load()` per request, kept to its end) and span export. The node swaps the runtime
/// inside it; listeners and connections hold it instead of the node's whole state.
#[derive(Debug, Default)]
pub(crate) struct Serving {
    pub(crate) runtime: arc_swap::ArcSwapOption<crate::routing::runtime::Runtime>,
    #[cfg(feature = "otlp")]
    pub(crate) tracing: Option<crate::observe::otel::Tracing>,
}

/// One downstream connection's context.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    pub(crate) shared: Arc<Serving>,
    pub(crate) slot: u64,
    pub(crate) peer: SocketAddr,
    /// The peer's IP as the forwarding headers carry it, rendered once per connection:
    /// formatting an address costs more than setting all the forwarding headers.
    pub(crate) peer_ip: HeaderValue,
    /// SNI and client certificate of a TLS connection.
    pub(crate) tls: Option<Arc<TlsInfo>>,
}

impl Connection {
    pub(crate) fn new(shared: Arc<Serving>, slot: u64, peer: SocketAddr) -> Connection {
        Connection { shared, slot, peer, peer_ip: ip_value(peer), tls: None }
    }

    /// Answers one request (its body as [`streamed`] makes it, or held whole in memory).
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
                        Box::pin(router.policies.run(&mut req, &policy::Ctx { client_ip, route: "" })).await.err()
                    }
                };
                let response = refused.unwrap_or_else(|| local(StatusCode::NOT_FOUND, "no route\n"));
                (router.unrouted.clone(), None, None, response, None)
            }
            Some(found) => {
                let downstream = Downstream { trusted_proxy: router.trusts(self.peer.ip()), tls: self.tls.is_some() };
                if found.entry.chain.is_empty() {
                    self.take(found, req, bytes_in.clone(), downstream).await
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
type Taken = (Arc<RouteStats>, Option<Arc<str>>, Option<Arc<str>>, Response<InnerBody>, Option<Upstream>);

/// Where a forwarded request went (for metrics and logs), and the upstream connection to
/// give back to its pool once the response has been sent whole.
#[derive(Debug)]
pub(crate) struct Upstream {
    authority: Authority,
    time: Duration,
    request_id: Option<HeaderValue>,
    lease: Option<Lease>,
}

/// The request's host as sent (port included).
fn host_of<B>(req: &Request<B>) -> Option<&str> {
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
        let ctx = policy::Ctx { client_ip, route: &entry.route.name };
        match entry.chain.run(&mut req, &ctx).await {
            Err(refusal) => {
                let stats = entry.stats.first().cloned().unwrap_or_else(|| router.unrouted.clone());
                (stats, Some(entry.route.name.clone()), None, refusal, None)
            }
            Ok(applied) => {
                let mut taken = self.take(found, req, bytes_in, downstream).await;
                applied.respond(&mut taken.3, &ctx).await;
                taken
            }
        }
    }

    /// Runs the action of the route a request took.
    async fn take(
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
                let req = req.map(|body| Counting::new(body, bytes_in, limit, fault.clone()));
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
                (stats, name, Some(cluster.name.clone()), response, upstream)
            }
        }
    }
}

/// An HTTP/1.1 `Upgrade` request (WebSocket and others): the protocol asked for and the
/// handle that yields the client's connection once a `101` has been sent.
type Upgrade = (HeaderValue, hyper::upgrade::OnUpgrade);

fn take_upgrade<B>(req: &mut Request<B>) -> Option<Upgrade> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = req.headers().get(header::UPGRADE)?.clone();
    if !wants {
        return None;
    }
    let on = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()?;
    Some((protocol, on))
}

/// Joins the client's and the upstream's upgraded connections until either closes.
fn splice(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (down, up) = tokio::join!(downstream, upstream);
        match (down, up) {
            (Ok(down), Ok(up)) => {
                let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    debug!(%error, "upgraded connection ended");
                }
            }
            (Err(error), _) | (_, Err(error)) => debug!(%error, "upgrade failed"),
        }
    });
}

/// Sends a bodiless copy of `req` to a shadow cluster in the background and discards the
/// answer. The copy's Host gets `-shadow` so the shadow can tell mirrored traffic apart.
fn mirror(shadow: Arc<Cluster>, req: &Request<UpstreamBody>, timeout: Duration) {
    let Some((_picked, endpoint)) = shadow.pick(None) else { return };
    let mut copy = Request::new(Counting::empty());
    *copy.method_mut() = req.method().clone();
    *copy.version_mut() = Version::HTTP_11;
    *copy.headers_mut() = req.headers().clone();
    let Some(uri) = upstream_uri(&shadow, &endpoint.authority, Version::HTTP_11, req.uri()) else { return };
    *copy.uri_mut() = uri;
    if let Some(host) = req.headers().get(header::HOST).and_then(|h| h.to_str().ok())
        && let Ok(v) = HeaderValue::from_str(&format!("{host}-shadow"))
    {
        copy.headers_mut().insert(header::HOST, v);
    }
    tokio::spawn(async move {
        let exchange = async {
            let (response, lease) = shadow.send(_picked.index, copy, Instant::now()).await?;
            // Read to the end, so that the connection can serve the next mirrored request.
            response.into_body().collect().await.map_err(SendError::Exchange)?;
            if let Some(lease) = lease {
                lease.release();
            }
            Ok::<_, SendError>(())
        };
        let result = tokio::time::timeout(timeout, exchange).await;
        debug!(cluster = %shadow.name, ok = matches!(result, Ok(Ok(_))), "mirrored");
        drop(_picked);
    });
}

/// `uri` with its path replaced, query kept.
fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Where a request came from, for the forwarding headers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Downstream {
    /// The peer is a trusted proxy: keep and extend its forwarding headers.
    pub(crate) trusted_proxy: bool,
    /// The request arrived over TLS (`proto=https`).
    pub(crate) tls: bool,
}

/// The request and response edits of a forwarding route.
#[derive(Debug)]
struct Edits<'a> {
    host: Option<&'a HeaderValue>,
    downstream: Downstream,
    route: &'a Route,
    params: &'a [(Box<str>, Box<str>)],
    client_ip: std::net::IpAddr,
    /// Set by a streamed request body that failed: the client's fault, not the upstream's.
    body_fault: Option<&'a BodyFault>,
}

/// The request side of an access log line, taken before the request is forwarded.
fn draft_line<B>(req: &Request<B>, client: SocketAddr) -> Line {
    let headers = req.headers();
    Line {
        time: SystemTime::now(),
        client,
        method: req.method().clone(),
        host: headers
            .get(header::HOST)
            .cloned()
            .or_else(|| req.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())),
        uri: req.uri().clone(),
        version: req.version(),
        status: 0,
        bytes_in: 0,
        bytes_out: 0,
        duration: Duration::ZERO,
        upstream: None,
        upstream_time: None,
        listener: Arc::from(""),
        route: None,
        cluster: None,
        request_id: headers.get(&X_REQUEST_ID).cloned(),
        user_agent: headers.get(header::USER_AGENT).cloned(),
        referer: headers.get(header::REFERER).cloned(),
    }
}

/// Everything recorded once a response has been sent (or abandoned).
#[derive(Debug)]
struct Finish {
    start: Instant,
    stats: Arc<RouteStats>,
    method: usize,
    status: u16,
    upstream: Option<Upstream>,
    bytes_in: Option<Arc<AtomicU64>>,
    draft: Option<Box<(Arc<Sink>, Line)>>,
    listener: Arc<str>,
    route: Option<Arc<str>>,
    cluster: Option<Arc<str>>,
    #[cfg(feature = "otlp")]
    trace: Option<opentelemetry::Context>,
}

impl Finish {
    /// `whole`: the response body was sent to its end (its upstream connection is idle).
    fn complete(mut self, bytes_out: u64, whole: bool) {
        if let Some(lease) = self.upstream.as_mut().and_then(|u| u.lease.take())
            && whole
        {
            lease.release();
        }
        let total = self.start.elapsed();
        let bytes_in = self.bytes_in.as_ref().map_or(0, |b| b.load(Ordering::Relaxed));
        let upstream_time = self.upstream.as_ref().map(|u| u.time);
        self.stats.record(&Outcome {
            status: self.status,
            method: self.method,
            total,
            upstream: upstream_time,
            bytes_in,
            bytes_out,
        });
        #[cfg(feature = "otlp")]
        if let Some(cx) = self.trace {
            let upstream = self.upstream.as_ref().map(|u| u.authority.as_str());
            let (route, cluster) = (self.route.as_deref().unwrap_or(""), self.cluster.as_deref().unwrap_or(""));
            crate::observe::otel::finish(cx, route, cluster, upstream, self.status, bytes_in, bytes_out);
        }
        if let Some(draft) = self.draft {
            let (sink, mut line) = *draft;
            line.status = self.status;
            line.bytes_in = bytes_in;
            line.bytes_out = bytes_out;
            line.duration = total;
            line.upstream_time = upstream_time;
            if let Some(upstream) = self.upstream {
                line.upstream = Some(upstream.authority);
                // The id the upstream saw, generated here when the client sent none.
                if line.request_id.is_none() {
                    line.request_id = upstream.request_id;
                }
            }
            line.listener = self.listener;
            line.route = self.route;
            line.cluster = self.cluster;
            sink.send(line);
        }
    }
}

/// A response body that counts what it sends and records the request when it is done
/// (fully sent, or dropped because the client went away).
#[derive(Debug)]
pub(crate) struct Finishing<B> {
    inner: B,
    sent: u64,
    /// The body was sent to its end.
    ended: bool,
    finish: Option<Finish>,
}

impl<B: Body> Finishing<B> {
    fn new(inner: B, finish: Option<Finish>) -> Finishing<B> {
        Finishing { ended: inner.is_end_stream(), inner, sent: 0, finish }
    }
}

impl<B> Drop for Finishing<B> {
    fn drop(&mut self) {
        if let Some(finish) = self.finish.take() {
            finish.complete(self.sent, self.ended);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Finishing<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = poll_counting(&mut this.inner, cx, |n| this.sent += n);
        // hyper stops polling once `is_end_stream` says so: look after every frame.
        this.ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            _ => this.ended,
        };
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Sends the request to `cluster` and streams the answer back, or answers locally.
/// Also returns the endpoint, the time to its response headers and the request id sent.
async fn forward(
    route: &Route,
    cluster: &Cluster,
    req: Request<UpstreamBody>,
    conn: &Connection,
    edits: &Edits<'_>,
    upgrade: Option<Upgrade>,
) -> (Response<InnerBody>, Option<Upstream>) {
    let Some((mut upstream, endpoint, mut picked, mut set_cookie)) =
        upstream_request(req, cluster, (conn.peer, &conn.peer_ip), edits.downstream)
    else {
        return (local(StatusCode::BAD_REQUEST, "bad request\n"), None);
    };
    if let Some((protocol, _)) = &upgrade {
        // Upgrades are HTTP/1.1 end to end.
        *upstream.version_mut() = Version::HTTP_11;
        upstream.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        upstream.headers_mut().insert(header::UPGRADE, protocol.clone());
    }
    let request_id = upstream.headers().get(&X_REQUEST_ID).cloned();
    if let Some(host) = edits.host {
        upstream.headers_mut().insert(header::HOST, host.clone());
    }
    let rules = (&edits.route.request_headers, &edits.route.response_headers);
    // Only header rules read the client's host; skip the copy for routes without them.
    let client_host = (!rules.0.is_empty() || !rules.1.is_empty())
        .then(|| upstream.headers().get(&X_FORWARDED_HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
        .flatten();
    let vars = Vars {
        client_ip: edits.client_ip,
        request_id: request_id.as_ref(),
        host: client_host.as_deref(),
        params: edits.params,
    };
    if !rules.0.is_empty() {
        rules.0.apply(upstream.headers_mut(), &vars);
    }
    if let Some((shadow, percent)) = &route.mirror
        && upstream.body().is_end_stream()
        && (*percent >= 100 || rand::random_range(0..100) < *percent)
    {
        mirror(shadow.clone(), &upstream, route.timeout);
    }
    let client_broke = || edits.body_fault.is_some_and(BodyFault::broken);
    let started = Instant::now();
    let deadline = started + route.timeout;
    let _slot = match cluster.connection_slot(tokio::time::Instant::from_std(deadline)).await {
        Ok(slot) => slot,
        Err(limit) => {
            let mut response = local(StatusCode::SERVICE_UNAVAILABLE, "upstream overloaded\n");
            response.headers_mut().insert(X_VANE_OVERLOADED.clone(), HeaderValue::from_static(limit));
            return (response, None);
        }
    };
    let policy = route.retry.as_ref().filter(|_| upgrade.is_none());
    // What a retry is rebuilt from: only bodiless requests can be sent again. Boxed, so
    // that routes without retries do not carry its room in every request's future.
    let template = policy.filter(|_| upstream.body().is_end_stream()).map(|_| {
        let mut again = Request::new(());
        *again.method_mut() = upstream.method().clone();
        *again.uri_mut() = upstream.uri().clone();
        *again.version_mut() = upstream.version();
        *again.headers_mut() = upstream.headers().clone();
        Box::new(again)
    });
    let idempotent = matches!(
        *upstream.method(),
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    );
    let _in_flight = match cluster.start_request() {
        Ok(guard) => guard,
        Err(limit) => {
            let mut response = local(StatusCode::SERVICE_UNAVAILABLE, "upstream overloaded\n");
            response.headers_mut().insert(X_VANE_OVERLOADED.clone(), HeaderValue::from_static(limit));
            return (response, None);
        }
    };
    let mut endpoint = endpoint;
    let mut attempt: u32 = 0;
    let (result, tried_at) = loop {
        let sent = Instant::now();
        let per_try = policy.map_or(route.timeout, |p| p.per_try_timeout).min(deadline.saturating_duration_since(sent));
        if upgrade.is_some() {
            *upstream.version_mut() = Version::HTTP_11;
        }
        let result = tokio::time::timeout(per_try, cluster.send(picked.index, upstream, sent)).await;
        // Passive health sees every try: 5xx, connect failures, resets and timeouts count;
        // a failure of the client's own body does not.
        let failed = !matches!(&result, Ok(Ok((r, _))) if !r.status().is_server_error()) && !client_broke();
        cluster.report(picked.index, failed);
        let cause = match &result {
            Ok(Ok((response, _))) => policy.and_then(|p| p.on_status(response.status())),
            Ok(Err(error)) if error.is_connect() => Some(RetryOn::ConnectFailure),
            Ok(Err(_)) => Some(RetryOn::Reset),
            Err(_) => Some(RetryOn::Timeout),
        };
        let retry = match (cause, policy, &template) {
            (Some(cause), Some(p), Some(t))
                if attempt < p.num_retries
                    && p.retries_on(cause)
                    && (idempotent || cause == RetryOn::ConnectFailure)
                    && Instant::now() < deadline =>
            {
                cluster.try_retry().map(|permit| (p, t, permit))
            }
            _ => None,
        };
        let Some((p, t, _permit)) = retry else { break (result, sent) };
        attempt += 1;
        debug!(route = %route.name, cluster = %cluster.name, attempt, ?cause, "retrying");
        let pause = p.backoff_for(attempt).min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
        let Some((next_picked, next)) = cluster.pick(None) else { break (result, sent) };
        // A retry moved the request: the affinity cookie should name where it went.
        set_cookie = cluster.set_cookie_for(next_picked.index).or(set_cookie);
        picked = next_picked;
        let mut parts = Request::clone(t).into_parts().0;
        parts.uri = match upstream_uri(cluster, &next.authority, t.version(), t.uri()) {
            Some(uri) => uri,
            None => break (result, sent),
        };
        endpoint = next.authority.clone();
        upstream = Request::from_parts(parts, Counting::empty());
    };
    let now = Instant::now();
    let mut info = Some(Upstream {
        authority: endpoint,
        time: now.saturating_duration_since(tried_at),
        request_id: request_id.clone(),
        lease: None,
    });
    let timed_out_overall = now >= deadline;
    let mut response = match result {
        Ok(Ok((response, lease))) => {
            if let Some(info) = &mut info {
                info.lease = lease;
            }
            response
        }
        Ok(Err(error)) => {
            let counter = if error.is_connect() { &cluster.stats.connect_failures } else { &cluster.stats.errors };
            if !client_broke() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            debug!(route = %route.name, cluster = %cluster.name, %error, "upstream failed");
            return (local(StatusCode::BAD_GATEWAY, "upstream unavailable\n"), info);
        }
        Err(_) => {
            cluster.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            debug!(route = %route.name, cluster = %cluster.name, timed_out_overall, "upstream timed out");
            return (local(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n"), info);
        }
    };
    // Only a 101 from the upstream completes an upgrade; anything else is an answer.
    let switched = match upgrade {
        Some((_, downstream)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let protocol = response.headers().get(header::UPGRADE).cloned();
            splice(downstream, hyper::upgrade::on(&mut response));
            protocol
        }
        _ => None,
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = switched {
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
    }
    if let Some(cookie) = set_cookie {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    if !rules.1.is_empty() {
        rules.1.apply(&mut parts.headers, &vars);
    }
    (Response::from_parts(parts, Either::Left(body)), info)
}

/// Rewrites a downstream request for `cluster`'s next endpoint; `None` when the request
/// cannot be expressed upstream.
pub(crate) fn upstream_request<B>(
    req: Request<B>,
    cluster: &Cluster,
    (peer, peer_ip): (SocketAddr, &HeaderValue),
    downstream: Downstream,
) -> Option<(Request<B>, Authority, Picked, Option<HeaderValue>)> {
    let (mut parts, body) = req.into_parts();
    // Room for the headers added below: one growth of the map now instead of several.
    parts.headers.reserve(FORWARDING_HEADROOM);
    let ctx = PickContext { client: peer.ip(), path: parts.uri.path(), headers: &parts.headers };
    let (picked, endpoint, set_cookie) = cluster.pick_sticky(&ctx)?;
    let version = cluster.version_for(parts.version);
    // gRPC over HTTP/2 announces trailer support; it is the one TE value that may pass.
    let te_trailers = version == Version::HTTP_2
        && parts.headers.get_all(header::TE).iter().any(|v| v.to_str().is_ok_and(|t| t.contains("trailers")));
    let host_header = parts.headers.get(header::HOST).cloned();
    let has_host_header = host_header.is_some();
    let original_host =
        host_header.or_else(|| parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    parts.uri = upstream_uri(cluster, &endpoint.authority, version, &parts.uri)?;
    parts.version = version;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    forwarding_headers(headers, peer, peer_ip, original_host.as_ref(), downstream);
    match original_host {
        // Already the request's own Host header: nothing to set.
        Some(_) if has_host_header => {}
        Some(host) => {
            headers.insert(header::HOST, host);
        }
        None if version != Version::HTTP_2 => {
            if let Ok(host) = HeaderValue::from_str(endpoint.authority.as_str()) {
                headers.insert(header::HOST, host);
            }
        }
        None => {}
    }
    headers.entry(&X_REQUEST_ID).or_insert_with(request_id);
    Some((Request::from_parts(parts, body), endpoint.authority.clone(), picked, set_cookie))
}

/// The URI a request goes upstream with: absolute for HTTP/2 (hyper's client takes the
/// scheme and authority from it), the origin form for HTTP/1.1 (the endpoint is picked by
/// index, not by URI).
fn upstream_uri(cluster: &Cluster, endpoint: &Authority, version: Version, from: &Uri) -> Option<Uri> {
    let path_and_query = from.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    if version != Version::HTTP_2 {
        return Some(Uri::from(path_and_query));
    }
    Uri::builder()
        .scheme(cluster.scheme.clone())
        .authority(endpoint.clone())
        .path_and_query(path_and_query)
        .build()
        .ok()
}

/// How many headers [`upstream_request`] may add to a request: `X-Forwarded-For/-Proto/
/// -Host`, `Forwarded`, `Via`, `Host`, `X-Request-Id` and `TE`. Header maps built for a
/// request that will be forwarded reserve this much beyond their own headers.
pub(crate) const FORWARDING_HEADROOM: usize = 8;

/// A peer's IP as a header value (no port, no brackets).
pub(crate) fn ip_value(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(peer.ip().to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// `X-Forwarded-For/-Proto/-Host`, `Forwarded` (RFC 7239) and `Via`. From a trusted proxy
/// the chain it sent is kept and extended; from anyone else it is replaced, since a client
/// can claim anything. `peer_ip` is [`ip_value`] of `peer`.
fn forwarding_headers(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    peer_ip: &HeaderValue,
    host: Option<&HeaderValue>,
    downstream: Downstream,
) {
    // Owned strings become header values without another copy.
    let value = |s: String| HeaderValue::from_maybe_shared(Bytes::from(s)).ok();
    // A chain of values sent before ("a, b"), extended by `add`.
    let extended = |sent: header::ValueIter<'_, HeaderValue>, add: &str| -> Option<HeaderValue> {
        let mut out = String::new();
        for v in sent.filter_map(|v| v.to_str().ok()) {
            out.push_str(v);
            out.push_str(", ");
        }
        out.push_str(add);
        value(out)
    };
    let ip = peer_ip.to_str().unwrap_or("unknown");
    let proto = if downstream.tls { "https" } else { "http" };
    // Plain pushes: `write!` costs several times as much for these few pieces.
    let mut forwarded = String::with_capacity(64);
    if peer.is_ipv6() {
        forwarded.push_str("for=\"[");
        forwarded.push_str(ip);
        forwarded.push_str("]\"");
    } else {
        forwarded.push_str("for=");
        forwarded.push_str(ip);
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(proto);
    if let Some(h) = host.and_then(|h| h.to_str().ok()) {
        forwarded.push_str(";host=\"");
        if h.contains('"') {
            forwarded.push_str(&h.replace('"', ""));
        } else {
            forwarded.push_str(h);
        }
        forwarded.push('"');
    }
    if downstream.trusted_proxy {
        if let Some(v) = extended(headers.get_all(&X_FORWARDED_FOR).iter(), ip) {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        if let Some(v) = extended(headers.get_all(&FORWARDED).iter(), &forwarded) {
            headers.insert(FORWARDED.clone(), v);
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        }
        if let (false, Some(h)) = (headers.contains_key(&X_FORWARDED_HOST), host) {
            headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        }
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), peer_ip.clone());
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        match host {
            Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        if let Some(v) = value(forwarded) {
            headers.insert(FORWARDED.clone(), v);
        }
    }
    match headers.entry(header::VIA) {
        header::Entry::Occupied(mut via) => {
            if let Some(v) = extended(via.iter(), "1.1 vane") {
                via.insert(v);
            }
        }
        header::Entry::Vacant(via) => {
            via.insert(HeaderValue::from_static("1.1 vane"));
        }
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names present instead of a hash lookup per hop-by-hop name:
    // most messages carry none of them.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(&name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A random UUID v4, as `X-Request-Id`.
fn request_id() -> HeaderValue {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [0u8; 36];
    let hex = b"0123456789abcdef";
    let mut i = 0;
    for (n, byte) in b.iter().enumerate() {
        if matches!(n, 4 | 6 | 8 | 10) {
            out[i] = b'-';
            i += 1;
        }
        out[i] = hex[usize::from(byte >> 4)];
        out[i + 1] = hex[usize::from(byte & 0x0f)];
        i += 2;
    }
    // An owned value is shared by reference count when cloned (the id is kept for the
    // access log); a copied one would allocate again at its first clone.
    HeaderValue::from_maybe_shared(Bytes::from_owner(out)).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarding_headers_quote_ipv6_peers_and_strip_quotes_from_hosts() {
        let peer: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert(header::VIA, HeaderValue::from_static("1.1 edge"));
        let host = HeaderValue::from_static("shop\"x.example");
        forwarding_headers(&mut h, peer, &ip_value(peer), Some(&host), Downstream { trusted_proxy: false, tls: true });
        assert_eq!(h["x-forwarded-for"], "2001:db8::7", "the peer replaces an untrusted claim");
        assert_eq!(h["forwarded"], "for=\"[2001:db8::7]\";proto=https;host=\"shopx.example\"");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h[header::VIA], "1.1 edge, 1.1 vane");

        // From a trusted proxy the chains it sent are extended.
        let peer: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        forwarding_headers(&mut h, peer, &ip_value(peer), None, Downstream { trusted_proxy: true, tls: false });
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.2");
        assert_eq!(h["forwarded"], "for=10.0.0.2;proto=http");
        assert_eq!(h[header::VIA], "1.1 vane");
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_ne!(request_id(), id);
    }
}
