//! The node's admin endpoint: `/ready` (200 `ready`, 200 `stale` when serving a cached
//! snapshot the control plane has not confirmed, 503 before any config) and `/config`
//! (JSON: node id, version and hash held, bound listeners, problems) and `/metrics`
//! (Prometheus).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tracing::debug;

use crate::{node::shared::NodeShared, observe::metrics};

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
            let held = shared.serving.runtime.load().is_some();
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
                "problems": shared.problems.report().iter().map(|p| serde_json::json!({
                    "kind": p.kind,
                    "subject": p.subject,
                    "message": p.message,
                })).collect::<Vec<_>>(),
            });
            let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
            response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            response
        }
        "/clusters" => {
            // Each endpoint's health, as the balancer sees it now.
            let runtime = shared.serving.runtime.load_full();
            let mut clusters = serde_json::Map::new();
            if let Some(rt) = runtime.as_ref() {
                for (name, cluster) in &rt.clusters {
                    let endpoints: Vec<serde_json::Value> = cluster
                        .health()
                        .into_iter()
                        .zip(cluster.operators())
                        .map(|((address, available, active, ejected_ms), (draining, in_flight, percent))| {
                            serde_json::json!({
                                "address": address,
                                "available": available,
                                "health_check_ok": active,
                                "ejected_for_ms": ejected_ms,
                                "draining": draining,
                                "active_requests": in_flight,
                                "weight_percent": percent,
                            })
                        })
                        .collect();
                    clusters.insert(name.to_string(), serde_json::Value::Array(endpoints));
                }
            }
            let mut response =
                Response::new(Full::new(Bytes::from(serde_json::Value::Object(clusters).to_string() + "\n")));
            response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            response
        }
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(render_metrics(shared))));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4"));
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /ready, /config, /clusters or /metrics\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

/// The endpoint families: drained endpoints and the requests they still have (the drain
/// is over on this node at 0), and endpoints that slow start is ramping up. Only those
/// endpoints have series, so a cluster of a thousand endpoints costs nothing here.
fn render_endpoints(out: &mut String, rt: &crate::routing::runtime::Runtime) {
    let mut clusters: Vec<_> = rt.clusters.iter().collect();
    clusters.sort_by(|a, b| a.0.cmp(b.0));
    let states: Vec<_> = clusters.iter().map(|(name, c)| (name, c.health(), c.operators())).collect();
    metrics::header(
        out,
        "vane_upstream_endpoint_draining",
        "gauge",
        "Drained endpoints: requests to each still awaiting their response head (0: drained).",
    );
    for (name, health, ops) in &states {
        for ((address, ..), (draining, in_flight, _)) in health.iter().zip(ops) {
            if *draining {
                let _ = writeln!(
                    out,
                    "vane_upstream_endpoint_draining{{cluster=\"{}\",endpoint=\"{}\"}} {in_flight}",
                    metrics::escape(name),
                    metrics::escape(address)
                );
            }
        }
    }
    metrics::header(
        out,
        "vane_upstream_endpoint_weight_percent",
        "gauge",
        "Endpoints that slow start is ramping up: the percent of their weight they get now.",
    );
    for (name, health, ops) in &states {
        for ((address, ..), (draining, _, percent)) in health.iter().zip(ops) {
            if !*draining && *percent < 100 {
                let _ = writeln!(
                    out,
                    "vane_upstream_endpoint_weight_percent{{cluster=\"{}\",endpoint=\"{}\"}} {percent}",
                    metrics::escape(name),
                    metrics::escape(address)
                );
            }
        }
    }
}

/// Everything `/metrics` shows: request families, listeners, config and control-plane state.
fn render_metrics(shared: &NodeShared) -> String {
    let mut out = String::with_capacity(4096);
    shared.metrics.render(&mut out);
    metrics::render_listeners(&mut out, &shared.listeners().stats());
    if let Some(rt) = shared.serving.runtime.load().as_ref() {
        rt.policies.render(&mut out);
        shared.caches.render(&mut out);
        render_endpoints(&mut out, rt);
    }
    let (version, _) = shared.held();
    metrics::single(&mut out, "vane_config_version", "gauge", "Config version this node serves (0: none).", version);
    let swaps = shared.swaps.load(Ordering::Relaxed);
    metrics::single(&mut out, "vane_config_swaps_total", "counter", "Snapshots swapped in.", swaps);
    let nacks = shared.metrics.nacks.load(Ordering::Relaxed);
    metrics::single(&mut out, "vane_config_nacks_total", "counter", "Snapshots refused.", nacks);
    let purge_seq = shared.purge_seq.load(Ordering::Relaxed);
    metrics::single(&mut out, "vane_cache_purge_seq", "gauge", "The last cache purge applied (0: none).", purge_seq);
    let purges = shared.purges.load(Ordering::Relaxed);
    metrics::single(&mut out, "vane_cache_purges_total", "counter", "Cache purges applied since start.", purges);
    let connected = shared.connected.load(Ordering::Relaxed);
    metrics::single(
        &mut out,
        "vane_control_plane_connected",
        "gauge",
        "1 while the discovery stream is up.",
        u8::from(connected),
    );
    let since = if connected {
        0.0
    } else {
        let now_ms = u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        now_ms.saturating_sub(shared.lost_at_ms.load(Ordering::Relaxed)) as f64 / 1000.0
    };
    metrics::single(
        &mut out,
        "vane_control_plane_last_contact_seconds",
        "gauge",
        "Seconds since the discovery stream was last up (0 while it is).",
        since,
    );
    let stale = shared.stale.load(Ordering::Relaxed);
    metrics::single(
        &mut out,
        "vane_config_stale",
        "gauge",
        "1 while serving a cached snapshot not yet confirmed.",
        u8::from(stale),
    );
    let replay = &shared.serving.replay_budget;
    metrics::single(
        &mut out,
        "vane_replay_budget_bytes_in_use",
        "gauge",
        "Memory held by request bodies kept for a retry or a mirror.",
        replay.in_use(),
    );
    metrics::single(
        &mut out,
        "vane_replay_budget_refused_total",
        "counter",
        "Requests answered 503 because their body did not fit the replay budget.",
        replay.refused(),
    );
    shared.problems.render(&mut out);
    let watched = shared.watched.borrow().len();
    metrics::single(
        &mut out,
        "vane_node_watched_files",
        "gauge",
        "Certificate, key and CA files watched for changes.",
        watched,
    );
    let logs = &shared.access_logs.counters;
    metrics::single(
        &mut out,
        "vane_access_log_lines_total",
        "counter",
        "Access log lines queued.",
        logs.lines.load(Ordering::Relaxed),
    );
    metrics::single(
        &mut out,
        "vane_access_log_dropped_total",
        "counter",
        "Access log lines dropped because the writer fell behind.",
        logs.dropped.load(Ordering::Relaxed),
    );
    out
}
