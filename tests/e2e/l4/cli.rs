//! `vane listener add` / `vane listener delete` for TCP listeners, through the real binary.

use vane_suite::*;

use super::{Banner, LineClient, Vane};

#[tokio::test]
async fn l4_vane_listener_add_makes_a_tcp_listener_and_delete_removes_it() {
    let (a, b) = (Banner::start("a").await, Banner::start("b").await);
    let yaml = format!(
        "clusters:\n  - name: a\n    endpoints: [{{address: '{}'}}]\n  - name: b\n    endpoints: [{{address: '{}'}}]\n",
        a.addr, b.addr
    );
    let node = Vane::start(&yaml).await;
    let refused = vane(&node.url, &["listener", "add", "t", "--address", "127.0.0.1:0", "--protocol", "tcp"]).await;
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("listener 't': cluster: a TCP listener needs a cluster (or sni_routes)"),
        "{}",
        refused.stderr
    );
    let added =
        vane(&node.url, &["listener", "add", "t", "--address", "127.0.0.1:0", "--protocol", "tcp", "--cluster", "a"])
            .await;
    assert!(added.success, "{}", added.stderr);
    node.wait_version(2).await;
    let addr = node.listener("t").await;
    assert_eq!(LineClient::connect(addr).await.unwrap().1, "a");
    let shown = vane(&node.url, &["get", "listener", "t", "-o", "yaml"]).await;
    assert!(shown.stdout.contains("protocol: TCP") && shown.stdout.contains("cluster: a"), "{}", shown.stdout);

    let deleted = vane(&node.url, &["listener", "delete", "t"]).await;
    assert!(deleted.success, "{}", deleted.stderr);
    node.wait_version(3).await;
    assert!(!node.has_listener("t").await);
}

#[tokio::test]
async fn l4_the_layer_4_example_is_valid_and_applies() {
    let node = Vane::start("clusters:\n  - {name: placeholder, endpoints: [{address: '127.0.0.1:1'}]}\n").await;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/l4.yaml");
    let checked = vane(&node.url, &["validate", "-f", example]).await;
    assert!(checked.success && checked.stdout.trim() == "valid", "{} {}", checked.stdout, checked.stderr);
    // Its fixed ports may be taken on a test machine: the same config on ports 0 applies.
    let yaml =
        std::fs::read_to_string(example).unwrap().replace(":6380", ":0").replace(":8443", ":0").replace(":5353", ":0");
    let dir = tempfile::tempdir().unwrap();
    let applied = vane(&node.url, &["apply", "-f", &write_yaml(dir.path(), "l4.yaml", &yaml)]).await;
    assert!(applied.success, "{}", applied.stderr);
    node.wait_version(2).await;
    node.listener("tls-in").await;
    node.listener("dns").await;
}
