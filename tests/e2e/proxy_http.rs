//! The HTTP path: local answers, forwarding headers, h2c, listeners opened and closed.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use vane_suite::*;

#[tokio::test]
async fn unreachable_upstream_is_502_slow_upstream_is_504_unknown_path_is_404() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(); // dropped: nothing listens
    let mut yaml = config_yaml(&[("echo", &[e1.addr()]), ("dead", &[closed])], &[("dead", "/dead", "dead")]);
    yaml.push_str(
        "  - name: slow\n    match: { prefix: /slow }\n    forward: { clusters: [{ name: echo }], timeout: 0.2s }\n",
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();
    assert_eq!(client.get(web, "/dead/x").await.unwrap().status, 502);
    assert_eq!(client.get(web, "/slow?delay_ms=3000").await.unwrap().status, 504);
    assert_eq!(client.get(web, "/slow?delay_ms=0").await.unwrap().status, 200);
    assert_eq!(client.get(web, "/nothing").await.unwrap().status, 404);

    // Every answer is counted, by listener, route, cluster and status.
    let metrics = client.get(node.admin_addr().unwrap(), "/metrics").await.unwrap().body;
    for line in [
        "vane_http_requests_total{listener=\"web\",route=\"dead\",cluster=\"dead\",status=\"502\"} 1",
        "vane_http_requests_total{listener=\"web\",route=\"slow\",cluster=\"echo\",status=\"504\"} 1",
        "vane_http_requests_total{listener=\"web\",route=\"slow\",cluster=\"echo\",status=\"200\"} 1",
        "vane_http_requests_total{listener=\"web\",route=\"\",cluster=\"\",status=\"404\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line} in:\n{metrics}");
    }
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_removed() {
    init_logs();
    let Serving { cp: _cp, node: _node, echo: _echo, web } = Serving::echo_all().await;
    let client = HttpClient::default();

    let req = Request::get(format!("http://{web}/h"))
        .header("host", "shop.example")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-keep", "yes")
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .header("tracestate", "vendor=1")
        .body(Full::<Bytes>::default())
        .unwrap();
    let body = client.send(req).await.unwrap().body;
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "the peer, not the client's claim:\n{body}");
    assert!(body.contains("forwarded: for=127.0.0.1;proto=http;host=\"shop.example\"\n"), "{body}");
    assert!(body.contains("via: 1.1 vane\n"), "{body}");
    assert!(!body.contains("6.6.6.6"), "{body}");
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(body.contains("x-forwarded-host: shop.example\n"), "{body}");
    assert!(body.contains("host: shop.example\n"), "the Host header is kept:\n{body}");
    assert!(body.contains("x-keep: yes\n"), "{body}");
    assert!(body.contains("traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\n"), "{body}");
    assert!(body.contains("tracestate: vendor=1\n"), "{body}");
    assert!(!body.contains("x-private"), "headers named by Connection are removed:\n{body}");
    assert!(!body.contains("content-length"), "a GET without content goes without a length:\n{body}");
    let id = body.lines().find_map(|l| l.strip_prefix("x-request-id: ")).expect("a request id is generated");
    assert_eq!(id.len(), 36);

    let req = Request::get(format!("http://{web}/h")).header("x-request-id", "abc-123").body(Full::default()).unwrap();
    assert!(client.send(req).await.unwrap().body.contains("x-request-id: abc-123\n"), "an incoming id is kept");
}

#[tokio::test]
async fn h2c_prior_knowledge_and_http1_share_a_listener() {
    init_logs();
    let Serving { cp: _cp, node: _node, echo: _echo, web } = Serving::echo_all().await;
    let h2 = HttpClient::h2c().get(web, "/over-h2").await.unwrap();
    assert_eq!((h2.status.as_u16(), h2.backend()), (200, "echo-1"));
    assert!(h2.body.contains("GET /over-h2"), "{}", h2.body);
    let h1 = HttpClient::default().get(web, "/over-h1").await.unwrap();
    assert_eq!(h1.status, 200);
}

#[tokio::test]
async fn listeners_open_and_close_with_snapshots_and_in_flight_requests_finish() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let base = config_yaml(&[("echo", &[e1.addr()])], &[("all", "/", "echo")]);
    let two = base.replacen("listeners:\n", "listeners:\n  - name: extra\n    address: 127.0.0.1:0\n", 1);
    cp.apply(&two).await.unwrap();
    wait_version(&node, 1).await;
    let extra = listener(&node, "extra").await;
    let client = HttpClient::default();
    assert_eq!(client.get(extra, "/x").await.unwrap().status, 200, "an added listener serves");

    // A slow request is in flight on `extra` when a snapshot removes it.
    let before = e1.received();
    let slow = tokio::spawn({
        let client = client.clone();
        async move { client.get(extra, "/slow?delay_ms=700").await }
    });
    eventually(Duration::from_secs(5), "the slow request reached the upstream", || async {
        (e1.received() > before).then_some(())
    })
    .await;
    cp.apply(&base).await.unwrap();
    wait_version(&node, 2).await;
    assert_eq!(node.listener_addr("extra"), None);
    eventually(Duration::from_secs(5), "the removed listener's port is closed", || async {
        tokio::net::TcpStream::connect(extra).await.is_err().then_some(())
    })
    .await;
    let finished = slow.await.unwrap().unwrap();
    assert_eq!(finished.status, 200, "the request in flight finished");
    let web = listener(&node, "web").await;
    assert_eq!(client.get(web, "/x").await.unwrap().status, 200, "the kept listener still serves");
}

