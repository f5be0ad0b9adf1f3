//! TLS on the data plane: HTTPS listeners choosing certificates by SNI, ALPN, rotation
//! without a restart, client certificates, TLS to upstreams, the HTTP->HTTPS redirect, and
//! certificate checks and key redaction on the control plane. Certificates are made at
//! test time by a test CA.

use std::net::SocketAddr;

use http::StatusCode;
use serde_json::{Value, json};
use vane_suite::tls::{Issued, TestCa, TlsBackend, TlsClient};
use vane_suite::*;

fn inline_cert(name: &str, issued: &Issued) -> Value {
    json!({
        "name": name,
        "certificate_chain": { "inline_string": issued.cert },
        "private_key": { "inline_string": issued.key },
    })
}

fn cluster(name: &str, addr: SocketAddr) -> Value {
    json!({ "name": name, "endpoints": [{ "address": addr.to_string() }] })
}

fn route(name: &str, m: Value, cluster: &str) -> Value {
    json!({ "name": name, "match": m, "forward": { "clusters": [{ "name": cluster }] } })
}

/// Applies a config given as JSON (YAML's superset) and waits for the node to hold it.
async fn apply(cp: &TestControlPlane, node: &vane_data_plane::Node, config: &Value) -> u64 {
    let version = cp.apply(&config.to_string()).await.expect("config applies").version;
    wait_version(node, version).await;
    version
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_the_route_alpn_h2_and_unknown_names_get_the_default_or_fail() {
    init_logs();
    let ca = TestCa::new("test ca");
    let (a, b) = (ca.server(&["a.test"]), ca.server(&["*.b.test"]));
    let plain = EchoServer::start("plain", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let b_only = EchoServer::start("b-only", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let mut config = json!({
        "certificates": [inline_cert("a", &a), inline_cert("b", &b)],
        "listeners": [
            { "name": "web", "address": "127.0.0.1:0", "protocol": "HTTPS",
              "tls": { "certificates": ["a", "b"] } },
            { "name": "plain", "address": "127.0.0.1:0", "https_redirect_port": 443 },
        ],
        "clusters": [cluster("echo", plain.addr()), cluster("b-only", b_only.addr())],
        "routes": [
            route("b-sni", json!({ "prefix": "/", "sni": ["*.b.test"] }), "b-only"),
            route("all", json!({ "prefix": "/" }), "echo"),
        ],
    });
    apply(&cp, &node, &config).await;
    let web = listener(&node, "web").await;

    // Each name gets its own certificate (exact and wildcard), verified by the client.
    let verifying = TlsClient::new(Some(&ca.pem), None, &["http/1.1"]);
    let mut conn = verifying.connect(web, "a.test").await.unwrap();
    assert_eq!(conn.peer, a.der(), "a.test is served its own certificate");
    let reply = conn.get("a.test", "/hello", &[]).await.unwrap();
    assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "plain"));
    assert!(reply.body.contains("x-forwarded-proto: https"), "{}", reply.body);
    assert!(reply.body.contains("proto=https"), "{}", reply.body);
    let mut conn = verifying.connect(web, "x.b.test").await.unwrap();
    assert_eq!(conn.peer, b.der(), "x.b.test is served the wildcard certificate");
    let reply = conn.get("x.b.test", "/hello", &[]).await.unwrap();
    assert_eq!(reply.backend(), "b-only", "the route matching the SNI takes the request");

    // ALPN: h2 when offered, and requests flow over it.
    let h2 = TlsClient::new(Some(&ca.pem), None, &["h2", "http/1.1"]);
    let mut conn = h2.connect(web, "a.test").await.unwrap();
    assert_eq!(conn.alpn.as_deref(), Some("h2"));
    let reply = conn.get("a.test", "/over-h2", &[]).await.unwrap();
    assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "plain"));

    // Unknown names and IP-only clients (no SNI) get the default: the first certificate.
    let any = TlsClient::new(None, None, &[]);
    assert_eq!(any.connect(web, "unknown.test").await.unwrap().peer, a.der());
    assert_eq!(any.connect(web, "127.0.0.1").await.unwrap().peer, a.der());

    // The plain listener redirects to HTTPS, keeping host, path and query.
    let plain_addr = listener(&node, "plain").await;
    let req = http::Request::get(format!("http://{plain_addr}/p?q=1"))
        .header("host", "a.test:8080")
        .body(Default::default())
        .unwrap();
    let reply = HttpClient::default().send(req).await.unwrap();
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(reply.headers["location"], "https://a.test/p?q=1");

    // Refusing unknown names: the handshake fails, known names still work.
    config["listeners"][0]["tls"]["reject_unknown_sni"] = json!(true);
    config["listeners"][1]["https_redirect_port"] = json!(8443);
    apply(&cp, &node, &config).await;
    assert!(any.connect(web, "unknown.test").await.is_err(), "an unknown name is refused");
    assert_eq!(any.connect(web, "a.test").await.unwrap().peer, a.der());
    let reply = HttpClient::default().get(plain_addr, "/x").await.unwrap();
    assert_eq!(
        reply.headers["location"],
        format!("https://{plain_addr}/x").replace(&format!(":{}/", plain_addr.port()), ":8443/")
    );
}

