//! TLS and mTLS on the control plane's gRPC port, for the CLI and for nodes.

use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use vane_data_plane::{Node, NodeConfig};
use vane_suite::*;

#[tokio::test]
async fn mtls_control_plane_serves_the_cli_and_nodes_with_certificates_only() {
    init_logs();
    let pki = TestPki::new();
    let data = tempfile::tempdir().unwrap();
    let cp = VaneProcess::control_plane(
        &data.path().join("store"),
        &[
            "--tls-cert",
            &pki.path("server.pem"),
            "--tls-key",
            &pki.path("server.key"),
            "--tls-client-ca",
            &pki.path("ca.pem"),
        ],
    )
    .await
    .unwrap();
    let url = cp.control_plane_url().unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    let file = write_yaml(data.path(), "v1.yaml", &config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")]));

    let (ca, cert, key) = (pki.path("ca.pem"), pki.path("client.pem"), pki.path("client.key"));
    let ok = vane(&url, &["apply", "-f", &file, "--ca-cert", &ca, "--client-cert", &cert, "--client-key", &key]).await;
    assert!(ok.success, "{}", ok.stderr);
    assert!(ok.stdout.starts_with("applied version 1"), "{}", ok.stdout);

    let no_client_cert = vane(&url, &["history", "--ca-cert", &ca]).await;
    assert!(!no_client_cert.success, "mTLS refuses a client without a certificate");
    let untrusted =
        vane(&url, &["history", "--ca-cert", &pki.path("other-ca.pem"), "--client-cert", &cert, "--client-key", &key])
            .await;
    assert!(!untrusted.success, "a server certificate from an unknown CA is refused");
    assert!(untrusted.stderr.contains("cannot reach control plane"), "{}", untrusted.stderr);
    let plaintext = vane(&url.replace("https://", "http://"), &["history"]).await;
    assert!(!plaintext.success, "plaintext is not served");

    // A node with the client certificate gets version 1; one without never does.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.read("ca.pem")))
        .identity(Identity::from_pem(pki.read("client.pem"), pki.read("client.key")));
    let node = |id: &str, tls: Option<ClientTlsConfig>| NodeConfig {
        node_id: id.into(),
        control_plane: url.clone(),
        cache_dir: None,
        admin: None,
        labels: Default::default(),
        token: None,
        tls,
        otlp_endpoint: None,
        replay_budget_bytes: None,
        file_poll_interval: NodeConfig::DEFAULT_FILE_POLL_INTERVAL,
    };
    let good = Node::start(node("with-cert", Some(tls))).await.unwrap();
    let anonymous = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.read("ca.pem")));
    let refused = Node::start(node("without-cert", Some(anonymous))).await.unwrap();
    wait_version(&good, 1).await;
    let reply = HttpClient::default().get(listener(&good, "web").await, "/api/x").await.unwrap();
    assert_eq!(reply.backend(), "echo-1");
    let nodes =
        vane(&url, &["nodes", "-o", "json", "--ca-cert", &ca, "--client-cert", &cert, "--client-key", &key]).await;
    assert!(nodes.stdout.contains("with-cert") && !nodes.stdout.contains("without-cert"), "{}", nodes.stdout);
    assert_eq!(refused.version(), 0);
}
