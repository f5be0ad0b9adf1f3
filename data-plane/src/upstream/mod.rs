//! Upstreams: clusters and their endpoints, the connection pool, balancers, active and
//! passive health, slow start, DNS, sticky sessions.

pub(crate) mod balancer;
pub(crate) mod cluster;
pub(crate) mod dns;
pub(crate) mod health;
pub(crate) mod pool;
pub(crate) mod sidecall;
pub(crate) mod slowstart;
pub(crate) mod sticky;
