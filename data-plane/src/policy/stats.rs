//! What every policy stage shares: its counters and the request facts it reads. A leaf of
//! the policy layer.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one policy, by why requests were refused.
#[derive(Debug, Default)]
pub(crate) struct PolicyStats {
    pub(crate) passed: AtomicU64,
    pub(crate) ip_denied: AtomicU64,
    pub(crate) cors_refused: AtomicU64,
    pub(crate) auth_missing: AtomicU64,
    pub(crate) auth_invalid: AtomicU64,
    pub(crate) auth_unavailable: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
}

impl PolicyStats {
    /// `(reason, count)` pairs for `/metrics`.
    pub(crate) fn denials(&self) -> [(&'static str, u64); 6] {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("ip_denied", n(&self.ip_denied)),
            ("cors_refused", n(&self.cors_refused)),
            ("auth_missing", n(&self.auth_missing)),
            ("auth_invalid", n(&self.auth_invalid)),
            ("auth_unavailable", n(&self.auth_unavailable)),
            ("rate_limited", n(&self.rate_limited)),
        ]
    }
}

/// Facts about a request the stages need.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    /// The real client address (trusted proxies resolved).
    pub(crate) client_ip: IpAddr,
    pub(crate) route: &'a str,
    /// How long a request body read whole by a stage (a JSON transform) may pause between
    /// two reads: the route's `request_body_timeout`.
    pub(crate) body_timeout: std::time::Duration,
}
