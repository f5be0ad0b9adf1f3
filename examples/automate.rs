//! Automating Vane from a program: the generated gRPC client of `vane.admin.v1`.
//!
//! Adds (or replaces) a cluster and a route, shows the diff first, applies with
//! optimistic concurrency (retrying when someone else wrote in between), then waits until
//! every connected node has acknowledged the new version.
//!
//! ```sh
//! cargo run --example automate -- shop /shop 127.0.0.1:9001 127.0.0.1:9002
//! ```
//! Environment: `VANE_SERVER` (default `http://127.0.0.1:18000`), `VANE_TOKEN` (a write
//! token, when the control plane has a token file).
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tonic::Request;
use tonic::transport::Channel;
use vane_proto::admin::config_service_client::ConfigServiceClient;
use vane_proto::admin::{ApplyRequest, DiffRequest, ListNodesRequest, ListRequest};
use vane_proto::config::{Cluster, Endpoint, Forward, Route, RouteMatch, WeightedCluster, route, route_match};

fn with_token<T>(message: T) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    if let Ok(token) = std::env::var("VANE_TOKEN") {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    }
    Ok(request)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, prefix, endpoints @ ..] = args.as_slice() else {
        bail!("usage: automate NAME PREFIX ENDPOINT...");
    };
    if endpoints.is_empty() {
        bail!("give at least one endpoint");
    }
    let server = std::env::var("VANE_SERVER").unwrap_or_else(|_| "http://127.0.0.1:18000".into());
    let channel =
        Channel::from_shared(server.clone())?.connect().await.with_context(|| format!("connecting to {server}"))?;
    let mut client = ConfigServiceClient::new(channel);

    for attempt in 1..=5 {
        // Read the latest config and its version, change it, write it back expecting that version.
        let current = client.list(with_token(ListRequest::default())?).await?.into_inner();
        let mut config = current.config.unwrap_or_default();
        config.clusters.retain(|c| c.name != *name);
        config.clusters.push(Cluster {
            name: name.clone(),
            endpoints: endpoints.iter().map(|a| Endpoint { address: a.clone(), ..Default::default() }).collect(),
            ..Default::default()
        });
        config.routes.retain(|r| r.name != *name);
        config.routes.push(Route {
            name: name.clone(),
            r#match: Some(RouteMatch { path: Some(route_match::Path::Prefix(prefix.clone())), ..Default::default() }),
            action: Some(route::Action::Forward(Forward {
                clusters: vec![WeightedCluster { name: name.clone(), weight: 0 }],
                ..Default::default()
            })),
            ..Default::default()
        });

        let diff = client.diff(with_token(DiffRequest { config: Some(config.clone()) })?).await?.into_inner();
        println!("against version {}: {}", diff.base_version, diff.summary);
        let request = ApplyRequest {
            config: Some(config),
            dry_run: false,
            expected_version: current.version,
            allow_empty: false,
        };
        match client.apply(with_token(request)?).await {
            Ok(applied) => {
                let applied = applied.into_inner();
                println!("version {} (unchanged: {})", applied.version, applied.unchanged);
                return wait_for_nodes(&mut client, applied.version).await;
            }
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                println!("attempt {attempt}: {}; retrying", status.message());
            }
            Err(status) => bail!("{}", status.message()),
        }
    }
    bail!("gave up: the config kept changing under us")
}

async fn wait_for_nodes(client: &mut ConfigServiceClient<Channel>, version: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = client.list_nodes(with_token(ListNodesRequest {})?).await?.into_inner().nodes;
        let connected: Vec<_> = nodes.iter().filter(|n| n.connected).collect();
        let behind: Vec<&str> =
            connected.iter().filter(|n| n.acked_version < version).map(|n| n.node_id.as_str()).collect();
        if behind.is_empty() {
            println!("{} connected node(s) at version {version}", connected.len());
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nodes still behind version {version}: {}", behind.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