#[tokio::test]
async fn hosts_templates_methods_and_headers_route_through_the_proxy() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let e2 = EchoServer::start("echo-2", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let mut yaml = config_yaml(&[("one", &[e1.addr()]), ("two", &[e2.addr()])], &[("default", "/", "one")]);
    yaml.push_str(
        "  - name: shop-users\n    match: { template: '/users/{id}', hosts: [shop.example.com] }\n    forward: { clusters: [{ name: two }] }\n\
         \x20 - name: any-shop\n    match: { prefix: /, hosts: ['*.example.com'] }\n    forward: { clusters: [{ name: one }] }\n\
         \x20 - name: canary\n    match: { prefix: /, headers: [{ name: x-canary, exact: 'on' }], methods: [GET] }\n    forward: { clusters: [{ name: two }] }\n",
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();
    let send = |host: &'static str, path: &'static str, canary: bool| {
        let mut req = Request::get(format!("http://{web}{path}")).header("host", host);
        if canary {
            req = req.header("x-canary", "on");
        }
        let client = client.clone();
        async move { client.send(req.body(Full::<Bytes>::default()).unwrap()).await.unwrap() }
    };
    assert_eq!(send("shop.example.com", "/users/42", false).await.backend(), "echo-2");
    assert_eq!(send("shop.example.com:8080", "/users/42/orders", false).await.status, 404, "no fall-through");
    assert_eq!(send("blog.example.com", "/anything", false).await.backend(), "echo-1");
    assert_eq!(send("localhost", "/x", true).await.backend(), "echo-2", "header match beats plain prefix");
    assert_eq!(send("localhost", "/x", false).await.backend(), "echo-1");

    // The same, one route at a time from the CLI.
    let out = vane(
        &cp.url(),
        &["route", "add", "api-v2", "--path-separated-prefix", "/v2", "--host", "api.example.org", "--cluster", "two"],
    )
    .await;
    assert!(out.success, "{}", out.stderr);
    wait_version(&node, 2).await;
    assert_eq!(send("api.example.org", "/v2/items", false).await.backend(), "echo-2");
    assert_eq!(send("api.example.org", "/v2x", false).await.status, 404);
    let table = vane(&cp.url(), &["get", "route", "api-v2"]).await.stdout;
    assert!(table.contains("path_separated_prefix /v2 hosts=api.example.org"), "{table}");
}

#[tokio::test]
async fn redirects_direct_responses_rewrites_and_header_edits() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let mut yaml = config_yaml(&[("echo", &[e1.addr()])], &[]);
    yaml.push_str(
        "  - name: old\n    match: { prefix: /old }\n    redirect: { prefix_rewrite: /new, code: 301 }\n\
         \x20 - name: secure\n    match: { exact: /login }\n    redirect: { scheme: https, host: login.example.com }\n\
         \x20 - name: teapot\n    match: { exact: /brew }\n    direct_response: { status: 418, body: \"short and stout\\n\" }\n    response_headers: { set: [{ name: x-served-by, value: vane }] }\n\
         \x20 - name: api\n    match: { prefix: /api/v1 }\n    forward: { clusters: [{ name: echo }], prefix_rewrite: /internal, host_rewrite: backend.internal }\n\
         \x20   request_headers: { set: [{ name: x-client, value: '${client_ip}' }], add: [{ name: x-trace, value: 'rid=${request_id}' }], remove: [x-secret] }\n\
         \x20   response_headers: { remove: [x-backend], add: [{ name: x-route, value: api }] }\n\
         \x20 - name: users\n    match: { template: '/users/{id}' }\n    forward: { clusters: [{ name: echo }], template_rewrite: '/v2/people/{id}' }\n    request_headers: { set: [{ name: x-user, value: '${param.id}' }] }\n\
         \x20 - name: legacy\n    match: { regex: '/shop/[a-z]+/item' }\n    forward: { clusters: [{ name: echo }], regex_rewrite: { pattern: '^/shop/([a-z]+)/', substitution: '/catalog/$1/' } }\n"
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();

    let r = client.get(web, "/old/page?x=1").await.unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(r.headers["location"], format!("http://{web}/new/page?x=1"));
    let r = client.get(web, "/login").await.unwrap();
    assert_eq!((r.status.as_u16(), r.headers["location"].to_str().unwrap()), (302, "https://login.example.com/login"));
    let r = client.get(web, "/brew").await.unwrap();
    assert_eq!((r.status.as_u16(), r.body.as_str()), (418, "short and stout\n"));
    assert_eq!(r.headers["x-served-by"], "vane");
    assert_eq!(e1.received(), 0, "nothing reached the upstream so far");

    let req = Request::get(format!("http://{web}/api/v1/items?id=3"))
        .header("x-secret", "s3cr3t")
        .header("x-request-id", "rid-77")
        .body(Full::<Bytes>::default())
        .unwrap();
    let r = client.send(req).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("GET /internal/items?id=3 "), "{}", r.body);
    assert!(r.body.contains("host: backend.internal\n"), "{}", r.body);
    assert!(
        r.body.contains(&format!("x-forwarded-host: {web}\n")),
        "the client's host is kept for the upstream:\n{}",
        r.body
    );
    assert!(r.body.contains("x-client: 127.0.0.1\n") && r.body.contains("x-trace: rid=rid-77\n"), "{}", r.body);
    assert!(!r.body.contains("s3cr3t"), "{}", r.body);
    assert!(r.headers.get("x-backend").is_none() && r.headers["x-route"] == "api");

    let r = client.get(web, "/users/42").await.unwrap();
    assert!(r.body.contains("GET /v2/people/42 ") && r.body.contains("x-user: 42\n"), "{}", r.body);
    let r = client.get(web, "/shop/shoes/item").await.unwrap();
    assert!(r.body.contains("GET /catalog/shoes/item "), "{}", r.body);

    // Refused: a rewrite the match cannot support, a bad redirect code.
    let bad = yaml.replace("template_rewrite: '/v2/people/{id}'", "template_rewrite: '/v2/{nope}'");
    let err = cp.apply(&bad).await.unwrap_err();
    assert!(
        err.message().contains("route 'users': forward.template_rewrite: '{nope}' is not captured by '/users/{id}'"),
        "{}",
        err.message()
    );
    let bad = yaml.replace("code: 301", "code: 200");
    let err = cp.apply(&bad).await.unwrap_err();
    assert!(err.message().contains("route 'old': redirect.code: 200 is not a redirect code"), "{}", err.message());
}

