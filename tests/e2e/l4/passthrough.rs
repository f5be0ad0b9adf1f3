//! TLS passthrough by SNI: two TLS upstreams with their own certificates behind one TCP
//! listener, each verified by the client end to end (Vane never terminates), and a clean
//! close when no rule matches and there is no default.

use std::time::Duration;

use vane_suite::tls::{TestCa, TlsBackend, TlsClient};
use vane_suite::*;

use super::Vane;

#[tokio::test]
async fn l4_sni_passthrough_reaches_each_tls_upstream_verified_end_to_end() {
    let (ca_a, ca_b) = (TestCa::new("ca a"), TestCa::new("ca b"));
    let cert_a = ca_a.server(&["a.example.com"]);
    let cert_b = ca_b.server(&["*.b.example.com"]);
    let (a, b) = (TlsBackend::start("a", &cert_a, None).await, TlsBackend::start("b", &cert_b, None).await);
    let log_dir = tempfile::tempdir().unwrap();
    let log = log_dir.path().join("tls.log");
    let yaml = format!(
        "listeners:\n  - name: tls\n    address: 127.0.0.1:0\n    protocol: TCP\n    \
         access_log: {{path: '{}', format: JSON}}\n    sni_routes:\n      \
         - {{server_names: [a.example.com], cluster: a}}\n      - {{server_names: ['*.b.example.com'], cluster: b}}\n\
         clusters:\n  - name: a\n    endpoints: [{{address: '{}'}}]\n  - name: b\n    endpoints: [{{address: '{}'}}]\n",
        log.display(),
        a.addr,
        b.addr
    );
    let vane = Vane::start(&yaml).await;
    let addr = vane.listener("tls").await;
    // The client trusts both CAs and checks each name against the certificate it gets.
    let client = TlsClient::new(Some(&format!("{}{}", ca_a.pem, ca_b.pem)), None, &["http/1.1"]);
    let mut conn = client.connect(addr, "a.example.com").await.unwrap();
    assert_eq!(conn.peer, cert_a.der(), "a's own certificate, not one of Vane's");
    assert!(conn.get("a.example.com", "/", &[]).await.unwrap().body.starts_with("tls-backend a\n"));
    drop(conn);
    let mut conn = client.connect(addr, "api.b.example.com").await.unwrap();
    assert_eq!(conn.peer, cert_b.der());
    assert!(conn.get("api.b.example.com", "/", &[]).await.unwrap().body.starts_with("tls-backend b\n"));
    drop(conn);
    // A name no rule covers, with no default cluster: closed before any handshake.
    let refused = client.connect(addr, "c.example.com").await;
    assert!(refused.is_err(), "no route for c.example.com");
    let metrics = vane.metrics().await;
    assert_eq!(metric(&metrics, "vane_l4_refused_total{listener=\"tls\",reason=\"no_route\"}"), 1.0, "{metrics}");
    let lines = eventually(Duration::from_secs(10), "three access-log lines", || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (lines.len() == 3).then_some(lines)
    })
    .await;
    let refused = lines.iter().find(|l| l["sni"] == "c.example.com").expect("a line for the refused one");
    assert_eq!((refused["end"].as_str(), refused["upstream"].is_null()), (Some("no_route"), true));
    let to_b = lines.iter().find(|l| l["sni"] == "api.b.example.com").expect("a line for b");
    assert_eq!(to_b["cluster"], "b");
}

#[tokio::test]
async fn l4_sni_passthrough_sends_unmatched_names_to_the_default_cluster() {
    let ca = TestCa::new("ca");
    let (cert_a, cert_other) = (ca.server(&["a.example.com"]), ca.server(&["other.example.net"]));
    let (a, other) = (TlsBackend::start("a", &cert_a, None).await, TlsBackend::start("other", &cert_other, None).await);
    let yaml = format!(
        "listeners:\n  - name: tls\n    address: 127.0.0.1:0\n    protocol: TCP\n    cluster: other\n    sni_routes:\n      \
         - {{server_names: [a.example.com], cluster: a}}\n\
         clusters:\n  - name: a\n    endpoints: [{{address: '{}'}}]\n  - name: other\n    endpoints: [{{address: '{}'}}]\n",
        a.addr, other.addr
    );
    let vane = Vane::start(&yaml).await;
    let addr = vane.listener("tls").await;
    let client = TlsClient::new(Some(&ca.pem), None, &["http/1.1"]);
    let reply = client.get(addr, "other.example.net", "/").await.unwrap();
    assert!(reply.body.starts_with("tls-backend other\n"), "{}", reply.body);
    let reply = client.get(addr, "a.example.com", "/").await.unwrap();
    assert!(reply.body.starts_with("tls-backend a\n"), "{}", reply.body);
}
