//! Clusters: balancing, outlier detection, health checks, sticky sessions, budgets, slow
//! start and endpoints (ip:port or hostname:port, none twice, bounded weights, not all
//! drained).

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::config::{self, Config, cluster::LbPolicy};

use super::check::{MAX_WEIGHT, Validator, display_name, hostname_port};

pub(crate) fn check(config: &Config, v: &mut Validator) {
    for (i, c) in config.clusters.iter().enumerate() {
        let name = display_name(&c.name, i);
        match LbPolicy::try_from(c.lb_policy) {
            Ok(_) => {}
            Err(_) => v.err("cluster", &name, "lb_policy", format!("unknown policy {}", c.lb_policy)),
        }
        if let Some(od) = &c.outlier_detection {
            v.duration("cluster", &name, "outlier_detection.base_ejection_time", od.base_ejection_time.as_ref());
            if od.max_ejection_percent > 100 {
                v.err("cluster", &name, "outlier_detection.max_ejection_percent", "must be at most 100".into());
            }
        }
        if let Some(hc) = &c.health_check {
            v.duration("cluster", &name, "health_check.interval", hc.interval.as_ref());
            v.duration("cluster", &name, "health_check.timeout", hc.timeout.as_ref());
            if !hc.http_path.is_empty() {
                v.path("cluster", &name, "health_check.http_path", &hc.http_path);
            }
        }
        if let Some(st) = &c.sticky_session {
            if st.secret.len() < 16 {
                v.err("cluster", &name, "sticky_session.secret", "at least 16 characters are required".into());
            }
            if !st.cookie.is_empty() && !st.cookie.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
                v.err("cluster", &name, "sticky_session.cookie", format!("'{}' is not a cookie name", st.cookie));
            }
            if !st.path.is_empty() && (!st.path.starts_with('/') || st.path.contains([';', ' '])) {
                v.err("cluster", &name, "sticky_session.path", format!("'{}' is not a cookie path", st.path));
            }
            // Cookie lifetimes are long-lived by nature: up to 400 days (browsers cap there).
            if let Some(ttl) = &st.ttl
                && (ttl.seconds <= 0 || ttl.seconds > 400 * 86_400)
            {
                v.err("cluster", &name, "sticky_session.ttl", "must be between 1s and 400 days".into());
            }
        }
        if c.panic_threshold_percent.is_some_and(|p| p > 100) {
            v.err("cluster", &name, "panic_threshold_percent", "must be at most 100".into());
        }
        if let Some(b) = &c.retry_budget
            && !(0.0..=100.0).contains(&b.budget_percent)
        {
            v.err("cluster", &name, "retry_budget.budget_percent", "must be between 0 and 100".into());
        }
        if config::cluster::ProxyProtocol::try_from(c.proxy_protocol).is_err() {
            v.err("cluster", &name, "proxy_protocol", format!("unknown version {}", c.proxy_protocol));
        }
        if config::cluster::UpstreamProtocol::try_from(c.protocol).is_err() {
            v.err("cluster", &name, "protocol", format!("unknown protocol {}", c.protocol));
        }
        if let Some(config::hash_policy::Key::Header(h) | config::hash_policy::Key::Cookie(h)) =
            c.hash_policy.as_ref().and_then(|p| p.key.as_ref())
            && h.is_empty()
        {
            v.err("cluster", &name, "hash_policy", "the header or cookie name is required".into());
        }
        if c.endpoints.is_empty() {
            v.err("cluster", &name, "endpoints", "at least one endpoint is required".into());
        } else if c.endpoints.iter().all(|e| e.drain) {
            v.err(
                "cluster",
                &name,
                "endpoints",
                "every endpoint is drained: at least one must take new requests".into(),
            );
        }
        if let Some(ss) = &c.slow_start {
            slow_start(v, &name, c.lb_policy, ss);
        }
        let mut seen = HashSet::new();
        let mut seen_names = HashSet::new();
        for (j, e) in c.endpoints.iter().enumerate() {
            let field = format!("endpoints[{j}].address");
            match e.address.parse::<SocketAddr>() {
                Err(_) if hostname_port(&e.address) => {
                    if !seen_names.insert(e.address.as_str()) {
                        v.err("cluster", &name, &field, format!("{} is listed twice", e.address));
                    }
                }
                Err(_) => v.err(
                    "cluster",
                    &name,
                    &field,
                    format!("'{}' is not an ip:port or hostname:port address", e.address),
                ),
                Ok(addr) if addr.port() == 0 => {
                    v.err("cluster", &name, &field, "port 0 is not a valid upstream port".into())
                }
                Ok(addr) => {
                    if !seen.insert(addr) {
                        v.err("cluster", &name, &field, format!("{addr} is listed twice"));
                    }
                }
            }
            if e.weight > MAX_WEIGHT {
                v.err("cluster", &name, &format!("endpoints[{j}].weight"), format!("must be at most {MAX_WEIGHT}"));
            }
        }
        v.duration("cluster", &name, "connect_timeout", c.connect_timeout.as_ref());
    }
}

/// Slow start: a window, bounded parameters, and a policy that can ramp.
fn slow_start(v: &mut Validator, name: &str, lb_policy: i32, ss: &config::SlowStart) {
    if ss.window.is_none() {
        v.err("cluster", name, "slow_start.window", "is required".into());
    }
    v.duration("cluster", name, "slow_start.window", ss.window.as_ref());
    if ss.min_weight_percent.is_some_and(|p| p > 100) {
        v.err("cluster", name, "slow_start.min_weight_percent", "must be at most 100".into());
    }
    if let Some(a) = ss.aggression
        && !(a > 0.0 && a <= 100.0)
    {
        v.err("cluster", name, "slow_start.aggression", "must be above 0 and at most 100".into());
    }
    if matches!(LbPolicy::try_from(lb_policy), Ok(LbPolicy::RingHash | LbPolicy::Maglev)) {
        v.err(
            "cluster",
            name,
            "slow_start",
            "RING_HASH and MAGLEV cannot ramp an endpoint up without moving keys between endpoints; \
             use ROUND_ROBIN, LEAST_REQUEST or RANDOM"
                .into(),
        );
    }
}

/// Routes refuse clusters that send a PROXY protocol header: their upstream connections
/// are pooled and shared by many clients, so no one client address could be sent.
pub(crate) fn check_route_uses(config: &Config, v: &mut Validator) {
    let sends = |cluster: &str| {
        config
            .clusters
            .iter()
            .any(|c| c.name == cluster && c.proxy_protocol != config::cluster::ProxyProtocol::None as i32)
    };
    for (i, r) in config.routes.iter().enumerate() {
        let Some(config::route::Action::Forward(f)) = &r.action else { continue };
        let named = f
            .clusters
            .iter()
            .enumerate()
            .map(|(j, c)| (format!("forward.clusters[{j}].name"), c.name.as_str()))
            .chain(f.mirror.iter().map(|m| ("forward.mirror.cluster".to_owned(), m.cluster.as_str())));
        for (field, cluster) in named {
            if sends(cluster) {
                v.err(
                    "route",
                    &display_name(&r.name, i),
                    &field,
                    format!("cluster '{cluster}' sends a PROXY protocol header (proxy_protocol), which only TCP listeners do"),
                );
            }
        }
    }
}
