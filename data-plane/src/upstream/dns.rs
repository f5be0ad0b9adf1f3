//! Endpoints given by hostname. A snapshot's hostnames are resolved before it is applied
//! (a name that does not resolve NACKs the snapshot); the node then expands each such
//! endpoint into one endpoint per address, same weight and priority, for the compile.
//! A background task resolves the names again every `dns_refresh_rate` (the shortest of
//! the clusters that have names) and, when an answer changed, recompiles the snapshot the
//! node holds: the balancer then spreads over the new set, and health state follows the
//! addresses that stay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use vane_proto::ConfigError;
use vane_proto::config::Config;

use crate::support::duration_or;

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REFRESH: Duration = Duration::from_secs(30);

/// Resolved addresses by `hostname:port`.
pub(crate) type Resolved = HashMap<String, Vec<SocketAddr>>;

/// The `hostname:port` endpoints of a config, and how often to refresh them.
pub(crate) fn hostnames(config: &Config) -> (Vec<String>, Option<Duration>) {
    let mut names = Vec::new();
    let mut refresh: Option<Duration> = None;
    for c in &config.clusters {
        let mut any = false;
        for e in &c.endpoints {
            if e.address.parse::<SocketAddr>().is_err() && !names.contains(&e.address) {
                names.push(e.address.clone());
                any = true;
            }
        }
        if any {
            let rate = duration_or(c.dns_refresh_rate.as_ref(), DEFAULT_REFRESH);
            refresh = Some(refresh.map_or(rate, |r| r.min(rate)));
        }
    }
    (names, refresh)
}

/// Resolves every name; each failure becomes an error naming the endpoint.
pub(crate) async fn resolve(config: &Config, names: &[String]) -> Result<Resolved, Vec<ConfigError>> {
    let mut resolved = Resolved::new();
    let mut errors = Vec::new();
    for name in names {
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(name.as_str())).await;
        match answer {
            Ok(Ok(addrs)) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.sort();
                addrs.dedup();
                if addrs.is_empty() {
                    errors.push(error(config, name, "resolved to no address".into()));
                } else {
                    resolved.insert(name.clone(), addrs);
                }
            }
            Ok(Err(e)) => errors.push(error(config, name, format!("cannot resolve: {e}"))),
            Err(_) => errors.push(error(config, name, "cannot resolve: no answer in 5s".into())),
        }
    }
    if errors.is_empty() { Ok(resolved) } else { Err(errors) }
}

fn error(config: &Config, name: &str, message: String) -> ConfigError {
    let (cluster, index) = config
        .clusters
        .iter()
        .find_map(|c| c.endpoints.iter().position(|e| e.address == name).map(|i| (c.name.clone(), i)))
        .unwrap_or_default();
    ConfigError {
        kind: "cluster",
        name: cluster,
        field: format!("endpoints[{index}].address"),
        message: format!("'{name}' {message}"),
    }
}

/// The config with every hostname endpoint replaced by its addresses; `None` when it has
/// no hostnames (the snapshot's own config is used as is).
pub(crate) fn expand(config: &Config, resolved: &Resolved) -> Option<Config> {
    if !config.clusters.iter().flat_map(|c| &c.endpoints).any(|e| e.address.parse::<SocketAddr>().is_err()) {
        return None;
    }
    let mut out = config.clone();
    for c in &mut out.clusters {
        // TLS to a hostname endpoint sends and verifies that name unless told otherwise.
        if let Some(tls) = c.tls.as_mut().filter(|t| t.sni.is_empty())
            && let Some(host) = c
                .endpoints
                .iter()
                .find(|e| e.address.parse::<SocketAddr>().is_err())
                .and_then(|e| e.address.rsplit_once(':'))
        {
            tls.sni = host.0.to_owned();
        }
        let mut endpoints = Vec::with_capacity(c.endpoints.len());
        for e in c.endpoints.drain(..) {
            match resolved.get(&e.address) {
                Some(addrs) => {
                    for a in addrs {
                        let address = a.to_string();
                        if !endpoints.iter().any(|x: &vane_proto::config::Endpoint| x.address == address) {
                            endpoints.push(vane_proto::config::Endpoint { address, ..e.clone() });
                        }
                    }
                }
                None => endpoints.push(e),
            }
        }
        c.endpoints = endpoints;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vane_proto::config::{Cluster, Endpoint};

    #[test]
    fn hostname_endpoints_expand_to_their_addresses_with_weight_and_priority() {
        let config = Config {
            clusters: vec![Cluster {
                name: "c".into(),
                endpoints: vec![
                    Endpoint { address: "api.internal:8080".into(), weight: 3, priority: 1, ..Default::default() },
                    Endpoint { address: "10.0.0.9:80".into(), weight: 1, ..Default::default() },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let (names, refresh) = hostnames(&config);
        assert_eq!((names.as_slice(), refresh), (&["api.internal:8080".to_owned()][..], Some(DEFAULT_REFRESH)));
        let resolved: Resolved = [(
            "api.internal:8080".to_owned(),
            vec!["10.0.0.1:8080".parse().unwrap(), "10.0.0.2:8080".parse().unwrap()],
        )]
        .into();
        let out = expand(&config, &resolved).unwrap();
        let endpoints: Vec<(&str, u32, u32)> =
            out.clusters[0].endpoints.iter().map(|e| (e.address.as_str(), e.weight, e.priority)).collect();
        assert_eq!(endpoints, [("10.0.0.1:8080", 3, 1), ("10.0.0.2:8080", 3, 1), ("10.0.0.9:80", 1, 0)]);
        assert!(expand(&out, &resolved).is_none(), "nothing to expand in an all-address config");
    }
}
