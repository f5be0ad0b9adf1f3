//! Operators' controls, seen from clients: draining an endpoint by hand (the CLI and the
//! admin API), slow start of an endpoint that comes back, and the retry limits (the
//! cluster's retry budget and `circuit_breaker.max_retries`) holding under a failing
//! upstream. Counting tests: upstreams here park requests until the test lets them go,
//! so every assertion is about counts at a moment the test chose, never about timing.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::oneshot;
use vane_proto::admin::SetEndpointDrainRequest;
use vane_proto::admin::config_service_client::ConfigServiceClient;
use vane_suite::*;

/// An upstream that answers `status` with `x-backend: NAME`, counts requests as they
/// arrive, and parks requests (every one, or those whose path starts with `/hold`) until
/// the test releases them, in arrival order. Stops when dropped.
struct Parking {
    addrs: Vec<SocketAddr>,
    state: Arc<ParkState>,
    _tasks: tokio::task::JoinSet<()>,
}

struct ParkState {
    name: String,
    status: StatusCode,
    park_all: bool,
    hits: AtomicUsize,
    /// The parked requests, oldest first.
    parked: Mutex<VecDeque<oneshot::Sender<()>>>,
}

impl Parking {
    async fn start(name: &str, status: u16, park_all: bool, ports: usize) -> Parking {
        let state = Arc::new(ParkState {
            name: name.to_owned(),
            status: StatusCode::from_u16(status).unwrap(),
            park_all,
            hits: AtomicUsize::new(0),
            parked: Mutex::default(),
        });
        let mut tasks = tokio::task::JoinSet::new();
        let mut addrs = Vec::new();
        for _ in 0..ports {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let state = state.clone();
            tasks.spawn(async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else { continue };
                    while connections.try_join_next().is_some() {}
                    let state = state.clone();
                    connections.spawn(async move {
                        let service = hyper::service::service_fn(move |req| answer(state.clone(), req));
                        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                    });
                }
            });
        }
        Parking { addrs, state, _tasks: tasks }
    }

    fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Requests parked now.
    fn parked(&self) -> usize {
        self.state.parked.lock().unwrap().len()
    }

    /// Lets every parked request go; later ones park until the next release.
    fn release(&self) {
        for waiting in self.state.parked.lock().unwrap().drain(..) {
            let _ = waiting.send(());
        }
    }

    /// Lets the oldest parked request go.
    fn release_one(&self) {
        if let Some(waiting) = self.state.parked.lock().unwrap().pop_front() {
            let _ = waiting.send(());
        }
    }
}

async fn answer(state: Arc<ParkState>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if state.park_all || req.uri().path().starts_with("/hold") {
        let (release, released) = oneshot::channel();
        state.parked.lock().unwrap().push_back(release);
        // Bounded: a test that never releases fails on its own deadline, not here.
        let _ = tokio::time::timeout(Duration::from_secs(30), released).await;
    }
    let mut response = Response::new(Full::new(Bytes::from(format!("backend: {}\n", state.name))));
    *response.status_mut() = state.status;
    response.headers_mut().insert("x-backend", state.name.parse().unwrap());
    Ok(response)
}

/// One HTTP listener and a round-robin cluster `pool` over `endpoints` (`(address,
/// drained)`), with `extra` cluster fields, behind one route for every path.
fn pool_yaml(endpoints: &[(SocketAddr, bool)], extra: &str) -> String {
    let mut yaml = String::from("listeners:\n  - name: web\n    address: 127.0.0.1:0\nclusters:\n  - name: pool\n");
    yaml.push_str(extra);
    yaml.push_str("    endpoints:\n");
    for (address, drain) in endpoints {
        yaml.push_str(&format!("      - {{ address: \"{address}\", drain: {drain} }}\n"));
    }
    yaml.push_str("routes:\n  - name: all\n    match: { prefix: / }\n    forward: { clusters: [{ name: pool }] }\n");
    yaml
}

async fn admin_get(node: &vane_data_plane::Node, path: &str) -> String {
    HttpClient::default().get(node.admin_addr().unwrap(), path).await.unwrap().body
}

/// The `/clusters` entry of endpoint `address` of cluster `pool`.
async fn endpoint_state(node: &vane_data_plane::Node, address: SocketAddr) -> serde_json::Value {
    let clusters: serde_json::Value = serde_json::from_str(&admin_get(node, "/clusters").await).unwrap();
    clusters["pool"].as_array().unwrap().iter().find(|e| e["address"] == address.to_string()).unwrap().clone()
}

