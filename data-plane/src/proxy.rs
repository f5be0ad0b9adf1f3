//! The HTTP request path: route, pick an endpoint, forward, stream the answer back.
//!
//! A request loads the current runtime once and keeps it to the end, so a swap never
//! changes the rules under a request in flight. Local answers: `404` no route, `502`
//! upstream unreachable or broken, `503` no config yet, `504` upstream too slow.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tracing::debug;

use crate::NodeShared;
use crate::cluster::Cluster;
use crate::router::Route;

/// Response bodies: streamed from upstream, or a short local answer.
pub(crate) type ProxyBody = Either<Incoming, Full<Bytes>>;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
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

/// One downstream connection's context.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    pub(crate) shared: Arc<NodeShared>,
    pub(crate) slot: u64,
    pub(crate) peer: SocketAddr,
}

impl Connection {
    pub(crate) async fn handle(self, req: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        let Some(runtime) = self.shared.runtime.load_full() else {
            return Ok(local(StatusCode::SERVICE_UNAVAILABLE, "no configuration yet\n"));
        };
        let Some(router) = runtime.listeners.get(&self.slot) else {
            return Ok(local(StatusCode::NOT_FOUND, "no route\n"));
        };
        let Some(entry) = router.find(req.uri().path()) else {
            router.unrouted.record(404);
            return Ok(local(StatusCode::NOT_FOUND, "no route\n"));
        };
        let Some((index, cluster)) = entry.route.forward.pick() else {
            router.unrouted.record(503);
            return Ok(local(StatusCode::SERVICE_UNAVAILABLE, "no cluster\n"));
        };
        let response = forward(&entry.route, cluster, req, self.peer).await;
        if let Some(counters) = entry.counters.get(index) {
            counters.record(response.status().as_u16());
        }
        Ok(response)
    }
}

/// Sends the request to `cluster` and streams the answer back, or answers locally.
async fn forward(route: &Route, cluster: &Cluster, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
    let Some(upstream) = upstream_request(req, cluster, peer) else {
        return local(StatusCode::BAD_REQUEST, "bad request\n");
    };
    let response = match tokio::time::timeout(route.timeout, cluster.client.request(upstream)).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            debug!(route = %route.name, cluster = %cluster.name, %error, "upstream failed");
            return local(StatusCode::BAD_GATEWAY, "upstream unavailable\n");
        }
        Err(_) => {
            debug!(route = %route.name, cluster = %cluster.name, "upstream timed out");
            return local(StatusCode::GATEWAY_TIMEOUT, "upstream timed out\n");
        }
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
}

/// Rewrites a downstream request for `cluster`'s next endpoint; `None` when the request
/// cannot be expressed upstream.
pub(crate) fn upstream_request<B>(req: Request<B>, cluster: &Cluster, peer: SocketAddr) -> Option<Request<B>> {
    let endpoint = cluster.pick()?;
    let (mut parts, body) = req.into_parts();
    let original_host = parts
        .headers
        .get(header::HOST)
        .cloned()
        .or_else(|| parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
    let path_and_query =
        parts.uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    parts.uri = Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority(endpoint.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .ok()?;
    parts.version = Version::HTTP_11;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        headers.insert(header::HOST, host);
    }
    // Client-supplied forwarding headers are not trusted: the peer is the client.
    headers.insert(X_FORWARDED_FOR.clone(), HeaderValue::from(IpHeader(peer)));
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID.clone(), request_id());
    }
    Some(Request::from_parts(parts, body))
}

struct IpHeader(SocketAddr);

impl From<IpHeader> for HeaderValue {
    fn from(ip: IpHeader) -> HeaderValue {
        // An IP address always renders as a valid header value.
        HeaderValue::from_str(&ip.0.ip().to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn local(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(body.as_bytes()))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
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
    fn request_ids_are_uuid_v4() {
        let id = request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_ne!(request_id(), id);
    }
}