#[tokio::test]
async fn a_rotated_certificate_reaches_the_next_handshake_while_open_connections_keep_working() {
    init_logs();
    let ca = TestCa::new("test ca");
    let v1 = ca.server(&["site.test"]);
    let s = Serving::start(|echo| {
        json!({
            "certificates": [inline_cert("site", &v1)],
            "listeners": [{ "name": "web", "address": "127.0.0.1:0", "protocol": "HTTPS",
                            "tls": { "certificates": ["site"] } }],
            "clusters": [cluster("echo", echo)],
            "routes": [route("all", json!({ "prefix": "/" }), "echo")],
        })
        .to_string()
    })
    .await;
    let client = TlsClient::new(Some(&ca.pem), None, &["http/1.1"]);
    let mut open = client.connect(s.web, "site.test").await.unwrap();
    assert_eq!(open.peer, v1.der());
    assert_eq!(open.get("site.test", "/", &[]).await.unwrap().status, StatusCode::OK);

    // Rotate through the CLI: the new PEM files replace the certificate.
    let v2 = ca.server(&["site.test"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("v2.pem"), dir.path().join("v2.key"));
    std::fs::write(&cert, &v2.cert).unwrap();
    std::fs::write(&key, &v2.key).unwrap();
    let out = vane(
        &s.cp.url(),
        &["certificate", "add", "site", "--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()],
    )
    .await;
    assert!(out.success, "{}", out.stderr);
    assert!(out.stdout.starts_with("applied version 2: ~certificate site"), "{}", out.stdout);
    wait_version(&s.node, 2).await;

    // A client holding a session resumes it (across the swap: caches belong to the
    // listener); a new client's full handshake gets the new certificate.
    let resumed = client.connect(s.web, "site.test").await.unwrap();
    assert!(resumed.resumed, "the session is resumed");
    let fresh = TlsClient::new(Some(&ca.pem), None, &["http/1.1"]).connect(s.web, "site.test").await.unwrap();
    assert!(!fresh.resumed);
    assert_eq!(fresh.peer, v2.der(), "the next full handshake gets the new certificate");
    let reply = open.get("site.test", "/still-open", &[]).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "the connection opened before the rotation still serves");
    assert_eq!(open.peer, v1.der());

    // The key never leaves the control plane through the admin API, and a config read
    // back (placeholders and all) applies as unchanged.
    let yaml = vane(&s.cp.url(), &["get", "all", "-o", "yaml"]).await;
    assert!(yaml.success, "{}", yaml.stderr);
    assert!(!yaml.stdout.contains("PRIVATE KEY"), "{}", yaml.stdout);
    assert!(yaml.stdout.contains("<redacted sha256:"), "{}", yaml.stdout);
    let file = write_yaml(dir.path(), "back.yaml", &yaml.stdout);
    let again = vane(&s.cp.url(), &["apply", "-f", &file]).await;
    assert!(again.success, "{}", again.stderr);
    assert!(again.stdout.starts_with("unchanged: version 2"), "{}", again.stdout);
    let table = vane(&s.cp.url(), &["get", "certificates"]).await;
    assert!(table.stdout.contains("site") && table.stdout.contains("site.test"), "{}", table.stdout);
}

#[tokio::test]
async fn mtls_refuses_clients_without_a_trusted_certificate_and_passes_the_identity_upstream() {
    init_logs();
    let ca = TestCa::new("test ca");
    let site = ca.server(&["site.test"]);
    let clients = TestCa::new("clients ca");
    let alice = clients.client("alice", "spiffe://test/alice");
    let mallory = TestCa::new("someone else").client("mallory", "spiffe://test/alice");
    let admin = EchoServer::start("admin", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let admin_addr = admin.addr();
    let listener_with = |mode: &str| {
        json!({ "name": "web", "address": "127.0.0.1:0", "protocol": "HTTPS",
                "tls": { "certificates": ["site"],
                         "client_auth": { "mode": mode, "ca": { "inline_string": clients.pem },
                                          "forward_header": "x-client-cert" } } })
    };
    let config = |mode: &str, echo: SocketAddr| {
        json!({
            "certificates": [inline_cert("site", &site)],
            "listeners": [listener_with(mode)],
            "clusters": [cluster("echo", echo), cluster("admin", admin_addr)],
            "routes": [
                route("admin", json!({ "prefix": "/admin", "client_names": ["spiffe://test/alice"] }), "admin"),
                route("all", json!({ "prefix": "/" }), "echo"),
            ],
        })
    };
    let s = Serving::start(|echo| config("REQUIRE", echo).to_string()).await;

    let anonymous = TlsClient::new(Some(&ca.pem), None, &["http/1.1"]);
    assert!(anonymous.get(s.web, "site.test", "/").await.is_err(), "no client certificate: refused");
    let impostor = TlsClient::new(Some(&ca.pem), Some(&mallory), &["http/1.1"]);
    assert!(impostor.get(s.web, "site.test", "/").await.is_err(), "an untrusted client certificate: refused");

    let trusted = TlsClient::new(Some(&ca.pem), Some(&alice), &["http/1.1"]);
    let mut conn = trusted.connect(s.web, "site.test").await.unwrap();
    let reply = conn.get("site.test", "/", &[("x-client-cert", "forged")]).await.unwrap();
    assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "echo-1"));
    assert!(reply.body.contains("x-client-cert: Hash="), "{}", reply.body);
    assert!(reply.body.contains("Subject=\"CN=alice\""), "{}", reply.body);
    assert!(reply.body.contains("URI=spiffe://test/alice"), "{}", reply.body);
    assert!(!reply.body.contains("forged"), "a client's own value never passes: {}", reply.body);
    let reply = conn.get("site.test", "/admin", &[]).await.unwrap();
    assert_eq!(reply.backend(), "admin", "the route matching the client name takes the request");

    // Optional: anonymous clients are served, with no identity and no client-name routes.
    let version = s.cp.apply(&config("OPTIONAL", s.echo.addr()).to_string()).await.unwrap().version;
    wait_version(&s.node, version).await;
    let reply = anonymous.get(s.web, "site.test", "/admin").await.unwrap();
    assert_eq!((reply.status, reply.backend()), (StatusCode::OK, "echo-1"));
    assert!(!reply.body.contains("x-client-cert"), "{}", reply.body);
    assert!(impostor.get(s.web, "site.test", "/").await.is_err(), "an untrusted certificate is still refused");
    assert_eq!(trusted.get(s.web, "site.test", "/admin").await.unwrap().backend(), "admin");
}

