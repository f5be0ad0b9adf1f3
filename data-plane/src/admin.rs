//! The node's admin endpoint: `/ready` (200 `ready`, 200 `stale` when serving a cached
//! snapshot the control plane has not confirmed, 503 before any config) and `/config`
//! (JSON: node id, version and hash held, bound listeners) and `/metrics` (Prometheus).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tracing::debug;

use crate::NodeShared;

pub(crate) async fn serve(listener: TcpListener, shared: Arc<NodeShared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, &req)) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                debug!(%error, "admin connection error");
            }
        });
    }
}

fn answer(shared: &NodeShared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/ready" => {
            let held = shared.runtime.load().is_some();
            if !held {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready: no config yet\n")
            } else if shared.stale.load(Ordering::Relaxed) {
                text(StatusCode::OK, "stale\n")
            } else {
                text(StatusCode::OK, "ready\n")
            }
        }
        "/config" => {
            let (version, sha256) = shared.held();
            let listeners: serde_json::Map<String, serde_json::Value> = shared
                .listeners()
                .bound()
                .into_iter()
                .map(|(name, addr)| (name, serde_json::Value::String(addr.to_string())))
                .collect();
            let body = serde_json::json!({
                "node_id": shared.node_id,
                "version": version,
                "sha256": sha256,
                "connected": shared.connected.load(Ordering::Relaxed),
                "stale": shared.stale.load(Ordering::Relaxed),
                "snapshots_received": shared.snapshots.load(Ordering::Relaxed),
                "swaps": shared.swaps.load(Ordering::Relaxed),
                "listeners": listeners,
            });
            let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
            response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            response
        }
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(shared.metrics.render())));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4"));
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /ready, /config or /metrics\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}
