//! HTTP/1.1 upstream connections, kept per endpoint of a cluster.
//!
//! Written here on top of hyper's connection API instead of hyper-util's legacy client,
//! which the node used before. Profiled under load, that client cost about 8% of the
//! node's CPU per request: it hashes `(scheme, authority)` with SipHash under a mutex on
//! checkout and again on return, clones the client and its connector for every request,
//! and spawns a task per request whose only job is to wait until the connection is idle
//! again and put it back. Here an endpoint's idle connections are a short list found by
//! the endpoint's index, and a connection goes back to its list when the response that
//! used it has been sent whole ([`Lease`], held by the response body until then): no
//! hashing, no task, no clone of the connector.
//!
//! Two kinds of connections are kept per endpoint. Requests without a body (the common
//! case) are exchanged inline on plain sockets by [`crate::http::h1`]; the connection goes back
//! to its list as soon as the response body has been read whole. Requests with a body and
//! upgrades go through hyper's connection API, whose connection is a task of its own.
//!
//! A pooled hyper connection is only used when hyper reports it ready: one still
//! finishing a previous exchange is set aside, a closed one dropped. A pooled socket is
//! only used when the upstream has not closed it (checked without a system call while it
//! has nothing to read). A request that a reused connection turned down before a byte of
//! response (the upstream closed it while it sat idle) is sent again on a new connection
//! when that is safe: always for hyper's (the request was not written), for idempotent
//! methods for inline exchanges.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;
use tracing::debug;

use crate::http::body::UpstreamBody;
use crate::http::h1::{self, Conn, IdleSockets, ResponseBody};

use crate::support::BoxError;

/// How many idle connections a checkout looks at before opening a new one.
const CHECKOUT_TRIES: usize = 4;

/// Why a request could not be exchanged with an upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No connection could be made (refused, timed out, TLS handshake failed). The
    /// request comes back when it can (nothing of it was sent), for a retry elsewhere.
    #[error("connect: {0}")]
    Connect(#[source] BoxError, Option<Box<Request<UpstreamBody>>>),
    /// The connection failed while the request was sent or its response read.
    #[error("{0}")]
    Exchange(#[source] BoxError),
}

impl SendError {
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(..))
    }

    /// The request a failed connect gives back, untouched (body included).
    pub(crate) fn take_unsent(&mut self) -> Option<Request<UpstreamBody>> {
        match self {
            SendError::Connect(_, unsent) => unsent.take().map(|r| *r),
            SendError::Exchange(_) => None,
        }
    }
}

/// The HTTP/1.1 connections of one cluster, per endpoint.
pub(crate) struct Http1Pool {
    connector: HttpsConnector<HttpConnector>,
    endpoints: Box<[Slot]>,
    idle_timeout: Duration,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool").field("endpoints", &self.endpoints.len()).finish()
    }
}

struct Slot {
    /// `scheme://authority` of the endpoint: what the connector connects to.
    target: Uri,
    /// Idle hyper connections, the most recently used at the back.
    idle: Mutex<VecDeque<Idle>>,
    /// Idle sockets for inline exchanges (the codec's list: a response body puts its
    /// socket back there itself).
    sockets: Arc<IdleSockets>,
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

/// A connection lent to one exchange. Given back with [`Lease::release`] once the
/// response has been read whole; dropped otherwise (hyper then closes the connection).
pub(crate) struct Lease {
    pool: Arc<Http1Pool>,
    index: usize,
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("endpoint", &self.index).finish()
    }
}

impl Lease {
    /// Puts the connection back in its endpoint's idle list.
    pub(crate) fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let Some(slot) = self.pool.endpoints.get(self.index) else { return };
        let mut idle = slot.idle.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest connection is at the front: drop it once it has idled too long.
        if idle.front().is_some_and(|i| self.since.saturating_duration_since(i.since) > self.pool.idle_timeout) {
            idle.pop_front();
        }
        idle.push_back(Idle { sender: self.sender, since: self.since });
    }
}

