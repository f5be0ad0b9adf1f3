//! The response cache (issue 19) end to end: a control plane, a node, and an origin that
//! counts the requests it gets per path. One test per rule of RFC 9111 the cache keeps;
//! the concurrent ones (coalescing, stale-while-revalidate, stale-if-error) are in
//! `cache_flow.rs`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use vane_suite::{HttpClient, Reply, TestControlPlane, eventually, init_logs, listener, metric, wait_version};

/// An origin whose answers depend on the path (see [`answer`]), counting requests per
/// path. Dropping it closes its listener and every connection.
pub(crate) struct Origin {
    pub(crate) addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    pub(crate) async fn start() -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let counted = hits.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                while connections.try_join_next().is_some() {}
                let counted = counted.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let counted = counted.clone();
                        async move {
                            let n = {
                                let mut hits = counted.lock().unwrap();
                                let n = hits.entry(req.uri().path().to_owned()).or_insert(0);
                                *n += 1;
                                *n
                            };
                            Ok::<_, Infallible>(answer(&req, n).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin { addr, hits, task }
    }

    /// Requests the origin got for `path`.
    pub(crate) fn hits(&self, path: &str) -> u64 {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// The origin's answer to the `n`th request for its path.
async fn answer(req: &Request<hyper::body::Incoming>, n: u64) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (status, headers, body): (u16, Vec<(&str, String)>, String) = match path {
        "/fresh" | "/range" => (200, vec![("cache-control", "max-age=60".into())], "0123456789".into()),
        "/short" => (200, vec![("cache-control", "max-age=1".into())], format!("short {n}")),
        "/smax" => (200, vec![("cache-control", "max-age=0, s-maxage=60".into())], format!("smax {n}")),
        "/etag" if header("if-none-match") == "\"v1\"" => {
            (304, vec![("cache-control", "max-age=0".into()), ("x-version", n.to_string())], String::new())
        }
        "/etag" => (
            200,
            vec![("cache-control", "max-age=0".into()), ("etag", "\"v1\"".into()), ("x-version", n.to_string())],
            "etag body".into(),
        ),
        "/vary" => (
            200,
            vec![("cache-control", "max-age=60".into()), ("vary", "Accept-Language".into())],
            format!("lang {}", header("accept-language")),
        ),
        "/nostore" => (200, vec![("cache-control", "no-store".into())], format!("nostore {n}")),
        "/private" => (200, vec![("cache-control", "private, max-age=60".into())], format!("private {n}")),
        "/auth" => (200, vec![("cache-control", "max-age=60".into())], format!("auth {n}")),
        "/auth-public" => (200, vec![("cache-control", "public, max-age=60".into())], format!("public {n}")),
        "/swr" => {
            if n > 1 {
                // A refresh that takes a while: requests meanwhile must not start another.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            (200, vec![("cache-control", "max-age=2, stale-while-revalidate=60".into())], format!("swr {n}"))
        }
        "/sie" => (200, vec![("cache-control", "max-age=1, stale-if-error=60".into())], format!("sie {n}")),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            (200, vec![("cache-control", "max-age=60".into())], format!("slow {n}"))
        }
        _ if req.method() == http::Method::POST => (200, vec![], "posted".into()),
        _ => (200, vec![("cache-control", "max-age=60".into())], format!("{path} {n}")),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        response.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    response
}

/// A control plane and a node whose `web` listener sends everything to `origin` through
/// the cache `edge` (with `cache` as its extra YAML fields).
pub(crate) struct Cached {
    pub(crate) cp: TestControlPlane,
    pub(crate) node: vane_data_plane::Node,
    pub(crate) web: SocketAddr,
    pub(crate) client: HttpClient,
}

impl Cached {
    pub(crate) async fn start(origin: SocketAddr, cache: &str) -> Cached {
        let cp = TestControlPlane::start().await;
        let node = cp.node("n1").await;
        cp.apply(&Cached::yaml(origin, cache, "")).await.expect("config applies");
        wait_version(&node, 1).await;
        let web = listener(&node, "web").await;
        Cached { cp, node, web, client: HttpClient::default() }
    }

    /// The config: `cache` holds the cache's extra fields, `routes` more route lines.
    pub(crate) fn yaml(origin: SocketAddr, cache: &str, routes: &str) -> String {
        format!(
            "listeners:\n  - {{name: web, address: '127.0.0.1:0'}}\n\
             clusters:\n  - {{name: origin, endpoints: [{{address: '{origin}'}}]}}\n\
             caches:\n  - {{name: edge{cache}}}\n\
             routes:\n  - {{name: all, match: {{prefix: /}}, forward: {{clusters: [{{name: origin}}]}}, cache: edge}}\n{routes}"
        )
    }

    pub(crate) async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(http::Method::GET, path, headers).await
    }

    pub(crate) async fn send(&self, method: http::Method, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = Request::builder().method(method).uri(format!("http://{}{path}", self.web));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.client.send(req.body(Full::default()).unwrap()).await.expect("answered")
    }
}

pub(crate) fn x_cache(r: &Reply) -> &str {
    r.headers.get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("")
}

pub(crate) fn cache_status(r: &Reply) -> &str {
    r.headers.get("cache-status").and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn a_fresh_response_is_served_from_the_cache_with_its_age() {
    init_logs();
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, "").await;
    let first = t.get("/fresh", &[]).await;
    assert_eq!((first.status, x_cache(&first)), (StatusCode::OK, "MISS"));
    assert!(cache_status(&first).starts_with("vane; fwd=uri-miss; fwd-status=200; stored"), "{}", cache_status(&first));
    let second = t.get("/fresh", &[]).await;
    assert_eq!((second.status, x_cache(&second), second.body.as_str()), (StatusCode::OK, "HIT", "0123456789"));
    assert!(cache_status(&second).starts_with("vane; hit; ttl="), "{}", cache_status(&second));
    assert!(second.headers.contains_key("age"));
    assert_eq!(origin.hits("/fresh"), 1);

    // Counted per route and cache on /metrics.
    let admin = t.node.admin_addr().unwrap();
    let text = t.client.get(admin, "/metrics").await.unwrap().body;
    let hits = metric(&text, "vane_cache_requests_total{route=\"all\",cache=\"edge\",result=\"hit\"}");
    let misses = metric(&text, "vane_cache_requests_total{route=\"all\",cache=\"edge\",result=\"miss\"}");
    assert_eq!((hits, misses), (1.0, 1.0));
    assert!(metric(&text, "vane_cache_entries{cache=\"edge\"}") >= 1.0);
    assert!(metric(&text, "vane_cache_bytes{cache=\"edge\"}") >= 10.0);
}

#[tokio::test]
async fn an_expired_response_is_fetched_again() {
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, "").await;
    assert_eq!(t.get("/short", &[]).await.body, "short 1");
    assert_eq!(x_cache(&t.get("/short", &[]).await), "HIT");
    // max-age=1: within a few seconds the cache must go back to the origin.
    let fetched = eventually(Duration::from_secs(5), "the entry expires", || async {
        let r = t.get("/short", &[]).await;
        (x_cache(&r) == "MISS").then_some(r)
    })
    .await;
    assert_eq!(fetched.body, "short 2");
    assert_eq!(origin.hits("/short"), 2);
}

#[tokio::test]
async fn s_maxage_wins_over_max_age_in_a_shared_cache() {
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, "").await;
    t.get("/smax", &[]).await;
    let r = t.get("/smax", &[]).await;
    assert_eq!((x_cache(&r), r.body.as_str()), ("HIT", "smax 1"));
    assert_eq!(origin.hits("/smax"), 1);
}

