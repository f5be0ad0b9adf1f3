//! vane-bench-backend: the upstream behind every proxy that Vane's benchmark scripts
//! (`benches/peer-bench.sh`, `ab.sh`, `instructions.sh`, `tls-bench.sh`, ...) compare.
//!
//! ```text
//! vane-bench-backend PORT [THREADS]     listens on 127.0.0.1:PORT only; THREADS=1 (default)
//!                                       is a current-thread runtime, more a multi-thread one
//!   GET  /        64 bytes, naming the port ("vane-bench-backend 18301 ...\n"), so a script
//!                 can see both backends answer through a round-robin proxy
//!   GET  /big     16 KiB
//!   POST /, /big  the same answers, sent once the request body has been read to its end;
//!                 `x-body-bytes` says how many bytes it had (any method with a body)
//!   GET  /stats   {"connections":N,"requests":N,"body_bytes":N} since start: scripts read it
//!                 on the backend's own port to count the upstream connections a proxy opened
//! ```
//!
//! HTTP/1.1 and h2c (prior knowledge) on the same port; HTTP/1.1 connections are kept alive
//! for as long as the client keeps them.
//!
//! Why it reads bodies before answering: a hyper server that answers a request without
//! reading its body cannot find where the next request starts, so it closes the connection
//! after the answer. The backend the first peer runs used did that, and every proxy in front
//! of it opened a new upstream connection for every 16 KiB POST (10,621 connects for 10,593
//! answers in BENCHMARKS.md, issue 17): those rows measured connection setup, not bodies.
//! Reading the body (and discarding it frame by frame, never buffering it whole) keeps the
//! connection reusable, as a real application server does.
//!
//! Kept small and cheap because it runs on the load generator's core: fixed `Bytes` bodies
//! shared by reference count, counters as relaxed atomics, no allocation per request beyond
//! hyper's own.

use std::error::Error;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

const SMALL_LEN: usize = 64;
const BIG_LEN: usize = 16 * 1024;
const X_BODY_BYTES: HeaderName = HeaderName::from_static("x-body-bytes");
const USAGE: &str = "usage: vane-bench-backend PORT [THREADS]   (listens on 127.0.0.1:PORT)";

/// What every connection shares: the fixed bodies and the counters `/stats` reports.
#[derive(Debug)]
struct Shared {
    small: Bytes,
    big: Bytes,
    connections: AtomicU64,
    requests: AtomicU64,
    body_bytes: AtomicU64,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.len() > 2 || args.iter().any(|a| a.starts_with('-')) {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    let port: u16 = args[0].parse().map_err(|e| format!("PORT {:?}: {e}", args[0]))?;
    let threads: usize = match args.get(1) {
        Some(t) => t.parse().map_err(|e| format!("THREADS {t:?}: {e}"))?,
        None => 1,
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    runtime.block_on(serve(port))
}

fn shared(port: u16) -> &'static Shared {
    let mut small = format!("vane-bench-backend {port} ").into_bytes();
    small.resize(SMALL_LEN - 1, b'.');
    small.push(b'\n');
    // Lives as long as the process: a `&'static` spares every request a reference count.
    Box::leak(Box::new(Shared {
        small: Bytes::from(small),
        big: Bytes::from(vec![b'x'; BIG_LEN]),
        connections: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        body_bytes: AtomicU64::new(0),
    }))
}

async fn serve(port: u16) -> Result<(), Box<dyn Error>> {
    let shared = shared(port);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(addr).await.map_err(|e| format!("bind {addr}: {e}"))?;
    eprintln!("vane-bench-backend listening on http://{addr}");
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("accept: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        shared.connections.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(shared, req));
            // A connection that ends with an error (a client reset) just ends.
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(shared: &'static Shared, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    shared.requests.fetch_add(1, Relaxed);
    let (head, mut body) = req.into_parts();
    let had_body = !body.is_end_stream();
    let mut read = 0u64;
    if had_body {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                read += data.len() as u64;
            }
        }
        shared.body_bytes.fetch_add(read, Relaxed);
    }
    let (status, payload) = match head.uri.path() {
        "/" => (StatusCode::OK, shared.small.clone()),
        "/big" => (StatusCode::OK, shared.big.clone()),
        "/stats" => (StatusCode::OK, Bytes::from(stats(shared))),
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    };
    let mut response = Response::new(Full::new(payload));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if had_body {
        headers.insert(X_BODY_BYTES, HeaderValue::from(read));
    }
    Ok(response)
}

fn stats(shared: &Shared) -> String {
    format!(
        "{{\"connections\":{},\"requests\":{},\"body_bytes\":{}}}\n",
        shared.connections.load(Relaxed),
        shared.requests.load(Relaxed),
        shared.body_bytes.load(Relaxed),
    )
}
