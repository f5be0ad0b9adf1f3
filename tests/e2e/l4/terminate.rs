//! TLS listeners: TLS terminated with the certificate resources (chosen by SNI, mTLS as
//! HTTPS does), then the plain bytes forwarded to the cluster the SNI picks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use vane_suite::tls::{Issued, TestCa};
use vane_suite::*;

use super::{Banner, Vane};

/// A TLS client trusting `ca`, presenting `client` when given; returns the certificate
/// the server showed and the first line it read after the handshake.
async fn first_line(
    addr: SocketAddr,
    sni: &str,
    ca: &str,
    client: Option<&Issued>,
) -> anyhow::Result<(Vec<u8>, String)> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client {
        Some(c) => {
            let chain =
                rustls::pki_types::CertificateDer::pem_slice_iter(c.cert.as_bytes()).collect::<Result<_, _>>()?;
            builder.with_client_auth_cert(chain, rustls::pki_types::PrivateKeyDer::from_pem_slice(c.key.as_bytes())?)?
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut stream = connector.connect(ServerName::try_from(sni.to_owned())?, tcp).await?;
    let shown = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    stream.write_all(b"over tls\n").await?;
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line)).await??;
        anyhow::ensure!(!line.is_empty(), "closed");
        lines.push(line.trim_end().to_owned());
    }
    Ok((shown, lines.join(" | ")))
}

fn certificate(name: &str, issued: &Issued) -> String {
    format!(
        "  - name: {name}\n    certificate_chain: {{inline_string: {:?}}}\n    private_key: {{inline_string: {:?}}}\n",
        issued.cert, issued.key
    )
}

#[tokio::test]
async fn l4_a_tls_listener_terminates_with_the_certificate_for_the_sni_and_forwards_plain_bytes() {
    let ca = TestCa::new("vane ca");
    let (db_cert, web_cert) = (ca.server(&["db.example.com"]), ca.server(&["*.web.example.com"]));
    let (db, web) = (Banner::start("db").await, Banner::start("web").await);
    let yaml = format!(
        "certificates:\n{}{}\
         listeners:\n  - name: tls\n    address: 127.0.0.1:0\n    protocol: TLS\n    cluster: web\n    \
         tls: {{certificates: [web, db]}}\n    sni_routes:\n      - {{server_names: [db.example.com], cluster: db}}\n\
         clusters:\n  - name: db\n    endpoints: [{{address: '{}'}}]\n  - name: web\n    endpoints: [{{address: '{}'}}]\n",
        certificate("db", &db_cert),
        certificate("web", &web_cert),
        db.addr,
        web.addr
    );
    let vane = Vane::start(&yaml).await;
    let addr = vane.listener("tls").await;
    let (shown, lines) = first_line(addr, "db.example.com", &ca.pem, None).await.unwrap();
    assert_eq!(shown, db_cert.der(), "Vane served db's certificate");
    assert_eq!(lines, "db | db: over tls", "the upstream got the plain bytes");
    let (shown, lines) = first_line(addr, "api.web.example.com", &ca.pem, None).await.unwrap();
    assert_eq!(shown, web_cert.der());
    assert_eq!(lines, "web | web: over tls", "no rule for this name: the default cluster");
    let metrics = vane.metrics().await;
    assert_eq!(metric(&metrics, "vane_tls_handshakes_total{listener=\"tls\",result=\"ok\"}"), 2.0, "{metrics}");
}

#[tokio::test]
async fn l4_a_tls_listener_requiring_client_certificates_refuses_clients_without_one() {
    let ca = TestCa::new("vane ca");
    let server = ca.server(&["db.example.com"]);
    let client = ca.client("app-1", "spiffe://example/app-1");
    let db = Banner::start("db").await;
    let yaml = format!(
        "certificates:\n{}\
         listeners:\n  - name: tls\n    address: 127.0.0.1:0\n    protocol: TLS\n    cluster: db\n    \
         tls: {{certificates: [db], client_auth: {{mode: REQUIRE, ca: {{inline_string: {:?}}}}}}}\n\
         clusters:\n  - name: db\n    endpoints: [{{address: '{}'}}]\n",
        certificate("db", &server),
        ca.pem,
        db.addr
    );
    let vane = Vane::start(&yaml).await;
    let addr = vane.listener("tls").await;
    let (_, lines) = first_line(addr, "db.example.com", &ca.pem, Some(&client)).await.unwrap();
    assert_eq!(lines, "db | db: over tls");
    assert!(first_line(addr, "db.example.com", &ca.pem, None).await.is_err(), "no client certificate");
    assert_eq!(db.accepted(), 1, "the refused client never reached the upstream");
}

#[tokio::test]
async fn l4_a_cluster_with_tls_gets_tls_from_tcp_and_tls_listeners_verified_by_its_ca() {
    use tokio::io::AsyncReadExt;
    let (ca, backend_ca) = (TestCa::new("vane ca"), TestCa::new("backend ca"));
    let front = ca.server(&["db.example.com"]);
    let backend_cert = backend_ca.server(&["backend.internal"]);
    let backend = vane_suite::tls::TlsBackend::start("secure", &backend_cert, None).await;
    let yaml = format!(
        "certificates:\n{}\
         listeners:\n  - {{name: plain-in, address: 127.0.0.1:0, protocol: TCP, cluster: secure}}\n  \
         - {{name: tls-in, address: 127.0.0.1:0, protocol: TLS, cluster: secure, tls: {{certificates: [front]}}}}\n\
         clusters:\n  - name: secure\n    tls: {{sni: backend.internal, ca: {{inline_string: {:?}}}}}\n    \
         endpoints: [{{address: '{}'}}]\n",
        certificate("front", &front),
        backend_ca.pem,
        backend.addr
    );
    let vane = Vane::start(&yaml).await;
    let request = b"GET / HTTP/1.1\r\nHost: backend.internal\r\nConnection: close\r\n\r\n";
    // Plain in, TLS out (Vane verifies the backend against the cluster's CA).
    let mut plain = tokio::net::TcpStream::connect(vane.listener("plain-in").await).await.unwrap();
    plain.write_all(request).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), plain.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("tls-backend secure"), "{answer}");
    // TLS in (Vane's certificate), TLS out (the backend's).
    let addr = vane.listener("tls-in").await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(front_ca_der(&ca.pem)).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("db.example.com").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("tls-backend secure"), "{answer}");
}

fn front_ca_der(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}
