//! Control-plane benchmarks (issue 9): propagation to 1, 10 and 100 nodes, compile and swap
//! of 1k/10k/100k routes, a one-route change reaching a node that holds 100k routes, and
//! control-plane memory per connected node.
//!
//!   cargo bench --bench control_plane            # QUICK=1 for fewer rounds
//!
//! Nodes are real `vane_data_plane::Node`s sharing this process (each with its own
//! discovery stream, listener and admin socket); the control plane is in-process for the
//! timings and the real `vane control-plane` binary (VANE, default target/release/vane;
//! `cargo build --release -p vane` first) for the memory row, so that its RSS is its own. Timings are from `Apply` returning to every
//! node serving the version (polled every 200 us), and include the control plane's push
//! debounce (20 ms quiet, at most 250 ms).

// A report program: its output is the table.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use vane_data_plane::Node;
use vane_proto::admin::config_service_client::ConfigServiceClient;
use vane_proto::admin::{ApplyRequest, PutRequest, Resource, resource};
use vane_proto::config::{self, Config};
use vane_suite::{TestControlPlane, start_node};

fn config(routes: usize, generation: usize) -> Config {
    let route = |i: usize| config::Route {
        name: format!("r{i}"),
        r#match: Some(config::RouteMatch {
            path: Some(config::route_match::Path::Prefix(format!("/g{generation}/r{i}"))),
            ..Default::default()
        }),
        action: Some(config::route::Action::Forward(config::Forward {
            clusters: vec![config::WeightedCluster { name: "c".into(), weight: 0 }],
            ..Default::default()
        })),
        ..Default::default()
    };
    Config {
        listeners: vec![config::Listener { name: "web".into(), address: "127.0.0.1:0".into(), ..Default::default() }],
        clusters: vec![config::Cluster {
            name: "c".into(),
            endpoints: vec![config::Endpoint { address: "127.0.0.1:9".into(), ..Default::default() }],
            ..Default::default()
        }],
        routes: (0..routes).map(route).collect(),
        ..Default::default()
    }
}

async fn client(cp: &TestControlPlane) -> ConfigServiceClient<tonic::transport::Channel> {
    ConfigServiceClient::connect(cp.url())
        .await
        .expect("admin client")
        .max_decoding_message_size(vane_control_plane::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(vane_control_plane::MAX_MESSAGE_BYTES)
}

/// Applies `config` and returns the time until every node serves it.
async fn apply_and_wait(
    admin: &mut ConfigServiceClient<tonic::transport::Channel>,
    nodes: &[Node],
    config: Config,
) -> Duration {
    let version = admin
        .apply(ApplyRequest { config: Some(config), dry_run: false, expected_version: 0, allow_empty: false })
        .await
        .expect("apply")
        .into_inner()
        .version;
    wait_all(nodes, version).await
}

async fn wait_all(nodes: &[Node], version: u64) -> Duration {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    while !nodes.iter().all(|n| n.version() >= version) {
        assert!(Instant::now() < deadline, "nodes did not reach version {version}");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    start.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

async fn propagation(rounds: usize) {
    println!("\n| nodes | applies | p50 | p99 | max |\n|---|---|---|---|---|");
    for n in [1usize, 10, 100] {
        let cp = TestControlPlane::start().await;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            nodes.push(start_node(&format!("n{i}"), &cp.url(), None).await);
        }
        let mut admin = client(&cp).await;
        apply_and_wait(&mut admin, &nodes, config(10, 0)).await;
        let mut times = Vec::with_capacity(rounds);
        for round in 1..=rounds {
            times.push(apply_and_wait(&mut admin, &nodes, config(10, round)).await);
            // Let the debounce window close, so each apply is its own push.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        times.sort();
        let (p50, p99, max) = (percentile(&times, 0.5), percentile(&times, 0.99), times[times.len() - 1]);
        println!("| {n} | {rounds} | {} | {} | {} |", ms(p50), ms(p99), ms(max));
        drop(nodes);
    }
}

async fn big_configs() {
    println!("\n| routes | compile (node, in process) | apply -> node serving | one-route change -> node serving |");
    println!("|---|---|---|---|");
    for n in [1_000usize, 10_000, 100_000] {
        let big = config(n, 0);
        let compile = {
            let start = Instant::now();
            let compiled = vane_data_plane::bench::CompiledRoutes::compile(&big);
            let took = start.elapsed();
            drop(compiled);
            took
        };
        let cp = TestControlPlane::start().await;
        let nodes = vec![start_node("big", &cp.url(), None).await];
        let mut admin = client(&cp).await;
        let full = apply_and_wait(&mut admin, &nodes, big).await;
        // One route changed by Put: the whole snapshot goes out (no deltas yet) and is
        // compiled again.
        let mut changed = config(1, 1).routes.remove(0);
        changed.name = "r0".into();
        let version = admin
            .put(PutRequest {
                resource: Some(Resource { resource: Some(resource::Resource::Route(changed)) }),
                expected_version: 0,
                dry_run: false,
            })
            .await
            .expect("put")
            .into_inner()
            .version;
        let one = wait_all(&nodes, version).await;
        println!("| {n} | {} | {} | {} |", ms(compile), ms(full), ms(one));
    }
}

async fn memory_per_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let vane =
        std::env::var("VANE").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/vane").into());
    let store = dir.path().join("store");
    let args = ["control-plane", "--data-dir", store.to_str().expect("utf-8"), "--listen", "127.0.0.1:0"];
    let mut cp = vane_suite::VaneProcess::start_binary(std::path::Path::new(&vane), &args)
        .await
        .expect("`vane control-plane` starts (cargo build --release -p vane, or set VANE)");
    let url = cp.control_plane_url().expect("url");
    let pid = cp.pid();
    let mut admin = ConfigServiceClient::connect(url.clone()).await.expect("admin");
    admin
        .apply(ApplyRequest { config: Some(config(100, 0)), dry_run: false, expected_version: 0, allow_empty: false })
        .await
        .expect("apply");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_kb(pid);
    let mut nodes = Vec::new();
    for i in 0..100 {
        nodes.push(start_node(&format!("m{i}"), &url, None).await);
    }
    wait_all(&nodes, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let with_nodes = rss_kb(pid);
    println!("\n| control plane RSS | no node | 100 nodes | per node |\n|---|---|---|---|");
    println!(
        "| `vane control-plane` (100-route config) | {:.1} MB | {:.1} MB | {:.0} KB |",
        idle as f64 / 1024.0,
        with_nodes as f64 / 1024.0,
        with_nodes.saturating_sub(idle) as f64 / 100.0
    );
    drop(nodes);
    let _ = cp.terminate();
    let _ = cp.wait_exit(Duration::from_secs(10)).await;
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let quick = std::env::var("QUICK").is_ok();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        println!("# control-plane benchmarks ({} rounds)", if quick { 5 } else { 30 });
        propagation(if quick { 5 } else { 30 }).await;
        big_configs().await;
        memory_per_node().await;
    });
}