#[tokio::test]
async fn a_stale_entry_is_revalidated_and_a_304_refreshes_its_headers() {
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, "").await;
    let first = t.get("/etag", &[]).await;
    assert_eq!((x_cache(&first), first.headers["x-version"].to_str().unwrap()), ("MISS", "1"));
    let second = t.get("/etag", &[]).await;
    assert_eq!(x_cache(&second), "REVALIDATED");
    assert_eq!(second.body, "etag body", "the stored body, not the 304's");
    assert_eq!(second.headers["x-version"], "2", "the 304's headers are merged in");
    assert!(cache_status(&second).contains("fwd-status=304"), "{}", cache_status(&second));
    // A client with matching validators gets a 304 (after the same revalidation).
    let conditional = t.get("/etag", &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(conditional.status, StatusCode::NOT_MODIFIED);
    assert_eq!(origin.hits("/etag"), 3, "one full answer, then conditional requests");
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, "").await;
    assert_eq!(t.get("/vary", &[("accept-language", "en")]).await.body, "lang en");
    assert_eq!(t.get("/vary", &[("accept-language", "fr")]).await.body, "lang fr");
    let en = t.get("/vary", &[("accept-language", "en")]).await;
    let fr = t.get("/vary", &[("accept-language", "fr")]).await;
    assert_eq!((x_cache(&en), en.body.as_str()), ("HIT", "lang en"));
    assert_eq!((x_cache(&fr), fr.body.as_str()), ("HIT", "lang fr"));
    assert_eq!(origin.hits("/vary"), 2);
}

