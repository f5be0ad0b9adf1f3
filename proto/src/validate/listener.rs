//! Listeners: addresses (two on one address refused, except a UDP listener beside a
//! stream one: DNS serves both on port 53), timeouts, trusted proxies, access logs,
//! protocols; for TCP listeners, their clusters (default and by SNI) and the HTTP-only
//! fields they refuse; for UDP listeners, their cluster and every field that only
//! streams use.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::config::{self, Config, listener::Protocol};

use super::check::{Validator, display_name, host_pattern};

pub(crate) fn check(config: &Config, v: &mut Validator) {
    // A UDP socket and a TCP one may share an address.
    let mut bound: HashMap<(SocketAddr, bool), &str> = HashMap::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let name = display_name(&l.name, i);
        let datagrams = l.protocol == Protocol::Udp as i32;
        match l.address.parse::<SocketAddr>() {
            Err(_) => v.err("listener", &name, "address", format!("'{}' is not an ip:port address", l.address)),
            Ok(addr) if addr.port() != 0 => {
                if let Some(other) = bound.insert((addr, datagrams), &l.name) {
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
        for (j, cidr) in l.accept_proxy_protocol_from.iter().enumerate() {
            if cidr.parse::<ipnet::IpNet>().is_err() && cidr.parse::<std::net::IpAddr>().is_err() {
                v.err(
                    "listener",
                    &name,
                    &format!("accept_proxy_protocol_from[{j}]"),
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
        v.duration("listener", &name, "max_connection_duration", l.max_connection_duration.as_ref());
        v.duration("listener", &name, "drain_timeout", l.drain_timeout.as_ref());
        match Protocol::try_from(l.protocol) {
            Ok(Protocol::Http | Protocol::Https) => http_only(l, &name, v),
            Ok(Protocol::Tcp | Protocol::Tls) => tcp(config, l, &name, v),
            Ok(Protocol::Udp) => udp(config, l, &name, v),
            Err(_) => v.err("listener", &name, "protocol", format!("unknown protocol {}", l.protocol)),
        }
    }
    for (i, r) in config.routes.iter().enumerate() {
        for (j, attached) in r.listeners.iter().enumerate() {
            let layer4 = |p: i32| p == Protocol::Tcp as i32 || p == Protocol::Tls as i32 || p == Protocol::Udp as i32;
            if let Some(l) = config.listeners.iter().find(|l| &l.name == attached && layer4(l.protocol)) {
                let kind = Protocol::try_from(l.protocol).map_or("TCP", |p| p.as_str_name());
                v.err(
                    "route",
                    &display_name(&r.name, i),
                    &format!("listeners[{j}]"),
                    format!("'{attached}' is a {kind} listener (routes attach to HTTP and HTTPS listeners)"),
                );
            }
        }
    }
}

/// HTTP and HTTPS listeners: the layer-4 fields are refused.
fn http_only(l: &config::Listener, name: &str, v: &mut Validator) {
    let reason = || "only TCP listeners use this field".to_owned();
    if !l.cluster.is_empty() {
        v.err("listener", name, "cluster", format!("{} (HTTP listeners forward by routes)", reason()));
    }
    if !l.sni_routes.is_empty() {
        v.err("listener", name, "sni_routes", reason());
    }
    if l.max_connection_duration.is_some() {
        v.err("listener", name, "max_connection_duration", reason());
    }
    if l.drain_timeout.is_some() {
        v.err("listener", name, "drain_timeout", reason());
    }
    if l.max_udp_sessions != 0 {
        v.err("listener", name, "max_udp_sessions", "only UDP listeners use this field".into());
    }
}

/// Most sessions a UDP listener may keep (each holds a socket: a file descriptor).
const MAX_UDP_SESSIONS: u32 = 1_000_000;

/// UDP listeners: a cluster that exists and that datagrams can use; every field of
/// HTTP or of TCP streams is refused.
fn udp(config: &Config, l: &config::Listener, name: &str, v: &mut Validator) {
    let refused = [
        ("request_headers_timeout", l.request_headers_timeout.is_some(), "HTTP and HTTPS"),
        ("send_timeout", l.send_timeout.is_some(), "HTTP and HTTPS"),
        ("https_redirect_port", l.https_redirect_port != 0, "HTTP and HTTPS"),
        ("policies", !l.policies.is_empty(), "HTTP and HTTPS"),
        ("trusted_proxies", !l.trusted_proxies.is_empty(), "HTTP and HTTPS"),
        ("sni_routes", !l.sni_routes.is_empty(), "TCP"),
        ("max_connection_duration", l.max_connection_duration.is_some(), "TCP and TLS"),
        ("drain_timeout", l.drain_timeout.is_some(), "TCP and TLS"),
        ("accept_proxy_protocol_from", !l.accept_proxy_protocol_from.is_empty(), "HTTP, HTTPS, TCP and TLS"),
    ];
    for (field, set, kinds) in refused {
        if set {
            v.err(
                "listener",
                name,
                field,
                format!("only {kinds} listeners use this field (a UDP listener has no stream)"),
            );
        }
    }
    if l.max_udp_sessions > MAX_UDP_SESSIONS {
        v.err(
            "listener",
            name,
            "max_udp_sessions",
            format!("{} is more than {MAX_UDP_SESSIONS} (each session holds a socket)", l.max_udp_sessions),
        );
    }
    if l.cluster.is_empty() {
        v.err("listener", name, "cluster", "a UDP listener needs a cluster".into());
        return;
    }
    let Some(c) = config.clusters.iter().find(|c| c.name == l.cluster) else {
        v.err("listener", name, "cluster", format!("unknown cluster '{}'", l.cluster));
        return;
    };
    let cluster = &l.cluster;
    if c.tls.is_some() {
        v.err(
            "listener",
            name,
            "cluster",
            format!("cluster '{cluster}' originates TLS (tls), which datagrams cannot carry"),
        );
    }
    if c.proxy_protocol != 0 {
        v.err(
            "listener",
            name,
            "cluster",
            format!("cluster '{cluster}' sends a PROXY protocol header (proxy_protocol), which only TCP listeners do"),
        );
    }
    if hashes_on_request(c) {
        v.err(
            "listener",
            name,
            "cluster",
            format!("cluster '{cluster}' hashes on a header, cookie or path, which a datagram has not (use source_ip)"),
        );
    }
}

/// TCP and TLS listeners: a cluster (default or by SNI) that exists and that a connection
/// can use; the HTTP-only fields are refused.
fn tcp(config: &Config, l: &config::Listener, name: &str, v: &mut Validator) {
    let http_only = [
        ("request_headers_timeout", l.request_headers_timeout.is_some()),
        ("send_timeout", l.send_timeout.is_some()),
        ("https_redirect_port", l.https_redirect_port != 0),
        ("policies", !l.policies.is_empty()),
        ("trusted_proxies", !l.trusted_proxies.is_empty()),
    ];
    for (field, set) in http_only {
        if set {
            v.err("listener", name, field, "only HTTP and HTTPS listeners use this field".into());
        }
    }
    if l.max_udp_sessions != 0 {
        v.err("listener", name, "max_udp_sessions", "only UDP listeners use this field".into());
    }
    let kind = if l.protocol == Protocol::Tls as i32 { "TLS" } else { "TCP" };
    if l.cluster.is_empty() && l.sni_routes.is_empty() {
        v.err("listener", name, "cluster", format!("a {kind} listener needs a cluster (or sni_routes)"));
    }
    // Passthrough forwards the client's own TLS: wrapping it in another would be
    // nobody's protocol.
    let passthrough = l.protocol == Protocol::Tcp as i32 && !l.sni_routes.is_empty();
    let check_cluster = |field: &str, cluster: &str, v: &mut Validator| {
        let Some(c) = config.clusters.iter().find(|c| c.name == cluster) else {
            v.err("listener", name, field, format!("unknown cluster '{cluster}'"));
            return;
        };
        if c.tls.is_some() && passthrough {
            v.err(
                "listener",
                name,
                field,
                format!("cluster '{cluster}' originates TLS (tls): a passthrough listener forwards the client's TLS as it is"),
            );
        }
        if hashes_on_request(c) {
            v.err(
                "listener",
                name,
                field,
                format!("cluster '{cluster}' hashes on a header, cookie or path, which a TCP connection has not (use source_ip)"),
            );
        }
    };
    if !l.cluster.is_empty() {
        check_cluster("cluster", &l.cluster, v);
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, rule) in l.sni_routes.iter().enumerate() {
        if rule.cluster.is_empty() {
            v.err("listener", name, &format!("sni_routes[{i}].cluster"), "is required".into());
        } else {
            check_cluster(&format!("sni_routes[{i}].cluster"), &rule.cluster, v);
        }
        if rule.server_names.is_empty() {
            v.err("listener", name, &format!("sni_routes[{i}].server_names"), "at least one is required".into());
        }
        for (j, host) in rule.server_names.iter().enumerate() {
            let field = format!("sni_routes[{i}].server_names[{j}]");
            if let Err(reason) = host_pattern(host) {
                v.err("listener", name, &field, format!("'{host}' {reason}"));
            } else if let Some(first) = seen.insert(host, i) {
                v.err("listener", name, &field, format!("'{host}' is also in sni_routes[{first}]"));
            }
        }
    }
}

/// Whether `c` hashes on something of an HTTP request (a header, a cookie, the path),
/// which a TCP connection or a datagram does not have.
fn hashes_on_request(c: &config::Cluster) -> bool {
    c.hash_policy
        .as_ref()
        .and_then(|h| h.key.as_ref())
        .is_some_and(|k| !matches!(k, config::hash_policy::Key::SourceIp(_)))
}

#[cfg(test)]
mod tests {
    use super::super::tests::errors;

    const CLUSTERS: &str = "clusters:\n  - name: db\n    endpoints: [{address: '127.0.0.1:6379'}]\n  \
                            - name: web\n    endpoints: [{address: '127.0.0.1:8443'}]\n";

    #[test]
    fn a_tcp_listener_forwards_to_a_known_cluster() {
        let ok = format!("{CLUSTERS}listeners:\n  - {{name: t, address: '127.0.0.1:0', protocol: TCP, cluster: db}}\n");
        assert_eq!(errors(&ok), Vec::<String>::new());
        let none = format!("{CLUSTERS}listeners:\n  - {{name: t, address: '127.0.0.1:0', protocol: TCP}}\n");
        assert_eq!(errors(&none), vec!["listener 't': cluster: a TCP listener needs a cluster (or sni_routes)"]);
        let unknown =
            format!("{CLUSTERS}listeners:\n  - {{name: t, address: '127.0.0.1:0', protocol: TCP, cluster: nope}}\n");
        assert_eq!(errors(&unknown), vec!["listener 't': cluster: unknown cluster 'nope'"]);
    }

    #[test]
    fn http_fields_on_a_tcp_listener_and_tcp_fields_on_an_http_one_are_refused() {
        let tcp = format!(
            "{CLUSTERS}listeners:\n  - {{name: t, address: '127.0.0.1:0', protocol: TCP, cluster: db, \
             send_timeout: 5s, policies: [p], trusted_proxies: [10.0.0.0/8]}}\n"
        );
        let errs = errors(&tcp);
        assert!(errs.contains(&"listener 't': send_timeout: only HTTP and HTTPS listeners use this field".to_owned()));
        assert!(
            errs.contains(&"listener 't': trusted_proxies: only HTTP and HTTPS listeners use this field".to_owned())
        );
        assert!(errs.contains(&"listener 't': policies: only HTTP and HTTPS listeners use this field".to_owned()));
        let http =
            format!("{CLUSTERS}listeners:\n  - {{name: h, address: '127.0.0.1:0', cluster: db, drain_timeout: 5s}}\n");
        assert_eq!(
            errors(&http),
            vec![
                "listener 'h': cluster: only TCP listeners use this field (HTTP listeners forward by routes)",
                "listener 'h': drain_timeout: only TCP listeners use this field",
            ]
        );
    }

    #[test]
    fn sni_routes_name_clusters_and_valid_distinct_server_names() {
        let yaml = format!(
            "{CLUSTERS}listeners:\n  - name: t\n    address: '127.0.0.1:0'\n    protocol: TCP\n    sni_routes:\n      \
             - {{server_names: [a.example.com, '*.example.org'], cluster: web}}\n      \
             - {{server_names: [A.example.com, a.example.com], cluster: nope}}\n      - {{server_names: [], cluster: db}}\n"
        );
        assert_eq!(
            errors(&yaml),
            vec![
                "listener 't': sni_routes[1].cluster: unknown cluster 'nope'",
                "listener 't': sni_routes[1].server_names[0]: 'A.example.com' must be lower case",
                "listener 't': sni_routes[1].server_names[1]: 'a.example.com' is also in sni_routes[0]",
                "listener 't': sni_routes[2].server_names: at least one is required",
            ]
        );
    }

    #[test]
    fn a_tcp_listener_refuses_clusters_it_cannot_use_and_routes_cannot_attach_to_it() {
        let yaml = "clusters:\n  - name: c\n    endpoints: [{address: '127.0.0.1:1'}]\n    \
                    hash_policy: {header: x-user}\n    lb_policy: RING_HASH\n\
                    listeners:\n  - {name: t, address: '127.0.0.1:0', protocol: TCP, cluster: c}\n\
                    routes:\n  - {name: r, listeners: [t], match: {prefix: /}, forward: {clusters: [{name: c}]}}\n";
        assert_eq!(
            errors(yaml),
            vec![
                "listener 't': cluster: cluster 'c' hashes on a header, cookie or path, which a TCP connection has not (use source_ip)",
                "route 'r': listeners[0]: 't' is a TCP listener (routes attach to HTTP and HTTPS listeners)",
            ]
        );
    }

    #[test]
    fn a_udp_listener_names_a_cluster_datagrams_can_use() {
        let ok = format!(
            "{CLUSTERS}listeners:\n  - {{name: u, address: '127.0.0.1:5353', protocol: UDP, cluster: db, \
             idle_timeout: 30s, max_udp_sessions: 2}}\n  - {{name: t, address: '127.0.0.1:5353', protocol: TCP, cluster: db}}\n"
        );
        assert_eq!(errors(&ok), Vec::<String>::new(), "UDP and TCP share an address");
        let none = "listeners:\n  - {name: u, address: '127.0.0.1:0', protocol: UDP}\n";
        assert_eq!(errors(none), vec!["listener 'u': cluster: a UDP listener needs a cluster"]);
        let unusable = "clusters:\n  - name: c\n    endpoints: [{address: '127.0.0.1:1'}]\n    proxy_protocol: V1\n    \
                        tls: {}\n    hash_policy: {cookie: k}\n    lb_policy: MAGLEV\n\
                        listeners:\n  - {name: u, address: '127.0.0.1:0', protocol: UDP, cluster: c}\n  \
                        - {name: v, address: '127.0.0.1:0', protocol: UDP, cluster: nope, max_udp_sessions: 1000001}\n\
                        routes:\n  - {name: r, listeners: [u], match: {prefix: /}, direct_response: {status: 200}}\n";
        assert_eq!(
            errors(unusable),
            vec![
                "listener 'u': cluster: cluster 'c' originates TLS (tls), which datagrams cannot carry",
                "listener 'u': cluster: cluster 'c' sends a PROXY protocol header (proxy_protocol), which only TCP listeners do",
                "listener 'u': cluster: cluster 'c' hashes on a header, cookie or path, which a datagram has not (use source_ip)",
                "listener 'v': max_udp_sessions: 1000001 is more than 1000000 (each session holds a socket)",
                "listener 'v': cluster: unknown cluster 'nope'",
                "route 'r': listeners[0]: 'u' is a UDP listener (routes attach to HTTP and HTTPS listeners)",
            ]
        );
    }

    #[test]
    fn stream_fields_on_a_udp_listener_and_its_field_elsewhere_are_refused() {
        let yaml = format!(
            "{CLUSTERS}listeners:\n  - name: u\n    address: '127.0.0.1:0'\n    protocol: UDP\n    cluster: db\n    \
             sni_routes: [{{server_names: [a.example.com], cluster: web}}]\n    accept_proxy_protocol_from: [10.0.0.0/8]\n    \
             drain_timeout: 5s\n    tls: {{certificates: [c]}}\n  \
             - {{name: t, address: '127.0.0.1:0', protocol: TCP, cluster: db, max_udp_sessions: 5}}\n  \
             - {{name: h, address: '127.0.0.1:0', max_udp_sessions: 5}}\n"
        );
        let errs = errors(&yaml);
        for expected in [
            "listener 'u': tls: only HTTPS and TLS listeners terminate TLS",
            "listener 'u': sni_routes: only TCP listeners use this field (a UDP listener has no stream)",
            "listener 'u': drain_timeout: only TCP and TLS listeners use this field (a UDP listener has no stream)",
            "listener 'u': accept_proxy_protocol_from: only HTTP, HTTPS, TCP and TLS listeners use this field (a UDP listener has no stream)",
            "listener 't': max_udp_sessions: only UDP listeners use this field",
            "listener 'h': max_udp_sessions: only UDP listeners use this field",
        ] {
            assert!(errs.contains(&expected.to_owned()), "{expected}\nin {errs:#?}");
        }
    }

    #[test]
    fn proxy_protocol_peers_are_cidrs_and_routes_refuse_clusters_that_send_it() {
        let yaml = "clusters:\n  - {name: c, proxy_protocol: V2, endpoints: [{address: '127.0.0.1:1'}]}\n\
                    listeners:\n  - {name: h, address: '127.0.0.1:0', accept_proxy_protocol_from: [10.0.0.0/8, lb]}\n  \
                    - {name: t, address: '127.0.0.1:0', protocol: TCP, cluster: c, accept_proxy_protocol_from: [192.0.2.7]}\n\
                    routes:\n  - {name: r, match: {prefix: /}, forward: {clusters: [{name: c}]}}\n";
        assert_eq!(
            errors(yaml),
            vec![
                "listener 'h': accept_proxy_protocol_from[1]: 'lb' is not an address or CIDR",
                "route 'r': forward.clusters[0].name: cluster 'c' sends a PROXY protocol header (proxy_protocol), which only TCP listeners do",
            ]
        );
    }
}