#[tokio::test]
async fn a_trusted_proxys_forwarding_chain_is_kept_and_extended() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = config_yaml(&[("echo", &[e1.addr()])], &[("all", "/", "echo")]).replacen(
        "    address: 127.0.0.1:0\n",
        "    address: 127.0.0.1:0\n    trusted_proxies: [127.0.0.0/8]\n",
        1,
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let req = Request::get(format!("http://{web}/h"))
        .header("host", "shop.example")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "www.example.com")
        .header("forwarded", "for=203.0.113.9;proto=https")
        .header("via", "1.1 edge-lb")
        .body(Full::<Bytes>::default())
        .unwrap();
    let body = HttpClient::default().send(req).await.unwrap().body;
    assert!(body.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\n"), "{body}");
    assert!(
        body.contains("x-forwarded-proto: https\n") && body.contains("x-forwarded-host: www.example.com\n"),
        "{body}"
    );
    assert!(
        body.contains("forwarded: for=203.0.113.9;proto=https, for=127.0.0.1;proto=http;host=\"shop.example\"\n"),
        "{body}"
    );
    assert!(body.contains("via: 1.1 edge-lb, 1.1 vane\n"), "{body}");
    let err = cp.apply(&yaml.replace("127.0.0.0/8", "10.0.0.0/33")).await.unwrap_err();
    assert!(
        err.message().contains("listener 'web': trusted_proxies[0]: '10.0.0.0/33' is not an address or CIDR"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn grpc_unary_and_bidirectional_streams_pass_through_with_status_intact() {
    init_logs();
    // The upstream is a second control plane: its admin API (unary) and discovery stream
    // (bidirectional) are reached through Vane, over HTTP/2 on both sides.
    let upstream = TestControlPlane::start().await;
    let front = TestControlPlane::start().await;
    let proxy = front.node("front-proxy").await;
    let yaml = format!(
        "listeners:\n  - {{ name: grpc, address: 127.0.0.1:0 }}\nclusters:\n  - {{ name: cp, protocol: HTTP2, endpoints: [{{ address: \"{}\" }}] }}\nroutes:\n  - {{ name: all, match: {{ prefix: / }}, forward: {{ clusters: [{{ name: cp }}], timeout: 60s }} }}\n",
        upstream.addr
    );
    front.apply(&yaml).await.unwrap();
    wait_version(&proxy, 1).await;
    let via = format!("http://{}", listener(&proxy, "grpc").await);

    // Unary, through the proxy, with the CLI.
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = write_yaml(dir.path(), "v1.yaml", &config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")]));
    let out = vane(&via, &["apply", "-f", &file]).await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(upstream.plane.latest_version(), 1);
    // An error status (grpc-status in trailers) arrives whole.
    let bad = write_yaml(dir.path(), "bad.yaml", &config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "nope")]));
    let out = vane(&via, &["apply", "-f", &bad]).await;
    assert!(!out.success && out.stderr.contains("unknown cluster 'nope'"), "{}", out.stderr);

    // Bidirectional streaming: a node whose discovery stream runs through the proxy.
    let node = start_node("behind-proxy", &via, None).await;
    wait_version(&node, 1).await;
    upstream.apply(&config_yaml(&[("echo", &[e1.addr()])], &[("api", "/v2", "echo")])).await.unwrap();
    wait_version(&node, 2).await;
    let reply = HttpClient::default().get(listener(&node, "web").await, "/v2/x").await.unwrap();
    assert_eq!(reply.backend(), "echo-1");
    let nodes = vane(&upstream.url(), &["nodes", "-o", "json"]).await.stdout;
    assert!(nodes.contains("behind-proxy"), "{nodes}");
}

#[tokio::test]
async fn websocket_echo_through_the_proxy_and_upgrades_only_after_a_101() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    init_logs();
    // A WebSocket echo upstream.
    let ws = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ws_addr = ws.local_addr().unwrap();
    let ws_server = tokio::spawn(async move {
        while let Ok((stream, _)) = ws.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() || message.is_binary() {
                        let _ = socket.send(message).await;
                    }
                }
            });
        }
    });
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    cp.apply(&config_yaml(
        &[("ws", &[ws_addr]), ("plain", &[e1.addr()])],
        &[("chat", "/chat", "ws"), ("other", "/", "plain")],
    ))
    .await
    .unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;

    let stream = tokio::net::TcpStream::connect(web).await.unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async(format!("ws://{web}/chat"), stream).await.unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", "through", "vane"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    socket.close(None).await.unwrap();

    // An upstream that does not switch: its answer is passed on, no upgrade happens.
    let req = Request::get(format!("http://{web}/plain"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(Full::<Bytes>::default())
        .unwrap();
    let reply = HttpClient::default().send(req).await.unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("upgrade: websocket\n"), "the upgrade was asked upstream:\n{}", reply.body);
    ws_server.abort();
}

