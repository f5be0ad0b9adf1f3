//! `vane dev` as a new user runs it: the quickstart read from `examples/quickstart.yaml`
//! in the current directory (the tour edits it; nothing rebuilds), the built-in copy where
//! there is none.

use std::net::SocketAddr;
use std::path::Path;

use http::StatusCode;
use vane_suite::*;

/// Starts `vane dev` in `dir` on ephemeral ports (its store in `dir/.vane`), the proxy's
/// `web` listener on `web`; waits for its startup output.
async fn start_dev(dir: &Path, web: &str) -> VaneProcess {
    let any = "127.0.0.1:0";
    let args = ["dev", "--listen", any, "--admin", any, "--backends", any, any, "--web", web];
    VaneProcess::start_in(dir, &args, "  backends").await.unwrap()
}

/// The proxy's address, from the startup output's `proxy  http://ADDR` line.
fn proxy_addr(dev: &VaneProcess) -> SocketAddr {
    dev.banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("proxy"))
        .and_then(|rest| rest.trim().strip_prefix("http://"))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no proxy address: {}", dev.banner))
}

#[tokio::test]
async fn dev_reads_the_quickstart_from_the_current_directory_else_its_built_in_copy() {
    init_logs();
    let client = HttpClient::default();

    // The tour's edit (`/api` becomes `/v2`) in a directory of its own: served as edited.
    let edited = tempfile::tempdir().unwrap();
    // From the built-in copy, so a tour edit left in this checkout changes nothing here.
    let built_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("cli/src/quickstart.yaml");
    let original = std::fs::read_to_string(&built_in).unwrap();
    assert!(original.contains("prefix: /api"), "{original}");
    std::fs::create_dir(edited.path().join("examples")).unwrap();
    let file = edited.path().join("examples/quickstart.yaml");
    std::fs::write(&file, original.replace("prefix: /api", "prefix: /v2")).unwrap();
    let dev = start_dev(edited.path(), "127.0.0.1:0").await;
    let web = proxy_addr(&dev);
    let first = dev.banner.lines().next().unwrap();
    assert_eq!(first, format!("vane dev is running: version 1, applied from {}", file.display()));
    let reply = client.get(web, "/v2/hello").await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.backend(), "echo-1");
    assert_eq!(client.get(web, "/api/hello").await.unwrap().status, StatusCode::NOT_FOUND);
    assert!(edited.path().join(".vane/store").is_dir(), "the store is under the current directory");
    dev.kill().await.unwrap();

    // No examples/ here: the copy built into the binary, the route as shipped.
    let bare = tempfile::tempdir().unwrap();
    let dev = start_dev(bare.path(), "127.0.0.1:0").await;
    let web = proxy_addr(&dev);
    let first = dev.banner.lines().next().unwrap();
    assert_eq!(
        first,
        format!(
            "vane dev is running: version 1, applied from the quickstart built into vane \
             (no examples/quickstart.yaml in {})",
            bare.path().display()
        )
    );
    assert_eq!(client.get(web, "/api/hello").await.unwrap().backend(), "echo-1");
    assert_eq!(client.get(web, "/api/hello").await.unwrap().backend(), "echo-2");
    assert_eq!(client.get(web, "/v2/hello").await.unwrap().status, StatusCode::NOT_FOUND);
    dev.kill().await.unwrap();

    // Started again on its store, it says the store's version serves, not the file.
    let dev = start_dev(bare.path(), "127.0.0.1:0").await;
    let first = dev.banner.lines().next().unwrap();
    assert!(first.starts_with("vane dev is running: version 1, from the store in .vane/store"), "{first}");
    dev.kill().await.unwrap();
}

#[tokio::test]
async fn dev_says_at_once_when_its_node_cannot_serve_the_quickstart() {
    init_logs();
    // Someone else holds the proxy's port: the node refuses version 1, and the first line
    // says so with the reason (not `vane dev is running`), without waiting 10 s.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    vane_bin(); // built (or found fresh) before the clock starts
    let started = std::time::Instant::now();
    let dev = start_dev(dir.path(), &port).await;
    let first = dev.banner.lines().next().unwrap();
    assert!(first.starts_with("vane dev started, but its node does not serve version 1, "), "{first}");
    assert!(first.contains(&format!("it refused version 1: listener 'web': {port}: address in use")), "{first}");
    // It gives up waiting after 10 s; the refusal ends the wait well before.
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "{:?}", started.elapsed());
    dev.kill().await.unwrap();
}
