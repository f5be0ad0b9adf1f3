//! The upstream of the compression tests: one path per kind of answer, and a 10 MB body
//! streamed in 64 KiB chunks that stops halfway until the test lets it go on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// The size of `/stream`.
pub(super) const STREAM_BYTES: usize = 10 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// A page of text, `n` bytes: lines that repeat with a counter (compresses about 10x).
pub(super) fn text(n: usize) -> String {
    let mut out = String::with_capacity(n + 64);
    let mut i = 0u64;
    while out.len() < n {
        out.push_str(&format!("<p>line {i}: the quick brown fox jumps over the lazy dog</p>\n"));
        i += 1;
    }
    out.truncate(n);
    out
}

/// `n` bytes of hex digits from a small PRNG: text that compresses only about 2x, so a
/// node that held the body would show it in its memory.
pub(super) fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"0123456789abcdef"[(x & 15) as usize]
        })
        .collect()
}

/// The body `/stream` sends, whole (what the client must decode to).
pub(super) fn stream_body() -> Vec<u8> {
    (0..STREAM_BYTES / CHUNK).flat_map(|i| noise(i as u64 + 1, CHUNK)).collect()
}

#[derive(Debug)]
pub(super) struct Origin {
    pub(super) addr: SocketAddr,
    /// `/stream` waits on this after its first half.
    pub(super) resume: Arc<Notify>,
    /// `/stream` sent its last byte.
    pub(super) finished: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    pub(super) async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let resume = Arc::new(Notify::new());
        let finished = Arc::new(AtomicBool::new(false));
        let (r, f) = (resume.clone(), finished.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (r, f) = (r.clone(), f.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(req, r.clone(), f.clone()));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Origin { addr, resume, finished, task }
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let body: Bytes = body.into();
    let mut response = Response::new(Full::new(body).boxed());
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        response.headers_mut().append(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    response
}

async fn answer(
    req: Request<Incoming>,
    resume: Arc<Notify>,
    finished: Arc<AtomicBool>,
) -> Result<Response<Body>, Infallible> {
    let page = text(32 * 1024);
    Ok(match req.uri().path() {
        "/text" => full(
            200,
            &[
                ("content-type", "text/html; charset=utf-8"),
                ("etag", "\"v1\""),
                ("accept-ranges", "bytes"),
                ("vary", "Origin"),
            ],
            page,
        ),
        "/json" => full(200, &[("content-type", "application/json")], format!("{{\"page\":{page:?}}}")),
        "/encoded" => full(200, &[("content-type", "text/plain"), ("content-encoding", "gzip")], noise(9, 4096)),
        "/partial" => full(206, &[("content-type", "text/plain"), ("content-range", "bytes 0-4095/32768")], text(4096)),
        "/no-transform" => {
            full(200, &[("content-type", "text/plain"), ("cache-control", "public, no-transform")], page)
        }
        "/sse" => full(200, &[("content-type", "text/event-stream")], page),
        "/grpc" => full(200, &[("content-type", "application/grpc")], page),
        "/png" => full(200, &[("content-type", "image/png")], page),
        "/small" => full(200, &[("content-type", "text/plain")], text(100)),
        "/empty" => full(204, &[("content-type", "text/plain")], ""),
        "/events" => {
            // Two server-sent events; the second only once the test lets it go.
            let (tx, rx) = mpsc::channel::<Bytes>(2);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from_static(b"data: one\n\n")).await;
                resume.notified().await;
                let _ = tx.send(Bytes::from_static(b"data: two\n\n")).await;
            });
            let frames = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok(Frame::data(b)));
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
            response.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
            response
        }
        "/stream" => {
            let (tx, rx) = mpsc::channel::<Bytes>(2);
            tokio::spawn(async move {
                for i in 0..STREAM_BYTES / CHUNK {
                    if i == STREAM_BYTES / CHUNK / 2 {
                        resume.notified().await;
                    }
                    if tx.send(noise(i as u64 + 1, CHUNK).into()).await.is_err() {
                        return;
                    }
                }
                finished.store(true, Ordering::SeqCst);
            });
            let frames = tokio_stream::wrappers::ReceiverStream::new(rx).map(|b| Ok(Frame::data(b)));
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(frames)));
            response.headers_mut().insert("content-type", "text/plain".parse().unwrap());
            response
        }
        _ => full(404, &[("content-type", "text/plain")], "no such page\n"),
    })
}