#[tokio::test]
async fn hash_policies_keep_a_user_on_one_backend_through_the_proxy() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let mut echoes = Vec::new();
    for i in 0..3 {
        echoes.push(EchoServer::start(&format!("echo-{i}"), ([127, 0, 0, 1], 0).into()).await.unwrap());
    }
    let addrs: Vec<std::net::SocketAddr> = echoes.iter().map(EchoServer::addr).collect();
    let mut yaml = config_yaml(&[("users", &addrs)], &[("all", "/", "users")]);
    yaml = yaml.replacen(
        "  - name: users\n",
        "  - name: users\n    lb_policy: MAGLEV\n    hash_policy: { header: x-user }\n",
        1,
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();
    let mut seen = std::collections::HashSet::new();
    for user in 0..30 {
        let mut backends = std::collections::HashSet::new();
        for _ in 0..3 {
            let req = Request::get(format!("http://{web}/x"))
                .header("x-user", format!("user-{user}"))
                .body(Full::<Bytes>::default())
                .unwrap();
            backends.insert(client.send(req).await.unwrap().backend().to_owned());
        }
        assert_eq!(backends.len(), 1, "user-{user} stays on one backend: {backends:?}");
        seen.extend(backends);
    }
    assert_eq!(seen.len(), 3, "users spread over every backend: {seen:?}");
}

#[tokio::test]
async fn the_circuit_breaker_answers_503_at_once_beyond_max_requests() {
    init_logs();
    let serving = Serving::start(|e| {
        config_yaml(&[("echo", &[e])], &[("all", "/", "echo")]).replacen(
            "  - name: echo\n",
            "  - name: echo\n    circuit_breaker: { max_requests: 2 }\n",
            1,
        )
    })
    .await;
    let (web, echo) = (serving.web, &serving.echo);
    // Two slow requests hold the two slots.
    let before = echo.received();
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let client = HttpClient::default();
            tokio::spawn(async move { client.get(web, "/slow?delay_ms=1000").await })
        })
        .collect();
    eventually(Duration::from_secs(5), "both slow requests are upstream", || async {
        (echo.received() >= before + 2).then_some(())
    })
    .await;
    let refused = HttpClient::default().get(web, "/now").await.unwrap();
    assert_eq!(refused.status, 503);
    assert_eq!(refused.headers["x-vane-overloaded"], "max_requests");
    assert_eq!(echo.received(), before + 2, "the refused request never went upstream");
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap().status, 200);
    }
    assert_eq!(HttpClient::default().get(web, "/after").await.unwrap().status, 200, "slots come back");
}

