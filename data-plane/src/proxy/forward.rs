//! Forwarding: pick an endpoint, send (inline HTTP/1.1 or hyper), retry what may be
//! retried, mirror when asked, and give the upstream's answer back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either};
use hyper::body::Body;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::http::body::BodyFault;
use crate::http::body::InnerBody;
use crate::http::body::UpstreamBody;
use crate::http::body::local;
use crate::http::headers::{
    Downstream, FORWARDING_HEADROOM, X_FORWARDED_HOST, X_REQUEST_ID, forwarding_headers, request_id, strip_hop_by_hop,
};
use crate::http::replay::{ReadAhead, read_ahead};
use crate::routing::actions::RetryOn;
use crate::routing::actions::Vars;
use crate::routing::router::Route;
use crate::upstream::balancer::{PickContext, Picked};
use crate::upstream::cluster::{Cluster, RetryPermit, Tried};
use crate::upstream::health::Outcome;
use crate::upstream::pool::SendError;

use super::connection::Connection;
use super::finish::Upstream;

/// Sends the request to `cluster` and streams the answer back, or answers locally.
/// Also returns the endpoint, the time to its response headers and the request id sent.
pub(super) async fn forward(
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
    let client_broke = || edits.body_fault.is_some_and(BodyFault::clients);
    let started = Instant::now();
    let deadline = started + route.timeout;
    let policy = route.retry.as_ref().filter(|_| upgrade.is_none());
    let idempotent = matches!(
        *upstream.method(),
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    );
    // A streamed body that a retry or a mirror would send again is read ahead, to be
    // held whole if it is small enough; its share of the budget is held until the end.
    // (An HTTP/2 upstream's failed connect does not give the request back: any retry
    // needs the body kept.)
    let mut _kept = None;
    let resent = match policy {
        Some(p) => (idempotent && p.retries_received()) || upstream.version() == Version::HTTP_2,
        None => false,
    };
    if upgrade.is_none()
        && route.replay_body_bytes > 0
        && (route.mirror.is_some() || resent)
        && !upstream.body().is_end_stream()
        && !upstream.body().is_buffered()
        && !is_grpc(upstream.headers())
    {
        let budget = &conn.shared.replay_budget;
        let until = tokio::time::Instant::from_std(deadline);
        // Boxed: reading ahead is rare and its future large; every request's future would
        // carry its room otherwise.
        match Box::pin(read_ahead(upstream.body_mut(), route.replay_body_bytes, budget, until)).await {
            ReadAhead::Whole(charge) => _kept = charge,
            ReadAhead::Streams => {}
            ReadAhead::NoRoom => {
                cluster.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                let mut response = local(StatusCode::SERVICE_UNAVAILABLE, "no memory for the request body\n");
                response.headers_mut().insert(X_VANE_OVERLOADED.clone(), HeaderValue::from_static("replay_budget"));
                return (response, None);
            }
            // The body's fault says what the client did wrong; the caller answers for it.
            ReadAhead::Failed => return (local(StatusCode::BAD_REQUEST, "malformed request body\n"), None),
        }
    }
    if let Some((shadow, percent)) = &route.mirror
        && (*percent >= 100 || rand::random_range(0..100) < *percent)
    {
        // A body is mirrored when it is held whole; a streamed one is not mirrored.
        let body =
            if upstream.body().is_end_stream() { Some(None) } else { upstream.body_mut().copy_buffered().map(Some) };
        if let Some(body) = body {
            mirror(shadow.clone(), &upstream, body, route.timeout);
        }
    }
    let _slot = match cluster.connection_slot(tokio::time::Instant::from_std(deadline)).await {
        Ok(slot) => slot,
        Err(limit) => {
            let mut response = local(StatusCode::SERVICE_UNAVAILABLE, "upstream overloaded\n");
            response.headers_mut().insert(X_VANE_OVERLOADED.clone(), HeaderValue::from_static(limit));
            return (response, None);
        }
    };
    // What a retry of a request the upstream received is rebuilt from (a failed connect
    // gives the request back instead): only for policies with such retries, idempotent
    // requests, and bodies empty or held whole.
    let template = policy.filter(|p| idempotent && p.retries_received()).and_then(|_| Template::of(&mut upstream));
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
    let mut tried = Tried::default();
    // The budget's share of the retry in flight, held until its answer is in.
    let mut _retrying: Option<RetryPermit> = None;
    let (result, tried_at) = loop {
        let sent = Instant::now();
        let per_try = policy.map_or(route.timeout, |p| p.per_try_timeout).min(deadline.saturating_duration_since(sent));
        if upgrade.is_some() {
            *upstream.version_mut() = Version::HTTP_11;
        }
        let mut result = tokio::time::timeout(per_try, cluster.send(picked.index, upstream, sent)).await;
        if let (Err(_), Some(fault)) = (&result, edits.body_fault) {
            // Late while Vane still waited on the client's body: the client's fault.
            fault.note_route_timeout();
        }
        // Passive health sees every try; a failure of the client's own body counts as none.
        let outcome = match &result {
            _ if client_broke() => Outcome::Ok,
            Ok(Ok((r, _))) if !r.status().is_server_error() => Outcome::Ok,
            Ok(Err(error)) if error.is_connect() => Outcome::Unreachable,
            _ => Outcome::Failed,
        };
        cluster.report(picked.index, outcome);
        let cause = match &result {
            Ok(Ok((response, _))) => {
                policy.filter(|p| p.retries_received()).and_then(|p| p.on_status(response.status()))
            }
            Ok(Err(error)) if error.is_connect() => Some(RetryOn::ConnectFailure),
            Ok(Err(_)) => Some(RetryOn::Reset),
            Err(_) => Some(RetryOn::Timeout),
        };
        let retry = match (cause, policy) {
            (Some(cause), Some(p))
                if attempt < p.num_retries
                    && p.retries_on(cause)
                    && (idempotent || cause == RetryOn::ConnectFailure)
                    && Instant::now() < deadline =>
            {
                Some((p, cause))
            }
            _ => None,
        };
        let Some((p, cause)) = retry else { break (result, sent) };
        // The request again: given back by a failed connect, else rebuilt.
        let again = match &mut result {
            Ok(Err(error)) => error.take_unsent(),
            _ => None,
        }
        .or_else(|| template.as_ref().map(|t| t.request()));
        let Some(again) = again else { break (result, sent) };
        // The try that just failed gives its permit back before asking for another.
        _retrying = None;
        let Some(permit) = cluster.try_retry() else { break (result, sent) };
        _retrying = Some(permit);
        attempt += 1;
        debug!(route = %route.name, cluster = %cluster.name, attempt, ?cause, "retrying");
        let pause = p.backoff_for(attempt).min(deadline.saturating_duration_since(Instant::now()));
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        tried.add(picked.index);
        let Some((next_picked, next)) = cluster.pick_avoiding(None, &tried) else { break (result, sent) };
        // A retry moved the request: the affinity cookie should name where it went.
        set_cookie = cluster.set_cookie_for(next_picked.index).or(set_cookie);
        picked = next_picked;
        let (mut parts, body) = again.into_parts();
        parts.uri = match upstream_uri(cluster, &next.authority, parts.version, &parts.uri) {
            Some(uri) => uri,
            None => break (result, sent),
        };
        endpoint = next.authority.clone();
        upstream = Request::from_parts(parts, body);
    };
    let now = Instant::now();
    let mut info = Some(Upstream {
        authority: endpoint,
        time: now.saturating_duration_since(tried_at),
        request_id: request_id.clone(),
        lease: None,
        held: None,
        fill: None,
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
            let (route, cluster) = (&route.name, &cluster.name);
            debug!(%route, %cluster, error = %vane_proto::text::error_chain(&error), "upstream failed");
            return (local(StatusCode::BAD_GATEWAY, "upstream unavailable\n"), info);
        }
        Err(_) => {
            if !client_broke() {
                cluster.stats.timeouts.fetch_add(1, Ordering::Relaxed);
            }
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
pub(super) fn upstream_uri(cluster: &Cluster, endpoint: &Authority, version: Version, from: &Uri) -> Option<Uri> {
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

pub(super) static X_VANE_OVERLOADED: HeaderName = HeaderName::from_static("x-vane-overloaded");

/// The request and response edits of a forwarding route.
#[derive(Debug)]
pub(super) struct Edits<'a> {
    pub(super) host: Option<&'a HeaderValue>,
    pub(super) downstream: Downstream,
    pub(super) route: &'a Route,
    pub(super) params: &'a [(Box<str>, Box<str>)],
    pub(super) client_ip: std::net::IpAddr,
    /// Set by a streamed request body that failed: the client's fault, not the upstream's.
    pub(super) body_fault: Option<&'a BodyFault>,
}

/// An HTTP/1.1 `Upgrade` request (WebSocket and others): the protocol asked for and the
/// handle that yields the client's connection once a `101` has been sent.
pub(super) type Upgrade = (HeaderValue, hyper::upgrade::OnUpgrade);

pub(super) fn take_upgrade<B>(req: &mut Request<B>) -> Option<Upgrade> {
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
pub(super) fn splice(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
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

/// Sends a copy of `req` with `body` (`None`: none) to a shadow cluster in the
/// background and discards the answer. The copy's Host gets `-shadow` so the shadow can
/// tell mirrored traffic apart.
pub(super) fn mirror(shadow: Arc<Cluster>, req: &Request<UpstreamBody>, body: Option<Bytes>, timeout: Duration) {
    let Some((_picked, endpoint)) = shadow.pick(None) else { return };
    let mut copy = Request::new(body.map_or_else(UpstreamBody::empty, UpstreamBody::whole));
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

/// gRPC streams are never read ahead: a client stream may wait for answers before it
/// ends.
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// What a retry of a received request is sent as: the request's head and its body, when
/// that was empty or held whole in memory.
#[derive(Debug)]
struct Template {
    head: Request<()>,
    body: Option<Bytes>,
}

impl Template {
    /// `None` for a request whose body streams (it cannot be sent twice). Boxed, so that
    /// requests without one do not carry its room in their future.
    fn of(req: &mut Request<UpstreamBody>) -> Option<Box<Template>> {
        let body = if req.body().is_end_stream() { None } else { Some(req.body_mut().copy_buffered()?) };
        let mut head = Request::new(());
        *head.method_mut() = req.method().clone();
        *head.uri_mut() = req.uri().clone();
        *head.version_mut() = req.version();
        *head.headers_mut() = req.headers().clone();
        Some(Box::new(Template { head, body }))
    }

    fn request(&self) -> Request<UpstreamBody> {
        let body = self.body.clone().map_or_else(UpstreamBody::empty, UpstreamBody::whole);
        Request::clone(&self.head).map(|()| body)
    }
}

/// `uri` with its path replaced, query kept.
pub(super) fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    Uri::from_parts(parts).ok()
}
