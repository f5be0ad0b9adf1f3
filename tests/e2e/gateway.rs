//! API gateway policies through a real control plane, node and sockets: API keys, Basic,
//! OAuth2 introspection and external authorization against real HTTP servers started by
//! the tests, rate limits seen from the client, CORS as the Fetch standard expects, IP
//! filtering behind trusted proxies, and transformation.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use vane_suite::*;

/// A config: listener `web`, cluster `echo`, route `api` (prefix `/`) with `policies`.
fn gateway(echo: SocketAddr, policies: Value, route_policies: &[&str], consumers: Value) -> String {
    json!({
        "listeners": [{ "name": "web", "address": "127.0.0.1:0" }],
        "clusters": [{ "name": "echo", "endpoints": [{ "address": echo.to_string() }] }],
        "routes": [{ "name": "api", "match": { "prefix": "/" }, "policies": route_policies,
                     "forward": { "clusters": [{ "name": "echo" }] } }],
        "policies": policies,
        "consumers": consumers,
    })
    .to_string()
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    HttpClient::default().send(req.body(Full::default()).unwrap()).await.unwrap()
}

/// A tiny HTTP server answering with `answer(request) -> (status, headers, body)`, counting calls.
struct Stub {
    addr: SocketAddr,
    calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Answer = (u16, Vec<(&'static str, String)>, String);

async fn stub(answer: impl Fn(http::request::Parts, Bytes) -> Answer + Send + Sync + 'static) -> Stub {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let (answer, counter) = (Arc::new(answer), calls.clone());
    let task = tokio::spawn(async move {
        // Connections live in this set: dropping the stub closes them all.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            while connections.try_join_next().is_some() {}
            let (answer, counter) = (answer.clone(), counter.clone());
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (answer, counter) = (answer.clone(), counter.clone());
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let (status, headers, text) = answer(parts, body);
                        let mut response = Response::new(Full::new(Bytes::from(text)));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        for (k, v) in headers {
                            response.headers_mut().insert(k, v.parse().unwrap());
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Stub { addr, calls, task }
}

#[tokio::test]
async fn api_keys_authenticate_consumers_who_are_passed_upstream_and_keys_are_stored_hashed() {
    init_logs();
    let policies = json!([{ "name": "keys", "auth": { "api_key": { "header": "x-api-key", "query": "apikey" } } }]);
    let consumers = json!([
        // Several metadata entries: a map whose encoding order once differed between the
        // control plane and the node, so every node NACKed the snapshot's hash.
        { "name": "alice", "api_keys": [{ "key": "alice-key-0001" }],
          "metadata": { "tier": "gold", "region": "eu-west", "team": "payments", "plan": "annual", "seats": "40" } },
        { "name": "bob", "api_keys": [{ "key": "bob-key-00002" }] },
    ]);
    let s = Serving::start(|e| gateway(e, policies, &["keys"], consumers)).await;

    let ok = get(s.web, "/a", &[("x-api-key", "alice-key-0001"), ("x-consumer", "mallory")]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert!(ok.body.contains("x-consumer: alice\n"), "{}", ok.body);
    for header in
        ["x-consumer-tier: gold", "x-consumer-region: eu-west", "x-consumer-team: payments", "x-consumer-seats: 40"]
    {
        assert!(ok.body.contains(header), "{header}: {}", ok.body);
    }
    assert!(!ok.body.contains("mallory"), "a client-sent consumer header never passes: {}", ok.body);
    assert!(!ok.body.contains("alice-key-0001"), "the key is not forwarded: {}", ok.body);

    let by_query = get(s.web, "/b?x=1&apikey=bob-key-00002", &[]).await;
    assert_eq!(by_query.status, StatusCode::OK);
    assert!(by_query.body.contains("GET /b?x=1 "), "the key leaves the query: {}", by_query.body);
    assert!(by_query.body.contains("x-consumer: bob"), "{}", by_query.body);

    let wrong = get(s.web, "/a", &[("x-api-key", "not-a-key-000")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let missing = get(s.web, "/a", &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers["www-authenticate"], "ApiKey header=\"x-api-key\"");
    assert_eq!(s.echo.received(), 2, "refused requests never reach the upstream");

    let shown = vane(&s.cp.url(), &["get", "consumers", "-o", "yaml"]).await;
    assert!(shown.success, "{}", shown.stderr);
    assert!(!shown.stdout.contains("alice-key-0001"), "{}", shown.stdout);
    assert!(shown.stdout.contains("sha256:"), "{}", shown.stdout);
    let metrics = HttpClient::default().get(s.node.admin_addr().unwrap(), "/metrics").await.unwrap().body;
    assert!(metrics.contains("vane_policy_requests_total{policy=\"keys\",result=\"auth_invalid\"} 1"), "{metrics}");
    assert!(metrics.contains("vane_policy_requests_total{policy=\"keys\",result=\"auth_missing\"} 1"), "{metrics}");
}

#[tokio::test]
async fn basic_auth_checks_bcrypt_and_argon2_hashes() {
    init_logs();
    let bcrypt_hash = bcrypt::hash("open sesame", 4).unwrap();
    let argon2_hash = {
        use argon2::PasswordHasher as _;
        let salt = argon2::password_hash::SaltString::encode_b64(b"vane-test-salt-1").unwrap();
        argon2::Argon2::default().hash_password(b"hunter22", &salt).unwrap().to_string()
    };
    let policies = json!([{ "name": "basic", "auth": { "basic": { "realm": "shop" } } }]);
    let consumers = json!([
        { "name": "ann", "basic_auth": { "username": "ann", "password_hash": bcrypt_hash } },
        { "name": "ben", "basic_auth": { "username": "ben", "password_hash": argon2_hash } },
    ]);
    let s = Serving::start(|e| gateway(e, policies, &["basic"], consumers)).await;
    let basic = |user: &str, pass: &str| {
        use base64::Engine as _;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
    };
    for (user, pass) in [("ann", "open sesame"), ("ben", "hunter22"), ("ann", "open sesame")] {
        let reply = get(s.web, "/", &[("authorization", &basic(user, pass))]).await;
        assert_eq!(reply.status, StatusCode::OK, "{user}");
        assert!(reply.body.contains(&format!("x-consumer: {user}")), "{}", reply.body);
    }
    for (user, pass) in [("ann", "wrong"), ("ben", "open sesame"), ("nobody", "x")] {
        let reply = get(s.web, "/", &[("authorization", &basic(user, pass))]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{user}:{pass}");
    }
    let missing = get(s.web, "/", &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers["www-authenticate"], "Basic realm=\"shop\", charset=\"UTF-8\"");
    // A plain password is refused by the control plane, with the field.
    let bad = json!([{ "name": "eve", "basic_auth": { "username": "eve", "password_hash": "secret" } }]);
    let err = s.cp.apply(&gateway(s.echo.addr(), json!([]), &[], bad)).await.unwrap_err();
    assert!(err.message().contains("consumer 'eve': basic_auth.password_hash: must be a bcrypt"), "{}", err.message());
}

#[tokio::test]
async fn introspection_lets_active_tokens_through_and_caches_answers_until_expiry() {
    init_logs();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let idp = stub(move |parts, body| {
        let body = String::from_utf8_lossy(&body).into_owned();
        let authorized = parts.headers.get("authorization").is_some_and(|v| v == "Basic dmFuZTpzM2NyZXQ=");
        let answer = match body.as_str() {
            _ if !authorized => json!({ "active": false }),
            b if b.starts_with("token=good&") => json!({ "active": true, "sub": "svc-a", "exp": now + 3600 }),
            b if b.starts_with("token=expired&") => json!({ "active": true, "sub": "svc-b", "exp": now - 10 }),
            _ => json!({ "active": false }),
        };
        (200, vec![("content-type", "application/json".into())], answer.to_string())
    })
    .await;
    let endpoint = format!("http://{}/introspect", idp.addr);
    let policies = json!([{ "name": "oauth", "auth": { "introspection": {
        "endpoint": endpoint, "client_id": "vane", "client_secret": "s3cret", "cache_ttl": "60s" } } }]);
    let s = Serving::start(|e| gateway(e, policies, &["oauth"], json!([]))).await;

    for _ in 0..3 {
        let reply = get(s.web, "/", &[("authorization", "Bearer good")]).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert!(reply.body.contains("x-consumer: svc-a"), "{}", reply.body);
    }
    assert_eq!(idp.calls.load(Ordering::SeqCst), 1, "an active token is introspected once, then cached");
    let expired = get(s.web, "/", &[("authorization", "Bearer expired")]).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED);
    let revoked = get(s.web, "/", &[("authorization", "Bearer revoked")]).await;
    assert_eq!(revoked.status, StatusCode::UNAUTHORIZED);
    assert!(revoked.headers["www-authenticate"].to_str().unwrap().contains("error=\"invalid_token\""));
    assert_eq!(get(s.web, "/", &[]).await.status, StatusCode::UNAUTHORIZED);

    // An introspection endpoint that is down: 503, not a pass.
    drop(idp);
    let down = get(s.web, "/", &[("authorization", "Bearer other")]).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn external_authorization_passes_2xx_with_headers_and_returns_refusals_as_they_are() {
    init_logs();
    let authz = stub(|parts, _| {
        let uri = parts.headers.get("x-forwarded-uri").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        match parts.headers.get("authorization").map(|v| v.to_str().unwrap()) {
            Some("let-me-in") => (200, vec![("x-user", "carol".into()), ("x-ignored", "1".into())], String::new()),
            _ => (403, vec![("x-reason", format!("no entry to {uri}"))], "denied by policy\n".into()),
        }
    })
    .await;
    let policies = json!([{ "name": "forward", "auth": { "ext_authz": {
        "url": format!("http://{}/check", authz.addr), "headers_to_upstream": ["x-user"] } } }]);
    let s = Serving::start(|e| gateway(e, policies, &["forward"], json!([]))).await;
    let ok = get(s.web, "/orders?id=7", &[("authorization", "let-me-in")]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.body.contains("x-user: carol"), "{}", ok.body);
    assert!(!ok.body.contains("x-ignored"), "{}", ok.body);
    let no = get(s.web, "/orders?id=7", &[("authorization", "guess")]).await;
    assert_eq!(no.status, StatusCode::FORBIDDEN);
    assert_eq!(no.body, "denied by policy\n");
    assert_eq!(no.headers["x-reason"], "no entry to /orders?id=7");
    assert_eq!(s.echo.received(), 1);
}

#[tokio::test]
async fn rate_limits_seen_from_the_client_per_key_and_across_a_swap() {
    init_logs();
    // 5 at once, then one per 10 s: a burst of 20 requests gets exactly 5 through (one
    // more at most if the test straddles a refill).
    let limit = |burst: u32| {
        json!([{ "name": "limit", "rate_limit": { "requests": 6, "per": "60s", "burst": burst,
                                                  "key": [{ "header": "x-user" }] } }])
    };
    let s = Serving::start(|e| gateway(e, limit(5), &["limit"], json!([]))).await;
    let burst = |user: &'static str| async move {
        let mut allowed = 0;
        let mut last_refusal = None;
        for _ in 0..20 {
            let reply = get(s.web, "/", &[("x-user", user)]).await;
            match reply.status {
                StatusCode::OK => allowed += 1,
                StatusCode::TOO_MANY_REQUESTS => last_refusal = Some(reply),
                other => panic!("unexpected {other}"),
            }
        }
        (allowed, last_refusal)
    };
    let (allowed, refusal) = burst("ann").await;
    assert!((5..=6).contains(&allowed), "allowed {allowed}");
    let refusal = refusal.expect("the burst is limited");
    let retry_after: u64 = refusal.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    assert_eq!(refusal.headers["ratelimit-limit"], "5");
    assert_eq!(refusal.headers["ratelimit-remaining"], "0");
    assert!(refusal.headers.contains_key("ratelimit-reset"));
    let (allowed, _) = burst("ben").await;
    assert!((5..=6).contains(&allowed), "another key has its own bucket: {allowed}");

    // An unrelated change keeps the buckets: ann is still limited.
    let mut changed: Value = serde_json::from_str(&gateway(s.echo.addr(), limit(5), &["limit"], json!([]))).unwrap();
    changed["routes"][0]["request_headers"] = json!({ "set": [{ "name": "x-v", "value": "2" }] });
    let v = s.cp.apply(&changed.to_string()).await.unwrap().version;
    wait_version(&s.node, v).await;
    assert_eq!(get(s.web, "/", &[("x-user", "ann")]).await.status, StatusCode::TOO_MANY_REQUESTS);
    // A changed limit starts afresh.
    let v = s.cp.apply(&gateway(s.echo.addr(), limit(2), &["limit"], json!([]))).await.unwrap().version;
    wait_version(&s.node, v).await;
    let ok = get(s.web, "/", &[("x-user", "ann")]).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.headers["ratelimit-limit"], "2");
    assert_eq!(ok.headers["ratelimit-remaining"], "1");
}

#[tokio::test]
async fn cors_preflights_are_answered_and_actual_requests_get_the_fetch_headers() {
    init_logs();
    let policies = json!([{ "name": "cors", "cors": {
        "allow_origins": ["https://app.example.com", "https://*.example.org"],
        "allow_methods": ["GET", "PUT"], "allow_headers": ["content-type", "x-token"],
        "expose_headers": ["x-backend"], "allow_credentials": true, "max_age": "600s" } }]);
    let s = Serving::start(|e| gateway(e, policies, &["cors"], json!([]))).await;
    let preflight = |origin: &'static str, method: &'static str, headers: &'static str| {
        let req = Request::builder()
            .method("OPTIONS")
            .uri(format!("http://{}/items", s.web))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .body(Full::default())
            .unwrap();
        async move { HttpClient::default().send(req).await.unwrap() }
    };
    let ok = preflight("https://app.example.com", "PUT", "Content-Type, X-Token").await;
    assert_eq!(ok.status, StatusCode::NO_CONTENT);
    assert_eq!(ok.headers["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(ok.headers["access-control-allow-credentials"], "true");
    assert_eq!(ok.headers["access-control-allow-methods"], "GET, PUT");
    assert_eq!(ok.headers["access-control-allow-headers"], "content-type, x-token");
    assert_eq!(ok.headers["access-control-max-age"], "600");
    assert!(ok.headers["vary"].to_str().unwrap().contains("Origin"));
    let wildcard = preflight("https://shop.example.org", "GET", "content-type").await;
    assert_eq!(wildcard.headers["access-control-allow-origin"], "https://shop.example.org");
    for (origin, method, headers) in [
        ("https://evil.example.net", "GET", "content-type"),
        ("https://app.example.com", "DELETE", "content-type"),
        ("https://app.example.com", "GET", "x-secret"),
        ("https://example.org", "GET", "content-type"),
    ] {
        let refused = preflight(origin, method, headers).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{origin} {method} {headers}");
        assert!(!refused.headers.contains_key("access-control-allow-origin"));
    }
    assert_eq!(s.echo.received(), 0, "preflights never reach the upstream");

    let actual = get(s.web, "/items", &[("origin", "https://app.example.com")]).await;
    assert_eq!(actual.status, StatusCode::OK);
    assert_eq!(actual.headers["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(actual.headers["access-control-allow-credentials"], "true");
    assert_eq!(actual.headers["access-control-expose-headers"], "x-backend");
    assert_eq!(actual.headers["vary"], "Origin");
    let foreign = get(s.web, "/items", &[("origin", "https://evil.example.net")]).await;
    assert_eq!(foreign.status, StatusCode::OK, "served, but the browser withholds it");
    assert!(!foreign.headers.contains_key("access-control-allow-origin"));
    let same_origin = get(s.web, "/items", &[]).await;
    assert!(!same_origin.headers.contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn ip_filters_apply_to_the_real_client_behind_trusted_proxies() {
    init_logs();
    let policies = json!([{ "name": "office", "ip_filter": { "allow": ["10.0.0.0/8"], "deny": ["10.6.6.6"] } }]);
    let s = Serving::start(|e| {
        let mut config: Value = serde_json::from_str(&gateway(e, policies, &[], json!([]))).unwrap();
        config["listeners"][0]["policies"] = json!(["office"]);
        config.to_string()
    })
    .await;
    assert_eq!(get(s.web, "/", &[]).await.status, StatusCode::FORBIDDEN, "127.0.0.1 is not in the office");
    assert_eq!(
        get(s.web, "/", &[("x-forwarded-for", "10.1.2.3")]).await.status,
        StatusCode::FORBIDDEN,
        "an untrusted peer's X-Forwarded-For is ignored"
    );
    let mut trusted: Value = serde_json::from_str(&gateway(
        s.echo.addr(),
        json!([{ "name": "office", "ip_filter": {
            "allow": ["10.0.0.0/8"], "deny": ["10.6.6.6"] } }]),
        &[],
        json!([]),
    ))
    .unwrap();
    trusted["listeners"][0]["policies"] = json!(["office"]);
    trusted["listeners"][0]["trusted_proxies"] = json!(["127.0.0.1"]);
    let v = s.cp.apply(&trusted.to_string()).await.unwrap().version;
    wait_version(&s.node, v).await;
    assert_eq!(get(s.web, "/", &[("x-forwarded-for", "10.1.2.3")]).await.status, StatusCode::OK);
    assert_eq!(get(s.web, "/", &[("x-forwarded-for", "10.6.6.6")]).await.status, StatusCode::FORBIDDEN);
    assert_eq!(get(s.web, "/", &[("x-forwarded-for", "192.168.1.1, 10.1.2.3")]).await.status, StatusCode::OK);
    assert_eq!(get(s.web, "/nothing-here", &[]).await.status, StatusCode::FORBIDDEN, "listener policies cover 404s");
}

#[tokio::test]
async fn transforms_edit_headers_query_path_and_small_json_bodies() {
    init_logs();
    let backend = stub(|parts, body| {
        let seen = json!({
            "uri": parts.uri.to_string(),
            "x-tenant": parts.headers.get("x-tenant").map(|v| v.to_str().unwrap().to_owned()),
            "body": serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            "secret": "internal",
        });
        (200, vec![("content-type", "application/json".into()), ("server", "backend/1".into())], seen.to_string())
    })
    .await;
    let policies = json!([{ "name": "shape", "transform": {
        "request_headers": { "set": [{ "name": "x-tenant", "value": "acme" }] },
        "response_headers": { "remove": ["server"] },
        "set_query": [{ "name": "v", "value": "2" }], "remove_query": ["debug"],
        "path_rewrite": { "pattern": "^/old/", "substitution": "/new/" },
        "request_json": { "set": [{ "path": "meta.source", "value": "\"gateway\"" }], "remove": ["password"] },
        "response_json": { "remove": ["secret"], "set": [{ "path": "via", "value": "\"vane\"" }] } } }]);
    let s = Serving::start(|_| gateway(backend.addr, policies, &["shape"], json!([]))).await;
    let req = Request::post(format!("http://{}/old/items?debug=1&a=b", s.web))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(r#"{"name":"x","password":"p"}"#)))
        .unwrap();
    let reply = HttpClient::default().send(req).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(!reply.headers.contains_key("server"), "{:?}", reply.headers);
    let seen: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(seen["uri"], "/new/items?a=b&v=2");
    assert_eq!(seen["x-tenant"], "acme");
    assert_eq!(seen["body"], json!({ "name": "x", "meta": { "source": "gateway" } }));
    assert_eq!(seen.get("secret"), None, "removed from the response");
    assert_eq!(seen["via"], "vane");
    assert_eq!(reply.headers["content-length"], reply.body.len().to_string().as_str());
}

/// A JWT signed with `key` (header `kid` when given) over these claims.
fn jwt(alg: jsonwebtoken::Algorithm, kid: Option<&str>, key: &jsonwebtoken::EncodingKey, claims: Value) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn jwt_checks_signature_expiry_issuer_audience_and_passes_claims_upstream() {
    init_logs();
    let secret = "a-shared-secret-of-some-length";
    let policies = json!([{ "name": "jwt", "auth": { "jwt": {
        "issuer": "https://id.test", "audiences": ["orders"], "hmac_secrets": [secret],
        "required_claims": ["sub"], "claims_to_headers": [{ "claim": "sub", "header": "x-user-id" },
                                                         { "claim": "roles", "header": "x-roles" }],
        "cookie": "session", "leeway": "5s" } } }]);
    let s = Serving::start(|e| gateway(e, policies, &["jwt"], json!([]))).await;
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let now = unix_now();
    let claims = |exp: u64, iss: &str, aud: &str| json!({ "sub": "u-1", "roles": ["admin"], "iss": iss, "aud": aud, "exp": exp });
    let hs = jsonwebtoken::Algorithm::HS256;
    let good = jwt(hs, None, &key, claims(now + 600, "https://id.test", "orders"));
    let bearer = |t: &str| format!("Bearer {t}");

    let ok = get(s.web, "/", &[("authorization", &bearer(&good)), ("x-user-id", "forged")]).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.headers);
    assert!(ok.body.contains("x-user-id: u-1\n"), "{}", ok.body);
    assert!(ok.body.contains("x-roles: [\"admin\"]"), "{}", ok.body);
    assert!(ok.body.contains("x-consumer: u-1"), "{}", ok.body);
    let cookie = get(s.web, "/", &[("cookie", &format!("theme=dark; session={good}"))]).await;
    assert_eq!(cookie.status, StatusCode::OK, "a token from the cookie");

    let cases = [
        ("expired", jwt(hs, None, &key, claims(now - 60, "https://id.test", "orders"))),
        (
            "wrongly signed",
            jwt(
                hs,
                None,
                &jsonwebtoken::EncodingKey::from_secret(b"other-secret"),
                claims(now + 600, "https://id.test", "orders"),
            ),
        ),
        ("wrong issuer", jwt(hs, None, &key, claims(now + 600, "https://evil.test", "orders"))),
        ("wrong audience", jwt(hs, None, &key, claims(now + 600, "https://id.test", "billing"))),
        ("garbage", "not.a.token".to_owned()),
    ];
    for (what, token) in cases {
        let reply = get(s.web, "/", &[("authorization", &bearer(&token))]).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}");
        let challenge = reply.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer realm=\"vane\", error=\"invalid_token\""), "{what}: {challenge}");
    }
    let missing = get(s.web, "/", &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers["www-authenticate"], "Bearer realm=\"vane\"");
    assert_eq!(s.echo.received(), 2);
}

/// An ES256 key: the signing key and its public JWK.
fn es256_key(kid: &str) -> (jsonwebtoken::EncodingKey, Value) {
    use base64::Engine as _;
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw(); // 0x04 || X || Y
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({ "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                      "x": b64(&raw[1..33]), "y": b64(&raw[33..65]) });
    (jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap(), jwk)
}

#[tokio::test]
async fn a_jwks_key_rotation_is_picked_up_without_a_restart() {
    init_logs();
    let (key_a, jwk_a) = es256_key("key-a");
    let (key_b, jwk_b) = es256_key("key-b");
    let document = Arc::new(std::sync::Mutex::new(json!({ "keys": [jwk_a] }).to_string()));
    let served = document.clone();
    let idp =
        stub(move |_, _| (200, vec![("content-type", "application/json".into())], served.lock().unwrap().clone()))
            .await;
    // Refreshing every 30 min: only an unknown kid can make the node fetch again within the test.
    let policies = json!([{ "name": "jwt", "auth": { "jwt": {
        "jwks_uri": format!("http://{}/.well-known/jwks.json", idp.addr), "jwks_refresh": "1800s" } } }]);
    let s = Serving::start(|e| gateway(e, policies, &["jwt"], json!([]))).await;
    let es = jsonwebtoken::Algorithm::ES256;
    let claims = json!({ "sub": "rotating", "exp": unix_now() + 600 });
    let token_a = format!("Bearer {}", jwt(es, Some("key-a"), &key_a, claims.clone()));
    let token_b = format!("Bearer {}", jwt(es, Some("key-b"), &key_b, claims));
    let status = |token: String| async move { get(s.web, "/", &[("authorization", &token)]).await.status };

    eventually(std::time::Duration::from_secs(10), "keys fetched; key A verifies", || async {
        (status(token_a.clone()).await == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(status(token_b.clone()).await, StatusCode::UNAUTHORIZED, "key B is not published yet");

    *document.lock().unwrap() = json!({ "keys": [jwk_b] }).to_string();
    // A request with the unknown kid triggers an early refresh; those are limited to one
    // per 10 s per URL (the refusal of key B above may have used it), hence the deadline.
    eventually(std::time::Duration::from_secs(25), "key B verifies after the rotation", || async {
        (status(token_b.clone()).await == StatusCode::OK).then_some(())
    })
    .await;
    assert_eq!(status(token_a).await, StatusCode::UNAUTHORIZED, "key A was withdrawn");
    assert!(idp.calls.load(Ordering::SeqCst) >= 2);
}

#[tokio::test]
async fn the_example_gateway_works_as_the_readme_walks_through_it() {
    init_logs();
    let (orders, catalog) = (
        EchoServer::start("orders", ([127, 0, 0, 1], 0).into()).await.unwrap(),
        EchoServer::start("catalog", ([127, 0, 0, 1], 0).into()).await.unwrap(),
    );
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gateway.yaml")).unwrap();
    let yaml = example
        .replace("127.0.0.1:8090", "127.0.0.1:0")
        .replace("127.0.0.1:9001", &orders.addr().to_string())
        .replace("127.0.0.1:9002", &catalog.addr().to_string());
    let cp = TestControlPlane::start().await;
    let node = cp.node("gw").await;
    let dir = tempfile::tempdir().unwrap();
    let applied = vane(&cp.url(), &["apply", "-f", &write_yaml(dir.path(), "gateway.yaml", &yaml)]).await;
    assert!(applied.success, "{}", applied.stderr);
    wait_version(&node, 1).await;
    let web = listener(&node, "gateway").await;

    assert_eq!(get(web, "/catalog/items", &[]).await.status, StatusCode::UNAUTHORIZED);
    let partner = get(web, "/catalog/items", &[("x-api-key", "acme-demo-key-1")]).await;
    assert_eq!(partner.status, StatusCode::OK);
    assert!(partner.body.contains("x-consumer: acme") && partner.body.contains("x-consumer-plan: gold"));
    assert!(!partner.headers.contains_key("x-backend"), "hide-internals removes it");
    let statuses: Vec<u16> = futures::future::join_all(
        (0..12).map(|_| async { get(web, "/catalog/x", &[("x-api-key", "globex-demo-key-2")]).await.status.as_u16() }),
    )
    .await;
    assert!(statuses.contains(&429), "the per-partner limit holds: {statuses:?}");
    assert!(statuses.iter().filter(|s| **s == 200).count() >= 10, "{statuses:?}");

    let key = jsonwebtoken::EncodingKey::from_secret(b"change-me-to-a-long-random-secret");
    let token = jwt(
        jsonwebtoken::Algorithm::HS256,
        None,
        &key,
        json!({ "sub": "u1", "iss": "https://id.shop.example.com", "aud": "orders-api", "exp": unix_now() + 600 }),
    );
    let customer = get(web, "/orders/1", &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!((customer.status, customer.backend()), (StatusCode::OK, "orders"));
    assert!(customer.body.contains("x-user-id: u1"), "{}", customer.body);
    let preflight = HttpClient::default()
        .send(
            Request::builder()
                .method("OPTIONS")
                .uri(format!("http://{web}/orders"))
                .header("origin", "https://shop.example.com")
                .header("access-control-request-method", "POST")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(preflight.status, StatusCode::NO_CONTENT);
    let table = vane(&cp.url(), &["get", "policies"]).await;
    assert!(table.stdout.contains("auth(jwt)") && table.stdout.contains("rate_limit(10/1s)"), "{}", table.stdout);
}
