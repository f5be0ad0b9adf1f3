//! The validator's tests: one config per rule, errors read as users see them.

use super::*;
use crate::{Format, load};

/// Every error the validator finds in a YAML config, as users read them.
pub(crate) fn errors(yaml: &str) -> Vec<String> {
    let config = load(yaml, Format::Yaml).unwrap();
    match validate(&config) {
        Ok(()) => vec![],
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

const BASE: &str = "clusters:\n  - name: c\n    endpoints: [{address: '127.0.0.1:9001'}]\n";

#[test]
fn dangling_cluster_reference_names_the_field() {
    let errs = errors(&format!(
        "{BASE}routes:\n  - name: r\n    match: {{prefix: /}}\n    forward: {{clusters: [{{name: nope}}]}}\n"
    ));
    assert_eq!(errs, vec!["route 'r': forward.clusters[0].name: unknown cluster 'nope'"]);
}

#[test]
fn listener_timeouts_must_be_positive() {
    let errs = errors(
        "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    idle_timeout: 0s\n    send_timeout: -1s\n    \
         request_headers_timeout: 5s\n",
    );
    assert_eq!(
        errs,
        vec!["listener 'web': idle_timeout: must be positive", "listener 'web': send_timeout: must be positive"]
    );
}

#[test]
fn route_body_timeouts_are_positive_and_under_an_hour() {
    let route = |timeout: &str| {
        format!(
            "{BASE}routes:\n  - name: r\n    match: {{prefix: /}}\n    forward: {{clusters: [{{name: c}}], \
             request_body_timeout: {timeout}, max_response_bytes: 1048576}}\n"
        )
    };
    assert_eq!(errors(&route("0.3s")), Vec::<String>::new());
    assert_eq!(errors(&route("-1s")), vec!["route 'r': forward.request_body_timeout: must be positive"]);
    assert_eq!(errors(&route("0s")), vec!["route 'r': forward.request_body_timeout: must be positive"]);
    assert_eq!(errors(&route("3600s")), vec!["route 'r': forward.request_body_timeout: must be under 3600s"]);
}

#[test]
fn duplicate_names_are_refused() {
    let errs = errors(&format!("{BASE}  - name: c\n    endpoints: [{{address: '127.0.0.1:9002'}}]\n"));
    assert_eq!(errs, vec!["cluster 'c': name: duplicate cluster name"]);
}

#[test]
fn control_characters_in_names_are_refused_and_shown_escaped() {
    let errs = errors(&format!("{BASE}  - name: \"x\\e[31my\"\n    endpoints: [{{address: '127.0.0.1:9002'}}]\n"));
    assert_eq!(errs, vec!["cluster 'x\\u{1b}[31my': name: may hold only letters, digits, '-', '_' and '.'"]);
}

#[test]
fn bad_addresses_are_refused() {
    let errs = errors(
        "listeners:\n  - {name: l, address: 'localhost:80'}\nclusters:\n  - name: c\n    endpoints: [{address: '127.0.0.1'}]\n",
    );
    assert!(errs.contains(&"listener 'l': address: 'localhost:80' is not an ip:port address".to_string()), "{errs:?}");
    assert!(
        errs.contains(
            &"cluster 'c': endpoints[0].address: '127.0.0.1' is not an ip:port or hostname:port address".to_string()
        ),
        "{errs:?}"
    );
}

#[test]
fn empty_endpoints_and_bad_prefix_are_refused() {
    let errs = errors(
        "clusters:\n  - name: c\nroutes:\n  - name: r\n    match: {prefix: api}\n    forward: {clusters: [{name: c}]}\n",
    );
    assert_eq!(
        errs,
        vec![
            "cluster 'c': endpoints: at least one endpoint is required",
            "route 'r': match.prefix: 'api' must start with '/'"
        ]
    );
}

#[test]
fn unknown_listener_and_missing_match_are_refused() {
    let errs = errors(&format!(
        "{BASE}routes:\n  - name: r\n    listeners: [web]\n    forward: {{clusters: [{{name: c}}]}}\n"
    ));
    assert_eq!(
        errs,
        vec![
            "route 'r': match: a path match (prefix, exact, path_separated_prefix, regex or template) is required",
            "route 'r': listeners[0]: unknown listener 'web'"
        ]
    );
}

#[test]
fn two_listeners_on_one_address_are_refused() {
    let errs =
        errors("listeners:\n  - {name: a, address: '127.0.0.1:8080'}\n  - {name: b, address: '127.0.0.1:8080'}\n");
    assert_eq!(errs, vec!["listener 'b': address: 127.0.0.1:8080 is already used by listener 'a'"]);
}

#[test]
fn matchers_are_checked() {
    let errs = errors(&format!(
        "{BASE}routes:\n  - name: r\n    match:\n      regex: '/a(['\n      hosts: ['Shop.example', '*.ok.example', 'a:80']\n      methods: [get]\n      headers: [{{name: 'x bad', exact: v}}, {{name: x-ok}}]\n      query: [{{name: q, regex: '('}}]\n    forward: {{clusters: [{{name: c}}]}}\n"
    ));
    let fields: Vec<&str> = errs.iter().map(|e| e.split(": ").nth(1).unwrap()).collect();
    assert_eq!(
        fields,
        vec![
            "match.regex",
            "match.hosts[0]",
            "match.hosts[2]",
            "match.methods[0]",
            "match.headers[0].name",
            "match.headers[1]",
            "match.query[0].regex"
        ],
        "{errs:#?}"
    );
}

#[test]
fn conflicting_templates_on_one_host_are_refused() {
    let route = |n: &str, t: &str| {
        format!("  - {{name: {n}, match: {{template: '{t}'}}, forward: {{clusters: [{{name: c}}]}}}}\n")
    };
    let ok = errors(&format!("{BASE}routes:\n{}{}", route("a", "/users/{id}"), route("b", "/users/{id}/posts")));
    assert!(ok.is_empty(), "{ok:?}");
    let errs = errors(&format!("{BASE}routes:\n{}{}", route("a", "/users/{id}"), route("b", "/users/{name}")));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("route 'b': match.template: '/users/{name}'"), "{errs:?}");
}

#[test]
fn tls_and_https_listeners_say_what_they_lack() {
    let errs = errors("listeners:\n  - {name: a, address: '127.0.0.1:8443', protocol: TLS}\n");
    assert_eq!(
        errs,
        vec![
            "listener 'a': cluster: a TLS listener needs a cluster (or sni_routes)",
            "listener 'a': tls: a TLS listener needs tls.certificates",
        ]
    );
    let errs = errors("listeners:\n  - {name: a, address: '127.0.0.1:8443', protocol: HTTPS}\n");
    assert_eq!(errs, vec!["listener 'a': tls: an HTTPS listener needs tls.certificates"]);
}

#[test]
fn draining_every_endpoint_of_a_cluster_is_refused() {
    let two = "clusters:\n  - name: c\n    endpoints: [{address: '127.0.0.1:9001', drain: true}, \
               {address: '127.0.0.1:9002', drain: DRAIN2}]\n";
    assert_eq!(errors(&two.replace("DRAIN2", "false")), Vec::<String>::new(), "one of two drained is fine");
    assert_eq!(
        errors(&two.replace("DRAIN2", "true")),
        vec!["cluster 'c': endpoints: every endpoint is drained: at least one must take new requests"]
    );
}

#[test]
fn slow_start_needs_a_window_sane_parameters_and_a_policy_that_can_ramp() {
    let with = |policy: &str, ss: &str| {
        errors(&format!(
            "clusters:\n  - name: c\n    lb_policy: {policy}\n    slow_start: {ss}\n    \
             endpoints: [{{address: '127.0.0.1:9001'}}]\n"
        ))
    };
    for policy in ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"] {
        assert_eq!(with(policy, "{window: 30s, min_weight_percent: 5, aggression: 2}"), Vec::<String>::new());
    }
    assert_eq!(with("ROUND_ROBIN", "{}"), vec!["cluster 'c': slow_start.window: is required"]);
    assert_eq!(
        with("ROUND_ROBIN", "{window: 1s, min_weight_percent: 101, aggression: 0}"),
        vec![
            "cluster 'c': slow_start.min_weight_percent: must be at most 100",
            "cluster 'c': slow_start.aggression: must be above 0 and at most 100",
        ]
    );
    for policy in ["RING_HASH", "MAGLEV"] {
        let errs = with(policy, "{window: 30s}");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("cluster 'c': slow_start: RING_HASH and MAGLEV cannot ramp"), "{errs:?}");
    }
}