impl Http1Pool {
    /// A pool over `targets` (`scheme://authority` per endpoint, in endpoint order). Idle
    /// connections are closed after `idle_timeout`, by a background sweep that ends with
    /// the pool.
    pub(crate) fn new(
        connector: HttpsConnector<HttpConnector>,
        targets: Vec<Uri>,
        idle_timeout: Duration,
    ) -> Arc<Http1Pool> {
        let pool = Arc::new(Http1Pool {
            connector,
            endpoints: targets
                .into_iter()
                .map(|target| Slot {
                    target,
                    idle: Mutex::default(),
                    sockets: Arc::new(IdleSockets::new(idle_timeout)),
                })
                .collect(),
            idle_timeout,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&pool), idle_timeout));
        }
        pool
    }

    /// Sends `req` (origin-form URI, `Host` set) to endpoint `index` on an idle connection,
    /// or a new one. `now` is the caller's clock reading, to avoid another.
    pub(crate) async fn send(
        self: &Arc<Self>,
        index: usize,
        mut req: Request<UpstreamBody>,
        now: Instant,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        loop {
            let (mut sender, reused) = match self.checkout(index, now) {
                Some(sender) => (sender, true),
                // Boxed: connecting (TCP, TLS, handshake) is rare and its future large.
                None => match Box::pin(self.connect(index)).await {
                    Ok(sender) => (sender, false),
                    Err(SendError::Connect(error, _)) => return Err(SendError::Connect(error, Some(Box::new(req)))),
                    Err(error) => return Err(error),
                },
            };
            match sender.try_send_request(req).await {
                Ok(response) => {
                    return Ok((response, Lease { pool: self.clone(), index, sender, since: now }));
                }
                Err(mut error) => match error.take_message() {
                    // Turned down before a byte was written: the upstream had closed this
                    // idle connection. Safe to send again, on a new one.
                    Some(back) if reused => {
                        debug!(endpoint = index, error = %error.error(), "pooled connection closed; retrying");
                        req = back;
                    }
                    _ => return Err(SendError::Exchange(error.into_error().into())),
                },
            }
        }
    }

    /// Exchanges a request (origin-form URI, `Host` set) without a body or with one held
    /// whole in memory with endpoint `index` inline, on an idle socket or a new one. The
    /// response body reads from the socket and gives it back when done.
    ///
    /// Not an `async fn`, which would keep the request in its future beside its parts.
    pub(crate) fn exchange(
        self: &Arc<Self>,
        index: usize,
        req: Request<UpstreamBody>,
        now: Instant,
    ) -> impl Future<Output = Result<Response<ResponseBody>, SendError>> + Send + '_ {
        let (mut parts, mut body) = req.into_parts();
        // Empty, or held whole in memory: sent with the head.
        let body = body.take_buffered();
        let idempotent = matches!(
            parts.method,
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::PUT | http::Method::DELETE
        );
        async move {
            loop {
                let (mut conn, reused) = match self.checkout_socket(index, now) {
                    Some(conn) => (conn, true),
                    // Boxed: connecting (TCP, TLS) is rare and its future large.
                    None => match Box::pin(self.connect_io(index)).await {
                        Ok(io) => (Conn::new(TokioIo::new(io)), false),
                        Err(SendError::Connect(error, _)) => {
                            let body = body.map_or_else(UpstreamBody::empty, UpstreamBody::whole);
                            let unsent = Request::from_parts(parts, body);
                            return Err(SendError::Connect(error, Some(Box::new(unsent))));
                        }
                        Err(error) => return Err(error),
                    },
                };
                match h1::exchange(&mut conn, &parts, body.as_deref()).await {
                    Ok((head, shape)) => {
                        // The request's head is written: its header map can serve another.
                        crate::support::spare::give(std::mem::take(&mut parts.headers));
                        let home = self.endpoints.get(index).map(|slot| slot.sockets.home(now));
                        return Ok(head.map(|()| ResponseBody::new(conn, shape, home)));
                    }
                    Err(e) if reused && e.nothing_received && idempotent => {
                        debug!(endpoint = index, error = %e.error, "pooled connection closed; retrying");
                    }
                    Err(e) => return Err(SendError::Exchange(e.error)),
                }
            }
        }
    }

    /// An idle socket of endpoint `index` that the upstream has not closed.
    fn checkout_socket(&self, index: usize, now: Instant) -> Option<Box<Conn>> {
        self.endpoints.get(index)?.sockets.take(now)
    }

    /// An idle connection of endpoint `index` that is ready for a request.
    fn checkout(&self, index: usize, now: Instant) -> Option<SendRequest<UpstreamBody>> {
        let slot = self.endpoints.get(index)?;
        let mut idle = slot.idle.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..CHECKOUT_TRIES {
            let entry = idle.pop_back()?;
            if entry.sender.is_closed() || now.saturating_duration_since(entry.since) > self.idle_timeout {
                continue;
            }
            if entry.sender.is_ready() {
                return Some(entry.sender);
            }
            // Still finishing its last exchange: leave it for later, oldest position.
            idle.push_front(entry);
        }
        None
    }

    async fn connect_io(&self, index: usize) -> Result<MaybeHttpsStream<TokioIo<TcpStream>>, SendError> {
        let slot = self.endpoints.get(index).ok_or_else(|| SendError::Connect("no such endpoint".into(), None))?;
        self.connector.clone().call(slot.target.clone()).await.map_err(|e| SendError::Connect(e, None))
    }

    async fn connect(&self, index: usize) -> Result<SendRequest<UpstreamBody>, SendError> {
        let io = self.connect_io(index).await?;
        let (sender, connection) =
            http1::Builder::new().handshake(io).await.map_err(|e| SendError::Exchange(e.into()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// Closes connections that idled past `timeout`, every `timeout / 2`, until the pool goes.
async fn sweep(pool: Weak<Http1Pool>, timeout: Duration) {
    let period = (timeout / 2).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        for slot in pool.endpoints.iter() {
            let mut idle = slot.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|i| !i.sender.is_closed() && now.saturating_duration_since(i.since) <= timeout);
            drop(idle);
            slot.sockets.sweep(now);
        }
    }
}

/// How many idle connections endpoint `index` holds (tests).
#[cfg(test)]
impl Http1Pool {
    fn idle_count(&self, index: usize) -> usize {
        self.endpoints[index].idle.lock().map(|i| i.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderValue, header};
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An upstream that counts its connections and answers `conn N` (N from 1); with
    /// `close` set it ends every connection after one response.
    async fn upstream(close: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| async move {
                        let body = format!("conn {n} {}", req.uri());
                        let mut response = Response::new(Full::new(Bytes::from(body)));
                        if close {
                            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        Ok::<_, Infallible>(response)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, count)
    }

    fn pool_for(addr: std::net::SocketAddr) -> Arc<Http1Pool> {
        let connector = crate::tls::connector(HttpConnector::new(), None, false);
        Http1Pool::new(connector, vec![format!("http://{addr}").parse().unwrap()], Duration::from_secs(90))
    }

    fn get(path: &str) -> Request<UpstreamBody> {
        let mut req = Request::new(UpstreamBody::empty());
        *req.uri_mut() = path.parse().unwrap();
        req.headers_mut().insert(header::HOST, HeaderValue::from_static("upstream"));
        req
    }

    async fn exchange(pool: &Arc<Http1Pool>, path: &str) -> String {
        let (response, lease) = pool.send(0, get(path), Instant::now()).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        lease.release();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_released_connection_is_reused_and_sends_origin_form() {
        let (addr, connections) = upstream(false).await;
        let pool = pool_for(addr);
        assert_eq!(exchange(&pool, "/a?x=1").await, "conn 1 /a?x=1");
        assert_eq!(exchange(&pool, "/b").await, "conn 1 /b");
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(0), 1);
    }

    #[tokio::test]
    async fn a_connection_not_released_is_not_shared() {
        let (addr, connections) = upstream(false).await;
        let pool = pool_for(addr);
        let (first, _held) = pool.send(0, get("/one"), Instant::now()).await.unwrap();
        assert_eq!(exchange(&pool, "/two").await, "conn 2 /two");
        drop(first);
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_replaced() {
        let (addr, connections) = upstream(true).await;
        let pool = pool_for(addr);
        assert_eq!(exchange(&pool, "/a").await, "conn 1 /a");
        // The upstream said `Connection: close`: the next request needs a new connection.
        assert_eq!(exchange(&pool, "/b").await, "conn 2 /b");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let (addr, connections) = upstream(false).await;
        let connector = crate::tls::connector(HttpConnector::new(), None, false);
        let target: Uri = format!("http://{addr}").parse().unwrap();
        let pool = Http1Pool::new(connector, vec![target], Duration::from_secs(60));
        let (response, lease) = pool.send(0, get("/a"), Instant::now()).await.unwrap();
        response.into_body().collect().await.unwrap();
        lease.release();
        // A checkout two minutes later finds it expired and connects again.
        let later = Instant::now() + Duration::from_secs(120);
        let (response, _) = pool.send(0, get("/b"), later).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"conn 2 /b");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    async fn inline(pool: &Arc<Http1Pool>, method: http::Method, path: &str) -> (Response<()>, String) {
        let mut req = get(path);
        *req.method_mut() = method;
        let (parts, body) = pool.exchange(0, req, Instant::now()).await.unwrap().into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (Response::from_parts(parts, ()), String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn inline_exchanges_reuse_the_socket_once_the_body_is_read() {
        let (addr, connections) = upstream(false).await;
        let pool = pool_for(addr);
        assert_eq!(inline(&pool, http::Method::GET, "/a?x=1").await.1, "conn 1 /a?x=1");
        assert_eq!(inline(&pool, http::Method::GET, "/b").await.1, "conn 1 /b");
        let (head, body) = inline(&pool, http::Method::HEAD, "/c").await;
        assert_eq!((head.headers()[header::CONTENT_LENGTH].to_str().unwrap(), body.as_str()), ("9", ""));
        assert_eq!(inline(&pool, http::Method::DELETE, "/d").await.1, "conn 1 /d", "HEAD left it reusable");
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        // A body dropped before its end closes its socket instead of pooling it.
        let unread = pool.exchange(0, get("/e"), Instant::now()).await.unwrap();
        drop(unread);
        assert_eq!(inline(&pool, http::Method::GET, "/f").await.1, "conn 2 /f");
    }

    #[tokio::test]
    async fn inline_exchanges_replace_sockets_the_upstream_closed() {
        let (addr, connections) = upstream(true).await;
        let pool = pool_for(addr);
        assert_eq!(inline(&pool, http::Method::GET, "/a").await.1, "conn 1 /a");
        assert_eq!(inline(&pool, http::Method::GET, "/b").await.1, "conn 2 /b");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    /// A raw upstream: answers every request on a connection with `response`, then
    /// closes the connection when `close` is set (without saying so).
    async fn raw_upstream(response: &'static [u8], close: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if stream.write_all(response).await.is_err() || close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, count)
    }

    #[tokio::test]
    async fn inline_exchanges_decode_chunked_and_close_delimited_bodies() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let (addr, connections) = raw_upstream(chunked, false).await;
        let pool = pool_for(addr);
        assert_eq!(inline(&pool, http::Method::GET, "/").await.1, "abcde");
        assert_eq!(inline(&pool, http::Method::GET, "/").await.1, "abcde");
        assert_eq!(connections.load(Ordering::SeqCst), 1, "chunked bodies leave the socket reusable");

        let (addr, connections) = raw_upstream(b"HTTP/1.1 200 OK\r\n\r\nuntil close", true).await;
        let pool = pool_for(addr);
        assert_eq!(inline(&pool, http::Method::GET, "/").await.1, "until close");
        assert_eq!(inline(&pool, http::Method::GET, "/").await.1, "until close");
        assert_eq!(connections.load(Ordering::SeqCst), 2);

        let (addr, _) = raw_upstream(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", false).await;
        let pool = pool_for(addr);
        let (head, body) = inline(&pool, http::Method::GET, "/").await;
        assert_eq!((head.status(), body.as_str()), (http::StatusCode::NO_CONTENT, ""), "interim responses skipped");
    }

    #[tokio::test]
    async fn a_socket_closed_silently_while_idle_is_not_used_again() {
        let (addr, connections) = raw_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true).await;
        let pool = pool_for(addr);
        assert_eq!(inline(&pool, http::Method::GET, "/").await.1, "ok");
        // The upstream closed without a word; the idle socket notices before it is used,
        // or the GET is sent again on a new connection.
        for _ in 0..3 {
            assert_eq!(inline(&pool, http::Method::GET, "/").await.1, "ok");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn malformed_responses_are_errors() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nxx"[..],
            b"NOT HTTP\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        ] {
            let (addr, _) = raw_upstream(bad, true).await;
            let pool = pool_for(addr);
            let result = async {
                let response = pool.exchange(0, get("/"), Instant::now()).await?;
                response.into_body().collect().await.map_err(SendError::Exchange)?;
                Ok::<_, SendError>(())
            };
            assert!(result.await.is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let pool = pool_for(addr);
        let error = pool.send(0, get("/"), Instant::now()).await.expect_err("nothing listens");
        assert!(error.is_connect(), "{error}");
    }
}