#[tokio::test]
async fn a_drained_endpoint_finishes_its_request_in_flight_and_gets_no_new_ones_until_undrained() {
    init_logs();
    // The first use of the `vane` binary may build it: not while a request is held (the
    // route's 15 s timeout would end it).
    vane_bin();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let a = Parking::start("a", 200, false, 1).await;
    let b = Parking::start("b", 200, false, 1).await;
    cp.apply(&pool_yaml(&[(a.addr(), false), (b.addr(), false)], "")).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();

    // A request held upstream on `a` (round robin alternates: at most a few tries, and
    // any that landed on `b` are let go).
    let mut held = None;
    for attempt in 0..4 {
        let request = tokio::spawn({
            let client = client.clone();
            async move { client.get(web, "/hold").await }
        });
        let arrived = eventually(Duration::from_secs(5), "the held request is upstream", || async {
            (a.parked() + b.parked() == 1).then(|| a.parked() == 1)
        })
        .await;
        if arrived {
            held = Some(request);
            break;
        }
        b.release();
        let reply = request.await.unwrap().unwrap();
        assert_eq!((reply.status.as_u16(), reply.backend()), (200, "b"), "attempt {attempt}");
    }
    let held = held.expect("a request reached endpoint a");

    let a_addr = a.addr().to_string();
    let drained = vane(&cp.url(), &["endpoint", "drain", "pool", &a_addr]).await;
    assert!(drained.success, "{}", drained.stderr);
    assert_eq!(drained.stdout.trim(), format!("applied version 2: drain pool/{a_addr}: ~cluster pool"));
    wait_version(&node, 2).await;

    // The node says so: drained, with its one request still in flight.
    let state = endpoint_state(&node, a.addr()).await;
    assert_eq!((state["draining"].as_bool(), state["active_requests"].as_u64()), (Some(true), Some(1)), "{state}");
    let series = format!("vane_upstream_endpoint_draining{{cluster=\"pool\",endpoint=\"{a_addr}\"}}");
    assert_eq!(metric(&admin_get(&node, "/metrics").await, &series), 1.0);
    let table = vane(&cp.url(), &["get", "cluster", "pool"]).await.stdout;
    assert!(table.contains(&format!("{a_addr}(drained)")), "{table}");

    // No new request goes to `a`.
    let before = a.hits();
    for _ in 0..20 {
        let reply = client.get(web, "/next").await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.backend()), (200, "b"));
    }
    assert_eq!(a.hits(), before, "a drained endpoint got a new request");

    // The request in flight finishes on `a`, its connection intact.
    a.release();
    let reply = held.await.unwrap().unwrap();
    assert_eq!((reply.status.as_u16(), reply.backend()), (200, "a"));
    eventually(Duration::from_secs(5), "the drain is complete on the node", || async {
        let metrics = admin_get(&node, "/metrics").await;
        (metrics.contains(&series) && metric(&metrics, &series) == 0.0).then_some(())
    })
    .await;

    let undrained = vane(&cp.url(), &["endpoint", "undrain", "pool", &a_addr]).await;
    assert!(undrained.success, "{}", undrained.stderr);
    assert_eq!(undrained.stdout.trim(), format!("applied version 3: undrain pool/{a_addr}: ~cluster pool"));
    wait_version(&node, 3).await;
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(client.get(web, "/again").await.unwrap().backend().to_owned());
    }
    assert_eq!(backends.iter().filter(|b| *b == "a").count(), 2, "round robin again: {backends:?}");
    assert!(!admin_get(&node, "/metrics").await.contains("vane_upstream_endpoint_draining{"));

    let history = vane(&cp.url(), &["history"]).await.stdout;
    assert!(history.contains(&format!("drain pool/{a_addr}")), "{history}");
    assert!(history.contains(&format!("undrain pool/{a_addr}")), "{history}");
}