#[tokio::test]
async fn a_killed_endpoint_is_ejected_and_checked_back_in_after_it_restarts() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let e2 = EchoServer::start("echo-2", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let e2_addr = e2.addr();
    let yaml = config_yaml(&[("pool", &[e1.addr(), e2_addr])], &[("all", "/", "pool")]).replacen(
        "  - name: pool\n",
        "  - name: pool\n    outlier_detection: { consecutive_errors: 2, base_ejection_time: 1s }\n\
         \x20   health_check: { http_path: /health, interval: 0.1s, timeout: 0.2s, healthy_threshold: 1, unhealthy_threshold: 2 }\n",
        1,
    );
    let yaml = yaml.replace(
        "forward: { clusters: [{ name: pool }] }",
        "forward: { clusters: [{ name: pool }], retry: { retry_on: [connect-failure, 5xx] } }",
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let admin = node.admin_addr().unwrap();
    let client = HttpClient::default();
    let available = |body: &str, addr: std::net::SocketAddr| -> Option<bool> {
        let json: serde_json::Value = serde_json::from_str(body).ok()?;
        json["pool"]
            .as_array()?
            .iter()
            .find(|e| e["address"] == addr.to_string())
            .and_then(|e| e["available"].as_bool())
    };

    drop(e2); // killed
    // Idempotent requests are retried on the live endpoint: none fails, before or after ejection.
    for _ in 0..20 {
        let r = client.get(web, "/x").await.unwrap();
        assert_eq!((r.status.as_u16(), r.backend()), (200, "echo-1"));
    }
    eventually(Duration::from_secs(5), "echo-2 is out of rotation", || async {
        let body = client.get(admin, "/clusters").await.ok()?.body;
        (available(&body, e2_addr) == Some(false)).then_some(())
    })
    .await;

    // Restarted on the same address: the health check brings it back.
    let e2 = EchoServer::start("echo-2", e2_addr).await.unwrap();
    eventually(Duration::from_secs(10), "echo-2 is back in rotation", || async {
        let body = client.get(admin, "/clusters").await.ok()?.body;
        (available(&body, e2_addr) == Some(true)).then_some(())
    })
    .await;
    eventually(Duration::from_secs(5), "echo-2 answers again", || async {
        let r = client.get(web, "/y").await.ok()?;
        (r.backend() == "echo-2").then_some(())
    })
    .await;
    assert!(e2.received() > 0);
}

#[tokio::test]
async fn sticky_sessions_keep_a_client_and_fail_over_with_a_new_cookie() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let e2 = EchoServer::start("echo-2", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = config_yaml(&[("app", &[e1.addr(), e2.addr()])], &[("all", "/", "app")]).replacen(
        "  - name: app\n",
        "  - name: app\n    sticky_session: { cookie: srv, ttl: 3600s, secret: 'a-secret-of-some-length' }\n    outlier_detection: { consecutive_errors: 1 }\n",
        1,
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();
    let first = client.get(web, "/").await.unwrap();
    let set = first.headers["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.starts_with("srv=") && set.contains("Max-Age=3600"), "{set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    let home = first.backend().to_owned();
    let with_cookie = |cookie: String| {
        let client = client.clone();
        async move {
            let req = Request::get(format!("http://{web}/again"))
                .header("cookie", cookie)
                .body(Full::<Bytes>::default())
                .unwrap();
            client.send(req).await.unwrap()
        }
    };
    for _ in 0..6 {
        let r = with_cookie(cookie.clone()).await;
        assert_eq!(r.backend(), home, "round robin would alternate; affinity keeps the client");
        assert!(r.headers.get("set-cookie").is_none(), "a valid cookie is not reissued");
    }
    // The sticky endpoint goes away: the client fails over and gets a new cookie.
    let (gone, other) = if home == "echo-1" { (e1, e2) } else { (e2, e1) };
    drop(gone);
    let mut failed_over = None;
    for _ in 0..4 {
        let r = with_cookie(cookie.clone()).await;
        if r.status == 200 {
            assert_eq!(r.backend(), "echo-1".replace('1', if home == "echo-1" { "2" } else { "1" }));
            failed_over = r.headers.get("set-cookie").map(|v| v.to_str().unwrap().to_owned());
            break;
        }
    }
    let reissued = failed_over.expect("a request failed over with a new cookie");
    assert_ne!(reissued.split(';').next().unwrap(), cookie);
    assert!(other.received() > 0);
}

#[tokio::test]
async fn a_95_5_canary_split_holds_within_statistical_error() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let stable = EchoServer::start("stable", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let canary = EchoServer::start("canary", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = config_yaml(&[("stable", &[stable.addr()]), ("canary", &[canary.addr()])], &[]).replace(
        "routes:\n",
        "routes:\n  - name: split\n    match: { prefix: / }\n    forward: { clusters: [{ name: stable, weight: 95 }, { name: canary, weight: 5 }] }\n",
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();
    let n = 2000;
    let mut to_canary = 0;
    for _ in 0..n {
        if client.get(web, "/").await.unwrap().backend() == "canary" {
            to_canary += 1;
        }
    }
    // Binomial(2000, 0.05): mean 100, sd ~9.7; 5 sd either side.
    assert!((52..=148).contains(&to_canary), "{to_canary} of {n} went to the canary");
}

#[tokio::test]
async fn requests_are_mirrored_to_a_shadow_cluster_whose_answers_are_discarded() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let live = EchoServer::start("live", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let shadow = EchoServer::start("shadow", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = config_yaml(&[("live", &[live.addr()]), ("shadow", &[shadow.addr()])], &[]).replace(
        "routes:\n",
        "routes:\n  - name: all\n    match: { prefix: / }\n    forward: { clusters: [{ name: live }], mirror: { cluster: shadow } }\n",
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();
    for _ in 0..5 {
        let r = client.get(web, "/x?status=200").await.unwrap();
        assert_eq!(r.backend(), "live", "the client only ever sees the live answer");
    }
    eventually(Duration::from_secs(5), "the shadow received every request", || async {
        (shadow.received() == 5).then_some(())
    })
    .await;
    assert_eq!(live.received(), 5);
}

#[tokio::test]
async fn traffic_fails_over_to_the_next_priority_and_back() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let primary = EchoServer::start("primary", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let backup = EchoServer::start("backup", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let primary_addr = primary.addr();
    let yaml = format!(
        "listeners:\n  - {{ name: web, address: 127.0.0.1:0 }}\n\
         clusters:\n  - name: app\n    health_check: {{ interval: 0.1s, timeout: 0.2s, healthy_threshold: 1, unhealthy_threshold: 1 }}\n\
         \x20   endpoints:\n      - {{ address: \"{primary_addr}\" }}\n      - {{ address: \"{}\", priority: 1 }}\n\
         routes:\n  - {{ name: all, match: {{ prefix: / }}, forward: {{ clusters: [{{ name: app }}] }} }}\n",
        backup.addr()
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();
    for _ in 0..10 {
        assert_eq!(client.get(web, "/").await.unwrap().backend(), "primary", "priority 0 takes everything");
    }
    drop(primary);
    eventually(Duration::from_secs(5), "traffic spills to priority 1", || async {
        (client.get(web, "/").await.ok()?.backend() == "backup").then_some(())
    })
    .await;
    for _ in 0..5 {
        assert_eq!(client.get(web, "/").await.unwrap().backend(), "backup");
    }
    let _primary = EchoServer::start("primary", primary_addr).await.unwrap();
    eventually(Duration::from_secs(5), "traffic returns to priority 0", || async {
        (client.get(web, "/").await.ok()?.backend() == "primary").then_some(())
    })
    .await;
}

#[tokio::test]
async fn grpc_health_checks_follow_the_serving_status() {
    init_logs();
    let upstream = TestControlPlane::start().await; // serves grpc.health.v1
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let yaml = format!(
        "listeners:\n  - {{ name: web, address: 127.0.0.1:0 }}\n\
         clusters:\n  - name: known\n    protocol: HTTP2\n    health_check: {{ grpc_service: vane.admin.v1.ConfigService, interval: 0.1s, healthy_threshold: 1, unhealthy_threshold: 1 }}\n    endpoints: [{{ address: \"{0}\" }}]\n\
         \x20 - name: unknown\n    protocol: HTTP2\n    health_check: {{ grpc_service: no.such.Service, interval: 0.1s, healthy_threshold: 1, unhealthy_threshold: 1 }}\n    endpoints: [{{ address: \"{0}\" }}]\n",
        upstream.addr
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let admin = node.admin_addr().unwrap();
    let client = HttpClient::default();
    let state = eventually(Duration::from_secs(5), "both checks have run", || async {
        let json: serde_json::Value = serde_json::from_str(&client.get(admin, "/clusters").await.ok()?.body).ok()?;
        let known = json["known"][0]["health_check_ok"].as_bool()?;
        let unknown = json["unknown"][0]["health_check_ok"].as_bool()?;
        (!unknown).then_some((known, unknown))
    })
    .await;
    assert_eq!(state, (true, false));
}

#[tokio::test]
async fn a_config_swap_keeps_sticky_clients_and_round_robin_position() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let e2 = EchoServer::start("echo-2", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let base = config_yaml(&[("app", &[e1.addr(), e2.addr()])], &[("all", "/", "app")]).replacen(
        "  - name: app\n",
        "  - name: app\n    sticky_session: { secret: 'another-secret-0123' }\n",
        1,
    );
    cp.apply(&base).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();
    let first = client.get(web, "/").await.unwrap();
    let cookie = first.headers["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let home = first.backend().to_owned();
    // An unrelated change (a new route) swaps the runtime; the cluster is unchanged.
    cp.apply(&base.replace(
        "routes:\n",
        "routes:\n  - { name: extra, match: { exact: /extra }, direct_response: { status: 204 } }\n",
    ))
    .await
    .unwrap();
    wait_version(&node, 2).await;
    for _ in 0..5 {
        let req = Request::get(format!("http://{web}/"))
            .header("cookie", cookie.clone())
            .body(Full::<Bytes>::default())
            .unwrap();
        let r = client.send(req).await.unwrap();
        assert_eq!(r.backend(), home, "affinity survives the swap");
        assert!(r.headers.get("set-cookie").is_none());
    }
}

#[tokio::test]
async fn endpoints_by_hostname_are_resolved_and_unresolvable_names_are_nacked() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let by_name = format!(
        "listeners:\n  - {{ name: web, address: 127.0.0.1:0 }}\n\
         clusters:\n  - {{ name: named, dns_refresh_rate: 0.2s, endpoints: [{{ address: \"localhost:{}\" }}] }}\n\
         routes:\n  - {{ name: all, match: {{ prefix: / }}, forward: {{ clusters: [{{ name: named }}] }} }}\n",
        e1.addr().port()
    );
    cp.apply(&by_name).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    assert_eq!(HttpClient::default().get(web, "/x").await.unwrap().backend(), "echo-1");
    let clusters = HttpClient::default().get(node.admin_addr().unwrap(), "/clusters").await.unwrap().body;
    assert!(clusters.contains(&format!("\"address\":\"127.0.0.1:{}\"", e1.addr().port())), "{clusters}");

    cp.apply(&by_name.replace("localhost:", "no-such-host.invalid:")).await.unwrap();
    eventually(Duration::from_secs(10), "the NACK names the endpoint", || async {
        let out = vane(&cp.url(), &["nodes"]).await.stdout;
        out.contains("cannot resolve").then_some(())
    })
    .await;
    assert_eq!(node.version(), 1);
    assert_eq!(HttpClient::default().get(web, "/x").await.unwrap().backend(), "echo-1", "version 1 keeps serving");
}

#[tokio::test]
async fn passive_ejection_bounds_the_failures_a_killed_endpoint_causes() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let e2 = EchoServer::start("echo-2", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let yaml = config_yaml(&[("pool", &[e1.addr(), e2.addr()])], &[("all", "/", "pool")]).replacen(
        "  - name: pool\n",
        "  - name: pool\n    outlier_detection: { consecutive_errors: 3, base_ejection_time: 30s, max_ejection_percent: 50 }\n",
        1,
    );
    // Retries off (the default would hide the failures this test counts).
    let yaml = yaml.replace("[{ name: pool }] }", "[{ name: pool }], retry: { num_retries: 0 } }");
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();
    drop(e2);
    // No retries: the dead endpoint's turns fail until it has failed 3 times in a row,
    // then it is out for 30 s and every request succeeds.
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(client.get(web, "/x").await.unwrap().status.as_u16());
    }
    let failures: Vec<usize> = statuses.iter().enumerate().filter(|(_, s)| **s != 200).map(|(i, _)| i).collect();
    assert_eq!(failures.len(), 3, "exactly the failures that trigger the ejection: {statuses:?}");
    assert!(failures.iter().all(|i| *i < 10), "all early: {statuses:?}");
    let metrics = client.get(node.admin_addr().unwrap(), "/clusters").await.unwrap().body;
    assert!(metrics.contains("\"available\":false"), "{metrics}");
}

#[tokio::test]
async fn least_request_sends_most_traffic_away_from_a_slow_endpoint() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let fast = EchoServer::start("fast", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let slow =
        EchoServer::start_with_delay("slow", ([127, 0, 0, 1], 0).into(), Duration::from_millis(200)).await.unwrap();
    let yaml = config_yaml(&[("pool", &[fast.addr(), slow.addr()])], &[("all", "/", "pool")]).replacen(
        "  - name: pool\n",
        "  - name: pool\n    lb_policy: LEAST_REQUEST\n",
        1,
    );
    cp.apply(&yaml).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    // 8 clients, 25 requests each: the slow endpoint holds its requests longer, so the
    // power-of-two choice keeps seeing it busier.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(tokio::spawn(async move {
            let client = HttpClient::default();
            let mut fast_hits = 0;
            for _ in 0..25 {
                if client.get(web, "/").await.unwrap().backend() == "fast" {
                    fast_hits += 1;
                }
            }
            fast_hits
        }));
    }
    let mut fast_hits = 0;
    for c in clients {
        fast_hits += c.await.unwrap();
    }
    eprintln!("least request: {fast_hits} of 200 to the fast endpoint");
    assert!(fast_hits >= 140, "{fast_hits} of 200 went to the fast endpoint (round robin would give 100)");
}

#[tokio::test]
async fn weights_and_the_panic_threshold_seen_from_the_client() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let heavy = EchoServer::start("heavy", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let light = EchoServer::start("light", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let third = EchoServer::start("third", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let weighted = format!(
        "listeners:\n  - {{ name: web, address: 127.0.0.1:0 }}\n\
         clusters:\n  - name: w\n    endpoints: [{{ address: \"{}\", weight: 3 }}, {{ address: \"{}\" }}]\n\
         routes:\n  - {{ name: all, match: {{ prefix: / }}, forward: {{ clusters: [{{ name: w }}] }} }}\n",
        heavy.addr(),
        light.addr()
    );
    cp.apply(&weighted).await.unwrap();
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let client = HttpClient::default();
    let mut order = Vec::new();
    for _ in 0..8 {
        order.push(client.get(web, "/").await.unwrap().backend().to_owned());
    }
    assert_eq!(order.iter().filter(|b| *b == "heavy").count(), 6, "3:1 exactly over two rounds: {order:?}");

    // Two of three endpoints die. With the default panic threshold (50%) the one left is
    // below it, so traffic still goes to all three (most requests fail); with the
    // threshold at 0 the survivor takes everything.
    let (survivor, light_addr, third_addr) = (heavy.addr(), light.addr(), third.addr());
    let cluster = |panic: &str| {
        format!(
            "listeners:\n  - {{ name: web, address: 127.0.0.1:0 }}\n\
             clusters:\n  - name: w\n{panic}    health_check: {{ interval: 0.1s, timeout: 0.2s, healthy_threshold: 1, unhealthy_threshold: 1 }}\n\
             \x20   endpoints: [{{ address: \"{}\" }}, {{ address: \"{}\" }}, {{ address: \"{}\" }}]\n\
             routes:\n  - {{ name: all, match: {{ prefix: / }}, forward: {{ clusters: [{{ name: w }}] }} }}\n",
            survivor, light_addr, third_addr
        )
    };
    drop(light);
    drop(third);
    cp.apply(&cluster("")).await.unwrap();
    wait_version(&node, 2).await;
    let admin = node.admin_addr().unwrap();
    eventually(Duration::from_secs(5), "two endpoints fail their checks", || async {
        let body = client.get(admin, "/clusters").await.ok()?.body;
        (body.matches("\"health_check_ok\":false").count() == 2).then_some(())
    })
    .await;
    let mut failed = 0;
    for _ in 0..9 {
        if client.get(web, "/").await.unwrap().status != 200 {
            failed += 1;
        }
    }
    assert!(failed >= 3, "in panic mode the dead endpoints still get traffic: {failed} of 9 failed");
    cp.apply(&cluster("    panic_threshold_percent: 0\n")).await.unwrap();
    wait_version(&node, 3).await;
    for _ in 0..9 {
        assert_eq!(client.get(web, "/").await.unwrap().backend(), "heavy", "without panic the survivor takes all");
    }
}

#[tokio::test]
async fn connection_and_pending_limits_queue_then_refuse() {
    init_logs();
    let serving = Serving::start(|e| {
        config_yaml(&[("echo", &[e])], &[("all", "/", "echo")]).replacen(
            "  - name: echo\n",
            "  - name: echo\n    circuit_breaker: { max_connections: 1, max_pending_requests: 1 }\n",
            1,
        )
    })
    .await;
    let (web, echo) = (serving.web, &serving.echo);
    let before = echo.received();
    let first = tokio::spawn(async move { HttpClient::default().get(web, "/slow?delay_ms=800").await });
    eventually(Duration::from_secs(5), "the first request holds the connection", || async {
        (echo.received() > before).then_some(())
    })
    .await;
    let second = tokio::spawn(async move { HttpClient::default().get(web, "/queued").await });
    let admin = serving.node.admin_addr().unwrap();
    eventually(Duration::from_secs(5), "the second request waits in the queue", || async {
        let metrics = HttpClient::default().get(admin, "/metrics").await.ok()?.body;
        metrics.contains("vane_upstream_pending_requests{cluster=\"echo\"} 1\n").then_some(())
    })
    .await;
    // A third finds the queue full.
    let third = HttpClient::default().get(web, "/third").await.unwrap();
    assert_eq!(third.status, 503);
    assert_eq!(third.headers["x-vane-overloaded"], "max_pending_requests");
    assert_eq!(first.await.unwrap().unwrap().status, 200);
    assert_eq!(second.await.unwrap().unwrap().status, 200, "the queued request went once the slot freed");
}

/// An upstream that answers each request with the canned response its path names, as raw
/// bytes (what hyper-based test servers cannot send: conflicting lengths, no length at
/// all, garbage). Counts the connections it accepts.
async fn raw_upstream() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 2048];
                loop {
                    let Ok(n) = stream.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).into_owned();
                        seen.drain(..end + 4);
                        let target = head.split(' ').nth(1).unwrap_or("/").to_owned();
                        let (response, close): (&[u8], bool) = match target.as_str() {
                            "/chunked" => (
                                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n",
                                false,
                            ),
                            "/until-close" => (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close", true),
                            "/conflicting-lengths" => {
                                (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc", true)
                            }
                            "/garbage" => (b"this is not HTTP\r\n\r\n", true),
                            "/head" => (b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n", false),
                            _ => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
                        };
                        if stream.write_all(response).await.is_err() || close {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn upstream_responses_are_framed_per_rfc_9112_through_the_proxy() {
    use std::sync::atomic::Ordering;
    init_logs();
    let (raw, connections) = raw_upstream().await;
    let Serving { cp: _cp, node: _node, echo: _echo, web } =
        Serving::start(|_| config_yaml(&[("raw", &[raw])], &[("all", "/", "raw")])).await;
    let client = HttpClient::default();

    // Chunked: decoded (extensions and trailers dropped), and the upstream connection is
    // kept for the next request.
    let before = connections.load(Ordering::SeqCst);
    for _ in 0..3 {
        let reply = client.get(web, "/chunked").await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "hello, world"));
    }
    assert!(connections.load(Ordering::SeqCst) - before <= 1, "chunked responses leave the connection reusable");

    // No length: the body runs to the close, and the next request opens a new connection.
    for _ in 0..2 {
        let reply = client.get(web, "/until-close").await.unwrap();
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "until close"));
    }

    // HEAD: the length is passed on, no body is waited for.
    let head = Request::head(format!("http://{web}/head")).body(Full::<Bytes>::default()).unwrap();
    let reply = client.send(head).await.unwrap();
    assert_eq!(reply.status.as_u16(), 200);
    assert_eq!(reply.headers.get("content-length").and_then(|v| v.to_str().ok()), Some("11"));
    assert_eq!(reply.body, "");

    // Responses that cannot be framed safely are a 502, never passed on.
    assert_eq!(client.get(web, "/conflicting-lengths").await.unwrap().status, 502);
    assert_eq!(client.get(web, "/garbage").await.unwrap().status, 502);
    // And the node is fine afterwards.
    assert_eq!(client.get(web, "/anything").await.unwrap().body, "ok");
}
