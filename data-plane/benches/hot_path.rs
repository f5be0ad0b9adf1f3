//! The per-request work of the data plane, without sockets: route lookup as the route
//! count grows, the round-robin pick, the upstream request rewrite, policy chains, and the
//! inline HTTP/1.1 server's request parsing and response encoding.
//!
//! `cargo bench -p vane-data-plane --bench hot_path`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use vane_data_plane::bench::{CompiledCluster, CompiledPolicies, CompiledRoutes, Peer};
use vane_proto::config::{self, Config};

fn config_with_routes(n: usize) -> Config {
    let cluster = config::Cluster {
        name: "c".into(),
        endpoints: vec![config::Endpoint { address: "127.0.0.1:9001".into(), weight: 1, ..Default::default() }],
        ..Default::default()
    };
    let routes = (0..n)
        .map(|i| config::Route {
            name: format!("r{i}"),
            r#match: Some(config::RouteMatch {
                path: Some(if i % 2 == 0 {
                    config::route_match::Path::Prefix(format!("/svc{i}/"))
                } else {
                    config::route_match::Path::Exact(format!("/svc{i}/health"))
                }),
                ..Default::default()
            }),
            action: Some(config::route::Action::Forward(config::Forward {
                clusters: vec![config::WeightedCluster { name: "c".into(), weight: 0 }],
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    Config {
        listeners: vec![config::Listener { name: "web".into(), address: "127.0.0.1:0".into(), ..Default::default() }],
        routes,
        clusters: vec![cluster],
        ..Default::default()
    }
}

fn route_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for n in [10usize, 1_000, 100_000] {
        let routes = CompiledRoutes::compile(&config_with_routes(n));
        // A prefix route in the middle of the table, and an exact one.
        let request = |path: String| http::Request::get(path).header("host", "shop.example").body(()).unwrap();
        let prefix_req = request(format!("/svc{}/items/42", (n / 2) & !1));
        let exact_req = request(format!("/svc{}/health", (n / 2) | 1));
        assert!(routes.find(&prefix_req).is_some() && routes.find(&exact_req).is_some());
        group.bench_with_input(BenchmarkId::new("prefix", n), &prefix_req, |b, r| b.iter(|| routes.find(black_box(r))));
        group.bench_with_input(BenchmarkId::new("exact", n), &exact_req, |b, r| b.iter(|| routes.find(black_box(r))));
    }
    group.finish();
}

fn balance_and_rewrite(c: &mut Criterion) {
    let spec = config::Cluster {
        name: "c".into(),
        endpoints: (0..4)
            .map(|i| config::Endpoint {
                address: format!("127.0.0.1:{}", 9001 + i),
                weight: i + 1,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let cluster = CompiledCluster::new(&spec);
    c.bench_function("round_robin_pick", |b| b.iter(|| black_box(cluster.pick())));
    // Operators' controls: one endpoint drained; slow start set with nothing ramping, and
    // with one endpoint (just added) ramping.
    let mut drained = spec.clone();
    drained.endpoints[1].drain = true;
    let drained = CompiledCluster::new(&drained);
    c.bench_function("round_robin_pick_one_drained", |b| b.iter(|| black_box(drained.pick())));
    let mut slow = spec;
    slow.slow_start = Some(config::SlowStart {
        window: Some(pbjson_types::Duration { seconds: 1000, nanos: 0 }),
        ..Default::default()
    });
    let idle = CompiledCluster::new(&slow);
    c.bench_function("round_robin_pick_slow_start_idle", |b| b.iter(|| black_box(idle.pick())));
    let mut fewer = slow.clone();
    fewer.endpoints.pop();
    let ramping = CompiledCluster::new(&fewer).changed(&slow);
    c.bench_function("round_robin_pick_slow_start_ramping", |b| b.iter(|| black_box(ramping.pick())));
    // Rendered once, as a connection does for all of its requests.
    let peer = Peer::new("192.0.2.10:50000".parse().unwrap());
    c.bench_function("upstream_request_rewrite", |b| {
        b.iter(|| {
            let req = http::Request::get("/api/items?id=7")
                .header("host", "shop.example")
                .header("user-agent", "bench")
                .header("connection", "keep-alive")
                .body(())
                .unwrap();
            black_box(cluster.rewrite(req, &peer))
        })
    });
    // What load generators and most HTTP/2 clients send: no hop-by-hop header to strip.
    c.bench_function("upstream_request_rewrite/no_hop_by_hop", |b| {
        b.iter(|| {
            let req = http::Request::get("/api/items?id=7")
                .header("host", "shop.example")
                .header("user-agent", "bench")
                .header("accept", "*/*")
                .body(())
                .unwrap();
            black_box(cluster.rewrite(req, &peer))
        })
    });
}

/// A route's policies: JWT (HS256, issuer, audience, one claim to a header) then a rate
/// limit keyed by consumer, as `benches/policy-bench.sh` runs them end to end.
fn policy_chain(c: &mut Criterion) {
    let secret = "bench-secret-0123456789abcdef";
    let config = vane_proto::load(
        &format!(
            "policies:\n  - name: jwt\n    auth: {{jwt: {{issuer: 'https://id.bench', audiences: [bench], \
             hmac_secrets: ['{secret}'], claims_to_headers: [{{claim: sub, header: x-user-id}}]}}}}\n  \
             - {{name: limit, rate_limit: {{requests: 100000000, per: 1s, key: [{{consumer: true}}]}}}}\n"
        ),
        vane_proto::Format::Yaml,
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = runtime.enter();
    let jwt_only = CompiledPolicies::compile(&config, &["jwt".into()]).unwrap();
    let both = CompiledPolicies::compile(&config, &["jwt".into(), "limit".into()]).unwrap();
    // header.payload.signature of {"sub":"bench-user","iss":"https://id.bench","aud":"bench","exp":4102444800}
    let token = {
        use base64::Engine as _;
        use hmac::Mac as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let signed = format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64(br#"{"sub":"bench-user","iss":"https://id.bench","aud":"bench","exp":4102444800}"#)
        );
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(signed.as_bytes());
        format!("{signed}.{}", b64(&mac.finalize().into_bytes()))
    };
    let client: std::net::IpAddr = [127, 0, 0, 1].into();
    for (name, chain) in [("jwt", &jwt_only), ("jwt_and_rate_limit", &both)] {
        c.bench_function(&format!("policy_chain/{name}"), |b| {
            b.iter(|| {
                let mut req =
                    http::Request::get("/orders").header("authorization", format!("Bearer {token}")).body(()).unwrap();
                let passed = runtime.block_on(chain.check(&mut req, client));
                assert!(passed);
                black_box(req)
            })
        });
    }
}

fn inline_server(c: &mut Criterion) {
    use vane_data_plane::bench::{parse_request_head, write_response};
    let head = b"GET /api/v1/orders?id=42 HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: wrk/4.1\r\n\
                 Accept: */*\r\nAccept-Encoding: gzip, br\r\nX-Request-Id: 7f3c2a9e-51b4-4c1e-9b0a-6d2f8e4a1c35\r\n\r\n";
    c.bench_function("server/parse_request_head", |b| {
        b.iter(|| assert_eq!(parse_request_head(black_box(head)), Some(5)))
    });
    let (mut wire, mut out) = (Vec::with_capacity(32 * 1024), Vec::with_capacity(1024));
    for (name, body) in
        [("64b", bytes::Bytes::from(vec![b'x'; 64])), ("16k", bytes::Bytes::from(vec![b'x'; 16 * 1024]))]
    {
        c.bench_function(&format!("server/write_response/{name}"), |b| {
            b.iter(|| {
                let mut response = http::Response::new(http_body_util::Full::new(body.clone()));
                let headers = response.headers_mut();
                headers.insert("content-type", http::HeaderValue::from_static("text/plain"));
                headers.insert("x-request-id", http::HeaderValue::from_static("7f3c2a9e-51b4-4c1e-9b0a-6d2f8e4a1c35"));
                wire.clear();
                assert!(write_response(response, &mut wire, &mut out));
                black_box(wire.len())
            })
        });
    }
}

criterion_group!(benches, route_lookup, balance_and_rewrite, policy_chain, inline_server);
criterion_main!(benches);