#[tokio::test]
async fn the_drain_api_refuses_unknown_endpoints_stale_versions_and_draining_a_whole_cluster() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:9301".parse().unwrap(), "127.0.0.1:9302".parse().unwrap());
    cp.apply(&pool_yaml(&[(a, false), (b, false)], "")).await.unwrap();
    let mut admin = ConfigServiceClient::connect(cp.url()).await.unwrap();
    let request = |address: SocketAddr, drain: bool| SetEndpointDrainRequest {
        cluster: "pool".into(),
        address: address.to_string(),
        drain,
        expected_version: 0,
        dry_run: false,
    };

    let dry = admin.set_endpoint_drain(SetEndpointDrainRequest { dry_run: true, ..request(a, true) }).await.unwrap();
    assert_eq!(
        (dry.get_ref().version, dry.get_ref().summary.as_str()),
        (0, "drain pool/127.0.0.1:9301: ~cluster pool")
    );
    let stale = SetEndpointDrainRequest { expected_version: 7, ..request(a, true) };
    let status = admin.set_endpoint_drain(stale).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let fresh = SetEndpointDrainRequest { expected_version: 1, ..request(a, true) };
    assert_eq!(admin.set_endpoint_drain(fresh).await.unwrap().get_ref().version, 2);
    let again = admin.set_endpoint_drain(request(a, true)).await.unwrap();
    assert!(again.get_ref().unchanged, "already drained: no new version");

    let status = admin.set_endpoint_drain(request(b, true)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("every endpoint is drained"), "{}", status.message());
    let status = admin
        .set_endpoint_drain(SetEndpointDrainRequest { cluster: "nope".into(), ..request(a, true) })
        .await
        .unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::NotFound, "cluster 'nope' not found"));
    let unknown: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let status = admin.set_endpoint_drain(request(unknown, true)).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::NotFound, "endpoint 'pool/127.0.0.1:9' not found"));

    // The CLI says the same in one line, and exits non-zero.
    let out = vane(&cp.url(), &["endpoint", "drain", "pool", &b.to_string()]).await;
    assert!(!out.success);
    assert_eq!(
        out.stderr.trim(),
        "error: invalid config: cluster 'pool': endpoints: every endpoint is drained: at least one must take new requests"
    );
    let out = vane(&cp.url(), &["endpoint", "undrain", "pool", &a.to_string()]).await;
    assert!(out.success, "{}", out.stderr);
}

#[tokio::test]
async fn drains_need_a_write_token() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = (vane_control_plane::generate_token(), vane_control_plane::generate_token());
    let tokens = write_yaml(
        dir.path(),
        "tokens",
        &format!(
            "viewer read {}\nops write {}\n",
            vane_control_plane::hash_token(&reader),
            vane_control_plane::hash_token(&writer)
        ),
    );
    let cp = VaneProcess::control_plane(&dir.path().join("store"), &["--admin-token-file", &tokens]).await.unwrap();
    let url = cp.control_plane_url().unwrap();
    let file = write_yaml(
        dir.path(),
        "pool.yaml",
        &pool_yaml(&[("127.0.0.1:9301".parse().unwrap(), false), ("127.0.0.1:9302".parse().unwrap(), false)], ""),
    );
    assert!(vane_with_token(&url, Some(&writer), &["apply", "-f", &file]).await.success);
    let refused = vane_with_token(&url, Some(&reader), &["endpoint", "drain", "pool", "127.0.0.1:9301"]).await;
    assert!(!refused.success);
    assert!(refused.stderr.starts_with("error: not allowed:"), "{}", refused.stderr);
    let done = vane_with_token(&url, Some(&writer), &["endpoint", "drain", "pool", "127.0.0.1:9301"]).await;
    assert!(done.success, "{}", done.stderr);
    let history = vane_with_token(&url, Some(&reader), &["history"]).await.stdout;
    let newest = history.lines().nth(1).unwrap_or_default();
    assert!(newest.contains("ops") && newest.contains("drain pool/127.0.0.1:9301"), "{history}");
}