#[tokio::test]
async fn upstream_tls_verifies_the_server_presents_a_client_certificate_and_speaks_h2_by_alpn() {
    init_logs();
    let ca = TestCa::new("upstream ca");
    let other = TestCa::new("unrelated ca");
    let backend_cert = ca.server(&["backend.test"]);
    let node_ca = TestCa::new("node clients");
    let node_cert = node_ca.client("vane-node", "spiffe://test/vane");
    let open = TlsBackend::start("open", &backend_cert, None).await;
    let mutual = TlsBackend::start("mutual", &backend_cert, Some(&node_ca.pem)).await;
    let tls = |ca_pem: &str, sni: &str| json!({ "sni": sni, "ca": { "inline_string": ca_pem } });
    let s = Serving::start(|echo| {
        let mut h2 = cluster("h2", open.addr);
        h2["protocol"] = json!("HTTP2");
        h2["tls"] = tls(&ca.pem, "backend.test");
        let mut secure = cluster("secure", open.addr);
        secure["tls"] = tls(&ca.pem, "backend.test");
        let mut untrusted = cluster("untrusted", open.addr);
        untrusted["tls"] = tls(&other.pem, "backend.test");
        let mut wrong_name = cluster("wrong-name", open.addr);
        wrong_name["tls"] = tls(&ca.pem, "other.test");
        let mut with_cert = cluster("mutual", mutual.addr);
        with_cert["tls"] = tls(&ca.pem, "backend.test");
        with_cert["tls"]["client_certificate"] = json!("node-client");
        let mut without_cert = cluster("no-client-cert", mutual.addr);
        without_cert["tls"] = tls(&ca.pem, "backend.test");
        // Active HTTP health checks go over the same verified TLS.
        let check = json!({ "http_path": "/", "interval": "0.1s", "timeout": "1s" });
        let mut checked = cluster("checked", open.addr);
        checked["tls"] = tls(&ca.pem, "backend.test");
        checked["health_check"] = check.clone();
        let mut checked_untrusted = cluster("checked-untrusted", open.addr);
        checked_untrusted["tls"] = tls(&other.pem, "backend.test");
        checked_untrusted["health_check"] = check;
        let routes: Vec<Value> = ["h2", "secure", "untrusted", "wrong-name", "mutual", "no-client-cert"]
            .iter()
            .map(|c| route(c, json!({ "prefix": format!("/{c}") }), c))
            .collect();
        json!({
            "certificates": [inline_cert("node-client", &node_cert)],
            "listeners": [{ "name": "web", "address": "127.0.0.1:0" }],
            "clusters": [cluster("echo", echo), h2, secure, untrusted, wrong_name, with_cert, without_cert,
                         checked, checked_untrusted],
            "routes": routes,
        })
        .to_string()
    })
    .await;
    let client = HttpClient::default();
    let reply = client.get(s.web, "/secure").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.body.contains("tls-backend open") && reply.body.contains("version HTTP/1.1"), "{}", reply.body);
    let reply = client.get(s.web, "/h2").await.unwrap();
    assert!(reply.body.contains("version HTTP/2.0"), "ALPN h2 to an HTTP2 cluster: {}", reply.body);
    for path in ["/untrusted", "/wrong-name", "/no-client-cert"] {
        let reply = client.get(s.web, path).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{path}: {}", reply.body);
    }
    let reply = client.get(s.web, "/mutual").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.body.contains("client CN=vane-node"), "{}", reply.body);

    // Once the untrusted checks have failed enough to mark their endpoint down, the
    // verified ones, run as often, have kept theirs up.
    let admin = s.node.admin_addr().unwrap();
    let clusters: Value =
        eventually(std::time::Duration::from_secs(10), "failing checks mark the endpoint down", || async {
            let json: Value = serde_json::from_str(&client.get(admin, "/clusters").await.ok()?.body).ok()?;
            (json["checked-untrusted"][0]["health_check_ok"] == json!(false)).then_some(json)
        })
        .await;
    assert_eq!(clusters["checked"][0]["health_check_ok"], json!(true), "{clusters}");
}

