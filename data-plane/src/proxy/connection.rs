//! What a connection's requests share: the node's [`Serving`] handle, the listener slot,
//! the peer, and what TLS told.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::HeaderValue;

use crate::http::headers::ip_value;
use crate::tls::TlsInfo;

/// What a request reads of its node, and nothing more: the runtime serving now (one
/// `load()` per request, kept to its end) and span export. The node swaps the runtime
/// inside it; listeners and connections hold it instead of the node's whole state.
#[derive(Debug, Default)]
pub(crate) struct Serving {
    pub(crate) runtime: arc_swap::ArcSwapOption<crate::routing::runtime::Runtime>,
    /// Memory for request bodies kept for a retry or a mirror.
    pub(crate) replay_budget: crate::http::replay::ReplayBudget,
    #[cfg(feature = "otlp")]
    pub(crate) tracing: Option<crate::observe::otel::Tracing>,
}

/// One downstream connection's context.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    pub(crate) shared: Arc<Serving>,
    pub(crate) slot: u64,
    pub(crate) peer: SocketAddr,
    /// The peer's IP as the forwarding headers carry it, rendered once per connection:
    /// formatting an address costs more than setting all the forwarding headers.
    pub(crate) peer_ip: HeaderValue,
    /// SNI and client certificate of a TLS connection.
    pub(crate) tls: Option<Arc<TlsInfo>>,
}

impl Connection {
    pub(crate) fn new(shared: Arc<Serving>, slot: u64, peer: SocketAddr) -> Connection {
        Connection { shared, slot, peer, peer_ip: ip_value(peer), tls: None }
    }
}