#[tokio::test]
async fn an_undrained_endpoint_starts_with_a_small_share_and_ramps_up_to_a_fair_one() {
    init_logs();
    const WINDOW: Duration = Duration::from_secs(3);
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let a = EchoServer::start("a", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let b = EchoServer::start("b", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let slow_start = format!("    slow_start: {{ window: {}s }}\n", WINDOW.as_secs());
    cp.apply(&pool_yaml(&[(a.addr(), true), (b.addr(), false)], &slow_start)).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();
    assert_eq!(client.get(web, "/").await.unwrap().backend(), "b");

    // The ramp starts when the node applies the version: after this.
    let back = Instant::now();
    let out = vane(&cp.url(), &["endpoint", "undrain", "pool", &a.addr().to_string()]).await;
    assert!(out.success, "{}", out.stderr);
    wait_version(&node, 2).await;
    let series = format!("vane_upstream_endpoint_weight_percent{{cluster=\"pool\",endpoint=\"{}\"}}", a.addr());
    let percent = metric(&admin_get(&node, "/metrics").await, &series);
    assert!((10.0..60.0).contains(&percent), "a ramps from 10% of its weight: {percent}");

    // The first 100 requests: plain round robin would give `a` 50.
    let mut to_a = 0;
    for _ in 0..100 {
        let reply = client.get(web, "/").await.unwrap();
        assert_eq!(reply.status, 200);
        to_a += usize::from(reply.backend() == "a");
    }
    let spent = back.elapsed();
    assert!(to_a < 35, "a got {to_a} of the first 100 requests ({spent:?} into a {WINDOW:?} window)");
    assert!(to_a > 0, "a gets some traffic from the start");

    // After the window: plain round robin again, every other request to `a`.
    eventually(WINDOW * 4, "the end of the ramp", || async {
        (!admin_get(&node, "/metrics").await.contains(&series)).then_some(())
    })
    .await;
    assert!(back.elapsed() >= WINDOW, "the ramp lasts its window: {:?}", back.elapsed());
    let mut to_a = 0;
    for _ in 0..20 {
        to_a += usize::from(client.get(web, "/").await.unwrap().backend() == "a");
    }
    assert_eq!(to_a, 10, "a fair share after the window");
}

/// Runs 20 concurrent clients against a cluster (with `limits`) whose two endpoints
/// answer 503 to everything, on a route retrying `5xx` up to 3 times. The upstream parks
/// every try; the test lets them go and waits until every client has either its answer
/// or a try parked again, so that the retries in flight can be counted: never more than
/// `allowed`. First tries fail one at a time (the retries they win stay in flight while
/// the next fails), then retries fail in waves. Returns the retries sent.
async fn retries_under_a_failing_upstream(limits: &str, allowed: usize) -> usize {
    const CLIENTS: usize = 20;
    const RETRIES: usize = 3;
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let upstream = Parking::start("failing", 503, true, 2).await;
    let endpoints: Vec<(SocketAddr, bool)> = upstream.addrs.iter().map(|a| (*a, false)).collect();
    let yaml = pool_yaml(&endpoints, limits).replace(
        "forward: { clusters: [{ name: pool }] }",
        &format!("forward: {{ clusters: [{{ name: pool }}], retry: {{ retry_on: [5xx], num_retries: {RETRIES} }} }}"),
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;

    let finished = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let finished = finished.clone();
            tokio::spawn(async move {
                let reply = HttpClient::default().get(web, "/").await;
                finished.fetch_add(1, Ordering::SeqCst);
                reply
            })
        })
        .collect();
    eventually(Duration::from_secs(10), "every first try is upstream", || async {
        (upstream.parked() == CLIENTS).then_some(())
    })
    .await;
    let settled = || async {
        let parked = upstream.parked();
        (parked + finished.load(Ordering::SeqCst) == CLIENTS).then_some(parked)
    };
    let mut retried = 0;
    for k in 1..=CLIENTS {
        upstream.release_one();
        let parked = eventually(Duration::from_secs(10), "every client answered or parked", settled).await;
        // First tries not let go yet are parked ahead of every retry.
        let retries = parked - (CLIENTS - k);
        assert!(retries <= allowed, "{retries} retries in flight after {k} first tries failed, allowed {allowed}");
        retried = retries;
    }
    assert!(retried >= 1, "retries happen, within the limit");
    upstream.release();
    for wave in 2..=RETRIES {
        let parked = eventually(Duration::from_secs(10), "every client answered or parked", settled).await;
        assert!(parked <= allowed, "wave {wave}: {parked} retries at once, allowed {allowed}");
        retried += parked;
        upstream.release();
    }
    eventually(Duration::from_secs(10), "every client answered", || async {
        (finished.load(Ordering::SeqCst) == CLIENTS).then_some(())
    })
    .await;
    for client in clients {
        let reply = client.await.unwrap().unwrap();
        assert_eq!(reply.status, 503, "the upstream's own answer");
    }
    assert_eq!(upstream.hits(), CLIENTS + retried);
    assert!(upstream.hits() <= CLIENTS + allowed * RETRIES);
    let metrics = admin_get(&node, "/metrics").await;
    assert_eq!(metric(&metrics, "vane_upstream_retries_total{cluster=\"pool\"}"), retried as f64);
    let exhausted = metric(&metrics, "vane_upstream_retry_budget_exhausted_total{cluster=\"pool\"}");
    assert!(exhausted > 0.0, "refused retries are counted:\n{metrics}");
    retried
}

#[tokio::test]
async fn the_retry_budget_bounds_retries_under_a_failing_upstream() {
    init_logs();
    // 10% of 20 requests in flight: 2 retries at once (and at least 1).
    let retried =
        retries_under_a_failing_upstream("    retry_budget: { budget_percent: 10, min_retry_concurrency: 1 }\n", 2)
            .await;
    assert!(retried <= 6, "{retried}");
}

#[tokio::test]
async fn max_retries_bounds_retries_even_with_a_generous_budget() {
    init_logs();
    let limits = "    retry_budget: { budget_percent: 100, min_retry_concurrency: 100 }\n    \
                  circuit_breaker: { max_retries: 2 }\n";
    let retried = retries_under_a_failing_upstream(limits, 2).await;
    assert!(retried <= 6, "{retried}");
}