#[tokio::test]
async fn bad_certificates_are_refused_by_the_control_plane_and_a_missing_file_is_nacked() {
    init_logs();
    let ca = TestCa::new("test ca");
    let good = ca.server(&["site.test"]);
    let other = ca.server(&["site.test"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("site.pem"), dir.path().join("site.key"));
    std::fs::write(&cert, &good.cert).unwrap();
    std::fs::write(&key, &good.key).unwrap();
    let from_files = |cert: &str| {
        json!({ "name": "site", "certificate_chain": { "filename": cert },
                "private_key": { "filename": key.to_str().unwrap() } })
    };
    let config = |certificate: Value, echo: SocketAddr| {
        json!({
            "certificates": [certificate],
            "listeners": [{ "name": "web", "address": "127.0.0.1:0", "protocol": "HTTPS",
                            "tls": { "certificates": ["site"] } }],
            "clusters": [cluster("echo", echo)],
            "routes": [route("all", json!({ "prefix": "/" }), "echo")],
        })
    };
    let s = Serving::start(|echo| config(from_files(cert.to_str().unwrap()), echo).to_string()).await;
    let client = TlsClient::new(Some(&ca.pem), None, &["http/1.1"]);
    assert_eq!(client.get(s.web, "site.test", "/").await.unwrap().status, StatusCode::OK, "certificates from files");

    // A key that is not the leaf's, and an HTTPS listener naming no known certificate.
    let mismatched = json!({ "name": "site", "certificate_chain": { "inline_string": good.cert },
                             "private_key": { "inline_string": other.key } });
    let err = s.cp.apply(&config(mismatched, s.echo.addr()).to_string()).await.unwrap_err();
    assert!(
        err.message().contains("certificate 'site': private_key: does not match the leaf certificate's public key"),
        "{}",
        err.message()
    );
    let mut unknown = config(from_files(cert.to_str().unwrap()), s.echo.addr());
    unknown["listeners"][0]["tls"]["certificates"] = json!(["nope"]);
    let err = s.cp.apply(&unknown.to_string()).await.unwrap_err();
    assert!(
        err.message().contains("listener 'web': tls.certificates[0]: unknown certificate 'nope'"),
        "{}",
        err.message()
    );

    // A file missing on the node: the control plane cannot know, the node NACKs and
    // keeps serving version 1.
    let version =
        s.cp.apply(&config(from_files("/nonexistent/site.pem"), s.echo.addr()).to_string()).await.unwrap().version;
    let nodes = eventually(std::time::Duration::from_secs(10), "the NACK is reported", || async {
        let out = vane(&s.cp.url(), &["nodes"]).await;
        out.stdout.contains(&format!("v{version}:")).then_some(out.stdout)
    })
    .await;
    assert!(nodes.contains(&format!("v{version}: certificate 'site': /nonexistent/site.pem: No such file")), "{nodes}");
    assert!(!nodes.contains("listener 'web'"), "one cause, one error: {nodes}");
    assert_eq!(client.get(s.web, "site.test", "/").await.unwrap().status, StatusCode::OK, "version 1 still serves");
}
