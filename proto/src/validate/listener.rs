//! Listeners: addresses (two on one address refused), timeouts, trusted proxies, access
//! logs, protocols.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::config::{self, Config, listener::Protocol};

use super::check::{Validator, display_name};

pub(crate) fn check(config: &Config, v: &mut Validator) {
    let mut bound: HashMap<SocketAddr, &str> = HashMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let name = display_name(&l.name, i);
        match l.address.parse::<SocketAddr>() {
            Err(_) => v.err("listener", &name, "address", format!("'{}' is not an ip:port address", l.address)),
            Ok(addr) if addr.port() != 0 => {
                if let Some(other) = bound.insert(addr, &l.name) {
                    v.err("listener", &name, "address", format!("{addr} is already used by listener '{other}'"));
                }
            }
            Ok(_) => {}
        }
        v.duration("listener", &name, "request_headers_timeout", l.request_headers_timeout.as_ref());
        v.duration("listener", &name, "idle_timeout", l.idle_timeout.as_ref());
        v.duration("listener", &name, "send_timeout", l.send_timeout.as_ref());
        for (j, cidr) in l.trusted_proxies.iter().enumerate() {
            if cidr.parse::<ipnet::IpNet>().is_err() && cidr.parse::<std::net::IpAddr>().is_err() {
                v.err(
                    "listener",
                    &name,
                    &format!("trusted_proxies[{j}]"),
                    format!("'{cidr}' is not an address or CIDR"),
                );
            }
        }
        if let Some(log) = &l.access_log {
            if config::access_log::Format::try_from(log.format).is_err() {
                v.err("listener", &name, "access_log.format", format!("unknown format {}", log.format));
            }
            if !log.path.is_empty() && !log.path.starts_with('/') {
                v.err(
                    "listener",
                    &name,
                    "access_log.path",
                    format!("'{}' must be an absolute path (or empty for stdout)", log.path),
                );
            }
        }
        match Protocol::try_from(l.protocol) {
            Ok(Protocol::Http | Protocol::Https) => {}
            Ok(p) => v.err("listener", &name, "protocol", format!("{} is not supported yet", p.as_str_name())),
            Err(_) => v.err("listener", &name, "protocol", format!("unknown protocol {}", l.protocol)),
        }
    }
}
