//! The cluster as layer 4 sees it: where each endpoint is, how long a connect may take.
//! TCP listeners pick with the cluster's balancer, health and circuit breaker like
//! requests do ([`Cluster::pick_avoiding`], [`Cluster::connection_slot`],
//! [`Cluster::report`]); these are the few facts they need besides (UDP sessions also
//! ask whether their endpoint is still available, and find it again after a swap).

use std::net::SocketAddr;
use std::time::Duration;

use vane_proto::config;

use crate::support::duration_or;

use super::{Cluster, DEFAULT_CONNECT_TIMEOUT};

impl Cluster {
    /// The socket address of endpoint `index` (endpoints are resolved before a cluster
    /// is built).
    pub(crate) fn endpoint_addr(&self, index: usize) -> Option<SocketAddr> {
        self.spec.endpoints.get(index)?.address.parse().ok()
    }

    /// The index of the endpoint at `addr`, if the cluster has it.
    pub(crate) fn endpoint_index(&self, addr: SocketAddr) -> Option<usize> {
        self.spec.endpoints.iter().position(|e| e.address.parse() == Ok(addr))
    }

    /// Whether endpoint `index` may take new traffic: not failed by active checks, not
    /// ejected by passive health (UDP sessions move off an endpoint when it is not).
    pub(crate) fn endpoint_available(&self, index: usize) -> bool {
        self.health.get(index).is_none_or(|h| h.available())
    }

    /// How many endpoints the cluster has.
    pub(crate) fn endpoint_count(&self) -> usize {
        self.spec.endpoints.len()
    }

    /// Time allowed to open a connection to an endpoint.
    pub(crate) fn connect_timeout(&self) -> Duration {
        duration_or(self.spec.connect_timeout.as_ref(), DEFAULT_CONNECT_TIMEOUT)
    }

    /// The PROXY protocol header version to send endpoints: `None`, or `Some(v2)`.
    pub(crate) fn proxy_protocol(&self) -> Option<bool> {
        match config::cluster::ProxyProtocol::try_from(self.spec.proxy_protocol) {
            Ok(config::cluster::ProxyProtocol::V1) => Some(false),
            Ok(config::cluster::ProxyProtocol::V2) => Some(true),
            _ => None,
        }
    }

    /// TLS to the endpoints, when the cluster has `tls`.
    pub(crate) fn stream_tls(&self) -> Option<&crate::tls::UpstreamTls> {
        self.stream_tls.as_ref()
    }
}
