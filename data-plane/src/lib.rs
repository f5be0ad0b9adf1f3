//! Vane's data plane: a stateless proxy node driven by the control plane.
//!
//! Data flow: the discovery client (`node::discovery`) receives a `Snapshot`;
//! `node::shared::NodeShared::apply_snapshot` validates it with the shared validator,
//! binds any new listener sockets, compiles a `routing::runtime::Runtime` (routers,
//! clusters, policies) off the request path and swaps it in with one `ArcSwap::store`;
//! then new listeners start, removed ones drain, the snapshot is written to the
//! last-known-good store, and the node ACKs. Any failure before the swap NACKs and leaves
//! the previous runtime serving. Requests (`proxy`) load the runtime once and keep it.
//!
//! The modules are layers, each importing only from the ones listed before it: `support`,
//! `tls`, `observe`, `http`, `upstream`, `policy`, `compress`, `routing`, `proxy`, `server`, `node`
//! (`.ci/module-cycles.py` checks it; docs/architecture.md says what each owns).

mod cache;
mod compress;
mod http;
mod l4;
mod node;
mod observe;
mod policy;
mod proxy;
mod routing;
mod server;
mod support;
mod tls;
mod upstream;

pub use http::replay::DEFAULT_REPLAY_BUDGET;
pub use node::snapshot_store::SnapshotStoreError;
pub use node::{Node, NodeConfig, NodeError};

/// Internals exposed for the criterion benches (`benches/hot_path.rs`) only: not an API.
#[doc(hidden)]
pub mod bench {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use crate::observe::metrics::Metrics;
    use crate::routing::router::Router;
    use crate::routing::runtime::Runtime;
    use crate::upstream::cluster::{Cluster, ClusterRegistry};

    /// A compiled runtime with one listener (slot 1).
    #[derive(Debug)]
    pub struct CompiledRoutes {
        runtime: Runtime,
    }

    impl CompiledRoutes {
        /// Compiles `config` (listeners by name get slots 1, 2, ...).
        pub fn compile(config: &vane_proto::config::Config) -> CompiledRoutes {
            let slots: HashMap<String, u64> =
                config.listeners.iter().enumerate().map(|(i, l)| (l.name.clone(), i as u64 + 1)).collect();
            let metrics = Metrics::default();
            let runtime = metrics.rebuild(|m| {
                Runtime::compile(
                    1,
                    String::new(),
                    config,
                    &slots,
                    None,
                    m,
                    &crate::routing::runtime::Loaded {
                        access_logs: &HashMap::new(),
                        tls: &Default::default(),
                        policies: &Default::default(),
                        caches: &Default::default(),
                    },
                )
            });
            CompiledRoutes { runtime }
        }

        fn router(&self) -> Option<&Router> {
            self.runtime.listeners.get(&1)
        }

        /// The name of the route a request takes on the first listener.
        pub fn find<B>(&self, req: &http::Request<B>) -> Option<&str> {
            self.router()?.find(req).map(|f| &*f.entry.route.name)
        }
    }

    /// The policies of a config, and the chain of the named ones.
    #[derive(Debug)]
    pub struct CompiledPolicies {
        chain: crate::policy::Chain,
        _state: crate::policy::PolicyState,
    }

    impl CompiledPolicies {
        /// Compiles `config`'s policies; the chain runs `names` in order.
        pub fn compile(config: &vane_proto::config::Config, names: &[String]) -> Option<CompiledPolicies> {
            let state = crate::policy::PolicyState::default();
            let policies = crate::policy::Policies::compile(config, &state, None).ok()?;
            Some(CompiledPolicies { chain: policies.chain(names, &[]), _state: state })
        }

        /// Runs the request side of the chain; true when the request passes.
        pub async fn check(&self, req: &mut http::Request<()>, client: std::net::IpAddr) -> bool {
            let mut with_body = std::mem::take(req).map(|()| http_body_util::Either::Right(Default::default()));
            let ctx = crate::policy::Ctx {
                client_ip: client,
                route: "bench",
                body_timeout: crate::routing::runtime::DEFAULT_REQUEST_BODY_TIMEOUT,
            };
            let passed = self.chain.run(&mut with_body, &ctx).await.is_ok();
            *req = with_body.map(|_| ());
            passed
        }
    }

    /// Parses a request head as the inline HTTP/1.1 server does (into a fresh buffer); the
    /// number of its headers, or `None` when it is not served inline.
    pub fn parse_request_head(head: &[u8]) -> Option<usize> {
        crate::server::inline::bench_parse(head)
    }

    /// Encodes a response as the inline HTTP/1.1 server writes it, into `wire` (`out` is
    /// the connection's reusable head buffer); true when the connection stays open.
    pub fn write_response(
        response: http::Response<http_body_util::Full<bytes::Bytes>>,
        wire: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> bool {
        crate::server::inline::bench_write(response, wire, out)
    }

    /// A compiled cluster, for endpoint picks and request rewrites.
    #[derive(Debug)]
    pub struct CompiledCluster(Arc<Cluster>);

    impl CompiledCluster {
        pub fn new(spec: &vane_proto::config::Cluster) -> CompiledCluster {
            CompiledCluster(ClusterRegistry::new(&HashMap::new()).build(spec, Default::default(), None))
        }

        /// `spec` compiled as a change of this cluster (state carried by address: added
        /// or undrained endpoints start their slow start).
        pub fn changed(&self, spec: &vane_proto::config::Cluster) -> CompiledCluster {
            let previous = HashMap::from([(self.0.name.clone(), self.0.clone())]);
            CompiledCluster(ClusterRegistry::new(&previous).build(spec, self.0.stats.clone(), None))
        }

        /// The port of the next endpoint.
        pub fn pick(&self) -> Option<u16> {
            self.0.pick(None).and_then(|(_, e)| e.authority.port_u16())
        }

        /// Rewrites a downstream request as the proxy does before sending it upstream.
        pub fn rewrite<B>(&self, req: http::Request<B>, peer: &Peer) -> Option<http::Request<B>> {
            crate::proxy::upstream_request(req, &self.0, (peer.0, &peer.1), Default::default()).map(|(r, _, _, _)| r)
        }
    }

    /// A downstream peer as a connection holds it: the address rendered once.
    #[derive(Debug)]
    pub struct Peer(SocketAddr, http::HeaderValue);

    impl Peer {
        pub fn new(addr: SocketAddr) -> Peer {
            Peer(addr, crate::http::headers::ip_value(addr))
        }
    }
}