#[tokio::test]
async fn no_store_and_private_responses_are_not_stored() {
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, "").await;
    for path in ["/nostore", "/private"] {
        let first = t.get(path, &[]).await;
        let second = t.get(path, &[]).await;
        assert_eq!((x_cache(&first), x_cache(&second)), ("MISS", "MISS"), "{path}");
        assert!(second.body.ends_with(" 2"), "{path}: {}", second.body);
        assert_eq!(origin.hits(path), 2, "{path}");
    }
    assert!(cache_status(&t.get("/private", &[]).await).contains("detail=private"));
}

#[tokio::test]
async fn authorised_requests_are_stored_only_when_the_response_allows_it() {
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, "").await;
    let auth = [("authorization", "Bearer alice")];
    t.get("/auth", &auth).await;
    let again = t.get("/auth", &auth).await;
    assert_eq!((x_cache(&again), again.body.as_str()), ("MISS", "auth 2"));
    assert!(cache_status(&again).contains("detail=authorization"));
    t.get("/auth-public", &auth).await;
    let public = t.get("/auth-public", &auth).await;
    assert_eq!((x_cache(&public), public.body.as_str()), ("HIT", "public 1"));
    assert_eq!((origin.hits("/auth"), origin.hits("/auth-public")), (2, 1));
    // Stored for a request without credentials, /auth (max-age only) still answers no
    // authorised request.
    t.get("/auth", &[]).await;
    assert_eq!(x_cache(&t.get("/auth", &[]).await), "HIT");
    let authorised = t.get("/auth", &auth).await;
    assert_eq!((x_cache(&authorised), authorised.body.as_str()), ("MISS", "auth 4"));
}

#[tokio::test]
async fn a_successful_post_invalidates_the_stored_response() {
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, "").await;
    t.get("/inv", &[]).await;
    assert_eq!(x_cache(&t.get("/inv", &[]).await), "HIT");
    let post = t.send(http::Method::POST, "/inv", &[]).await;
    assert_eq!((post.body.as_str(), x_cache(&post)), ("posted", "BYPASS"));
    let after = t.get("/inv", &[]).await;
    assert_eq!((x_cache(&after), after.body.as_str()), ("MISS", "/inv 3"));
}

#[tokio::test]
async fn head_and_ranges_are_answered_from_a_stored_get() {
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, "").await;
    t.get("/range", &[]).await;
    let head = t.send(http::Method::HEAD, "/range", &[]).await;
    assert_eq!((head.status, x_cache(&head), head.body.as_str()), (StatusCode::OK, "HIT", ""));
    assert_eq!(head.headers["content-length"], "10");
    let part = t.get("/range", &[("range", "bytes=2-5")]).await;
    assert_eq!((part.status, part.body.as_str()), (StatusCode::PARTIAL_CONTENT, "2345"));
    assert_eq!(part.headers["content-range"], "bytes 2-5/10");
    let tail = t.get("/range", &[("range", "bytes=-3")]).await;
    assert_eq!(tail.body, "789");
    let beyond = t.get("/range", &[("range", "bytes=50-")]).await;
    assert_eq!(beyond.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(beyond.headers["content-range"], "bytes */10");
    assert_eq!(origin.hits("/range"), 1);
}

#[tokio::test]
async fn curl_sees_a_hit_with_cache_status() {
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, ", status_header: x-edge").await;
    let url = format!("http://{}/curl", t.web);
    let curl = |url: String| async move {
        let out = tokio::process::Command::new("curl").args(["-si", "--max-time", "5", &url]).output().await;
        String::from_utf8_lossy(&out.expect("curl runs").stdout).to_lowercase()
    };
    let first = curl(url.clone()).await;
    assert!(first.contains("x-edge: miss"), "{first}");
    let second = curl(url).await;
    assert!(second.contains("x-edge: hit"), "{second}");
    assert!(second.contains("cache-status: vane; hit; ttl="), "{second}");
    assert!(!second.contains("x-cache:"), "the configured status header replaces x-cache");
    assert_eq!(origin.hits("/curl"), 1);
}

#[tokio::test]
async fn entries_outlive_other_config_changes_and_go_with_a_changed_cache() {
    let origin = Origin::start().await;
    let t = Cached::start(origin.addr, "").await;
    t.get("/kept", &[]).await;
    let other = "  - {name: other, match: {prefix: /other}, direct_response: {status: 204}}\n";
    t.cp.apply(&Cached::yaml(origin.addr, "", other)).await.expect("v2 applies");
    wait_version(&t.node, 2).await;
    assert_eq!(x_cache(&t.get("/kept", &[]).await), "HIT", "an unchanged cache keeps its entries");
    t.cp.apply(&Cached::yaml(origin.addr, ", max_bytes: 1048576", other)).await.expect("v3 applies");
    wait_version(&t.node, 3).await;
    let after = t.get("/kept", &[]).await;
    assert_eq!((x_cache(&after), after.body.as_str()), ("MISS", "/kept 2"), "a changed cache starts empty");
}
