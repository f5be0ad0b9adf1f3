//! Demo upstreams: tiny HTTP echo servers that say who answered. `vane dev` runs two;
//! the end-to-end tests use them as upstreams.
//!
//! Every response carries `x-backend: NAME` and a text body: the backend's name, the
//! request line, then the request headers, one per line. `?delay_ms=N` delays the answer
//! (timeouts, requests in flight during a swap); `?status=N` answers with that status.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running echo server; stops when dropped.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Binds `addr` (port 0 for any) and serves until dropped.
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<EchoServer> {
        EchoServer::start_with_delay(name, addr, Duration::ZERO).await
    }

    /// As `start`, answering every request only after `delay` (a slow backend).
    pub async fn start_with_delay(name: &str, addr: SocketAddr, delay: Duration) -> std::io::Result<EchoServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let name: Arc<str> = name.into();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the server drops it and closes them all,
            // as a killed process would.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                while connections.try_join_next().is_some() {}
                let name = name.clone();
                let counter = counter.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        let name = name.clone();
                        async move {
                            tokio::time::sleep(delay).await;
                            echo(name, req).await
                        }
                    });
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(EchoServer { addr, received, task })
    }

    /// How many requests have arrived (counted before any delay).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn query_param(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

async fn echo(name: Arc<str>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(ms) = query_param(&req, "delay_ms") {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    let status = query_param(&req, "status")
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut body = format!("backend: {name}\n{} {} {:?}\n", req.method(), req.uri(), req.version());
    for (k, v) in req.headers() {
        body.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
    }
    let received = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
    body.push_str(&format!("body-bytes: {received}\n"));
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("content-type", http::HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Ok(v) = http::HeaderValue::from_str(&name) {
        headers.insert("x-backend", v);
    }
    Ok(response)
}
